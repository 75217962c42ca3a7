/*
 * schedule.h - a collective as data: an array of steps (send, recv, reduce,
 * copy, avg) with dependencies.
 *
 * A step names buffers symbolically (send | recv | scratch, byte offset),
 * never by pointer, names its peer by rank, and lists the steps it waits for.
 * The same schedule is executed by the progress engine, executed in memory by
 * the unit tests, or replayed by a network model.
 *
 * Messages are matched by (sender, receiver, msg): msg is unique among the
 * messages one rank sends to one peer within a schedule.
 */
#ifndef DUET_SCHEDULE_H
#define DUET_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

enum { DUET_BUF_NONE = 0, DUET_BUF_SEND = 1, DUET_BUF_RECV = 2, DUET_BUF_SCRATCH = 3 };

enum {
  DUET_STEP_SEND = 0,   /* send len bytes at a to peer */
  DUET_STEP_RECV = 1,   /* receive len bytes from peer into dst */
  DUET_STEP_REDUCE = 2, /* dst = a op b, len bytes */
  DUET_STEP_COPY = 3,   /* dst = a, len bytes */
  DUET_STEP_AVG = 4,    /* dst /= nranks (DUET_AVG's single division) */
  DUET_STEP_NOP = 5,    /* nothing: joins the phases of a composed schedule */
  DUET_STEP_GATE = 6,   /* done once the request's gate msg is open: data the
                           caller stages while the schedule runs (the load/store
                           UPN's hierarchical all-to-all) is in place */
};

#define DUET_STEP_NONE UINT32_MAX
#define DUET_PHASE_MSGS (1u << 19) /* message ids one phase of a flat builder may use */
#define DUET_TAG_MSGS (1u << 24)   /* message ids a tag holds (core/comm.h): one call's limit */
#define DUET_HIER_MSGS (1u << 21)  /* message ids of one phase of a hierarchical builder */ /* "no step": a dependency on it is dropped */

typedef struct duet__ref {
  uint8_t buf;  /* DUET_BUF_* */
  uint64_t off; /* bytes */
} duet__ref_t;

typedef struct duet__step {
  uint8_t kind; /* DUET_STEP_* */
  uint8_t net;  /* DUET_NET_* of a send/recv, set by duet__sched_set_nets */
  int32_t peer; /* rank, for send/recv */
  uint32_t msg; /* message id, for send/recv */
  duet__ref_t dst, a, b;
  uint64_t len; /* bytes */
  uint32_t dep_first, ndeps; /* this step waits for deps[dep_first .. +ndeps] */
  uint32_t out_first, nout;  /* steps waiting for this one: outs[out_first .. +nout] */
} duet__step_t;

/*
 * A view lets one algorithm's builder run as a phase of a larger schedule
 * (the hierarchy composes flat algorithms this way): the builder speaks of
 * its own ranks 0..n-1, its own send/recv/scratch at offset 0 and message ids
 * from 0; the view maps them to communicator ranks, to regions of the real
 * buffers, and to a fresh range of message ids, and makes every step of the
 * phase wait for the gate (the end of the phase before).
 */
typedef struct duet__view {
  duet__ref_t send, recv; /* where the builder's SEND and RECV start */
  uint64_t scratch_off;   /* where the builder's scratch starts */
  const int32_t *ranks;   /* builder rank -> communicator rank; NULL: identity */
  uint32_t msg_base;      /* added to every message id */
  uint32_t gate;          /* every step also waits for this step */
} duet__view_t;

typedef struct duet__sched {
  duet__step_t *steps;
  uint32_t nsteps, steps_cap;
  uint32_t *deps;
  uint32_t ndeps, deps_cap;
  uint32_t *outs; /* built by duet__sched_finalize */
  uint32_t outs_cap;
  uint32_t *fill; /* working array of finalize and phase joins */
  uint32_t fill_cap;
  uint64_t scratch_bytes;
  uint32_t max_msg; /* largest msg id used + 1 */
  int oom;          /* an add failed: the schedule is unusable */
  uint32_t bad_msg; /* a builder's message id outside its range (0: none), see finalize */
  uint32_t *tmp;    /* a builder's working array (duet__sched_tmp) */
  uint32_t tmp_cap;
  duet__view_t view; /* applied to every step added */
  uint32_t phase_first; /* first step of the current phase */
} duet__sched_t;

void duet__sched_init(duet__sched_t *s);
void duet__sched_fini(duet__sched_t *s);
/* Empty s for another build, keeping its arrays: a schedule rebuilt for
 * every call (alltoallv) allocates only when it outgrows the last one. */
void duet__sched_reset(duet__sched_t *s);

/* Append a step waiting for deps (DUET_STEP_NONE entries are skipped).
 * Returns its index, or DUET_STEP_NONE when out of memory (s->oom set) or
 * when len == 0 for a data step (an empty step is not created, so a zero-size
 * piece of a collective costs nothing; both ends skip it alike). */
uint32_t duet__sched_add(duet__sched_t *s, const duet__step_t *st, const uint32_t *deps,
                         uint32_t ndeps);
uint32_t duet__sched_send(duet__sched_t *s, int peer, uint32_t msg, duet__ref_t a, uint64_t len,
                          const uint32_t *deps, uint32_t ndeps);
uint32_t duet__sched_recv(duet__sched_t *s, int peer, uint32_t msg, duet__ref_t dst,
                          uint64_t len, const uint32_t *deps, uint32_t ndeps);
uint32_t duet__sched_reduce(duet__sched_t *s, duet__ref_t dst, duet__ref_t a, duet__ref_t b,
                            uint64_t len, const uint32_t *deps, uint32_t ndeps);
uint32_t duet__sched_copy(duet__sched_t *s, duet__ref_t dst, duet__ref_t a, uint64_t len,
                          const uint32_t *deps, uint32_t ndeps);
uint32_t duet__sched_avg(duet__sched_t *s, duet__ref_t dst, uint64_t len, const uint32_t *deps,
                         uint32_t ndeps);
/* A step done once gate k of the request running the schedule is open
 * (duet__request_open_gate, core/comm.h), and once its deps are. */
uint32_t duet__sched_gate(duet__sched_t *s, uint32_t k, const uint32_t *deps, uint32_t ndeps);
/* Zero-length messages (barrier tokens) are created by this call only. */
uint32_t duet__sched_token(duet__sched_t *s, int kind, int peer, uint32_t msg,
                           const uint32_t *deps, uint32_t ndeps);

/* A working array of n entries for the builder, kept with the schedule's
 * other arrays across duet__sched_reset, so that a schedule rebuilt every
 * call (alltoallv) allocates only when it grows; NULL when out of memory
 * (s->oom set). Valid until the next call. */
uint32_t *duet__sched_tmp(duet__sched_t *s, uint32_t n);

/* The builder needs bytes of scratch (relative to the view). */
void duet__sched_need_scratch(duet__sched_t *s, uint64_t bytes);

/* Start a new phase seen through view v (its gate is filled in): every step
 * added from now on waits for all steps added before. v->msg_base must give
 * the phase message ids no other phase between the same ranks uses, and must
 * be the same on every rank of the phase: a builder's own phases add
 * DUET_PHASE_MSGS to the view's base; the hierarchy gives its phases
 * DUET_HIER_MSGS * k. A flat builder's messages stay below DUET_PHASE_MSGS;
 * duet__sched_add records the first id past that (or past DUET_TAG_MSGS) in
 * bad_msg and duet__sched_finalize then fails with DUET_ERR_UNSUPPORTED. */
void duet__sched_phase(duet__sched_t *s, const duet__view_t *v);

/* The identity view (the whole call's buffers, communicator ranks). */
void duet__view_identity(duet__view_t *v);

/* Build the dependents lists. DUET_SUCCESS or DUET_ERR_NO_MEMORY. */
duet_status_t duet__sched_finalize(duet__sched_t *s);

static inline duet__ref_t duet__ref(int buf, uint64_t off) {
  duet__ref_t r = {(uint8_t)buf, off};
  return r;
}

/* Split n items into parts nearly equal pieces; piece k starts at
 * duet__part_off and holds duet__part_len items. */
static inline uint64_t duet__part_len(uint64_t n, uint64_t parts, uint64_t k) {
  return n / parts + (k < n % parts ? 1 : 0);
}
static inline uint64_t duet__part_off(uint64_t n, uint64_t parts, uint64_t k) {
  return k * (n / parts) + (k < n % parts ? k : n % parts);
}

#endif /* DUET_SCHEDULE_H */
