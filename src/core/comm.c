/*
 * comm.c - communicator lifecycle: init (rendezvous, super-nodes, endpoints),
 * destroy, abort, and the queries.
 *
 * Init runs three bootstrap rounds over the root: (1) host, super-node id and
 * core count, from which every rank derives the same super-node layout and
 * picks its providers; (2) endpoint addresses, or the error that kept a rank
 * from opening them; (3) a final status after every rank connected to its
 * peers. A rank that fails tells the others in the next round, so nobody
 * waits for a deadline to learn of it. Where libfabric's shm, the default
 * UPN provider, does not open on some rank, round 2 runs again with tcp as
 * every rank's UPN transport (duet__open_endpoints).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"
#include "core/comm.h"
#include "core/log.h"
#include "topo/topo.h"

/* --- registry of live communicators: catches use after destroy --- */
static pthread_mutex_t duet__registry_lock = PTHREAD_MUTEX_INITIALIZER;
static const duet_comm_t **duet__registry;
static size_t duet__registry_len, duet__registry_cap;

int duet__registry_add(const duet_comm_t *comm) {
  int rc = 0;
  pthread_mutex_lock(&duet__registry_lock);
  if (duet__registry_len == duet__registry_cap) {
    size_t ncap = duet__registry_cap ? 2 * duet__registry_cap : 16;
    const duet_comm_t **n = realloc(duet__registry, ncap * sizeof(*n));
    if (n == NULL) {
      rc = -1;
      goto out_unlock;
    }
    duet__registry = n;
    duet__registry_cap = ncap;
  }
  duet__registry[duet__registry_len++] = comm;
out_unlock:
  pthread_mutex_unlock(&duet__registry_lock);
  return rc;
}

static void duet__registry_remove(const duet_comm_t *comm) {
  pthread_mutex_lock(&duet__registry_lock);
  for (size_t i = 0; i < duet__registry_len; i++)
    if (duet__registry[i] == comm) {
      duet__registry[i] = duet__registry[--duet__registry_len];
      break;
    }
  pthread_mutex_unlock(&duet__registry_lock);
}

int duet__comm_is_live(const duet_comm_t *comm) {
  int live = 0;
  pthread_mutex_lock(&duet__registry_lock);
  for (size_t i = 0; i < duet__registry_len; i++)
    if (duet__registry[i] == comm) {
      live = 1;
      break;
    }
  pthread_mutex_unlock(&duet__registry_lock);
  return live;
}

uint64_t duet__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* --- init --- */

/* Ranks pin nothing, but say where they run (DUET_DEBUG=INFO, TOPO). */
static void duet__report_locality(int rank) {
  char err[DUET_TOPO_ERRLEN];
  duet__topo_t t;
  const duet__topo_nic_t *nic;
  if (!DUET_LOG_ON(DUET_LOG_INFO, DUET_SUB_TOPO))
    return;
  if (duet__topo_discover(&t, NULL, err) != DUET_SUCCESS)
    return; /* discover logged why */
  nic = duet__topo_nic_near(&t, t.numa);
  DUET_INFO(DUET_SUB_TOPO, "rank %d on %s: cpus %s, numa %s%d, nearest NIC %s", rank, t.hostname,
            t.cpuset ? t.cpuset : "?", t.bound ? "" : "unbound/", t.numa, nic ? nic->name : "none");
  duet__topo_free(&t);
}

typedef struct duet__addr_msg { /* bootstrap round 2 and 3 */
  int32_t ok;
  int32_t status; /* !ok: why (a duet_status_t) */
  int32_t mem_ok; /* round 2: this rank mapped its super-node's shared segment */
  int32_t shm_missing; /* round 2: libfabric's shm, the default UPN provider, would not open */
  uint32_t len[DUET_NET_COUNT];
  uint8_t addr[DUET_NET_COUNT][DUET_TP_ADDR_MAX];
  char error[192];
} duet__addr_msg_t;

void duet__comm_shape(duet_comm_t *comm);

/* Let go of the endpoints; the last communicator using them closes them,
 * then frees the requests that were still waiting for transfers. */
void duet__nets_release(duet_comm_t *comm) {
  duet__netset_t *nets = comm->nets;
  int last;
  comm->nets = NULL;
  if (nets == NULL)
    return;
  if (nets->threaded)
    pthread_mutex_lock(&nets->lock);
  last = --nets->refs == 0;
  if (nets->threaded)
    pthread_mutex_unlock(&nets->lock);
  if (!last)
    return;
  for (int n = DUET_NET_COUNT - 1; n >= 0; n--)
    if (nets->net[n].ep != NULL) {
      nets->net[n].ops->close(nets->net[n].ep);
      nets->net[n].ep = NULL;
    }
  duet__request_release_all(nets);
  while (nets->keep != NULL) {
    duet__keep_t *k = nets->keep;
    nets->keep = k->next;
    free(k);
  }
  pthread_mutex_destroy(&nets->lock);
  free(nets);
}

void duet__family_join(duet_comm_t *comm) {
  comm->family_next = comm->nets->members;
  comm->nets->members = comm;
  if (comm->mem != NULL)
    duet__shm_set_idle(comm->mem, duet__family_idle, comm);
}

/* Under the communicator's lock: no pass over the members is running. */
static void duet__family_leave(duet_comm_t *comm) {
  for (duet_comm_t **pp = &comm->nets->members; *pp != NULL; pp = &(*pp)->family_next)
    if (*pp == comm) {
      *pp = comm->family_next;
      break;
    }
  comm->family_next = NULL;
}

/* Keep block k (a duet__keep_t first) until the endpoints close. */
static void duet__nets_keep(duet__netset_t *nets, duet__keep_t *k) {
  k->next = nets->keep;
  nets->keep = k;
}

int duet__peer_needs_notice(const duet_comm_t *comm, int peer) {
  return peer != comm->rank && comm->nets->net[comm->peers[peer].net].ops == &duet__tp_ofi;
}

/* duet_comm_abort: tell every peer whose transport would not (libfabric's
 * says nothing when an endpoint closes) with one small message under
 * duet__tag_abort, given up to DUET_ABORT_NOTICE_MS to leave. A peer
 * waiting for this rank takes it once its wait has lasted
 * DUET_ALIVE_PERIOD_NS (progress.c) and fails with DUET_ERR_REMOTE instead
 * of waiting for its deadline. */
#define DUET_ABORT_NOTICE_MS 200
static void duet__comm_notify_abort(duet_comm_t *comm) {
  static const uint64_t word = 0xAB0A7ull;
  const int n = comm->nranks;
  struct {
    duet__keep_t keep; /* first */
    duet__tp_req_t req[];
  } *out;
  int left = 0;
  uint64_t until;

  for (int r = 0; r < n; r++)
    left += duet__peer_needs_notice(comm, r);
  if (left == 0)
    return;
  out = calloc(1, sizeof(*out) + (size_t)n * sizeof(duet__tp_req_t));
  if (out == NULL)
    return; /* the peers will time out */
  left = 0;
  for (int r = 0; r < n; r++) {
    const duet__net_t *nt = &comm->nets->net[comm->peers[r].net];
    char err[DUET_TP_ERRLEN];
    out->req[r].done = 1;
    if (!duet__peer_needs_notice(comm, r))
      continue;
    out->req[r].done = 0;
    if (nt->ops->isend(nt->ep, comm->peers[r].index, &word, sizeof(word),
                       duet__tag_abort(comm->id), &out->req[r], err) != DUET_SUCCESS)
      out->req[r].done = 1;
    else
      left++;
  }
  until = duet__now_ns() + DUET_ABORT_NOTICE_MS * 1000000ull;
  while (left > 0 && duet__now_ns() < until) {
    char err[DUET_TP_ERRLEN];
    for (int k = 0; k < DUET_NET_COUNT; k++)
      if (comm->nets->net[k].ep != NULL)
        (void)comm->nets->net[k].ops->progress(comm->nets->net[k].ep, err);
    left = 0;
    for (int r = 0; r < n; r++)
      left += !__atomic_load_n(&out->req[r].done, __ATOMIC_ACQUIRE);
    if (left > 0)
      sched_yield();
  }
  if (left > 0)
    duet__nets_keep(comm->nets, &out->keep); /* the endpoints may still send them */
  else
    free(out);
}

/* The netset's lock is recursive: a call holding it may make another. */
static int duet__nets_lock_init(duet__netset_t *nets) {
  pthread_mutexattr_t attr;
  int err = pthread_mutexattr_init(&attr);
  if (err == 0) {
    err = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    if (err == 0)
      err = pthread_mutex_init(&nets->lock, &attr);
    pthread_mutexattr_destroy(&attr);
  }
  return err;
}

static duet_status_t duet__open_net(duet_comm_t *comm, int n, const duet__tp_ops_t *ops,
                                    const char *provider, const char *iface, char *errbuf) {
  duet__tp_params_t params = {.provider = provider[0] ? provider : NULL,
                              .iface = iface[0] ? iface : NULL,
                              .yield = comm->yield,
                              .timeout_ms = comm->cfg.timeout_ms,
                              .tcp_sndbuf = comm->cfg.tcp_sndbuf,
                              .stall_ms = ops == &duet__tp_planes ? comm->cfg.plane_timeout_ms : 0};
  duet_status_t rc;
  comm->nets->net[n].ops = ops;
  snprintf(comm->nets->net[n].provider, sizeof(comm->nets->net[n].provider), "%s", provider);
  snprintf(comm->nets->net[n].iface, sizeof(comm->nets->net[n].iface), "%s", iface);
  rc = ops->open(&params, &comm->nets->net[n].ep, errbuf);
  if (rc != DUET_SUCCESS)
    comm->nets->net[n].ep = NULL;
  return rc;
}

/* The descriptors this process has open (0 when it cannot tell). */
static long duet__fds_open(void) {
  DIR *d = opendir("/proc/self/fd");
  long n = 0;
  if (d == NULL)
    return 0;
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n > 3 ? n - 3 : 0; /* ".", ".." and the directory's own */
}

/*
 * Room under RLIMIT_NOFILE for the sockets the endpoints may hold: most of
 * them in all, at_init of them opened by init. A soft limit too low for
 * most is raised (never past the hard one): a job of many ranks over
 * sockets needs more than the usual 1024. A hard limit too low for at_init
 * fails here, in the round every rank hears of, instead of as this rank's
 * socket() failing while its peers wait for its connections.
 */
static duet_status_t duet__fd_room(const duet_comm_t *comm, long most, long at_init,
                                   char *errbuf) {
  const long spare = 16; /* listeners, epoll and event descriptors */
  struct rlimit rl;
  long open_now, want;
  if (most == 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return DUET_SUCCESS;
  open_now = duet__fds_open();
  if (rl.rlim_max != RLIM_INFINITY && (rlim_t)(open_now + at_init) > rl.rlim_max) {
    snprintf(errbuf, DUET_TP_ERRLEN,
             "init connects %ld sockets (to %d UPN and %d HPN peers) with %ld descriptors open, "
             "more than RLIMIT_NOFILE's hard limit %llu: raise it (ulimit -Hn, limits.conf)",
             at_init, comm->local_size - 1, comm->nranks - comm->local_size, open_now,
             (unsigned long long)rl.rlim_max);
    return DUET_ERR_SYSTEM;
  }
  want = open_now + most + spare;
  if (rl.rlim_max != RLIM_INFINITY && (rlim_t)want > rl.rlim_max)
    want = (long)rl.rlim_max;
  if ((rlim_t)want <= rl.rlim_cur)
    return DUET_SUCCESS;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = (rlim_t)want;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    DUET_WARN(DUET_SUB_INIT, "rank %d: raising the soft RLIMIT_NOFILE from %llu to %ld: %s",
              comm->rank, (unsigned long long)old, want, strerror(errno));
    return DUET_SUCCESS;
  }
  DUET_INFO(DUET_SUB_INIT,
            "rank %d: raised the soft RLIMIT_NOFILE from %llu to %llu, room for up to %ld "
            "sockets to %d UPN and %d HPN peers",
            comm->rank, (unsigned long long)old, (unsigned long long)rl.rlim_cur, most,
            comm->local_size - 1, comm->nranks - comm->local_size);
  return DUET_SUCCESS;
}

/* Choose providers and interfaces, make room for their sockets, then open
 * the endpoints this rank needs: self always, the UPN when its super-node
 * has other ranks, the HPN when there are other super-nodes; only the UPN
 * when only_upn. Where the UPN's default provider, libfabric's shm, does
 * not open (it wants room in /dev/shm that a container may not have), this
 * rank opens no UPN endpoint and sets *shm_missing: init then has every
 * rank take tcp over lo instead (comm->upn_tcp), or the ranks would
 * disagree on the UPN's model. */
static duet_status_t duet__open_endpoints(duet_comm_t *comm, const duet__domains_t *dom,
                                          int only_upn, int32_t *shm_missing, char *errbuf) {
  char uprov[64], uiface[64], hprov[64], hiface[64];
  const duet__tp_ops_t *uops = NULL, *hops = NULL;
  long most = 0, at_init = 0;
  int per_peer, per_peer_init;
  duet_status_t rc;

  if (comm->local_size > 1) {
    /* "mem" (the load/store path) carries the blocking collectives; the
     * non-blocking ones, send/recv and groups still need an endpoint: shm. */
    snprintf(uprov, sizeof(uprov), "%s",
             duet__cfg_upn_named(&comm->cfg)                           ? comm->cfg.upn_provider
             : dom->domain_one_host[comm->supernode] && !comm->upn_tcp ? "shm"
                                                                       : "tcp");
    snprintf(uiface, sizeof(uiface), "%s",
             comm->cfg.upn_iface[0] ? comm->cfg.upn_iface
             : (dom->domain_one_host[comm->supernode] && strcmp(uprov, "shm") != 0) ? "lo"
                                                                                    : "");
    if (strchr(uiface, ',')) {
      snprintf(errbuf, DUET_TP_ERRLEN,
               "DUET_UPN_IFACE \"%s\": a list of planes is for the HPN only (DUET_HPN_IFACE)",
               uiface);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    uops = duet__tp_for_provider(uprov);
    per_peer = duet__tp_fds_per_peer(uops, uprov, uiface, &per_peer_init);
    most += (long)per_peer * (comm->local_size - 1);
    at_init += (long)per_peer_init * (comm->local_size - 1);
  }
  if (comm->nsupernodes > 1) { /* only_upn: its sockets are counted, not opened again */
    snprintf(hprov, sizeof(hprov), "%s",
             comm->cfg.hpn_provider[0] ? comm->cfg.hpn_provider : "tcp");
    snprintf(hiface, sizeof(hiface), "%s",
             comm->cfg.hpn_iface[0]                          ? comm->cfg.hpn_iface
             : (comm->one_host && strcmp(hprov, "shm") != 0) ? "lo"
                                                             : "");
    /* DUET_HPN_IFACE=hpn0,hpn1: one endpoint per plane (transports/planes) */
    hops = strchr(hiface, ',') ? &duet__tp_planes : duet__tp_for_provider(hprov);
    per_peer = duet__tp_fds_per_peer(hops, hprov, hiface, &per_peer_init);
    most += (long)per_peer * (comm->nranks - comm->local_size);
    if (!only_upn)
      at_init += (long)per_peer_init * (comm->nranks - comm->local_size);
  }
  rc = duet__fd_room(comm, most, at_init, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  if (!only_upn)
    rc = duet__open_net(comm, DUET_NET_SELF, &duet__tp_self, "self", "", errbuf);
  if (rc == DUET_SUCCESS && uops) {
    rc = duet__open_net(comm, DUET_NET_UPN, uops, uprov, uiface, errbuf);
    if (rc != DUET_SUCCESS && !duet__cfg_upn_named(&comm->cfg) && strcmp(uprov, "shm") == 0) {
      DUET_WARN(DUET_SUB_INIT,
                "rank %d: libfabric's shm does not open here (the warning above says why); the "
                "UPN endpoints of every rank use tcp over lo instead",
                comm->rank);
      *shm_missing = 1;
      rc = DUET_SUCCESS;
    }
  }
  if (rc == DUET_SUCCESS && hops && !only_upn)
    rc = duet__open_net(comm, DUET_NET_HPN, hops, hprov, hiface, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  DUET_INFO(DUET_SUB_INIT, "rank %d: super-node %d of %d, local %d of %d, UPN %s/%s, HPN %s/%s%s",
            comm->rank, comm->supernode, comm->nsupernodes, comm->local_rank, comm->local_size,
            comm->nets->net[DUET_NET_UPN].ep ? comm->nets->net[DUET_NET_UPN].provider : "-",
            comm->nets->net[DUET_NET_UPN].iface[0] ? comm->nets->net[DUET_NET_UPN].iface : "-",
            comm->nets->net[DUET_NET_HPN].ep ? comm->nets->net[DUET_NET_HPN].provider : "-",
            comm->nets->net[DUET_NET_HPN].iface[0] ? comm->nets->net[DUET_NET_HPN].iface : "-",
            comm->yield ? ", yielding (more ranks than cores)" : "");
  return DUET_SUCCESS;
}

/* The layout the hierarchical algorithms read, from each rank's super-node. */
duet_status_t duet__comm_layout(duet_comm_t *comm, const int32_t *supernode) {
  comm->layout_sn = malloc(sizeof(int32_t) * (size_t)comm->nranks);
  if (comm->layout_sn == NULL)
    return DUET_ERR_NO_MEMORY;
  memcpy(comm->layout_sn, supernode, sizeof(int32_t) * (size_t)comm->nranks);
  return duet__layout_build(&comm->layout, comm->nranks, comm->layout_sn, &comm->layout_mem);
}

/* The tuner's view of this communicator: its shape and, per network, the
 * latency and bandwidth of the chosen provider (or DUET_*_LAT_US/BW_GBPS). */
void duet__comm_shape(duet_comm_t *comm) {
  duet__tune_shape_t *sh = &comm->shape;
  /* Every rank must see the same shape, or ranks pick different algorithms
   * for one call: the model follows the configured providers and the
   * layout, never whether this rank happens to have an endpoint. */
  /* "mem" is the load/store path, whose endpoint is shm (open_endpoints).
   * Where the endpoints fell back to tcp (upn_tcp) but every super-node has
   * its segment, the UPN phases still go through the segment: weigh them
   * as before, so that the same algorithms run, only point to point slower. */
  const int upn_shm = comm->domains_one_host && (!comm->upn_tcp || comm->mem_everywhere);
  const char *upn = duet__cfg_upn_named(&comm->cfg) ? comm->cfg.upn_provider
                    : upn_shm                       ? "shm"
                                                    : "tcp";
  const char *hpn = comm->cfg.hpn_provider[0] ? comm->cfg.hpn_provider : "tcp";
  sh->nranks = comm->nranks;
  sh->nsupernodes = comm->layout.nsupernodes;
  sh->uniform = comm->layout.uniform;
  sh->mem_everywhere = comm->mem_everywhere;
  sh->local_size = 0;
  for (int k = 0; k < comm->layout.nsupernodes; k++)
    if (comm->layout.sn_size[k] > sh->local_size)
      sh->local_size = comm->layout.sn_size[k];
  sh->one_host = comm->one_host;
  sh->oversubscribed = comm->yield;
  snprintf(sh->upn_provider, sizeof(sh->upn_provider), "%s", upn);
  duet__tune_net_defaults(upn, &sh->upn_lat_us, &sh->upn_bw_gbps);
  duet__tune_net_defaults(hpn, &sh->hpn_lat_us, &sh->hpn_bw_gbps);
  if (comm->cfg.upn_lat_us > 0)
    sh->upn_lat_us = comm->cfg.upn_lat_us;
  if (comm->cfg.upn_bw_gbps > 0)
    sh->upn_bw_gbps = comm->cfg.upn_bw_gbps;
  if (comm->cfg.hpn_lat_us > 0)
    sh->hpn_lat_us = comm->cfg.hpn_lat_us;
  if (comm->cfg.hpn_bw_gbps > 0)
    sh->hpn_bw_gbps = comm->cfg.hpn_bw_gbps;
}

/* FNV-1a over n bytes. */
static uint64_t duet__hash(const void *p, size_t n) {
  return duet__fnv1a(DUET_FNV1A_BASIS, p, n);
}

/* The UPN load/store path: ranks of a super-node that sits on one host map
 * one shared segment (DESIGN.md section 5). Default when DUET_UPN_PROVIDER is
 * unset, or "mem"; DUET_UPN_PROVIDER=shm selects libfabric's shm instead.
 * A super-node of one rank maps one too when another super-node has
 * several ranks: its calls on the segment are local copies, and with a
 * segment everywhere the hierarchical calls take the load/store path
 * (coll.c). The segment's name is unique to this communicator's unique id
 * and the super-node's first rank's pid. Returns 1 when mapped. */
static int duet__open_mem(duet_comm_t *comm, const duet__domains_t *dom, const duet_unique_id_t *id,
                          const duet__rank_info_t *info, char name[96]) {
  char err[DUET_SHM_ERRLEN] = "";
  const uint64_t h = duet__hash(id->bytes, sizeof(id->bytes));
  int first = -1, largest = 0;
  for (int r = 0; r < comm->nranks; r++)
    largest = dom->local_size[r] > largest ? dom->local_size[r] : largest;
  if (largest < 2 || !dom->domain_one_host[comm->supernode])
    return 0;
  if (duet__cfg_upn_named(&comm->cfg))
    return 0;
  for (int r = 0; r < comm->nranks && first < 0; r++)
    if (dom->supernode[r] == comm->supernode)
      first = r;
  snprintf(name, 96, "/duet-%016llx-%d-%d", (unsigned long long)h, (int)info[first].pid,
           comm->supernode);
  if (duet__shm_open(&comm->mem, name, comm->local_rank, comm->local_size,
                     comm->cfg.timeout_ms < 30000 ? comm->cfg.timeout_ms : 30000,
                     err) != DUET_SUCCESS) {
    DUET_WARN(DUET_SUB_INIT, "rank %d: no shared-memory UPN path (%s); using the endpoints",
              comm->rank, err);
    comm->mem = NULL;
    return 0;
  }
  duet__shm_unlink(comm->mem);
  duet__shm_set_kernel_copy(comm->mem, comm->cfg.mem_kernel_copy);
  return 1;
}

/* Tell every endpoint its peers, in rank order, and number them. */
static duet_status_t duet__insert_peers(duet_comm_t *comm, const duet__addr_msg_t *all,
                                        char *errbuf) {
  int counts[DUET_NET_COUNT] = {0};
  duet_status_t rc = DUET_SUCCESS;
  uint8_t *blobs = NULL;
  size_t *lens = NULL;

  for (int r = 0; r < comm->nranks; r++) {
    duet__peer_t *p = &comm->peers[r];
    p->net = r == comm->rank                   ? DUET_NET_SELF
             : p->supernode == comm->supernode ? DUET_NET_UPN
                                               : DUET_NET_HPN;
    p->index = counts[p->net]++;
  }
  blobs = malloc((size_t)comm->nranks * DUET_TP_ADDR_MAX);
  lens = malloc((size_t)comm->nranks * sizeof(*lens));
  if (blobs == NULL || lens == NULL) {
    snprintf(errbuf, DUET_TP_ERRLEN, "out of memory for %d peer addresses", comm->nranks);
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  for (int n = 0; n < DUET_NET_COUNT; n++) {
    int k = 0;
    if (comm->nets->net[n].ep == NULL)
      continue;
    for (int r = 0; r < comm->nranks; r++) {
      if (comm->peers[r].net != n)
        continue;
      memcpy(blobs + (size_t)k * DUET_TP_ADDR_MAX, all[r].addr[n], all[r].len[n]);
      lens[k++] = all[r].len[n];
    }
    rc = comm->nets->net[n].ops->insert_peers(comm->nets->net[n].ep, k, blobs, DUET_TP_ADDR_MAX,
                                              lens, errbuf);
    if (rc != DUET_SUCCESS)
      goto out_free;
    if (comm->nets->net[n].ops->queue_sizes != NULL) {
      size_t q[2] = {0, 0};
      comm->nets->net[n].ops->queue_sizes(comm->nets->net[n].ep, &q[0], &q[1]);
      for (int kind = 0; kind < 2; kind++)
        comm->nets->net[n].queue_max[kind] = q[kind] > UINT32_MAX ? 0 : (uint32_t)q[kind];
      DUET_INFO(DUET_SUB_NET, "%s queues: %zu sends, %zu receives posted at most",
                duet__net_name(n), q[0], q[1]);
    }
  }
out_free:
  free(blobs);
  free(lens);
  return rc;
}

/*
 * Settings that decide which algorithm, chunk size and path a call takes.
 * Ranks that resolved them differently (an environment variable exported to
 * some ranks only) would run different schedules for the same call and wait
 * for each other until the deadline: init compares them instead.
 */
static const char *const duet__agree_names[DUET_AGREE_COUNT] = {
    "DUET_ALGO",         "DUET_CHUNK_BYTES",  "DUET_RD_MAX_BYTES",
    "DUET_UPN_PROVIDER", "DUET_HPN_PROVIDER", "DUET_UPN_LAT_US",
    "DUET_UPN_BW_GBPS",  "DUET_HPN_LAT_US",   "DUET_HPN_BW_GBPS"};

static void duet__agree_fill(const duet__cfg_t *cfg, uint64_t agree[DUET_AGREE_COUNT]) {
  const size_t chunk[2] = {cfg->chunk_bytes, (size_t)cfg->chunk_forced};
  agree[0] = duet__hash(cfg->algo.coll, sizeof(cfg->algo.coll));
  agree[1] = duet__hash(chunk, sizeof(chunk));
  agree[2] = duet__hash(&cfg->rd_max_bytes, sizeof(cfg->rd_max_bytes));
  agree[3] = duet__hash(cfg->upn_provider, strlen(cfg->upn_provider));
  agree[4] = duet__hash(cfg->hpn_provider, strlen(cfg->hpn_provider));
  agree[5] = duet__hash(&cfg->upn_lat_us, sizeof(cfg->upn_lat_us));
  agree[6] = duet__hash(&cfg->upn_bw_gbps, sizeof(cfg->upn_bw_gbps));
  agree[7] = duet__hash(&cfg->hpn_lat_us, sizeof(cfg->hpn_lat_us));
  agree[8] = duet__hash(&cfg->hpn_bw_gbps, sizeof(cfg->hpn_bw_gbps));
}

/* Every rank sees every rank's hashes, so all of them fail alike, naming the
 * first setting and the first rank that differs from rank 0. */
static duet_status_t duet__agree_check(const duet__rank_info_t *info, int nranks, int rank) {
  for (int k = 0; k < DUET_AGREE_COUNT; k++)
    for (int r = 1; r < nranks; r++)
      if (info[r].agree[k] != info[0].agree[k])
        return duet__set_error(NULL, DUET_ERR_MISMATCH,
                               "duet_comm_init: rank %d: %s differs between rank 0 and rank %d; "
                               "it decides each call's algorithm, so every rank must have the "
                               "same value (set it in the environment of every rank, or of none)",
                               rank, duet__agree_names[k], r);
  return DUET_SUCCESS;
}

/* This rank's round-2 message: its endpoints' addresses, or why it has
 * none (rc, tperr). */
static void duet__addresses(duet_comm_t *comm, duet_status_t rc, duet__addr_msg_t *mine,
                            char *tperr) {
  for (int n = 0; rc == DUET_SUCCESS && n < DUET_NET_COUNT; n++) {
    size_t len = DUET_TP_ADDR_MAX;
    mine->len[n] = 0;
    if (comm->nets->net[n].ep == NULL)
      continue;
    rc = comm->nets->net[n].ops->get_addr(comm->nets->net[n].ep, mine->addr[n], &len, tperr);
    mine->len[n] = (uint32_t)len;
  }
  if (rc != DUET_SUCCESS) {
    mine->ok = 0;
    mine->status = rc;
    snprintf(mine->error, sizeof(mine->error), "%s", tperr);
  }
}

/* Round 2/3 helper: share ok/error; if another rank failed, say which. */
static duet_status_t duet__exchange_status(duet_comm_t *comm, duet__boot_t *boot,
                                           duet__addr_msg_t *mine, duet__addr_msg_t *all,
                                           const char *what) {
  char berr[DUET_BOOT_ERRLEN] = "";
  duet_status_t rc = duet__boot_allgather(boot, mine, sizeof(*mine), all, berr);
  if (rc != DUET_SUCCESS)
    return duet__set_error(comm, rc, "duet_comm_init: rank %d: rendezvous (%s) failed: %s",
                           comm->rank, what, berr);
  if (!mine->ok)
    return duet__set_error(comm, mine->status < 0 ? mine->status : DUET_ERR_TRANSPORT,
                           "duet_comm_init: rank %d: %s: %s", comm->rank, what, mine->error);
  for (int r = 0; r < comm->nranks; r++)
    if (!all[r].ok)
      return duet__set_error(comm, DUET_ERR_REMOTE, "duet_comm_init: rank %d failed (%s): %.*s", r,
                             what, (int)sizeof(all[r].error), all[r].error);
  return DUET_SUCCESS;
}

static duet_status_t duet__comm_init(duet_comm_t **out, int nranks, const duet_unique_id_t *id,
                                     int rank, const duet_config_t *config) {
  char err[DUET_ERRLEN] = "", berr[DUET_BOOT_ERRLEN] = "", tperr[DUET_TP_ERRLEN] = "";
  char memname[96] = "";
  duet__rank_info_t mine, *info = NULL;
  duet__addr_msg_t *amine = NULL, *aall = NULL;
  duet__domains_t dom;
  duet__boot_t *boot = NULL;
  duet_comm_t *comm;
  duet_status_t rc;

  memset(&dom, 0, sizeof(dom));
  comm = calloc(1, sizeof(*comm));
  if (comm == NULL)
    return duet__set_error(NULL, DUET_ERR_NO_MEMORY, "duet_comm_init: out of memory");
  comm->magic = DUET_COMM_MAGIC;
  comm->rank = rank;
  comm->nranks = nranks;
  comm->nets = calloc(1, sizeof(*comm->nets));
  if (comm->nets == NULL || duet__nets_lock_init(comm->nets) != 0) {
    free(comm->nets);
    free(comm);
    return duet__set_error(NULL, DUET_ERR_NO_MEMORY, "duet_comm_init: out of memory");
  }
  comm->nets->refs = 1;
  rc = duet__config_resolve(config, &comm->cfg, err, sizeof(err));
  if (rc != DUET_SUCCESS) {
    duet__set_error(NULL, rc, "duet_comm_init: %s", err);
    goto out_free_comm;
  }
  comm->nets->threaded = comm->cfg.progress_thread;
  duet__log_set_rank(rank);

  rc = duet__boot_connect(id, rank, nranks, comm->cfg.timeout_ms, &boot, berr);
  if (rc != DUET_SUCCESS) {
    duet__set_error(NULL, rc, "duet_comm_init: rank %d of %d: %s", rank, nranks, berr);
    goto out_free_comm;
  }

  /* Round 1: who is where. */
  memset(&mine, 0, sizeof(mine));
  if (gethostname(mine.host, sizeof(mine.host) - 1) != 0)
    strcpy(mine.host, "localhost");
  snprintf(mine.supernode, sizeof(mine.supernode), "%s",
           comm->cfg.supernode[0] ? comm->cfg.supernode : mine.host);
  mine.ncores = duet__topo_ncores();
  mine.pid = (int32_t)getpid();
  mine.start = duet__proc_start(0);
  duet__host_ids(&mine);
  duet__agree_fill(&comm->cfg, mine.agree);
  info = calloc((size_t)nranks, sizeof(*info));
  amine = calloc(1, sizeof(*amine));
  aall = calloc((size_t)nranks, sizeof(*aall));
  comm->peers = calloc((size_t)nranks, sizeof(*comm->peers));
  if (info == NULL || amine == NULL || aall == NULL || comm->peers == NULL) {
    rc = duet__set_error(NULL, DUET_ERR_NO_MEMORY, "duet_comm_init: out of memory for %d ranks",
                         nranks);
    goto out_close_boot;
  }
  rc = duet__boot_allgather(boot, &mine, sizeof(mine), info, berr);
  if (rc != DUET_SUCCESS) {
    duet__set_error(NULL, rc, "duet_comm_init: rank %d: rendezvous failed: %s", rank, berr);
    goto out_close_boot;
  }
  rc = duet__agree_check(info, nranks, rank);
  if (rc != DUET_SUCCESS)
    goto out_close_boot;
  rc = duet__domains_build(info, nranks, &dom);
  if (rc != DUET_SUCCESS) {
    duet__set_error(NULL, rc, "duet_comm_init: out of memory for the super-node layout");
    goto out_close_boot;
  }
  /* The ranks on this machine whose process this rank can see (a rank in
   * another PID namespace cannot be looked up): a wait for one of them
   * notices when it is gone. */
  for (int r = 0; r < nranks; r++)
    if (r != rank && info[r].start != 0 && info[r].start != DUET_PROC_UNKNOWN &&
        duet__same_machine(&info[r], &mine) && duet__proc_start(info[r].pid) == info[r].start) {
      comm->peers[r].pid = info[r].pid;
      comm->peers[r].start = info[r].start;
    }
  comm->supernode = dom.supernode[rank];
  comm->nsupernodes = dom.nsupernodes;
  comm->local_rank = dom.local_rank[rank];
  comm->local_size = dom.local_size[rank];
  comm->host_ranks = dom.host_ranks[rank];
  comm->one_host = dom.one_host;
  comm->domains_one_host = 1;
  for (int k = 0; k < dom.nsupernodes; k++)
    comm->domains_one_host &= dom.domain_one_host[k];
  comm->yield = comm->host_ranks > mine.ncores;
  for (int r = 0; r < nranks; r++) {
    comm->peers[r].supernode = dom.supernode[r];
    comm->peers[r].local_rank = dom.local_rank[r];
  }
  rc = duet__comm_layout(comm, dom.supernode);
  if (rc != DUET_SUCCESS) {
    duet__set_error(NULL, rc, "duet_comm_init: out of memory for the super-node layout");
    goto out_close_boot;
  }

  /* Round 2: endpoint addresses (or why this rank has none). */
  amine->ok = 1;
  amine->mem_ok = duet__open_mem(comm, &dom, id, info, memname);
  rc = duet__open_endpoints(comm, &dom, 0, &amine->shm_missing, tperr);
  duet__addresses(comm, rc, amine, tperr);
  rc = duet__exchange_status(comm, boot, amine, aall, "opening endpoints");
  if (memname[0] != '\0' && comm->mem == NULL && comm->local_rank == 0)
    duet__shm_forget(memname); /* every local rank has tried to open it by now */
  if (rc != DUET_SUCCESS)
    goto out_set_thread_error;
  for (int r = 0; r < nranks && !comm->upn_tcp; r++)
    if (aall[r].shm_missing) {
      comm->upn_tcp = 1;
      DUET_INFO(DUET_SUB_INIT, "rank %d: rank %d has no libfabric shm: UPN endpoints over tcp",
                rank, r);
    }
  if (comm->upn_tcp) { /* round 2 again, with tcp where shm was the UPN's */
    if (comm->nets->net[DUET_NET_UPN].ep != NULL && !duet__cfg_upn_named(&comm->cfg) &&
        strcmp(comm->nets->net[DUET_NET_UPN].provider, "shm") == 0) {
      comm->nets->net[DUET_NET_UPN].ops->close(comm->nets->net[DUET_NET_UPN].ep);
      comm->nets->net[DUET_NET_UPN].ep = NULL;
    }
    rc = DUET_SUCCESS;
    if (comm->local_size > 1 && comm->nets->net[DUET_NET_UPN].ep == NULL)
      rc = duet__open_endpoints(comm, &dom, 1, &amine->shm_missing, tperr);
    duet__addresses(comm, rc, amine, tperr);
    rc = duet__exchange_status(comm, boot, amine, aall, "opening endpoints, tcp for the UPN");
    if (rc != DUET_SUCCESS)
      goto out_set_thread_error;
  }
  if (comm->mem != NULL) /* every rank of the super-node must have it, or none uses it */
    for (int r = 0; r < nranks; r++)
      if (dom.supernode[r] == comm->supernode && !aall[r].mem_ok) {
        duet__shm_close(comm->mem);
        comm->mem = NULL;
        break;
      }
  comm->mem_everywhere = comm->mem != NULL;
  for (int r = 0; r < nranks; r++)
    comm->mem_everywhere &= aall[r].mem_ok != 0;
  duet__comm_shape(comm); /* once every rank knows whether all have the segment */

  /* Round 3: connect to the peers, then agree that everyone did. */
  rc = duet__insert_peers(comm, aall, tperr);
  amine->ok = rc == DUET_SUCCESS;
  amine->status = rc;
  if (rc != DUET_SUCCESS)
    snprintf(amine->error, sizeof(amine->error), "%s", tperr);
  rc = duet__exchange_status(comm, boot, amine, aall, "connecting to peers");
  if (rc != DUET_SUCCESS)
    goto out_set_thread_error;

  /* Oversubscribed without a load/store segment (which evens out its own
   * ranks, shm.c): watch where the host's ranks run (topo/place.c). */
  if (comm->yield && comm->mem == NULL &&
      sched_getaffinity(0, sizeof(comm->place_mask), &comm->place_mask) == 0 &&
      CPU_COUNT(&comm->place_mask) >= 2 && comm->host_ranks > CPU_COUNT(&comm->place_mask)) {
    comm->place_pid = malloc((size_t)comm->host_ranks * sizeof(int));
    for (int r = 0; comm->place_pid != NULL && r < nranks; r++)
      if (duet__same_machine(&info[r], &info[rank])) {
        if (r == rank)
          comm->place_me = comm->place_n;
        comm->place_pid[comm->place_n++] = (int)info[r].pid;
      }
    duet__comm_place(comm);
  }

  duet__abort_rx_make(comm); /* the peers' networks are known */
  if (comm->nets->threaded && duet__async_start(comm) != DUET_SUCCESS) {
    rc = duet__set_error(NULL, DUET_ERR_SYSTEM, "duet_comm_init: %s", comm->last_error);
    goto out_close_nets;
  }
  if (duet__registry_add(comm) != 0) {
    if (comm->nets->threaded)
      duet__async_stop(comm);
    rc = duet__set_error(NULL, DUET_ERR_NO_MEMORY, "duet_comm_init: out of memory");
    goto out_close_nets;
  }
  duet__family_join(comm);
  if (duet__boot_root_here(id)) {
    comm->hosts_root = 1;
    comm->root_id = *id;
  }
  DUET_INFO(DUET_SUB_INIT, "rank %d of %d ready: %d super-node(s), %d rank(s) on this host", rank,
            nranks, comm->nsupernodes, comm->host_ranks);
  duet__report_locality(rank);
  duet__boot_close(boot);
  duet__domains_free(&dom);
  free(info);
  free(amine);
  free(aall);
  *out = comm;
  return DUET_SUCCESS;

out_set_thread_error:
  /* The message went to comm->last_error; the caller reads the thread's. */
  duet__set_error(NULL, rc, "%s", comm->last_error);
out_close_nets:
  if (comm->mem != NULL)
    duet__shm_close(comm->mem);
  duet__nets_release(comm);
out_close_boot:
  duet__boot_close(boot);
  duet__domains_free(&dom);
  /* As duet_comm_destroy does: the rendezvous's root is a thread of the
   * process that made it, and the other ranks may not have read the round
   * that told them of this failure yet. Keep it until every rank has closed
   * its rendezvous (or the timeout), so that they learn why init failed
   * instead of losing the root when this process exits. */
  if (duet__boot_root_here(id))
    duet__boot_root_wait(id, comm->cfg.timeout_ms);
out_free_comm:
  free(info);
  free(amine);
  free(aall);
  free(comm->abort_rx); /* nothing posted yet */
  free(comm->place_pid);
  free(comm->peers);
  free(comm->layout_sn);
  free(comm->layout_mem);
  duet__nets_release(comm);
  free(comm);
  return rc;
}

duet_status_t duet_get_unique_id(duet_unique_id_t *id) {
  char berr[DUET_BOOT_ERRLEN] = "";
  duet__cfg_t cfg;
  char err[DUET_ERRLEN];
  duet_status_t rc;

  duet__clear_error(NULL);
  if (id == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_get_unique_id: id is NULL");
  rc = duet__config_resolve(NULL, &cfg, err, sizeof(err));
  if (rc != DUET_SUCCESS)
    return duet__set_error(NULL, rc, "duet_get_unique_id: %s", err);
  rc = duet__boot_root_create(id, cfg.timeout_ms, berr);
  if (rc != DUET_SUCCESS)
    return duet__set_error(NULL, rc, "duet_get_unique_id: %s", berr);
  return DUET_SUCCESS;
}

duet_status_t duet_comm_init_rank(duet_comm_t **comm, int nranks, duet_unique_id_t id, int rank,
                                  const duet_config_t *config) {
  duet__clear_error(NULL);
  if (comm == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_comm_init_rank: comm is NULL");
  *comm = NULL;
  if (nranks < 1)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_comm_init_rank: nranks %d is not positive", nranks);
  if (rank < 0 || rank >= nranks)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_comm_init_rank: rank %d is not in [0, %d)", rank, nranks);
  return duet__comm_init(comm, nranks, &id, rank, config);
}

duet_status_t duet_comm_init_env(duet_comm_t **comm, const duet_config_t *config) {
  char berr[DUET_BOOT_ERRLEN] = "";
  duet__boot_env_t env;
  duet_unique_id_t id;
  duet__cfg_t cfg;
  char err[DUET_ERRLEN];
  duet_status_t rc;

  duet__clear_error(NULL);
  if (comm == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_comm_init_env: comm is NULL");
  *comm = NULL;
  rc = duet__config_resolve(config, &cfg, err, sizeof(err));
  if (rc != DUET_SUCCESS)
    return duet__set_error(NULL, rc, "duet_comm_init_env: %s", err);
  rc = duet__boot_env_read(&env, berr);
  if (rc != DUET_SUCCESS)
    return duet__set_error(NULL, rc, "duet_comm_init_env: %s", berr);
  rc = duet__boot_root_at(&id, env.host, env.port, env.secret, env.rank == 0, cfg.timeout_ms, berr);
  if (rc != DUET_SUCCESS)
    return duet__set_error(NULL, rc, "duet_comm_init_env: rank %d (%s): %s", env.rank, env.source,
                           berr);
  return duet__comm_init(comm, env.size, &id, env.rank, config);
}

/* --- teardown --- */

void duet__comm_free(duet_comm_t *comm) {
  duet__registry_remove(comm);
  if (comm->nets->threaded)
    duet__async_stop(comm); /* the thread no longer sees comm */
  duet__comm_lock(comm);    /* communicators split from it may still run */
  duet__family_leave(comm);
  duet__comm_release_requests(comm);
  if (comm->mem != NULL)
    duet__shm_close(comm->mem);
  duet__fiber_destroy(comm->fiber);
  if (comm->abort_rx != NULL) /* its receives may still be posted */
    duet__nets_keep(comm->nets, &comm->abort_rx->keep);
  comm->abort_rx = NULL;
  duet__comm_unlock(comm);
  duet__nets_release(comm);
  duet__scratch_release(comm);
  free(comm->a2av_counts);
  free(comm->mem_a2a_counts);
  free(comm->mem_stage);
  free(comm->peers);
  free(comm->layout_sn);
  free(comm->layout_mem);
  free(comm->place_pid);
  comm->magic = 0;
  free(comm);
}

duet_status_t duet_barrier(duet_comm_t *comm);

duet_status_t duet_comm_destroy(duet_comm_t *comm) {
  duet_status_t rc;
  duet__clear_error(NULL);
  rc = duet__check_comm(comm, "duet_comm_destroy");
  if (rc == DUET_ERR_INVALID_ARGUMENT)
    return rc;
  rc = DUET_SUCCESS;
  duet__comm_lock(comm);
  if (comm->failed == DUET_SUCCESS) {
    /* Let pending operations finish, then agree that everyone is done
     * sending before the endpoints close. */
    while (comm->active_head != NULL && rc == DUET_SUCCESS) {
      duet_request_t *head = comm->active_head;
      rc = duet__request_wait(head);
    }
    if (rc == DUET_SUCCESS)
      rc = duet__mem_drain(comm);
    if (rc == DUET_SUCCESS)
      rc = duet_barrier(comm);
    if (rc != DUET_SUCCESS)
      duet__set_error(NULL, rc, "%s", comm->last_error);
  }
  duet__comm_fail_pending(comm, DUET_ERR_ABORTED);
  duet__comm_unlock(comm);
  if (comm->hosts_root) /* ranks may still be in init: keep their rendezvous */
    duet__boot_root_wait(&comm->root_id, comm->cfg.timeout_ms);
  duet__comm_free(comm);
  return rc;
}

duet_status_t duet_comm_abort(duet_comm_t *comm) {
  duet__clear_error(NULL);
  if (comm == NULL || !duet__comm_is_live(comm))
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_comm_abort: comm is NULL or already destroyed");
  duet__comm_lock(comm);
  duet__comm_fail_pending(comm, DUET_ERR_ABORTED);
  duet__comm_notify_abort(comm);
  duet__comm_unlock(comm);
  duet__comm_free(comm);
  return DUET_SUCCESS;
}

duet_status_t duet_comm_get_async_error(duet_comm_t *comm, duet_status_t *async_error) {
  duet_status_t rc = duet__check_comm(comm, "duet_comm_get_async_error");
  if (rc == DUET_ERR_INVALID_ARGUMENT)
    return rc;
  if (async_error == NULL)
    return duet__set_error(comm, DUET_ERR_INVALID_ARGUMENT,
                           "duet_comm_get_async_error: async_error is NULL");
  duet__comm_lock(comm);
  if (comm->failed == DUET_SUCCESS)
    duet__progress(comm);
  *async_error = comm->failed;
  duet__comm_unlock(comm);
  return DUET_SUCCESS;
}

#define DUET_QUERY_CHECK(fn, out)                                                                  \
  do {                                                                                             \
    if (comm == NULL || !duet__comm_is_live(comm))                                                 \
      return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,                                      \
                             fn ": comm is NULL or was destroyed");                                \
    if ((out) == NULL)                                                                             \
      return duet__set_error((duet_comm_t *)comm, DUET_ERR_INVALID_ARGUMENT,                       \
                             fn ": " #out " is NULL");                                             \
  } while (0)

duet_status_t duet_comm_rank(const duet_comm_t *comm, int *rank) {
  DUET_QUERY_CHECK("duet_comm_rank", rank);
  *rank = comm->rank;
  return DUET_SUCCESS;
}

duet_status_t duet_comm_size(const duet_comm_t *comm, int *size) {
  DUET_QUERY_CHECK("duet_comm_size", size);
  *size = comm->nranks;
  return DUET_SUCCESS;
}

duet_status_t duet_comm_supernode(const duet_comm_t *comm, int *supernode, int *nsupernodes,
                                  int *local_rank, int *local_size) {
  if (comm == NULL || !duet__comm_is_live(comm))
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_comm_supernode: comm is NULL or was destroyed");
  /* Any output may be NULL: the caller does not want it. */
  if (supernode)
    *supernode = comm->supernode;
  if (nsupernodes)
    *nsupernodes = comm->nsupernodes;
  if (local_rank)
    *local_rank = comm->local_rank;
  if (local_size)
    *local_size = comm->local_size;
  return DUET_SUCCESS;
}

duet_status_t duet_comm_get_stats(const duet_comm_t *comm, duet_stats_t *stats) {
  DUET_QUERY_CHECK("duet_comm_get_stats", stats);
  duet__comm_lock(comm);
  *stats = comm->stats;
  duet__comm_unlock(comm);
  return DUET_SUCCESS;
}
