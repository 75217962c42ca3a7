/*
 * coll.c - the public collective and point-to-point calls: check the
 * arguments, let the tuner pick an algorithm, post the schedule, and for the
 * blocking forms wait. Also duet_test, duet_wait and groups.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/log.h"
#include "reduce/reduce.h"
#include "tune/tune.h"

const char *duet__coll_name(int coll) {
  static const char *names[DUET_COLL_COUNT] = {
      "duet_allreduce", "duet_broadcast",      "duet_barrier", "duet_send",     "duet_recv",
      "duet_allgather", "duet_reduce_scatter", "duet_reduce",  "duet_alltoall", "duet_alltoallv"};
  return coll >= 0 && coll < DUET_COLL_COUNT ? names[coll] : "duet_?";
}

#define TRY(call)                                                                                  \
  do {                                                                                             \
    duet_status_t try_rc_ = (call);                                                                \
    if (try_rc_ != DUET_SUCCESS)                                                                   \
      return try_rc_;                                                                              \
  } while (0)

/* Wait for a posted request and free it; NULL: the call already ran (the
 * load/store path). */
static duet_status_t duet__wait_and_free(duet_request_t *req) {
  if (req == NULL)
    return DUET_SUCCESS;
  duet_comm_t *comm = req->comm;
  duet__comm_lock(comm);
  duet_status_t rc = duet__request_wait(req);
  duet__request_free(req);
  duet__comm_unlock(comm);
  return rc;
}

/* --- groups --- */

/* Inside duet_group_start/end, blocking calls (sends, receives and
 * collectives) are posted as their non-blocking forms and completed together
 * at duet_group_end, as NCCL's groups: any call order is deadlock-free, and
 * one thread may drive the communicators of several ranks. The list of a
 * thread's posted requests is kept from one group to the next (grown rarely,
 * freed when the thread exits), so a group allocates nothing once the
 * thread has had one as long. */
static _Thread_local int duet__group_depth;
static _Thread_local duet_request_t **duet__group_reqs;
static _Thread_local size_t duet__group_len, duet__group_cap;
static pthread_key_t duet__group_key; /* frees a thread's list at its exit */
static pthread_once_t duet__group_once = PTHREAD_ONCE_INIT;
static int duet__group_key_ok;

static void duet__group_key_create(void) {
  duet__group_key_ok = pthread_key_create(&duet__group_key, free) == 0;
}

/* Room for one more request in this thread's group list. */
static duet_status_t duet__group_reserve(duet_comm_t *comm, const char *fn) {
  size_t ncap;
  duet_request_t **n;
  if (duet__group_len < duet__group_cap)
    return DUET_SUCCESS;
  ncap = duet__group_cap ? 2 * duet__group_cap : 16;
  n = realloc(duet__group_reqs, ncap * sizeof(*n));
  if (n == NULL)
    return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for the group", fn);
  pthread_once(&duet__group_once, duet__group_key_create);
  if (duet__group_key_ok)
    pthread_setspecific(duet__group_key, n);
  duet__group_reqs = n;
  duet__group_cap = ncap;
  return DUET_SUCCESS;
}

/* The start of a blocking call: *blocking says whether it runs now, or
 * (inside a group) is posted for duet_group_end, with room kept for it. */
static duet_status_t duet__blocking_begin(duet_comm_t *comm, const char *fn, int *blocking) {
  *blocking = duet__group_depth == 0;
  return *blocking ? DUET_SUCCESS : duet__group_reserve(comm, fn);
}

/* The end of a blocking call: wait for it, or (inside a group) leave its
 * request to duet_group_end. */
static duet_status_t duet__blocking_end(duet_request_t *req) {
  if (duet__group_depth == 0)
    return duet__wait_and_free(req);
  if (req != NULL)
    duet__group_reqs[duet__group_len++] = req;
  return DUET_SUCCESS;
}

/* --- collectives: check, tune, build, post --- */

/* Fill the arguments every collective shares. */
static void duet__args_init(duet__coll_args_t *a, duet_comm_t *comm, int coll, size_t count,
                            duet_datatype_t dt, duet_op_t op, int root) {
  memset(a, 0, sizeof(*a));
  a->coll = coll;
  a->rank = comm->rank;
  a->nranks = comm->nranks;
  a->root = root;
  a->count = count;
  a->dt = dt;
  a->op = op;
  a->dtsize = duet__dt_size(dt);
  a->chunk_bytes = comm->cfg.chunk_bytes;
  a->rd_max_bytes = comm->cfg.rd_max_bytes;
  a->layout = &comm->layout;
}

/* The UPN load/store path takes a call of the collectives it has when the
 * communicator is one super-node on one host (every rank decides alike) and
 * DUET_ALGO does not force a schedule. A blocking call runs at once and
 * needs no network progress, so pending transfers simply wait for the next
 * duet call; a non-blocking one is queued (core/mem_queue.c). */
int duet__mem_path(const duet_comm_t *comm, int coll) {
  switch (coll) {
  case DUET_COLL_ALLREDUCE:
  case DUET_COLL_BROADCAST:
  case DUET_COLL_REDUCE:
  case DUET_COLL_ALLGATHER:
  case DUET_COLL_REDUCE_SCATTER:
  case DUET_COLL_ALLTOALL:
  case DUET_COLL_ALLTOALLV:
  case DUET_COLL_BARRIER:
    return comm->mem != NULL && comm->nsupernodes == 1 &&
           comm->cfg.algo.coll[coll] == DUET_ALGO_AUTO;
  }
  return 0;
}

/* Run a checked call on the load/store path, blocking (a non-blocking call
 * runs it as a task: mem_queue.c); count the bytes this rank moved as UPN
 * traffic. */
duet_status_t duet__mem_run(duet_comm_t *comm, const duet__coll_args_t *a, const void *sendbuf,
                            void *recvbuf) {
  const uint64_t bytes = (uint64_t)a->count * a->dtsize, peers = (uint64_t)(comm->nranks - 1);
  const int yield = comm->yield, ms = comm->cfg.timeout_ms, n = comm->nranks;
  const int is_root = comm->rank == a->root;
  uint64_t sent = 0, recvd = 0;
  char err[DUET_SHM_ERRLEN] = "";
  duet_status_t rc = DUET_ERR_INTERNAL;

  switch (a->coll) {
  case DUET_COLL_ALLREDUCE:
    rc =
        duet__shm_allreduce(comm->mem, sendbuf, recvbuf, a->count, a->dt, a->op, n, yield, ms, err);
    sent = recvd = bytes * peers / (uint64_t)n;
    break;
  case DUET_COLL_BROADCAST:
    rc = duet__shm_broadcast(comm->mem, sendbuf, recvbuf, bytes, a->root, yield, ms, err);
    sent = is_root && peers ? bytes : 0;
    recvd = is_root ? 0 : bytes;
    break;
  case DUET_COLL_REDUCE:
    rc = duet__shm_reduce(comm->mem, sendbuf, recvbuf, a->count, a->dt, a->op, n, a->root, yield,
                          ms, err);
    sent = is_root ? 0 : bytes;
    recvd = is_root ? bytes * peers : 0;
    break;
  case DUET_COLL_ALLGATHER:
    rc = duet__shm_allgather(comm->mem, sendbuf, recvbuf, bytes, yield, ms, err);
    sent = recvd = bytes * peers;
    break;
  case DUET_COLL_REDUCE_SCATTER:
    rc = duet__shm_reduce_scatter(comm->mem, sendbuf, recvbuf, a->count, a->dt, a->op, n, yield, ms,
                                  err);
    sent = recvd = bytes * peers;
    break;
  case DUET_COLL_ALLTOALL:
    rc = duet__shm_alltoall(comm->mem, sendbuf, recvbuf, bytes, yield, ms, err);
    sent = recvd = bytes * peers;
    break;
  case DUET_COLL_ALLTOALLV:
    rc = duet__shm_alltoallv(comm->mem, sendbuf, a->scounts, a->sdispls, recvbuf, a->rcounts,
                             a->rdispls, a->dtsize, yield, ms, err);
    for (int d = 0; d < n; d++)
      if (d != comm->rank) {
        sent += a->scounts[d] * a->dtsize;
        recvd += a->rcounts[d] * a->dtsize;
      }
    break;
  case DUET_COLL_BARRIER:
    rc = duet__shm_barrier(comm->mem, yield, ms, err);
    break;
  }
  if (rc == DUET_SUCCESS) {
    comm->stats.upn_bytes_sent += sent;
    comm->stats.upn_bytes_recv += recvd;
    return rc;
  }
  comm->failed = rc;
  return duet__set_error(comm, rc, "%s seq %u on rank %d (shared-memory UPN): %s",
                         duet__coll_name(a->coll), comm->seq, comm->rank, err);
}

/* The hierarchical collectives with the load/store UPN (duet__mem_hier_run):
 * taken by a call the tuner sends to the hierarchy when every super-node has
 * the shared segment and the layout suits the collective (every rank
 * decides alike); a non-blocking one runs as a queued task
 * (core/mem_queue.c). Where the rails do not suit the layout (super-nodes
 * of unequal size; for allgather and reduce-scatter also super-nodes whose
 * ranks are not one range each, since the segment's calls take contiguous
 * blocks), blocks cross the HPN straight between the ranks concerned
 * (duet__mem_a2a_remote, duet__mem_ag_remote, duet__mem_rs_remote). */
static int duet__mem_hier_ok(const duet_comm_t *comm, int coll) {
  int any_sizes = 0; /* the representatives' algorithms take any layout */
  switch (coll) {
  case DUET_COLL_ALLTOALL: /* unequal sizes: duet__mem_a2a_remote */
  case DUET_COLL_ALLTOALLV:
    any_sizes = 1;
    break;
  case DUET_COLL_ALLGATHER: /* other layouts: duet__mem_ag_remote, duet__mem_rs_remote */
  case DUET_COLL_REDUCE_SCATTER:
  case DUET_COLL_ALLREDUCE:
  case DUET_COLL_BROADCAST:
  case DUET_COLL_REDUCE:
  case DUET_COLL_BARRIER:
    any_sizes = 1;
    break;
  default:
    return 0;
  }
  return comm->mem != NULL && comm->mem_everywhere && comm->nsupernodes > 1 &&
         (comm->layout.uniform || any_sizes) && comm->cfg.algo.coll[coll] == DUET_ALGO_AUTO &&
         comm->local_rank == comm->layout.local_rank[comm->rank];
}

/* Post a schedule over the HPN (the rail or representatives' phase of a
 * hierarchical call) with sendbuf and recvbuf, and wait for it; inside a
 * task, the wait suspends it (duet__mem_await). */
static duet_status_t duet__mem_schedule(duet_comm_t *comm, const duet__coll_args_t *a,
                                        duet__coll_build_fn build, const void *sendbuf,
                                        void *recvbuf) {
  duet_request_t *req = NULL;
  duet_status_t rc = duet__request_post(comm, a->coll, a, build, sendbuf, recvbuf, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__mem_await(comm, req);
  duet__request_free(req);
  return rc;
}

/* The segment failed in a hierarchical call's phase inside the super-node:
 * the communicator fails (its local ranks are out of step). */
static duet_status_t duet__mem_failed(duet_comm_t *comm, const duet__coll_args_t *a,
                                      duet_status_t rc, const char *phase, const char *err) {
  comm->failed = rc;
  return duet__set_error(comm, rc, "%s seq %u on rank %d (shared-memory UPN, %s): %s",
                         duet__coll_name(a->coll), comm->seq, comm->rank, phase, err);
}

/* A phase over the HPN that runs beside the segment's work: posted first
 * (duet__mem_post_phase), then waited for and freed (duet__mem_end_phase),
 * or given up when the segment or the networks failed
 * (duet__mem_drop_phase). Inside a task, the posted request is recorded so
 * that a failed communicator frees it if the task never resumes
 * (duet__mem_fail_all). */
static duet_status_t duet__mem_post_phase(duet_comm_t *comm, const duet__coll_args_t *a,
                                          duet__coll_build_fn build, const void *sendbuf,
                                          void *recvbuf, duet_request_t **req) {
  duet_status_t rc = duet__request_post(comm, a->coll, a, build, sendbuf, recvbuf, req);
  if (rc == DUET_SUCCESS && comm->mem_in_task)
    comm->mem_awaiting = *req;
  return rc;
}

static duet_status_t duet__mem_end_phase(duet_comm_t *comm, duet_request_t *req) {
  duet_status_t rc = duet__mem_await(comm, req);
  comm->mem_awaiting = NULL;
  duet__request_free(req);
  return rc;
}

/* err empty: the networks failed, and said so; otherwise the segment did. */
static duet_status_t duet__mem_drop_phase(duet_comm_t *comm, const duet__coll_args_t *a,
                                          duet_request_t *req, duet_status_t rc, const char *phase,
                                          const char *err) {
  comm->mem_awaiting = NULL;
  duet__request_abandon(req, rc);
  return err[0] == '\0' ? rc : duet__mem_failed(comm, a, rc, phase, err);
}

/* The communicator's staging buffer (partial results of a hierarchical
 * call), at least bytes long; grown rarely. NULL, with the error set, when
 * out of memory. */
static char *duet__mem_stage(duet_comm_t *comm, const duet__coll_args_t *a, size_t bytes) {
  if (comm->mem_stage_size < bytes) {
    void *p = realloc(comm->mem_stage, bytes);
    if (p == NULL) {
      duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for %zu bytes",
                      duet__coll_name(a->coll), bytes);
      return NULL;
    }
    comm->mem_stage = p;
    comm->mem_stage_size = bytes;
  }
  return comm->mem_stage;
}

/* 1. the super-node's sum into every local rank's recvbuf (shared segment);
 * 2. segment j (duet__allreduce_hier_rail_build) on rail j over the HPN;
 * 3. the segments to every local rank (shared segment: an allgather of the
 *    equal segments, and a broadcast of the count % L left at the end from
 *    the last local rank, which reduced them). AVG sums and divides once. */
static duet_status_t duet__mem_hier_allreduce(duet_comm_t *comm, duet__coll_args_t *a,
                                              const void *sendbuf, void *recvbuf) {
  const int L = comm->local_size, j = comm->local_rank, yield = comm->yield;
  const int ms = comm->cfg.timeout_ms;
  const size_t es = a->dtsize, b = a->count / (size_t)L, tail = a->count - b * (size_t)L;
  const duet_op_t user_op = a->op;
  char *rb = recvbuf, err[DUET_SHM_ERRLEN] = "";
  const char *phase = "allreduce inside the super-node";
  duet_status_t rc;

  a->op = user_op == DUET_AVG ? DUET_SUM : user_op;
  rc = duet__shm_allreduce(comm->mem, sendbuf, recvbuf, a->count, a->dt, a->op, L, yield, ms, err);
  if (rc != DUET_SUCCESS)
    goto shm_failed;
  a->in_place = 1;
  if (!comm->layout.uniform) { /* the leaders, then a broadcast from each */
    rc = duet__mem_schedule(comm, a, duet__allreduce_hier_leaders_build, recvbuf, recvbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    phase = "broadcast inside the super-node";
    rc = duet__shm_broadcast(comm->mem, j == 0 ? recvbuf : NULL, recvbuf, a->count * es, 0, yield,
                             ms, err);
    if (rc != DUET_SUCCESS)
      goto shm_failed;
    if (user_op == DUET_AVG)
      duet__reduce_avg_finish(recvbuf, a->count, a->dt, comm->nranks);
    { /* as mem_run counts an allreduce and a broadcast */
      const uint64_t bytes = (uint64_t)(a->count * es);
      comm->stats.upn_bytes_sent += bytes * (uint64_t)(L - 1) / (uint64_t)L + (j == 0 ? bytes : 0);
      comm->stats.upn_bytes_recv += bytes * (uint64_t)(L - 1) / (uint64_t)L + (j == 0 ? 0 : bytes);
    }
    return DUET_SUCCESS;
  }
  rc = duet__mem_schedule(comm, a, duet__allreduce_hier_rail_build, recvbuf, recvbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  phase = "allgather inside the super-node";
  if (b > 0)
    rc = duet__shm_allgather(comm->mem, rb + (size_t)j * b * es, rb, b * es, yield, ms, err);
  if (rc == DUET_SUCCESS && tail > 0)
    rc = duet__shm_broadcast(comm->mem, j == L - 1 ? rb + (size_t)L * b * es : NULL,
                             rb + (size_t)L * b * es, tail * es, L - 1, yield, ms, err);
  if (rc != DUET_SUCCESS)
    goto shm_failed;
  if (user_op == DUET_AVG)
    duet__reduce_avg_finish(recvbuf, a->count, a->dt, comm->nranks);
  { /* as mem_run counts an allreduce and an allgather */
    const uint64_t upn = (uint64_t)(a->count * es) * (uint64_t)(L - 1) / (uint64_t)L +
                         (uint64_t)(b * es) * (uint64_t)(L - 1);
    comm->stats.upn_bytes_sent += upn;
    comm->stats.upn_bytes_recv += upn;
  }
  return DUET_SUCCESS;

shm_failed:
  return duet__mem_failed(comm, a, rc, phase, err);
}

/* One round's segment alltoallv: counts and displacements (elements) per
 * local rank, into *to (recvbuf, or the round's staging). alltoallv: staged,
 * the elements the rounds before staged (rounds run m = 1, 2, ...). */
typedef struct duet__a2a_round {
  size_t *sc, *sd, *rc, *rd;
  char *to;
  uint64_t staged;
} duet__a2a_round_t;

/* alltoall: blocks of count elements; round m's staged in local rank order
 * at (m - 1) L blocks, this rank's own not when the rail sends it from
 * sendbuf. */
static void duet__a2a_round(const duet_comm_t *comm, const duet__coll_args_t *a, char *scratch,
                            void *recvbuf, int m, duet__a2a_round_t *r) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size, sn = l->supernode[comm->rank];
  const int32_t *dst_dom = l->members + l->sn_first[(sn + m) % comm->nsupernodes];
  const int32_t *domain = l->members + l->sn_first[sn];
  const size_t cnt = a->count;
  r->to = m == 0 ? recvbuf : scratch + (size_t)(m - 1) * (size_t)L * cnt * a->dtsize;
  for (int i = 0; i < L; i++) {
    r->sc[i] = r->rc[i] = cnt;
    r->sd[i] = (size_t)dst_dom[i] * cnt;
    r->rd[i] = m == 0 ? (size_t)domain[i] * cnt : (size_t)i * cnt;
  }
  if (m > 0 && duet__alltoall_hier_rail_own(a))
    r->sc[comm->local_rank] = r->rc[comm->local_rank] = 0;
}

/* alltoallv: blocks as the rail counts size them, round m's packed in
 * local rank order after the rounds before (duet__alltoallv_hier_stage). */
static void duet__a2av_round(const duet_comm_t *comm, const duet__coll_args_t *a, char *scratch,
                             void *recvbuf, int m, duet__a2a_round_t *r) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size, j = comm->local_rank, sn = l->supernode[comm->rank];
  const int32_t *dst_dom = l->members + l->sn_first[(sn + m) % comm->nsupernodes];
  const int32_t *domain = l->members + l->sn_first[sn];
  const size_t N = (size_t)comm->nsupernodes, d = (size_t)((sn + m) % comm->nsupernodes);
  uint64_t off = 0;
  r->to = m == 0 ? recvbuf : scratch + r->staged * a->dtsize;
  for (int i = 0; i < L; i++) {
    r->sc[i] = a->scounts[dst_dom[i]];
    r->sd[i] = a->sdispls[dst_dom[i]];
    r->rc[i] = m == 0 ? a->rcounts[domain[i]] : a->rail_counts[(size_t)i * N + d];
    r->rd[i] = m == 0 ? a->rdispls[domain[i]] : off;
    off += r->rc[i];
  }
  if (m > 0)
    r->staged += off;
  if (m > 0 && duet__alltoallv_hier_split(off * a->dtsize, L))
    r->sc[j] = r->rc[j] = 0; /* the rail sends it from sendbuf */
}

/* All-to-all on super-nodes of unequal size with the load/store UPN: the
 * rails do not pair up, so blocks cross the HPN straight from sender to
 * receiver (duet__alltoall[v]_remote_build, posted first), while the
 * exchange inside the super-node runs as one segment alltoallv. The two
 * touch disjoint blocks, so they run side by side, in place too. */
static duet_status_t duet__mem_a2a_remote(duet_comm_t *comm, duet__coll_args_t *a,
                                          const void *sendbuf, void *recvbuf,
                                          duet__a2a_round_t *r) {
  const int L = comm->local_size, j = comm->local_rank, v = a->coll == DUET_COLL_ALLTOALLV;
  const size_t es = a->dtsize;
  char err[DUET_SHM_ERRLEN] = "";
  duet_request_t *req = NULL;
  duet_status_t rc;

  rc = duet__mem_post_phase(comm, a, v ? duet__alltoallv_remote_build : duet__alltoall_remote_build,
                            sendbuf, recvbuf, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  (v ? duet__a2av_round : duet__a2a_round)(comm, a, NULL, recvbuf, 0, r);
  rc = duet__shm_alltoallv(comm->mem, sendbuf, r->sc, r->sd, r->to, r->rc, r->rd, es, comm->yield,
                           comm->cfg.timeout_ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_drop_phase(comm, a, req, rc, "exchange inside the super-node", err);
  for (int i = 0; i < L; i++)
    if (i != j) {
      comm->stats.upn_bytes_sent += r->sc[i] * es;
      comm->stats.upn_bytes_recv += r->rc[i] * es;
    }
  return duet__mem_end_phase(comm, req);
}

/* The hierarchical all-to-all with the load/store UPN (the rounds of
 * duet__alltoall_hier_build, its UPN hops through the shared segment):
 * 1. post the rail phase (duet__alltoall[v]_hier_rail_build): its
 *    receives, and the large blocks this rank sends itself out of place,
 *    start now;
 * 2. for each remote super-node d = sn + m: a segment alltoallv in which
 *    local rank i hands this rank (local index j) its block for rank (d, j),
 *    staged in the rail phase's scratch; then gate m - 1 opens and the rail
 *    sends it on;
 * 3. the exchange inside the super-node, straight into recvbuf;
 * 4. wait for the rail phase.
 * In place (alltoall), the staging reads every block to send before a
 * receive may overwrite it (the receives wait for the last gate). For
 * alltoallv, the rail counts (args->rail_counts) were shared before. */
static duet_status_t duet__mem_hier_alltoall(duet_comm_t *comm, duet__coll_args_t *a,
                                             const void *sendbuf, void *recvbuf) {
  const int L = comm->local_size, j = comm->local_rank, N = comm->nsupernodes;
  const int yield = comm->yield, ms = comm->cfg.timeout_ms, v = a->coll == DUET_COLL_ALLTOALLV;
  const size_t es = a->dtsize;
  char err[DUET_SHM_ERRLEN] = "";
  duet_request_t *req = NULL;
  duet__a2a_round_t r;
  duet_status_t rc;
  uint64_t sent = 0, recvd = 0;

  if (!v && a->count == 0) /* every rank has the same count: nothing moves anywhere */
    return DUET_SUCCESS;
  if (comm->mem_a2a_counts == NULL) { /* once per communicator */
    comm->mem_a2a_counts = malloc(4 * (size_t)L * sizeof(size_t));
    if (comm->mem_a2a_counts == NULL)
      return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for %d counts",
                             duet__coll_name(a->coll), 4 * L);
  }
  r.sc = comm->mem_a2a_counts;
  r.sd = r.sc + L;
  r.rc = r.sd + L;
  r.rd = r.rc + L;
  r.staged = 0;
  if (!comm->layout.uniform)
    return duet__mem_a2a_remote(comm, a, sendbuf, recvbuf, &r);
  rc = duet__mem_post_phase(comm, a,
                            v ? duet__alltoallv_hier_rail_build : duet__alltoall_hier_rail_build,
                            sendbuf, recvbuf, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  for (int k = 1; k <= N && rc == DUET_SUCCESS; k++) {
    const int m = k % N; /* the own super-node last */
    (v ? duet__a2av_round : duet__a2a_round)(comm, a, (char *)req->bufs[DUET_BUF_SCRATCH], recvbuf,
                                             m, &r);
    for (int i = 0; i < L; i++)
      if (i != j) {
        sent += r.sc[i] * es;
        recvd += r.rc[i] * es;
      }
    rc = duet__shm_alltoallv(comm->mem, sendbuf, r.sc, r.sd, r.to, r.rc, r.rd, es, yield, ms, err);
    if (rc != DUET_SUCCESS || m == 0)
      break;
    duet__request_open_gate(req, (uint32_t)(m - 1));
    if (!comm->mem_in_task) /* a blocking call: hand the rail its data now */
      rc = duet__progress(comm);
  }
  if (rc != DUET_SUCCESS)
    return duet__mem_drop_phase(comm, a, req, rc, "exchange inside the super-node", err);
  comm->stats.upn_bytes_sent += sent;
  comm->stats.upn_bytes_recv += recvd;
  return duet__mem_end_phase(comm, req);
}

/* Whether this rank's super-node is one range of ranks. */
static int duet__mem_range(const duet_comm_t *comm) {
  const duet__layout_t *l = &comm->layout;
  const int32_t *domain = l->members + l->sn_first[l->supernode[comm->rank]];
  for (int i = 1; i < comm->local_size; i++)
    if (domain[i] != domain[0] + i)
      return 0;
  return 1;
}

/* Allgather where the rails do not suit the layout, with the load/store UPN:
 * every other super-node's blocks come straight from their ranks
 * (duet__allgather_remote_build, posted first) while a segment allgather
 * gathers this super-node's, through the staging buffer to their places
 * when its ranks are not one range. */
static duet_status_t duet__mem_ag_remote(duet_comm_t *comm, duet__coll_args_t *a,
                                         const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size;
  const int32_t *domain = l->members + l->sn_first[l->supernode[comm->rank]];
  const size_t S = a->count * a->dtsize;
  const int range = duet__mem_range(comm);
  char *rb = recvbuf, *to = rb + (size_t)domain[0] * S, err[DUET_SHM_ERRLEN] = "";
  duet_request_t *req = NULL;
  duet_status_t rc;

  if (!range && (to = duet__mem_stage(comm, a, (size_t)L * S)) == NULL)
    return DUET_ERR_NO_MEMORY;
  rc = duet__mem_post_phase(comm, a, duet__allgather_remote_build, sendbuf, recvbuf, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__shm_allgather(comm->mem, sendbuf, to, S, comm->yield, comm->cfg.timeout_ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_drop_phase(comm, a, req, rc, "allgather inside the super-node", err);
  for (int i = 0; !range && i < L; i++)
    memcpy(rb + (size_t)domain[i] * S, to + (size_t)i * S, S);
  comm->stats.upn_bytes_sent += (uint64_t)S * (uint64_t)(L - 1);
  comm->stats.upn_bytes_recv += (uint64_t)S * (uint64_t)(L - 1);
  return duet__mem_end_phase(comm, req);
}

/* Reduce-scatter where the rails do not suit the layout, with the
 * load/store UPN: the block for each rank of the other super-nodes goes to
 * it as it is (duet__reduce_scatter_remote_build, posted first; theirs for
 * this rank land in the staging buffer), while a segment reduce-scatter
 * sums this super-node's blocks (packed in the staging buffer first when
 * its ranks are not one range). Once the sends are out, so that recvbuf
 * may alias sendbuf, recvbuf = that sum + each received block in rank
 * order. AVG sums, and divides once at the end. */
static duet_status_t duet__mem_rs_remote(duet_comm_t *comm, duet__coll_args_t *a,
                                         const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size;
  const int32_t *domain = l->members + l->sn_first[l->supernode[comm->rank]];
  const size_t S = a->count * a->dtsize, nrem = (size_t)(comm->nranks - L);
  const int range = duet__mem_range(comm);
  const duet_op_t inner = a->op == DUET_AVG ? DUET_SUM : a->op;
  const char *sb = sendbuf, *from = sb + (size_t)domain[0] * S;
  char err[DUET_SHM_ERRLEN] = "", *stage, *mine;
  duet__coll_args_t rem = *a;
  duet_request_t *req = NULL;
  duet_status_t rc;

  if ((stage = duet__mem_stage(comm, a, (nrem + 1 + (range ? 0 : (size_t)L)) * S)) == NULL)
    return DUET_ERR_NO_MEMORY;
  mine = stage + nrem * S;
  if (!range) {
    for (int i = 0; i < L; i++)
      memcpy(mine + S + (size_t)i * S, sb + (size_t)domain[i] * S, S);
    from = mine + S;
  }
  rem.in_place = 0;
  rem.out_aliases_in = 0; /* recvbuf is written below, after the sends */
  rc = duet__mem_post_phase(comm, &rem, duet__reduce_scatter_remote_build, sendbuf, stage, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__shm_reduce_scatter(comm->mem, from, mine, a->count, a->dt, inner, L, comm->yield,
                                comm->cfg.timeout_ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_drop_phase(comm, a, req, rc, "reduce-scatter inside the super-node", err);
  comm->stats.upn_bytes_sent += (uint64_t)S * (uint64_t)(L - 1);
  comm->stats.upn_bytes_recv += (uint64_t)S * (uint64_t)(L - 1);
  rc = duet__mem_end_phase(comm, req);
  if (rc != DUET_SUCCESS)
    return rc;
  duet__reduce(recvbuf, mine, stage, a->count, a->dt, inner);
  for (size_t k = 1; k < nrem; k++)
    duet__reduce(recvbuf, recvbuf, stage + k * S, a->count, a->dt, inner);
  if (a->op == DUET_AVG)
    duet__reduce_avg_finish(recvbuf, a->count, a->dt, comm->nranks);
  return DUET_SUCCESS;
}

/* The hierarchical allgather with the load/store UPN (equal super-nodes of
 * consecutive ranks): post the rail phase (duet__allgather_hier_rail_build:
 * this rank's block to its rail); meanwhile a segment allgather of the
 * super-node's own blocks; once the rail is done, one segment allgather per
 * other super-node d of the blocks of (d, i) that local rank i got on its
 * rail. */
static duet_status_t duet__mem_hier_allgather(duet_comm_t *comm, duet__coll_args_t *a,
                                              const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size, j = comm->local_rank, N = comm->nsupernodes;
  const int sn = l->supernode[comm->rank], yield = comm->yield, ms = comm->cfg.timeout_ms;
  const size_t S = a->count * a->dtsize;
  char *rb = recvbuf, err[DUET_SHM_ERRLEN] = "";
  duet_request_t *req = NULL;
  duet_status_t rc;

  if (S == 0)
    return DUET_SUCCESS;
  if (!l->uniform || !l->consecutive)
    return duet__mem_ag_remote(comm, a, sendbuf, recvbuf);
  rc = duet__mem_post_phase(comm, a, duet__allgather_hier_rail_build, sendbuf, recvbuf, &req);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__shm_allgather(comm->mem, sendbuf, rb + (size_t)l->members[l->sn_first[sn]] * S, S,
                           yield, ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_drop_phase(comm, a, req, rc, "allgather inside the super-node", err);
  rc = duet__mem_end_phase(comm, req);
  if (rc != DUET_SUCCESS)
    return rc;
  for (int m = 1; m < N; m++) {
    const size_t first = (size_t)l->members[l->sn_first[(sn + m) % N]];
    rc = duet__shm_allgather(comm->mem, rb + (first + (size_t)j) * S, rb + first * S, S, yield, ms,
                             err);
    if (rc != DUET_SUCCESS)
      goto shm_failed;
  }
  comm->stats.upn_bytes_sent += (uint64_t)N * S * (uint64_t)(L - 1);
  comm->stats.upn_bytes_recv += (uint64_t)N * S * (uint64_t)(L - 1);
  return DUET_SUCCESS;

shm_failed:
  return duet__mem_failed(comm, a, rc, "allgather inside the super-node", err);
}

/* The hierarchical reduce-scatter with the load/store UPN (equal super-nodes
 * of consecutive ranks): per super-node k, a segment reduce-scatter of its
 * L blocks gives local rank j the sum over this super-node of the block for
 * rank (k, j), staged at k x count in a buffer of the communicator; then
 * the rail phase (duet__reduce_scatter_hier_rail_build) reduces those
 * across super-nodes into recvbuf. AVG sums, and divides once at the end.
 * The send buffer is read before recvbuf is written, so both in-place forms
 * need nothing more. */
static duet_status_t duet__mem_hier_reduce_scatter(duet_comm_t *comm, duet__coll_args_t *a,
                                                   const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int L = comm->local_size, N = comm->nsupernodes;
  const int yield = comm->yield, ms = comm->cfg.timeout_ms;
  const size_t S = a->count * a->dtsize, need = (size_t)N * S;
  const duet_op_t inner = a->op == DUET_AVG ? DUET_SUM : a->op;
  const char *sb = sendbuf;
  char err[DUET_SHM_ERRLEN] = "", *stage;
  duet__coll_args_t rail = *a;
  duet_status_t rc = DUET_SUCCESS;

  if (S == 0)
    return DUET_SUCCESS;
  if (!l->uniform || !l->consecutive)
    return duet__mem_rs_remote(comm, a, sendbuf, recvbuf);
  if ((stage = duet__mem_stage(comm, a, need)) == NULL)
    return DUET_ERR_NO_MEMORY;
  for (int k = 0; k < N && rc == DUET_SUCCESS; k++) {
    const size_t first = (size_t)l->members[l->sn_first[k]];
    rc = duet__shm_reduce_scatter(comm->mem, sb + first * S, stage + (size_t)k * S, a->count, a->dt,
                                  inner, L, yield, ms, err);
  }
  if (rc != DUET_SUCCESS)
    return duet__mem_failed(comm, a, rc, "reduce-scatter inside the super-node", err);
  comm->stats.upn_bytes_sent += (uint64_t)N * S * (uint64_t)(L - 1);
  comm->stats.upn_bytes_recv += (uint64_t)N * S * (uint64_t)(L - 1);
  rail.in_place = 0;
  rail.out_aliases_in = 0; /* it reads the stage, not sendbuf */
  return duet__mem_schedule(comm, &rail, duet__reduce_scatter_hier_rail_build, stage, recvbuf);
}

/* The hierarchical broadcast with the load/store UPN: the root's data to
 * one representative per super-node (duet__broadcast_hier_rail_build), then
 * a segment broadcast from the representative, in place on its recvbuf. */
static duet_status_t duet__mem_hier_broadcast(duet_comm_t *comm, duet__coll_args_t *a,
                                              const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int root_lr = l->local_rank[a->root], ls = comm->local_size;
  const int rep = root_lr < ls ? root_lr : ls - 1;
  const size_t bytes = a->count * a->dtsize;
  char err[DUET_SHM_ERRLEN] = "";
  duet_status_t rc;

  if (bytes == 0)
    return DUET_SUCCESS;
  rc = duet__mem_schedule(comm, a, duet__broadcast_hier_rail_build, sendbuf, recvbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__shm_broadcast(comm->mem, comm->local_rank == rep ? recvbuf : NULL, recvbuf, bytes, rep,
                           comm->yield, comm->cfg.timeout_ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_failed(comm, a, rc, "broadcast inside the super-node", err);
  if (comm->local_rank == rep)
    comm->stats.upn_bytes_sent += bytes;
  else
    comm->stats.upn_bytes_recv += bytes;
  return DUET_SUCCESS;
}

/* The hierarchical reduce with the load/store UPN: a segment reduce to the
 * representative (the root's into its recvbuf, another's into a buffer of
 * the communicator), then the representatives' reduce to the root
 * (duet__reduce_hier_rail_build). AVG sums, and divides once at the end. */
static duet_status_t duet__mem_hier_reduce(duet_comm_t *comm, duet__coll_args_t *a,
                                           const void *sendbuf, void *recvbuf) {
  const duet__layout_t *l = &comm->layout;
  const int root_lr = l->local_rank[a->root], ls = comm->local_size;
  const int rep = root_lr < ls ? root_lr : ls - 1, is_root = comm->rank == a->root;
  const size_t bytes = a->count * a->dtsize;
  const duet_op_t inner = a->op == DUET_AVG ? DUET_SUM : a->op;
  duet__coll_args_t rail = *a;
  char err[DUET_SHM_ERRLEN] = "", *part = recvbuf;
  duet_status_t rc;

  if (bytes == 0)
    return DUET_SUCCESS;
  if (comm->local_rank == rep && !is_root && (part = duet__mem_stage(comm, a, bytes)) == NULL)
    return DUET_ERR_NO_MEMORY;
  rc = duet__shm_reduce(comm->mem, sendbuf, part, a->count, a->dt, inner, ls, rep, comm->yield,
                        comm->cfg.timeout_ms, err);
  if (rc != DUET_SUCCESS)
    return duet__mem_failed(comm, a, rc, "reduce inside the super-node", err);
  if (comm->local_rank == rep)
    comm->stats.upn_bytes_recv += bytes * (uint64_t)(ls - 1);
  else
    comm->stats.upn_bytes_sent += bytes;
  rail.in_place = is_root; /* the root's partial result is in its recvbuf */
  return duet__mem_schedule(comm, &rail, duet__reduce_hier_rail_build, part, recvbuf);
}

/* The hierarchical barrier with the load/store UPN: a segment barrier, the
 * leaders' barrier (duet__barrier_hier_rail_build), a segment barrier. */
static duet_status_t duet__mem_hier_barrier(duet_comm_t *comm, duet__coll_args_t *a) {
  char err[DUET_SHM_ERRLEN] = "";
  duet_status_t rc = duet__shm_barrier(comm->mem, comm->yield, comm->cfg.timeout_ms, err);
  if (rc == DUET_SUCCESS) {
    rc = duet__mem_schedule(comm, a, duet__barrier_hier_rail_build, NULL, NULL);
    if (rc != DUET_SUCCESS)
      return rc;
    rc = duet__shm_barrier(comm->mem, comm->yield, comm->cfg.timeout_ms, err);
  }
  return rc == DUET_SUCCESS ? rc
                            : duet__mem_failed(comm, a, rc, "barrier inside the super-node", err);
}

/* A hierarchical call on the load/store UPN (duet__mem_hier_ok), blocking
 * or as a queued task. */
duet_status_t duet__mem_hier_run(duet_comm_t *comm, duet__coll_args_t *a, const void *sendbuf,
                                 void *recvbuf) {
  switch (a->coll) {
  case DUET_COLL_ALLREDUCE:
    return duet__mem_hier_allreduce(comm, a, sendbuf, recvbuf);
  case DUET_COLL_ALLGATHER:
    return duet__mem_hier_allgather(comm, a, sendbuf, recvbuf);
  case DUET_COLL_REDUCE_SCATTER:
    return duet__mem_hier_reduce_scatter(comm, a, sendbuf, recvbuf);
  case DUET_COLL_BROADCAST:
    return duet__mem_hier_broadcast(comm, a, sendbuf, recvbuf);
  case DUET_COLL_REDUCE:
    return duet__mem_hier_reduce(comm, a, sendbuf, recvbuf);
  case DUET_COLL_BARRIER:
    return duet__mem_hier_barrier(comm, a);
  default:
    return duet__mem_hier_alltoall(comm, a, sendbuf, recvbuf);
  }
}

/* The hierarchical alltoallv's rail counts (duet__alltoallv_counts_pack):
 * this rank's send counts packed into counts[0 .. p), exchanged inside the
 * super-node under sequence number seq, through the segment when every
 * super-node has one, else over the UPN; the rail counts land in
 * counts[p .. 2p). Super-nodes of equal size. */
static duet_status_t duet__a2av_share_counts(duet_comm_t *comm, duet__coll_args_t *a,
                                             uint32_t seq, uint64_t *counts) {
  const size_t p = (size_t)comm->nranks, N = (size_t)comm->nsupernodes;
  const int L = comm->local_size;
  uint64_t *row = counts, *rail = counts + p;
  duet__coll_args_t g;
  duet_status_t rc;

  duet__alltoallv_counts_pack(a, row);
  a->rail_counts = rail; /* read while building; the schedule holds sizes */
  if (comm->mem_everywhere) {
    char err[DUET_SHM_ERRLEN] = "";
    rc = duet__shm_alltoall(comm->mem, row, rail, N * sizeof(*row), comm->yield,
                            comm->cfg.timeout_ms, err);
    if (rc != DUET_SUCCESS)
      return duet__mem_failed(comm, a, rc, "count exchange inside the super-node", err);
    comm->stats.upn_bytes_sent += (uint64_t)(L - 1) * N * sizeof(*row);
    comm->stats.upn_bytes_recv += (uint64_t)(L - 1) * N * sizeof(*row);
    return DUET_SUCCESS;
  }
  duet__args_init(&g, comm, DUET_COLL_ALLTOALL, N, DUET_UINT64, DUET_SUM, 0);
  g.seq_reserved = 1;
  g.seq = seq;
  return duet__mem_schedule(comm, &g, duet__alltoall_local_build, row, rail);
}

duet_status_t duet__mem_a2av_run(duet_comm_t *comm, duet__coll_args_t *a, uint32_t counts_seq,
                                 uint64_t *counts, const void *sendbuf, void *recvbuf) {
  duet_status_t rc = DUET_SUCCESS;
  if (comm->layout.uniform) /* the gatherers' counts; other layouts go pairwise */
    rc = duet__a2av_share_counts(comm, a, counts_seq, counts);
  if (rc != DUET_SUCCESS)
    return rc;
  if (duet__mem_hier_ok(comm, a->coll))
    return duet__mem_hier_run(comm, a, sendbuf, recvbuf);
  return duet__mem_schedule(comm, a, duet__alltoallv_hier_build, sendbuf, recvbuf);
}

/* Ask the tuner (or DUET_ALGO) for the algorithm, then post its schedule;
 * or run a blocking call on the load/store path (*req = NULL). bytes: the
 * size the cost model weighs (the whole vector, or the gathered result). */
static duet_status_t duet__coll_run(duet_comm_t *comm, duet__coll_args_t *a, size_t bytes,
                                    const void *sendbuf, void *recvbuf, duet_request_t **req) {
  if (duet__mem_path(comm, a->coll)) {
    duet_status_t rc;
    if (!a->blocking)
      return duet__mem_post(comm, a, sendbuf, recvbuf, DUET_MEM_FLAT, req);
    *req = NULL;
    rc = duet__mem_drain(comm); /* the segment runs calls in call order */
    return rc != DUET_SUCCESS ? rc : duet__mem_run(comm, a, sendbuf, recvbuf);
  }
  duet__tune_choice_t ch = duet__tune_pick(&comm->shape, a->coll, bytes, &comm->cfg.algo);
  duet__coll_build_fn build = duet__coll_builder(a->coll, ch.algo);
  if (build == NULL)
    return duet__set_error(comm, DUET_ERR_INTERNAL, "%s: no builder for algorithm %s",
                           duet__coll_name(a->coll), duet__algo_name(ch.algo));
  if (ch.chunk_bytes > 0 && !comm->cfg.chunk_forced)
    a->chunk_bytes = ch.chunk_bytes;
  DUET_TRACE(DUET_SUB_TUNE, "%s of %zu bytes: %s, chunk %zu", duet__coll_name(a->coll), bytes,
             duet__algo_name(ch.algo), a->chunk_bytes);
  if (ch.algo == DUET_ALGO_HIER && a->coll != DUET_COLL_ALLTOALLV &&
      duet__mem_hier_ok(comm, a->coll)) {
    duet_status_t rc;
    if (!a->blocking)
      return duet__mem_post(comm, a, sendbuf, recvbuf, DUET_MEM_HIER, req);
    *req = NULL; /* done when this returns */
    rc = duet__mem_drain(comm);
    return rc != DUET_SUCCESS ? rc : duet__mem_hier_run(comm, a, sendbuf, recvbuf);
  }
  if (a->coll == DUET_COLL_ALLTOALLV && ch.algo == DUET_ALGO_HIER && !comm->layout.uniform &&
      duet__mem_hier_ok(comm, a->coll)) { /* pairwise across: no counts needed */
    duet_status_t rc;
    if (!a->blocking)
      return duet__mem_post(comm, a, sendbuf, recvbuf, DUET_MEM_HIER, req);
    *req = NULL;
    rc = duet__mem_drain(comm);
    return rc != DUET_SUCCESS ? rc : duet__mem_hier_run(comm, a, sendbuf, recvbuf);
  }
  if (a->coll == DUET_COLL_ALLTOALLV && ch.algo == DUET_ALGO_HIER) {
    /* The gatherers of each rail must know what their super-node sends
     * along it: an exchange inside the super-node first (one sequence
     * number on every layout, as the non-blocking post takes). */
    const size_t p = (size_t)comm->nranks;
    duet_status_t rc = DUET_SUCCESS;
    uint32_t seq;
    if (!a->blocking) /* the counts too, in a task: the post waits for no peer */
      return duet__mem_post(comm, a, sendbuf, recvbuf, DUET_MEM_A2AV, req);
    seq = comm->seq++;
    if (comm->a2av_counts == NULL) { /* once per communicator */
      comm->a2av_counts = malloc(2 * p * sizeof(uint64_t));
      if (comm->a2av_counts == NULL)
        return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for %zu counts",
                               duet__coll_name(a->coll), 2 * p);
    }
    if (comm->mem_everywhere)
      rc = duet__mem_drain(comm); /* the segment runs calls in call order */
    if (rc == DUET_SUCCESS && comm->layout.uniform)
      rc = duet__a2av_share_counts(comm, a, seq, comm->a2av_counts);
    if (rc == DUET_SUCCESS && duet__mem_hier_ok(comm, a->coll)) {
      *req = NULL;
      return duet__mem_hier_run(comm, a, sendbuf, recvbuf);
    }
    if (rc == DUET_SUCCESS)
      rc = duet__request_post(comm, a->coll, a, build, sendbuf, recvbuf, req);
    return rc;
  }
  return duet__request_post(comm, a->coll, a, build, sendbuf, recvbuf, req);
}

/* Post (non-blocking) or run a checked call, holding the communicator's
 * lock when a progress thread may drive it (which leaving it wakes). */
static duet_status_t duet__coll_post(duet_comm_t *comm, duet__coll_args_t *a, size_t bytes,
                                     const void *sendbuf, void *recvbuf, duet_request_t **req) {
  duet_status_t rc;
  duet__comm_lock(comm);
  rc = duet__coll_run(comm, a, bytes, sendbuf, recvbuf, req);
  duet__comm_unlock(comm);
  return rc;
}

static duet_status_t duet__allreduce_post(const char *fn, const void *sendbuf, void *recvbuf,
                                          size_t count, duet_datatype_t dt, duet_op_t op,
                                          duet_comm_t *comm, int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_op(comm, fn, op));
  TRY(duet__check_count(comm, fn, count, dt, &bytes));
  TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, count));
  TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, count));
  TRY(duet__check_overlap(comm, fn, sendbuf, bytes, recvbuf, bytes));
  duet__args_init(&a, comm, DUET_COLL_ALLREDUCE, count, dt, op, 0);
  a.blocking = blocking;
  a.in_place = sendbuf == recvbuf;
  return duet__coll_post(comm, &a, bytes, sendbuf, recvbuf, req);
}

duet_status_t duet_iallreduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                              duet_op_t op, duet_comm_t *comm, duet_request_t **req) {
  return duet__allreduce_post("duet_iallreduce", sendbuf, recvbuf, count, dt, op, comm, 0, req);
}

duet_status_t duet_allreduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                             duet_op_t op, duet_comm_t *comm) {
  const char *fn = "duet_allreduce";
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, fn, &blocking));
  TRY(duet__allreduce_post(fn, sendbuf, recvbuf, count, dt, op, comm, blocking, &req));
  return duet__blocking_end(req);
}

/* --- broadcast --- */

static duet_status_t duet__broadcast_post(const char *fn, const void *sendbuf, void *recvbuf,
                                          size_t count, duet_datatype_t dt, int root,
                                          duet_comm_t *comm, int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_rank(comm, fn, "root", root));
  TRY(duet__check_count(comm, fn, count, dt, &bytes));
  if (comm->rank == root) {
    TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, count));
    TRY(duet__check_overlap(comm, fn, sendbuf, bytes, recvbuf, bytes));
  }
  TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, count));
  duet__args_init(&a, comm, DUET_COLL_BROADCAST, count, dt, DUET_SUM, root);
  a.blocking = blocking;
  return duet__coll_post(comm, &a, bytes, sendbuf, recvbuf, req);
}

duet_status_t duet_ibroadcast(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                              int root, duet_comm_t *comm, duet_request_t **req) {
  return duet__broadcast_post("duet_ibroadcast", sendbuf, recvbuf, count, dt, root, comm, 0, req);
}

duet_status_t duet_broadcast(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                             int root, duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_broadcast", &blocking));
  TRY(duet__broadcast_post("duet_broadcast", sendbuf, recvbuf, count, dt, root, comm, blocking,
                           &req));
  return duet__blocking_end(req);
}

/* --- reduce --- */

static duet_status_t duet__reduce_post(const char *fn, const void *sendbuf, void *recvbuf,
                                       size_t count, duet_datatype_t dt, duet_op_t op, int root,
                                       duet_comm_t *comm, int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_op(comm, fn, op));
  TRY(duet__check_rank(comm, fn, "root", root));
  TRY(duet__check_count(comm, fn, count, dt, &bytes));
  TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, count));
  if (comm->rank == root) {
    TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, count));
    TRY(duet__check_overlap(comm, fn, sendbuf, bytes, recvbuf, bytes));
  } else {
    recvbuf = NULL; /* not ours to touch */
  }
  duet__args_init(&a, comm, DUET_COLL_REDUCE, count, dt, op, root);
  a.blocking = blocking;
  return duet__coll_post(comm, &a, bytes, sendbuf, recvbuf, req);
}

duet_status_t duet_ireduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                           duet_op_t op, int root, duet_comm_t *comm, duet_request_t **req) {
  return duet__reduce_post("duet_ireduce", sendbuf, recvbuf, count, dt, op, root, comm, 0, req);
}

duet_status_t duet_reduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                          duet_op_t op, int root, duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_reduce", &blocking));
  TRY(duet__reduce_post("duet_reduce", sendbuf, recvbuf, count, dt, op, root, comm, blocking,
                        &req));
  return duet__blocking_end(req);
}

/* --- allgather --- */

static duet_status_t duet__allgather_post(const char *fn, const void *sendbuf, void *recvbuf,
                                          size_t sendcount, duet_datatype_t dt, duet_comm_t *comm,
                                          int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes, total;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_count(comm, fn, sendcount, dt, &bytes));
  if (sendcount > SIZE_MAX / (size_t)comm->nranks)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: sendcount %zu x %d ranks overflows", fn, sendcount, comm->nranks);
  TRY(duet__check_count(comm, fn, sendcount * (size_t)comm->nranks, dt, &total));
  TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, sendcount));
  TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, sendcount));
  /* In place: MPI's form (sendbuf == recvbuf) means this rank's block is
   * already in place; NCCL's form points sendbuf at it. */
  if (sendbuf == recvbuf && bytes > 0)
    sendbuf = (const char *)recvbuf + (size_t)comm->rank * bytes;
  if (sendbuf != (const char *)recvbuf + (size_t)comm->rank * bytes)
    TRY(duet__check_overlap(comm, fn, sendbuf, bytes, recvbuf, total));
  duet__args_init(&a, comm, DUET_COLL_ALLGATHER, sendcount, dt, DUET_SUM, 0);
  a.blocking = blocking;
  return duet__coll_post(comm, &a, total, sendbuf, recvbuf, req);
}

duet_status_t duet_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req) {
  return duet__allgather_post("duet_iallgather", sendbuf, recvbuf, sendcount, dt, comm, 0, req);
}

duet_status_t duet_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                             duet_datatype_t dt, duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_allgather", &blocking));
  TRY(duet__allgather_post("duet_allgather", sendbuf, recvbuf, sendcount, dt, comm, blocking,
                           &req));
  return duet__blocking_end(req);
}

/* --- reduce_scatter --- */

static duet_status_t duet__reduce_scatter_post(const char *fn, const void *sendbuf, void *recvbuf,
                                               size_t recvcount, duet_datatype_t dt, duet_op_t op,
                                               duet_comm_t *comm, int blocking,
                                               duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes, total;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_op(comm, fn, op));
  TRY(duet__check_count(comm, fn, recvcount, dt, &bytes));
  if (recvcount > SIZE_MAX / (size_t)comm->nranks)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: recvcount %zu x %d ranks overflows", fn, recvcount, comm->nranks);
  TRY(duet__check_count(comm, fn, recvcount * (size_t)comm->nranks, dt, &total));
  TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, recvcount));
  TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, recvcount));
  duet__args_init(&a, comm, DUET_COLL_REDUCE_SCATTER, recvcount, dt, op, 0);
  a.blocking = blocking;
  /* In place: NCCL's form (recvbuf is this rank's block of sendbuf) needs
   * nothing; MPI's form (recvbuf == sendbuf) makes the result in scratch. */
  if (recvbuf == sendbuf && comm->rank != 0 && bytes > 0)
    a.out_aliases_in = 1;
  else if (recvbuf != (const char *)sendbuf + (size_t)comm->rank * bytes)
    TRY(duet__check_overlap(comm, fn, sendbuf, total, recvbuf, bytes));
  return duet__coll_post(comm, &a, total, sendbuf, recvbuf, req);
}

duet_status_t duet_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   duet_datatype_t dt, duet_op_t op, duet_comm_t *comm,
                                   duet_request_t **req) {
  return duet__reduce_scatter_post("duet_ireduce_scatter", sendbuf, recvbuf, recvcount, dt, op,
                                   comm, 0, req);
}

duet_status_t duet_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                  duet_datatype_t dt, duet_op_t op, duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_reduce_scatter", &blocking));
  TRY(duet__reduce_scatter_post("duet_reduce_scatter", sendbuf, recvbuf, recvcount, dt, op, comm,
                                blocking, &req));
  return duet__blocking_end(req);
}

/* --- barrier --- */

static duet_status_t duet__barrier_post(const char *fn, duet_comm_t *comm, int blocking,
                                        duet_request_t **req) {
  duet__coll_args_t a;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  duet__args_init(&a, comm, DUET_COLL_BARRIER, 0, DUET_UINT8, DUET_SUM, 0);
  a.blocking = blocking;
  return duet__coll_post(comm, &a, 0, NULL, NULL, req);
}

duet_status_t duet_ibarrier(duet_comm_t *comm, duet_request_t **req) {
  return duet__barrier_post("duet_ibarrier", comm, 0, req);
}

duet_status_t duet_barrier(duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_barrier", &blocking));
  TRY(duet__barrier_post("duet_barrier", comm, blocking, &req));
  return duet__blocking_end(req);
}

/* --- point to point, and groups --- */

static duet_status_t duet__p2p_post(const char *fn, int coll, const void *sbuf, void *rbuf,
                                    size_t count, duet_datatype_t dt, int peer, duet_comm_t *comm,
                                    duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes;
  duet_status_t rc;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_rank(comm, fn, "peer", peer));
  TRY(duet__check_count(comm, fn, count, dt, &bytes));
  TRY(duet__check_buffer(comm, fn, "buf", coll == DUET_COLL_SEND ? sbuf : rbuf, count));
  memset(&a, 0, sizeof(a));
  a.coll = coll;
  a.rank = comm->rank;
  a.nranks = comm->nranks;
  a.peer = peer;
  a.count = count;
  a.dt = dt;
  a.dtsize = duet__dt_size(dt);
  duet__comm_lock(comm);
  rc = duet__request_post(comm, coll, &a,
                          coll == DUET_COLL_SEND ? duet__send_build : duet__recv_build, sbuf, rbuf,
                          req);
  duet__comm_unlock(comm);
  return rc;
}

static duet_status_t duet__p2p_blocking(const char *fn, int coll, const void *sbuf, void *rbuf,
                                        size_t count, duet_datatype_t dt, int peer,
                                        duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, fn, &blocking));
  TRY(duet__p2p_post(fn, coll, sbuf, rbuf, count, dt, peer, comm, &req));
  return duet__blocking_end(req);
}

duet_status_t duet_send(const void *buf, size_t count, duet_datatype_t dt, int peer,
                        duet_comm_t *comm) {
  return duet__p2p_blocking("duet_send", DUET_COLL_SEND, buf, NULL, count, dt, peer, comm);
}

duet_status_t duet_recv(void *buf, size_t count, duet_datatype_t dt, int peer, duet_comm_t *comm) {
  return duet__p2p_blocking("duet_recv", DUET_COLL_RECV, NULL, buf, count, dt, peer, comm);
}

duet_status_t duet_isend(const void *buf, size_t count, duet_datatype_t dt, int peer,
                         duet_comm_t *comm, duet_request_t **req) {
  return duet__p2p_post("duet_isend", DUET_COLL_SEND, buf, NULL, count, dt, peer, comm, req);
}

duet_status_t duet_irecv(void *buf, size_t count, duet_datatype_t dt, int peer, duet_comm_t *comm,
                         duet_request_t **req) {
  return duet__p2p_post("duet_irecv", DUET_COLL_RECV, NULL, buf, count, dt, peer, comm, req);
}

duet_status_t duet_group_start(void) {
  duet__group_depth++;
  return DUET_SUCCESS;
}

duet_status_t duet_group_end(void) {
  duet_status_t rc = DUET_SUCCESS;
  if (duet__group_depth == 0)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_group_end: no duet_group_start to end");
  if (--duet__group_depth > 0)
    return DUET_SUCCESS;
  duet_request_t **reqs = duet__group_reqs;
  size_t n = duet__group_len, left = n;
  int shared = 1; /* every request on one set of endpoints */
  duet__group_len = 0;
  for (size_t i = 1; i < n; i++)
    shared &= reqs[i]->comm->nets == reqs[0]->comm->nets;
  if (shared) { /* a wait on one moves them all (duet__family_progress) */
    for (size_t i = 0; i < n; i++) {
      duet_status_t r = duet__wait_and_free(reqs[i]);
      if (rc == DUET_SUCCESS && r != DUET_SUCCESS)
        rc = r;
    }
    return rc;
  }
  /* Communicators of separate duet_comm_init_rank calls (one thread driving
   * several ranks): a wait on one would move only its own, so every request
   * is tested in turn until each has completed or its deadline failed it. */
  while (left > 0) {
    for (size_t i = 0; i < n; i++) {
      int done = 0;
      duet_status_t r;
      if (reqs[i] == NULL)
        continue;
      r = duet_test(reqs[i], &done);
      if (!done && r == DUET_IN_PROGRESS)
        continue;
      reqs[i] = NULL;
      left--;
      if (rc == DUET_SUCCESS && r != DUET_SUCCESS)
        rc = r;
    }
    if (left > 0)
      sched_yield();
  }
  return rc;
}

/* --- completion --- */

duet_status_t duet_test(duet_request_t *req, int *done) {
  duet_comm_t *comm;
  duet_status_t rc;
  if (req == NULL || done == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_test: %s is NULL",
                           req == NULL ? "req" : "done");
  *done = 0;
  comm = req->comm;
  duet__comm_lock(comm);
  if (!req->complete) {
    uint64_t waited;
    duet__progress(comm);
    waited = duet__now_ns() - req->start_ns;
    if (!req->complete && waited > (uint64_t)comm->cfg.timeout_ms * 1000000ull)
      duet__request_wait(req); /* past the deadline: fails it with the message */
    else if (!req->complete && waited >= DUET_ALIVE_PERIOD_NS)
      duet__awaited_gone(req, req->start_ns + waited);
  }
  if (!req->complete) {
    duet__comm_unlock(comm);
    return DUET_IN_PROGRESS;
  }
  *done = 1;
  rc = req->status;
  duet__request_free(req);
  duet__comm_unlock(comm);
  return rc;
}

duet_status_t duet_wait(duet_request_t *req) {
  if (req == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_wait: req is NULL");
  return duet__wait_and_free(req);
}

/* --- alltoall, alltoallv --- */

#define DUET_A2AV_TUNE_BYTES ((size_t)1 << 20)

static duet_status_t duet__alltoall_post(const char *fn, const void *sendbuf, void *recvbuf,
                                         size_t count, duet_datatype_t dt, duet_comm_t *comm,
                                         int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes, total;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_count(comm, fn, count, dt, &bytes));
  if (count > SIZE_MAX / (size_t)comm->nranks)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: count %zu x %d ranks overflows",
                           fn, count, comm->nranks);
  TRY(duet__check_count(comm, fn, count * (size_t)comm->nranks, dt, &total));
  TRY(duet__check_buffer(comm, fn, "sendbuf", sendbuf, count));
  TRY(duet__check_buffer(comm, fn, "recvbuf", recvbuf, count));
  TRY(duet__check_overlap(comm, fn, sendbuf, total, recvbuf, total));
  duet__args_init(&a, comm, DUET_COLL_ALLTOALL, count, dt, DUET_SUM, 0);
  a.blocking = blocking;
  a.in_place = sendbuf == recvbuf;
  return duet__coll_post(comm, &a, total, sendbuf, recvbuf, req);
}

duet_status_t duet_ialltoall(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                             duet_comm_t *comm, duet_request_t **req) {
  return duet__alltoall_post("duet_ialltoall", sendbuf, recvbuf, count, dt, comm, 0, req);
}

duet_status_t duet_alltoall(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                            duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_alltoall", &blocking));
  TRY(duet__alltoall_post("duet_alltoall", sendbuf, recvbuf, count, dt, comm, blocking, &req));
  return duet__blocking_end(req);
}

/* Every count and displacement must stay inside the address space, and a
 * non-zero count needs a buffer. */
static duet_status_t duet__check_v(duet_comm_t *comm, const char *fn, const char *bufname,
                                   const char *cname, const char *dname, const void *buf,
                                   const size_t *counts, const size_t *displs, duet_datatype_t dt,
                                   size_t *total) {
  size_t es = duet__dt_size(dt), sum = 0;
  if (counts == NULL || displs == NULL)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                           counts == NULL ? cname : dname);
  for (int q = 0; q < comm->nranks; q++) {
    if (counts[q] > (size_t)PTRDIFF_MAX / es || displs[q] > (size_t)PTRDIFF_MAX / es - counts[q])
      return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                             "%s: %s[%d] = %zu at %s[%d] = %zu overflows", fn, cname, q, counts[q],
                             dname, q, displs[q]);
    sum += counts[q];
  }
  if (buf == NULL && sum > 0)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: %s is NULL with %zu elements", fn,
                           bufname, sum);
  *total = sum;
  return DUET_SUCCESS;
}

static duet_status_t duet__alltoallv_post(const char *fn, const void *sendbuf,
                                          const size_t *sendcounts, const size_t *sdispls,
                                          void *recvbuf, const size_t *recvcounts,
                                          const size_t *rdispls, duet_datatype_t dt,
                                          duet_comm_t *comm, int blocking, duet_request_t **req) {
  duet__coll_args_t a;
  size_t stotal, rtotal;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  TRY(duet__check_dt(comm, fn, dt));
  TRY(duet__check_v(comm, fn, "sendbuf", "sendcounts", "sdispls", sendbuf, sendcounts, sdispls, dt,
                    &stotal));
  TRY(duet__check_v(comm, fn, "recvbuf", "recvcounts", "rdispls", recvbuf, recvcounts, rdispls, dt,
                    &rtotal));
  if (sendbuf == recvbuf && sendbuf != NULL)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: sendbuf == recvbuf: alltoallv does not work in place", fn);
  if (sendcounts[comm->rank] != recvcounts[comm->rank])
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: sendcounts[%d] = %zu but recvcounts[%d] = %zu (to itself)", fn,
                           comm->rank, sendcounts[comm->rank], comm->rank, recvcounts[comm->rank]);
  duet__args_init(&a, comm, DUET_COLL_ALLTOALLV, 0, dt, DUET_SUM, 0);
  a.blocking = blocking;
  a.scounts = sendcounts;
  a.sdispls = sdispls;
  a.rcounts = recvcounts;
  a.rdispls = rdispls;
  /* The tuner must choose alike on every rank, and counts differ between
   * ranks: it weighs a fixed size for alltoallv. */
  (void)stotal, (void)rtotal;
  return duet__coll_post(comm, &a, DUET_A2AV_TUNE_BYTES, sendbuf, recvbuf, req);
}

duet_status_t duet_ialltoallv(const void *sendbuf, const size_t *sendcounts, const size_t *sdispls,
                              void *recvbuf, const size_t *recvcounts, const size_t *rdispls,
                              duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req) {
  return duet__alltoallv_post("duet_ialltoallv", sendbuf, sendcounts, sdispls, recvbuf, recvcounts,
                              rdispls, dt, comm, 0, req);
}

duet_status_t duet_alltoallv(const void *sendbuf, const size_t *sendcounts, const size_t *sdispls,
                             void *recvbuf, const size_t *recvcounts, const size_t *rdispls,
                             duet_datatype_t dt, duet_comm_t *comm) {
  duet_request_t *req;
  int blocking;
  TRY(duet__blocking_begin(comm, "duet_alltoallv", &blocking));
  TRY(duet__alltoallv_post("duet_alltoallv", sendbuf, sendcounts, sdispls, recvbuf, recvcounts,
                           rdispls, dt, comm, blocking, &req));
  return duet__blocking_end(req);
}
