/*
 * coll.h - collective algorithms. Each algorithm is a builder that turns the
 * arguments of one call into a schedule; it touches no buffer and no network.
 */
#ifndef DUET_COLL_H
#define DUET_COLL_H

#include "coll/schedule.h"

#include "core/algo.h"

/* Where every rank of the communicator sits: super-nodes (UPN domains) and
 * local indices; ranks with the same local index form a rail on the HPN. */
typedef struct duet__layout {
  int nranks, nsupernodes;
  int uniform;               /* every super-node has the same size */
  int consecutive;           /* every super-node's ranks are one range */
  const int32_t *supernode;  /* per rank */
  const int32_t *local_rank; /* per rank */
  const int32_t *sn_size;    /* per super-node */
  const int32_t *sn_first;   /* per super-node: its first entry in members */
  const int32_t *members;    /* ranks grouped by super-node, rank order inside */
  /* the ranks with local index j, in super-node order: rails[rail_first[j]
   * .. rail_first[j + 1]) (j < the largest super-node's size) */
  const int32_t *rails;
  const int32_t *rail_first;
} duet__layout_t;

typedef struct duet__coll_args {
  int coll; /* DUET_COLL_* */
  int rank, nranks;
  int root;     /* broadcast */
  int peer;     /* send/recv */
  size_t count; /* elements */
  duet_datatype_t dt;
  duet_op_t op;
  size_t dtsize;
  size_t chunk_bytes;  /* pipelining unit */
  size_t rd_max_bytes; /* inner allreduce phases: recursive doubling up to here */
  int out_aliases_in;  /* reduce_scatter in place with recvbuf == sendbuf */
  int in_place;        /* alltoall, allreduce: sendbuf == recvbuf */
  int blocking;        /* a blocking call: the load/store path may run it */
  int seq_reserved;    /* 1: post the schedule under seq (taken in call order earlier) */
  uint32_t seq;
  const size_t *scounts, *sdispls, *rcounts, *rdispls; /* alltoallv, elements */
  /* hierarchical alltoallv: rail_counts[i N + d] is what local rank i sends
   * rank (d, this rank's local index), in elements (duet__alltoall_local_build) */
  const uint64_t *rail_counts;
  const duet__layout_t *layout; /* hierarchical algorithms; NULL: one super-node */
} duet__coll_args_t;

/* A builder appends its steps to s (seen through s->view, so it can be a
 * phase of a larger schedule) and does not finalize it. */
typedef duet_status_t (*duet__coll_build_fn)(const duet__coll_args_t *args, duet__sched_t *s);

duet_status_t duet__allreduce_ring_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allreduce_rd_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Recursive-doubling allreduce of the first `bytes` of the send buffer into
 * recvb (allreduce_rd.c); the step after which recvb holds the result. */
uint32_t duet__rd_emit(const duet__coll_args_t *args, duet__sched_t *s, uint64_t bytes,
                       duet__ref_t recvb);
duet_status_t duet__broadcast_binomial_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__barrier_dissem_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allreduce_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Phase 2 of the hierarchical allreduce alone (coll.c runs phases 1 and 3
 * on the load/store UPN): recvbuf's segment of this rank's local index j
 * allreduced on its rail, in place. Segments are count / L elements; the
 * last local rank's also holds the count % L after them. Uniform layouts. */
duet_status_t duet__allreduce_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Phase 2 of the unequal layouts alone: the leaders' (local rank 0)
 * allreduce of recvbuf, in place. */
duet_status_t duet__allreduce_hier_leaders_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allreduce_rabenseifner_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__broadcast_chain_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__broadcast_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__barrier_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* The representatives' phase alone of the hierarchical broadcast, reduce
 * and barrier (coll.c runs the phases inside the super-node on the
 * load/store UPN); the reduce's sendbuf is the representative's partial
 * result. Empty on the other ranks. */
duet_status_t duet__broadcast_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__barrier_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allgather_ring_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allgather_rd_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allgather_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Phase 1 of the hierarchical allgather alone (coll.c runs phase 2 on the
 * load/store UPN): this rank's block on its rail, into recvbuf. */
duet_status_t duet__allgather_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Layouts the rails do not suit, with the load/store UPN (coll.c): this
 * rank's block to every rank of the other super-nodes, theirs into recvbuf
 * at their places. */
duet_status_t duet__allgather_remote_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_scatter_ring_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_scatter_rd_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_scatter_pairwise_build(const duet__coll_args_t *args,
                                                  duet__sched_t *s);
duet_status_t duet__reduce_scatter_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Phase 2 of the hierarchical reduce-scatter alone (coll.c runs phase 1 on
 * the load/store UPN): sendbuf holds, at k x count, the block for rank
 * (k, lr) summed over this rank's super-node. */
duet_status_t duet__reduce_scatter_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Layouts the rails do not suit, with the load/store UPN (coll.c): the
 * block of sendbuf for each rank of the other super-nodes to that rank;
 * theirs for this rank into recvbuf (a staging buffer) one after another,
 * in rank order. No reduction: the caller reduces once the sends are out. */
duet_status_t duet__reduce_scatter_remote_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_binomial_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_chain_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__reduce_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__alltoall_pairwise_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__alltoall_bruck_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__alltoall_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* The rail phase of the hierarchical all-to-all alone (coll.c runs the
 * exchange inside the super-node on the load/store UPN). That exchange
 * stages in scratch what this rank sends each rank on its rail: round m's
 * blocks (for rank (sn + m, lr)) at (m - 1) L blk, local rank i's at + i blk,
 * and opens gate m - 1 once they are in. When duet__alltoall_hier_rail_own
 * says so, this rank's own block goes straight from sendbuf instead and is
 * not staged. Uniform layouts. */
duet_status_t duet__alltoall_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
int duet__alltoall_hier_rail_own(const duet__coll_args_t *args);
/* The same for alltoallv (blocks sized by args->rail_counts); round m's
 * staged blocks start at duet__alltoallv_hier_stage(args, m) elements, and
 * a round whose blocks duet__alltoallv_hier_split sends one by one does
 * not stage this rank's own. */
duet_status_t duet__alltoallv_hier_rail_build(const duet__coll_args_t *args, duet__sched_t *s);
uint64_t duet__alltoallv_hier_stage(const duet__coll_args_t *args, int m);
int duet__alltoallv_hier_split(uint64_t bytes, int L);
duet_status_t duet__alltoallv_pairwise_build(const duet__coll_args_t *args, duet__sched_t *s);
/* Pairwise with the peers of other super-nodes only (args->layout), for a
 * call whose exchange inside the super-node goes through the shared
 * segment (coll.c): in place, each block received waits in scratch until
 * the block it replaces has left. */
duet_status_t duet__alltoall_remote_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__alltoallv_remote_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__alltoallv_hier_build(const duet__coll_args_t *args, duet__sched_t *s);
/* The hierarchical alltoallv's counts (alltoall.c): this rank's send counts
 * packed by the destination's local index, row[j N + d] for rank (d, j),
 * p of them; an all-to-all of N per pair inside the super-node (args: count
 * N, DUET_UINT64; sendbuf a packed row, recvbuf the rail counts) hands
 * every rank its rail counts. Super-nodes of equal size. */
void duet__alltoallv_counts_pack(const duet__coll_args_t *args, uint64_t *row);
duet_status_t duet__alltoall_local_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__send_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__recv_build(const duet__coll_args_t *args, duet__sched_t *s);

const char *duet__coll_name(int coll);

/* The builder of (collective, algorithm); NULL when there is none. */
duet__coll_build_fn duet__coll_builder(int coll, int algo);

/* Fill a layout from each rank's super-node index (0..nsupernodes-1,
 * numbered by lowest rank); the arrays are allocated into *storage, freed
 * with free(). */
duet_status_t duet__layout_build(duet__layout_t *l, int nranks, const int32_t *supernode,
                                 int32_t **storage);

#endif /* DUET_COLL_H */
