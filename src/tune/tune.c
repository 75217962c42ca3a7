#include "tune/tune.h"

#include "core/log.h"

duet__coll_build_fn duet__tune_allreduce(const duet_comm_t *comm, size_t bytes) {
  int algo = comm->cfg.algo.coll[DUET_COLL_ALLREDUCE];
  if (algo == DUET_ALGO_AUTO)
    algo = bytes <= comm->cfg.rd_max_bytes ? DUET_ALGO_RD : DUET_ALGO_RING;
  DUET_TRACE(DUET_SUB_TUNE, "allreduce %zu bytes on %d ranks: %s", bytes, comm->nranks,
             algo == DUET_ALGO_RD ? "rd" : "ring");
  return algo == DUET_ALGO_RD ? duet__allreduce_rd_build : duet__allreduce_ring_build;
}

duet__coll_build_fn duet__tune_broadcast(const duet_comm_t *comm, size_t bytes) {
  (void)comm;
  (void)bytes;
  return duet__broadcast_binomial_build;
}

duet__coll_build_fn duet__tune_barrier(const duet_comm_t *comm) {
  (void)comm;
  return duet__barrier_dissem_build;
}
