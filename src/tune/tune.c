/*
 * tune.c - the cost model that picks each call's algorithm and chunk size.
 *
 * An alpha-beta model per network: a message of b bytes costs lat + b / bw,
 * where bw is the bandwidth of one rank (concurrent sends of one rank share
 * it). Reducing algorithms also pay b / 24 GB/s per reduced vector; the
 * algorithms that are pipelined in chunks (ring, chain, the pipelined binomial
 * tree) overlap that reduction with the transfer of the next chunk and pay
 * only the slower of the two plus one chunk of the faster.
 *
 * Flat algorithms pay the HPN's parameters whenever the communicator spans
 * several super-nodes (some of their steps cross the HPN, and those steps set
 * the pace), the UPN's otherwise. Hierarchical algorithms pay the UPN for
 * their phases inside a super-node and the HPN for the phases on the rails.
 *
 * Everything here is a pure function of its arguments: no allocation, no
 * locking, no environment (the caller puts DUET_*_LAT_US / DUET_*_BW_GBPS
 * into the shape). The core calls duet__tune_pick once per collective call.
 */
#include "tune/tune.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/log.h"

#define DUET_TUNE_HUGE 1e30        /* cost of an algorithm that does not apply */
#define DUET_TUNE_REDUCE_GBPS 24.0 /* in-place reduction kernel, GB/s */
#define DUET_TUNE_CHUNK_MAX 262144 /* default pipelining unit */
#define DUET_TUNE_CHUNK_UPN 65536  /* for messages under 4 MiB on UPN-only shapes */
#define DUET_TUNE_CHUNK_MIN 4096
#define DUET_TUNE_CHUNK_SOCK_MAX (1u << 20) /* largest chunk over duet's tcp transport */
#define DUET_TUNE_SMALL_UPN (4u << 20)

/*
 * Default parameters per libfabric provider (the first component of the name:
 * "tcp;ofi_rxm" is tcp), measured on the reference 2-core machine: latency by
 * a ping-pong of 8 B messages (half the round trip), bandwidth by streaming
 * 1 MiB messages one way. The last row is for anything else (real NICs:
 * verbs, efa, ...). The performance issue recalibrates this table; the
 * DUET_{UPN,HPN}_{LAT_US,BW_GBPS} variables override it per run.
 */
static const struct {
  const char *provider; /* NULL: anything else */
  double lat_us, bw_gbps;
} duet__tune_net_table[] = {
    {"shm", 1.1, 10.0},
    {"tcp", 12.0, 2.5},
    {NULL, 3.0, 12.0},
};

void duet__tune_net_defaults(const char *provider, double *lat_us, double *bw_gbps) {
  const size_t rows = sizeof(duet__tune_net_table) / sizeof(duet__tune_net_table[0]);
  size_t i = rows - 1;

  if (provider) {
    size_t n = strcspn(provider, ";");
    for (i = 0; i < rows - 1; i++) {
      if (strlen(duet__tune_net_table[i].provider) == n &&
          strncmp(provider, duet__tune_net_table[i].provider, n) == 0)
        break;
    }
  }
  if (lat_us)
    *lat_us = duet__tune_net_table[i].lat_us;
  if (bw_gbps)
    *bw_gbps = duet__tune_net_table[i].bw_gbps;
}

/* One network as the model sees it: latency (us) and time per byte (us). */
typedef struct duet__tune_net {
  double lat, upb;
} duet__tune_net_t;

/* Time per byte of the reduction kernel, us (GB/s = 1e3 bytes per us). */
static const double duet__tune_red_upb = 1.0 / (DUET_TUNE_REDUCE_GBPS * 1e3);

static int duet__tune_net_of(double lat_us, double bw_gbps, duet__tune_net_t *n) {
  if (!(bw_gbps > 0.0) || !isfinite(bw_gbps) || !(lat_us >= 0.0) || !isfinite(lat_us))
    return -1;
  n->lat = lat_us;
  n->upb = 1.0 / (bw_gbps * 1e3);
  return 0;
}

static double duet__tune_xfer(duet__tune_net_t n, double bytes) {
  return n.lat + bytes * n.upb;
}

/* floor(log2 p) and ceil(log2 p), p >= 1. */
static int duet__tune_flog2(int p) {
  int k = 0;
  while ((2L << k) <= p)
    k++;
  return k;
}

static int duet__tune_clog2(int p) {
  int k = 0;
  while ((1L << k) < p)
    k++;
  return k;
}

static double duet__tune_nchunks(double bytes, double chunk) {
  double n = ceil(bytes / chunk);
  return n < 1.0 ? 1.0 : n;
}

/* p-1 ring steps that each receive b bytes and reduce them, pipelined in
 * chunks of c across steps: the slower of transfer and reduction sets the
 * pace, and the pipeline's drain adds one chunk of the faster. */
static double duet__rs_ring_steps(int p, double b, duet__tune_net_t n, double c) {
  const double r = duet__tune_red_upb;
  if (p <= 1)
    return 0.0;
  return (p - 1) * (n.lat + b * fmax(n.upb, r)) + fmin(b, c) * fmin(n.upb, r);
}

/* --- flat building blocks: p ranks on one network --------------------- */

/* Allreduce ring: reduce-scatter then allgather, 2 (p-1) steps of S/p. */
static double duet__ar_ring(int p, double S, duet__tune_net_t n, double c) {
  if (p <= 1)
    return 0.0;
  return duet__rs_ring_steps(p, S / p, n, c) + (p - 1) * duet__tune_xfer(n, S / p);
}

/* Allreduce recursive doubling: log2(p2) exchanges of S (p2 the largest power
 * of two <= p), plus a fold and an unfold of S when p is not a power of two. */
static double duet__ar_rd(int p, double S, duet__tune_net_t n) {
  int k = duet__tune_flog2(p);
  double t;
  if (p <= 1)
    return 0.0;
  t = k * (duet__tune_xfer(n, S) + S * duet__tune_red_upb);
  if ((1 << k) != p)
    t += 2 * duet__tune_xfer(n, S) + S * duet__tune_red_upb;
  return t;
}

/* Allreduce Rabenseifner: recursive halving then doubling, 2 log2(p2) steps
 * moving 2 S (p2-1)/p2, reducing S (p2-1)/p2; the same fold as rd. */
static double duet__ar_rab(int p, double S, duet__tune_net_t n) {
  int k = duet__tune_flog2(p);
  double p2 = (double)(1 << k), t;
  if (p <= 1)
    return 0.0;
  t = 2 * k * n.lat + 2 * S * (p2 - 1) / p2 * n.upb + S * (p2 - 1) / p2 * duet__tune_red_upb;
  if ((1 << k) != p)
    t += 2 * duet__tune_xfer(n, S) + S * duet__tune_red_upb;
  return t;
}

/* Broadcast, binomial tree pipelined in chunks: the root sends every chunk to
 * each of its ceil(log2 p) children, so it pushes S that many times through
 * one rank's bandwidth; pipelining saves the store-and-forward wait below it,
 * not the root's bytes. */
static double duet__bc_binomial(int p, double S, duet__tune_net_t n, double c) {
  if (p <= 1)
    return 0.0;
  return duet__tune_clog2(p) * (duet__tune_nchunks(S, c) * n.lat + S * n.upb);
}

/* Broadcast, pipelined chain: (p - 1 + nchunks - 1) chunk times, i.e. the
 * first chunk's p - 2 hops to the last rank's parent, then the whole message
 * (nchunks messages, the last one possibly short) over the last hop. */
static double duet__bc_chain(int p, double S, duet__tune_net_t n, double c) {
  if (p <= 1)
    return 0.0;
  return (p - 2) * duet__tune_xfer(n, fmin(c, S)) + duet__tune_nchunks(S, c) * n.lat + S * n.upb;
}

static double duet__bc_best(int p, double S, duet__tune_net_t n, double c) {
  return fmin(duet__bc_binomial(p, S, n, c), duet__bc_chain(p, S, n, c));
}

/* Reduce: the broadcast trees run backwards, reducing as chunks arrive. */
static double duet__rd_binomial(int p, double S, duet__tune_net_t n, double c) {
  const double r = duet__tune_red_upb;
  if (p <= 1)
    return 0.0;
  return duet__tune_clog2(p) * (duet__tune_nchunks(S, c) * n.lat + S * fmax(n.upb, r)) +
         fmin(c, S) * fmin(n.upb, r);
}

static double duet__rd_chain(int p, double S, duet__tune_net_t n, double c) {
  const double r = duet__tune_red_upb, cc = fmin(c, S);
  if (p <= 1)
    return 0.0;
  return (p - 2) * (n.lat + cc * fmax(n.upb, r)) + duet__tune_nchunks(S, c) * n.lat +
         S * fmax(n.upb, r) + cc * fmin(n.upb, r);
}

static double duet__rd_best(int p, double S, duet__tune_net_t n, double c) {
  return fmin(duet__rd_binomial(p, S, n, c), duet__rd_chain(p, S, n, c));
}

/* Allgather of S bytes in total (S/p from each rank). */
static double duet__ag_ring(int p, double S, duet__tune_net_t n) {
  if (p <= 1)
    return 0.0;
  return (p - 1) * duet__tune_xfer(n, S / p);
}

/* Allgather recursive doubling: log2(p2) steps of doubling size; when p is
 * not a power of two the extra ranks fold their block in first and get the
 * whole result back at the end. */
static double duet__ag_rd(int p, double S, duet__tune_net_t n) {
  int k = duet__tune_flog2(p);
  double p2 = (double)(1 << k), t;
  if (p <= 1)
    return 0.0;
  t = k * n.lat + S * (p2 - 1) / p2 * n.upb;
  if ((1 << k) != p)
    t += duet__tune_xfer(n, S / p) + duet__tune_xfer(n, S);
  return t;
}

/* Reduce-scatter ring of S bytes in total: p-1 reducing steps of S/p. */
static double duet__rs_ring(int p, double S, duet__tune_net_t n, double c) {
  return duet__rs_ring_steps(p, S / p, n, c);
}

/* --- the model --------------------------------------------------------- */

/* Whether the shape's UPN moves messages over TCP (tcp, tcp;ofi_rxm). */
static int duet__tune_upn_tcp(const duet__tune_shape_t *sh) {
  return sh && strncmp(sh->upn_provider, "tcp", 3) == 0 &&
         (sh->upn_provider[3] == '\0' || sh->upn_provider[3] == ';');
}

/* The shape as the model uses it: sizes clamped to sane values. */
typedef struct duet__tune_dims {
  int p, N, L, uniform, multi, upn_tcp, upn_sock; /* sock: duet's own tcp transport */
  int mem;                                        /* every super-node has the load/store UPN */
  duet__tune_net_t upn, hpn, flat;
} duet__tune_dims_t;

static int duet__tune_dims(const duet__tune_shape_t *sh, duet__tune_dims_t *d) {
  if (!sh || duet__tune_net_of(sh->upn_lat_us, sh->upn_bw_gbps, &d->upn) ||
      duet__tune_net_of(sh->hpn_lat_us, sh->hpn_bw_gbps, &d->hpn))
    return -1;
  d->p = sh->nranks > 1 ? sh->nranks : 1;
  d->N = sh->nsupernodes > 1 ? sh->nsupernodes : 1;
  d->L = sh->local_size > 1 ? sh->local_size : 1;
  d->uniform = sh->uniform != 0;
  d->mem = sh->mem_everywhere != 0;
  d->multi = d->N > 1;
  d->flat = d->multi ? d->hpn : d->upn;
  d->upn_tcp = duet__tune_upn_tcp(sh);
  d->upn_sock = strcmp(sh->upn_provider, "tcp") == 0;
  return 0;
}

/* The chunk size of one call: 256 KiB, 64 KiB under 4 MiB on UPN-only shapes
 * unless the UPN is tcp (there each message costs more than its bytes: a
 * 2 MiB ring allreduce on 2 ranks takes 506 us in 256 KiB chunks, 591 us in
 * 64 KiB ones). On a UPN-only shape over duet's tcp transport it grows with
 * the message, to a quarter of it, up to 1 MiB: a streamed chunk costs a
 * header and a wake-up, and the kernel's socket buffers hold megabytes
 * (2-rank ring allreduce, median of 2 sweeps of 3 rounds: 8 MiB 2.69 ms in
 * 256 KiB chunks, 2.41 ms in 512 KiB, 2.45 ms in 1 MiB; 16 MiB 5.54, 5.07,
 * 4.75 ms). It was an eighth until the wire header grew to 32 bytes
 * (0603435); then, 3 launches of each chunk, alternating, 2 ranks: 2 MiB
 * 611-694 us in 256 KiB chunks, 531-574 in 512 KiB, 520-539 in 1 MiB;
 * 4 MiB 1444-1732, 1250-1460, 989-1466; 4 ranks (Rabenseifner, then the
 * ring): 2 MiB 2287-2378, 2086-2444, 1812-2220; 4 MiB 5278-5493,
 * 4231-5252, 4094-4994. For a pipelined chain the chunk is at
 * most a quarter of the message (rounded up, so the message makes at most 4
 * chunks); never below 4 KiB. */
static size_t duet__tune_chunk(int nsupernodes, int upn_tcp, int upn_sock, int algo,
                               size_t bytes) {
  size_t c = DUET_TUNE_CHUNK_MAX;
  if (nsupernodes <= 1 && !upn_tcp && bytes < DUET_TUNE_SMALL_UPN)
    c = DUET_TUNE_CHUNK_UPN;
  if (nsupernodes <= 1 && upn_sock)
    while (c < DUET_TUNE_CHUNK_SOCK_MAX && c * 4 < bytes)
      c *= 2;
  if (algo == DUET_ALGO_CHAIN && c > bytes / 4 + (bytes % 4 != 0))
    c = bytes / 4 + (bytes % 4 != 0);
  return c < DUET_TUNE_CHUNK_MIN ? DUET_TUNE_CHUNK_MIN : c;
}

static double duet__tune_allreduce(const duet__tune_dims_t *d, int algo, double S, double c) {
  const int p = d->p, N = d->N, L = d->L;
  double t;

  switch (algo) {
  case DUET_ALGO_RING:
    return duet__ar_ring(p, S, d->flat, c);
  case DUET_ALGO_RD:
    return duet__ar_rd(p, S, d->flat);
  case DUET_ALGO_RABENSEIFNER:
    return duet__ar_rab(p, S, d->flat);
  case DUET_ALGO_HIER:
    if (d->uniform) {
      /* reduce-scatter on the UPN, allreduce of S/L on each rail, allgather */
      double shard = S / L;
      t = duet__rs_ring_steps(L, shard, d->upn, c);
      t += fmin(duet__ar_ring(N, shard, d->hpn, c), duet__ar_rd(N, shard, d->hpn));
      return t + (L - 1) * duet__tune_xfer(d->upn, shard);
    }
    /* unequal super-nodes: allreduce inside, leaders across, broadcast inside */
    t = fmin(fmin(duet__ar_ring(L, S, d->upn, c), duet__ar_rd(L, S, d->upn)),
             duet__ar_rab(L, S, d->upn));
    t += fmin(duet__ar_ring(N, S, d->hpn, c), duet__ar_rd(N, S, d->hpn));
    return t + duet__bc_best(L, S, d->upn, c);
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_broadcast(const duet__tune_dims_t *d, int algo, double S, double c) {
  switch (algo) {
  case DUET_ALGO_BINOMIAL:
    return duet__bc_binomial(d->p, S, d->flat, c);
  case DUET_ALGO_CHAIN:
    return duet__bc_chain(d->p, S, d->flat, c);
  case DUET_ALGO_HIER: /* the root's rail on the HPN, then inside each super-node */
    return duet__bc_best(d->N, S, d->hpn, c) + duet__bc_best(d->L, S, d->upn, c);
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_barrier(const duet__tune_dims_t *d, int algo) {
  switch (algo) {
  case DUET_ALGO_DISSEM:
    return duet__tune_clog2(d->p) * d->flat.lat;
  case DUET_ALGO_HIER: /* arrive inside, leaders across, release inside */
    return 2 * duet__tune_clog2(d->L) * d->upn.lat + duet__tune_clog2(d->N) * d->hpn.lat;
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_allgather(const duet__tune_dims_t *d, int algo, double S, double c) {
  const int p = d->p, N = d->N, L = d->L;

  switch (algo) {
  case DUET_ALGO_RING:
    return duet__ag_ring(p, S, d->flat);
  case DUET_ALGO_RD:
    return duet__ag_rd(p, S, d->flat);
  case DUET_ALGO_HIER:
    if (d->uniform) {
      /* allgather inside, each rail allgathers its 1/L of the super-node's
       * block across, then inside again the other super-nodes' pieces */
      return (L - 1) * duet__tune_xfer(d->upn, S / p) + (N - 1) * duet__tune_xfer(d->hpn, S / p) +
             (L - 1) * duet__tune_xfer(d->upn, (N - 1) * S / p);
    }
    if (d->mem) /* the super-node's blocks on the segment, the rest straight from their ranks */
      return (L - 1) * duet__tune_xfer(d->upn, S / p) + (p - L) * duet__tune_xfer(d->hpn, S / p);
    /* gather to leaders, leaders allgather (largest block L S/p), broadcast */
    return (L - 1) * duet__tune_xfer(d->upn, S / p) +
           (N - 1) * duet__tune_xfer(d->hpn, fmin(S, L * S / p)) + duet__bc_best(L, S, d->upn, c);
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_reduce_scatter(const duet__tune_dims_t *d, int algo, double S, double c) {
  const int p = d->p, N = d->N, L = d->L;

  switch (algo) {
  case DUET_ALGO_RING:
    return duet__rs_ring(p, S, d->flat, c);
  case DUET_ALGO_RD: /* allreduce of all S by recursive doubling, keep one block */
    return duet__ar_rd(p, S, d->flat);
  case DUET_ALGO_PAIRWISE:
    /* priced as the pairwise all-to-all, one message after another, and
     * the reductions after them: never below the ring, so the model keeps
     * the ring, whose p - 1 messages at a time no network has to absorb at
     * once; the calibration table takes it where measured faster */
    return (p - 1) * (duet__tune_xfer(d->flat, S / p) + S / p * duet__tune_red_upb);
  case DUET_ALGO_HIER:
    if (d->uniform) /* reduce-scatter inside over L, then on the rails over N */
      return duet__rs_ring(L, S, d->upn, c) + duet__rs_ring(N, S / L, d->hpn, c);
    if (d->mem) /* the super-node's blocks on the segment, the rest straight to their ranks */
      return (L - 1) * duet__tune_xfer(d->upn, S / p) + (p - L) * duet__tune_xfer(d->hpn, S / p);
    /* reduce to leaders, leaders reduce-scatter, scatter inside */
    return duet__rd_best(L, S, d->upn, c) + duet__rs_ring(N, S, d->hpn, c) +
           (L - 1) * duet__tune_xfer(d->upn, S / p);
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_reduce(const duet__tune_dims_t *d, int algo, double S, double c) {
  const int p = d->p, N = d->N, L = d->L;

  switch (algo) {
  case DUET_ALGO_BINOMIAL:
    return duet__rd_binomial(p, S, d->flat, c);
  case DUET_ALGO_CHAIN:
    return duet__rd_chain(p, S, d->flat, c);
  case DUET_ALGO_HIER:
    if (d->uniform) /* reduce-scatter inside, reduce S/L on the rails, gather */
      return duet__rs_ring(L, S, d->upn, c) + duet__rd_best(N, S / L, d->hpn, c) +
             (L - 1) * duet__tune_xfer(d->upn, S / L);
    return duet__rd_best(L, S, d->upn, c) + duet__rd_best(N, S, d->hpn, c);
  }
  return DUET_TUNE_HUGE;
}

/* All-to-all, S the bytes each rank sends in total. */
static double duet__tune_alltoall(const duet__tune_dims_t *d, int algo, double S) {
  const int p = d->p, N = d->N, L = d->L;

  switch (algo) {
  case DUET_ALGO_PAIRWISE:
    return (p - 1) * duet__tune_xfer(d->flat, S / p);
  case DUET_ALGO_BRUCK:
    return duet__tune_clog2(p) * duet__tune_xfer(d->flat, S / 2);
  case DUET_ALGO_HIER: /* hand local rank j its blocks, then one message per peer domain */
    return (L - 1) * duet__tune_xfer(d->upn, S / L) + (N - 1) * duet__tune_xfer(d->hpn, S / N);
  }
  return DUET_TUNE_HUGE;
}

static double duet__tune_cost_dims(const duet__tune_dims_t *d, int coll, int algo, size_t bytes) {
  const double S = (double)bytes;
  const double c = (double)duet__tune_chunk(d->N, d->upn_tcp, d->upn_sock, algo, bytes);

  if (algo == DUET_ALGO_AUTO || !duet__algo_valid(coll, algo))
    return DUET_TUNE_HUGE;
  /* hier on one super-node or one rank per super-node would be flat anyway */
  if (algo == DUET_ALGO_HIER && (d->N <= 1 || d->L <= 1))
    return DUET_TUNE_HUGE;
  switch (coll) {
  case DUET_COLL_ALLREDUCE:
    return duet__tune_allreduce(d, algo, S, c);
  case DUET_COLL_BROADCAST:
    return duet__tune_broadcast(d, algo, S, c);
  case DUET_COLL_BARRIER:
    return duet__tune_barrier(d, algo);
  case DUET_COLL_ALLGATHER:
    return duet__tune_allgather(d, algo, S, c);
  case DUET_COLL_REDUCE_SCATTER:
    return duet__tune_reduce_scatter(d, algo, S, c);
  case DUET_COLL_REDUCE:
    return duet__tune_reduce(d, algo, S, c);
  case DUET_COLL_ALLTOALL:
  case DUET_COLL_ALLTOALLV:
    return duet__tune_alltoall(d, algo, S);
  }
  return DUET_TUNE_HUGE;
}

/*
 * The calibration table: measured crossovers for communicators whose ranks
 * all sit on one host and form one super-node, where the model misses what
 * dominates there. With more ranks than cores every step of an algorithm
 * waits for the scheduler to run its peer, so algorithms with fewer steps
 * win far beyond where the model moves to the ring (at 4 ranks on 2 cores
 * over tcp, Rabenseifner beats the ring by 1.4x at 512 KiB); and over
 * libfabric's shm the exchange of whole buffers (recursive doubling) stays
 * ahead at 2 ranks up to megabytes.
 *
 * Measured on the 2-core reference machine with
 *   DUET_UPN_PROVIDER=<tcp|shm> DUET_ALGO=<coll>=<algo> mpirun -np <2|4>
 *     perf/duet_perf -o <coll> -b 8 -e 16M -f 4 -n 20 -w 5 --rounds 3
 * for every algorithm, the median of three such sweeps; a row ends where
 * another algorithm became faster. np 2 is not oversubscribed, np 4 is; the
 * np 4 rows are used for 3 to 8 oversubscribed ranks. Where two algorithms
 * were within 10%, the row keeps the one the neighbouring sizes chose.
 * Medians (us), tcp = duet's tcp transport (sweep with -n 40, commit after
 * f64ff5b, chunks as duet__tune_chunk gives them):
 *   allreduce tcp np2: 128K rd 30.5 / rab 31.9 / ring 33.2; 512K rab 88.8 /
 *     rd 93.9 / ring 94.3; 1M ring 160 / rd 200 (-n 50, 5 launches); 2M ring
 *     333 / rab 367; 8M ring 2445 / rab 2767
 *   alltoall tcp np2: pairwise at every size (8 B 6.6 / bruck 7.0)
 *   allreduce tcp np4: 32K rd 48.5 / rab 71.5; 128K rab 102 / ring 125 /
 *     rd 144; 2M rab 1446 / ring 2295; 8M rab 8529 / ring 8539
 *   alltoall tcp np4: 2K bruck 30.7 / pairwise 37.3; 8K pairwise 37.9 /
 *     bruck 42.7; 2M pairwise 429 / bruck 1523
 * Re-measured after bulk lanes got a bounded send buffer (DUET_TCP_SNDBUF,
 * 95c91bb; median of 3 sweeps, -n 20/40/40); the rows still hold:
 *   allreduce np2: 128K rab 31.2 / rd 31.3; 512K rab 85.7 / ring 86.5 / rd
 *     112; 2M ring 382 / rab 395; 8M ring 1656 / rab 1673
 *   allreduce np4: 32K rd 40.5 / rab 68.7; 128K rab 109 / rd 121; 2M rab
 *     1155 / ring 1179; 8M ring 5319 / rab 5765 (within 10%: rab kept)
 *   alltoall np4: 8K bruck 33.8 / pairwise 37.2; 128K pairwise 57.7 /
 *     bruck 71.5; 8M pairwise 2647 / bruck 8978. Bruck now ends at 8 KiB,
 *     not 4 (3 more launches, -n 100, against Open MPI in the same run:
 *     8K bruck 1.17-1.45 / pairwise 0.98-1.17; 16K and 32K mixed)
 * Re-measured after the wire header grew to 32 bytes (0603435; 3 launches
 * per algorithm, alternating, -n 200 (np 3, 4) or 100 (np 8), --compare
 * mpi): Bruck now wins to 32 KiB from 4 ranks on, and the row for 4 to 8
 * ranks ends there; 3 ranks keep the 8 KiB row (Bruck's 2 rounds save no
 * message over pairwise's 2 there, and cost copies):
 *   alltoall np4: 16K bruck 39.5-43.9 / pairwise 51.0-65.6; 32K bruck
 *     47.7-51.9 / pairwise 58.0-58.0 (Open MPI 59.2-62.5); 64K pairwise
 *     60.5-63.2 / bruck 64.7-69.3
 *   alltoall np8: 16K bruck 169-176 / pairwise 331-397; 32K bruck 238-255
 *     / pairwise 299-335; 64K pairwise 244-331 / bruck 340-377
 *   alltoall np3: 16K pairwise 48.7-50.9 / bruck 59.9-65.9; 64K pairwise
 *     68.2-118 / bruck 91.7-99.3; 12 B .. 3K within noise of each other
 * The np4 row's end checked over 30 launches per algorithm, alternating
 * (543f72b; -b 4K -e 128K -f 2 -n 100 -w 10 --compare mpi; the cores near
 * in some launches, far in most; duet/Open MPI out of place, min / median /
 * max):
 *   4K bruck 0.93/1.39/1.97, pairwise 0.80/1.11/1.19; 8K bruck
 *     1.19/1.40/1.60, pairwise 1.09/1.13/1.20; 16K bruck 1.26/1.33/1.53,
 *     pairwise 1.06/1.12/1.17; 32K bruck 1.18/1.27/1.48, pairwise
 *     0.96/1.12/1.18; 64K pairwise 0.98/1.15/1.19, bruck 0.96/1.07/1.61;
 *     128K pairwise 1.09/1.25/1.60, bruck 0.50/0.60/0.78
 * Re-measured after the reduction kernels were vectorised (fcb1b59; 3
 * launches, -n 30, medians of out-of-place times): the ring overtakes
 * Rabenseifner above 2 MiB at np 4 (512K rab 270 / ring 391; 2M ring 1116 /
 * rab 1123; 4M ring 2352 / rab 2689; 16M ring 10997 / rab 12576; in place
 * alike), and at np 3 and 8 too (one launch: np 8 16M ring 25340 / rab
 * 28707; np 3 16M ring 9633 / rab 11481). The ring row starts at 2 MiB + 1.
 * Reduce-scatter, duet's tcp, after the rd algorithm came (2 launches,
 * -n 40, `-o reduce_scatter -b 16 -e 2M -f 4`, the whole vector):
 *   np4: 16 B rd 26-28 / ring 44-73; 4K rd 26-32 / ring 47-75; 16K rd 34-42
 *     / ring 50-74; 64K ring 58-83 / rd 77-97; 1M ring 315-423 / rd 789-904;
 *     3 more launches, -n 60-100: 32K rd 42-57 / ring 60-114, 64K ring 69-77
 *     / rd 79-101 (and once rd 70-78 / ring 96-121)
 *   np3: 16K rd 34-43 / ring 43-49; 64K ring 51-60 / rd 79
 *   np2 (not oversubscribed, the model's ring): 4K ring 5.9-6.8 / rd 7.0
 * and after the pairwise algorithm came (2 launches, -n 200, `-b 16p -e
 * 64Kp -f 4`; then one launch, -n 20, 256Kp .. 4Mp; us):
 *   np3: 48 B pairwise 28.2-28.4 / rd 29.9-43.0 / ring 35.4-37.0; 12K
 *     pairwise 30.7-31.6 / rd 28.7-42.9 / ring 40.3-42.5; 48K pairwise
 *     35.5-37.0 / rd 45.5-45.9 / ring 45.6-45.7; 768K pairwise 237 / ring
 *     267 / rd 513; 12M pairwise 4666 / ring 4869
 *   np4: 16K rd 32.1-32.8 / pairwise 39.8-45.0 / ring 45.6-45.9; 64K
 *     pairwise 46.0-46.1 / ring 52.9 / rd 63.1; 1M pairwise 306 / ring 409;
 *     16M pairwise 6952 / ring 7236
 *   np8: 8K rd 119 / pairwise 205 / ring 282; 32K rd 159 / pairwise 211;
 *     128K pairwise 260 / ring 387 / rd 467
 * tcp;ofi_rxm with duet's rxm defaults:
 *   allreduce tcp np2: 32K rd 12.4 / rab 20.7; 128K rab 38.4 / ring 40.0 /
 *     rd 55.1; 512K rd 131 / rab 139; 2M ring 595 / rab 665; 8M ring 2616
 *   allreduce tcp np4: 32K rd 67 / rab 86; 128K rab 138 / rd 286; 512K ring
 *     565 / rab 606; 2M rab 2093 / ring 2713; 8M rab 9455 / ring 11182
 *   alltoall tcp np4: 8K bruck 41 / pairwise 47; 32K pairwise 52 / bruck 68
 *   allreduce shm np2: 2K rd 1.8 / rab 2.3; 8K ring 3.0 / rab 3.1 / rd 7.3;
 *     2M rd 289 / rab 385; 8M rab 1690 / rd 1708
 *   allreduce shm np4: 2K rd 8.0 / rab 9.4; 8K rab 11.1 / ring 14.3 / rd 27;
 *     2M rab 848 / ring 1347
 *   alltoall shm np4: 128 B bruck 8.8 / pairwise 9.2; 512 B pairwise 5.4 /
 *     bruck 8.7; alltoall np2 (both): pairwise, or within 12%
 * The table applies only when nothing forces the algorithm; other shapes (and
 * other providers) use the model.
 */
static const struct duet__tune_calib {
  const char *provider; /* the UPN provider, as named ("tcp": duet's transport) */
  int oversubscribed;
  int pmin, pmax; /* rank counts */
  int coll;
  size_t max_bytes; /* this row's algorithm up to here */
  int algo;
} duet__tune_calib_table[] = {
    {"tcp", 0, 2, 2, DUET_COLL_ALLREDUCE, 256u << 10, DUET_ALGO_RD},
    {"tcp", 0, 2, 2, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RING},
    {"tcp", 0, 2, 2, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"tcp", 1, 3, 8, DUET_COLL_ALLREDUCE, 64u << 10, DUET_ALGO_RD},
    {"tcp", 1, 3, 8, DUET_COLL_ALLREDUCE, 2u << 20, DUET_ALGO_RABENSEIFNER},
    {"tcp", 1, 3, 8, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RING},
    {"tcp", 1, 3, 3, DUET_COLL_ALLTOALL, 8u << 10, DUET_ALGO_BRUCK},
    {"tcp", 1, 4, 8, DUET_COLL_ALLTOALL, 32u << 10, DUET_ALGO_BRUCK},
    {"tcp", 1, 3, 8, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"tcp", 1, 3, 3, DUET_COLL_REDUCE_SCATTER, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"tcp", 1, 4, 8, DUET_COLL_REDUCE_SCATTER, 32u << 10, DUET_ALGO_RD},
    {"tcp", 1, 4, 8, DUET_COLL_REDUCE_SCATTER, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"tcp;ofi_rxm", 0, 2, 2, DUET_COLL_ALLREDUCE, 64u << 10, DUET_ALGO_RD},
    {"tcp;ofi_rxm", 0, 2, 2, DUET_COLL_ALLREDUCE, 256u << 10, DUET_ALGO_RABENSEIFNER},
    {"tcp;ofi_rxm", 0, 2, 2, DUET_COLL_ALLREDUCE, 1u << 20, DUET_ALGO_RD},
    {"tcp;ofi_rxm", 0, 2, 2, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RING},
    {"tcp;ofi_rxm", 0, 2, 2, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"tcp;ofi_rxm", 1, 3, 8, DUET_COLL_ALLREDUCE, 64u << 10, DUET_ALGO_RD},
    {"tcp;ofi_rxm", 1, 3, 8, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RABENSEIFNER},
    {"tcp;ofi_rxm", 1, 3, 8, DUET_COLL_ALLTOALL, 16u << 10, DUET_ALGO_BRUCK},
    {"tcp;ofi_rxm", 1, 3, 8, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"shm", 0, 2, 2, DUET_COLL_ALLREDUCE, 4u << 10, DUET_ALGO_RD},
    {"shm", 0, 2, 2, DUET_COLL_ALLREDUCE, 16u << 10, DUET_ALGO_RABENSEIFNER},
    {"shm", 0, 2, 2, DUET_COLL_ALLREDUCE, 4u << 20, DUET_ALGO_RD},
    {"shm", 0, 2, 2, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RABENSEIFNER},
    {"shm", 0, 2, 2, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
    {"shm", 1, 3, 8, DUET_COLL_ALLREDUCE, 4u << 10, DUET_ALGO_RD},
    {"shm", 1, 3, 8, DUET_COLL_ALLREDUCE, SIZE_MAX, DUET_ALGO_RABENSEIFNER},
    {"shm", 1, 3, 8, DUET_COLL_ALLTOALL, 256, DUET_ALGO_BRUCK},
    {"shm", 1, 3, 8, DUET_COLL_ALLTOALL, SIZE_MAX, DUET_ALGO_PAIRWISE},
};

/* The table's algorithm for this call, or DUET_ALGO_AUTO (no row: use the
 * model). Every rank of the communicator sees the same shape, so every rank
 * gets the same answer. */
static int duet__tune_calibrated(const duet__tune_shape_t *sh, int coll, size_t bytes) {
  const size_t rows = sizeof(duet__tune_calib_table) / sizeof(duet__tune_calib_table[0]);

  if (!sh->one_host || sh->nsupernodes > 1)
    return DUET_ALGO_AUTO;
  for (size_t i = 0; i < rows; i++) {
    const struct duet__tune_calib *r = &duet__tune_calib_table[i];
    if (r->coll == coll && r->oversubscribed == (sh->oversubscribed != 0) &&
        sh->nranks >= r->pmin && sh->nranks <= r->pmax &&
        strcmp(sh->upn_provider, r->provider) == 0 && bytes <= r->max_bytes)
      return r->algo;
  }
  return DUET_ALGO_AUTO;
}

double duet__tune_cost_us(const duet__tune_shape_t *shape, int coll, int algo, size_t bytes) {
  duet__tune_dims_t d;
  if (duet__tune_dims(shape, &d))
    return DUET_TUNE_HUGE;
  return duet__tune_cost_dims(&d, coll, algo, bytes);
}

duet__tune_choice_t duet__tune_pick(const duet__tune_shape_t *shape, int coll, size_t bytes,
                                    const duet__algo_force_t *force) {
  duet__tune_choice_t ch = {DUET_ALGO_AUTO, DUET_TUNE_CHUNK_MAX, DUET_TUNE_HUGE};
  duet__tune_dims_t d;
  const char *why = "model";
  int ok = duet__tune_dims(shape, &d) == 0;
  int nsn = ok ? d.N : 1;

  if (coll < 0 || coll >= DUET_COLL_COUNT)
    return ch;
  if (force && force->coll[coll] != DUET_ALGO_AUTO && duet__algo_valid(coll, force->coll[coll])) {
    ch.algo = force->coll[coll];
    why = "DUET_ALGO";
    if (ok)
      ch.est_us = duet__tune_cost_dims(&d, coll, ch.algo, bytes);
  } else if (coll == DUET_COLL_SEND || coll == DUET_COLL_RECV) {
    why = "not tuned"; /* one message */
    if (ok)
      ch.est_us = duet__tune_xfer(d.flat, (double)bytes);
  } else if (ok && (ch.algo = duet__tune_calibrated(shape, coll, bytes)) != DUET_ALGO_AUTO) {
    why = "calibration table";
    ch.est_us = duet__tune_cost_dims(&d, coll, ch.algo, bytes);
  } else {
    /* cheapest valid algorithm; ties (within rounding: equal models such as
     * binomial and chain on 3 ranks) go to the earlier, simpler one */
    for (int a = DUET_ALGO_AUTO + 1; a < DUET_ALGO_COUNT; a++) {
      double t;
      if (!duet__algo_valid(coll, a))
        continue;
      t = ok ? duet__tune_cost_dims(&d, coll, a, bytes) : DUET_TUNE_HUGE;
      if (ch.algo == DUET_ALGO_AUTO || t < ch.est_us * (1.0 - 1e-9)) {
        ch.algo = a;
        ch.est_us = t;
      }
    }
    if (!ok)
      why = "bad shape, first algorithm";
  }
  ch.chunk_bytes = duet__tune_chunk(nsn, ok && d.upn_tcp, ok && d.upn_sock, ch.algo, bytes);
  DUET_TRACE(DUET_SUB_TUNE,
             "%s %zu bytes on %d ranks (%d super-nodes of %d%s): %s (%s), chunk %zu, "
             "est %.1f us",
             duet__coll_short_name(coll), bytes, shape ? shape->nranks : 0,
             shape ? shape->nsupernodes : 0, shape ? shape->local_size : 0,
             shape && !shape->uniform ? ", unequal" : "", duet__algo_name(ch.algo), why,
             ch.chunk_bytes, ch.est_us);
  return ch;
}
