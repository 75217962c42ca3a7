/*
 * status.c - status codes and their text (one X-macro table), and the
 * per-communicator / per-thread "last error" detail.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/comm.h"

#define DUET_STATUS_TABLE(X)                                                   \
  X(DUET_SUCCESS, "success")                                                   \
  X(DUET_IN_PROGRESS, "operation in progress")                                 \
  X(DUET_ERR_INVALID_ARGUMENT, "invalid argument")                             \
  X(DUET_ERR_NO_MEMORY, "out of memory")                                       \
  X(DUET_ERR_SYSTEM, "system call failed")                                     \
  X(DUET_ERR_TRANSPORT, "transport error (tcp or libfabric)")                  \
  X(DUET_ERR_REMOTE, "a remote rank failed or aborted")                        \
  X(DUET_ERR_TIMEOUT, "timed out")                                             \
  X(DUET_ERR_ABORTED, "communicator was aborted or has failed")                \
  X(DUET_ERR_PROTOCOL, "protocol error (bad or unauthenticated message)")      \
  X(DUET_ERR_UNSUPPORTED, "not supported")                                     \
  X(DUET_ERR_INTERNAL, "internal error")                                       \
  X(DUET_ERR_MISMATCH, "ranks called with different arguments")

const char *duet_strerror(duet_status_t s) {
  switch (s) {
#define DUET_STATUS_CASE(code, text) \
  case code:                         \
    return text;
    DUET_STATUS_TABLE(DUET_STATUS_CASE)
#undef DUET_STATUS_CASE
  }
  return "unknown status";
}

static _Thread_local char duet__thread_error[DUET_ERRLEN];

const char *duet_last_error(const duet_comm_t *comm) {
  if (comm != NULL && duet__comm_is_live(comm))
    return comm->last_error;
  return duet__thread_error;
}

duet_status_t duet_get_version(int *version) {
  if (version == NULL) {
    duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_get_version: version is NULL");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  *version = DUET_VERSION;
  return DUET_SUCCESS;
}

/* Record the detail of a failure for duet_last_error; returns status so
 * callers can write `return duet__set_error(...)`. */
duet_status_t duet__set_error(duet_comm_t *comm, duet_status_t status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(duet__thread_error, sizeof(duet__thread_error), fmt, ap);
  va_end(ap);
  if (comm != NULL)
    memcpy(comm->last_error, duet__thread_error, sizeof(comm->last_error));
  return status;
}

void duet__clear_error(duet_comm_t *comm) {
  duet__thread_error[0] = '\0';
  if (comm != NULL)
    comm->last_error[0] = '\0';
}
