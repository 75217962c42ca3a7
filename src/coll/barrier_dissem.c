/*
 * barrier_dissem.c - dissemination barrier: in round k each rank signals
 * r + 2^k and waits for r - 2^k; after ceil(log2 p) rounds every rank has
 * heard, directly or through others, from every rank. Zero-byte messages.
 */
#include "coll/coll.h"

duet_status_t duet__barrier_dissem_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  uint32_t deps[2] = {DUET_STEP_NONE, DUET_STEP_NONE}; /* last send, last recv */

  /* Round k's signal must carry everything heard in rounds < k: it waits for
   * the previous round's receive and, through the previous send, for all
   * earlier ones (receives of different rounds may complete out of order). */
  for (int k = 0, d = 1; d < p; k++, d <<= 1) {
    deps[0] = duet__sched_token(s, DUET_STEP_SEND, (r + d) % p, (uint32_t)k, deps, 2);
    deps[1] = duet__sched_token(s, DUET_STEP_RECV, (r - d + p) % p, (uint32_t)k, NULL, 0);
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
