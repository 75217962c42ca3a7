/*
 * allgather_rd.c - allgather in ceil(log2 p) steps, any rank count. Block k
 * (count elements, rank k's contribution) lands at RECV + k*count*dtsize.
 *
 * p a power of two: classic recursive doubling. In step k (d = 2^k) rank r
 * holds the aligned blocks [r & ~(d-1), +d) and swaps them with partner
 * r ^ d, which holds the neighbouring aligned run: one contiguous message
 * each way per step.
 *
 * Any other p: the Bruck / dissemination schedule, with every block written
 * straight to its place (no final rotation). Before step k (d = 2^k) rank r
 * holds the d blocks r, r+1, ..., r+d-1 (mod p); it sends the first
 * m = min(d, p - d) of them to r - d and receives blocks r+d .. r+d+m-1 from
 * r + d, which holds exactly those first. A run of blocks mod p is at most
 * two contiguous ranges of RECV, so a step moves one or two messages each
 * way (message id 2k + piece).
 *
 * Own block: copied SEND -> RECV (the copy is dropped when the view maps them
 * to the same place; in place, SEND = RECV + rank*count*dtsize, it copies a
 * region onto itself, which the engine skips). The first step sends it from
 * SEND, so it does not wait for the copy; later steps send from RECV after
 * the copy and the receives that landed the blocks they carry. A receive
 * writes only blocks not held yet, which nothing has read: receives wait for
 * nothing.
 *
 * Cost (n = count*dtsize bytes per rank): ceil(log2 p) steps, each rank
 * sends and receives (p-1) n bytes. No scratch.
 */
#include "coll/coll.h"

#define AG_MAX_DEPS 160 /* copy + two receives per step, 64 steps at most */

/* Send (recv) the run of m blocks starting at block first (mod p), in one
 * or two pieces; returns how many steps were added to out. */
static int duet__ag_run(duet__sched_t *s, const duet__coll_args_t *a, int is_send, int peer,
                        uint32_t msg, int first, int m, const uint32_t *deps, uint32_t ndeps,
                        uint32_t *out) {
  const uint64_t blk = a->count * a->dtsize;
  const int p = a->nranks;
  int n = 0, k1 = first + m <= p ? m : p - first; /* blocks before the wrap */
  int starts[2] = {first, 0}, lens[2] = {k1, m - k1};
  for (int piece = 0; piece < 2; piece++) {
    duet__ref_t ref = duet__ref(DUET_BUF_RECV, (uint64_t)starts[piece] * blk);
    uint64_t len = (uint64_t)lens[piece] * blk;
    uint32_t st;
    if (len == 0)
      continue;
    st = is_send ? duet__sched_send(s, peer, msg + (uint32_t)piece, ref, len, deps, ndeps)
                 : duet__sched_recv(s, peer, msg + (uint32_t)piece, ref, len, deps, ndeps);
    out[n++] = st;
  }
  return n;
}

duet_status_t duet__allgather_rd_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  const uint64_t blk = a->count * a->dtsize;
  const duet__ref_t own = duet__ref(DUET_BUF_SEND, 0);
  uint32_t have[AG_MAX_DEPS]; /* the copy and every receive so far */
  uint32_t nhave = 0, junk[2];

  if (blk == 0)
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  have[nhave++] =
      duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)r * blk), own, blk, NULL, 0);
  if ((p & (p - 1)) == 0) {
    for (int k = 0, d = 1; d < p; k++, d <<= 1) {
      int partner = r ^ d;
      uint64_t mine = (uint64_t)(r & ~(d - 1)) * blk, theirs = (uint64_t)(partner & ~(d - 1)) * blk;
      uint64_t len = (uint64_t)d * blk;
      if (k == 0) /* only the own block yet: straight from SEND */
        duet__sched_send(s, partner, (uint32_t)k, own, blk, NULL, 0);
      else
        duet__sched_send(s, partner, (uint32_t)k, duet__ref(DUET_BUF_RECV, mine), len, have, nhave);
      have[nhave++] =
          duet__sched_recv(s, partner, (uint32_t)k, duet__ref(DUET_BUF_RECV, theirs), len, NULL, 0);
    }
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  }
  for (int k = 0, d = 1; d < p; k++, d <<= 1) {
    int m = d < p - d ? d : p - d;
    int to = ((r - d) % p + p) % p, from = (r + d) % p;
    if (k == 0)
      duet__sched_send(s, to, 0, own, blk, NULL, 0);
    else
      duet__ag_run(s, a, 1, to, 2u * (uint32_t)k, r, m, have, nhave, junk);
    nhave += (uint32_t)duet__ag_run(s, a, 0, from, 2u * (uint32_t)k, (r + d) % p, m, NULL, 0,
                                    have + nhave);
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
