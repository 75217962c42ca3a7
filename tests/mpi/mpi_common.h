/*
 * mpi_common.h - helpers shared by the mpirun-launched duet tests.
 *
 * Header-only (every function is static). MPI is a launcher and a reference
 * here, never a transport: rank 0 creates the duet unique id, MPI_Bcast hands
 * it to every rank, and each rank joins with duet_comm_init_rank. Results are
 * checked against MPI_Allreduce for the types MPI knows, and against a serial
 * reduction of every rank's input (gathered with MPI_Allgather) for float16,
 * bfloat16 and the two float8 types, which MPI lacks, and for 8-bit integers
 * (Open MPI 4.1 saturates their sums instead of wrapping, see mt_reference).
 *
 * Inputs are chosen so that every partial result is exact in the type: any
 * summation order (ring, recursive doubling, MPI's own) gives the same bits,
 * so results are compared bitwise.
 */
#ifndef DUET_MPI_COMMON_H
#define DUET_MPI_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <mpi.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#include "duet.h"

/* Abort the whole job (no rank may hang) when a duet call fails. */
#define MT_CHECK(comm, call)                                                                       \
  do {                                                                                             \
    duet_status_t mt_st_ = (call);                                                                 \
    if (mt_st_ < 0) {                                                                              \
      int mt_r_ = -1;                                                                              \
      MPI_Comm_rank(MPI_COMM_WORLD, &mt_r_);                                                       \
      fprintf(stderr, "[rank %d] %s:%d: %s failed: %s (%d): %s\n", mt_r_, __FILE__, __LINE__,      \
              #call, duet_strerror(mt_st_), (int)mt_st_, duet_last_error(comm));                   \
      fflush(stderr);                                                                              \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                                \
    }                                                                                              \
  } while (0)
#define CHECK MT_CHECK

/* ---- datatypes and ops ---- */

typedef struct {
  duet_datatype_t dt;
  MPI_Datatype mpi; /* MPI_DATATYPE_NULL: no MPI type, serial reference */
  size_t size;
  const char *name;
  int is_float;
} mt_dtype_t;

/* A function, not a static table: MPI handles are not constants in every MPI. */
static inline const mt_dtype_t *mt_dtype(duet_datatype_t dt) {
  static mt_dtype_t table[DUET_NUM_DATATYPES];
  static int ready;
  if (!ready) {
    const mt_dtype_t init[DUET_NUM_DATATYPES] = {
        {DUET_INT8, MPI_INT8_T, 1, "int8", 0},
        {DUET_UINT8, MPI_UINT8_T, 1, "uint8", 0},
        {DUET_INT32, MPI_INT32_T, 4, "int32", 0},
        {DUET_UINT32, MPI_UINT32_T, 4, "uint32", 0},
        {DUET_INT64, MPI_INT64_T, 8, "int64", 0},
        {DUET_UINT64, MPI_UINT64_T, 8, "uint64", 0},
        {DUET_FLOAT16, MPI_DATATYPE_NULL, 2, "float16", 1},
        {DUET_BFLOAT16, MPI_DATATYPE_NULL, 2, "bfloat16", 1},
        {DUET_FLOAT32, MPI_FLOAT, 4, "float32", 1},
        {DUET_FLOAT64, MPI_DOUBLE, 8, "float64", 1},
        {DUET_FLOAT8_E4M3, MPI_DATATYPE_NULL, 1, "float8e4m3", 1},
        {DUET_FLOAT8_E5M2, MPI_DATATYPE_NULL, 1, "float8e5m2", 1},
    };
    memcpy(table, init, sizeof table);
    ready = 1;
  }
  return (int)dt >= 0 && dt < DUET_NUM_DATATYPES ? &table[dt] : NULL;
}

/* Accepts the table names and common aliases; -1 if unknown. */
static inline int mt_dtype_parse(const char *s) {
  static const struct {
    const char *alias;
    duet_datatype_t dt;
  } aliases[] = {
      {"half", DUET_FLOAT16},
      {"fp16", DUET_FLOAT16},
      {"bf16", DUET_BFLOAT16},
      {"float", DUET_FLOAT32},
      {"fp32", DUET_FLOAT32},
      {"double", DUET_FLOAT64},
      {"fp64", DUET_FLOAT64},
      {"float8_e4m3", DUET_FLOAT8_E4M3},
      {"e4m3", DUET_FLOAT8_E4M3},
      {"fp8e4m3", DUET_FLOAT8_E4M3},
      {"float8_e5m2", DUET_FLOAT8_E5M2},
      {"e5m2", DUET_FLOAT8_E5M2},
      {"fp8e5m2", DUET_FLOAT8_E5M2},
  };
  for (int i = 0; i < DUET_NUM_DATATYPES; i++)
    if (strcmp(s, mt_dtype((duet_datatype_t)i)->name) == 0)
      return i;
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (strcmp(s, aliases[i].alias) == 0)
      return (int)aliases[i].dt;
  return -1;
}

static inline const char *mt_op_name(duet_op_t op) {
  static const char *const names[DUET_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};
  return (int)op >= 0 && op < DUET_NUM_OPS ? names[op] : "?";
}

/* AVG has no MPI op: MPI_SUM, then the single division duet documents. */
static inline MPI_Op mt_op_mpi(duet_op_t op) {
  switch (op) {
  case DUET_PROD:
    return MPI_PROD;
  case DUET_MIN:
    return MPI_MIN;
  case DUET_MAX:
    return MPI_MAX;
  default:
    return MPI_SUM;
  }
}

static inline int mt_op_parse(const char *s) {
  for (int i = 0; i < DUET_NUM_OPS; i++)
    if (strcmp(s, mt_op_name((duet_op_t)i)) == 0)
      return i;
  return -1;
}

/* ---- 16- and 8-bit floats, bit by bit ----
 * A format is (exponent bits, mantissa bits, bias, has infinity). E4M3 is the
 * "fn" variant: no infinity, S.1111.111 is NaN, largest finite 448. */
typedef struct {
  int ebits, mbits, bias, has_inf;
} mt_fmt_t;

static const mt_fmt_t MT_FMT_F16 = {5, 10, 15, 1};
static const mt_fmt_t MT_FMT_BF16 = {8, 7, 127, 1};
static const mt_fmt_t MT_FMT_E4M3 = {4, 3, 7, 0};
static const mt_fmt_t MT_FMT_E5M2 = {5, 2, 15, 1};

static inline float mt_small_to_float(uint32_t bits, const mt_fmt_t *f) {
  uint32_t emask = (1u << f->ebits) - 1, mmask = (1u << f->mbits) - 1;
  uint32_t e = (bits >> f->mbits) & emask, m = bits & mmask;
  int neg = (bits >> (f->ebits + f->mbits)) & 1;
  double v;
  if (f->has_inf && e == emask)
    v = m ? NAN : INFINITY;
  else if (!f->has_inf && e == emask && m == mmask)
    v = NAN;
  else if (e == 0)
    v = ldexp((double)m, 1 - f->bias - f->mbits);
  else
    v = ldexp((double)(m | (1u << f->mbits)), (int)e - f->bias - f->mbits);
  return (float)(neg ? -v : v);
}

/* Round to nearest even; overflow gives infinity (NaN for E4M3). */
static inline uint32_t mt_float_to_small(float x, const mt_fmt_t *f) {
  uint32_t emask = (1u << f->ebits) - 1, mmask = (1u << f->mbits) - 1;
  uint32_t sign = signbit(x) ? 1u << (f->ebits + f->mbits) : 0;
  uint32_t nan = (emask << f->mbits) | mmask;
  uint32_t inf = f->has_inf ? emask << f->mbits : nan;
  double a = fabs((double)x), maxv;
  int emin = 1 - f->bias, e;
  if (isnan(x))
    return sign | nan;
  if (isinf(x))
    return sign | inf;
  if (a == 0)
    return sign;
  if (f->has_inf)
    maxv = ldexp((double)((2u << f->mbits) - 1), (int)emask - 1 - f->bias - f->mbits);
  else
    maxv = ldexp((double)((2u << f->mbits) - 2), (int)emask - f->bias - f->mbits);
  frexp(a, &e);
  e -= 1; /* a in [2^e, 2^(e+1)) */
  if (e < emin)
    e = emin;
  /* a is a float32, the quantum a power of two: a / q is exact in double */
  double r = nearbyint(a / ldexp(1.0, e - f->mbits)) * ldexp(1.0, e - f->mbits);
  if (r > maxv)
    return sign | inf;
  if (r == 0)
    return sign;
  frexp(r, &e);
  e -= 1;
  if (e < emin)
    return sign | (uint32_t)(r / ldexp(1.0, emin - f->mbits));
  uint32_t m = (uint32_t)(r / ldexp(1.0, e - f->mbits)) - (1u << f->mbits);
  return sign | ((uint32_t)(e + f->bias) << f->mbits) | m;
}

static inline float mt_half_to_float(uint16_t h) {
  return mt_small_to_float(h, &MT_FMT_F16);
}
static inline uint16_t mt_float_to_half(float f) {
  return (uint16_t)mt_float_to_small(f, &MT_FMT_F16);
}
static inline float mt_bf16_to_float(uint16_t h) {
  return mt_small_to_float(h, &MT_FMT_BF16);
}
static inline uint16_t mt_float_to_bf16(float f) {
  return (uint16_t)mt_float_to_small(f, &MT_FMT_BF16);
}
static inline float mt_e4m3_to_float(uint8_t v) {
  return mt_small_to_float(v, &MT_FMT_E4M3);
}
static inline uint8_t mt_float_to_e4m3(float f) {
  return (uint8_t)mt_float_to_small(f, &MT_FMT_E4M3);
}
static inline float mt_e5m2_to_float(uint8_t v) {
  return mt_small_to_float(v, &MT_FMT_E5M2);
}
static inline uint8_t mt_float_to_e5m2(float f) {
  return (uint8_t)mt_float_to_small(f, &MT_FMT_E5M2);
}

/* Element i of a float buffer of any float type, as a double (exact). */
static inline double mt_get_float(const void *buf, size_t i, duet_datatype_t dt) {
  switch (dt) {
  case DUET_FLOAT16:
    return mt_half_to_float(((const uint16_t *)buf)[i]);
  case DUET_BFLOAT16:
    return mt_bf16_to_float(((const uint16_t *)buf)[i]);
  case DUET_FLOAT32:
    return ((const float *)buf)[i];
  case DUET_FLOAT64:
    return ((const double *)buf)[i];
  case DUET_FLOAT8_E4M3:
    return mt_e4m3_to_float(((const uint8_t *)buf)[i]);
  case DUET_FLOAT8_E5M2:
    return mt_e5m2_to_float(((const uint8_t *)buf)[i]);
  default:
    return 0;
  }
}

/* Store v (rounded to float32 first for the narrow types) as element i. */
static inline void mt_set_float(void *buf, size_t i, duet_datatype_t dt, double v) {
  switch (dt) {
  case DUET_FLOAT16:
    ((uint16_t *)buf)[i] = mt_float_to_half((float)v);
    break;
  case DUET_BFLOAT16:
    ((uint16_t *)buf)[i] = mt_float_to_bf16((float)v);
    break;
  case DUET_FLOAT32:
    ((float *)buf)[i] = (float)v;
    break;
  case DUET_FLOAT64:
    ((double *)buf)[i] = v;
    break;
  case DUET_FLOAT8_E4M3:
    ((uint8_t *)buf)[i] = mt_float_to_e4m3((float)v);
    break;
  case DUET_FLOAT8_E5M2:
    ((uint8_t *)buf)[i] = mt_float_to_e5m2((float)v);
    break;
  default:
    break;
  }
}

/* Largest integer below which every integer is exact in the float type. */
static inline long mt_float_exact_limit(duet_datatype_t dt) {
  switch (dt) {
  case DUET_FLOAT16:
    return 2048;
  case DUET_BFLOAT16:
    return 256;
  case DUET_FLOAT8_E4M3:
    return 16;
  case DUET_FLOAT8_E5M2:
    return 8;
  default:
    return 1L << 24;
  }
}

/* ---- inputs ---- */

static inline uint64_t mt_hash(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/*
 * Rank `rank`'s input for (dt, op): integers are random-looking (sums and
 * products wrap, as in MPI); floats are small values whose every partial
 * result is exact in the type, whatever the order:
 *   sum/avg: integers in [-A, A] with nranks*A below the type's exact limit
 *            (ranks past the limit contribute 0 when even A = 1 is too big);
 *   prod:    {1, 2, 0.5, -1} (only +-1 beyond rank 7), never 0, so no -0;
 *   min/max: halves in [-3.5, 3.5], +0 only.
 */
static inline void mt_fill_input(void *buf, size_t count, duet_datatype_t dt, duet_op_t op,
                                 int rank, int nranks, uint64_t seed) {
  const mt_dtype_t *t = mt_dtype(dt);
  uint64_t base = mt_hash(seed ^ ((uint64_t)dt << 48) ^ ((uint64_t)op << 40) ^ (uint64_t)rank);
  if (!t->is_float) {
    for (size_t i = 0; i < count; i++) {
      uint64_t h = mt_hash(base + i);
      switch (t->size) {
      case 1:
        ((uint8_t *)buf)[i] = (uint8_t)h;
        break;
      case 4:
        ((uint32_t *)buf)[i] = (uint32_t)h;
        break;
      default:
        ((uint64_t *)buf)[i] = h;
        break;
      }
    }
    return;
  }
  long lim = mt_float_exact_limit(dt), amp = lim / (nranks > 0 ? nranks : 1);
  int zero = 0;
  if (amp > 3)
    amp = 3;
  if (amp < 1) {
    amp = 1;
    zero = rank >= lim;
  }
  for (size_t i = 0; i < count; i++) {
    uint64_t h = mt_hash(base + i);
    double v;
    switch (op) {
    case DUET_PROD: {
      static const double pv[4] = {1, 2, 0.5, -1};
      v = pv[h % 4];
      if (rank >= 8)
        v = (h & 1) ? 1 : -1;
      break;
    }
    case DUET_MIN:
    case DUET_MAX:
      v = (double)((long)(h % 15) - 7) * 0.5;
      break;
    default:
      v = zero ? 0 : (double)((long)(h % (uint64_t)(2 * amp + 1)) - amp);
      break;
    }
    mt_set_float(buf, i, dt, v);
  }
}

/* ---- reference results ---- */

/* buf[i] /= n, as duet's AVG: C division for integers, once in the type. */
static inline void mt_avg_divide(void *buf, size_t count, duet_datatype_t dt, int n) {
  for (size_t i = 0; i < count; i++) {
    switch (dt) {
    case DUET_INT8:
      ((int8_t *)buf)[i] = (int8_t)(((int8_t *)buf)[i] / n);
      break;
    case DUET_UINT8:
      ((uint8_t *)buf)[i] = (uint8_t)(((uint8_t *)buf)[i] / (unsigned)n);
      break;
    case DUET_INT32:
      ((int32_t *)buf)[i] = ((int32_t *)buf)[i] / n;
      break;
    case DUET_UINT32:
      ((uint32_t *)buf)[i] = ((uint32_t *)buf)[i] / (uint32_t)n;
      break;
    case DUET_INT64:
      ((int64_t *)buf)[i] = ((int64_t *)buf)[i] / n;
      break;
    case DUET_UINT64:
      ((uint64_t *)buf)[i] = ((uint64_t *)buf)[i] / (uint64_t)n;
      break;
    case DUET_FLOAT32:
      ((float *)buf)[i] = ((float *)buf)[i] / (float)n;
      break;
    case DUET_FLOAT64:
      ((double *)buf)[i] = ((double *)buf)[i] / (double)n;
      break;
    default: /* narrow floats: through float32 */
      mt_set_float(buf, i, dt, (float)mt_get_float(buf, i, dt) / (float)n);
      break;
    }
  }
}

static inline void *mt_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory (%zu bytes)\n", n);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

/* Element i of an integer buffer, widened (sign-extended for signed types). */
static inline uint64_t mt_get_int(const void *buf, size_t i, duet_datatype_t dt) {
  switch (dt) {
  case DUET_INT8:
    return (uint64_t)(int64_t)((const int8_t *)buf)[i];
  case DUET_UINT8:
    return ((const uint8_t *)buf)[i];
  case DUET_INT32:
    return (uint64_t)(int64_t)((const int32_t *)buf)[i];
  case DUET_UINT32:
    return ((const uint32_t *)buf)[i];
  default:
    return ((const uint64_t *)buf)[i];
  }
}

static inline void mt_set_int(void *buf, size_t i, duet_datatype_t dt, uint64_t v) {
  switch (mt_dtype(dt)->size) {
  case 1:
    ((uint8_t *)buf)[i] = (uint8_t)v;
    break;
  case 4:
    ((uint32_t *)buf)[i] = (uint32_t)v;
    break;
  default:
    ((uint64_t *)buf)[i] = v;
    break;
  }
}

/* v truncated to the type's width, then widened again as mt_get_int does. */
static inline uint64_t mt_wrap_int(uint64_t v, duet_datatype_t dt) {
  switch (dt) {
  case DUET_INT8:
    return (uint64_t)(int64_t)(int8_t)(uint8_t)v;
  case DUET_UINT8:
    return (uint8_t)v;
  case DUET_INT32:
    return (uint64_t)(int64_t)(int32_t)(uint32_t)v;
  case DUET_UINT32:
    return (uint32_t)v;
  default:
    return v;
  }
}

/* ref = op over the n inputs stored one after another in all: integers wrap
 * (sum and product modulo 2^bits), floats reduce in float32 (float64 for
 * float64) and round once. No AVG division here. */
static inline void mt_serial_reduce(const unsigned char *all, int n, size_t count,
                                    duet_datatype_t dt, duet_op_t op, void *ref) {
  const mt_dtype_t *t = mt_dtype(dt);
  size_t bytes = count * t->size;
  int is_signed = dt == DUET_INT8 || dt == DUET_INT32 || dt == DUET_INT64;
  for (size_t i = 0; i < count; i++) {
    if (t->is_float) {
      double acc = mt_get_float(all, i, dt);
      for (int r = 1; r < n; r++) {
        double v = mt_get_float(all + (size_t)r * bytes, i, dt);
        switch (op) {
        case DUET_PROD:
          acc *= v;
          break;
        case DUET_MIN:
          acc = v < acc ? v : acc;
          break;
        case DUET_MAX:
          acc = v > acc ? v : acc;
          break;
        default:
          acc += v;
          break;
        }
        if (dt != DUET_FLOAT64)
          acc = (float)acc; /* float32 arithmetic */
      }
      mt_set_float(ref, i, dt, acc);
    } else {
      uint64_t acc = mt_get_int(all, i, dt);
      for (int r = 1; r < n; r++) {
        uint64_t v = mt_get_int(all + (size_t)r * bytes, i, dt);
        int less = is_signed ? (int64_t)v < (int64_t)acc : v < acc;
        switch (op) {
        case DUET_PROD:
          acc *= v;
          break;
        case DUET_MIN:
          acc = less ? v : acc;
          break;
        case DUET_MAX:
          acc = !less && v != acc ? v : acc;
          break;
        default:
          acc += v;
          break;
        }
        acc = mt_wrap_int(acc, dt); /* back to the type's range */
      }
      mt_set_int(ref, i, dt, acc);
    }
  }
}

/*
 * Collective over `mc`: ref = allreduce(send) as duet defines it. MPI types
 * use MPI_Allreduce, except 8-bit integers: Open MPI 4.1's op/avx component
 * saturates 8- and 16-bit MPI_SUM instead of wrapping (open-mpi/ompi#8045,
 * "wontfix"). Those and the narrow floats gather every rank's input and
 * reduce serially.
 */
static inline void mt_reference(const void *send, void *ref, size_t count, duet_datatype_t dt,
                                duet_op_t op, MPI_Comm mc) {
  const mt_dtype_t *t = mt_dtype(dt);
  int n;
  MPI_Comm_size(mc, &n);
  if (t->mpi != MPI_DATATYPE_NULL && t->size > 1) {
    const size_t chunk = 1 << 28; /* MPI counts are int */
    size_t off = 0;
    do {
      size_t c = count - off < chunk ? count - off : chunk;
      MPI_Allreduce((const char *)send + off * t->size, (char *)ref + off * t->size, (int)c, t->mpi,
                    mt_op_mpi(op), mc);
      off += c;
    } while (off < count);
  } else {
    size_t bytes = count * t->size;
    unsigned char *all = mt_xmalloc(bytes * (size_t)n);
    MPI_Allgather(send, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, mc);
    mt_serial_reduce(all, n, count, dt, op, ref);
    free(all);
  }
  if (op == DUET_AVG)
    mt_avg_divide(ref, count, dt, n);
}

/* Bitwise compare; prints the first few mismatches. Returns how many. */
static inline size_t mt_compare(const void *got, const void *want, size_t count, duet_datatype_t dt,
                                int rank, const char *what) {
  size_t sz = mt_dtype(dt)->size, bad = 0;
  for (size_t i = 0; i < count; i++) {
    const unsigned char *g = (const unsigned char *)got + i * sz;
    const unsigned char *w = (const unsigned char *)want + i * sz;
    if (memcmp(g, w, sz) == 0)
      continue;
    if (bad++ < 5) {
      uint64_t gv = 0, wv = 0;
      memcpy(&gv, g, sz); /* little-endian view of the element's bits */
      memcpy(&wv, w, sz);
      fprintf(stderr, "[rank %d] %s: %s element %zu: got 0x%0*llx want 0x%0*llx", rank, what,
              mt_dtype(dt)->name, i, (int)(2 * sz), (unsigned long long)gv, (int)(2 * sz),
              (unsigned long long)wv);
      if (mt_dtype(dt)->is_float)
        fprintf(stderr, " (%g vs %g)", mt_get_float(got, i, dt), mt_get_float(want, i, dt));
      fputc('\n', stderr);
    }
  }
  if (bad > 5)
    fprintf(stderr, "[rank %d] %s: %zu mismatches in all\n", rank, what, bad);
  return bad;
}

/* Guard bytes after a buffer: fill, then count the ones that changed. */
#define MT_GUARD 64
#define MT_GUARD_BYTE 0xA5
static inline void mt_guard_fill(void *p) {
  memset(p, MT_GUARD_BYTE, MT_GUARD);
}
static inline int mt_guard_check(const void *p, int rank, const char *what) {
  const unsigned char *c = p;
  for (int i = 0; i < MT_GUARD; i++) {
    if (c[i] != MT_GUARD_BYTE) {
      fprintf(stderr, "[rank %d] %s: guard byte %d past the end was overwritten (0x%02x)\n", rank,
              what, i, c[i]);
      return 1;
    }
  }
  return 0;
}

static inline void mt_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* ---- setup ---- */

/* Emulated hosts (tests/cluster/run_cluster.sh): with DUET_TEST_NETNS set,
 * the rank moves into that network namespace (/run/netns/NAME, made by the
 * script) and into a UTS namespace of its own named DUET_TEST_HOST, so duet
 * sees a host of that name whose only links are the namespace's. MPI keeps
 * what it opened in MPI_Init: its launcher's sockets and shared memory. */
static inline void mt_enter_host(int rank) {
  const char *ns = getenv("DUET_TEST_NETNS"), *host = getenv("DUET_TEST_HOST");
  const char *own_shm = getenv("DUET_TEST_OWN_SHM");
  char path[256];
  int fd;
  /* A /dev/shm of the rank's own, as in a container of its own with the
   * host's name and network: a mount namespace with a fresh tmpfs there.
   * MPI must not need /dev/shm from here on (--mca btl self,tcp). */
  if (own_shm != NULL && strcmp(own_shm, "1") == 0 &&
      (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
       mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=256m") != 0)) {
    fprintf(stderr, "[rank %d] a /dev/shm of its own: %s\n", rank, strerror(errno));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (ns == NULL || *ns == '\0')
    return;
  if (host == NULL || *host == '\0')
    host = ns;
  snprintf(path, sizeof path, "/run/netns/%s", ns);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || setns(fd, CLONE_NEWNET) != 0 || unshare(CLONE_NEWUTS) != 0 ||
      sethostname(host, strlen(host)) != 0) {
    fprintf(stderr, "[rank %d] entering host %s (network namespace %s): %s\n", rank, host, path,
            strerror(errno));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  close(fd);
}

static inline void mt_init_mpi(int *argc, char ***argv, int *rank, int *size) {
  /* line by line: a run killed by its time limit still shows how far it got */
  setvbuf(stdout, NULL, _IOLBF, 0);
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, size);
  mt_enter_host(*rank);
}

/* Rank 0 makes the unique id, MPI_Bcast shares it, every rank joins. Any
 * environment (DUET_ALGO...) must be set before this call. */
static inline duet_comm_t *mt_init_duet(int rank, int size) {
  duet_unique_id_t id;
  duet_comm_t *comm = NULL;
  memset(&id, 0, sizeof id);
  if (rank == 0)
    CHECK(NULL, duet_get_unique_id(&id));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  CHECK(NULL, duet_comm_init_rank(&comm, size, id, rank, NULL));
  int r = -1, s = -1;
  CHECK(comm, duet_comm_rank(comm, &r));
  CHECK(comm, duet_comm_size(comm, &s));
  if (r != rank || s != size) {
    fprintf(stderr, "[rank %d] duet_comm_rank/size gave %d/%d, want %d/%d\n", rank, r, s, rank,
            size);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return comm;
}

/* Comma-separated list of sizes (K/M/G suffixes, powers of 1024). */
static inline int mt_parse_counts(const char *s, size_t *out, int max) {
  int n = 0;
  char *copy = strdup(s), *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *end;
    unsigned long long v = strtoull(tok, &end, 10);
    if (end == tok)
      n = -1;
    else if (*end == 'K' || *end == 'k')
      v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
      v <<= 20, end++;
    else if (*end == 'G' || *end == 'g')
      v <<= 30, end++;
    if (n < 0 || *end || n >= max) {
      n = -1;
      break;
    }
    out[n++] = (size_t)v;
  }
  free(copy);
  return n;
}

/* ---- emulated super-nodes (DUET_SUPERNODE, default the host name) ---- */

/* The layout as a test works it out itself: every rank's super-node name is
 * gathered with MPI and numbered in order of first appearance, as duet does.
 * Free sn_sizes with free(). */
typedef struct {
  int sn, nsn, lr, ls, equal; /* this rank's super-node, count, local rank and size; equal sizes */
  int *sn_sizes;              /* ranks per super-node */
  char name[64];              /* "NxL" when equal, else "a+b+..." */
} mt_layout_t;

static inline void mt_layout_compute(mt_layout_t *l, int rank, int size) {
  char name[256] = "";
  const char *e = getenv("DUET_SUPERNODE");
  if (e && *e)
    snprintf(name, sizeof name, "%s", e);
  else if (gethostname(name, sizeof name - 1) != 0)
    snprintf(name, sizeof name, "?");
  char *all = mt_xmalloc(sizeof name * (size_t)size);
  int *of = mt_xmalloc(sizeof(int) * (size_t)size);
  MPI_Allgather(name, (int)sizeof name, MPI_CHAR, all, (int)sizeof name, MPI_CHAR,
                MPI_COMM_WORLD);
  l->nsn = 0;
  for (int r = 0; r < size; r++) {
    of[r] = -1;
    for (int q = 0; q < r && of[r] < 0; q++)
      if (strcmp(all + sizeof name * (size_t)q, all + sizeof name * (size_t)r) == 0)
        of[r] = of[q];
    if (of[r] < 0)
      of[r] = l->nsn++;
  }
  l->sn_sizes = mt_xmalloc(sizeof(int) * (size_t)l->nsn);
  memset(l->sn_sizes, 0, sizeof(int) * (size_t)l->nsn);
  l->lr = 0;
  for (int r = 0; r < size; r++) {
    if (r < rank && of[r] == of[rank])
      l->lr++;
    l->sn_sizes[of[r]]++;
  }
  l->sn = of[rank];
  l->ls = l->sn_sizes[l->sn];
  l->equal = 1;
  for (int s = 0; s < l->nsn; s++)
    l->equal &= l->sn_sizes[s] == l->sn_sizes[0];
  if (l->equal) {
    snprintf(l->name, sizeof l->name, "%dx%d", l->nsn, l->sn_sizes[0]);
  } else {
    size_t off = 0;
    for (int s = 0; s < l->nsn && off < sizeof l->name; s++)
      off += (size_t)snprintf(l->name + off, sizeof l->name - off, "%s%d", s ? "+" : "",
                              l->sn_sizes[s]);
  }
  free(all);
  free(of);
}

/* Counts 1 (and prints why) when duet_comm_supernode disagrees with l. */
static inline int mt_layout_check(duet_comm_t *comm, const mt_layout_t *l, int rank) {
  int sn = -1, nsn = -1, lr = -1, ls = -1;
  MT_CHECK(comm, duet_comm_supernode(comm, &sn, &nsn, &lr, &ls));
  if (sn == l->sn && nsn == l->nsn && lr == l->lr && ls == l->ls)
    return 0;
  fprintf(stderr,
          "[rank %d] duet_comm_supernode gave super-node %d of %d, local %d of %d; want %d of %d, "
          "local %d of %d (layout %s, DUET_SUPERNODE=%s)\n",
          rank, sn, nsn, lr, ls, l->sn, l->nsn, l->lr, l->ls, l->name,
          getenv("DUET_SUPERNODE") ? getenv("DUET_SUPERNODE") : "(unset)");
  return 1;
}

/* d = after - before, in duet_stats_t field order: UPN bytes sent, received,
 * messages sent; HPN bytes sent, received, messages sent. */
static inline void mt_stats_delta(const duet_stats_t *before, const duet_stats_t *after,
                                  uint64_t d[6]) {
  d[0] = after->upn_bytes_sent - before->upn_bytes_sent;
  d[1] = after->upn_bytes_recv - before->upn_bytes_recv;
  d[2] = after->upn_msgs_sent - before->upn_msgs_sent;
  d[3] = after->hpn_bytes_sent - before->hpn_bytes_sent;
  d[4] = after->hpn_bytes_recv - before->hpn_bytes_recv;
  d[5] = after->hpn_msgs_sent - before->hpn_msgs_sent;
}

#endif /* DUET_MPI_COMMON_H */
