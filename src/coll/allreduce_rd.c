/*
 * allreduce_rd.c - recursive-doubling allreduce for small messages: log2(p)
 * exchanges of the whole vector, any rank count.
 *
 * With p2 the largest power of two <= p and rem = p - p2, the first 2*rem
 * ranks pair up: even rank r hands its vector to r+1 and waits for the
 * answer, so p2 ranks remain. Those exchange with partner newrank ^ 2^k in
 * step k and reduce (a op b and b op a are the same bits: every op is
 * commutative), so all finish with identical results. AVG divides once at
 * the end; the odd ranks then send the result back to their even partner.
 *
 * Scratch: two slots of the whole vector, alternating between steps.
 *
 * The reduce-scatter's rd algorithm is this allreduce with the result in
 * scratch, after the two slots; each rank then copies its own block out
 * (duet__reduce_scatter_rd_build): log2(p) exchanges instead of the ring's
 * p-1 steps, for small vectors on many ranks.
 */
#include "coll/coll.h"

enum { RD_MSG_FOLD = 0, RD_MSG_STEP = 1, RD_MSG_UNFOLD = 1000 };

static int duet__rd_real(int newrank, int rem) {
  return newrank < rem ? 2 * newrank + 1 : newrank + rem;
}

/* The allreduce of the send buffer's `bytes` into `recvb` (recvbuf, or
 * scratch past the two slots); returns the step after which recvb holds
 * the result, or DUET_STEP_NONE. */
uint32_t duet__rd_emit(const duet__coll_args_t *a, duet__sched_t *s, uint64_t bytes,
                       duet__ref_t recvb) {
  const int p = a->nranks, r = a->rank;
  int p2 = 1, rem, newrank;
  duet__ref_t cur = duet__ref(DUET_BUF_SEND, 0);
  uint32_t last = DUET_STEP_NONE, slot_reader[2] = {DUET_STEP_NONE, DUET_STEP_NONE};

  if (bytes == 0)
    return DUET_STEP_NONE;
  if (p == 1)
    return duet__sched_copy(s, recvb, cur, bytes, NULL, 0);
  while (p2 * 2 <= p)
    p2 *= 2;
  rem = p - p2;
  duet__sched_need_scratch(s, 2 * bytes);

  if (r < 2 * rem && r % 2 == 0) {
    /* Folded out: hand the vector over, then receive the result (in place,
     * only after the send has finished reading it). */
    uint32_t sd = duet__sched_send(s, r + 1, RD_MSG_FOLD, cur, bytes, NULL, 0);
    return duet__sched_recv(s, r + 1, RD_MSG_UNFOLD, recvb, bytes, &sd, 1);
  }
  if (r < 2 * rem) {
    duet__ref_t in = duet__ref(DUET_BUF_SCRATCH, 0);
    uint32_t rv = duet__sched_recv(s, r - 1, RD_MSG_FOLD, in, bytes, NULL, 0);
    last = duet__sched_reduce(s, recvb, cur, in, bytes, &rv, 1);
    slot_reader[0] = last;
    cur = recvb;
    newrank = r / 2;
  } else {
    newrank = r - rem;
  }
  for (int k = 0, mask = 1; mask < p2; k++, mask <<= 1) {
    int peer = duet__rd_real(newrank ^ mask, rem);
    int sl = (k + 1) % 2;
    duet__ref_t in = duet__ref(DUET_BUF_SCRATCH, (uint64_t)sl * bytes);
    uint32_t sd = duet__sched_send(s, peer, RD_MSG_STEP + (uint32_t)k, cur, bytes, &last, 1);
    uint32_t rv = duet__sched_recv(s, peer, RD_MSG_STEP + (uint32_t)k, in, bytes,
                                   &slot_reader[sl], 1);
    uint32_t deps[2] = {rv, sd}; /* the send reads cur, which may be recvbuf */
    last = duet__sched_reduce(s, recvb, cur, in, bytes, deps, 2);
    slot_reader[sl] = last;
    cur = recvb;
  }
  if (a->op == DUET_AVG)
    last = duet__sched_avg(s, recvb, bytes, &last, 1);
  if (r < 2 * rem)
    duet__sched_send(s, r - 1, RD_MSG_UNFOLD, recvb, bytes, &last, 1);
  return last;
}

duet_status_t duet__allreduce_rd_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__rd_emit(a, s, a->count * a->dtsize, duet__ref(DUET_BUF_RECV, 0));
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
