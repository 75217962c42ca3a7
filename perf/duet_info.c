/*
 * duet_info.c - what this duet is and what it would do here, in the spirit of
 * fi_info and ompi_info. Bug reports start with its output.
 *
 *   duet_info                 version, build, libfabric providers, this
 *                             host's topology and NICs, every DUET_* setting
 *   duet_info -n 64 -s 8      ... and the library's choice per collective and
 *                             size for 64 ranks in 8 super-nodes of 8, each
 *                             on one host like this one (-m: across hosts)
 *   duet_info -n 64 -s 8 -t   the tuner's choices only
 *   duet_info -v              the version line only
 *
 * Linked against the library's internal code (libduet_core): it reads the
 * same config table, hwloc discovery and tuner the library uses. It opens no
 * endpoint and talks to no other process.
 *
 * Exit status: 0; 1 when a DUET_* variable has a bad value (the message
 * names it); 2 for a bad command line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "config.h"

#include <errno.h>
#include <limits.h>
#include <rdma/fabric.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/algo.h"
#include "core/config.h"
#include "duet.h"
#include "shm/umem.h"
#include "topo/topo.h"
#include "transport.h"
#include "tune/tune.h"

#define INFO_API_VERSION FI_VERSION(1, 11) /* as transports/ofi: libfabric >= 1.11 */
#define INFO_SWEEP_MIN ((size_t)8)
#define INFO_SWEEP_MAX ((size_t)256 << 20)
#define INFO_SWEEP_FACTOR 8

enum { SHOW_VERSION = 1, SHOW_FABRIC = 2, SHOW_TOPO = 4, SHOW_CONFIG = 8, SHOW_TUNER = 16 };

/* The collectives the tuner section sweeps (send/recv have no algorithm). */
static const int info_colls[] = {DUET_COLL_ALLREDUCE, DUET_COLL_BROADCAST,      DUET_COLL_BARRIER,
                                 DUET_COLL_ALLGATHER, DUET_COLL_REDUCE_SCATTER, DUET_COLL_REDUCE,
                                 DUET_COLL_ALLTOALL,  DUET_COLL_ALLTOALLV};

static int printed; /* a section was printed: the next starts after a blank line */

static void section(const char *title) {
  if (printed)
    putchar('\n');
  printed = 1;
  if (title != NULL)
    printf("%s", title);
}

static void usage(FILE *out) {
  fprintf(out, "usage: duet_info [-a | -t | -v] [-n NRANKS [-s SUPERNODES] [-m]] [-h]\n"
               "  -a             all sections (the default): version, libfabric providers,\n"
               "                 this host's topology and NICs, DUET_* settings, and the\n"
               "                 tuner's choices when -n is given\n"
               "  -t             the tuner's choices only (needs -n)\n"
               "  -v             the version line only\n"
               "  -n NRANKS      ranks of the job the tuner plans for\n"
               "  -s SUPERNODES  super-nodes they form, NRANKS/SUPERNODES ranks each (default 1)\n"
               "  -m             each super-node spans several hosts (default: one host each,\n"
               "                with as many cores as this one)\n"
               "  -h             this help\n"
               "The choices are the library's for that job: on one host the load/store path\n"
               "(DUET_UPN_PROVIDER unset or mem) carries a one-super-node job's collectives;\n"
               "otherwise the tuner models the UPN with DUET_UPN_PROVIDER's parameters (shm\n"
               "when unset, tcp with -m) and the HPN with DUET_HPN_PROVIDER's (tcp);\n"
               "DUET_{UPN,HPN}_{LAT_US,BW_GBPS} override them and DUET_ALGO forces algorithms.\n"
               "A job on one host with more ranks than cores takes the oversubscribed rows\n"
               "of the calibration table.\n");
}

/* A strictly positive int, or -1. */
static int parse_count(const char *text) {
  char *end;
  long v;
  errno = 0;
  v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < 1 || v > INT_MAX)
    return -1;
  return (int)v;
}

/* "8 B", "32 KiB", "256 MiB": exact for the powers of two of the sweep. */
static void format_bytes(size_t b, char *buf, size_t len) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  size_t u = 0;
  while (u + 1 < sizeof(units) / sizeof(units[0]) && b >= 1024 && b % 1024 == 0) {
    b /= 1024;
    u++;
  }
  snprintf(buf, len, "%zu %s", b, units[u]);
}

static void show_version(void) {
  int v = 0;
  duet_get_version(&v);
  section(NULL);
  printf("duet version %d.%d.%d (build: %s)\n", v / 10000, v / 100 % 100, v % 100,
         DUET_BUILD_OPTIONS);
}

static const char *info_prov(const struct fi_info *fi) {
  return fi->fabric_attr->prov_name ? fi->fabric_attr->prov_name : "?";
}
static const char *info_fabric(const struct fi_info *fi) {
  return fi->fabric_attr->name ? fi->fabric_attr->name : "?";
}
static const char *info_domain(const struct fi_info *fi) {
  return fi->domain_attr->name ? fi->domain_attr->name : "?";
}

/* Is there an entry before fi with the same provider (and, when asked, the
 * same domain, and fabric)? fi_getinfo lists each once per variant. */
static int info_seen(const struct fi_info *list, const struct fi_info *fi, int domain, int fabric) {
  for (const struct fi_info *p = list; p != fi; p = p->next)
    if (strcmp(info_prov(p), info_prov(fi)) == 0 &&
        (!domain || strcmp(info_domain(p), info_domain(fi)) == 0) &&
        (!fabric || strcmp(info_fabric(p), info_fabric(fi)) == 0))
      return 1;
  return 0;
}

/* Whether the list has a provider of that name. */
static int info_has(const struct fi_info *list, const char *prov) {
  for (const struct fi_info *fi = list; fi != NULL; fi = fi->next)
    if (strcmp(info_prov(fi), prov) == 0)
      return 1;
  return 0;
}

/* libfabric's version and every provider that offers what duet opens
 * (FI_EP_RDM with FI_TAGGED): one line per provider name, with its domains
 * (interfaces) and the fabrics (networks) of each; and why shm is missing,
 * when /dev/shm is too small for it. */
static void show_fabric(void) {
  struct fi_info *hints, *list = NULL;
  uint32_t v = fi_version();
  int ret;

  section(NULL);
  printf("transports: tcp (duet's own sockets), mem (load/store inside a host), self; "
         "any other provider name goes to libfabric\n");
  printf("libfabric %u.%u (built against %d.%d, API %d.%d)\n", FI_MAJOR(v), FI_MINOR(v),
         FI_MAJOR_VERSION, FI_MINOR_VERSION, FI_MAJOR(INFO_API_VERSION),
         FI_MINOR(INFO_API_VERSION));
  hints = fi_allocinfo();
  if (hints == NULL) {
    printf("  providers: unknown (fi_allocinfo: out of memory)\n");
    return;
  }
  hints->ep_attr->type = FI_EP_RDM;
  hints->caps = FI_TAGGED;
  ret = fi_getinfo(INFO_API_VERSION, NULL, NULL, 0, hints, &list);
  fi_freeinfo(hints);
  if (ret != 0) {
    printf("  providers (FI_EP_RDM, FI_TAGGED): none (fi_getinfo: %s)\n", fi_strerror(-ret));
    return;
  }
  printf("  providers (FI_EP_RDM, FI_TAGGED): provider  domain [fabrics] ...\n");
  for (struct fi_info *fi = list; fi != NULL; fi = fi->next) {
    if (info_seen(list, fi, 0, 0))
      continue;
    printf("    %-14s", info_prov(fi));
    for (struct fi_info *d = fi; d != NULL; d = d->next) {
      if (strcmp(info_prov(d), info_prov(fi)) != 0 || info_seen(list, d, 1, 0))
        continue;
      printf(" %s [", info_domain(d));
      for (struct fi_info *f = d; f != NULL; f = f->next)
        if (strcmp(info_prov(f), info_prov(fi)) == 0 &&
            strcmp(info_domain(f), info_domain(d)) == 0 && !info_seen(list, f, 1, 1))
          printf("%s%s", f == d ? "" : " ", info_fabric(f));
      printf("]");
    }
    printf("\n");
  }
  if (!info_has(list, "shm")) {
    char why[192] = "";
    duet__ofi_shm_space_hint(why, sizeof why);
    printf("  shm: not offered%s\n", why[0] ? why : " by this libfabric");
  }
  fi_freeinfo(list);
}

/* Whether another process of this host can map duet_mem_alloc memory as the
 * ranks do (open /proc/<pid>/fd/<fd>, mmap, read): a child tries on this
 * process's memory. When it cannot (a process that is not dumpable, say),
 * the all-to-all copies twice even on duet_mem_alloc buffers. */
#define UMEM_CHECK_MS 10000
static void show_umem(void) {
  const uint64_t mark = 0x6475657421ull;
  duet__umem_ref_t ref;
  void *p = NULL;
  int status = 0;
  pid_t child, parent = getpid();

  if (duet_mem_alloc(&p, 4096) != DUET_SUCCESS || !duet__umem_find(p, 8, &ref)) {
    printf("  duet_mem_alloc: unavailable: %s\n", duet_last_error(NULL));
    return;
  }
  *(volatile uint64_t *)p = mark;
  fflush(stdout); /* the child must not inherit unwritten output */
  child = fork();
  if (child == 0) {
    const char *m = duet__umem_map((int)parent, &ref);
    _exit(m != NULL && *(const volatile uint64_t *)(const void *)(m + ref.offset) == mark ? 0 : 1);
  }
  /* Every wait has a deadline: the child gets UMEM_CHECK_MS. */
  for (int waited = 0; child > 0 && waitpid(child, &status, WNOHANG) == 0; waited += 10) {
    if (waited >= UMEM_CHECK_MS) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      printf("  duet_mem_alloc: cannot tell whether other processes can map it (the check did "
             "not finish within %d ms)\n",
             UMEM_CHECK_MS);
      duet_mem_free(p);
      return;
    }
    usleep(10 * 1000);
  }
  printf("  duet_mem_alloc: other processes %s map it (all-to-all on it copies %s)\n",
         child > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "can" : "cannot",
         child > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "once" : "twice");
  duet_mem_free(p);
}

static void show_topo(void) {
  duet__topo_t t;
  char err[DUET_TOPO_ERRLEN] = "";
  const duet__topo_nic_t *near;

  section("topology:\n");
  if (duet__topo_discover(&t, NULL, err) != DUET_SUCCESS) {
    printf("  unavailable: %s\n", err);
    duet__topo_free(&t);
    return;
  }
  duet__topo_print(&t, stdout);
  near = duet__topo_nic_near(&t, t.numa);
  printf("  NIC near this process: %s\n", near != NULL ? near->name : "none");
  duet__topo_free(&t);
  show_umem();
}

/* Every row of the config table: value, where it came from, what it does.
 * duet_info has no explicit duet_config_t, so a value is the environment's
 * or the default. A secret is never printed. */
static void show_config(void) {
  section(NULL);
  printf("settings (DUET_* and launcher variables; value, source, meaning):\n");
  for (size_t i = 0; i < duet__config_table_len; i++) {
    const duet__config_row_t *row = &duet__config_table[i];
    const char *env = duet__config_env(row->name);
    const char *value = env != NULL ? env : row->dflt;
    if (env != NULL && strcmp(row->name, "DUET_SECRET") == 0)
      value = "(set, not shown)";
    else if (value[0] == '\0')
      value = "(unset)";
    printf("  %-22s = %-18s %-8s %s\n", row->name, value, env != NULL ? "env" : "default",
           row->doc);
  }
}

/* The model's parameters of one network: the provider's defaults, each
 * replaced by its DUET_*_LAT_US / DUET_*_BW_GBPS value when that is set. */
static void net_params(const char *provider, double lat_env, double bw_env, double *lat,
                       double *bw) {
  duet__tune_net_defaults(provider, lat, bw);
  if (lat_env > 0)
    *lat = lat_env;
  if (bw_env > 0)
    *bw = bw_env;
}

/* The job the tuner plans for, as the library's communicator would see it
 * (duet__comm_shape): each super-node on one host with this host's cores,
 * or with -m on several hosts. On one host an unset DUET_UPN_PROVIDER (or
 * "mem") gives the load/store path, which carries the blocking collectives
 * of a one-super-node job itself (duet__mem_path) and the UPN phases of a
 * hierarchy; the model then prices the UPN as shm, its endpoint. The
 * calibration table applies to a job on one host, oversubscribed when it
 * has more ranks than this host has cores. */
static void show_tuner(const duet__cfg_t *cfg, int nranks, int nsupernodes, int multihost) {
  const int upn_set = duet__cfg_upn_named(cfg);
  const char *upn = upn_set ? cfg->upn_provider : multihost ? "tcp" : "shm";
  const char *hpn = cfg->hpn_provider[0] != '\0' ? cfg->hpn_provider : "tcp";
  const int ncores = duet__topo_ncores();
  duet__tune_shape_t shape;
  char forced[256] = "";
  size_t k = 0;
  int mem;

  memset(&shape, 0, sizeof(shape));
  shape.nranks = nranks;
  shape.nsupernodes = nsupernodes;
  shape.local_size = (nranks + nsupernodes - 1) / nsupernodes;
  shape.uniform = nranks % nsupernodes == 0;
  mem = !multihost && !upn_set && shape.local_size > 1;
  shape.mem_everywhere = mem;
  shape.one_host = !multihost && nsupernodes == 1;
  shape.oversubscribed = shape.one_host && nranks > ncores;
  snprintf(shape.upn_provider, sizeof(shape.upn_provider), "%s", upn);
  net_params(upn, cfg->upn_lat_us, cfg->upn_bw_gbps, &shape.upn_lat_us, &shape.upn_bw_gbps);
  net_params(hpn, cfg->hpn_lat_us, cfg->hpn_bw_gbps, &shape.hpn_lat_us, &shape.hpn_bw_gbps);
  for (int c = 0; c < DUET_COLL_COUNT; c++)
    if (cfg->algo.coll[c] != DUET_ALGO_AUTO && k < sizeof(forced))
      k += (size_t)snprintf(forced + k, sizeof(forced) - k, "%s%s=%s", k ? "," : "",
                            duet__coll_short_name(c), duet__algo_name(cfg->algo.coll[c]));

  section(NULL);
  printf("tuner: %d ranks in %d super-node%s of %s%d\n", nranks, nsupernodes,
         nsupernodes == 1 ? "" : "s", shape.uniform ? "" : "up to ", shape.local_size);
  printf("  UPN %s%s: %g us, %g GB/s; HPN %s: %g us, %g GB/s; DUET_ALGO %s\n", upn,
         mem ? " (the load/store path)" : "", shape.upn_lat_us, shape.upn_bw_gbps, hpn,
         shape.hpn_lat_us, shape.hpn_bw_gbps, forced[0] ? forced : "(none)");
  if (multihost)
    printf("  each super-node on several hosts (-m)\n");
  else
    printf("  each super-node on one host of %d cores%s\n", ncores,
           shape.oversubscribed ? ": more ranks than cores (the oversubscribed calibration)" : "");
  printf("  bytes: the call's payload (allgather, reduce_scatter: the whole vector;\n"
         "  alltoall(v): what each rank sends)\n");
  printf("  %-15s %10s %13s %-13s %12s %14s\n", "collective", "size", "bytes", "algorithm",
         "chunk_bytes", "est_us");
  for (size_t i = 0; i < sizeof(info_colls) / sizeof(info_colls[0]); i++) {
    int coll = info_colls[i];
    size_t bytes = coll == DUET_COLL_BARRIER ? 0 : INFO_SWEEP_MIN;
    /* as duet__mem_path: the load/store engine, unless DUET_ALGO forces */
    const int engine = mem && nsupernodes == 1 && cfg->algo.coll[coll] == DUET_ALGO_AUTO;
    for (;;) {
      duet__tune_choice_t ch = duet__tune_pick(&shape, coll, bytes, &cfg->algo);
      char size[32];
      const char *name = duet__algo_name(ch.algo);
      format_bytes(bytes, size, sizeof(size));
      if (engine)
        printf("  %-15s %10s %13zu %-13s %12s %14s\n", duet__coll_short_name(coll), size, bytes,
               "load/store", "-", "-");
      else
        printf("  %-15s %10s %13zu %-13s %12zu %14.1f\n", duet__coll_short_name(coll), size, bytes,
               name != NULL ? name : "?", ch.chunk_bytes, ch.est_us);
      /* 8 B, 64 B, ... by x8, then the top of the range itself. */
      if (coll == DUET_COLL_BARRIER || bytes >= INFO_SWEEP_MAX)
        break;
      bytes =
          bytes > INFO_SWEEP_MAX / INFO_SWEEP_FACTOR ? INFO_SWEEP_MAX : bytes * INFO_SWEEP_FACTOR;
    }
  }
}

int main(int argc, char **argv) {
  int show = SHOW_VERSION | SHOW_FABRIC | SHOW_TOPO | SHOW_CONFIG | SHOW_TUNER;
  int tuner_only = 0, nranks = 0, nsupernodes = 0, multihost = 0, opt;
  duet__cfg_t cfg;
  char err[512] = "";
  duet_status_t rc;

  opterr = 0; /* our own messages */
  while ((opt = getopt(argc, argv, ":hatvmn:s:")) != -1) {
    switch (opt) {
    case 'h':
      usage(stdout);
      return 0;
    case 'a':
      show = SHOW_VERSION | SHOW_FABRIC | SHOW_TOPO | SHOW_CONFIG | SHOW_TUNER;
      tuner_only = 0;
      break;
    case 't':
      show = SHOW_TUNER;
      tuner_only = 1;
      break;
    case 'v':
      show = SHOW_VERSION;
      tuner_only = 0;
      break;
    case 'm':
      multihost = 1;
      break;
    case 'n':
    case 's': {
      int v = parse_count(optarg);
      if (v < 0) {
        fprintf(stderr, "duet_info: -%c '%s': expected a positive integer\n", opt, optarg);
        return 2;
      }
      *(opt == 'n' ? &nranks : &nsupernodes) = v;
      break;
    }
    case ':':
      fprintf(stderr, "duet_info: option -%c needs a value (see duet_info -h)\n", optopt);
      return 2;
    default:
      fprintf(stderr, "duet_info: unknown option -%c (see duet_info -h)\n", optopt);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "duet_info: unexpected argument '%s' (see duet_info -h)\n", argv[optind]);
    return 2;
  }
  if (nsupernodes > 0 && nranks == 0) {
    fprintf(stderr, "duet_info: -s SUPERNODES needs -n NRANKS\n");
    return 2;
  }
  if (multihost && nranks == 0) {
    fprintf(stderr, "duet_info: -m needs -n NRANKS\n");
    return 2;
  }
  if (tuner_only && nranks == 0) {
    fprintf(stderr, "duet_info: -t needs -n NRANKS (and optionally -s SUPERNODES)\n");
    return 2;
  }
  if (nsupernodes == 0)
    nsupernodes = 1;
  if (nsupernodes > nranks && nranks > 0) {
    fprintf(stderr, "duet_info: -s %d super-nodes for -n %d ranks: at most one per rank\n",
            nsupernodes, nranks);
    return 2;
  }
  if (nranks == 0)
    show &= ~SHOW_TUNER;

  if (show & SHOW_VERSION)
    show_version();
  if (show == SHOW_VERSION)
    return 0;
  /* A bad DUET_* value is an error here as at duet_comm_init. */
  rc = duet__config_resolve(NULL, &cfg, err, sizeof(err));
  if (rc != DUET_SUCCESS) {
    fflush(stdout);
    fprintf(stderr, "duet_info: %s\n", err);
    return 1;
  }
  if (show & SHOW_FABRIC)
    show_fabric();
  if (show & SHOW_TOPO)
    show_topo();
  if (show & SHOW_CONFIG)
    show_config();
  if (show & SHOW_TUNER)
    show_tuner(&cfg, nranks, nsupernodes, multihost);
  return fflush(stdout) == 0 ? 0 : 1;
}
