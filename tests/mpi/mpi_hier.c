/*
 * mpi_hier.c - every algorithm of every collective on emulated super-nodes,
 * launched by mpirun and checked against MPI; plus the hierarchy's traffic
 * claim, read from duet_comm_get_stats.
 *
 *   mpirun <opts> -np 3 -x DUET_SUPERNODE=a tests/mpi/mpi_hier [-q] [-v] [-a SPEC] \
 *                : -np 3 -x DUET_SUPERNODE=b tests/mpi/mpi_hier [-q] [-v] [-a SPEC]
 *
 * Super-nodes come from DUET_SUPERNODE (default: the host name); the test
 * works the expected layout out itself (MPI_Allgather of the names) and
 * checks duet_comm_supernode against it.
 *
 * Without -a the collectives run under five DUET_ALGO settings, one
 * communicator each (DUET_ALGO is read at duet_comm_init_rank):
 *   allreduce      ring rd rabenseifner hier
 *   broadcast      binomial chain hier
 *   barrier        dissem hier
 *   allgather      ring rd hier
 *   reduce_scatter ring rd hier pairwise
 *   reduce         binomial chain hier
 * the k-th setting forcing the k-th algorithm of each collective that has one,
 * and a last setting with DUET_ALGO unset ("auto"). Each collective is tested
 * under the settings that give it a new algorithm; every setting also runs
 * one batch of non-blocking operations of every kind in flight at once.
 *
 *   allreduce      sum prod min max avg on int32, float32, bfloat16 and a 64-bit
 *                  type (int64/uint64/float64 by algorithm); counts
 *                  0 1 7 1000 65537 (and 1048579 without -q, for sum and one
 *                  other op per type); out of place and in place; against
 *                  MPI_Allreduce or the serial reference
 *   broadcast      every root; counts as allreduce; root in place and non-roots
 *                  passing a NULL sendbuf; against MPI_Bcast
 *   reduce         every root, every op and type; non-roots pass a NULL recvbuf
 *                  or one that must stay untouched; root in place; MPI_Reduce
 *   allgather      out of place, MPI in place (sendbuf == recvbuf) and NCCL in
 *                  place (sendbuf == recvbuf + rank*count); MPI_Allgather
 *   reduce_scatter out of place, MPI in place (recvbuf == sendbuf) and NCCL in
 *                  place (recvbuf == sendbuf + rank*count); every op;
 *                  MPI_Reduce_scatter_block or the serial reference
 *   barrier        nobody leaves before a late rank has entered
 * Every receive buffer has a guard region after it that must stay intact, and
 * send buffers must be unchanged out of place. Each collective also runs its
 * non-blocking form with several operations in flight.
 *
 * Traffic (allreduce ring and hier): stats are cumulative, so the deltas of
 * duet_comm_get_stats around one allreduce of S = 4 MiB of float32 are checked:
 *   hier, N super-nodes of L ranks each: HPN bytes sent per rank
 *   <= 2*(S/L)*(N-1)/N + 4096, 0 when N == 1, > 0 on every rank when N > 1;
 *   the sum over all ranks <= N*L times that; per rail (ranks of one local
 *   index) HPN bytes sent == HPN bytes received (traffic stays on the rail);
 *   UPN bytes per rank <= 2*S*(L-1)/L + 4096;
 *   ring: UPN + HPN bytes sent per rank == 2*S*(p-1)/p (+-4096); on one
 *   super-node all of it on the UPN;
 *   always: UPN bytes sent == received within each super-node, and HPN bytes
 *   sent == received over all ranks.
 * With unequal super-nodes the bounds are skipped (results are still checked).
 *
 * mem-upn (auto, two super-nodes, one of at least 2 ranks, 8 at most,
 * default providers): a blocking and a non-blocking allreduce, allgather,
 * reduce_scatter, broadcast and reduce (root: the last rank) of 1, 1000
 * and 65537 float32 against MPI, and a barrier, each sending no UPN message
 * (the super-node's phases go through the shared segment); allgather and
 * reduce_scatter send and receive exactly (N-1) blocks over the HPN per
 * rank on equal super-nodes of consecutive ranks (the rails), and one
 * block per rank of the other super-node on other layouts; broadcast and
 * reduce (N-1) blocks over all ranks.
 *
 * Options: -q quick (no 1048579/262147-element cases, fewer late ranks),
 * -a SPEC run only this DUET_ALGO setting (e.g. "allreduce=hier,reduce=chain";
 * "auto" leaves DUET_ALGO unset and tests every collective), -v one line per case.
 * Rank 0 prints a line per collective x algorithm and a summary; the exit
 * status is non-zero on any failure (DUET_ERR_UNSUPPORTED counts as one).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpi_common.h"

/* ---- collectives, algorithms, settings ---- */

enum { C_ALLREDUCE, C_BROADCAST, C_BARRIER, C_ALLGATHER, C_REDUCE_SCATTER, C_REDUCE, NCOLL };
enum { ROW_LAYOUT = NCOLL, ROW_MIXED, ROW_TRAFFIC, ROW_MEM, NROWS };

static const char *const row_names[NROWS] = {
    "allreduce", "broadcast", "barrier", "allgather", "reduce_scatter", "reduce",
    "layout",    "nb-mixed",  "traffic", "mem-upn"};

#define MAX_ALGOS 4
static const char *const coll_algos[NCOLL][MAX_ALGOS] = {
    [C_ALLREDUCE] = {"ring", "rd", "rabenseifner", "hier"},
    [C_BROADCAST] = {"binomial", "chain", "hier", NULL},
    [C_BARRIER] = {"dissem", "hier", NULL, NULL},
    [C_ALLGATHER] = {"ring", "rd", "hier", NULL},
    [C_REDUCE_SCATTER] = {"ring", "rd", "hier", "pairwise"},
    [C_REDUCE] = {"binomial", "chain", "hier", NULL},
};

typedef struct {
  char spec[256];            /* DUET_ALGO value; "" leaves it unset */
  char label[32];            /* column name for the rows that are not collectives */
  const char *algo[NCOLL];   /* algorithm name per tested collective, NULL: not tested */
  int ai[NCOLL];             /* index of that algorithm (varies the data a little) */
} setting_t;

/* ---- results ---- */

#define MAX_RESULTS 128
typedef struct {
  int row;
  char algo[32];
  long errs;
  int unsupported, skipped;
  double secs;
} result_t;

typedef struct {
  int rank, size, quick, verbose;
  duet_comm_t *comm;
  /* the layout as this test works it out from DUET_SUPERNODE / the host name */
  int sn, nsn, lr, ls, equal;
  int *sn_sizes;
  char layout[64];
  const setting_t *set;
  int unsupported; /* the library answered DUET_ERR_UNSUPPORTED in this test */
  result_t results[MAX_RESULTS];
  int nresults;
} ctx_t;

/* A duet call: DUET_ERR_UNSUPPORTED marks the test and jumps to its `out`
 * label (every rank gets the same answer, so every rank leaves together);
 * any other error aborts the job, as MT_CHECK. */
#define DCALL(c, call)                                                                             \
  do {                                                                                             \
    duet_status_t dc_st_ = (call);                                                                 \
    if (dc_st_ == DUET_ERR_UNSUPPORTED) {                                                          \
      note_unsupported((c), #call);                                                                \
      goto out;                                                                                    \
    }                                                                                              \
    if (dc_st_ < 0)                                                                                \
      die((c), dc_st_, #call, __LINE__);                                                           \
  } while (0)

static void die(ctx_t *c, duet_status_t st, const char *call, int line) {
  fprintf(stderr, "[rank %d] %s:%d: %s failed: %s (%d): %s\n", c->rank, __FILE__, line, call,
          duet_strerror(st), (int)st, duet_last_error(c->comm));
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static void note_unsupported(ctx_t *c, const char *call) {
  if (!c->unsupported && c->rank == 0)
    fprintf(stderr, "[rank 0] %s: DUET_ERR_UNSUPPORTED: %s\n", call, duet_last_error(c->comm));
  c->unsupported = 1;
}

/* Complete reqs[0..n) (NULL entries are skipped): reverse duet_wait, or
 * duet_test polling with a deadline. Returns the number of failed operations. */
static long complete_all(ctx_t *c, duet_request_t **reqs, int n, int poll, const char *what) {
  long errs = 0;
  if (!poll) {
    for (int i = n - 1; i >= 0; i--) {
      if (!reqs[i])
        continue;
      duet_status_t st = duet_wait(reqs[i]);
      reqs[i] = NULL;
      if (st < 0) {
        fprintf(stderr, "[rank %d] %s: duet_wait of #%d: %s: %s\n", c->rank, what, i,
                duet_strerror(st), duet_last_error(c->comm));
        errs++;
      }
    }
    return errs;
  }
  int left = 0;
  for (int i = 0; i < n; i++)
    left += reqs[i] != NULL;
  double deadline = MPI_Wtime() + 150;
  while (left > 0) {
    for (int i = 0; i < n; i++) {
      if (!reqs[i])
        continue;
      int done = 0;
      duet_status_t st = duet_test(reqs[i], &done);
      if (done) {
        reqs[i] = NULL;
        left--;
        if (st < 0) {
          fprintf(stderr, "[rank %d] %s: duet_test of #%d: %s: %s\n", c->rank, what, i,
                  duet_strerror(st), duet_last_error(c->comm));
          errs++;
        }
      } else if (st < 0 && st != DUET_IN_PROGRESS) {
        fprintf(stderr, "[rank %d] %s: duet_test of #%d returned %s without done: %s\n", c->rank,
                what, i, duet_strerror(st), duet_last_error(c->comm));
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
    if (left > 0 && MPI_Wtime() > deadline) {
      fprintf(stderr, "[rank %d] %s: %d requests still pending after 150 s\n", c->rank, what,
              left);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  return errs;
}

static long check_unchanged(ctx_t *c, const void *buf, const void *copy, size_t bytes,
                            const char *which, const char *what) {
  if (bytes && memcmp(buf, copy, bytes) != 0) {
    size_t i = 0;
    while (((const unsigned char *)buf)[i] == ((const unsigned char *)copy)[i])
      i++;
    fprintf(stderr, "[rank %d] %s: %s was modified (first at byte %zu of %zu)\n", c->rank, what,
            which, i, bytes);
    return 1;
  }
  return 0;
}

static void verbose_case(ctx_t *c, const char *what) {
  if (c->verbose && c->rank == 0) {
    printf("#   %s\n", what);
    fflush(stdout);
  }
}

/* ---- references ---- */

/* MPI_Reduce for the types MPI has (8-bit integers excluded, see
 * mt_reference); otherwise the serial reference, on every rank. */
static void ref_reduce(ctx_t *c, const void *send, void *ref, size_t count, duet_datatype_t dt,
                       duet_op_t op, int root) {
  const mt_dtype_t *t = mt_dtype(dt);
  if (t->mpi != MPI_DATATYPE_NULL && t->size > 1) {
    MPI_Reduce(send, ref, (int)count, t->mpi, mt_op_mpi(op), root, MPI_COMM_WORLD);
    if (op == DUET_AVG && c->rank == root)
      mt_avg_divide(ref, count, dt, c->size);
  } else {
    mt_reference(send, ref, count, dt, op, MPI_COMM_WORLD);
  }
}

/* Block `rank` of the reduction of every rank's size*rc elements. tmp holds
 * size*rc elements (used only for the serial reference). */
static void ref_reduce_scatter(ctx_t *c, const void *send, void *ref, void *tmp, size_t rc,
                               duet_datatype_t dt, duet_op_t op) {
  const mt_dtype_t *t = mt_dtype(dt);
  if (t->mpi != MPI_DATATYPE_NULL && t->size > 1) {
    MPI_Reduce_scatter_block(send, ref, (int)rc, t->mpi, mt_op_mpi(op), MPI_COMM_WORLD);
    if (op == DUET_AVG)
      mt_avg_divide(ref, rc, dt, c->size);
  } else {
    mt_reference(send, tmp, rc * (size_t)c->size, dt, op, MPI_COMM_WORLD);
    memcpy(ref, (const char *)tmp + (size_t)c->rank * rc * t->size, rc * t->size);
  }
}

/* ---- allreduce ---- */

#define TRAFFIC_COUNT ((size_t)1048320) /* 840 * 1248: divisible by 1..8; 4 MiB - 1 KiB */

static long traffic(ctx_t *c, const char *algo);

static long test_allreduce(ctx_t *c, int ai, const char *algo) {
  static const duet_datatype_t wide[3] = {DUET_INT64, DUET_UINT64, DUET_FLOAT64};
  const duet_datatype_t types[4] = {DUET_INT32, DUET_FLOAT32, DUET_BFLOAT16, wide[ai % 3]};
  const size_t counts[] = {0, 1, 7, 1000, 65537, 1048579};
  const int ncounts = c->quick ? 5 : 6;
  const size_t maxbytes = counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(maxbytes + MT_GUARD), *ref = mt_xmalloc(maxbytes);
  long errs = 0;
  char what[160];

  for (int ti = 0; ti < 4; ti++) {
    const mt_dtype_t *t = mt_dtype(types[ti]);
    for (int o = 0; o < DUET_NUM_OPS; o++) {
      for (int ci = 0; ci < ncounts; ci++) {
        /* the biggest count for sum and one other op per type (time) */
        if (ci == 5 && o != DUET_SUM && o != 1 + (ti + ai) % 4)
          continue;
        size_t count = counts[ci], bytes = count * t->size;
        uint64_t seed = 0xA11ull + 1000003ull * (uint64_t)ti + 7919ull * (uint64_t)o + ci;
        mt_fill_input(send, count, t->dt, (duet_op_t)o, c->rank, c->size, seed);
        memcpy(copy, send, bytes);
        mt_reference(send, ref, count, t->dt, (duet_op_t)o, MPI_COMM_WORLD);

        snprintf(what, sizeof what, "allreduce %s %s/%s count %zu out-of-place", algo, t->name,
                 mt_op_name((duet_op_t)o), count);
        memset(recv, 0x5A, bytes);
        mt_guard_fill(recv + bytes);
        mt_guard_fill(send + bytes);
        DCALL(c, duet_allreduce(send, recv, count, t->dt, (duet_op_t)o, c->comm));
        errs += (long)mt_compare(recv, ref, count, t->dt, c->rank, what);
        errs += mt_guard_check(recv + bytes, c->rank, what);
        errs += check_unchanged(c, send, copy, bytes, "sendbuf", what);
        errs += mt_guard_check(send + bytes, c->rank, what);
        verbose_case(c, what);

        snprintf(what, sizeof what, "allreduce %s %s/%s count %zu in-place", algo, t->name,
                 mt_op_name((duet_op_t)o), count);
        memcpy(recv, copy, bytes);
        mt_guard_fill(recv + bytes);
        DCALL(c, duet_allreduce(recv, recv, count, t->dt, (duet_op_t)o, c->comm));
        errs += (long)mt_compare(recv, ref, count, t->dt, c->rank, what);
        errs += mt_guard_check(recv + bytes, c->rank, what);
        verbose_case(c, what);
      }
    }
  }

  /* non-blocking: three in flight, completed in reverse order, then by polling */
  for (int pass = 0; pass < 2; pass++) {
    static const struct {
      duet_datatype_t dt;
      duet_op_t op;
      size_t count;
      int in_place;
    } nb[3] = {{DUET_INT32, DUET_SUM, 65537, 0},
               {DUET_BFLOAT16, DUET_MAX, 1000, 1},
               {DUET_FLOAT64, DUET_AVG, 7, 0}};
    void *s[3], *r[3], *w[3];
    duet_request_t *req[3] = {NULL, NULL, NULL};
    int unsup = 0;
    for (int i = 0; i < 3; i++) {
      size_t bytes = nb[i].count * mt_dtype(nb[i].dt)->size;
      s[i] = mt_xmalloc(bytes + MT_GUARD);
      r[i] = mt_xmalloc(bytes + MT_GUARD);
      w[i] = mt_xmalloc(bytes);
      mt_fill_input(s[i], nb[i].count, nb[i].dt, nb[i].op, c->rank, c->size, 99 + i + 3 * pass);
      mt_reference(s[i], w[i], nb[i].count, nb[i].dt, nb[i].op, MPI_COMM_WORLD);
      if (nb[i].in_place)
        memcpy(r[i], s[i], bytes);
      else
        memset(r[i], 0x5A, bytes);
      mt_guard_fill((char *)r[i] + bytes);
    }
    for (int i = 0; i < 3 && !unsup; i++) {
      duet_status_t st = duet_iallreduce(nb[i].in_place ? r[i] : s[i], r[i], nb[i].count,
                                         nb[i].dt, nb[i].op, c->comm, &req[i]);
      if (st == DUET_ERR_UNSUPPORTED) {
        note_unsupported(c, "duet_iallreduce");
        unsup = 1;
        req[i] = NULL;
      } else if (st < 0) {
        die(c, st, "duet_iallreduce", __LINE__);
      }
    }
    snprintf(what, sizeof what, "iallreduce %s (%s)", algo, pass ? "duet_test" : "reverse wait");
    errs += complete_all(c, req, 3, pass, what);
    for (int i = 0; i < 3; i++) {
      size_t bytes = nb[i].count * mt_dtype(nb[i].dt)->size;
      if (!unsup) {
        snprintf(what, sizeof what, "iallreduce %s #%d %s/%s count %zu%s (%s)", algo, i,
                 mt_dtype(nb[i].dt)->name, mt_op_name(nb[i].op), nb[i].count,
                 nb[i].in_place ? " in-place" : "", pass ? "duet_test" : "reverse wait");
        errs += (long)mt_compare(r[i], w[i], nb[i].count, nb[i].dt, c->rank, what);
        errs += mt_guard_check((char *)r[i] + bytes, c->rank, what);
        verbose_case(c, what);
      }
      free(s[i]);
      free(r[i]);
      free(w[i]);
    }
    if (unsup)
      goto out;
  }
out:
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- broadcast ---- */

static long test_broadcast(ctx_t *c, int ai, const char *algo) {
  static const duet_datatype_t types[4] = {DUET_INT32, DUET_BFLOAT16, DUET_FLOAT64, DUET_UINT8};
  const size_t counts[] = {0, 1, 7, 1000, 65537, 1048579};
  const int ncounts = c->quick ? 5 : 6;
  const size_t maxbytes = counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(maxbytes + MT_GUARD), *ref = mt_xmalloc(maxbytes);
  long errs = 0;
  char what[160];

  for (int root = 0; root < c->size; root++) {
    for (int ci = 0; ci < ncounts; ci++) {
      /* the biggest count for the first and the last root only */
      if (ci == 5 && root != 0 && root != c->size - 1)
        continue;
      const mt_dtype_t *t = mt_dtype(types[(root + ci + ai) % 4]);
      size_t count = counts[ci], bytes = count * t->size;
      /* 0: plain; 1: the root in place (recvbuf == sendbuf); 2: non-roots pass NULL sendbuf */
      int variant = (root + ci) % 3;
      uint64_t seed = 0xBCull + 1000003ull * (uint64_t)root + (uint64_t)ci;
      snprintf(what, sizeof what, "broadcast %s root %d %s count %zu %s", algo, root, t->name,
               count, variant == 0 ? "plain" : variant == 1 ? "root-in-place" : "null-sendbuf");
      /* DUET_MIN inputs: random integers, finite halves for floats; junk off the root */
      mt_fill_input(send, count, t->dt, DUET_MIN, c->rank == root ? -1 : c->rank, c->size, seed);
      memcpy(copy, send, bytes);
      memcpy(ref, send, bytes);
      MPI_Bcast(ref, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD);

      const void *sbuf = send;
      unsigned char *rbuf = recv;
      if (variant == 1 && c->rank == root)
        rbuf = send;
      if (variant == 2 && c->rank != root)
        sbuf = NULL;
      if (rbuf == recv)
        memset(recv, 0x5A, bytes);
      mt_guard_fill(rbuf + bytes);
      if (rbuf != send)
        mt_guard_fill(send + bytes);
      DCALL(c, duet_broadcast(sbuf, rbuf, count, t->dt, root, c->comm));
      errs += (long)mt_compare(rbuf, ref, count, t->dt, c->rank, what);
      errs += mt_guard_check(rbuf + bytes, c->rank, what);
      if (rbuf != send) {
        errs += check_unchanged(c, send, copy, bytes, "sendbuf", what);
        errs += mt_guard_check(send + bytes, c->rank, what);
      }
      verbose_case(c, what);
    }
  }

  /* non-blocking: one per root (up to 4) in flight, reverse wait then polling */
  for (int pass = 0; pass < 2; pass++) {
    enum { NB = 4 };
    const size_t cnt = 4099;
    unsigned char *s[NB], *r[NB], *w[NB];
    duet_request_t *req[NB] = {NULL, NULL, NULL, NULL};
    int unsup = 0, roots[NB];
    for (int i = 0; i < NB; i++) {
      roots[i] = (i * 3 + pass) % c->size;
      s[i] = mt_xmalloc(cnt * 4);
      r[i] = mt_xmalloc(cnt * 4 + MT_GUARD);
      w[i] = mt_xmalloc(cnt * 4);
      mt_fill_input(s[i], cnt, DUET_UINT32, DUET_SUM, c->rank == roots[i] ? -1 : c->rank, c->size,
                    0x1BC + (uint64_t)i + 10 * (uint64_t)pass);
      memcpy(w[i], s[i], cnt * 4);
      MPI_Bcast(w[i], (int)cnt, MPI_UINT32_T, roots[i], MPI_COMM_WORLD);
      memset(r[i], 0x5A, cnt * 4);
      mt_guard_fill(r[i] + cnt * 4);
    }
    for (int i = 0; i < NB && !unsup; i++) {
      duet_status_t st = duet_ibroadcast(s[i], r[i], cnt, DUET_UINT32, roots[i], c->comm, &req[i]);
      if (st == DUET_ERR_UNSUPPORTED) {
        note_unsupported(c, "duet_ibroadcast");
        unsup = 1;
        req[i] = NULL;
      } else if (st < 0) {
        die(c, st, "duet_ibroadcast", __LINE__);
      }
    }
    snprintf(what, sizeof what, "ibroadcast %s (%s)", algo, pass ? "duet_test" : "reverse wait");
    errs += complete_all(c, req, NB, pass, what);
    for (int i = 0; i < NB; i++) {
      if (!unsup) {
        snprintf(what, sizeof what, "ibroadcast %s #%d root %d (%s)", algo, i, roots[i],
                 pass ? "duet_test" : "reverse wait");
        errs += (long)mt_compare(r[i], w[i], cnt, DUET_UINT32, c->rank, what);
        errs += mt_guard_check(r[i] + cnt * 4, c->rank, what);
      }
      free(s[i]);
      free(r[i]);
      free(w[i]);
    }
    if (unsup)
      goto out;
  }
out:
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- reduce ---- */

static long test_reduce(ctx_t *c, int ai, const char *algo) {
  static const duet_datatype_t types[4] = {DUET_INT32, DUET_FLOAT32, DUET_BFLOAT16, DUET_INT64};
  const size_t counts[] = {0, 1, 7, 1000, 65537, 1048579};
  const int ncounts = c->quick ? 5 : 6;
  const size_t maxbytes = counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(maxbytes + MT_GUARD), *ref = mt_xmalloc(maxbytes);
  long errs = 0;
  int k = ai;
  char what[160];

  for (int root = 0; root < c->size; root++) {
    for (int ci = 0; ci < ncounts; ci++) {
      if (ci == 5 && root != 0 && root != c->size - 1)
        continue;
      /* root 0 runs every type x op at 1000 elements; elsewhere they rotate */
      int combos = root == 0 && ci == 3 ? 4 * DUET_NUM_OPS : 1;
      for (int cb = 0; cb < combos; cb++, k++) {
        const mt_dtype_t *t = mt_dtype(types[(k / DUET_NUM_OPS) % 4]);
        duet_op_t op = (duet_op_t)(k % DUET_NUM_OPS);
        size_t count = counts[ci], bytes = count * t->size;
        /* 0: plain; 1: the root in place; 2: non-roots pass recvbuf NULL */
        int variant = (root + ci + cb) % 3;
        uint64_t seed = 0x5EDull + 1000003ull * (uint64_t)root + 7919ull * (uint64_t)k + ci;
        snprintf(what, sizeof what, "reduce %s root %d %s/%s count %zu %s", algo, root, t->name,
                 mt_op_name(op), count,
                 variant == 0 ? "plain" : variant == 1 ? "root-in-place" : "null-recvbuf");
        mt_fill_input(send, count, t->dt, op, c->rank, c->size, seed);
        memcpy(copy, send, bytes);
        ref_reduce(c, send, ref, count, t->dt, op, root);

        const void *sbuf = send;
        unsigned char *rbuf = recv;
        if (variant == 1 && c->rank == root)
          rbuf = send; /* sendbuf == recvbuf: in place */
        if (variant == 2 && c->rank != root)
          rbuf = NULL;
        if (rbuf == recv)
          memset(recv, 0x5A, bytes);
        if (rbuf)
          mt_guard_fill(rbuf + bytes);
        if (rbuf != send)
          mt_guard_fill(send + bytes);
        DCALL(c, duet_reduce(sbuf, rbuf, count, t->dt, op, root, c->comm));
        if (c->rank == root) {
          errs += (long)mt_compare(rbuf, ref, count, t->dt, c->rank, what);
          errs += mt_guard_check(rbuf + bytes, c->rank, what);
        } else if (rbuf) {
          /* "elsewhere recvbuf is ignored": it must stay as it was */
          size_t bad = 0;
          for (size_t i = 0; i < bytes; i++)
            bad += recv[i] != 0x5A;
          if (bad) {
            fprintf(stderr, "[rank %d] %s: non-root recvbuf was written (%zu bytes)\n", c->rank,
                    what, bad);
            errs++;
          }
          errs += mt_guard_check(rbuf + bytes, c->rank, what);
        }
        if (rbuf != send) {
          errs += check_unchanged(c, send, copy, bytes, "sendbuf", what);
          errs += mt_guard_check(send + bytes, c->rank, what);
        }
        verbose_case(c, what);
      }
    }
  }

  /* non-blocking: different roots and ops in flight */
  for (int pass = 0; pass < 2; pass++) {
    enum { NB = 3 };
    static const struct {
      duet_datatype_t dt;
      duet_op_t op;
      size_t count;
    } nb[NB] = {{DUET_FLOAT32, DUET_SUM, 65537}, {DUET_UINT64, DUET_PROD, 1000},
                {DUET_BFLOAT16, DUET_AVG, 77}};
    unsigned char *s[NB], *r[NB], *w[NB];
    duet_request_t *req[NB] = {NULL, NULL, NULL};
    int unsup = 0, roots[NB];
    for (int i = 0; i < NB; i++) {
      size_t bytes = nb[i].count * mt_dtype(nb[i].dt)->size;
      roots[i] = ((c->size - 1 - i + pass) % c->size + c->size) % c->size; /* np < 3 */
      s[i] = mt_xmalloc(bytes);
      r[i] = mt_xmalloc(bytes + MT_GUARD);
      w[i] = mt_xmalloc(bytes);
      mt_fill_input(s[i], nb[i].count, nb[i].dt, nb[i].op, c->rank, c->size,
                    0x2ED + (uint64_t)i + 10 * (uint64_t)pass);
      ref_reduce(c, s[i], w[i], nb[i].count, nb[i].dt, nb[i].op, roots[i]);
      memset(r[i], 0x5A, bytes);
      mt_guard_fill(r[i] + bytes);
    }
    for (int i = 0; i < NB && !unsup; i++) {
      duet_status_t st = duet_ireduce(s[i], c->rank == roots[i] ? r[i] : NULL, nb[i].count,
                                      nb[i].dt, nb[i].op, roots[i], c->comm, &req[i]);
      if (st == DUET_ERR_UNSUPPORTED) {
        note_unsupported(c, "duet_ireduce");
        unsup = 1;
        req[i] = NULL;
      } else if (st < 0) {
        die(c, st, "duet_ireduce", __LINE__);
      }
    }
    snprintf(what, sizeof what, "ireduce %s (%s)", algo, pass ? "duet_test" : "reverse wait");
    errs += complete_all(c, req, NB, pass, what);
    for (int i = 0; i < NB; i++) {
      if (!unsup && c->rank == roots[i]) {
        size_t bytes = nb[i].count * mt_dtype(nb[i].dt)->size;
        snprintf(what, sizeof what, "ireduce %s #%d root %d %s/%s (%s)", algo, i, roots[i],
                 mt_dtype(nb[i].dt)->name, mt_op_name(nb[i].op),
                 pass ? "duet_test" : "reverse wait");
        errs += (long)mt_compare(r[i], w[i], nb[i].count, nb[i].dt, c->rank, what);
        errs += mt_guard_check(r[i] + bytes, c->rank, what);
      }
      free(s[i]);
      free(r[i]);
      free(w[i]);
    }
    if (unsup)
      goto out;
  }
out:
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- allgather ---- */

static const char *const gather_forms[3] = {"out-of-place", "in-place-mpi", "in-place-nccl"};

static long test_allgather(ctx_t *c, int ai, const char *algo) {
  static const duet_datatype_t types[4] = {DUET_INT32, DUET_BFLOAT16, DUET_FLOAT64, DUET_UINT8};
  const size_t counts[] = {0, 1, 7, 1000, 65537, 262147};
  const int ncounts = c->quick ? 5 : 6;
  const size_t n = (size_t)c->size, maxbytes = counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(n * maxbytes + MT_GUARD), *ref = mt_xmalloc(n * maxbytes);
  long errs = 0;
  char what[160];

  for (int ci = 0; ci < ncounts; ci++) {
    for (int form = 0; form < 3; form++) {
      const mt_dtype_t *t = mt_dtype(types[(ci + form + ai) % 4]);
      size_t count = counts[ci], bytes = count * t->size;
      unsigned char *mine = recv + (size_t)c->rank * bytes;
      uint64_t seed = 0xA6ull + 7919ull * (uint64_t)ci + (uint64_t)form;
      snprintf(what, sizeof what, "allgather %s %s count %zu %s", algo, t->name, count,
               gather_forms[form]);
      mt_fill_input(send, count, t->dt, DUET_MIN, c->rank, c->size, seed);
      memcpy(copy, send, bytes);
      MPI_Allgather(send, (int)bytes, MPI_BYTE, ref, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
      memset(recv, 0x5A, n * bytes);
      mt_guard_fill(recv + n * bytes);
      if (form == 0) {
        mt_guard_fill(send + bytes);
        DCALL(c, duet_allgather(send, recv, count, t->dt, c->comm));
        errs += check_unchanged(c, send, copy, bytes, "sendbuf", what);
        errs += mt_guard_check(send + bytes, c->rank, what);
      } else {
        memcpy(mine, send, bytes);
        DCALL(c, duet_allgather(form == 1 ? (const void *)recv : (const void *)mine, recv, count,
                                t->dt, c->comm));
      }
      errs += (long)mt_compare(recv, ref, n * count, t->dt, c->rank, what);
      errs += mt_guard_check(recv + n * bytes, c->rank, what);
      verbose_case(c, what);
    }
  }

  /* non-blocking: the three forms in flight together */
  for (int pass = 0; pass < 2; pass++) {
    const size_t cnt = 3001;
    unsigned char *s = mt_xmalloc(cnt * 4), *w = mt_xmalloc(n * cnt * 4), *r[3];
    duet_request_t *req[3] = {NULL, NULL, NULL};
    int unsup = 0;
    mt_fill_input(s, cnt, DUET_UINT32, DUET_SUM, c->rank, c->size, 0x1A6 + (uint64_t)pass);
    MPI_Allgather(s, (int)cnt, MPI_UINT32_T, w, (int)cnt, MPI_UINT32_T, MPI_COMM_WORLD);
    for (int f = 0; f < 3; f++) {
      r[f] = mt_xmalloc(n * cnt * 4 + MT_GUARD);
      memset(r[f], 0x5A, n * cnt * 4);
      mt_guard_fill(r[f] + n * cnt * 4);
      if (f)
        memcpy(r[f] + (size_t)c->rank * cnt * 4, s, cnt * 4);
    }
    for (int f = 0; f < 3 && !unsup; f++) {
      const void *sb = f == 0 ? (const void *)s
                       : f == 1 ? (const void *)r[f]
                                : (const void *)(r[f] + (size_t)c->rank * cnt * 4);
      duet_status_t st = duet_iallgather(sb, r[f], cnt, DUET_UINT32, c->comm, &req[f]);
      if (st == DUET_ERR_UNSUPPORTED) {
        note_unsupported(c, "duet_iallgather");
        unsup = 1;
        req[f] = NULL;
      } else if (st < 0) {
        die(c, st, "duet_iallgather", __LINE__);
      }
    }
    snprintf(what, sizeof what, "iallgather %s (%s)", algo, pass ? "duet_test" : "reverse wait");
    errs += complete_all(c, req, 3, pass, what);
    for (int f = 0; f < 3; f++) {
      if (!unsup) {
        snprintf(what, sizeof what, "iallgather %s %s (%s)", algo, gather_forms[f],
                 pass ? "duet_test" : "reverse wait");
        errs += (long)mt_compare(r[f], w, n * cnt, DUET_UINT32, c->rank, what);
        errs += mt_guard_check(r[f] + n * cnt * 4, c->rank, what);
      }
      free(r[f]);
    }
    free(s);
    free(w);
    if (unsup)
      goto out;
  }
out:
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- reduce_scatter ---- */

static long test_reduce_scatter(ctx_t *c, int ai, const char *algo) {
  static const duet_datatype_t types[4] = {DUET_INT32, DUET_FLOAT32, DUET_BFLOAT16, DUET_UINT64};
  const size_t counts[] = {0, 1, 7, 1000, 65537};
  const int ncounts = 5;
  const size_t n = (size_t)c->size, maxbytes = n * counts[ncounts - 1] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *buf = mt_xmalloc(maxbytes + MT_GUARD), *tmp = mt_xmalloc(maxbytes);
  unsigned char *ref = mt_xmalloc(maxbytes / n);
  long errs = 0;
  char what[160];

  for (int ti = 0; ti < 4; ti++) {
    const mt_dtype_t *t = mt_dtype(types[ti]);
    for (int o = 0; o < DUET_NUM_OPS; o++) {
      duet_op_t op = (duet_op_t)o;
      for (int ci = 0; ci < ncounts; ci++) {
        /* the biggest count for sum and one other op per type */
        if (ci == 4 && o != DUET_SUM && o != 1 + (ti + ai) % 4)
          continue;
        size_t rc = counts[ci], bytes = rc * t->size, all = n * bytes;
        uint64_t seed = 0x5CA7ull + 1000003ull * (uint64_t)ti + 7919ull * (uint64_t)o + ci;
        mt_fill_input(send, n * rc, t->dt, op, c->rank, c->size, seed);
        memcpy(copy, send, all);
        ref_reduce_scatter(c, send, ref, tmp, rc, t->dt, op);
        for (int form = 0; form < 3; form++) {
          snprintf(what, sizeof what, "reduce_scatter %s %s/%s recvcount %zu %s", algo, t->name,
                   mt_op_name(op), rc, gather_forms[form]);
          unsigned char *res;
          if (form == 0) {
            memset(buf, 0x5A, bytes);
            mt_guard_fill(buf + bytes);
            mt_guard_fill(send + all);
            DCALL(c, duet_reduce_scatter(send, buf, rc, t->dt, op, c->comm));
            res = buf;
            errs += mt_guard_check(buf + bytes, c->rank, what);
            errs += check_unchanged(c, send, copy, all, "sendbuf", what);
            errs += mt_guard_check(send + all, c->rank, what);
          } else {
            memcpy(buf, copy, all);
            mt_guard_fill(buf + all);
            res = form == 1 ? buf : buf + (size_t)c->rank * bytes;
            DCALL(c, duet_reduce_scatter(buf, res, rc, t->dt, op, c->comm));
            errs += mt_guard_check(buf + all, c->rank, what);
          }
          errs += (long)mt_compare(res, ref, rc, t->dt, c->rank, what);
          verbose_case(c, what);
        }
      }
    }
  }

  /* non-blocking: the three forms in flight together */
  for (int pass = 0; pass < 2; pass++) {
    const size_t rc = 2003;
    const duet_op_t op = pass ? DUET_MAX : DUET_SUM;
    unsigned char *s = mt_xmalloc(n * rc * 4), *w = mt_xmalloc(rc * 4), *r[3];
    duet_request_t *req[3] = {NULL, NULL, NULL};
    int unsup = 0;
    mt_fill_input(s, n * rc, DUET_FLOAT32, op, c->rank, c->size, 0x15CA + (uint64_t)pass);
    ref_reduce_scatter(c, s, w, tmp, rc, DUET_FLOAT32, op);
    for (int f = 0; f < 3; f++) {
      r[f] = mt_xmalloc(n * rc * 4 + MT_GUARD);
      if (f)
        memcpy(r[f], s, n * rc * 4);
      else
        memset(r[f], 0x5A, rc * 4);
      mt_guard_fill(r[f] + (f ? n : 1) * rc * 4);
    }
    for (int f = 0; f < 3 && !unsup; f++) {
      const void *sb = f == 0 ? (const void *)s : (const void *)r[f];
      void *rb = f == 2 ? r[f] + (size_t)c->rank * rc * 4 : r[f];
      duet_status_t st = duet_ireduce_scatter(sb, rb, rc, DUET_FLOAT32, op, c->comm, &req[f]);
      if (st == DUET_ERR_UNSUPPORTED) {
        note_unsupported(c, "duet_ireduce_scatter");
        unsup = 1;
        req[f] = NULL;
      } else if (st < 0) {
        die(c, st, "duet_ireduce_scatter", __LINE__);
      }
    }
    snprintf(what, sizeof what, "ireduce_scatter %s (%s)", algo,
             pass ? "duet_test" : "reverse wait");
    errs += complete_all(c, req, 3, pass, what);
    for (int f = 0; f < 3; f++) {
      if (!unsup) {
        snprintf(what, sizeof what, "ireduce_scatter %s float32/%s %s (%s)", algo, mt_op_name(op),
                 gather_forms[f], pass ? "duet_test" : "reverse wait");
        errs += (long)mt_compare(f == 2 ? r[f] + (size_t)c->rank * rc * 4 : r[f], w, rc,
                                 DUET_FLOAT32, c->rank, what);
        errs += mt_guard_check(r[f] + (f ? n : 1) * rc * 4, c->rank, what);
      }
      free(r[f]);
    }
    free(s);
    free(w);
    if (unsup)
      goto out;
  }
out:
  free(send);
  free(copy);
  free(buf);
  free(tmp);
  free(ref);
  return errs;
}

/* ---- barrier: nobody leaves before the last rank has entered ---- */

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long test_barrier(ctx_t *c, int ai, const char *algo) {
  long errs = 0;
  int cand[4] = {0, c->size - 1, c->size / 2, c->size > 2 ? 1 : 0}, late_ranks[4], nlate = 0;
  int ncand = c->quick ? 2 : 4;
  MPI_Comm node;
  int node_size;
  char what[160];
  (void)ai;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  for (int k = 0; k < ncand; k++) {
    int dup = 0;
    for (int j = 0; j < nlate; j++)
      dup |= late_ranks[j] == cand[k];
    if (!dup)
      late_ranks[nlate++] = cand[k];
  }

  for (int k = 0; k < nlate; k++) {
    int late = late_ranks[k];
    double entered = 0, latest_entry;
    snprintf(what, sizeof what, "barrier %s with rank %d late", algo, late);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (c->rank == late) {
      mt_sleep_ms(200);
      entered = now_mono();
    }
    DCALL(c, duet_barrier(c->comm));
    double elapsed = MPI_Wtime() - t0, left = now_mono();
    if (elapsed < 0.15) {
      fprintf(stderr, "[rank %d] %s: left after %.3f s (< 0.15 s)\n", c->rank, what, elapsed);
      errs++;
    }
    MPI_Allreduce(&entered, &latest_entry, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (node_size == c->size && left < latest_entry) {
      fprintf(stderr, "[rank %d] %s: left %.6f s before rank %d entered\n", c->rank, what,
              latest_entry - left, late);
      errs++;
    }
    verbose_case(c, what);
  }

  /* non-blocking, with the last rank late: nobody's ibarrier completes early */
  {
    duet_request_t *req = NULL;
    int late = c->size - 1;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (c->rank == late)
      mt_sleep_ms(200);
    DCALL(c, duet_ibarrier(c->comm, &req));
    snprintf(what, sizeof what, "ibarrier %s with rank %d late", algo, late);
    errs += complete_all(c, &req, 1, 1, what);
    double elapsed = MPI_Wtime() - t0;
    if (elapsed < 0.15) {
      fprintf(stderr, "[rank %d] %s: completed after %.3f s (< 0.15 s)\n", c->rank, what,
              elapsed);
      errs++;
    }
    verbose_case(c, what);
  }
  /* several ibarriers in flight, then many blocking ones in a row */
  {
    duet_request_t *req[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < 4; i++)
      DCALL(c, duet_ibarrier(c->comm, &req[i]));
    errs += complete_all(c, req, 4, 0, "4 ibarriers in flight");
  }
  for (int i = 0; i < 30; i++)
    DCALL(c, duet_barrier(c->comm));
out:
  return errs;
}

/* ---- every kind of non-blocking operation in flight at once ---- */

static long test_mixed(ctx_t *c) {
  enum { K_AR2, K_AR, K_BC, K_AG, K_RS, K_RD, K_BAR, NK }; /* posted in this order */
  const size_t n = (size_t)c->size;
  const size_t car = 10007, cbc = 4099, cag = 333, crs = 517, crd = 2049, car2 = 1000;
  const int bc_root = c->size - 1, rd_root = 0;
  long errs = 0;
  duet_request_t *req[NK] = {NULL};
  int unsup[NK] = {0};
  char what[160];

  int32_t *ar_s = mt_xmalloc(car * 4), *ar_r = mt_xmalloc(car * 4 + MT_GUARD),
          *ar_w = mt_xmalloc(car * 4);
  float *bc_b = mt_xmalloc(cbc * 4 + MT_GUARD), *bc_w = mt_xmalloc(cbc * 4);
  uint8_t *ag_r = mt_xmalloc(n * cag + MT_GUARD), *ag_w = mt_xmalloc(n * cag);
  float *rs_s = mt_xmalloc(n * crs * 4), *rs_r = mt_xmalloc(crs * 4 + MT_GUARD),
        *rs_w = mt_xmalloc(crs * 4), *rs_t = mt_xmalloc(n * crs * 4);
  int64_t *rd_s = mt_xmalloc(crd * 8), *rd_r = mt_xmalloc(crd * 8 + MT_GUARD),
          *rd_w = mt_xmalloc(crd * 8);
  uint16_t *ar2_b = mt_xmalloc(car2 * 2 + MT_GUARD), *ar2_w = mt_xmalloc(car2 * 2);

  mt_fill_input(ar_s, car, DUET_INT32, DUET_SUM, c->rank, c->size, 0x31);
  mt_reference(ar_s, ar_w, car, DUET_INT32, DUET_SUM, MPI_COMM_WORLD);
  memset(ar_r, 0x5A, car * 4);
  mt_guard_fill((char *)ar_r + car * 4);

  mt_fill_input(bc_b, cbc, DUET_FLOAT32, DUET_MIN, c->rank == bc_root ? -1 : c->rank, c->size,
                0x32);
  memcpy(bc_w, bc_b, cbc * 4);
  MPI_Bcast(bc_w, (int)cbc, MPI_FLOAT, bc_root, MPI_COMM_WORLD);
  mt_guard_fill((char *)bc_b + cbc * 4);

  memset(ag_r, 0x5A, n * cag);
  mt_fill_input(ag_r + (size_t)c->rank * cag, cag, DUET_UINT8, DUET_SUM, c->rank, c->size, 0x33);
  MPI_Allgather(ag_r + (size_t)c->rank * cag, (int)cag, MPI_BYTE, ag_w, (int)cag, MPI_BYTE,
                MPI_COMM_WORLD);
  mt_guard_fill(ag_r + n * cag);

  mt_fill_input(rs_s, n * crs, DUET_FLOAT32, DUET_MAX, c->rank, c->size, 0x34);
  ref_reduce_scatter(c, rs_s, rs_w, rs_t, crs, DUET_FLOAT32, DUET_MAX);
  memset(rs_r, 0x5A, crs * 4);
  mt_guard_fill((char *)rs_r + crs * 4);

  mt_fill_input(rd_s, crd, DUET_INT64, DUET_SUM, c->rank, c->size, 0x35);
  ref_reduce(c, rd_s, rd_w, crd, DUET_INT64, DUET_SUM, rd_root);
  memset(rd_r, 0x5A, crd * 8);
  mt_guard_fill((char *)rd_r + crd * 8);

  mt_fill_input(ar2_b, car2, DUET_BFLOAT16, DUET_AVG, c->rank, c->size, 0x36);
  mt_reference(ar2_b, ar2_w, car2, DUET_BFLOAT16, DUET_AVG, MPI_COMM_WORLD);
  mt_guard_fill((char *)ar2_b + car2 * 2);

  /* Half the ranks post late, so that every rail pairs a late rank with an
   * early one (local index + super-node even: late). On an early rank the
   * first call (a small hierarchical allreduce; on the load/store path a
   * queued task) is still waiting for its late local peer when the rest are
   * posted; on a late rank it runs through to its rail phase at once. The
   * calls must still pair up, so each takes its place at its post. */
  MPI_Barrier(MPI_COMM_WORLD);
  if ((c->lr + c->sn) % 2 == 0)
    usleep(30000);
  for (int k = 0; k < NK; k++) {
    duet_status_t st;
    const char *name;
    switch (k) {
    case K_AR:
      name = "duet_iallreduce";
      st = duet_iallreduce(ar_s, ar_r, car, DUET_INT32, DUET_SUM, c->comm, &req[k]);
      break;
    case K_BC:
      name = "duet_ibroadcast";
      st = duet_ibroadcast(bc_b, bc_b, cbc, DUET_FLOAT32, bc_root, c->comm, &req[k]);
      break;
    case K_AG:
      name = "duet_iallgather";
      st = duet_iallgather(ag_r + (size_t)c->rank * cag, ag_r, cag, DUET_UINT8, c->comm, &req[k]);
      break;
    case K_RS:
      name = "duet_ireduce_scatter";
      st = duet_ireduce_scatter(rs_s, rs_r, crs, DUET_FLOAT32, DUET_MAX, c->comm, &req[k]);
      break;
    case K_RD:
      name = "duet_ireduce";
      st = duet_ireduce(rd_s, c->rank == rd_root ? rd_r : NULL, crd, DUET_INT64, DUET_SUM, rd_root,
                        c->comm, &req[k]);
      break;
    case K_BAR:
      name = "duet_ibarrier";
      st = duet_ibarrier(c->comm, &req[k]);
      break;
    default:
      name = "duet_iallreduce (in place)";
      st = duet_iallreduce(ar2_b, ar2_b, car2, DUET_BFLOAT16, DUET_AVG, c->comm, &req[k]);
      break;
    }
    if (st == DUET_ERR_UNSUPPORTED) {
      note_unsupported(c, name);
      unsup[k] = 1;
      req[k] = NULL;
    } else if (st < 0) {
      die(c, st, name, __LINE__);
    }
  }
  errs += complete_all(c, req, NK, 1, "mixed non-blocking batch");

  snprintf(what, sizeof what, "mixed: iallreduce int32/sum %zu", car);
  if (!unsup[K_AR]) {
    errs += (long)mt_compare(ar_r, ar_w, car, DUET_INT32, c->rank, what);
    errs += mt_guard_check((char *)ar_r + car * 4, c->rank, what);
  }
  snprintf(what, sizeof what, "mixed: ibroadcast float32 %zu root %d in place", cbc, bc_root);
  if (!unsup[K_BC]) {
    errs += (long)mt_compare(bc_b, bc_w, cbc, DUET_FLOAT32, c->rank, what);
    errs += mt_guard_check((char *)bc_b + cbc * 4, c->rank, what);
  }
  snprintf(what, sizeof what, "mixed: iallgather uint8 %zu in-place-nccl", cag);
  if (!unsup[K_AG]) {
    errs += (long)mt_compare(ag_r, ag_w, n * cag, DUET_UINT8, c->rank, what);
    errs += mt_guard_check(ag_r + n * cag, c->rank, what);
  }
  snprintf(what, sizeof what, "mixed: ireduce_scatter float32/max %zu", crs);
  if (!unsup[K_RS]) {
    errs += (long)mt_compare(rs_r, rs_w, crs, DUET_FLOAT32, c->rank, what);
    errs += mt_guard_check((char *)rs_r + crs * 4, c->rank, what);
  }
  snprintf(what, sizeof what, "mixed: ireduce int64/sum %zu root %d", crd, rd_root);
  if (!unsup[K_RD]) {
    if (c->rank == rd_root)
      errs += (long)mt_compare(rd_r, rd_w, crd, DUET_INT64, c->rank, what);
    errs += mt_guard_check((char *)rd_r + crd * 8, c->rank, what);
  }
  snprintf(what, sizeof what, "mixed: iallreduce bfloat16/avg %zu in place", car2);
  if (!unsup[K_AR2]) {
    errs += (long)mt_compare(ar2_b, ar2_w, car2, DUET_BFLOAT16, c->rank, what);
    errs += mt_guard_check((char *)ar2_b + car2 * 2, c->rank, what);
  }
  free(ar_s), free(ar_r), free(ar_w), free(bc_b), free(bc_w), free(ag_r), free(ag_w);
  free(rs_s), free(rs_r), free(rs_w), free(rs_t), free(rd_s), free(rd_r), free(rd_w);
  free(ar2_b), free(ar2_w);
  return errs;
}

/* ---- traffic: the hierarchy's claim, from the cumulative stats ---- */

static long traffic(ctx_t *c, const char *algo) {
  const size_t count = TRAFFIC_COUNT;
  const double S = (double)(count * 4), p = c->size, L = c->ls, N = c->nsn;
  const double slack = 4096;
  float *send = mt_xmalloc(count * 4), *recv = mt_xmalloc(count * 4 + MT_GUARD);
  float *ref = mt_xmalloc(count * 4);
  duet_stats_t before, after;
  uint64_t d[6], sum[6], snsum[6], railsum[6], mx[6], mn[6];
  long errs = 0;
  int hier = strcmp(algo, "hier") == 0, ring = strcmp(algo, "ring") == 0;
  char what[160];
  MPI_Comm sncomm, rail;

  snprintf(what, sizeof what, "traffic %s: allreduce float32/sum of %.0f bytes", algo, S);
  mt_fill_input(send, count, DUET_FLOAT32, DUET_SUM, c->rank, c->size, 0x7AF);
  mt_reference(send, ref, count, DUET_FLOAT32, DUET_SUM, MPI_COMM_WORLD);
  memset(recv, 0x5A, count * 4);
  mt_guard_fill((char *)recv + count * 4);
  MPI_Barrier(MPI_COMM_WORLD);
  DCALL(c, duet_comm_get_stats(c->comm, &before));
  DCALL(c, duet_allreduce(send, recv, count, DUET_FLOAT32, DUET_SUM, c->comm));
  DCALL(c, duet_comm_get_stats(c->comm, &after));
  errs += (long)mt_compare(recv, ref, count, DUET_FLOAT32, c->rank, what);
  errs += mt_guard_check((char *)recv + count * 4, c->rank, what);
  mt_stats_delta(&before, &after, d);

  MPI_Allreduce(d, sum, 6, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(d, mx, 6, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(d, mn, 6, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Comm_split(MPI_COMM_WORLD, c->sn, c->rank, &sncomm);
  MPI_Comm_split(MPI_COMM_WORLD, c->lr, c->rank, &rail);
  MPI_Allreduce(d, snsum, 6, MPI_UINT64_T, MPI_SUM, sncomm);
  MPI_Allreduce(d, railsum, 6, MPI_UINT64_T, MPI_SUM, rail);
  MPI_Comm_free(&sncomm);
  MPI_Comm_free(&rail);

#define TFAIL(...)                                                                                 \
  do {                                                                                             \
    char tf_msg_[400];                                                                             \
    snprintf(tf_msg_, sizeof tf_msg_, __VA_ARGS__);                                                \
    fprintf(stderr, "[rank %d] %s: %s\n", c->rank, what, tf_msg_);                                 \
    errs++;                                                                                        \
  } while (0)
  /* any algorithm: UPN traffic stays inside a super-node, HPN bytes balance */
  if (snsum[0] != snsum[1])
    TFAIL("super-node %d: UPN bytes sent %llu != received %llu", c->sn,
          (unsigned long long)snsum[0], (unsigned long long)snsum[1]);
  if (c->rank == 0 && sum[3] != sum[4])
    TFAIL("HPN bytes sent %llu != received %llu over all ranks", (unsigned long long)sum[3],
          (unsigned long long)sum[4]);
  if (c->nsn == 1 && (d[3] || d[4] || d[5]))
    TFAIL("one super-node, yet HPN traffic: %llu bytes sent, %llu received, %llu messages",
          (unsigned long long)d[3], (unsigned long long)d[4], (unsigned long long)d[5]);
  if (c->ls == 1 && (d[0] || d[1] || d[2]))
    TFAIL("alone in its super-node, yet UPN traffic: %llu bytes sent, %llu messages",
          (unsigned long long)d[0], (unsigned long long)d[2]);

  if (ring) {
    double want = 2 * S * (p - 1) / p, got = (double)(d[0] + d[3]);
    if (got < want - slack || got > want + slack)
      TFAIL("flat ring sent %.0f bytes (UPN %llu + HPN %llu), want 2*S*(p-1)/p = %.0f +- %.0f",
            got, (unsigned long long)d[0], (unsigned long long)d[3], want, slack);
    if (c->nsn == 1 && ((double)d[0] < want - slack || (double)d[0] > want + slack))
      TFAIL("one super-node: UPN bytes sent %llu, want %.0f +- %.0f", (unsigned long long)d[0],
            want, slack);
  }
  double hbound = 0, ubound = 0;
  if (hier && c->equal) {
    hbound = 2 * (S / L) * (N - 1) / N;
    ubound = 2 * S * (L - 1) / L;
    if ((double)d[3] > hbound + slack)
      TFAIL("HPN bytes sent %llu > 2*(S/L)*(N-1)/N + %.0f = %.0f (N=%d L=%d)",
            (unsigned long long)d[3], slack, hbound + slack, c->nsn, c->ls);
    if (c->nsn > 1 && (d[3] == 0 || d[5] == 0))
      TFAIL("N=%d super-nodes, yet no HPN traffic from this rank (%llu bytes, %llu messages)",
            c->nsn, (unsigned long long)d[3], (unsigned long long)d[5]);
    if (c->rank == 0 && (double)sum[3] > L * N * (hbound + slack))
      TFAIL("HPN bytes over all ranks %llu > L*N*(2*(S/L)*(N-1)/N + %.0f) = %.0f",
            (unsigned long long)sum[3], slack, L * N * (hbound + slack));
    /* on its own rail: what a rail sends over the HPN, that rail receives */
    if (railsum[3] != railsum[4])
      TFAIL("rail %d: HPN bytes sent %llu != received %llu: traffic crossed rails", c->lr,
            (unsigned long long)railsum[3], (unsigned long long)railsum[4]);
    if ((double)d[0] > ubound + slack)
      TFAIL("UPN bytes sent %llu > 2*S*(L-1)/L + %.0f = %.0f", (unsigned long long)d[0], slack,
            ubound + slack);
  }
#undef TFAIL
  if (c->rank == 0) {
    printf("# traffic %s: S=%.0f p=%d N=%d L=%d%s: per rank UPN sent %llu..%llu (%llu msgs max), "
           "HPN sent %llu..%llu (%llu msgs max), all ranks HPN %llu",
           algo, S, c->size, c->nsn, c->ls, c->equal ? "" : " (unequal)",
           (unsigned long long)mn[0], (unsigned long long)mx[0], (unsigned long long)mx[2],
           (unsigned long long)mn[3], (unsigned long long)mx[3], (unsigned long long)mx[5],
           (unsigned long long)sum[3]);
    if (hier && c->equal)
      printf("; bounds HPN/rank %.0f, UPN/rank %.0f", hbound + slack, ubound + slack);
    else if (ring)
      printf("; want %.0f per rank", 2 * S * (p - 1) / p);
    else if (hier)
      printf("; bounds skipped (super-nodes of unequal size)");
    printf("\n");
    fflush(stdout);
  }
out:
  free(send);
  free(recv);
  free(ref);
  return errs;
}

/* ---- the load/store UPN ---- */

/* Whether every super-node's ranks are one range. Collective. */
static int consecutive(const ctx_t *c) {
  int *sn = mt_xmalloc(sizeof(int) * (size_t)c->size), yes = 1;
  MPI_Allgather(&c->sn, 1, MPI_INT, sn, 1, MPI_INT, MPI_COMM_WORLD);
  for (int r = 1; r < c->size; r++)
    for (int q = 0; q < r - 1 && sn[r] != sn[r - 1]; q++)
      yes &= sn[q] != sn[r]; /* a super-node starting again */
  free(sn);
  return yes;
}

/* Under auto on two super-nodes, one of 2 or more ranks (a super-node of
 * one rank maps a segment of its own then), 8 ranks at most, with
 * the default providers, the tuner takes the hierarchy for allreduce,
 * allgather and reduce_scatter at these sizes, and for broadcast, reduce
 * and barrier (test_tune checks equal sizes; unequal ones take it too);
 * every super-node sits on this host, so their UPN phases go through the
 * shared segment and send no UPN message, blocking or not. Allgather and
 * reduce_scatter send (N-1) blocks over the HPN per rank on equal
 * super-nodes of consecutive ranks, the least they can; elsewhere one block
 * per rank of the other super-nodes. */
static int mem_upn(const ctx_t *c) {
  const char *upn = getenv("DUET_UPN_PROVIDER");
  int largest = 0;
  for (int k = 0; k < c->nsn; k++)
    largest = c->sn_sizes[k] > largest ? c->sn_sizes[k] : largest;
  return (upn == NULL || *upn == '\0' || strcmp(upn, "mem") == 0) && c->nsn == 2 && largest > 1 &&
         c->size <= 8;
}

static long test_mem_upn(ctx_t *c) {
  static const char *const names[6] = {"allreduce", "allgather", "reduce_scatter",
                                       "broadcast", "reduce",    "barrier"};
  const size_t counts[] = {1, 1000, 65537};
  const size_t n = (size_t)c->size, N = (size_t)c->nsn;
  const int root = c->size - 1; /* in the last super-node: data crosses the HPN */
  const int rails = c->equal && consecutive(c);
  int single = 0; /* a super-node of one rank */
  for (int k = 0; k < c->nsn; k++)
    single |= c->sn_sizes[k] == 1;
  long errs = 0;
  char what[160];
  for (int k = 0; k < 36; k++) {
    const int coll = k % 6, nb = (k / 6) % 2;
    const size_t count = counts[k / 12], S = count * 4;
    float *send = mt_xmalloc(n * S), *recv = mt_xmalloc(n * S), *ref = mt_xmalloc(n * S);
    duet_request_t *req = NULL;
    duet_stats_t before, after;
    uint64_t d[6], hsum = 0;
    size_t rn = coll == 1 ? n * count : coll == 5 ? 0 : count; /* elements of the result */
    const size_t hpn_blocks = rails ? N - 1 : n - (size_t)c->ls; /* allgather, reduce_scatter */
    /* a barrier has no count; with a super-node of one rank, the tuner
     * weighs the flat allreduces against the leaders' from 256 KiB (on 3+1
     * they measured alike) */
    if ((coll == 5 && k / 12 > 0) || (coll == 0 && single && S >= 256 * 1024)) {
      free(send), free(recv), free(ref);
      continue;
    }
    snprintf(what, sizeof what, "mem-upn %s%s float32 count %zu", nb ? "i" : "", names[coll],
             count);
    mt_fill_input(send, n * count, DUET_FLOAT32, DUET_SUM, c->rank, c->size, 0x3E3 + (uint64_t)k);
    if (coll == 0)
      MPI_Allreduce(send, ref, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (coll == 1)
      MPI_Allgather(send, (int)count, MPI_FLOAT, ref, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
    else if (coll == 2)
      MPI_Reduce_scatter_block(send, ref, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (coll == 3) {
      memcpy(ref, send, S);
      MPI_Bcast(ref, (int)count, MPI_FLOAT, root, MPI_COMM_WORLD);
    } else if (coll == 4) {
      MPI_Reduce(send, ref, (int)count, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD);
      if (c->rank != root)
        rn = 0;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    DCALL(c, duet_comm_get_stats(c->comm, &before));
    switch (coll) {
    case 0:
      DCALL(c, nb ? duet_iallreduce(send, recv, count, DUET_FLOAT32, DUET_SUM, c->comm, &req)
                  : duet_allreduce(send, recv, count, DUET_FLOAT32, DUET_SUM, c->comm));
      break;
    case 1:
      DCALL(c, nb ? duet_iallgather(send, recv, count, DUET_FLOAT32, c->comm, &req)
                  : duet_allgather(send, recv, count, DUET_FLOAT32, c->comm));
      break;
    case 2:
      DCALL(c, nb ? duet_ireduce_scatter(send, recv, count, DUET_FLOAT32, DUET_SUM, c->comm, &req)
                  : duet_reduce_scatter(send, recv, count, DUET_FLOAT32, DUET_SUM, c->comm));
      break;
    case 3:
      DCALL(c, nb ? duet_ibroadcast(send, recv, count, DUET_FLOAT32, root, c->comm, &req)
                  : duet_broadcast(send, recv, count, DUET_FLOAT32, root, c->comm));
      break;
    case 4:
      DCALL(c, nb ? duet_ireduce(send, recv, count, DUET_FLOAT32, DUET_SUM, root, c->comm, &req)
                  : duet_reduce(send, recv, count, DUET_FLOAT32, DUET_SUM, root, c->comm));
      break;
    default:
      DCALL(c, nb ? duet_ibarrier(c->comm, &req) : duet_barrier(c->comm));
    }
    if (req != NULL)
      DCALL(c, duet_wait(req));
    DCALL(c, duet_comm_get_stats(c->comm, &after));
    mt_stats_delta(&before, &after, d);
    MPI_Allreduce(&d[3], &hsum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    errs += (long)mt_compare(recv, ref, rn, DUET_FLOAT32, c->rank, what);
    if (d[2] != 0) {
      fprintf(stderr,
              "[rank %d] %s: %llu UPN messages sent; the super-node's phases go through "
              "the shared segment and send none\n",
              c->rank, what, (unsigned long long)d[2]);
      errs++;
    }
    if ((coll == 1 || coll == 2) && (d[3] != hpn_blocks * S || d[4] != hpn_blocks * S)) {
      fprintf(stderr, "[rank %d] %s: HPN bytes sent %llu, received %llu; want %s*count*4 = %zu\n",
              c->rank, what, (unsigned long long)d[3], (unsigned long long)d[4],
              rails ? "(N-1)" : "(ranks of the other super-node)", hpn_blocks * S);
      errs++;
    }
    if ((coll == 3 || coll == 4) && hsum != (N - 1) * S) {
      fprintf(stderr, "[rank %d] %s: HPN bytes sent by all ranks %llu; want (N-1)*count*4 = %zu\n",
              c->rank, what, (unsigned long long)hsum, (N - 1) * S);
      errs++;
    }
    verbose_case(c, what);
    free(send);
    free(recv);
    free(ref);
    continue;
  out:
    free(send);
    free(recv);
    free(ref);
    break;
  }
  return errs;
}

/* ---- layout ---- */

/* The expected layout (mpi_common.h) copied into the test's context. */
static void compute_layout(ctx_t *c) {
  mt_layout_t l;
  mt_layout_compute(&l, c->rank, c->size);
  c->sn = l.sn;
  c->nsn = l.nsn;
  c->lr = l.lr;
  c->ls = l.ls;
  c->equal = l.equal;
  c->sn_sizes = l.sn_sizes;
  snprintf(c->layout, sizeof c->layout, "%s", l.name);
}

static long check_layout(ctx_t *c) {
  mt_layout_t l = {c->sn, c->nsn, c->lr, c->ls, c->equal, c->sn_sizes, ""};
  snprintf(l.name, sizeof l.name, "%s", c->layout);
  return mt_layout_check(c->comm, &l, c->rank);
}

/* ---- driver ---- */

static void record(ctx_t *c, int row, const char *algo, long errs, int unsup, int skipped,
                   double secs) {
  long all = 0;
  int any_unsup = 0;
  MPI_Allreduce(&errs, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&unsup, &any_unsup, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (c->nresults < MAX_RESULTS) {
    result_t *r = &c->results[c->nresults++];
    r->row = row;
    snprintf(r->algo, sizeof r->algo, "%s", algo);
    r->errs = all;
    r->unsupported = any_unsup;
    r->skipped = skipped;
    r->secs = secs;
  }
  if (c->rank == 0) {
    printf("hier np=%d layout=%s %-14s %-12s %s", c->size, c->layout, row_names[row], algo,
           skipped ? "skipped" : any_unsup ? "UNSUPPORTED" : all ? "FAILED" : "OK");
    if (all)
      printf(" (%ld errors)", all);
    printf(" %.2fs\n", secs);
    fflush(stdout);
  }
}

typedef long (*test_fn)(ctx_t *, int, const char *);
static const test_fn coll_tests[NCOLL] = {
    [C_ALLREDUCE] = test_allreduce,   [C_BROADCAST] = test_broadcast,
    [C_BARRIER] = test_barrier,       [C_ALLGATHER] = test_allgather,
    [C_REDUCE_SCATTER] = test_reduce_scatter, [C_REDUCE] = test_reduce,
};

static void run_setting(ctx_t *c, const setting_t *s) {
  if (s->spec[0])
    setenv("DUET_ALGO", s->spec, 1);
  else
    unsetenv("DUET_ALGO");
  if (c->rank == 0) {
    printf("# setting %s: DUET_ALGO=%s\n", s->label, s->spec[0] ? s->spec : "(unset)");
    fflush(stdout);
  }
  c->set = s;
  double t0 = MPI_Wtime();
  c->comm = mt_init_duet(c->rank, c->size);
  record(c, ROW_LAYOUT, s->label, check_layout(c), 0, 0, MPI_Wtime() - t0);
  for (int k = 0; k < NCOLL; k++) {
    if (!s->algo[k])
      continue;
    c->unsupported = 0;
    t0 = MPI_Wtime();
    long errs = coll_tests[k](c, s->ai[k], s->algo[k]);
    record(c, k, s->algo[k], errs, c->unsupported, 0, MPI_Wtime() - t0);
    if (k == C_ALLREDUCE &&
        (strcmp(s->algo[k], "hier") == 0 || strcmp(s->algo[k], "ring") == 0)) {
      c->unsupported = 0;
      t0 = MPI_Wtime();
      errs = traffic(c, s->algo[k]);
      record(c, ROW_TRAFFIC, s->algo[k], errs, c->unsupported, 0, MPI_Wtime() - t0);
    }
  }
  c->unsupported = 0;
  t0 = MPI_Wtime();
  long errs = test_mixed(c);
  record(c, ROW_MIXED, s->label, errs, c->unsupported, 0, MPI_Wtime() - t0);
  if (!s->spec[0] && mem_upn(c)) {
    c->unsupported = 0;
    t0 = MPI_Wtime();
    errs = test_mem_upn(c);
    record(c, ROW_MEM, s->label, errs, c->unsupported, 0, MPI_Wtime() - t0);
  }
  CHECK(c->comm, duet_comm_destroy(c->comm));
  c->comm = NULL;
}

/* "coll=algo,..." -> a setting testing the named collectives; "auto" or "":
 * DUET_ALGO unset, every collective. Returns 0 on a malformed spec. An
 * algorithm this test does not know is passed on for the library to judge. */
static int parse_spec(const char *spec, setting_t *s) {
  static char names[NCOLL][32];
  memset(s, 0, sizeof *s);
  if (!*spec || strcmp(spec, "auto") == 0) {
    snprintf(s->label, sizeof s->label, "auto");
    for (int k = 0; k < NCOLL; k++)
      s->algo[k] = "auto";
    return 1;
  }
  if (strlen(spec) >= sizeof s->spec)
    return 0;
  memcpy(s->spec, spec, strlen(spec) + 1); /* fits: checked above */
  snprintf(s->label, sizeof s->label, "-a");
  char *copy = strdup(spec), *save = NULL;
  int ok = 1;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq || eq == tok || !eq[1]) {
      ok = 0;
      break;
    }
    *eq = 0;
    for (int k = 0; k < NCOLL; k++) {
      if (strcmp(tok, row_names[k]) != 0)
        continue;
      snprintf(names[k], sizeof names[k], "%s", eq + 1);
      s->algo[k] = names[k];
      s->ai[k] = 0;
      for (int a = 0; a < MAX_ALGOS && coll_algos[k][a]; a++)
        if (strcmp(eq + 1, coll_algos[k][a]) == 0)
          s->ai[k] = a;
    }
  }
  free(copy);
  return ok;
}

static void default_settings(setting_t *set, int *nset) {
  int n = 0;
  for (int a = 0; a < MAX_ALGOS; a++, n++) {
    setting_t *s = &set[n];
    size_t off = 0;
    memset(s, 0, sizeof *s);
    for (int k = 0; k < NCOLL; k++) {
      if (!coll_algos[k][a])
        continue;
      s->algo[k] = coll_algos[k][a];
      s->ai[k] = a;
      off += (size_t)snprintf(s->spec + off, sizeof s->spec - off, "%s%s=%s", off ? "," : "",
                              row_names[k], coll_algos[k][a]);
    }
    snprintf(s->label, sizeof s->label, "set%d", a);
  }
  parse_spec("auto", &set[n++]);
  *nset = n;
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [-q] [-v] [-a SPEC]\n"
          "  -q       quick: no 1048579/262147-element cases, fewer late ranks\n"
          "  -a SPEC  only this DUET_ALGO setting, e.g. allreduce=hier,broadcast=chain\n"
          "           (tests the collectives it names; \"auto\": DUET_ALGO unset, all)\n"
          "  -v       one line per case\n"
          "Super-nodes: DUET_SUPERNODE per rank (mpirun -x, MPMD form).\n",
          prog);
}

int main(int argc, char **argv) {
  static ctx_t c; /* large: the results table */
  const char *spec = NULL;
  int opt;
  mt_init_mpi(&argc, &argv, &c.rank, &c.size);
  while ((opt = getopt(argc, argv, "qva:h")) != -1) {
    if (opt == 'q')
      c.quick = 1;
    else if (opt == 'v')
      c.verbose = 1;
    else if (opt == 'a')
      spec = optarg;
    else {
      if (c.rank == 0)
        usage(argv[0]);
      MPI_Finalize();
      return opt == 'h' ? 0 : 2;
    }
  }

  setting_t sets[MAX_ALGOS + 1];
  int nset = 0;
  if (spec) {
    if (!parse_spec(spec, &sets[0])) {
      if (c.rank == 0) {
        fprintf(stderr, "mpi_hier: bad -a '%s' (want collective=algorithm,...)\n", spec);
        usage(argv[0]);
      }
      MPI_Finalize();
      return 2;
    }
    nset = 1;
  } else {
    default_settings(sets, &nset);
  }

  compute_layout(&c);
  const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
  if (c.rank == 0) {
    printf("# mpi_hier: %d ranks, layout %s (%d super-node%s), DUET_UPN_PROVIDER=%s "
           "DUET_HPN_PROVIDER=%s%s\n",
           c.size, c.layout, c.nsn, c.nsn == 1 ? "" : "s", upn ? upn : "(default)",
           hpn ? hpn : "(default)", c.quick ? ", quick" : "");
    fflush(stdout);
  }

  double t0 = MPI_Wtime();
  for (int i = 0; i < nset; i++)
    run_setting(&c, &sets[i]);

  long failed = 0;
  for (int i = 0; i < c.nresults; i++)
    failed += c.results[i].errs || c.results[i].unsupported;
  if (c.rank == 0) {
    printf("# summary: np=%d layout=%s%s, %.1fs\n", c.size, c.layout, c.quick ? " quick" : "",
           MPI_Wtime() - t0);
    for (int row = 0; row < NROWS; row++) {
      int any = 0;
      for (int i = 0; i < c.nresults; i++) {
        const result_t *r = &c.results[i];
        if (r->row != row)
          continue;
        if (!any)
          printf("#   %-14s", row_names[row]);
        any = 1;
        printf(" %s:%s", r->algo,
               r->skipped       ? "skipped"
               : r->unsupported ? "UNSUPPORTED"
               : r->errs        ? "FAILED"
                                : "OK");
      }
      if (any)
        printf("\n");
    }
    printf("# mpi_hier: %d checks, %ld failed\n", c.nresults, failed);
    fflush(stdout);
  }
  free(c.sn_sizes);
  MPI_Finalize();
  return failed ? 1 : 0;
}
