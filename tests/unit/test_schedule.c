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
                           .dt = DUET_INT32, .op = op, .dtsize = 4, .chunk_bytes = chunk,
                           .in_place = in_place};
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(build(&a, &rk[r].sched), DUET_SUCCESS, "%s build p=%d rank %d", name, p, r);
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
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
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
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
        cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
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

/* ---- hierarchical algorithms over super-node layouts ---- */

typedef struct layout_case {
  const char *name;
  int p;
  int32_t sn[12];
} layout_case_t;

static const layout_case_t layouts[] = {
    {"1x4", 4, {0, 0, 0, 0}},          {"2x2", 4, {0, 0, 1, 1}},
    {"2x3", 6, {0, 0, 0, 1, 1, 1}},    {"3+1", 4, {0, 0, 0, 1}},
    {"4x1", 4, {0, 1, 2, 3}},          {"3x1", 3, {0, 1, 2}},
    {"2x4", 8, {0, 0, 0, 0, 1, 1, 1, 1}}, {"3+2+1", 6, {0, 0, 0, 1, 1, 2}},
    {"2x3 interleaved", 6, {0, 1, 0, 1, 0, 1}}, {"1", 1, {0}},
    {"3x3", 9, {0, 0, 0, 1, 1, 1, 2, 2, 2}},
};
#define NLAYOUTS (sizeof(layouts) / sizeof(layouts[0]))

/* K_RS_ALIAS: MPI's in place (recvbuf == sendbuf); K_RS_NCCL: NCCL's
 * (recvbuf is the rank's own block of sendbuf) */
enum { K_ALLREDUCE, K_ALLGATHER, K_RS, K_RS_ALIAS, K_RS_NCCL, K_REDUCE, K_BCAST };

/* Build, run and check one collective on one layout. count: elements per
 * rank block (allgather / reduce_scatter) or of the vector. Returns the
 * largest HPN byte count any rank sends, and checks HPN peers share the
 * sender's local index when rail_only. */
static uint64_t run_hier(const layout_case_t *lc, int kind, duet__coll_build_fn build,
                         size_t count, duet_op_t op, int root, int in_place, size_t chunk,
                         unsigned seed, int rail_only) {
  const int p = lc->p;
  duet__layout_t lay;
  int32_t *mem;
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  char err[512] = "";
  uint64_t hpn_max = 0;
  const int rs = kind == K_RS || kind == K_RS_ALIAS || kind == K_RS_NCCL;
  size_t sendn = rs ? count * (size_t)p : count;
  size_t recvn = kind == K_ALLGATHER ? count * (size_t)p : count;
  uint8_t **own = calloc((size_t)p, sizeof(uint8_t *));

  cr_assert_eq(duet__layout_build(&lay, p, lc->sn, &mem), DUET_SUCCESS);
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.rank = r, .nranks = p, .root = root, .count = count,
                           .dt = DUET_INT32, .op = op, .dtsize = 4, .chunk_bytes = chunk,
                           .rd_max_bytes = 64, .layout = &lay};
    a.out_aliases_in = kind == K_RS_ALIAS && r != 0;
    a.in_place = in_place && kind == K_ALLREDUCE; /* as duet_allreduce sets it */
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(build(&a, &rk[r].sched), DUET_SUCCESS, "%s: build rank %d", lc->name, r);
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
    /* buffers: one allocation; in place shares it as the collective says */
    own[r] = malloc((sendn + recvn) * 4 + 8);
    rk[r].recv = own[r];
    rk[r].recv_bytes = recvn * 4;
    rk[r].send = own[r] + recvn * 4;
    rk[r].send_bytes = sendn * 4;
    if (in_place) {
      if (kind == K_ALLGATHER)
        rk[r].send = rk[r].recv + (size_t)r * count * 4;
      else if (kind == K_RS_ALIAS)
        rk[r].recv = rk[r].send;
      else if (kind == K_RS_NCCL)
        rk[r].recv = rk[r].send + (size_t)r * count * 4;
      else if (kind != K_REDUCE || r == root)
        rk[r].send = rk[r].recv;
    }
    memset(rk[r].recv, 0x5a, recvn * 4);
    for (size_t i = 0; i < sendn; i++) {
      int32_t v = in_i32(r, i);
      if (kind == K_BCAST)
        v = r == root ? (int32_t)(i * 3 + 1) : -7;
      memcpy(rk[r].send + 4 * i, &v, 4);
    }
    /* HPN traffic of this rank: sends to other super-nodes */
    uint64_t hpn = 0;
    for (uint32_t i = 0; i < rk[r].sched.nsteps; i++) {
      duet__step_t *st = &rk[r].sched.steps[i];
      if (st->kind != DUET_STEP_SEND || lc->sn[st->peer] == lc->sn[r])
        continue;
      hpn += st->len;
      if (rail_only && lay.uniform) /* other layouts fall back to flat paths */
        cr_assert_eq(lay.local_rank[st->peer], lay.local_rank[r],
                     "%s: rank %d sends to rank %d on the HPN off its rail", lc->name, r,
                     st->peer);
    }
    if (hpn > hpn_max)
      hpn_max = hpn;
  }
  cr_assert_eq(sim_run(rk, p, DUET_INT32, op, seed, err, sizeof(err)), 0, "%s kind %d: %s",
               lc->name, kind, err);
  for (int r = 0; r < p; r++) {
    for (size_t i = 0; i < recvn; i++) {
      int32_t got, want;
      memcpy(&got, rk[r].recv + 4 * i, 4);
      switch (kind) {
      case K_ALLREDUCE: want = ref_i32(p, i, op); break;
      case K_ALLGATHER: want = in_i32((int)(i / count), i % count); break;
      case K_RS:
      case K_RS_ALIAS:
      case K_RS_NCCL: want = ref_i32(p, (size_t)r * count + i, op); break;
      case K_REDUCE:
        if (r != root) {
          uint32_t bits;
          memcpy(&bits, &got, 4);
          cr_assert_eq(bits, 0x5a5a5a5au, "%s reduce: non-root %d recvbuf written", lc->name, r);
          continue;
        }
        want = ref_i32(p, i, op);
        break;
      default: want = (int32_t)(i * 3 + 1); break;
      }
      cr_assert_eq(got, want, "%s kind %d op %d root %d in_place %d count %zu: rank %d elem %zu",
                   lc->name, kind, op, root, in_place, count, r, i);
    }
    free(own[r]);
    duet__sched_fini(&rk[r].sched);
  }
  free(own);
  free(rk);
  free(mem);
  return hpn_max;
}

Test(hier, allreduce_every_layout) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    size_t counts[] = {0, 1, 7, 100, 1000};
    for (size_t c = 0; c < 5; c++)
      for (int ip = 0; ip < 2; ip++)
        run_hier(lc, K_ALLREDUCE, duet__allreduce_hier_build, counts[c], c % 2 ? DUET_AVG : DUET_SUM,
                 0, ip, c == 4 ? 64 : 1 << 20, (unsigned)(c + ip), 0);
    run_hier(lc, K_ALLREDUCE, duet__allreduce_hier_build, 50, DUET_MAX, 0, 0, 16, 9, 0);
  }
}

/* The mission's claim: with L ranks in each of N super-nodes, a hierarchical
 * allreduce of S bytes sends at most 2 (S/L) (N-1)/N bytes per rank over the
 * HPN (chunk rounding aside), only to the same local index, and none with one
 * super-node. */
Test(hier, allreduce_hpn_traffic) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    int nsn = 0, L, size[12] = {0}, even = 1;
    for (int r = 0; r < lc->p; r++) {
      nsn = lc->sn[r] + 1 > nsn ? lc->sn[r] + 1 : nsn;
      size[lc->sn[r]]++;
    }
    L = size[0];
    for (int q = 1; q < nsn; q++)
      even &= size[q] == L;
    if (!even)
      continue; /* uneven: the slower path makes no such promise */
    size_t count = 4096 * (size_t)lc->p; /* S = 16 KiB x p */
    uint64_t S = count * 4;
    uint64_t hpn = run_hier(lc, K_ALLREDUCE, duet__allreduce_hier_build, count, DUET_SUM, 0, 0,
                            1 << 20, 3, 1);
    uint64_t bound = 2 * (S / (uint64_t)L) * (uint64_t)(nsn - 1) / (uint64_t)nsn;
    cr_assert_leq(hpn, bound + 64, "%s: HPN bytes per rank %llu > bound %llu", lc->name,
                  (unsigned long long)hpn, (unsigned long long)bound);
    if (nsn == 1)
      cr_assert_eq(hpn, 0);
  }
}

Test(hier, allgather_and_reduce_scatter) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    size_t counts[] = {0, 1, 5, 33};
    for (size_t c = 0; c < 4; c++)
      for (int ip = 0; ip < 2; ip++) {
        run_hier(lc, K_ALLGATHER, duet__allgather_ring_build, counts[c], DUET_SUM, 0, ip, 8,
                 (unsigned)c, 0);
        run_hier(lc, K_ALLGATHER, duet__allgather_hier_build, counts[c], DUET_SUM, 0, ip, 8,
                 (unsigned)c + 1, 1);
        run_hier(lc, K_RS, duet__reduce_scatter_ring_build, counts[c], c % 2 ? DUET_AVG : DUET_SUM,
                 0, 0, 8, (unsigned)c, 0);
        run_hier(lc, K_RS, duet__reduce_scatter_hier_build, counts[c], DUET_SUM, 0, 0, 12,
                 (unsigned)c + 2, 1);
        run_hier(lc, K_RS, duet__reduce_scatter_rd_build, counts[c], c % 2 ? DUET_SUM : DUET_AVG,
                 0, 0, 8, (unsigned)c + 5, 0);
        run_hier(lc, K_RS_ALIAS, duet__reduce_scatter_rd_build, counts[c], DUET_MAX, 0, 1, 8,
                 (unsigned)c + 6, 0);
        run_hier(lc, K_RS_ALIAS, duet__reduce_scatter_ring_build, counts[c], DUET_SUM, 0, 1,
                 1 << 20, (unsigned)c + 3, 0);
        run_hier(lc, K_RS_ALIAS, duet__reduce_scatter_hier_build, counts[c], DUET_MIN, 0, 1, 8,
                 (unsigned)c + 4, 1);
        run_hier(lc, K_RS, duet__reduce_scatter_pairwise_build, counts[c],
                 c % 2 ? DUET_AVG : DUET_SUM, 0, 0, 8, (unsigned)c + 7, 0);
        run_hier(lc, K_RS, duet__reduce_scatter_pairwise_build, counts[c], DUET_PROD, 0, 0,
                 1 << 20, (unsigned)c + 8, 0);
        run_hier(lc, K_RS_ALIAS, duet__reduce_scatter_pairwise_build, counts[c], DUET_MAX, 0, 1, 8,
                 (unsigned)c + 9, 0);
        run_hier(lc, K_RS_NCCL, duet__reduce_scatter_pairwise_build, counts[c], DUET_SUM, 0, 1, 8,
                 (unsigned)c + 10, 0);
        run_hier(lc, K_RS_NCCL, duet__reduce_scatter_ring_build, counts[c], DUET_MIN, 0, 1, 8,
                 (unsigned)c + 11, 0);
        run_hier(lc, K_RS_NCCL, duet__reduce_scatter_rd_build, counts[c], DUET_SUM, 0, 1, 8,
                 (unsigned)c + 12, 0);
        run_hier(lc, K_RS_NCCL, duet__reduce_scatter_hier_build, counts[c], DUET_MAX, 0, 1, 8,
                 (unsigned)c + 13, 1);
      }
  }
}

Test(hier, reduce_and_broadcast_every_root) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    for (int root = 0; root < lc->p; root++)
      for (int ip = 0; ip < 2; ip++) {
        run_hier(lc, K_REDUCE, duet__reduce_binomial_build, 37, ip ? DUET_AVG : DUET_SUM, root,
                 ip, 16, (unsigned)root, 0);
        run_hier(lc, K_REDUCE, duet__reduce_hier_build, 37, DUET_SUM, root, ip, 16,
                 (unsigned)root + 1, 0);
        run_hier(lc, K_BCAST, duet__broadcast_binomial_build, 37, DUET_SUM, root, ip, 16,
                 (unsigned)root, 0);
        run_hier(lc, K_BCAST, duet__broadcast_hier_build, 37, DUET_SUM, root, ip, 16,
                 (unsigned)root + 2, 0);
      }
  }
}

Test(hier, barrier_every_layout) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    const int p = lc->p;
    duet__layout_t lay;
    int32_t *mem;
    for (unsigned seed = 0; seed < 4; seed++) {
      sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
      char err[512] = "";
      cr_assert_eq(duet__layout_build(&lay, p, lc->sn, &mem), DUET_SUCCESS);
      for (int r = 0; r < p; r++) {
        duet__coll_args_t a = {.rank = r, .nranks = p, .dtsize = 1, .layout = &lay};
        duet__sched_init(&rk[r].sched);
        cr_assert_eq(duet__barrier_hier_build(&a, &rk[r].sched), DUET_SUCCESS);
        cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
      }
      cr_assert_eq(sim_run(rk, p, DUET_UINT8, DUET_SUM, seed, err, sizeof(err)), 0, "%s: %s",
                   lc->name, err);
      for (int r = 0; r < p; r++) {
        cr_assert_eq(rk[r].heard, (1ull << p) - 1, "%s: rank %d left early", lc->name, r);
        duet__sched_fini(&rk[r].sched);
      }
      free(rk);
      free(mem);
    }
  }
}

/* ---- all-to-all ---- */

static int32_t a2a_val(int src, int dst, size_t i) { return src * 100000 + dst * 1000 + (int)i; }

/* The hierarchical alltoallv's rail counts, as the library makes them: each
 * rank packs its send counts (duet__alltoallv_counts_pack), then the
 * exchange inside the super-node (duet__alltoall_local_build) runs in the
 * simulator. Checked against the count matrix: rank (sn, j) must hold, at
 * i N + d, what local rank i sends rank (d, j). rail: p counts per rank. */
static void a2a_rail_counts(const layout_case_t *lc, const duet__layout_t *lay,
                            const size_t *sc, const uint64_t *matrix, uint64_t *rail) {
  const int p = lc->p, N = lay->nsupernodes, L = lay->sn_size[0];
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  uint64_t *row = calloc((size_t)p * (size_t)p, sizeof(uint64_t));
  char err[512] = "";
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.coll = DUET_COLL_ALLTOALL, .rank = r, .nranks = p,
                           .count = (size_t)N, .dt = DUET_UINT64, .dtsize = 8, .layout = lay};
    a.scounts = sc + (size_t)r * (size_t)p;
    duet__alltoallv_counts_pack(&a, row + (size_t)r * (size_t)p);
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(duet__alltoall_local_build(&a, &rk[r].sched), DUET_SUCCESS);
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
    rk[r].send = (uint8_t *)(row + (size_t)r * (size_t)p);
    rk[r].recv = (uint8_t *)(rail + (size_t)r * (size_t)p);
    rk[r].send_bytes = rk[r].recv_bytes = (uint64_t)p * 8;
    for (uint32_t i = 0; i < rk[r].sched.nsteps; i++) /* only the UPN */
      if (rk[r].sched.steps[i].kind == DUET_STEP_SEND)
        cr_assert_eq(lay->supernode[rk[r].sched.steps[i].peer], lay->supernode[r],
                     "%s: rank %d sends counts across super-nodes", lc->name, r);
  }
  cr_assert_eq(sim_run(rk, p, DUET_UINT64, DUET_SUM, 3, err, sizeof(err)), 0, "%s counts: %s",
               lc->name, err);
  for (int r = 0; r < p; r++) {
    const int sn = lay->supernode[r], j = lay->local_rank[r];
    for (int i = 0; i < L; i++)
      for (int d = 0; d < N; d++) {
        int src = lay->members[lay->sn_first[sn] + i], dst = lay->members[lay->sn_first[d] + j];
        cr_assert_eq(rail[(size_t)r * (size_t)p + (size_t)i * (size_t)N + (size_t)d],
                     matrix[(size_t)src * (size_t)p + (size_t)dst],
                     "%s: rank %d's count from local %d for super-node %d", lc->name, r, i, d);
      }
    duet__sched_fini(&rk[r].sched);
  }
  free(row);
  free(rk);
}

/* alltoall (counts == NULL) or alltoallv with counts[src*p+dst] and packed
 * displacements leaving a gap of one element between blocks. */
static uint64_t run_a2a(const layout_case_t *lc, duet__coll_build_fn build, size_t count,
                        const size_t *counts, int in_place, unsigned seed, uint64_t *hpn_msgs) {
  const int p = lc->p;
  duet__layout_t lay;
  int32_t *mem;
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  size_t *sc = calloc((size_t)p * (size_t)p, sizeof(size_t)), *sd = calloc((size_t)p * (size_t)p, sizeof(size_t));
  size_t *rc = calloc((size_t)p * (size_t)p, sizeof(size_t)), *rd = calloc((size_t)p * (size_t)p, sizeof(size_t));
  size_t *stot = calloc((size_t)p, sizeof(size_t)), *rtot = calloc((size_t)p, sizeof(size_t));
  uint8_t **sbuf = calloc((size_t)p, sizeof(uint8_t *));
  char err[512] = "";
  uint64_t hpn_max = 0;

  uint64_t *matrix = calloc((size_t)p * (size_t)p, sizeof(uint64_t));
  uint64_t *rail = calloc((size_t)p * (size_t)p, sizeof(uint64_t));
  *hpn_msgs = 0;
  cr_assert_eq(duet__layout_build(&lay, p, lc->sn, &mem), DUET_SUCCESS);
  for (int r = 0; r < p; r++)
    for (int q = 0; q < p; q++) {
      size_t c = counts ? counts[(size_t)r * (size_t)p + (size_t)q] : count;
      size_t cin = counts ? counts[(size_t)q * (size_t)p + (size_t)r] : count;
      sc[(size_t)r * (size_t)p + (size_t)q] = c;
      sd[(size_t)r * (size_t)p + (size_t)q] = stot[r];
      stot[r] += c + (counts ? 1 : 0);
      rc[(size_t)r * (size_t)p + (size_t)q] = cin;
      rd[(size_t)r * (size_t)p + (size_t)q] = rtot[r];
      rtot[r] += cin + (counts ? 1 : 0);
      matrix[(size_t)r * (size_t)p + (size_t)q] = c;
    }
  if (counts != NULL && lay.uniform)
    a2a_rail_counts(lc, &lay, sc, matrix, rail);
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.rank = r, .nranks = p, .count = count, .dt = DUET_INT32,
                           .op = DUET_SUM, .dtsize = 4, .chunk_bytes = 64, .layout = &lay,
                           .in_place = in_place};
    a.scounts = sc + (size_t)r * (size_t)p;
    a.sdispls = sd + (size_t)r * (size_t)p;
    a.rcounts = rc + (size_t)r * (size_t)p;
    a.rdispls = rd + (size_t)r * (size_t)p;
    a.rail_counts = lay.uniform ? rail + (size_t)r * (size_t)p : NULL;
    duet__sched_init(&rk[r].sched);
    cr_assert_eq(build(&a, &rk[r].sched), DUET_SUCCESS);
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
    rk[r].recv = malloc(rtot[r] * 4 + 4);
    rk[r].recv_bytes = rtot[r] * 4;
    memset(rk[r].recv, 0x5a, rtot[r] * 4);
    sbuf[r] = in_place ? rk[r].recv : malloc(stot[r] * 4 + 4);
    rk[r].send = sbuf[r];
    rk[r].send_bytes = stot[r] * 4;
    for (int q = 0; q < p; q++)
      for (size_t i = 0; i < sc[(size_t)r * (size_t)p + (size_t)q]; i++) {
        int32_t v = a2a_val(r, q, i);
        memcpy(sbuf[r] + (sd[(size_t)r * (size_t)p + (size_t)q] + i) * 4, &v, 4);
      }
    uint64_t hpn = 0, msgs = 0;
    for (uint32_t i = 0; i < rk[r].sched.nsteps; i++) {
      duet__step_t *st = &rk[r].sched.steps[i];
      if (st->kind == DUET_STEP_SEND && lc->sn[st->peer] != lc->sn[r]) {
        hpn += st->len;
        msgs++;
      }
    }
    hpn_max = hpn > hpn_max ? hpn : hpn_max;
    *hpn_msgs = msgs > *hpn_msgs ? msgs : *hpn_msgs;
  }
  cr_assert_eq(sim_run(rk, p, DUET_INT32, DUET_SUM, seed, err, sizeof(err)), 0, "%s a2a: %s",
               lc->name, err);
  for (int r = 0; r < p; r++) {
    for (int q = 0; q < p; q++) {
      size_t c = rc[(size_t)r * (size_t)p + (size_t)q], off = rd[(size_t)r * (size_t)p + (size_t)q];
      for (size_t i = 0; i < c; i++) {
        int32_t got;
        memcpy(&got, rk[r].recv + (off + i) * 4, 4);
        cr_assert_eq(got, a2a_val(q, r, i), "%s a2a count %zu in_place %d: rank %d from %d elem %zu",
                     lc->name, count, in_place, r, q, i);
      }
      if (counts) { /* the gap after each block stays untouched */
        uint32_t bits;
        memcpy(&bits, rk[r].recv + (off + c) * 4, 4);
        cr_assert_eq(bits, 0x5a5a5a5au, "%s alltoallv: gap written", lc->name);
      }
    }
    if (!in_place)
      free(sbuf[r]);
    free(rk[r].recv);
    duet__sched_fini(&rk[r].sched);
  }
  free(rk);
  free(sbuf);
  free(sc);
  free(sd);
  free(rc);
  free(rd);
  free(stot);
  free(rtot);
  free(matrix);
  free(rail);
  free(mem);
  return hpn_max;
}

Test(alltoall, every_algorithm_and_layout) {
  duet__coll_build_fn algos[] = {duet__alltoall_pairwise_build, duet__alltoall_bruck_build,
                                 duet__alltoall_hier_build};
  uint64_t msgs;
  for (size_t k = 0; k < NLAYOUTS; k++)
    for (int al = 0; al < 3; al++)
      for (size_t count = 0; count < 4; count++)
        for (int ip = 0; ip < 2; ip++)
          run_a2a(&layouts[k], algos[al], count * 3, NULL, ip, (unsigned)(count + ip + k), &msgs);
  /* every p up to 12 on one super-node */
  for (int p = 1; p <= 12; p++) {
    layout_case_t lc = {"flat", p, {0}};
    for (int al = 0; al < 2; al++)
      run_a2a(&lc, algos[al], 2, NULL, al, (unsigned)p, &msgs);
  }
}

/* Hierarchical: N-1 HPN messages per rank, each with L blocks. */
Test(alltoall, hier_hpn_messages) {
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    duet__layout_t lay;
    int32_t *mem;
    uint64_t msgs, bytes;
    cr_assert_eq(duet__layout_build(&lay, lc->p, lc->sn, &mem), DUET_SUCCESS);
    if (lay.uniform && lay.sn_size[0] > 1) {
      int N = lay.nsupernodes, L = lay.sn_size[0];
      bytes = run_a2a(lc, duet__alltoall_hier_build, 5, NULL, 0, 1, &msgs);
      cr_assert_eq(msgs, (uint64_t)(N - 1), "%s: %llu HPN messages per rank", lc->name,
                   (unsigned long long)msgs);
      cr_assert_eq(bytes, (uint64_t)(N - 1) * (uint64_t)L * 5 * 4, "%s: HPN bytes", lc->name);
    }
    free(mem);
  }
}

Test(alltoall, alltoallv_random_and_skewed) {
  uint64_t msgs;
  for (size_t k = 0; k < NLAYOUTS; k++) {
    const layout_case_t *lc = &layouts[k];
    const int p = lc->p;
    size_t *counts = malloc(sizeof(size_t) * (size_t)p * (size_t)p);
    for (unsigned seed = 0; seed < 3; seed++) {
      srand(seed + 7);
      for (int i = 0; i < p * p; i++) /* random with zeros */
        counts[i] = (size_t)(rand() % 4 == 0 ? 0 : rand() % 9);
      run_a2a(lc, duet__alltoallv_pairwise_build, 0, counts, 0, seed, &msgs);
      run_a2a(lc, duet__alltoallv_hier_build, 0, counts, 0, seed + 5, &msgs);
      for (int r = 0; r < p; r++) /* skewed: destination 0 gets most, the last nothing */
        for (int q = 0; q < p; q++)
          counts[(size_t)r * (size_t)p + (size_t)q] = q == 0 ? 40 : q == p - 1 ? 0 : (size_t)(q % 3);
      run_a2a(lc, duet__alltoallv_pairwise_build, 0, counts, 0, seed + 1, &msgs);
      uint64_t bytes = run_a2a(lc, duet__alltoallv_hier_build, 0, counts, 0, seed + 2, &msgs);
      (void)bytes;
      duet__layout_t lay;
      int32_t *mem;
      cr_assert_eq(duet__layout_build(&lay, p, lc->sn, &mem), DUET_SUCCESS);
      if (lay.uniform && lay.sn_size[0] > 1) /* N-1 HPN messages at most */
        cr_assert_leq(msgs, (uint64_t)(lay.nsupernodes - 1), "%s alltoallv hier: %llu messages",
                      lc->name, (unsigned long long)msgs);
      free(mem);
    }
    free(counts);
  }
}

/* Message ids past a phase's range (or a tag's) would give two messages of
 * one call the same tag: the schedule refuses to be built instead. */
Test(schedule, message_ids_out_of_range_refused) {
  const duet__ref_t at = {DUET_BUF_SEND, 0};
  duet__sched_t s;
  duet__view_t v;

  /* the last id of a phase is fine, the next one is not */
  duet__sched_init(&s);
  duet__sched_send(&s, 1, DUET_PHASE_MSGS - 1, at, 4, NULL, 0);
  cr_expect_eq(s.bad_msg, 0u);
  duet__sched_send(&s, 1, DUET_PHASE_MSGS, at, 4, NULL, 0);
  cr_expect_eq(s.bad_msg, DUET_PHASE_MSGS + 1);
  cr_expect_eq(duet__sched_finalize(&s), DUET_ERR_UNSUPPORTED);
  duet__sched_fini(&s);

  /* a phase whose base puts an id past what a tag holds */
  duet__sched_init(&s);
  v = s.view;
  v.msg_base = DUET_TAG_MSGS - 2;
  duet__sched_phase(&s, &v);
  duet__sched_recv(&s, 1, 1, at, 4, NULL, 0);
  cr_expect_eq(s.bad_msg, 0u, "id %u is the tag's last", DUET_TAG_MSGS - 1);
  duet__sched_recv(&s, 1, 2, at, 4, NULL, 0);
  cr_expect_neq(s.bad_msg, 0u);
  cr_expect_eq(duet__sched_finalize(&s), DUET_ERR_UNSUPPORTED);
  duet__sched_fini(&s);

  /* every builder stays in range at the sizes the simulator runs */
  duet__coll_args_t a = {.coll = DUET_COLL_ALLREDUCE, .rank = 0, .nranks = 7, .count = 100000,
                         .dt = DUET_INT32, .op = DUET_SUM, .dtsize = 4, .chunk_bytes = 4096};
  duet__sched_init(&s);
  cr_assert_eq(duet__allreduce_ring_build(&a, &s), DUET_SUCCESS);
  cr_expect_eq(s.bad_msg, 0u);
  cr_expect_eq(duet__sched_finalize(&s), DUET_SUCCESS);
  duet__sched_fini(&s);
}
