/*
 * mpi_perf.c - the duet_perf benchmark, run on the MPI library itself
 * (MPI_Allreduce / MPI_Alltoall), for perf/compare.sh when duet_perf has no
 * --compare mpi. An OSU-like loop with duet_perf's flags and columns:
 *
 *   mpirun -np 4 perf/mpi_perf -b 8 -e 64M -f 4 -o allreduce|alltoall
 *
 * Columns: size count type redop, then time (us), algbw (GB/s), busbw (GB/s)
 * and #wrong out of place, then in place (MPI_IN_PLACE). Time is the average
 * per iteration of the timed loop, averaged over the ranks; algbw = size /
 * time; busbw = algbw * 2(n-1)/n (allreduce) or (n-1)/n (alltoall, where
 * size is the bytes each rank sends, rounded down to a multiple of n
 * elements). float32 sum only; #wrong counts, over all ranks, the elements of
 * one more call on duet_perf's known inputs that differ from the closed-form
 * expected result.
 *
 * Build: mpicc -O2 perf/mpi_perf.c -o perf/mpi_perf
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ALLREDUCE, ALLTOALL };

typedef struct {
  size_t minbytes, maxbytes, stepbytes;
  double stepfactor;
  int iters, warmup, check, coll;
} opts_t;

static int rank, nranks;
static opts_t o = {8, 32u << 20, 1u << 20, 2.0, 20, 5, 1, ALLREDUCE};
static float *sendb, *recvb;

static int parse_bytes(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end), mul = 1;
  if (end == s || v < 0)
    return -1;
  if (*end == 'K' || *end == 'k')
    mul = 1024.0, end++;
  else if (*end == 'M' || *end == 'm')
    mul = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g')
    mul = 1024.0 * 1024 * 1024, end++;
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end)
    return -1;
  *out = (size_t)(v * mul);
  return 0;
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [options]\n"
          "  -C <coll>    collective: allreduce alltoall (default allreduce)\n"
          "  -b <bytes>   minimum size, K/M/G suffixes (default 8)\n"
          "  -e <bytes>   maximum size (default 32M)\n"
          "  -f <factor>  multiply the size by this each step (default 2)\n"
          "  -i <bytes>   add this to the size each step instead (when -f is 1)\n"
          "  -n <iters>   timed iterations per size (default 20)\n"
          "  -w <iters>   warmup iterations (default 5)\n"
          "  -c <0|1>     check results (default 1)\n"
          "  -d <type>    float32 only\n"
          "  -o <op>      sum, or a collective name (-o allreduce, -o alltoall) as -C\n"
          "  -h           this help\n"
          "Time is averaged over ranks; busbw = algbw * 2(n-1)/n (allreduce) or (n-1)/n\n"
          "(alltoall, size = bytes each rank sends, rounded down to a multiple of n elements).\n",
          prog);
}

static const char *parse_opts(int argc, char **argv) {
  int opt;
  while ((opt = getopt(argc, argv, "C:b:e:f:i:n:w:c:d:o:h")) != -1) {
    switch (opt) {
    case 'C':
    case 'o':
      if (strcmp(optarg, "allreduce") == 0)
        o.coll = ALLREDUCE;
      else if (strcmp(optarg, "alltoall") == 0)
        o.coll = ALLTOALL;
      else if (!(opt == 'o' && strcmp(optarg, "sum") == 0))
        return opt == 'C' ? "unknown collective (-C): allreduce or alltoall"
                          : "only -o sum (or a collective name) is supported";
      break;
    case 'b':
      if (parse_bytes(optarg, &o.minbytes))
        return "bad -b size";
      break;
    case 'e':
      if (parse_bytes(optarg, &o.maxbytes))
        return "bad -e size";
      break;
    case 'i':
      if (parse_bytes(optarg, &o.stepbytes) || o.stepbytes == 0)
        return "bad -i size";
      o.stepfactor = 1;
      break;
    case 'f':
      if ((o.stepfactor = atof(optarg)) < 1)
        return "-f must be >= 1";
      break;
    case 'n':
      if ((o.iters = atoi(optarg)) < 1)
        return "-n must be >= 1";
      break;
    case 'w':
      if ((o.warmup = atoi(optarg)) < 0)
        return "-w must be >= 0";
      break;
    case 'c':
      o.check = atoi(optarg) != 0;
      break;
    case 'd':
      if (strcmp(optarg, "float32") && strcmp(optarg, "float") && strcmp(optarg, "fp32"))
        return "only -d float32 is supported";
      break;
    case 'h':
      return "";
    default:
      return "unknown option";
    }
  }
  if (o.minbytes > o.maxbytes)
    return "-b is larger than -e";
  return NULL;
}

/* duet_perf's inputs for float32 sum: every partial sum is an exact integer */
static double ar_input(int r, size_t i, int n) {
  if (3.0 * n * (n + 1) / 2 <= 16777216.0)
    return (double)(r + 1) * (double)(i % 3 + 1);
  return r < 16777216 ? (double)((r + i) % 2) : 0;
}
static float ar_expected(size_t i, int n) {
  double acc = 0;
  for (int r = 0; r < n; r++)
    acc += ar_input(r, i, n);
  return (float)acc;
}
static float a2a_value(int src, int dst, size_t i) {
  return (float)(((uint64_t)src * 7 + (uint64_t)dst * 3 + i) % 251);
}

static void fill(float *buf, size_t count) {
  if (o.coll == ALLREDUCE) {
    for (size_t i = 0; i < count; i++)
      buf[i] = (float)ar_input(rank, i, nranks);
  } else {
    size_t blk = count / (size_t)nranks;
    for (int k = 0; k < nranks; k++)
      for (size_t i = 0; i < blk; i++)
        buf[(size_t)k * blk + i] = a2a_value(rank, k, i);
  }
}

static long count_wrong(const float *buf, size_t count) {
  long wrong = 0;
  if (o.coll == ALLREDUCE) {
    int periodic = 3.0 * nranks * (nranks + 1) / 2 <= 16777216.0;
    float want[3] = {ar_expected(0, nranks), ar_expected(1, nranks), ar_expected(2, nranks)};
    for (size_t i = 0; i < count; i++) {
      float w = periodic ? want[i % 3] : ar_expected(i, nranks);
      wrong += memcmp(&buf[i], &w, sizeof w) != 0;
    }
  } else {
    size_t blk = count / (size_t)nranks;
    for (int k = 0; k < nranks; k++)
      for (size_t i = 0; i < blk; i++) {
        float w = a2a_value(k, rank, i);
        wrong += memcmp(&buf[(size_t)k * blk + i], &w, sizeof w) != 0;
      }
  }
  return wrong;
}

static void run(size_t count, int in_place) {
  const void *s = in_place ? MPI_IN_PLACE : (const void *)sendb;
  int rc;
  if (o.coll == ALLREDUCE)
    rc = MPI_Allreduce(s, recvb, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  else /* in place: MPI ignores the send count and type */
    rc = MPI_Alltoall(s, (int)(count / (size_t)nranks), MPI_FLOAT, recvb,
                      (int)(count / (size_t)nranks), MPI_FLOAT, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS)
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static double time_one(size_t count, int in_place, long *wrong) {
  float *src = in_place ? recvb : sendb;
  fill(src, count);
  for (int i = 0; i < o.warmup; i++)
    run(count, in_place);
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < o.iters; i++)
    run(count, in_place);
  double sec = (MPI_Wtime() - t0) / o.iters, avg = 0;
  MPI_Allreduce(&sec, &avg, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  *wrong = -1;
  if (o.check) {
    fill(src, count);
    if (!in_place)
      memset(recvb, 0, count * sizeof(float));
    run(count, in_place);
    long mine = count_wrong(recvb, count);
    MPI_Allreduce(&mine, wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  }
  return avg / nranks;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  const char *err = parse_opts(argc, argv);
  if (err) {
    if (rank == 0) {
      if (*err)
        fprintf(stderr, "mpi_perf: %s\n", err);
      usage(argv[0]);
    }
    MPI_Finalize();
    return *err ? 2 : 0;
  }
  size_t maxcount = o.maxbytes / sizeof(float) ? o.maxbytes / sizeof(float) : 1;
  if (maxcount < (size_t)nranks)
    maxcount = (size_t)nranks;
  if (maxcount > (size_t)INT32_MAX) {
    if (rank == 0)
      fprintf(stderr, "mpi_perf: -e too large for an int count\n");
    MPI_Finalize();
    return 2;
  }
  sendb = calloc(maxcount + 2, sizeof(float));
  recvb = calloc(maxcount + 2, sizeof(float));
  if (!sendb || !recvb) {
    fprintf(stderr, "[rank %d] out of memory\n", rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  memset(sendb, 0, (maxcount + 2) * sizeof(float)); /* touched now */
  memset(recvb, 0, (maxcount + 2) * sizeof(float));

  const char *name = o.coll == ALLREDUCE ? "allreduce" : "alltoall";
  double factor = nranks > 1 ? (o.coll == ALLREDUCE ? 2.0 * (nranks - 1) / nranks
                                                    : (double)(nranks - 1) / nranks)
                             : 0;
  if (rank == 0) {
    char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
    int len = 0;
    MPI_Get_library_version(lib, &len);
    char *nl = strchr(lib, '\n');
    if (nl)
      *nl = 0;
    printf("# mpi_perf: MPI_%c%s, %d ranks, %s\n", name[0] - 32, name + 1, nranks, lib);
    printf("#  minBytes %zu maxBytes %zu step: ", o.minbytes, o.maxbytes);
    if (o.stepfactor > 1)
      printf("%g(factor)", o.stepfactor);
    else
      printf("%zu(bytes)", o.stepbytes);
    printf(" warmup iters: %d iters: %d validation: %d\n#\n", o.warmup, o.iters, o.check);
    printf("# %10s  %12s  %10s  %6s", "", "", "", "");
    for (int ip = 0; ip < 2; ip++)
      printf("  %*s%-*s", 12, "", 23, ip ? "  in-place" : "out-of-place");
    printf("\n# %10s  %12s  %10s  %6s", "size", "count", "type", "redop");
    for (int ip = 0; ip < 2; ip++)
      printf("  %9s  %7s  %7s  %6s", "time", "algbw", "busbw", "#wrong");
    printf("\n# %10s  %12s  %10s  %6s", "(B)", "(elements)", "", "");
    for (int ip = 0; ip < 2; ip++)
      printf("  %9s  %7s  %7s  %6s", "(us)", "(GB/s)", "(GB/s)", "");
    printf("\n");
    fflush(stdout);
  }

  long wrong_total = 0, bw_count = 0;
  double bw_sum = 0;
  size_t last_count = 0;
  for (size_t size = o.minbytes; size <= o.maxbytes;) {
    size_t count = size / sizeof(float) ? size / sizeof(float) : 1;
    if (o.coll == ALLTOALL) {
      count -= count % (size_t)nranks;
      if (count < (size_t)nranks)
        count = (size_t)nranks;
    }
    size_t bytes = count * sizeof(float);
    if (count != last_count) {
      long wrong[2];
      double sec[2];
      for (int ip = 0; ip < 2; ip++)
        sec[ip] = time_one(count, ip, &wrong[ip]);
      if (rank == 0) {
        printf("%12zu  %12zu  %10s  %6s", bytes, count, "float32",
               o.coll == ALLREDUCE ? "sum" : "none");
        for (int ip = 0; ip < 2; ip++) {
          double algbw = (double)bytes / sec[ip] / 1e9, busbw = algbw * factor;
          char nwrong[24] = "N/A";
          if (wrong[ip] >= 0)
            snprintf(nwrong, sizeof nwrong, "%ld", wrong[ip]);
          printf("  %9.2f  %7.2f  %7.2f  %6s", sec[ip] * 1e6, algbw, busbw, nwrong);
          bw_sum += busbw;
          bw_count++;
        }
        printf("\n");
        fflush(stdout);
      }
      for (int ip = 0; ip < 2; ip++)
        if (wrong[ip] > 0)
          wrong_total += wrong[ip];
      last_count = count;
    }
    size_t next = o.stepfactor > 1 ? (size_t)((double)size * o.stepfactor) : size + o.stepbytes;
    if (next <= size)
      break;
    size = next;
  }
  free(sendb);
  free(recvb);
  if (rank == 0) {
    printf("# Out of bounds values : %ld %s\n", wrong_total, wrong_total ? "FAILED" : "OK");
    printf("# Avg bus bandwidth : %g\n#\n", bw_count ? bw_sum / (double)bw_count : 0.0);
  }
  MPI_Finalize();
  return wrong_total ? 1 : 0;
}
