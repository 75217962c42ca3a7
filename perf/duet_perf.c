/*
 * duet_perf.c - nccl-tests style benchmark of every duet collective.
 *
 *   mpirun -np 4 perf/duet_perf -C allreduce -b 8 -e 64M -f 2 -d float32 -o sum
 *
 * MPI launches the ranks, hands out the duet unique id and gathers the
 * timings and error counts for the report; the timed work is pure duet
 * (and, with --compare mpi, MPI's own collective, timed separately).
 *
 * Columns, out of place then in place: time is the mean time per iteration
 * of the timed loop (-n calls after -w warmup calls and a barrier), averaged
 * over ranks; with --rounds R > 1 the loop runs R times and time is the
 * median of the R loop means. algbw = size / time and busbw = algbw * the
 * collective's bus factor, as in nccl-tests' doc/PERFORMANCE.md:
 *
 *   collective      size column (bytes)                   bus factor
 *   allreduce       the buffer                            2(n-1)/n
 *   allgather       the gathered buffer: n x per-rank     (n-1)/n
 *   reduce_scatter  the input buffer: n x per-rank        (n-1)/n
 *   reduce          the buffer                            1
 *   broadcast       the buffer                            1
 *   alltoall(v)     what each rank sends in total         (n-1)/n
 *   barrier         none (one row, time only)             -
 *
 * allgather, reduce_scatter and alltoall round the element count down to a
 * multiple of n (at least n). In place follows NCCL: allgather sends from
 * this rank's block of recvbuf, reduce_scatter leaves its block at
 * recvbuf + rank*recvcount, the others pass sendbuf == recvbuf; alltoallv
 * and barrier have no in-place form (N/A columns).
 *
 * With -c 1 each size is then run once more on a known input and #wrong
 * counts the elements, over all ranks, that differ from the exact expected
 * result, computed locally without communication.
 *
 * --compare mpi: for each size and placement, the same buffers are timed
 * with duet's call and with MPI's equivalent (MPI_Allreduce, MPI_Allgather,
 * MPI_Reduce_scatter_block, MPI_Reduce, MPI_Bcast, MPI_Alltoall,
 * MPI_Alltoallv, MPI_Barrier; MPI_IN_PLACE in place), interleaved: each of
 * the --rounds rounds (default 3 here) times one duet loop, then one MPI
 * loop, and each library's time is the median of its round means.
 * mpi_time and ratio = mpi_time / time (> 1: duet faster) are added.
 *
 * --nonblocking times the non-blocking forms instead: duet_i<coll> then
 * duet_wait (and MPI_I<coll> then MPI_Wait), each call waited before the
 * next, so the time is a call's latency through the request path.
 *
 * --overlap US times the non-blocking forms with US microseconds of
 * computation between the post and the wait, as OSU's non-blocking
 * benchmarks do: time is then the whole call, at best max(US, the call
 * alone). A library overlaps only where its call moves while the caller
 * computes: duet with DUET_PROGRESS_THREAD=1. The computation spins (CPU
 * work holding its core); --overlap-sleep US sleeps instead (a rank waiting
 * for an accelerator or for I/O, its core free). Where moving the data is
 * itself CPU work (loopback tcp, shared memory) and every core computes,
 * nothing can overlap: the copies need the same cores.
 *
 * --barrier times each call alone after an MPI_Barrier, as OSU's
 * benchmarks do: time is the mean of the -n single-call times. The ranks
 * start each call together, so a call's time holds none of the previous
 * call's skew, and a library cannot overlap one call with the next.
 *
 * --mem-alloc takes both buffers from duet_mem_alloc (memory the host's
 * ranks can share, as nccl-tests' buffers from ncclMemAlloc), so the
 * all-to-all can copy once on the load/store path. MPI uses the same buffers.
 *
 * --format csv|json prints the same numbers for programs (rank 0 only).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "duet.h"

/* ---- datatypes: size, name and, for the narrow floats, the format ---- */
typedef struct {
  duet_datatype_t dt;
  size_t size;
  const char *name;
  int is_float, is_signed;
  int ebits, mbits, bias, has_inf; /* narrow floats only (mbits > 0) */
} dtype_t;

static const dtype_t dtypes[DUET_NUM_DATATYPES] = {
    {DUET_INT8, 1, "int8", 0, 1, 0, 0, 0, 0},
    {DUET_UINT8, 1, "uint8", 0, 0, 0, 0, 0, 0},
    {DUET_INT32, 4, "int32", 0, 1, 0, 0, 0, 0},
    {DUET_UINT32, 4, "uint32", 0, 0, 0, 0, 0, 0},
    {DUET_INT64, 8, "int64", 0, 1, 0, 0, 0, 0},
    {DUET_UINT64, 8, "uint64", 0, 0, 0, 0, 0, 0},
    {DUET_FLOAT16, 2, "float16", 1, 1, 5, 10, 15, 1},
    {DUET_BFLOAT16, 2, "bfloat16", 1, 1, 8, 7, 127, 1},
    {DUET_FLOAT32, 4, "float32", 1, 1, 0, 0, 0, 0},
    {DUET_FLOAT64, 8, "float64", 1, 1, 0, 0, 0, 0},
    {DUET_FLOAT8_E4M3, 1, "float8e4m3", 1, 1, 4, 3, 7, 0},
    {DUET_FLOAT8_E5M2, 1, "float8e5m2", 1, 1, 5, 2, 15, 1},
};
/* nccl-tests' names and other common spellings */
static const struct {
  const char *alias;
  duet_datatype_t dt;
} dt_aliases[] = {
    {"half", DUET_FLOAT16},         {"fp16", DUET_FLOAT16},         {"bf16", DUET_BFLOAT16},
    {"float", DUET_FLOAT32},        {"fp32", DUET_FLOAT32},         {"double", DUET_FLOAT64},
    {"fp64", DUET_FLOAT64},         {"fp8_e4m3", DUET_FLOAT8_E4M3}, {"e4m3", DUET_FLOAT8_E4M3},
    {"fp8_e5m2", DUET_FLOAT8_E5M2}, {"e5m2", DUET_FLOAT8_E5M2},
};
static const char *const op_names[DUET_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};

/* ---- exact inputs and expected results ----
 * Rank r's element i depends on i only through i % PERIOD, so the expected
 * result is computed once per residue by reducing over the ranks locally. */
#define PERIOD 168 /* multiple of 2, 3, 4, 7 and 8 */

static uint32_t narrow_encode(float x, const dtype_t *f) { /* round to nearest even */
  uint32_t emask = (1u << f->ebits) - 1, mmask = (1u << f->mbits) - 1;
  uint32_t sign = signbit(x) ? 1u << (f->ebits + f->mbits) : 0;
  uint32_t inf = f->has_inf ? emask << f->mbits : (emask << f->mbits) | mmask;
  double a = fabs((double)x), maxv;
  int emin = 1 - f->bias, e;
  if (isnan(x))
    return sign | (emask << f->mbits) | mmask;
  if (isinf(x))
    return sign | inf;
  if (a == 0)
    return sign;
  maxv = f->has_inf ? ldexp((double)((2u << f->mbits) - 1), (int)emask - 1 - f->bias - f->mbits)
                    : ldexp((double)((2u << f->mbits) - 2), (int)emask - f->bias - f->mbits);
  frexp(a, &e);
  if (--e < emin)
    e = emin;
  double r = nearbyint(a / ldexp(1.0, e - f->mbits)) * ldexp(1.0, e - f->mbits);
  if (r > maxv)
    return sign | inf;
  if (r == 0)
    return sign;
  frexp(r, &e);
  if (--e < emin)
    return sign | (uint32_t)(r / ldexp(1.0, emin - f->mbits));
  return sign | ((uint32_t)(e + f->bias) << f->mbits) |
         ((uint32_t)(r / ldexp(1.0, e - f->mbits)) - (1u << f->mbits));
}

static void store_float(void *dst, const dtype_t *t, double v) {
  if (t->dt == DUET_FLOAT64) {
    memcpy(dst, &v, 8);
  } else if (t->dt == DUET_FLOAT32) {
    float f = (float)v;
    memcpy(dst, &f, 4);
  } else {
    uint32_t bits = narrow_encode((float)v, t);
    if (t->size == 2) {
      uint16_t b = (uint16_t)bits;
      memcpy(dst, &b, 2);
    } else {
      uint8_t b = (uint8_t)bits;
      memcpy(dst, &b, 1);
    }
  }
}

static void store_int(void *dst, const dtype_t *t, uint64_t v) {
  uint8_t b1 = (uint8_t)v;
  uint32_t b4 = (uint32_t)v;
  if (t->size == 1)
    memcpy(dst, &b1, 1);
  else if (t->size == 4)
    memcpy(dst, &b4, 4);
  else
    memcpy(dst, &v, 8);
}

/* Interpret the low bits of v as the type's integer (sign-extended if signed). */
static int64_t as_signed(uint64_t v, size_t size) {
  if (size == 1)
    return (int8_t)(uint8_t)v;
  if (size == 4)
    return (int32_t)(uint32_t)v;
  return (int64_t)v;
}
static uint64_t as_unsigned(uint64_t v, size_t size) {
  return size == 8 ? v : v & ((1ull << (8 * size)) - 1);
}

/* Largest n with every integer in [0, n] exact in the float type. */
static double exact_limit(const dtype_t *t) {
  if (t->dt == DUET_FLOAT64)
    return 9007199254740992.0;
  if (t->dt == DUET_FLOAT32)
    return 16777216.0;
  return ldexp(1.0, t->mbits + 1);
}

static double float_input(const dtype_t *t, duet_op_t op, int r, int i, int n) {
  switch (op) {
  case DUET_PROD: {
    static const double f[3] = {2, 0.5, 1};
    double v = r < 8 ? f[(r + i) % 3] : 1;
    return (r + i) % 4 == 1 ? -v : v;
  }
  case DUET_MIN:
  case DUET_MAX:
    return (double)((r * 3 + i) % 8) - 3;
  default: /* sum, avg: every partial sum stays an exact integer */
    if (3.0 * n * (n + 1) / 2 <= exact_limit(t))
      return (double)(r + 1) * (i % 3 + 1);
    return r < exact_limit(t) ? (double)((r + i) % 2) : 0;
  }
}

static uint64_t int_input(const dtype_t *t, duet_op_t op, int r, int i) {
  switch (op) {
  case DUET_PROD: {
    int64_t v = (r + i) % 3 == 0 ? 2 : 1;
    if (t->is_signed && (r + i) % 4 == 1)
      v = -v;
    return (uint64_t)v;
  }
  case DUET_MIN:
  case DUET_MAX: {
    int64_t v = (int64_t)((r * 5 + i) % 7 + 1) * (i % 3 + 1);
    return (uint64_t)(t->is_signed ? v - 10 : v);
  }
  default:
    return (uint64_t)(r + 1) * (uint64_t)(i % 3 + 1); /* wraps like the library */
  }
}

/* in[p]: this rank's element for residue p; want[p]: the expected result. */
static void make_pattern(const dtype_t *t, duet_op_t op, int rank, int n, unsigned char *in,
                         unsigned char *want) {
  for (int p = 0; p < PERIOD; p++) {
    unsigned char *ip = in + (size_t)p * t->size, *wp = want + (size_t)p * t->size;
    if (t->is_float) {
      double acc = float_input(t, op, 0, p, n);
      for (int r = 1; r < n; r++) {
        double v = float_input(t, op, r, p, n);
        if (op == DUET_PROD)
          acc *= v;
        else if (op == DUET_MIN)
          acc = v < acc ? v : acc;
        else if (op == DUET_MAX)
          acc = v > acc ? v : acc;
        else
          acc += v;
      }
      if (op == DUET_AVG) /* one division, in float32 for all but float64 */
        acc = t->dt == DUET_FLOAT64 ? acc / n : (double)((float)acc / (float)n);
      store_float(ip, t, float_input(t, op, rank, p, n));
      store_float(wp, t, acc);
    } else {
      uint64_t acc = int_input(t, op, 0, p);
      for (int r = 1; r < n; r++) {
        uint64_t v = int_input(t, op, r, p);
        int cmp = t->is_signed ? (as_signed(v, t->size) > as_signed(acc, t->size)) -
                                     (as_signed(v, t->size) < as_signed(acc, t->size))
                               : (as_unsigned(v, t->size) > as_unsigned(acc, t->size)) -
                                     (as_unsigned(v, t->size) < as_unsigned(acc, t->size));
        if (op == DUET_PROD)
          acc *= v;
        else if (op == DUET_MIN)
          acc = cmp < 0 ? v : acc;
        else if (op == DUET_MAX)
          acc = cmp > 0 ? v : acc;
        else
          acc += v;
      }
      if (op == DUET_AVG)
        acc = t->is_signed ? (uint64_t)(as_signed(acc, t->size) / n)
                           : as_unsigned(acc, t->size) / (uint64_t)n;
      store_int(ip, t, int_input(t, op, rank, p));
      store_int(wp, t, acc);
    }
  }
}

static void fill_pattern(void *buf, size_t count, const dtype_t *t, const unsigned char *in) {
  unsigned char *b = buf;
  for (size_t i = 0; i < count; i++)
    memcpy(b + i * t->size, in + (i % PERIOD) * t->size, t->size);
}

/* Elements of buf (count, the first being element `first` of the reduced
 * vector) that differ from the expected result. */
static long count_wrong(const void *buf, size_t first, size_t count, const dtype_t *t,
                        const unsigned char *want) {
  const unsigned char *b = buf;
  long wrong = 0;
  for (size_t i = 0; i < count; i++)
    wrong += memcmp(b + i * t->size, want + ((first + i) % PERIOD) * t->size, t->size) != 0;
  return wrong;
}

/* Data that is moved, not reduced (allgather, broadcast, alltoall(v)):
 * element i of the block src sends to dst is (7*src + 3*dst + i) mod M,
 * M = 251 or the float type's exact-integer limit if smaller: exact in every
 * type, so the expected block is known locally. allgather and broadcast send
 * the same block to everybody and use dst = 0. */
static void block_value(void *dst, const dtype_t *t, int src, int to, size_t i) {
  uint64_t m = 251;
  if (t->is_float && exact_limit(t) < (double)m)
    m = (uint64_t)exact_limit(t);
  uint64_t v = ((uint64_t)src * 7 + (uint64_t)to * 3 + i) % m;
  if (t->is_float)
    store_float(dst, t, (double)v);
  else
    store_int(dst, t, v);
}

static void block_fill(void *buf, const dtype_t *t, int src, int to, size_t count) {
  unsigned char *b = buf;
  for (size_t i = 0; i < count; i++)
    block_value(b + i * t->size, t, src, to, i);
}

static long block_wrong(const void *buf, const dtype_t *t, int src, int to, size_t count) {
  const unsigned char *b = buf;
  unsigned char want[8];
  long wrong = 0;
  for (size_t i = 0; i < count; i++) {
    block_value(want, t, src, to, i);
    wrong += memcmp(b + i * t->size, want, t->size) != 0;
  }
  return wrong;
}

/* ---- alltoallv: per-destination counts skewed as in MoE token dispatch ----
 * Every rank sends T elements (the size column / type size). Destination d
 * has weight w_d = 1/(d+1)^F (F = --skew; 0: uniform), except that with
 * F > 0 the last floor(n/4) ranks get weight 0 (experts nobody picks);
 * count_d = floor(T*w_d/sum(w)) and rank 0, the hottest, also gets the
 * remainder, so the counts sum to T. The same on every sender, so rank d
 * receives n*count_d. Buffers are packed in rank order. */
static double g_skew;
static int g_rank, g_nranks;
static size_t *v_sc, *v_sd, *v_rc, *v_rd, v_T = (size_t)-1;
static int *v_isc, *v_isd, *v_irc, *v_ird, v_int_ok; /* the same for MPI, if they fit */

static void skew_counts(size_t T, int n, double F, size_t *cnt) {
  int cold = F > 0 ? n / 4 : 0;
  double wsum = 0;
  size_t used = 0;
  for (int d = 0; d < n - cold; d++)
    wsum += pow(d + 1.0, -F);
  for (int d = 0; d < n; d++) {
    cnt[d] = d < n - cold ? (size_t)floor((double)T * pow(d + 1.0, -F) / wsum) : 0;
    if (cnt[d] > T - used)
      cnt[d] = T - used; /* rounding of the division: never more than T in all */
    used += cnt[d];
  }
  cnt[0] += T - used;
}

static void v_plan(size_t T) {
  size_t n = (size_t)g_nranks, *cnt = malloc(sizeof(size_t) * n);
  if (!v_sc) {
    v_sc = malloc(sizeof(size_t) * 4 * n);
    v_isc = malloc(sizeof(int) * 4 * n);
    if (v_sc && v_isc) {
      v_sd = v_sc + n, v_rc = v_sc + 2 * n, v_rd = v_sc + 3 * n;
      v_isd = v_isc + n, v_irc = v_isc + 2 * n, v_ird = v_isc + 3 * n;
    }
  }
  if (!cnt || !v_sc || !v_isc) {
    fprintf(stderr, "[rank %d] out of memory for the alltoallv counts\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  skew_counts(T, g_nranks, g_skew, cnt);
  size_t so = 0, ro = 0;
  for (size_t k = 0; k < n; k++) {
    v_sc[k] = cnt[k];
    v_sd[k] = so;
    so += cnt[k];
    v_rc[k] = cnt[g_rank];
    v_rd[k] = ro;
    ro += cnt[g_rank];
  }
  v_int_ok = so <= INT_MAX && ro <= INT_MAX;
  for (size_t k = 0; k < 4 * n && v_int_ok; k++)
    v_isc[k] = (int)v_sc[k];
  v_T = T;
  free(cnt);
}

static size_t a2av_recv_elems(size_t count, int n) { /* the most any rank receives */
  size_t *cnt = malloc(sizeof(size_t) * (size_t)n), mx = 0;
  if (!cnt)
    return count * (size_t)n;
  skew_counts(count, n, g_skew, cnt);
  for (int d = 0; d < n; d++)
    mx = cnt[d] > mx ? cnt[d] : mx;
  free(cnt);
  return mx * (size_t)n;
}

/* ---- one call of a collective, by duet or by MPI ---- */
enum { LIB_DUET, LIB_MPI, NLIBS };

typedef struct {
  unsigned char *send, *recv;
  size_t count; /* elements of the size column */
  const dtype_t *t;
  duet_op_t op;
  int root, in_place, rank, nranks;
  duet_comm_t *comm;
  MPI_Datatype mdt; /* MPI's equivalents */
  MPI_Op mop;
} call_t;

static const void *src_of(const call_t *c) {
  return c->in_place ? c->recv : c->send;
}
static size_t block_of(const call_t *c) { /* per-rank block of the n-block collectives */
  return c->count / (size_t)c->nranks;
}
static unsigned char *own_block(const call_t *c) { /* this rank's block of recvbuf */
  return c->recv + (size_t)c->rank * block_of(c) * c->t->size;
}

/* --nonblocking: each library's call is its non-blocking form, then a wait;
 * --overlap: with overlap_us of computation between the two */
static int nonblocking, overlap_sleep;
static double overlap_us;
static void compute(void) {
  double until;
  if (overlap_us <= 0)
    return;
  if (overlap_sleep) {
    struct timespec ts = {(time_t)(overlap_us / 1e6), (long)(fmod(overlap_us, 1e6) * 1e3)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
      ;
    return;
  }
  until = MPI_Wtime() + overlap_us * 1e-6;
  while (MPI_Wtime() < until)
    ;
}
static int duet_waited(duet_status_t st, duet_request_t *const *req) {
  if (st != DUET_SUCCESS)
    return st;
  compute();
  return duet_wait(*req);
}
static int mpi_waited(int st, MPI_Request *req) {
  if (st != MPI_SUCCESS)
    return st;
  compute();
  return MPI_Wait(req, MPI_STATUS_IGNORE);
}

static int duet_allreduce_run(const call_t *c) {
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(duet_iallreduce(src_of(c), c->recv, c->count, c->t->dt, c->op, c->comm, &q),
                       &q);
  return duet_allreduce(src_of(c), c->recv, c->count, c->t->dt, c->op, c->comm);
}
static int duet_allgather_run(const call_t *c) {
  const void *s = c->in_place ? own_block(c) : c->send;
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(duet_iallgather(s, c->recv, block_of(c), c->t->dt, c->comm, &q), &q);
  return duet_allgather(s, c->recv, block_of(c), c->t->dt, c->comm);
}
static int duet_reduce_scatter_run(const call_t *c) {
  void *r = c->in_place ? own_block(c) : c->recv;
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(
        duet_ireduce_scatter(src_of(c), r, block_of(c), c->t->dt, c->op, c->comm, &q), &q);
  return duet_reduce_scatter(src_of(c), r, block_of(c), c->t->dt, c->op, c->comm);
}
static int duet_reduce_run(const call_t *c) {
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(
        duet_ireduce(src_of(c), c->recv, c->count, c->t->dt, c->op, c->root, c->comm, &q), &q);
  return duet_reduce(src_of(c), c->recv, c->count, c->t->dt, c->op, c->root, c->comm);
}
static int duet_broadcast_run(const call_t *c) {
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(
        duet_ibroadcast(src_of(c), c->recv, c->count, c->t->dt, c->root, c->comm, &q), &q);
  return duet_broadcast(src_of(c), c->recv, c->count, c->t->dt, c->root, c->comm);
}
static int duet_alltoall_run(const call_t *c) {
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(duet_ialltoall(src_of(c), c->recv, block_of(c), c->t->dt, c->comm, &q), &q);
  return duet_alltoall(src_of(c), c->recv, block_of(c), c->t->dt, c->comm);
}
static int duet_alltoallv_run(const call_t *c) {
  duet_request_t *q;
  if (c->count != v_T)
    v_plan(c->count);
  if (nonblocking)
    return duet_waited(
        duet_ialltoallv(c->send, v_sc, v_sd, c->recv, v_rc, v_rd, c->t->dt, c->comm, &q), &q);
  return duet_alltoallv(c->send, v_sc, v_sd, c->recv, v_rc, v_rd, c->t->dt, c->comm);
}
static int duet_barrier_run(const call_t *c) {
  duet_request_t *q;
  if (nonblocking)
    return duet_waited(duet_ibarrier(c->comm, &q), &q);
  return duet_barrier(c->comm);
}

#define MPI_SRC(c) ((c)->in_place ? MPI_IN_PLACE : (const void *)(c)->send)
static int mpi_allreduce_run(const call_t *c) {
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(
        MPI_Iallreduce(MPI_SRC(c), c->recv, (int)c->count, c->mdt, c->mop, MPI_COMM_WORLD, &q), &q);
  return MPI_Allreduce(MPI_SRC(c), c->recv, (int)c->count, c->mdt, c->mop, MPI_COMM_WORLD);
}
static int mpi_allgather_run(const call_t *c) {
  const int b = (int)block_of(c);
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(MPI_Iallgather(MPI_SRC(c), b, c->mdt, c->recv, b, c->mdt, MPI_COMM_WORLD, &q),
                      &q);
  return MPI_Allgather(MPI_SRC(c), b, c->mdt, c->recv, b, c->mdt, MPI_COMM_WORLD);
}
static int mpi_reduce_scatter_run(const call_t *c) { /* in place: the result at recvbuf */
  const int b = (int)block_of(c);
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(
        MPI_Ireduce_scatter_block(MPI_SRC(c), c->recv, b, c->mdt, c->mop, MPI_COMM_WORLD, &q), &q);
  return MPI_Reduce_scatter_block(MPI_SRC(c), c->recv, b, c->mdt, c->mop, MPI_COMM_WORLD);
}
static int mpi_reduce_run(const call_t *c) {
  const void *s = !c->in_place ? c->send : c->rank == c->root ? MPI_IN_PLACE : c->recv;
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(
        MPI_Ireduce(s, c->recv, (int)c->count, c->mdt, c->mop, c->root, MPI_COMM_WORLD, &q), &q);
  return MPI_Reduce(s, c->recv, (int)c->count, c->mdt, c->mop, c->root, MPI_COMM_WORLD);
}
static int mpi_broadcast_run(const call_t *c) { /* out of place: the root sends its sendbuf */
  void *buf = c->rank == c->root && !c->in_place ? c->send : c->recv;
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(MPI_Ibcast(buf, (int)c->count, c->mdt, c->root, MPI_COMM_WORLD, &q), &q);
  return MPI_Bcast(buf, (int)c->count, c->mdt, c->root, MPI_COMM_WORLD);
}
static int mpi_alltoall_run(const call_t *c) {
  const int b = (int)block_of(c);
  MPI_Request q;
  if (nonblocking)
    return mpi_waited(MPI_Ialltoall(MPI_SRC(c), b, c->mdt, c->recv, b, c->mdt, MPI_COMM_WORLD, &q),
                      &q);
  return MPI_Alltoall(MPI_SRC(c), b, c->mdt, c->recv, b, c->mdt, MPI_COMM_WORLD);
}
static int mpi_alltoallv_run(const call_t *c) {
  MPI_Request q;
  if (c->count != v_T)
    v_plan(c->count);
  if (nonblocking)
    return mpi_waited(MPI_Ialltoallv(c->send, v_isc, v_isd, c->mdt, c->recv, v_irc, v_ird, c->mdt,
                                     MPI_COMM_WORLD, &q),
                      &q);
  return MPI_Alltoallv(c->send, v_isc, v_isd, c->mdt, c->recv, v_irc, v_ird, c->mdt,
                       MPI_COMM_WORLD);
}
static int mpi_barrier_run(const call_t *c) {
  MPI_Request q;
  (void)c;
  if (nonblocking)
    return mpi_waited(MPI_Ibarrier(MPI_COMM_WORLD, &q), &q);
  return MPI_Barrier(MPI_COMM_WORLD);
}

/* ---- collectives: adding one is a row, its run functions and its case in
 * fill_input and wrong_of ---- */
enum {
  K_ALLREDUCE,
  K_ALLGATHER,
  K_REDUCE_SCATTER,
  K_REDUCE,
  K_BROADCAST,
  K_ALLTOALL,
  K_ALLTOALLV,
  K_BARRIER
};
typedef struct {
  const char *name;
  int kind;
  int has_op, has_root;
  int blocks;      /* count is n blocks: rounded down to a multiple of n, at least n */
  int in_place_ok; /* 0: the in-place columns read N/A */
  int has_size;    /* 0: one row, time only (barrier) */
  double (*bus_factor)(int nranks);
  /* elements of sendbuf and of recvbuf (big enough for the in-place form) */
  size_t (*send_elems)(size_t count, int nranks);
  size_t (*recv_elems)(size_t count, int nranks);
  int (*run[NLIBS])(const call_t *c); /* duet's call, MPI's equivalent */
} coll_t;

static double allreduce_factor(int n) {
  return 2.0 * (n - 1) / n;
}
static double ring_factor(int n) { /* allgather, reduce_scatter, alltoall(v) */
  return (double)(n - 1) / n;
}
static double one_factor(int n) { /* reduce, broadcast */
  (void)n;
  return 1;
}
static size_t same_elems(size_t count, int n) {
  (void)n;
  return count;
}
static size_t block_elems(size_t count, int n) {
  return count / (size_t)n;
}

/* one collective per row */
/* clang-format off */
static const coll_t colls[] = {
    {.name = "allreduce", .kind = K_ALLREDUCE, .has_op = 1, .in_place_ok = 1, .has_size = 1,
     .bus_factor = allreduce_factor, .send_elems = same_elems, .recv_elems = same_elems,
     .run = {duet_allreduce_run, mpi_allreduce_run}},
    {.name = "allgather", .kind = K_ALLGATHER, .blocks = 1, .in_place_ok = 1, .has_size = 1,
     .bus_factor = ring_factor, .send_elems = block_elems, .recv_elems = same_elems,
     .run = {duet_allgather_run, mpi_allgather_run}},
    {.name = "reduce_scatter", .kind = K_REDUCE_SCATTER, .has_op = 1, .blocks = 1,
     .in_place_ok = 1, .has_size = 1, .bus_factor = ring_factor, .send_elems = same_elems,
     .recv_elems = same_elems, .run = {duet_reduce_scatter_run, mpi_reduce_scatter_run}},
    {.name = "reduce", .kind = K_REDUCE, .has_op = 1, .has_root = 1, .in_place_ok = 1,
     .has_size = 1, .bus_factor = one_factor, .send_elems = same_elems, .recv_elems = same_elems,
     .run = {duet_reduce_run, mpi_reduce_run}},
    {.name = "broadcast", .kind = K_BROADCAST, .has_root = 1, .in_place_ok = 1, .has_size = 1,
     .bus_factor = one_factor, .send_elems = same_elems, .recv_elems = same_elems,
     .run = {duet_broadcast_run, mpi_broadcast_run}},
    {.name = "alltoall", .kind = K_ALLTOALL, .blocks = 1, .in_place_ok = 1, .has_size = 1,
     .bus_factor = ring_factor, .send_elems = same_elems, .recv_elems = same_elems,
     .run = {duet_alltoall_run, mpi_alltoall_run}},
    {.name = "alltoallv", .kind = K_ALLTOALLV, .has_size = 1, .bus_factor = ring_factor,
     .send_elems = same_elems, .recv_elems = a2av_recv_elems,
     .run = {duet_alltoallv_run, mpi_alltoallv_run}},
    {.name = "barrier", .kind = K_BARRIER, .run = {duet_barrier_run, mpi_barrier_run}},
};
/* clang-format on */
#define NCOLLS (sizeof colls / sizeof colls[0])

/* Elements of the size column for `size` bytes of type t. */
static size_t count_of(const coll_t *c, size_t size, const dtype_t *t, int n) {
  size_t count = size / t->size ? size / t->size : 1;
  if (!c->has_size)
    return 0;
  if (c->blocks)
    count = count < (size_t)n ? (size_t)n : count / (size_t)n * (size_t)n;
  return count;
}

/* MPI's datatype for t, MPI_DATATYPE_NULL if it has none: MPI has no 16- or
 * 8-bit floats, but collectives that only move data move them as unsigned
 * integers of the same width. */
static MPI_Datatype mpi_type(const coll_t *c, const dtype_t *t) {
  switch (t->dt) {
  case DUET_INT8:
    return MPI_INT8_T;
  case DUET_UINT8:
    return MPI_UINT8_T;
  case DUET_INT32:
    return MPI_INT32_T;
  case DUET_UINT32:
    return MPI_UINT32_T;
  case DUET_INT64:
    return MPI_INT64_T;
  case DUET_UINT64:
    return MPI_UINT64_T;
  case DUET_FLOAT32:
    return MPI_FLOAT;
  case DUET_FLOAT64:
    return MPI_DOUBLE;
  default:
    if (c->has_op)
      return MPI_DATATYPE_NULL;
    return t->size == 2 ? MPI_UINT16_T : MPI_UINT8_T;
  }
}
/* avg has no MPI op: MPI sums, and only its time is reported */
static MPI_Op mpi_op(duet_op_t op) {
  return op == DUET_PROD ? MPI_PROD : op == DUET_MIN ? MPI_MIN : op == DUET_MAX ? MPI_MAX : MPI_SUM;
}

/* ---- options ---- */
enum { FMT_TABLE, FMT_CSV, FMT_JSON };
static const char *const fmt_names[] = {"table", "csv", "json"};
#define MAX_ROUNDS 100

typedef struct {
  size_t minbytes, maxbytes, stepbytes;
  double stepfactor;
  int iters, warmup, check;
  int dt; /* -1: all */
  int op; /* -1: all */
  const coll_t *coll;
  double skew; /* alltoallv */
  int root;
  int compare; /* also time MPI's collective */
  int rounds;  /* 0: the default, 1 (3 with --compare) */
  int format;
  int barrier;   /* time each call alone after a barrier */
  int mem_alloc; /* buffers from duet_mem_alloc */
} opts_t;

static int parse_bytes(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  double mul = 1;
  if (end == s || !(v >= 0) || !isfinite(v))
    return -1;
  switch (*end) {
  case 'K':
  case 'k':
    mul = 1024.0;
    end++;
    break;
  case 'M':
  case 'm':
    mul = 1024.0 * 1024;
    end++;
    break;
  case 'G':
  case 'g':
    mul = 1024.0 * 1024 * 1024;
    end++;
    break;
  default:
    break;
  }
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end || v * mul >= 0x1p50)
    return -1;
  *out = (size_t)(v * mul);
  return 0;
}

static int parse_int(const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static void usage(FILE *f, const char *prog) {
  fprintf(f,
          "usage: %s [options]   (under mpirun; rank 0 prints)\n"
          "  -C <coll>    allreduce allgather reduce_scatter reduce broadcast alltoall alltoallv\n"
          "               barrier (default allreduce)\n"
          "  -b <bytes>   minimum size, K/M/G suffixes (default 8)\n"
          "  -e <bytes>   maximum size (default 32M)\n"
          "  -f <factor>  multiply the size by this each step (default 2)\n"
          "  -i <bytes>   add this to the size each step instead (sets -f 1)\n"
          "  -n <iters>   timed iterations per size (default 20)\n"
          "  -w <iters>   warmup iterations (default 5)\n"
          "  -c <0|1>     check results (default 1)\n"
          "  -d <type>    int8 uint8 int32 uint32 int64 uint64 float16 bfloat16 float32 float64\n"
          "               float8e4m3 float8e5m2 or all (default float32)\n"
          "  -o <op>      sum prod min max avg or all (default sum); a collective name\n"
          "               (-o alltoall, -o reduce, ...) selects the collective, as -C\n"
          "  -r <root>    root of reduce and broadcast (default 0; the others ignore it)\n"
          "  --skew <F>   alltoallv: skew of the per-destination counts, as in MoE token\n"
          "               dispatch (default 0: uniform). Each of the n ranks sends\n"
          "               T = size/typesize elements; destination d gets weight\n"
          "               w_d = 1/(d+1)^F, except that with F > 0 the last floor(n/4)\n"
          "               ranks get nothing; count_d = floor(T*w_d/sum(w)) and rank 0 also\n"
          "               gets the remainder, so the counts sum to T. Every rank sends the\n"
          "               same counts, so rank d receives n*count_d.\n"
          "  --compare mpi  also time MPI's equivalent collective (MPI_Allreduce,\n"
          "               MPI_Allgather, MPI_Reduce_scatter_block, MPI_Reduce, MPI_Bcast,\n"
          "               MPI_Alltoall, MPI_Alltoallv, MPI_Barrier; MPI_IN_PLACE in place)\n"
          "               on the same buffers, interleaved with duet's: each round times\n"
          "               -n duet calls, then -n MPI calls. Adds the columns mpi_time (us)\n"
          "               and ratio = mpi_time / time (> 1: duet is faster), out of place\n"
          "               and in place. N/A where MPI has no equivalent: reductions of\n"
          "               float16, bfloat16 and fp8 (collectives that only move data move\n"
          "               them as same-width unsigned integers). avg is timed as MPI_SUM\n"
          "               and its MPI result is not checked. With -c 1 the MPI result is\n"
          "               checked too (mpi_wrong in csv/json, a summary line in the table).\n"
          "  --nonblocking  time the non-blocking forms: duet_i<coll> + duet_wait per\n"
          "               call (MPI_I<coll> + MPI_Wait with --compare)\n"
          "  --overlap <US>  as --nonblocking, with US microseconds of computation (a\n"
          "               spinning loop) between each post and its wait; time is the whole\n"
          "               call (at best the larger of US and the call alone)\n"
          "  --overlap-sleep <US>  the same, sleeping instead of spinning (the core is free)\n"
          "  --barrier    time each call alone after an MPI_Barrier, as OSU's benchmarks\n"
          "               do (time: the mean of those single-call times)\n"
          "  --mem-alloc  take the buffers from duet_mem_alloc (memory the host's ranks can\n"
          "               share: the all-to-all then copies once on one host; MPI uses the\n"
          "               same buffers)\n"
          "  --rounds <R> timed rounds per size and placement (1..%d; default 1, 3 with\n"
          "               --compare): time is the median over rounds of the loop's mean\n"
          "               per-iteration time, averaged over ranks\n"
          "  --format <table|csv|json>  output on stdout (default table):\n"
          "               csv: one header row, then one row per size with the columns\n"
          "                 collective,nranks,size,count,type,op,root,\n"
          "                 time_oop,algbw_oop,busbw_oop,wrong_oop,\n"
          "                 time_ip,algbw_ip,busbw_ip,wrong_ip,\n"
          "                 mpi_time_oop,ratio_oop,mpi_wrong_oop,\n"
          "                 mpi_time_ip,ratio_ip,mpi_wrong_ip\n"
          "                 (size in B, times in us, bandwidths in GB/s; an empty field\n"
          "                 is N/A: no in-place form, no -c, no --compare, ...)\n"
          "               json: one object with the run's parameters (collective, nranks,\n"
          "                 datatype, op, root, sizes, iterations, rounds, check, compare,\n"
          "                 version, commit from $DUET_COMMIT, providers), \"rows\": an\n"
          "                 array of objects with the csv columns as keys (null: N/A),\n"
          "                 and the totals wrong, mpi_wrong and avg_busbw\n"
          "  -h, --help   this help\n"
          "Sizes not a multiple of the type size are rounded down to whole elements (at least "
          "one).\n"
          "size column and busbw, as nccl-tests: allreduce: the buffer, busbw = algbw*2(n-1)/n;\n"
          "allgather, reduce_scatter: the whole buffer (n x the per-rank block), rounded down\n"
          "to a multiple of n elements (at least n), busbw = algbw*(n-1)/n; reduce, broadcast:\n"
          "the buffer, busbw = algbw; alltoall, alltoallv: the bytes each rank sends in total\n"
          "(alltoall: a multiple of n elements, at least n), busbw = algbw*(n-1)/n; barrier:\n"
          "one row, size 0, time only.\n"
          "In place as NCCL: allgather sends from its block of recvbuf, reduce_scatter\n"
          "leaves its result at recvbuf + rank*recvcount, the others pass sendbuf == recvbuf.\n"
          "alltoallv and barrier have no in-place form (N/A columns).\n"
          "Exit status: 0, 1 if a check found wrong elements, 2 for bad arguments.\n",
          prog, MAX_ROUNDS);
}

static char opt_err[256];
#define OPT_ERR(...) (snprintf(opt_err, sizeof opt_err, __VA_ARGS__), opt_err)

static const coll_t *coll_named(const char *name) {
  for (size_t i = 0; i < NCOLLS; i++)
    if (strcmp(name, colls[i].name) == 0)
      return &colls[i];
  return NULL;
}

/* NULL: go; "": help asked; else the message. */
static const char *parse_opts(int argc, char **argv, opts_t *o) {
  int opt;
  static const struct option longopts[] = {{"skew", required_argument, NULL, 'S'},
                                           {"compare", required_argument, NULL, 'M'},
                                           {"rounds", required_argument, NULL, 'R'},
                                           {"format", required_argument, NULL, 'F'},
                                           {"nonblocking", no_argument, NULL, 'N'},
                                           {"barrier", no_argument, NULL, 'B'},
                                           {"overlap", required_argument, NULL, 'O'},
                                           {"overlap-sleep", required_argument, NULL, 'Z'},
                                           {"mem-alloc", no_argument, NULL, 'A'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  *o = (opts_t){8,   32u << 20, 1u << 20, 2.0, 20,        5, 1, DUET_FLOAT32, DUET_SUM, &colls[0],
                0.0, 0,         0,        0,   FMT_TABLE, 0, 0};
  opterr = 0; /* our messages, on rank 0 only */
  while ((opt = getopt_long(argc, argv, ":C:b:e:f:i:n:w:c:d:o:r:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'S': {
      char *end;
      o->skew = strtod(optarg, &end);
      if (end == optarg || *end || !(o->skew >= 0) || o->skew > 1e6)
        return OPT_ERR("--skew: '%s' is not a number >= 0", optarg);
      break;
    }
    case 'M':
      if (strcmp(optarg, "mpi") != 0)
        return OPT_ERR("--compare: unknown library '%s' (known: mpi)", optarg);
      o->compare = 1;
      break;
    case 'R':
      if (parse_int(optarg, 1, MAX_ROUNDS, &o->rounds))
        return OPT_ERR("--rounds: '%s' is not a whole number from 1 to %d", optarg, MAX_ROUNDS);
      break;
    case 'N':
      nonblocking = 1;
      break;
    case 'B':
      o->barrier = 1;
      break;
    case 'O':
    case 'Z': {
      char *end;
      overlap_us = strtod(optarg, &end);
      if (end == optarg || *end || !(overlap_us >= 0) || overlap_us > 1e7)
        return OPT_ERR("--%s: '%s' is not a number of microseconds from 0 to 1e7",
                       opt == 'O' ? "overlap" : "overlap-sleep", optarg);
      overlap_sleep = opt == 'Z';
      nonblocking = 1;
      break;
    }
    case 'A':
      o->mem_alloc = 1;
      break;
    case 'F': {
      o->format = -1;
      for (int i = 0; i < (int)(sizeof fmt_names / sizeof fmt_names[0]); i++)
        if (strcmp(optarg, fmt_names[i]) == 0)
          o->format = i;
      if (o->format < 0)
        return OPT_ERR("--format: unknown format '%s' (known: table csv json)", optarg);
      break;
    }
    case 'C':
      if (!(o->coll = coll_named(optarg)))
        return OPT_ERR("-C: unknown collective '%s'", optarg);
      break;
    case 'b':
      if (parse_bytes(optarg, &o->minbytes))
        return OPT_ERR("-b: bad size '%s'", optarg);
      break;
    case 'e':
      if (parse_bytes(optarg, &o->maxbytes))
        return OPT_ERR("-e: bad size '%s'", optarg);
      break;
    case 'i':
      if (parse_bytes(optarg, &o->stepbytes) || o->stepbytes == 0)
        return OPT_ERR("-i: bad step '%s' (a size > 0)", optarg);
      o->stepfactor = 1;
      break;
    case 'f': {
      char *end;
      o->stepfactor = strtod(optarg, &end);
      if (end == optarg || *end || !(o->stepfactor >= 1) || o->stepfactor > 1e6)
        return OPT_ERR("-f: '%s' is not a number >= 1", optarg);
      break;
    }
    case 'n':
      if (parse_int(optarg, 1, INT_MAX, &o->iters))
        return OPT_ERR("-n: '%s' is not a whole number >= 1", optarg);
      break;
    case 'w':
      if (parse_int(optarg, 0, INT_MAX, &o->warmup))
        return OPT_ERR("-w: '%s' is not a whole number >= 0", optarg);
      break;
    case 'c':
      if (parse_int(optarg, 0, 1, &o->check))
        return OPT_ERR("-c: '%s' is not 0 or 1", optarg);
      break;
    case 'r':
      if (parse_int(optarg, 0, INT_MAX, &o->root))
        return OPT_ERR("-r: '%s' is not a rank (a whole number >= 0)", optarg);
      break;
    case 'd': {
      o->dt = -2;
      if (strcmp(optarg, "all") == 0)
        o->dt = -1;
      for (int i = 0; i < DUET_NUM_DATATYPES; i++)
        if (strcmp(optarg, dtypes[i].name) == 0)
          o->dt = i;
      for (size_t i = 0; i < sizeof dt_aliases / sizeof dt_aliases[0]; i++)
        if (strcmp(optarg, dt_aliases[i].alias) == 0)
          o->dt = (int)dt_aliases[i].dt;
      if (o->dt == -2)
        return OPT_ERR("-d: unknown datatype '%s'", optarg);
      break;
    }
    case 'o': {
      /* a collective's name selects the collective (users type -o alltoall) */
      const coll_t *named = coll_named(optarg);
      if (named) {
        o->coll = named;
        break;
      }
      int op = -2;
      if (strcmp(optarg, "all") == 0)
        op = -1;
      for (int i = 0; i < DUET_NUM_OPS; i++)
        if (strcmp(optarg, op_names[i]) == 0)
          op = i;
      if (op == -2)
        return OPT_ERR("-o: unknown op or collective '%s'", optarg);
      o->op = op;
      break;
    }
    case 'h':
      return "";
    case ':':
      return OPT_ERR("option '%s' needs a value", argv[optind - 1]);
    default:
      if (optopt)
        return OPT_ERR("unknown option '-%c'", optopt);
      return OPT_ERR("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc)
    return OPT_ERR("unexpected argument '%s'", argv[optind]);
  if (o->minbytes > o->maxbytes)
    return OPT_ERR("-b %zu is larger than -e %zu", o->minbytes, o->maxbytes);
  if (o->rounds == 0)
    o->rounds = o->compare ? 3 : 1;
  return NULL;
}

/* ---- the benchmark ---- */
typedef struct {
  int rank, nranks;
  duet_comm_t *comm;
  const opts_t *o;
  unsigned char *send, *recv;
  size_t recv_bytes;
  double bw_sum;
  long bw_count, rows;
  long wrong_total[NLIBS];
} bench_t;

/* One size and placement: seconds per iteration and wrong elements per
 * library, -1 for N/A. */
typedef struct {
  double sec[NLIBS];
  long wrong[NLIBS];
} meas_t;

typedef struct {
  size_t bytes, count;
  const char *type, *op;
  int root;    /* -1: the collective has none */
  meas_t m[2]; /* out of place, in place */
} row_t;

static void die(bench_t *b, int lib, int rc, const char *what) {
  if (lib == LIB_DUET) {
    fprintf(stderr, "[rank %d] %s: %s: %s\n", b->rank, what, duet_strerror((duet_status_t)rc),
            duet_last_error(b->comm));
  } else {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fprintf(stderr, "[rank %d] MPI equivalent of %s: %s\n", b->rank, what, msg);
  }
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

/* The input: the reduction pattern, or the blocks to move. In place it goes
 * where the in-place call reads it: recvbuf (allgather: this rank's block). */
static void fill_input(const call_t *c, int kind, const unsigned char *in) {
  const dtype_t *t = c->t;
  unsigned char *dst = c->in_place ? c->recv : c->send;
  int n = c->nranks;
  switch (kind) {
  case K_ALLREDUCE:
  case K_REDUCE_SCATTER:
  case K_REDUCE:
    fill_pattern(dst, c->count, t, in);
    break;
  case K_ALLGATHER:
    block_fill(c->in_place ? own_block(c) : c->send, t, c->rank, 0, block_of(c));
    break;
  case K_BROADCAST:
    if (c->rank == c->root)
      block_fill(dst, t, c->root, 0, c->count);
    break;
  case K_ALLTOALL:
    for (int k = 0; k < n; k++)
      block_fill(dst + (size_t)k * block_of(c) * t->size, t, c->rank, k, block_of(c));
    break;
  case K_ALLTOALLV:
    if (c->count != v_T)
      v_plan(c->count);
    for (int k = 0; k < n; k++)
      block_fill(dst + v_sd[k] * t->size, t, c->rank, k, v_sc[k]);
    break;
  default: /* barrier: no data */
    break;
  }
}

/* Elements of this rank's result that differ from the expected one, after
 * `lib` ran the call (-1: nothing to check). */
static long wrong_of(const call_t *c, int kind, int lib, const unsigned char *want) {
  const dtype_t *t = c->t;
  size_t blk = block_of(c);
  long wrong = 0;
  int n = c->nranks;
  switch (kind) {
  case K_ALLREDUCE:
    return count_wrong(c->recv, 0, c->count, t, want);
  case K_REDUCE: /* the result is the root's only */
    return c->rank == c->root ? count_wrong(c->recv, 0, c->count, t, want) : 0;
  case K_REDUCE_SCATTER: /* block `rank` of the reduced vector; in place, MPI's lands at the
                            start of recvbuf, duet's (NCCL's form) at its block */
    return count_wrong(c->in_place && lib == LIB_DUET ? own_block(c) : c->recv,
                       (size_t)c->rank * blk, blk, t, want);
  case K_ALLGATHER:
    for (int k = 0; k < n; k++)
      wrong += block_wrong(c->recv + (size_t)k * blk * t->size, t, k, 0, blk);
    return wrong;
  case K_BROADCAST: /* MPI_Bcast out of place leaves the root's data in its sendbuf */
    return block_wrong(lib == LIB_MPI && !c->in_place && c->rank == c->root ? c->send : c->recv, t,
                       c->root, 0, c->count);
  case K_ALLTOALL:
    for (int k = 0; k < n; k++)
      wrong += block_wrong(c->recv + (size_t)k * blk * t->size, t, k, c->rank, blk);
    return wrong;
  case K_ALLTOALLV:
    if (c->count != v_T)
      v_plan(c->count);
    for (int k = 0; k < n; k++)
      wrong += block_wrong(c->recv + v_rd[k] * t->size, t, k, c->rank, v_rc[k]);
    return wrong;
  default:
    return -1;
  }
}

/* Seconds per call of `iters` calls, averaged over ranks; with --barrier,
 * each call timed alone after a barrier. */
static double time_loop(bench_t *b, int lib, const call_t *c) {
  const coll_t *coll = b->o->coll;
  double sec = 0, sum = 0, t0;
  int rc;
  MPI_Barrier(MPI_COMM_WORLD);
  t0 = MPI_Wtime();
  for (int i = 0; i < b->o->iters; i++) {
    if (b->o->barrier) {
      MPI_Barrier(MPI_COMM_WORLD);
      t0 = MPI_Wtime();
    }
    if ((rc = coll->run[lib](c)) != 0)
      die(b, lib, rc, coll->name);
    if (b->o->barrier)
      sec += MPI_Wtime() - t0;
  }
  if (!b->o->barrier)
    sec = MPI_Wtime() - t0;
  sec /= b->o->iters;
  MPI_Allreduce(&sec, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return sum / b->nranks;
}

static double median(double *v, int n) {
  for (int i = 1; i < n; i++) /* insertion sort: n is small */
    for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
      double x = v[j];
      v[j] = v[j - 1];
      v[j - 1] = x;
    }
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Time one size and placement with duet (and MPI), then check. */
static void measure(bench_t *b, const call_t *c, const unsigned char *in, const unsigned char *want,
                    meas_t *m) {
  const coll_t *coll = b->o->coll;
  double times[NLIBS][MAX_ROUNDS];
  int use[NLIBS] = {1, 0}, rc;

  for (int lib = 0; lib < NLIBS; lib++)
    m->sec[lib] = -1, m->wrong[lib] = -1;
  if (c->in_place && !coll->in_place_ok)
    return;
  fill_input(c, coll->kind, in); /* alltoallv: also plans the counts */
  /* every rank decides alike: the same options and sizes */
  use[LIB_MPI] = b->o->compare && (!coll->has_size || c->mdt != MPI_DATATYPE_NULL) &&
                 c->count <= INT_MAX && (coll->kind != K_ALLTOALLV || v_int_ok);
  for (int lib = 0; lib < NLIBS; lib++)
    for (int i = 0; use[lib] && i < b->o->warmup; i++)
      if ((rc = coll->run[lib](c)) != 0)
        die(b, lib, rc, coll->name);
  for (int r = 0; r < b->o->rounds; r++)
    for (int lib = 0; lib < NLIBS; lib++)
      if (use[lib]) {
        fill_input(c, coll->kind, in); /* in place, the last loop changed it */
        times[lib][r] = time_loop(b, lib, c);
      }
  for (int lib = 0; lib < NLIBS; lib++)
    if (use[lib])
      m->sec[lib] = median(times[lib], b->o->rounds);

  if (!b->o->check || coll->kind == K_BARRIER)
    return;
  for (int lib = 0; lib < NLIBS; lib++) {
    if (!use[lib] || (lib == LIB_MPI && c->op == DUET_AVG))
      continue;
    memset(c->recv, 0xA5, b->recv_bytes); /* no expected value is all 0xA5 bytes */
    fill_input(c, coll->kind, in);
    if ((rc = coll->run[lib](c)) != 0)
      die(b, lib, rc, coll->name);
    long mine = wrong_of(c, coll->kind, lib, want);
    MPI_Allreduce(&mine, &m->wrong[lib], 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  }
}

/* ---- output: the table, csv or json, on rank 0 ---- */
static void fmt_num(char *buf, size_t len, double v, int prec) {
  if (isfinite(v))
    snprintf(buf, len, "%.*f", prec, v);
  else
    buf[0] = 0;
}

/* The row's columns for csv and json: name, value ("" = N/A), quoted. */
#define NFIELDS 21
typedef struct {
  const char *name;
  char val[48];
  int str;
} field_t;

static void row_fields(const bench_t *b, const row_t *r, field_t *f) {
  const coll_t *c = b->o->coll;
  static const char *const names[NFIELDS] = {
      "collective",  "nranks",   "size",        "count",        "type",      "op",
      "root",        "time_oop", "algbw_oop",   "busbw_oop",    "wrong_oop", "time_ip",
      "algbw_ip",    "busbw_ip", "wrong_ip",    "mpi_time_oop", "ratio_oop", "mpi_wrong_oop",
      "mpi_time_ip", "ratio_ip", "mpi_wrong_ip"};
  for (int i = 0; i < NFIELDS; i++)
    f[i].name = names[i], f[i].val[0] = 0, f[i].str = i == 0 || i == 4 || i == 5;
  if (!r)
    return;
  snprintf(f[0].val, sizeof f[0].val, "%s", c->name);
  snprintf(f[1].val, sizeof f[1].val, "%d", b->nranks);
  snprintf(f[2].val, sizeof f[2].val, "%zu", r->bytes);
  snprintf(f[3].val, sizeof f[3].val, "%zu", r->count);
  snprintf(f[4].val, sizeof f[4].val, "%s", r->type);
  snprintf(f[5].val, sizeof f[5].val, "%s", r->op);
  if (r->root >= 0)
    snprintf(f[6].val, sizeof f[6].val, "%d", r->root);
  for (int ip = 0; ip < 2; ip++) {
    const meas_t *m = &r->m[ip];
    field_t *d = f + 7 + 4 * ip, *x = f + 15 + 3 * ip;
    double sec = m->sec[LIB_DUET];
    if (sec >= 0) {
      fmt_num(d[0].val, sizeof d[0].val, sec * 1e6, 3);
      if (c->has_size) {
        double algbw = (double)r->bytes / sec / 1e9;
        fmt_num(d[1].val, sizeof d[1].val, algbw, 4);
        fmt_num(d[2].val, sizeof d[2].val, algbw * c->bus_factor(b->nranks), 4);
      }
    }
    if (m->wrong[LIB_DUET] >= 0)
      snprintf(d[3].val, sizeof d[3].val, "%ld", m->wrong[LIB_DUET]);
    if (m->sec[LIB_MPI] >= 0) {
      fmt_num(x[0].val, sizeof x[0].val, m->sec[LIB_MPI] * 1e6, 3);
      if (sec > 0)
        fmt_num(x[1].val, sizeof x[1].val, m->sec[LIB_MPI] / sec, 3);
    }
    if (m->wrong[LIB_MPI] >= 0)
      snprintf(x[2].val, sizeof x[2].val, "%ld", m->wrong[LIB_MPI]);
  }
}

/* A JSON string: the characters JSON needs escaped are escaped. */
static void json_str(const char *s) {
  putchar('"');
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}
static void json_str_or_null(const char *s) {
  if (s)
    json_str(s);
  else
    printf("null");
}

static void print_row(bench_t *b, const row_t *r) {
  const coll_t *c = b->o->coll;
  field_t f[NFIELDS];
  if (b->o->format != FMT_TABLE) {
    row_fields(b, r, f);
    if (b->o->format == FMT_JSON)
      printf("%s\n    {", b->rows ? "," : "");
    for (int i = 0; i < NFIELDS; i++) {
      if (b->o->format == FMT_CSV) {
        printf("%s%s", i ? "," : "", f[i].val);
        continue;
      }
      printf("%s\"%s\": ", i ? ", " : "", f[i].name);
      if (!f[i].val[0])
        printf("null");
      else if (f[i].str)
        json_str(f[i].val);
      else
        printf("%s", f[i].val);
    }
    printf(b->o->format == FMT_JSON ? "}" : "\n");
  } else {
    printf("%12zu  %12zu  %10s  %6s", r->bytes, r->count, r->type, r->op);
    if (c->has_root)
      printf("  %4d", r->root);
    for (int ip = 0; ip < 2; ip++) {
      const meas_t *m = &r->m[ip];
      double sec = m->sec[LIB_DUET];
      char nwrong[24] = "N/A", algbw[24] = "N/A", busbw[24] = "N/A";
      if (sec < 0) { /* no in-place form */
        printf("  %9s  %7s  %7s  %6s", "N/A", "N/A", "N/A", "N/A");
      } else {
        if (c->has_size) {
          double bw = (double)r->bytes / sec / 1e9;
          snprintf(algbw, sizeof algbw, "%.2f", bw);
          snprintf(busbw, sizeof busbw, "%.2f", bw * c->bus_factor(b->nranks));
        }
        if (m->wrong[LIB_DUET] >= 0)
          snprintf(nwrong, sizeof nwrong, "%ld", m->wrong[LIB_DUET]);
        printf("  %9.2f  %7s  %7s  %6s", sec * 1e6, algbw, busbw, nwrong);
      }
      if (b->o->compare) {
        if (m->sec[LIB_MPI] >= 0 && sec > 0)
          printf("  %9.2f  %6.2f", m->sec[LIB_MPI] * 1e6, m->sec[LIB_MPI] / sec);
        else
          printf("  %9s  %6s", "N/A", "N/A");
      }
    }
    printf("\n");
  }
  fflush(stdout);
  b->rows++;
}

static void bench_sweep(bench_t *b, const dtype_t *t, duet_op_t op) {
  const opts_t *o = b->o;
  const coll_t *c = o->coll;
  unsigned char in[PERIOD * 8], want[PERIOD * 8];
  call_t call = {.send = b->send,
                 .recv = b->recv,
                 .t = t,
                 .op = op,
                 .root = o->root,
                 .rank = b->rank,
                 .nranks = b->nranks,
                 .comm = b->comm,
                 .mdt = mpi_type(c, t),
                 .mop = mpi_op(op)};
  make_pattern(t, op, b->rank, b->nranks, in, want);

  size_t last_count = (size_t)-1;
  for (size_t size = o->minbytes; size <= o->maxbytes;) {
    size_t count = count_of(c, size, t, b->nranks);
    if (count != last_count) { /* small sizes may round to the same count */
      row_t r = {.bytes = count * t->size,
                 .count = count,
                 .type = c->has_size ? t->name : "none",
                 .op = c->has_op ? op_names[op] : "none",
                 .root = c->has_root ? o->root : -1};
      call.count = count;
      for (int ip = 0; ip < 2; ip++) {
        call.in_place = ip;
        measure(b, &call, in, want, &r.m[ip]);
        for (int lib = 0; lib < NLIBS; lib++)
          if (r.m[ip].wrong[lib] > 0)
            b->wrong_total[lib] += r.m[ip].wrong[lib];
        if (b->rank == 0 && c->has_size && r.m[ip].sec[LIB_DUET] > 0) {
          b->bw_sum += (double)r.bytes / r.m[ip].sec[LIB_DUET] / 1e9 * c->bus_factor(b->nranks);
          b->bw_count++;
        }
      }
      if (b->rank == 0)
        print_row(b, &r);
      last_count = count;
    }
    if (!c->has_size)
      break; /* one row */
    size_t next = o->stepfactor > 1 ? (size_t)((double)size * o->stepfactor) : size + o->stepbytes;
    if (next <= size)
      break; /* overflow or a factor too close to 1 */
    size = next;
  }
}

static void print_header(bench_t *b, int version) {
  const opts_t *o = b->o;
  const coll_t *c = o->coll;
  const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
  const char *algo = getenv("DUET_ALGO"), *thread = getenv("DUET_PROGRESS_THREAD");
  char mpiver[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int len = 0;
  MPI_Get_library_version(mpiver, &len);
  mpiver[strcspn(mpiver, ",\n")] = 0; /* the first words: name and version */

  if (o->format == FMT_CSV) {
    field_t f[NFIELDS];
    row_fields(b, NULL, f);
    for (int i = 0; i < NFIELDS; i++)
      printf("%s%s", i ? "," : "", f[i].name);
    printf("\n");
    return;
  }
  if (o->format == FMT_JSON) {
    char ver[32];
    snprintf(ver, sizeof ver, "%d.%d.%d", version / 10000, version / 100 % 100, version % 100);
    printf("{\n  \"benchmark\": \"duet_perf\",\n  \"collective\": \"%s\",\n  \"nranks\": %d,\n",
           c->name, b->nranks);
    printf("  \"datatype\": \"%s\",\n", o->dt < 0 ? "all" : dtypes[o->dt].name);
    printf("  \"op\": \"%s\",\n", !c->has_op ? "none" : o->op < 0 ? "all" : op_names[o->op]);
    if (c->has_root)
      printf("  \"root\": %d,\n", o->root);
    else
      printf("  \"root\": null,\n");
    printf("  \"min_bytes\": %zu,\n  \"max_bytes\": %zu,\n", o->minbytes, o->maxbytes);
    if (o->stepfactor > 1)
      printf("  \"step_factor\": %g,\n  \"step_bytes\": null,\n", o->stepfactor);
    else
      printf("  \"step_factor\": null,\n  \"step_bytes\": %zu,\n", o->stepbytes);
    printf("  \"iterations\": %d,\n  \"warmup\": %d,\n  \"rounds\": %d,\n  \"check\": %d,\n",
           o->iters, o->warmup, o->rounds, o->check);
    printf("  \"time\": \"us, median over rounds of the mean per iteration, averaged over "
           "ranks\",\n");
    printf("  \"compare\": %s,\n", o->compare ? "\"mpi\"" : "null");
    printf("  \"nonblocking\": %s,\n", nonblocking ? "true" : "false");
    printf("  \"overlap_us\": %g,\n  \"overlap_sleep\": %s,\n", overlap_us,
           overlap_sleep ? "true" : "false");
    printf("  \"barrier\": %s,\n", o->barrier ? "true" : "false");
    printf("  \"mem_alloc\": %s,\n", o->mem_alloc ? "true" : "false");
    printf("  \"mpi_library\": ");
    json_str(mpiver);
    if (c->kind == K_ALLTOALLV)
      printf(",\n  \"skew\": %g", o->skew);
    printf(",\n  \"version\": \"%s\",\n  \"library_version\": %d,\n  \"commit\": ", ver, version);
    json_str_or_null(getenv("DUET_COMMIT"));
    printf(",\n  \"env\": {\"DUET_UPN_PROVIDER\": ");
    json_str_or_null(upn);
    printf(", \"DUET_HPN_PROVIDER\": ");
    json_str_or_null(hpn);
    printf(", \"DUET_ALGO\": ");
    json_str_or_null(algo);
    printf(", \"DUET_PROGRESS_THREAD\": ");
    json_str_or_null(thread);
    printf("},\n  \"rows\": [");
    return;
  }

  printf("# duet_perf: %s, %d ranks, duet %d.%d.%d (library %d)\n", c->name, b->nranks,
         DUET_VERSION_MAJOR, DUET_VERSION_MINOR, DUET_VERSION_PATCH, version);
  printf("#  minBytes %zu maxBytes %zu step: ", o->minbytes, o->maxbytes);
  if (o->stepfactor > 1)
    printf("%g(factor)", o->stepfactor);
  else
    printf("%zu(bytes)", o->stepbytes);
  printf(" warmup iters: %d iters: %d validation: %d\n", o->warmup, o->iters, o->check);
  if (nonblocking && overlap_us > 0)
    printf("#  non-blocking forms: each call posted, %g us of %s, then waited\n", overlap_us,
           overlap_sleep ? "sleep" : "computation (spinning)");
  else if (nonblocking)
    printf("#  non-blocking forms: each call posted, then waited\n");
  if (o->barrier)
    printf("#  each call timed alone after an MPI_Barrier; time is the mean of those times\n");
  if (o->mem_alloc)
    printf("#  buffers from duet_mem_alloc\n");
  printf("#  DUET_UPN_PROVIDER=%s DUET_HPN_PROVIDER=%s DUET_ALGO=%s DUET_PROGRESS_THREAD=%s\n",
         upn ? upn : "(default)", hpn ? hpn : "(default)", algo ? algo : "(default)",
         thread ? thread : "(default)");
  if (o->rounds > 1 || o->compare)
    printf("#  rounds: %d; time is the median over rounds of the loop's mean per iteration\n",
           o->rounds);
  if (o->compare)
    printf("#  compare: %s, on the same buffers; each round times duet's loop, then MPI's;\n"
           "#  mpi_time = MPI's time, ratio = mpi_time / time (> 1: duet is faster)\n",
           mpiver);
  if (c->kind == K_ALLTOALLV) {
    size_t *w = malloc(sizeof(size_t) * (size_t)b->nranks);
    int shown = b->nranks < 8 ? b->nranks : 8;
    if (!w)
      MPI_Abort(MPI_COMM_WORLD, 1);
    skew_counts(1000000, b->nranks, o->skew, w);
    printf("#  skew %g: weight of destination d = 1/(d+1)^%g%s; share per destination "
           "(per mille):",
           o->skew, o->skew, o->skew > 0 && b->nranks / 4 ? ", the last n/4 get nothing" : "");
    for (int d = 0; d < shown; d++)
      printf(" %zu", w[d] / 1000);
    printf("%s; no in-place form\n", b->nranks > shown ? " ..." : "");
    free(w);
  }
}

static void print_columns(const bench_t *b) {
  const coll_t *c = b->o->coll;
  int cmp = b->o->compare, width = cmp ? 54 : 35;
  const char *root = c->has_root ? "      " : "";
  printf("# %10s  %12s  %10s  %6s%s", "", "", "", "", root);
  for (int ip = 0; ip < 2; ip++) { /* the group's name centred over its columns */
    int pad = cmp ? 21 : 12;
    printf("  %*s%-*s", pad, "", width - pad, ip ? "  in-place" : "out-of-place");
  }
  printf("\n# %10s  %12s  %10s  %6s%s", "size", "count", "type", "redop",
         c->has_root ? "  root" : "");
  for (int ip = 0; ip < 2; ip++) {
    printf("  %9s  %7s  %7s  %6s", "time", "algbw", "busbw", "#wrong");
    if (cmp)
      printf("  %9s  %6s", "mpi_time", "ratio");
  }
  printf("\n# %10s  %12s  %10s  %6s%s", "(B)", "(elements)", "", "", root);
  for (int ip = 0; ip < 2; ip++) {
    printf("  %9s  %7s  %7s  %6s", "(us)", "(GB/s)", "(GB/s)", "");
    if (cmp)
      printf("  %9s  %6s", "(us)", "");
  }
  printf("\n");
}

int main(int argc, char **argv) {
  bench_t b = {0};
  opts_t o;
  duet_unique_id_t id;
  duet_status_t st;
  int version = 0;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &b.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &b.nranks);
  const char *err = parse_opts(argc, argv, &o);
  if (!err && o.root >= b.nranks)
    err = OPT_ERR("-r: root %d is out of range: %d ranks (0..%d)", o.root, b.nranks, b.nranks - 1);
  if (err) {
    if (b.rank == 0) {
      if (*err)
        fprintf(stderr, "duet_perf: %s (-h for help)\n", err);
      else
        usage(stdout, argv[0]);
    }
    MPI_Finalize();
    return *err ? 2 : 0;
  }
  b.o = &o;
  g_rank = b.rank;
  g_nranks = b.nranks;
  g_skew = o.skew;

  /* rank 0 creates the rendezvous; MPI carries its id to everybody */
  memset(&id, 0, sizeof id);
  if (b.rank == 0 && (st = duet_get_unique_id(&id)) < 0)
    die(&b, LIB_DUET, st, "duet_get_unique_id");
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  if ((st = duet_comm_init_rank(&b.comm, b.nranks, id, b.rank, NULL)) < 0)
    die(&b, LIB_DUET, st, "duet_comm_init_rank");
  duet_get_version(&version);

  /* one allocation for the largest size of the widest type, touched now */
  size_t sbytes = 0, rbytes = 0;
  for (int d = 0; d < DUET_NUM_DATATYPES && o.coll->has_size; d++) {
    size_t sz = dtypes[d].size, count = count_of(o.coll, o.maxbytes, &dtypes[d], b.nranks);
    size_t sb = o.coll->send_elems(count, b.nranks) * sz,
           rb = o.coll->recv_elems(count, b.nranks) * sz;
    sbytes = sb > sbytes ? sb : sbytes;
    rbytes = rb > rbytes ? rb : rbytes;
  }
  if (o.mem_alloc) {
    void *sp = NULL, *rp = NULL;
    if ((st = duet_mem_alloc(&sp, sbytes + 8)) < 0 || (st = duet_mem_alloc(&rp, rbytes + 8)) < 0)
      die(&b, LIB_DUET, st, "duet_mem_alloc");
    b.send = sp;
    b.recv = rp;
  } else {
    b.send = malloc(sbytes + 8);
    b.recv = malloc(rbytes + 8);
  }
  b.recv_bytes = rbytes;
  if (!b.send || !b.recv) {
    fprintf(stderr, "[rank %d] cannot allocate %zu + %zu bytes\n", b.rank, sbytes, rbytes);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  memset(b.send, 0, sbytes + 8);
  memset(b.recv, 0, rbytes + 8);

  char host[256] = "";
  gethostname(host, sizeof host - 1);
  int pid = (int)getpid();
  char *hosts = b.rank == 0 ? malloc(256 * (size_t)b.nranks) : NULL;
  int *pids = b.rank == 0 ? malloc(sizeof(int) * (size_t)b.nranks) : NULL;
  MPI_Gather(host, 256, MPI_CHAR, hosts, 256, MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Gather(&pid, 1, MPI_INT, pids, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (b.rank == 0) {
    print_header(&b, version);
    if (o.format == FMT_TABLE) {
      printf("#\n# Using ranks:\n");
      for (int r = 0; r < b.nranks; r++)
        printf("#  Rank %2d Pid %6d on %s\n", r, pids[r], hosts + 256 * (size_t)r);
      printf("#\n");
      print_columns(&b);
    }
    fflush(stdout);
  }
  free(hosts);
  free(pids);

  for (int d = 0; d < DUET_NUM_DATATYPES; d++) {
    if (o.coll->has_size ? (o.dt >= 0 && d != o.dt) : d != (o.dt >= 0 ? o.dt : 0))
      continue;
    for (int op = 0; op < DUET_NUM_OPS; op++) {
      if (o.coll->has_op ? (o.op >= 0 && op != o.op) : op > 0)
        continue;
      bench_sweep(&b, &dtypes[d], (duet_op_t)op);
    }
  }

  if ((st = duet_comm_destroy(b.comm)) < 0)
    die(&b, LIB_DUET, st, "duet_comm_destroy");
  if (o.mem_alloc) {
    duet_mem_free(b.send);
    duet_mem_free(b.recv);
  } else {
    free(b.send);
    free(b.recv);
  }
  if (b.rank == 0) {
    double avg = b.bw_count ? b.bw_sum / (double)b.bw_count : 0.0;
    int mpi_checked = o.compare && o.check && o.coll->kind != K_BARRIER;
    if (o.format == FMT_TABLE) {
      printf("# Out of bounds values : %ld %s\n", b.wrong_total[LIB_DUET],
             b.wrong_total[LIB_DUET] ? "FAILED" : "OK");
      if (mpi_checked)
        printf("# MPI out of bounds values : %ld %s\n", b.wrong_total[LIB_MPI],
               b.wrong_total[LIB_MPI] ? "FAILED" : "OK");
      printf("# Avg bus bandwidth : %g\n", avg);
      printf("#\n");
    } else if (o.format == FMT_JSON) {
      printf("\n  ],\n  \"wrong\": ");
      if (o.check && o.coll->kind != K_BARRIER)
        printf("%ld", b.wrong_total[LIB_DUET]);
      else
        printf("null");
      printf(",\n  \"mpi_wrong\": ");
      if (mpi_checked)
        printf("%ld", b.wrong_total[LIB_MPI]);
      else
        printf("null");
      printf(",\n  \"avg_busbw\": %.4f\n}\n", avg);
    }
    fflush(stdout);
  }
  MPI_Finalize();
  return b.wrong_total[LIB_DUET] || b.wrong_total[LIB_MPI] ? 1 : 0;
}
