/*
 * alltoall.c - all-to-all: pairwise exchange, Bruck, hierarchical; and
 * pairwise alltoallv.
 *
 * Pairwise: in step k rank r exchanges with q = (k - r) mod p, a pairing in
 * which every pair meets exactly once and both directions move in the same
 * step. At most DUET_A2A_WINDOW steps are in flight. Out of place, blocks go
 * straight from sendbuf to recvbuf; in place, the outgoing block is first
 * copied to one of DUET_A2A_WINDOW scratch slots and sent from there, and
 * the incoming block lands in place once that copy is done (as Open MPI's
 * in-place pairwise does: the copy precedes the transfer instead of
 * trailing it; 4 ranks over tcp, 4 MiB in place, 1318-1641 against
 * 1459-2215 us in alternating launches). Extra memory: none out of place,
 * WINDOW blocks in place.
 *
 * Bruck (small blocks): rotate, then in round k (k = 1, 2, 4, ...) send to
 * r + k every block whose index has bit k set, packed in one message, and
 * unrotate: ceil(log2 p) messages per rank instead of p - 1, at the price of
 * about (log2 p)/2 times the bytes. Scratch: the rotated copy plus two pack
 * buffers, about 2p blocks - it is meant for small blocks.
 *
 * Hierarchical (super-nodes of equal size L, N of them), DESIGN.md section 4:
 * in round m this rank (local index j) serves destination super-node
 * d = sn + m: every local rank i hands local rank j the block it has for the
 * rank with local index j in d (UPN), and j sends the L blocks to that rank
 * in one message over the HPN; from super-node sn - m it receives the L blocks
 * bound for it and places them. Round 0 is the exchange inside the
 * super-node. Each rank sends N-1 HPN messages per call, each carrying L
 * blocks. Staging: two rounds of (gathered + received) L blocks, so memory is
 * bounded by 4L blocks, not by p; in place, the send buffer is first copied
 * to scratch (p blocks). Blocks of DUET_A2A_HIER_SPLIT bytes or more are not
 * gathered: aggregation saves nothing there, and the copies in and out of
 * the staging slots cost more than the extra messages. Such a block crosses
 * the HPN on the same rail as its own message, this rank's own block at
 * once and each handed-over one as soon as it arrives (2L staging blocks),
 * and lands in place: (N-1) L HPN messages per call. Other layouts run
 * pairwise.
 *
 * When every super-node has the load/store UPN (coll.c), the UPN hops go
 * through the shared segment instead, and only the rail phase is a
 * schedule: duet__alltoall_hier_rail_build. Blocks then cross the HPN as
 * above, but land in place without staging slots (when the sending
 * super-node's ranks are consecutive). On super-nodes of unequal size the
 * rails do not pair up: the exchange inside the super-node goes through
 * the segment, and duet__alltoall[v]_remote_build (pairwise with the other
 * super-nodes' ranks only) sends every other block straight to its rank.
 */
#include <stdlib.h>
#include <string.h>

#include "coll/hier.h"

#define DUET_A2A_WINDOW 8
/* Hierarchical: blocks of this many bytes or more cross the HPN one message
 * each (see the file's comment). 2 x 2 emulated super-nodes, shm + tcp,
 * 40 calls per launch, 3 launches: blocks of 64 KiB 86-91 us either way,
 * 128 KiB 141-143 against 144-152 us, 256 KiB 253-258 against 290-295 us,
 * 512 KiB 614-704 against 711-765 us. */
#define DUET_A2A_HIER_SPLIT (128u << 10)

/* Whether pairwise leaves q out: remote_only leaves out this rank's own
 * super-node (itself included), whose blocks the shared segment moves. */
static int a2a_skip(const duet__coll_args_t *a, int remote_only, int q) {
  return remote_only && a->layout->supernode[q] == a->layout->supernode[a->rank];
}

static duet_status_t a2a_pairwise(const duet__coll_args_t *a, duet__sched_t *s, int remote_only) {
  const int p = a->nranks, r = a->rank;
  const uint64_t blk = a->count * a->dtsize;
  uint32_t done[DUET_A2A_WINDOW];

  if (blk == 0)
    return DUET_SUCCESS;
  if (a->in_place)
    duet__sched_need_scratch(s, (uint64_t)DUET_A2A_WINDOW * blk);
  for (int k = 0; k < DUET_A2A_WINDOW; k++)
    done[k] = DUET_STEP_NONE;
  for (int k = 0, w = 0; k < p; k++) {
    int q = ((k - r) % p + p) % p;
    uint32_t gate;
    duet__ref_t out = duet__ref(DUET_BUF_SEND, (uint64_t)q * blk);
    duet__ref_t in = duet__ref(DUET_BUF_RECV, (uint64_t)q * blk);
    if (q == r || a2a_skip(a, remote_only, q)) /* the local block is copied last, below */
      continue;
    gate = done[w]; /* the step that used this window slot before */
    if (!a->in_place) {
      duet__sched_send(s, q, 0, out, blk, &gate, 1);
      done[w] = duet__sched_recv(s, q, 0, in, blk, &gate, 1);
    } else {
      duet__ref_t slot = duet__ref(DUET_BUF_SCRATCH, (uint64_t)w * blk);
      uint32_t cp = duet__sched_copy(s, slot, out, blk, &gate, 1);
      done[w] = duet__sched_send(s, q, 0, slot, blk, &cp, 1);
      duet__sched_recv(s, q, 0, in, blk, &cp, 1);
    }
    w = (w + 1) % DUET_A2A_WINDOW;
  }
  /* After every exchange is posted, so that the copy overlaps the transfers
   * instead of delaying them (in place there is nothing to copy). */
  if (!remote_only)
    duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)r * blk),
                     duet__ref(DUET_BUF_SEND, (uint64_t)r * blk), blk, NULL, 0);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

duet_status_t duet__alltoall_pairwise_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return a2a_pairwise(a, s, 0);
}

duet_status_t duet__alltoall_remote_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return a2a_pairwise(a, s, 1);
}

static duet_status_t a2av_pairwise(const duet__coll_args_t *a, duet__sched_t *s, int remote_only) {
  const int p = a->nranks, r = a->rank;
  const uint64_t es = a->dtsize;
  uint32_t done[DUET_A2A_WINDOW];

  for (int k = 0; k < DUET_A2A_WINDOW; k++)
    done[k] = DUET_STEP_NONE;
  for (int k = 0, w = 0; k < p; k++) {
    int q = ((k - r) % p + p) % p;
    uint32_t gate;
    duet__ref_t out = duet__ref(DUET_BUF_SEND, a->sdispls[q] * es);
    duet__ref_t in = duet__ref(DUET_BUF_RECV, a->rdispls[q] * es);
    if (a2a_skip(a, remote_only, q))
      continue;
    gate = done[w];
    if (q == r) {
      uint32_t c = duet__sched_copy(s, in, out, a->scounts[q] * es, &gate, 1);
      done[w] = c != DUET_STEP_NONE ? c : gate;
    } else {
      /* A zero count creates no step; both ends agree when the counts do. */
      uint32_t sd = duet__sched_send(s, q, 0, out, a->scounts[q] * es, &gate, 1);
      uint32_t rv = duet__sched_recv(s, q, 0, in, a->rcounts[q] * es, &gate, 1);
      done[w] = rv != DUET_STEP_NONE ? rv : sd != DUET_STEP_NONE ? sd : gate;
    }
    w = (w + 1) % DUET_A2A_WINDOW;
  }
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

duet_status_t duet__alltoallv_pairwise_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return a2av_pairwise(a, s, 0);
}

duet_status_t duet__alltoallv_remote_build(const duet__coll_args_t *a, duet__sched_t *s) {
  return a2av_pairwise(a, s, 1);
}

duet_status_t duet__alltoall_bruck_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const int p = a->nranks, r = a->rank;
  const uint64_t blk = a->count * a->dtsize;
  const uint64_t tmp = 0, pack = (uint64_t)p * blk, unpack = pack + (uint64_t)(p / 2 + 1) * blk;
  duet__view_t v;

  if (blk == 0)
    return DUET_SUCCESS;
  duet__sched_need_scratch(s, unpack + (uint64_t)(p / 2 + 1) * blk);
  /* rotate: tmp[i] = send[(r + i) mod p] */
  for (int i = 0; i < p; i++)
    duet__sched_copy(s, duet__ref(DUET_BUF_SCRATCH, tmp + (uint64_t)i * blk),
                     duet__ref(DUET_BUF_SEND, (uint64_t)((r + i) % p) * blk), blk, NULL, 0);
  for (int k = 1, round = 0; k < p; k <<= 1, round++) {
    int n = 0;
    uint32_t *copies;
    v = s->view;
    duet__sched_phase(s, &v); /* the previous round has landed everywhere */
    copies = malloc(sizeof(*copies) * (size_t)p);
    if (copies == NULL) {
      s->oom = 1;
      break;
    }
    for (int i = 1; i < p; i++) {
      if (!(i & k))
        continue;
      copies[n] =
          duet__sched_copy(s, duet__ref(DUET_BUF_SCRATCH, pack + (uint64_t)n * blk),
                           duet__ref(DUET_BUF_SCRATCH, tmp + (uint64_t)i * blk), blk, NULL, 0);
      n++;
    }
    duet__sched_send(s, (r + k) % p, (uint32_t)round, duet__ref(DUET_BUF_SCRATCH, pack),
                     (uint64_t)n * blk, copies, (uint32_t)n);
    uint32_t rv = duet__sched_recv(s, (r - k + p) % p, (uint32_t)round,
                                   duet__ref(DUET_BUF_SCRATCH, unpack), (uint64_t)n * blk, NULL, 0);
    for (int i = 1, j = 0; i < p; i++)
      if (i & k) {
        /* tmp[i] was packed above, in this round, before it is replaced */
        uint32_t deps[2] = {rv, copies[j]};
        duet__sched_copy(s, duet__ref(DUET_BUF_SCRATCH, tmp + (uint64_t)i * blk),
                         duet__ref(DUET_BUF_SCRATCH, unpack + (uint64_t)j * blk), blk, deps, 2);
        j++;
      }
    free(copies);
  }
  v = s->view;
  duet__sched_phase(s, &v);
  /* unrotate: recv[(r - i) mod p] = tmp[i] */
  for (int i = 0; i < p; i++)
    duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)((r - i + p) % p) * blk),
                     duet__ref(DUET_BUF_SCRATCH, tmp + (uint64_t)i * blk), blk, NULL, 0);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

duet_status_t duet__alltoall_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const uint64_t blk = a->count * a->dtsize;
  duet__hier_t h;
  duet_status_t rc;
  uint8_t src = DUET_BUF_SEND;
  uint64_t stage, L, gslot[2], hslot[2];
  uint32_t gfree[2] = {DUET_STEP_NONE, DUET_STEP_NONE}; /* last HPN send of a gather slot */
  /* per block i: the placements out of receive slot w; split, the HPN send
   * out of gather slot w (the slot's next writer waits for it) */
  uint32_t *hfree[2] = {NULL, NULL};
  uint32_t *got = NULL;
  const int split = blk >= DUET_A2A_HIER_SPLIT;

  if (blk == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(l) || !l->uniform)
    return duet__alltoall_pairwise_build(a, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  L = (uint64_t)h.ls;
  stage = 0;
  if (a->in_place) {
    /* The send buffer is overwritten as blocks arrive: work from a copy. */
    duet__sched_copy(s, duet__ref(DUET_BUF_SCRATCH, 0), duet__ref(DUET_BUF_SEND, 0),
                     (uint64_t)a->nranks * blk, NULL, 0);
    duet__view_t v = s->view;
    duet__sched_phase(s, &v);
    src = DUET_BUF_SCRATCH;
    stage = (uint64_t)a->nranks * blk;
  }
  for (int w = 0; w < 2; w++) { /* split: no receive slots */
    gslot[w] = stage + (uint64_t)w * (split ? 1 : 2) * L * blk;
    hslot[w] = gslot[w] + L * blk;
    hfree[w] = malloc(sizeof(uint32_t) * L);
  }
  got = malloc(sizeof(uint32_t) * L);
  if (hfree[0] == NULL || hfree[1] == NULL || got == NULL) {
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  for (uint64_t i = 0; i < L; i++)
    hfree[0][i] = hfree[1][i] = DUET_STEP_NONE;
  duet__sched_need_scratch(s, stage + (split ? 2 : 4) * L * blk);

  for (int m = 0; m < h.nsn; m++) {
    int d = (h.sn + m) % h.nsn, from = (h.sn - m + h.nsn) % h.nsn, w = m % 2;
    const int32_t *dst_dom = l->members + l->sn_first[d];
    const int32_t *src_dom = l->members + l->sn_first[from];
    /* UPN: hand local rank i the block for local index i of super-node d. */
    for (int i = 0; i < h.ls; i++) {
      duet__ref_t blkref = duet__ref(src, (uint64_t)dst_dom[i] * blk);
      if (i != h.lr)
        duet__sched_send(s, h.domain[i], (uint32_t)m, blkref, blk, NULL, 0);
    }
    if (m == 0) { /* inside the super-node: blocks land in place */
      for (int i = 0; i < h.ls; i++) {
        duet__ref_t to = duet__ref(DUET_BUF_RECV, (uint64_t)h.domain[i] * blk);
        if (i == h.lr)
          duet__sched_copy(s, to, duet__ref(src, (uint64_t)h.domain[i] * blk), blk, NULL, 0);
        else
          duet__sched_recv(s, h.domain[i], 0, to, blk, NULL, 0);
      }
      continue;
    }
    if (split) {
      /* HPN: this rank's own block for rank (d, lr) at once, each block a
       * local rank hands over as soon as it is here (slot w, free once its
       * send two rounds ago has gone); the L blocks from super-node `from`
       * land in place. Message m L + i carries local rank i's block. */
      const uint32_t mid = (uint32_t)m * (uint32_t)L;
      duet__sched_send(s, dst_dom[h.lr], mid + (uint32_t)h.lr,
                       duet__ref(src, (uint64_t)dst_dom[h.lr] * blk), blk, NULL, 0);
      for (int i = 0; i < h.ls; i++) {
        duet__ref_t slot = duet__ref(DUET_BUF_SCRATCH, gslot[w] + (uint64_t)i * blk);
        uint32_t rv;
        if (i == h.lr)
          continue;
        rv = duet__sched_recv(s, h.domain[i], (uint32_t)m, slot, blk, &hfree[w][i], 1);
        hfree[w][i] = duet__sched_send(s, dst_dom[h.lr], mid + (uint32_t)i, slot, blk, &rv, 1);
      }
      for (int i = 0; i < h.ls; i++)
        duet__sched_recv(s, src_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_RECV, (uint64_t)src_dom[i] * blk), blk, NULL, 0);
      continue;
    }
    /* Gather the L blocks bound for rank (d, lr) into slot w. */
    for (int i = 0; i < h.ls; i++) {
      duet__ref_t to = duet__ref(DUET_BUF_SCRATCH, gslot[w] + (uint64_t)i * blk);
      if (i == h.lr)
        got[i] = duet__sched_copy(s, to, duet__ref(src, (uint64_t)dst_dom[h.lr] * blk), blk,
                                  &gfree[w], 1);
      else
        got[i] = duet__sched_recv(s, h.domain[i], (uint32_t)m, to, blk, &gfree[w], 1);
    }
    /* HPN: one message to the same local index in super-node d ... */
    gfree[w] = duet__sched_send(s, dst_dom[h.lr], (uint32_t)m,
                                duet__ref(DUET_BUF_SCRATCH, gslot[w]), L * blk, got, (uint32_t)L);
    /* ... and one from super-node `from`, placed block by block. */
    uint32_t rv =
        duet__sched_recv(s, src_dom[h.lr], (uint32_t)m, duet__ref(DUET_BUF_SCRATCH, hslot[w]),
                         L * blk, hfree[w], (uint32_t)L);
    for (int i = 0; i < h.ls; i++)
      hfree[w][i] =
          duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)src_dom[i] * blk),
                           duet__ref(DUET_BUF_SCRATCH, hslot[w] + (uint64_t)i * blk), blk, &rv, 1);
  }
  rc = s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
out_free:
  free(hfree[0]);
  free(hfree[1]);
  free(got);
  duet__hier_fini(&h);
  return rc;
}

/* Out of place, a block large enough to cross the HPN on its own leaves
 * from sendbuf at once; in place, sendbuf's blocks are overwritten by the
 * blocks received, so every block is staged first. */
int duet__alltoall_hier_rail_own(const duet__coll_args_t *a) {
  return !a->in_place && a->count * a->dtsize >= DUET_A2A_HIER_SPLIT;
}

/* Rounds m = 1 .. N-1, as in duet__alltoall_hier_build: to rank (sn + m, lr)
 * the L staged blocks in one message once gate m - 1 is open, or one
 * message per block (DUET_A2A_HIER_SPLIT); from rank (sn - m, lr) its L
 * blocks, straight into place when that super-node's ranks are consecutive
 * or the blocks come one by one, else through scratch. In place, a receive
 * overwrites blocks the exchange reads, so every receive waits for the last
 * gate. */
duet_status_t duet__alltoall_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const uint64_t blk = a->count * a->dtsize;
  const int split = blk >= DUET_A2A_HIER_SPLIT, own = duet__alltoall_hier_rail_own(a);
  uint32_t last = DUET_STEP_NONE;
  uint64_t L, stage_end;
  duet__hier_t h;
  duet_status_t rc;

  if (blk == 0)
    return DUET_SUCCESS;
  if (duet__hier_is_flat(l) || !l->uniform)
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  L = (uint64_t)h.ls;
  stage_end = (uint64_t)(h.nsn - 1) * L * blk;
  duet__sched_need_scratch(s, stage_end);
  for (int m = 1; m < h.nsn; m++) {
    const int32_t *dst_dom = l->members + l->sn_first[(h.sn + m) % h.nsn];
    const uint64_t stage = (uint64_t)(m - 1) * L * blk;
    const uint32_t mid = (uint32_t)m * (uint32_t)L;
    last = duet__sched_gate(s, (uint32_t)(m - 1), NULL, 0);
    if (!split) {
      duet__sched_send(s, dst_dom[h.lr], (uint32_t)m, duet__ref(DUET_BUF_SCRATCH, stage), L * blk,
                       &last, 1);
      continue;
    }
    for (int i = 0; i < h.ls; i++) {
      if (i == h.lr && own)
        duet__sched_send(s, dst_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_SEND, (uint64_t)dst_dom[h.lr] * blk), blk, NULL, 0);
      else
        duet__sched_send(s, dst_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_SCRATCH, stage + (uint64_t)i * blk), blk, &last, 1);
    }
  }
  for (int m = 1; m < h.nsn; m++) {
    const int32_t *src_dom = l->members + l->sn_first[(h.sn - m + h.nsn) % h.nsn];
    const uint32_t mid = (uint32_t)m * (uint32_t)L, nd = a->in_place ? 1 : 0;
    int consecutive = 1;
    for (int i = 1; i < h.ls; i++)
      consecutive &= src_dom[i] == src_dom[0] + i;
    if (split) {
      for (int i = 0; i < h.ls; i++)
        duet__sched_recv(s, src_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_RECV, (uint64_t)src_dom[i] * blk), blk, &last, nd);
    } else if (consecutive) {
      duet__sched_recv(s, src_dom[h.lr], (uint32_t)m,
                       duet__ref(DUET_BUF_RECV, (uint64_t)src_dom[0] * blk), L * blk, &last, nd);
    } else {
      const uint64_t slot = stage_end + (uint64_t)(m - 1) * L * blk;
      uint32_t rv = duet__sched_recv(s, src_dom[h.lr], (uint32_t)m,
                                     duet__ref(DUET_BUF_SCRATCH, slot), L * blk, &last, nd);
      duet__sched_need_scratch(s, 2 * stage_end);
      for (int i = 0; i < h.ls; i++)
        duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)src_dom[i] * blk),
                         duet__ref(DUET_BUF_SCRATCH, slot + (uint64_t)i * blk), blk, &rv, 1);
    }
  }
  duet__hier_fini(&h);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/* Where round m's staged blocks start (elements): what the super-node sends
 * to the rank with this rank's local index in each earlier round, packed
 * in rank order (duet__alltoallv_hier_rail_build and coll.c agree on it). */
uint64_t duet__alltoallv_hier_stage(const duet__coll_args_t *a, int m) {
  const duet__layout_t *l = a->layout;
  const uint64_t *R = a->rail_counts;
  const int sn = l->supernode[a->rank], N = l->nsupernodes;
  uint64_t off = 0;
  for (int k = 1; k < m; k++)
    for (int i = 0; i < l->sn_size[sn]; i++)
      off += R[(size_t)i * (size_t)N + (size_t)((sn + k) % N)];
  return off;
}

/* Whether a round of the hierarchical alltoallv sends its blocks one
 * message each: they average DUET_A2A_HIER_SPLIT bytes or more. */
int duet__alltoallv_hier_split(uint64_t bytes, int L) {
  return bytes >= (uint64_t)L * DUET_A2A_HIER_SPLIT;
}

/* The alltoallv counterpart of duet__alltoall_hier_rail_build: round m's
 * blocks for rank (sn + m, lr), as the rail counts size them, staged at
 * duet__alltoallv_hier_stage(m), in rank order; sent in one message once
 * gate m - 1 is open, or one per block (duet__alltoallv_hier_split), this
 * rank's own then straight from sendbuf at once (it is not staged). The
 * blocks from rank (sn - m, lr) arrive in one message, placed from scratch
 * after the staging, or one per block straight into place. */
duet_status_t duet__alltoallv_hier_rail_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const uint64_t es = a->dtsize, *R = a->rail_counts;
  duet__hier_t h;
  duet_status_t rc;
  uint64_t hoff, stage = 0; /* stage: where round m's blocks start */

  if (duet__hier_is_flat(l) || !l->uniform || R == NULL)
    return DUET_ERR_INTERNAL;
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  hoff = duet__alltoallv_hier_stage(a, h.nsn); /* receive slots after the staging */
  for (int m = 1; m < h.nsn; m++) {
    const int d = (h.sn + m) % h.nsn;
    const int32_t to = l->members[l->sn_first[d] + h.lr];
    const int32_t *src_dom = l->members + l->sn_first[(h.sn - m + h.nsn) % h.nsn];
    const uint32_t mid = (uint32_t)m * (uint32_t)h.ls;
    uint64_t off = stage, gtot = 0, rtot = 0;
    uint32_t gate = duet__sched_gate(s, (uint32_t)(m - 1), NULL, 0);
    for (int i = 0; i < h.ls; i++) {
      gtot += R[(size_t)i * (size_t)h.nsn + (size_t)d];
      rtot += a->rcounts[src_dom[i]];
    }
    stage += gtot;
    if (!duet__alltoallv_hier_split(gtot * es, h.ls)) {
      duet__sched_send(s, to, (uint32_t)m, duet__ref(DUET_BUF_SCRATCH, off * es), gtot * es, &gate,
                       1);
    } else {
      for (int i = 0; i < h.ls; i++) {
        uint64_t n = R[(size_t)i * (size_t)h.nsn + (size_t)d];
        if (i == h.lr)
          duet__sched_send(s, to, mid + (uint32_t)i, duet__ref(DUET_BUF_SEND, a->sdispls[to] * es),
                           n * es, NULL, 0);
        else
          duet__sched_send(s, to, mid + (uint32_t)i, duet__ref(DUET_BUF_SCRATCH, off * es), n * es,
                           &gate, 1);
        off += n;
      }
    }
    if (duet__alltoallv_hier_split(rtot * es, h.ls)) {
      for (int i = 0; i < h.ls; i++)
        duet__sched_recv(s, src_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_RECV, a->rdispls[src_dom[i]] * es),
                         a->rcounts[src_dom[i]] * es, NULL, 0);
    } else {
      uint32_t rv = duet__sched_recv(s, src_dom[h.lr], (uint32_t)m,
                                     duet__ref(DUET_BUF_SCRATCH, hoff * es), rtot * es, NULL, 0);
      for (int i = 0; i < h.ls; i++) {
        uint64_t n = a->rcounts[src_dom[i]];
        duet__sched_copy(s, duet__ref(DUET_BUF_RECV, a->rdispls[src_dom[i]] * es),
                         duet__ref(DUET_BUF_SCRATCH, hoff * es), n * es, &rv, 1);
        hoff += n;
      }
    }
  }
  duet__sched_need_scratch(s, hoff * es);
  duet__hier_fini(&h);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/*
 * The send counts the hierarchical alltoallv's gatherers need. Rank (sn, j)
 * gathers, in round m, what every local rank i sends rank (sn + m, j), so it
 * needs L x N counts, not every rank's: local rank i's count for (d, j), for
 * every i and d. They come from an all-to-all inside the super-node, N counts
 * per pair, on the UPN only: this rank packs its send counts by local index
 * of the destination (duet__alltoallv_counts_pack: row[j N + d] is its count
 * for rank (d, j)), and local rank j gets block j. What arrives is
 * args->rail_counts: rail_counts[i N + d] is local rank i's count for (d, lr).
 * p counts per rank and call, where an allgather of every rank's counts
 * would move p x p, across the HPN too. Super-nodes of equal size.
 */
void duet__alltoallv_counts_pack(const duet__coll_args_t *a, uint64_t *row) {
  const duet__layout_t *l = a->layout;
  const int N = l->nsupernodes, L = l->sn_size[0];
  for (int j = 0; j < L; j++)
    for (int d = 0; d < N; d++)
      row[(size_t)j * (size_t)N + (size_t)d] = a->scounts[l->members[l->sn_first[d] + j]];
}

/* A block of args->count elements with each rank of this super-node: block
 * i of sendbuf to local rank i, block i of recvbuf from it; this rank's own
 * copied. Not in place. */
duet_status_t duet__alltoall_local_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const int sn = l->supernode[a->rank], lr = l->local_rank[a->rank], L = l->sn_size[sn];
  const int32_t *domain = l->members + l->sn_first[sn];
  const uint64_t blk = a->count * a->dtsize;

  for (int k = 1; k < L; k++) { /* pairwise: local rank lr + k, then lr - k */
    int to = (lr + k) % L, from = (lr - k + L) % L;
    duet__sched_send(s, domain[to], 0, duet__ref(DUET_BUF_SEND, (uint64_t)to * blk), blk, NULL, 0);
    duet__sched_recv(s, domain[from], 0, duet__ref(DUET_BUF_RECV, (uint64_t)from * blk), blk,
                     NULL, 0);
  }
  duet__sched_copy(s, duet__ref(DUET_BUF_RECV, (uint64_t)lr * blk),
                   duet__ref(DUET_BUF_SEND, (uint64_t)lr * blk), blk, NULL, 0);
  return s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
}

/*
 * Hierarchical alltoallv: the rounds of the hierarchical alltoall with blocks
 * of any size. A rank gathering for its rail sizes what it gathers from
 * args->rail_counts (above); receivers size everything from their own
 * recvcounts. Staging per round is sized by the largest round, two rounds
 * in flight. A round whose blocks average DUET_A2A_HIER_SPLIT bytes or more
 * crosses the HPN a block per message, as the alltoall's large blocks do;
 * sender (from the rail counts) and receiver (from its recvcounts) see the
 * same sizes, so they agree.
 */
duet_status_t duet__alltoallv_hier_build(const duet__coll_args_t *a, duet__sched_t *s) {
  const duet__layout_t *l = a->layout;
  const uint64_t es = a->dtsize;
  const uint64_t *R = a->rail_counts; /* R[i * N + d]: local rank i to rank (d, lr) */
  duet__hier_t h;
  duet_status_t rc;
  uint64_t gmax = 0, hmax = 0, gslot[2], hslot[2];
  uint32_t gfree[2] = {DUET_STEP_NONE, DUET_STEP_NONE};
  uint32_t *hfree[2] = {NULL, NULL}, *got = NULL;
  const uint64_t split_min = DUET_A2A_HIER_SPLIT; /* per block, on average over a round */

  if (duet__hier_is_flat(l) || !l->uniform || R == NULL)
    return duet__alltoallv_pairwise_build(a, s);
  rc = duet__hier_init(&h, a, 0);
  if (rc != DUET_SUCCESS)
    return rc;
  for (int m = 1; m < h.nsn; m++) {
    int d = (h.sn + m) % h.nsn, from = (h.sn - m + h.nsn) % h.nsn;
    uint64_t g = 0, r = 0;
    for (int i = 0; i < h.ls; i++) {
      g += R[(size_t)i * (size_t)h.nsn + (size_t)d];
      r += a->rcounts[l->members[l->sn_first[from] + i]];
    }
    gmax = g > gmax ? g : gmax;
    hmax = r > hmax ? r : hmax;
  }
  gslot[0] = 0;
  gslot[1] = gmax * es;
  hslot[0] = 2 * gmax * es;
  hslot[1] = hslot[0] + hmax * es;
  duet__sched_need_scratch(s, hslot[1] + hmax * es);
  hfree[0] = duet__sched_tmp(s, 3 * (uint32_t)h.ls); /* rebuilt every call: nothing allocated */
  if (hfree[0] == NULL) {
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  hfree[1] = hfree[0] + h.ls;
  got = hfree[1] + h.ls;
  for (int i = 0; i < h.ls; i++)
    hfree[0][i] = hfree[1][i] = DUET_STEP_NONE;

  for (int m = 0; m < h.nsn; m++) {
    int d = (h.sn + m) % h.nsn, from = (h.sn - m + h.nsn) % h.nsn, w = m % 2;
    const int32_t *dst_dom = l->members + l->sn_first[d];
    const int32_t *src_dom = l->members + l->sn_first[from];
    uint64_t off = 0;
    for (int i = 0; i < h.ls; i++)
      if (i != h.lr)
        duet__sched_send(s, h.domain[i], (uint32_t)m,
                         duet__ref(DUET_BUF_SEND, a->sdispls[dst_dom[i]] * es),
                         a->scounts[dst_dom[i]] * es, NULL, 0);
    if (m == 0) {
      for (int i = 0; i < h.ls; i++) {
        duet__ref_t to = duet__ref(DUET_BUF_RECV, a->rdispls[h.domain[i]] * es);
        if (i == h.lr)
          duet__sched_copy(s, to, duet__ref(DUET_BUF_SEND, a->sdispls[h.domain[i]] * es),
                           a->scounts[h.domain[i]] * es, NULL, 0);
        else
          duet__sched_recv(s, h.domain[i], 0, to, a->rcounts[h.domain[i]] * es, NULL, 0);
      }
      continue;
    }
    const uint32_t mid = (uint32_t)m * (uint32_t)h.ls; /* split: message m L + i per block */
    uint64_t gtot = 0, rtot = 0;
    for (int i = 0; i < h.ls; i++) {
      gtot += R[(size_t)i * (size_t)h.nsn + (size_t)d];
      rtot += a->rcounts[src_dom[i]];
    }
    /* What the super-node sends to rank (d, lr), packed in rank order in
     * slot w: gathered into one HPN message, or (large blocks) each sent on
     * its own, this rank's straight from sendbuf, the others as they are
     * handed over. */
    for (int i = 0; i < h.ls; i++) {
      uint64_t n = R[(size_t)i * (size_t)h.nsn + (size_t)d];
      duet__ref_t to = duet__ref(DUET_BUF_SCRATCH, gslot[w] + off * es);
      duet__ref_t own = duet__ref(DUET_BUF_SEND, a->sdispls[dst_dom[h.lr]] * es);
      if (gtot * es >= (uint64_t)h.ls * split_min) {
        uint32_t rv = DUET_STEP_NONE;
        if (i != h.lr)
          rv = duet__sched_recv(s, h.domain[i], (uint32_t)m, to, n * es, &gfree[w], 1);
        got[i] = duet__sched_send(s, dst_dom[h.lr], mid + (uint32_t)i, i == h.lr ? own : to, n * es,
                                  &rv, 1);
      } else if (i == h.lr) {
        got[i] = duet__sched_copy(s, to, own, n * es, &gfree[w], 1);
      } else {
        got[i] = duet__sched_recv(s, h.domain[i], (uint32_t)m, to, n * es, &gfree[w], 1);
      }
      off += n;
    }
    if (gtot * es >= (uint64_t)h.ls * split_min) {
      duet__step_t join; /* slot w is free again when every send has gone */
      memset(&join, 0, sizeof(join));
      join.kind = DUET_STEP_NOP;
      gfree[w] = duet__sched_add(s, &join, got, (uint32_t)h.ls);
    } else {
      uint32_t sd =
          duet__sched_send(s, dst_dom[h.lr], (uint32_t)m, duet__ref(DUET_BUF_SCRATCH, gslot[w]),
                           off * es, got, (uint32_t)h.ls);
      if (sd != DUET_STEP_NONE)
        gfree[w] = sd;
    }
    /* What super-node `from` sends this rank: each block straight into
     * place (large blocks), or one message into slot w, then placed. */
    if (rtot * es >= (uint64_t)h.ls * split_min) {
      for (int i = 0; i < h.ls; i++)
        duet__sched_recv(s, src_dom[h.lr], mid + (uint32_t)i,
                         duet__ref(DUET_BUF_RECV, a->rdispls[src_dom[i]] * es),
                         a->rcounts[src_dom[i]] * es, NULL, 0);
      continue;
    }
    uint32_t rv =
        duet__sched_recv(s, src_dom[h.lr], (uint32_t)m, duet__ref(DUET_BUF_SCRATCH, hslot[w]),
                         rtot * es, hfree[w], (uint32_t)h.ls);
    off = 0;
    for (int i = 0; i < h.ls; i++) {
      uint64_t n = a->rcounts[src_dom[i]];
      uint32_t c =
          duet__sched_copy(s, duet__ref(DUET_BUF_RECV, a->rdispls[src_dom[i]] * es),
                           duet__ref(DUET_BUF_SCRATCH, hslot[w] + off * es), n * es, &rv, 1);
      hfree[w][i] = c != DUET_STEP_NONE ? c : rv;
      off += n;
    }
  }
  rc = s->oom ? DUET_ERR_NO_MEMORY : DUET_SUCCESS;
out_free:
  duet__hier_fini(&h);
  return rc;
}
