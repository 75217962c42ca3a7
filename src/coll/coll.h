/*
 * coll.h - collective algorithms. Each algorithm is a builder that turns the
 * arguments of one call into a schedule; it touches no buffer and no network.
 */
#ifndef DUET_COLL_H
#define DUET_COLL_H

#include "coll/schedule.h"

#include "core/algo.h"

typedef struct duet__coll_args {
  int coll;          /* DUET_COLL_* */
  int rank, nranks;
  int root;          /* broadcast */
  int peer;          /* send/recv */
  size_t count;      /* elements */
  duet_datatype_t dt;
  duet_op_t op;
  size_t dtsize;
  size_t chunk_bytes; /* pipelining unit */
} duet__coll_args_t;

typedef duet_status_t (*duet__coll_build_fn)(const duet__coll_args_t *args, duet__sched_t *s);

duet_status_t duet__allreduce_ring_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__allreduce_rd_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__broadcast_binomial_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__barrier_dissem_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__send_build(const duet__coll_args_t *args, duet__sched_t *s);
duet_status_t duet__recv_build(const duet__coll_args_t *args, duet__sched_t *s);

const char *duet__coll_name(int coll);

#endif /* DUET_COLL_H */
