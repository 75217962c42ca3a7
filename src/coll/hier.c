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
  memset(h, 0, sizeof(*h));
  h->l = l;
  h->sn = l->supernode[a->rank];
  h->nsn = l->nsupernodes;
  h->lr = l->local_rank[a->rank];
  h->ls = l->sn_size[h->sn];
  h->domain = l->members + l->sn_first[h->sn];
  h->rail = malloc(sizeof(int32_t) * (size_t)h->nsn);
  h->reps = malloc(sizeof(int32_t) * (size_t)h->nsn);
  if (h->rail == NULL || h->reps == NULL) {
    duet__hier_fini(h);
    return DUET_ERR_NO_MEMORY;
  }
  h->rail_me = h->reps_me = -1;
  for (int k = 0; k < h->nsn; k++) {
    int size = l->sn_size[k], j = rep_j < size ? rep_j : size - 1;
    if (h->lr < size) {
      if (k == h->sn)
        h->rail_me = h->nrail;
      h->rail[h->nrail++] = l->members[l->sn_first[k] + h->lr];
    }
    if (l->members[l->sn_first[k] + j] == a->rank)
      h->reps_me = h->nreps;
    h->reps[h->nreps++] = l->members[l->sn_first[k] + j];
  }
  return DUET_SUCCESS;
}

void duet__hier_fini(duet__hier_t *h) {
  free(h->rail);
  free(h->reps);
  h->rail = h->reps = NULL;
}

duet__view_t duet__hier_view(const duet__sched_t *s, const int32_t *ranks) {
  duet__view_t v = s->view;
  v.ranks = ranks;
  return v;
}
