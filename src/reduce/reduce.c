/*
 * reduce.c - datatype x op reduction kernels (see reduce.h).
 *
 * Layout:
 *   - one X-macro table of datatypes gives sizes, names and the float flag;
 *   - native types (int8..uint64, float32, float64) get one loop per
 *     (type, op) from DEFINE_KERNEL, in four aliasing variants so every
 *     pointer can be declared restrict without lying to the compiler;
 *   - fp16, bf16, fp8 e4m3 and fp8 e5m2 are reduced a 32-bit word (two or
 *     four elements) at a time: each element is widened to float32 in its
 *     own lane, reduced there, and rounded once back to nearest even. The
 *     conversions are branch-free bit manipulation, inlined, so the word
 *     loops vectorise (built for AVX2 too, where the toolchain can). AVG's
 *     final division goes through float32 stack blocks.
 *
 * Semantics:
 *   - integers wrap as C unsigned arithmetic (signed sum/prod go through the
 *     unsigned type, then back; gcc defines that conversion as modular);
 *   - MIN/MAX on floats propagate NaN: if either input is NaN the result is
 *     NaN (unlike fminf/fmaxf). min(+0, -0) is -0 and max(+0, -0) is +0
 *     in either order, so the ops commute bit for bit;
 *   - DUET_AVG reduces as DUET_SUM; duet__reduce_avg_finish divides once.
 *
 * Rounding relies on the default floating-point environment (round to
 * nearest even, no flush-to-zero), as the rest of the library does.
 */
#include "reduce/reduce.h"

#include <string.h>

/* Elements per float32 block for AVG's division of the 8- and 16-bit float
 * types: 1 KiB of stack, small enough to stay in L1 with the buffer. */
#define DUET_REDUCE_BLOCK 256

/* ---- datatype table: enum, name, size, is_float ---- */

#define DUET_DATATYPES(X)                                                                          \
  X(DUET_INT8, "int8", 1, 0)                                                                       \
  X(DUET_UINT8, "uint8", 1, 0)                                                                     \
  X(DUET_INT32, "int32", 4, 0)                                                                     \
  X(DUET_UINT32, "uint32", 4, 0)                                                                   \
  X(DUET_INT64, "int64", 8, 0)                                                                     \
  X(DUET_UINT64, "uint64", 8, 0)                                                                   \
  X(DUET_FLOAT16, "float16", 2, 1)                                                                 \
  X(DUET_BFLOAT16, "bfloat16", 2, 1)                                                               \
  X(DUET_FLOAT32, "float32", 4, 1)                                                                 \
  X(DUET_FLOAT64, "float64", 8, 1)                                                                 \
  X(DUET_FLOAT8_E4M3, "float8e4m3", 1, 1)                                                          \
  X(DUET_FLOAT8_E5M2, "float8e5m2", 1, 1)

#define DUET_OPS(X)                                                                                \
  X(DUET_SUM, "sum")                                                                               \
  X(DUET_PROD, "prod")                                                                             \
  X(DUET_MIN, "min")                                                                               \
  X(DUET_MAX, "max")                                                                               \
  X(DUET_AVG, "avg")

static const struct {
  const char *name;
  size_t size;
  int is_float;
} dt_info[DUET_NUM_DATATYPES] = {
#define X(e, name, size, is_float) [e] = {name, size, is_float},
    DUET_DATATYPES(X)
#undef X
};

static const char *const op_names[DUET_NUM_OPS] = {
#define X(e, name) [e] = name,
    DUET_OPS(X)
#undef X
};

static int dt_valid(duet_datatype_t dt) {
  return (unsigned)dt < (unsigned)DUET_NUM_DATATYPES;
}
static int op_valid(duet_op_t op) {
  return (unsigned)op < (unsigned)DUET_NUM_OPS;
}

size_t duet__dt_size(duet_datatype_t dt) {
  return dt_valid(dt) ? dt_info[dt].size : 0;
}
const char *duet__dt_name(duet_datatype_t dt) {
  return dt_valid(dt) ? dt_info[dt].name : "?";
}
const char *duet__op_name(duet_op_t op) {
  return op_valid(op) ? op_names[op] : "?";
}
int duet__dt_is_float(duet_datatype_t dt) {
  return dt_valid(dt) ? dt_info[dt].is_float : 0;
}

/* ---- bit casts (memcpy of 4 bytes folds to a register move) ---- */

static inline uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/*
 * ---- conversions ----
 *
 * Narrowing uses the same scheme for every format with m mantissa bits and
 * bias B (after F. Giesen's float_to_half_fast3_rtne):
 *   normal result:    add (2^(22-m) - 1) + lsb to the float32 bits, so the
 *                     integer carry performs round-to-nearest-even, then
 *                     shift right by 23-m and rebias;
 *   subnormal result: add 2^(m+B-24) (the float32 whose ulp is the target's
 *                     smallest subnormal) in float arithmetic, which rounds
 *                     to nearest even, and take the low bits;
 *   NaN:              stays NaN (quiet bit set, top payload bits kept);
 *   overflow:         inf (fp16, bf16, e5m2) or NaN (e4m3, which has no inf).
 * Every path is computed and the result selected, so loops if-convert.
 */

/* The conversions and the word functions of the 8- and 16-bit kernels are
 * used in many loops: without this, GCC calls them from the loops instead of
 * inlining them, and a loop with a call does not vectorise. */
#define ALWAYS_INLINE __attribute__((always_inline))

/* c ? x : y for c in {0, 1}, as masks: a ?: here can become a branch (the
 * float arithmetic feeding it may not be speculated under -ftrapping-math),
 * and a branch stops the loop from vectorising. */
static inline uint32_t sel(uint32_t c, uint32_t x, uint32_t y) {
  uint32_t m = 0u - c;
  return (x & m) | (y & ~m);
}

static inline ALWAYS_INLINE float half_to_float(uint32_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  uint32_t normal = (em << 13) + ((127u - 15u) << 23);
  uint32_t special = (em << 13) | 0x7f800000u; /* inf, NaN with payload */
  uint32_t sub = f2u((float)(int32_t)em * 0x1p-24f);
  uint32_t r = sel(em >= 0x7c00u, special, sel(em < 0x0400u, sub, normal));
  return u2f(r | sign);
}

static inline ALWAYS_INLINE uint32_t float_to_half(float f) {
  uint32_t u = f2u(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  uint32_t big = sel(a > 0x7f800000u, nan, 0x7c00u); /* |f| >= 65536 */
  uint32_t sub = f2u(u2f(a) + 0.5f) - 0x3f000000u;   /* |f| < 2^-14 */
  uint32_t normal = (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  uint32_t r = sel(a >= (143u << 23), big, sel(a < (113u << 23), sub, normal));
  return r | sign;
}

static inline ALWAYS_INLINE float bf16_to_float(uint32_t h) {
  return u2f(h << 16);
}

static inline ALWAYS_INLINE uint32_t float_to_bf16(float f) {
  uint32_t u = f2u(f);
  uint32_t nan = (u >> 16) | 0x0040u;
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* overflows to inf */
  return sel((u & 0x7fffffffu) > 0x7f800000u, nan, rounded);
}

/* e4m3 (OCP "FN"): bias 7, no inf, S.1111.111 is NaN, max 448. */
static inline ALWAYS_INLINE float e4m3_to_float(uint32_t v) {
  uint32_t sign = (v & 0x80u) << 24;
  uint32_t em = v & 0x7fu;
  uint32_t normal = (em << 20) + ((127u - 7u) << 23);
  uint32_t sub = f2u((float)(int32_t)em * 0x1p-9f);
  uint32_t r = sel(em == 0x7fu, 0x7fc00000u, sel(em < 0x08u, sub, normal));
  return u2f(r | sign);
}

static inline ALWAYS_INLINE uint32_t float_to_e4m3(float f) {
  uint32_t u = f2u(f);
  uint32_t sign = (u >> 24) & 0x80u;
  uint32_t a = u & 0x7fffffffu;
  /* a <= 0x7fffffff, so the sum cannot wrap; for small a the subtraction
   * wraps harmlessly and the sub path is selected */
  uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - ((127u - 7u) << 3);
  uint32_t sub = f2u(u2f(a) + 0x1p14f) - (141u << 23); /* |f| < 2^-6 */
  uint32_t r = sel(a < (121u << 23), sub, normal);
  r = sel((a >= 0x7f800000u) | (r > 0x7eu), 0x7fu, r); /* inf, NaN, overflow */
  return r | sign;
}

/* e5m2: bias 15, IEEE-like (inf, NaN); the top byte of an fp16. */
static inline ALWAYS_INLINE float e5m2_to_float(uint32_t v) {
  return half_to_float(v << 8);
}

static inline ALWAYS_INLINE uint32_t float_to_e5m2(float f) {
  uint32_t u = f2u(f);
  uint32_t sign = (u >> 24) & 0x80u;
  uint32_t a = u & 0x7fffffffu;
  uint32_t nan = 0x7eu | ((a >> 21) & 0x3u);
  uint32_t normal = ((a + 0xfffffu + ((a >> 21) & 1u)) >> 21) - ((127u - 15u) << 2);
  uint32_t sub = f2u(u2f(a) + 0x1p7f) - (134u << 23); /* |f| < 2^-14 */
  uint32_t r = sel(a < (113u << 23), sub, normal);
  r = sel(r > 0x7cu, 0x7cu, r); /* overflow (and inf) to inf */
  r = sel(a > 0x7f800000u, nan, r);
  return r | sign;
}

float duet__half_to_float(uint16_t h) {
  return half_to_float(h);
}
uint16_t duet__float_to_half(float f) {
  return (uint16_t)float_to_half(f);
}
float duet__bf16_to_float(uint16_t h) {
  return bf16_to_float(h);
}
uint16_t duet__float_to_bf16(float f) {
  return (uint16_t)float_to_bf16(f);
}
float duet__e4m3_to_float(uint8_t v) {
  return e4m3_to_float(v);
}
uint8_t duet__float_to_e4m3(float f) {
  return (uint8_t)float_to_e4m3(f);
}
float duet__e5m2_to_float(uint8_t v) {
  return e5m2_to_float(v);
}
uint8_t duet__float_to_e5m2(float f) {
  return (uint8_t)float_to_e5m2(f);
}

/* ---- element ops: x is a's element, y is b's ---- */

#define OP_ISUM(T, U, x, y) ((T)((U)(x) + (U)(y)))
#define OP_IPROD(T, U, x, y) ((T)((U)(x) * (U)(y)))
#define OP_IMIN(T, U, x, y) ((y) < (x) ? (y) : (x))
#define OP_IMAX(T, U, x, y) ((y) > (x) ? (y) : (x))
#define OP_FSUM(T, U, x, y) ((x) + (y))
#define OP_FPROD(T, U, x, y) ((x) * (y))
/* NaN-propagating: y wins if it is smaller (larger) or NaN; otherwise x, which
 * is NaN if x is. Commutative, so every rank gets the same bits whatever the
 * order of reduction: a tie of +0 and -0 gives -0 for min and +0 for max
 * (IEEE 754-2019 minimum/maximum), computed as sums so the loops vectorise
 * (as selects, given -fno-trapping-math: see VEC_CFLAGS in configure.ac, and
 * tests/vectorized.sh, which checks that every kernel family is packed). The
 * comparisons are combined with & and | on ints: no short circuit, no branch. */
#define OP_FZTIE(x, y) ((int)((x) == (y)) & (int)((x) == 0))
#define OP_FYWINS(cmp, y) ((int)(cmp) | (int)((y) != (y)))
#define OP_FMIN(T, U, x, y)                                                                        \
  (OP_FYWINS((y) < (x), y) ? (y) : OP_FZTIE(x, y) ? -((-(x)) + (-(y))) : (x))
#define OP_FMAX(T, U, x, y) (OP_FYWINS((y) > (x), y) ? (y) : OP_FZTIE(x, y) ? (x) + (y) : (x))

/* Kernels that do many operations per element (the 8- and 16-bit float
 * conversions below, NaN- and zero-aware float min/max) are bound by the
 * width of the vectors, not by memory: where the toolchain can, their loops
 * are built twice, for AVX2 and for the base ISA, and the loader picks one
 * for the CPU (an ifunc). bf16 sums run 2.3x faster with AVX2 than with
 * SSE2. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef SIMD_CLONES
#define SIMD_CLONES
#endif

/*
 * One (type, op) kernel in four aliasing variants; the dispatcher picks the
 * one that matches, so restrict is always true of the pointers it qualifies.
 * AT: attributes of the five functions (SIMD_CLONES), or nothing.
 */
#define DEFINE_KERNEL(NAME, T, U, OP) DEFINE_KERNEL_AT(NAME, T, U, OP, )
#define DEFINE_KERNEL_AT(NAME, T, U, OP, AT)                                                       \
  AT static void NAME##_abc(T *restrict d, const T *restrict a, const T *restrict b, size_t n) {   \
    for (size_t i = 0; i < n; i++) {                                                               \
      T x = a[i], y = b[i];                                                                        \
      d[i] = OP(T, U, x, y);                                                                       \
    }                                                                                              \
  }                                                                                                \
  AT static void NAME##_da(T *restrict d, const T *restrict b, size_t n) {                         \
    for (size_t i = 0; i < n; i++) {                                                               \
      T x = d[i], y = b[i];                                                                        \
      d[i] = OP(T, U, x, y);                                                                       \
    }                                                                                              \
  }                                                                                                \
  AT static void NAME##_db(T *restrict d, const T *restrict a, size_t n) {                         \
    for (size_t i = 0; i < n; i++) {                                                               \
      T x = a[i], y = d[i];                                                                        \
      d[i] = OP(T, U, x, y);                                                                       \
    }                                                                                              \
  }                                                                                                \
  AT static void NAME##_dd(T *restrict d, size_t n) {                                              \
    for (size_t i = 0; i < n; i++) {                                                               \
      T x = d[i], y = d[i];                                                                        \
      d[i] = OP(T, U, x, y);                                                                       \
    }                                                                                              \
  }                                                                                                \
  AT static void NAME(void *d, const void *a, const void *b, size_t n) {                           \
    if (d == a && d == b)                                                                          \
      NAME##_dd(d, n);                                                                             \
    else if (d == a)                                                                               \
      NAME##_da(d, b, n);                                                                          \
    else if (d == b)                                                                               \
      NAME##_db(d, a, n);                                                                          \
    else                                                                                           \
      NAME##_abc(d, a, b, n);                                                                      \
  }

/* suffix, C type, unsigned twin */
#define DUET_INT_TYPES(X)                                                                          \
  X(i8, int8_t, uint8_t)                                                                           \
  X(u8, uint8_t, uint8_t)                                                                          \
  X(i32, int32_t, uint32_t)                                                                        \
  X(u32, uint32_t, uint32_t)                                                                       \
  X(i64, int64_t, uint64_t)                                                                        \
  X(u64, uint64_t, uint64_t)

#define DUET_FLOAT_TYPES(X)                                                                        \
  X(f32, float, float)                                                                             \
  X(f64, double, double)

#define DEFINE_INT_KERNELS(S, T, U)                                                                \
  DEFINE_KERNEL(k_sum_##S, T, U, OP_ISUM)                                                          \
  DEFINE_KERNEL(k_prod_##S, T, U, OP_IPROD)                                                        \
  DEFINE_KERNEL(k_min_##S, T, U, OP_IMIN)                                                          \
  DEFINE_KERNEL(k_max_##S, T, U, OP_IMAX)
#define DEFINE_FLOAT_KERNELS(S, T, U)                                                              \
  DEFINE_KERNEL(k_sum_##S, T, U, OP_FSUM)                                                          \
  DEFINE_KERNEL(k_prod_##S, T, U, OP_FPROD)                                                        \
  DEFINE_KERNEL_AT(k_min_##S, T, U, OP_FMIN, SIMD_CLONES)                                          \
  DEFINE_KERNEL_AT(k_max_##S, T, U, OP_FMAX, SIMD_CLONES)

DUET_INT_TYPES(DEFINE_INT_KERNELS)
DUET_FLOAT_TYPES(DEFINE_FLOAT_KERNELS)

/*
 * ---- 8- and 16-bit floats: through float32, a 32-bit word at a time ----
 *
 * A word holds two 16-bit or four 8-bit elements. Each element is widened
 * to float32 in its own 32-bit lane, reduced there by the float op and
 * rounded once back; the results are shifted into place and or-ed. Every
 * step stays inside 32-bit lanes, so the loops vectorise without the
 * packing shuffles that converting whole arrays of 16-bit values needs (on
 * SSE2 those made bf16 sums 15x slower than float32 ones). The word loop is
 * DEFINE_KERNEL's, with its aliasing variants: dst may equal a or b. The
 * elements after the last whole word go through the same word function,
 * one at a time.
 */

/* A 32-bit word that may sit at any address and alias the element type. */
typedef uint32_t word_t __attribute__((aligned(1), may_alias));

/* The word op: OP_WORD(T, F, x, y) calls F, the (type, op) word function. */
#define OP_WORD(T, F, x, y) F(x, y)

#define LANE16(TO_F, FROM_F, FOP, x, y, k)                                                         \
  (FROM_F(FOP(float, float, TO_F(((x) >> (k)) & 0xffffu), TO_F(((y) >> (k)) & 0xffffu))) << (k))
#define LANE8(TO_F, FROM_F, FOP, x, y, k)                                                          \
  (FROM_F(FOP(float, float, TO_F(((x) >> (k)) & 0xffu), TO_F(((y) >> (k)) & 0xffu))) << (k))
#define LANES16(TO_F, FROM_F, FOP, x, y)                                                           \
  (LANE16(TO_F, FROM_F, FOP, x, y, 0) | LANE16(TO_F, FROM_F, FOP, x, y, 16))
#define LANES8(TO_F, FROM_F, FOP, x, y)                                                            \
  (LANE8(TO_F, FROM_F, FOP, x, y, 0) | LANE8(TO_F, FROM_F, FOP, x, y, 8) |                         \
   LANE8(TO_F, FROM_F, FOP, x, y, 16) | LANE8(TO_F, FROM_F, FOP, x, y, 24))

/* One (type, op): the word function, the word loop, and the kernel. T is the
 * element type, PER the elements per word. */
#define DEFINE_LOWP_OP(S, T, PER, LANES, TO_F, FROM_F, OPN, FOP)                                   \
  static inline ALWAYS_INLINE uint32_t w_##OPN##_##S(uint32_t x, uint32_t y) {                     \
    return LANES(TO_F, FROM_F, FOP, x, y);                                                         \
  }                                                                                                \
  DEFINE_KERNEL_AT(kw_##OPN##_##S, word_t, w_##OPN##_##S, OP_WORD, SIMD_CLONES)                    \
  static void k_##OPN##_##S(void *d, const void *a, const void *b, size_t n) {                     \
    size_t words = n / PER;                                                                        \
    T *pd = d;                                                                                     \
    const T *pa = a, *pb = b;                                                                      \
    kw_##OPN##_##S(d, a, b, words);                                                                \
    for (size_t i = words * PER; i < n; i++)                                                       \
      pd[i] = (T)w_##OPN##_##S(pa[i], pb[i]);                                                      \
  }

#define DEFINE_LOWP(S, T, PER, LANES, TO_F, FROM_F)                                                \
  DEFINE_LOWP_OP(S, T, PER, LANES, TO_F, FROM_F, sum, OP_FSUM)                                     \
  DEFINE_LOWP_OP(S, T, PER, LANES, TO_F, FROM_F, prod, OP_FPROD)                                   \
  DEFINE_LOWP_OP(S, T, PER, LANES, TO_F, FROM_F, min, OP_FMIN)                                     \
  DEFINE_LOWP_OP(S, T, PER, LANES, TO_F, FROM_F, max, OP_FMAX)                                     \
  static void widen_##S(float *restrict out, const T *restrict in, size_t n) {                     \
    for (size_t i = 0; i < n; i++)                                                                 \
      out[i] = TO_F(in[i]);                                                                        \
  }                                                                                                \
  static void narrow_##S(T *restrict out, const float *restrict in, size_t n) {                    \
    for (size_t i = 0; i < n; i++)                                                                 \
      out[i] = (T)FROM_F(in[i]);                                                                   \
  }

DEFINE_LOWP(f16, uint16_t, 2, LANES16, half_to_float, float_to_half)
DEFINE_LOWP(bf16, uint16_t, 2, LANES16, bf16_to_float, float_to_bf16)
DEFINE_LOWP(e4m3, uint8_t, 4, LANES8, e4m3_to_float, float_to_e4m3)
DEFINE_LOWP(e5m2, uint8_t, 4, LANES8, e5m2_to_float, float_to_e5m2)

/* ---- dispatch table: [datatype][op], AVG is SUM ---- */

typedef void (*kernel_fn)(void *, const void *, const void *, size_t);

#define KROW(S)                                                                                    \
  { k_sum_##S, k_prod_##S, k_min_##S, k_max_##S, k_sum_##S }

static const kernel_fn kernels[DUET_NUM_DATATYPES][DUET_NUM_OPS] = {
    [DUET_INT8] = KROW(i8),     [DUET_UINT8] = KROW(u8),         [DUET_INT32] = KROW(i32),
    [DUET_UINT32] = KROW(u32),  [DUET_INT64] = KROW(i64),        [DUET_UINT64] = KROW(u64),
    [DUET_FLOAT16] = KROW(f16), [DUET_BFLOAT16] = KROW(bf16),    [DUET_FLOAT32] = KROW(f32),
    [DUET_FLOAT64] = KROW(f64), [DUET_FLOAT8_E4M3] = KROW(e4m3), [DUET_FLOAT8_E5M2] = KROW(e5m2),
};

void duet__reduce(void *dst, const void *a, const void *b, size_t count, duet_datatype_t dt,
                  duet_op_t op) {
  if (!dt_valid(dt) || !op_valid(op) || count == 0)
    return;
  kernels[dt][op](dst, a, b, count);
}

/* ---- AVG's final division ---- */

#define DEFINE_DIV_INT(S, T, W)                                                                    \
  static void div_##S(void *buf, size_t n, int by) {                                               \
    T *restrict p = buf;                                                                           \
    W q = (W)by;                                                                                   \
    for (size_t i = 0; i < n; i++)                                                                 \
      p[i] = (T)((W)p[i] / q);                                                                     \
  }
/* int8/uint8 divide in int (exact); wider types in their own width. */
DEFINE_DIV_INT(i8, int8_t, int)
DEFINE_DIV_INT(u8, uint8_t, unsigned)
DEFINE_DIV_INT(i32, int32_t, int32_t)
DEFINE_DIV_INT(u32, uint32_t, uint32_t)
DEFINE_DIV_INT(i64, int64_t, int64_t)
DEFINE_DIV_INT(u64, uint64_t, uint64_t)

static void div_f32(void *buf, size_t n, int by) {
  float *restrict p = buf;
  float q = (float)by;
  for (size_t i = 0; i < n; i++)
    p[i] = p[i] / q;
}

static void div_f64(void *buf, size_t n, int by) {
  double *restrict p = buf;
  double q = (double)by;
  for (size_t i = 0; i < n; i++)
    p[i] = p[i] / q;
}

#define DEFINE_DIV_LOWP(S, T)                                                                      \
  static void div_##S(void *buf, size_t n, int by) {                                               \
    float f[DUET_REDUCE_BLOCK];                                                                    \
    T *p = buf;                                                                                    \
    for (size_t i = 0; i < n; i += DUET_REDUCE_BLOCK) {                                            \
      size_t m = n - i < DUET_REDUCE_BLOCK ? n - i : DUET_REDUCE_BLOCK;                            \
      widen_##S(f, p + i, m);                                                                      \
      div_f32(f, m, by);                                                                           \
      narrow_##S(p + i, f, m);                                                                     \
    }                                                                                              \
  }
DEFINE_DIV_LOWP(f16, uint16_t)
DEFINE_DIV_LOWP(bf16, uint16_t)
DEFINE_DIV_LOWP(e4m3, uint8_t)
DEFINE_DIV_LOWP(e5m2, uint8_t)

static void (*const dividers[DUET_NUM_DATATYPES])(void *, size_t, int) = {
    [DUET_INT8] = div_i8,     [DUET_UINT8] = div_u8,         [DUET_INT32] = div_i32,
    [DUET_UINT32] = div_u32,  [DUET_INT64] = div_i64,        [DUET_UINT64] = div_u64,
    [DUET_FLOAT16] = div_f16, [DUET_BFLOAT16] = div_bf16,    [DUET_FLOAT32] = div_f32,
    [DUET_FLOAT64] = div_f64, [DUET_FLOAT8_E4M3] = div_e4m3, [DUET_FLOAT8_E5M2] = div_e5m2,
};

/* n < 1 is a caller bug (there is always at least one rank); leave buf as is
 * rather than divide by zero. n == 1 is also a no-op. */
void duet__reduce_avg_finish(void *buf, size_t count, duet_datatype_t dt, int n) {
  if (!dt_valid(dt) || n <= 1 || count == 0)
    return;
  dividers[dt](buf, count, n);
}
