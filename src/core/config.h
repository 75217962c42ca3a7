/*
 * config.h - the one table of DUET_* environment variables.
 *
 * Each row is {name, default, doc}. This table is the only place the
 * environment is read (duet__config_get). duet_info prints it.
 */
#ifndef DUET_CONFIG_H
#define DUET_CONFIG_H

#include <stddef.h>

#include "duet.h"

typedef struct duet__config_row {
  const char *name; /* "DUET_TIMEOUT_MS" */
  const char *dflt; /* default as text; "" for none */
  const char *doc;
} duet__config_row_t;

extern const duet__config_row_t duet__config_table[];
extern const size_t duet__config_table_len;

/* The environment's value of a table row, or NULL when unset or empty.
 * Asking for a name that is not in the table is a bug (asserts). */
const char *duet__config_env(const char *name);

/* Parsers: return 0 on success, -1 (with a message naming the variable and
 * the value in errbuf) on a bad value. */
int duet__config_parse_int(const char *name, const char *text, long min, long max, long *out,
                           char *errbuf, size_t errlen);
int duet__config_parse_double(const char *name, const char *text, double min, double max,
                              double *out, char *errbuf, size_t errlen);
int duet__config_parse_bool(const char *name, const char *text, int *out, char *errbuf,
                            size_t errlen);

/* Resolved settings of one communicator: explicit config field, else the
 * environment, else the default. */
enum { DUET_NET_SELF = 0, DUET_NET_UPN = 1, DUET_NET_HPN = 2, DUET_NET_COUNT = 3 };

#include "core/algo.h"

/* DUET_ALGO: a forced algorithm per collective, DUET_ALGO_AUTO where none. */
typedef struct duet__algo_force {
  int coll[DUET_COLL_COUNT];
} duet__algo_force_t;

typedef struct duet__cfg {
  int timeout_ms;
  char upn_provider[64], hpn_provider[64]; /* "" = default */
  char upn_iface[64], hpn_iface[64];       /* "" = default */
  char supernode[128];                     /* "" = host name */
  int progress_thread;
  size_t chunk_bytes;   /* DUET_CHUNK_BYTES: pipelining unit */
  int chunk_forced;     /* DUET_CHUNK_BYTES was set: the tuner keeps it */
  size_t rd_max_bytes;  /* DUET_RD_MAX_BYTES: allreduce crossover rd -> ring */
  int tcp_sndbuf;       /* DUET_TCP_SNDBUF: bulk connections' SO_SNDBUF; 0: autotuning */
  int plane_timeout_ms; /* DUET_PLANE_TIMEOUT_MS: an HPN plane's stall that counts as a loss */
  int mem_kernel_copy;  /* DUET_MEM_KERNEL_COPY: -1 auto, 0 never, 1 always */
  duet__algo_force_t algo;
  double upn_lat_us, upn_bw_gbps, hpn_lat_us, hpn_bw_gbps; /* 0: tuner default */
  const char *src[16]; /* where each came from, for duet_info: "config", "env", "default" */
} duet__cfg_t;

/* Resolve config (may be NULL) + environment + defaults into cfg. A bad value
 * is DUET_ERR_INVALID_ARGUMENT with a message naming the variable. */
duet_status_t duet__config_resolve(const duet_config_t *config, duet__cfg_t *cfg, char *errbuf,
                                   size_t errlen);

/* DUET_UPN_PROVIDER names an endpoint provider: set, and not "mem" (the
 * load/store path, as when unset, whose endpoint is shm on one host). */
int duet__cfg_upn_named(const duet__cfg_t *cfg);

/* Parse a DUET_ALGO string ("allreduce=ring,broadcast=binomial"); every
 * collective=algorithm pair must be one algo.c lists. */
int duet__config_parse_algo(const char *text, duet__algo_force_t *out, char *errbuf, size_t errlen);

#endif /* DUET_CONFIG_H */
