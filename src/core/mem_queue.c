/*
 * mem_queue.c - the non-blocking collectives of the load/store path.
 *
 * A non-blocking call that the load/store path takes (duet__mem_path) is
 * queued on the communicator, in call order. The head of the queue runs as a
 * task on the communicator's fiber (core/fiber.h): duet__mem_run, the very
 * code of the blocking call, except that a wait for a peer that has not
 * arrived suspends the task instead of spinning (duet__shm_set_suspend).
 * Every progress call (any duet call on the communicator, duet_test,
 * duet_wait) resumes it; when it finishes, the next queued call starts at
 * once. The calls of one segment must run in the same order on every local
 * rank, and they do: every rank posts them in the same order and runs them
 * one at a time. A blocking call on the path first drains the queue.
 *
 * The hierarchical collectives run as such tasks too (duet__mem_hier_run):
 * their phase across super-nodes is a schedule over the HPN,
 * posted by the task under a sequence number taken at the post, and waited
 * for with duet__mem_await, which suspends the task while the caller's
 * progress calls drive the schedule.
 *
 * A non-blocking hierarchical alltoallv whose gatherers need every rank's
 * send counts runs as such a task on any communicator, with or without a
 * segment (duet__mem_a2av_run): an exchange of counts inside the
 * super-node, then the call.
 * Its post takes both sequence numbers and returns before any peer has
 * posted, as a non-blocking call must: a post that waited for the counts
 * could deadlock a program that posts, then waits for something else.
 *
 * The fiber and its stack are made at the first such call and kept with the
 * communicator; requests come from its pool, so steady-state calls allocate
 * nothing. Deadlines: the engine's own (every wait, DUET_TIMEOUT_MS) and the
 * request's, counted from the post, as for any request.
 */
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/log.h"

/* The task's stack: the engine's calls are shallow (copies, reductions, and
 * an error message); logging and sanitizer builds need more. Mapped lazily,
 * so only the pages touched become memory. */
#define DUET_MEM_FIBER_STACK (512u << 10)

static void duet__mem_suspend(void *fiber) {
  duet__fiber_suspend(fiber);
}

static void duet__mem_task(void *arg) {
  duet_request_t *req = arg;
  switch (req->mem_hier) {
  case DUET_MEM_HIER:
    req->status = duet__mem_hier_run(req->comm, &req->margs, req->msend, req->mrecv);
    break;
  case DUET_MEM_A2AV:
    req->status = duet__mem_a2av_run(req->comm, &req->margs, req->mseq_counts, req->mrail,
                                     req->msend, req->mrecv);
    break;
  default:
    req->status = duet__mem_run(req->comm, &req->margs, req->msend, req->mrecv);
  }
}

/* alltoallv's count arrays belong to the caller only during the post (as on
 * the schedule path, which reads them while building): keep copies. */
static duet_status_t duet__mem_keep_counts(duet_comm_t *comm, duet_request_t *req) {
  duet__coll_args_t *a = &req->margs;
  const size_t n = (size_t)comm->nranks;
  /* the hierarchical call's packed row and rail counts */
  const size_t room = req->mem_hier == DUET_MEM_A2AV ? 2 * n : 0;
  const size_t need = 4 * n * sizeof(size_t) + room * sizeof(uint64_t);
  size_t *c;
  if (a->coll != DUET_COLL_ALLTOALLV)
    return DUET_SUCCESS;
  if (req->mblock_size < need) { /* from the comm's shelf: grown rarely */
    size_t got;
    void *b = duet__shelf_take(&comm->counts_shelf, need, &got);
    if (b == NULL)
      return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for %zu counts",
                             duet__coll_name(a->coll), 4 * n + room);
    duet__shelf_put(&comm->counts_shelf, req->mblock, req->mblock_size);
    req->mblock = b;
    req->mblock_size = got;
  }
  c = req->mcounts = req->mblock;
  req->mrail = (uint64_t *)(c + 4 * n);
  memcpy(c, a->scounts, n * sizeof(*c));
  memcpy(c + n, a->sdispls, n * sizeof(*c));
  memcpy(c + 2 * n, a->rcounts, n * sizeof(*c));
  memcpy(c + 3 * n, a->rdispls, n * sizeof(*c));
  a->scounts = c;
  a->sdispls = c + n;
  a->rcounts = c + 2 * n;
  a->rdispls = c + 3 * n;
  return DUET_SUCCESS;
}

duet_status_t duet__mem_post(duet_comm_t *comm, const duet__coll_args_t *a, const void *sendbuf,
                             void *recvbuf, int kind, duet_request_t **out) {
  duet_request_t *req;
  duet_status_t rc;

  if (comm->fiber == NULL) {
    rc = duet__fiber_create(&comm->fiber, DUET_MEM_FIBER_STACK);
    if (rc != DUET_SUCCESS)
      return duet__set_error(comm, rc, "%s: cannot map a %u-byte stack for non-blocking calls",
                             duet__coll_name(a->coll), DUET_MEM_FIBER_STACK);
  }
  req = duet__request_get(comm, 0);
  if (req == NULL)
    return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for a request",
                           duet__coll_name(a->coll));
  duet__request_reset(req, comm, a->coll, a->dt, a->op);
  req->mem = 1;
  req->mem_hier = kind;
  req->margs = *a;
  if (kind == DUET_MEM_A2AV) /* and the count exchange before it */
    req->mseq_counts = comm->seq++;
  if (kind != DUET_MEM_FLAT) {
    /* its rail phase is a schedule posted when the task gets there: it
     * takes its sequence number now, in call order, as every rank does */
    req->margs.seq_reserved = 1;
    req->margs.seq = comm->seq++;
  }
  req->msend = sendbuf;
  req->mrecv = recvbuf;
  rc = duet__mem_keep_counts(comm, req);
  if (rc != DUET_SUCCESS) {
    duet__request_free(req);
    return rc;
  }
  req->start_ns = duet__now_ns();
  if (comm->mem_tail != NULL)
    comm->mem_tail->mem_next = req;
  else
    comm->mem_head = req;
  comm->mem_tail = req;
  DUET_TRACE(DUET_SUB_COLL, "%s of %zu elements queued on the load/store path",
             duet__coll_name(a->coll), a->count);
  duet__mem_progress(comm, 0); /* a small call often completes here */
  *out = req;
  return DUET_SUCCESS;
}

/* The head of the queue is complete: unlink it. */
static void duet__mem_pop(duet_comm_t *comm, duet_status_t status) {
  duet_request_t *req = comm->mem_head;
  comm->mem_head = req->mem_next;
  if (comm->mem_head == NULL)
    comm->mem_tail = NULL;
  req->mem_next = NULL;
  req->status = status;
  req->complete = 1;
}

int duet__mem_progress(duet_comm_t *comm, int spin) {
  int completed = 0;

  while (comm->mem_head != NULL) {
    duet_request_t *req = comm->mem_head;
    int r;
    if (comm->mem != NULL) /* NULL: a task that only posts schedules (DUET_MEM_A2AV) */
      duet__shm_set_suspend(comm->mem, spin ? NULL : duet__mem_suspend, comm->fiber);
    comm->mem_in_task = 1;
    r = duet__fiber_busy(comm->fiber) ? duet__fiber_resume(comm->fiber)
                                      : duet__fiber_start(comm->fiber, duet__mem_task, req);
    comm->mem_in_task = 0;
    if (r == 0)
      break; /* waiting for a peer */
    completed = 1;
    if (r < 0) {
      duet__set_error(comm, DUET_ERR_SYSTEM, "%s on rank %d: cannot switch to its task",
                      duet__coll_name(req->coll), comm->rank);
      duet__comm_fail_pending(comm, DUET_ERR_SYSTEM);
      break;
    }
    if (req->status != DUET_SUCCESS) {
      /* duet__mem_run failed the communicator and said why */
      duet__comm_fail_pending(comm, req->status);
      break;
    }
    duet__mem_pop(comm, DUET_SUCCESS);
  }
  if (comm->mem != NULL) /* the blocking calls run on the caller's stack */
    duet__shm_set_suspend(comm->mem, NULL, NULL);
  return completed;
}

duet_status_t duet__mem_await(duet_comm_t *comm, duet_request_t *req) {
  if (!comm->mem_in_task)
    return duet__request_wait(req);
  comm->mem_awaiting = req; /* freed by duet__mem_fail_all if the task never resumes */
  while (!req->complete) {  /* deadlines: the queued call's own, where it is waited for */
    comm->mem_in_task = 0;
    duet__fiber_suspend(comm->fiber);
    comm->mem_in_task = 1;
  }
  comm->mem_awaiting = NULL;
  return req->status;
}

duet_status_t duet__mem_drain(duet_comm_t *comm) {
  duet_status_t rc = DUET_SUCCESS;
  while (comm->mem_tail != NULL && rc == DUET_SUCCESS) /* complete in order: the tail is last */
    rc = duet__request_wait(comm->mem_tail);
  return rc;
}

void duet__mem_fail_all(duet_comm_t *comm, duet_status_t status) {
  while (comm->mem_head != NULL)
    duet__mem_pop(comm, status);
  if (comm->fiber != NULL && duet__fiber_busy(comm->fiber)) {
    /* the task stopped in the middle of a call: the engine is out of step
     * with its peers, and the communicator has failed, so it is never used
     * again */
    if (comm->mem != NULL)
      duet__shm_set_suspend(comm->mem, NULL, NULL);
    duet__fiber_abandon(comm->fiber);
    duet__request_free(comm->mem_awaiting); /* NULL unless it waited for a schedule */
    comm->mem_awaiting = NULL;
  }
}
