/*
 * allreduce_ring.c - ring allreduce: a ring reduce-scatter, then a ring
 * allgather, over p nearly equal segments cut into pipelined chunks. Any rank
 * count; bandwidth-optimal (each rank sends 2 (p-1)/p of the data). Rank r
 * owns segment r after the reduce-scatter and divides it once for AVG.
 *
 * Scratch: two receive slots per chunk of a segment, in place only; out of
 * place the partial sums arrive straight in recvbuf and are reduced there.
 */
#include "coll/ring.h"

duet_status_t duet__allreduce_ring_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__segs_t g;
  duet__place_t own = {DUET_BUF_RECV, 0, 0};
  uint64_t ce = a->chunk_bytes / a->dtsize ? a->chunk_bytes / a->dtsize : 1;
  duet__view_t v;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__segs_even(&g, a->count, a->nranks) != DUET_SUCCESS)
    return DUET_ERR_NO_MEMORY;
  duet__ring_rs_emit(s, a->rank, &g, a->dtsize, ce, DUET_BUF_SEND, DUET_BUF_RECV, own,
                     a->op == DUET_AVG, 0, !a->in_place);
  if (a->nranks > 1) {
    v = s->view;
    v.msg_base += DUET_PHASE_MSGS;
    duet__sched_phase(s, &v);
    duet__ring_ag_emit(s, a->rank, &g, a->dtsize, ce, own, DUET_BUF_RECV);
  }
  duet__segs_free(&g);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
