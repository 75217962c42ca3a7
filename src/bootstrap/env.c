/*
 * env.c - rank, size, root address and secret from the launcher's environment.
 *
 * Precedence, first match wins:
 *   DUET_RANK, DUET_SIZE, DUET_ROOT=host:port                       source "DUET"
 *   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, DUET_ROOT            source "OMPI"
 *   RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (root at port + 1)   source "torchrun"
 * DUET_SECRET (32 hex digits) is the secret; without it one is derived from
 * "host:port:size", which any process that knows the address can also derive.
 *
 * Every variable is read through duet__config_env (the config table).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/bootstrap.h"
#include "core/config.h"
#include "core/log.h"

#define SET_ERR(errbuf, ...)                                                                       \
  do {                                                                                             \
    if (errbuf)                                                                                    \
      snprintf((errbuf), DUET_BOOT_ERRLEN, __VA_ARGS__);                                           \
  } while (0)

/* Fixed keys for the derived secret: not secret, only domain separation. */
static const uint8_t derive_key0[16] = "duet-boot-key-0";
static const uint8_t derive_key1[16] = "duet-boot-key-1";

/* Strict decimal integer in [min, max]. */
static duet_status_t parse_int(const char *name, const char *text, long min, long max, int *out,
                               char *errbuf) {
  char *end;
  long v;

  if (!text) {
    SET_ERR(errbuf, "%s is not set", name);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  errno = 0;
  v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
    SET_ERR(errbuf, "%s='%s' is not an integer in [%ld, %ld]", name, text, min, max);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  *out = (int)v;
  return DUET_SUCCESS;
}

static duet_status_t copy_host(duet__boot_env_t *env, const char *name, const char *value,
                               const char *host, size_t len, char *errbuf) {
  if (len == 0 || len >= sizeof(env->host)) {
    SET_ERR(errbuf, "%s='%s': host %s", name, value, len == 0 ? "is empty" : "is too long");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  memcpy(env->host, host, len);
  env->host[len] = '\0';
  return DUET_SUCCESS;
}

/* DUET_ROOT: "host:port" or "[ipv6]:port". */
static duet_status_t parse_root(duet__boot_env_t *env, char *errbuf) {
  const char *v = duet__config_env("DUET_ROOT");
  const char *host, *colon;
  size_t hlen;
  duet_status_t st;

  if (!v) {
    SET_ERR(errbuf, "DUET_ROOT is not set: with %s, set DUET_ROOT=host:port (rank 0's address)",
            env->source);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (v[0] == '[') {
    const char *close = strchr(v, ']');
    if (!close || close[1] != ':') {
      SET_ERR(errbuf, "DUET_ROOT='%s' is not host:port or [ipv6]:port", v);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    host = v + 1;
    hlen = (size_t)(close - host);
    colon = close + 1;
  } else {
    colon = strrchr(v, ':');
    if (!colon || strchr(v, ':') != colon) {
      SET_ERR(errbuf, "DUET_ROOT='%s' is not host:port or [ipv6]:port", v);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    host = v;
    hlen = (size_t)(colon - v);
  }
  st = copy_host(env, "DUET_ROOT", v, host, hlen, errbuf);
  if (st != DUET_SUCCESS)
    return st;
  if (parse_int("DUET_ROOT port", colon + 1, 1, 65535, &env->port, errbuf) != DUET_SUCCESS) {
    SET_ERR(errbuf, "DUET_ROOT='%s': port '%s' is not an integer in [1, 65535]", v, colon + 1);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  return DUET_SUCCESS;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static duet_status_t read_secret(duet__boot_env_t *env, char *errbuf) {
  const char *v = duet__config_env("DUET_SECRET");
  char text[sizeof(env->host) + 32];
  int n;

  if (v) {
    /* the value is a secret: the message gives its length, never its text */
    if (strlen(v) != 32) {
      SET_ERR(errbuf, "DUET_SECRET must be exactly 32 hex digits (it has %zu characters)",
              strlen(v));
      return DUET_ERR_INVALID_ARGUMENT;
    }
    for (int i = 0; i < 16; i++) {
      int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        SET_ERR(errbuf, "DUET_SECRET must be exactly 32 hex digits (character %d is not one)",
                hi < 0 ? 2 * i + 1 : 2 * i + 2);
        memset(env->secret, 0, sizeof(env->secret));
        return DUET_ERR_INVALID_ARGUMENT;
      }
      env->secret[i] = (uint8_t)(hi << 4 | lo);
    }
    env->secret_given = 1;
    return DUET_SUCCESS;
  }

  n = snprintf(text, sizeof(text), "%s:%d:%d", env->host, env->port, env->size);
  uint64_t a = duet__siphash24(derive_key0, text, (size_t)n);
  uint64_t b = duet__siphash24(derive_key1, text, (size_t)n);
  for (int i = 0; i < 8; i++) {
    env->secret[i] = (uint8_t)(a >> (8 * i));
    env->secret[8 + i] = (uint8_t)(b >> (8 * i));
  }
  env->secret_given = 0;
  DUET_INFO(DUET_SUB_BOOT,
            "DUET_SECRET is not set: the bootstrap secret is derived from %s, so the rendezvous "
            "is not protected against other jobs that can reach it; set DUET_SECRET to 32 "
            "random hex digits (the same on every rank) to protect it",
            text);
  return DUET_SUCCESS;
}

duet_status_t duet__boot_env_read(duet__boot_env_t *env, char *errbuf) {
  const char *rank_var, *size_var;
  duet_status_t st;

  if (!env) {
    SET_ERR(errbuf, "duet__boot_env_read: env is NULL");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  memset(env, 0, sizeof(*env));

  if (duet__config_env("DUET_RANK") || duet__config_env("DUET_SIZE")) {
    env->source = "DUET";
    rank_var = "DUET_RANK";
    size_var = "DUET_SIZE";
  } else if (duet__config_env("OMPI_COMM_WORLD_RANK") || duet__config_env("OMPI_COMM_WORLD_SIZE")) {
    env->source = "OMPI";
    rank_var = "OMPI_COMM_WORLD_RANK";
    size_var = "OMPI_COMM_WORLD_SIZE";
  } else if (duet__config_env("RANK") || duet__config_env("WORLD_SIZE")) {
    env->source = "torchrun";
    rank_var = "RANK";
    size_var = "WORLD_SIZE";
  } else {
    SET_ERR(errbuf, "no launcher environment: set DUET_RANK, DUET_SIZE and DUET_ROOT=host:port, "
                    "or run under Open MPI (with DUET_ROOT) or torchrun");
    return DUET_ERR_INVALID_ARGUMENT;
  }

  st = parse_int(size_var, duet__config_env(size_var), 1, INT_MAX, &env->size, errbuf);
  if (st != DUET_SUCCESS)
    return st;
  st = parse_int(rank_var, duet__config_env(rank_var), 0, env->size - 1L, &env->rank, errbuf);
  if (st != DUET_SUCCESS) {
    if (duet__config_env(rank_var))
      SET_ERR(errbuf, "%s='%s' is not an integer in [0, %d) (%s=%d)", rank_var,
              duet__config_env(rank_var), env->size, size_var, env->size);
    return st;
  }

  if (env->source[0] != 't') {
    st = parse_root(env, errbuf);
  } else {
    const char *addr = duet__config_env("MASTER_ADDR");
    int mport;
    if (!addr) {
      SET_ERR(errbuf, "MASTER_ADDR is not set (torchrun sets it with RANK and WORLD_SIZE)");
      return DUET_ERR_INVALID_ARGUMENT;
    }
    st = copy_host(env, "MASTER_ADDR", addr, addr, strlen(addr), errbuf);
    if (st != DUET_SUCCESS)
      return st;
    /* the root listens one above torchrun's own store */
    st = parse_int("MASTER_PORT", duet__config_env("MASTER_PORT"), 1, 65534, &mport, errbuf);
    env->port = mport + 1;
  }
  if (st != DUET_SUCCESS)
    return st;
  return read_secret(env, errbuf);
}
