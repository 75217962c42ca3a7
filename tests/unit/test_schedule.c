/*
 * Every schedule for p = 1..64, checked without a network: each send has its
 * matching receive of the same size, no deadlock, buffers stay in bounds, and
 * executing all ranks' schedules in memory (in random orders) gives the
 * answer a serial computation gives.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "coll/coll.h"
#include "reduce/reduce.h"
#include "sched_sim.h"

static int32_t in_i32(int r, uint64_t i) { return (int32_t)((r + 1) * 7 + (int)(i % 13) - 20); }

/* Serial reference for int32 (wrapping like the kernels). */
static int32_t ref_i32(int p, uint64_t i, duet_op_t op) {
  uint32_t acc = (uint32_t)in_i32(0, i);
  for (int r = 1; r < p; r++) {
    int32_t v = in_i32(r, i);
    switch (op) {
    case DUET_SUM:
    case DUET_AVG: acc += (uint32_t)v; break;
    case DUET_PROD: acc *= (uint32_t)v; break;
    case DUET_MIN: acc = (int32_t)acc < v ? acc : (uint32_t)v; break;
    case DUET_MAX: acc = (int32_t)acc > v ? acc : (uint32_t)v; break;
    default: break;
    }
  }
  return op == DUET_AVG ? (int32_t)acc / p : (int32_t)acc;
}

static void run_allreduce(duet__coll_build_fn build, const char *name, int p, size_t count,
                          duet_op_t op, int in_place, size_t chunk, unsigned seed) {
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  char err[512] = "";
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.coll = DUET_COLL_ALLREDUCE, .rank = r, .nranks = p, .count = count,
                           .dt = DUET_INT32, .op = op, .dtsize = 4, .chunk_bytes = chunk};
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(build(&a, &rk[r].sched), DUET_SUCCESS, "%s build p=%d rank %d", name, p, r);
    rk[r].recv = malloc(count * 4 + 1);
    rk[r].send = in_place ? rk[r].recv : malloc(count * 4 + 1);
    rk[r].send_bytes = rk[r].recv_bytes = count * 4;
    for (uint64_t i = 0; i < count; i++) {
      int32_t v = in_i32(r, i);
      memcpy(rk[r].send + 4 * i, &v, 4);
    }
    if (!in_place)
      memset(rk[r].recv, 0x5a, count * 4);
  }
  cr_assert_eq(sim_run(rk, p, DUET_INT32, op, seed, err, sizeof(err)), 0,
               "%s p=%d count=%zu op=%d in_place=%d chunk=%zu: %s", name, p, count, op, in_place,
               chunk, err);
  for (int r = 0; r < p; r++) {
    for (uint64_t i = 0; i < count; i++) {
      int32_t got;
      memcpy(&got, rk[r].recv + 4 * i, 4);
      cr_assert_eq(got, ref_i32(p, i, op), "%s p=%d count=%zu op=%d rank %d elem %llu", name, p,
                   count, op, r, (unsigned long long)i);
      if (!in_place) { /* the send buffer is never written */
        int32_t s;
        memcpy(&s, rk[r].send + 4 * i, 4);
        cr_assert_eq(s, in_i32(r, i), "%s wrote its send buffer", name);
      }
    }
    if (!in_place)
      free(rk[r].send);
    free(rk[r].recv);
    duet__sched_fini(&rk[r].sched);
  }
  free(rk);
}

static void sweep_allreduce(duet__coll_build_fn build, const char *name) {
  for (int p = 1; p <= 64; p++) {
    size_t counts[] = {0, 1, 7, (size_t)p * 3 + 1, 1000};
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
      run_allreduce(build, name, p, counts[k], DUET_SUM, (int)(k % 2), 1 << 20, 0);
      run_allreduce(build, name, p, counts[k], DUET_SUM, (int)((k + 1) % 2), 8, (unsigned)p + 1);
    }
  }
  for (int p = 1; p <= 13; p++)
    for (duet_op_t op = DUET_SUM; op <= DUET_AVG; op++)
      for (int ip = 0; ip < 2; ip++)
        for (unsigned seed = 1; seed <= 3; seed++)
          run_allreduce(build, name, p, 37, op, ip, 12, seed);
}

Test(schedule, allreduce_ring) { sweep_allreduce(duet__allreduce_ring_build, "ring"); }
Test(schedule, allreduce_rd) { sweep_allreduce(duet__allreduce_rd_build, "rd"); }

static void run_bcast(int p, int root, size_t count, size_t chunk, unsigned seed) {
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  char err[512] = "";
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.coll = DUET_COLL_BROADCAST, .rank = r, .nranks = p, .root = root,
                           .count = count, .dt = DUET_UINT8, .op = DUET_SUM, .dtsize = 1,
                           .chunk_bytes = chunk};
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(duet__broadcast_binomial_build(&a, &rk[r].sched), DUET_SUCCESS);
    rk[r].recv = malloc(count + 1);
    rk[r].send = (r == root && seed % 2) ? rk[r].recv : malloc(count + 1);
    rk[r].send_bytes = rk[r].recv_bytes = count;
    memset(rk[r].recv, 0xee, count);
    for (size_t i = 0; i < count; i++)
      rk[r].send[i] = r == root ? (uint8_t)(i * 31 + 7) : 0xcc;
  }
  cr_assert_eq(sim_run(rk, p, DUET_UINT8, DUET_SUM, seed, err, sizeof(err)), 0,
               "bcast p=%d root=%d count=%zu: %s", p, root, count, err);
  for (int r = 0; r < p; r++) {
    for (size_t i = 0; i < count; i++)
      cr_assert_eq(rk[r].recv[i], (uint8_t)(i * 31 + 7), "bcast p=%d root=%d rank %d elem %zu",
                   p, root, r, i);
    if (rk[r].send != rk[r].recv)
      free(rk[r].send);
    free(rk[r].recv);
    duet__sched_fini(&rk[r].sched);
  }
  free(rk);
}

Test(schedule, broadcast_binomial) {
  for (int p = 1; p <= 64; p++) {
    int roots[] = {0, p - 1, p / 2};
    for (int k = 0; k < 3; k++) {
      run_bcast(p, roots[k], 0, 4096, 1);
      run_bcast(p, roots[k], 1, 4096, 2);
      run_bcast(p, roots[k], 1000, 64, (unsigned)(3 + k));
    }
  }
}

Test(schedule, barrier_dissemination) {
  for (int p = 1; p <= 64; p++) {
    for (unsigned seed = 0; seed < 3; seed++) {
      sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
      char err[512] = "";
      for (int r = 0; r < p; r++) {
        duet__coll_args_t a = {.coll = DUET_COLL_BARRIER, .rank = r, .nranks = p, .dtsize = 1};
        duet__sched_init(&rk[r].sched);
        cr_assert_eq(duet__barrier_dissem_build(&a, &rk[r].sched), DUET_SUCCESS);
      }
      cr_assert_eq(sim_run(rk, p, DUET_UINT8, DUET_SUM, seed, err, sizeof(err)), 0,
                   "barrier p=%d: %s", p, err);
      /* The barrier property: when a rank leaves, it has heard from all. */
      for (int r = 0; r < p; r++) {
        uint64_t all = p == 64 ? ~0ull : (1ull << p) - 1;
        cr_assert_eq(rk[r].heard, all, "barrier p=%d: rank %d left without hearing from all", p,
                     r);
        duet__sched_fini(&rk[r].sched);
      }
      free(rk);
    }
  }
}

/* The checker itself must catch broken schedules. */
Test(schedule, simulator_catches_errors) {
  sim_rank_t rk[2];
  char err[512];
  uint8_t buf[2][8];
  memset(rk, 0, sizeof(rk));
  for (int r = 0; r < 2; r++) {
    duet__sched_init(&rk[r].sched);
    rk[r].send = rk[r].recv = buf[r];
    rk[r].send_bytes = rk[r].recv_bytes = 8;
  }
  /* Both ranks receive first and never send: deadlock. */
  duet__sched_recv(&rk[0].sched, 1, 0, duet__ref(DUET_BUF_RECV, 0), 8, NULL, 0);
  duet__sched_recv(&rk[1].sched, 0, 0, duet__ref(DUET_BUF_RECV, 0), 8, NULL, 0);
  duet__sched_finalize(&rk[0].sched);
  duet__sched_finalize(&rk[1].sched);
  cr_assert_eq(sim_run(rk, 2, DUET_UINT8, DUET_SUM, 0, err, sizeof(err)), -1);
  cr_assert(strstr(err, "deadlock") != NULL, "%s", err);
  for (int r = 0; r < 2; r++) {
    duet__sched_fini(&rk[r].sched);
    duet__sched_init(&rk[r].sched);
  }
  /* Sizes differ between send and receive. */
  duet__sched_send(&rk[0].sched, 1, 0, duet__ref(DUET_BUF_SEND, 0), 8, NULL, 0);
  duet__sched_recv(&rk[1].sched, 0, 0, duet__ref(DUET_BUF_RECV, 0), 4, NULL, 0);
  duet__sched_finalize(&rk[0].sched);
  duet__sched_finalize(&rk[1].sched);
  cr_assert_eq(sim_run(rk, 2, DUET_UINT8, DUET_SUM, 0, err, sizeof(err)), -1);
  for (int r = 0; r < 2; r++) {
    duet__sched_fini(&rk[r].sched);
    duet__sched_init(&rk[r].sched);
  }
  /* Out of bounds. */
  duet__sched_send(&rk[0].sched, 1, 0, duet__ref(DUET_BUF_SEND, 4), 8, NULL, 0);
  duet__sched_recv(&rk[1].sched, 0, 0, duet__ref(DUET_BUF_RECV, 0), 8, NULL, 0);
  duet__sched_finalize(&rk[0].sched);
  duet__sched_finalize(&rk[1].sched);
  cr_assert_eq(sim_run(rk, 2, DUET_UINT8, DUET_SUM, 0, err, sizeof(err)), -1);
  cr_assert(strstr(err, "outside") != NULL, "%s", err);
  for (int r = 0; r < 2; r++)
    duet__sched_fini(&rk[r].sched);
}
