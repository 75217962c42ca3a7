/*
 * mpi_partition.c - the network between super-nodes goes silent in the
 * middle of calls, and no rank hangs (DESIGN.md section 7).
 *
 * Run on two or more super-nodes whose HPN the shell command CMD cuts when
 * rank 0 runs it: on the emulated hosts of tests/cluster/run_cluster.sh,
 * "ip link set hpn0 down", a link that passes nothing while no socket sees
 * an error. First two rounds of a 16 MiB allreduce and an alltoall of
 * 1 MiB per peer, checked against MPI, bring every connection up. Then
 * every rank posts a 16 MiB iallreduce and an ialltoall, all meet in an MPI
 * barrier, rank 0 runs CMD, all meet again, and each rank waits for the two
 * calls, then makes a blocking allreduce, then destroys the communicator.
 * Each wait and the allreduce must fail with DUET_ERR_TIMEOUT or
 * DUET_ERR_REMOTE, and each of the four must return within
 * 1.5 x DUET_TIMEOUT_MS + 2 s. MPI (shared memory) still joins the ranks
 * afterwards to count what went wrong.
 *
 * Usage: mpi_partition -x CMD
 */
#include "mpi_common.h"

#define LARGE (4u << 20) /* floats: 16 MiB */
#define A2A (256u << 10) /* floats per peer: 1 MiB */

static int wrong;

/* A call after the cut: it must fail as a failed peer or network does, and
 * in bounded time. */
static void expect_failure(int rank, const char *what, duet_status_t st, double secs, double bound,
                           int must_fail, duet_comm_t *comm) {
  int bad_status = must_fail && st != DUET_ERR_TIMEOUT && st != DUET_ERR_REMOTE;
  if (bad_status || secs > bound) {
    fprintf(stderr, "[rank %d] %s returned %s after %.1f s (want %s within %.1f s): %s\n", rank,
            what, duet_strerror(st), secs,
            must_fail ? "DUET_ERR_TIMEOUT or DUET_ERR_REMOTE" : "any status", bound,
            comm ? duet_last_error(comm) : "");
    wrong++;
  } else {
    printf("[rank %d] %s: %s after %.1f s\n", rank, what, duet_strerror(st), secs);
  }
}

int main(int argc, char **argv) {
  int rank, size, opt, total = 0;
  const char *cmd = NULL, *tenv = getenv("DUET_TIMEOUT_MS");
  duet_request_t *r1, *r2;
  duet_status_t st;
  double t0;

  mt_init_mpi(&argc, &argv, &rank, &size);
  while ((opt = getopt(argc, argv, "x:")) != -1)
    if (opt == 'x')
      cmd = optarg;
  if (cmd == NULL || tenv == NULL || atol(tenv) <= 0) {
    if (rank == 0)
      fprintf(stderr, "usage: DUET_TIMEOUT_MS=MS mpi_partition -x CMD\n");
    MPI_Finalize();
    return 2;
  }
  const double bound = 1.5 * (double)atol(tenv) / 1000.0 + 2.0;
  const size_t all = (size_t)A2A * (size_t)size, n = all > LARGE ? all : LARGE;
  float *send = mt_xmalloc(n * sizeof(float)), *got = mt_xmalloc(n * sizeof(float));
  float *want = mt_xmalloc(n * sizeof(float)), *got2 = mt_xmalloc(all * sizeof(float));
  float *want2 = mt_xmalloc(all * sizeof(float));
  duet_comm_t *comm = mt_init_duet(rank, size);

  for (size_t i = 0; i < n; i++) /* small integers: every sum is exact */
    send[i] = (float)((i * 7 + (size_t)rank * 3) % 13);
  for (int round = 0; round < 2; round++) {
    MPI_Allreduce(send, want, LARGE, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(comm, duet_allreduce(send, got, LARGE, DUET_FLOAT32, DUET_SUM, comm));
    MPI_Alltoall(send, A2A, MPI_FLOAT, want2, A2A, MPI_FLOAT, MPI_COMM_WORLD);
    CHECK(comm, duet_alltoall(send, got2, A2A, DUET_FLOAT32, comm));
    if (memcmp(got, want, LARGE * sizeof(float)) != 0 ||
        memcmp(got2, want2, all * sizeof(float)) != 0) {
      fprintf(stderr, "[rank %d] round %d before the cut: a result differs from MPI's\n", rank,
              round);
      wrong++;
    }
  }

  CHECK(comm, duet_iallreduce(send, got, LARGE, DUET_FLOAT32, DUET_SUM, comm, &r1));
  CHECK(comm, duet_ialltoall(send, got2, A2A, DUET_FLOAT32, comm, &r2));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && system(cmd) != 0) {
    fprintf(stderr, "[rank 0] %s failed\n", cmd);
    wrong++;
  }
  MPI_Barrier(MPI_COMM_WORLD);

  t0 = MPI_Wtime();
  st = duet_wait(r1);
  expect_failure(rank, "the 16 MiB iallreduce's wait", st, MPI_Wtime() - t0, bound, 1, comm);
  t0 = MPI_Wtime();
  st = duet_wait(r2);
  expect_failure(rank, "the ialltoall's wait", st, MPI_Wtime() - t0, bound, 1, comm);
  t0 = MPI_Wtime();
  st = duet_allreduce(send, got, 1000, DUET_FLOAT32, DUET_SUM, comm);
  expect_failure(rank, "a later allreduce", st, MPI_Wtime() - t0, bound, 1, comm);
  t0 = MPI_Wtime();
  st = duet_comm_destroy(comm);
  expect_failure(rank, "duet_comm_destroy", st, MPI_Wtime() - t0, bound, 0, NULL);

  MPI_Allreduce(&wrong, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("# mpi_partition np=%d, cut by %s: %d wrong\n", size, cmd, total);
  free(send), free(got), free(want), free(got2), free(want2);
  MPI_Finalize();
  return total != 0;
}
