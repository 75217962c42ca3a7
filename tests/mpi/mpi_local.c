/*
 * mpi_local.c - a non-blocking post waits for no peer.
 *
 * Every non-blocking collective is posted by rank 0 before any other rank
 * has posted one: rank 0 posts all eight, then enters an MPI barrier that
 * the others pass before they post theirs. A post that waited for its peers
 * (as the hierarchical alltoallv's did, for their send counts) holds rank 0
 * until its deadline, and the run fails with the duet call that timed out.
 * Then all wait, and every result is compared with MPI's own collective.
 * Three rounds, so the second and third run on cached schedules and pooled
 * requests.
 *
 * Usage: mpi_local [-t] (-t: with the progress thread)
 */
#include "mpi_common.h"

#define COUNT 20000 /* allreduce, broadcast, reduce: elements */
#define BLOCK 1000  /* allgather, reduce_scatter, alltoall: elements per rank */
#define NCALLS 8

static const char *const names[NCALLS] = {"iallreduce",      "ibroadcast", "ireduce",
                                          "iallgather",      "ireduce_scatter", "ialltoall",
                                          "ialltoallv",      "ibarrier"};

int main(int argc, char **argv) {
  int rank, size, opt, thread = 0, wrong = 0, total = 0;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_unique_id_t id;
  duet_comm_t *comm;

  mt_init_mpi(&argc, &argv, &rank, &size);
  while ((opt = getopt(argc, argv, "t")) != -1)
    if (opt == 't')
      thread = 1;
  const int root = 1 % size; /* the broadcast's; the reduce's is 0 */
  const size_t vmax = 10 + 2 * (size_t)size, all = (size_t)COUNT * (size_t)size;
  size_t sc[size], sd[size], rc[size], rd[size], len[NCALLS - 1];
  int isc[size], isd[size], irc[size], ird[size], blocks[size];
  float *send = mt_xmalloc(all * sizeof(float)), *got[NCALLS - 1], *want[NCALLS - 1];

  for (int q = 0; q < size; q++) { /* rank s sends rank d 10 + s + d elements */
    sc[q] = rc[q] = 10 + (size_t)rank + (size_t)q;
    sd[q] = rd[q] = (size_t)q * vmax;
    isc[q] = irc[q] = (int)sc[q];
    isd[q] = ird[q] = (int)sd[q];
    blocks[q] = BLOCK;
  }
  for (size_t i = 0; i < all; i++) /* small integers: every sum is exact */
    send[i] = (float)((i * 7 + (size_t)rank) % 11);
  for (int k = 0; k < NCALLS - 1; k++) { /* zeros where no call writes (alltoallv's gaps) */
    got[k] = mt_xmalloc(all * sizeof(float));
    want[k] = mt_xmalloc(all * sizeof(float));
    memset(want[k], 0, all * sizeof(float));
  }
  memcpy(want[1], send, COUNT * sizeof(float));
  MPI_Allreduce(send, want[0], COUNT, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Bcast(want[1], COUNT, MPI_FLOAT, root, MPI_COMM_WORLD);
  MPI_Reduce(send, want[2], COUNT, MPI_FLOAT, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Allgather(send, BLOCK, MPI_FLOAT, want[3], BLOCK, MPI_FLOAT, MPI_COMM_WORLD);
  MPI_Reduce_scatter(send, want[4], blocks, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Alltoall(send, BLOCK, MPI_FLOAT, want[5], BLOCK, MPI_FLOAT, MPI_COMM_WORLD);
  MPI_Alltoallv(send, isc, isd, MPI_FLOAT, want[6], irc, ird, MPI_FLOAT, MPI_COMM_WORLD);
  len[0] = len[1] = COUNT;
  len[2] = rank == 0 ? COUNT : 0;
  len[3] = len[5] = (size_t)BLOCK * (size_t)size;
  len[4] = BLOCK;
  len[6] = rd[size - 1] + rc[size - 1];

  memset(&id, 0, sizeof id);
  if (rank == 0)
    CHECK(NULL, duet_get_unique_id(&id));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  cfg.progress_thread = thread;
  CHECK(NULL, duet_comm_init_rank(&comm, size, id, rank, &cfg));

  for (int round = 1; round <= 3; round++) {
    duet_request_t *req[NCALLS];
    for (int k = 0; k < NCALLS - 1; k++)
      memset(got[k], 0, all * sizeof(float));
    if (rank != 0)
      MPI_Barrier(MPI_COMM_WORLD);
    CHECK(comm, duet_iallreduce(send, got[0], COUNT, DUET_FLOAT32, DUET_SUM, comm, &req[0]));
    CHECK(comm, duet_ibroadcast(send, got[1], COUNT, DUET_FLOAT32, root, comm, &req[1]));
    CHECK(comm, duet_ireduce(send, got[2], COUNT, DUET_FLOAT32, DUET_MAX, 0, comm, &req[2]));
    CHECK(comm, duet_iallgather(send, got[3], BLOCK, DUET_FLOAT32, comm, &req[3]));
    CHECK(comm,
          duet_ireduce_scatter(send, got[4], BLOCK, DUET_FLOAT32, DUET_SUM, comm, &req[4]));
    CHECK(comm, duet_ialltoall(send, got[5], BLOCK, DUET_FLOAT32, comm, &req[5]));
    CHECK(comm, duet_ialltoallv(send, sc, sd, got[6], rc, rd, DUET_FLOAT32, comm, &req[6]));
    CHECK(comm, duet_ibarrier(comm, &req[7]));
    if (rank == 0)
      MPI_Barrier(MPI_COMM_WORLD);
    for (int k = NCALLS - 1; k >= 0; k--) /* not in post order */
      CHECK(comm, duet_wait(req[k]));
    for (int k = 0; k < NCALLS - 1; k++)
      if (memcmp(got[k], want[k], len[k] * sizeof(float)) != 0) {
        fprintf(stderr, "[rank %d] round %d: %s differs from MPI's result\n", rank, round,
                names[k]);
        wrong++;
      }
  }
  CHECK(comm, duet_comm_destroy(comm));
  MPI_Allreduce(&wrong, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("# mpi_local np=%d%s: rank 0 posted 8 calls first, 3 rounds: %d wrong\n", size,
           thread ? " (progress thread)" : "", total);
  for (int k = 0; k < NCALLS - 1; k++)
    free(got[k]), free(want[k]);
  free(send);
  MPI_Finalize();
  return total != 0;
}
