/*
 * algo.h - the collectives and their algorithms, by id and by name. One table
 * (algo.c) says which algorithms each collective has; DUET_ALGO, the tuner
 * and duet_info all read it.
 */
#ifndef DUET_ALGO_H
#define DUET_ALGO_H

enum {
  DUET_COLL_ALLREDUCE,
  DUET_COLL_BROADCAST,
  DUET_COLL_BARRIER,
  DUET_COLL_SEND,
  DUET_COLL_RECV,
  DUET_COLL_ALLGATHER,
  DUET_COLL_REDUCE_SCATTER,
  DUET_COLL_REDUCE,
  DUET_COLL_ALLTOALL,
  DUET_COLL_ALLTOALLV,
  DUET_COLL_COUNT
};

enum {
  DUET_ALGO_AUTO = 0,
  DUET_ALGO_RING,         /* ring (allreduce: reduce-scatter + allgather) */
  DUET_ALGO_RD,           /* recursive doubling */
  DUET_ALGO_RABENSEIFNER, /* recursive halving reduce-scatter + doubling allgather */
  DUET_ALGO_HIER,         /* UPN inside super-nodes, HPN across them on rails */
  DUET_ALGO_BINOMIAL,     /* binomial tree */
  DUET_ALGO_CHAIN,        /* pipelined chain */
  DUET_ALGO_DISSEM,       /* dissemination */
  DUET_ALGO_PAIRWISE,     /* pairwise exchange */
  DUET_ALGO_BRUCK,        /* Bruck, log p steps */
  DUET_ALGO_COUNT
};

/* "allreduce", ...; NULL for an unknown id. */
const char *duet__coll_short_name(int coll);
/* "ring", ...; "auto" for DUET_ALGO_AUTO; NULL for an unknown id. */
const char *duet__algo_name(int algo);
/* Does collective coll have algorithm algo? (AUTO: always) */
int duet__algo_valid(int coll, int algo);

#endif
