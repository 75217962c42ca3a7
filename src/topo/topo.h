/*
 * topo.h - this host's topology (hwloc) and the communicator's super-nodes.
 */
#ifndef DUET_TOPO_H
#define DUET_TOPO_H

#include <stdint.h>

#include "duet.h"

/* Number of cores this process may run on (hwloc; falls back to sysconf). */
int duet__topo_ncores(void);

/* What each rank tells the others in the first bootstrap round. */
typedef struct duet__rank_info {
  char host[64];
  char supernode[128];
  int32_t ncores;
  int32_t pid;
} duet__rank_info_t;

/* The super-node layout derived from every rank's info. */
typedef struct duet__domains {
  int nsupernodes;
  int32_t *supernode;  /* per rank: super-node index, numbered by first rank */
  int32_t *local_rank; /* per rank: index inside its super-node */
  int32_t *local_size; /* per rank: size of its super-node */
  int32_t *host_ranks; /* per rank: ranks on the same host */
  int one_host;        /* every rank on one host */
  int *domain_one_host; /* per super-node: all its ranks on one host */
} duet__domains_t;

duet_status_t duet__domains_build(const duet__rank_info_t *info, int nranks,
                                  duet__domains_t *d);
void duet__domains_free(duet__domains_t *d);

#endif
