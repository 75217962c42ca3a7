/*
 * check.c - argument checks at the API boundary. Each names the function and
 * the argument, prints the bad value, and returns a negative status; nothing
 * has been written when they fail.
 */
#include <stdint.h>
#include <stdio.h>

#include "core/comm.h"
#include "reduce/reduce.h"

duet_status_t duet__check_comm(duet_comm_t *comm, const char *fn) {
  if (comm == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "%s: comm is NULL", fn);
  if (!duet__comm_is_live(comm))
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "%s: comm %p was destroyed or never created", fn, (void *)comm);
  if (comm->failed != DUET_SUCCESS) {
    /* Keep the message that explains the failure; prefix this call. */
    char prev[DUET_ERRLEN];
    snprintf(prev, sizeof(prev), "%s", comm->last_error);
    return duet__set_error(comm, comm->failed == DUET_ERR_ABORTED ? DUET_ERR_ABORTED : comm->failed,
                           "%s: comm failed earlier: %s", fn, prev);
  }
  return DUET_SUCCESS;
}

duet_status_t duet__check_dt(duet_comm_t *comm, const char *fn, duet_datatype_t dt) {
  if ((unsigned)dt >= DUET_NUM_DATATYPES)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: datatype %d is not a duet_datatype_t",
                           fn, (int)dt);
  return DUET_SUCCESS;
}

duet_status_t duet__check_op(duet_comm_t *comm, const char *fn, duet_op_t op) {
  if ((unsigned)op >= DUET_NUM_OPS)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: op %d is not a duet_op_t", fn,
                           (int)op);
  return DUET_SUCCESS;
}

/* count elements of dt must fit in memory: count * size may not overflow,
 * and stays below PTRDIFF_MAX so pointer arithmetic is defined. */
duet_status_t duet__check_count(duet_comm_t *comm, const char *fn, size_t count,
                                duet_datatype_t dt, size_t *bytes) {
  size_t es = duet__dt_size(dt);
  if (count > (size_t)PTRDIFF_MAX / es)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: count %zu of %s (%zu bytes each) overflows the address space", fn,
                           count, duet__dt_name(dt), es);
  *bytes = count * es;
  return DUET_SUCCESS;
}

duet_status_t duet__check_buffer(duet_comm_t *comm, const char *fn, const char *name,
                                 const void *buf, size_t count) {
  if (buf == NULL && count > 0)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: %s is NULL with count %zu > 0",
                           fn, name, count);
  return DUET_SUCCESS;
}

duet_status_t duet__check_rank(duet_comm_t *comm, const char *fn, const char *name, int r) {
  if (r < 0 || r >= comm->nranks)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: %s %d is not in [0, %d)", fn,
                           name, r, comm->nranks);
  return DUET_SUCCESS;
}

/* In place means the very same pointer; a partial overlap is an error. */
duet_status_t duet__check_overlap(duet_comm_t *comm, const char *fn, const void *a,
                                  size_t abytes, const void *b, size_t bbytes) {
  uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
  if (a == NULL || b == NULL || a == b || abytes == 0 || bbytes == 0)
    return DUET_SUCCESS;
  if (pa < pb + bbytes && pb < pa + abytes)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: sendbuf and recvbuf overlap without being equal (in place "
                           "needs sendbuf == recvbuf)",
                           fn);
  return DUET_SUCCESS;
}

duet_status_t duet__check_req_out(duet_comm_t *comm, const char *fn, duet_request_t **req) {
  if (req == NULL)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: req is NULL", fn);
  return DUET_SUCCESS;
}
