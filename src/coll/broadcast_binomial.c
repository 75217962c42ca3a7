/*
 * broadcast_binomial.c - binomial-tree broadcast, pipelined in chunks: a rank
 * forwards chunk c to its children as soon as chunk c has arrived, so a large
 * broadcast streams down the tree instead of waiting for whole messages.
 *
 * Relative rank v = (r - root) mod p; the parent of v clears its lowest set
 * bit; v sends to v + 2^k for every 2^k below its lowest set bit (largest
 * subtree first).
 */
#include "coll/coll.h"

duet_status_t duet__broadcast_binomial_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks;
  const int v = (a->rank - a->root + p) % p;
  const uint64_t es = a->dtsize;
  uint64_t chunk_elems, nch;
  int lowbit = 1;

  if (a->count == 0)
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  chunk_elems = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
  nch = (a->count + chunk_elems - 1) / chunk_elems;
  if (v == 0) {
    while (lowbit < p)
      lowbit <<= 1;
  } else {
    while (!(v & lowbit))
      lowbit <<= 1;
  }
  for (uint64_t c = 0; c < nch; c++) {
    uint64_t off = duet__part_off(a->count, nch, c) * es;
    uint64_t len = duet__part_len(a->count, nch, c) * es;
    uint32_t have;
    duet__ref_t src;
    if (v == 0) {
      /* The root sends from its send buffer and copies into its receive
       * buffer (nothing to copy when they are the same). */
      src = duet__ref(DUET_BUF_SEND, off);
      duet__sched_copy(s, duet__ref(DUET_BUF_RECV, off), src, len, NULL, 0);
      have = DUET_STEP_NONE;
    } else {
      int parent = ((v - lowbit) + a->root) % p;
      src = duet__ref(DUET_BUF_RECV, off);
      have = duet__sched_recv(s, parent, (uint32_t)c, src, len, NULL, 0);
    }
    for (int m = lowbit >> 1; m >= 1; m >>= 1) {
      if (v + m < p)
        duet__sched_send(s, (v + m + a->root) % p, (uint32_t)c, src, len, &have, 1);
    }
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
