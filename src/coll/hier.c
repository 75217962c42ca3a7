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
