/*
 * sendrecv.c - point to point as one-step schedules. Matching between a pair
 * uses the per-pair sequence number in the tag (see progress.c), not msg.
 */
#include "coll/coll.h"

duet_status_t duet__send_build(const duet__coll_args_t *a, duet__sched_t *s) {
  uint64_t bytes = a->count * a->dtsize;
  if (bytes == 0)
    duet__sched_token(s, DUET_STEP_SEND, a->peer, 0, NULL, 0);
  else
    duet__sched_send(s, a->peer, 0, duet__ref(DUET_BUF_SEND, 0), bytes, NULL, 0);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

duet_status_t duet__recv_build(const duet__coll_args_t *a, duet__sched_t *s) {
  uint64_t bytes = a->count * a->dtsize;
  if (bytes == 0)
    duet__sched_token(s, DUET_STEP_RECV, a->peer, 0, NULL, 0);
  else
    duet__sched_recv(s, a->peer, 0, duet__ref(DUET_BUF_RECV, 0), bytes, NULL, 0);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
