/*
 * tune.h - pick the algorithm of a call. First version: DUET_ALGO forces,
 * otherwise a size crossover (DUET_RD_MAX_BYTES) between recursive doubling
 * and ring for allreduce. The cost model comes with the hierarchy.
 */
#ifndef DUET_TUNE_H
#define DUET_TUNE_H

#include "core/comm.h"

duet__coll_build_fn duet__tune_allreduce(const duet_comm_t *comm, size_t bytes);
duet__coll_build_fn duet__tune_broadcast(const duet_comm_t *comm, size_t bytes);
duet__coll_build_fn duet__tune_barrier(const duet_comm_t *comm);

#endif
