/*
 * hier.h - helpers shared by the hierarchical algorithms: the rank lists of
 * this rank's super-node, of its rail, and of one representative per
 * super-node, and views over them.
 */
#ifndef DUET_HIER_H
#define DUET_HIER_H

#include "coll/coll.h"

typedef struct duet__hier {
  const duet__layout_t *l;
  int sn, nsn;           /* this rank's super-node, super-node count */
  int lr, ls;            /* local index and super-node size */
  const int32_t *domain; /* the ranks of this super-node (ls of them) */
  const int32_t *rail;   /* ranks with local index lr, one per super-node that has it */
  int nrail, rail_me;
  const int32_t *reps; /* one rank per super-node: local index min(j, size-1) */
  int nreps, reps_me;  /* reps_me: index of this rank in reps, or -1 */
  int32_t *reps_own;   /* reps when it is not a rail (super-nodes of unequal size) */
} duet__hier_t;

/* Lists for the rank args->rank; reps are chosen for local index rep_j.
 * On super-nodes of equal size they are the layout's rails: nothing is
 * allocated. */
duet_status_t duet__hier_init(duet__hier_t *h, const duet__coll_args_t *a, int rep_j);
void duet__hier_fini(duet__hier_t *h);

/* A view over ranks, with send and recv where the previous view had them
 * unless given. */
duet__view_t duet__hier_view(const duet__sched_t *s, const int32_t *ranks);

/* True when the hierarchy has nothing to add: one super-node, or one rank in
 * each. */
int duet__hier_is_flat(const duet__layout_t *l);

/* One block of count elements with each rank of the other super-nodes, in
 * pairwise order from this rank, DUET_HIER_REMOTE_WINDOW exchanges in
 * flight (for a call whose super-node's own blocks go through the shared
 * segment). The block sent to rank q is sendbuf's first (own_block) or its
 * q-th; the block from rank q lands in recvbuf at q (or, packed, at q's
 * index among the other super-nodes' ranks, in rank order). */
#define DUET_HIER_REMOTE_WINDOW 8
duet_status_t duet__hier_remote_exchange(const duet__coll_args_t *a, duet__sched_t *s,
                                         int own_block, int packed);

#endif
