/*
 * mpi_async.c - the progress thread (DUET_PROGRESS_THREAD=1): non-blocking
 * calls complete while the caller makes no duet call at all.
 *
 * Each case computes its reference with MPI first, posts duet's
 * non-blocking call(s), then only sleeps and reads the receive buffers until
 * they hold the reference (no duet call in between: without the thread
 * nothing would move them), failing after a deadline; then duet_wait must
 * succeed and the buffers must still be right. Cases: allreduce of 1, 1000
 * and 262144 int32 (in and out of place), alltoall, allgather, broadcast,
 * reduce-scatter, send/recv around a ring, three calls posted back to back,
 * a blocking call made while a non-blocking one is pending, and a
 * communicator split from the first (the thread drives it too).
 *
 * Usage: mpi_async [-d deadline_ms]. The thread is asked for with the
 * config field, so the test does not depend on the environment.
 */
#include "mpi_common.h"

static int rank, size, failures;
static long deadline_ms = 20000;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Do n buffers hold their references? Read without any duet call; the
 * volatile reads see the thread's stores. */
static int all_equal(int n, void *const *got, void *const *want, const size_t *bytes) {
  for (int k = 0; k < n; k++) {
    const volatile unsigned char *g = got[k];
    const unsigned char *w = want[k];
    for (size_t i = 0; i < bytes[k]; i++)
      if (g[i] != w[i])
        return 0;
  }
  return 1;
}

/* Wait, by reading only, until the buffers hold the references; then
 * duet_wait every request and check once more. */
static void expect_background(const char *what, int n, duet_request_t **req, void *const *got,
                              void *const *want, const size_t *bytes, duet_comm_t *comm) {
  double t0 = now_s(), took;
  int seen;
  while (!(seen = all_equal(n, got, want, bytes)) && (now_s() - t0) * 1e3 < (double)deadline_ms)
    mt_sleep_ms(1);
  took = now_s() - t0;
  if (!seen) {
    fprintf(stderr, "[rank %d] %s: no result after %ld ms without duet calls\n", rank, what,
            deadline_ms);
    failures++;
  }
  for (int k = 0; k < n; k++)
    CHECK(comm, duet_wait(req[k]));
  if (!all_equal(n, got, want, bytes)) {
    fprintf(stderr, "[rank %d] %s: wrong result after duet_wait\n", rank, what);
    failures++;
  }
  if (rank == 0)
    printf("async np=%d %-28s %s (visible after %.1f ms)\n", size, what, seen ? "OK" : "FAILED",
           took * 1e3);
}

static int32_t *ints(size_t n, int32_t base) {
  int32_t *p = mt_xmalloc(n * sizeof(int32_t) + 1);
  for (size_t i = 0; i < n; i++)
    p[i] = base + (int32_t)(i % 1009);
  return p;
}

static int32_t *sentinel(size_t n) {
  int32_t *p = mt_xmalloc(n * sizeof(int32_t) + 1);
  memset(p, 0xa5, n * sizeof(int32_t));
  return p;
}

static void case_allreduce(duet_comm_t *comm, MPI_Comm mcomm, size_t n, int in_place) {
  int me;
  MPI_Comm_rank(mcomm, &me);
  int32_t *in = ints(n, (me + 1) * 100000),
          *got = in_place ? ints(n, (me + 1) * 100000) : sentinel(n);
  int32_t *want = mt_xmalloc(n * 4 + 1);
  size_t bytes = n * 4;
  duet_request_t *req;
  char what[64];
  MPI_Allreduce(in, want, (int)n, MPI_INT32_T, MPI_SUM, mcomm);
  CHECK(comm, duet_iallreduce(in_place ? got : in, got, n, DUET_INT32, DUET_SUM, comm, &req));
  snprintf(what, sizeof what, "allreduce %zu%s", n, in_place ? " in place" : "");
  expect_background(what, 1, &req, (void *const[]){got}, (void *const[]){want}, &bytes, comm);
  free(in);
  free(got);
  free(want);
}

static void case_alltoall(duet_comm_t *comm, size_t per) {
  size_t n = per * (size_t)size, bytes = n * 4;
  int32_t *in = ints(n, rank * 7919), *got = sentinel(n), *want = mt_xmalloc(bytes + 1);
  duet_request_t *req;
  MPI_Alltoall(in, (int)per, MPI_INT32_T, want, (int)per, MPI_INT32_T, MPI_COMM_WORLD);
  CHECK(comm, duet_ialltoall(in, got, per, DUET_INT32, comm, &req));
  expect_background("alltoall", 1, &req, (void *const[]){got}, (void *const[]){want}, &bytes, comm);
  free(in);
  free(got);
  free(want);
}

static void case_allgather(duet_comm_t *comm, size_t per) {
  size_t bytes = per * (size_t)size * 4;
  int32_t *in = ints(per, rank * 31), *got = sentinel(per * (size_t)size),
          *want = mt_xmalloc(bytes + 1);
  duet_request_t *req;
  MPI_Allgather(in, (int)per, MPI_INT32_T, want, (int)per, MPI_INT32_T, MPI_COMM_WORLD);
  CHECK(comm, duet_iallgather(in, got, per, DUET_INT32, comm, &req));
  expect_background("allgather", 1, &req, (void *const[]){got}, (void *const[]){want}, &bytes,
                    comm);
  free(in);
  free(got);
  free(want);
}

static void case_broadcast(duet_comm_t *comm, size_t n) {
  int root = size - 1;
  size_t bytes = n * 4;
  int32_t *in = ints(n, 4242), *got = sentinel(n), *want = ints(n, 4242);
  duet_request_t *req;
  CHECK(comm, duet_ibroadcast(in, got, n, DUET_INT32, root, comm, &req));
  expect_background("broadcast", 1, &req, (void *const[]){got}, (void *const[]){want}, &bytes,
                    comm);
  free(in);
  free(got);
  free(want);
}

static void case_reduce_scatter(duet_comm_t *comm, size_t per) {
  size_t n = per * (size_t)size, bytes = per * 4;
  int32_t *in = ints(n, rank * 3), *got = sentinel(per), *all = mt_xmalloc(n * 4 + 1);
  duet_request_t *req;
  MPI_Allreduce(in, all, (int)n, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(comm, duet_ireduce_scatter(in, got, per, DUET_INT32, DUET_SUM, comm, &req));
  expect_background("reduce_scatter", 1, &req, (void *const[]){got},
                    (void *const[]){all + (size_t)rank * per}, &bytes, comm);
  free(in);
  free(got);
  free(all);
}

static void case_ring(duet_comm_t *comm, size_t n) {
  int right = (rank + 1) % size, left = (rank + size - 1) % size;
  size_t bytes = n * 4;
  int32_t *out = ints(n, rank * 11), *got = sentinel(n), *want = ints(n, left * 11);
  duet_request_t *req[2];
  CHECK(comm, duet_irecv(got, n, DUET_INT32, left, comm, &req[0]));
  CHECK(comm, duet_isend(out, n, DUET_INT32, right, comm, &req[1]));
  /* the send completes too: only the receive buffer is watched */
  expect_background("send/recv ring", 1, &req[0], (void *const[]){got}, (void *const[]){want},
                    &bytes, comm);
  CHECK(comm, duet_wait(req[1]));
  free(out);
  free(got);
  free(want);
}

/* Three calls posted back to back, of different collectives. */
static void case_three(duet_comm_t *comm) {
  const size_t n = 50000, per = 3000;
  int32_t *a = ints(n, rank * 5), *ga = sentinel(n), *wa = mt_xmalloc(n * 4 + 1);
  int32_t *b = ints(per * (size_t)size, rank), *gb = sentinel(per * (size_t)size),
          *wb = mt_xmalloc(per * (size_t)size * 4 + 1);
  int32_t *c = ints(per, rank * 9), *gc = sentinel(per * (size_t)size),
          *wc = mt_xmalloc(per * (size_t)size * 4 + 1);
  size_t bytes[3] = {n * 4, per * (size_t)size * 4, per * (size_t)size * 4};
  duet_request_t *req[3];
  MPI_Allreduce(a, wa, (int)n, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD);
  MPI_Alltoall(b, (int)per, MPI_INT32_T, wb, (int)per, MPI_INT32_T, MPI_COMM_WORLD);
  MPI_Allgather(c, (int)per, MPI_INT32_T, wc, (int)per, MPI_INT32_T, MPI_COMM_WORLD);
  CHECK(comm, duet_iallreduce(a, ga, n, DUET_INT32, DUET_MAX, comm, &req[0]));
  CHECK(comm, duet_ialltoall(b, gb, per, DUET_INT32, comm, &req[1]));
  CHECK(comm, duet_iallgather(c, gc, per, DUET_INT32, comm, &req[2]));
  expect_background("three posted together", 3, req, (void *const[]){ga, gb, gc},
                    (void *const[]){wa, wb, wc}, bytes, comm);
  free(a), free(ga), free(wa), free(b), free(gb), free(wb), free(c), free(gc), free(wc);
}

/* A blocking call while a non-blocking one is pending: calls stay in order,
 * and both are right. */
static void case_blocking_between(duet_comm_t *comm) {
  const size_t n = 70000;
  size_t bytes = n * 4;
  int32_t *a = ints(n, rank), *ga = sentinel(n), *wa = mt_xmalloc(bytes + 1);
  int32_t *b = ints(n, rank * 2), *gb = sentinel(n), *wb = mt_xmalloc(bytes + 1);
  duet_request_t *req;
  MPI_Allreduce(a, wa, (int)n, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(b, wb, (int)n, MPI_INT32_T, MPI_MIN, MPI_COMM_WORLD);
  CHECK(comm, duet_iallreduce(a, ga, n, DUET_INT32, DUET_SUM, comm, &req));
  CHECK(comm, duet_allreduce(b, gb, n, DUET_INT32, DUET_MIN, comm));
  if (memcmp(gb, wb, bytes) != 0) {
    fprintf(stderr, "[rank %d] blocking allreduce between: wrong result\n", rank);
    failures++;
  }
  expect_background("allreduce, blocking between", 1, &req, (void *const[]){ga},
                    (void *const[]){wa}, &bytes, comm);
  free(a), free(ga), free(wa), free(b), free(gb), free(wb);
}

int main(int argc, char **argv) {
  duet_comm_t *world, *child = NULL;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_unique_id_t id;
  MPI_Comm mchild;
  int opt, total = 0;

  mt_init_mpi(&argc, &argv, &rank, &size);
  while ((opt = getopt(argc, argv, "d:")) != -1)
    if (opt == 'd')
      deadline_ms = atol(optarg);
  memset(&id, 0, sizeof id);
  if (rank == 0)
    CHECK(NULL, duet_get_unique_id(&id));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  cfg.progress_thread = 1;
  CHECK(NULL, duet_comm_init_rank(&world, size, id, rank, &cfg));

  case_allreduce(world, MPI_COMM_WORLD, 1, 0);
  case_allreduce(world, MPI_COMM_WORLD, 1000, 0);
  case_allreduce(world, MPI_COMM_WORLD, 262144, 0);
  case_allreduce(world, MPI_COMM_WORLD, 65536, 1);
  case_alltoall(world, 16384);
  case_allgather(world, 50000);
  case_broadcast(world, 300000);
  case_reduce_scatter(world, 40000);
  if (size > 1)
    case_ring(world, 100000);
  case_three(world);
  case_blocking_between(world);

  /* A child communicator shares the thread. */
  CHECK(world, duet_comm_split(world, rank % 2, rank, &child));
  MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &mchild);
  case_allreduce(child, mchild, 100000, 0);
  CHECK(child, duet_comm_destroy(child));
  MPI_Comm_free(&mchild);
  /* The parent, its child gone, still has it. */
  case_allreduce(world, MPI_COMM_WORLD, 4096, 0);
  CHECK(world, duet_comm_destroy(world));

  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("# mpi_async np=%d: %d failed\n", size, total);
  MPI_Finalize();
  return total != 0;
}
