/*
 * tune.h - pick the algorithm and chunk size of a call from an alpha-beta
 * cost model per network (latency per message, bandwidth per rank), the
 * collective, the size, the rank count and the super-node shape, or, for
 * the shapes it covers, from a table of measured crossovers. DUET_ALGO
 * forces a choice.
 */
#ifndef DUET_TUNE_H
#define DUET_TUNE_H

#include <stddef.h>

#include "core/algo.h"
#include "core/config.h"

typedef struct duet__tune_shape {
  int nranks, nsupernodes;
  int local_size; /* ranks per super-node (the largest) */
  int uniform;    /* every super-node has local_size ranks */
  int mem_everywhere;             /* every super-node has the load/store UPN (coll.c's hierarchy) */
  double upn_lat_us, upn_bw_gbps; /* the model's parameters for each network */
  double hpn_lat_us, hpn_bw_gbps;
  /* For the calibration table (measured on one host): every rank on one
   * host, more ranks than cores there, and the UPN's provider. */
  int one_host, oversubscribed;
  char upn_provider[64];
} duet__tune_shape_t;

typedef struct duet__tune_choice {
  int algo;           /* DUET_ALGO_* */
  size_t chunk_bytes; /* pipelining unit for this call */
  double est_us;      /* the model's estimate */
} duet__tune_choice_t;

/* The model's default latency and bandwidth for a libfabric provider ("shm",
 * "tcp", anything else), as measured on the reference machine. */
void duet__tune_net_defaults(const char *provider, double *lat_us, double *bw_gbps);

/* Estimated time of one algorithm, microseconds; a huge value when the
 * algorithm does not apply to the shape. */
double duet__tune_cost_us(const duet__tune_shape_t *shape, int coll, int algo, size_t bytes);

/* The choice for one call. force (may be NULL): DUET_ALGO's forced
 * algorithms, which win whenever they name one for coll. */
duet__tune_choice_t duet__tune_pick(const duet__tune_shape_t *shape, int coll, size_t bytes,
                                    const duet__algo_force_t *force);

#endif
