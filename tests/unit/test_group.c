/*
 * Groups: inside duet_group_start/end every blocking call (collectives,
 * sends and receives) is posted and completed at duet_group_end, as NCCL's
 * groups. So one thread can drive the communicators of several ranks (NCCL's
 * one thread for many devices), which a blocking call would leave waiting
 * for the ranks the thread has not called yet. Ranks are threads of this
 * process; their communicators are made by one thread each (init waits for
 * every rank), then driven by the test's thread alone. Results are checked
 * against closed forms. Over duet's tcp, libfabric's shm and the load/store
 * path.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "duet.h"

#define MAXR 4
enum { N = 3000 }; /* elements per rank and call: several chunks over tcp */

typedef struct {
  duet_unique_id_t id;
  const char *provider;
  int rank, nranks;
  duet_comm_t *comm;
  duet_status_t rc;
} init_arg_t;

static void *init_rank(void *p) {
  init_arg_t *a = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  cfg.upn_provider = a->provider;
  cfg.timeout_ms = 20000;
  a->rc = duet_comm_init_rank(&a->comm, a->nranks, a->id, a->rank, &cfg);
  return NULL;
}

/* n communicators of one job, one per rank, made by a thread each. */
static void make_comms(int n, const char *provider, duet_comm_t **comm) {
  pthread_t t[MAXR];
  init_arg_t a[MAXR];
  duet_unique_id_t id;
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
  for (int r = 0; r < n; r++) {
    a[r] = (init_arg_t){.id = id, .provider = provider, .rank = r, .nranks = n};
    pthread_create(&t[r], NULL, init_rank, &a[r]);
  }
  for (int r = 0; r < n; r++)
    pthread_join(t[r], NULL);
  for (int r = 0; r < n; r++) {
    cr_assert_eq(a[r].rc, DUET_SUCCESS, "rank %d init over %s: %s", r, provider,
                 duet_last_error(NULL));
    comm[r] = a[r].comm;
  }
}

static void *destroy_rank(void *p) {
  return duet_comm_destroy(p) == DUET_SUCCESS ? NULL : p;
}

/* destroy is collective (a barrier inside): a thread per rank again */
static void destroy_comms(int n, duet_comm_t **comm) {
  pthread_t t[MAXR];
  for (int r = 0; r < n; r++)
    pthread_create(&t[r], NULL, destroy_rank, comm[r]);
  for (int r = 0; r < n; r++) {
    void *failed;
    pthread_join(t[r], &failed);
    cr_assert_null(failed, "rank %d: duet_comm_destroy failed", r);
  }
}

static int32_t input(int r, int i) {
  return (int32_t)(r * 1000 + i % 97);
}

/* One thread, n ranks, every collective and a ring of sends in one group,
 * twice (the second group reuses the first's list). */
static void one_thread_drives(int n, const char *provider) {
  duet_comm_t *comm[MAXR];
  static int32_t send[MAXR][MAXR * N], sum[MAXR][N], a2a[MAXR][MAXR * N], gath[MAXR][MAXR * N],
      rs[MAXR][N], bc[MAXR][N], ring[MAXR][N];
  make_comms(n, provider, comm);
  for (int round = 0; round < 2; round++) {
    for (int r = 0; r < n; r++)
      for (int i = 0; i < n * N; i++)
        send[r][i] = input(r, i) + round;
    memset(sum, 0, sizeof sum);
    memset(a2a, 0, sizeof a2a);
    memset(ring, 0, sizeof ring);
    cr_assert_eq(duet_group_start(), DUET_SUCCESS);
    for (int r = 0; r < n; r++) {
      duet_comm_t *c = comm[r];
      int to = (r + 1) % n, from = (r + n - 1) % n;
      cr_assert_eq(duet_allreduce(send[r], sum[r], N, DUET_INT32, DUET_SUM, c), DUET_SUCCESS, "%s",
                   duet_last_error(c));
      cr_assert_eq(duet_alltoall(send[r], a2a[r], N, DUET_INT32, c), DUET_SUCCESS, "%s",
                   duet_last_error(c));
      cr_assert_eq(duet_allgather(send[r], gath[r], N, DUET_INT32, c), DUET_SUCCESS);
      cr_assert_eq(duet_reduce_scatter(send[r], rs[r], N, DUET_INT32, DUET_MAX, c), DUET_SUCCESS);
      cr_assert_eq(duet_broadcast(send[r], bc[r], N, DUET_INT32, n - 1, c), DUET_SUCCESS);
      cr_assert_eq(duet_barrier(c), DUET_SUCCESS);
      cr_assert_eq(duet_send(send[r], N, DUET_INT32, to, c), DUET_SUCCESS);
      cr_assert_eq(duet_recv(ring[r], N, DUET_INT32, from, c), DUET_SUCCESS);
    }
    cr_assert_eq(duet_group_end(), DUET_SUCCESS, "group over %s: %s", provider,
                 duet_last_error(NULL));
    for (int r = 0; r < n; r++)
      for (int i = 0; i < N; i++) {
        int32_t want = 0, max = INT32_MIN;
        for (int q = 0; q < n; q++) {
          want += input(q, i) + round;
          int32_t v = input(q, r * N + i) + round;
          max = v > max ? v : max;
        }
        cr_assert_eq(sum[r][i], want, "%s round %d rank %d allreduce [%d]", provider, round, r, i);
        cr_assert_eq(rs[r][i], max, "%s rank %d reduce_scatter [%d]", provider, r, i);
        cr_assert_eq(bc[r][i], input(n - 1, i) + round, "%s rank %d broadcast [%d]", provider, r,
                     i);
        cr_assert_eq(ring[r][i], input((r + n - 1) % n, i) + round, "%s rank %d recv [%d]",
                     provider, r, i);
        for (int q = 0; q < n; q++) {
          cr_assert_eq(a2a[r][q * N + i], input(q, r * N + i) + round,
                       "%s rank %d alltoall block %d [%d]", provider, r, q, i);
          cr_assert_eq(gath[r][q * N + i], input(q, i) + round, "%s rank %d allgather [%d]",
                       provider, r, i);
        }
      }
  }
  destroy_comms(n, comm);
}

Test(group, one_thread_drives_two_ranks_tcp, .timeout = 120) {
  one_thread_drives(2, "tcp");
}

Test(group, one_thread_drives_three_ranks_tcp, .timeout = 120) {
  one_thread_drives(3, "tcp");
}

Test(group, one_thread_drives_two_ranks_ofi_shm, .timeout = 120) {
  one_thread_drives(2, "shm");
}

Test(group, one_thread_drives_three_ranks_mem, .timeout = 120) {
  one_thread_drives(3, "mem");
}

/* A call refused inside a group returns its error at once; the group's
 * other calls still complete at duet_group_end. */
Test(group, bad_call_in_a_group, .timeout = 120) {
  duet_comm_t *comm[2];
  int32_t s[2][8], d[2][8];
  make_comms(2, "tcp", comm);
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < 8; i++)
      s[r][i] = r + i;
  cr_assert_eq(duet_group_start(), DUET_SUCCESS);
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(duet_allreduce(s[r], d[r], 8, DUET_INT32, DUET_SUM, comm[r]), DUET_SUCCESS);
    cr_assert_eq(duet_broadcast(s[r], d[r], 8, DUET_INT32, 5, comm[r]), DUET_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(duet_last_error(comm[r]), "root") != NULL, "%s", duet_last_error(comm[r]));
  }
  cr_assert_eq(duet_group_end(), DUET_SUCCESS, "%s", duet_last_error(NULL));
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < 8; i++)
      cr_assert_eq(d[r][i], 1 + 2 * i);
  cr_assert_eq(duet_group_end(), DUET_ERR_INVALID_ARGUMENT, "an end without a start");
  destroy_comms(2, comm);
}
