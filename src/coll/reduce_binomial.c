/*
 * reduce_binomial.c - binomial-tree reduce to a root, pipelined in chunks.
 *
 * Relative rank v = (r - root) mod p. A rank receives from its children
 * v + 2^k (for every 2^k below its lowest set bit), reduces each into its
 * accumulator as it lands, and sends the accumulator to its parent (v with
 * the lowest bit cleared). Chunk c moves up as soon as chunk c is complete
 * below, so large reductions stream. The accumulator is the root's recvbuf
 * and scratch elsewhere; a leaf sends straight from its send buffer.
 * Scratch: the accumulator plus one receive slot per child.
 */
#include "coll/coll.h"

#include <stdlib.h>

duet_status_t duet__reduce_binomial_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, v = (a->rank - a->root + p) % p;
  const uint64_t es = a->dtsize, bytes = a->count * es;
  uint64_t ce, nch;
  int lowbit = 1, nchild = 0;
  int children[32];

  if (a->count == 0)
    return DUET_SUCCESS;
  if (v == 0) {
    while (lowbit < p)
      lowbit <<= 1;
  } else {
    while (!(v & lowbit))
      lowbit <<= 1;
  }
  for (int m = 1; m < lowbit; m <<= 1) /* smallest subtree first: it is ready first */
    if (v + m < p)
      children[nchild++] = (v + m + a->root) % p;
  ce = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
  nch = (a->count + ce - 1) / ce;
  /* scratch: [accumulator (non-root)] [one slot per child] */
  uint64_t slots = v == 0 ? 0 : bytes;
  duet__sched_need_scratch(s, slots + (uint64_t)nchild * bytes);
  for (uint64_t c = 0; c < nch; c++) {
    uint64_t off = duet__part_off(a->count, nch, c) * es, len = duet__part_len(a->count, nch, c) * es;
    duet__ref_t acc = v == 0 ? duet__ref(DUET_BUF_RECV, off) : duet__ref(DUET_BUF_SCRATCH, off);
    duet__ref_t cur = duet__ref(DUET_BUF_SEND, off);
    uint32_t last = DUET_STEP_NONE;
    for (int k = 0; k < nchild; k++) {
      duet__ref_t slot = duet__ref(DUET_BUF_SCRATCH, slots + (uint64_t)k * bytes + off);
      uint32_t rv = duet__sched_recv(s, children[k], (uint32_t)c, slot, len, NULL, 0);
      uint32_t deps[2] = {rv, last};
      last = duet__sched_reduce(s, acc, cur, slot, len, deps, 2);
      cur = acc;
    }
    if (v == 0) {
      if (nchild == 0)
        last = duet__sched_copy(s, acc, cur, len, NULL, 0); /* one rank: a copy */
      if (a->op == DUET_AVG)
        duet__sched_avg(s, acc, len, &last, 1);
    } else {
      int parent = ((v & ~lowbit) + a->root) % p;
      duet__sched_send(s, parent, (uint32_t)c, cur, len, &last, 1);
    }
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
