/*
 * mpi_random.c - random calls of every collective, checked against MPI:
 * a differential test that draws what the structured tests fix.
 *
 *   mpirun -np 4 tests/mpi/mpi_random [-s SEED] [-i CALLS] [-m BYTES] [-1] [-v]
 *
 * Every rank draws the same sequence of calls from SEED (default 1). A call
 * is one of allreduce, alltoall, alltoallv, allgather, reduce_scatter,
 * broadcast, reduce, a shifted exchange (each rank sends to rank + k and
 * receives from rank - k) and a barrier, with a random datatype, op and
 * root; a count drawn from 0-7, under 64, under 4096, a power of two +-2 or
 * anything up to BYTES (default 4 MiB) per buffer; out of place or in place
 * (each in-place form the API documents); buffers offset by 1-7 elements
 * from malloc's alignment; buffers from malloc or from duet_mem_alloc (on
 * every rank or on some, freed after each call, so a later one often gets
 * the same address back); blocking or non-blocking, completed by duet_wait
 * or by polling duet_test. The exchange's blocking form is a
 * duet_group_start/end of a send and a receive, in an order of each rank's.
 * About one call in eight runs on a sub-communicator of duet_comm_split
 * (even and odd ranks, keys reversed), and about one in five is a batch of
 * 2-4 calls in flight together: non-blocking ones, waited for in an order
 * that differs on every rank, or (half the batches) blocking ones inside one
 * duet_group_start/end, which completes them together. alltoallv counts are random per (source,
 * destination) with gaps between blocks.
 *
 * References: MPI_Allreduce (or a serial reduction of gathered inputs, see
 * mt_reference) with inputs exact in the type, MPI_Alltoall(v),
 * MPI_Allgather, MPI_Bcast and MPI_Sendrecv on bytes. Results are compared
 * bitwise; guard bytes past every buffer must stay intact, and so must send
 * buffers out of place. On a failure rank 0 prints the seed and the call; the exit status
 * is non-zero. -v prints every call.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <getopt.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_common.h"

enum {
  C_ALLREDUCE,
  C_ALLTOALL,
  C_ALLTOALLV,
  C_ALLGATHER,
  C_REDUCE_SCATTER,
  C_BROADCAST,
  C_REDUCE,
  C_EXCHANGE, /* send to rank + shift, receive from rank - shift */
  C_BARRIER,
  NCOLLS
};
static const char *const coll_names[NCOLLS] = {"allreduce", "alltoall",       "alltoallv",
                                               "allgather", "reduce_scatter", "broadcast",
                                               "reduce",    "exchange",       "barrier"};

/* One call: what was drawn, its buffers and its expected result. */
typedef struct {
  int coll, root, inplace, nonblocking, offset;
  int shift;     /* C_EXCHANGE: send to rank + shift, receive from rank - shift */
  int umem_send; /* the buffers come from duet_mem_alloc on this rank */
  int umem_recv;
  int poll; /* completed by polling duet_test, not by duet_wait */
  duet_datatype_t dt;
  duet_op_t op;
  size_t count; /* elements: per rank (allgather, reduce_scatter), per peer (alltoall) */
  uint64_t seed;
  duet_comm_t *comm;
  MPI_Comm mc;
  int rank, size; /* in comm */
  size_t es, sbytes, rbytes;
  size_t *scounts, *sdispls, *rcounts, *rdispls; /* alltoallv */
  unsigned char *sraw, *rraw, *send, *recv, *sent, *ref;
  const void *sarg; /* the arguments passed */
  void *rarg;
  duet_request_t *req, *req2; /* req2: C_EXCHANGE's receive */
  char desc[224];
} call_t;

static uint64_t rng_state;
static uint64_t draw(void) {
  return rng_state = mt_hash(rng_state);
}

static size_t draw_count(size_t max) {
  uint64_t r = draw(), v;
  switch (r % 6) {
  case 0:
    v = (r >> 8) % 8;
    break;
  case 1:
    v = (r >> 8) % 64;
    break;
  case 2:
    v = (r >> 8) % 4096;
    break;
  case 3: /* near a power of two, where chunkings split */
    v = ((uint64_t)1 << ((r >> 8) % 23)) + (r >> 40) % 5;
    v = v >= 2 ? v - 2 : 0;
    break;
  default:
    v = (r >> 8) % (max + 1);
    break;
  }
  return v < max ? v : max;
}

/* A call's buffer, from duet_mem_alloc or malloc; buffer_free tells them apart. */
static unsigned char *buffer_alloc(size_t bytes, int umem, duet_comm_t *comm) {
  void *p;
  if (!umem)
    return mt_xmalloc(bytes);
  CHECK(comm, duet_mem_alloc(&p, bytes));
  return p;
}

static void buffer_free(unsigned char *p, int umem, duet_comm_t *comm) {
  if (umem)
    CHECK(comm, duet_mem_free(p));
  else
    free(p);
}

/* Draw a call (every rank draws the same), allocate and fill its buffers and
 * compute its reference. Collective over MPI_COMM_WORLD (the references). */
static void call_prepare(call_t *c, duet_comm_t *world, int wrank, int wsize, size_t maxbytes,
                         int in_batch) {
  memset(c, 0, sizeof *c);
  c->coll = (int)(draw() % NCOLLS);
  c->dt = (duet_datatype_t)(draw() % DUET_NUM_DATATYPES);
  c->op = (duet_op_t)(draw() % DUET_NUM_OPS);
  c->root = (int)(draw() % (uint64_t)wsize);
  int has_inplace = c->coll != C_ALLTOALLV && c->coll != C_EXCHANGE && c->coll != C_BARRIER;
  c->inplace = draw() % 3 == 0 && has_inplace ? 1 + (int)(draw() % 2) : 0;
  c->nonblocking = in_batch == 2 ? 0 : draw() % 3 == 0 || in_batch; /* 2: in a group */
  c->poll = c->nonblocking && draw() % 3 == 0;
  c->offset = draw() % 4 == 0 ? 1 + (int)(draw() % 7) : 0;
  int split = wsize > 2 && draw() % 8 == 0;
  c->seed = draw();
  /* duet_mem_alloc: 0-1 nowhere, 2 every rank's buffers, 3 some ranks' and some buffers */
  int umem = (int)(draw() % 4);
  uint64_t h = mt_hash(c->seed ^ 0x756d656dULL ^ (uint64_t)wrank);
  c->umem_send = umem == 2 || (umem == 3 && (h & 1));
  c->umem_recv = umem == 2 || (umem == 3 && (h & 2));
  c->es = mt_dtype(c->dt)->size;
  int per_rank = c->coll == C_ALLTOALL || c->coll == C_ALLTOALLV || c->coll == C_ALLGATHER ||
                 c->coll == C_REDUCE_SCATTER;
  c->count = draw_count(maxbytes / c->es / (size_t)(per_rank ? wsize : 1));

  c->comm = world;
  c->mc = MPI_COMM_WORLD;
  if (split) { /* even and odd ranks, keys reversed */
    CHECK(world, duet_comm_split(world, wrank % 2, wsize - wrank, &c->comm));
    MPI_Comm_split(MPI_COMM_WORLD, wrank % 2, wsize - wrank, &c->mc);
  }
  MPI_Comm_rank(c->mc, &c->rank);
  MPI_Comm_size(c->mc, &c->size);
  c->root %= c->size;
  c->shift = (int)(c->seed % (uint64_t)c->size); /* 0: a rank sends to itself */
  if (c->coll == C_BARRIER)
    c->count = 0;

  size_t n = c->count, es = c->es, p = (size_t)c->size;
  switch (c->coll) {
  case C_ALLTOALL:
    c->sbytes = c->rbytes = n * es * p;
    break;
  case C_ALLGATHER:
    c->sbytes = n * es;
    c->rbytes = n * es * p;
    break;
  case C_REDUCE_SCATTER:
    c->sbytes = n * es * p;
    c->rbytes = n * es;
    break;
  case C_ALLTOALLV: { /* count s->d: a function of (seed, s, d); gaps between blocks */
    c->scounts = mt_xmalloc(4 * p * sizeof(size_t));
    c->sdispls = c->scounts + p;
    c->rcounts = c->sdispls + p;
    c->rdispls = c->rcounts + p;
    size_t so = 0, ro = 0;
    for (size_t d = 0; d < p; d++) {
      c->scounts[d] = mt_hash(c->seed ^ ((uint64_t)c->rank << 20) ^ d) % (n + 1);
      c->rcounts[d] = mt_hash(c->seed ^ ((uint64_t)d << 20) ^ (uint64_t)c->rank) % (n + 1);
      c->sdispls[d] = so + (d & 1);
      so = c->sdispls[d] + c->scounts[d];
      c->rdispls[d] = ro + (d % 3 == 0);
      ro = c->rdispls[d] + c->rcounts[d];
    }
    c->sbytes = so * es;
    c->rbytes = ro * es;
    break;
  }
  default:
    c->sbytes = c->rbytes = n * es;
    break;
  }
  /* in place, recvbuf doubles as sendbuf: make it large enough for both */
  size_t rspace = c->rbytes > c->sbytes ? c->rbytes : c->sbytes;
  size_t off = (size_t)c->offset * es;
  c->sraw = buffer_alloc(off + c->sbytes + MT_GUARD, c->umem_send, c->comm);
  c->rraw = buffer_alloc(off + rspace + MT_GUARD, c->umem_recv, c->comm);
  c->send = c->sraw + off;
  c->recv = c->rraw + off;
  c->ref = mt_xmalloc(c->rbytes);
  c->sent = mt_xmalloc(c->sbytes);
  int reduces = c->coll == C_ALLREDUCE || c->coll == C_REDUCE || c->coll == C_REDUCE_SCATTER;
  /* data-moving calls: any bits (the sum fill of integers is random-looking,
   * of floats small exact values) */
  mt_fill_input(c->send, c->sbytes / es, c->dt, reduces ? c->op : DUET_SUM, c->rank,
                reduces ? c->size : 1, c->seed);
  memcpy(c->sent, c->send, c->sbytes);
  memset(c->recv, 0x5C, rspace);
  mt_guard_fill(c->send + c->sbytes);
  mt_guard_fill(c->recv + rspace);

  switch (c->coll) {
  case C_ALLREDUCE:
  case C_REDUCE:
    mt_reference(c->send, c->ref, n, c->dt, c->op, c->mc);
    break;
  case C_REDUCE_SCATTER: {
    unsigned char *all = mt_xmalloc(c->sbytes);
    mt_reference(c->send, all, n * p, c->dt, c->op, c->mc);
    memcpy(c->ref, all + (size_t)c->rank * n * es, n * es);
    free(all);
    break;
  }
  case C_BROADCAST:
    if (c->rank == c->root)
      memcpy(c->ref, c->send, n * es);
    MPI_Bcast(c->ref, (int)(n * es), MPI_BYTE, c->root, c->mc);
    break;
  case C_ALLGATHER:
    MPI_Allgather(c->send, (int)(n * es), MPI_BYTE, c->ref, (int)(n * es), MPI_BYTE, c->mc);
    break;
  case C_ALLTOALL:
    MPI_Alltoall(c->send, (int)(n * es), MPI_BYTE, c->ref, (int)(n * es), MPI_BYTE, c->mc);
    break;
  case C_ALLTOALLV: {
    int *a = mt_xmalloc(4 * p * sizeof(int));
    for (size_t d = 0; d < p; d++) {
      a[d] = (int)(c->scounts[d] * es);
      a[p + d] = (int)(c->sdispls[d] * es);
      a[2 * p + d] = (int)(c->rcounts[d] * es);
      a[3 * p + d] = (int)(c->rdispls[d] * es);
    }
    memset(c->ref, 0x5C, c->rbytes); /* the gaps stay as they were */
    MPI_Alltoallv(c->send, a, a + p, MPI_BYTE, c->ref, a + 2 * p, a + 3 * p, MPI_BYTE, c->mc);
    free(a);
    break;
  }
  case C_EXCHANGE:
    MPI_Sendrecv(c->send, (int)(n * es), MPI_BYTE, (c->rank + c->shift) % c->size, 0, c->ref,
                 (int)(n * es), MPI_BYTE, (c->rank - c->shift + c->size) % c->size, 0, c->mc,
                 MPI_STATUS_IGNORE);
    break;
  }

  /* the arguments: in place forms 1 and 2 are those the API documents */
  c->sarg = c->send;
  c->rarg = c->recv;
  unsigned char *mine = c->recv + (size_t)c->rank * n * es; /* this rank's block */
  switch (c->inplace ? c->coll : -1) {
  case C_ALLREDUCE:
  case C_ALLTOALL:
  case C_REDUCE:
    memcpy(c->recv, c->send, c->sbytes);
    c->sarg = c->recv;
    break;
  case C_BROADCAST:
    if (c->rank == c->root) {
      memcpy(c->recv, c->send, c->sbytes);
      c->sarg = c->recv;
    }
    break;
  case C_ALLGATHER: /* 1: MPI_IN_PLACE's form, 2: NCCL's */
    memcpy(mine, c->send, c->sbytes);
    c->sarg = c->inplace == 1 ? (void *)c->recv : (void *)mine;
    break;
  case C_REDUCE_SCATTER: /* 1: the result at the start (MPI), 2: at this rank's block (NCCL) */
    memcpy(c->recv, c->send, c->sbytes);
    c->sarg = c->recv;
    c->rarg = c->inplace == 1 ? (void *)c->recv : (void *)mine;
    break;
  }
  snprintf(c->desc, sizeof c->desc,
           "%s %s %s count %zu root %d shift %d in-place %d non-blocking %d%s offset %d "
           "duet_mem_alloc %s ranks %d%s",
           coll_names[c->coll], mt_dtype(c->dt)->name, mt_op_name(c->op), n, c->root, c->shift,
           c->inplace, c->nonblocking, c->poll ? " (duet_test)" : "", c->offset,
           umem == 2   ? "all"
           : umem == 3 ? "some"
                       : "none",
           c->size, c->comm != world ? " (split)" : "");
}

/* Blocking calls return their status; non-blocking ones leave a request. */
static duet_status_t call_post(call_t *c) {
  const void *s = c->sarg;
  void *r = c->rarg;
  size_t n = c->count;
  int nb = c->nonblocking;
  duet_request_t **q = &c->req;
  switch (c->coll) {
  case C_ALLREDUCE:
    return nb ? duet_iallreduce(s, r, n, c->dt, c->op, c->comm, q)
              : duet_allreduce(s, r, n, c->dt, c->op, c->comm);
  case C_ALLTOALL:
    return nb ? duet_ialltoall(s, r, n, c->dt, c->comm, q) : duet_alltoall(s, r, n, c->dt, c->comm);
  case C_ALLTOALLV:
    return nb ? duet_ialltoallv(s, c->scounts, c->sdispls, r, c->rcounts, c->rdispls, c->dt,
                                c->comm, q)
              : duet_alltoallv(s, c->scounts, c->sdispls, r, c->rcounts, c->rdispls, c->dt,
                               c->comm);
  case C_ALLGATHER:
    return nb ? duet_iallgather(s, r, n, c->dt, c->comm, q)
              : duet_allgather(s, r, n, c->dt, c->comm);
  case C_REDUCE_SCATTER:
    return nb ? duet_ireduce_scatter(s, r, n, c->dt, c->op, c->comm, q)
              : duet_reduce_scatter(s, r, n, c->dt, c->op, c->comm);
  case C_BROADCAST:
    return nb ? duet_ibroadcast(s, r, n, c->dt, c->root, c->comm, q)
              : duet_broadcast(s, r, n, c->dt, c->root, c->comm);
  case C_REDUCE:
    return nb ? duet_ireduce(s, r, n, c->dt, c->op, c->root, c->comm, q)
              : duet_reduce(s, r, n, c->dt, c->op, c->root, c->comm);
  case C_EXCHANGE: {
    int to = (c->rank + c->shift) % c->size, from = (c->rank - c->shift + c->size) % c->size;
    duet_status_t st;
    if (nb) {
      st = duet_isend(s, n, c->dt, to, c->comm, q);
      if (st >= 0 && (st = duet_irecv(r, n, c->dt, from, c->comm, &c->req2)) < 0) {
        duet_wait(c->req); /* the send alone cannot finish: it fails, or times out */
        c->req = NULL;
      }
      return st;
    }
    /* a group of blocking calls, posted in an order of this rank's */
    duet_group_start();
    if ((c->seed >> 7 ^ (uint64_t)c->rank) & 1) {
      st = duet_send(s, n, c->dt, to, c->comm);
      if (st >= 0)
        st = duet_recv(r, n, c->dt, from, c->comm);
    } else {
      st = duet_recv(r, n, c->dt, from, c->comm);
      if (st >= 0)
        st = duet_send(s, n, c->dt, to, c->comm);
    }
    duet_status_t end = duet_group_end();
    return st < 0 ? st : end;
  }
  default:
    return nb ? duet_ibarrier(c->comm, q) : duet_barrier(c->comm);
  }
}

/* 0 when the call did what its reference says; frees its buffers. */
static long call_check(call_t *c, duet_status_t st, int wrank) {
  long bad = 0;
  if (st < 0) {
    fprintf(stderr, "[rank %d] %s: %s: %s\n", wrank, c->desc, duet_strerror(st),
            duet_last_error(c->comm));
    bad = 1;
  } else {
    size_t count = c->rbytes / c->es;
    if (c->coll == C_REDUCE && c->rank != c->root)
      count = 0; /* recvbuf is ignored there */
    if (count)
      bad += mt_compare(c->rarg, c->ref, count, c->dt, wrank, c->desc) != 0;
    size_t rspace = c->rbytes > c->sbytes ? c->rbytes : c->sbytes;
    bad += mt_guard_check(c->recv + rspace, wrank, c->desc);
    bad += mt_guard_check(c->send + c->sbytes, wrank, c->desc);
    if (memcmp(c->send, c->sent, c->sbytes) != 0) {
      fprintf(stderr, "[rank %d] %s: the send buffer changed\n", wrank, c->desc);
      bad++;
    }
  }
  if (c->comm != NULL && c->mc != MPI_COMM_WORLD) {
    CHECK(c->comm, duet_comm_destroy(c->comm));
    MPI_Comm_free(&c->mc);
  }
  buffer_free(c->sraw, c->umem_send, c->comm);
  buffer_free(c->rraw, c->umem_recv, c->comm);
  free(c->ref);
  free(c->sent);
  free(c->scounts);
  return bad;
}

/* Completes a request with duet_wait, or (poll) by calling duet_test until
 * it reports done, as a program that overlaps work would. */
static duet_status_t finish(duet_request_t *req, int poll) {
  duet_status_t st;
  int done = 0;
  if (!poll)
    return duet_wait(req);
  while ((st = duet_test(req, &done)) == DUET_IN_PROGRESS && !done)
    sched_yield();
  return st;
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [-s SEED] [-i CALLS] [-m BYTES] [-1] [-v]\n"
          "  -s SEED   the sequence of calls (default 1; every rank must pass the same)\n"
          "  -i CALLS  how many calls (default 300)\n"
          "  -m BYTES  largest buffer per rank (default 4194304)\n"
          "  -1        one call at a time: no batches, no groups\n"
          "  -v        print every call on rank 0\n",
          prog);
}

int main(int argc, char **argv) {
  int wrank, wsize, verbose = 0, single = 0, opt;
  uint64_t seed = 1;
  long calls = 300;
  size_t maxbytes = 4u << 20;
  mt_init_mpi(&argc, &argv, &wrank, &wsize);
  while ((opt = getopt(argc, argv, "s:i:m:1vh")) != -1) {
    switch (opt) {
    case 's':
      seed = strtoull(optarg, NULL, 0);
      break;
    case 'i':
      calls = atol(optarg);
      break;
    case 'm':
      maxbytes = strtoull(optarg, NULL, 0);
      break;
    case '1':
      single = 1;
      break;
    case 'v':
      verbose = 1;
      break;
    default:
      if (wrank == 0)
        usage(argv[0]);
      MPI_Finalize();
      return 2;
    }
  }
  if (calls < 0 || maxbytes < 64) {
    if (wrank == 0)
      usage(argv[0]);
    MPI_Finalize();
    return 2;
  }
  duet_comm_t *world = mt_init_duet(wrank, wsize);
  rng_state = seed;
  long done = 0, failed = 0;
  while (done < calls && !failed) {
    /* a batch of non-blocking calls in flight together, or one call */
    call_t batch[4];
    int nbatch = draw() % 5 == 0 && !single ? 2 + (int)(draw() % 3) : 1;
    int grouped = nbatch > 1 && draw() % 2 == 0; /* blocking calls in one group */
    for (int i = 0; i < nbatch; i++) {
      call_prepare(&batch[i], world, wrank, wsize, maxbytes / (size_t)nbatch,
                   grouped ? 2 : nbatch > 1);
      if (verbose && wrank == 0)
        printf("call %ld%s: %s\n", done + i,
               grouped      ? " (group)"
               : nbatch > 1 ? " (batch)"
                            : "",
               batch[i].desc);
    }
    /* split communicators are made in call_prepare, so a batch posts in order */
    duet_status_t st[4];
    if (grouped)
      duet_group_start();
    for (int i = 0; i < nbatch; i++)
      st[i] = call_post(&batch[i]);
    if (grouped) { /* the calls complete here; a failure is every call's */
      duet_status_t end = duet_group_end();
      for (int i = 0; i < nbatch; i++)
        if (st[i] >= 0 && end < 0)
          st[i] = end;
    }
    /* wait in an order of this rank's own */
    for (int k = 0; k < nbatch; k++) {
      int i = (k + wrank) % nbatch;
      if (st[i] >= 0 && batch[i].nonblocking)
        st[i] = finish(batch[i].req, batch[i].poll);
      if (st[i] >= 0 && batch[i].req2 != NULL) /* C_EXCHANGE's receive */
        st[i] = finish(batch[i].req2, batch[i].poll);
    }
    long bad = 0;
    for (int i = 0; i < nbatch; i++)
      bad += call_check(&batch[i], st[i], wrank);
    long any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (any) {
      failed = 1;
      if (wrank == 0)
        fprintf(stderr, "mpi_random: FAILED at call %ld of seed %llu (rerun with -s %llu -v)\n",
                done, (unsigned long long)seed, (unsigned long long)seed);
    }
    done += nbatch;
  }
  if (wrank == 0)
    printf("mpi_random: np %d seed %llu: %ld calls, %s\n", wsize, (unsigned long long)seed, done,
           failed ? "FAILED" : "all matched");
  CHECK(world, duet_comm_destroy(world));
  MPI_Finalize();
  return failed ? 1 : 0;
}
