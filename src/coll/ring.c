/*
 * ring.c - ring reduce-scatter and allgather over a segment layout.
 *
 * Reduce-scatter, rank r of n, step t = 0..n-2: send segment r-t-1 to r+1
 * (at t = 0 straight from the input, later the partial sum made the step
 * before) and receive segment r-t-2 from r-1 into a scratch slot, then reduce
 * input + slot into work (or, for the last step, where segment r = r-n+2-2
 * belongs). Allgather, step t: send segment r-t (own at t = 0, then what
 * arrived the step before) and receive segment r-t-1 straight into place.
 *
 * Chunks are numbered within a segment in piece order; the same numbering on
 * both ends of a link gives the message ids (step * chunks-per-segment + i).
 */
#include "coll/ring.h"

#include <stdlib.h>
#include <string.h>

duet_status_t duet__segs_even(duet__segs_t *g, uint64_t count, int n) {
  g->n = n;
  g->per = 1;
  g->off = malloc(sizeof(*g->off) * (size_t)n);
  g->len = malloc(sizeof(*g->len) * (size_t)n);
  if (g->off == NULL || g->len == NULL) {
    duet__segs_free(g);
    return DUET_ERR_NO_MEMORY;
  }
  for (int k = 0; k < n; k++) {
    g->off[k] = duet__part_off(count, (uint64_t)n, (uint64_t)k);
    g->len[k] = duet__part_len(count, (uint64_t)n, (uint64_t)k);
  }
  return DUET_SUCCESS;
}

duet_status_t duet__segs_blocks(duet__segs_t *g, uint64_t blk, int n, const int32_t *blocks) {
  duet_status_t rc = duet__segs_even(g, 0, n);
  if (rc != DUET_SUCCESS)
    return rc;
  for (int k = 0; k < n; k++) {
    g->off[k] = (uint64_t)(blocks ? blocks[k] : k) * blk;
    g->len[k] = blk;
  }
  return DUET_SUCCESS;
}

void duet__segs_free(duet__segs_t *g) {
  free(g->off);
  free(g->len);
  g->off = g->len = NULL;
}

uint64_t duet__segs_elems(const duet__segs_t *g, int k) {
  uint64_t e = 0;
  for (int j = 0; j < g->per; j++)
    e += g->len[(size_t)k * (size_t)g->per + (size_t)j];
  return e;
}

/* Chunks of one segment, in order: piece j, chunk c -> (element offset,
 * element count, offset inside the packed segment). */
typedef struct chunk {
  uint64_t off, len, packed;
} chunk_t;

static uint64_t seg_chunks(const duet__segs_t *g, int k, uint64_t ce, chunk_t *out) {
  uint64_t n = 0, packed = 0;
  for (int j = 0; j < g->per; j++) {
    uint64_t po = g->off[(size_t)k * (size_t)g->per + (size_t)j];
    uint64_t pl = g->len[(size_t)k * (size_t)g->per + (size_t)j];
    uint64_t nc = pl ? (pl + ce - 1) / ce : 0;
    for (uint64_t c = 0; c < nc; c++) {
      uint64_t co = duet__part_off(pl, nc, c), cl = duet__part_len(pl, nc, c);
      if (out) {
        out[n].off = po + co;
        out[n].len = cl;
        out[n].packed = packed + co;
      }
      n++;
    }
    packed += pl;
  }
  return n;
}

static uint64_t max_chunks(const duet__segs_t *g, uint64_t ce) {
  uint64_t m = 0;
  for (int k = 0; k < g->n; k++) {
    uint64_t c = seg_chunks(g, k, ce, NULL);
    if (c > m)
      m = c;
  }
  return m;
}

static uint64_t out_off(duet__place_t p, const chunk_t *c) {
  return p.contiguous ? p.off + c->packed : c->off;
}

void duet__ring_rs_emit(duet__sched_t *s, int me, const duet__segs_t *g, size_t es,
                        uint64_t ce, uint8_t in, uint8_t work, duet__place_t out, int avg,
                        uint64_t slots_off, int direct) {
  const int n = g->n, right = (me + 1) % n, left = (me - 1 + n) % n;
  uint64_t M, slot_bytes = 0;
  chunk_t *ch = NULL;
  uint32_t *partial = NULL, *slot_reader = NULL;

  if (n == 1) { /* the own segment is already complete: move it into place */
    chunk_t *c1;
    uint64_t k1 = seg_chunks(g, 0, ce, NULL);
    c1 = malloc(sizeof(*c1) * (k1 + 1));
    if (c1 == NULL) {
      s->oom = 1;
      return;
    }
    seg_chunks(g, 0, ce, c1);
    for (uint64_t i = 0; i < k1; i++) {
      uint32_t d = duet__sched_copy(s, duet__ref(out.buf, out_off(out, &c1[i]) * es),
                                    duet__ref(in, c1[i].off * es), c1[i].len * es, NULL, 0);
      if (avg)
        duet__sched_avg(s, duet__ref(out.buf, out_off(out, &c1[i]) * es), c1[i].len * es, &d, 1);
    }
    free(c1);
    return;
  }
  M = max_chunks(g, ce);
  if (M == 0)
    return;
  ch = malloc(sizeof(*ch) * M);
  partial = malloc(sizeof(*partial) * M * (size_t)n); /* step that made chunk (seg, i) */
  slot_reader = malloc(sizeof(*slot_reader) * 2 * M);
  if (ch == NULL || partial == NULL || slot_reader == NULL) {
    s->oom = 1;
    goto out_free;
  }
  for (uint64_t i = 0; i < M * (uint64_t)n; i++)
    partial[i] = DUET_STEP_NONE;
  for (uint64_t i = 0; i < 2 * M; i++)
    slot_reader[i] = DUET_STEP_NONE;
  for (int k = 0; k < n; k++) { /* the largest chunk sizes a slot */
    uint64_t nk = seg_chunks(g, k, ce, ch);
    for (uint64_t i = 0; i < nk; i++)
      if (ch[i].len * es > slot_bytes)
        slot_bytes = ch[i].len * es;
  }
  if (!direct)
    duet__sched_need_scratch(s, slots_off + 2 * M * slot_bytes);

  for (int t = 0; t < n - 1; t++) {
    int ss = ((me - t - 1) % n + n) % n, rs = ((me - t - 2) % n + n) % n;
    uint64_t nsend = seg_chunks(g, ss, ce, ch);
    for (uint64_t i = 0; i < nsend; i++) {
      uint32_t dep = partial[(size_t)ss * M + i];
      duet__sched_send(s, right, (uint32_t)((uint64_t)t * M + i),
                       duet__ref(t == 0 ? in : work, ch[i].off * es), ch[i].len * es, &dep, 1);
    }
    uint64_t nrecv = seg_chunks(g, rs, ce, ch);
    for (uint64_t i = 0; i < nrecv; i++) {
      uint64_t sl = (uint64_t)(t % 2) * M + i;
      int last = t == n - 2; /* rs == me: this rank's own segment */
      duet__ref_t dst = last ? duet__ref(out.buf, out_off(out, &ch[i]) * es)
                             : duet__ref(work, ch[i].off * es);
      /* direct: nothing else touches dst before this step's reduce */
      duet__ref_t slot = direct ? dst : duet__ref(DUET_BUF_SCRATCH, slots_off + sl * slot_bytes);
      uint32_t rv = duet__sched_recv(s, left, (uint32_t)((uint64_t)t * M + i), slot,
                                     ch[i].len * es, direct ? NULL : &slot_reader[sl], !direct);
      uint32_t red = duet__sched_reduce(s, dst, duet__ref(in, ch[i].off * es), slot,
                                        ch[i].len * es, &rv, 1);
      if (red != DUET_STEP_NONE)
        slot_reader[sl] = red;
      partial[(size_t)rs * M + i] = red;
      if (last && avg)
        duet__sched_avg(s, dst, ch[i].len * es, &red, 1);
    }
  }
out_free:
  free(ch);
  free(partial);
  free(slot_reader);
}

void duet__ring_ag_emit(duet__sched_t *s, int me, const duet__segs_t *g, size_t es,
                        uint64_t ce, duet__place_t src, uint8_t dst) {
  const int n = g->n, right = (me + 1) % n, left = (me - 1 + n) % n;
  uint64_t M = max_chunks(g, ce), nown;
  chunk_t *ch;
  uint32_t *got;

  if (M == 0)
    return;
  ch = malloc(sizeof(*ch) * M);
  got = malloc(sizeof(*got) * M * (size_t)n); /* step that landed chunk (seg, i) */
  if (ch == NULL || got == NULL) {
    s->oom = 1;
    goto out_free;
  }
  for (uint64_t i = 0; i < M * (uint64_t)n; i++)
    got[i] = DUET_STEP_NONE;
  nown = seg_chunks(g, me, ce, ch);
  for (uint64_t i = 0; i < nown; i++) /* own segment into place (nothing when in place) */
    duet__sched_copy(s, duet__ref(dst, ch[i].off * es), duet__ref(src.buf, out_off(src, &ch[i]) * es),
                     ch[i].len * es, NULL, 0);
  for (int t = 0; t < n - 1; t++) {
    int ss = ((me - t) % n + n) % n, rs = ((me - t - 1) % n + n) % n;
    uint64_t nsend = seg_chunks(g, ss, ce, ch);
    for (uint64_t i = 0; i < nsend; i++) {
      duet__ref_t from = t == 0 ? duet__ref(src.buf, out_off(src, &ch[i]) * es)
                                : duet__ref(dst, ch[i].off * es);
      duet__sched_send(s, right, (uint32_t)((uint64_t)t * M + i), from, ch[i].len * es,
                       &got[(size_t)ss * M + i], 1);
    }
    uint64_t nrecv = seg_chunks(g, rs, ce, ch);
    for (uint64_t i = 0; i < nrecv; i++)
      got[(size_t)rs * M + i] = duet__sched_recv(s, left, (uint32_t)((uint64_t)t * M + i),
                                                 duet__ref(dst, ch[i].off * es), ch[i].len * es,
                                                 NULL, 0);
  }
out_free:
  free(ch);
  free(got);
}
