/*
 * allreduce_ring.c - ring allreduce: reduce-scatter then allgather around the
 * ring, each of the p segments cut into chunks so the steps of different
 * chunks pipeline. Any rank count; bandwidth-optimal (each rank sends
 * 2 (p-1)/p of the data).
 *
 * Rank r sends to r+1 and receives from r-1. In reduce-scatter step t it
 * sends segment (r-t) and receives segment (r-t-1), which it reduces with its
 * own contribution: recv[s] = send[s] op incoming. After p-1 steps it holds
 * segment (r+1) fully reduced (divided once for AVG), and the allgather passes
 * the finished segments on, received straight into the receive buffer.
 *
 * Scratch: incoming chunks land in two slots per chunk (steps alternate), so
 * scratch is 2 x one segment; a slot is reused only after the last reduce
 * that read it (two steps earlier, or earlier still when empty segments
 * were skipped).
 */
#include "coll/coll.h"

#include <stdlib.h>

duet_status_t duet__allreduce_ring_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  const int right = (r + 1) % p, left = (r - 1 + p) % p;
  const uint64_t es = a->dtsize;
  uint64_t seg_max, chunk_elems, nch, slot;
  uint32_t *rs_send = NULL, *reduce = NULL, *fin = NULL, *slot_reader = NULL;
  duet_status_t rc = DUET_ERR_NO_MEMORY;

  if (a->count == 0)
    return duet__sched_finalize(s);
  if (p == 1) {
    uint32_t c = duet__sched_copy(s, duet__ref(DUET_BUF_RECV, 0), duet__ref(DUET_BUF_SEND, 0),
                                  a->count * es, NULL, 0);
    (void)c; /* AVG over one rank divides by one: nothing to do */
    return duet__sched_finalize(s);
  }
  seg_max = duet__part_len(a->count, (uint64_t)p, 0);
  chunk_elems = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
  nch = (seg_max + chunk_elems - 1) / chunk_elems;
  slot = duet__part_len(seg_max, nch, 0) * es; /* largest chunk, bytes */
  s->scratch_bytes = 2 * nch * slot;

  /* Per chunk: the last reduce-scatter send, the last two reduces, and the
   * step that finished the owned chunk. */
  rs_send = malloc(sizeof(*rs_send) * nch * (size_t)(p - 1));
  reduce = malloc(sizeof(*reduce) * nch * (size_t)(p - 1));
  fin = malloc(sizeof(*fin) * nch);
  slot_reader = malloc(sizeof(*slot_reader) * 2 * nch);
  if (rs_send == NULL || reduce == NULL || fin == NULL || slot_reader == NULL)
    goto out_free;
  for (uint64_t k = 0; k < 2 * nch; k++)
    slot_reader[k] = DUET_STEP_NONE;

#define SEG_OFF(seg, c)                                                                 \
  ((duet__part_off(a->count, (uint64_t)p, (seg)) +                                      \
    duet__part_off(duet__part_len(a->count, (uint64_t)p, (seg)), nch, (c))) * es)
#define SEG_LEN(seg, c) \
  (duet__part_len(duet__part_len(a->count, (uint64_t)p, (seg)), nch, (c)) * es)

  /* Reduce-scatter. */
  for (int t = 0; t < p - 1; t++) {
    uint64_t sseg = (uint64_t)((r - t + p) % p), rseg = (uint64_t)((r - t - 1 + 2 * p) % p);
    for (uint64_t c = 0; c < nch; c++) {
      size_t i = (size_t)t * nch + c;
      uint32_t msg = (uint32_t)i;
      duet__ref_t buf = duet__ref(DUET_BUF_SCRATCH, ((uint64_t)(t % 2) * nch + c) * slot);
      uint32_t dep, rdeps[1];
      /* step 0 sends own data; later steps send what the previous reduce made */
      dep = t == 0 ? DUET_STEP_NONE : reduce[i - nch];
      rs_send[i] = duet__sched_send(s, right, msg,
                                    duet__ref(t == 0 ? DUET_BUF_SEND : DUET_BUF_RECV,
                                              SEG_OFF(sseg, c)),
                                    SEG_LEN(sseg, c), &dep, 1);
      /* the slot is free once the last reduce that read it is done */
      rdeps[0] = slot_reader[(size_t)(t % 2) * nch + c];
      uint32_t rv = duet__sched_recv(s, left, msg, buf, SEG_LEN(rseg, c), rdeps, 1);
      /* recv[rseg] has no earlier reader: the step-0 send read segment r,
       * and rseg = r-t-1 never equals r here. */
      reduce[i] = duet__sched_reduce(s, duet__ref(DUET_BUF_RECV, SEG_OFF(rseg, c)),
                                     duet__ref(DUET_BUF_SEND, SEG_OFF(rseg, c)), buf,
                                     SEG_LEN(rseg, c), &rv, 1);
      if (reduce[i] != DUET_STEP_NONE)
        slot_reader[(size_t)(t % 2) * nch + c] = reduce[i];
    }
  }
  /* The owned segment, (r+1), is complete: divide once for AVG. */
  for (uint64_t c = 0; c < nch; c++) {
    size_t last = (size_t)(p - 2) * nch + c;
    fin[c] = reduce[last];
    if (a->op == DUET_AVG) {
      uint32_t d = reduce[last];
      uint32_t av = duet__sched_avg(s, duet__ref(DUET_BUF_RECV, SEG_OFF((uint64_t)right, c)),
                                    SEG_LEN((uint64_t)right, c), &d, 1);
      if (av != DUET_STEP_NONE)
        fin[c] = av;
    }
  }
  /* Allgather: pass finished segments on; receive into the receive buffer
   * only after this rank's own send of that region (in place) is done. */
  {
    uint32_t *prev = malloc(sizeof(*prev) * nch);
    if (prev == NULL)
      goto out_free;
    for (uint64_t c = 0; c < nch; c++)
      prev[c] = fin[c];
    for (int t = 0; t < p - 1; t++) {
      uint64_t sseg = (uint64_t)((r + 1 - t + p) % p), rseg = (uint64_t)((r - t + p) % p);
      for (uint64_t c = 0; c < nch; c++) {
        uint32_t msg = (uint32_t)((size_t)(p - 1 + t) * nch + c);
        uint32_t sd = prev[c];
        uint32_t rd = rs_send[(size_t)t * nch + c];
        duet__sched_send(s, right, msg, duet__ref(DUET_BUF_RECV, SEG_OFF(sseg, c)),
                         SEG_LEN(sseg, c), &sd, 1);
        prev[c] = duet__sched_recv(s, left, msg, duet__ref(DUET_BUF_RECV, SEG_OFF(rseg, c)),
                                   SEG_LEN(rseg, c), &rd, 1);
      }
    }
    free(prev);
  }
#undef SEG_OFF
#undef SEG_LEN
  rc = duet__sched_finalize(s);
out_free:
  free(rs_send);
  free(reduce);
  free(fin);
  free(slot_reader);
  return rc;
}
