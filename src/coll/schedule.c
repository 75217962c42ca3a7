/*
 * schedule.c - building schedules: append steps with dependencies, then
 * finalize into a dependents list for the executors.
 */
#include <stdlib.h>
#include <string.h>

#include "coll/schedule.h"

void duet__view_identity(duet__view_t *v) {
  memset(v, 0, sizeof(*v));
  v->send.buf = DUET_BUF_SEND;
  v->recv.buf = DUET_BUF_RECV;
  v->gate = DUET_STEP_NONE;
}

void duet__sched_init(duet__sched_t *s) {
  memset(s, 0, sizeof(*s));
  duet__view_identity(&s->view);
}

void duet__sched_need_scratch(duet__sched_t *s, uint64_t bytes) {
  uint64_t end = s->view.scratch_off + bytes;
  if (end > s->scratch_bytes)
    s->scratch_bytes = end;
}

static int duet__grow(void **p, uint32_t *cap, uint32_t need, size_t elem);

void duet__sched_phase(duet__sched_t *s, const duet__view_t *v) {
  uint32_t join = DUET_STEP_NONE;
  duet__view_t id;
  if (s->nsteps > 0) {
    /* A join of every step so far: one NOP, in the identity view. */
    duet__step_t st;
    uint32_t n = s->nsteps;
    if (duet__grow((void **)&s->fill, &s->fill_cap, n, sizeof(*s->fill))) {
      s->oom = 1;
      return;
    }
    for (uint32_t i = 0; i < n; i++)
      s->fill[i] = i;
    memset(&st, 0, sizeof(st));
    st.kind = DUET_STEP_NOP;
    duet__view_identity(&id);
    s->view = id;
    join = duet__sched_add(s, &st, s->fill, n);
  }
  s->view = *v;
  s->view.gate = join;
  s->phase_first = s->nsteps;
}

static duet__ref_t duet__xlate(const duet__sched_t *s, duet__ref_t r) {
  switch (r.buf) {
  case DUET_BUF_SEND:
    r.buf = s->view.send.buf;
    r.off += s->view.send.off;
    break;
  case DUET_BUF_RECV:
    r.buf = s->view.recv.buf;
    r.off += s->view.recv.off;
    break;
  case DUET_BUF_SCRATCH:
    r.off += s->view.scratch_off;
    break;
  default:
    break;
  }
  return r;
}

void duet__sched_fini(duet__sched_t *s) {
  free(s->steps);
  free(s->deps);
  free(s->outs);
  free(s->fill);
  free(s->tmp);
  memset(s, 0, sizeof(*s));
}

void duet__sched_reset(duet__sched_t *s) {
  duet__sched_t keep = *s;
  duet__sched_init(s);
  s->steps = keep.steps;
  s->steps_cap = keep.steps_cap;
  s->deps = keep.deps;
  s->deps_cap = keep.deps_cap;
  s->outs = keep.outs;
  s->outs_cap = keep.outs_cap;
  s->fill = keep.fill;
  s->fill_cap = keep.fill_cap;
  s->tmp = keep.tmp;
  s->tmp_cap = keep.tmp_cap;
}

static int duet__grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
  uint32_t ncap;
  void *np;
  if (need <= *cap)
    return 0;
  ncap = *cap ? *cap : 16;
  while (ncap < need)
    ncap *= 2;
  np = realloc(*p, (size_t)ncap * elem);
  if (np == NULL)
    return -1;
  *p = np;
  *cap = ncap;
  return 0;
}

uint32_t *duet__sched_tmp(duet__sched_t *s, uint32_t n) {
  if (duet__grow((void **)&s->tmp, &s->tmp_cap, n ? n : 1, sizeof(*s->tmp))) {
    s->oom = 1;
    return NULL;
  }
  return s->tmp;
}

uint32_t duet__sched_add(duet__sched_t *s, const duet__step_t *st, const uint32_t *deps,
                         uint32_t ndeps) {
  uint32_t idx, i, n = 0;
  duet__step_t *dst;

  if (s->oom)
    return DUET_STEP_NONE;
  if (duet__grow((void **)&s->steps, &s->steps_cap, s->nsteps + 1, sizeof(*s->steps)) ||
      duet__grow((void **)&s->deps, &s->deps_cap, s->ndeps + ndeps, sizeof(*s->deps))) {
    s->oom = 1;
    return DUET_STEP_NONE;
  }
  if (duet__grow((void **)&s->deps, &s->deps_cap, s->ndeps + ndeps + 1, sizeof(*s->deps))) {
    s->oom = 1;
    return DUET_STEP_NONE;
  }
  idx = s->nsteps++;
  dst = &s->steps[idx];
  *dst = *st;
  dst->dst = duet__xlate(s, st->dst);
  dst->a = duet__xlate(s, st->a);
  dst->b = duet__xlate(s, st->b);
  if ((dst->kind == DUET_STEP_SEND || dst->kind == DUET_STEP_RECV)) {
    if (s->view.ranks != NULL)
      dst->peer = s->view.ranks[st->peer];
    dst->msg = st->msg + s->view.msg_base;
    /* a builder keeps below DUET_PHASE_MSGS per phase, and the whole call
     * below what a tag holds; past either, messages of different steps
     * would share a tag */
    if ((st->msg >= DUET_PHASE_MSGS || dst->msg >= DUET_TAG_MSGS || dst->msg < st->msg) &&
        s->bad_msg == 0)
      s->bad_msg = st->msg + 1;
  }
  dst->dep_first = s->ndeps;
  for (i = 0; i < ndeps; i++)
    if (deps[i] != DUET_STEP_NONE)
      s->deps[s->ndeps + n++] = deps[i];
  if (s->view.gate != DUET_STEP_NONE)
    s->deps[s->ndeps + n++] = s->view.gate;
  dst->ndeps = n;
  dst->out_first = dst->nout = 0;
  s->ndeps += n;
  if ((dst->kind == DUET_STEP_SEND || dst->kind == DUET_STEP_RECV) && dst->msg + 1 > s->max_msg)
    s->max_msg = dst->msg + 1;
  return idx;
}

static uint32_t duet__sched_data(duet__sched_t *s, int kind, int peer, uint32_t msg,
                                 duet__ref_t dst, duet__ref_t a, duet__ref_t b, uint64_t len,
                                 const uint32_t *deps, uint32_t ndeps) {
  duet__step_t st;
  if (len == 0)
    return DUET_STEP_NONE;
  memset(&st, 0, sizeof(st));
  st.kind = (uint8_t)kind;
  st.peer = peer;
  st.msg = msg;
  st.dst = dst;
  st.a = a;
  st.b = b;
  st.len = len;
  return duet__sched_add(s, &st, deps, ndeps);
}

static const duet__ref_t duet__noref = {DUET_BUF_NONE, 0};

uint32_t duet__sched_send(duet__sched_t *s, int peer, uint32_t msg, duet__ref_t a, uint64_t len,
                          const uint32_t *deps, uint32_t ndeps) {
  return duet__sched_data(s, DUET_STEP_SEND, peer, msg, duet__noref, a, duet__noref, len, deps,
                          ndeps);
}

uint32_t duet__sched_recv(duet__sched_t *s, int peer, uint32_t msg, duet__ref_t dst,
                          uint64_t len, const uint32_t *deps, uint32_t ndeps) {
  return duet__sched_data(s, DUET_STEP_RECV, peer, msg, dst, duet__noref, duet__noref, len, deps,
                          ndeps);
}

uint32_t duet__sched_reduce(duet__sched_t *s, duet__ref_t dst, duet__ref_t a, duet__ref_t b,
                            uint64_t len, const uint32_t *deps, uint32_t ndeps) {
  return duet__sched_data(s, DUET_STEP_REDUCE, -1, 0, dst, a, b, len, deps, ndeps);
}

uint32_t duet__sched_copy(duet__sched_t *s, duet__ref_t dst, duet__ref_t a, uint64_t len,
                          const uint32_t *deps, uint32_t ndeps) {
  duet__ref_t xd = duet__xlate(s, dst), xa = duet__xlate(s, a);
  if (xd.buf == xa.buf && xd.off == xa.off)
    return DUET_STEP_NONE; /* in place: nothing to copy */
  return duet__sched_data(s, DUET_STEP_COPY, -1, 0, dst, a, duet__noref, len, deps, ndeps);
}

uint32_t duet__sched_avg(duet__sched_t *s, duet__ref_t dst, uint64_t len, const uint32_t *deps,
                         uint32_t ndeps) {
  return duet__sched_data(s, DUET_STEP_AVG, -1, 0, dst, duet__noref, duet__noref, len, deps,
                          ndeps);
}

uint32_t duet__sched_gate(duet__sched_t *s, uint32_t k, const uint32_t *deps, uint32_t ndeps) {
  duet__step_t st;
  memset(&st, 0, sizeof(st));
  st.kind = DUET_STEP_GATE;
  st.msg = k;
  return duet__sched_add(s, &st, deps, ndeps);
}

uint32_t duet__sched_token(duet__sched_t *s, int kind, int peer, uint32_t msg,
                           const uint32_t *deps, uint32_t ndeps) {
  duet__step_t st;
  memset(&st, 0, sizeof(st));
  st.kind = (uint8_t)kind;
  st.peer = peer;
  st.msg = msg;
  return duet__sched_add(s, &st, deps, ndeps);
}

duet_status_t duet__sched_finalize(duet__sched_t *s) {
  uint32_t i, d, *fill;

  if (s->oom)
    return DUET_ERR_NO_MEMORY;
  if (s->bad_msg)
    return DUET_ERR_UNSUPPORTED;
  if (duet__grow((void **)&s->outs, &s->outs_cap, s->ndeps + 1, sizeof(*s->outs)) ||
      duet__grow((void **)&s->fill, &s->fill_cap, s->nsteps + 1, sizeof(*s->fill))) {
    s->oom = 1;
    return DUET_ERR_NO_MEMORY;
  }
  fill = s->fill;
  memset(fill, 0, ((size_t)s->nsteps + 1) * sizeof(*fill));
  for (i = 0; i < s->nsteps; i++)
    s->steps[i].nout = 0;
  for (i = 0; i < s->nsteps; i++)
    for (d = 0; d < s->steps[i].ndeps; d++)
      s->steps[s->deps[s->steps[i].dep_first + d]].nout++;
  for (i = 0, d = 0; i < s->nsteps; i++) {
    s->steps[i].out_first = d;
    d += s->steps[i].nout;
  }
  for (i = 0; i < s->nsteps; i++)
    for (d = 0; d < s->steps[i].ndeps; d++) {
      uint32_t from = s->deps[s->steps[i].dep_first + d];
      s->outs[s->steps[from].out_first + fill[from]++] = i;
    }
  return DUET_SUCCESS;
}
