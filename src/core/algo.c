/*
 * algo.c - which algorithms each collective has.
 */
#include "core/algo.h"

#include <stddef.h>

static const char *const duet__coll_names[DUET_COLL_COUNT] = {
    "allreduce", "broadcast", "barrier", "send",   "recv",
    "allgather", "reduce_scatter", "reduce", "alltoall", "alltoallv"};

static const char *const duet__algo_names[DUET_ALGO_COUNT] = {
    "auto", "ring", "rd", "rabenseifner", "hier", "binomial", "chain", "dissem", "pairwise",
    "bruck"};

#define A(x) (1u << DUET_ALGO_##x)
static const unsigned duet__algo_valid_mask[DUET_COLL_COUNT] = {
    [DUET_COLL_ALLREDUCE] = A(RING) | A(RD) | A(RABENSEIFNER) | A(HIER),
    [DUET_COLL_BROADCAST] = A(BINOMIAL) | A(CHAIN) | A(HIER),
    [DUET_COLL_BARRIER] = A(DISSEM) | A(HIER),
    [DUET_COLL_ALLGATHER] = A(RING) | A(RD) | A(HIER),
    [DUET_COLL_REDUCE_SCATTER] = A(RING) | A(RD) | A(PAIRWISE) | A(HIER),
    [DUET_COLL_REDUCE] = A(BINOMIAL) | A(CHAIN) | A(HIER),
    [DUET_COLL_ALLTOALL] = A(PAIRWISE) | A(BRUCK) | A(HIER),
    [DUET_COLL_ALLTOALLV] = A(PAIRWISE) | A(HIER),
};
#undef A

const char *duet__coll_short_name(int coll) {
  return coll >= 0 && coll < DUET_COLL_COUNT ? duet__coll_names[coll] : NULL;
}

const char *duet__algo_name(int algo) {
  return algo >= 0 && algo < DUET_ALGO_COUNT ? duet__algo_names[algo] : NULL;
}

int duet__algo_valid(int coll, int algo) {
  if (coll < 0 || coll >= DUET_COLL_COUNT || algo < 0 || algo >= DUET_ALGO_COUNT)
    return 0;
  return algo == DUET_ALGO_AUTO || (duet__algo_valid_mask[coll] >> algo & 1u);
}
