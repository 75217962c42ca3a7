/*
 * allreduce_hier.c - hierarchical allreduce (DESIGN.md section 4).
 *
 * Super-nodes of equal size L, N of them:
 *   1. ring reduce-scatter inside the super-node over the UPN: local rank j
 *      owns segment j of the vector, summed over its super-node;
 *   2. allreduce of segment j across super-nodes over the HPN, on rail j (the
 *      ranks with local index j), all L rails at once;
 *   3. ring allgather inside the super-node over the UPN.
 * HPN bytes per rank fall from about 2S to 2S(N-1)/(NL).
 *
 * Super-nodes of unequal size take a slower path that is correct for any
 * layout: allreduce inside each super-node, allreduce among one leader (local
 * rank 0) per super-node, broadcast from the leader inside the super-node.
 *
 * The inner phases reuse the flat algorithms through views.
 *
 * When every super-node has the load/store UPN (coll.c), a call runs
 * phases 1 and 3 on the shared segment instead (an allreduce inside the
 * super-node, then an allgather of equal segments, or on unequal layouts
 * a broadcast from the leader) and only phase 2 as a schedule:
 * duet__allreduce_hier_rail_build, duet__allreduce_hier_leaders_build.
 */
#include "coll/hier.h"
#include "coll/ring.h"

/* An allreduce over a view of the call's buffers; in_place: the view reads
 * and writes the same memory. */
static duet_status_t inner_allreduce(const duet__coll_args_t *a, int rank, int n, size_t count,
                                     duet_op_t op, int in_place, duet__sched_t *s) {
  duet__coll_args_t sub = *a;
  sub.in_place = in_place;
  sub.rank = rank;
  sub.nranks = n;
  sub.count = count;
  sub.op = op;
  sub.layout = NULL;
  return count * a->dtsize <= a->rd_max_bytes ? duet__allreduce_rd_build(&sub, s)
                                              : duet__allreduce_ring_build(&sub, s);
}

duet_status_t duet__allreduce_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t es = a->dtsize;
  uint64_t b, off, len;
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0 || duet__hier_is_flat(a->layout) || !a->layout->uniform)
    return a->count == 0 ? DUET_SUCCESS : DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  b = a->count / (uint64_t)h.ls;
  off = (uint64_t)h.lr * b;
  len = h.lr == h.ls - 1 ? a->count - off : b;
  if (len > 0 && h.nrail > 1) {
    v = duet__hier_view(s, h.rail);
    v.send = v.recv = duet__ref(DUET_BUF_RECV, off * es);
    v.msg_base = DUET_HIER_MSGS * 1;
    duet__sched_phase(s, &v);
    rc = inner_allreduce(a, h.rail_me, h.nrail, len, a->op, 1, s);
  }
  duet__hier_fini(&h);
  if (rc == DUET_SUCCESS && s->oom)
    rc = DUET_ERR_NO_MEMORY;
  return rc;
}

/* Phase 2 of the unequal layouts alone (coll.c runs phases 1 and 3 on the
 * load/store UPN): the leaders' allreduce, in place on recvbuf. */
duet_status_t duet__allreduce_hier_leaders_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout))
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc == DUET_SUCCESS && h.reps_me >= 0) {
    v = duet__hier_view(s, h.reps);
    v.send = v.recv;
    v.msg_base = DUET_HIER_MSGS * 4;
    duet__sched_phase(s, &v);
    rc = inner_allreduce(a, h.reps_me, h.nreps, a->count, a->op, 1, s);
  }
  duet__hier_fini(&h);
  if (rc == DUET_SUCCESS && s->oom)
    rc = DUET_ERR_NO_MEMORY;
  return rc;
}

duet_status_t duet__allreduce_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t es = a->dtsize;
  const duet_op_t inner_op = a->op == DUET_AVG ? DUET_SUM : a->op; /* divide once, at the end */
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout))
    return inner_allreduce(a, a->rank, a->nranks, a->count, a->op, a->in_place, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;

  if (a->layout->uniform) {
    uint64_t ce = a->chunk_bytes / es ? a->chunk_bytes / es : 1;
    duet__place_t own = {DUET_BUF_RECV, 0, 0};
    duet__segs_t g;
    rc = duet__segs_even(&g, a->count, h.ls);
    if (rc != DUET_SUCCESS)
      goto out_fini;
    /* 1. reduce-scatter inside the super-node */
    v = duet__hier_view(s, h.domain);
    v.msg_base = DUET_HIER_MSGS * 0;
    duet__sched_phase(s, &v);
    duet__ring_rs_emit(s, h.lr, &g, es, ce, DUET_BUF_SEND, DUET_BUF_RECV, own, 0, 0,
                       !a->in_place);
    /* 2. allreduce of this rank's segment on its rail, in place */
    if (g.len[h.lr] > 0) {
      v = duet__hier_view(s, h.rail);
      v.send = v.recv = duet__ref(DUET_BUF_RECV, g.off[h.lr] * es);
      v.msg_base = DUET_HIER_MSGS * 1;
      duet__sched_phase(s, &v);
      rc = inner_allreduce(a, h.rail_me, h.nrail, g.len[h.lr], a->op, 1, s);
    }
    /* 3. allgather inside the super-node */
    if (rc == DUET_SUCCESS) {
      duet__view_t id;
      duet__view_identity(&id);
      v = duet__hier_view(s, h.domain);
      v.send = id.send;
      v.recv = id.recv;
      v.msg_base = DUET_HIER_MSGS * 2;
      duet__sched_phase(s, &v);
      duet__ring_ag_emit(s, h.lr, &g, es, ce, own, DUET_BUF_RECV);
    }
    duet__segs_free(&g);
  } else {
    /* 1. allreduce inside the super-node (not yet divided) */
    v = duet__hier_view(s, h.domain);
    v.msg_base = DUET_HIER_MSGS * 3;
    duet__sched_phase(s, &v);
    rc = inner_allreduce(a, h.lr, h.ls, a->count, inner_op, a->in_place, s);
    /* 2. leaders, in place */
    if (rc == DUET_SUCCESS && h.reps_me >= 0) {
      v = duet__hier_view(s, h.reps);
      v.send = v.recv;
      v.msg_base = DUET_HIER_MSGS * 4;
      duet__sched_phase(s, &v);
      rc = inner_allreduce(a, h.reps_me, h.nreps, a->count, a->op, 1, s);
    }
    /* 3. broadcast from the leader, in place */
    if (rc == DUET_SUCCESS) {
      duet__coll_args_t sub = *a;
      v = duet__hier_view(s, h.domain);
      v.send = v.recv;
      v.msg_base = DUET_HIER_MSGS * 5;
      duet__sched_phase(s, &v);
      sub.rank = h.lr;
      sub.nranks = h.ls;
      sub.root = 0;
      sub.layout = NULL;
      rc = duet__broadcast_binomial_build(&sub, s);
    }
  }
out_fini:
  duet__hier_fini(&h);
  if (rc == DUET_SUCCESS && s->oom)
    rc = DUET_ERR_NO_MEMORY;
  return rc;
}
