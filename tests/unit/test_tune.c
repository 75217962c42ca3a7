/* The tuner: the choice follows the cost model (small messages to recursive
 * doubling, large ones to ring or the hierarchy), moves when the network
 * parameters move, obeys DUET_ALGO, and never picks an algorithm that does
 * not apply. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "tune/tune.h"

#define HUGE_COST 1e29
#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* N super-nodes of L ranks, the default parameters (shm inside, tcp across). */
static duet__tune_shape_t shape(int N, int L) {
  duet__tune_shape_t s = {0};
  s.nranks = N * L;
  s.nsupernodes = N;
  s.local_size = L;
  s.uniform = 1;
  duet__tune_net_defaults("shm", &s.upn_lat_us, &s.upn_bw_gbps);
  duet__tune_net_defaults("tcp", &s.hpn_lat_us, &s.hpn_bw_gbps);
  return s;
}

static int pick(const duet__tune_shape_t *s, int coll, size_t bytes) {
  return duet__tune_pick(s, coll, bytes, NULL).algo;
}

/* The smallest size (on a grid of 2^(1/8) steps from 8 B to 1 GiB) at which
 * the choice is no longer algo; 0 when it never changes. */
static size_t crossover_from(const duet__tune_shape_t *s, int coll, int algo) {
  for (double b = 8; b <= (double)GiB; b *= 1.0905077326652577) {
    if (pick(s, coll, (size_t)b) != algo)
      return (size_t)b;
  }
  return 0;
}

/* The smallest size on the same grid at which the choice is algo; 0: never. */
static size_t crossover_to(const duet__tune_shape_t *s, int coll, int algo) {
  for (double b = 8; b <= (double)GiB; b *= 1.0905077326652577) {
    if (pick(s, coll, (size_t)b) == algo)
      return (size_t)b;
  }
  return 0;
}

static const int tuned_colls[] = {DUET_COLL_ALLREDUCE, DUET_COLL_BROADCAST,      DUET_COLL_BARRIER,
                                  DUET_COLL_ALLGATHER, DUET_COLL_REDUCE_SCATTER, DUET_COLL_REDUCE,
                                  DUET_COLL_ALLTOALL,  DUET_COLL_ALLTOALLV};
#define NTUNED (sizeof(tuned_colls) / sizeof(tuned_colls[0]))

Test(tune, net_defaults) {
  double lat = -1, bw = -1;
  duet__tune_net_defaults("shm", &lat, &bw);
  cr_assert_float_eq(lat, 1.1, 1e-12);
  cr_assert_float_eq(bw, 10.0, 1e-12);
  duet__tune_net_defaults("tcp", &lat, &bw);
  cr_assert_float_eq(lat, 12.0, 1e-12);
  cr_assert_float_eq(bw, 2.5, 1e-12);
  duet__tune_net_defaults("tcp;ofi_rxm", &lat, &bw);
  cr_assert_float_eq(lat, 12.0, 1e-12, "the core provider names the row");
  duet__tune_net_defaults("verbs;ofi_rxm", &lat, &bw);
  cr_assert_float_eq(lat, 3.0, 1e-12);
  cr_assert_float_eq(bw, 12.0, 1e-12);
  duet__tune_net_defaults("tcpx", &lat, &bw);
  cr_assert_float_eq(lat, 3.0, 1e-12, "no prefix match");
  duet__tune_net_defaults("", &lat, &bw);
  cr_assert_float_eq(lat, 3.0, 1e-12);
  duet__tune_net_defaults(NULL, &lat, &bw);
  cr_assert_float_eq(bw, 12.0, 1e-12);
  duet__tune_net_defaults("shm", NULL, &bw); /* either output may be NULL */
  cr_assert_float_eq(bw, 10.0, 1e-12);
}

Test(tune, allreduce_one_supernode_small_rd_large_ring) {
  duet__tune_shape_t s = shape(1, 4);
  int prev = -1, seen[DUET_ALGO_COUNT] = {0};

  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB), DUET_ALGO_RING);
  /* the choice moves through the algorithms once, never coming back */
  for (double b = 1; b <= (double)GiB; b *= 1.05) {
    int a = pick(&s, DUET_COLL_ALLREDUCE, (size_t)b);
    cr_assert(a == DUET_ALGO_RD || a == DUET_ALGO_RING || a == DUET_ALGO_RABENSEIFNER, "%zu B: %s",
              (size_t)b, duet__algo_name(a));
    if (a != prev) {
      cr_assert(!seen[a], "%s comes back at %zu B", duet__algo_name(a), (size_t)b);
      seen[a] = 1;
      prev = a;
    }
  }
}

Test(tune, allreduce_several_supernodes_large_is_hier) {
  duet__tune_shape_t s4 = shape(4, 4), s2 = shape(2, 4);
  for (size_t b = MiB; b <= GiB; b *= 2) {
    cr_assert_eq(pick(&s4, DUET_COLL_ALLREDUCE, b), DUET_ALGO_HIER, "4x4, %zu B", b);
    cr_assert_eq(pick(&s2, DUET_COLL_ALLREDUCE, b), DUET_ALGO_HIER, "2x4, %zu B", b);
  }
  /* unequal super-nodes (4 + 4 + 2) take the slower path: the leaders
   * allreduce all of S over the HPN, not S/L per rail */
  s4 = shape(3, 4);
  s2 = shape(3, 4);
  s2.nranks = 10;
  s2.uniform = 0;
  cr_assert_gt(duet__tune_cost_us(&s2, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER, 64 * MiB),
               2 * duet__tune_cost_us(&s4, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER, 64 * MiB));
}

Test(tune, broadcast_large_is_pipelined) {
  duet__tune_shape_t one = shape(1, 8), two = shape(2, 4), flat = shape(8, 1);
  int a;
  cr_assert_eq(pick(&one, DUET_COLL_BROADCAST, 64 * MiB), DUET_ALGO_CHAIN);
  a = pick(&two, DUET_COLL_BROADCAST, 64 * MiB);
  cr_assert(a == DUET_ALGO_CHAIN || a == DUET_ALGO_HIER, "%s", duet__algo_name(a));
  cr_assert_eq(pick(&flat, DUET_COLL_BROADCAST, 64 * MiB), DUET_ALGO_CHAIN);
  /* and a small broadcast takes the tree */
  cr_assert_eq(pick(&one, DUET_COLL_BROADCAST, 8), DUET_ALGO_BINOMIAL);
  cr_assert_eq(pick(&flat, DUET_COLL_BROADCAST, 8), DUET_ALGO_BINOMIAL);
}

Test(tune, barrier) {
  for (int p = 1; p <= 64; p++) {
    duet__tune_shape_t s = shape(1, p);
    cr_assert_eq(pick(&s, DUET_COLL_BARRIER, 0), DUET_ALGO_DISSEM, "p = %d", p);
  }
  {
    /* across super-nodes, few HPN messages win */
    duet__tune_shape_t s = shape(4, 4);
    cr_assert_eq(pick(&s, DUET_COLL_BARRIER, 0), DUET_ALGO_HIER);
  }
}

Test(tune, crossover_moves_with_latency) {
  duet__tune_shape_t s = shape(1, 4);
  size_t base, slow;

  /* UPN only: 100x the latency keeps rd longer */
  base = crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD);
  s.upn_lat_us *= 100;
  slow = crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD);
  cr_assert(base > 1 * KiB && base < 1 * MiB, "base crossover %zu", base);
  cr_assert_gt(slow, 10 * base, "rd -> ring crossover %zu B, with 100x latency %zu B", base, slow);
  /* a 10x faster UPN also keeps rd longer (its extra bytes cost less; the
   * reduction, which the network does not speed up, limits the shift) */
  s = shape(1, 4);
  s.upn_bw_gbps *= 10;
  cr_assert_gt(crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD), base * 3 / 2);

  /* every rank its own super-node (flat on the HPN): the HPN latency moves it */
  s = shape(8, 1);
  base = crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD);
  s.hpn_lat_us *= 100;
  slow = crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD);
  cr_assert_neq(base, 0);
  cr_assert_gt(slow, 10 * base, "HPN: %zu B, with 100x latency %zu B", base, slow);
  /* ... and the UPN's parameters do not matter there */
  s = shape(8, 1);
  s.upn_lat_us *= 100;
  cr_assert_eq(crossover_from(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RD), base);
}

Test(tune, hier_crossover_moves_with_hpn_latency) {
  /* An HPN as good as the UPN: small allreduces stay flat (rd), large go
   * hierarchical. A slower HPN makes the hierarchy, which sends fewer HPN
   * messages, win from smaller sizes. */
  duet__tune_shape_t s = shape(4, 4);
  size_t fast, slow;
  s.hpn_lat_us = s.upn_lat_us;
  s.hpn_bw_gbps = s.upn_bw_gbps;
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8), DUET_ALGO_RD);
  fast = crossover_to(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER);
  cr_assert_gt(fast, 8);
  s.hpn_lat_us *= 100;
  slow = crossover_to(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER);
  cr_assert_lt(slow, fast, "hier from %zu B, with 100x HPN latency from %zu B", fast, slow);
}

Test(tune, force_overrides) {
  duet__tune_shape_t s = shape(1, 4), many = shape(4, 4);
  duet__algo_force_t f = {{DUET_ALGO_AUTO}};
  duet__tune_choice_t c;

  f.coll[DUET_COLL_ALLREDUCE] = DUET_ALGO_RING;
  c = duet__tune_pick(&s, DUET_COLL_ALLREDUCE, 8, &f);
  cr_assert_eq(c.algo, DUET_ALGO_RING);
  cr_assert_float_eq(c.est_us, duet__tune_cost_us(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_RING, 8),
                     1e-9);
  cr_assert_eq(duet__tune_pick(&many, DUET_COLL_ALLREDUCE, 64 * MiB, &f).algo, DUET_ALGO_RING);

  /* forcing broadcast only leaves allreduce on auto */
  f.coll[DUET_COLL_ALLREDUCE] = DUET_ALGO_AUTO;
  f.coll[DUET_COLL_BROADCAST] = DUET_ALGO_CHAIN;
  cr_assert_eq(duet__tune_pick(&s, DUET_COLL_ALLREDUCE, 8, &f).algo, DUET_ALGO_RD);
  cr_assert_eq(duet__tune_pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB, &f).algo, DUET_ALGO_RING);
  cr_assert_eq(duet__tune_pick(&s, DUET_COLL_BROADCAST, 8, &f).algo, DUET_ALGO_CHAIN);

  /* whatever the shape: hier forced on one super-node is still hier */
  f.coll[DUET_COLL_BARRIER] = DUET_ALGO_HIER;
  c = duet__tune_pick(&s, DUET_COLL_BARRIER, 0, &f);
  cr_assert_eq(c.algo, DUET_ALGO_HIER);
  cr_assert_geq(c.est_us, HUGE_COST);
}

Test(tune, send_recv_not_tuned) {
  duet__tune_shape_t s = shape(2, 4);
  cr_assert_eq(pick(&s, DUET_COLL_SEND, 8), DUET_ALGO_AUTO);
  cr_assert_eq(pick(&s, DUET_COLL_RECV, 64 * MiB), DUET_ALGO_AUTO);
  cr_assert_eq(pick(&s, DUET_COLL_COUNT, 8), DUET_ALGO_AUTO);
  cr_assert_eq(pick(&s, -1, 8), DUET_ALGO_AUTO);
}

Test(tune, every_valid_cost_finite_and_growing) {
  duet__tune_shape_t shapes[4] = {shape(4, 4), shape(2, 4), shape(4, 2), shape(3, 4)};
  shapes[3].nranks = 10; /* 4 + 4 + 2 */
  shapes[3].uniform = 0;
  for (int i = 0; i < 4; i++) {
    for (size_t k = 0; k < NTUNED; k++) {
      int coll = tuned_colls[k];
      for (int a = DUET_ALGO_AUTO + 1; a < DUET_ALGO_COUNT; a++) {
        double prev = -1;
        if (!duet__algo_valid(coll, a))
          continue;
        for (size_t b = 8; b <= GiB; b *= 2) {
          double t = duet__tune_cost_us(&shapes[i], coll, a, b);
          cr_assert(isfinite(t) && t > 0 && t < HUGE_COST, "shape %d %s/%s %zu B: %g", i,
                    duet__coll_short_name(coll), duet__algo_name(a), b, t);
          if (coll == DUET_COLL_BARRIER)
            cr_assert_float_eq(t, prev < 0 ? t : prev, 1e-9, "a barrier carries no data");
          else
            cr_assert_gt(t, prev, "shape %d %s/%s: %g us at %zu B, %g before", i,
                         duet__coll_short_name(coll), duet__algo_name(a), t, b, prev);
          prev = t;
        }
      }
    }
  }
}

Test(tune, invalid_algorithms_cost_huge) {
  duet__tune_shape_t s = shape(4, 4), bad = shape(4, 4);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_BINOMIAL, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_BROADCAST, DUET_ALGO_RING, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_AUTO, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_SEND, DUET_ALGO_RING, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_COUNT, DUET_ALGO_RING, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(&s, DUET_COLL_ALLREDUCE, DUET_ALGO_COUNT, 8), HUGE_COST);
  cr_assert_geq(duet__tune_cost_us(NULL, DUET_COLL_ALLREDUCE, DUET_ALGO_RING, 8), HUGE_COST);
  /* a shape without a bandwidth is not a shape the model can price */
  bad.hpn_bw_gbps = 0;
  cr_assert_geq(duet__tune_cost_us(&bad, DUET_COLL_ALLREDUCE, DUET_ALGO_RING, 8), HUGE_COST);
  for (size_t k = 0; k < NTUNED; k++) { /* still a valid algorithm, the simplest */
    int a = pick(&bad, tuned_colls[k], 8);
    cr_assert(a != DUET_ALGO_AUTO && duet__algo_valid(tuned_colls[k], a), "%s: %d",
              duet__coll_short_name(tuned_colls[k]), a);
  }
}

Test(tune, hier_never_with_one_supernode) {
  for (int p = 1; p <= 64; p++) {
    duet__tune_shape_t one = shape(1, p), singles = shape(p, 1);
    for (size_t k = 0; k < NTUNED; k++) {
      int coll = tuned_colls[k];
      if (duet__algo_valid(coll, DUET_ALGO_HIER)) {
        cr_assert_geq(duet__tune_cost_us(&one, coll, DUET_ALGO_HIER, 8), HUGE_COST);
        cr_assert_geq(duet__tune_cost_us(&singles, coll, DUET_ALGO_HIER, 8), HUGE_COST);
      }
      for (size_t b = 1; b <= GiB; b *= 4) {
        cr_assert_neq(pick(&one, coll, b), DUET_ALGO_HIER, "%s, 1 x %d, %zu B",
                      duet__coll_short_name(coll), p, b);
        cr_assert_neq(pick(&singles, coll, b), DUET_ALGO_HIER, "%s, %d x 1, %zu B",
                      duet__coll_short_name(coll), p, b);
      }
    }
  }
}

Test(tune, picks_valid_and_chunk_in_range) {
  const int dims[][2] = {{1, 1}, {1, 2}, {1, 3}, {1, 4}, {1, 7},  {1, 8}, {1, 64},
                         {2, 4}, {4, 4}, {3, 5}, {8, 1}, {16, 8}, {5, 3}};
  for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
    duet__tune_shape_t s = shape(dims[i][0], dims[i][1]);
    for (int coll = 0; coll < DUET_COLL_COUNT; coll++) {
      for (size_t b = 0; b <= GiB; b = b ? b * 2 : 1) {
        duet__tune_choice_t c = duet__tune_pick(&s, coll, b, NULL);
        if (coll == DUET_COLL_SEND || coll == DUET_COLL_RECV)
          cr_assert_eq(c.algo, DUET_ALGO_AUTO);
        else
          cr_assert(c.algo != DUET_ALGO_AUTO && duet__algo_valid(coll, c.algo),
                    "%s %d x %d %zu B: %d", duet__coll_short_name(coll), dims[i][0], dims[i][1], b,
                    c.algo);
        cr_assert(c.chunk_bytes >= 4 * KiB && c.chunk_bytes <= 256 * KiB, "chunk %zu",
                  c.chunk_bytes);
        cr_assert(c.est_us >= 0 && c.est_us < HUGE_COST);
      }
    }
  }
}

Test(tune, chunk_sizes) {
  duet__tune_shape_t one = shape(1, 4), many = shape(4, 4);
  duet__algo_force_t chain = {{DUET_ALGO_AUTO}};
  chain.coll[DUET_COLL_BROADCAST] = DUET_ALGO_CHAIN;
  chain.coll[DUET_COLL_REDUCE] = DUET_ALGO_CHAIN;

  cr_assert_eq(duet__tune_pick(&one, DUET_COLL_ALLREDUCE, MiB, NULL).chunk_bytes, 64 * KiB);
  cr_assert_eq(duet__tune_pick(&one, DUET_COLL_ALLREDUCE, 4 * MiB, NULL).chunk_bytes, 256 * KiB);
  cr_assert_eq(duet__tune_pick(&many, DUET_COLL_ALLREDUCE, MiB, NULL).chunk_bytes, 256 * KiB);
  cr_assert_eq(duet__tune_pick(&many, DUET_COLL_ALLREDUCE, 8, NULL).chunk_bytes, 256 * KiB);
  /* a tcp UPN keeps 256 KiB chunks at every size */
  duet__tune_shape_t tcp1 = one;
  snprintf(tcp1.upn_provider, sizeof(tcp1.upn_provider), "tcp;ofi_rxm");
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, MiB, NULL).chunk_bytes, 256 * KiB);
  snprintf(tcp1.upn_provider, sizeof(tcp1.upn_provider), "tcpx");
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, MiB, NULL).chunk_bytes, 64 * KiB);
  /* over duet's tcp transport the chunk grows to a quarter of the message,
   * up to 1 MiB, on UPN-only shapes */
  snprintf(tcp1.upn_provider, sizeof(tcp1.upn_provider), "tcp");
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, MiB, NULL).chunk_bytes, 256 * KiB);
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, 2 * MiB, NULL).chunk_bytes, 512 * KiB);
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, 4 * MiB, NULL).chunk_bytes, MiB);
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, 8 * MiB, NULL).chunk_bytes, MiB);
  cr_assert_eq(duet__tune_pick(&tcp1, DUET_COLL_ALLREDUCE, GiB, NULL).chunk_bytes, MiB);
  duet__tune_shape_t tcp_many = many;
  snprintf(tcp_many.upn_provider, sizeof(tcp_many.upn_provider), "tcp");
  cr_assert_eq(duet__tune_pick(&tcp_many, DUET_COLL_ALLREDUCE, GiB, NULL).chunk_bytes, 256 * KiB);
  /* pipelined chains: at least 4 chunks, at least 4 KiB each */
  cr_assert_eq(duet__tune_pick(&one, DUET_COLL_BROADCAST, 64 * KiB, &chain).chunk_bytes, 16 * KiB);
  cr_assert_eq(duet__tune_pick(&many, DUET_COLL_REDUCE, 512 * KiB, &chain).chunk_bytes, 128 * KiB);
  cr_assert_eq(duet__tune_pick(&many, DUET_COLL_BROADCAST, 64 * MiB, &chain).chunk_bytes,
               256 * KiB);
  cr_assert_eq(duet__tune_pick(&one, DUET_COLL_BROADCAST, 8, &chain).chunk_bytes, 4 * KiB);
  cr_assert_eq(duet__tune_pick(&one, DUET_COLL_BROADCAST, 20 * KiB + 1, &chain).chunk_bytes,
               5 * KiB + 1, "rounded up: no fifth chunk");
}

Test(tune, ties_go_to_the_simpler_algorithm) {
  duet__tune_shape_t s = shape(1, 1), three = shape(1, 3);
  /* one rank: every flat algorithm is free; ring comes first in algo.c */
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, MiB), DUET_ALGO_RING);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, MiB), DUET_ALGO_PAIRWISE);
  /* three ranks, one chunk: binomial tree and chain are the same two hops */
  for (size_t b = 1; b < 4 * KiB; b += 7) {
    cr_assert_float_eq(duet__tune_cost_us(&three, DUET_COLL_BROADCAST, DUET_ALGO_BINOMIAL, b),
                       duet__tune_cost_us(&three, DUET_COLL_BROADCAST, DUET_ALGO_CHAIN, b), 1e-9);
    cr_assert_eq(pick(&three, DUET_COLL_BROADCAST, b), DUET_ALGO_BINOMIAL, "%zu B", b);
  }
}

Test(tune, alltoall_and_hier_traffic) {
  duet__tune_shape_t one = shape(1, 8), many = shape(4, 4);
  cr_assert_eq(pick(&one, DUET_COLL_ALLTOALL, 64), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&one, DUET_COLL_ALLTOALL, 64 * MiB), DUET_ALGO_PAIRWISE);
  cr_assert_eq(pick(&many, DUET_COLL_ALLTOALL, 64 * MiB), DUET_ALGO_HIER);
  cr_assert_eq(pick(&many, DUET_COLL_ALLTOALLV, 64 * MiB), DUET_ALGO_HIER);
  /* two super-nodes: the hierarchy at every size (mpi_alltoall's hpn test
   * and mpi_hier's mem-upn test rely on it for their load/store checks
   * under auto) */
  for (int L = 2; L <= 4; L++) {
    duet__tune_shape_t two = shape(2, L);
    cr_assert_eq(crossover_from(&two, DUET_COLL_ALLTOALL, DUET_ALGO_HIER), 0, "2 x %d", L);
    /* and mpi_hier's mem-upn test on these */
    cr_assert_eq(crossover_from(&two, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER), 0, "2 x %d", L);
    cr_assert_eq(crossover_from(&two, DUET_COLL_ALLGATHER, DUET_ALGO_HIER), 0, "2 x %d", L);
    cr_assert_eq(crossover_from(&two, DUET_COLL_REDUCE_SCATTER, DUET_ALGO_HIER), 0, "2 x %d", L);
    for (size_t b = 4; b <= 256 * KiB; b *= 2) {
      cr_assert_eq(pick(&two, DUET_COLL_BROADCAST, b), DUET_ALGO_HIER, "2 x %d, %zu B", L, b);
      cr_assert_eq(pick(&two, DUET_COLL_REDUCE, b), DUET_ALGO_HIER, "2 x %d, %zu B", L, b);
    }
    cr_assert_eq(pick(&two, DUET_COLL_BARRIER, 0), DUET_ALGO_HIER, "2 x %d", L);
  }
  /* the hierarchy sends 2S/L per rank over the HPN instead of about 2S */
  cr_assert_lt(duet__tune_cost_us(&many, DUET_COLL_ALLREDUCE, DUET_ALGO_HIER, 64 * MiB),
               duet__tune_cost_us(&many, DUET_COLL_ALLREDUCE, DUET_ALGO_RING, 64 * MiB) / 2);
}

/* Super-nodes of unequal size (3 + 2, 4 + 2) that all have the load/store
 * UPN: allgather and reduce-scatter take the hierarchy at every size (the
 * super-node's blocks on the segment, the others straight from or to their
 * ranks: mpi_hier's mem-upn test relies on it), as does all-to-all. Without
 * the segment the leaders' schedule loses to the ring at large sizes. */
Test(tune, unequal_supernodes_with_the_segment_take_the_hierarchy) {
  for (int big = 3; big <= 4; big++) {
    duet__tune_shape_t s = shape(2, big);
    s.nranks = big + 2;
    s.uniform = 0;
    s.mem_everywhere = 1;
    cr_assert_eq(crossover_from(&s, DUET_COLL_ALLGATHER, DUET_ALGO_HIER), 0, "%d + 2", big);
    cr_assert_eq(crossover_from(&s, DUET_COLL_REDUCE_SCATTER, DUET_ALGO_HIER), 0, "%d + 2", big);
    cr_assert_eq(crossover_from(&s, DUET_COLL_ALLTOALL, DUET_ALGO_HIER), 0, "%d + 2", big);
    s.mem_everywhere = 0;
    cr_assert_eq(pick(&s, DUET_COLL_ALLGATHER, 64 * MiB), DUET_ALGO_RING, "%d + 2", big);
    cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 64 * MiB), DUET_ALGO_RING, "%d + 2", big);
  }
}

Test(tune, trace_each_pick) {
  duet__tune_shape_t s = shape(3, 4);
  s.nranks = 10;
  s.uniform = 0;
  duet__log_level = DUET_LOG_TRACE;
  duet__log_subsys = DUET_SUB_TUNE;
  for (int coll = 0; coll < DUET_COLL_COUNT; coll++)
    cr_assert_geq(duet__tune_pick(&s, coll, 1000, NULL).algo, DUET_ALGO_AUTO);
  cr_assert_eq(duet__tune_pick(NULL, DUET_COLL_ALLREDUCE, 8, NULL).algo, DUET_ALGO_RING);
  duet__log_level = DUET_LOG_WARN;
  duet__log_subsys = DUET_SUB_ALL;
}

/* One host, one super-node of p ranks over `prov`: the calibration table's
 * shapes. */
static duet__tune_shape_t host_shape(const char *prov, int p, int oversubscribed) {
  duet__tune_shape_t s = {0};
  s.nranks = p;
  s.nsupernodes = 1;
  s.local_size = p;
  s.uniform = 1;
  s.one_host = 1;
  s.oversubscribed = oversubscribed;
  snprintf(s.upn_provider, sizeof(s.upn_provider), "%s", prov);
  duet__tune_net_defaults(prov, &s.upn_lat_us, &s.upn_bw_gbps);
  duet__tune_net_defaults("tcp", &s.hpn_lat_us, &s.hpn_bw_gbps);
  return s;
}

/* The measured crossovers replace the model on one host, and only there. */
Test(tune, calibration_table_on_one_host) {
  duet__tune_shape_t s = host_shape("tcp;ofi_rxm", 4, 1);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 32 * KiB), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 2 * MiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 8 * KiB), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 32 * KiB), DUET_ALGO_PAIRWISE);
  /* the model alone picks the ring for 8 MiB over tcp on 4 ranks */
  s.one_host = 0;
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8 * MiB), DUET_ALGO_RING);
  s = host_shape("tcp", 4, 0); /* not oversubscribed: no row, the model */
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8 * MiB), DUET_ALGO_RING);
  s = host_shape("tcp;ofi_rxm", 2, 0);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 128 * KiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8 * MiB), DUET_ALGO_RING);
  /* duet's own tcp transport has rows of its own */
  s = host_shape("tcp", 2, 0);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 128 * KiB), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 1 * MiB), DUET_ALGO_RING);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 8), DUET_ALGO_PAIRWISE);
  s = host_shape("tcp", 4, 1);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 32 * KiB), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 128 * KiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 2 * MiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 4 * MiB), DUET_ALGO_RING);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB), DUET_ALGO_RING);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 8 * KiB), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 32 * KiB), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 32 * KiB + 1), DUET_ALGO_PAIRWISE);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 16), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 32 * KiB), DUET_ALGO_RD);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 64 * KiB), DUET_ALGO_PAIRWISE);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 64 * MiB), DUET_ALGO_PAIRWISE);
  s = host_shape("tcp", 3, 1); /* no power of two: rd's extra steps lose to one exchange */
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 8 * KiB), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 16 * KiB), DUET_ALGO_PAIRWISE);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 16), DUET_ALGO_PAIRWISE);
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 64 * MiB), DUET_ALGO_PAIRWISE);
  s = host_shape("tcp", 2, 0); /* rd moves the whole vector: the ring, even small */
  cr_assert_eq(pick(&s, DUET_COLL_REDUCE_SCATTER, 16), DUET_ALGO_RING);
  s = host_shape("tcp", 16, 1); /* beyond the table: the model, which never takes pairwise */
  for (size_t b = 8; b <= 1024 * MiB; b *= 8)
    cr_assert_neq(pick(&s, DUET_COLL_REDUCE_SCATTER, b), DUET_ALGO_PAIRWISE, "%zu bytes", b);
  s = host_shape("shm", 4, 1);
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 2 * MiB), DUET_ALGO_RABENSEIFNER);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 128), DUET_ALGO_BRUCK);
  cr_assert_eq(pick(&s, DUET_COLL_ALLTOALL, 512), DUET_ALGO_PAIRWISE);
  s = host_shape("verbs", 4, 1); /* a provider the table does not know */
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 8 * MiB), DUET_ALGO_RING);
  s = host_shape("tcp", 16, 1); /* more ranks than the table was measured for */
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB), DUET_ALGO_RING);

  /* DUET_ALGO still wins */
  duet__algo_force_t force;
  memset(&force, 0, sizeof(force));
  force.coll[DUET_COLL_ALLREDUCE] = DUET_ALGO_RING;
  s = host_shape("tcp", 4, 1);
  cr_assert_eq(duet__tune_pick(&s, DUET_COLL_ALLREDUCE, 2 * MiB, &force).algo, DUET_ALGO_RING);

  /* a multi-super-node shape on one host (emulated super-nodes) uses the model */
  s = host_shape("tcp", 4, 1);
  s.nsupernodes = 2;
  s.local_size = 2;
  cr_assert_eq(pick(&s, DUET_COLL_ALLREDUCE, 64 * MiB), DUET_ALGO_HIER);
}

/* Every pick the table makes is valid for its collective, at every size. */
Test(tune, calibration_table_picks_are_valid) {
  static const char *const provs[] = {"tcp", "tcp;ofi_rxm", "shm"};
  for (int pi = 0; pi < 3; pi++)
    for (int p = 2; p <= 8; p++)
      for (int o = 0; o < 2; o++) {
        duet__tune_shape_t s = host_shape(provs[pi], p, o);
        for (size_t k = 0; k < NTUNED; k++)
          for (double b = 1; b <= (double)GiB; b *= 1.5) {
            int a = pick(&s, tuned_colls[k], (size_t)b);
            cr_assert(duet__algo_valid(tuned_colls[k], a), "%s %d ranks %s: %s at %zu B",
                      provs[pi], p, o ? "oversubscribed" : "", duet__algo_name(a), (size_t)b);
          }
      }
}
