/*
 * duet.h - collective communication over a scale-up (UPN) and a scale-out
 * (HPN) network.
 *
 * The only installed header. Plain C11; no libfabric, hwloc or MPI types.
 * Argument order follows NCCL without the stream.
 *
 * Threads: calls on one communicator must not run concurrently (as NCCL);
 * different communicators may be used from different threads.
 * Every call returns duet_status_t; negative values are errors, and
 * duet_last_error() then says which argument or peer and why.
 */
#ifndef DUET_H
#define DUET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DUET_VERSION_MAJOR 0
#define DUET_VERSION_MINOR 1
#define DUET_VERSION_PATCH 0
#define DUET_VERSION \
  (DUET_VERSION_MAJOR * 10000 + DUET_VERSION_MINOR * 100 + DUET_VERSION_PATCH)

typedef enum {
  DUET_SUCCESS = 0,
  DUET_IN_PROGRESS = 1,
  DUET_ERR_INVALID_ARGUMENT = -1,
  DUET_ERR_NO_MEMORY = -2,
  DUET_ERR_SYSTEM = -3,
  DUET_ERR_TRANSPORT = -4,
  DUET_ERR_REMOTE = -5,
  DUET_ERR_TIMEOUT = -6,
  DUET_ERR_ABORTED = -7,
  DUET_ERR_PROTOCOL = -8,
  DUET_ERR_UNSUPPORTED = -9,
  DUET_ERR_INTERNAL = -10,
  DUET_ERR_MISMATCH = -11, /* ranks called with different arguments */
} duet_status_t;

typedef enum {
  DUET_INT8,
  DUET_UINT8,
  DUET_INT32,
  DUET_UINT32,
  DUET_INT64,
  DUET_UINT64,
  DUET_FLOAT16,
  DUET_BFLOAT16,
  DUET_FLOAT32,
  DUET_FLOAT64,
  DUET_FLOAT8_E4M3,
  DUET_FLOAT8_E5M2,
  DUET_NUM_DATATYPES /* not a type: the count */
} duet_datatype_t;
/* 16- and 8-bit floats reduce in float32 and round once to nearest even */

typedef enum {
  DUET_SUM,
  DUET_PROD,
  DUET_MIN,
  DUET_MAX,
  DUET_AVG, /* sum, divided once by the rank count at the end */
  DUET_NUM_OPS /* not an op: the count */
} duet_op_t;

typedef struct {
  unsigned char bytes[128];
} duet_unique_id_t;

typedef struct duet_config duet_config_t;
typedef struct duet_comm duet_comm_t;       /* opaque */
typedef struct duet_request duet_request_t; /* opaque */

/*
 * Versioned configuration. Initialise with DUET_CONFIG_INIT, then set the
 * fields you want; an unset field (NULL, or -1 for ints) falls back to the
 * environment variable named beside it, then to the default. An explicit field
 * beats the environment. Strings are copied at init; the caller keeps them.
 */
struct duet_config {
  size_t size;          /* sizeof(duet_config_t) of the caller's build */
  unsigned int version; /* DUET_CONFIG_VERSION */
  int timeout_ms;       /* DUET_TIMEOUT_MS, every wait's deadline; default 300000 */
  const char *upn_provider; /* DUET_UPN_PROVIDER: "tcp" (duet's sockets), "mem" (load/store)
                               or a libfabric provider ("shm", "tcp;ofi_rxm", ...) */
  const char *hpn_provider; /* DUET_HPN_PROVIDER: "tcp" or a libfabric provider */
  const char *upn_iface;    /* DUET_UPN_IFACE: interface (libfabric domain) for the UPN */
  const char *hpn_iface;    /* DUET_HPN_IFACE: interface for the HPN */
  const char *supernode;    /* DUET_SUPERNODE: super-node id; default: the host name */
  int progress_thread;      /* DUET_PROGRESS_THREAD: 1 = a thread drives non-blocking calls while
                               the caller computes; 0 = they progress inside duet calls */
};
#define DUET_CONFIG_VERSION 1u
#define DUET_CONFIG_INIT                                                       \
  {                                                                            \
    sizeof(duet_config_t), DUET_CONFIG_VERSION, -1, NULL, NULL, NULL, NULL,    \
        NULL, -1                                                               \
  }

/* Text of a status code; never NULL, static storage. */
const char *duet_strerror(duet_status_t s);
/* Detail of the last failure on comm (or, with NULL, of the calling thread);
 * may be "". Valid until the next call on the same comm or thread. */
const char *duet_last_error(const duet_comm_t *comm);
/* MAJOR*10000+MINOR*100+PATCH of the linked library. */
duet_status_t duet_get_version(int *version);

/* Create the root of a rendezvous in this process and return its id: the
 * root's address and a random 128-bit secret. Send the id to every rank by any
 * means (MPI_Bcast, a file). The root serves one communicator's init, then
 * ends; it is bound to DUET_BOOT_IFACE (default: loopback, see README). */
duet_status_t duet_get_unique_id(duet_unique_id_t *id);
/* Collective over nranks processes: create a communicator. Blocks until every
 * rank has joined or the timeout passes. Free with duet_comm_destroy. */
duet_status_t duet_comm_init_rank(duet_comm_t **comm, int nranks, duet_unique_id_t id,
                                  int rank, const duet_config_t *config /* NULL: defaults + env */);
/* As duet_comm_init_rank, with rank, size and root taken from the launcher's
 * environment: DUET_RANK/DUET_SIZE/DUET_ROOT (host:port), Open MPI
 * (OMPI_COMM_WORLD_RANK/SIZE with DUET_ROOT), torchrun (RANK, WORLD_SIZE,
 * MASTER_ADDR, MASTER_PORT + 1). Rank 0 hosts the root. DUET_SECRET (32 hex
 * digits) authenticates the rendezvous. */
duet_status_t duet_comm_init_env(duet_comm_t **comm, const duet_config_t *config);
/* Collective over comm: ranks passing the same color form a new communicator,
 * ranked by key (ties: by rank in comm). DUET_SPLIT_NOCOLOR: this rank joins
 * none and gets *newcomm = NULL. The new communicator shares comm's
 * connections but has its own ranks, super-node layout and statistics; free
 * it with duet_comm_destroy (in any order relative to comm). */
#define DUET_SPLIT_NOCOLOR (-1)
duet_status_t duet_comm_split(duet_comm_t *comm, int color, int key, duet_comm_t **newcomm);
/* Collective and graceful: waits for pending operations, frees everything. */
duet_status_t duet_comm_destroy(duet_comm_t *comm);
/* Local and immediate: fails pending operations, frees what it can.
 * Peers' pending and later calls fail with DUET_ERR_REMOTE or DUET_ERR_TIMEOUT. */
duet_status_t duet_comm_abort(duet_comm_t *comm);
duet_status_t duet_comm_get_async_error(duet_comm_t *comm, duet_status_t *async_error);
duet_status_t duet_comm_rank(const duet_comm_t *comm, int *rank);
duet_status_t duet_comm_size(const duet_comm_t *comm, int *size);
duet_status_t duet_comm_supernode(const duet_comm_t *comm, int *supernode, int *nsupernodes,
                                  int *local_rank, int *local_size);

typedef struct { /* cumulative, per communicator */
  uint64_t upn_bytes_sent, upn_bytes_recv, upn_msgs_sent;
  uint64_t hpn_bytes_sent, hpn_bytes_recv, hpn_msgs_sent;
} duet_stats_t;
duet_status_t duet_comm_get_stats(const duet_comm_t *comm, duet_stats_t *stats);

/* Memory the ranks of one host can share, as NCCL's ncclMemAlloc: use it as
 * any other memory. On the load/store path, an all-to-all or alltoallv whose
 * send buffers all come from here reads each peer's blocks in place and
 * copies them once instead of twice. Page-aligned, zero-filled, committed
 * at allocation. duet_mem_free(NULL) does nothing. */
duet_status_t duet_mem_alloc(void **ptr, size_t size);
duet_status_t duet_mem_free(void *ptr);

/* Blocking collectives. count is in elements. sendbuf == recvbuf means in
 * place. Every rank must call them in the same order with the same count,
 * datatype, op and root. */
duet_status_t duet_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, duet_op_t op, duet_comm_t *comm);
duet_status_t duet_alltoall(const void *sendbuf, void *recvbuf, size_t count /* per peer */,
                            duet_datatype_t dt, duet_comm_t *comm);
duet_status_t duet_alltoallv(const void *sendbuf, const size_t *sendcounts,
                             const size_t *sdispls, void *recvbuf, const size_t *recvcounts,
                             const size_t *rdispls, duet_datatype_t dt, duet_comm_t *comm);
duet_status_t duet_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                             duet_datatype_t dt, duet_comm_t *comm);
duet_status_t duet_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                  duet_datatype_t dt, duet_op_t op, duet_comm_t *comm);
/* allgather: sendbuf holds sendcount elements; recvbuf receives nranks blocks
 * of sendcount, block r from rank r. In place: sendbuf == recvbuf (MPI_IN_PLACE:
 * this rank's block is already at recvbuf + rank*sendcount) or sendbuf ==
 * recvbuf + rank*sendcount (NCCL's form).
 * reduce_scatter: sendbuf holds nranks blocks of recvcount; recvbuf receives
 * block `rank` reduced over all ranks. In place: recvbuf == sendbuf (the result
 * lands at the start, as MPI) or recvbuf == sendbuf + rank*recvcount (NCCL).
 * reduce: the result lands in the root's recvbuf; elsewhere recvbuf is
 * ignored (may be NULL).
 * broadcast: on the root, sendbuf is the data; elsewhere sendbuf is ignored.
 * recvbuf receives count elements on every rank (the root may pass
 * recvbuf == sendbuf). */
duet_status_t duet_broadcast(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, int root, duet_comm_t *comm);
duet_status_t duet_reduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                          duet_op_t op, int root, duet_comm_t *comm);
duet_status_t duet_barrier(duet_comm_t *comm);
/* Point to point: messages between a pair are matched in the order posted. */
duet_status_t duet_send(const void *buf, size_t count, duet_datatype_t dt, int peer,
                        duet_comm_t *comm);
duet_status_t duet_recv(void *buf, size_t count, duet_datatype_t dt, int peer,
                        duet_comm_t *comm);

/* Non-blocking forms: the same arguments and a trailing duet_request_t **req.
 * Buffers belong to the operation until it completes (alltoallv's count and
 * displacement arrays only during the call). Progress happens inside any duet
 * call on the communicator, duet_test and duet_wait; each of those also moves
 * the calls of the communicators that share its connections (made from it or
 * from a common parent by duet_comm_split), so ranks may wait for those calls
 * in different orders. Communicators of separate duet_comm_init_rank calls
 * move only in their own calls (or on the progress thread). */
duet_status_t duet_iallreduce(const void *sendbuf, void *recvbuf, size_t count,
                              duet_datatype_t dt, duet_op_t op, duet_comm_t *comm,
                              duet_request_t **req);
duet_status_t duet_ialltoall(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req);
duet_status_t duet_ialltoallv(const void *sendbuf, const size_t *sendcounts,
                              const size_t *sdispls, void *recvbuf, const size_t *recvcounts,
                              const size_t *rdispls, duet_datatype_t dt, duet_comm_t *comm,
                              duet_request_t **req);
duet_status_t duet_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req);
duet_status_t duet_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   duet_datatype_t dt, duet_op_t op, duet_comm_t *comm,
                                   duet_request_t **req);
duet_status_t duet_ibroadcast(const void *sendbuf, void *recvbuf, size_t count,
                              duet_datatype_t dt, int root, duet_comm_t *comm,
                              duet_request_t **req);
duet_status_t duet_ireduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                           duet_op_t op, int root, duet_comm_t *comm, duet_request_t **req);
duet_status_t duet_ibarrier(duet_comm_t *comm, duet_request_t **req);
duet_status_t duet_isend(const void *buf, size_t count, duet_datatype_t dt, int peer,
                         duet_comm_t *comm, duet_request_t **req);
duet_status_t duet_irecv(void *buf, size_t count, duet_datatype_t dt, int peer,
                         duet_comm_t *comm, duet_request_t **req);

/* *done = 1 when the operation has completed; the request is then freed (as
 * MPI_Test) and the return value is the operation's status. Never blocks. */
duet_status_t duet_test(duet_request_t *req, int *done);
/* Blocks until the operation completes or times out; also frees the request. */
duet_status_t duet_wait(duet_request_t *req);
/* Groups, as ncclGroupStart/End: between them every blocking call (send,
 * recv and the collectives) is posted and returns at once, and
 * duet_group_end completes them all, returning the first failure. Calls may
 * then come in any order, and one thread may drive the communicators of
 * several ranks. Buffers belong to the calls until duet_group_end returns.
 * Groups nest; the outermost end completes. */
duet_status_t duet_group_start(void); /* batches blocking calls, as ncclGroupStart */
duet_status_t duet_group_end(void);

#ifdef __cplusplus
}
#endif
#endif /* DUET_H */
