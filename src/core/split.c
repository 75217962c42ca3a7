/*
 * split.c - duet_comm_split: a new communicator for the ranks of one color,
 * ordered by key (then by rank in the parent).
 *
 * Collective over the parent. The child shares the parent's endpoints (no new
 * connections, no rendezvous) and tells its messages apart by its own comm id
 * in every tag; it has its own sequence numbers, statistics, and super-node
 * layout (the super-nodes of its members, renumbered), so the hierarchy and
 * the tuner see the child's shape.
 */
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/log.h"

typedef struct duet__split_entry {
  int32_t color, key;
} duet__split_entry_t;

/* Members of one color, sorted by (key, parent rank). */
static int duet__split_cmp(const void *pa, const void *pb, void *arg) {
  const duet__split_entry_t *all = arg;
  int a = *(const int *)pa, b = *(const int *)pb;
  if (all[a].key != all[b].key)
    return all[a].key < all[b].key ? -1 : 1;
  return a < b ? -1 : a > b;
}

duet_status_t duet_comm_split(duet_comm_t *comm, int color, int key, duet_comm_t **newcomm) {
  const char *fn = "duet_comm_split";
  duet__split_entry_t mine = {color, key}, *all = NULL;
  int *members = NULL, n = 0, me = -1;
  int32_t *sn = NULL, *remap = NULL;
  duet_comm_t *c = NULL;
  duet_status_t rc;

  rc = duet__check_comm(comm, fn);
  if (rc != DUET_SUCCESS)
    return rc;
  if (newcomm == NULL)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT, "%s: newcomm is NULL", fn);
  *newcomm = NULL;
  if (color < DUET_SPLIT_NOCOLOR)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "%s: color %d is negative (DUET_SPLIT_NOCOLOR is %d)", fn, color,
                           DUET_SPLIT_NOCOLOR);
  all = malloc(sizeof(*all) * (size_t)comm->nranks);
  members = malloc(sizeof(*members) * (size_t)comm->nranks);
  if (all == NULL || members == NULL) {
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory", fn);
    goto out_free;
  }
  /* Everyone learns everyone's (color, key); the split sequence number is
   * taken by every rank, colored or not, so the children's ids agree. */
  rc = duet_allgather(&mine, all, 2, DUET_INT32, comm);
  if (rc != DUET_SUCCESS)
    goto out_free;
  comm->split_seq++;
  if (color == DUET_SPLIT_NOCOLOR)
    goto out_free; /* not in any new communicator */
  for (int r = 0; r < comm->nranks; r++)
    if (all[r].color == color)
      members[n++] = r;
  qsort_r(members, (size_t)n, sizeof(*members), duet__split_cmp, all);
  for (int i = 0; i < n; i++)
    if (members[i] == comm->rank)
      me = i;

  c = calloc(1, sizeof(*c));
  sn = malloc(sizeof(*sn) * (size_t)n);
  remap = malloc(sizeof(*remap) * (size_t)comm->layout.nsupernodes);
  if (c == NULL || sn == NULL || remap == NULL) {
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory", fn);
    goto out_free;
  }
  c->magic = DUET_COMM_MAGIC;
  c->rank = me;
  c->nranks = n;
  c->id = (comm->id * 131u + comm->split_seq * 7u + (uint32_t)color + 1u) & 0x7fffu;
  if (c->id == comm->id)
    c->id = (c->id + 1) & 0x7fffu;
  c->cfg = comm->cfg;
  c->one_host = comm->one_host;
  c->domains_one_host = comm->domains_one_host;
  c->yield = comm->yield;
  c->host_ranks = comm->host_ranks;
  c->peers = calloc((size_t)n, sizeof(*c->peers));
  if (c->peers == NULL) {
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory", fn);
    goto out_free;
  }
  /* Super-nodes of the members, renumbered in order of first appearance. */
  for (int k = 0; k < comm->layout.nsupernodes; k++)
    remap[k] = -1;
  for (int i = 0, next = 0; i < n; i++) {
    int psn = comm->layout.supernode[members[i]];
    if (remap[psn] < 0)
      remap[psn] = next++;
    sn[i] = remap[psn];
  }
  rc = duet__comm_layout(c, sn);
  if (rc != DUET_SUCCESS) {
    duet__set_error(comm, rc, "%s: out of memory", fn);
    goto out_free;
  }
  for (int i = 0; i < n; i++) {
    c->peers[i] = comm->peers[members[i]];
    c->peers[i].p2p_send_seq = c->peers[i].p2p_recv_seq = 0;
    c->peers[i].supernode = c->layout.supernode[i];
    c->peers[i].local_rank = c->layout.local_rank[i];
  }
  c->supernode = c->layout.supernode[me];
  c->nsupernodes = c->layout.nsupernodes;
  c->local_rank = c->layout.local_rank[me];
  c->local_size = c->layout.sn_size[c->supernode];
  c->nets = comm->nets;
  c->nets->refs++;
  duet__comm_shape(c);
  if (duet__registry_add(c) != 0) {
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory", fn);
    goto out_free;
  }
  DUET_INFO(DUET_SUB_INIT, "split: rank %d of %d -> rank %d of %d (color %d, comm id %u)",
            comm->rank, comm->nranks, me, n, color, c->id);
  *newcomm = c;
  c = NULL;
out_free:
  if (c != NULL) {
    duet__nets_release(c);
    free(c->peers);
    free(c->layout_sn);
    free(c->layout_mem);
    free(c);
  }
  free(sn);
  free(remap);
  free(all);
  free(members);
  return rc;
}
