/*
 * test_reduce.c - unit tests for src/reduce (datatype x op kernels).
 *
 * Expected values never come from the library under test. Integers are
 * checked against exact 128-bit arithmetic reduced modulo 2^width; float32
 * against double arithmetic rounded once to float (exact for + and *, since
 * 53 >= 2*24 + 2); 8- and 16-bit floats against a reference decoder/encoder
 * written here with frexp/ldexp/nearbyint (no bit tricks), following the
 * documented semantics: decode exactly, reduce rounding once to float32,
 * round once to the target format. Edge cases use hand-computed bit patterns.
 *
 * Conventions checked: MIN/MAX propagate NaN and order -0 below +0; a
 * NaN result may be any NaN bit pattern.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reduce/reduce.h"

__extension__ typedef unsigned __int128 u128;
__extension__ typedef __int128 i128;

/* ---- failure accounting: log the first few, then one assertion ---- */

#define MAX_LOGGED 12

static int nfail;

static void fail_note(const char *fmt, ...) {
  if (nfail++ < MAX_LOGGED) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cr_log_error("%s", msg);
  }
}

#define ASSERT_NO_FAILURES()                                                                       \
  cr_assert_eq(nfail, 0, "%d mismatches (first %d logged)", nfail, MAX_LOGGED)

/* ---- reference small-float formats ---- */

typedef struct {
  const char *name;
  int ebits, mbits, bias;
  int fn; /* 1: no inf, all-ones exponent and mantissa is the only NaN (e4m3) */
} fmt_t;

static const fmt_t FMT_F16 = {"float16", 5, 10, 15, 0};
static const fmt_t FMT_BF16 = {"bfloat16", 8, 7, 127, 0};
static const fmt_t FMT_E4M3 = {"e4m3", 4, 3, 7, 1};
static const fmt_t FMT_E5M2 = {"e5m2", 5, 2, 15, 0};

static uint32_t fmt_emax(const fmt_t *f) {
  return (1u << f->ebits) - 1;
}
static uint32_t fmt_mmask(const fmt_t *f) {
  return (1u << f->mbits) - 1;
}
static uint32_t fmt_signbit(const fmt_t *f) {
  return 1u << (f->ebits + f->mbits);
}
static uint32_t fmt_count(const fmt_t *f) {
  return 1u << (1 + f->ebits + f->mbits);
}

static int fmt_is_nan(const fmt_t *f, uint32_t bits) {
  uint32_t e = (bits >> f->mbits) & fmt_emax(f), m = bits & fmt_mmask(f);
  if (f->fn)
    return e == fmt_emax(f) && m == fmt_mmask(f);
  return e == fmt_emax(f) && m != 0;
}

static double ref_decode(const fmt_t *f, uint32_t bits) {
  uint32_t s = bits & fmt_signbit(f);
  uint32_t e = (bits >> f->mbits) & fmt_emax(f), m = bits & fmt_mmask(f);
  double v;
  if (fmt_is_nan(f, bits))
    return NAN;
  if (!f->fn && e == fmt_emax(f))
    v = INFINITY;
  else if (e == 0)
    v = ldexp((double)m, 1 - f->bias - f->mbits);
  else
    v = ldexp((double)(m | (1u << f->mbits)), (int)e - f->bias - f->mbits);
  return s ? -v : v;
}

/* Round x to nearest even in format f. NaN gives the canonical NaN. */
static uint32_t ref_encode(const fmt_t *f, double x) {
  uint32_t sign = signbit(x) ? fmt_signbit(f) : 0;
  uint32_t over =
      f->fn ? (sign | fmt_emax(f) << f->mbits | fmt_mmask(f)) : (sign | fmt_emax(f) << f->mbits);
  double a = fabs(x);
  if (isnan(x))
    return fmt_emax(f) << f->mbits | (f->fn ? fmt_mmask(f) : 1u << (f->mbits - 1));
  if (isinf(a))
    return over;
  if (a == 0)
    return sign;
  int e;
  frexp(a, &e);
  int E = e - 1; /* a = 1.xxx * 2^E */
  if (E < 1 - f->bias)
    E = 1 - f->bias; /* subnormal: fixed scale */
  double r = nearbyint(ldexp(a, f->mbits - E));
  if (r >= ldexp(1.0, f->mbits + 1)) { /* mantissa carried */
    E++;
    r = ldexp(r, -1);
  }
  uint32_t mant = (uint32_t)r;
  uint32_t efield = mant >= (1u << f->mbits) ? (uint32_t)(E + f->bias) : 0;
  mant &= fmt_mmask(f);
  if (f->fn ? (efield > fmt_emax(f) || (efield == fmt_emax(f) && mant == fmt_mmask(f)))
            : efield >= fmt_emax(f))
    return over;
  return sign | efield << f->mbits | mant;
}

/* ---- the library's conversions, indexed by format ---- */

static float lib_decode(const fmt_t *f, uint32_t bits) {
  if (f == &FMT_F16)
    return duet__half_to_float((uint16_t)bits);
  if (f == &FMT_BF16)
    return duet__bf16_to_float((uint16_t)bits);
  if (f == &FMT_E4M3)
    return duet__e4m3_to_float((uint8_t)bits);
  return duet__e5m2_to_float((uint8_t)bits);
}

static uint32_t lib_encode(const fmt_t *f, float x) {
  if (f == &FMT_F16)
    return duet__float_to_half(x);
  if (f == &FMT_BF16)
    return duet__float_to_bf16(x);
  if (f == &FMT_E4M3)
    return duet__float_to_e4m3(x);
  return duet__float_to_e5m2(x);
}

/* ---- datatypes as the test sees them (hand-written, not from the library) ---- */

enum { K_INT, K_F32, K_F64, K_LOWP };

typedef struct {
  const char *name;
  size_t size;
  int kind;
  int is_signed;
  const fmt_t *fmt;
} tinfo_t;

static const tinfo_t TI[DUET_NUM_DATATYPES] = {
    [DUET_INT8] = {"int8", 1, K_INT, 1, NULL},
    [DUET_UINT8] = {"uint8", 1, K_INT, 0, NULL},
    [DUET_INT32] = {"int32", 4, K_INT, 1, NULL},
    [DUET_UINT32] = {"uint32", 4, K_INT, 0, NULL},
    [DUET_INT64] = {"int64", 8, K_INT, 1, NULL},
    [DUET_UINT64] = {"uint64", 8, K_INT, 0, NULL},
    [DUET_FLOAT16] = {"float16", 2, K_LOWP, 1, &FMT_F16},
    [DUET_BFLOAT16] = {"bfloat16", 2, K_LOWP, 1, &FMT_BF16},
    [DUET_FLOAT32] = {"float32", 4, K_F32, 1, NULL},
    [DUET_FLOAT64] = {"float64", 8, K_F64, 1, NULL},
    [DUET_FLOAT8_E4M3] = {"float8e4m3", 1, K_LOWP, 1, &FMT_E4M3},
    [DUET_FLOAT8_E5M2] = {"float8e5m2", 1, K_LOWP, 1, &FMT_E5M2},
};

static const char *const OPNAME[DUET_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};

static uint64_t get_el(const void *buf, size_t i, size_t sz) {
  const unsigned char *p = (const unsigned char *)buf + i * sz;
  switch (sz) {
  case 1:
    return *p;
  case 2: {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
  }
  case 4: {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
  }
  default: {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
  }
  }
}

static void put_el(void *buf, size_t i, size_t sz, uint64_t bits) {
  unsigned char *p = (unsigned char *)buf + i * sz;
  switch (sz) {
  case 1:
    *p = (uint8_t)bits;
    break;
  case 2: {
    uint16_t v = (uint16_t)bits;
    memcpy(p, &v, 2);
    break;
  }
  case 4: {
    uint32_t v = (uint32_t)bits;
    memcpy(p, &v, 4);
    break;
  }
  default:
    memcpy(p, &bits, 8);
    break;
  }
}

static float f32_of(uint64_t bits) {
  uint32_t u = (uint32_t)bits;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint64_t bits_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static double f64_of(uint64_t bits) {
  double d;
  memcpy(&d, &bits, 8);
  return d;
}
static uint64_t bits_f64(double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  return u;
}

static uint64_t width_mask(size_t sz) {
  return sz == 8 ? UINT64_MAX : (UINT64_C(1) << (8 * sz)) - 1;
}

/* two's complement value of the low 8*sz bits */
static i128 int_value(const tinfo_t *t, uint64_t bits) {
  unsigned w = (unsigned)(8 * t->size);
  bits &= width_mask(t->size);
  if (t->is_signed && (bits >> (w - 1)) & 1)
    return (i128)bits - ((i128)1 << w);
  return (i128)bits;
}

static int is_nan_bits(duet_datatype_t dt, uint64_t bits) {
  switch (TI[dt].kind) {
  case K_F32:
    return (bits & 0x7fffffffu) > 0x7f800000u;
  case K_F64:
    return (bits & INT64_MAX) > UINT64_C(0x7ff0000000000000);
  case K_LOWP:
    return fmt_is_nan(TI[dt].fmt, (uint32_t)bits);
  default:
    return 0;
  }
}

static int same_value(duet_datatype_t dt, uint64_t got, uint64_t want) {
  if (is_nan_bits(dt, want))
    return is_nan_bits(dt, got);
  return got == want;
}

/* a op b, on values as doubles; min/max propagate NaN and order -0 below +0
 * (IEEE 754-2019 minimum/maximum), so they commute bit for bit */
static double ref_fop(duet_op_t op, double x, double y) {
  switch (op) {
  case DUET_SUM:
  case DUET_AVG:
    return x + y;
  case DUET_PROD:
    return x * y;
  case DUET_MIN:
    if (isnan(x) || isnan(y))
      return NAN;
    if (x == 0 && y == 0)
      return signbit(x) ? x : y;
    return y < x ? y : x;
  default:
    if (isnan(x) || isnan(y))
      return NAN;
    if (x == 0 && y == 0)
      return signbit(x) ? y : x;
    return y > x ? y : x;
  }
}

/* Expected bits of a op b. */
static uint64_t ref_op(duet_datatype_t dt, duet_op_t op, uint64_t a, uint64_t b) {
  const tinfo_t *t = &TI[dt];
  switch (t->kind) {
  case K_INT: {
    i128 x = int_value(t, a), y = int_value(t, b);
    u128 r;
    switch (op) {
    case DUET_SUM:
    case DUET_AVG:
      r = (u128)x + (u128)y;
      break;
    case DUET_PROD:
      r = (u128)x * (u128)y;
      break;
    case DUET_MIN:
      r = (u128)(y < x ? y : x);
      break;
    default:
      r = (u128)(y > x ? y : x);
      break;
    }
    return (uint64_t)r & width_mask(t->size);
  }
  case K_F32:
    /* + and * of floats computed in double and rounded once to float are
     * correctly rounded */
    return bits_f32((float)ref_fop(op, (double)f32_of(a), (double)f32_of(b)));
  case K_F64:
    return bits_f64(ref_fop(op, f64_of(a), f64_of(b)));
  default: {
    double x = ref_decode(t->fmt, (uint32_t)a), y = ref_decode(t->fmt, (uint32_t)b);
    double r32 = (double)(float)ref_fop(op, x, y); /* reduce in float32 */
    return ref_encode(t->fmt, r32);
  }
  }
}

/* ---- random data ---- */

static uint64_t rng_state;

static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static uint64_t random_bits(duet_datatype_t dt) {
  const tinfo_t *t = &TI[dt];
  uint64_t r = rnd(), sel = r % 8;
  r = rnd();
  switch (t->kind) {
  case K_INT: {
    uint64_t m = width_mask(t->size);
    uint64_t top = UINT64_C(1) << (8 * t->size - 1);
    static const int small[] = {0, 1, -1, 2, -2, 3, -3, 7, -8, 100, -100};
    if (sel == 0) {
      uint64_t sp[] = {0, 1, m, top, top - 1, top + 1};
      return sp[r % 6];
    }
    if (sel < 4)
      return (uint64_t)(int64_t)small[r % 11] & m;
    return r & m;
  }
  case K_F32: {
    static const uint32_t sp[] = {0,           0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                  0x00000001u, 0x807fffffu, 0x7f7fffffu, 0x3f800000u};
    if (sel == 0)
      return sp[r % 9];
    if (sel < 3)
      return (uint32_t)r;
    return bits_f32(ldexpf((r & 1 ? -1.0f : 1.0f) * (1.0f + (float)((r >> 1) % 4096) / 4096.0f),
                           (int)((r >> 20) % 41) - 20));
  }
  case K_F64: {
    static const uint64_t sp[] = {0,
                                  UINT64_C(0x8000000000000000),
                                  UINT64_C(0x7ff0000000000000),
                                  UINT64_C(0xfff0000000000000),
                                  UINT64_C(0x7ff8000000000000),
                                  1,
                                  UINT64_C(0x7fefffffffffffff)};
    if (sel == 0)
      return sp[r % 7];
    if (sel < 3)
      return r;
    return bits_f64(ldexp((r & 1 ? -1.0 : 1.0) * (1.0 + (double)((r >> 1) % 65536) / 65536.0),
                          (int)((r >> 20) % 81) - 40));
  }
  default: {
    const fmt_t *f = t->fmt;
    if (sel < 4)
      return r & (fmt_count(f) - 1);
    /* a moderate value: exponent within bias +- 3, so sums and products round */
    uint32_t e = (uint32_t)(f->bias - 3) + (uint32_t)((r >> 8) % 7);
    return (r & 1 ? fmt_signbit(f) : 0) | e << f->mbits | ((uint32_t)(r >> 16) & fmt_mmask(f));
  }
  }
}

/* ---- generic reduce check: every element against ref_op ---- */

enum { ALIAS_NONE, ALIAS_DST_A, ALIAS_DST_B, ALIAS_ALL };
static const char *const ALIAS_NAME[] = {"dst!=a,b", "dst==a", "dst==b", "dst==a==b"};

#define GUARD 16 /* guard elements after each buffer, to catch overruns */

/* off: the three buffers start off elements past a malloc'd (16-byte
 * aligned) address, so the kernels also see starts that are not aligned to
 * the words or vectors they load. */
static void check_reduce_at(duet_datatype_t dt, duet_op_t op, size_t n, int alias, size_t off) {
  size_t sz = TI[dt].size, total = (n + GUARD) * sz;
  unsigned char *ab = malloc(total + off * sz), *bb = malloc(total + off * sz);
  unsigned char *db = malloc(total + off * sz);
  unsigned char *a = ab + off * sz, *b = bb + off * sz, *d = db + off * sz;
  unsigned char *a0 = malloc(total), *b0 = malloc(total);
  cr_assert(ab && bb && db && a0 && b0);
  memset(a, 0x5a, total);
  memset(b, 0x5a, total);
  memset(d, 0xa5, total);
  for (size_t i = 0; i < n; i++) {
    put_el(a, i, sz, random_bits(dt));
    put_el(b, i, sz, alias == ALIAS_ALL ? get_el(a, i, sz) : random_bits(dt));
  }
  memcpy(a0, a, total);
  memcpy(b0, b, total);

  const void *pa = a, *pb = b;
  switch (alias) {
  case ALIAS_DST_A:
    memcpy(d, a, n * sz);
    pa = d;
    break;
  case ALIAS_DST_B:
    memcpy(d, b, n * sz);
    pb = d;
    break;
  case ALIAS_ALL:
    memcpy(d, a, n * sz);
    pa = pb = d;
    break;
  default:
    break;
  }
  duet__reduce(d, pa, pb, n, dt, op);

  for (size_t i = 0; i < n; i++) {
    uint64_t x = get_el(a0, i, sz), y = get_el(b0, i, sz);
    uint64_t want = ref_op(dt, op, x, y), got = get_el(d, i, sz);
    if (!same_value(dt, got, want))
      fail_note("%s %s n=%zu off=%zu %s [%zu]: a=0x%llx b=0x%llx got 0x%llx want 0x%llx",
                TI[dt].name, OPNAME[op], n, off, ALIAS_NAME[alias], i, (unsigned long long)x,
                (unsigned long long)y, (unsigned long long)got, (unsigned long long)want);
  }
  for (size_t i = n * sz; i < total; i++)
    if (d[i] != 0xa5) {
      fail_note("%s %s n=%zu %s: wrote past the end (byte %zu)", TI[dt].name, OPNAME[op], n,
                ALIAS_NAME[alias], i);
      break;
    }
  if (memcmp(a, a0, total) || memcmp(b, b0, total))
    fail_note("%s %s n=%zu %s: an input buffer was modified", TI[dt].name, OPNAME[op], n,
              ALIAS_NAME[alias]);
  free(ab);
  free(bb);
  free(db);
  free(a0);
  free(b0);
}

static void check_reduce(duet_datatype_t dt, duet_op_t op, size_t n, int alias) {
  check_reduce_at(dt, op, n, alias, 0);
}

static void check_all_ops(duet_datatype_t dt) {
  static const size_t counts[] = {0, 1, 7, 1000, 4099};
  rng_state = 0x1234 + (uint64_t)dt;
  for (int op = 0; op < DUET_NUM_OPS; op++)
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
      for (int alias = 0; alias < 4; alias++)
        check_reduce(dt, (duet_op_t)op, counts[c], alias);
  ASSERT_NO_FAILURES();
}

Test(reduce_all, int8) {
  check_all_ops(DUET_INT8);
}
Test(reduce_all, uint8) {
  check_all_ops(DUET_UINT8);
}
Test(reduce_all, int32) {
  check_all_ops(DUET_INT32);
}
Test(reduce_all, uint32) {
  check_all_ops(DUET_UINT32);
}
Test(reduce_all, int64) {
  check_all_ops(DUET_INT64);
}
Test(reduce_all, uint64) {
  check_all_ops(DUET_UINT64);
}
Test(reduce_all, float16) {
  check_all_ops(DUET_FLOAT16);
}
Test(reduce_all, bfloat16) {
  check_all_ops(DUET_BFLOAT16);
}
Test(reduce_all, float32) {
  check_all_ops(DUET_FLOAT32);
}
Test(reduce_all, float64) {
  check_all_ops(DUET_FLOAT64);
}
Test(reduce_all, float8e4m3) {
  check_all_ops(DUET_FLOAT8_E4M3);
}
Test(reduce_all, float8e5m2) {
  check_all_ops(DUET_FLOAT8_E5M2);
}

/* The 8- and 16-bit float kernels work on 32-bit words (two or four
 * elements) and finish the elements after the last whole word one by one;
 * the others are vector loops with scalar ends. Every type, op and aliasing
 * at counts that leave every remainder, from starts 1-3 elements past an
 * aligned address. */
Test(reduce_all, unaligned_starts_and_tails) {
  static const size_t counts[] = {1, 2, 3, 4, 5, 6, 7, 9, 33, 130, 1027};
  for (int dt = 0; dt < DUET_NUM_DATATYPES; dt++) {
    rng_state = 0x9e37 + (uint64_t)dt;
    for (int op = 0; op < DUET_NUM_OPS; op++)
      for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
        for (size_t off = 1; off <= 3; off++)
          for (int alias = 0; alias < 4; alias++)
            check_reduce_at((duet_datatype_t)dt, (duet_op_t)op, counts[c], alias, off);
  }
  ASSERT_NO_FAILURES();
}

/* ---- hand-computed cases: {dt, op, a, b, want}; NAN_ANY accepts any NaN ---- */

#define NAN_ANY UINT64_MAX /* for float types only; a NaN in float64 anyway */

typedef struct {
  duet_datatype_t dt;
  duet_op_t op;
  uint64_t a, b, want;
} kase_t;

/* Run each case over 41 identical elements (vector body and scalar tail),
 * out of place and in place on a. */
static void run_cases(const kase_t *k, size_t nk) {
  enum { N = 41 };
  for (size_t c = 0; c < nk; c++) {
    size_t sz = TI[k[c].dt].size;
    unsigned char a[N * 8], b[N * 8], d[N * 8];
    for (size_t i = 0; i < N; i++) {
      put_el(a, i, sz, k[c].a);
      put_el(b, i, sz, k[c].b);
    }
    for (int inplace = 0; inplace < 2; inplace++) {
      if (inplace) {
        memcpy(d, a, sizeof d);
        duet__reduce(d, d, b, N, k[c].dt, k[c].op);
      } else {
        duet__reduce(d, a, b, N, k[c].dt, k[c].op);
      }
      for (size_t i = 0; i < N; i++) {
        uint64_t got = get_el(d, i, sz);
        int any_nan = k[c].want == NAN_ANY && TI[k[c].dt].kind != K_INT;
        int ok = any_nan ? is_nan_bits(k[c].dt, got) : got == k[c].want;
        if (!ok) {
          fail_note("case %zu: %s %s(0x%llx, 0x%llx)%s [%zu] = 0x%llx, want 0x%llx%s", c,
                    TI[k[c].dt].name, OPNAME[k[c].op], (unsigned long long)k[c].a,
                    (unsigned long long)k[c].b, inplace ? " in place" : "", i,
                    (unsigned long long)got, (unsigned long long)k[c].want,
                    any_nan ? " (NaN)" : "");
          break;
        }
      }
    }
  }
  ASSERT_NO_FAILURES();
}

#define NCASES(x) (sizeof(x) / sizeof((x)[0]))

Test(reduce_edge, integer_wraparound) {
  static const kase_t k[] = {
      {DUET_INT8, DUET_SUM, 0x7f, 0x01, 0x80}, /* 127 + 1 = -128 */
      {DUET_INT8, DUET_SUM, 0x80, 0xff, 0x7f}, /* -128 + -1 = 127 */
      {DUET_INT8, DUET_AVG, 0x7f, 0x01, 0x80}, /* AVG sums */
      {DUET_UINT8, DUET_SUM, 0xff, 0x01, 0x00},
      {DUET_INT8, DUET_PROD, 0x10, 0x10, 0x00},  /* 256 */
      {DUET_INT8, DUET_PROD, 0x7f, 0x7f, 0x01},  /* 16129 = 63*256 + 1 */
      {DUET_INT8, DUET_PROD, 0x80, 0xff, 0x80},  /* -128 * -1 */
      {DUET_UINT8, DUET_PROD, 0xff, 0xff, 0x01}, /* 65025 */
      {DUET_INT32, DUET_SUM, 0x7fffffff, 1, 0x80000000},
      {DUET_INT32, DUET_SUM, 0x80000000, 0xffffffff, 0x7fffffff},
      {DUET_INT32, DUET_PROD, 0x10000, 0x10000, 0},
      {DUET_INT32, DUET_PROD, 0x80000000, 0xffffffff, 0x80000000},
      {DUET_INT32, DUET_PROD, 0x7fffffff, 0x7fffffff, 1},
      {DUET_UINT32, DUET_SUM, 0xffffffff, 1, 0},
      {DUET_UINT32, DUET_PROD, 0xffffffff, 0xffffffff, 1},
      {DUET_INT64, DUET_SUM, INT64_MAX, 1, UINT64_C(0x8000000000000000)},
      {DUET_INT64, DUET_PROD, UINT64_C(0x8000000000000000), UINT64_MAX,
       UINT64_C(0x8000000000000000)},                                      /* MIN * -1 */
      {DUET_INT64, DUET_PROD, INT64_MAX, 2, UINT64_C(0xfffffffffffffffe)}, /* -2 */
      {DUET_INT64, DUET_PROD, UINT64_C(0x100000000), UINT64_C(0x100000000), 0},
      {DUET_UINT64, DUET_SUM, UINT64_MAX, 1, 0},
      {DUET_UINT64, DUET_PROD, UINT64_MAX, UINT64_MAX, 1},
      {DUET_UINT64, DUET_PROD, UINT64_C(0x100000000), UINT64_C(0x100000001), UINT64_C(0x100000000)},
      /* min/max compare signed for signed types, unsigned otherwise */
      {DUET_INT8, DUET_MIN, 0x80, 0x7f, 0x80},
      {DUET_INT8, DUET_MAX, 0xff, 0x01, 0x01},
      {DUET_UINT8, DUET_MAX, 0xff, 0x01, 0xff},
      {DUET_UINT8, DUET_MIN, 0xff, 0x01, 0x01},
      {DUET_INT32, DUET_MAX, 0x80000000, 0, 0},
      {DUET_UINT32, DUET_MAX, 0x80000000, 0, 0x80000000},
      {DUET_INT64, DUET_MIN, UINT64_MAX, 1, UINT64_MAX},
      {DUET_UINT64, DUET_MIN, UINT64_MAX, 1, 1},
      {DUET_INT64, DUET_MAX, UINT64_C(0x8000000000000000), INT64_MAX, INT64_MAX},
  };
  run_cases(k, NCASES(k));
}

Test(reduce_edge, round_to_nearest_even_ties) {
  static const kase_t k[] = {
      /* fp16: 1 + 2^-11 ties down to 1; (1 + 2^-10) + 2^-11 ties up to 1 + 2^-9 */
      {DUET_FLOAT16, DUET_SUM, 0x3c00, 0x1000, 0x3c00},
      {DUET_FLOAT16, DUET_SUM, 0x3c01, 0x1000, 0x3c02},
      {DUET_FLOAT16, DUET_SUM, 0xbc00, 0x9000, 0xbc00},
      {DUET_FLOAT16, DUET_SUM, 0xbc01, 0x9000, 0xbc02},
      {DUET_FLOAT16, DUET_SUM, 0x3c00, 0x1001, 0x3c01}, /* just above the tie */
      /* bf16: 1 + 2^-8 down, (1 + 2^-7) + 2^-8 up */
      {DUET_BFLOAT16, DUET_SUM, 0x3f80, 0x3b80, 0x3f80},
      {DUET_BFLOAT16, DUET_SUM, 0x3f81, 0x3b80, 0x3f82},
      {DUET_BFLOAT16, DUET_SUM, 0xbf81, 0xbb80, 0xbf82},
      /* e4m3: 1 + 1/16 down to 1, 1.125 + 1/16 up to 1.25 */
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x38, 0x18, 0x38},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x39, 0x18, 0x3a},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0xb9, 0x98, 0xba},
      /* e5m2: 1 + 1/8 down to 1, 1.25 + 1/8 up to 1.5 */
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x3c, 0x30, 0x3c},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x3d, 0x30, 0x3e},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0xbd, 0xb0, 0xbe},
      /* products: 1.5 * 1.5 = 2.25 in e5m2 is a tie between 2 and 2.5 -> 2 */
      {DUET_FLOAT8_E5M2, DUET_PROD, 0x3e, 0x3e, 0x40},
      /* e4m3: 1.125 * 1.125 = 1.265625, nearest 1.25 */
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x39, 0x39, 0x3a},
  };
  run_cases(k, NCASES(k));
}

Test(reduce_edge, infinities) {
  static const kase_t k[] = {
      {DUET_FLOAT16, DUET_SUM, 0x7c00, 0x3c00, 0x7c00},
      {DUET_FLOAT16, DUET_SUM, 0xfc00, 0x7bff, 0xfc00},
      {DUET_FLOAT16, DUET_SUM, 0x7c00, 0xfc00, NAN_ANY},
      {DUET_FLOAT16, DUET_PROD, 0x7c00, 0x0000, NAN_ANY},
      {DUET_FLOAT16, DUET_PROD, 0x7c00, 0xbc00, 0xfc00},
      {DUET_FLOAT16, DUET_MIN, 0x7c00, 0x3c00, 0x3c00},
      {DUET_FLOAT16, DUET_MAX, 0xfc00, 0xbc00, 0xbc00},
      {DUET_BFLOAT16, DUET_SUM, 0x7f80, 0x3f80, 0x7f80},
      {DUET_BFLOAT16, DUET_SUM, 0x7f80, 0xff80, NAN_ANY},
      {DUET_BFLOAT16, DUET_MAX, 0xff80, 0x0001, 0x0001},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x7c, 0x3c, 0x7c},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0xfc, 0x7b, 0xfc},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x7c, 0xfc, NAN_ANY},
      {DUET_FLOAT8_E5M2, DUET_PROD, 0xfc, 0x00, NAN_ANY},
      {DUET_FLOAT32, DUET_SUM, 0x7f800000, 0x3f800000, 0x7f800000},
      {DUET_FLOAT32, DUET_SUM, 0x7f800000, 0xff800000, NAN_ANY},
      {DUET_FLOAT32, DUET_MIN, 0xff800000, 0x3f800000, 0xff800000},
      {DUET_FLOAT64, DUET_SUM, UINT64_C(0x7ff0000000000000), UINT64_C(0x3ff0000000000000),
       UINT64_C(0x7ff0000000000000)},
      {DUET_FLOAT64, DUET_SUM, UINT64_C(0x7ff0000000000000), UINT64_C(0xfff0000000000000), NAN_ANY},
  };
  run_cases(k, NCASES(k));
}

Test(reduce_edge, subnormals) {
  static const kase_t k[] = {
      {DUET_FLOAT16, DUET_SUM, 0x0001, 0x0001, 0x0002},
      {DUET_FLOAT16, DUET_SUM, 0x03ff, 0x0001, 0x0400},  /* subnormal + subnormal = normal */
      {DUET_FLOAT16, DUET_SUM, 0x0401, 0x8400, 0x0001},  /* normal - normal = subnormal */
      {DUET_FLOAT16, DUET_PROD, 0x0001, 0x3800, 0x0000}, /* 2^-25: tie to even 0 */
      {DUET_FLOAT16, DUET_PROD, 0x0003, 0x3800, 0x0002}, /* 1.5 * 2^-24: tie up to 2 */
      {DUET_FLOAT16, DUET_PROD, 0x0400, 0x3800, 0x0200},
      {DUET_FLOAT16, DUET_PROD, 0x8001, 0x3800, 0x8000}, /* underflow keeps the sign */
      {DUET_FLOAT16, DUET_PROD, 0x0400, 0x0400, 0x0000}, /* 2^-28 */
      {DUET_FLOAT16, DUET_MIN, 0x0001, 0x8001, 0x8001},
      {DUET_BFLOAT16, DUET_SUM, 0x0001, 0x0001, 0x0002},
      {DUET_BFLOAT16, DUET_PROD, 0x0001, 0x3f00, 0x0000},
      {DUET_BFLOAT16, DUET_PROD, 0x0003, 0x3f00, 0x0002},
      {DUET_BFLOAT16, DUET_PROD, 0x0080, 0x3f00, 0x0040},
      {DUET_BFLOAT16, DUET_SUM, 0x007f, 0x0001, 0x0080},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x01, 0x01, 0x02},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x07, 0x01, 0x08},
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x01, 0x30, 0x00},
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x03, 0x30, 0x02},
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x08, 0x30, 0x04},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x09, 0x88, 0x01},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x01, 0x01, 0x02},
      {DUET_FLOAT8_E5M2, DUET_PROD, 0x01, 0x38, 0x00},
      {DUET_FLOAT8_E5M2, DUET_PROD, 0x03, 0x38, 0x02},
      {DUET_FLOAT8_E5M2, DUET_PROD, 0x04, 0x38, 0x02},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x03, 0x01, 0x04},
      {DUET_FLOAT32, DUET_SUM, 0x00000001, 0x00000001, 0x00000002},
      {DUET_FLOAT32, DUET_PROD, 0x00800000, 0x3f000000, 0x00400000},
      {DUET_FLOAT64, DUET_SUM, 1, 1, 2},
      {DUET_FLOAT64, DUET_PROD, UINT64_C(0x0010000000000000), UINT64_C(0x3fe0000000000000),
       UINT64_C(0x0008000000000000)},
  };
  run_cases(k, NCASES(k));
}

Test(reduce_edge, overflow) {
  static const kase_t k[] = {
      {DUET_FLOAT16, DUET_SUM, 0x7bff, 0x7bff, 0x7c00}, /* 65504 + 65504 */
      {DUET_FLOAT16, DUET_SUM, 0xfbff, 0xfbff, 0xfc00},
      {DUET_FLOAT16, DUET_SUM, 0x7bff, 0x4c00, 0x7c00},  /* 65520: tie, even is inf */
      {DUET_FLOAT16, DUET_SUM, 0x7bff, 0x4800, 0x7bff},  /* 65512 stays */
      {DUET_FLOAT16, DUET_PROD, 0x5c00, 0x5c00, 0x7c00}, /* 256 * 256 */
      {DUET_BFLOAT16, DUET_SUM, 0x7f7f, 0x7f7f, 0x7f80},
      {DUET_BFLOAT16, DUET_PROD, 0x5f80, 0x5f80, 0x7f80}, /* 2^64 * 2^64 */
      {DUET_BFLOAT16, DUET_PROD, 0xdf80, 0x5f80, 0xff80},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x7e, 0x7e, NAN_ANY}, /* 448 + 448: no inf */
      {DUET_FLOAT8_E4M3, DUET_SUM, 0xfe, 0xfe, NAN_ANY},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x7e, 0x58, 0x7e},    /* 464: tie, 448 is even */
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x7e, 0x60, NAN_ANY}, /* 480 */
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x7e, 0x01, 0x7e},
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x70, 0x48, NAN_ANY}, /* 128 * 4 */
      {DUET_FLOAT8_E4M3, DUET_PROD, 0x70, 0x40, 0x78},    /* 128 * 2 = 256 */
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x7b, 0x7b, 0x7c},     /* 57344 + 57344 */
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x7b, 0x6c, 0x7c},     /* 61440: tie, even is inf */
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x7b, 0x68, 0x7b},     /* 59392 stays */
      {DUET_FLOAT8_E5M2, DUET_SUM, 0xfb, 0xfb, 0xfc},
      {DUET_FLOAT32, DUET_SUM, 0x7f7fffff, 0x7f7fffff, 0x7f800000},
      {DUET_FLOAT64, DUET_PROD, UINT64_C(0x7fefffffffffffff), UINT64_C(0x4000000000000000),
       UINT64_C(0x7ff0000000000000)},
  };
  run_cases(k, NCASES(k));
}

Test(reduce_edge, signed_zero) {
  static const kase_t k[] = {
      {DUET_FLOAT16, DUET_SUM, 0x8000, 0x8000, 0x8000},
      {DUET_FLOAT16, DUET_SUM, 0x8000, 0x0000, 0x0000},
      {DUET_FLOAT16, DUET_SUM, 0x0000, 0x8000, 0x0000},
      {DUET_FLOAT16, DUET_SUM, 0x3c00, 0xbc00, 0x0000},
      {DUET_FLOAT16, DUET_PROD, 0xbc00, 0x0000, 0x8000},
      {DUET_FLOAT16, DUET_AVG, 0x8000, 0x8000, 0x8000},
      {DUET_BFLOAT16, DUET_SUM, 0x8000, 0x8000, 0x8000},
      {DUET_BFLOAT16, DUET_SUM, 0x8000, 0x0000, 0x0000},
      {DUET_BFLOAT16, DUET_PROD, 0x8000, 0x3f80, 0x8000},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x80, 0x80, 0x80},
      {DUET_FLOAT8_E4M3, DUET_SUM, 0x80, 0x00, 0x00},
      {DUET_FLOAT8_E4M3, DUET_PROD, 0xb8, 0x00, 0x80},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x80, 0x80, 0x80},
      {DUET_FLOAT8_E5M2, DUET_SUM, 0x00, 0x80, 0x00},
      {DUET_FLOAT8_E5M2, DUET_PROD, 0x80, 0x80, 0x00},
      {DUET_FLOAT32, DUET_SUM, 0x80000000, 0x80000000, 0x80000000},
      {DUET_FLOAT32, DUET_SUM, 0x80000000, 0x00000000, 0x00000000},
      {DUET_FLOAT64, DUET_SUM, UINT64_C(0x8000000000000000), UINT64_C(0x8000000000000000),
       UINT64_C(0x8000000000000000)},
      {DUET_FLOAT64, DUET_PROD, UINT64_C(0x8000000000000000), 0, UINT64_C(0x8000000000000000)},
      /* min/max commute on signed zeros: -0 < +0 in either order */
      {DUET_FLOAT32, DUET_MIN, 0x00000000, 0x80000000, 0x80000000},
      {DUET_FLOAT32, DUET_MIN, 0x80000000, 0x00000000, 0x80000000},
      {DUET_FLOAT32, DUET_MAX, 0x80000000, 0x00000000, 0x00000000},
      {DUET_FLOAT32, DUET_MAX, 0x00000000, 0x80000000, 0x00000000},
      {DUET_FLOAT16, DUET_MIN, 0x0000, 0x8000, 0x8000},
      {DUET_BFLOAT16, DUET_MAX, 0x8000, 0x0000, 0x0000},
      {DUET_FLOAT64, DUET_MIN, 0, UINT64_C(0x8000000000000000), UINT64_C(0x8000000000000000)},
      {DUET_FLOAT64, DUET_MAX, UINT64_C(0x8000000000000000), UINT64_C(0x8000000000000000),
       UINT64_C(0x8000000000000000)},
  };
  run_cases(k, NCASES(k));
}

/* NaN in a, in b, and in both, against a finite value, +inf and -inf, for
 * every float type and every op. */
Test(reduce_edge, nan_propagates_through_every_op) {
  static const struct {
    duet_datatype_t dt;
    uint64_t nan, one, pinf, ninf;
  } t[] = {
      {DUET_FLOAT16, 0x7e00, 0x3c00, 0x7c00, 0xfc00},
      {DUET_BFLOAT16, 0x7fc0, 0x3f80, 0x7f80, 0xff80},
      {DUET_FLOAT32, 0x7fc00000, 0x3f800000, 0x7f800000, 0xff800000},
      {DUET_FLOAT64, UINT64_C(0x7ff8000000000000), UINT64_C(0x3ff0000000000000),
       UINT64_C(0x7ff0000000000000), UINT64_C(0xfff0000000000000)},
      {DUET_FLOAT8_E4M3, 0x7f, 0x38, 0x7e, 0xfe}, /* no inf: use +-448 */
      {DUET_FLOAT8_E5M2, 0x7e, 0x3c, 0x7c, 0xfc},
      /* negative and signalling NaNs too */
      {DUET_FLOAT16, 0xfd01, 0xbc00, 0x7c00, 0xfc00},
      {DUET_BFLOAT16, 0x7f81, 0x0001, 0x7f80, 0xff80},
      {DUET_FLOAT32, 0xff800001, 0x00000001, 0x7f800000, 0xff800000},
      {DUET_FLOAT8_E4M3, 0xff, 0x01, 0x7e, 0xfe},
      {DUET_FLOAT8_E5M2, 0xfd, 0x01, 0x7c, 0xfc},
  };
  kase_t k[NCASES(t) * DUET_NUM_OPS * 7];
  size_t nk = 0;
  for (size_t i = 0; i < NCASES(t); i++)
    for (int op = 0; op < DUET_NUM_OPS; op++) {
      uint64_t other[] = {t[i].one, t[i].pinf, t[i].ninf};
      for (int j = 0; j < 3; j++) {
        k[nk++] = (kase_t){t[i].dt, (duet_op_t)op, t[i].nan, other[j], NAN_ANY};
        k[nk++] = (kase_t){t[i].dt, (duet_op_t)op, other[j], t[i].nan, NAN_ANY};
      }
      k[nk++] = (kase_t){t[i].dt, (duet_op_t)op, t[i].nan, t[i].nan, NAN_ANY};
    }
  run_cases(k, nk);
}

Test(reduce_edge, min_max_floats) {
  static const kase_t k[] = {
      {DUET_FLOAT16, DUET_MIN, 0x3c00, 0xc000, 0xc000},
      {DUET_FLOAT16, DUET_MAX, 0x3c00, 0xc000, 0x3c00},
      {DUET_BFLOAT16, DUET_MIN, 0x3f80, 0x3f81, 0x3f80},
      {DUET_BFLOAT16, DUET_MAX, 0xbf80, 0xbf81, 0xbf80},
      {DUET_FLOAT8_E4M3, DUET_MAX, 0xfe, 0x01, 0x01},
      {DUET_FLOAT8_E4M3, DUET_MIN, 0xfe, 0x7e, 0xfe},
      {DUET_FLOAT8_E5M2, DUET_MIN, 0x7b, 0x7c, 0x7b},
      {DUET_FLOAT32, DUET_MAX, 0xbf800000, 0x80000001, 0x80000001},
      {DUET_FLOAT64, DUET_MIN, UINT64_C(0x3ff0000000000000), UINT64_C(0xbff0000000000000),
       UINT64_C(0xbff0000000000000)},
  };
  run_cases(k, NCASES(k));
}

/* ---- conversions against hand-listed values ---- */

typedef struct {
  float f;
  uint32_t bits;
} conv_t;

/* Values exactly representable: decode(bits) == f and encode(f) == bits. */
static void check_exact(const fmt_t *fmt, const conv_t *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float got = lib_decode(fmt, c[i].bits);
    if (memcmp(&got, &c[i].f, sizeof got) != 0)
      fail_note("%s decode 0x%x = %a, want %a", fmt->name, c[i].bits, (double)got, (double)c[i].f);
    uint32_t b = lib_encode(fmt, c[i].f);
    if (b != c[i].bits)
      fail_note("%s encode %a = 0x%x, want 0x%x", fmt->name, (double)c[i].f, b, c[i].bits);
  }
}

/* Values that round: encode(f) == bits (NAN_ANY: any NaN). */
static void check_rounding(const fmt_t *fmt, const conv_t *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b = lib_encode(fmt, c[i].f);
    int ok = c[i].bits == (uint32_t)NAN_ANY ? fmt_is_nan(fmt, b) : b == c[i].bits;
    if (!ok)
      fail_note("%s encode %a = 0x%x, want 0x%x", fmt->name, (double)c[i].f, b, c[i].bits);
  }
}

#define NANB ((uint32_t)NAN_ANY)

Test(convert, float16_known_values) {
  static const conv_t exact[] = {
      {0.0f, 0x0000},      {-0.0f, 0x8000},      {1.0f, 0x3c00},      {-2.0f, 0xc000},
      {1.5f, 0x3e00},      {65504.0f, 0x7bff},   {-65504.0f, 0xfbff}, {0x1p-14f, 0x0400},
      {0x1p-24f, 0x0001},  {0x3ffp-24f, 0x03ff}, {-0x1p-24f, 0x8001}, {0.333251953125f, 0x3555},
      {3.140625f, 0x4248}, {INFINITY, 0x7c00},   {-INFINITY, 0xfc00}, {0x1.ffcp-1f, 0x3bff},
      {1024.0f, 0x6400},   {0x1.004p0f, 0x3c01},
  };
  static const conv_t round[] = {
      {1.0f / 3.0f, 0x3555}, {3.14159265f, 0x4248},
      {65519.99f, 0x7bff},   {65520.0f, 0x7c00},
      {65536.0f, 0x7c00},    {1e10f, 0x7c00},
      {-1e10f, 0xfc00},      {FLT_MAX, 0x7c00},
      {0x1.002p0f, 0x3c00},  {0x1.006p0f, 0x3c02},
      {-0x1.006p0f, 0xbc02}, {0x1.0021p0f, 0x3c01},
      {0x1p-25f, 0x0000},    {0x1.000002p-25f, 0x0001},
      {0x3p-25f, 0x0002},    {-0x1p-25f, 0x8000},
      {0x1p-26f, 0x0000},    {0x7ffp-25f, 0x0400},
      {0x7fdp-25f, 0x03fe},  {1e-10f, 0x0000},
      {0x1p-149f, 0x0000},   {NAN, NANB},
      {-NAN, NANB},
  };
  check_exact(&FMT_F16, exact, NCASES(exact));
  check_rounding(&FMT_F16, round, NCASES(round));
  cr_expect(isnan(duet__half_to_float(0x7e00)) && isnan(duet__half_to_float(0x7c01)) &&
            isnan(duet__half_to_float(0xffff)));
  ASSERT_NO_FAILURES();
}

static float f32_bits(uint32_t u) {
  return f32_of(u);
}

Test(convert, bfloat16_known_values) {
  static const conv_t exact[] = {
      {0.0f, 0x0000},      {-0.0f, 0x8000},       {1.0f, 0x3f80},       {-2.0f, 0xc000},
      {3.140625f, 0x4049}, {INFINITY, 0x7f80},    {-INFINITY, 0xff80},  {0x1p-126f, 0x0080},
      {0x1p-133f, 0x0001}, {0x1.fep127f, 0x7f7f}, {0x7fp-133f, 0x007f}, {0.5f, 0x3f00},
  };
  conv_t round[] = {
      {3.14159265f, 0x4049},
      {FLT_MAX, 0x7f80},
      {0x1.01p0f, 0x3f80},
      {0x1.03p0f, 0x3f82},
      {-0x1.03p0f, 0xbf82},
      {0x1.0101p0f, 0x3f81},
      {1.0f / 3.0f, 0x3eab},
      {0x1.ffp127f, 0x7f80},
      {0x1.fdp127f, 0x7f7e},
      {f32_bits(0x00008000), 0x0000},
      {f32_bits(0x00018000), 0x0002},
      {f32_bits(0x00008001), 0x0001},
      {f32_bits(0x807fffff), 0x8080},
      {NAN, NANB},
      {f32_bits(0x7f800001), NANB}, /* sNaN must not round to inf */
      {f32_bits(0xff80ffff), NANB},
      {f32_bits(0x7fffffff), NANB},
  };
  check_exact(&FMT_BF16, exact, NCASES(exact));
  check_rounding(&FMT_BF16, round, NCASES(round));
  ASSERT_NO_FAILURES();
}

Test(convert, e4m3_known_values) {
  static const conv_t exact[] = {
      {0.0f, 0x00},    {-0.0f, 0x80},  {1.0f, 0x38},     {-0.5f, 0xb0},    {448.0f, 0x7e},
      {-448.0f, 0xfe}, {256.0f, 0x78}, {240.0f, 0x77},   {0x1p-6f, 0x08},  {0x1p-9f, 0x01},
      {0x7p-9f, 0x07}, {1.125f, 0x39}, {0.34375f, 0x2b}, {-0x3p-9f, 0x83}, {2.0f, 0x40},
  };
  static const conv_t round[] = {
      {464.0f, 0x7e},          {0x1.d00002p8f, NANB}, {480.0f, NANB},
      {1000.0f, NANB},         {-1000.0f, NANB},      {INFINITY, NANB},
      {-INFINITY, NANB},       {449.0f, 0x7e},        {1.0625f, 0x38},
      {1.1875f, 0x3a},         {-1.1875f, 0xba},      {0x1p-10f, 0x00},
      {0x1.000002p-10f, 0x01}, {0x3p-10f, 0x02},      {0xfp-10f, 0x08},
      {1.0f / 3.0f, 0x2b},     {NAN, NANB},           {1e-30f, 0x00},
      {-1e-30f, 0x80},
  };
  check_exact(&FMT_E4M3, exact, NCASES(exact));
  check_rounding(&FMT_E4M3, round, NCASES(round));
  cr_expect(isnan(duet__e4m3_to_float(0x7f)) && isnan(duet__e4m3_to_float(0xff)));
  ASSERT_NO_FAILURES();
}

Test(convert, e5m2_known_values) {
  static const conv_t exact[] = {
      {0.0f, 0x00},     {-0.0f, 0x80},     {1.0f, 0x3c},     {-1.5f, 0xbe},
      {57344.0f, 0x7b}, {0x1p-16f, 0x01},  {0x1p-14f, 0x04}, {0x3p-16f, 0x03},
      {INFINITY, 0x7c}, {-INFINITY, 0xfc}, {0.3125f, 0x35},  {2.0f, 0x40},
  };
  conv_t round[] = {
      {61440.0f, 0x7c}, {61439.0f, 0x7b},    {1e6f, 0x7c},     {-1e6f, 0xfc},
      {1.125f, 0x3c},   {1.375f, 0x3e},      {0x1p-17f, 0x00}, {0x1.000002p-17f, 0x01},
      {0x3p-17f, 0x02}, {1.0f / 3.0f, 0x35}, {NAN, NANB},      {f32_bits(0x7f800001), NANB},
  };
  check_exact(&FMT_E5M2, exact, NCASES(exact));
  check_rounding(&FMT_E5M2, round, NCASES(round));
  cr_expect(isnan(duet__e5m2_to_float(0x7d)) && isnan(duet__e5m2_to_float(0x7e)) &&
            isnan(duet__e5m2_to_float(0xff)));
  ASSERT_NO_FAILURES();
}

/* ---- exhaustive: every bit pattern decodes exactly and round-trips ---- */

static void check_exhaustive(const fmt_t *f) {
  for (uint32_t bits = 0; bits < fmt_count(f); bits++) {
    float x = lib_decode(f, bits);
    double want = ref_decode(f, bits);
    if (fmt_is_nan(f, bits)) {
      uint32_t back = lib_encode(f, x);
      if (!isnan(x) || !fmt_is_nan(f, back))
        fail_note("%s 0x%x (NaN): decoded %a, re-encoded 0x%x", f->name, bits, (double)x, back);
      continue;
    }
    if ((double)x != want || !signbit(x) != !signbit(want))
      fail_note("%s 0x%x decodes to %a, want %a", f->name, bits, (double)x, want);
    uint32_t back = lib_encode(f, x);
    if (back != bits)
      fail_note("%s 0x%x -> %a -> 0x%x", f->name, bits, (double)x, back);
  }
  ASSERT_NO_FAILURES();
}

Test(convert, exhaustive_roundtrip_float16) {
  check_exhaustive(&FMT_F16);
}
Test(convert, exhaustive_roundtrip_bfloat16) {
  check_exhaustive(&FMT_BF16);
}
Test(convert, exhaustive_roundtrip_e4m3) {
  check_exhaustive(&FMT_E4M3);
}
Test(convert, exhaustive_roundtrip_e5m2) {
  check_exhaustive(&FMT_E5M2);
}

/* Narrowing at every rounding boundary: for each pair of neighbouring
 * positive values (the last finite one paired with the value one ulp above
 * it), the midpoint and the floats either side of it, both signs; then a
 * million random float32 bit patterns. All against ref_encode. */
static void check_encode_against_reference(const fmt_t *f) {
  uint32_t top = fmt_signbit(f); /* positive patterns: 0 .. top-1 */
  for (uint32_t bits = 0; bits < top; bits++) {
    if (fmt_is_nan(f, bits) || isinf(ref_decode(f, bits)))
      continue;
    double lo = ref_decode(f, bits), hi;
    if (fmt_is_nan(f, bits + 1) || isinf(ref_decode(f, bits + 1)) || bits + 1 == top)
      hi = lo + (lo - ref_decode(f, bits - 1)); /* one ulp past the largest */
    else
      hi = ref_decode(f, bits + 1);
    float mid = (float)((lo + hi) / 2); /* exact: at most mbits + 2 bits */
    float probe[] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY), (float)lo};
    for (size_t j = 0; j < 4; j++)
      for (int s = 0; s < 2; s++) {
        float x = s ? -probe[j] : probe[j];
        uint32_t got = lib_encode(f, x), want = ref_encode(f, (double)x);
        if (!(fmt_is_nan(f, want) ? fmt_is_nan(f, got) : got == want))
          fail_note("%s encode %a = 0x%x, want 0x%x", f->name, (double)x, got, want);
      }
  }
  rng_state = 42;
  for (int i = 0; i < 1000000; i++) {
    float x = f32_of((uint32_t)rnd());
    uint32_t got = lib_encode(f, x), want = ref_encode(f, (double)x);
    if (!(fmt_is_nan(f, want) ? fmt_is_nan(f, got) : got == want))
      fail_note("%s encode %a = 0x%x, want 0x%x", f->name, (double)x, got, want);
  }
  ASSERT_NO_FAILURES();
}

Test(convert, encode_boundaries_float16) {
  check_encode_against_reference(&FMT_F16);
}
Test(convert, encode_boundaries_bfloat16) {
  check_encode_against_reference(&FMT_BF16);
}
Test(convert, encode_boundaries_e4m3) {
  check_encode_against_reference(&FMT_E4M3);
}
Test(convert, encode_boundaries_e5m2) {
  check_encode_against_reference(&FMT_E5M2);
}

/* ---- AVG ---- */

typedef struct {
  duet_datatype_t dt;
  int n;
  uint64_t in, want;
} avg_t;

static void run_avg(const avg_t *c, size_t nc) {
  enum { N = 37 };
  for (size_t i = 0; i < nc; i++) {
    size_t sz = TI[c[i].dt].size;
    unsigned char buf[N * 8];
    for (size_t j = 0; j < N; j++)
      put_el(buf, j, sz, c[i].in);
    duet__reduce_avg_finish(buf, N, c[i].dt, c[i].n);
    for (size_t j = 0; j < N; j++) {
      uint64_t got = get_el(buf, j, sz);
      if (c[i].want == NAN_ANY && TI[c[i].dt].kind != K_INT ? !is_nan_bits(c[i].dt, got)
                                                            : got != c[i].want) {
        fail_note("avg %s 0x%llx / %d = 0x%llx, want 0x%llx", TI[c[i].dt].name,
                  (unsigned long long)c[i].in, c[i].n, (unsigned long long)got,
                  (unsigned long long)c[i].want);
        break;
      }
    }
  }
  ASSERT_NO_FAILURES();
}

#define I8(v) ((uint64_t)(uint8_t)(int8_t)(v))
#define I32(v) ((uint64_t)(uint32_t)(int32_t)(v))
#define I64(v) ((uint64_t)(int64_t)(v))

Test(avg, integers_truncate_toward_zero) {
  static const avg_t c[] = {
      {DUET_INT8, 2, I8(-7), I8(-3)},
      {DUET_INT8, 2, I8(7), I8(3)},
      {DUET_INT8, 3, I8(-128), I8(-42)},
      {DUET_INT8, 3, I8(127), I8(42)},
      {DUET_INT8, 2, I8(-1), 0},
      {DUET_INT8, 200, I8(-128), 0},
      {DUET_UINT8, 2, 255, 127},
      {DUET_UINT8, 1000, 255, 0},
      {DUET_INT32, 2, I32(-7), I32(-3)},
      {DUET_INT32, 2, I32(INT32_MIN), I32(-1073741824)},
      {DUET_INT32, 7, I32(-13), I32(-1)},
      {DUET_UINT32, 2, 0xffffffff, 0x7fffffff},
      {DUET_INT64, 3, I64(-7), I64(-2)},
      {DUET_INT64, 3, I64(INT64_MIN), I64(-3074457345618258602)},
      {DUET_INT64, 3, I64(INT64_MAX), I64(3074457345618258602)},
      {DUET_UINT64, 3, UINT64_MAX, UINT64_C(6148914691236517205)},
      {DUET_UINT64, 2, UINT64_C(0x8000000000000001), UINT64_C(0x4000000000000000)},
      {DUET_INT32, 1, I32(-7), I32(-7)},
  };
  run_avg(c, NCASES(c));
}

Test(avg, floats_round_once) {
  static const avg_t c[] = {
      {DUET_FLOAT16, 3, 0x3c00, 0x3555}, /* 1/3 */
      {DUET_FLOAT16, 2, 0x0001, 0x0000}, /* 2^-25: tie to even */
      {DUET_FLOAT16, 2, 0x0003, 0x0002}, /* 1.5 * 2^-24: tie up */
      {DUET_FLOAT16, 4, 0x7c00, 0x7c00}, /* inf / 4 */
      {DUET_FLOAT16, 2, 0x8000, 0x8000}, /* -0 stays -0 */
      {DUET_FLOAT16, 3, 0x7e00, NAN_ANY},
      {DUET_BFLOAT16, 3, 0x3f80, 0x3eab},
      {DUET_BFLOAT16, 2, 0x0001, 0x0000},
      {DUET_FLOAT32, 3, 0x3f800000, 0x3eaaaaab},
      {DUET_FLOAT32, 2, 0x00000001, 0x00000000},
      {DUET_FLOAT64, 3, UINT64_C(0x3ff0000000000000), UINT64_C(0x3fd5555555555555)},
      {DUET_FLOAT8_E4M3, 3, 0x38, 0x2b}, /* 1/3 -> 0.34375 */
      {DUET_FLOAT8_E4M3, 2, 0x01, 0x00},
      {DUET_FLOAT8_E4M3, 2, 0x7e, 0x76}, /* 448/2 = 224 */
      {DUET_FLOAT8_E4M3, 2, 0x7f, NAN_ANY},
      {DUET_FLOAT8_E5M2, 3, 0x3c, 0x35}, /* 1/3 -> 0.3125 */
      {DUET_FLOAT8_E5M2, 2, 0x03, 0x02},
      {DUET_FLOAT8_E5M2, 2, 0xfc, 0xfc},
  };
  run_avg(c, NCASES(c));
}

/* AVG over three "ranks": two reduce steps then one division, compared with
 * the hand-computed mean; the integer cases need truncation toward zero. */
Test(avg, end_to_end_three_ranks) {
  static const struct {
    duet_datatype_t dt;
    uint64_t r[3], want;
  } c[] = {
      {DUET_INT8, {I8(-2), I8(0), I8(1)}, 0},           /* -1/3 -> 0 */
      {DUET_INT8, {I8(-5), I8(0), I8(0)}, I8(-1)},      /* -5/3 -> -1 */
      {DUET_INT8, {I8(100), I8(100), I8(100)}, I8(14)}, /* 300 wraps to 44, /3 = 14 */
      {DUET_INT32, {I32(-7), I32(-7), I32(-8)}, I32(-7)},
      {DUET_UINT32, {5, 5, 6}, 5},
      {DUET_INT64, {I64(-1), I64(-1), I64(0)}, 0},
      {DUET_FLOAT16, {0x3c00, 0x4000, 0x4000}, 0x3eab}, /* 5/3 = 1.6667 -> 1.66699 */
      {DUET_BFLOAT16, {0x3f80, 0x4000, 0x4000}, 0x3fd5},
      {DUET_FLOAT32, {0x3f800000, 0x40000000, 0x40000000}, 0x3fd55555},
      {DUET_FLOAT8_E4M3, {0x38, 0x40, 0x40}, 0x3d}, /* 1.6667 -> 1.625 */
      {DUET_FLOAT8_E5M2, {0x3c, 0x40, 0x40}, 0x3f}, /* 1.6667 -> 1.75 */
  };
  for (size_t i = 0; i < NCASES(c); i++) {
    size_t sz = TI[c[i].dt].size;
    unsigned char acc[8], r1[8], r2[8];
    put_el(acc, 0, sz, c[i].r[0]);
    put_el(r1, 0, sz, c[i].r[1]);
    put_el(r2, 0, sz, c[i].r[2]);
    duet__reduce(acc, acc, r1, 1, c[i].dt, DUET_AVG);
    duet__reduce(acc, r2, acc, 1, c[i].dt, DUET_AVG);
    duet__reduce_avg_finish(acc, 1, c[i].dt, 3);
    uint64_t got = get_el(acc, 0, sz);
    if (got != c[i].want)
      fail_note("avg3 %s case %zu = 0x%llx, want 0x%llx", TI[c[i].dt].name, i,
                (unsigned long long)got, (unsigned long long)c[i].want);
  }
  ASSERT_NO_FAILURES();
}

/* Random buffers for every type, divided by several n, against a reference
 * (integers: |v| / n with the sign put back; floats: double, rounded once). */
Test(avg, random_all_types) {
  static const int ns[] = {2, 3, 7, 1000};
  static const size_t counts[] = {1, 7, 1000, 4099};
  rng_state = 99;
  for (int dt = 0; dt < DUET_NUM_DATATYPES; dt++)
    for (size_t in = 0; in < NCASES(ns); in++)
      for (size_t ic = 0; ic < NCASES(counts); ic++) {
        const tinfo_t *t = &TI[dt];
        size_t n = counts[ic], sz = t->size;
        unsigned char *buf = malloc(n * sz), *orig = malloc(n * sz);
        cr_assert(buf && orig);
        for (size_t i = 0; i < n; i++)
          put_el(buf, i, sz, random_bits((duet_datatype_t)dt));
        memcpy(orig, buf, n * sz);
        duet__reduce_avg_finish(buf, n, (duet_datatype_t)dt, ns[in]);
        for (size_t i = 0; i < n; i++) {
          uint64_t v = get_el(orig, i, sz), want;
          switch (t->kind) {
          case K_INT: {
            i128 x = int_value(t, v), mag = x < 0 ? -x : x;
            i128 q = mag / ns[in];
            want = (uint64_t)(u128)(x < 0 ? -q : q) & width_mask(sz);
            break;
          }
          case K_F32:
            want = bits_f32((float)((double)f32_of(v) / ns[in]));
            break;
          case K_F64:
            want = bits_f64(f64_of(v) / ns[in]);
            break;
          default:
            want = ref_encode(t->fmt, (double)(float)(ref_decode(t->fmt, (uint32_t)v) / ns[in]));
            break;
          }
          uint64_t got = get_el(buf, i, sz);
          if (!same_value((duet_datatype_t)dt, got, want))
            fail_note("avg %s 0x%llx / %d = 0x%llx, want 0x%llx", t->name, (unsigned long long)v,
                      ns[in], (unsigned long long)got, (unsigned long long)want);
        }
        free(buf);
        free(orig);
      }
  ASSERT_NO_FAILURES();
}

/* ---- table lookups and degenerate calls ---- */

Test(reduce_meta, names_sizes_and_float_flags) {
  static const char *const opn[] = {"sum", "prod", "min", "max", "avg"};
  for (int dt = 0; dt < DUET_NUM_DATATYPES; dt++) {
    cr_expect_eq(duet__dt_size((duet_datatype_t)dt), TI[dt].size, "size of %s", TI[dt].name);
    cr_expect_str_eq(duet__dt_name((duet_datatype_t)dt), TI[dt].name);
    cr_expect_eq(duet__dt_is_float((duet_datatype_t)dt), TI[dt].kind != K_INT, "%s", TI[dt].name);
  }
  for (int op = 0; op < DUET_NUM_OPS; op++)
    cr_expect_str_eq(duet__op_name((duet_op_t)op), opn[op]);
  cr_expect_eq(duet__dt_size(DUET_NUM_DATATYPES), 0);
  cr_expect_eq(duet__dt_size((duet_datatype_t)-1), 0);
  cr_expect_str_eq(duet__dt_name(DUET_NUM_DATATYPES), "?");
  cr_expect_str_eq(duet__dt_name((duet_datatype_t)-1), "?");
  cr_expect_str_eq(duet__op_name(DUET_NUM_OPS), "?");
  cr_expect_eq(duet__dt_is_float(DUET_NUM_DATATYPES), 0);
}

Test(reduce_meta, zero_count_and_bad_arguments_touch_nothing) {
  unsigned char a[16], b[16], d[16], d0[16];
  memset(a, 1, sizeof a);
  memset(b, 2, sizeof b);
  memset(d, 0xa5, sizeof d);
  memcpy(d0, d, sizeof d);
  for (int dt = 0; dt < DUET_NUM_DATATYPES; dt++)
    for (int op = 0; op < DUET_NUM_OPS; op++)
      duet__reduce(d, a, b, 0, (duet_datatype_t)dt, (duet_op_t)op);
  duet__reduce(NULL, NULL, NULL, 0, DUET_FLOAT32, DUET_SUM);
  duet__reduce(d, a, b, 2, DUET_NUM_DATATYPES, DUET_SUM);
  duet__reduce(d, a, b, 2, DUET_INT8, DUET_NUM_OPS);
  duet__reduce_avg_finish(d, 0, DUET_INT32, 3);
  duet__reduce_avg_finish(d, 2, DUET_NUM_DATATYPES, 3);
  duet__reduce_avg_finish(d, 4, DUET_INT32, 0); /* no division by zero */
  cr_assert_arr_eq(d, d0, sizeof d);
}
