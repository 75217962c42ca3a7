/*
 * allgather.c - ring allgather, and the hierarchical allgather.
 *
 * Ring: p-1 steps, each passing on the block received the step before;
 * every rank sends and receives (p-1)/p of the result.
 *
 * Hierarchical (super-nodes of equal size L, N of them):
 *   1. on rail j (local index j) over the HPN: ring allgather of the blocks of
 *      the N ranks with local index j;
 *   2. inside the super-node over the UPN: ring allgather where local rank
 *      j's segment is the N blocks it now holds.
 * HPN bytes per rank: (N-1) blocks, the least any allgather can send. Other
 * layouts run the flat ring.
 *
 * When every super-node has the load/store UPN (coll.c), phase 2 runs on the
 * shared segment instead and only phase 1 is a schedule:
 * duet__allgather_hier_rail_build. On other layouts (sizes unequal, or a
 * super-node's ranks not one range) the blocks of the super-node are
 * gathered on the segment while every other block comes straight from its
 * rank: duet__allgather_remote_build.
 */
#include <stdlib.h>

#include "coll/hier.h"
#include "coll/ring.h"

static uint64_t chunk_elems(const duet__coll_args_t *a) {
  return a->chunk_bytes / a->dtsize ? a->chunk_bytes / a->dtsize : 1;
}

duet_status_t duet__allgather_ring_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__place_t own = {DUET_BUF_SEND, 1, 0};
  duet__segs_t g;
  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__segs_blocks(&g, a->count, a->nranks, NULL) != DUET_SUCCESS)
    return DUET_ERR_NO_MEMORY;
  duet__ring_ag_emit(s, a->rank, &g, a->dtsize, chunk_elems(a), own, DUET_BUF_RECV);
  duet__segs_free(&g);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/* Phase 1: this rank's block on its rail, into recvbuf at the places of the
 * rail's ranks (this rank's own too). */
static duet_status_t rail_phase(const duet__coll_args_t *a, duet__sched_t *s,
                                const duet__hier_t *h) {
  duet__place_t own = {DUET_BUF_SEND, 1, 0};
  duet__segs_t rail;
  duet__view_t v;
  if (duet__segs_blocks(&rail, a->count, h->nrail, h->rail) != DUET_SUCCESS)
    return DUET_ERR_NO_MEMORY;
  v = duet__hier_view(s, h->rail);
  v.msg_base = DUET_HIER_MSGS * 0;
  duet__sched_phase(s, &v);
  duet__ring_ag_emit(s, h->rail_me, &rail, a->dtsize, chunk_elems(a), own, DUET_BUF_RECV);
  duet__segs_free(&rail);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

duet_status_t duet__allgather_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__hier_t h;
  duet_status_t rc;
  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout) || !a->layout->uniform)
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc == DUET_SUCCESS)
    rc = rail_phase(a, s, &h);
  duet__hier_fini(&h);
  return rc;
}

duet_status_t duet__allgather_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__place_t held = {DUET_BUF_RECV, 0, 0};
  duet__segs_t dom;
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout) || !a->layout->uniform)
    return duet__allgather_ring_build(a, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  /* Segment j of the super-node: the blocks of the ranks with local index j,
   * one per super-node. */
  dom.n = h.ls;
  dom.per = h.nsn;
  dom.off = malloc(sizeof(uint64_t) * (size_t)h.ls * (size_t)h.nsn);
  dom.len = malloc(sizeof(uint64_t) * (size_t)h.ls * (size_t)h.nsn);
  if (dom.off == NULL || dom.len == NULL) {
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  for (int j = 0; j < h.ls; j++)
    for (int k = 0; k < h.nsn; k++) {
      size_t i = (size_t)j * (size_t)h.nsn + (size_t)k;
      dom.off[i] = (uint64_t)a->layout->members[a->layout->sn_first[k] + j] * a->count;
      dom.len[i] = a->count;
    }
  rc = rail_phase(a, s, &h);
  if (rc != DUET_SUCCESS)
    goto out_free;
  v = duet__hier_view(s, h.domain);
  v.msg_base = DUET_HIER_MSGS * 1;
  duet__sched_phase(s, &v);
  duet__ring_ag_emit(s, h.lr, &dom, a->dtsize, chunk_elems(a), held, DUET_BUF_RECV);
  rc = s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
out_free:
  duet__segs_free(&dom);
  duet__hier_fini(&h);
  return rc;
}

duet_status_t duet__allgather_remote_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return duet__hier_remote_exchange(a, s, 1, 0);
}
