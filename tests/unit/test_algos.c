/*
 * The algorithms added beside ring / rd / binomial, each checked without a
 * network through the schedule simulator: every rank's schedule is built and
 * finalized, executed in memory in random orders (a send delivers its bytes
 * only when matched, so a missing dependency gives a wrong answer), and the
 * result compared with a serial computation. Out of place the send buffer
 * must come back unchanged, bytes outside the result must keep their canary,
 * and a reduce must not touch a non-root's receive buffer. Some runs shift
 * the builder's SEND / RECV / scratch through a view, as the hierarchy does.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "coll/coll.h"
#include "reduce/reduce.h"
#include "sched_sim.h"

enum { K_ALLREDUCE, K_BCAST, K_REDUCE, K_ALLGATHER };

static const char *kind_name[] = {"allreduce_rabenseifner", "broadcast_chain", "reduce_chain",
                                  "allgather_rd"};

#define CANARY 0xa5
#define PAD 24 /* bytes around every buffer, and the shift of a view */

static int32_t in_i32(int r, uint64_t i) {
  return (int32_t)((r + 1) * 7 + (int)(i % 13) - 20 + (int)(i * 3 % 5) * (r % 3));
}

/* Serial reference for int32 (wrapping like the kernels). */
static int32_t ref_i32(int p, uint64_t i, duet_op_t op) {
  uint32_t acc = (uint32_t)in_i32(0, i);
  for (int r = 1; r < p; r++) {
    int32_t v = in_i32(r, i);
    switch (op) {
    case DUET_SUM:
    case DUET_AVG:
      acc += (uint32_t)v;
      break;
    case DUET_PROD:
      acc *= (uint32_t)v;
      break;
    case DUET_MIN:
      acc = (int32_t)acc < v ? acc : (uint32_t)v;
      break;
    case DUET_MAX:
      acc = (int32_t)acc > v ? acc : (uint32_t)v;
      break;
    default:
      break;
    }
  }
  return op == DUET_AVG ? (int32_t)acc / p : (int32_t)acc;
}

static duet__coll_build_fn builder(int kind) {
  switch (kind) {
  case K_ALLREDUCE:
    return duet__allreduce_rabenseifner_build;
  case K_BCAST:
    return duet__broadcast_chain_build;
  case K_REDUCE:
    return duet__reduce_chain_build;
  default:
    return duet__allgather_rd_build;
  }
}

typedef struct run {
  int kind, p, root;
  size_t count, chunk;
  duet_op_t op;
  int in_place, shifted;
  unsigned seed;
} run_t;

static int32_t get32(const uint8_t *b, uint64_t i) {
  int32_t v;
  memcpy(&v, b + 4 * i, 4);
  return v;
}

static void put32(uint8_t *b, uint64_t i, int32_t v) {
  memcpy(b + 4 * i, &v, 4);
}

static void check_canary(const uint8_t *b, size_t n, const char *what, const run_t *t, int r) {
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(b[i], CANARY, "%s p=%d root=%d count=%zu chunk=%zu ip=%d: rank %d %s byte %zu",
                 kind_name[t->kind], t->p, t->root, t->count, t->chunk, t->in_place, r, what, i);
}

/* Expected element i of rank r's receive buffer. */
static int32_t expect(const run_t *t, uint64_t i) {
  switch (t->kind) {
  case K_ALLREDUCE:
  case K_REDUCE:
    return ref_i32(t->p, i, t->op);
  case K_BCAST:
    return in_i32(t->root, i);
  default:
    return in_i32((int)(i / t->count), i % t->count);
  }
}

static void run(const run_t *t) {
  const int p = t->p;
  const size_t n = t->count;
  const uint64_t sbytes = n * 4, rbytes = t->kind == K_ALLGATHER ? (uint64_t)p * n * 4 : n * 4;
  /* Memory per rank: [PAD | recv | PAD] and, out of place, [PAD | send | PAD]. */
  uint8_t **rmem = calloc((size_t)p, sizeof(*rmem)), **smem = calloc((size_t)p, sizeof(*smem));
  sim_rank_t *rk = calloc((size_t)p, sizeof(*rk));
  char err[512] = "";
  const uint64_t shift = t->shifted ? PAD : 0;

  cr_assert(rmem && smem && rk);
  for (int r = 0; r < p; r++) {
    duet__coll_args_t a = {.coll = DUET_COLL_ALLREDUCE,
                           .rank = r,
                           .nranks = p,
                           .root = t->root,
                           .count = n,
                           .dt = DUET_INT32,
                           .op = t->op,
                           .dtsize = 4,
                           .chunk_bytes = t->chunk};
    /* Whether this rank works in place: the root only for bcast/reduce. */
    int ip = t->in_place && (t->kind == K_ALLREDUCE || t->kind == K_ALLGATHER || r == t->root);
    uint8_t *recv, *send;
    a.in_place = ip && t->kind == K_ALLREDUCE; /* as duet_allreduce sets it */
    duet__sched_init(&rk[r].sched);
    if (t->shifted) {
      /* The builder's buffers start PAD bytes in, its scratch too. */
      rk[r].sched.view.send.off = shift;
      rk[r].sched.view.recv.off = shift;
      rk[r].sched.view.scratch_off = 8;
    }
    cr_assert_eq(builder(t->kind)(&a, &rk[r].sched), DUET_SUCCESS, "%s build p=%d rank %d",
                 kind_name[t->kind], p, r);
    cr_assert_eq(duet__sched_finalize(&rk[r].sched), DUET_SUCCESS);
    cr_assert_lt(rk[r].sched.max_msg, 1u << 20, "%s: message ids too large", kind_name[t->kind]);

    rmem[r] = malloc(rbytes + 2 * PAD + 1);
    memset(rmem[r], CANARY, rbytes + 2 * PAD);
    recv = rmem[r] + PAD;
    if (ip) {
      send = t->kind == K_ALLGATHER ? recv + (uint64_t)r * n * 4 : recv;
    } else {
      smem[r] = malloc(sbytes + 2 * PAD + 1);
      memset(smem[r], CANARY, sbytes + 2 * PAD);
      send = smem[r] + PAD;
    }
    /* Inputs: everyone's for reductions and allgather, the root's for bcast
     * (other ranks' send buffers hold garbage that must not travel). */
    for (uint64_t i = 0; i < n; i++)
      put32(send, i, t->kind == K_BCAST && r != t->root ? (int32_t)0xdeadbeef : in_i32(r, i));
    /* The simulator sees the buffers from where the view's offset 0 is. */
    rk[r].recv = recv - shift;
    rk[r].recv_bytes = rbytes + shift;
    rk[r].send = send - shift;
    rk[r].send_bytes = sbytes + shift;
  }
  cr_assert_eq(sim_run(rk, p, DUET_INT32, t->op, t->seed, err, sizeof(err)), 0,
               "%s p=%d root=%d count=%zu op=%d in_place=%d chunk=%zu seed=%u: %s",
               kind_name[t->kind], p, t->root, n, t->op, t->in_place, t->chunk, t->seed, err);

  for (int r = 0; r < p; r++) {
    uint8_t *recv = rmem[r] + PAD;
    check_canary(rmem[r], PAD, "before recv", t, r);
    check_canary(recv + rbytes, PAD, "after recv", t, r);
    if (t->kind == K_REDUCE && r != t->root) {
      check_canary(recv, rbytes, "non-root recv", t, r);
    } else {
      for (uint64_t i = 0; i < rbytes / 4; i++)
        cr_assert_eq(get32(recv, i), expect(t, i),
                     "%s p=%d root=%d count=%zu op=%d ip=%d chunk=%zu seed=%u: rank %d elem %llu",
                     kind_name[t->kind], p, t->root, n, t->op, t->in_place, t->chunk, t->seed, r,
                     (unsigned long long)i);
    }
    if (smem[r] != NULL) { /* out of place: the send buffer is never written */
      uint8_t *send = smem[r] + PAD;
      check_canary(smem[r], PAD, "before send", t, r);
      check_canary(send + sbytes, PAD, "after send", t, r);
      for (uint64_t i = 0; i < n; i++)
        cr_assert_eq(get32(send, i),
                     t->kind == K_BCAST && r != t->root ? (int32_t)0xdeadbeef : in_i32(r, i),
                     "%s wrote rank %d's send buffer (elem %llu)", kind_name[t->kind], r,
                     (unsigned long long)i);
    }
    free(smem[r]);
    free(rmem[r]);
    duet__sched_fini(&rk[r].sched);
  }
  free(smem);
  free(rmem);
  free(rk);
}

static const size_t counts[] = {0, 1, 7, 100};
static const size_t chunks[] = {8, 1 << 20};

/* p = 1..33 and 64; every count, both chunk sizes, in place and out of
 * place, SUM and AVG, a few seeds; plus MAX and shifted views. */
static void sweep(int kind, int rooted) {
  int ps[35];
  for (int i = 0; i < 33; i++)
    ps[i] = i + 1;
  ps[33] = 64;
  for (int pi = 0; pi < 34; pi++) {
    int p = ps[pi];
    int roots[3] = {0, p - 1, p / 2}, nroots = rooted ? 3 : 1;
    for (int ri = 0; ri < nroots; ri++)
      for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
        if (p == 64 && counts[ci] != 100)
          continue; /* one size at 64 ranks */
        for (size_t ki = 0; ki < 2; ki++)
          for (int ip = 0; ip < 2; ip++) {
            run_t t = {.kind = kind,
                       .p = p,
                       .root = roots[ri],
                       .count = counts[ci],
                       .chunk = chunks[ki],
                       .op = DUET_SUM,
                       .in_place = ip,
                       .seed = (unsigned)(p * 131 + (int)ci * 17 + (int)ki * 5 + ip + ri * 3)};
            run(&t);
            if (kind == K_ALLREDUCE || kind == K_REDUCE) {
              t.op = DUET_AVG;
              t.seed += 1000;
              run(&t);
            }
          }
      }
  }
  /* More random orders on odd sizes, MAX, and buffers shifted by a view. */
  for (int p = 2; p <= 12; p++)
    for (unsigned seed = 1; seed <= 4; seed++) {
      run_t t = {.kind = kind,
                 .p = p,
                 .root = (int)(seed % (unsigned)p),
                 .count = 37,
                 .chunk = 12,
                 .op = seed % 2 ? DUET_MAX : DUET_AVG,
                 .in_place = (int)(seed / 2 % 2),
                 .shifted = 1,
                 .seed = seed * 7919u + (unsigned)p};
      run(&t);
    }
}

Test(algos, allreduce_rabenseifner) {
  sweep(K_ALLREDUCE, 0);
}
Test(algos, broadcast_chain) {
  sweep(K_BCAST, 1);
}
Test(algos, reduce_chain) {
  sweep(K_REDUCE, 1);
}
Test(algos, allgather_rd) {
  sweep(K_ALLGATHER, 0);
}

/* Seed 0 runs the steps in list order: a different interleaving again. */
Test(algos, list_order) {
  for (int kind = K_ALLREDUCE; kind <= K_ALLGATHER; kind++)
    for (int p = 1; p <= 9; p++) {
      run_t t = {.kind = kind,
                 .p = p,
                 .root = p - 1,
                 .count = 100,
                 .chunk = 8,
                 .op = DUET_SUM,
                 .in_place = p % 2,
                 .seed = 0};
      run(&t);
    }
}

/* Scratch stays within the documented bounds. */
Test(algos, scratch_bounds) {
  for (int p = 1; p <= 33; p++)
    for (int r = 0; r < p; r++) {
      duet__coll_args_t a = {.rank = r,
                             .nranks = p,
                             .root = 0,
                             .count = 1000,
                             .dt = DUET_INT32,
                             .op = DUET_SUM,
                             .dtsize = 4,
                             .chunk_bytes = 64};
      duet__sched_t s;
      duet__sched_init(&s);
      cr_assert_eq(duet__allreduce_rabenseifner_build(&a, &s), DUET_SUCCESS);
      cr_assert_leq(s.scratch_bytes, 4000, "rabenseifner p=%d rank %d: %llu", p, r,
                    (unsigned long long)s.scratch_bytes);
      duet__sched_fini(&s);
      duet__sched_init(&s);
      cr_assert_eq(duet__reduce_chain_build(&a, &s), DUET_SUCCESS);
      cr_assert_leq(s.scratch_bytes, 4 * 64, "reduce_chain p=%d rank %d", p, r);
      duet__sched_fini(&s);
      duet__sched_init(&s);
      cr_assert_eq(duet__broadcast_chain_build(&a, &s), DUET_SUCCESS);
      cr_assert_eq(s.scratch_bytes, 0);
      duet__sched_fini(&s);
      duet__sched_init(&s);
      cr_assert_eq(duet__allgather_rd_build(&a, &s), DUET_SUCCESS);
      cr_assert_eq(s.scratch_bytes, 0);
      duet__sched_fini(&s);
    }
}
