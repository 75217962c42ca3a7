/*
 * test_fiber.c - unit tests for src/core/fiber (the second stack on which
 * the load/store path's non-blocking calls run).
 *
 * A task suspends and is resumed where it stopped, with its locals intact;
 * the caller's floating-point control state (rounding mode, kept in mxcsr
 * and the x87 control word on x86-64) is its own on each side of a switch;
 * an abandoned task does not stop the next one; the stack holds a frame of
 * 256 KiB; a task started on one thread is resumed by others (the progress
 * thread's case). And the non-blocking calls that run there (core/mem_queue.c):
 * one whose peer never comes ends with DUET_ERR_TIMEOUT at the deadline,
 * naming the peer, instead of hanging.
 */
#include <criterion/criterion.h>

#include <fenv.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/fiber.h"
#include "duet.h"

#define STACK (512u << 10)

typedef struct {
  duet__fiber_t *f;
  int steps; /* suspensions before finishing */
  int seen;  /* how far the task got */
  long sum;  /* a local of the task, reported at the end */
} counter_t;

static void count_task(void *arg) {
  counter_t *c = arg;
  long local = 1000; /* lives across suspensions */
  for (int i = 0; i < c->steps; i++) {
    c->seen = i + 1;
    local += i;
    duet__fiber_suspend(c->f);
  }
  c->sum = local;
}

Test(fiber, task_resumes_where_it_stopped) {
  counter_t c = {NULL, 3, 0, 0};
  cr_assert_eq(duet__fiber_create(&c.f, STACK), DUET_SUCCESS);
  cr_assert_eq(duet__fiber_busy(c.f), 0);
  cr_assert_eq(duet__fiber_start(c.f, count_task, &c), 0, "suspended at the first step");
  cr_assert_eq(c.seen, 1);
  cr_assert_eq(duet__fiber_busy(c.f), 1);
  cr_assert_eq(duet__fiber_start(c.f, count_task, &c), -1, "a busy fiber takes no new task");
  cr_assert_eq(duet__fiber_resume(c.f), 0);
  cr_assert_eq(c.seen, 2);
  cr_assert_eq(duet__fiber_resume(c.f), 0);
  cr_assert_eq(c.seen, 3);
  cr_assert_eq(duet__fiber_resume(c.f), 1, "finished after the last step");
  cr_assert_eq(c.sum, 1000 + 0 + 1 + 2);
  cr_assert_eq(duet__fiber_busy(c.f), 0);
  /* the next task starts on the same fiber, and one without waits finishes at once */
  counter_t d = {c.f, 0, 0, 0};
  cr_assert_eq(duet__fiber_start(c.f, count_task, &d), 1);
  cr_assert_eq(d.sum, 1000);
  duet__fiber_destroy(c.f);
}

/* The progress thread resumes a task that the caller's thread started (and
 * either may resume it next): a task moves between threads at its
 * suspensions, its locals intact, and returns to the thread that resumed
 * it. */
typedef struct {
  counter_t *c;
  int done;
  pthread_t on; /* the thread the resume returned to */
} resumer_t;

static void *resume_once(void *arg) {
  resumer_t *r = arg;
  r->done = duet__fiber_resume(r->c->f);
  r->on = pthread_self();
  return NULL;
}

Test(fiber, task_moves_between_threads) {
  counter_t c = {NULL, 4, 0, 0};
  cr_assert_eq(duet__fiber_create(&c.f, STACK), DUET_SUCCESS);
  cr_assert_eq(duet__fiber_start(c.f, count_task, &c), 0);
  for (int step = 2; step <= 5; step++) {
    resumer_t r = {&c, -1, 0};
    pthread_t t;
    if (step % 2 == 0) { /* another thread, then this one */
      cr_assert_eq(pthread_create(&t, NULL, resume_once, &r), 0);
      cr_assert_eq(pthread_join(t, NULL), 0);
      cr_assert(pthread_equal(r.on, t), "the resume returned to the thread that made it");
    } else {
      resume_once(&r);
      cr_assert(pthread_equal(r.on, pthread_self()));
    }
    cr_assert_eq(r.done, step == 5, "step %d", step);
    if (step < 5)
      cr_assert_eq(c.seen, step);
  }
  cr_assert_eq(c.sum, 1000 + 0 + 1 + 2 + 3);
  duet__fiber_destroy(c.f);
}

typedef struct {
  duet__fiber_t *f;
  int task_mode_before, task_mode_after;
  int task_rounds_down; /* a conversion (SSE on x86-64: mxcsr) rounded down */
} fp_t;

static volatile double third = 1.0 / 3.0;

static void fp_task(void *arg) {
  fp_t *p = arg;
  fesetround(FE_DOWNWARD);
  p->task_mode_before = fegetround();
  duet__fiber_suspend(p->f);
  p->task_mode_after = fegetround();
  p->task_rounds_down = (float)third < third;
  fesetround(FE_TONEAREST);
}

Test(fiber, each_side_keeps_its_rounding_mode) {
  fp_t p = {NULL, -1, -1, 0};
  cr_assert_eq(duet__fiber_create(&p.f, STACK), DUET_SUCCESS);
  fesetround(FE_UPWARD);
  cr_assert_eq(duet__fiber_start(p.f, fp_task, &p), 0);
  cr_assert_eq(fegetround(), FE_UPWARD, "the task's rounding mode leaked to the caller");
  cr_assert((float)third > third, "a conversion in the caller no longer rounds up");
  fesetround(FE_TOWARDZERO);
  cr_assert_eq(duet__fiber_resume(p.f), 1);
  cr_assert_eq(p.task_mode_before, FE_DOWNWARD);
  cr_assert_eq(p.task_mode_after, FE_DOWNWARD, "the caller's rounding mode leaked to the task");
  cr_assert(p.task_rounds_down, "a conversion in the task no longer rounds down");
  cr_assert_eq(fegetround(), FE_TOWARDZERO);
  fesetround(FE_TONEAREST);
  duet__fiber_destroy(p.f);
}

Test(fiber, abandoned_task_leaves_fiber_usable) {
  counter_t c = {NULL, 5, 0, 0};
  cr_assert_eq(duet__fiber_create(&c.f, STACK), DUET_SUCCESS);
  cr_assert_eq(duet__fiber_start(c.f, count_task, &c), 0);
  cr_assert_eq(duet__fiber_resume(c.f), 0);
  duet__fiber_abandon(c.f);
  cr_assert_eq(duet__fiber_busy(c.f), 0);
  counter_t d = {c.f, 2, 0, 0};
  cr_assert_eq(duet__fiber_start(c.f, count_task, &d), 0);
  cr_assert_eq(duet__fiber_resume(c.f), 0);
  cr_assert_eq(duet__fiber_resume(c.f), 1);
  cr_assert_eq(d.sum, 1001);
  cr_assert_eq(c.seen, 2, "the abandoned task ran on");
  duet__fiber_destroy(c.f);
}

typedef struct {
  duet__fiber_t *f;
  int result;
} deep_t;

static void deep_task(void *arg) {
  deep_t *d = arg;
  volatile unsigned char frame[256u << 10];
  memset((void *)frame, 0xA5, sizeof frame);
  duet__fiber_suspend(d->f);
  d->result = frame[0] + frame[sizeof frame - 1];
}

Test(fiber, stack_holds_a_large_frame) {
  deep_t d = {NULL, 0};
  cr_assert_eq(duet__fiber_create(&d.f, STACK), DUET_SUCCESS);
  cr_assert_eq(duet__fiber_start(d.f, deep_task, &d), 0);
  cr_assert_eq(duet__fiber_resume(d.f), 1);
  cr_assert_eq(d.result, 2 * 0xA5);
  duet__fiber_destroy(d.f);
}

/* ---- a non-blocking call on the load/store path whose peer never comes ---- */

typedef struct {
  duet_unique_id_t id;
  int rank;
  int poll_only; /* rank 0 polls duet_test to the end instead of calling duet_wait */
  atomic_int *rank0_done;
  duet_status_t init, post, wait, later;
  int in_progress; /* duet_test calls that said DUET_IN_PROGRESS */
  double waited;   /* seconds in duet_wait */
  char err[512];
} late_arg_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *late_rank(void *p) {
  late_arg_t *a = p;
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  int32_t x[4] = {1, 2, 3, 4}, y[4];
  cfg.upn_provider = "mem";
  cfg.timeout_ms = 1500;
  a->init = duet_comm_init_rank(&c, 2, a->id, a->rank, &cfg);
  if (a->init != DUET_SUCCESS) {
    atomic_store(a->rank0_done, 1);
    return NULL;
  }
  if (a->rank == 0) {
    duet_request_t *req;
    a->post = duet_iallreduce(x, y, 4, DUET_INT32, DUET_SUM, c, &req);
    if (a->post == DUET_SUCCESS) {
      for (int i = 0; i < 100; i++) {
        int done = 1;
        if (duet_test(req, &done) == DUET_IN_PROGRESS && !done)
          a->in_progress++;
      }
      double t0 = now_s();
      if (a->poll_only) {
        int done = 0;
        do
          a->wait = duet_test(req, &done);
        while (!done && a->wait == DUET_IN_PROGRESS && now_s() - t0 < 30);
      } else {
        a->wait = duet_wait(req);
      }
      a->waited = now_s() - t0;
      snprintf(a->err, sizeof(a->err), "%s", duet_last_error(c));
      a->later = duet_allreduce(x, y, 4, DUET_INT32, DUET_SUM, c);
    }
    atomic_store(a->rank0_done, 1);
  } else {
    while (!atomic_load(a->rank0_done)) /* rank 1 never joins the call */
      sched_yield();
  }
  duet_comm_destroy(c); /* rank 1's closing barrier times out too */
  return NULL;
}

static void missing_peer(int poll_only) {
  late_arg_t a[2];
  pthread_t t[2];
  atomic_int rank0_done = 0;
  duet_unique_id_t id;
  cr_assert_eq(duet_get_unique_id(&id), DUET_SUCCESS, "%s", duet_last_error(NULL));
  for (int r = 0; r < 2; r++) {
    memset(&a[r], 0, sizeof(a[r]));
    a[r].id = id;
    a[r].rank = r;
    a[r].poll_only = poll_only;
    a[r].rank0_done = &rank0_done;
    cr_assert_eq(pthread_create(&t[r], NULL, late_rank, &a[r]), 0);
  }
  for (int r = 0; r < 2; r++)
    pthread_join(t[r], NULL);
  cr_assert_eq(a[0].init, DUET_SUCCESS);
  cr_assert_eq(a[1].init, DUET_SUCCESS);
  cr_assert_eq(a[0].post, DUET_SUCCESS, "the post must not wait for the peer");
  cr_assert_eq(a[0].in_progress, 100, "duet_test said done %d times of 100",
               100 - a[0].in_progress);
  cr_assert_eq(a[0].wait, DUET_ERR_TIMEOUT, "duet_wait returned %d: %s", a[0].wait, a[0].err);
  cr_assert(a[0].waited > 0.5 && a[0].waited < 10, "%s took %.2f s (deadline 1.5 s)",
            poll_only ? "polling duet_test" : "duet_wait", a[0].waited);
  cr_assert(strstr(a[0].err, "local rank 1") != NULL, "message does not name the peer: %s",
            a[0].err);
  cr_assert(a[0].later < 0, "a call after the timeout returned %d", a[0].later);
}

Test(mem_queue, missing_peer_times_out_naming_it, .timeout = 60) {
  missing_peer(0);
}

/* The same, completed by polling duet_test only: past the deadline a test
 * fails the call instead of returning DUET_IN_PROGRESS for ever. */
Test(mem_queue, missing_peer_times_out_when_polled, .timeout = 60) {
  missing_peer(1);
}
