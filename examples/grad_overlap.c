/*
 * grad_overlap.c - data-parallel gradients reduced while the backward pass
 * still runs, as training frameworks do: each bucket of gradients is handed
 * to duet_iallreduce as soon as it is ready, the next buckets are computed
 * meanwhile, and the step waits for all of them at the end. The progress
 * thread (config.progress_thread = 1, or DUET_PROGRESS_THREAD=1) moves the
 * posted allreduces while the rank computes; without it they would move only
 * at the final waits. Every gradient is checked against its known mean.
 *
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=0 ./grad_overlap &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=1 ./grad_overlap &
 *   DUET_ROOT=127.0.0.1:29500 DUET_SIZE=3 DUET_RANK=2 ./grad_overlap
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <duet.h>

#define BUCKETS 8
#define BUCKET_FLOATS (256 * 1024) /* 1 MiB of float32 per bucket */
#define STEPS 3

#define TRY(call)                                                                                  \
  do {                                                                                             \
    duet_status_t st_ = (call);                                                                    \
    if (st_ != DUET_SUCCESS) {                                                                     \
      fprintf(stderr, "%s: %s: %s\n", #call, duet_strerror(st_), duet_last_error(comm));           \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "Backward" for one bucket: the gradient of rank r, step s, element i is
 * exact in float32, so the mean over ranks is known exactly. */
static void backward(float *g, int rank, int step, int bucket) {
  for (int i = 0; i < BUCKET_FLOATS; i++)
    g[i] = (float)((rank + 1) * 4 + step * 2 + (bucket + i) % 64);
}

int main(void) {
  duet_comm_t *comm = NULL;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_request_t *req[BUCKETS];
  float *grad;
  int rank, size;
  long wrong = 0;
  double compute = 0, waits = 0;

  cfg.progress_thread = 1;
  TRY(duet_comm_init_env(&comm, &cfg));
  duet_comm_rank(comm, &rank);
  duet_comm_size(comm, &size);
  grad = malloc(sizeof(float) * BUCKETS * BUCKET_FLOATS);
  if (grad == NULL)
    return 1;

  for (int step = 0; step < STEPS; step++) {
    double t0 = now_s(), t1;
    for (int b = BUCKETS - 1; b >= 0; b--) { /* backward runs from the last layer */
      float *g = grad + (size_t)b * BUCKET_FLOATS;
      backward(g, rank, step, b);
      TRY(duet_iallreduce(g, g, BUCKET_FLOATS, DUET_FLOAT32, DUET_AVG, comm, &req[b]));
    }
    t1 = now_s();
    for (int b = BUCKETS - 1; b >= 0; b--)
      TRY(duet_wait(req[b]));
    compute += t1 - t0;
    waits += now_s() - t1;
    /* The mean over ranks of (r + 1) * 4 + ...: (size + 1) * 2 + ... */
    for (int b = 0; b < BUCKETS; b++)
      for (int i = 0; i < BUCKET_FLOATS; i++) {
        float want = (float)((size + 1) * 2 + step * 2 + (b + i) % 64);
        wrong += grad[(size_t)b * BUCKET_FLOATS + i] != want;
      }
  }
  printf("rank %d: %d steps of %d x 1 MiB buckets: backward %.2f ms per step with the "
         "allreduces in flight, then %.2f ms waiting for them; %ld wrong\n",
         rank, STEPS, BUCKETS, compute / STEPS * 1e3, waits / STEPS * 1e3, wrong);
  free(grad);
  TRY(duet_comm_destroy(comm));
  return wrong != 0;
}
