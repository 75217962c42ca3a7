/*
 * broadcast_chain.c - pipelined chain broadcast: root -> root+1 -> ... ->
 * root-1 (mod p), in chunks.
 *
 * The data is cut into nch nearly equal chunks of at most chunk_bytes
 * (chunk_bytes / dtsize elements, at least one; the count of chunks is
 * capped at CHAIN_MAX_CHUNKS so message ids stay small, which makes chunks
 * larger for huge messages). The root sends every chunk from SEND to its
 * successor and copies SEND to RECV (nothing when they are the same); every
 * other rank receives chunk c into RECV and, unless it ends the chain,
 * forwards it as soon as it has landed, so chunk c moves down the chain while
 * chunk c+1 follows one link behind.
 *
 * Cost (n bytes, chunk size b): (p - 1) + (nch - 1) chunk times, i.e. about
 * n/B + (p-1) b/B for link bandwidth B; every rank but the last sends n
 * bytes once. Message id = chunk index. No scratch.
 */
#include "coll/coll.h"

#define CHAIN_MAX_CHUNKS (1u << 18)

duet_status_t duet__broadcast_chain_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks;
  const int v = (a->rank - a->root + p) % p; /* position in the chain */
  const int next = (a->rank + 1) % p, prev = (a->rank - 1 + p) % p;
  const uint64_t es = a->dtsize;
  uint64_t ce, nch;

  if (a->count == 0)
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  ce = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
  nch = (a->count + ce - 1) / ce;
  if (nch > CHAIN_MAX_CHUNKS)
    nch = CHAIN_MAX_CHUNKS;
  for (uint64_t c = 0; c < nch; c++) {
    uint64_t off = duet__part_off(a->count, nch, c) * es;
    uint64_t len = duet__part_len(a->count, nch, c) * es;
    if (v == 0) {
      duet__ref_t src = duet__ref(DUET_BUF_SEND, off);
      duet__sched_copy(s, duet__ref(DUET_BUF_RECV, off), src, len, NULL, 0);
      if (p > 1)
        duet__sched_send(s, next, (uint32_t)c, src, len, NULL, 0);
    } else {
      duet__ref_t dst = duet__ref(DUET_BUF_RECV, off);
      uint32_t rv = duet__sched_recv(s, prev, (uint32_t)c, dst, len, NULL, 0);
      if (v < p - 1)
        duet__sched_send(s, next, (uint32_t)c, dst, len, &rv, 1);
    }
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
