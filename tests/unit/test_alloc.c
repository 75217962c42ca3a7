/*
 * No allocation on the hot path: after warm-up, 1,000 calls of each
 * collective allocate nothing in duet's own code. Two ranks run as threads of
 * this process on loopback, over duet's tcp transport, over libfabric's
 * tcp;ofi_rxm and on the load/store path; malloc, calloc and realloc
 * calls from duet's objects (linked statically here) are counted through the
 * linker's --wrap. Non-blocking collectives are among the calls.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
static atomic_long allocs;
static atomic_int counting;
void *__wrap_malloc(size_t n) {
  if (atomic_load(&counting))
    atomic_fetch_add(&allocs, 1);
  return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m) {
  if (atomic_load(&counting))
    atomic_fetch_add(&allocs, 1);
  return __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n) {
  if (atomic_load(&counting))
    atomic_fetch_add(&allocs, 1);
  return __real_realloc(p, n);
}

#define CALLS 1000
#define WARMUP 20
enum { N = 1 << 18 };

typedef struct rank_arg {
  duet_unique_id_t id;
  const char *provider;
  int rank;
  pthread_barrier_t *bar;
  int failed;
} rank_arg_t;

static int run_all(duet_comm_t *c, int rank, float *a, float *b, int iters) {
  /* alltoallv: 0 -> 1 700 elements, 1 -> 0 60, to itself 5 (rank 0) or 40 */
  const size_t vc[2] = {rank ? 60 : 5, rank ? 40 : 700}, rc[2] = {rank ? 700 : 5, rank ? 40 : 60};
  const size_t disp[2] = {0, 1000};
  for (int i = 0; i < iters; i++) {
    if (duet_allreduce(a, b, 2, DUET_FLOAT32, DUET_SUM, c) ||      /* recursive doubling */
        duet_allreduce(a, b, N, DUET_FLOAT32, DUET_SUM, c) ||      /* ring, scratch */
        duet_allreduce(b, b, 1000, DUET_FLOAT32, DUET_AVG, c) ||   /* in place */
        duet_broadcast(a, b, 4096, DUET_FLOAT32, 1, c) || duet_barrier(c) ||
        duet_allgather(a, b, 100, DUET_FLOAT32, c) ||
        duet_reduce_scatter(a, b, 100, DUET_FLOAT32, DUET_MAX, c) ||
        duet_alltoall(a, b, 300, DUET_FLOAT32, c) ||
        duet_alltoallv(a, vc, disp, b, rc, disp, DUET_FLOAT32, c))
      return -1;
    duet_request_t *r1, *r2, *r3;
    if (duet_isend(a, 64, DUET_FLOAT32, 1 - rank, c, &r1) ||
        duet_irecv(b, 64, DUET_FLOAT32, 1 - rank, c, &r2) || duet_wait(r1) || duet_wait(r2))
      return -1;
    /* non-blocking collectives (on the load/store path: queued tasks) */
    if (duet_iallreduce(a, b, N / 2, DUET_FLOAT32, DUET_SUM, c, &r1) ||
        duet_ialltoallv(a, vc, disp, b + N / 2, rc, disp, DUET_FLOAT32, c, &r2) ||
        duet_ibarrier(c, &r3) || duet_wait(r3) || duet_wait(r1) || duet_wait(r2))
      return -1;
  }
  return 0;
}

static void *rank_main(void *p) {
  rank_arg_t *ra = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  float *a = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * N);
  cfg.upn_provider = ra->provider;
  cfg.timeout_ms = 60000;
  for (int i = 0; i < N; i++)
    a[i] = (float)(i % 7);
  ra->failed = 1;
  if (duet_comm_init_rank(&c, 2, ra->id, ra->rank, &cfg) != DUET_SUCCESS)
    goto out;
  if (run_all(c, ra->rank, a, b, WARMUP)) /* builds and caches every schedule */
    goto out_destroy;
  pthread_barrier_wait(ra->bar);
  if (ra->rank == 0)
    atomic_store(&counting, 1);
  pthread_barrier_wait(ra->bar);
  if (run_all(c, ra->rank, a, b, CALLS))
    goto out_destroy;
  pthread_barrier_wait(ra->bar);
  if (ra->rank == 0)
    atomic_store(&counting, 0);
  ra->failed = 0;
out_destroy:
  if (duet_comm_destroy(c) != DUET_SUCCESS)
    ra->failed = 1;
out:
  free(a);
  free(b);
  return NULL;
}

static void steady_state(const char *provider) {
  pthread_t t[2];
  pthread_barrier_t bar;
  rank_arg_t ra[2];
  duet_unique_id_t id;
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
  pthread_barrier_init(&bar, NULL, 2);
  for (int r = 0; r < 2; r++) {
    ra[r].id = id;
    ra[r].provider = provider;
    ra[r].rank = r;
    ra[r].bar = &bar;
    pthread_create(&t[r], NULL, rank_main, &ra[r]);
  }
  for (int r = 0; r < 2; r++)
    pthread_join(t[r], NULL);
  pthread_barrier_destroy(&bar);
  cr_assert_eq(ra[0].failed + ra[1].failed, 0, "a rank failed: %s", duet_last_error(NULL));
  cr_assert_eq(atomic_load(&allocs), 0, "%ld allocations in %d x 10 steady-state calls over %s",
               atomic_load(&allocs), CALLS, provider);
}

Test(alloc, steady_state_calls_allocate_nothing, .timeout = 240) {
  steady_state("tcp");
}

Test(alloc, steady_state_calls_allocate_nothing_ofi_tcp, .timeout = 240) {
  steady_state("tcp;ofi_rxm");
}

/* The load/store path for the blocking calls (shm for the rest). */
Test(alloc, steady_state_calls_allocate_nothing_mem, .timeout = 240) {
  steady_state("mem");
}

/* The counter sees duet's allocations: creating a unique id allocates (the
 * root's state), and so would a hot path that did. */
Test(alloc, counter_sees_allocations) {
  duet_unique_id_t id;
  atomic_store(&allocs, 0);
  atomic_store(&counting, 1);
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS);
  atomic_store(&counting, 0);
  cr_assert_gt(atomic_load(&allocs), 0);
}
