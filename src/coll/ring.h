/*
 * ring.h - ring reduce-scatter and allgather over a segment layout, the
 * building blocks of ring allreduce, reduce_scatter, allgather and the
 * hierarchy's inner phases.
 *
 * A layout cuts data into n segments, one per rank of the ring; segment k is
 * made of `per` pieces (element offset, element count) - one contiguous range
 * for allreduce, several blocks for the hierarchy. Rank r ends owning
 * segment r. Pieces travel in chunks of at most chunk_elems elements, and the
 * chunks of different pieces pipeline independently.
 */
#ifndef DUET_RING_H
#define DUET_RING_H

#include "coll/coll.h"

typedef struct duet__segs {
  int n;         /* segments (= ranks of the ring) */
  int per;       /* pieces per segment */
  uint64_t *off; /* n*per piece offsets, elements; piece j of segment k at [k*per + j] */
  uint64_t *len; /* n*per piece lengths, elements */
} duet__segs_t;

/* count elements cut into n nearly equal contiguous segments. */
duet_status_t duet__segs_even(duet__segs_t *g, uint64_t count, int n);
/* n segments of one block each: segment k is block blocks[k] (NULL: k) of
 * blk elements. */
duet_status_t duet__segs_blocks(duet__segs_t *g, uint64_t blk, int n, const int32_t *blocks);
void duet__segs_free(duet__segs_t *g);
uint64_t duet__segs_elems(const duet__segs_t *g, int k); /* elements of segment k */

/* Where the owned segment's result goes: at the pieces' own offsets in buf
 * (contiguous == 0), or packed from element offset off (contiguous == 1). */
typedef struct duet__place {
  uint8_t buf;
  int contiguous;
  uint64_t off;
} duet__place_t;

/* Ring reduce-scatter among ranks 0..n-1 (this is rank me): inputs are read
 * from in at the pieces' offsets, partial sums of other segments go to work
 * at the pieces' offsets, and this rank's segment, reduced over all, goes to
 * out (divided once by the communicator size when avg). Scratch: two
 * receive slots per chunk of a segment, from scratch offset slots_off.
 * direct: in is other memory than work and out (an out-of-place call), so
 * partial sums arrive straight where they are reduced (dst op= in, no slots,
 * no scratch, and the received bytes are still in cache when reduced). */
void duet__ring_rs_emit(duet__sched_t *s, int me, const duet__segs_t *g, size_t dtsize,
                        uint64_t chunk_elems, uint8_t in, uint8_t work, duet__place_t out,
                        int avg, uint64_t slots_off, int direct);

/* Ring allgather among ranks 0..n-1: this rank's segment is read from src
 * (placed as described), every segment is written to dst at the pieces'
 * offsets (this rank's own too, by a copy unless src is dst). */
void duet__ring_ag_emit(duet__sched_t *s, int me, const duet__segs_t *g, size_t dtsize,
                        uint64_t chunk_elems, duet__place_t src, uint8_t dst);

#endif
