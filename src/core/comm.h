/*
 * comm.h - the communicator and request objects shared by the core.
 */
#ifndef DUET_COMM_H
#define DUET_COMM_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>

#include "coll/coll.h"
#include "core/config.h"
#include "core/fiber.h"
#include "duet.h"
#include "shm/shm.h"
#include "transport.h"
#include "tune/tune.h"

#define DUET_ERRLEN 512
#define DUET_HOSTLEN 64

/* Tags (64 bits). Collectives: bit 63 clear, comm id (15 bits), sequence
 * (24 bits), message id (24 bits). Point to point: bit 63 set, bit 62 clear,
 * comm id (15 bits), per-pair sequence (47 bits). Tags with bits 63 and 62
 * both set belong to the transport: with bit 61 clear to the endpoint's own
 * (ofi's warm-up), with bit 61 set to a transport layered on it (planes). */
#define DUET_TAG_P2P (1ull << 63)
static inline uint64_t duet__tag_coll(uint32_t comm_id, uint32_t seq, uint32_t msg) {
  return ((uint64_t)(comm_id & 0x7fff) << 48) | ((uint64_t)(seq & 0xffffff) << 24) |
         (msg & 0xffffff);
}
static inline uint64_t duet__tag_p2p(uint32_t comm_id, uint64_t seq) {
  return DUET_TAG_P2P | ((uint64_t)(comm_id & 0x7fff) << 47) | (seq & ((1ull << 47) - 1));
}
/* duet_comm_abort's notice to its peers (the last per-pair sequence, which
 * point to point never reaches). */
static inline uint64_t duet__tag_abort(uint32_t comm_id) {
  return duet__tag_p2p(comm_id, (1ull << 47) - 1);
}

/* A block a transport may still write into after its communicator is
 * gone (a posted receive, a send not yet done): kept on the netset until
 * the endpoints close. */
typedef struct duet__keep {
  struct duet__keep *next;
} duet__keep_t;

/* The receives of duet_comm_abort's notices (DESIGN section 7), for peers
 * whose transport does not say when a peer leaves (libfabric's): made at
 * init, posted for a peer once a wait for it has lasted
 * DUET_ALIVE_PERIOD_NS. One block:
 * posted[n], then the requests and their 8-byte buffers. */
typedef struct duet__abort_rx {
  duet__keep_t keep; /* first */
  int n;
  uint8_t *posted;
  duet__tp_req_t *req;
  uint64_t *sink;
} duet__abort_rx_t;

typedef struct duet__peer {
  uint8_t net;   /* DUET_NET_* used to reach this rank */
  int32_t index; /* peer index inside that network's endpoint */
  int32_t supernode, local_rank;
  uint64_t p2p_send_seq, p2p_recv_seq;
  /* A rank on this host whose process init could see: its pid and start
   * time (duet__proc_start), looked up while a call waits for it; start 0
   * otherwise. */
  int32_t pid;
  uint64_t start;
} duet__peer_t;

static inline const char *duet__net_name(int net) {
  return net == DUET_NET_UPN ? "UPN" : net == DUET_NET_HPN ? "HPN" : "self";
}

typedef struct duet__net {
  const duet__tp_ops_t *ops;
  duet__tp_ep_t *ep;
  char provider[64];
  char iface[64];
  char lasterr[DUET_TP_ERRLEN]; /* the transport's word on what its progress failed last */
  /* Sends [0] and receives [1] the endpoint holds at most (0: no bound),
   * and those the calls have posted and not yet seen complete (progress.c:
   * "Sharing a transport's queues"). */
  uint32_t queue_max[2];
  uint32_t queued[2];
} duet__net_t;

/* A communicator's endpoints, shared with the communicators split from it
 * (they tell their messages apart by the comm id in every tag). The last
 * communicator to let go closes them. */
typedef struct duet__netset {
  int refs;
  duet__net_t net[DUET_NET_COUNT];
  struct duet_request *zombies; /* failed with transfers possibly in flight */
  duet__keep_t *keep;           /* blocks to free once the endpoints are closed */
  /* The progress thread (async.c): threaded says it may drive these
   * communicators, so calls on them hold lock (recursive). */
  int threaded;
  pthread_mutex_t lock;
  int want; /* callers blocked on lock: the thread leaves it to them */
  /* The live communicators on these endpoints (comm->family_next): a rank
   * waiting on one of them moves the others' calls too (progress.c). */
  struct duet_comm *members;
  int family_pass; /* inside duet__family_progress: no nested pass */
  uint64_t posts;  /* calls posted on these endpoints so far: each call's post_order */
} duet__netset_t;

/* Buffers a communicator keeps for its calls, whichever request carried
 * them last (progress.c): the scratch of calls that overlapped others, the
 * count arrays of non-blocking alltoallvs. Taken smallest first; when full,
 * the smallest goes. */
#define DUET_SHELF 4
typedef struct duet__shelf {
  void *buf[DUET_SHELF];
  size_t size[DUET_SHELF];
} duet__shelf_t;

/* Schedules are cached per communicator: a collective called again with the
 * same arguments reuses its schedule, so the hot path builds nothing. */
#define DUET_SCHED_CACHE 16
typedef struct duet__sched_key {
  int coll, root, peer, in_place, out_alias;
  duet__coll_build_fn build;
  size_t count, chunk;
  int dt, op;
} duet__sched_key_t;

typedef struct duet__cache_entry {
  int valid;
  uint32_t users; /* requests executing it now */
  uint64_t last_use;
  duet__sched_key_t key;
  duet__sched_t sched;
} duet__cache_entry_t;

struct duet_comm {
  uint32_t magic;
  int rank, nranks;
  uint32_t id;        /* comm id in tags */
  uint32_t seq;       /* next collective sequence number */
  uint32_t split_seq; /* duet_comm_split calls so far */
  duet__cfg_t cfg;
  int supernode, nsupernodes, local_rank, local_size;
  int host_ranks;       /* ranks of this comm on this host */
  int one_host;         /* the whole comm is on one host */
  int domains_one_host; /* every super-node is on one host (UPN default shm) */
  int upn_tcp;          /* libfabric's shm was missing on a rank at init: the default UPN
                           endpoints are tcp over lo instead, on every rank */
  int yield;            /* more ranks than cores on this host: progress yields */
  int *place_pid;       /* oversubscribed, no load/store segment: the host's ranks' pids */
  uint64_t alive_next_ns; /* a wait looks up the awaited peer's process next (peers[].start) */
  int place_n, place_me;  /* how many, and this rank's index among them */
  cpu_set_t place_mask;   /* the CPUs this rank may run on */
  uint64_t place_next_ns; /* when duet__comm_place next looks */
  duet__peer_t *peers;
  duet__layout_t layout;    /* super-nodes and rails, for the hierarchy */
  int32_t *layout_sn;       /* per rank super-node index (layout.supernode) */
  int32_t *layout_mem;      /* the layout's other arrays */
  duet__tune_shape_t shape; /* what the tuner weighs */
  duet__netset_t *nets;
  struct duet_comm *family_next; /* the next of nets->members */
  duet__shm_t *mem;     /* the UPN load/store path (one-host super-node), or NULL */
  int mem_everywhere;   /* every super-node has one (every rank mapped its segment) */
  duet__fiber_t *fiber; /* runs the load/store path's non-blocking calls, or NULL */
  struct duet_request *mem_head, *mem_tail; /* those calls, posted and not complete, in order */
  int mem_in_task;                          /* running on the fiber now */
  struct duet_request *mem_awaiting;        /* the schedule the suspended task waits for */
  duet_stats_t stats;
  duet_status_t failed; /* sticky failure (timeout, transport error, abort) */
  duet__abort_rx_t *abort_rx; /* made at init when a peer is on libfabric */
  struct duet_request *active_head, *active_tail; /* posted, not yet completed */
  duet__cache_entry_t cache[DUET_SCHED_CACHE];
  uint64_t cache_clock;
  struct duet_request *free_reqs; /* finished requests, kept for reuse */
  uint32_t req_cap;               /* steps every request has room for (progress.c) */
  duet__sched_t spare_sched;      /* arrays of a freed uncached schedule, for the next build */
  char *mem_stage;                /* load/store hierarchical reduce-scatter: partial sums */
  size_t mem_stage_size;
  size_t *mem_a2a_counts; /* load/store hierarchical all-to-all: 4 x local_size */
  uint64_t *a2av_counts;  /* hierarchical alltoallv: 2 nranks counts (packed row, rail counts) */
  /* Scratch shared by the calls in flight: each takes a region (at 0 when
   * that is free, else past the last region taken), so calls that overlap
   * a larger one need nothing more. It grows only while no call uses it. */
  uint8_t *scratch;
  size_t scratch_size;
  int scratch_users;
  unsigned scratch_gen; /* bumped when a failed call keeps the scratch */
  duet__shelf_t scratch_shelf; /* scratch of calls that found no room in the one above */
  duet__shelf_t counts_shelf;  /* the count arrays of non-blocking alltoallvs */
  char last_error[DUET_ERRLEN];

  /* This process runs the rendezvous root of root_id: destroy lets it
   * finish serving the ranks still in init (bootstrap.h). */
  int hosts_root;
  duet_unique_id_t root_id;
};

struct duet_request {
  duet_comm_t *comm;
  int coll;
  uint32_t seq;
  const duet__sched_t *sched; /* a cache entry's, or own_sched */
  duet__sched_t own_sched;
  int cache_slot;    /* index into comm->cache, or -1 */
  uint32_t cap;      /* steps the arrays below can hold */
  uint8_t *bufs[4];  /* indexed by DUET_BUF_* */
  void *own_scratch; /* when the comm's scratch had no room; parked again when freed */
  uint64_t own_scratch_size;
  int uses_comm_scratch;
  size_t scratch_off, scratch_len; /* its region of the comm's scratch */
  unsigned scratch_gen;
  duet_datatype_t dt;
  duet_op_t op;
  uint64_t p2p_seq; /* point to point: the pair's sequence number */
  uint64_t post_order; /* when it was posted among the calls on its endpoints */
  /* execution state, one entry per step */
  uint32_t *left;        /* unfinished dependencies */
  uint8_t *state;        /* 0 waiting, 1 ready, 2 posted, 3 done */
  duet__tp_req_t *tpreq; /* transport completions of posted sends/recvs */
  uint32_t *queue;       /* ready steps not yet started, in order */
  uint32_t nready;       /* how many */
  uint32_t *posted; /* posted send/recv steps not yet seen complete */
  uint32_t nposted;
  uint32_t ndone;
  uint32_t gates_open; /* DUET_STEP_GATE k is done once k < gates_open */
  duet_status_t status;
  int complete;
  uint64_t start_ns;
  struct duet_request *next, *prev;
  /* a call on the load/store path (mem_queue.c): no schedule, just the call */
  int mem;
  int mem_hier; /* DUET_MEM_*: what the task runs */
  uint32_t mseq_counts; /* DUET_MEM_A2AV: the count exchange's sequence number */
  duet__coll_args_t margs;
  const void *msend;
  void *mrecv;
  void *mblock; /* alltoallv: holds the two below; from and back to comm->counts_shelf */
  size_t mblock_size;
  size_t *mcounts;   /* copies of the four count arrays */
  uint64_t *mrail; /* DUET_MEM_A2AV: the packed row and the rail counts (2 nranks) */
  struct duet_request *mem_next;
};

#define DUET_COMM_MAGIC 0x64756574u /* "duet" */

/* Hold a communicator's netset lock when the progress thread may use it
 * (comm must be live). */
static inline void duet__comm_lock(const duet_comm_t *comm) {
  duet__netset_t *nets = comm->nets;
  if (!nets->threaded || pthread_mutex_trylock(&nets->lock) == 0)
    return;
  __atomic_add_fetch(&nets->want, 1, __ATOMIC_RELAXED);
  pthread_mutex_lock(&nets->lock);
  __atomic_sub_fetch(&nets->want, 1, __ATOMIC_RELAXED);
}
void duet__async_kick(void);
/* Leaving a call: calls still posted are the thread's to drive from now. */
static inline void duet__comm_unlock(const duet_comm_t *comm) {
  if (comm->nets->threaded) {
    int more = comm->active_head != NULL || comm->mem_head != NULL;
    pthread_mutex_unlock(&comm->nets->lock);
    if (more)
      duet__async_kick();
  }
}

/* status.c */
duet_status_t duet__set_error(duet_comm_t *comm, duet_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void duet__clear_error(duet_comm_t *comm);

/* comm.c */
int duet__comm_is_live(const duet_comm_t *comm);
int duet__registry_add(const duet_comm_t *comm);
void duet__comm_free(duet_comm_t *comm);
void duet__nets_release(duet_comm_t *comm);
/* A live communicator joins its netset's members; freeing it leaves. */
void duet__family_join(duet_comm_t *comm);
duet_status_t duet__comm_layout(duet_comm_t *comm, const int32_t *supernode);
void duet__comm_shape(duet_comm_t *comm);
uint64_t duet__now_ns(void);

/* coll.c: run one call on the load/store path, blocking */
int duet__mem_path(const duet_comm_t *comm, int coll);
duet_status_t duet__mem_run(duet_comm_t *comm, const duet__coll_args_t *a, const void *sendbuf,
                            void *recvbuf);
/* any hierarchical call the load/store UPN takes */
duet_status_t duet__mem_hier_run(duet_comm_t *comm, duet__coll_args_t *a, const void *sendbuf,
                                 void *recvbuf);
/* the non-blocking hierarchical alltoallv, as a task: the rail counts
 * (exchanged inside the super-node under counts_seq: counts[0 .. p) the
 * packed row, counts[p .. 2p) what arrives), then the call */
duet_status_t duet__mem_a2av_run(duet_comm_t *comm, duet__coll_args_t *a, uint32_t counts_seq,
                                 uint64_t *counts, const void *sendbuf, void *recvbuf);

/* mem_queue.c: the load/store path's non-blocking calls (see there), and
 * the tasks built like them; what the task runs: */
enum {
  DUET_MEM_FLAT,  /* duet__mem_run */
  DUET_MEM_HIER,  /* duet__mem_hier_run */
  DUET_MEM_A2AV,  /* duet__mem_a2av_run */
};
duet_status_t duet__mem_post(duet_comm_t *comm, const duet__coll_args_t *a, const void *sendbuf,
                             void *recvbuf, int kind, duet_request_t **req);
/* Wait for a schedule the running call posted (the hierarchical calls'
 * rail phase): inside the task, suspend until it completes (the caller's
 * progress drives it); outside, duet__request_wait. Does not free req. */
duet_status_t duet__mem_await(duet_comm_t *comm, duet_request_t *req);
/* Run the queued calls as far as they go; spin != 0: let the engine wait for
 * its peers as a blocking call does (nothing else needs progress), so each
 * call runs to its end. Returns 1 when a call completed. */
int duet__mem_progress(duet_comm_t *comm, int spin);
duet_status_t duet__mem_drain(duet_comm_t *comm);
void duet__mem_fail_all(duet_comm_t *comm, duet_status_t status);

/* progress.c */
duet_request_t *duet__request_get(duet_comm_t *comm, uint32_t nsteps);
/* A pooled request made ready for a new call: no schedule, nothing posted. */
void duet__request_reset(duet_request_t *req, duet_comm_t *comm, int coll, duet_datatype_t dt,
                         duet_op_t op);
duet_status_t duet__request_post(duet_comm_t *comm, int coll, const duet__coll_args_t *args,
                                 duet__coll_build_fn build, const void *sendbuf, void *recvbuf,
                                 duet_request_t **req);
duet_status_t duet__progress(duet_comm_t *comm);
/* Drive every network, then every active request; *moved says whether any
 * request advanced. Negative only when the communicator itself failed. */
duet_status_t duet__progress_once(duet_comm_t *comm, int *moved);
duet_status_t duet__request_wait(duet_request_t *req);
/* The load/store path's idle function (duet__shm_set_idle) for comm (arg):
 * moves the calls of the other communicators on its endpoints. */
void duet__family_idle(void *arg);
/* For a wait that has lasted DUET_ALIVE_PERIOD_NS (duet_test's too): at
 * most once per period, whether the rank req waits for is on this host and
 * its process is gone; then the communicator fails with DUET_ERR_REMOTE
 * and this returns 1. */
#define DUET_ALIVE_PERIOD_NS 100000000ull
int duet__awaited_gone(duet_request_t *req, uint64_t now);
/* Whether peer's transport says nothing when the peer leaves, so that
 * duet_comm_abort sends it a notice (comm.c). */
int duet__peer_needs_notice(const duet_comm_t *comm, int peer);
/* Make comm->abort_rx when some peer needs notices (at init and split, so
 * that a long wait allocates nothing; progress.c). */
void duet__abort_rx_make(duet_comm_t *comm);
/* Oversubscribed host without a load/store segment: even out where its
 * ranks run (progress.c; topo/place.c). Cheap when not due. */
void duet__comm_place(duet_comm_t *comm);
/* Open gates 0 .. k of a posted request: its DUET_STEP_GATE steps up to k
 * complete (at its next progress). Gates open in order. */
void duet__request_open_gate(duet_request_t *req, uint32_t k);
/* A posted request its caller gives up on (the communicator failed): out
 * of the active list, then freed (kept aside if transfers are posted). */
void duet__request_abandon(duet_request_t *req, duet_status_t status);
void duet__request_free(duet_request_t *req);
void duet__comm_release_requests(duet_comm_t *comm); /* the pool and the cache */
void duet__scratch_release(duet_comm_t *comm);       /* the shared scratch and the shelves */
/* The smallest buffer on the shelf of at least need bytes (*got: its size),
 * or a new one; NULL when out of memory. */
void *duet__shelf_take(duet__shelf_t *sh, size_t need, size_t *got);
/* Keep buf (NULL: nothing) on the shelf, or free it. */
void duet__shelf_put(duet__shelf_t *sh, void *buf, size_t size);
void duet__comm_fail_pending(duet_comm_t *comm, duet_status_t status);
void duet__request_release_all(duet__netset_t *nets);

/* async.c: the progress thread (DUET_PROGRESS_THREAD=1) */
duet_status_t duet__async_start(duet_comm_t *comm); /* drive comm; the first starts the thread */
void duet__async_stop(duet_comm_t *comm);           /* stop; the last joins the thread */
void duet__async_kick(void); /* calls are posted and the caller leaves duet */

/* check.c: argument checks at the API boundary; on failure they record a
 * message naming the argument and return a negative status. */
duet_status_t duet__check_comm(duet_comm_t *comm, const char *fn);
duet_status_t duet__check_buffer(duet_comm_t *comm, const char *fn, const char *name,
                                 const void *buf, size_t count);
duet_status_t duet__check_count(duet_comm_t *comm, const char *fn, size_t count, duet_datatype_t dt,
                                size_t *bytes);
duet_status_t duet__check_dt(duet_comm_t *comm, const char *fn, duet_datatype_t dt);
duet_status_t duet__check_op(duet_comm_t *comm, const char *fn, duet_op_t op);
duet_status_t duet__check_rank(duet_comm_t *comm, const char *fn, const char *name, int r);
duet_status_t duet__check_overlap(duet_comm_t *comm, const char *fn, const void *a, size_t abytes,
                                  const void *b, size_t bbytes);
duet_status_t duet__check_req_out(duet_comm_t *comm, const char *fn, duet_request_t **req);

#endif /* DUET_COMM_H */
