/*
 * mpi_alltoall.c - duet_alltoall, duet_alltoallv, their non-blocking forms and
 * grouped point-to-point, launched by mpirun and checked against MPI; plus the
 * hierarchical all-to-all's HPN claim, read from duet_comm_get_stats.
 *
 *   mpirun <opts> -np 2 -x DUET_SUPERNODE=a tests/mpi/mpi_alltoall [-q] [-v] [-a SPEC] \
 *                : -np 2 -x DUET_SUPERNODE=b tests/mpi/mpi_alltoall [-q] [-v] [-a SPEC]
 *
 * Without -a the tests run under four DUET_ALGO settings, one communicator
 * each (DUET_ALGO is read at duet_comm_init_rank):
 * "alltoall=pairwise,alltoallv=pairwise", "alltoall=bruck",
 * "alltoall=hier,alltoallv=hier" and DUET_ALGO unset ("auto").
 *
 *   alltoall    int32, float32 (exact values), uint8 and float64; counts per
 *               peer 0 1 3 1000 (and 250000 without -q); out of place and in
 *               place; NULL buffers with count 0; against MPI_Alltoall
 *   alltoallv   random counts (a function of (src, dst, seed), so every rank
 *               knows the whole matrix; about a quarter are 0) and skewed
 *               counts as in MoE token dispatch (one or two hot destinations
 *               get many times the average, some get nothing); blocks placed
 *               in a shuffled order with gaps between them in both buffers:
 *               the gaps of recvbuf must stay untouched; against MPI_Alltoallv
 *   nonblocking duet_ialltoall and duet_ialltoallv in flight together
 *   hpn         (alltoall=hier, N super-nodes of L ranks of equal sizes) the
 *               deltas of duet_comm_get_stats around one alltoall of count
 *               elements per peer (0, 1, 1000, 40000 float32): HPN messages
 *               sent per rank <= N-1 (0 when N == 1; one aggregated message
 *               of L blocks per peer super-node), but <= (N-1)*L for 40000
 *               (160000-byte blocks cross one message each); HPN bytes sent
 *               and received per rank == (N-1)*L*count*size exactly (0 bytes
 *               for count 0). Also under auto on two super-nodes of 2 to 4
 *               ranks with the load/store UPN (default providers), where
 *               the tuner takes the hierarchy:
 *               the same claims, blocking and non-blocking (duet_ialltoall),
 *               and no UPN message at all (the exchange inside the
 *               super-node goes through the shared segment); and for
 *               duet_alltoallv with equal counts, beyond the traffic of its
 *               count 0 call (the exchange of send counts), which itself
 *               must not touch the HPN (the counts stay inside the
 *               super-node). On two
 *               super-nodes of unequal sizes (2 to 4 ranks each) under
 *               auto, blocks cross the HPN one per remote rank: at most
 *               that many messages, exactly (remote ranks)*count*size
 *               bytes each way, and no UPN message
 *   group       (auto or -a) duet_group_start/duet_send/duet_recv/
 *               duet_group_end in a shuffled call order (different on every
 *               rank): a ring shift, a random permutation (same seed on every
 *               rank), a full exchange (a distinct block to every rank, itself
 *               included); the full exchange again with duet_isend/duet_irecv
 *               inside the group, then duet_wait
 *   mem-alloc   (auto or -a) buffers from duet_mem_alloc: int32 and float32
 *               alltoall of 1000, 16384, 20000 (and 250000) per peer against
 *               MPI_Alltoall; the send buffer at an offset inside a larger
 *               allocation; rank 0's send buffer from malloc (the others
 *               must notice and copy twice); in place; duet_ialltoall;
 *               alltoallv with random (up to 40000) and skewed counts,
 *               blocks shuffled with gaps that must stay untouched, and
 *               random counts with rank 0's buffers from malloc;
 *               allgather of 1000 .. 250000 per rank, in place, and with
 *               rank 0's block from malloc, against MPI_Allgather;
 *               reduce_scatter of the same counts, in place, and with rank
 *               0's send buffer from malloc, against
 *               MPI_Reduce_scatter_block. Then,
 *               with every earlier buffer freed, one more call: this process
 *               must map exactly its own two buffers plus, where the
 *               exchange inside its super-node runs on the shared segment
 *               (default providers, 2 or more ranks; flat, or the
 *               hierarchy's part inside the super-node), the send buffer of
 *               every other rank of its super-node: each rank read those
 *               peers' blocks in place, and dropped its mappings of the
 *               freed ones
 *   bad-input   (auto or -a) NULL sendcounts/recvcounts/sdispls/rdispls,
 *               alltoallv in place, alltoall with partially overlapping
 *               buffers, count overflow (alltoall and alltoallv), NULL comm:
 *               a negative
 *               status, duet_last_error naming the argument, recvbuf untouched
 * Every receive buffer has a guard region after it that must stay intact, and
 * send buffers must be unchanged out of place.
 *
 * Options: -q quick (no 250000-per-peer or large alltoallv cases), -a SPEC
 * only this DUET_ALGO setting (e.g. "alltoall=bruck"; "auto" leaves DUET_ALGO
 * unset), -t LIST only these tests (rows, comma-separated), -v one line per
 * case. Rank 0 prints a line per test x setting and a
 * summary; the exit status is non-zero on any failure (DUET_ERR_UNSUPPORTED
 * counts as one).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpi_common.h"

enum {
  ROW_LAYOUT,
  ROW_A2A,
  ROW_A2AV_RAND,
  ROW_A2AV_SKEW,
  ROW_NB,
  ROW_HPN,
  ROW_GROUP,
  ROW_BAD,
  ROW_MEM,
  NROWS
};
static const char *const row_names[NROWS] = {"layout",         "alltoall",    "alltoallv-rand",
                                             "alltoallv-skew", "nonblocking", "hpn",
                                             "group",          "bad-input",   "mem-alloc"};

#define MAX_RESULTS 64
typedef struct {
  int row;
  char label[32];
  long errs;
  int unsupported, skipped;
} result_t;

typedef struct {
  int rank, size, quick, verbose;
  const char *only; /* -t: comma-separated rows to run, NULL: all */
  duet_comm_t *comm;
  mt_layout_t lay;
  const char *label; /* setting: pairwise, bruck, hier, auto, or the -a spec */
  int unsupported;
  int umem; /* run_v_case: sendbuf and recvbuf from duet_mem_alloc */
  result_t results[MAX_RESULTS];
  int nresults;
} ctx_t;

static const duet_datatype_t types[4] = {DUET_INT32, DUET_FLOAT32, DUET_UINT8, DUET_FLOAT64};
#define GAP_BYTE 0x5A

/* DUET_ERR_UNSUPPORTED marks the test and jumps to `out` (every rank gets the
 * same answer); any other error aborts the job. */
#define DCALL(c, call)                                                                             \
  do {                                                                                             \
    duet_status_t dc_st_ = (call);                                                                 \
    if (dc_st_ == DUET_ERR_UNSUPPORTED) {                                                          \
      note_unsupported((c), #call);                                                                \
      goto out;                                                                                    \
    }                                                                                              \
    if (dc_st_ < 0)                                                                                \
      die((c), dc_st_, #call, __LINE__);                                                           \
  } while (0)

static void die(ctx_t *c, duet_status_t st, const char *call, int line) {
  fprintf(stderr, "[rank %d] %s:%d: %s failed: %s (%d): %s\n", c->rank, __FILE__, line, call,
          duet_strerror(st), (int)st, duet_last_error(c->comm));
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static void note_unsupported(ctx_t *c, const char *call) {
  if (!c->unsupported && c->rank == 0)
    fprintf(stderr, "[rank 0] %s: DUET_ERR_UNSUPPORTED: %s\n", call, duet_last_error(c->comm));
  c->unsupported = 1;
}

static void verbose_case(ctx_t *c, const char *what) {
  if (c->verbose && c->rank == 0) {
    printf("#   %s\n", what);
    fflush(stdout);
  }
}

static long check_unchanged(ctx_t *c, const void *buf, const void *copy, size_t bytes,
                            const char *which, const char *what) {
  if (bytes && memcmp(buf, copy, bytes) != 0) {
    size_t i = 0;
    while (((const unsigned char *)buf)[i] == ((const unsigned char *)copy)[i])
      i++;
    fprintf(stderr, "[rank %d] %s: %s was modified (first at byte %zu of %zu)\n", c->rank, what,
            which, i, bytes);
    return 1;
  }
  return 0;
}

/* ---- inputs: element i of the block src sends to dst ---- */

static uint64_t block_base(uint64_t seed, int src, int dst) {
  return mt_hash(seed * 0x100000001b3ull ^ ((uint64_t)src << 40) ^ ((uint64_t)dst << 20));
}

/* Random-looking, exact in the type: float32 integers below 2^23 in
 * magnitude, float64 integers below 2^52; integers any bits. */
static void put_val(void *buf, size_t i, duet_datatype_t dt, uint64_t h) {
  switch (dt) {
  case DUET_FLOAT32:
    ((float *)buf)[i] = (float)((int64_t)(h % (1u << 24)) - (1 << 23));
    break;
  case DUET_FLOAT64:
    ((double *)buf)[i] = (double)((int64_t)(h >> 12) - (1ll << 51));
    break;
  default:
    mt_set_int(buf, i, dt, h);
    break;
  }
}

static void fill_block(void *blk, size_t count, duet_datatype_t dt, uint64_t seed, int src,
                       int dst) {
  uint64_t base = block_base(seed, src, dst);
  for (size_t i = 0; i < count; i++)
    put_val(blk, i, dt, mt_hash(base + i));
}

/* ---- alltoall ---- */

static long test_alltoall(ctx_t *c) {
  const size_t counts[] = {0, 1, 3, 1000, 250000};
  const int ncounts = c->quick ? 4 : 5;
  const size_t n = (size_t)c->size, maxbytes = n * counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(maxbytes + MT_GUARD), *ref = mt_xmalloc(maxbytes);
  long errs = 0;
  char what[160];

  for (int ti = 0; ti < 4; ti++) {
    const mt_dtype_t *t = mt_dtype(types[ti]);
    for (int ci = 0; ci < ncounts; ci++) {
      size_t count = counts[ci], bbytes = count * t->size, all = n * bbytes;
      uint64_t seed = 0xA2Aull + 1000003ull * (uint64_t)ti + (uint64_t)ci;
      for (size_t k = 0; k < n; k++)
        fill_block(send + k * bbytes, count, t->dt, seed, c->rank, (int)k);
      memcpy(copy, send, all);
      MPI_Alltoall(send, (int)bbytes, MPI_BYTE, ref, (int)bbytes, MPI_BYTE, MPI_COMM_WORLD);

      snprintf(what, sizeof what, "alltoall %s %s count %zu out-of-place", c->label, t->name,
               count);
      memset(recv, GAP_BYTE, all);
      mt_guard_fill(recv + all);
      mt_guard_fill(send + all);
      DCALL(c, duet_alltoall(send, recv, count, t->dt, c->comm));
      errs += (long)mt_compare(recv, ref, n * count, t->dt, c->rank, what);
      errs += mt_guard_check(recv + all, c->rank, what);
      errs += check_unchanged(c, send, copy, all, "sendbuf", what);
      errs += mt_guard_check(send + all, c->rank, what);
      verbose_case(c, what);

      snprintf(what, sizeof what, "alltoall %s %s count %zu in-place", c->label, t->name, count);
      memcpy(recv, copy, all);
      mt_guard_fill(recv + all);
      DCALL(c, duet_alltoall(recv, recv, count, t->dt, c->comm));
      errs += (long)mt_compare(recv, ref, n * count, t->dt, c->rank, what);
      errs += mt_guard_check(recv + all, c->rank, what);
      verbose_case(c, what);
    }
  }
  /* count 0 with NULL buffers is valid ("NULL buffers with count > 0" are not) */
  snprintf(what, sizeof what, "alltoall %s count 0 with NULL buffers", c->label);
  DCALL(c, duet_alltoall(NULL, NULL, 0, DUET_INT32, c->comm));
  verbose_case(c, what);
out:
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- alltoallv ---- */

typedef struct {
  size_t *sc, *sd, *rc, *rd; /* counts and displacements, in elements */
  size_t sext, rext;         /* elements spanned by each buffer, gaps included */
} vplan_t;

/* Random counts in [0, maxc], about a quarter 0. */
static size_t cnt_rand(int src, int dst, uint64_t seed, size_t maxc) {
  uint64_t h = mt_hash(seed ^ 0xC0C0ull ^ ((uint64_t)src << 32) ^ ((uint64_t)dst << 8));
  return h % 4 == 0 ? 0 : (size_t)((h >> 8) % (maxc + 1));
}

/* MoE token dispatch: src routes `tokens` tokens of `hidden` elements over the
 * destinations (experts) by weight: a global hot destination gets weight 24, a
 * second (when n >= 4) 8, about a quarter of the rest none, the others 1 or 2
 * (depending on src); the remainder of the division goes to the hot one.
 * A function of (src, dst, seed): every rank knows the matrix. */
static size_t cnt_skew(int src, int dst, int n, uint64_t seed, size_t tokens, size_t hidden) {
  int hot1 = (int)(seed % (uint64_t)n), hot2 = n >= 4 ? (hot1 + n / 2) % n : -1;
  uint64_t w[64] = {0}, sum = 0;
  for (int d = 0; d < n && d < 64; d++) {
    uint64_t h = mt_hash(seed ^ 0x5EEDull ^ ((uint64_t)d << 16));
    if (d == hot1)
      w[d] = 24;
    else if (d == hot2)
      w[d] = 8;
    else if (h % 4 == 0)
      w[d] = 0;
    else
      w[d] = 1 + (mt_hash(h ^ (uint64_t)src) & 1);
    sum += w[d];
  }
  size_t t = (size_t)((uint64_t)tokens * w[dst] / sum);
  if (dst == hot1) {
    size_t used = 0;
    for (int d = 0; d < n; d++)
      used += (size_t)((uint64_t)tokens * w[d] / sum);
    t += tokens - used;
  }
  return t * hidden;
}

/* Blocks in a shuffled order (rank- and side-dependent), a gap of 0..4
 * elements before each one and after the last. */
static size_t place_blocks(const size_t *cnt, size_t *displ, int n, uint64_t seed) {
  int *ord = mt_xmalloc(sizeof(int) * (size_t)n);
  for (int k = 0; k < n; k++)
    ord[k] = k;
  for (int k = n - 1; k > 0; k--) {
    int j = (int)(mt_hash(seed + (uint64_t)k) % (uint64_t)(k + 1)), tmp = ord[k];
    ord[k] = ord[j];
    ord[j] = tmp;
  }
  size_t pos = 0;
  for (int j = 0; j < n; j++) {
    pos += mt_hash(seed ^ 0x6A9ull ^ (uint64_t)j) % 5;
    displ[ord[j]] = pos;
    pos += cnt[ord[j]];
  }
  pos += 1 + mt_hash(seed ^ 0x7A9ull) % 4;
  free(ord);
  return pos;
}

/* kind 0: random counts up to maxc; kind 1: skewed, `tokens` of `hidden`. */
static void make_plan(ctx_t *c, vplan_t *p, int kind, uint64_t seed, size_t maxc, size_t tokens,
                      size_t hidden) {
  int n = c->size;
  p->sc = mt_xmalloc(sizeof(size_t) * (size_t)n);
  p->sd = mt_xmalloc(sizeof(size_t) * (size_t)n);
  p->rc = mt_xmalloc(sizeof(size_t) * (size_t)n);
  p->rd = mt_xmalloc(sizeof(size_t) * (size_t)n);
  for (int k = 0; k < n; k++) {
    p->sc[k] =
        kind ? cnt_skew(c->rank, k, n, seed, tokens, hidden) : cnt_rand(c->rank, k, seed, maxc);
    p->rc[k] =
        kind ? cnt_skew(k, c->rank, n, seed, tokens, hidden) : cnt_rand(k, c->rank, seed, maxc);
  }
  p->sext = place_blocks(p->sc, p->sd, n, seed ^ (uint64_t)c->rank * 0x51ull);
  p->rext = place_blocks(p->rc, p->rd, n, seed ^ (uint64_t)c->rank * 0x52ull ^ 0xFFull);
}

static void free_plan(vplan_t *p) {
  free(p->sc);
  free(p->sd);
  free(p->rc);
  free(p->rd);
}

/* send: sext elements, gaps GAP_BYTE, block k for rank k. */
static void fill_vsend(ctx_t *c, const vplan_t *p, unsigned char *send, duet_datatype_t dt,
                       uint64_t seed) {
  size_t sz = mt_dtype(dt)->size;
  memset(send, GAP_BYTE, p->sext * sz);
  for (int k = 0; k < c->size; k++)
    fill_block(send + p->sd[k] * sz, p->sc[k], dt, seed, c->rank, k);
}

/* ref: rext elements, gaps GAP_BYTE, the blocks MPI_Alltoallv delivers. */
static void ref_alltoallv(ctx_t *c, const vplan_t *p, const void *send, unsigned char *ref,
                          duet_datatype_t dt) {
  size_t sz = mt_dtype(dt)->size, n = (size_t)c->size;
  int *a = mt_xmalloc(sizeof(int) * 4 * n);
  for (size_t k = 0; k < n; k++) {
    a[k] = (int)(p->sc[k] * sz);
    a[n + k] = (int)(p->sd[k] * sz);
    a[2 * n + k] = (int)(p->rc[k] * sz);
    a[3 * n + k] = (int)(p->rd[k] * sz);
  }
  memset(ref, GAP_BYTE, p->rext * sz);
  MPI_Alltoallv(send, a, a + n, MPI_BYTE, ref, a + 2 * n, a + 3 * n, MPI_BYTE, MPI_COMM_WORLD);
  free(a);
}

/* Block by block against ref, then every gap byte of recv. */
static long check_v(ctx_t *c, const vplan_t *p, const unsigned char *recv, const unsigned char *ref,
                    duet_datatype_t dt, const char *what) {
  size_t sz = mt_dtype(dt)->size;
  long errs = 0;
  char w2[200];
  unsigned char *mask = mt_xmalloc(p->rext);
  memset(mask, 0, p->rext);
  for (int k = 0; k < c->size; k++) {
    snprintf(w2, sizeof w2, "%s: block from rank %d (%zu at %zu)", what, k, p->rc[k], p->rd[k]);
    errs += (long)mt_compare(recv + p->rd[k] * sz, ref + p->rd[k] * sz, p->rc[k], dt, c->rank, w2);
    memset(mask + p->rd[k], 1, p->rc[k]);
  }
  size_t bad = 0, first = 0;
  for (size_t e = 0; e < p->rext; e++) {
    if (mask[e])
      continue;
    for (size_t b = 0; b < sz; b++)
      if (recv[e * sz + b] != GAP_BYTE && bad++ == 0)
        first = e * sz + b;
  }
  if (bad) {
    fprintf(stderr, "[rank %d] %s: %zu gap bytes of recvbuf were written (first at byte %zu)\n",
            c->rank, what, bad, first);
    errs++;
  }
  free(mask);
  return errs;
}

static void *umem_xalloc(ctx_t *c, size_t bytes);

/* A buffer of run_v_case: from duet_mem_alloc when c->umem is set. */
static unsigned char *vbuf(ctx_t *c, size_t bytes) {
  return c->umem ? umem_xalloc(c, bytes) : mt_xmalloc(bytes);
}

static void vbuf_free(const ctx_t *c, void *p) {
  if (c->umem)
    duet_mem_free(p);
  else
    free(p);
}

static long run_v_case(ctx_t *c, const vplan_t *p, duet_datatype_t dt, uint64_t seed,
                       const char *what) {
  const mt_dtype_t *t = mt_dtype(dt);
  size_t sbytes = p->sext * t->size, rbytes = p->rext * t->size;
  unsigned char *send = vbuf(c, sbytes + MT_GUARD), *copy = mt_xmalloc(sbytes);
  unsigned char *recv = vbuf(c, rbytes + MT_GUARD), *ref = mt_xmalloc(rbytes);
  long errs = 0;
  fill_vsend(c, p, send, dt, seed);
  memcpy(copy, send, sbytes);
  ref_alltoallv(c, p, send, ref, dt);
  memset(recv, GAP_BYTE, rbytes);
  mt_guard_fill(recv + rbytes);
  mt_guard_fill(send + sbytes);
  DCALL(c, duet_alltoallv(send, p->sc, p->sd, recv, p->rc, p->rd, dt, c->comm));
  errs += check_v(c, p, recv, ref, dt, what);
  errs += mt_guard_check(recv + rbytes, c->rank, what);
  errs += check_unchanged(c, send, copy, sbytes, "sendbuf", what);
  errs += mt_guard_check(send + sbytes, c->rank, what);
  verbose_case(c, what);
out:
  vbuf_free(c, send);
  free(copy);
  vbuf_free(c, recv);
  free(ref);
  return errs;
}

static long test_alltoallv_rand(ctx_t *c) {
  const size_t maxcs[] = {0, 1, 7, 1000, 60000};
  const int nmax = c->quick ? 4 : 5;
  long errs = 0;
  char what[160];
  for (int mi = 0; mi < nmax; mi++) {
    for (int ti = 0; ti < 4; ti++) {
      /* the biggest for two types */
      if (mi == 4 && ti % 2)
        continue;
      uint64_t seed = 0xA2A5ull + 7919ull * (uint64_t)mi + (uint64_t)ti;
      vplan_t p;
      make_plan(c, &p, 0, seed, maxcs[mi], 0, 0);
      snprintf(what, sizeof what, "alltoallv %s random counts <= %zu %s", c->label, maxcs[mi],
               mt_dtype(types[ti])->name);
      errs += run_v_case(c, &p, types[ti], seed, what);
      free_plan(&p);
      if (c->unsupported)
        return errs;
    }
  }
  return errs;
}

static long test_alltoallv_skew(ctx_t *c) {
  /* tokens per rank x elements per token */
  const struct {
    size_t tokens, hidden;
    duet_datatype_t dt;
  } cases[] = {{16, 1, DUET_UINT8},   {64, 3, DUET_FLOAT32}, {256, 64, DUET_FLOAT32},
               {128, 64, DUET_UINT8}, {512, 96, DUET_INT32}, {2048, 256, DUET_FLOAT32}};
  const int ncases = c->quick ? 5 : 6;
  long errs = 0;
  char what[200];
  for (int i = 0; i < ncases; i++) {
    for (int s = 0; s < 2; s++) {
      uint64_t seed = 0x3E0ull + 31ull * (uint64_t)i + (uint64_t)s;
      vplan_t p;
      make_plan(c, &p, 1, seed, 0, cases[i].tokens, cases[i].hidden);
      size_t rtot = 0, mx = 0, zeros = 0;
      for (int k = 0; k < c->size; k++) {
        rtot += p.rc[k];
        zeros += p.sc[k] == 0;
        mx = p.sc[k] > mx ? p.sc[k] : mx;
      }
      snprintf(what, sizeof what,
               "alltoallv %s skewed %zu tokens x %zu %s (max %zu per peer, %zu zero, %zu "
               "received)",
               c->label, cases[i].tokens, cases[i].hidden, mt_dtype(cases[i].dt)->name, mx, zeros,
               rtot);
      errs += run_v_case(c, &p, cases[i].dt, seed, what);
      free_plan(&p);
      if (c->unsupported)
        return errs;
    }
  }
  return errs;
}

/* ---- non-blocking forms, once each, in flight together ---- */

static long test_nonblocking(ctx_t *c) {
  const size_t n = (size_t)c->size, count = 1000;
  const uint64_t seed = 0xB1B1ull;
  long errs = 0;
  char what[160];
  vplan_t p;
  make_plan(c, &p, 0, seed + 1, 500, 0, 0);
  size_t abytes = n * count * 4, sbytes = p.sext * 8, rbytes = p.rext * 8;
  unsigned char *as = mt_xmalloc(abytes + MT_GUARD), *ar = mt_xmalloc(abytes + MT_GUARD),
                *aw = mt_xmalloc(abytes), *acopy = mt_xmalloc(abytes);
  unsigned char *vs = mt_xmalloc(sbytes + MT_GUARD), *vr = mt_xmalloc(rbytes + MT_GUARD),
                *vw = mt_xmalloc(rbytes), *vcopy = mt_xmalloc(sbytes);
  duet_request_t *req[2] = {NULL, NULL};

  for (size_t k = 0; k < n; k++)
    fill_block(as + k * count * 4, count, DUET_INT32, seed, c->rank, (int)k);
  memcpy(acopy, as, abytes);
  MPI_Alltoall(as, (int)count, MPI_INT32_T, aw, (int)count, MPI_INT32_T, MPI_COMM_WORLD);
  fill_vsend(c, &p, vs, DUET_FLOAT64, seed + 1);
  memcpy(vcopy, vs, sbytes);
  ref_alltoallv(c, &p, vs, vw, DUET_FLOAT64);
  mt_guard_fill(as + abytes);
  mt_guard_fill(vs + sbytes);

  /* Round 1: every rank posts both, then waits. Round 2: rank 0 posts both
   * before the others have posted (an MPI barrier between), as a post must
   * wait for no peer: one that first exchanged the counts with its peers
   * (the hierarchical alltoallv's gatherers need them) would hold rank 0
   * there until its deadline. */
  for (int round = 1; round <= 2; round++) {
    memset(ar, GAP_BYTE, abytes);
    mt_guard_fill(ar + abytes);
    memset(vr, GAP_BYTE, rbytes);
    mt_guard_fill(vr + rbytes);
    if (round == 2 && c->rank != 0)
      MPI_Barrier(MPI_COMM_WORLD);
    DCALL(c, duet_ialltoall(as, ar, count, DUET_INT32, c->comm, &req[0]));
    DCALL(c, duet_ialltoallv(vs, p.sc, p.sd, vr, p.rc, p.rd, DUET_FLOAT64, c->comm, &req[1]));
    if (round == 2 && c->rank == 0)
      MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 1; i >= 0; i--) { /* reverse order */
      duet_status_t st = duet_wait(req[i]);
      req[i] = NULL;
      if (st < 0) {
        fprintf(stderr, "[rank %d] nonblocking round %d: duet_wait of %s: %s: %s\n", c->rank,
                round, i ? "duet_ialltoallv" : "duet_ialltoall", duet_strerror(st),
                duet_last_error(c->comm));
        errs++;
      }
    }
    snprintf(what, sizeof what, "ialltoall %s int32 count %zu%s", c->label, count,
             round == 2 ? ", rank 0 posted first" : "");
    errs += (long)mt_compare(ar, aw, n * count, DUET_INT32, c->rank, what);
    errs += mt_guard_check(ar + abytes, c->rank, what);
    errs += check_unchanged(c, as, acopy, abytes, "sendbuf", what);
    errs += mt_guard_check(as + abytes, c->rank, what);
    verbose_case(c, what);
    snprintf(what, sizeof what, "ialltoallv %s float64 random counts <= 500%s", c->label,
             round == 2 ? ", rank 0 posted first" : "");
    errs += check_v(c, &p, vr, vw, DUET_FLOAT64, what);
    errs += mt_guard_check(vr + rbytes, c->rank, what);
    errs += check_unchanged(c, vs, vcopy, sbytes, "sendbuf", what);
    errs += mt_guard_check(vs + sbytes, c->rank, what);
    verbose_case(c, what);
  }
out:
  /* an unsupported second post leaves the first in flight: finish it */
  for (int i = 0; i < 2; i++)
    if (req[i])
      duet_wait(req[i]);
  free(as), free(ar), free(aw), free(acopy), free(vs), free(vr), free(vw), free(vcopy);
  free_plan(&p);
  return errs;
}

/* ---- the hierarchical all-to-all's HPN traffic ---- */

/* Under auto, the load/store hierarchical all-to-all: the UPN is the shared
 * segment (default providers, or "mem"; every super-node sits on this host,
 * as emulated ones do), and the tuner takes the hierarchy at every size,
 * as it does for two super-nodes of 2 to 4 ranks (test_tune checks). */
static int mem_upn(const ctx_t *c) {
  const char *upn = getenv("DUET_UPN_PROVIDER");
  int sizes_ok = c->lay.nsn == 2;
  for (int k = 0; k < c->lay.nsn; k++)
    sizes_ok &= c->lay.sn_sizes[k] > 1 && c->lay.sn_sizes[k] <= 4;
  return (upn == NULL || *upn == '\0' || strcmp(upn, "mem") == 0) && sizes_ok;
}

static long test_hpn(ctx_t *c) {
  const size_t counts[] = {0, 1, 1000, 40000};
  const size_t n = (size_t)c->size, N = (size_t)c->lay.nsn, L = (size_t)c->lay.ls;
  const int mem = strcmp(c->label, "auto") == 0; /* run_setting checked mem_upn */
  long errs = 0;
  char what[200];
  size_t *vcounts = mt_xmalloc(sizeof(size_t) * n), *vdispls = mt_xmalloc(sizeof(size_t) * n);
  /* auto: then each again non-blocking, and as an alltoallv of equal counts,
   * whose traffic is counted beyond its count 0 call's: that one shares
   * the send counts (inside the super-node only) and moves no data */
  uint64_t base[6] = {0, 0, 0, 0, 0, 0};
  for (int k = 0; k < (mem ? 12 : 4); k++) {
    const int ci = k % 4, nb = k >= 4 && k < 8, v = k >= 8;
    size_t count = counts[ci], bbytes = count * 4, all = n * bbytes;
    float *send = mt_xmalloc(all), *recv = mt_xmalloc(all + MT_GUARD), *ref = mt_xmalloc(all);
    duet_stats_t before, after;
    uint64_t d[6], mx[6];
    for (size_t k = 0; k < n; k++)
      fill_block((char *)send + k * bbytes, count, DUET_FLOAT32, 0x4B1ull + count, c->rank, (int)k);
    MPI_Alltoall(send, (int)count, MPI_FLOAT, ref, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
    memset(recv, GAP_BYTE, all);
    mt_guard_fill((char *)recv + all);
    const char *call = v ? "alltoallv" : nb ? "ialltoall" : "alltoall";
    snprintf(what, sizeof what, "hpn %s: %s float32 count %zu, N=%zu L=%zu", c->label, call, count,
             N, L);
    for (size_t q = 0; q < n; q++) {
      vcounts[q] = count;
      vdispls[q] = q * count;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    DCALL(c, duet_comm_get_stats(c->comm, &before));
    if (v) {
      DCALL(c,
            duet_alltoallv(send, vcounts, vdispls, recv, vcounts, vdispls, DUET_FLOAT32, c->comm));
    } else if (nb) {
      duet_request_t *req = NULL;
      DCALL(c, duet_ialltoall(send, recv, count, DUET_FLOAT32, c->comm, &req));
      DCALL(c, duet_wait(req));
    } else {
      DCALL(c, duet_alltoall(send, recv, count, DUET_FLOAT32, c->comm));
    }
    DCALL(c, duet_comm_get_stats(c->comm, &after));
    errs += (long)mt_compare(recv, ref, n * count, DUET_FLOAT32, c->rank, what);
    errs += mt_guard_check((char *)recv + all, c->rank, what);
    mt_stats_delta(&before, &after, d);
    if (v && count == 0) {
      if (d[3] != 0 || d[4] != 0 || d[5] != 0) {
        fprintf(stderr,
                "[rank %d] %s: the count exchange sent %llu HPN messages, %llu bytes, received "
                "%llu bytes; the counts must stay inside the super-node\n",
                c->rank, what, (unsigned long long)d[5], (unsigned long long)d[3],
                (unsigned long long)d[4]);
        errs++;
      }
      memcpy(base, d, sizeof(base));
    }
    for (int i = 0; v && i < 6; i++)
      d[i] -= base[i];
    MPI_Allreduce(d, mx, 6, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    /* unequal sizes: each block crosses the HPN alone, straight to its rank */
    const size_t remote = n - L;
    uint64_t want = (uint64_t)(remote * bbytes);
    const size_t max_msgs = !c->lay.equal          ? (count ? remote : 0)
                            : bbytes >= 128 * 1024 ? (N - 1) * L /* blocks cross alone */
                                                   : N - 1;
    if (d[5] > max_msgs) {
      fprintf(stderr, "[rank %d] %s: %llu HPN messages sent, want <= %zu\n", c->rank, what,
              (unsigned long long)d[5], max_msgs);
      errs++;
    }
    if (d[3] != want || d[4] != want) {
      fprintf(stderr,
              "[rank %d] %s: HPN bytes sent %llu, received %llu; want (remote ranks)*count*size "
              "= %llu each\n",
              c->rank, what, (unsigned long long)d[3], (unsigned long long)d[4],
              (unsigned long long)want);
      errs++;
    }
    if (mem && d[2] != 0) {
      fprintf(stderr,
              "[rank %d] %s: %llu UPN messages sent; the exchange inside the super-node "
              "goes through the shared segment and sends none\n",
              c->rank, what, (unsigned long long)d[2]);
      errs++;
    }
    if (c->rank == 0) {
      printf("# hpn %s: N=%zu L=%zu count %zu: per rank max HPN %llu msgs, %llu bytes sent "
             "(want <= %zu msgs, %llu bytes); UPN max %llu msgs, %llu bytes\n",
             c->label, N, L, count, (unsigned long long)mx[5], (unsigned long long)mx[3], max_msgs,
             (unsigned long long)want, (unsigned long long)mx[2], (unsigned long long)mx[0]);
      fflush(stdout);
    }
    verbose_case(c, what);
    free(send);
    free(recv);
    free(ref);
    continue;
  out:
    free(send);
    free(recv);
    free(ref);
    break;
  }
  free(vcounts);
  free(vdispls);
  return errs;
}

/* ---- grouped point-to-point ---- */

/* One send or receive of a group. */
typedef struct {
  int is_send, peer;
  size_t count;
  void *buf;
} p2p_t;

/* Shuffle ops with a rank-dependent seed: each rank posts in its own order. */
static void shuffle_ops(p2p_t *ops, int nops, uint64_t seed) {
  for (int k = nops - 1; k > 0; k--) {
    int j = (int)(mt_hash(seed + (uint64_t)k) % (uint64_t)(k + 1));
    p2p_t tmp = ops[k];
    ops[k] = ops[j];
    ops[j] = tmp;
  }
}

/* Posts ops inside one group (blocking calls, or isend/irecv + duet_wait
 * after duet_group_end). Returns errors; *unsup set on DUET_ERR_UNSUPPORTED. */
static long run_group(ctx_t *c, p2p_t *ops, int nops, duet_datatype_t dt, int nonblocking,
                      const char *what) {
  long errs = 0;
  duet_request_t **req = mt_xmalloc(sizeof(*req) * (size_t)(nops ? nops : 1));
  for (int i = 0; i < nops; i++)
    req[i] = NULL;
  DCALL(c, duet_group_start());
  for (int i = 0; i < nops; i++) {
    duet_status_t st;
    if (nonblocking)
      st = ops[i].is_send ? duet_isend(ops[i].buf, ops[i].count, dt, ops[i].peer, c->comm, &req[i])
                          : duet_irecv(ops[i].buf, ops[i].count, dt, ops[i].peer, c->comm, &req[i]);
    else
      st = ops[i].is_send ? duet_send(ops[i].buf, ops[i].count, dt, ops[i].peer, c->comm)
                          : duet_recv(ops[i].buf, ops[i].count, dt, ops[i].peer, c->comm);
    if (st < 0) {
      fprintf(stderr, "[rank %d] %s: %s #%d to/from %d inside the group: %s: %s\n", c->rank, what,
              ops[i].is_send ? "send" : "recv", i, ops[i].peer, duet_strerror(st),
              duet_last_error(c->comm));
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  duet_status_t st = duet_group_end();
  if (st < 0) {
    fprintf(stderr, "[rank %d] %s: duet_group_end: %s: %s\n", c->rank, what, duet_strerror(st),
            duet_last_error(c->comm));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int i = 0; i < nops; i++) {
    if (!req[i])
      continue;
    st = duet_wait(req[i]);
    if (st < 0) {
      fprintf(stderr, "[rank %d] %s: duet_wait of #%d: %s: %s\n", c->rank, what, i,
              duet_strerror(st), duet_last_error(c->comm));
      errs++;
    }
  }
out:
  free(req);
  return errs;
}

/* Checks a received block against the closed-form input of (src, dst). */
static long check_block(ctx_t *c, const void *got, size_t count, duet_datatype_t dt, uint64_t seed,
                        int src, const char *what) {
  void *want = mt_xmalloc(count * mt_dtype(dt)->size);
  fill_block(want, count, dt, seed, src, c->rank);
  char w2[200];
  snprintf(w2, sizeof w2, "%s: block from rank %d", what, src);
  long errs = (long)mt_compare(got, want, count, dt, c->rank, w2);
  free(want);
  return errs;
}

static size_t pair_count(int src, int dst, uint64_t seed) {
  uint64_t h = mt_hash(seed ^ ((uint64_t)src << 24) ^ (uint64_t)dst);
  return h % 8 == 0 ? 0 : 1 + (size_t)((h >> 8) % 2000);
}

static long test_group(ctx_t *c) {
  const int n = c->size, r = c->rank;
  const uint64_t order_seed = 0x0DE4ull * (uint64_t)(r + 1);
  long errs = 0;
  char what[160];
  p2p_t ops[2 * 64 + 2];
  if (n > 64)
    return 0;

  /* ring shift: send to r+1, receive from r-1 */
  {
    const size_t count = 1000;
    const uint64_t seed = 0x7129ull;
    int to = (r + 1) % n, from = (r + n - 1) % n;
    int32_t *s = mt_xmalloc(count * 4), *g = mt_xmalloc(count * 4 + MT_GUARD);
    fill_block(s, count, DUET_INT32, seed, r, to);
    memset(g, GAP_BYTE, count * 4);
    mt_guard_fill((char *)g + count * 4);
    ops[0] = (p2p_t){1, to, count, s};
    ops[1] = (p2p_t){0, from, count, g};
    shuffle_ops(ops, 2, order_seed);
    snprintf(what, sizeof what, "group ring shift int32 %zu", count);
    errs += run_group(c, ops, 2, DUET_INT32, 0, what);
    if (!c->unsupported) {
      errs += check_block(c, g, count, DUET_INT32, seed, from, what);
      errs += mt_guard_check((char *)g + count * 4, r, what);
    }
    verbose_case(c, what);
    free(s);
    free(g);
    if (c->unsupported)
      return errs;
  }

  /* a random permutation, the same on every rank; counts depend on the sender */
  {
    const uint64_t seed = 0x9E7ull;
    int *perm = mt_xmalloc(sizeof(int) * (size_t)n), from = -1;
    for (int k = 0; k < n; k++)
      perm[k] = k;
    for (int k = n - 1; k > 0; k--) {
      int j = (int)(mt_hash(seed + (uint64_t)k) % (uint64_t)(k + 1)), tmp = perm[k];
      perm[k] = perm[j];
      perm[j] = tmp;
    }
    for (int k = 0; k < n; k++)
      if (perm[k] == r)
        from = k;
    size_t sc = pair_count(r, perm[r], seed), rc = pair_count(from, r, seed);
    float *s = mt_xmalloc(sc * 4 + 4), *g = mt_xmalloc(rc * 4 + MT_GUARD);
    fill_block(s, sc, DUET_FLOAT32, seed, r, perm[r]);
    memset(g, GAP_BYTE, rc * 4);
    mt_guard_fill((char *)g + rc * 4);
    ops[0] = (p2p_t){1, perm[r], sc, s};
    ops[1] = (p2p_t){0, from, rc, g};
    shuffle_ops(ops, 2, order_seed + 1);
    snprintf(what, sizeof what, "group permutation float32 (%d -> %d -> %d)", from, r, perm[r]);
    errs += run_group(c, ops, 2, DUET_FLOAT32, 0, what);
    if (!c->unsupported) {
      errs += check_block(c, g, rc, DUET_FLOAT32, seed, from, what);
      errs += mt_guard_check((char *)g + rc * 4, r, what);
    }
    verbose_case(c, what);
    free(s);
    free(g);
    free(perm);
    if (c->unsupported)
      return errs;
  }

  /* full exchange, blocking calls then isend/irecv: a distinct block to every
   * rank (itself included), counts per pair (some 0) */
  for (int nb = 0; nb < 2; nb++) {
    const uint64_t seed = 0xF011ull + (uint64_t)nb;
    const duet_datatype_t dt = nb ? DUET_FLOAT64 : DUET_UINT8;
    const size_t sz = mt_dtype(dt)->size;
    unsigned char *s[64], *g[64];
    size_t rc[64];
    int nops = 0;
    for (int k = 0; k < n; k++) {
      size_t sc = pair_count(r, k, seed);
      rc[k] = pair_count(k, r, seed);
      s[k] = mt_xmalloc(sc * sz + 1);
      g[k] = mt_xmalloc(rc[k] * sz + MT_GUARD);
      fill_block(s[k], sc, dt, seed, r, k);
      memset(g[k], GAP_BYTE, rc[k] * sz);
      mt_guard_fill(g[k] + rc[k] * sz);
      ops[nops++] = (p2p_t){1, k, sc, s[k]};
      ops[nops++] = (p2p_t){0, k, rc[k], g[k]};
    }
    shuffle_ops(ops, nops, order_seed + 2 + (uint64_t)nb);
    snprintf(what, sizeof what, "group full exchange %s (%s)", mt_dtype(dt)->name,
             nb ? "isend/irecv + duet_wait" : "send/recv");
    errs += run_group(c, ops, nops, dt, nb, what);
    for (int k = 0; k < n; k++) {
      if (!c->unsupported) {
        errs += check_block(c, g[k], rc[k], dt, seed, k, what);
        errs += mt_guard_check(g[k] + rc[k] * sz, r, what);
      }
      free(s[k]);
      free(g[k]);
    }
    verbose_case(c, what);
    if (c->unsupported)
      return errs;
  }
  return errs;
}

/* ---- bad input ---- */

static long expect_bad(ctx_t *c, duet_status_t st, const duet_comm_t *errcomm, const char *call,
                       const char *name1, const char *name2, duet_status_t want) {
  const char *msg = duet_last_error(errcomm);
  long errs = 0;
  if (st >= 0) {
    fprintf(stderr, "[rank %d] bad-input: %s returned %s (%d), want an error\n", c->rank, call,
            duet_strerror(st), (int)st);
    return 1;
  }
  if (want < 0 && st != want) {
    fprintf(stderr, "[rank %d] bad-input: %s returned %s (%d), want %s\n", c->rank, call,
            duet_strerror(st), (int)st, duet_strerror(want));
    errs++;
  }
  if (!msg || (!strstr(msg, name1) && !(name2 && strstr(msg, name2)))) {
    fprintf(stderr, "[rank %d] bad-input: %s: duet_last_error \"%s\" does not name %s%s%s\n",
            c->rank, call, msg ? msg : "(null)", name1, name2 ? " or " : "", name2 ? name2 : "");
    errs++;
  }
  if (c->verbose && c->rank == 0)
    printf("#   bad-input: %s -> %s: %s\n", call, duet_strerror(st), msg ? msg : "(null)");
  return errs;
}

static long test_bad(ctx_t *c) {
  const int n = c->size;
  const size_t count = 10;
  size_t *cnt = mt_xmalloc(sizeof(size_t) * (size_t)n),
         *dsp = mt_xmalloc(sizeof(size_t) * (size_t)n);
  size_t *big = mt_xmalloc(sizeof(size_t) * (size_t)n);
  int32_t *send = mt_xmalloc((size_t)n * count * 4), *recv = mt_xmalloc((size_t)n * count * 4 + 64);
  unsigned char *pristine = mt_xmalloc((size_t)n * count * 4);
  duet_request_t *req = NULL;
  long errs = 0;
  for (int k = 0; k < n; k++) {
    cnt[k] = count;
    dsp[k] = (size_t)k * count;
    big[k] = k == 0 ? SIZE_MAX / 2 : count;
  }
  for (size_t i = 0; i < (size_t)n * count; i++)
    send[i] = (int32_t)i;
  memset(recv, GAP_BYTE, (size_t)n * count * 4);
  memcpy(pristine, recv, (size_t)n * count * 4);

  errs +=
      expect_bad(c, duet_alltoallv(send, NULL, dsp, recv, cnt, dsp, DUET_INT32, c->comm), c->comm,
                 "duet_alltoallv(sendcounts NULL)", "sendcounts", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs +=
      expect_bad(c, duet_alltoallv(send, cnt, dsp, recv, NULL, dsp, DUET_INT32, c->comm), c->comm,
                 "duet_alltoallv(recvcounts NULL)", "recvcounts", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs +=
      expect_bad(c, duet_alltoallv(send, cnt, NULL, recv, cnt, dsp, DUET_INT32, c->comm), c->comm,
                 "duet_alltoallv(sdispls NULL)", "sdispls", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs +=
      expect_bad(c, duet_alltoallv(send, cnt, dsp, recv, cnt, NULL, DUET_INT32, c->comm), c->comm,
                 "duet_alltoallv(rdispls NULL)", "rdispls", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoall((const char *)recv + 4, recv, count, DUET_INT32, c->comm),
                     c->comm, "duet_alltoall(sendbuf = recvbuf + 4 bytes)", "overlap", NULL,
                     DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_ialltoallv(send, NULL, dsp, recv, cnt, dsp, DUET_INT32, c->comm, &req),
                     c->comm, "duet_ialltoallv(sendcounts NULL)", "sendcounts", NULL,
                     DUET_ERR_INVALID_ARGUMENT);
  errs +=
      expect_bad(c, duet_alltoallv(recv, cnt, dsp, recv, cnt, dsp, DUET_INT32, c->comm), c->comm,
                 "duet_alltoallv(sendbuf == recvbuf)", "sendbuf", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoall(send, recv, SIZE_MAX / 2, DUET_INT32, c->comm), c->comm,
                     "duet_alltoall(count SIZE_MAX/2)", "count", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs +=
      expect_bad(c, duet_ialltoall(send, recv, SIZE_MAX / 2, DUET_FLOAT64, c->comm, &req), c->comm,
                 "duet_ialltoall(count SIZE_MAX/2)", "count", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoallv(send, big, dsp, recv, cnt, dsp, DUET_INT32, c->comm),
                     c->comm, "duet_alltoallv(sendcounts[0] SIZE_MAX/2)", "sendcounts", "count",
                     DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoallv(send, cnt, dsp, recv, big, dsp, DUET_INT32, c->comm),
                     c->comm, "duet_alltoallv(recvcounts[0] SIZE_MAX/2)", "recvcounts", "count",
                     DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoall(send, recv, count, DUET_INT32, NULL), NULL,
                     "duet_alltoall(comm NULL)", "comm", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_alltoallv(send, cnt, dsp, recv, cnt, dsp, DUET_INT32, NULL), NULL,
                     "duet_alltoallv(comm NULL)", "comm", NULL, DUET_ERR_INVALID_ARGUMENT);
  errs += expect_bad(c, duet_ialltoall(send, recv, count, DUET_INT32, NULL, &req), NULL,
                     "duet_ialltoall(comm NULL)", "comm", NULL, DUET_ERR_INVALID_ARGUMENT);
  if (memcmp(recv, pristine, (size_t)n * count * 4) != 0) {
    fprintf(stderr, "[rank %d] bad-input: a rejected call wrote to recvbuf\n", c->rank);
    errs++;
  }
  /* the communicator still works after rejected calls */
  duet_status_t st = duet_alltoall(send, recv, count, DUET_INT32, c->comm);
  if (st < 0 && st != DUET_ERR_UNSUPPORTED) {
    fprintf(stderr, "[rank %d] bad-input: duet_alltoall after the rejected calls: %s: %s\n",
            c->rank, duet_strerror(st), duet_last_error(c->comm));
    errs++;
  }
  free(cnt), free(dsp), free(big), free(send), free(recv), free(pristine);
  return errs;
}

/* ---- buffers from duet_mem_alloc ---- */

/* Mappings of duet_mem_alloc memory in this process. */
static int umem_mappings(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  int n = 0;
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof line, f))
    n += strstr(line, "/memfd:duet-mem") != NULL;
  fclose(f);
  return n;
}

static void *umem_xalloc(ctx_t *c, size_t bytes) {
  void *p = NULL;
  duet_status_t st = duet_mem_alloc(&p, bytes);
  if (st < 0)
    die(c, st, "duet_mem_alloc", __LINE__);
  return p;
}

/* One alltoall of count elements per peer from send into recv (in place
 * when they are equal; recv has MT_GUARD bytes after its n blocks),
 * checked against MPI_Alltoall; nonblocking: duet_ialltoall + duet_wait. */
static long umem_case(ctx_t *c, unsigned char *send, unsigned char *recv, size_t count,
                      duet_datatype_t dt, int nonblocking, const char *what) {
  const mt_dtype_t *t = mt_dtype(dt);
  const size_t n = (size_t)c->size, bbytes = count * t->size, all = n * bbytes;
  const uint64_t seed = mt_hash(count * 31u + (uint64_t)dt);
  unsigned char *copy = mt_xmalloc(all + 1), *ref = mt_xmalloc(all + 1);
  long errs = 0;
  for (size_t k = 0; k < n; k++)
    fill_block(send + k * bbytes, count, dt, seed, c->rank, (int)k);
  memcpy(copy, send, all);
  MPI_Alltoall(copy, (int)bbytes, MPI_BYTE, ref, (int)bbytes, MPI_BYTE, MPI_COMM_WORLD);
  if (recv != send)
    memset(recv, GAP_BYTE, all);
  mt_guard_fill(recv + all);
  if (nonblocking) {
    duet_request_t *req = NULL;
    duet_status_t st = duet_ialltoall(send, recv, count, dt, c->comm, &req);
    if (st >= 0)
      st = duet_wait(req);
    if (st < 0)
      die(c, st, "duet_ialltoall", __LINE__);
  } else {
    duet_status_t st = duet_alltoall(send, recv, count, dt, c->comm);
    if (st < 0)
      die(c, st, "duet_alltoall", __LINE__);
  }
  errs += (long)mt_compare(recv, ref, n * count, dt, c->rank, what);
  errs += mt_guard_check(recv + all, c->rank, what);
  if (recv != send)
    errs += check_unchanged(c, send, copy, all, "sendbuf", what);
  verbose_case(c, what);
  free(copy);
  free(ref);
  return errs;
}

/* One allgather of count elements per rank from send (this rank's block;
 * in place when it is recv's block r) into recv, checked against
 * MPI_Allgather. */
static long umem_allgather_case(ctx_t *c, unsigned char *send, unsigned char *recv, size_t count,
                                const char *what) {
  const size_t n = (size_t)c->size, bbytes = count * 4, all = n * bbytes;
  unsigned char *mine = recv + (size_t)c->rank * bbytes, *ref = mt_xmalloc(all + 1);
  unsigned char *blk = send == mine ? mine : send, *copy = mt_xmalloc(bbytes + 1);
  long errs = 0;
  memset(recv, GAP_BYTE, all);
  mt_guard_fill(recv + all);
  fill_block(blk, count, DUET_INT32, mt_hash(count * 7u), c->rank, 0);
  memcpy(copy, blk, bbytes);
  MPI_Allgather(copy, (int)bbytes, MPI_BYTE, ref, (int)bbytes, MPI_BYTE, MPI_COMM_WORLD);
  duet_status_t st = duet_allgather(blk, recv, count, DUET_INT32, c->comm);
  if (st < 0)
    die(c, st, "duet_allgather", __LINE__);
  errs += (long)mt_compare(recv, ref, n * count, DUET_INT32, c->rank, what);
  errs += mt_guard_check(recv + all, c->rank, what);
  if (blk != mine)
    errs += check_unchanged(c, blk, copy, bbytes, "sendbuf", what);
  verbose_case(c, what);
  free(ref);
  free(copy);
  return errs;
}

/* One reduce_scatter (int32 sum) of count elements per rank from send (n
 * blocks) into recv (in place when recv is send's block r), checked against
 * MPI_Reduce_scatter_block. */
static long umem_rs_case(ctx_t *c, unsigned char *send, unsigned char *recv, size_t count,
                         const char *what) {
  const size_t n = (size_t)c->size, bbytes = count * 4, all = n * bbytes;
  const int in_place = recv == send + (size_t)c->rank * bbytes;
  unsigned char *copy = mt_xmalloc(all + 1), *ref = mt_xmalloc(bbytes + 1);
  long errs = 0;
  for (size_t k = 0; k < n; k++)
    fill_block(send + k * bbytes, count, DUET_INT32, mt_hash(count * 11u), c->rank, (int)k);
  memcpy(copy, send, all);
  MPI_Reduce_scatter_block(copy, ref, (int)count, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
  if (!in_place) {
    memset(recv, GAP_BYTE, bbytes);
    mt_guard_fill(recv + bbytes);
  }
  duet_status_t st = duet_reduce_scatter(send, recv, count, DUET_INT32, DUET_SUM, c->comm);
  if (st < 0)
    die(c, st, "duet_reduce_scatter", __LINE__);
  errs += (long)mt_compare(recv, ref, count, DUET_INT32, c->rank, what);
  if (!in_place) {
    errs += mt_guard_check(recv + bbytes, c->rank, what);
    errs += check_unchanged(c, send, copy, all, "sendbuf", what);
  }
  verbose_case(c, what);
  free(ref);
  free(copy);
  return errs;
}

static long test_mem_alloc(ctx_t *c) {
  const size_t counts[] = {1000, 16384, 20000, 250000};
  const int ncounts = c->quick ? 3 : 4;
  const size_t n = (size_t)c->size, most = n * counts[ncounts - 1] * 4, off = 4096 + 64;
  const char *upn = getenv("DUET_UPN_PROVIDER");
  const int segment = (upn == NULL || *upn == '\0' || strcmp(upn, "mem") == 0) && c->lay.ls > 1;
  unsigned char *send = umem_xalloc(c, most), *recv = umem_xalloc(c, most + MT_GUARD);
  unsigned char *big = umem_xalloc(c, most + 2 * off), *plain = mt_xmalloc(most);
  long errs = 0;
  char what[160];
  int want, got;

  for (int ci = 0; ci < ncounts; ci++)
    for (int k = 0; k < 2; k++) {
      duet_datatype_t dt = k ? DUET_FLOAT32 : DUET_INT32;
      snprintf(what, sizeof what, "mem-alloc %s count %zu", mt_dtype(dt)->name, counts[ci]);
      errs += umem_case(c, send, recv, counts[ci], dt, 0, what);
    }
  snprintf(what, sizeof what, "mem-alloc count 20000, sendbuf at offset %zu", off);
  errs += umem_case(c, big + off, recv, 20000, DUET_INT32, 0, what);
  snprintf(what, sizeof what, "mem-alloc count 20000, rank 0's sendbuf from malloc");
  errs += umem_case(c, c->rank == 0 ? plain : send, recv, 20000, DUET_INT32, 0, what);
  snprintf(what, sizeof what, "mem-alloc count 20000 in place");
  errs += umem_case(c, recv, recv, 20000, DUET_INT32, 0, what);
  snprintf(what, sizeof what, "mem-alloc count 20000 duet_ialltoall");
  errs += umem_case(c, send, recv, 20000, DUET_INT32, 1, what);
  /* alltoallv: random counts (a quarter 0), MoE-skewed, then random with
   * rank 0's buffers from malloc */
  for (int k = 0; k < 3; k++) {
    vplan_t p;
    c->umem = k < 2 || c->rank != 0;
    make_plan(c, &p, k == 1, 0xE5ull + (uint64_t)k, 40000, 8192, 16);
    snprintf(what, sizeof what, "mem-alloc alltoallv %s counts%s", k == 1 ? "skewed" : "random",
             k == 2 ? ", rank 0's buffers from malloc" : "");
    errs += run_v_case(c, &p, DUET_FLOAT32, 0x77ull + (uint64_t)k, what);
    free_plan(&p);
  }
  c->umem = 0;
  /* allgather: blocks from 1000 to 250000 int32 (several chunks), in
   * place, and rank 0's block from malloc */
  for (int ci = 0; ci < ncounts; ci++) {
    snprintf(what, sizeof what, "mem-alloc allgather count %zu", counts[ci]);
    errs += umem_allgather_case(c, send, recv, counts[ci], what);
  }
  snprintf(what, sizeof what, "mem-alloc allgather count 20000 in place");
  errs += umem_allgather_case(c, recv + (size_t)c->rank * 20000 * 4, recv, 20000, what);
  snprintf(what, sizeof what, "mem-alloc allgather count 20000, rank 0's block from malloc");
  errs += umem_allgather_case(c, c->rank == 0 ? plain : send, recv, 20000, what);
  /* reduce_scatter: the same counts per rank, in place, rank 0's sendbuf
   * from malloc */
  for (int ci = 0; ci < ncounts; ci++) {
    snprintf(what, sizeof what, "mem-alloc reduce_scatter count %zu", counts[ci]);
    errs += umem_rs_case(c, send, recv, counts[ci], what);
  }
  snprintf(what, sizeof what, "mem-alloc reduce_scatter count 20000 in place");
  errs += umem_rs_case(c, send, send + (size_t)c->rank * 20000 * 4, 20000, what);
  snprintf(what, sizeof what, "mem-alloc reduce_scatter count 20000, rank 0's sendbuf from malloc");
  errs += umem_rs_case(c, c->rank == 0 ? plain : send, recv, 20000, what);

  /* every buffer above freed; one call on new ones */
  MT_CHECK(c->comm, duet_mem_free(send));
  MT_CHECK(c->comm, duet_mem_free(recv));
  MT_CHECK(c->comm, duet_mem_free(big));
  send = umem_xalloc(c, n * 20000 * 4);
  recv = umem_xalloc(c, n * 20000 * 4 + MT_GUARD);
  MPI_Barrier(MPI_COMM_WORLD);
  snprintf(what, sizeof what, "mem-alloc count 20000 on new buffers");
  errs += umem_case(c, send, recv, 20000, DUET_INT32, 0, what);
  want = 2 + (segment ? c->lay.ls - 1 : 0);
  got = umem_mappings();
  if (got != want) {
    fprintf(
        stderr, "[rank %d] mem-alloc: %d mappings of duet_mem_alloc memory, want %d (own 2%s)\n",
        c->rank, got, want, segment ? " + the send buffer of every rank of its super-node" : "");
    errs++;
  }
  MT_CHECK(c->comm, duet_mem_free(send));
  MT_CHECK(c->comm, duet_mem_free(recv));
  free(plain);
  return errs;
}

/* ---- driver ---- */

static void record(ctx_t *c, int row, long errs, int unsup, int skipped, double secs) {
  long all = 0;
  int any_unsup = 0;
  MPI_Allreduce(&errs, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&unsup, &any_unsup, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (c->nresults < MAX_RESULTS) {
    result_t *r = &c->results[c->nresults++];
    r->row = row;
    snprintf(r->label, sizeof r->label, "%s", c->label);
    r->errs = all;
    r->unsupported = any_unsup;
    r->skipped = skipped;
  }
  if (c->rank == 0) {
    printf("alltoall np=%d layout=%s %-14s %-9s %s", c->size, c->lay.name, row_names[row], c->label,
           skipped     ? "skipped"
           : any_unsup ? "UNSUPPORTED"
           : all       ? "FAILED"
                       : "OK");
    if (all)
      printf(" (%ld errors)", all);
    printf(" %.2fs\n", secs);
    fflush(stdout);
  }
}

typedef long (*test_fn)(ctx_t *);

static int selected(const ctx_t *c, int row) {
  if (!c->only)
    return 1;
  size_t len = strlen(row_names[row]);
  for (const char *p = c->only; (p = strstr(p, row_names[row])) != NULL; p += len)
    if ((p == c->only || p[-1] == ',') && (p[len] == ',' || p[len] == 0))
      return 1;
  return 0;
}

static void run_test(ctx_t *c, int row, test_fn fn) {
  if (!selected(c, row))
    return;
  c->unsupported = 0;
  double t0 = MPI_Wtime();
  long errs = fn(c);
  record(c, row, errs, c->unsupported, 0, MPI_Wtime() - t0);
}

/* spec: DUET_ALGO value, "" for unset. label: short name. extra: also run the
 * algorithm-independent tests (group, bad input). */
static void run_setting(ctx_t *c, const char *spec, const char *label, int extra) {
  if (*spec)
    setenv("DUET_ALGO", spec, 1);
  else
    unsetenv("DUET_ALGO");
  c->label = label;
  if (c->rank == 0) {
    printf("# setting %s: DUET_ALGO=%s\n", label, *spec ? spec : "(unset)");
    fflush(stdout);
  }
  double t0 = MPI_Wtime();
  c->comm = mt_init_duet(c->rank, c->size);
  record(c, ROW_LAYOUT, mt_layout_check(c->comm, &c->lay, c->rank), 0, 0, MPI_Wtime() - t0);
  run_test(c, ROW_A2A, test_alltoall);
  run_test(c, ROW_A2AV_RAND, test_alltoallv_rand);
  run_test(c, ROW_A2AV_SKEW, test_alltoallv_skew);
  run_test(c, ROW_NB, test_nonblocking);
  if (strstr(spec, "alltoall=hier") || (!*spec && mem_upn(c))) {
    if (c->lay.equal || !*spec)
      run_test(c, ROW_HPN, test_hpn);
    else if (selected(c, ROW_HPN))
      record(c, ROW_HPN, 0, 0, 1, 0);
  }
  if (extra) {
    run_test(c, ROW_GROUP, test_group);
    run_test(c, ROW_BAD, test_bad);
    run_test(c, ROW_MEM, test_mem_alloc);
  }
  MT_CHECK(c->comm, duet_comm_destroy(c->comm));
  c->comm = NULL;
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [-q] [-v] [-a SPEC] [-t LIST]\n"
          "  -q       quick: no 250000-per-peer alltoall or large alltoallv cases\n"
          "  -a SPEC  only this DUET_ALGO setting, e.g. alltoall=bruck (\"auto\": unset);\n"
          "           default: alltoall=pairwise, alltoall=bruck, alltoall=hier, auto\n"
          "  -t LIST  only these tests, e.g. alltoall,group (alltoall alltoallv-rand\n"
          "           alltoallv-skew nonblocking hpn group bad-input mem-alloc)\n"
          "  -v       one line per case\n"
          "Super-nodes: DUET_SUPERNODE per rank (mpirun -x, MPMD form).\n",
          prog);
}

int main(int argc, char **argv) {
  static ctx_t c; /* large: the results table */
  const char *spec = NULL;
  int opt;
  mt_init_mpi(&argc, &argv, &c.rank, &c.size);
  while ((opt = getopt(argc, argv, "qva:t:h")) != -1) {
    if (opt == 'q')
      c.quick = 1;
    else if (opt == 't')
      c.only = optarg;
    else if (opt == 'v')
      c.verbose = 1;
    else if (opt == 'a')
      spec = optarg;
    else {
      if (c.rank == 0)
        usage(argv[0]);
      MPI_Finalize();
      return opt == 'h' ? 0 : 2;
    }
  }
  if (spec && strcmp(spec, "auto") != 0 && !strchr(spec, '=')) {
    if (c.rank == 0) {
      fprintf(stderr, "mpi_alltoall: bad -a '%s' (want collective=algorithm,... or auto)\n", spec);
      usage(argv[0]);
    }
    MPI_Finalize();
    return 2;
  }

  mt_layout_compute(&c.lay, c.rank, c.size);
  const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
  if (c.rank == 0) {
    printf("# mpi_alltoall: %d ranks, layout %s (%d super-node%s), DUET_UPN_PROVIDER=%s "
           "DUET_HPN_PROVIDER=%s%s\n",
           c.size, c.lay.name, c.lay.nsn, c.lay.nsn == 1 ? "" : "s", upn ? upn : "(default)",
           hpn ? hpn : "(default)", c.quick ? ", quick" : "");
    fflush(stdout);
  }

  double t0 = MPI_Wtime();
  if (spec) {
    static char label[32];
    const char *a = strstr(spec, "alltoall=");
    if (strcmp(spec, "auto") == 0)
      snprintf(label, sizeof label, "auto");
    else if (a)
      snprintf(label, sizeof label, "%.*s", (int)strcspn(a + 9, ","), a + 9);
    else
      snprintf(label, sizeof label, "-a");
    run_setting(&c, strcmp(spec, "auto") == 0 ? "" : spec, label, 1);
  } else {
    run_setting(&c, "alltoall=pairwise,alltoallv=pairwise", "pairwise", 0);
    run_setting(&c, "alltoall=bruck", "bruck", 0);
    run_setting(&c, "alltoall=hier,alltoallv=hier", "hier", 0);
    run_setting(&c, "", "auto", 1);
  }

  long failed = 0;
  for (int i = 0; i < c.nresults; i++)
    failed += !c.results[i].skipped && (c.results[i].errs || c.results[i].unsupported);
  if (c.rank == 0) {
    printf("# summary: np=%d layout=%s%s, %.1fs\n", c.size, c.lay.name, c.quick ? " quick" : "",
           MPI_Wtime() - t0);
    for (int row = 0; row < NROWS; row++) {
      int any = 0;
      for (int i = 0; i < c.nresults; i++) {
        const result_t *r = &c.results[i];
        if (r->row != row)
          continue;
        if (!any)
          printf("#   %-14s", row_names[row]);
        any = 1;
        printf(" %s:%s", r->label,
               r->skipped       ? "skipped"
               : r->unsupported ? "UNSUPPORTED"
               : r->errs        ? "FAILED"
                                : "OK");
      }
      if (any)
        printf("\n");
    }
    printf("# mpi_alltoall: %d checks, %ld failed\n", c.nresults, failed);
    fflush(stdout);
  }
  free(c.lay.sn_sizes);
  MPI_Finalize();
  return failed ? 1 : 0;
}
