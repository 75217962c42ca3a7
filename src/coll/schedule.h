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
};

#define DUET_STEP_NONE UINT32_MAX /* "no step": a dependency on it is dropped */

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

typedef struct duet__sched {
  duet__step_t *steps;
  uint32_t nsteps, steps_cap;
  uint32_t *deps;
  uint32_t ndeps, deps_cap;
  uint32_t *outs; /* built by duet__sched_finalize */
  uint64_t scratch_bytes;
  uint32_t max_msg; /* largest msg id used + 1 */
  int oom;          /* an add failed: the schedule is unusable */
} duet__sched_t;

void duet__sched_init(duet__sched_t *s);
void duet__sched_fini(duet__sched_t *s);

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
/* Zero-length messages (barrier tokens) are created by this call only. */
uint32_t duet__sched_token(duet__sched_t *s, int kind, int peer, uint32_t msg,
                           const uint32_t *deps, uint32_t ndeps);

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
