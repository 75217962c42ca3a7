/*
 * mpi_coll.c - duet broadcast, barrier, send/recv, non-blocking allreduce,
 * every non-blocking collective in flight at once, and argument checking,
 * launched by mpirun and checked against MPI.
 *
 *   mpirun -np 4 tests/mpi/mpi_coll [-q] [-v]
 *
 * -q drops the largest broadcast count (1048579 -> 65537). One line per
 * section on rank 0; the exit status is non-zero on any failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_common.h"

typedef struct {
  int rank, size, quick, verbose;
  duet_comm_t *comm;
} ctx_t;

static void fill_bytes(void *buf, size_t bytes, uint64_t seed) {
  unsigned char *p = buf;
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t h = mt_hash(seed + i);
    memcpy(p + i, &h, bytes - i < 8 ? bytes - i : 8);
  }
}

/* ---- broadcast: every root, several counts and types, against MPI_Bcast ---- */
static long test_broadcast(ctx_t *c) {
  static const duet_datatype_t types[] = {DUET_UINT8, DUET_INT32, DUET_FLOAT16, DUET_FLOAT64};
  size_t counts[] = {0, 1, 7, 1023, c->quick ? 65537 : 1048579};
  size_t maxbytes = counts[4] * 8;
  unsigned char *send = mt_xmalloc(maxbytes + MT_GUARD), *copy = mt_xmalloc(maxbytes);
  unsigned char *recv = mt_xmalloc(maxbytes + MT_GUARD), *ref = mt_xmalloc(maxbytes);
  long errs = 0;
  char what[128];

  for (int root = 0; root < c->size; root++) {
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
      const mt_dtype_t *t = mt_dtype(types[ti]);
      for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t count = counts[ci], bytes = count * t->size;
        /* the big count only for two types, to keep the run short */
        if (ci == 4 && ti % 2)
          continue;
        /* variant: 0 plain, 1 root in place (recvbuf == sendbuf), 2 non-roots pass NULL */
        int variant = (int)((ci + ti + (size_t)root) % 3);
        uint64_t seed = 1000003ull * (uint64_t)root + 7919ull * ti + ci;
        snprintf(what, sizeof what, "broadcast root %d %s count %zu variant %d", root, t->name,
                 count, variant);
        fill_bytes(send, bytes, c->rank == root ? seed : ~seed); /* non-roots: junk */
        if (t->is_float) { /* keep floats finite: junk bits may be NaN, harmless but noisy */
          for (size_t i = 0; i < count; i++)
            mt_set_float(send, i, t->dt, (double)(int)(mt_hash(seed + i) % 1000) - 500.0);
          if (c->rank != root)
            for (size_t i = 0; i < count; i++)
              mt_set_float(send, i, t->dt, 1.5);
        }
        memcpy(copy, send, bytes);
        memcpy(ref, send, bytes);
        MPI_Bcast(ref, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD);

        const void *sbuf = send;
        void *rbuf = recv;
        if (variant == 1 && c->rank == root)
          rbuf = send;
        if (variant == 2 && c->rank != root)
          sbuf = NULL;
        if (rbuf == recv)
          memset(recv, 0x5A, bytes);
        mt_guard_fill((unsigned char *)rbuf + bytes);
        CHECK(c->comm, duet_broadcast(sbuf, rbuf, count, t->dt, root, c->comm));
        errs += (long)mt_compare(rbuf, ref, count, t->dt, c->rank, what);
        errs += mt_guard_check((unsigned char *)rbuf + bytes, c->rank, what);
        if (rbuf != send && memcmp(send, copy, bytes) != 0) {
          fprintf(stderr, "[rank %d] %s: sendbuf was modified\n", c->rank, what);
          errs++;
        }
        if (c->verbose && c->rank == 0)
          printf("#   %s\n", what);
      }
    }
  }
  free(send);
  free(copy);
  free(recv);
  free(ref);
  return errs;
}

/* ---- barrier: nobody leaves before the last rank has entered ---- */
static long test_barrier(ctx_t *c) {
  long errs = 0;
  int late_ranks[3] = {0, c->size - 1, c->size / 2};
  MPI_Comm node;
  int node_size;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);

  for (int k = 0; k < 3; k++) {
    int late = late_ranks[k];
    if (k > 0 && (late == late_ranks[0] || (k == 2 && late == late_ranks[1])))
      continue;
    struct timespec ts;
    double entered = 0, left, latest_entry;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (c->rank == late) {
      mt_sleep_ms(200);
      clock_gettime(CLOCK_MONOTONIC, &ts);
      entered = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    CHECK(c->comm, duet_barrier(c->comm));
    double elapsed = MPI_Wtime() - t0;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    left = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    if (elapsed < 0.15) {
      fprintf(stderr, "[rank %d] barrier with rank %d late: left after %.3f s (< 0.15 s)\n",
              c->rank, late, elapsed);
      errs++;
    }
    /* CLOCK_MONOTONIC is one clock for every process of a host */
    MPI_Allreduce(&entered, &latest_entry, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (node_size == c->size && left < latest_entry) {
      fprintf(stderr, "[rank %d] barrier: left %.6f s before rank %d entered\n", c->rank,
              latest_entry - left, late);
      errs++;
    }
  }
  /* many in a row must neither hang nor fail */
  for (int i = 0; i < 50; i++)
    CHECK(c->comm, duet_barrier(c->comm));
  return errs;
}

/* ---- point to point ---- */

static uint32_t msg_word(int src, int dst, int seq, size_t j) {
  return (uint32_t)mt_hash(((uint64_t)src << 48) ^ ((uint64_t)dst << 32) ^ ((uint64_t)seq << 24) ^
                           j);
}

static void msg_fill(uint32_t *buf, size_t count, int src, int dst, int seq) {
  for (size_t j = 0; j < count; j++)
    buf[j] = msg_word(src, dst, seq, j);
}

static long msg_check(const uint32_t *buf, size_t count, int src, int dst, int seq,
                      const char *what) {
  for (size_t j = 0; j < count; j++) {
    if (buf[j] != msg_word(src, dst, seq, j)) {
      int other = -1;
      for (int s = 0; s < 16 && other < 0; s++)
        if (s != seq && buf[j] == msg_word(src, dst, s, j))
          other = s;
      fprintf(stderr, "[rank %d] %s: message %d from %d, word %zu wrong%s", dst, what, seq, src, j,
              other >= 0 ? " (holds message " : "");
      if (other >= 0)
        fprintf(stderr, "%d: out of order)", other);
      fputc('\n', stderr);
      return 1;
    }
  }
  return 0;
}

/* Complete reqs[0..n) by polling duet_test, failing after a deadline. */
static long test_all(ctx_t *c, duet_request_t **reqs, int n, const char *what) {
  long errs = 0;
  int left = n;
  double deadline = MPI_Wtime() + 120;
  while (left > 0) {
    for (int i = 0; i < n; i++) {
      if (!reqs[i])
        continue;
      int done = 0;
      duet_status_t st = duet_test(reqs[i], &done);
      if (st < 0) {
        fprintf(stderr, "[rank %d] %s: duet_test: %s: %s\n", c->rank, what, duet_strerror(st),
                duet_last_error(c->comm));
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      if (done) {
        reqs[i] = NULL;
        left--;
      }
    }
    if (left > 0 && MPI_Wtime() > deadline) {
      fprintf(stderr, "[rank %d] %s: %d requests still pending after 120 s\n", c->rank, what, left);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  return errs;
}

static long test_sendrecv(ctx_t *c) {
  long errs = 0;
  int right = (c->rank + 1) % c->size, left = (c->rank + c->size - 1) % c->size;
  const size_t sizes[2] = {(1u << 20) / 4, 7}; /* 1 MiB and 7 elements of uint32 */
  uint32_t *sbuf = mt_xmalloc((1u << 20) + MT_GUARD), *rbuf = mt_xmalloc((1u << 20) + MT_GUARD);
  char what[128];

  /* ring shift, blocking: rank 0 sends first, the others receive first */
  for (int k = 0; k < 2 && c->size > 1; k++) {
    snprintf(what, sizeof what, "blocking ring shift of %zu words", sizes[k]);
    msg_fill(sbuf, sizes[k], c->rank, right, k);
    memset(rbuf, 0x5A, sizes[k] * 4);
    mt_guard_fill(rbuf + sizes[k]);
    if (c->rank == 0) {
      CHECK(c->comm, duet_send(sbuf, sizes[k], DUET_UINT32, right, c->comm));
      CHECK(c->comm, duet_recv(rbuf, sizes[k], DUET_UINT32, left, c->comm));
    } else {
      CHECK(c->comm, duet_recv(rbuf, sizes[k], DUET_UINT32, left, c->comm));
      CHECK(c->comm, duet_send(sbuf, sizes[k], DUET_UINT32, right, c->comm));
    }
    errs += msg_check(rbuf, sizes[k], left, c->rank, k, what);
    errs += mt_guard_check(rbuf + sizes[k], c->rank, what);
  }

  /* ring shift, non-blocking (with one rank this is a message to itself) */
  for (int k = 0; k < 2; k++) {
    duet_request_t *rq[2];
    snprintf(what, sizeof what, "non-blocking ring shift of %zu words", sizes[k]);
    msg_fill(sbuf, sizes[k], c->rank, right, 10 + k);
    memset(rbuf, 0x5A, sizes[k] * 4);
    mt_guard_fill(rbuf + sizes[k]);
    CHECK(c->comm, duet_irecv(rbuf, sizes[k], DUET_UINT32, left, c->comm, &rq[0]));
    CHECK(c->comm, duet_isend(sbuf, sizes[k], DUET_UINT32, right, c->comm, &rq[1]));
    CHECK(c->comm, duet_wait(rq[1]));
    CHECK(c->comm, duet_wait(rq[0]));
    errs += msg_check(rbuf, sizes[k], left, c->rank, 10 + k, what);
    errs += mt_guard_check(rbuf + sizes[k], c->rank, what);
  }
  free(sbuf);
  free(rbuf);

  /* every pair (self included), K messages each way all outstanding at once:
   * sends completed by duet_wait in reverse order, receives by duet_test
   * polling; message k from a peer must land in the k-th receive from it */
  static const struct {
    int k;
    size_t words;
  } rounds[2] = {{4, 7}, {3, 65539}};
  for (int rd = 0; rd < 2; rd++) {
    int K = rounds[rd].k, n = c->size;
    size_t w = rounds[rd].words;
    uint32_t *out = mt_xmalloc((size_t)n * (size_t)K * w * 4);
    uint32_t *in = mt_xmalloc((size_t)n * (size_t)K * w * 4);
    duet_request_t **sreq = mt_xmalloc(sizeof *sreq * (size_t)(n * K));
    duet_request_t **rreq = mt_xmalloc(sizeof *rreq * (size_t)(n * K));
    snprintf(what, sizeof what, "all pairs, %d outstanding messages of %zu words each way", K, w);
    memset(in, 0x5A, (size_t)n * (size_t)K * w * 4);
    for (int p = 0; p < n; p++)
      for (int k = 0; k < K; k++) {
        size_t slot = ((size_t)p * (size_t)K + (size_t)k) * w;
        msg_fill(out + slot, w, c->rank, p, 20 + k);
      }
    /* receives first from everybody, then sends, peers in a rotated order */
    for (int i = 0; i < n; i++) {
      int p = (c->rank + i) % n;
      for (int k = 0; k < K; k++)
        CHECK(c->comm, duet_irecv(in + ((size_t)p * (size_t)K + (size_t)k) * w, w, DUET_UINT32, p,
                                  c->comm, &rreq[p * K + k]));
    }
    for (int i = 0; i < n; i++) {
      int p = (c->rank + n - i) % n;
      for (int k = 0; k < K; k++)
        CHECK(c->comm, duet_isend(out + ((size_t)p * (size_t)K + (size_t)k) * w, w, DUET_UINT32, p,
                                  c->comm, &sreq[p * K + k]));
    }
    for (int i = n * K - 1; i >= 0; i--)
      CHECK(c->comm, duet_wait(sreq[i]));
    errs += test_all(c, rreq, n * K, what);
    for (int p = 0; p < n; p++)
      for (int k = 0; k < K; k++)
        errs +=
            msg_check(in + ((size_t)p * (size_t)K + (size_t)k) * w, w, p, c->rank, 20 + k, what);
    free(out);
    free(in);
    free(sreq);
    free(rreq);
  }
  return errs;
}

/* ---- non-blocking allreduce: several in flight, waited in reverse order ---- */
static long test_iallreduce(ctx_t *c) {
  static const struct {
    duet_datatype_t dt;
    duet_op_t op;
    size_t count;
    int in_place;
  } ops[] = {
      {DUET_INT32, DUET_SUM, 1023, 0},     {DUET_FLOAT32, DUET_MAX, 65537, 1},
      {DUET_BFLOAT16, DUET_SUM, 7, 0},     {DUET_UINT64, DUET_PROD, 100003, 0},
      {DUET_FLOAT64, DUET_AVG, 262147, 1}, {DUET_FLOAT8_E5M2, DUET_MIN, 4099, 0},
  };
  enum { N = sizeof ops / sizeof ops[0] };
  long errs = 0;
  char what[128];

  for (int pass = 0; pass < 2; pass++) { /* pass 0: duet_wait in reverse; 1: duet_test */
    void *send[N], *recv[N], *ref[N];
    duet_request_t *req[N];
    for (int i = 0; i < N; i++) {
      size_t bytes = ops[i].count * mt_dtype(ops[i].dt)->size;
      send[i] = mt_xmalloc(bytes + MT_GUARD);
      recv[i] = mt_xmalloc(bytes + MT_GUARD);
      ref[i] = mt_xmalloc(bytes);
      mt_fill_input(send[i], ops[i].count, ops[i].dt, ops[i].op, c->rank, c->size,
                    77 + (uint64_t)(i + N * pass));
      mt_reference(send[i], ref[i], ops[i].count, ops[i].dt, ops[i].op, MPI_COMM_WORLD);
      if (ops[i].in_place)
        memcpy(recv[i], send[i], bytes);
      else
        memset(recv[i], 0x5A, bytes);
      mt_guard_fill((char *)recv[i] + bytes);
    }
    for (int i = 0; i < N; i++)
      CHECK(c->comm, duet_iallreduce(ops[i].in_place ? recv[i] : send[i], recv[i], ops[i].count,
                                     ops[i].dt, ops[i].op, c->comm, &req[i]));
    if (pass == 0)
      for (int i = N - 1; i >= 0; i--)
        CHECK(c->comm, duet_wait(req[i]));
    else
      errs += test_all(c, req, N, "iallreduce duet_test");
    for (int i = 0; i < N; i++) {
      size_t bytes = ops[i].count * mt_dtype(ops[i].dt)->size;
      snprintf(what, sizeof what, "iallreduce #%d %s/%s count %zu%s (%s)", i,
               mt_dtype(ops[i].dt)->name, mt_op_name(ops[i].op), ops[i].count,
               ops[i].in_place ? " in-place" : "", pass ? "duet_test" : "reverse duet_wait");
      errs += (long)mt_compare(recv[i], ref[i], ops[i].count, ops[i].dt, c->rank, what);
      errs += mt_guard_check((char *)recv[i] + bytes, c->rank, what);
      free(send[i]);
      free(recv[i]);
      free(ref[i]);
    }
  }
  return errs;
}

/* ---- every non-blocking collective in flight at once ----
 * One of each, small and large, posted back to back (on one host they take
 * the load/store path: tasks queued in call order, see core/mem_queue.c);
 * a blocking allreduce while they are pending (it must run them first);
 * then completion in reverse order (pass 0) or by polling duet_test (pass
 * 1). alltoallv's count arrays are overwritten right after its post: the
 * call keeps its own copy. Every result against MPI's collective. Then
 * ranks 0 and 1 order a send against a pending ialltoall: rank 0 posts the
 * all-to-all before sending to rank 1, which receives before posting it, so
 * a post that waited for its peers would hang. On the default one-host
 * path no UPN message is sent: everything moved through the segment. */
enum { NB_CALLS = 11 };

static int32_t nb_val(int rank, size_t i, int k) {
  return (int32_t)((rank + 1) * 1000 + (int)(i % 997) + k);
}

static long test_nonblocking(ctx_t *c) {
  const int n = c->size, r = c->rank, last = n - 1;
  const size_t small = 5, big = c->quick ? 70001 : 300007, blk = c->quick ? 20011 : 100003;
  const size_t cnt[NB_CALLS] = {small, big, big, 7, blk, blk, 3, blk, 0, 0, 3};
  static const char *names[NB_CALLS] = {"iallreduce small",
                                        "iallreduce big in place",
                                        "ibroadcast",
                                        "ireduce max",
                                        "iallgather",
                                        "ireduce_scatter",
                                        "ialltoall small",
                                        "ialltoall big",
                                        "ialltoallv",
                                        "ibarrier",
                                        "allreduce (blocking, while pending)"};
  const char *upn = getenv("DUET_UPN_PROVIDER");
  const int mem_path = n > 1 && (!upn || !*upn || strcmp(upn, "mem") == 0) &&
                       !getenv("DUET_ALGO") && !getenv("DUET_SUPERNODE");
  long errs = 0;

  for (int pass = 0; pass < 2; pass++) {
    int32_t *in[NB_CALLS], *out[NB_CALLS], *ref[NB_CALLS];
    size_t outn[NB_CALLS];
    size_t *sc = mt_xmalloc(sizeof(size_t) * 4 * (size_t)n), *sd = sc + n, *rc = sd + n,
           *rd = rc + n;
    int *isc = mt_xmalloc(sizeof(int) * 4 * (size_t)n), *isd = isc + n, *irc = isd + n,
        *ird = irc + n;
    size_t vs = 0, vr = 0;
    duet_request_t *req[NB_CALLS] = {NULL};
    duet_stats_t before, after;

    for (int d = 0; d < n; d++) { /* alltoallv: rank r sends (r + 2d) % 5 * 9001 to d */
      sc[d] = (size_t)((r + 2 * d) % 5) * (c->quick ? 901 : 9001);
      rc[d] = (size_t)((d + 2 * r) % 5) * (c->quick ? 901 : 9001);
      sd[d] = vs;
      rd[d] = vr;
      vs += sc[d];
      vr += rc[d];
      isc[d] = (int)sc[d];
      isd[d] = (int)sd[d];
      irc[d] = (int)rc[d];
      ird[d] = (int)rd[d];
    }
    for (int k = 0; k < NB_CALLS; k++) {
      size_t inn = cnt[k];
      outn[k] = cnt[k];
      if (k == 4) /* allgather */
        outn[k] = cnt[k] * (size_t)n;
      if (k == 5) /* reduce_scatter: n blocks in, one out */
        inn = cnt[k] * (size_t)n;
      if (k == 6 || k == 7) /* alltoall: n blocks */
        inn = outn[k] = cnt[k] * (size_t)n;
      if (k == 8) {
        inn = vs;
        outn[k] = vr;
      }
      in[k] = mt_xmalloc(sizeof(int32_t) * (inn + 1));
      out[k] = mt_xmalloc(sizeof(int32_t) * (outn[k] + 1) + MT_GUARD);
      ref[k] = mt_xmalloc(sizeof(int32_t) * (outn[k] + 1));
      for (size_t i = 0; i < inn; i++)
        in[k][i] = nb_val(r, i, k + 10 * pass);
      memset(out[k], 0x5A, sizeof(int32_t) * (outn[k] + 1));
      mt_guard_fill((char *)out[k] + sizeof(int32_t) * outn[k]);
    }
    /* references, before duet touches anything */
    MPI_Allreduce(in[0], ref[0], (int)small, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(in[1], ref[1], (int)big, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
    memcpy(out[1], in[1], sizeof(int32_t) * big); /* in place */
    memcpy(ref[2], in[2], sizeof(int32_t) * big);
    MPI_Bcast(ref[2], (int)big, MPI_INT32_T, last, MPI_COMM_WORLD);
    MPI_Reduce(in[3], ref[3], 7, MPI_INT32_T, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Allgather(in[4], (int)blk, MPI_INT32_T, ref[4], (int)blk, MPI_INT32_T, MPI_COMM_WORLD);
    MPI_Reduce_scatter_block(in[5], ref[5], (int)blk, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
    MPI_Alltoall(in[6], 3, MPI_INT32_T, ref[6], 3, MPI_INT32_T, MPI_COMM_WORLD);
    MPI_Alltoall(in[7], (int)blk, MPI_INT32_T, ref[7], (int)blk, MPI_INT32_T, MPI_COMM_WORLD);
    MPI_Alltoallv(in[8], isc, isd, MPI_INT32_T, ref[8], irc, ird, MPI_INT32_T, MPI_COMM_WORLD);
    MPI_Allreduce(in[10], ref[10], 3, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);

    CHECK(c->comm, duet_comm_get_stats(c->comm, &before));
    CHECK(c->comm, duet_iallreduce(in[0], out[0], small, DUET_INT32, DUET_SUM, c->comm, &req[0]));
    CHECK(c->comm, duet_iallreduce(out[1], out[1], big, DUET_INT32, DUET_SUM, c->comm, &req[1]));
    CHECK(c->comm, duet_ibroadcast(in[2], out[2], big, DUET_INT32, last, c->comm, &req[2]));
    CHECK(c->comm, duet_ireduce(in[3], out[3], 7, DUET_INT32, DUET_MAX, 0, c->comm, &req[3]));
    CHECK(c->comm, duet_iallgather(in[4], out[4], blk, DUET_INT32, c->comm, &req[4]));
    CHECK(c->comm,
          duet_ireduce_scatter(in[5], out[5], blk, DUET_INT32, DUET_SUM, c->comm, &req[5]));
    CHECK(c->comm, duet_ialltoall(in[6], out[6], 3, DUET_INT32, c->comm, &req[6]));
    CHECK(c->comm, duet_ialltoall(in[7], out[7], blk, DUET_INT32, c->comm, &req[7]));
    CHECK(c->comm, duet_ialltoallv(in[8], sc, sd, out[8], rc, rd, DUET_INT32, c->comm, &req[8]));
    for (int d = 0; d < 4 * n; d++) /* the call must not read them any more */
      sc[d] = SIZE_MAX / 8;
    CHECK(c->comm, duet_ibarrier(c->comm, &req[9]));
    CHECK(c->comm, duet_allreduce(in[10], out[10], 3, DUET_INT32, DUET_SUM, c->comm));
    if (pass == 0)
      for (int k = 9; k >= 0; k--)
        CHECK(c->comm, duet_wait(req[k]));
    else
      errs += test_all(c, req, 10, "non-blocking collectives, duet_test");
    CHECK(c->comm, duet_comm_get_stats(c->comm, &after));

    for (int k = 0; k < NB_CALLS; k++) {
      char what[160];
      size_t m = outn[k];
      if (k == 9 || (k == 3 && r != 0))
        continue;
      if (k == 2 && r == last) /* the root's recvbuf gets its own data */
        memcpy(ref[2], in[2], sizeof(int32_t) * big);
      snprintf(what, sizeof what, "%s (%s)", names[k], pass ? "duet_test" : "reverse duet_wait");
      errs += (long)mt_compare(out[k], ref[k], m, DUET_INT32, r, what);
      errs += mt_guard_check((char *)out[k] + sizeof(int32_t) * m, r, what);
    }
    if (mem_path && after.upn_msgs_sent != before.upn_msgs_sent) {
      fprintf(stderr,
              "[rank %d] non-blocking collectives on one host sent %llu UPN messages; the "
              "load/store path sends none\n",
              r, (unsigned long long)(after.upn_msgs_sent - before.upn_msgs_sent));
      errs++;
    }
    for (int k = 0; k < NB_CALLS; k++) {
      free(in[k]);
      free(out[k]);
      free(ref[k]);
    }
    free(sc);
    free(isc);
  }

  if (n >= 2) { /* a send ordered against a pending ialltoall */
    int32_t a2a_in[16 * 3], a2a_out[16 * 3], token = 0;
    duet_request_t *q;
    for (int i = 0; i < 3 * n && i < 48; i++)
      a2a_in[i] = nb_val(r, (size_t)i, 99);
    if (n <= 16) {
      if (r == 1)
        CHECK(c->comm, duet_recv(&token, 1, DUET_INT32, 0, c->comm));
      CHECK(c->comm, duet_ialltoall(a2a_in, a2a_out, 3, DUET_INT32, c->comm, &q));
      if (r == 0) {
        token = 4242;
        CHECK(c->comm, duet_send(&token, 1, DUET_INT32, 1, c->comm));
      }
      CHECK(c->comm, duet_wait(q));
      for (int p = 0; p < n; p++)
        for (int i = 0; i < 3; i++)
          if (a2a_out[3 * p + i] != nb_val(p, (size_t)(3 * r + i), 99)) {
            fprintf(stderr, "[rank %d] ialltoall ordered against a send: block %d [%d] wrong\n", r,
                    p, i);
            errs++;
            p = n;
            break;
          }
      if (r == 1 && token != 4242) {
        fprintf(stderr, "[rank 1] send ordered against ialltoall: got %d, want 4242\n", (int)token);
        errs++;
      }
    }
  }
  return errs;
}

/* ---- bad input: a clear error naming the argument, nothing touched ---- */

#define CANARY_BYTES 256
static unsigned char canary[CANARY_BYTES];

static long expect_invalid(ctx_t *c, duet_status_t st, const duet_comm_t *errcomm, const char *name,
                           const unsigned char *buf, const char *what) {
  long errs = 0;
  const char *msg = duet_last_error(errcomm);
  if (st != DUET_ERR_INVALID_ARGUMENT) {
    fprintf(stderr, "[rank %d] %s: returned %d (%s), want DUET_ERR_INVALID_ARGUMENT\n", c->rank,
            what, (int)st, duet_strerror(st));
    errs++;
  }
  if (!msg || !*msg || !strstr(msg, name)) {
    fprintf(stderr, "[rank %d] %s: duet_last_error is \"%s\", should name \"%s\"\n", c->rank, what,
            msg ? msg : "(null)", name);
    errs++;
  }
  if (buf && memcmp(buf, canary, CANARY_BYTES) != 0) {
    fprintf(stderr, "[rank %d] %s: recvbuf was written\n", c->rank, what);
    errs++;
  }
  if (c->verbose && c->rank == 0)
    printf("#   %s -> %d \"%s\"\n", what, (int)st, msg ? msg : "");
  return errs;
}

static long test_bad_input(ctx_t *c) {
  duet_comm_t *comm = c->comm;
  unsigned char send[CANARY_BYTES], recv[CANARY_BYTES];
  duet_request_t *req = NULL;
  size_t huge = SIZE_MAX / 4 + 1; /* * sizeof(int32) overflows */
  long errs = 0;
  int n = c->size;
  duet_status_t st;

  memset(canary, 0xCD, sizeof canary);
  memset(send, 1, sizeof send);
#define RESET() memcpy(recv, canary, sizeof recv)
#define EXPECT(call, errcomm, name)                                                                \
  do {                                                                                             \
    RESET();                                                                                       \
    st = (call);                                                                                   \
    errs += expect_invalid(c, st, errcomm, name, recv, #call);                                     \
  } while (0)

  EXPECT(duet_allreduce(NULL, recv, 8, DUET_INT32, DUET_SUM, comm), comm, "sendbuf");
  EXPECT(duet_allreduce(send, NULL, 8, DUET_INT32, DUET_SUM, comm), comm, "recvbuf");
  EXPECT(duet_allreduce(send, recv, huge, DUET_INT32, DUET_SUM, comm), comm, "count");
  EXPECT(duet_allreduce(send, recv, SIZE_MAX / 8 + 1, DUET_FLOAT64, DUET_SUM, comm), comm, "count");
  EXPECT(duet_allreduce(send, recv, 8, (duet_datatype_t)99, DUET_SUM, comm), comm, "datatype");
  EXPECT(duet_allreduce(send, recv, 8, (duet_datatype_t)-1, DUET_SUM, comm), comm, "datatype");
  EXPECT(duet_allreduce(send, recv, 8, DUET_INT32, (duet_op_t)99, comm), comm, "op");
  EXPECT(duet_allreduce(send, recv, 8, DUET_INT32, DUET_SUM, NULL), NULL, "comm");
  EXPECT(duet_iallreduce(NULL, recv, 8, DUET_INT32, DUET_SUM, comm, &req), comm, "sendbuf");
  EXPECT(duet_iallreduce(send, recv, 8, (duet_datatype_t)99, DUET_SUM, comm, &req), comm,
         "datatype");
  EXPECT(duet_iallreduce(send, recv, 8, DUET_INT32, DUET_SUM, comm, NULL), comm, "req");
  EXPECT(duet_broadcast(send, recv, 8, DUET_INT32, -1, comm), comm, "root");
  EXPECT(duet_broadcast(send, recv, 8, DUET_INT32, n, comm), comm, "root");
  EXPECT(duet_broadcast(send, NULL, 8, DUET_INT32, 0, comm), comm, "recvbuf");
  EXPECT(duet_broadcast(send, recv, huge, DUET_INT32, 0, comm), comm, "count");
  EXPECT(duet_broadcast(send, recv, 8, (duet_datatype_t)99, 0, comm), comm, "datatype");
  EXPECT(duet_broadcast(send, recv, 8, DUET_INT32, 0, NULL), NULL, "comm");
  EXPECT(duet_send(send, 8, DUET_INT32, -1, comm), comm, "peer");
  EXPECT(duet_send(send, 8, DUET_INT32, n, comm), comm, "peer");
  EXPECT(duet_send(NULL, 8, DUET_INT32, 0, comm), comm, "buf");
  EXPECT(duet_send(send, huge, DUET_INT32, 0, comm), comm, "count");
  EXPECT(duet_send(send, 8, (duet_datatype_t)99, 0, comm), comm, "datatype");
  EXPECT(duet_recv(recv, 8, DUET_INT32, -1, comm), comm, "peer");
  EXPECT(duet_recv(recv, 8, DUET_INT32, n, comm), comm, "peer");
  EXPECT(duet_recv(NULL, 8, DUET_INT32, 0, comm), comm, "buf");
  EXPECT(duet_recv(recv, 8, DUET_INT32, 0, NULL), NULL, "comm");
  EXPECT(duet_isend(send, 8, DUET_INT32, n, comm, &req), comm, "peer");
  EXPECT(duet_irecv(recv, 8, DUET_INT32, -1, comm, &req), comm, "peer");
  EXPECT(duet_barrier(NULL), NULL, "comm");
#undef EXPECT
#undef RESET

  /* count 0 with NULL buffers is valid and does nothing */
  st = duet_allreduce(NULL, NULL, 0, DUET_INT32, DUET_SUM, comm);
  if (st != DUET_SUCCESS) {
    fprintf(stderr, "[rank %d] duet_allreduce(NULL, NULL, 0, ...) returned %s: %s\n", c->rank,
            duet_strerror(st), duet_last_error(comm));
    errs++;
  }

  /* the communicator still works */
  int32_t in[1000], out[1000], want[1000];
  for (int i = 0; i < 1000; i++)
    in[i] = (c->rank + 1) * (i + 1);
  MPI_Allreduce(in, want, 1000, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(comm, duet_allreduce(in, out, 1000, DUET_INT32, DUET_SUM, comm));
  errs += (long)mt_compare(out, want, 1000, DUET_INT32, c->rank, "allreduce after bad input");
  return errs;
}

int main(int argc, char **argv) {
  ctx_t c = {0};
  int opt;
  mt_init_mpi(&argc, &argv, &c.rank, &c.size);
  while ((opt = getopt(argc, argv, "qvh")) != -1) {
    if (opt == 'q')
      c.quick = 1;
    else if (opt == 'v')
      c.verbose = 1;
    else {
      if (c.rank == 0)
        fprintf(stderr, "usage: %s [-q] [-v]\n", argv[0]);
      MPI_Finalize();
      return opt == 'h' ? 0 : 2;
    }
  }
  c.comm = mt_init_duet(c.rank, c.size);

  int version = 0;
  CHECK(c.comm, duet_get_version(&version));
  const char *upn = getenv("DUET_UPN_PROVIDER"), *hpn = getenv("DUET_HPN_PROVIDER");
  if (c.rank == 0)
    printf("# mpi_coll: %d ranks, duet %d, DUET_UPN_PROVIDER=%s DUET_HPN_PROVIDER=%s%s\n", c.size,
           version, upn ? upn : "(default)", hpn ? hpn : "(default)", c.quick ? ", quick" : "");

  static const struct {
    const char *name;
    long (*fn)(ctx_t *);
  } tests[] = {
      {"broadcast", test_broadcast},     {"barrier", test_barrier},
      {"sendrecv", test_sendrecv},       {"iallreduce", test_iallreduce},
      {"nonblocking", test_nonblocking}, {"bad-input", test_bad_input},
  };
  long failed = 0;
  long vbad = version != DUET_VERSION;
  if (vbad && c.rank == 0)
    fprintf(stderr, "duet_get_version gave %d, header says %d\n", version, DUET_VERSION);
  failed += vbad;
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    double t0 = MPI_Wtime();
    long errs = tests[i].fn(&c), all = 0;
    MPI_Allreduce(&errs, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (all)
      failed++;
    if (c.rank == 0) {
      printf("coll np=%d %-10s %s", c.size, tests[i].name, all ? "FAILED" : "OK");
      if (all)
        printf(" (%ld errors)", all);
      printf(" %.2fs\n", MPI_Wtime() - t0);
      fflush(stdout);
    }
  }

  CHECK(c.comm, duet_comm_destroy(c.comm));
  if (c.rank == 0)
    printf("# mpi_coll: %ld failed\n", failed);
  MPI_Finalize();
  return failed ? 1 : 0;
}
