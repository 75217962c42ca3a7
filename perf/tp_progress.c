/*
 * tp_progress.c - what one progress call of a transport costs when it has
 * many peers that never write: one endpoint (the hub) with a receive posted
 * from every peer, as the HPN planes keep a notice receive posted for every
 * peer and plane. The cost should follow the peers the hub talks to (here
 * none), not the job's size.
 *
 *   tp_progress -t tcp -n 1000      duet's tcp: peers with addresses that
 *                                   nothing listens on (nothing connects)
 *   tp_progress -t planes -n 1000   two HPN planes over duet's tcp (loopback
 *                                   127.0.0.1 and 127.0.0.77): n real peer
 *                                   endpoints in this process, idle
 *
 * Prints the mean time per call over -i calls (default 200,000 for tcp,
 * 20,000 for planes), after 1,000 untimed ones. Linked against the
 * library's internal code (libduet_core); one process, loopback only.
 *
 * Exit status: 0; 1 when an endpoint cannot be opened (the message says
 * why); 2 for a bad command line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "tcp/tcp.h"
#include "transport.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void usage(void) {
  fprintf(stderr, "usage: tp_progress -t tcp|planes [-n peers] [-i calls]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *kind = NULL;
  int n = 1000, iters = 0, opt, planes;
  char err[DUET_TP_ERRLEN] = "";
  const duet__tp_ops_t *ops;
  duet__tp_params_t params = {.provider = "tcp"};
  duet__tp_ep_t **eps;
  unsigned char *addrs;
  size_t *lens;
  duet__tp_req_t *reqs;
  uint64_t *sink;
  struct rlimit rl;
  double t;

  while ((opt = getopt(argc, argv, "t:n:i:")) != -1) {
    if (opt == 't')
      kind = optarg;
    else if (opt == 'n')
      n = atoi(optarg);
    else if (opt == 'i')
      iters = atoi(optarg);
    else
      usage();
  }
  if (!kind || (strcmp(kind, "tcp") != 0 && strcmp(kind, "planes") != 0) || n < 1 ||
      n > 100000 || iters < 0)
    usage();
  planes = strcmp(kind, "planes") == 0;
  ops = planes ? &duet__tp_planes : &duet__tp_tcp;
  params.iface = planes ? "127.0.0.1,127.0.0.77" : "lo";
  if (iters == 0)
    iters = planes ? 20000 : 200000;
  /* planes: two listeners per endpoint, n + 1 endpoints */
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  eps = calloc((size_t)n + 1, sizeof *eps);
  addrs = calloc((size_t)n + 1, DUET_TP_ADDR_MAX);
  lens = calloc((size_t)n + 1, sizeof *lens);
  reqs = calloc((size_t)n + 1, sizeof *reqs);
  sink = calloc((size_t)n + 1, sizeof *sink);
  if (!eps || !addrs || !lens || !reqs || !sink) {
    fprintf(stderr, "tp_progress: out of memory for %d peers\n", n);
    return 1;
  }
  for (int k = 0; k <= (planes ? n : 0); k++)
    if (ops->open(&params, &eps[k], err) != DUET_SUCCESS ||
        ops->get_addr(eps[k], addrs + (size_t)k * DUET_TP_ADDR_MAX, &lens[k], err) !=
            DUET_SUCCESS) {
      fprintf(stderr, "tp_progress: endpoint %d: %s\n", k, err);
      return 1;
    }
  if (!planes) /* the hub's address under other tokens: peers nobody serves */
    for (int k = 1; k <= n; k++) {
      tcp_addr_t *a = (tcp_addr_t *)(void *)(addrs + (size_t)k * DUET_TP_ADDR_MAX);
      memcpy(a, addrs, lens[0]);
      a->token[0] ^= (uint64_t)k;
      lens[k] = lens[0];
    }
  if (ops->insert_peers(eps[0], n + 1, addrs, DUET_TP_ADDR_MAX, lens, err) != DUET_SUCCESS) {
    fprintf(stderr, "tp_progress: insert_peers: %s\n", err);
    return 1;
  }
  for (int k = 1; !planes && k <= n; k++) /* planes post their own notice receives */
    if (ops->irecv(eps[0], k, &sink[k], sizeof sink[k], 1, &reqs[k], err) != DUET_SUCCESS) {
      fprintf(stderr, "tp_progress: irecv: %s\n", err);
      return 1;
    }
  for (int i = 0; i < 1000; i++)
    (void)ops->progress(eps[0], err);
  t = now();
  for (int i = 0; i < iters; i++)
    (void)ops->progress(eps[0], err);
  t = now() - t;
  printf("%s: %d peers that never write: %.3f us per progress call (%d calls)\n", kind, n,
         t / iters * 1e6, iters);
  for (int k = 0; k <= (planes ? n : 0); k++)
    ops->close(eps[k]);
  free(eps);
  free(addrs);
  free(lens);
  free(reqs);
  free(sink);
  return 0;
}
