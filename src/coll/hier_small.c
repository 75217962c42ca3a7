/*
 * hier_small.c - hierarchical broadcast, reduce and barrier: one phase over
 * the HPN among one representative per super-node, one over the UPN inside
 * each super-node. Correct for any layout; representatives have the root's
 * local index where the super-node has it (the last local rank otherwise),
 * so the HPN traffic stays on the root's rail as far as the layout allows.
 *
 * When every super-node has the load/store UPN (coll.c), the phases inside
 * the super-node run on the shared segment and only the representatives'
 * phase is a schedule: duet__{broadcast,reduce,barrier}_hier_rail_build
 * (empty on the other ranks, which still take the call's sequence number).
 */
#include "coll/hier.h"

static duet__coll_args_t sub_args(const duet__coll_args_t *a, int rank, int n, int root) {
  duet__coll_args_t sub = *a;
  sub.rank = rank;
  sub.nranks = n;
  sub.root = root;
  sub.layout = NULL;
  return sub;
}

/* The representatives' phase (message ids from DUET_HIER_MSGS * k): build
 * among them, rooted at super-node root_sn's; nothing on other ranks. */
static duet_status_t reps_phase(const duet__coll_args_t *a, duet__sched_t *s, const duet__hier_t *h,
                                int root_sn, uint32_t k, duet__coll_build_fn build) {
  duet__coll_args_t sub;
  duet__view_t v;
  if (h->reps_me < 0)
    return DUET_SUCCESS;
  v = duet__hier_view(s, h->reps);
  v.msg_base = DUET_HIER_MSGS * k;
  duet__sched_phase(s, &v);
  sub = sub_args(a, h->reps_me, h->nreps, root_sn);
  return build(&sub, s);
}

/* That phase alone, representatives of local index rep_j (the *_rail_build
 * of the load/store UPN). */
static duet_status_t reps_only(const duet__coll_args_t *a, duet__sched_t *s, int rep_j, int root_sn,
                               uint32_t k, duet__coll_build_fn build) {
  duet__hier_t h;
  duet_status_t rc;
  if (duet__hier_is_flat(a->layout))
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, rep_j);
  if (rc == DUET_SUCCESS)
    rc = reps_phase(a, s, &h, root_sn, k, build);
  duet__hier_fini(&h);
  return rc == DUET_SUCCESS && s->oom ? DUET_ERR_NO_MEMORY : rc;
}

duet_status_t duet__broadcast_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  if (a->count == 0)
    return DUET_SUCCESS;
  return reps_only(a, s, l->local_rank[a->root], l->supernode[a->root], 0,
                   duet__broadcast_binomial_build);
}

/* Broadcast: root -> representatives over the HPN, then each representative
 * -> its super-node over the UPN (in place on recvbuf). */
duet_status_t duet__broadcast_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  duet__hier_t h;
  duet__view_t v;
  duet__coll_args_t sub;
  duet_status_t rc = DUET_SUCCESS;
  int root_sn, root_lr, rep_lr;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(l))
    return duet__broadcast_binomial_build(a, s);
  root_sn = l->supernode[a->root];
  root_lr = l->local_rank[a->root];
  rc = duet__hier_init(&h, a, root_lr);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = reps_phase(a, s, &h, root_sn, 0, duet__broadcast_binomial_build);
  rep_lr = root_lr < h.ls ? root_lr : h.ls - 1;
  if (rc == DUET_SUCCESS) {
    v = duet__hier_view(s, h.domain);
    v.send = v.recv; /* the representative forwards what it received */
    v.msg_base = DUET_HIER_MSGS * 1;
    duet__sched_phase(s, &v);
    sub = sub_args(a, h.lr, h.ls, rep_lr);
    rc = duet__broadcast_binomial_build(&sub, s);
  }
  duet__hier_fini(&h);
  return rc == DUET_SUCCESS && s->oom ? DUET_ERR_NO_MEMORY : rc;
}

/* The representatives' reduce to the root alone: sendbuf holds the
 * representative's partial result (the root's may be its recvbuf). */
duet_status_t duet__reduce_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  if (a->count == 0)
    return DUET_SUCCESS;
  return reps_only(a, s, l->local_rank[a->root], l->supernode[a->root], 1,
                   duet__reduce_binomial_build);
}

/* Reduce: each super-node -> its representative over the UPN (into scratch,
 * or the root's recvbuf), then representatives -> root over the HPN. */
duet_status_t duet__reduce_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const uint64_t bytes = a->count * a->dtsize;
  duet__hier_t h;
  duet__view_t v;
  duet__coll_args_t sub;
  duet_status_t rc;
  int root_sn, root_lr, rep_lr, is_root = a->rank == a->root;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(l))
    return duet__reduce_binomial_build(a, s);
  root_sn = l->supernode[a->root];
  root_lr = l->local_rank[a->root];
  rc = duet__hier_init(&h, a, root_lr);
  if (rc != DUET_SUCCESS)
    return rc;
  rep_lr = root_lr < h.ls ? root_lr : h.ls - 1;
  /* 1. inside the super-node; the representative's partial result lands in
   * scratch [0, bytes) - the root's straight in its recvbuf */
  v = duet__hier_view(s, h.domain);
  if (h.reps_me >= 0 && !is_root) {
    v.recv = duet__ref(DUET_BUF_SCRATCH, 0);
    v.scratch_off = bytes;
  }
  v.msg_base = DUET_HIER_MSGS * 0;
  duet__sched_phase(s, &v);
  sub = sub_args(a, h.lr, h.ls, rep_lr);
  sub.op = a->op == DUET_AVG ? DUET_SUM : a->op;
  rc = duet__reduce_binomial_build(&sub, s);
  /* 2. representatives to the root */
  if (rc == DUET_SUCCESS && h.reps_me >= 0) {
    v = duet__hier_view(s, h.reps);
    v.send = v.recv; /* the partial result of phase 1 */
    v.recv = duet__ref(DUET_BUF_RECV, 0);
    v.scratch_off = is_root ? 0 : bytes;
    v.msg_base = DUET_HIER_MSGS * 1;
    duet__sched_phase(s, &v);
    sub = sub_args(a, h.reps_me, h.nreps, root_sn);
    rc = duet__reduce_binomial_build(&sub, s);
  }
  duet__hier_fini(&h);
  return rc == DUET_SUCCESS && s->oom ? DUET_ERR_NO_MEMORY : rc;
}

/* The leaders' barrier alone (local rank 0 of each super-node). */
duet_status_t duet__barrier_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return reps_only(a, s, 0, 0, 1, duet__barrier_dissem_build);
}

/* Barrier: inside the super-node, among leaders (local rank 0), inside the
 * super-node again. */
duet_status_t duet__barrier_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  duet__hier_t h;
  duet__view_t v;
  duet__coll_args_t sub;
  duet_status_t rc;

  if (duet__hier_is_flat(a->layout))
    return duet__barrier_dissem_build(a, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  v = duet__hier_view(s, h.domain);
  v.msg_base = DUET_HIER_MSGS * 0;
  duet__sched_phase(s, &v);
  sub = sub_args(a, h.lr, h.ls, 0);
  rc = duet__barrier_dissem_build(&sub, s);
  if (rc == DUET_SUCCESS)
    rc = reps_phase(a, s, &h, 0, 1, duet__barrier_dissem_build);
  if (rc == DUET_SUCCESS) {
    v = duet__hier_view(s, h.domain);
    v.msg_base = DUET_HIER_MSGS * 2;
    duet__sched_phase(s, &v);
    sub = sub_args(a, h.lr, h.ls, 0);
    rc = duet__barrier_dissem_build(&sub, s);
  }
  duet__hier_fini(&h);
  return rc == DUET_SUCCESS && s->oom ? DUET_ERR_NO_MEMORY : rc;
}
