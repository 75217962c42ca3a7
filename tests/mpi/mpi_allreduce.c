/*
 * mpi_allreduce.c - duet_allreduce against MPI_Allreduce (or a serial
 * reference for float16/bfloat16/float8 and 8-bit integers), every datatype x
 * op, several counts, in place and out of place.
 *
 *   mpirun -np 4 tests/mpi/mpi_allreduce [-a ring|rd|auto] [-q] [-t types] [-o ops]
 *                                        [-c counts] [-m all|mixed] [-v]
 *
 * -m takes sendbuf and recvbuf from duet_mem_alloc (192 bytes into each
 * allocation), on every rank (all: on one host the load/store path reads
 * the peers' send buffers in place) or on every rank but rank 0 (mixed: the
 * ranks must all fall back to copying).
 *
 * Every element is compared bitwise; the 64 bytes after recvbuf must stay
 * untouched and sendbuf must be unchanged. One line per datatype x op on rank
 * 0; the exit status is non-zero on any mismatch.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpi_common.h"

#define MAX_COUNTS 32

static const size_t full_counts[] = {0, 1, 7, 1023, 1048579};
static const size_t quick_counts[] = {0, 1, 7, 1023, 65537};

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [-a ring|rd|auto] [-q] [-t type,...] [-o op,...] [-c count,...] [-s seed] "
          "[-v]\n"
          "  -a  allreduce algorithm (sets DUET_ALGO=allreduce=<algo>; auto leaves it unset)\n"
          "  -q  quick counts {0,1,7,1023,65537} (default {0,1,7,1023,1048579})\n"
          "  -t  datatypes (int8 uint8 int32 uint32 int64 uint64 float16 bfloat16 float32\n"
          "      float64 float8e4m3 float8e5m2; default all)\n"
          "  -o  ops (sum prod min max avg; default all)\n"
          "  -c  counts, with K/M suffixes (overrides -q)\n"
          "  -m  buffers from duet_mem_alloc: all ranks, or all but rank 0 (mixed)\n"
          "  -v  one line per count and placement\n",
          prog);
}

/* A comma-separated list of names -> mask of table indices; 0 if a name is bad. */
static unsigned parse_mask(const char *s, int (*parse)(const char *)) {
  unsigned mask = 0;
  char *copy = strdup(s), *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int v = strcmp(tok, "all") == 0 ? -2 : parse(tok);
    if (v == -1) {
      mask = 0;
      break;
    }
    mask |= v == -2 ? ~0u : 1u << v;
  }
  free(copy);
  return mask;
}

typedef struct {
  int rank, size, verbose;
  duet_comm_t *comm;
  unsigned char *send, *send_copy, *recv, *ref;
} ctx_t;

/* One count, out of place then in place. Returns this rank's error count. */
static long run_one(ctx_t *c, duet_datatype_t dt, duet_op_t op, size_t count, uint64_t seed) {
  const mt_dtype_t *t = mt_dtype(dt);
  size_t bytes = count * t->size;
  long errs = 0;
  char what[128];

  mt_fill_input(c->send, count, dt, op, c->rank, c->size, seed);
  memcpy(c->send_copy, c->send, bytes);
  mt_reference(c->send, c->ref, count, dt, op, MPI_COMM_WORLD);

  /* out of place: recvbuf starts as a canary, guard after it */
  snprintf(what, sizeof what, "%s/%s count %zu out-of-place", t->name, mt_op_name(op), count);
  memset(c->recv, 0x5A, bytes);
  mt_guard_fill(c->recv + bytes);
  mt_guard_fill(c->send + bytes);
  CHECK(c->comm, duet_allreduce(c->send, c->recv, count, dt, op, c->comm));
  errs += (long)mt_compare(c->recv, c->ref, count, dt, c->rank, what);
  errs += mt_guard_check(c->recv + bytes, c->rank, what);
  if (memcmp(c->send, c->send_copy, bytes) != 0 || mt_guard_check(c->send + bytes, c->rank, what)) {
    fprintf(stderr, "[rank %d] %s: sendbuf was modified\n", c->rank, what);
    errs++;
  }
  if (c->verbose && c->rank == 0)
    printf("#   %s\n", what);

  /* in place: the input is in recvbuf */
  snprintf(what, sizeof what, "%s/%s count %zu in-place", t->name, mt_op_name(op), count);
  memcpy(c->recv, c->send_copy, bytes);
  mt_guard_fill(c->recv + bytes);
  CHECK(c->comm, duet_allreduce(c->recv, c->recv, count, dt, op, c->comm));
  errs += (long)mt_compare(c->recv, c->ref, count, dt, c->rank, what);
  errs += mt_guard_check(c->recv + bytes, c->rank, what);
  if (c->verbose && c->rank == 0)
    printf("#   %s\n", what);
  return errs;
}

int main(int argc, char **argv) {
  ctx_t c = {0};
  const char *algo = NULL, *err = NULL;
  unsigned tmask = ~0u, omask = ~0u;
  size_t counts[MAX_COUNTS];
  int ncounts = 5, opt;
  uint64_t seed = 1;

  mt_init_mpi(&argc, &argv, &c.rank, &c.size);
  memcpy(counts, full_counts, sizeof full_counts);
  int mem = 0; /* 1: all ranks' buffers from duet_mem_alloc; 2: all but rank 0's */
  while (!err && (opt = getopt(argc, argv, "a:qt:o:c:s:m:vh")) != -1) {
    switch (opt) {
    case 'a':
      if (strcmp(optarg, "ring") && strcmp(optarg, "rd") && strcmp(optarg, "auto"))
        err = "-a takes ring, rd or auto";
      algo = optarg;
      break;
    case 'q':
      if (ncounts == 5 && memcmp(counts, full_counts, sizeof full_counts) == 0)
        memcpy(counts, quick_counts, sizeof quick_counts);
      break;
    case 't':
      if (!(tmask = parse_mask(optarg, mt_dtype_parse)))
        err = "bad -t datatype list";
      break;
    case 'o':
      if (!(omask = parse_mask(optarg, mt_op_parse)))
        err = "bad -o op list";
      break;
    case 'c':
      if ((ncounts = mt_parse_counts(optarg, counts, MAX_COUNTS)) <= 0)
        err = "bad -c count list";
      break;
    case 's':
      seed = strtoull(optarg, NULL, 0);
      break;
    case 'm':
      mem = strcmp(optarg, "all") == 0 ? 1 : strcmp(optarg, "mixed") == 0 ? 2 : 0;
      if (!mem)
        err = "-m: all or mixed";
      break;
    case 'v':
      c.verbose = 1;
      break;
    case 'h':
      if (c.rank == 0)
        usage(argv[0]);
      MPI_Finalize();
      return 0;
    default:
      err = "unknown option";
    }
  }
  if (err) {
    if (c.rank == 0) {
      fprintf(stderr, "mpi_allreduce: %s\n", err);
      usage(argv[0]);
    }
    MPI_Finalize();
    return 2;
  }

  /* DUET_ALGO is read when the communicator is created */
  if (algo && strcmp(algo, "auto") != 0) {
    char val[64];
    snprintf(val, sizeof val, "allreduce=%s", algo);
    setenv("DUET_ALGO", val, 1);
  } else if (algo) {
    unsetenv("DUET_ALGO");
  }
  c.comm = mt_init_duet(c.rank, c.size);

  size_t maxcount = 0;
  for (int i = 0; i < ncounts; i++)
    if (counts[i] > maxcount)
      maxcount = counts[i];
  size_t maxbytes = maxcount * 8 + MT_GUARD;
  void *mem_send = NULL, *mem_recv = NULL;
  if (mem == 1 || (mem == 2 && c.rank != 0)) {
    CHECK(c.comm, duet_mem_alloc(&mem_send, maxbytes + 192));
    CHECK(c.comm, duet_mem_alloc(&mem_recv, maxbytes + 192));
    c.send = (unsigned char *)mem_send + 192;
    c.recv = (unsigned char *)mem_recv + 192;
  } else {
    c.send = mt_xmalloc(maxbytes);
    c.recv = mt_xmalloc(maxbytes);
  }
  c.send_copy = mt_xmalloc(maxbytes);
  c.ref = mt_xmalloc(maxbytes);

  const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
  if (c.rank == 0) {
    printf("# mpi_allreduce: %d ranks, algo %s, DUET_UPN_PROVIDER=%s DUET_HPN_PROVIDER=%s, "
           "buffers %s, counts",
           c.size, getenv("DUET_ALGO") ? getenv("DUET_ALGO") : "(auto)", upn ? upn : "(default)",
           hpn ? hpn : "(default)",
           mem == 1   ? "duet_mem_alloc"
           : mem == 2 ? "duet_mem_alloc but rank 0's"
                      : "malloc");
    for (int i = 0; i < ncounts; i++)
      printf("%s%zu", i ? "," : " ", counts[i]);
    printf("\n");
    fflush(stdout);
  }

  long total_fail = 0;
  int configs = 0;
  for (int d = 0; d < DUET_NUM_DATATYPES; d++) {
    if (!(tmask & (1u << d)))
      continue;
    for (int o = 0; o < DUET_NUM_OPS; o++) {
      if (!(omask & (1u << o)))
        continue;
      double t0 = MPI_Wtime();
      long errs = 0, all = 0;
      for (int i = 0; i < ncounts; i++)
        errs += run_one(&c, (duet_datatype_t)d, (duet_op_t)o, counts[i], seed + (uint64_t)i);
      MPI_Allreduce(&errs, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
      double dt = MPI_Wtime() - t0;
      configs++;
      if (all)
        total_fail++;
      if (c.rank == 0) {
        printf("allreduce np=%d algo=%s %-10s %-4s out-of-place+in-place %d counts: %s", c.size,
               algo ? algo : "auto", mt_dtype((duet_datatype_t)d)->name, mt_op_name((duet_op_t)o),
               ncounts, all ? "FAILED" : "OK");
        if (all)
          printf(" (%ld wrong)", all);
        printf(" %.2fs\n", dt);
        fflush(stdout);
      }
    }
  }

  if (mem_send != NULL) {
    CHECK(c.comm, duet_mem_free(mem_send));
    CHECK(c.comm, duet_mem_free(mem_recv));
  } else {
    free(c.send);
    free(c.recv);
  }
  CHECK(c.comm, duet_comm_destroy(c.comm));
  free(c.send_copy);
  free(c.ref);
  if (c.rank == 0) {
    printf("# mpi_allreduce: %d configurations, %ld failed\n", configs, total_fail);
    fflush(stdout);
  }
  MPI_Finalize();
  return total_fail ? 1 : 0;
}
