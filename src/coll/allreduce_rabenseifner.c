/*
 * allreduce_rabenseifner.c - Rabenseifner's allreduce for large messages: a
 * recursive-halving reduce-scatter, then a recursive-doubling allgather, any
 * rank count.
 *
 * With p2 the largest power of two <= p and rem = p - p2, the first 2*rem
 * ranks fold pairwise as in allreduce_rd.c: even rank r hands its whole
 * vector to r+1 and later receives the result, so p2 ranks (newrank =
 * r/2 below 2*rem, r - rem above) take part in the rest.
 *
 * The vector is cut into p2 nearly equal parts (duet__part_off/_len); part k
 * ends up owned by newrank k. Reduce-scatter, step j = 0..log2(p2)-1 with
 * mask = p2 >> (j+1): a rank's window of parts [lo, hi) splits in halves; the
 * rank whose newrank has the mask bit clear keeps the lower half, its partner
 * (newrank ^ mask) the upper. Each sends the half it gives away (from SEND at
 * the first step, from RECV after) and receives the partner's partial sums
 * of the half it keeps into a scratch slot, then RECV[keep] = cur[keep] op
 * slot; out of place, the first step receives straight into RECV[keep]
 * (RECV[keep] = SEND[keep] op RECV[keep]: no slot, and the bytes are still
 * in cache). After log2(p2) steps newrank k holds part k reduced over all ranks
 * and, for DUET_AVG, divides that part once. The allgather replays the steps
 * backwards: send the window held so far, receive the partner's half into
 * RECV. Folded odd ranks finally send the whole result to their even
 * partner.
 *
 * Cost (n bytes, p2 = 2^L): 2L + (folding ? 2 : 0) message steps; each
 * remaining rank sends 2 n (p2-1)/p2 bytes (plus n for the fold/unfold), and
 * reduces n (p2-1)/p2 bytes. Messages are not cut into chunks: each step
 * moves one contiguous range of parts.
 *
 * Scratch: two receive slots used by alternate steps, packed at offset 0 of
 * each: the first holds at most p2/2 parts, the second p2/4 parts (both at
 * most n); a folded odd rank needs n for its partner's vector (reusing the
 * slots' space), so max(n, (3/4) n + small) at most.
 */
#include "coll/coll.h"

enum { RAB_MSG_FOLD = 0, RAB_MSG_RS = 1, RAB_MSG_AG = 100, RAB_MSG_UNFOLD = 1000 };

#define RAB_MAX_STEPS 64

static int duet__rab_real(int newrank, int rem) {
  return newrank < rem ? 2 * newrank + 1 : newrank + rem;
}

/* Byte offset and length of parts [lo, hi). */
static void duet__rab_range(const duet__coll_args_t *a, uint64_t p2, uint64_t lo, uint64_t hi,
                            uint64_t *off, uint64_t *len) {
  uint64_t o = duet__part_off(a->count, p2, lo), e = duet__part_off(a->count, p2, hi);
  *off = o * a->dtsize;
  *len = (e - o) * a->dtsize;
}

duet_status_t duet__allreduce_rabenseifner_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  const uint64_t bytes = a->count * a->dtsize;
  const duet__ref_t recvb = duet__ref(DUET_BUF_RECV, 0);
  int p2 = 1, rem, newrank, nsteps = 0, direct;
  duet__ref_t cur = duet__ref(DUET_BUF_SEND, 0);
  uint64_t keep_lo[RAB_MAX_STEPS], keep_hi[RAB_MAX_STEPS]; /* parts of step j */
  uint64_t give_lo[RAB_MAX_STEPS], give_hi[RAB_MAX_STEPS];
  int peer[RAB_MAX_STEPS];
  uint32_t rs_send[RAB_MAX_STEPS];
  uint32_t have[RAB_MAX_STEPS + 1]; /* steps that wrote the window held in the allgather */
  uint32_t nhave = 0;
  uint64_t slot_bytes[2] = {0, 0}, slot_off[2];
  uint32_t last = DUET_STEP_NONE, slot_reader[2] = {DUET_STEP_NONE, DUET_STEP_NONE};

  if (bytes == 0)
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  if (p == 1) {
    duet__sched_copy(s, recvb, cur, bytes, NULL, 0);
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  }
  while (p2 * 2 <= p)
    p2 *= 2;
  rem = p - p2;

  if (r < 2 * rem && r % 2 == 0) {
    /* Folded out: hand the vector over, then receive the result (only after
     * the send has finished reading it: SEND may be RECV). */
    uint32_t sd = duet__sched_send(s, r + 1, RAB_MSG_FOLD, cur, bytes, NULL, 0);
    duet__sched_recv(s, r + 1, RAB_MSG_UNFOLD, recvb, bytes, &sd, 1);
    return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
  }
  newrank = r < 2 * rem ? r / 2 : r - rem;
  /* Out of place, step 0 (the largest) receives straight into RECV and
   * reduces there: RECV[keep] = SEND[keep] op RECV[keep]. Later steps hold
   * this rank's partial sums in RECV, so they need a slot. */
  direct = !a->in_place && r >= 2 * rem;

  /* The windows of the reduce-scatter, and the slot sizes they need. */
  for (uint64_t l = 0, h = (uint64_t)p2, mask = (uint64_t)p2 >> 1; mask >= 1;
       mask >>= 1, nsteps++) {
    uint64_t mid = l + (h - l) / 2, off, len;
    int j = nsteps;
    if (((uint64_t)newrank & mask) == 0) {
      keep_lo[j] = l, keep_hi[j] = mid, give_lo[j] = mid, give_hi[j] = h;
    } else {
      keep_lo[j] = mid, keep_hi[j] = h, give_lo[j] = l, give_hi[j] = mid;
    }
    peer[j] = duet__rab_real(newrank ^ (int)mask, rem);
    duet__rab_range(a, (uint64_t)p2, keep_lo[j], keep_hi[j], &off, &len);
    if (!(j == 0 && direct) && len > slot_bytes[j % 2])
      slot_bytes[j % 2] = len;
    l = keep_lo[j];
    h = keep_hi[j];
  }
  slot_off[0] = 0;
  slot_off[1] = slot_bytes[0];
  duet__sched_need_scratch(s, slot_bytes[0] + slot_bytes[1]);

  if (r < 2 * rem) {
    /* Odd folded rank: RECV = SEND op partner's vector. */
    duet__ref_t in = duet__ref(DUET_BUF_SCRATCH, 0);
    uint32_t rv;
    duet__sched_need_scratch(s, bytes);
    rv = duet__sched_recv(s, r - 1, RAB_MSG_FOLD, in, bytes, NULL, 0);
    last = duet__sched_reduce(s, recvb, cur, in, bytes, &rv, 1);
    slot_reader[0] = slot_reader[1] = last; /* the slots reuse this space */
    cur = recvb;
  }

  /* Reduce-scatter by recursive halving. */
  for (int j = 0; j < nsteps; j++) {
    uint64_t koff, klen, goff, glen;
    duet__ref_t slot = duet__ref(DUET_BUF_SCRATCH, slot_off[j % 2]);
    uint32_t rv, red, deps[2];
    duet__rab_range(a, (uint64_t)p2, keep_lo[j], keep_hi[j], &koff, &klen);
    duet__rab_range(a, (uint64_t)p2, give_lo[j], give_hi[j], &goff, &glen);
    if (j == 0 && direct)
      slot = duet__ref(DUET_BUF_RECV, koff);
    /* The given half was last written by the previous step's reduce. */
    rs_send[j] = duet__sched_send(s, peer[j], RAB_MSG_RS + (uint32_t)j,
                                  duet__ref(cur.buf, cur.off + goff), glen, &last, 1);
    rv = duet__sched_recv(s, peer[j], RAB_MSG_RS + (uint32_t)j, slot, klen,
                          j == 0 && direct ? NULL : &slot_reader[j % 2], !(j == 0 && direct));
    deps[0] = rv;
    deps[1] = last; /* cur[keep] was written by the previous reduce */
    red = duet__sched_reduce(s, duet__ref(DUET_BUF_RECV, koff), duet__ref(cur.buf, cur.off + koff),
                             slot, klen, deps, 2);
    if (!(j == 0 && direct))
      slot_reader[j % 2] = red;
    last = red;
    cur = recvb;
  }
  if (a->op == DUET_AVG) {
    uint64_t off, len;
    duet__rab_range(a, (uint64_t)p2, (uint64_t)newrank, (uint64_t)newrank + 1, &off, &len);
    uint32_t avg = duet__sched_avg(s, duet__ref(DUET_BUF_RECV, off), len, &last, 1);
    if (avg != DUET_STEP_NONE)
      last = avg;
  }
  have[nhave++] = last;

  /* Allgather by recursive doubling: the steps backwards. */
  for (int j = nsteps - 1; j >= 0; j--) {
    uint64_t koff, klen, goff, glen;
    duet__rab_range(a, (uint64_t)p2, keep_lo[j], keep_hi[j], &koff, &klen);
    duet__rab_range(a, (uint64_t)p2, give_lo[j], give_hi[j], &goff, &glen);
    duet__sched_send(s, peer[j], RAB_MSG_AG + (uint32_t)j, duet__ref(DUET_BUF_RECV, koff), klen,
                     have, nhave);
    /* The given half of RECV (or of SEND, which may be RECV) was read by
     * the reduce-scatter's send of this step: overwrite it only after. */
    have[nhave++] = duet__sched_recv(s, peer[j], RAB_MSG_AG + (uint32_t)j,
                                     duet__ref(DUET_BUF_RECV, goff), glen, &rs_send[j], 1);
  }
  if (r < 2 * rem)
    duet__sched_send(s, r - 1, RAB_MSG_UNFOLD, recvb, bytes, have, nhave);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
