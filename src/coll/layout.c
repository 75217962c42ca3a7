/*
 * layout.c - super-nodes, local indices and rails of a communicator, and the
 * table of builders per (collective, algorithm).
 */
#include <stdlib.h>
#include <string.h>

#include "coll/coll.h"

duet_status_t duet__layout_build(duet__layout_t *l, int nranks, const int32_t *supernode,
                                 int32_t **storage) {
  int nsn = 0;
  int32_t *mem, *local, *size, *first, *members, *fill, *rails, *rail_first;
  int most = 0, n = 0;

  for (int r = 0; r < nranks; r++)
    if (supernode[r] + 1 > nsn)
      nsn = supernode[r] + 1;
  mem = malloc(sizeof(int32_t) * ((size_t)nranks * 5 + (size_t)nsn * 3 + 2));
  if (mem == NULL)
    return DUET_ERR_NO_MEMORY;
  local = mem;
  members = local + nranks;
  size = members + nranks;
  first = size + nsn;
  fill = first + nsn;
  rails = fill + nsn + 1;
  rail_first = rails + nranks;
  memset(size, 0, sizeof(int32_t) * (size_t)nsn);
  for (int r = 0; r < nranks; r++)
    local[r] = size[supernode[r]]++;
  for (int k = 0, acc = 0; k < nsn; k++) {
    first[k] = acc;
    fill[k] = acc;
    acc += size[k];
  }
  for (int r = 0; r < nranks; r++)
    members[fill[supernode[r]]++] = r;
  /* the rails, so that the hierarchical builders allocate nothing per call */
  for (int k = 0; k < nsn; k++)
    most = size[k] > most ? size[k] : most;
  for (int j = 0; j < most; j++) {
    rail_first[j] = n;
    for (int k = 0; k < nsn; k++)
      if (j < size[k])
        rails[n++] = members[first[k] + j];
  }
  rail_first[most] = n;
  l->nranks = nranks;
  l->nsupernodes = nsn;
  l->supernode = supernode;
  l->local_rank = local;
  l->sn_size = size;
  l->sn_first = first;
  l->members = members;
  l->rails = rails;
  l->rail_first = rail_first;
  l->uniform = 1;
  for (int k = 1; k < nsn; k++)
    if (size[k] != size[0])
      l->uniform = 0;
  l->consecutive = 1;
  for (int k = 0; k < nsn; k++)
    for (int i = 1; i < size[k]; i++)
      if (members[first[k] + i] != members[first[k]] + i)
        l->consecutive = 0;
  *storage = mem;
  return DUET_SUCCESS;
}

duet__coll_build_fn duet__coll_builder(int coll, int algo) {
  static const struct {
    int coll, algo;
    duet__coll_build_fn fn;
  } table[] = {
      {DUET_COLL_ALLREDUCE, DUET_ALGO_RING, duet__allreduce_ring_build},
      {DUET_COLL_ALLREDUCE, DUET_ALGO_RD, duet__allreduce_rd_build},
      {DUET_COLL_ALLREDUCE, DUET_ALGO_RABENSEIFNER, duet__allreduce_rabenseifner_build},
      {DUET_COLL_ALLREDUCE, DUET_ALGO_HIER, duet__allreduce_hier_build},
      {DUET_COLL_BROADCAST, DUET_ALGO_BINOMIAL, duet__broadcast_binomial_build},
      {DUET_COLL_BROADCAST, DUET_ALGO_CHAIN, duet__broadcast_chain_build},
      {DUET_COLL_BROADCAST, DUET_ALGO_HIER, duet__broadcast_hier_build},
      {DUET_COLL_BARRIER, DUET_ALGO_DISSEM, duet__barrier_dissem_build},
      {DUET_COLL_BARRIER, DUET_ALGO_HIER, duet__barrier_hier_build},
      {DUET_COLL_ALLGATHER, DUET_ALGO_RING, duet__allgather_ring_build},
      {DUET_COLL_ALLGATHER, DUET_ALGO_RD, duet__allgather_rd_build},
      {DUET_COLL_ALLGATHER, DUET_ALGO_HIER, duet__allgather_hier_build},
      {DUET_COLL_REDUCE_SCATTER, DUET_ALGO_RING, duet__reduce_scatter_ring_build},
      {DUET_COLL_REDUCE_SCATTER, DUET_ALGO_RD, duet__reduce_scatter_rd_build},
      {DUET_COLL_REDUCE_SCATTER, DUET_ALGO_PAIRWISE, duet__reduce_scatter_pairwise_build},
      {DUET_COLL_REDUCE_SCATTER, DUET_ALGO_HIER, duet__reduce_scatter_hier_build},
      {DUET_COLL_REDUCE, DUET_ALGO_BINOMIAL, duet__reduce_binomial_build},
      {DUET_COLL_REDUCE, DUET_ALGO_CHAIN, duet__reduce_chain_build},
      {DUET_COLL_REDUCE, DUET_ALGO_HIER, duet__reduce_hier_build},
      {DUET_COLL_ALLTOALL, DUET_ALGO_PAIRWISE, duet__alltoall_pairwise_build},
      {DUET_COLL_ALLTOALL, DUET_ALGO_BRUCK, duet__alltoall_bruck_build},
      {DUET_COLL_ALLTOALL, DUET_ALGO_HIER, duet__alltoall_hier_build},
      {DUET_COLL_ALLTOALLV, DUET_ALGO_PAIRWISE, duet__alltoallv_pairwise_build},
      {DUET_COLL_ALLTOALLV, DUET_ALGO_HIER, duet__alltoallv_hier_build},
      {DUET_COLL_SEND, DUET_ALGO_AUTO, duet__send_build},
      {DUET_COLL_RECV, DUET_ALGO_AUTO, duet__recv_build},
  };
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
    if (table[i].coll == coll && table[i].algo == algo)
      return table[i].fn;
  return NULL;
}
