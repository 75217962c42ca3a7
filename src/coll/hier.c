/*
 * hier.c - rank lists and views for the hierarchical algorithms.
 */
#include "coll/hier.h"

#include <stdlib.h>
#include <string.h>

int duet__hier_is_flat(const duet__layout_t *l) {
  if (l == NULL || l->nsupernodes <= 1)
    return 1;
  for (int k = 0; k < l->nsupernodes; k++)
    if (l->sn_size[k] > 1)
      return 0;
  return 1;
}

duet_status_t duet__hier_init(duet__hier_t *h, const duet__coll_args_t *a, int rep_j) {
  const duet__layout_t *l = a->layout;
  int32_t *reps;
  memset(h, 0, sizeof(*h));
  h->l = l;
  h->sn = l->supernode[a->rank];
  h->nsn = l->nsupernodes;
  h->lr = l->local_rank[a->rank];
  h->ls = l->sn_size[h->sn];
  h->domain = l->members + l->sn_first[h->sn];
  h->rail = l->rails + l->rail_first[h->lr];
  h->nrail = l->rail_first[h->lr + 1] - l->rail_first[h->lr];
  for (int k = 0; k < h->sn; k++) /* the rail lists super-nodes in order */
    h->rail_me += h->lr < l->sn_size[k];
  if (l->uniform) { /* every super-node has local index rep_j */
    int j = rep_j < h->ls ? rep_j : h->ls - 1;
    h->reps = l->rails + l->rail_first[j];
    h->nreps = h->nsn;
    h->reps_me = h->lr == j ? h->sn : -1;
    return DUET_SUCCESS;
  }
  reps = malloc(sizeof(int32_t) * (size_t)h->nsn);
  if (reps == NULL)
    return DUET_ERR_NO_MEMORY;
  h->reps = h->reps_own = reps;
  h->reps_me = -1;
  for (int k = 0; k < h->nsn; k++) {
    int size = l->sn_size[k], j = rep_j < size ? rep_j : size - 1;
    if (l->members[l->sn_first[k] + j] == a->rank)
      h->reps_me = h->nreps;
    reps[h->nreps++] = l->members[l->sn_first[k] + j];
  }
  return DUET_SUCCESS;
}

void duet__hier_fini(duet__hier_t *h) {
  free(h->reps_own);
  h->reps = h->reps_own = NULL;
}

duet__view_t duet__hier_view(const duet__sched_t *s, const int32_t *ranks) {
  duet__view_t v = s->view;
  v.ranks = ranks;
  return v;
}

duet_status_t duet__hier_remote_exchange(const duet__coll_args_t *a, duet__sched_t *s,
                                         int own_block, int packed) {
  const int p = a->nranks, r = a->rank, sn = a->layout->supernode[r];
  const int32_t *domain = a->layout->members + a->layout->sn_first[sn];
  const int ls = a->layout->sn_size[sn];
  const uint64_t blk = a->count * a->dtsize;
  uint32_t done[DUET_HIER_REMOTE_WINDOW];

  if (blk == 0)
    return DUET_SUCCESS;
  for (int k = 0; k < DUET_HIER_REMOTE_WINDOW; k++)
    done[k] = DUET_STEP_NONE;
  for (int k = 1, w = 0; k < p; k++) {
    int to = (r + k) % p, from = (r - k + p) % p;
    uint32_t gate = done[w], sd = DUET_STEP_NONE, rv = DUET_STEP_NONE;
    if (a->layout->supernode[to] != sn)
      sd = duet__sched_send(s, to, 0, duet__ref(DUET_BUF_SEND, own_block ? 0 : (uint64_t)to * blk),
                            blk, &gate, 1);
    if (a->layout->supernode[from] != sn) {
      uint64_t at = (uint64_t)from;
      for (int i = 0; packed && i < ls; i++) /* less the ranks of this super-node below it */
        at -= domain[i] < from;
      rv = duet__sched_recv(s, from, 0, duet__ref(DUET_BUF_RECV, at * blk), blk, &gate, 1);
    }
    if (sd == DUET_STEP_NONE && rv == DUET_STEP_NONE)
      continue;
    done[w] = rv != DUET_STEP_NONE ? rv : sd;
    w = (w + 1) % DUET_HIER_REMOTE_WINDOW;
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}
