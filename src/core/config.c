/*
 * config.c - the table of every environment variable duet reads, and the
 * resolution of a communicator's settings: explicit config field, else the
 * environment, else the default. A bad value is an error naming the variable.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/log.h"

const duet__config_row_t duet__config_table[] = {
    {"DUET_TIMEOUT_MS", "300000", "deadline of every wait, in milliseconds"},
    {"DUET_UPN_PROVIDER", "",
     "transport inside a super-node: tcp (duet's sockets), mem (load/store) or a libfabric "
     "provider such as shm or tcp;ofi_rxm (default: load/store and shm on one host, else tcp)"},
    {"DUET_HPN_PROVIDER", "tcp",
     "transport across super-nodes: tcp (duet's sockets) or a libfabric provider"},
    {"DUET_UPN_IFACE", "",
     "interface (libfabric domain; for tcp also an IP address) of the UPN; default lo when the job "
     "is on one host"},
    {"DUET_HPN_IFACE", "",
     "interface (libfabric domain; for tcp also an IP address) of the HPN; default lo when the job "
     "is on one host; a comma list of 2-4: one HPN plane each (striping, failover)"},
    {"DUET_SUPERNODE", "", "super-node id of this rank (default: its host name)"},
    {"DUET_PROGRESS_THREAD", "0",
     "1: a thread drives non-blocking calls while the caller computes; 0: they progress inside "
     "duet calls"},
    {"DUET_ALGO", "", "force algorithms per collective, e.g. allreduce=hier,allgather=ring"},
    {"DUET_CHUNK_BYTES", "262144", "pipelining chunk of large collectives, bytes"},
    {"DUET_RD_MAX_BYTES", "16384", "allreduce uses recursive doubling up to this size, ring above"},
    {"DUET_TCP_SNDBUF", "262144",
     "tcp: send buffer (SO_SNDBUF) of each connection for messages of 64 KiB or more, bytes; 0: "
     "the kernel's autotuning"},
    {"DUET_MEM_KERNEL_COPY", "auto",
     "load/store path: all-to-all blocks of 16 KiB or more read straight from the senders' "
     "buffers by the kernel (process_vm_readv: one copy instead of two through the shared "
     "segment): auto times both ways and keeps the faster, 1 always (where the kernel allows), "
     "0 never"},
    {"DUET_PLANE_TIMEOUT_MS", "3000",
     "HPN planes: a transfer stalled half this long makes a rank probe its peer on every plane; "
     "a plane with no answer half this long after another answered is lost; 0: no probing"},
    {"DUET_UPN_LAT_US", "", "tuner: UPN latency per message, microseconds (default: by provider)"},
    {"DUET_UPN_BW_GBPS", "", "tuner: UPN bandwidth per rank, GB/s (default: by provider)"},
    {"DUET_HPN_LAT_US", "", "tuner: HPN latency per message, microseconds (default: by provider)"},
    {"DUET_HPN_BW_GBPS", "", "tuner: HPN bandwidth per rank, GB/s (default: by provider)"},
    {"DUET_DEBUG", "WARN", "log level: NONE, WARN, INFO, TRACE"},
    {"DUET_DEBUG_SUBSYS", "ALL",
     "log subsystems: INIT,BOOT,TOPO,COLL,TUNE,NET or ALL; ^X excludes"},
    {"DUET_BOOT_IFACE", "lo", "interface whose address duet_get_unique_id's root listens on"},
    {"DUET_RANK", "", "rank, for duet_comm_init_env"},
    {"DUET_SIZE", "", "rank count, for duet_comm_init_env"},
    {"DUET_ROOT", "",
     "host:port of the rendezvous root (rank 0 listens there), for duet_comm_init_env"},
    {"DUET_SECRET", "", "32 hex digits authenticating duet_comm_init_env's rendezvous"},
    {"OMPI_COMM_WORLD_RANK", "", "rank under Open MPI's mpirun (with DUET_ROOT)"},
    {"OMPI_COMM_WORLD_SIZE", "", "size under Open MPI's mpirun (with DUET_ROOT)"},
    {"RANK", "", "rank under torchrun"},
    {"WORLD_SIZE", "", "size under torchrun"},
    {"MASTER_ADDR", "", "root host under torchrun"},
    {"MASTER_PORT", "", "torchrun's store port; duet's root listens on MASTER_PORT + 1"},
};
const size_t duet__config_table_len = sizeof(duet__config_table) / sizeof(duet__config_table[0]);

static const duet__config_row_t *duet__config_row(const char *name) {
  for (size_t i = 0; i < duet__config_table_len; i++)
    if (strcmp(duet__config_table[i].name, name) == 0)
      return &duet__config_table[i];
  return NULL;
}

const char *duet__config_env(const char *name) {
  const char *v;
  assert(duet__config_row(name) != NULL && "environment variable missing from the config table");
  v = getenv(name);
  return (v != NULL && v[0] != '\0') ? v : NULL;
}

int duet__config_parse_int(const char *name, const char *text, long min, long max, long *out,
                           char *errbuf, size_t errlen) {
  char *end;
  long v;
  errno = 0;
  v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
    snprintf(errbuf, errlen, "%s='%s' is not an integer in [%ld, %ld]", name, text, min, max);
    return -1;
  }
  *out = v;
  return 0;
}

int duet__config_parse_double(const char *name, const char *text, double min, double max,
                              double *out, char *errbuf, size_t errlen) {
  char *end;
  double v;
  errno = 0;
  v = strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !(v >= min && v <= max)) {
    snprintf(errbuf, errlen, "%s='%s' is not a number in [%g, %g]", name, text, min, max);
    return -1;
  }
  *out = v;
  return 0;
}

int duet__config_parse_bool(const char *name, const char *text, int *out, char *errbuf,
                            size_t errlen) {
  if (strcmp(text, "1") == 0 || strcasecmp(text, "yes") == 0 || strcasecmp(text, "true") == 0) {
    *out = 1;
    return 0;
  }
  if (strcmp(text, "0") == 0 || strcasecmp(text, "no") == 0 || strcasecmp(text, "false") == 0) {
    *out = 0;
    return 0;
  }
  snprintf(errbuf, errlen, "%s='%s' is not a boolean (0/1)", name, text);
  return -1;
}

/* DUET_ALGO: comma list of collective=algorithm. */
int duet__config_parse_algo(const char *text, duet__algo_force_t *out, char *errbuf,
                            size_t errlen) {
  duet__algo_force_t f;
  const char *p = text;

  memset(&f, 0, sizeof(f));
  while (*p) {
    size_t n = strcspn(p, ","), cl, al;
    const char *eq = memchr(p, '=', n);
    int coll, algo;
    if (eq == NULL) {
      snprintf(errbuf, errlen, "DUET_ALGO='%s': '%.*s' is not collective=algorithm", text,
               (int)n, p);
      return -1;
    }
    cl = (size_t)(eq - p);
    al = n - cl - 1;
    for (coll = 0; coll < DUET_COLL_COUNT; coll++)
      if (strlen(duet__coll_short_name(coll)) == cl &&
          strncmp(p, duet__coll_short_name(coll), cl) == 0)
        break;
    for (algo = 0; algo < DUET_ALGO_COUNT; algo++)
      if (strlen(duet__algo_name(algo)) == al && strncmp(eq + 1, duet__algo_name(algo), al) == 0)
        break;
    if (coll == DUET_COLL_COUNT || algo == DUET_ALGO_COUNT || !duet__algo_valid(coll, algo)) {
      char known[256] = "";
      size_t k = 0;
      if (coll < DUET_COLL_COUNT)
        for (int a = 0; a < DUET_ALGO_COUNT && k < sizeof(known); a++)
          if (duet__algo_valid(coll, a))
            k += (size_t)snprintf(known + k, sizeof(known) - k, "%s%s", k ? "|" : "",
                                  duet__algo_name(a));
      snprintf(errbuf, errlen, "DUET_ALGO='%s': unknown '%.*s'%s%s%s", text, (int)n, p,
               coll < DUET_COLL_COUNT ? " (known: " : " (not a collective)",
               coll < DUET_COLL_COUNT ? known : "", coll < DUET_COLL_COUNT ? ")" : "");
      return -1;
    }
    f.coll[coll] = algo;
    p += n;
    if (*p == ',')
      p++;
  }
  *out = f;
  return 0;
}

int duet__log_parse_level(const char *text, int *level);
int duet__log_parse_subsys(const char *text, unsigned *mask);

/* Copy an explicit string field, else the environment, else the default. */
static int duet__config_str(const char *field, const char *name, char *dst, size_t dstlen,
                            const char **src, char *errbuf, size_t errlen) {
  const char *v = field;
  *src = "config";
  if (v == NULL) {
    v = duet__config_env(name);
    *src = "env";
  }
  if (v == NULL) {
    v = duet__config_row(name)->dflt;
    *src = "default";
  }
  if (strlen(v) >= dstlen) {
    snprintf(errbuf, errlen, "%s='%s' is longer than %zu characters", name, v, dstlen - 1);
    return -1;
  }
  strcpy(dst, v);
  return 0;
}

static int duet__config_num(long field, const char *name, long min, long max, long *out,
                            const char **src, char *errbuf, size_t errlen) {
  const char *v;
  if (field >= 0) {
    if (field < min || field > max) {
      snprintf(errbuf, errlen, "config field for %s = %ld is not in [%ld, %ld]", name, field, min,
               max);
      return -1;
    }
    *src = "config";
    *out = field;
    return 0;
  }
  v = duet__config_env(name);
  *src = "env";
  if (v == NULL) {
    v = duet__config_row(name)->dflt;
    *src = "default";
  }
  return duet__config_parse_int(name, v, min, max, out, errbuf, errlen);
}

duet_status_t duet__config_resolve(const duet_config_t *config, duet__cfg_t *cfg, char *errbuf,
                                   size_t errlen) {
  duet_config_t dflt = DUET_CONFIG_INIT;
  duet_config_t c;
  const char *v;
  long n;
  int level;
  unsigned mask;

  memset(cfg, 0, sizeof(*cfg));
  /* A caller built against an older, smaller duet_config_t: take what it has. */
  c = dflt;
  if (config != NULL) {
    if (config->size < offsetof(duet_config_t, timeout_ms) || config->version == 0 ||
        config->version > DUET_CONFIG_VERSION) {
      snprintf(errbuf, errlen,
               "config: size %zu / version %u not recognised (initialise with DUET_CONFIG_INIT)",
               config->size, config->version);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    memcpy(&c, config, config->size < sizeof(c) ? config->size : sizeof(c));
  }
  if (duet__config_num(c.timeout_ms, "DUET_TIMEOUT_MS", 1, INT_MAX, &n, &cfg->src[0], errbuf,
                       errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->timeout_ms = (int)n;
  if (duet__config_str(c.upn_provider, "DUET_UPN_PROVIDER", cfg->upn_provider,
                       sizeof(cfg->upn_provider), &cfg->src[1], errbuf, errlen) ||
      duet__config_str(c.hpn_provider, "DUET_HPN_PROVIDER", cfg->hpn_provider,
                       sizeof(cfg->hpn_provider), &cfg->src[2], errbuf, errlen) ||
      duet__config_str(c.upn_iface, "DUET_UPN_IFACE", cfg->upn_iface, sizeof(cfg->upn_iface),
                       &cfg->src[3], errbuf, errlen) ||
      duet__config_str(c.hpn_iface, "DUET_HPN_IFACE", cfg->hpn_iface, sizeof(cfg->hpn_iface),
                       &cfg->src[4], errbuf, errlen) ||
      duet__config_str(c.supernode, "DUET_SUPERNODE", cfg->supernode, sizeof(cfg->supernode),
                       &cfg->src[5], errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  if (duet__config_num(c.progress_thread, "DUET_PROGRESS_THREAD", 0, 1, &n, &cfg->src[6], errbuf,
                       errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->progress_thread = (int)n;
  if (duet__config_num(-1, "DUET_CHUNK_BYTES", 4096, 1L << 30, &n, &cfg->src[7], errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->chunk_bytes = (size_t)n;
  cfg->chunk_forced = strcmp(cfg->src[7], "env") == 0;
  if (duet__config_num(-1, "DUET_RD_MAX_BYTES", 0, 1L << 30, &n, &cfg->src[8], errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->rd_max_bytes = (size_t)n;
  if (duet__config_num(-1, "DUET_TCP_SNDBUF", 0, 1L << 30, &n, &cfg->src[10], errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->tcp_sndbuf = (int)n;
  if (duet__config_num(-1, "DUET_PLANE_TIMEOUT_MS", 0, 3600000, &n, &cfg->src[11], errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  cfg->plane_timeout_ms = (int)n;
  v = duet__config_env("DUET_MEM_KERNEL_COPY");
  cfg->src[12] = v ? "env" : "default";
  cfg->mem_kernel_copy = -1;
  if (v != NULL && strcasecmp(v, "auto") != 0) {
    if (duet__config_parse_bool("DUET_MEM_KERNEL_COPY", v, &cfg->mem_kernel_copy, errbuf, errlen) !=
        0) {
      snprintf(errbuf, errlen, "DUET_MEM_KERNEL_COPY='%s' is not auto, 0 or 1", v);
      return DUET_ERR_INVALID_ARGUMENT;
    }
  }
  {
    static const char *names[4] = {"DUET_UPN_LAT_US", "DUET_UPN_BW_GBPS", "DUET_HPN_LAT_US",
                                   "DUET_HPN_BW_GBPS"};
    double *dst[4] = {&cfg->upn_lat_us, &cfg->upn_bw_gbps, &cfg->hpn_lat_us, &cfg->hpn_bw_gbps};
    for (int i = 0; i < 4; i++) {
      *dst[i] = 0; /* 0: the tuner's default for the provider */
      v = duet__config_env(names[i]);
      if (v != NULL && duet__config_parse_double(names[i], v, 1e-6, 1e9, dst[i], errbuf, errlen))
        return DUET_ERR_INVALID_ARGUMENT;
    }
  }
  v = duet__config_env("DUET_ALGO");
  cfg->src[9] = v ? "env" : "default";
  if (v != NULL && duet__config_parse_algo(v, &cfg->algo, errbuf, errlen))
    return DUET_ERR_INVALID_ARGUMENT;
  v = duet__config_env("DUET_DEBUG");
  if (v != NULL && duet__log_parse_level(v, &level) != 0) {
    snprintf(errbuf, errlen, "DUET_DEBUG='%s' is not one of NONE, WARN, INFO, TRACE", v);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  v = duet__config_env("DUET_DEBUG_SUBSYS");
  if (v != NULL && duet__log_parse_subsys(v, &mask) != 0) {
    snprintf(errbuf, errlen,
             "DUET_DEBUG_SUBSYS='%s' is not a list of INIT,BOOT,TOPO,COLL,TUNE,NET,ALL", v);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  return DUET_SUCCESS;
}

int duet__cfg_upn_named(const duet__cfg_t *cfg) {
  return cfg->upn_provider[0] != '\0' && strcmp(cfg->upn_provider, "mem") != 0;
}
