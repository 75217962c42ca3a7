#include "sched_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reduce/reduce.h"

typedef struct pend {
  int used;         /* 0 empty, 1 send waiting, 2 recv waiting */
  int src, dst;
  uint32_t msg;
  int rank;         /* whose step */
  uint32_t step;
  uint64_t heard;   /* sender's knowledge when it sent */
} pend_t;

typedef struct st {
  uint32_t *left; /* deps not yet done */
  uint8_t *state; /* 0 waiting, 1 posted, 2 done */
  uint32_t ndone;
} st_t;

static uint64_t key_hash(int src, int dst, uint32_t msg) {
  uint64_t k = ((uint64_t)(unsigned)src * 131u + (unsigned)dst) * 2654435761u ^ msg * 40503u;
  return k * 0x9E3779B97F4A7C15ull;
}

static uint8_t *resolve(sim_rank_t *rk, duet__ref_t ref, uint64_t len, char *err, size_t errlen,
                        int rank, uint32_t step) {
  uint8_t *base;
  uint64_t size;
  switch (ref.buf) {
  case DUET_BUF_SEND: base = rk->send; size = rk->send_bytes; break;
  case DUET_BUF_RECV: base = rk->recv; size = rk->recv_bytes; break;
  case DUET_BUF_SCRATCH: base = rk->scratch; size = rk->sched.scratch_bytes; break;
  default:
    snprintf(err, errlen, "rank %d step %u: bad buffer %d", rank, step, ref.buf);
    return NULL;
  }
  if (ref.off > size || len > size - ref.off) {
    snprintf(err, errlen, "rank %d step %u: [%llu, +%llu) outside buffer %d of %llu bytes", rank,
             step, (unsigned long long)ref.off, (unsigned long long)len, ref.buf,
             (unsigned long long)size);
    return NULL;
  }
  return base + ref.off;
}

int sim_run(sim_rank_t *ranks, int p, duet_datatype_t dt, duet_op_t op, unsigned seed, char *err,
            size_t errlen) {
  st_t *st = calloc((size_t)p, sizeof(*st));
  uint64_t total = 0, done = 0, hcap = 1024;
  pend_t *tab;
  uint32_t (*ready)[2]; /* (rank, step) pool of runnable steps */
  uint64_t nready = 0;
  int rc = -1;

  for (int r = 0; r < p; r++)
    total += ranks[r].sched.nsteps;
  while (hcap < 4 * total + 16)
    hcap *= 2;
  tab = calloc(hcap, sizeof(*tab));
  ready = malloc(sizeof(*ready) * (total + 1));
  for (int r = 0; r < p; r++) {
    duet__sched_t *s = &ranks[r].sched;
    ranks[r].scratch = malloc(s->scratch_bytes + 1);
    ranks[r].heard = 1ull << (r % 64);
    st[r].left = malloc(sizeof(uint32_t) * (s->nsteps + 1));
    st[r].state = calloc(s->nsteps + 1, 1);
    for (uint32_t i = 0; i < s->nsteps; i++) {
      st[r].left[i] = s->steps[i].ndeps;
      for (uint32_t d = 0; d < s->steps[i].ndeps; d++)
        if (s->deps[s->steps[i].dep_first + d] >= i) {
          snprintf(err, errlen, "rank %d step %u depends on a later step", r, i);
          goto out;
        }
      if (s->steps[i].ndeps == 0) {
        ready[nready][0] = (uint32_t)r;
        ready[nready++][1] = i;
      }
    }
  }
  srand(seed);
  while (nready > 0) {
    uint64_t pick = seed ? (uint64_t)rand() % nready : 0;
    int r = (int)ready[pick][0];
    uint32_t i = ready[pick][1];
    duet__sched_t *s = &ranks[r].sched;
    duet__step_t *stp = &s->steps[i];
    int completed[2][2] = {{-1, 0}, {-1, 0}}; /* (rank, step) pairs finished now */
    int ncomp = 0;

    ready[pick][0] = ready[nready - 1][0];
    ready[pick][1] = ready[nready - 1][1];
    nready--;
    if (stp->kind == DUET_STEP_SEND || stp->kind == DUET_STEP_RECV) {
      int src = stp->kind == DUET_STEP_SEND ? r : stp->peer;
      int dst = stp->kind == DUET_STEP_SEND ? stp->peer : r;
      uint64_t h = key_hash(src, dst, stp->msg) & (hcap - 1);
      if (stp->peer < 0 || stp->peer >= p || stp->peer == r) {
        snprintf(err, errlen, "rank %d step %u: bad peer %d", r, i, stp->peer);
        goto out;
      }
      while (tab[h].used && !(tab[h].src == src && tab[h].dst == dst && tab[h].msg == stp->msg))
        h = (h + 1) & (hcap - 1);
      if (!tab[h].used) {
        tab[h].used = stp->kind == DUET_STEP_SEND ? 1 : 2;
        tab[h].src = src;
        tab[h].dst = dst;
        tab[h].msg = stp->msg;
        tab[h].rank = r;
        tab[h].step = i;
        tab[h].heard = ranks[r].heard;
        st[r].state[i] = 1;
        continue;
      }
      if (tab[h].used == 3 || tab[h].used == (stp->kind == DUET_STEP_SEND ? 1 : 2)) {
        snprintf(err, errlen, "message %d->%d msg %u posted twice", src, dst, stp->msg);
        goto out;
      }
      {
        /* Match: the data moves now. */
        int sr = stp->kind == DUET_STEP_SEND ? r : tab[h].rank;
        uint32_t si = stp->kind == DUET_STEP_SEND ? i : tab[h].step;
        int rr = stp->kind == DUET_STEP_RECV ? r : tab[h].rank;
        uint32_t ri = stp->kind == DUET_STEP_RECV ? i : tab[h].step;
        duet__step_t *ss = &ranks[sr].sched.steps[si], *rs = &ranks[rr].sched.steps[ri];
        uint64_t sender_heard = stp->kind == DUET_STEP_SEND ? ranks[r].heard : tab[h].heard;
        if (ss->len != rs->len) {
          snprintf(err, errlen, "message %d->%d msg %u: send %llu bytes, recv %llu bytes", sr, rr,
                   ss->msg, (unsigned long long)ss->len, (unsigned long long)rs->len);
          goto out;
        }
        if (ss->len > 0) {
          uint8_t *from = resolve(&ranks[sr], ss->a, ss->len, err, errlen, sr, si);
          uint8_t *to = resolve(&ranks[rr], rs->dst, rs->len, err, errlen, rr, ri);
          if (from == NULL || to == NULL)
            goto out;
          memcpy(to, from, ss->len);
        }
        ranks[rr].heard |= sender_heard;
        tab[h].used = 3;
        completed[0][0] = sr;
        completed[0][1] = (int)si;
        completed[1][0] = rr;
        completed[1][1] = (int)ri;
        ncomp = 2;
      }
    } else {
      uint8_t *d = NULL, *a = NULL, *b = NULL;
      if (stp->kind != DUET_STEP_NOP) {
        d = resolve(&ranks[r], stp->dst, stp->len, err, errlen, r, i);
        if (d == NULL)
          goto out;
      }
      if (stp->kind == DUET_STEP_REDUCE || stp->kind == DUET_STEP_COPY) {
        a = resolve(&ranks[r], stp->a, stp->len, err, errlen, r, i);
        if (a == NULL)
          goto out;
      }
      if (stp->kind == DUET_STEP_REDUCE) {
        b = resolve(&ranks[r], stp->b, stp->len, err, errlen, r, i);
        if (b == NULL)
          goto out;
        duet__reduce(d, a, b, stp->len / duet__dt_size(dt), dt, op);
      } else if (stp->kind == DUET_STEP_COPY) {
        memmove(d, a, stp->len);
      } else if (stp->kind == DUET_STEP_NOP) {
      } else if (stp->kind == DUET_STEP_AVG) {
        duet__reduce_avg_finish(d, stp->len / duet__dt_size(dt), dt, p);
      } else {
        snprintf(err, errlen, "rank %d step %u: unknown kind %d", r, i, stp->kind);
        goto out;
      }
      completed[0][0] = r;
      completed[0][1] = (int)i;
      ncomp = 1;
    }
    for (int c = 0; c < ncomp; c++) {
      int cr = completed[c][0];
      uint32_t ci = (uint32_t)completed[c][1];
      duet__sched_t *cs = &ranks[cr].sched;
      st[cr].state[ci] = 2;
      st[cr].ndone++;
      done++;
      for (uint32_t o = 0; o < cs->steps[ci].nout; o++) {
        uint32_t j = cs->outs[cs->steps[ci].out_first + o];
        if (--st[cr].left[j] == 0) {
          ready[nready][0] = (uint32_t)cr;
          ready[nready++][1] = j;
        }
      }
    }
  }
  if (done != total) {
    for (int r = 0; r < p; r++)
      for (uint32_t i = 0; i < ranks[r].sched.nsteps; i++)
        if (st[r].state[i] != 2) {
          duet__step_t *x = &ranks[r].sched.steps[i];
          snprintf(err, errlen,
                   "deadlock: %llu of %llu steps done; rank %d step %u (kind %d peer %d msg %u) "
                   "%s",
                   (unsigned long long)done, (unsigned long long)total, r, i, x->kind, x->peer,
                   x->msg, st[r].state[i] == 1 ? "posted, never matched" : "never ready");
          goto out;
        }
  }
  rc = 0;
out:
  for (int r = 0; r < p; r++) {
    free(st[r].left);
    free(st[r].state);
    free(ranks[r].scratch);
    ranks[r].scratch = NULL;
  }
  free(st);
  free(tab);
  free(ready);
  return rc;
}
