/*
 * Bad input at the API boundary on a one-rank communicator: every call gets a
 * negative status and a duet_last_error message naming the argument, and
 * nothing is written. Also the one-rank collectives themselves, and init
 * refusing ranks whose algorithm-deciding settings differ. And duet_mem_alloc,
 * duet_mem_free and the lookup of their allocations.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "duet.h"
#include "shm/umem.h"

static duet_comm_t *comm;

static void setup(void) {
  duet_unique_id_t id;
  setenv("DUET_TIMEOUT_MS", "10000", 1);
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
  cr_assert_eq(duet_comm_init_rank(&comm, 1, id, 0, NULL), DUET_SUCCESS, "%s",
               duet_last_error(NULL));
}

static void teardown(void) {
  if (comm != NULL)
    cr_assert_eq(duet_comm_destroy(comm), DUET_SUCCESS, "%s", duet_last_error(NULL));
}

#define EXPECT_BAD(call, c, word)                                                                  \
  do {                                                                                             \
    duet_status_t rc_ = (call);                                                                    \
    cr_assert_eq(rc_, DUET_ERR_INVALID_ARGUMENT, "%s returned %d", #call, rc_);                    \
    cr_assert(strstr(duet_last_error(c), word) != NULL, "%s: message '%s' lacks '%s'", #call,      \
              duet_last_error(c), word);                                                           \
  } while (0)

TestSuite(args, .init = setup, .fini = teardown, .timeout = 60);

Test(args, allreduce) {
  float src[8] = {1, 2, 3, 4, 5, 6, 7, 8}, dst[8];
  memset(dst, 0x7b, sizeof(dst));
  EXPECT_BAD(duet_allreduce(NULL, dst, 8, DUET_FLOAT32, DUET_SUM, comm), comm, "sendbuf");
  EXPECT_BAD(duet_allreduce(src, NULL, 8, DUET_FLOAT32, DUET_SUM, comm), comm, "recvbuf");
  EXPECT_BAD(duet_allreduce(src, dst, SIZE_MAX / 2, DUET_FLOAT32, DUET_SUM, comm), comm, "count");
  EXPECT_BAD(duet_allreduce(src, dst, 8, (duet_datatype_t)99, DUET_SUM, comm), comm, "datatype");
  EXPECT_BAD(duet_allreduce(src, dst, 8, (duet_datatype_t)-1, DUET_SUM, comm), comm, "datatype");
  EXPECT_BAD(duet_allreduce(src, dst, 8, DUET_FLOAT32, (duet_op_t)99, comm), comm, "op");
  EXPECT_BAD(duet_allreduce(src, src + 1, 4, DUET_FLOAT32, DUET_SUM, comm), comm, "overlap");
  EXPECT_BAD(duet_allreduce(src, dst, 8, DUET_FLOAT32, DUET_SUM, NULL), NULL, "comm");
  for (int i = 0; i < 8; i++) {
    uint32_t bits;
    memcpy(&bits, &dst[i], 4);
    cr_assert_eq(bits, 0x7b7b7b7bu, "recvbuf was written by a rejected call");
    cr_assert_eq(src[i], (float)(i + 1), "sendbuf changed");
  }
  /* NULL with count 0 is fine. */
  cr_assert_eq(duet_allreduce(NULL, NULL, 0, DUET_FLOAT32, DUET_SUM, comm), DUET_SUCCESS);
  /* And the communicator still works: one rank's allreduce is a copy. */
  cr_assert_eq(duet_allreduce(src, dst, 8, DUET_FLOAT32, DUET_AVG, comm), DUET_SUCCESS, "%s",
               duet_last_error(comm));
  for (int i = 0; i < 8; i++)
    cr_assert_eq(dst[i], src[i]);
  cr_assert_eq(duet_allreduce(dst, dst, 8, DUET_FLOAT32, DUET_SUM, comm), DUET_SUCCESS);
  for (int i = 0; i < 8; i++)
    cr_assert_eq(dst[i], src[i]);
}

Test(args, broadcast_and_p2p) {
  int32_t a[4] = {1, 2, 3, 4}, b[4] = {0};
  duet_request_t *req = NULL;
  EXPECT_BAD(duet_broadcast(a, b, 4, DUET_INT32, -1, comm), comm, "root");
  EXPECT_BAD(duet_broadcast(a, b, 4, DUET_INT32, 1, comm), comm, "root");
  EXPECT_BAD(duet_broadcast(NULL, b, 4, DUET_INT32, 0, comm), comm, "sendbuf");
  EXPECT_BAD(duet_broadcast(a, NULL, 4, DUET_INT32, 0, comm), comm, "recvbuf");
  EXPECT_BAD(duet_send(a, 4, DUET_INT32, 1, comm), comm, "peer");
  EXPECT_BAD(duet_recv(b, 4, DUET_INT32, -3, comm), comm, "peer");
  EXPECT_BAD(duet_send(NULL, 4, DUET_INT32, 0, comm), comm, "buf");
  EXPECT_BAD(duet_isend(a, 4, DUET_INT32, 0, comm, NULL), comm, "req");
  EXPECT_BAD(duet_barrier(NULL), NULL, "comm");
  EXPECT_BAD(duet_test(NULL, NULL), NULL, "req");
  EXPECT_BAD(duet_wait(NULL), NULL, "req");
  for (int i = 0; i < 4; i++)
    cr_assert_eq(b[i], 0);
  cr_assert_eq(duet_broadcast(a, b, 4, DUET_INT32, 0, comm), DUET_SUCCESS);
  cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
  /* Send to self: post the receive first, then a blocking send. */
  memset(b, 0, sizeof(b));
  cr_assert_eq(duet_irecv(b, 4, DUET_INT32, 0, comm, &req), DUET_SUCCESS);
  cr_assert_eq(duet_send(a, 4, DUET_INT32, 0, comm), DUET_SUCCESS, "%s", duet_last_error(comm));
  cr_assert_eq(duet_wait(req), DUET_SUCCESS);
  cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
  /* In a group, order does not matter. */
  memset(b, 0, sizeof(b));
  cr_assert_eq(duet_group_start(), DUET_SUCCESS);
  cr_assert_eq(duet_send(a, 4, DUET_INT32, 0, comm), DUET_SUCCESS);
  cr_assert_eq(duet_recv(b, 4, DUET_INT32, 0, comm), DUET_SUCCESS);
  cr_assert_eq(duet_group_end(), DUET_SUCCESS, "%s", duet_last_error(comm));
  cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
  cr_assert_eq(duet_barrier(comm), DUET_SUCCESS);
}

Test(args, queries_and_destroyed_comm) {
  int r = -1, n = -1, sn = -1, nsn = -1, lr = -1, ls = -1, v = 0;
  duet_stats_t st;
  cr_assert_eq(duet_comm_rank(comm, &r), DUET_SUCCESS);
  cr_assert_eq(duet_comm_size(comm, &n), DUET_SUCCESS);
  cr_assert_eq(r, 0);
  cr_assert_eq(n, 1);
  cr_assert_eq(duet_comm_supernode(comm, &sn, &nsn, &lr, &ls), DUET_SUCCESS);
  cr_assert(sn == 0 && nsn == 1 && lr == 0 && ls == 1);
  cr_assert_eq(duet_comm_get_stats(comm, &st), DUET_SUCCESS);
  cr_assert_eq(st.hpn_bytes_sent + st.upn_bytes_sent, 0, "one rank sends nothing on a network");
  EXPECT_BAD(duet_comm_rank(comm, NULL), comm, "rank");
  cr_assert_eq(duet_get_version(&v), DUET_SUCCESS);
  cr_assert_eq(v, DUET_VERSION);
  cr_assert_str_eq(duet_strerror(DUET_ERR_TIMEOUT), "timed out");
  cr_assert_str_eq(duet_strerror(DUET_ERR_TRANSPORT), "transport error (tcp or libfabric)");
  cr_assert_str_neq(duet_strerror((duet_status_t)-99), "");
  /* A destroyed communicator is recognised, not dereferenced. */
  cr_assert_eq(duet_comm_destroy(comm), DUET_SUCCESS);
  duet_comm_t *dead = comm;
  comm = NULL;
  EXPECT_BAD(duet_barrier(dead), NULL, "destroyed");
  EXPECT_BAD(duet_comm_destroy(dead), NULL, "destroyed");
}

Test(args, init_errors) {
  duet_comm_t *c = (duet_comm_t *)0x1;
  duet_unique_id_t id;
  memset(&id, 0, sizeof(id));
  EXPECT_BAD(duet_comm_init_rank(NULL, 1, id, 0, NULL), NULL, "comm");
  EXPECT_BAD(duet_comm_init_rank(&c, 0, id, 0, NULL), NULL, "nranks");
  EXPECT_BAD(duet_comm_init_rank(&c, 2, id, 2, NULL), NULL, "rank");
  EXPECT_BAD(duet_get_unique_id(NULL), NULL, "id");
  setenv("DUET_TIMEOUT_MS", "soon", 1);
  EXPECT_BAD(duet_comm_init_rank(&c, 1, id, 0, NULL), NULL, "DUET_TIMEOUT_MS");
  setenv("DUET_TIMEOUT_MS", "10000", 1);
  cr_assert_null(c, "comm must be NULL after a failed init");
}

/* ---- settings that decide the algorithm must agree across ranks ---- */

typedef struct {
  duet_unique_id_t id;
  int rank;
  const char *upn; /* this rank's DUET_UPN_PROVIDER, by config */
  duet_status_t rc;
  char err[512];
} differ_arg_t;

static void *differ_rank(void *p) {
  differ_arg_t *d = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  cfg.upn_provider = d->upn;
  cfg.timeout_ms = 20000;
  d->rc = duet_comm_init_rank(&c, 2, d->id, d->rank, &cfg);
  snprintf(d->err, sizeof(d->err), "%s", duet_last_error(NULL));
  if (c != NULL)
    duet_comm_destroy(c);
  return NULL;
}

/* Two ranks given different UPN providers (which also picks the tuner's
 * calibration rows) would run different schedules and wait for each other
 * until the deadline: init refuses on both ranks at once, naming the
 * setting. The same providers on both still initialise. */
Test(args, init_refuses_settings_that_differ_between_ranks, .timeout = 60) {
  static const char *const pairs[2][2] = {{"tcp", "mem"}, {"tcp", "tcp"}};
  for (int k = 0; k < 2; k++) {
    differ_arg_t d[2];
    pthread_t t[2];
    duet_unique_id_t id;
    cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
    for (int r = 0; r < 2; r++) {
      memset(&d[r], 0, sizeof(d[r]));
      d[r].id = id;
      d[r].rank = r;
      d[r].upn = pairs[k][r];
      cr_assert_eq(pthread_create(&t[r], NULL, differ_rank, &d[r]), 0);
    }
    for (int r = 0; r < 2; r++)
      pthread_join(t[r], NULL);
    for (int r = 0; r < 2; r++) {
      if (k == 0) {
        cr_assert_eq(d[r].rc, DUET_ERR_MISMATCH, "rank %d: %d (%s)", r, d[r].rc, d[r].err);
        cr_assert(strstr(d[r].err, "DUET_UPN_PROVIDER differs between rank 0 and rank 1"),
                  "rank %d: %s", r, d[r].err);
      } else {
        cr_assert_eq(d[r].rc, DUET_SUCCESS, "rank %d: %s", r, d[r].err);
      }
    }
  }
}

/* duet_mem_alloc: bad arguments named, and memory that is page-aligned,
 * zero-filled, writable; duet_mem_free refuses what it did not allocate
 * (a second free included) and takes NULL. */
Test(args, mem_alloc_and_free) {
  void *p = (void *)0x1, *q = NULL;
  EXPECT_BAD(duet_mem_alloc(NULL, 64), NULL, "ptr");
  EXPECT_BAD(duet_mem_alloc(&p, 0), NULL, "size");
  cr_assert_null(p, "a failed duet_mem_alloc sets *ptr to NULL");
  EXPECT_BAD(duet_mem_alloc(&p, SIZE_MAX), NULL, "size");
  cr_assert_eq(duet_mem_alloc(&p, 10000), DUET_SUCCESS, "%s", duet_last_error(NULL));
  cr_assert_eq(duet_mem_alloc(&q, 1), DUET_SUCCESS, "%s", duet_last_error(NULL));
  cr_assert_neq(p, q);
  cr_assert_eq((uintptr_t)p % 4096, 0, "page-aligned");
  for (size_t i = 0; i < 10000; i++)
    cr_assert_eq(((unsigned char *)p)[i], 0, "byte %zu not zero", i);
  memset(p, 0xAB, 10000);
  /* the lookup peers rely on: inside one allocation (rounded to pages) only */
  duet__umem_ref_t ref;
  cr_assert(duet__umem_find(p, 10000, &ref));
  cr_assert(ref.serial != 0 && ref.fd >= 0 && ref.offset == DUET_UMEM_HEADER);
  cr_assert_geq(ref.size, DUET_UMEM_HEADER + 10000);
  cr_assert(duet__umem_find((char *)p + 100, 200, &ref));
  cr_assert_eq(ref.offset, DUET_UMEM_HEADER + 100);
  cr_assert(duet__umem_find(p, ref.size - DUET_UMEM_HEADER, &ref), "the whole rounded size");
  cr_assert_not(duet__umem_find(p, ref.size - DUET_UMEM_HEADER + 1, &ref), "past the end");
  cr_assert_not(duet__umem_find((char *)p - 1, 1, &ref), "the header page is not the user's");
  cr_assert_not(duet__umem_find(&ref, 8, &ref), "not from duet_mem_alloc");
  EXPECT_BAD(duet_mem_free((char *)p + 8), NULL, "duet_mem_alloc");
  int local;
  EXPECT_BAD(duet_mem_free(&local), NULL, "duet_mem_alloc");
  cr_assert_eq(((unsigned char *)p)[9999], 0xAB, "a refused free leaves the memory alone");
  cr_assert_eq(duet_mem_free(p), DUET_SUCCESS, "%s", duet_last_error(NULL));
  cr_assert_not(duet__umem_find(p, 1, &ref), "a freed allocation is not found");
  cr_assert(duet__umem_find(q, 1, &ref), "the other one still is");
  EXPECT_BAD(duet_mem_free(p), NULL, "duet_mem_alloc");
  cr_assert_eq(duet_mem_free(q), DUET_SUCCESS, "%s", duet_last_error(NULL));
  cr_assert_eq(duet_mem_free(NULL), DUET_SUCCESS);
}
