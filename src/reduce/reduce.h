/*
 * reduce.h - datatype x op reduction kernels.
 *
 * One table of 12 datatypes x 5 ops. Integers wrap as C unsigned arithmetic;
 * fp16/bf16/fp8 are widened to float32, reduced, and rounded once to nearest
 * even. DUET_AVG reduces as DUET_SUM; duet__reduce_avg_finish divides once at
 * the end. Kernels are plain loops over restrict pointers so gcc vectorises
 * them; no per-element function calls.
 */
#ifndef DUET_REDUCE_H
#define DUET_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

/* Bytes per element; 0 for an unknown datatype. */
size_t duet__dt_size(duet_datatype_t dt);
const char *duet__dt_name(duet_datatype_t dt); /* "float32"...; "?" if unknown */
const char *duet__op_name(duet_op_t op);       /* "sum"...; "?" if unknown */
int duet__dt_is_float(duet_datatype_t dt);

/* dst[i] = a[i] op b[i] for i < count. dst may equal a or b (exactly, not a
 * partial overlap). For DUET_AVG this is a sum. */
void duet__reduce(void *dst, const void *a, const void *b, size_t count, duet_datatype_t dt,
                  duet_op_t op);

/* buf[i] /= n for DUET_AVG's single final division (integers: C division,
 * truncating toward zero for signed types; fp16/bf16/fp8 through float32). */
void duet__reduce_avg_finish(void *buf, size_t count, duet_datatype_t dt, int n);

/* Conversions used by kernels and tests (round to nearest even, NaN kept,
 * overflow to inf, or for e4m3 - which has no inf - to NaN). */
float duet__half_to_float(uint16_t h);
uint16_t duet__float_to_half(float f);
float duet__bf16_to_float(uint16_t h);
uint16_t duet__float_to_bf16(float f);
float duet__e4m3_to_float(uint8_t v);
uint8_t duet__float_to_e4m3(float f);
float duet__e5m2_to_float(uint8_t v);
uint8_t duet__float_to_e5m2(float f);

#endif /* DUET_REDUCE_H */
