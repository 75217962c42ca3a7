/*
 * domains.c - super-nodes (UPN domains) from every rank's super-node id:
 * ranks with the same id form one domain, numbered in order of their lowest
 * rank; inside it ranks take local indices in rank order. A domain is on
 * one host when its ranks share a host name, a kernel and a /dev/shm
 * (duet__same_shm).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "topo/topo.h"

uint64_t duet__fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

void duet__host_ids(duet__rank_info_t *info) {
  char boot[64] = "";
  struct stat st;
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f != NULL) {
    if (fgets(boot, sizeof(boot), f) == NULL)
      boot[0] = '\0';
    fclose(f);
  }
  info->machine = boot[0] ? duet__fnv1a(DUET_FNV1A_BASIS, boot, strlen(boot)) : 0;
  info->shm = info->machine;
  if (stat("/dev/shm", &st) == 0)
    info->shm = duet__fnv1a(info->shm, &st.st_dev, sizeof(st.st_dev));
}

int duet__same_machine(const duet__rank_info_t *a, const duet__rank_info_t *b) {
  return strcmp(a->host, b->host) == 0 && a->machine == b->machine;
}

int duet__same_shm(const duet__rank_info_t *a, const duet__rank_info_t *b) {
  return duet__same_machine(a, b) && a->shm == b->shm;
}

duet_status_t duet__domains_build(const duet__rank_info_t *info, int nranks,
                                  duet__domains_t *d) {
  int32_t *first = NULL; /* per super-node: its lowest rank */
  memset(d, 0, sizeof(*d));
  d->supernode = calloc((size_t)nranks, sizeof(int32_t));
  d->local_rank = calloc((size_t)nranks, sizeof(int32_t));
  d->local_size = calloc((size_t)nranks, sizeof(int32_t));
  d->host_ranks = calloc((size_t)nranks, sizeof(int32_t));
  d->domain_one_host = calloc((size_t)nranks, sizeof(int));
  first = calloc((size_t)nranks, sizeof(int32_t));
  if (!d->supernode || !d->local_rank || !d->local_size || !d->host_ranks ||
      !d->domain_one_host || !first) {
    free(first);
    duet__domains_free(d);
    return DUET_ERR_NO_MEMORY;
  }
  d->one_host = 1;
  for (int r = 0; r < nranks; r++) {
    int sn;
    for (sn = 0; sn < d->nsupernodes; sn++)
      if (strcmp(info[first[sn]].supernode, info[r].supernode) == 0)
        break;
    if (sn == d->nsupernodes) {
      first[sn] = r;
      d->nsupernodes++;
      d->domain_one_host[sn] = 1;
    }
    d->supernode[r] = sn;
    if (!duet__same_shm(&info[first[sn]], &info[r]))
      d->domain_one_host[sn] = 0;
    if (!duet__same_shm(&info[0], &info[r]))
      d->one_host = 0;
  }
  for (int r = 0; r < nranks; r++) {
    int lr = 0, ls = 0, hr = 0;
    for (int q = 0; q < nranks; q++) {
      if (d->supernode[q] == d->supernode[r]) {
        ls++;
        if (q < r)
          lr++;
      }
      if (duet__same_machine(&info[q], &info[r]))
        hr++;
    }
    d->local_rank[r] = lr;
    d->local_size[r] = ls;
    d->host_ranks[r] = hr;
  }
  free(first);
  return DUET_SUCCESS;
}

void duet__domains_free(duet__domains_t *d) {
  free(d->supernode);
  free(d->local_rank);
  free(d->local_size);
  free(d->host_ranks);
  free(d->domain_one_host);
  memset(d, 0, sizeof(*d));
}
