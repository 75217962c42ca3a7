/*
 * reduce_scatter.c - ring, recursive-doubling and pairwise reduce-scatter, and
 * the hierarchical one.
 *
 * Ring: p-1 steps; rank r ends with block r reduced over all ranks. Partial
 * sums of other blocks live in scratch (p blocks), so the send buffer is
 * never written. When recvbuf == sendbuf (in place, MPI's form) the result
 * is made in scratch and copied out at the very end, after every read of the
 * send buffer.
 *
 * Hierarchical (super-nodes of equal size L, N of them):
 *   1. inside the super-node over the UPN: ring reduce-scatter where local
 *      rank j's segment is the N blocks of the ranks with local index j;
 *   2. on rail j over the HPN: ring reduce-scatter of those N blocks, each
 *      rank keeping its own.
 * HPN bytes per rank: (N-1) blocks. Other layouts run the flat ring.
 *
 * When every super-node has the load/store UPN and its ranks are
 * consecutive (coll.c), phase 1 runs on the shared segment instead and only
 * phase 2 is a schedule: duet__reduce_scatter_hier_rail_build.
 */
#include <stdlib.h>

#include "coll/hier.h"
#include "coll/ring.h"

static uint64_t chunk_elems(const duet__coll_args_t *a) {
  return a->chunk_bytes / a->dtsize ? a->chunk_bytes / a->dtsize : 1;
}

/* The final block goes to recvbuf, or through scratch when recvbuf aliases
 * the start of sendbuf. total: elements of the whole send buffer. */
static duet__place_t result_place(const duet__coll_args_t *a, uint64_t total) {
  duet__place_t out = {DUET_BUF_RECV, 1, 0};
  if (a->out_aliases_in) {
    out.buf = DUET_BUF_SCRATCH;
    out.off = total;
  }
  return out;
}

static void copy_out(const duet__coll_args_t *a, duet__sched_t *s, duet__place_t out) {
  duet__view_t v;
  if (!a->out_aliases_in)
    return;
  duet__sched_need_scratch(s, (out.off + a->count) * a->dtsize);
  v = s->view;
  v.msg_base = DUET_HIER_MSGS * 0;
  duet__sched_phase(s, &v);
  duet__sched_copy(s, duet__ref(DUET_BUF_RECV, 0),
                   duet__ref(DUET_BUF_SCRATCH, out.off * a->dtsize), a->count * a->dtsize, NULL,
                   0);
}

duet_status_t duet__reduce_scatter_ring_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t total = a->count * (uint64_t)a->nranks;
  duet__place_t out = result_place(a, total);
  duet__segs_t g;
  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__segs_blocks(&g, a->count, a->nranks, NULL) != DUET_SUCCESS)
    return DUET_ERR_NO_MEMORY;
  duet__sched_need_scratch(s, (total + a->count) * a->dtsize);
  duet__ring_rs_emit(s, a->rank, &g, a->dtsize, chunk_elems(a), DUET_BUF_SEND,
                     DUET_BUF_SCRATCH, out, a->op == DUET_AVG, (total + a->count) * a->dtsize, 0);
  copy_out(a, s, out);
  duet__segs_free(&g);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/* rd: the whole send buffer allreduced by recursive doubling into scratch
 * (after the two slots duet__rd_emit alternates), then this rank's block
 * copied out. In place the copy, which overwrites the start of sendbuf,
 * follows the last step, and with it every read of sendbuf. */
duet_status_t duet__reduce_scatter_rd_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t bytes = a->count * a->dtsize, total = bytes * (uint64_t)a->nranks;
  uint32_t done;
  if (a->count == 0)
    return DUET_SUCCESS;
  duet__sched_need_scratch(s, 3 * total);
  done = duet__rd_emit(a, s, total, duet__ref(DUET_BUF_SCRATCH, 2 * total));
  duet__sched_copy(s, duet__ref(DUET_BUF_RECV, 0),
                   duet__ref(DUET_BUF_SCRATCH, 2 * total + (uint64_t)a->rank * bytes), bytes, &done,
                   1);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/* pairwise: each rank sends every peer that peer's block at once, and
 * reduces the p - 1 blocks it receives (in scratch) into its own, in rank
 * order whatever order they arrive in (so one rank's result has the same
 * bits from run to run): one message of latency where the
 * ring takes p - 1 and recursive doubling log2 p (two more on other counts
 * than powers of two). Chunked as the ring is: chunk c of every block is
 * message c. In place the result is made in scratch and copied out after
 * every send has read the send buffer (copy_out). */
duet_status_t duet__reduce_scatter_pairwise_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  const uint64_t es = a->dtsize, bytes = a->count * es, ce = chunk_elems(a);
  const uint64_t nch = (a->count + ce - 1) / ce, slots = (uint64_t)(p - 1) * a->count;
  const duet__place_t out = result_place(a, slots);
  uint32_t *got;
  if (a->count == 0)
    return DUET_SUCCESS;
  got = duet__sched_tmp(s, (uint32_t)p);
  if (got == NULL)
    return DUET_ERR_NO_MEMORY;
  duet__sched_need_scratch(s, (slots + (a->out_aliases_in ? a->count : 0)) * es);
  for (uint64_t c = 0; c < nch; c++) {
    const uint64_t off = duet__part_off(a->count, nch, c) * es;
    const uint64_t len = duet__part_len(a->count, nch, c) * es;
    const duet__ref_t dst = duet__ref(out.buf, out.off * es + off);
    uint32_t acc = DUET_STEP_NONE;
    got[r] = DUET_STEP_NONE;
    for (int d = 1; d < p; d++) {
      const int to = (r + d) % p, from = (r - d + p) % p;
      duet__sched_send(s, to, (uint32_t)c, duet__ref(DUET_BUF_SEND, (uint64_t)to * bytes + off),
                       len, NULL, 0);
      got[from] = duet__sched_recv(
          s, from, (uint32_t)c,
          duet__ref(DUET_BUF_SCRATCH, (uint64_t)(from < r ? from : from - 1) * bytes + off), len,
          NULL, 0);
    }
    /* its own block first (recvbuf may be that block: NCCL's in place),
     * then the others in rank order */
    acc = duet__sched_copy(s, dst, duet__ref(DUET_BUF_SEND, (uint64_t)r * bytes + off), len,
                           NULL, 0);
    for (int q = 0; q < p; q++) {
      const uint32_t deps[2] = {acc, got[q]};
      if (q != r)
        acc = duet__sched_reduce(
            s, dst, dst,
            duet__ref(DUET_BUF_SCRATCH, (uint64_t)(q < r ? q : q - 1) * bytes + off), len,
            deps, 2);
    }
    if (a->op == DUET_AVG)
      duet__sched_avg(s, dst, len, &acc, 1);
  }
  copy_out(a, s, out);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/* Phase 2 alone (coll.c runs phase 1 on the load/store UPN): the send
 * buffer holds, at k x count, the block for rank (k, lr) summed over this
 * rank's super-node; this rank's own block, reduced across the rail, goes
 * to recvbuf. */
duet_status_t duet__reduce_scatter_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t work = (uint64_t)a->layout->nsupernodes * a->count * a->dtsize;
  duet__place_t out = {DUET_BUF_RECV, 1, 0};
  duet__segs_t rail;
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout) || !a->layout->uniform || a->out_aliases_in)
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  rc = duet__segs_blocks(&rail, a->count, h.nrail, NULL);
  if (rc == DUET_SUCCESS) {
    duet__sched_need_scratch(s, work);
    v = duet__hier_view(s, h.rail);
    v.msg_base = DUET_HIER_MSGS * 1;
    duet__sched_phase(s, &v);
    duet__ring_rs_emit(s, h.rail_me, &rail, a->dtsize, chunk_elems(a), DUET_BUF_SEND,
                       DUET_BUF_SCRATCH, out, a->op == DUET_AVG, work, 0);
    rc = s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
    duet__segs_free(&rail);
  }
  duet__hier_fini(&h);
  return rc;
}

duet_status_t duet__reduce_scatter_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const uint64_t total = a->count * (uint64_t)a->nranks;
  const uint64_t slots = (total + a->count) * a->dtsize;
  duet__place_t out = result_place(a, total), keep = {DUET_BUF_SCRATCH, 0, 0};
  duet__segs_t rail, dom;
  duet__hier_t h;
  duet__view_t v;
  duet_status_t rc;

  if (a->count == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(a->layout) || !a->layout->uniform)
    return duet__reduce_scatter_ring_build(a, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  dom.n = h.ls;
  dom.per = h.nsn;
  dom.off = malloc(sizeof(uint64_t) * (size_t)h.ls * (size_t)h.nsn);
  dom.len = malloc(sizeof(uint64_t) * (size_t)h.ls * (size_t)h.nsn);
  rail.off = rail.len = NULL;
  if (dom.off == NULL || dom.len == NULL ||
      duet__segs_blocks(&rail, a->count, h.nrail, h.rail) != DUET_SUCCESS) {
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  for (int j = 0; j < h.ls; j++)
    for (int k = 0; k < h.nsn; k++) {
      size_t i = (size_t)j * (size_t)h.nsn + (size_t)k;
      dom.off[i] = (uint64_t)a->layout->members[a->layout->sn_first[k] + j] * a->count;
      dom.len[i] = a->count;
    }
  duet__sched_need_scratch(s, slots);
  /* 1. inside the super-node: partial sums of my rail's blocks, in scratch */
  v = duet__hier_view(s, h.domain);
  v.msg_base = DUET_HIER_MSGS * 0;
  duet__sched_phase(s, &v);
  duet__ring_rs_emit(s, h.lr, &dom, a->dtsize, chunk_elems(a), DUET_BUF_SEND,
                     DUET_BUF_SCRATCH, keep, 0, slots, 0);
  /* 2. on the rail: those blocks, reduced across super-nodes */
  v = duet__hier_view(s, h.rail);
  v.msg_base = DUET_HIER_MSGS * 1;
  duet__sched_phase(s, &v);
  duet__ring_rs_emit(s, h.rail_me, &rail, a->dtsize, chunk_elems(a), DUET_BUF_SCRATCH,
                     DUET_BUF_SCRATCH, out, a->op == DUET_AVG, slots, 0);
  copy_out(a, s, out);
  rc = s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
out_free:
  free(dom.off);
  free(dom.len);
  duet__segs_free(&rail);
  duet__hier_fini(&h);
  return rc;
}

duet_status_t duet__reduce_scatter_remote_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return duet__hier_remote_exchange(a, s, 0, 1);
}
