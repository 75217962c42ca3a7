/*
 * split.c - duet_comm_split: a new communicator for the ranks of one color,
 * ordered by key (then by rank in the parent).
 *
 * Collective over the parent. The child shares the parent's endpoints (no new
 * connections, no rendezvous) and tells its messages apart by its own comm id
 * in every tag; it has its own sequence numbers, statistics, and super-node
 * layout (the super-nodes of its members, renumbered), so the hierarchy and
 * the tuner see the child's shape. Where the parent has the load/store path
 * in every super-node, the members of each child super-node map a segment
 * of their own (duet__split_mem), so the child's collectives take that path
 * too.
 */
#include <limits.h>
#include <stdio.h>
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

/* The load/store path for the child c (NULL on a rank that joins no child):
 * the members of each child super-node map a segment named after the
 * parent's, the split and the color, then every rank of the parent learns
 * who managed (one more allgather over the parent, which every rank makes,
 * so only when every parent super-node has the path: that is the same on
 * every rank). As at init, a child super-node uses it only if all its
 * members mapped it. Failing to map is not an error: the child then runs on
 * its endpoints. */
static duet_status_t duet__split_mem(duet_comm_t *comm, duet_comm_t *c, int color,
                                     const int *members) {
  int32_t ok = 0, *all = NULL;
  char name[NAME_MAX + 1] = "";
  duet_status_t rc;

  if (!comm->mem_everywhere)
    return DUET_SUCCESS;
  if (c != NULL && c->local_size > 1) {
    char err[DUET_SHM_ERRLEN] = "";
    int len =
        snprintf(name, sizeof(name), "%s-%u-%d", duet__shm_name(comm->mem), comm->split_seq, color);
    if (len > 0 && (size_t)len < sizeof(name) &&
        duet__shm_open(&c->mem, name, c->local_rank, c->local_size,
                       c->cfg.timeout_ms < 30000 ? c->cfg.timeout_ms : 30000,
                       err) == DUET_SUCCESS) {
      duet__shm_unlink(c->mem);
      duet__shm_set_kernel_copy(c->mem, c->cfg.mem_kernel_copy);
      ok = 1;
    } else {
      c->mem = NULL;
      DUET_WARN(DUET_SUB_INIT, "split: rank %d: no shared-memory UPN path (%s); using %s",
                comm->rank, err, comm->nets->net[DUET_NET_UPN].provider);
    }
  }
  all = malloc(sizeof(*all) * (size_t)comm->nranks);
  if (all == NULL) {
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "duet_comm_split: out of memory");
    goto out_close;
  }
  rc = duet_allgather(&ok, all, 1, DUET_INT32, comm);
  if (!ok && name[0] != '\0' && c->local_rank == 0)
    duet__shm_forget(name); /* every member has tried to open it by now */
  if (rc != DUET_SUCCESS || c == NULL)
    goto out_close;
  c->mem_everywhere = 1;
  for (int i = 0; i < c->nranks; i++) {
    int fine = all[members[i]] != 0;
    c->mem_everywhere &= fine;
    if (!fine && c->layout.supernode[i] == c->supernode && c->mem != NULL) {
      duet__shm_close(c->mem); /* every member of the super-node has it, or none uses it */
      c->mem = NULL;
    }
  }
  c->mem_everywhere &= c->mem != NULL;
  free(all);
  return DUET_SUCCESS;

out_close:
  if (c != NULL && c->mem != NULL) {
    duet__shm_close(c->mem);
    c->mem = NULL;
  }
  free(all);
  return rc;
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
  duet__comm_lock(comm);
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
  if (color == DUET_SPLIT_NOCOLOR) { /* not in any new communicator */
    rc = duet__split_mem(comm, NULL, color, members);
    goto out_free;
  }
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
  c->upn_tcp = comm->upn_tcp;
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
  rc = duet__split_mem(comm, c, color, members);
  if (rc != DUET_SUCCESS)
    goto out_free;
  duet__comm_shape(c);
  duet__abort_rx_make(c);
  if (c->nets->threaded && duet__async_start(c) != DUET_SUCCESS) {
    rc = duet__set_error(comm, DUET_ERR_SYSTEM, "%s: %s", fn, c->last_error);
    goto out_free;
  }
  if (duet__registry_add(c) != 0) {
    if (c->nets->threaded)
      duet__async_stop(c);
    rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory", fn);
    goto out_free;
  }
  duet__family_join(c); /* under comm's lock, which is c's */
  DUET_INFO(DUET_SUB_INIT, "split: rank %d of %d -> rank %d of %d (color %d, comm id %u)",
            comm->rank, comm->nranks, me, n, color, c->id);
  *newcomm = c;
  c = NULL;
out_free:
  if (c != NULL) {
    if (c->mem != NULL)
      duet__shm_close(c->mem);
    duet__nets_release(c);
    free(c->abort_rx); /* nothing posted yet */
    free(c->peers);
    free(c->layout_sn);
    free(c->layout_mem);
    free(c);
  }
  free(sn);
  free(remap);
  free(all);
  free(members);
  duet__comm_unlock(comm);
  return rc;
}
