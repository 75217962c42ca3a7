/*
 * allreduce_env.c - duet without MPI: rank, size and rendezvous come from the
 * environment.
 *
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=0 ./allreduce_env &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=1 ./allreduce_env &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=2 ./allreduce_env
 *
 * Rank 0 hosts the rendezvous at DUET_ROOT. torchrun's RANK/WORLD_SIZE/
 * MASTER_ADDR/MASTER_PORT and Open MPI's variables work as well.
 */
#include <stdio.h>

#include <duet.h>

#define N 1024

int main(void) {
  duet_comm_t *comm;
  duet_status_t st;
  int rank, size, wrong = 0;
  float buf[N];

  /* 1. Join: rank, size and root address from DUET_RANK/DUET_SIZE/DUET_ROOT. */
  if ((st = duet_comm_init_env(&comm, NULL)) != DUET_SUCCESS) {
    fprintf(stderr, "init: %s: %s\n", duet_strerror(st), duet_last_error(NULL));
    return 1;
  }
  duet_comm_rank(comm, &rank);
  duet_comm_size(comm, &size);

  /* 2. Sum rank + 1 over all ranks, in place. */
  for (int i = 0; i < N; i++)
    buf[i] = (float)(rank + 1);
  if ((st = duet_allreduce(buf, buf, N, DUET_FLOAT32, DUET_SUM, comm)) != DUET_SUCCESS) {
    fprintf(stderr, "rank %d: allreduce: %s: %s\n", rank, duet_strerror(st), duet_last_error(comm));
    return 1;
  }

  /* 3. Each rank checks 1 + 2 + ... + size itself. */
  for (int i = 0; i < N; i++)
    wrong += buf[i] != (float)(size * (size + 1) / 2);
  printf("rank %d of %d: sum %g %s\n", rank, size, buf[0], wrong ? "WRONG" : "OK");

  /* 4. Collective, graceful teardown. */
  if ((st = duet_comm_destroy(comm)) != DUET_SUCCESS) {
    fprintf(stderr, "rank %d: destroy: %s\n", rank, duet_strerror(st));
    return 1;
  }
  return wrong != 0;
}
