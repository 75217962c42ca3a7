/*
 * allreduce_mpi.c - the smallest duet program, launched by mpirun.
 *
 *   mpicc allreduce_mpi.c $(pkg-config --cflags --libs duet) -o allreduce_mpi
 *   mpirun -np 4 ./allreduce_mpi
 *
 * MPI only starts the processes and carries duet's unique id; the allreduce
 * itself is duet's.
 */
#include <mpi.h>
#include <stdio.h>

#include <duet.h>

#define N 1024

int main(int argc, char **argv) {
  int rank, size, wrong = 0;
  float buf[N];
  duet_unique_id_t id;
  duet_comm_t *comm;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  /* 1. Rank 0 starts the rendezvous and gets its id; MPI hands the id to all. */
  if (rank == 0 && duet_get_unique_id(&id) != DUET_SUCCESS)
    MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);

  /* 2. Every rank joins the communicator (NULL config: defaults + DUET_* env). */
  if (duet_comm_init_rank(&comm, size, id, rank, NULL) != DUET_SUCCESS) {
    fprintf(stderr, "rank %d: init failed: %s\n", rank, duet_last_error(NULL));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

  /* 3. Sum rank + 1 over all ranks, in place. */
  for (int i = 0; i < N; i++)
    buf[i] = (float)(rank + 1);
  duet_status_t st = duet_allreduce(buf, buf, N, DUET_FLOAT32, DUET_SUM, comm);
  if (st != DUET_SUCCESS) {
    fprintf(stderr, "rank %d: allreduce: %s: %s\n", rank, duet_strerror(st), duet_last_error(comm));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

  /* 4. Every element must be 1 + 2 + ... + size. */
  for (int i = 0; i < N; i++)
    wrong += buf[i] != (float)(size * (size + 1) / 2);
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("allreduce of %d ranks: %g (%s)\n", size, buf[0], wrong ? "WRONG" : "OK");

  /* 5. Free the communicator (collective), then leave MPI. */
  duet_comm_destroy(comm);
  MPI_Finalize();
  return wrong != 0;
}
