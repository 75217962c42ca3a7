/*
 * reduce_chain.c - pipelined chain reduce ending at the root: root+1 ->
 * root+2 -> ... -> root-1 -> root (mod p), in chunks.
 *
 * The data is cut into nch nearly equal chunks of at most chunk_bytes
 * (chunk_bytes / dtsize elements, at least one; at most CHAIN_MAX_CHUNKS
 * chunks so message ids stay small). The rank farthest from the root
 * (root+1) sends its SEND chunks to its successor. A rank inside the chain
 * receives chunk c into a scratch slot, reduces it with its own SEND chunk
 * in the slot (the slot is its accumulator) and forwards the slot as soon as
 * the reduction is done. The root receives into a slot and reduces into its
 * RECV chunk, then divides that chunk once for DUET_AVG. RECV is touched on
 * the root only (other ranks may pass no receive buffer); SEND is only read.
 *
 * Cost (n bytes, chunk size b): (p - 1) + (nch - 1) chunk times; every rank
 * but the root sends n bytes once and every rank but root+1 reduces n bytes.
 * Message id = chunk index.
 *
 * Scratch: CHAIN_SLOTS receive slots of one chunk (fewer when there are
 * fewer chunks), reused round-robin: chunk c's receive waits until chunk
 * c - CHAIN_SLOTS has left the slot (its send, or at the root its reduce).
 */
#include "coll/coll.h"

#define CHAIN_MAX_CHUNKS (1u << 18)
#define CHAIN_SLOTS 4

duet_status_t duet__reduce_chain_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks;
  const int v = (a->rank - a->root + p) % p; /* 0: root, 1: start of the chain */
  const int next = (a->rank + 1) % p, prev = (a->rank - 1 + p) % p;
  const uint64_t es = a->dtsize;
  uint64_t ce, nch, nslots, slot_bytes;
  uint32_t slot_free[CHAIN_SLOTS]; /* the step after which slot k may be overwritten */

  if (a->count == 0)
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  ce = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
  nch = (a->count + ce - 1) / ce;
  if (nch > CHAIN_MAX_CHUNKS)
    nch = CHAIN_MAX_CHUNKS;
  if (p == 1) {
    /* Nothing to reduce with; AVG would divide by one. */
    for (uint64_t c = 0; c < nch; c++) {
      uint64_t off = duet__part_off(a->count, nch, c) * es;
      duet__sched_copy(s, duet__ref(DUET_BUF_RECV, off), duet__ref(DUET_BUF_SEND, off),
                       duet__part_len(a->count, nch, c) * es, NULL, 0);
    }
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  }
  if (v == 1) { /* the start: send the own chunks as they are */
    for (uint64_t c = 0; c < nch; c++)
      duet__sched_send(s, next, (uint32_t)c,
                       duet__ref(DUET_BUF_SEND, duet__part_off(a->count, nch, c) * es),
                       duet__part_len(a->count, nch, c) * es, NULL, 0);
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  }
  nslots = nch < CHAIN_SLOTS ? nch : CHAIN_SLOTS;
  slot_bytes = duet__part_len(a->count, nch, 0) * es; /* chunk 0 is the largest */
  duet__sched_need_scratch(s, nslots * slot_bytes);
  for (int k = 0; k < CHAIN_SLOTS; k++)
    slot_free[k] = DUET_STEP_NONE;
  for (uint64_t c = 0; c < nch; c++) {
    uint64_t off = duet__part_off(a->count, nch, c) * es;
    uint64_t len = duet__part_len(a->count, nch, c) * es;
    uint64_t k = c % nslots;
    duet__ref_t slot = duet__ref(DUET_BUF_SCRATCH, k * slot_bytes);
    duet__ref_t mine = duet__ref(DUET_BUF_SEND, off);
    uint32_t rv = duet__sched_recv(s, prev, (uint32_t)c, slot, len, &slot_free[k], 1);
    if (v == 0) {
      duet__ref_t dst = duet__ref(DUET_BUF_RECV, off);
      uint32_t red = duet__sched_reduce(s, dst, mine, slot, len, &rv, 1);
      slot_free[k] = red;
      if (a->op == DUET_AVG)
        duet__sched_avg(s, dst, len, &red, 1);
    } else {
      uint32_t red = duet__sched_reduce(s, slot, mine, slot, len, &rv, 1);
      slot_free[k] = duet__sched_send(s, next, (uint32_t)c, slot, len, &red, 1);
    }
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
