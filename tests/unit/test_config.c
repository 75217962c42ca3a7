/* The config table: precedence (config field > environment > default) and a
 * clear error for every bad value. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

static void clear_env(void) {
  for (size_t i = 0; i < duet__config_table_len; i++)
    unsetenv(duet__config_table[i].name);
}

Test(config, defaults) {
  duet__cfg_t cfg;
  char err[256] = "";
  clear_env();
  cr_assert_eq(duet__config_resolve(NULL, &cfg, err, sizeof(err)), DUET_SUCCESS, "%s", err);
  cr_assert_eq(cfg.timeout_ms, 300000);
  cr_assert_str_eq(cfg.upn_provider, "");
  cr_assert_str_eq(cfg.hpn_provider, "tcp");
  cr_assert_eq(cfg.chunk_bytes, 262144);
  cr_assert_eq(cfg.tcp_sndbuf, 262144);
  cr_assert_eq(cfg.plane_timeout_ms, 3000);
  cr_assert_eq(cfg.mem_kernel_copy, -1, "DUET_MEM_KERNEL_COPY: auto");
  cr_assert_eq(cfg.algo.coll[DUET_COLL_ALLREDUCE], DUET_ALGO_AUTO);
  cr_assert_str_eq(cfg.src[0], "default");
}

Test(config, env_then_field) {
  duet__cfg_t cfg;
  char err[256] = "";
  duet_config_t c = DUET_CONFIG_INIT;
  clear_env();
  setenv("DUET_TIMEOUT_MS", "1234", 1);
  setenv("DUET_UPN_PROVIDER", "tcp", 1);
  setenv("DUET_SUPERNODE", "sn7", 1);
  setenv("DUET_ALGO", "allreduce=rd,barrier=dissem", 1);
  setenv("DUET_TCP_SNDBUF", "0", 1);
  setenv("DUET_PLANE_TIMEOUT_MS", "750", 1);
  setenv("DUET_MEM_KERNEL_COPY", "0", 1);
  cr_assert_eq(duet__config_resolve(NULL, &cfg, err, sizeof(err)), DUET_SUCCESS, "%s", err);
  cr_assert_eq(cfg.mem_kernel_copy, 0);
  setenv("DUET_MEM_KERNEL_COPY", "1", 1);
  cr_assert_eq(duet__config_resolve(NULL, &cfg, err, sizeof(err)), DUET_SUCCESS, "%s", err);
  cr_assert_eq(cfg.mem_kernel_copy, 1);
  setenv("DUET_MEM_KERNEL_COPY", "auto", 1);
  cr_assert_eq(duet__config_resolve(NULL, &cfg, err, sizeof(err)), DUET_SUCCESS, "%s", err);
  cr_assert_eq(cfg.mem_kernel_copy, -1);
  cr_assert_eq(cfg.tcp_sndbuf, 0);
  cr_assert_eq(cfg.plane_timeout_ms, 750);
  cr_assert_eq(cfg.timeout_ms, 1234);
  cr_assert_str_eq(cfg.src[0], "env");
  cr_assert_str_eq(cfg.upn_provider, "tcp");
  cr_assert_str_eq(cfg.supernode, "sn7");
  cr_assert_eq(cfg.algo.coll[DUET_COLL_ALLREDUCE], DUET_ALGO_RD);
  cr_assert_eq(cfg.algo.coll[DUET_COLL_BARRIER], DUET_ALGO_DISSEM);
  /* An explicit field beats the environment. */
  c.timeout_ms = 99;
  c.upn_provider = "shm";
  cr_assert_eq(duet__config_resolve(&c, &cfg, err, sizeof(err)), DUET_SUCCESS, "%s", err);
  cr_assert_eq(cfg.timeout_ms, 99);
  cr_assert_str_eq(cfg.src[0], "config");
  cr_assert_str_eq(cfg.upn_provider, "shm");
  cr_assert_str_eq(cfg.supernode, "sn7");
  clear_env();
}

static void expect_bad(const char *name, const char *value) {
  duet__cfg_t cfg;
  char err[256] = "";
  clear_env();
  setenv(name, value, 1);
  cr_assert_lt(duet__config_resolve(NULL, &cfg, err, sizeof(err)), 0, "%s=%s accepted", name,
               value);
  cr_assert(strstr(err, name) != NULL, "message does not name %s: %s", name, err);
  clear_env();
}

Test(config, bad_values_are_errors) {
  expect_bad("DUET_TIMEOUT_MS", "abc");
  expect_bad("DUET_TIMEOUT_MS", "0");
  expect_bad("DUET_TIMEOUT_MS", "12x");
  expect_bad("DUET_TIMEOUT_MS", "99999999999999");
  expect_bad("DUET_CHUNK_BYTES", "-5");
  expect_bad("DUET_TCP_SNDBUF", "-1");
  expect_bad("DUET_TCP_SNDBUF", "4k");
  expect_bad("DUET_PLANE_TIMEOUT_MS", "-1");
  expect_bad("DUET_PLANE_TIMEOUT_MS", "3s");
  expect_bad("DUET_PROGRESS_THREAD", "2");
  expect_bad("DUET_MEM_KERNEL_COPY", "2");
  expect_bad("DUET_MEM_KERNEL_COPY", "sometimes");
  expect_bad("DUET_ALGO", "allreduce");
  expect_bad("DUET_ALGO", "allreduce=fast");
  expect_bad("DUET_ALGO", "sort=ring");
  expect_bad("DUET_ALGO", "barrier=ring");
  expect_bad("DUET_DEBUG", "LOUD");
  expect_bad("DUET_DEBUG_SUBSYS", "INIT,DISK");
}

Test(config, bad_config_struct) {
  duet__cfg_t cfg;
  char err[256] = "";
  duet_config_t c = DUET_CONFIG_INIT;
  clear_env();
  c.version = 77;
  cr_assert_eq(duet__config_resolve(&c, &cfg, err, sizeof(err)), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "DUET_CONFIG_INIT") != NULL, "%s", err);
  c = (duet_config_t)DUET_CONFIG_INIT;
  c.timeout_ms = 0; /* explicit but out of range */
  cr_assert_eq(duet__config_resolve(&c, &cfg, err, sizeof(err)), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "DUET_TIMEOUT_MS") != NULL, "%s", err);
}

Test(config, every_row_documented) {
  for (size_t i = 0; i < duet__config_table_len; i++) {
    cr_assert_neq(duet__config_table[i].doc[0], '\0', "%s has no doc",
                  duet__config_table[i].name);
    for (size_t j = i + 1; j < duet__config_table_len; j++)
      cr_assert_str_neq(duet__config_table[i].name, duet__config_table[j].name);
  }
}
