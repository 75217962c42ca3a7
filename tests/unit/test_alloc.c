/*
 * No allocation on the hot path: after warm-up, 1,000 calls of each
 * collective allocate nothing in duet's own code. Two ranks run as threads of
 * this process on loopback, over duet's tcp transport, over libfabric's
 * tcp;ofi_rxm and on the load/store path; malloc, calloc and realloc
 * calls from duet's objects (linked statically here) are counted through the
 * linker's --wrap. Non-blocking collectives are among the calls.
 *
 * And no leak: the blocks duet's objects allocate are tracked until freed
 * (free is wrapped too), so a communicator's whole life, from init to
 * destroy, must leave none behind (after one such life has made what the
 * process keeps, such as the library's one-time state).
 */
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
static atomic_long allocs;
static atomic_int counting;

/* The live blocks duet allocated: an open-addressing set of pointers, under
 * a lock (both ranks' threads allocate). A block freed by duet that duet did
 * not allocate through these calls (strdup, asprintf) is not in it. */
#define LIVE_SLOTS (1u << 16)
static void *live[LIVE_SLOTS];
static long nlive;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
#define LIVE_GONE ((void *)1) /* a removed entry: probing goes on past it */

static size_t live_hash(const void *p) {
  return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) & (LIVE_SLOTS - 1);
}

static void live_add(void *p) {
  if (p == NULL)
    return;
  pthread_mutex_lock(&live_lock);
  for (size_t i = live_hash(p), k = 0; k < LIVE_SLOTS; i = (i + 1) & (LIVE_SLOTS - 1), k++)
    if (live[i] == NULL || live[i] == LIVE_GONE) {
      live[i] = p;
      nlive++;
      break;
    }
  pthread_mutex_unlock(&live_lock);
}

static void live_remove(void *p) {
  if (p == NULL)
    return;
  pthread_mutex_lock(&live_lock);
  for (size_t i = live_hash(p), k = 0; k < LIVE_SLOTS && live[i] != NULL;
       i = (i + 1) & (LIVE_SLOTS - 1), k++)
    if (live[i] == p) {
      live[i] = LIVE_GONE;
      nlive--;
      break;
    }
  pthread_mutex_unlock(&live_lock);
}

static long live_count(void) {
  pthread_mutex_lock(&live_lock);
  long n = nlive;
  pthread_mutex_unlock(&live_lock);
  return n;
}

/* The callers of the first counted allocations, named when a count is not
 * 0 (the test binary exports its symbols: -rdynamic). */
#define CALLERS 8
static void *callers[CALLERS];

static void count_alloc(void *caller) {
  long k = atomic_fetch_add(&allocs, 1);
  if (k < CALLERS)
    callers[k] = caller;
}

/* Print where the counted allocations came from: function and offset. */
static void name_callers(void) {
  long n = atomic_load(&allocs);
  for (long k = 0; k < n && k < CALLERS; k++) {
    Dl_info info;
    if (dladdr(callers[k], &info) != 0 && info.dli_sname != NULL)
      fprintf(stderr, "  allocation %ld from %s+0x%lx\n", k + 1, info.dli_sname,
              (unsigned long)((char *)callers[k] - (char *)info.dli_saddr));
    else if (dladdr(callers[k], &info) != 0)
      fprintf(stderr, "  allocation %ld from %s+0x%lx (addr2line -f -e %s 0x%lx)\n", k + 1,
              info.dli_fname, (unsigned long)((char *)callers[k] - (char *)info.dli_fbase),
              info.dli_fname, (unsigned long)((char *)callers[k] - (char *)info.dli_fbase));
    else
      fprintf(stderr, "  allocation %ld from %p\n", k + 1, callers[k]);
  }
}

void *__wrap_malloc(size_t n) {
  if (atomic_load(&counting))
    count_alloc(__builtin_return_address(0));
  void *p = __real_malloc(n);
  live_add(p);
  return p;
}
void *__wrap_calloc(size_t n, size_t m) {
  if (atomic_load(&counting))
    count_alloc(__builtin_return_address(0));
  void *p = __real_calloc(n, m);
  live_add(p);
  return p;
}
void *__wrap_realloc(void *p, size_t n) {
  if (atomic_load(&counting))
    count_alloc(__builtin_return_address(0));
  void *q = __real_realloc(p, n);
  if (q != NULL || n == 0) {
    live_remove(p);
    live_add(q);
  }
  return q;
}
void __wrap_free(void *p) {
  live_remove(p);
  __real_free(p);
}

#define CALLS 1000
#define WARMUP 20
enum { N = 1 << 18 };

typedef struct rank_arg {
  duet_unique_id_t id;
  const char *provider;
  int rank;
  pthread_barrier_t *bar;
  int failed; /* set by the rank: 0 when it did all it should */
} rank_arg_t;

/* n ranks as threads of this process, each running fn(&ra[rank]) on a
 * communicator of its own over provider, with a barrier between them. */
static void run_ranks(int n, void *(*fn)(void *), const char *provider, rank_arg_t *ra) {
  pthread_t t[8];
  pthread_barrier_t bar;
  duet_unique_id_t id;
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
  pthread_barrier_init(&bar, NULL, (unsigned)n);
  for (int r = 0; r < n; r++) {
    ra[r].id = id;
    ra[r].provider = provider;
    ra[r].rank = r;
    ra[r].bar = &bar;
    ra[r].failed = 1;
    pthread_create(&t[r], NULL, fn, &ra[r]);
  }
  for (int r = 0; r < n; r++)
    pthread_join(t[r], NULL);
  pthread_barrier_destroy(&bar);
}

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
    /* a group of blocking sends and receives (the list of its requests) */
    duet_status_t g = duet_group_start();
    for (int k = 0; k < 20 && g == DUET_SUCCESS; k++)
      g = rank ? duet_recv(b + 64 * k, 64, DUET_FLOAT32, 0, c) : duet_send(a, 64, DUET_FLOAT32, 1, c);
    if (duet_group_end() != DUET_SUCCESS || g != DUET_SUCCESS)
      return -1;
    /* non-blocking collectives (on the load/store path: queued tasks) */
    if (duet_iallreduce(a, b, N / 2, DUET_FLOAT32, DUET_SUM, c, &r1) ||
        duet_ialltoallv(a, vc, disp, b + N / 2, rc, disp, DUET_FLOAT32, c, &r2) ||
        duet_ibarrier(c, &r3) || duet_wait(r3) || duet_wait(r1) || duet_wait(r2))
      return -1;
  }
  return 0;
}

/* Rank 1 comes this late to the counted calls: rank 0's first one waits
 * longer than DUET_ALIVE_PERIOD_NS, so the checks that the awaited rank is
 * still there run (DESIGN section 7), and must allocate nothing either. */
static int late_ms;

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
  if (late_ms > 0 && ra->rank == 1) /* rank 0's first call waits for it */
    usleep((useconds_t)late_ms * 1000);
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
  rank_arg_t ra[2];
  run_ranks(2, rank_main, provider, ra);
  cr_assert_eq(ra[0].failed + ra[1].failed, 0, "a rank failed: %s", duet_last_error(NULL));
  if (atomic_load(&allocs) != 0)
    name_callers();
  cr_assert_eq(atomic_load(&allocs), 0, "%ld allocations in %d rounds of steady-state calls over %s",
               atomic_load(&allocs), CALLS, provider);
}

Test(alloc, steady_state_calls_allocate_nothing, .timeout = 240) {
  steady_state("tcp");
}

Test(alloc, steady_state_calls_allocate_nothing_ofi_tcp, .timeout = 240) {
  steady_state("tcp;ofi_rxm");
}

/* The load/store path for the blocking calls (shm for the rest). */
Test(alloc, a_late_peer_allocates_nothing, .timeout = 240) {
  late_ms = 300;
  steady_state("tcp");
}

Test(alloc, a_late_peer_allocates_nothing_ofi_tcp, .timeout = 240) {
  late_ms = 300;
  steady_state("tcp;ofi_rxm");
}

Test(alloc, steady_state_calls_allocate_nothing_mem, .timeout = 240) {
  steady_state("mem");
}

/* One communicator's life: the calls whose schedules are not cached
 * (alltoallv), the first with no step at all on rank 0 (it sends and
 * receives nothing), then the hot path's calls once. */
static void *life_main(void *p) {
  rank_arg_t *ra = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  float *a = calloc(N, sizeof(float)), *b = calloc(N, sizeof(float));
  const size_t none[2] = {0, 0}, to1[2] = {0, 50}, from0[2] = {50, 0}, disp[2] = {0, 1000};
  cfg.upn_provider = ra->provider;
  cfg.timeout_ms = 60000;
  ra->failed = 1;
  if (a == NULL || b == NULL || duet_comm_init_rank(&c, 2, ra->id, ra->rank, &cfg) != DUET_SUCCESS)
    goto out;
  /* nothing moves, then rank 0 sends rank 1 50 elements */
  if (duet_alltoallv(a, none, disp, b, none, disp, DUET_FLOAT32, c) == DUET_SUCCESS &&
      duet_alltoallv(a, ra->rank ? none : to1, disp, b, ra->rank ? from0 : none, disp, DUET_FLOAT32,
                     c) == DUET_SUCCESS &&
      run_all(c, ra->rank, a, b, 1) == 0)
    ra->failed = 0;
  if (duet_comm_destroy(c) != DUET_SUCCESS)
    ra->failed = 1;
out:
  free(a);
  free(b);
  return NULL;
}

static long one_life(const char *provider) {
  rank_arg_t ra[2];
  run_ranks(2, life_main, provider, ra);
  cr_assert_eq(ra[0].failed + ra[1].failed, 0, "a rank failed over %s: %s", provider,
               duet_last_error(NULL));
  return live_count();
}

static void no_leak(const char *provider) {
  long kept = one_life(provider), after = one_life(provider);
  cr_assert_eq(after, kept, "over %s, a communicator's life left %ld blocks allocated", provider,
               after - kept);
}

Test(alloc, a_communicators_life_leaks_nothing, .timeout = 120) {
  no_leak("tcp");
}

Test(alloc, a_communicators_life_leaks_nothing_ofi_tcp, .timeout = 120) {
  no_leak("tcp;ofi_rxm");
}

Test(alloc, a_communicators_life_leaks_nothing_mem, .timeout = 120) {
  no_leak("mem");
}

/* The set sees a block duet keeps: a unique id's root state is live until
 * the communicator made with it is destroyed (or the process ends). */
Test(alloc, live_set_sees_kept_blocks) {
  duet_unique_id_t id;
  long before = live_count();
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS);
  cr_assert_gt(live_count(), before);
}

/* The hierarchy: four ranks as two super-nodes of two ("a", "b"), over the
 * load/store UPN (its hierarchical calls: segment phases and a rail
 * schedule) or over tcp (the hierarchical schedules); alltoallv's schedule
 * is rebuilt every call, so its builder must not allocate. */
static int run_hier(duet_comm_t *c, int rank, float *a, float *b, int iters) {
  size_t sc[4], rc[4], disp[4];
  for (int q = 0; q < 4; q++) { /* rank s sends rank d 100 + 1000 s + 10 d elements */
    sc[q] = 100 + 1000 * (size_t)rank + 10 * (size_t)q;
    rc[q] = 100 + 1000 * (size_t)q + 10 * (size_t)rank;
    disp[q] = 4000 * (size_t)q;
  }
  for (int i = 0; i < iters; i++) {
    duet_request_t *r1, *r2, *r3;
    if (duet_allreduce(a, b, 7, DUET_FLOAT32, DUET_SUM, c) ||
        duet_allreduce(a, b, N / 4, DUET_FLOAT32, DUET_AVG, c) ||
        duet_alltoall(a, b, 5000, DUET_FLOAT32, c) ||
        duet_alltoallv(a, sc, disp, b, rc, disp, DUET_FLOAT32, c) ||
        duet_allgather(a, b, 2000, DUET_FLOAT32, c) ||
        duet_reduce_scatter(a, b, 2000, DUET_FLOAT32, DUET_SUM, c) ||
        duet_broadcast(a, b, 3000, DUET_FLOAT32, 3, c) ||
        duet_reduce(a, b, 3000, DUET_FLOAT32, DUET_MAX, 2, c) || duet_barrier(c))
      return -1;
    if (duet_iallreduce(a, b, 1000, DUET_FLOAT32, DUET_SUM, c, &r1) ||
        duet_ialltoallv(a, sc, disp, b + N / 2, rc, disp, DUET_FLOAT32, c, &r2) ||
        duet_iallgather(a, b + N / 4, 100, DUET_FLOAT32, c, &r3) || duet_wait(r3) ||
        duet_wait(r1) || duet_wait(r2))
      return -1;
  }
  return 0;
}

static void *hier_main(void *p) {
  rank_arg_t *ha = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  float *a = calloc(N, sizeof(float)), *b = calloc(N, sizeof(float));
  cfg.upn_provider = ha->provider;
  if (strcmp(ha->provider, "mem") != 0)
    cfg.hpn_provider = ha->provider;
  cfg.supernode = ha->rank < 2 ? "a" : "b";
  cfg.timeout_ms = 60000;
  ha->failed = 1;
  if (a == NULL || b == NULL || duet_comm_init_rank(&c, 4, ha->id, ha->rank, &cfg) != DUET_SUCCESS)
    goto out;
  if (run_hier(c, ha->rank, a, b, WARMUP))
    goto out_destroy;
  pthread_barrier_wait(ha->bar);
  if (ha->rank == 0)
    atomic_store(&counting, 1);
  pthread_barrier_wait(ha->bar);
  if (run_hier(c, ha->rank, a, b, CALLS / 10))
    goto out_destroy;
  pthread_barrier_wait(ha->bar);
  if (ha->rank == 0)
    atomic_store(&counting, 0);
  ha->failed = 0;
out_destroy:
  if (duet_comm_destroy(c) != DUET_SUCCESS)
    ha->failed = 1;
out:
  free(a);
  free(b);
  return NULL;
}

static void hier_steady_state(const char *provider) {
  rank_arg_t ha[4];
  atomic_store(&allocs, 0);
  run_ranks(4, hier_main, provider, ha);
  cr_assert_eq(ha[0].failed + ha[1].failed + ha[2].failed + ha[3].failed, 0, "a rank failed: %s",
               duet_last_error(NULL));
  if (atomic_load(&allocs) != 0)
    name_callers();
  cr_assert_eq(atomic_load(&allocs), 0,
               "%ld allocations in %d x 12 steady-state hierarchical calls over %s",
               atomic_load(&allocs), CALLS / 10, provider);
}

Test(alloc, hierarchical_calls_allocate_nothing_mem, .timeout = 240) {
  hier_steady_state("mem");
}

/* The hierarchical schedules, forced (DUET_ALGO is read at init; over tcp
 * the tuner would take flat algorithms for some calls), over libfabric's
 * tcp;ofi_rxm for both networks. (Over duet's tcp transport, its pool of
 * buffers for unexpected messages can still grow to a new high-water mark
 * when four ranks share two cores.) */
Test(alloc, hierarchical_calls_allocate_nothing_ofi_tcp, .timeout = 240) {
  setenv("DUET_ALGO",
         "allreduce=hier,alltoall=hier,alltoallv=hier,allgather=hier,reduce_scatter=hier,"
         "broadcast=hier,reduce=hier,barrier=hier",
         1);
  hier_steady_state("tcp;ofi_rxm");
  unsetenv("DUET_ALGO");
}

/* The same over an HPN of two planes (transports/planes): its operations,
 * their copy buffers and its notices come from pools. */
Test(alloc, hierarchical_calls_allocate_nothing_two_planes, .timeout = 240) {
  setenv("DUET_ALGO",
         "allreduce=hier,alltoall=hier,alltoallv=hier,allgather=hier,reduce_scatter=hier,"
         "broadcast=hier,reduce=hier,barrier=hier",
         1);
  setenv("DUET_HPN_IFACE", "lo,lo", 1);
  hier_steady_state("tcp;ofi_rxm");
  unsetenv("DUET_HPN_IFACE");
  unsetenv("DUET_ALGO");
}

/* Calls in flight together share the communicator's scratch: after a large
 * call has grown it, rank 0 of three posts two smaller ones before the others
 * have posted either (neither can finish), and they take two regions of it. The
 * warm-up runs the same calls without that overlap (a gather, which needs
 * no scratch, beside each), so a library that gave an overlapping call
 * memory of its own would allocate here, and one that gave both the same
 * region would sum into each other's partial results. */
static void *overlap_main(void *p) {
  rank_arg_t *ra = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  float *a = calloc(N, sizeof(float)), *b = calloc(N, sizeof(float));
  duet_request_t *r1, *r2;
  cfg.upn_provider = ra->provider;
  cfg.timeout_ms = 60000;
  ra->failed = 1;
  for (int i = 0; a != NULL && i < N; i++)
    a[i] = (float)((ra->rank + 1) * (i % 13)); /* the three ranks sum to 6 (i % 13) */
  if (a == NULL || b == NULL || duet_comm_init_rank(&c, 3, ra->id, ra->rank, &cfg) != DUET_SUCCESS)
    goto out;
  if (duet_reduce_scatter(a, b, N / 4, DUET_FLOAT32, DUET_SUM, c) ||
      duet_iallgather(a, b + N / 2, N / 8, DUET_FLOAT32, c, &r1) ||
      duet_ireduce_scatter(a, b, N / 32, DUET_FLOAT32, DUET_SUM, c, &r2) || duet_wait(r1) ||
      duet_wait(r2) || duet_iallgather(a, b + N / 2, N / 8, DUET_FLOAT32, c, &r1) ||
      duet_ireduce_scatter(a, b + N / 4, 1000, DUET_FLOAT32, DUET_SUM, c, &r2) || duet_wait(r1) ||
      duet_wait(r2))
    goto out_destroy;
  pthread_barrier_wait(ra->bar);
  if (ra->rank == 0) {
    atomic_store(&counting, 1);
    if (duet_ireduce_scatter(a, b, N / 32, DUET_FLOAT32, DUET_SUM, c, &r1) ||
        duet_ireduce_scatter(a, b + N / 4, 1000, DUET_FLOAT32, DUET_SUM, c, &r2))
      goto out_destroy; /* the others time out */
    atomic_store(&counting, 0);
  }
  pthread_barrier_wait(ra->bar);
  if (ra->rank != 0 && (duet_ireduce_scatter(a, b, N / 32, DUET_FLOAT32, DUET_SUM, c, &r1) ||
                        duet_ireduce_scatter(a, b + N / 4, 1000, DUET_FLOAT32, DUET_SUM, c, &r2)))
    goto out_destroy;
  if (duet_wait(r1) || duet_wait(r2))
    goto out_destroy;
  ra->failed = 2; /* wrong sums */
  for (size_t i = 0; i < N / 32; i++)
    if (b[i] != (float)(6 * ((ra->rank * (N / 32) + i) % 13)))
      goto out_destroy;
  for (size_t i = 0; i < 1000; i++)
    if (b[N / 4 + i] != (float)(6 * ((ra->rank * 1000 + i) % 13)))
      goto out_destroy;
  ra->failed = 0;
out_destroy:
  if (duet_comm_destroy(c) != DUET_SUCCESS)
    ra->failed = 1;
out:
  free(a);
  free(b);
  return NULL;
}

static void overlap(const char *provider) {
  rank_arg_t ra[3];
  atomic_store(&allocs, 0);
  run_ranks(3, overlap_main, provider, ra);
  for (int r = 0; r < 3; r++) {
    cr_assert_neq(ra[r].failed, 1, "rank %d failed over %s: %s", r, provider, duet_last_error(NULL));
    cr_assert_eq(ra[r].failed, 0, "rank %d's sums differ from the serial ones over %s", r, provider);
  }
  if (atomic_load(&allocs) != 0)
    name_callers();
  cr_assert_eq(atomic_load(&allocs), 0,
               "%ld allocations posting two calls that overlap, over %s", atomic_load(&allocs),
               provider);
}

Test(alloc, overlapping_calls_share_the_scratch, .timeout = 120) {
  overlap("tcp");
}

Test(alloc, overlapping_calls_share_the_scratch_ofi_tcp, .timeout = 120) {
  overlap("tcp;ofi_rxm");
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
