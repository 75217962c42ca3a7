/*
 * moe_dispatch.c - a mixture-of-experts token dispatch: every rank routes its
 * tokens to experts (one per rank) with duet_alltoallv, after sharing the
 * counts with duet_alltoall. The token buffers come from duet_mem_alloc, so
 * ranks on one host read each other's tokens in place and copy them once.
 *
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=0 ./moe_dispatch &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=1 ./moe_dispatch &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=2 ./moe_dispatch
 */
#include <stdio.h>
#include <stdlib.h>

#include <duet.h>

_Static_assert(sizeof(size_t) == 8, "the counts travel as DUET_UINT64");

#define TOKENS 4096 /* per rank */
#define HIDDEN 256  /* floats per token */

/* The expert token t of rank r goes to: skewed, expert 0 gets the most. */
static int expert_of(int r, int t, int size) {
  unsigned h = (unsigned)(r * 7919 + t) * 2654435761u;
  return (h >> 16) % 4 == 0 ? 0 : (int)((h >> 8) % (unsigned)size);
}

/* Element k of token t of rank r: a value the receiver can check. */
static float value_of(int r, int t, int k) {
  return (float)((r * TOKENS + t) % 65536) + (float)k / HIDDEN;
}

#define TRY(call)                                                                                  \
  do {                                                                                             \
    duet_status_t st_ = (call);                                                                    \
    if (st_ != DUET_SUCCESS) {                                                                     \
      fprintf(stderr, "%s: %s: %s\n", #call, duet_strerror(st_), duet_last_error(comm));           \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

int main(void) {
  duet_comm_t *comm = NULL;
  int rank, size;
  long wrong = 0;
  size_t *scount, *sdispl, *rcount, *rdispl, *fill, total = 0;
  float *send = NULL, *recv = NULL;

  TRY(duet_comm_init_env(&comm, NULL));
  duet_comm_rank(comm, &rank);
  duet_comm_size(comm, &size);
  scount = calloc((size_t)size * 5, sizeof(size_t));
  if (scount == NULL)
    return 1;
  sdispl = scount + size;
  rcount = sdispl + size;
  rdispl = rcount + size;
  fill = rdispl + size;

  /* 1. Route: count the tokens per expert, lay them out expert by expert. */
  for (int t = 0; t < TOKENS; t++)
    scount[expert_of(rank, t, size)] += HIDDEN;
  for (int e = 1; e < size; e++)
    sdispl[e] = sdispl[e - 1] + scount[e - 1];
  TRY(duet_mem_alloc((void **)&send, sizeof(float) * TOKENS * HIDDEN));
  for (int t = 0; t < TOKENS; t++) {
    int e = expert_of(rank, t, size);
    for (int k = 0; k < HIDDEN; k++)
      send[sdispl[e] + fill[e] + (size_t)k] = value_of(rank, t, k);
    fill[e] += HIDDEN;
  }

  /* 2. Every expert learns how much comes from each rank. */
  TRY(duet_alltoall(scount, rcount, 1, DUET_UINT64, comm));
  for (int r = 0; r < size; r++) {
    rdispl[r] = total;
    total += rcount[r];
  }

  /* 3. Dispatch. */
  TRY(duet_mem_alloc((void **)&recv, sizeof(float) * (total > 0 ? total : 1)));
  TRY(duet_alltoallv(send, scount, sdispl, recv, rcount, rdispl, DUET_FLOAT32, comm));

  /* 4. This expert checks every token it got, in its senders' order. */
  for (int r = 0; r < size; r++) {
    size_t at = rdispl[r];
    for (int t = 0; t < TOKENS; t++) {
      if (expert_of(r, t, size) != rank)
        continue;
      for (int k = 0; k < HIDDEN; k++)
        wrong += recv[at + (size_t)k] != value_of(r, t, k);
      at += HIDDEN;
    }
    if (at != rdispl[r] + rcount[r])
      wrong++;
  }
  printf("expert %d of %d: %zu tokens received %s\n", rank, size, total / HIDDEN,
         wrong ? "WRONG" : "OK");

  TRY(duet_mem_free(send));
  TRY(duet_mem_free(recv));
  free(scount);
  TRY(duet_comm_destroy(comm));
  return wrong != 0;
}
