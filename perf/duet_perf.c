/*
 * duet_perf.c - nccl-tests style benchmark of duet collectives.
 *
 *   mpirun -np 4 perf/duet_perf -b 8 -e 64M -f 2 -d float32 -o sum
 *
 * MPI only launches the ranks, hands out the duet unique id and gathers the
 * timings and error counts for the report; the timed work is pure duet.
 * Columns, out of place then in place: time is the average per iteration
 * over the timed loop (averaged over ranks), algbw = size / time and
 * busbw = algbw * the collective's bus factor (2(n-1)/n for allreduce), as in
 * nccl-tests' doc/PERFORMANCE.md. With -c 1 each size is then run once more on
 * a known input and #wrong counts elements differing from the exact expected
 * result, computed locally without communication.
 *
 * alltoall and alltoallv (-C alltoall|alltoallv, or -o alltoall|alltoallv):
 * as nccl-tests, size is the bytes each rank sends in total (for alltoall
 * nranks blocks of size/nranks, the size rounded down to a multiple of
 * nranks elements) and busbw = algbw * (n-1)/n. alltoallv spreads each rank's
 * size over the destinations by --skew (MoE token dispatch, formula in the
 * help); it does not run in place, so its in-place columns read N/A.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ---- collectives: adding one is a row and a run function ---- */
enum { KIND_REDUCE, KIND_ALLTOALL, KIND_ALLTOALLV };
typedef struct {
  const char *name;
  int has_op, has_root;
  double (*bus_factor)(int nranks);
  /* elements in sendbuf and recvbuf for `count` (the size column / type size) */
  size_t (*send_elems)(size_t count, int nranks);
  size_t (*recv_elems)(size_t count, int nranks);
  duet_status_t (*run)(const void *sendbuf, void *recvbuf, size_t count, duet_datatype_t dt,
                       duet_op_t op, int root, duet_comm_t *comm);
  int kind;        /* how inputs are made and checked */
  int in_place_ok; /* 0: the in-place columns read N/A */
} coll_t;

static double allreduce_factor(int n) {
  return n > 1 ? 2.0 * (n - 1) / n : 0;
}
static size_t same_elems(size_t count, int n) {
  (void)n;
  return count;
}
static duet_status_t run_allreduce(const void *s, void *r, size_t count, duet_datatype_t dt,
                                   duet_op_t op, int root, duet_comm_t *comm) {
  (void)root;
  return duet_allreduce(s, r, count, dt, op, comm);
}

/* alltoall: count is every element a rank sends, nranks blocks of count/nranks */
static double alltoall_factor(int n) {
  return n > 1 ? (double)(n - 1) / n : 0;
}
static size_t a2a_elems(size_t count, int n) {
  return count < (size_t)n ? (size_t)n : count;
}
static duet_status_t run_alltoall(const void *s, void *r, size_t count, duet_datatype_t dt,
                                  duet_op_t op, int root, duet_comm_t *comm) {
  int n = 1;
  (void)op, (void)root;
  duet_comm_size(comm, &n);
  return duet_alltoall(s, r, count / (size_t)n, dt, comm);
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
  size_t *cnt = malloc(sizeof(size_t) * (size_t)g_nranks);
  if (!v_sc) {
    v_sc = malloc(sizeof(size_t) * (size_t)g_nranks);
    v_sd = malloc(sizeof(size_t) * (size_t)g_nranks);
    v_rc = malloc(sizeof(size_t) * (size_t)g_nranks);
    v_rd = malloc(sizeof(size_t) * (size_t)g_nranks);
  }
  if (!cnt || !v_sc || !v_sd || !v_rc || !v_rd) {
    fprintf(stderr, "[rank %d] out of memory for the alltoallv counts\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  skew_counts(T, g_nranks, g_skew, cnt);
  size_t so = 0, ro = 0;
  for (int k = 0; k < g_nranks; k++) {
    v_sc[k] = cnt[k];
    v_sd[k] = so;
    so += cnt[k];
    v_rc[k] = cnt[g_rank];
    v_rd[k] = ro;
    ro += cnt[g_rank];
  }
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
static duet_status_t run_alltoallv(const void *s, void *r, size_t count, duet_datatype_t dt,
                                   duet_op_t op, int root, duet_comm_t *comm) {
  (void)op, (void)root;
  if (count != v_T)
    v_plan(count);
  return duet_alltoallv(s, v_sc, v_sd, r, v_rc, v_rd, dt, comm);
}

static const coll_t colls[] = {
    {"allreduce", 1, 0, allreduce_factor, same_elems, same_elems, run_allreduce, KIND_REDUCE, 1},
    {"alltoall", 0, 0, alltoall_factor, a2a_elems, a2a_elems, run_alltoall, KIND_ALLTOALL, 1},
    {"alltoallv", 0, 0, alltoall_factor, same_elems, a2av_recv_elems, run_alltoallv,
     KIND_ALLTOALLV, 0},
};
#define NCOLLS (sizeof colls / sizeof colls[0])

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

static long count_wrong(const void *buf, size_t count, const dtype_t *t,
                        const unsigned char *want) {
  const unsigned char *b = buf;
  long wrong = 0;
  for (size_t i = 0; i < count; i++)
    wrong += memcmp(b + i * t->size, want + (i % PERIOD) * t->size, t->size) != 0;
  return wrong;
}

/* alltoall(v): element i of the block src sends to dst is
 * (7*src + 3*dst + i) mod M, M = 251 or the float type's exact-integer limit
 * if smaller: exact in every type, so the expected block is known locally. */
static void a2a_value(void *dst, const dtype_t *t, int src, int to, size_t i) {
  uint64_t m = 251;
  if (t->is_float && exact_limit(t) < (double)m)
    m = (uint64_t)exact_limit(t);
  uint64_t v = ((uint64_t)src * 7 + (uint64_t)to * 3 + i) % m;
  if (t->is_float)
    store_float(dst, t, (double)v);
  else
    store_int(dst, t, v);
}

/* Block k of buf (cnt[k] elements at displ[k]) for rank k, from `rank`. */
static void a2a_fill(void *buf, const dtype_t *t, int rank, int n, const size_t *cnt,
                     const size_t *displ) {
  unsigned char *b = buf;
  for (int k = 0; k < n; k++)
    for (size_t i = 0; i < cnt[k]; i++)
      a2a_value(b + (displ[k] + i) * t->size, t, rank, k, i);
}

static long a2a_wrong(const void *buf, const dtype_t *t, int rank, int n, const size_t *cnt,
                      const size_t *displ) {
  const unsigned char *b = buf;
  unsigned char want[8];
  long wrong = 0;
  for (int k = 0; k < n; k++)
    for (size_t i = 0; i < cnt[k]; i++) {
      a2a_value(want, t, k, rank, i);
      wrong += memcmp(b + (displ[k] + i) * t->size, want, t->size) != 0;
    }
  return wrong;
}

/* The blocks of an alltoall of `count` elements in all: equal, packed. */
static void a2a_blocks(size_t count, int n, size_t *cnt, size_t *displ) {
  for (int k = 0; k < n; k++) {
    cnt[k] = count / (size_t)n;
    displ[k] = (size_t)k * cnt[k];
  }
}

/* ---- options ---- */
typedef struct {
  size_t minbytes, maxbytes, stepbytes;
  double stepfactor;
  int iters, warmup, check;
  int dt; /* -1: all */
  int op; /* -1: all */
  const coll_t *coll;
  double skew; /* alltoallv */
} opts_t;

static int parse_bytes(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  double mul = 1;
  if (end == s || v < 0)
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
  if (*end)
    return -1;
  *out = (size_t)(v * mul);
  return 0;
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [options]\n"
          "  -C <coll>    collective: allreduce alltoall alltoallv (default allreduce)\n"
          "  -b <bytes>   minimum size, K/M/G suffixes (default 8)\n"
          "  -e <bytes>   maximum size (default 32M)\n"
          "  -f <factor>  multiply the size by this each step (default 2)\n"
          "  -i <bytes>   add this to the size each step instead (when -f is 1)\n"
          "  -n <iters>   timed iterations per size (default 20)\n"
          "  -w <iters>   warmup iterations (default 5)\n"
          "  -c <0|1>     check results (default 1)\n"
          "  -d <type>    int8 uint8 int32 uint32 int64 uint64 float16 bfloat16 float32 float64\n"
          "               float8e4m3 float8e5m2 or all (default float32)\n"
          "  -o <op>      sum prod min max avg or all (default sum); a collective name\n"
          "               (-o alltoall, -o alltoallv) selects the collective, as -C\n"
          "  --skew <F>   alltoallv: skew of the per-destination counts, as in MoE token\n"
          "               dispatch (default 0: uniform). Each of the n ranks sends\n"
          "               T = size/typesize elements; destination d gets weight\n"
          "               w_d = 1/(d+1)^F, except that with F > 0 the last floor(n/4)\n"
          "               ranks get nothing; count_d = floor(T*w_d/sum(w)) and rank 0 also\n"
          "               gets the remainder, so the counts sum to T. Every rank sends the\n"
          "               same counts, so rank d receives n*count_d.\n"
          "  -h           this help\n"
          "Sizes not a multiple of the type size are rounded down to whole elements (at least "
          "one).\n"
          "alltoall, alltoallv: size is the bytes each rank sends in total (as nccl-tests);\n"
          "alltoall rounds it down to a multiple of n elements (at least n);\n"
          "busbw = algbw * (n-1)/n. alltoallv has no in-place form (N/A columns).\n",
          prog);
}

static const char *parse_opts(int argc, char **argv, opts_t *o) {
  int opt;
  static const struct option longopts[] = {{"skew", required_argument, NULL, 'S'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  *o = (opts_t){8, 32u << 20, 1u << 20, 2.0, 20, 5, 1, DUET_FLOAT32, DUET_SUM, &colls[0], 0.0};
  while ((opt = getopt_long(argc, argv, "C:b:e:f:i:n:w:c:d:o:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'S': {
      char *end;
      o->skew = strtod(optarg, &end);
      if (end == optarg || *end || !(o->skew >= 0) || o->skew > 1e6)
        return "--skew must be a number >= 0";
      break;
    }
    case 'C': {
      o->coll = NULL;
      for (size_t i = 0; i < NCOLLS; i++)
        if (strcmp(optarg, colls[i].name) == 0)
          o->coll = &colls[i];
      if (!o->coll)
        return "unknown collective (-C)";
      break;
    }
    case 'b':
      if (parse_bytes(optarg, &o->minbytes))
        return "bad -b size";
      break;
    case 'e':
      if (parse_bytes(optarg, &o->maxbytes))
        return "bad -e size";
      break;
    case 'i':
      if (parse_bytes(optarg, &o->stepbytes) || o->stepbytes == 0)
        return "bad -i size";
      o->stepfactor = 1;
      break;
    case 'f':
      o->stepfactor = atof(optarg);
      if (o->stepfactor < 1)
        return "-f must be >= 1";
      break;
    case 'n':
      if ((o->iters = atoi(optarg)) < 1)
        return "-n must be >= 1";
      break;
    case 'w':
      if ((o->warmup = atoi(optarg)) < 0)
        return "-w must be >= 0";
      break;
    case 'c':
      o->check = atoi(optarg) != 0;
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
        return "unknown datatype (-d)";
      break;
    }
    case 'o': {
      /* a collective's name selects the collective (users type -o alltoall) */
      const coll_t *named = NULL;
      for (size_t i = 0; i < NCOLLS; i++)
        if (strcmp(optarg, colls[i].name) == 0)
          named = &colls[i];
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
        return "unknown op or collective (-o)";
      o->op = op;
      break;
    }
    case 'h':
      return "";
    default:
      return "unknown option";
    }
  }
  if (o->minbytes > o->maxbytes)
    return "-b is larger than -e";
  return NULL;
}

/* ---- the benchmark ---- */
typedef struct {
  int rank, nranks;
  duet_comm_t *comm;
  const opts_t *o;
  unsigned char *send, *recv;
  double bw_sum;
  long bw_count, wrong_total;
} bench_t;

static void die(bench_t *b, duet_status_t st, const char *what) {
  fprintf(stderr, "[rank %d] %s: %s: %s\n", b->rank, what, duet_strerror(st),
          duet_last_error(b->comm));
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

/* The input of `count`: the reduction pattern, or the alltoall(v) blocks. */
static void fill_input(bench_t *b, const dtype_t *t, size_t count, int in_place,
                       const unsigned char *in) {
  const coll_t *c = b->o->coll;
  void *dst = in_place ? b->recv : b->send;
  if (c->kind == KIND_REDUCE) {
    fill_pattern(dst, c->send_elems(count, b->nranks), t, in);
  } else if (c->kind == KIND_ALLTOALL) {
    size_t *cnt = malloc(2 * sizeof(size_t) * (size_t)b->nranks);
    if (!cnt)
      MPI_Abort(MPI_COMM_WORLD, 1);
    a2a_blocks(count, b->nranks, cnt, cnt + b->nranks);
    a2a_fill(dst, t, b->rank, b->nranks, cnt, cnt + b->nranks);
    free(cnt);
  } else {
    if (count != v_T)
      v_plan(count);
    a2a_fill(dst, t, b->rank, b->nranks, v_sc, v_sd);
  }
}

/* Elements of recvbuf that differ from the expected result. */
static long wrong_of(bench_t *b, const dtype_t *t, size_t count, const unsigned char *want) {
  const coll_t *c = b->o->coll;
  long wrong;
  if (c->kind == KIND_REDUCE)
    return count_wrong(b->recv, c->recv_elems(count, b->nranks), t, want);
  if (c->kind == KIND_ALLTOALLV) {
    if (count != v_T)
      v_plan(count);
    return a2a_wrong(b->recv, t, b->rank, b->nranks, v_rc, v_rd);
  }
  size_t *cnt = malloc(2 * sizeof(size_t) * (size_t)b->nranks);
  if (!cnt)
    MPI_Abort(MPI_COMM_WORLD, 1);
  a2a_blocks(count, b->nranks, cnt, cnt + b->nranks);
  wrong = a2a_wrong(b->recv, t, b->rank, b->nranks, cnt, cnt + b->nranks);
  free(cnt);
  return wrong;
}

/* Time one placement; returns the rank-averaged seconds per iteration and
 * the job-wide number of wrong elements (or -1 without -c); -1 seconds when
 * the collective has no in-place form. */
static double time_one(bench_t *b, const dtype_t *t, duet_op_t op, size_t count, int in_place,
                       const unsigned char *in, const unsigned char *want, long *wrong) {
  const coll_t *c = b->o->coll;
  const void *s = in_place ? b->recv : b->send;
  duet_status_t st;
  int root = 0;

  *wrong = -1;
  if (in_place && !c->in_place_ok)
    return -1;
  fill_input(b, t, count, in_place, in);
  for (int i = 0; i < b->o->warmup; i++)
    if ((st = c->run(s, b->recv, count, t->dt, op, root, b->comm)) < 0)
      die(b, st, c->name);
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < b->o->iters; i++)
    if ((st = c->run(s, b->recv, count, t->dt, op, root, b->comm)) < 0)
      die(b, st, c->name);
  double sec = (MPI_Wtime() - t0) / b->o->iters, avg = 0;
  MPI_Allreduce(&sec, &avg, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  avg /= b->nranks;

  if (b->o->check) {
    long mine;
    fill_input(b, t, count, in_place, in);
    if (!in_place)
      memset(b->recv, 0, c->recv_elems(count, b->nranks) * t->size);
    if ((st = c->run(s, b->recv, count, t->dt, op, root, b->comm)) < 0)
      die(b, st, c->name);
    mine = wrong_of(b, t, count, want);
    MPI_Allreduce(&mine, wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  }
  return avg;
}

static void bench_sweep(bench_t *b, const dtype_t *t, duet_op_t op) {
  const opts_t *o = b->o;
  unsigned char in[PERIOD * 8], want[PERIOD * 8];
  make_pattern(t, op, b->rank, b->nranks, in, want);

  size_t last_count = 0;
  for (size_t size = o->minbytes; size <= o->maxbytes;) {
    size_t count = size / t->size ? size / t->size : 1;
    if (o->coll->kind == KIND_ALLTOALL) /* nranks equal blocks */
      count = count < (size_t)b->nranks ? (size_t)b->nranks
                                        : count / (size_t)b->nranks * (size_t)b->nranks;
    size_t bytes = count * t->size;
    if (count != last_count) { /* small sizes may round to the same count */
      long wrong[2];
      double sec[2];
      for (int ip = 0; ip < 2; ip++)
        sec[ip] = time_one(b, t, op, count, ip, in, want, &wrong[ip]);
      if (b->rank == 0) {
        printf("%12zu  %12zu  %10s  %6s", bytes, count, t->name,
               o->coll->has_op ? op_names[op] : "none");
        if (o->coll->has_root)
          printf("  %4d", 0);
        for (int ip = 0; ip < 2; ip++) {
          if (sec[ip] < 0) { /* no in-place form */
            printf("  %9s  %7s  %7s  %6s", "N/A", "N/A", "N/A", "N/A");
            continue;
          }
          double algbw = (double)bytes / sec[ip] / 1e9;
          double busbw = algbw * o->coll->bus_factor(b->nranks);
          char nwrong[24] = "N/A";
          if (wrong[ip] >= 0)
            snprintf(nwrong, sizeof nwrong, "%ld", wrong[ip]);
          printf("  %9.2f  %7.2f  %7.2f  %6s", sec[ip] * 1e6, algbw, busbw, nwrong);
          b->bw_sum += busbw;
          b->bw_count++;
        }
        printf("\n");
        fflush(stdout);
      }
      for (int ip = 0; ip < 2; ip++)
        if (wrong[ip] > 0)
          b->wrong_total += wrong[ip];
      last_count = count;
    }
    size_t next = o->stepfactor > 1 ? (size_t)((double)size * o->stepfactor) : size + o->stepbytes;
    if (next <= size)
      break; /* overflow or a factor too close to 1 */
    size = next;
  }
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
  if (err) {
    if (b.rank == 0) {
      if (*err)
        fprintf(stderr, "duet_perf: %s\n", err);
      usage(argv[0]);
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
    die(&b, st, "duet_get_unique_id");
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  if ((st = duet_comm_init_rank(&b.comm, b.nranks, id, b.rank, NULL)) < 0)
    die(&b, st, "duet_comm_init_rank");
  duet_get_version(&version);

  /* one allocation for the largest size of the widest type, touched now */
  size_t sbytes = 0, rbytes = 0;
  for (int d = 0; d < DUET_NUM_DATATYPES; d++) {
    size_t sz = dtypes[d].size, count = o.maxbytes / sz ? o.maxbytes / sz : 1;
    size_t sb = o.coll->send_elems(count, b.nranks) * sz,
           rb = o.coll->recv_elems(count, b.nranks) * sz;
    sbytes = sb > sbytes ? sb : sbytes;
    rbytes = rb > rbytes ? rb : rbytes;
  }
  b.send = malloc(sbytes + 8);
  b.recv = malloc(rbytes + 8);
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
    const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
    const char *algo = getenv("DUET_ALGO");
    printf("# duet_perf: %s, %d ranks, duet %d.%d.%d (library %d)\n", o.coll->name, b.nranks,
           DUET_VERSION_MAJOR, DUET_VERSION_MINOR, DUET_VERSION_PATCH, version);
    printf("#  minBytes %zu maxBytes %zu step: ", o.minbytes, o.maxbytes);
    if (o.stepfactor > 1)
      printf("%g(factor)", o.stepfactor);
    else
      printf("%zu(bytes)", o.stepbytes);
    printf(" warmup iters: %d iters: %d validation: %d\n", o.warmup, o.iters, o.check);
    printf("#  DUET_UPN_PROVIDER=%s DUET_HPN_PROVIDER=%s DUET_ALGO=%s\n", upn ? upn : "(default)",
           hpn ? hpn : "(default)", algo ? algo : "(default)");
    if (o.coll->kind == KIND_ALLTOALLV) {
      size_t *w = malloc(sizeof(size_t) * (size_t)b.nranks);
      int shown = b.nranks < 8 ? b.nranks : 8;
      if (!w)
        MPI_Abort(MPI_COMM_WORLD, 1);
      skew_counts(1000000, b.nranks, o.skew, w);
      printf("#  skew %g: weight of destination d = 1/(d+1)^%g%s; share per destination "
             "(per mille):",
             o.skew, o.skew, o.skew > 0 && b.nranks / 4 ? ", the last n/4 get nothing" : "");
      for (int d = 0; d < shown; d++)
        printf(" %zu", w[d] / 1000);
      printf("%s; no in-place form\n", b.nranks > shown ? " ..." : "");
      free(w);
    }
    printf("#\n# Using ranks:\n");
    for (int r = 0; r < b.nranks; r++)
      printf("#  Rank %2d Pid %6d on %s\n", r, pids[r], hosts + 256 * (size_t)r);
    printf("#\n");
    printf("# %10s  %12s  %10s  %6s%s", "", "", "", "", o.coll->has_root ? "      " : "");
    for (int ip = 0; ip < 2; ip++) /* centred over the group's 35 columns */
      printf("  %*s%-*s", 12, "", 23, ip ? "  in-place" : "out-of-place");
    printf("\n");
    printf("# %10s  %12s  %10s  %6s%s", "size", "count", "type", "redop",
           o.coll->has_root ? "  root" : "");
    for (int ip = 0; ip < 2; ip++)
      printf("  %9s  %7s  %7s  %6s", "time", "algbw", "busbw", "#wrong");
    printf("\n# %10s  %12s  %10s  %6s%s", "(B)", "(elements)", "", "",
           o.coll->has_root ? "      " : "");
    for (int ip = 0; ip < 2; ip++)
      printf("  %9s  %7s  %7s  %6s", "(us)", "(GB/s)", "(GB/s)", "");
    printf("\n");
    fflush(stdout);
  }
  free(hosts);
  free(pids);

  for (int d = 0; d < DUET_NUM_DATATYPES; d++) {
    if (o.dt >= 0 && d != o.dt)
      continue;
    for (int op = 0; op < DUET_NUM_OPS; op++) {
      if (o.coll->has_op ? (o.op >= 0 && op != o.op) : op > 0)
        continue;
      bench_sweep(&b, &dtypes[d], (duet_op_t)op);
    }
  }

  if ((st = duet_comm_destroy(b.comm)) < 0)
    die(&b, st, "duet_comm_destroy");
  free(b.send);
  free(b.recv);
  if (b.rank == 0) {
    printf("# Out of bounds values : %ld %s\n", b.wrong_total, b.wrong_total ? "FAILED" : "OK");
    printf("# Avg bus bandwidth : %g\n", b.bw_count ? b.bw_sum / (double)b.bw_count : 0.0);
    printf("#\n");
  }
  MPI_Finalize();
  return b.wrong_total ? 1 : 0;
}
