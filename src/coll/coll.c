/*
 * coll.c - the public collective and point-to-point calls: check the
 * arguments, let the tuner pick an algorithm, post the schedule, and for the
 * blocking forms wait. Also duet_test, duet_wait and groups.
 */
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "reduce/reduce.h"
#include "tune/tune.h"

const char *duet__coll_name(int coll) {
  static const char *names[DUET_COLL_COUNT] = {
      "duet_allreduce", "duet_broadcast", "duet_barrier",        "duet_send",   "duet_recv",
      "duet_allgather", "duet_reduce_scatter", "duet_reduce", "duet_alltoall", "duet_alltoallv"};
  return coll >= 0 && coll < DUET_COLL_COUNT ? names[coll] : "duet_?";
}

#define TRY(call)                   \
  do {                              \
    duet_status_t try_rc_ = (call); \
    if (try_rc_ != DUET_SUCCESS)    \
      return try_rc_;               \
  } while (0)

static duet_status_t duet__wait_and_free(duet_request_t *req) {
  duet_status_t rc = duet__request_wait(req);
  duet__request_free(req);
  return rc;
}

/* --- allreduce --- */

static duet_status_t duet__allreduce_post(const char *fn, const void *sendbuf, void *recvbuf,
                                          size_t count, duet_datatype_t dt, duet_op_t op,
                                          duet_comm_t *comm, duet_request_t **req) {
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
  memset(&a, 0, sizeof(a));
  a.coll = DUET_COLL_ALLREDUCE;
  a.rank = comm->rank;
  a.nranks = comm->nranks;
  a.count = count;
  a.dt = dt;
  a.op = op;
  a.dtsize = duet__dt_size(dt);
  a.chunk_bytes = comm->cfg.chunk_bytes;
  return duet__request_post(comm, DUET_COLL_ALLREDUCE, &a, duet__tune_allreduce(comm, bytes),
                            sendbuf, recvbuf, req);
}

duet_status_t duet_iallreduce(const void *sendbuf, void *recvbuf, size_t count,
                              duet_datatype_t dt, duet_op_t op, duet_comm_t *comm,
                              duet_request_t **req) {
  return duet__allreduce_post("duet_iallreduce", sendbuf, recvbuf, count, dt, op, comm, req);
}

duet_status_t duet_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, duet_op_t op, duet_comm_t *comm) {
  duet_request_t *req;
  TRY(duet__allreduce_post("duet_allreduce", sendbuf, recvbuf, count, dt, op, comm, &req));
  return duet__wait_and_free(req);
}

/* --- broadcast --- */

static duet_status_t duet__broadcast_post(const char *fn, const void *sendbuf, void *recvbuf,
                                          size_t count, duet_datatype_t dt, int root,
                                          duet_comm_t *comm, duet_request_t **req) {
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
  memset(&a, 0, sizeof(a));
  a.coll = DUET_COLL_BROADCAST;
  a.rank = comm->rank;
  a.nranks = comm->nranks;
  a.root = root;
  a.count = count;
  a.dt = dt;
  a.dtsize = duet__dt_size(dt);
  a.chunk_bytes = comm->cfg.chunk_bytes;
  return duet__request_post(comm, DUET_COLL_BROADCAST, &a, duet__tune_broadcast(comm, bytes),
                            sendbuf, recvbuf, req);
}

duet_status_t duet_ibroadcast(const void *sendbuf, void *recvbuf, size_t count,
                              duet_datatype_t dt, int root, duet_comm_t *comm,
                              duet_request_t **req) {
  return duet__broadcast_post("duet_ibroadcast", sendbuf, recvbuf, count, dt, root, comm, req);
}

duet_status_t duet_broadcast(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, int root, duet_comm_t *comm) {
  duet_request_t *req;
  TRY(duet__broadcast_post("duet_broadcast", sendbuf, recvbuf, count, dt, root, comm, &req));
  return duet__wait_and_free(req);
}

/* --- barrier --- */

static duet_status_t duet__barrier_post(const char *fn, duet_comm_t *comm, duet_request_t **req) {
  duet__coll_args_t a;
  TRY(duet__check_comm(comm, fn));
  TRY(duet__check_req_out(comm, fn, req));
  memset(&a, 0, sizeof(a));
  a.coll = DUET_COLL_BARRIER;
  a.rank = comm->rank;
  a.nranks = comm->nranks;
  a.dt = DUET_UINT8;
  a.dtsize = 1;
  return duet__request_post(comm, DUET_COLL_BARRIER, &a, duet__tune_barrier(comm), NULL, NULL,
                            req);
}

duet_status_t duet_ibarrier(duet_comm_t *comm, duet_request_t **req) {
  return duet__barrier_post("duet_ibarrier", comm, req);
}

duet_status_t duet_barrier(duet_comm_t *comm) {
  duet_request_t *req;
  TRY(duet__barrier_post("duet_barrier", comm, &req));
  return duet__wait_and_free(req);
}

/* --- point to point, and groups --- */

/* Inside duet_group_start/end, blocking sends and receives are posted and
 * completed together at duet_group_end, so any call order is deadlock-free. */
static _Thread_local int duet__group_depth;
static _Thread_local duet_request_t **duet__group_reqs;
static _Thread_local size_t duet__group_len, duet__group_cap;

static duet_status_t duet__p2p_post(const char *fn, int coll, const void *sbuf, void *rbuf,
                                    size_t count, duet_datatype_t dt, int peer, duet_comm_t *comm,
                                    duet_request_t **req) {
  duet__coll_args_t a;
  size_t bytes;
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
  return duet__request_post(comm, coll, &a,
                            coll == DUET_COLL_SEND ? duet__send_build : duet__recv_build, sbuf,
                            rbuf, req);
}

static duet_status_t duet__p2p_blocking(const char *fn, int coll, const void *sbuf, void *rbuf,
                                        size_t count, duet_datatype_t dt, int peer,
                                        duet_comm_t *comm) {
  duet_request_t *req;
  if (duet__group_depth > 0 && duet__group_len == duet__group_cap) {
    size_t ncap = duet__group_cap ? 2 * duet__group_cap : 16;
    duet_request_t **n = realloc(duet__group_reqs, ncap * sizeof(*n));
    if (n == NULL)
      return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for the group", fn);
    duet__group_reqs = n;
    duet__group_cap = ncap;
  }
  TRY(duet__p2p_post(fn, coll, sbuf, rbuf, count, dt, peer, comm, &req));
  if (duet__group_depth > 0) {
    duet__group_reqs[duet__group_len++] = req;
    return DUET_SUCCESS;
  }
  return duet__wait_and_free(req);
}

duet_status_t duet_send(const void *buf, size_t count, duet_datatype_t dt, int peer,
                        duet_comm_t *comm) {
  return duet__p2p_blocking("duet_send", DUET_COLL_SEND, buf, NULL, count, dt, peer, comm);
}

duet_status_t duet_recv(void *buf, size_t count, duet_datatype_t dt, int peer,
                        duet_comm_t *comm) {
  return duet__p2p_blocking("duet_recv", DUET_COLL_RECV, NULL, buf, count, dt, peer, comm);
}

duet_status_t duet_isend(const void *buf, size_t count, duet_datatype_t dt, int peer,
                         duet_comm_t *comm, duet_request_t **req) {
  return duet__p2p_post("duet_isend", DUET_COLL_SEND, buf, NULL, count, dt, peer, comm, req);
}

duet_status_t duet_irecv(void *buf, size_t count, duet_datatype_t dt, int peer,
                         duet_comm_t *comm, duet_request_t **req) {
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
  for (size_t i = 0; i < duet__group_len; i++) {
    duet_status_t r = duet__request_wait(duet__group_reqs[i]);
    if (rc == DUET_SUCCESS && r != DUET_SUCCESS)
      rc = r;
    duet__request_free(duet__group_reqs[i]);
  }
  duet__group_len = 0;
  free(duet__group_reqs);
  duet__group_reqs = NULL;
  duet__group_cap = 0;
  return rc;
}

/* --- completion --- */

duet_status_t duet_test(duet_request_t *req, int *done) {
  duet_status_t rc;
  if (req == NULL || done == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_test: %s is NULL",
                           req == NULL ? "req" : "done");
  *done = 0;
  if (!req->complete) {
    uint64_t waited;
    duet__progress(req->comm);
    waited = duet__now_ns() - req->start_ns;
    if (!req->complete && waited > (uint64_t)req->comm->cfg.timeout_ms * 1000000ull)
      duet__request_wait(req); /* past the deadline: fails it with the message */
  }
  if (!req->complete)
    return DUET_IN_PROGRESS;
  *done = 1;
  rc = req->status;
  duet__request_free(req);
  return rc;
}

duet_status_t duet_wait(duet_request_t *req) {
  if (req == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_wait: req is NULL");
  return duet__wait_and_free(req);
}

/* --- collectives of later issues --- */

static duet_status_t duet__unsupported(duet_comm_t *comm, const char *fn) {
  TRY(duet__check_comm(comm, fn));
  return duet__set_error(comm, DUET_ERR_UNSUPPORTED, "%s is not implemented yet", fn);
}

duet_status_t duet_ialltoall(const void *sendbuf, void *recvbuf, size_t count,
                             duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req) {
  (void)sendbuf, (void)recvbuf, (void)count, (void)dt, (void)req;
  return duet__unsupported(comm, "duet_ialltoall");
}
duet_status_t duet_alltoall(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                            duet_comm_t *comm) {
  (void)sendbuf, (void)recvbuf, (void)count, (void)dt;
  return duet__unsupported(comm, "duet_alltoall");
}
duet_status_t duet_ialltoallv(const void *sendbuf, const size_t *sendcounts,
                              const size_t *sdispls, void *recvbuf, const size_t *recvcounts,
                              const size_t *rdispls, duet_datatype_t dt, duet_comm_t *comm,
                              duet_request_t **req) {
  (void)sendbuf, (void)sendcounts, (void)sdispls, (void)recvbuf, (void)recvcounts, (void)rdispls,
      (void)dt, (void)req;
  return duet__unsupported(comm, "duet_ialltoallv");
}
duet_status_t duet_alltoallv(const void *sendbuf, const size_t *sendcounts, const size_t *sdispls,
                             void *recvbuf, const size_t *recvcounts, const size_t *rdispls,
                             duet_datatype_t dt, duet_comm_t *comm) {
  (void)sendbuf, (void)sendcounts, (void)sdispls, (void)recvbuf, (void)recvcounts, (void)rdispls,
      (void)dt;
  return duet__unsupported(comm, "duet_alltoallv");
}
duet_status_t duet_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              duet_datatype_t dt, duet_comm_t *comm, duet_request_t **req) {
  (void)sendbuf, (void)recvbuf, (void)sendcount, (void)dt, (void)req;
  return duet__unsupported(comm, "duet_iallgather");
}
duet_status_t duet_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                             duet_datatype_t dt, duet_comm_t *comm) {
  (void)sendbuf, (void)recvbuf, (void)sendcount, (void)dt;
  return duet__unsupported(comm, "duet_allgather");
}
duet_status_t duet_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   duet_datatype_t dt, duet_op_t op, duet_comm_t *comm,
                                   duet_request_t **req) {
  (void)sendbuf, (void)recvbuf, (void)recvcount, (void)dt, (void)op, (void)req;
  return duet__unsupported(comm, "duet_ireduce_scatter");
}
duet_status_t duet_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                  duet_datatype_t dt, duet_op_t op, duet_comm_t *comm) {
  (void)sendbuf, (void)recvbuf, (void)recvcount, (void)dt, (void)op;
  return duet__unsupported(comm, "duet_reduce_scatter");
}
duet_status_t duet_ireduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                           duet_op_t op, int root, duet_comm_t *comm, duet_request_t **req) {
  (void)sendbuf, (void)recvbuf, (void)count, (void)dt, (void)op, (void)root, (void)req;
  return duet__unsupported(comm, "duet_ireduce");
}
duet_status_t duet_reduce(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                          duet_op_t op, int root, duet_comm_t *comm) {
  (void)sendbuf, (void)recvbuf, (void)count, (void)dt, (void)op, (void)root;
  return duet__unsupported(comm, "duet_reduce");
}
duet_status_t duet_comm_split(duet_comm_t *comm, int color, int key, duet_comm_t **newcomm) {
  (void)color, (void)key, (void)newcomm;
  return duet__unsupported(comm, "duet_comm_split");
}
