/*
 * test_transport.c - the self and ofi transports.
 *
 * self: send/recv in both orders, tag matching, truncation.
 * ofi and tcp (duet's sockets): two processes (fork; address blobs through a
 * pipe pair) over libfabric's "tcp" on the loopback interface, over "shm" and
 * over duet's tcp transport: ping-pong of 8 B and 4 MiB, 64 tags received out
 * of order, a zero-length message, a truncated receive, a large message that
 * arrives before its receive, large messages received in reverse order, a
 * message to oneself, reserved tags (ofi).
 * tcp alone: a stranger's connection is dropped, lanes connect at their
 * first message (both ends at once too; a first message completes before
 * its receive is posted), a peer that dies fails the
 * receives waiting for it. The child reports through its exit status.
 * Every wait has a deadline, so no test hangs.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tcp/tcp.h"
#include "transport.h"

#define WAIT_SEC 20.0            /* deadline of every wait */
#define PLANE1_ADDR "127.0.0.77" /* the second HPN plane of the planes tests */
#define BIG (4u << 20)
#define NTAGS 64

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- self transport ------------------------------------------------------ */

static duet__tp_ep_t *self_ep(char *err) {
  duet__tp_ep_t *ep = NULL;
  unsigned char addr[DUET_TP_ADDR_MAX];
  size_t addrlen = 0;
  cr_assert_eq(duet__tp_self.open(NULL, &ep, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_self.get_addr(ep, addr, &addrlen, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(addrlen, 1);
  cr_assert_eq(duet__tp_self.insert_peers(ep, 1, addr, DUET_TP_ADDR_MAX, &addrlen, err),
               DUET_SUCCESS, "%s", err);
  return ep;
}

Test(transport_self, send_then_recv) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = self_ep(err);
  duet__tp_req_t s, r;
  char out[] = "hello self", in[32] = {0};

  cr_assert_eq(duet__tp_self.isend(ep, 0, out, sizeof out, 7, &s, err), DUET_SUCCESS);
  cr_assert_eq(duet__tp_self.progress(ep, err), DUET_SUCCESS);
  cr_assert_eq(s.done, 0, "a send to self completes only when matched");
  cr_assert_eq(duet__tp_self.irecv(ep, 0, in, sizeof in, 7, &r, err), DUET_SUCCESS);
  cr_assert(s.done && r.done);
  cr_assert_eq(s.status, DUET_SUCCESS);
  cr_assert_eq(r.status, DUET_SUCCESS);
  cr_assert_eq(r.len, sizeof out);
  cr_assert_str_eq(in, out);
  duet__tp_self.close(ep);
}

Test(transport_self, recv_then_send) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = self_ep(err);
  duet__tp_req_t s, r;
  uint64_t out = 0x0123456789abcdefull, in = 0;

  cr_assert_eq(duet__tp_self.irecv(ep, 0, &in, sizeof in, 1, &r, err), DUET_SUCCESS);
  cr_assert_eq(r.done, 0);
  cr_assert_eq(duet__tp_self.isend(ep, 0, &out, sizeof out, 1, &s, err), DUET_SUCCESS);
  cr_assert(s.done && r.done);
  cr_assert_eq(r.status, DUET_SUCCESS);
  cr_assert_eq(r.len, sizeof out);
  cr_assert_eq(in, out);
  /* zero-length message */
  cr_assert_eq(duet__tp_self.irecv(ep, 0, NULL, 0, 2, &r, err), DUET_SUCCESS);
  cr_assert_eq(duet__tp_self.isend(ep, 0, NULL, 0, 2, &s, err), DUET_SUCCESS);
  cr_assert(s.done && r.done && r.status == DUET_SUCCESS && r.len == 0);
  duet__tp_self.close(ep);
}

Test(transport_self, tag_matching) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = self_ep(err);
  const uint64_t stags[5] = {1, 2, 3, 2, 1};
  const uint64_t rtags[5] = {3, 2, 1, 1, 2};
  const int want[5] = {30, 20, 10, 50, 40}; /* same tag: in post order */
  int out[5] = {10, 20, 30, 40, 50}, in[5] = {0};
  duet__tp_req_t s[5], r[5];

  /* two receives before, three after the sends */
  for (int i = 0; i < 2; i++)
    cr_assert_eq(duet__tp_self.irecv(ep, 0, &in[i], sizeof in[i], rtags[i], &r[i], err),
                 DUET_SUCCESS);
  for (int i = 0; i < 5; i++)
    cr_assert_eq(duet__tp_self.isend(ep, 0, &out[i], sizeof out[i], stags[i], &s[i], err),
                 DUET_SUCCESS);
  for (int i = 2; i < 5; i++)
    cr_assert_eq(duet__tp_self.irecv(ep, 0, &in[i], sizeof in[i], rtags[i], &r[i], err),
                 DUET_SUCCESS);
  for (int i = 0; i < 5; i++) {
    cr_assert(s[i].done && s[i].status == DUET_SUCCESS, "send %d", i);
    cr_assert(r[i].done && r[i].status == DUET_SUCCESS, "recv %d", i);
    cr_assert_eq(in[i], want[i], "recv %d (tag %d): got %d, want %d", i, (int)rtags[i], in[i],
                 want[i]);
  }
  /* an unmatched receive stays pending, and close abandons it */
  cr_assert_eq(duet__tp_self.irecv(ep, 0, &in[0], sizeof in[0], 99, &r[0], err), DUET_SUCCESS);
  cr_assert_eq(r[0].done, 0);
  duet__tp_self.close(ep);
}

Test(transport_self, truncation) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = self_ep(err);
  duet__tp_req_t s, r;
  char out[64], in[16];
  memset(out, 'x', sizeof out);

  cr_assert_eq(duet__tp_self.isend(ep, 0, out, sizeof out, 5, &s, err), DUET_SUCCESS);
  cr_assert_eq(duet__tp_self.irecv(ep, 0, in, sizeof in, 5, &r, err), DUET_SUCCESS);
  cr_assert(s.done && r.done);
  cr_assert_eq(s.status, DUET_ERR_MISMATCH);
  cr_assert_eq(r.status, DUET_ERR_MISMATCH);
  /* and the other order */
  cr_assert_eq(duet__tp_self.irecv(ep, 0, in, sizeof in, 6, &r, err), DUET_SUCCESS);
  cr_assert_eq(duet__tp_self.isend(ep, 0, out, sizeof out, 6, &s, err), DUET_SUCCESS);
  cr_assert(s.done && r.done);
  cr_assert_eq(r.status, DUET_ERR_MISMATCH);
  duet__tp_self.close(ep);
}

Test(transport_self, bad_arguments) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = self_ep(err);
  duet__tp_req_t r;
  int x = 0;
  cr_assert_eq(duet__tp_self.irecv(ep, 1, &x, sizeof x, 0, &r, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "peer 1"), "errbuf: %s", err);
  duet__tp_self.close(ep);
}

/* ---- ofi: a pair of processes ---------------------------------------------- */

typedef struct pair {
  const duet__tp_ops_t *tp;
  int reserved_tags; /* the transport refuses tags with bits 63 and 62 set, 61 clear (ofi) */
  int rndv;          /* ofi's rendezvous: sends wait for their receives (shm) */
  duet__tp_ep_t *ep;
  int rank, other;
  int rfd, wfd; /* pipe to read from / write to the other process */
  char err[DUET_TP_ERRLEN];
} pair_t;

#define CHECK(p, cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "rank %d, line %d: ", (p)->rank, __LINE__);                                  \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, " [errbuf: %s]\n", (p)->err);                                                \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Read or write exactly n bytes on a pipe, failing after WAIT_SEC. */
static int pipe_io(int fd, void *buf, size_t n, int writing) {
  double deadline = now() + WAIT_SEC;
  char *b = buf;
  while (n) {
    struct pollfd pfd = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
    ssize_t got;
    if (now() > deadline)
      return -1;
    if (poll(&pfd, 1, 100) <= 0)
      continue;
    got = writing ? write(fd, b, n) : read(fd, b, n);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return -1;
    b += got;
    n -= (size_t)got;
  }
  return 0;
}

/* Drive progress until req completes; 0 or -1 (timeout, endpoint error). */
static int pair_wait(pair_t *p, duet__tp_req_t *req) {
  double deadline = now() + WAIT_SEC;
  while (!__atomic_load_n(&req->done, __ATOMIC_ACQUIRE)) {
    if (p->tp->progress(p->ep, p->err) < 0)
      return -1;
    if (now() > deadline) {
      snprintf(p->err, sizeof p->err, "timeout after %.0f s", WAIT_SEC);
      return -1;
    }
  }
  return 0;
}

/* Post a send or receive; while the transport says DUET_IN_PROGRESS (busy),
 * progress and post again. *busy (if given) counts those refusals. */
static duet_status_t pair_post_counted(pair_t *p, int is_recv, int peer, void *buf, size_t len,
                                       uint64_t tag, duet__tp_req_t *req, int *busy) {
  double deadline = now() + WAIT_SEC;
  duet_status_t st;
  for (;;) {
    st = is_recv ? p->tp->irecv(p->ep, peer, buf, len, tag, req, p->err)
                 : p->tp->isend(p->ep, peer, buf, len, tag, req, p->err);
    if (st != DUET_IN_PROGRESS || now() > deadline)
      return st;
    if (busy)
      ++*busy;
    if (p->tp->progress(p->ep, p->err) < 0)
      return DUET_ERR_TRANSPORT;
  }
}

static duet_status_t pair_post(pair_t *p, int is_recv, int peer, void *buf, size_t len,
                               uint64_t tag, duet__tp_req_t *req) {
  return pair_post_counted(p, is_recv, peer, buf, len, tag, req, NULL);
}

/* Rank 0 sends len bytes, rank 1 checks them and answers with the bytes
 * inverted, rank 0 checks the answer. */
static int pingpong(pair_t *p, size_t len, uint64_t tag) {
  unsigned char *out = malloc(len), *in = malloc(len);
  duet__tp_req_t s, r;
  int bad = 0;
  CHECK(p, out && in, "malloc(%zu)", len);
  for (size_t i = 0; i < len; i++)
    out[i] = (unsigned char)(i * 7 + tag + (p->rank ? 0 : 1));
  memset(in, 0, len);
  if (p->rank == 0) {
    CHECK(p, pair_post(p, 1, p->other, in, len, tag, &r) == DUET_SUCCESS, "irecv %zu", len);
    CHECK(p, pair_post(p, 0, p->other, out, len, tag, &s) == DUET_SUCCESS, "isend %zu", len);
    CHECK(p, pair_wait(p, &s) == 0 && s.status == DUET_SUCCESS, "send %zu", len);
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS, "recv %zu", len);
    CHECK(p, r.len == len, "pong length %zu, want %zu", r.len, len);
    for (size_t i = 0; i < len; i++)
      bad += in[i] != (unsigned char)~out[i];
    CHECK(p, !bad, "pong of %zu bytes: %d bytes wrong", len, bad);
  } else {
    CHECK(p, pair_post(p, 1, p->other, in, len, tag, &r) == DUET_SUCCESS, "irecv %zu", len);
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS, "recv %zu", len);
    CHECK(p, r.len == len, "ping length %zu, want %zu", r.len, len);
    for (size_t i = 0; i < len; i++) {
      bad += in[i] != (unsigned char)(i * 7 + tag + 1);
      out[i] = (unsigned char)~in[i];
    }
    CHECK(p, !bad, "ping of %zu bytes: %d bytes wrong", len, bad);
    CHECK(p, pair_post(p, 0, p->other, out, len, tag, &s) == DUET_SUCCESS, "isend %zu", len);
    CHECK(p, pair_wait(p, &s) == 0 && s.status == DUET_SUCCESS, "send %zu", len);
  }
  free(out);
  free(in);
  return 0;
}

/* Rank 0 sends NTAGS messages with tags 1000.. in order; rank 1 posts the
 * receives in reverse order, half of them before a pipe sync (so they are
 * posted before the data arrives) and half after (unexpected messages). */
static int many_tags(pair_t *p) {
  enum { LEN = 100 };
  static unsigned char buf[NTAGS][LEN];
  duet__tp_req_t req[NTAGS];
  char sync = 's';
  if (p->rank == 0) {
    CHECK(p, pipe_io(p->rfd, &sync, 1, 0) == 0, "sync");
    for (int i = 0; i < NTAGS; i++) {
      memset(buf[i], i, LEN);
      CHECK(p, pair_post(p, 0, p->other, buf[i], LEN, 1000 + i, &req[i]) == DUET_SUCCESS,
            "isend tag %d", 1000 + i);
    }
    for (int i = 0; i < NTAGS; i++)
      CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "send %d", i);
  } else {
    for (int i = NTAGS - 1; i >= 0; i--) {
      if (i == NTAGS / 2 - 1) {
        CHECK(p, pipe_io(p->wfd, &sync, 1, 1) == 0, "sync");
        for (double t = now(); now() < t + 0.05;) /* let some messages arrive unexpected */
          CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
      }
      memset(buf[i], 0xee, LEN);
      CHECK(p, pair_post(p, 1, p->other, buf[i], LEN, 1000 + i, &req[i]) == DUET_SUCCESS,
            "irecv tag %d", 1000 + i);
    }
    for (int i = NTAGS - 1; i >= 0; i--) {
      CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "recv tag %d",
            1000 + i);
      CHECK(p, req[i].len == LEN, "recv tag %d: %zu bytes", 1000 + i, req[i].len);
      for (int k = 0; k < LEN; k++)
        CHECK(p, buf[i][k] == i, "recv tag %d byte %d: %d", 1000 + i, k, buf[i][k]);
    }
  }
  return 0;
}

static int zero_and_truncated(pair_t *p) {
  char small[16], big[64], zero[8];
  duet__tp_req_t s, r;
  if (p->rank == 0) {
    memset(big, 'b', sizeof big);
    CHECK(p, pair_post(p, 0, p->other, zero, 0, 3, &s) == DUET_SUCCESS, "isend 0 bytes");
    CHECK(p, pair_wait(p, &s) == 0 && s.status == DUET_SUCCESS, "send 0 bytes");
    CHECK(p, pair_post(p, 0, p->other, big, sizeof big, 4, &s) == DUET_SUCCESS, "isend 64");
    CHECK(p, pair_wait(p, &s) == 0, "send 64 bytes (status %d)", s.status);
  } else {
    memset(zero, 'z', sizeof zero);
    CHECK(p, pair_post(p, 1, p->other, zero, sizeof zero, 3, &r) == DUET_SUCCESS, "irecv 0");
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS, "recv 0 bytes");
    CHECK(p, r.len == 0 && zero[0] == 'z', "zero-length message: len %zu", r.len);
    CHECK(p, pair_post(p, 1, p->other, small, sizeof small, 4, &r) == DUET_SUCCESS, "irecv 16");
    CHECK(p, pair_wait(p, &r) == 0, "recv truncated");
    CHECK(p, r.status == DUET_ERR_MISMATCH, "truncated recv: status %d, want %d", r.status,
          DUET_ERR_MISMATCH);
    CHECK(p, strstr(p->err, "peer"), "truncation errbuf names no peer");
  }
  return 0;
}

static int to_self_and_reserved(pair_t *p) {
  uint64_t out = 0xfeedu + (uint64_t)p->rank, in = 0;
  duet__tp_req_t s, r;
  CHECK(p, pair_post(p, 1, p->rank, &in, sizeof in, 6, &r) == DUET_SUCCESS, "irecv self");
  CHECK(p, pair_post(p, 0, p->rank, &out, sizeof out, 6, &s) == DUET_SUCCESS, "isend self");
  CHECK(p, pair_wait(p, &s) == 0 && pair_wait(p, &r) == 0, "self message");
  CHECK(p, r.status == DUET_SUCCESS && r.len == sizeof in && in == out, "self message content");
  CHECK(p,
        !p->reserved_tags ||
            p->tp->isend(p->ep, p->other, &out, sizeof out, UINT64_C(0xDFFFFFFFFFFFFFFF), &s,
                         p->err) == DUET_ERR_INVALID_ARGUMENT,
        "reserved tag accepted by isend");
  CHECK(p,
        !p->reserved_tags || p->tp->irecv(p->ep, p->other, &in, sizeof in, UINT64_C(3) << 62, &r,
                                          p->err) == DUET_ERR_INVALID_ARGUMENT,
        "reserved tag accepted by irecv");
  CHECK(p, p->tp->isend(p->ep, 2, &out, sizeof out, 1, &s, p->err) == DUET_ERR_INVALID_ARGUMENT,
        "peer 2 of 2 accepted");
  return 0;
}

/* Rank 0 sends BIG bytes with tag 30, then 8 with tag 31, then BIG again
 * with tag 32; rank 1 waits for tag 31 first, so the first large message
 * arrives before its receive, then takes tag 30 while (perhaps) still
 * arriving, and receives tag 32 into a buffer too short for it. */
static int unexpected_large(pair_t *p) {
  unsigned char *big = malloc(BIG), *small = malloc(BIG / 2);
  uint64_t word = 0x5eedu;
  duet__tp_req_t s[3], r;
  CHECK(p, big && small, "malloc");
  if (p->rank == 0) {
    duet__tp_req_t z;
    for (size_t i = 0; i < BIG; i++)
      big[i] = (unsigned char)(i * 13 + 1);
    /* an empty message that will be unexpected, for a receive with no buffer */
    CHECK(p, pair_post(p, 0, p->other, NULL, 0, 29, &z) == DUET_SUCCESS, "isend 29");
    CHECK(p, pair_wait(p, &z) == 0 && z.status == DUET_SUCCESS, "send 29");
    CHECK(p, pair_post(p, 0, p->other, big, BIG, 30, &s[0]) == DUET_SUCCESS, "isend 30");
    CHECK(p, pair_post(p, 0, p->other, &word, sizeof word, 31, &s[1]) == DUET_SUCCESS, "isend 31");
    CHECK(p, pair_post(p, 0, p->other, big, BIG, 32, &s[2]) == DUET_SUCCESS, "isend 32");
    for (int i = 0; i < 3; i++)
      CHECK(p, pair_wait(p, &s[i]) == 0, "send %d", 30 + i);
    CHECK(p, s[0].status == DUET_SUCCESS && s[1].status == DUET_SUCCESS, "send status");
    /* a rendezvous learns that the receive is too short and sends nothing */
    CHECK(p, !p->rndv || s[2].status == DUET_ERR_MISMATCH, "send 32: status %d", s[2].status);
  } else {
    uint64_t got = 0;
    int bad = 0;
    CHECK(p, pair_post(p, 1, p->other, &got, sizeof got, 31, &r) == DUET_SUCCESS, "irecv 31");
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS && got == word, "recv 31");
    memset(big, 0, BIG);
    CHECK(p, pair_post(p, 1, p->other, big, BIG, 30, &r) == DUET_SUCCESS, "irecv 30");
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS && r.len == BIG, "recv 30");
    for (size_t i = 0; i < BIG; i++)
      bad += big[i] != (unsigned char)(i * 13 + 1);
    CHECK(p, !bad, "unexpected %u bytes: %d wrong", BIG, bad);
    memset(small, 0, BIG / 2);
    CHECK(p, pair_post(p, 1, p->other, small, BIG / 2, 32, &r) == DUET_SUCCESS, "irecv 32");
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_ERR_MISMATCH, "recv 32: status %d",
          r.status);
    /* the message's first bytes, or with a rendezvous nothing at all */
    for (size_t i = 0; i < BIG / 2; i++)
      bad += small[i] != (p->rndv ? 0 : (unsigned char)(i * 13 + 1));
    CHECK(p, !bad, "truncated receive: %d of its %u bytes wrong", bad, BIG / 2);
    CHECK(p, pair_post(p, 1, p->other, NULL, 0, 29, &r) == DUET_SUCCESS, "irecv 29");
    CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS && r.len == 0, "recv 29");
  }
  free(big);
  free(small);
  return 0;
}

/* Progress until the other side writes a byte on the pipe: it is done with
 * what needed this side's progress. */
static int progress_until_told(pair_t *p) {
  double deadline = now() + WAIT_SEC;
  char c;
  for (;;) {
    struct pollfd pfd = {.fd = p->rfd, .events = POLLIN};
    if (poll(&pfd, 1, 0) == 1)
      return pipe_io(p->rfd, &c, 1, 0);
    if (p->tp->progress(p->ep, p->err) < 0 || now() > deadline)
      return -1;
  }
}

/* Post rank 0's send or rank 1's receive under tag, the receive late
 * seconds after the send (late > 0) or the send -late seconds after the
 * receive (late < 0); late 0: the receive first, at once. */
static int late_post(pair_t *p, int is_recv, void *buf, size_t len, uint64_t tag, double late,
                     duet__tp_req_t *req) {
  const double wait = is_recv ? (late > 0 ? late : 0) : (late < 0 ? -late : 0);
  char sync = 'r';
  if (late == 0 && !is_recv)
    CHECK(p, pipe_io(p->rfd, &sync, 1, 0) == 0, "sync");
  for (double t = now(); now() < t + wait;)
    CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
  CHECK(p, pair_post(p, is_recv, p->other, buf, len, tag, req) == DUET_SUCCESS, "%s %d",
        is_recv ? "irecv" : "isend", (int)tag);
  if (late == 0 && is_recv)
    CHECK(p, pipe_io(p->wfd, &sync, 1, 1) == 0, "sync");
  return 0;
}

/* A message past every provider's inject size into a receive of 1 KiB: the
 * receive posted first (tag 33), 0.2 s after the send (tags 34 and 35), or
 * 0.3 s before it (tag 37). The receive fails with DUET_ERR_MISMATCH long
 * before the deadline, its buffer untouched with a rendezvous, and with one
 * the send fails too (a receive that short sends no CTS, so the waiting
 * send probes it; both timed out before). A short message into a long
 * receive arrives whole (tags 36 and 39); messages of 100000 and 5 bytes
 * into receives of 0 fail them (tags 38 and 41: over libfabric's tcp, rxm
 * never ended the first, of its segmented size class, before the receive
 * took 8 bytes of the endpoint's). The sender then progresses until
 * the receiver is done, sending nothing more: over duet's tcp the message
 * and the receive belong to different lanes, and a 1 KiB receive found its
 * 64 KiB message only when a later message forced that lane's reading.
 * Over the HPN planes a message of 64 KiB goes on plane 1 under an odd tag,
 * on plane 0 under an even one, and every receive here of 1 KiB on plane 0:
 * under odd tags the two lie on different planes and fail (both, and
 * nothing written) through the receive's WAITING notice; under even ones
 * the inner transport or that notice finds the mismatch. The long receive
 * of tag 39 lies on plane 1, its message on plane 0: the planes need a
 * receive of the message's length, and that receive fails too (the
 * sender's copied message had completed at once). */
static int short_receive(pair_t *p) {
  enum { LEN = (64 << 10) + 1, SHORT = 1024, WORD = 100, SEGMENTED = 100000 };
  static const struct {
    uint64_t tag;
    double late; /* > 0: the receive posted this late; < 0: the send; 0: the receive first */
  } cases[] = {{33, 0}, {34, 0.2}, {35, 0.2}, {37, -0.3}};
  const int planes = p->tp == &duet__tp_planes;
  unsigned char *buf = malloc(SEGMENTED);
  duet__tp_req_t req;
  char done = 'd';
  CHECK(p, buf != NULL, "malloc");
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const uint64_t tag = cases[c].tag;
    const double t = now();
    if (p->rank == 0) {
      memset(buf, 0x5a, LEN);
      if (late_post(p, 0, buf, LEN, tag, cases[c].late, &req))
        return 1;
      CHECK(p, pair_wait(p, &req) == 0, "send %d: %s", (int)tag, p->err);
      CHECK(p, !(p->rndv || planes) || req.status == DUET_ERR_MISMATCH, "send %d: status %d",
            (int)tag, req.status);
      CHECK(p, progress_until_told(p) == 0, "tag %d: rank 1 did not finish", (int)tag);
    } else {
      memset(buf, 0, LEN);
      if (late_post(p, 1, buf, SHORT, tag, cases[c].late, &req))
        return 1;
      CHECK(p, pair_wait(p, &req) == 0 && req.status == DUET_ERR_MISMATCH, "recv %d: status %d",
            (int)tag, req.status);
      for (size_t i = 0; (p->rndv || (planes && tag % 2)) && i < SHORT; i++)
        CHECK(p, buf[i] == 0, "recv %d: byte %zu written", (int)tag, i);
      CHECK(p, pipe_io(p->wfd, &done, 1, 1) == 0, "tell rank 0");
    }
    CHECK(p, now() - t < WAIT_SEC / 4, "tag %d: failed after %.1f s", (int)tag, now() - t);
  }
  for (uint64_t tag = 38; tag <= 41; tag += 3) { /* into a receive of 0 bytes */
    const size_t len = tag == 38 ? SEGMENTED : 5;
    if (p->rank == 0) {
      memset(buf, 0x38, len);
      CHECK(p, pair_post(p, 0, p->other, buf, len, tag, &req) == DUET_SUCCESS, "isend %d",
            (int)tag);
      CHECK(p, pair_wait(p, &req) == 0, "send %d: %s", (int)tag, p->err);
      CHECK(p, progress_until_told(p) == 0, "tag %d: rank 1 did not finish", (int)tag);
    } else {
      CHECK(p, pair_post(p, 1, p->other, NULL, 0, tag, &req) == DUET_SUCCESS, "irecv %d", (int)tag);
      CHECK(p, pair_wait(p, &req) == 0 && req.status == DUET_ERR_MISMATCH, "recv %d: status %d",
            (int)tag, req.status);
      CHECK(p, pipe_io(p->wfd, &done, 1, 1) == 0, "tell rank 0");
    }
  }
  for (uint64_t tag = 36; tag <= 39; tag += 3) {
    const int fails = planes && tag == 39;
    if (p->rank == 0) {
      memset(buf, 0x35, WORD);
      CHECK(p, pair_post(p, 0, p->other, buf, WORD, tag, &req) == DUET_SUCCESS, "isend %d",
            (int)tag);
      CHECK(p, pair_wait(p, &req) == 0 && req.status == DUET_SUCCESS, "send %d", (int)tag);
      CHECK(p, progress_until_told(p) == 0, "tag %d: rank 1 did not finish", (int)tag);
    } else {
      memset(buf, 0, LEN);
      CHECK(p, pair_post(p, 1, p->other, buf, LEN, tag, &req) == DUET_SUCCESS, "irecv %d",
            (int)tag);
      CHECK(p, pair_wait(p, &req) == 0, "recv %d: %s", (int)tag, p->err);
      if (fails)
        CHECK(p, req.status == DUET_ERR_MISMATCH && buf[0] == 0, "recv %d: status %d, byte %d",
              (int)tag, req.status, buf[0]);
      else
        CHECK(p,
              req.status == DUET_SUCCESS && req.len == WORD && buf[0] == 0x35 &&
                  buf[WORD - 1] == 0x35 && buf[WORD] == 0,
              "recv %d: status %d, %zu bytes, content", (int)tag, req.status, req.len);
      CHECK(p, pipe_io(p->wfd, &done, 1, 1) == 0, "tell rank 0");
    }
  }
  free(buf);
  return 0;
}

/* Rank 0 sends NLARGE messages of 64 KiB + 1 (past every provider's inject
 * size) with tags 2000.. while rank 1 posts nothing; rank 1 then receives
 * them in reverse order, each before posting the next. libfabric 1.17's shm
 * stalled here without the transport's rendezvous: through the kernel (CMA)
 * the first unexpected message held back the sender's later completions,
 * through the segment (SAR) two unexpected messages stalled each other. */
static int large_out_of_order(pair_t *p) {
  enum { NLARGE = 8, LEN = (64 << 10) + 1 };
  unsigned char *buf = malloc((size_t)NLARGE * LEN);
  duet__tp_req_t req[NLARGE];
  char sync = 'l';
  int bad = 0;
  CHECK(p, buf != NULL, "malloc");
  if (p->rank == 0) {
    CHECK(p, pipe_io(p->rfd, &sync, 1, 0) == 0, "sync");
    for (int i = 0; i < NLARGE; i++) {
      memset(buf + (size_t)i * LEN, 0x40 + i, LEN);
      CHECK(p,
            pair_post(p, 0, p->other, buf + (size_t)i * LEN, LEN, 2000 + i, &req[i]) ==
                DUET_SUCCESS,
            "isend tag %d", 2000 + i);
    }
    for (int i = 0; i < NLARGE; i++)
      CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "send %d: %s", 2000 + i,
            p->err);
  } else {
    memset(buf, 0, (size_t)NLARGE * LEN);
    CHECK(p, pipe_io(p->wfd, &sync, 1, 1) == 0, "sync");
    for (double t = now(); now() < t + 0.05;) /* let the messages arrive unexpected */
      CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
    for (int i = NLARGE - 1; i >= 0; i--) {
      unsigned char *b = buf + (size_t)i * LEN;
      CHECK(p, pair_post(p, 1, p->other, b, LEN, 2000 + i, &req[i]) == DUET_SUCCESS, "irecv tag %d",
            2000 + i);
      CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS && req[i].len == LEN,
            "recv tag %d (received in reverse order): %s", 2000 + i, p->err);
      for (size_t k = 0; k < LEN; k++)
        bad += b[k] != 0x40 + i;
    }
    CHECK(p, !bad, "%d bytes wrong", bad);
  }
  free(buf);
  return 0;
}

/* duet's tcp sends messages of 64 KiB or more on a lane of their own; order
 * must hold across lanes. Rank 0 sends 128 KiB then 8 B, both with tag 40;
 * rank 1 posts an 8-byte receive first: in send order it takes the large
 * message (truncated), and the 128 KiB receive posted next gets the 8 bytes. */
static int order_across_lanes(pair_t *p) {
  enum { MID = 128 * 1024 };
  unsigned char *mid = malloc(MID);
  uint64_t word = 0x77, got = 0;
  duet__tp_req_t s[2], r[2];
  CHECK(p, mid != NULL, "malloc");
  if (p->rank == 0) {
    memset(mid, 0xab, MID);
    CHECK(p, pair_post(p, 0, p->other, mid, MID, 40, &s[0]) == DUET_SUCCESS, "isend 40 mid");
    CHECK(p, pair_post(p, 0, p->other, &word, sizeof word, 40, &s[1]) == DUET_SUCCESS, "isend 40");
    CHECK(p, pair_wait(p, &s[0]) == 0 && pair_wait(p, &s[1]) == 0, "sends");
  } else {
    memset(mid, 0, MID);
    for (double t = now(); now() < t + 0.05;) /* let both arrive */
      CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
    CHECK(p, pair_post(p, 1, p->other, &got, sizeof got, 40, &r[0]) == DUET_SUCCESS, "irecv 8");
    CHECK(p, pair_post(p, 1, p->other, mid, MID, 40, &r[1]) == DUET_SUCCESS, "irecv mid");
    CHECK(p, pair_wait(p, &r[0]) == 0 && pair_wait(p, &r[1]) == 0, "receives");
    CHECK(p, r[0].status == DUET_ERR_MISMATCH && got == 0xababababababababull,
          "first receive: status %d, %#llx (want the large message, truncated)", r[0].status,
          (unsigned long long)got);
    CHECK(p, r[1].status == DUET_SUCCESS && r[1].len == sizeof word && mid[0] == 0x77,
          "second receive: status %d, %zu bytes (want the 8-byte message)", r[1].status, r[1].len);
  }
  free(mid);
  return 0;
}

/* duet's tcp bounds the send buffer of the bulk lane it dials to the
 * tcp_sndbuf it was opened with (Linux reports twice the value set), and
 * leaves the main lane to the kernel's autotuning. */
#define PAIR_SNDBUF (96 * 1024)
static int bulk_sndbuf_bounded(pair_t *p) {
  const tcp_ep_t *e = (const tcp_ep_t *)p->ep;
  int bulk = 0, main = 0;
  socklen_t len = sizeof bulk;
  CHECK(p, getsockopt(e->conns[p->other].tx[TCP_BULK].fd, SOL_SOCKET, SO_SNDBUF, &bulk, &len) == 0,
        "getsockopt(bulk): %s", strerror(errno));
  len = sizeof main;
  CHECK(p, getsockopt(e->conns[p->other].tx[TCP_MAIN].fd, SOL_SOCKET, SO_SNDBUF, &main, &len) == 0,
        "getsockopt(main): %s", strerror(errno));
  CHECK(p, bulk >= PAIR_SNDBUF && bulk <= 2 * PAIR_SNDBUF, "bulk lane SO_SNDBUF %d, want %d", bulk,
        PAIR_SNDBUF);
  CHECK(p, main != bulk, "main lane SO_SNDBUF %d was set too", main);
  return 0;
}

/* NBUF messages at once from NBUF separate page-aligned buffers (more than
 * the ofi registration cache holds), then the same one by one. */
static int many_buffers(pair_t *p) {
  enum { NBUF = 40, LEN = 6000 };
  unsigned char *buf[NBUF] = {0};
  duet__tp_req_t req[NBUF];
  for (int i = 0; i < NBUF; i++) {
    buf[i] = aligned_alloc(4096, 2 * 4096);
    CHECK(p, buf[i], "aligned_alloc");
    memset(buf[i], p->rank ? 0 : i + 1, LEN);
  }
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < NBUF; i++) {
      uint64_t tag = 2000 + (uint64_t)i;
      CHECK(p,
            pair_post(p, p->rank, p->other, buf[i] + (i % 3), LEN - (size_t)(i % 3), tag,
                      &req[i]) == DUET_SUCCESS,
            "post %d", i);
      if (round)
        CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "buffer %d", i);
    }
    for (int i = 0; i < NBUF; i++) {
      CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "buffer %d", i);
      if (p->rank)
        for (int k = i % 3; k < LEN; k++)
          CHECK(p, buf[i][k] == i + 1, "round %d buffer %d byte %d: %d", round, i, k, buf[i][k]);
      if (p->rank)
        memset(buf[i], 0, LEN);
    }
  }
  for (int i = 0; i < NBUF; i++)
    free(buf[i]);
  return 0;
}

/* Oversubscribed endpoints (yield = 1) offer a wait descriptor: rank 1 posts
 * a receive, progresses until fi_trywait says it may sleep, lets rank 0 send
 * and sleeps in poll(); the descriptor must wake it when the message comes
 * (well before the 5 s poll timeout), and the receive must then complete. */
static int sleep_and_wake(pair_t *p) {
  static unsigned char buf[64];
  duet__tp_req_t req;
  char go = 'g';
  int fd = -1;
  if (p->rank == 0) {
    CHECK(p, pipe_io(p->rfd, &go, 1, 0) == 0, "wait for go");
    memset(buf, 0x3c, sizeof buf);
    CHECK(p, pair_post(p, 0, p->other, buf, sizeof buf, 77, &req) == DUET_SUCCESS, "isend");
    CHECK(p, pair_wait(p, &req) == 0 && req.status == DUET_SUCCESS, "send");
    return 0;
  }
  memset(buf, 0, sizeof buf);
  CHECK(p, pair_post(p, 1, p->other, buf, sizeof buf, 77, &req) == DUET_SUCCESS, "irecv");
  duet_status_t st = DUET_IN_PROGRESS;
  double deadline = now() + WAIT_SEC;
  while (st == DUET_IN_PROGRESS && now() < deadline) {
    CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
    st = p->tp->wait_fd(p->ep, &fd, p->err);
  }
  CHECK(p, st == DUET_SUCCESS && fd >= 0, "wait_fd: status %d, fd %d", (int)st, fd);
  CHECK(p, pipe_io(p->wfd, &go, 1, 1) == 0, "send go");
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  double t0 = now();
  int n = poll(&pfd, 1, 5000);
  double waited = now() - t0;
  CHECK(p, n == 1 && waited < 4.0, "poll on the wait descriptor: %d after %.3f s", n, waited);
  CHECK(p, pair_wait(p, &req) == 0 && req.status == DUET_SUCCESS, "recv after the wake-up");
  CHECK(p, req.len == sizeof buf && buf[0] == 0x3c && buf[sizeof buf - 1] == 0x3c, "payload");
  return 0;
}

/* Planes: more small sends than the sender's copy arena holds (24 x 48 KiB
 * against 512 KiB) while the receiver sleeps 50 ms before posting anything:
 * the sender's posts must be refused as busy (DUET_IN_PROGRESS) until the
 * receiver's acks free the arena, and every message must then arrive. */
static int copies_overflow(pair_t *p) {
  enum { NB = 24, LEN = 48 * 1024 };
  static unsigned char buf[NB][LEN];
  duet__tp_req_t req[NB];
  char sync = 's';
  int busy = 0;
  CHECK(p, pipe_io(p->rank ? p->rfd : p->wfd, &sync, 1, p->rank == 0) == 0, "sync");
  if (p->rank == 1)
    usleep(50000);
  for (int i = 0; i < NB; i++) {
    memset(buf[i], p->rank == 0 ? i + 1 : 0, LEN);
    CHECK(p,
          pair_post_counted(p, p->rank, p->other, buf[i], LEN, 5000 + i, &req[i], &busy) ==
              DUET_SUCCESS,
          "post %d", i);
  }
  CHECK(p, p->rank == 1 || busy > 0, "no send was refused with a full arena");
  for (int i = 0; i < NB; i++) {
    CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS, "message %d", i);
    CHECK(p, p->rank == 0 || (buf[i][0] == i + 1 && buf[i][LEN - 1] == i + 1), "message %d data",
          i);
  }
  return 0;
}

/* Open p's endpoint of tp with params and swap address blobs with the
 * other side through the pipes: addrs[k] and lens[k] are side k's. */
static int pair_open(pair_t *p, const duet__tp_ops_t *tp, const duet__tp_params_t *params,
                     unsigned char addrs[2][DUET_TP_ADDR_MAX], size_t lens[2]) {
  p->tp = tp;
  p->other = 1 - p->rank;
  CHECK(p, p->tp->open(params, &p->ep, p->err) == DUET_SUCCESS, "open(%s, %s)",
        params->provider ? params->provider : "NULL", params->iface ? params->iface : "NULL");
  CHECK(p, p->tp->get_addr(p->ep, addrs[p->rank], &lens[p->rank], p->err) == DUET_SUCCESS,
        "get_addr");
  CHECK(p,
        pipe_io(p->wfd, &lens[p->rank], sizeof lens[0], 1) == 0 &&
            pipe_io(p->wfd, addrs[p->rank], lens[p->rank], 1) == 0,
        "send address");
  CHECK(p,
        pipe_io(p->rfd, &lens[p->other], sizeof lens[0], 0) == 0 &&
            lens[p->other] <= DUET_TP_ADDR_MAX &&
            pipe_io(p->rfd, addrs[p->other], lens[p->other], 0) == 0,
        "receive address");
  return 0;
}

extern int duet__ofi_test_rndv; /* ofi.c's test hook: rendezvous past this many bytes */

/* One side of the pair test: open, exchange addresses, run everything. */
static int pair_side(pair_t *p, const duet__tp_ops_t *tp, const char *prov, const char *iface,
                     int yield) {
  duet__tp_params_t params = {
      .provider = prov, .iface = iface, .yield = yield, .tcp_sndbuf = PAIR_SNDBUF};
  unsigned char addrs[2][DUET_TP_ADDR_MAX];
  size_t addrlens[2];
  char bye = 'b';
  int ret;

  p->reserved_tags = tp == &duet__tp_ofi || tp == &duet__tp_planes;
  p->rndv = tp == &duet__tp_ofi && (strcmp(prov, "shm") == 0 || duet__ofi_test_rndv);
  if (pair_open(p, tp, &params, addrs, addrlens))
    return 1;
  CHECK(p, p->tp->insert_peers(p->ep, 2, addrs, DUET_TP_ADDR_MAX, addrlens, p->err) == DUET_SUCCESS,
        "insert_peers");

  ret = pingpong(p, 8, 1) || pingpong(p, BIG, 2) || many_tags(p) || zero_and_truncated(p) ||
        pingpong(p, 8, 5) || unexpected_large(p) || short_receive(p) || large_out_of_order(p) ||
        (tp == &duet__tp_tcp && (order_across_lanes(p) || bulk_sndbuf_bounded(p))) ||
        many_buffers(p) || (tp == &duet__tp_planes && copies_overflow(p)) ||
        to_self_and_reserved(p) || (yield && sleep_and_wake(p));
  if (ret)
    return ret;
  /* both sides done before either closes */
  CHECK(p, pipe_io(p->wfd, &bye, 1, 1) == 0 && pipe_io(p->rfd, &bye, 1, 0) == 0, "final sync");
  p->tp->close(p->ep);
  p->ep = NULL;
  return 0;
}

static const duet__tp_ops_t *pair_tp;
static const char *pair_prov, *pair_iface;
static int pair_yield;

static int pair_default(pair_t *p) {
  return pair_side(p, pair_tp, pair_prov, pair_iface, pair_yield);
}

/* Two pipes and a fork for a pair test: the child is peer 1 (it writes
 * c2p[1] and reads p2c[0]), this process peer 0. Returns fork's result. */
static pid_t pair_fork(int p2c[2], int c2p[2]) {
  pid_t pid;
  cr_assert_eq(pipe(p2c), 0);
  cr_assert_eq(pipe(c2p), 0);
  fflush(NULL);
  pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  return pid;
}

/* Fork; run side in both processes (rank 0 here, rank 1 in the child). */
static void run_pair_fn(int (*side)(pair_t *)) {
  int p2c[2], c2p[2], status = 0, ret;
  pair_t parent = {.rank = 0};
  pid_t pid, w;
  double deadline;

  pid = pair_fork(p2c, c2p);
  if (pid == 0) {
    pair_t child = {.rank = 1, .rfd = p2c[0], .wfd = c2p[1]};
    close(p2c[1]);
    close(c2p[0]);
    ret = side(&child);
    fflush(NULL);
    _exit(ret);
  }
  close(p2c[0]);
  close(c2p[1]);
  parent.rfd = c2p[0];
  parent.wfd = p2c[1];
  ret = side(&parent);
  if (ret) /* the child may be waiting for us */
    kill(pid, SIGKILL);

  deadline = now() + 2 * WAIT_SEC;
  while ((w = waitpid(pid, &status, WNOHANG)) == 0 && now() < deadline)
    usleep(10000);
  if (w == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  if (parent.ep)
    parent.tp->close(parent.ep);
  close(parent.rfd);
  close(parent.wfd);
  cr_assert_eq(ret, 0, "rank 0 failed over %s: %s", parent.tp ? parent.tp->name : "?", parent.err);
  cr_assert_neq(w, 0, "rank 1 did not finish within %.0f s", 2 * WAIT_SEC);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "rank 1 failed over %s (status 0x%x, see its stderr)",
            parent.tp ? parent.tp->name : "?", status);
}

static void run_pair(const duet__tp_ops_t *tp, const char *prov, const char *iface, int yield) {
  pair_tp = tp;
  pair_prov = prov;
  pair_iface = iface;
  pair_yield = yield;
  run_pair_fn(pair_default);
}

/* libfabric's connection warm-up (insert_peers) waits for a peer at most
 * params->timeout_ms, the communicator's deadline: rank 1 opens its
 * endpoint and hands over its address but never inserts peers, and rank
 * 0's insert_peers fails with DUET_ERR_TIMEOUT naming peer 1 after about a
 * second (it waited 60 s before). */
static int warmup_side(pair_t *p) {
  duet__tp_params_t params = {.provider = "tcp", .iface = "lo", .timeout_ms = 1000};
  unsigned char addrs[2][DUET_TP_ADDR_MAX];
  size_t lens[2];
  char b = 'x';
  duet_status_t st;
  double t;

  if (pair_open(p, &duet__tp_ofi, &params, addrs, lens))
    return 1;
  if (p->rank == 1) { /* silent until rank 0 is done */
    CHECK(p, pipe_io(p->rfd, &b, 1, 0) == 0, "rank 0's end");
    p->tp->close(p->ep);
    p->ep = NULL;
    return 0;
  }
  t = now();
  st = p->tp->insert_peers(p->ep, 2, addrs, DUET_TP_ADDR_MAX, lens, p->err);
  t = now() - t;
  CHECK(p, st == DUET_ERR_TIMEOUT, "insert_peers returned %d, not DUET_ERR_TIMEOUT", st);
  CHECK(p, t >= 0.9 && t < 10.0, "insert_peers gave up after %.1f s, not about 1 s", t);
  CHECK(p, strstr(p->err, "peer 1") != NULL, "the message does not name peer 1");
  CHECK(p, pipe_io(p->wfd, &b, 1, 1) == 0, "the end");
  return 0;
}

Test(transport_ofi, warmup_waits_timeout_ms, .timeout = 120) {
  run_pair_fn(warmup_side);
}

Test(transport_ofi, tcp_loopback, .timeout = 120) {
  run_pair(&duet__tp_ofi, "tcp", "lo", 0);
}

Test(transport_ofi, tcp_oversubscribed_sleeps, .timeout = 120) {
  run_pair(&duet__tp_ofi, "tcp", "lo", 1);
}

Test(transport_ofi, shm, .timeout = 120) {
  run_pair(&duet__tp_ofi, "shm", NULL, 0);
}

/* Without cross-memory attach (as where ptrace is not allowed), shm moves
 * large messages through its segment (SAR). libfabric reads the variable
 * when it first loads its providers: in this test's process, now. */
Test(transport_ofi, shm_without_cma, .timeout = 120) {
  setenv("FI_SHM_DISABLE_CMA", "1", 1);
  run_pair(&duet__tp_ofi, "shm", NULL, 0);
}

/* The rendezvous shm needs, on tcp too: every message past 4 KiB waits for
 * its receive to be posted. */
Test(transport_ofi, tcp_rendezvous, .timeout = 120) {
  duet__ofi_test_rndv = 4096;
  run_pair(&duet__tp_ofi, "tcp", "lo", 0);
}

/* tcp and shm need no registration; force it to run the registration cache */
extern int duet__ofi_test_force_mr;

Test(transport_ofi, tcp_registered, .timeout = 120) {
  duet__ofi_test_force_mr = 1;
  run_pair(&duet__tp_ofi, "tcp", "lo", 0);
}

Test(transport_ofi, shm_registered, .timeout = 120) {
  duet__ofi_test_force_mr = 1;
  run_pair(&duet__tp_ofi, "shm", NULL, 0);
}

/* A killed process leaves its shm region ("<pid>:0:0") behind; a later
 * process with the same id must still open shm endpoints. */
Test(transport_ofi, shm_despite_stale_region) {
  duet__tp_params_t params = {.provider = "shm", .iface = NULL, .yield = 0};
  duet__tp_ep_t *ep = NULL;
  char err[DUET_TP_ERRLEN] = "", name[64];
  int fd;
  snprintf(name, sizeof name, "/%d:0:0", (int)getpid());
  fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  cr_assert_geq(fd, 0, "shm_open(%s): %s", name, strerror(errno));
  close(fd);
  duet_status_t st = duet__tp_ofi.open(&params, &ep, err);
  shm_unlink(name);
  cr_assert_eq(st, DUET_SUCCESS, "open(shm) beside a stale %s: %s", name, err);
  duet__tp_ofi.close(ep);
}

Test(transport_ofi, nonexistent_provider) {
  duet__tp_params_t params = {.provider = "nonexistent", .iface = NULL, .yield = 0};
  duet__tp_ep_t *ep = NULL;
  char err[DUET_TP_ERRLEN] = "";
  duet_status_t st = duet__tp_ofi.open(&params, &ep, err);
  cr_assert(st == DUET_ERR_TRANSPORT || st == DUET_ERR_UNSUPPORTED, "status %d", st);
  cr_assert_null(ep);
  cr_assert(strstr(err, "nonexistent"), "errbuf does not name the provider: %s", err);
}

Test(transport_ofi, tcp_on_missing_iface) {
  duet__tp_params_t params = {.provider = "tcp", .iface = "no-such-iface", .yield = 0};
  duet__tp_ep_t *ep = NULL;
  char err[DUET_TP_ERRLEN] = "";
  duet_status_t st = duet__tp_ofi.open(&params, &ep, err);
  cr_assert(st < 0, "status %d", st);
  cr_assert_null(ep);
  cr_assert(strstr(err, "no-such-iface") && strstr(err, "fi_getinfo"), "errbuf: %s", err);
}

/* ---- duet's tcp transport ------------------------------------------------ */

Test(transport_tcp, loopback, .timeout = 120) {
  run_pair(&duet__tp_tcp, "tcp", "lo", 0);
}

Test(transport_tcp, oversubscribed_sleeps, .timeout = 120) {
  run_pair(&duet__tp_tcp, "tcp", "lo", 1);
}

Test(transport_tcp, iface_as_address, .timeout = 120) {
  run_pair(&duet__tp_tcp, "tcp", "127.0.0.1", 0);
}

/* ---- HPN planes: one endpoint per plane ---------------------------------- */

/* The same pair test over two planes: duet's tcp on two loopback addresses,
 * and libfabric's tcp twice on lo. */
Test(transport_planes, tcp_two_addresses, .timeout = 120) {
  run_pair(&duet__tp_planes, "tcp", "127.0.0.1," PLANE1_ADDR, 0);
}

Test(transport_planes, tcp_oversubscribed_sleeps, .timeout = 120) {
  run_pair(&duet__tp_planes, "tcp", "127.0.0.1," PLANE1_ADDR, 1);
}

Test(transport_planes, ofi_tcp_twice_on_lo, .timeout = 120) {
  run_pair(&duet__tp_planes, "tcp;ofi_rxm", "lo,lo", 0);
}

/* Plane 1 fails in the middle of a batch: rank 1 posts FO_MSGS receives of
 * 8 B .. 4 MiB, rank 0 the sends; once rank 0 has written what the sockets
 * take and rank 1 has read some of it, rank 1 resets every connection of
 * plane 1 (ss -K, the kernel's socket destroy), with most of the batch
 * still in flight or in the sockets. Every message must still arrive
 * intact, over plane 0, and the pair must go on working there. */
#define FO_ADDR "127.0.0.79" /* plane 1 of this test alone: ss -K hits all of it */
#define FO_MSGS 48           /* about 60 MiB: far more than the sockets hold */
/* How plane 1 fails: its connections reset, or (fo_silent, in a network
 * namespace of the test's own) every packet to or from it held back, with
 * no error at all until its data has gone unacknowledged for FO_STALL_MS. */
#define FO_RESET "ss -K -t '( src " FO_ADDR " or dst " FO_ADDR " )' >/dev/null"
#define FO_DROP /* an htb class of 8 bit/s: every packet of plane 1 held back */                   \
  "tc qdisc add dev lo root handle 1: htb default 99 r2q 1000 2>/dev/null && "                     \
  "tc class add dev lo parent 1: classid 1:99 htb rate 100gbit 2>/dev/null && "                    \
  "tc class add dev lo parent 1: classid 1:1 htb rate 8bit ceil 8bit burst 1 cburst 1 "            \
  "2>/dev/null && "                                                                                \
  "tc filter add dev lo parent 1: protocol ip u32 match ip dst " FO_ADDR "/32 flowid 1:1 && "      \
  "tc filter add dev lo parent 1: protocol ip u32 match ip src " FO_ADDR "/32 flowid 1:1"
#define FO_STALL_MS 1000
static int fo_silent;

static size_t fo_len(int i) {
  /* 8 B and 3000 B are copied by the sender (2 pages of its arena); the
   * rest wait for their acks */
  static const size_t lens[] = {8, 100 * 1024, 1 << 20, 4 << 20, 3000, 600 * 1024, 3 << 20};
  return lens[i % 7];
}

/* Round `round`'s content under round tag_round's tags. */
static int fo_batch(pair_t *p, int round, int tag_round, int kill_plane) {
  static unsigned char *buf[FO_MSGS];
  duet__tp_req_t req[FO_MSGS];
  for (int i = 0; i < FO_MSGS; i++) { /* fill everything first: posting takes no time */
    size_t len = fo_len(i);
    buf[i] = realloc(buf[i], len);
    CHECK(p, buf[i] != NULL, "malloc");
    for (size_t k = 0; k < len; k++)
      buf[i][k] = p->rank == 0 ? (unsigned char)(k * 13 + i + round) : 0;
  }
  for (int i = 0; i < FO_MSGS; i++)
    CHECK(p,
          pair_post(p, p->rank, p->other, buf[i], fo_len(i),
                    (uint64_t)tag_round << 20 | (uint64_t)i, &req[i]) == DUET_SUCCESS,
          "post %d of round %d", i, round);
  if (kill_plane) {
    /* rank 0 has written what the sockets took and stops; rank 1 reads
     * what is there, resets plane 1 and lets rank 0 go on */
    char go = 'g', killed = 'k';
    int done = 0;
    if (p->rank == 0) {
      CHECK(p, pipe_io(p->wfd, &go, 1, 1) == 0 && pipe_io(p->rfd, &killed, 1, 0) == 0, "sync");
    } else {
      CHECK(p, pipe_io(p->rfd, &go, 1, 0) == 0, "sync");
      for (int k = 0; k < 3; k++)
        CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
      for (int i = 0; i < FO_MSGS; i++)
        done += __atomic_load_n(&req[i].done, __ATOMIC_ACQUIRE);
      CHECK(p, done > 0 && done < FO_MSGS, "%d of %d messages in before the failure", done,
            FO_MSGS);
      CHECK(p, system(fo_silent ? FO_DROP : FO_RESET) == 0, "%s failed",
            fo_silent ? FO_DROP : FO_RESET);
      CHECK(p, pipe_io(p->wfd, &killed, 1, 1) == 0, "sync");
    }
  }
  for (int i = 0; i < FO_MSGS; i++) {
    CHECK(p, pair_wait(p, &req[i]) == 0 && req[i].status == DUET_SUCCESS,
          "message %d of round %d: status %d", i, round, req[i].status);
    if (p->rank == 1) {
      CHECK(p, req[i].len == fo_len(i), "message %d: %zu bytes", i, req[i].len);
      for (size_t k = 0; k < fo_len(i); k++)
        CHECK(p, buf[i][k] == (unsigned char)(k * 13 + i + round),
              "message %d of round %d, byte %zu wrong", i, round, k);
    }
  }
  return 0;
}

/* Open a planes endpoint over duet's tcp on 127.0.0.1 and plane1, and
 * connect the pair. */
static int planes_open(pair_t *p, const char *plane1, int stall_ms) {
  char iface[64];
  unsigned char addrs[2][DUET_TP_ADDR_MAX];
  size_t addrlens[2];
  snprintf(iface, sizeof iface, "127.0.0.1,%s", plane1);
  duet__tp_params_t params = {.provider = "tcp", .iface = iface, .stall_ms = stall_ms};
  if (pair_open(p, &duet__tp_planes, &params, addrs, addrlens))
    return 1;
  CHECK(p, p->tp->insert_peers(p->ep, 2, addrs, DUET_TP_ADDR_MAX, addrlens, p->err) == DUET_SUCCESS,
        "insert_peers");
  return 0;
}

static int planes_close(pair_t *p) {
  char bye = 'b';
  CHECK(p, pipe_io(p->wfd, &bye, 1, 1) == 0 && pipe_io(p->rfd, &bye, 1, 0) == 0, "final sync");
  p->tp->close(p->ep);
  p->ep = NULL;
  return 0;
}

static int fo_side(pair_t *p) {
  CHECK(p, planes_open(p, FO_ADDR, fo_silent ? FO_STALL_MS : 0) == 0, "open");
  CHECK(p, fo_batch(p, 1, 1, 0) == 0 && duet__tp_planes_dead(p->ep) == 0, "before the failure");
  CHECK(p, fo_batch(p, 2, 2, 1) == 0, "across the failure");
  CHECK(p, duet__tp_planes_dead(p->ep) == 2, "planes lost: %#x, want plane 1",
        duet__tp_planes_dead(p->ep));
  CHECK(p, fo_batch(p, 3, 3, 0) == 0, "after the failure");
  /* Round 2's tags again (duet's tags come round again when a sequence
   * number wraps): a part resent after the failure that no receive took
   * would be matched now and deliver round 2's bytes. */
  CHECK(p, fo_batch(p, 4, 2, 0) == 0, "round 2's tags after the failure");
  return planes_close(p);
}

/* Stall detection must not take a busy peer for a lost plane: rank 0 sends
 * 64 MiB (both planes) while rank 1 first does nothing for 4 stall times,
 * then progresses for 4 more without posting the receive (it answers the
 * probes on both planes), then receives. No plane may be lost. */
#define WAIT_STALL_MS 300
static int busy_peer_side(pair_t *p) {
  enum { LEN = 64 << 20 }; /* more than the sockets hold: rank 0 keeps sending */
  unsigned char *buf = malloc(LEN);
  duet__tp_req_t r;
  CHECK(p, buf != NULL, "malloc");
  CHECK(p, planes_open(p, PLANE1_ADDR, WAIT_STALL_MS) == 0, "open");
  for (size_t k = 0; k < LEN; k++)
    buf[k] = p->rank == 0 ? (unsigned char)(k * 5 + 1) : 0;
  if (p->rank == 0) {
    CHECK(p, pair_post(p, 0, p->other, buf, LEN, 42, &r) == DUET_SUCCESS, "isend");
  } else {
    usleep(4 * WAIT_STALL_MS * 1000);
    for (double t = now(); now() < t + 4 * WAIT_STALL_MS / 1000.0;)
      CHECK(p, p->tp->progress(p->ep, p->err) >= 0, "progress");
    CHECK(p, pair_post(p, 1, p->other, buf, LEN, 42, &r) == DUET_SUCCESS, "irecv");
  }
  CHECK(p, pair_wait(p, &r) == 0 && r.status == DUET_SUCCESS, "transfer: status %d", r.status);
  for (size_t k = 0; p->rank == 1 && k < LEN; k++)
    CHECK(p, buf[k] == (unsigned char)(k * 5 + 1), "byte %zu wrong", k);
  CHECK(p, duet__tp_planes_dead(p->ep) == 0, "planes lost: %#x", duet__tp_planes_dead(p->ep));
  free(buf);
  return planes_close(p);
}

Test(transport_planes, a_busy_peer_is_no_lost_plane, .timeout = 120) {
  run_pair_fn(busy_peer_side);
}

Test(transport_planes, failover_mid_batch, .timeout = 120) {
  run_pair_fn(fo_side);
}

/* The same with a plane that goes silent (a link passing nothing): no
 * reset, no error, until TCP_USER_TIMEOUT (the planes' stall_ms) fails its
 * connections with data unacknowledged. In a network namespace of this
 * test's own, on whose loopback the shaping goes. */
Test(transport_planes, failover_on_a_silent_plane, .timeout = 120) {
  cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
  cr_assert_eq(system("ip link set lo up"), 0, "ip link set lo up failed");
  fo_silent = 1;
  run_pair_fn(fo_side);
}

Test(transport_tcp, provider_names) {
  cr_assert_eq(duet__tp_for_provider("tcp"), &duet__tp_tcp);
  cr_assert_eq(duet__tp_for_provider("tcp;ofi_rxm"), &duet__tp_ofi);
  cr_assert_eq(duet__tp_for_provider("shm"), &duet__tp_ofi);
}

Test(transport_tcp, missing_iface) {
  duet__tp_params_t params = {.provider = "tcp", .iface = "no-such-iface", .yield = 0};
  duet__tp_ep_t *ep = NULL;
  char err[DUET_TP_ERRLEN] = "";
  duet_status_t st = duet__tp_tcp.open(&params, &ep, err);
  cr_assert_eq(st, DUET_ERR_INVALID_ARGUMENT, "status %d", st);
  cr_assert_null(ep);
  cr_assert(strstr(err, "no-such-iface"), "errbuf: %s", err);
}

/* One endpoint whose only peer is itself, opened on lo. */
static duet__tp_ep_t *tcp_lone_open(unsigned char *addr, size_t *addrlen, char *err) {
  duet__tp_params_t params = {.provider = "tcp", .iface = "lo", .yield = 0};
  duet__tp_ep_t *ep = NULL;
  cr_assert_eq(duet__tp_tcp.open(&params, &ep, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_tcp.get_addr(ep, addr, addrlen, err), DUET_SUCCESS, "%s", err);
  return ep;
}

/* One end (me: 0 or 1) of a pair of processes: open an endpoint, swap
 * address blobs with the other end (write on to, read from from) and insert
 * both as peers 0 and 1. NULL when the swap or insert_peers failed. */
static duet__tp_ep_t *tcp_pair_open(int me, int to, int from, char *err) {
  unsigned char addrs[2][DUET_TP_ADDR_MAX];
  size_t lens[2];
  duet__tp_ep_t *ep = tcp_lone_open(addrs[me], &lens[me], err);
  if (pipe_io(to, &lens[me], sizeof lens[me], 1) || pipe_io(to, addrs[me], lens[me], 1) ||
      pipe_io(from, &lens[!me], sizeof lens[!me], 0) || pipe_io(from, addrs[!me], lens[!me], 0) ||
      duet__tp_tcp.insert_peers(ep, 2, addrs, DUET_TP_ADDR_MAX, lens, err) != DUET_SUCCESS)
    return NULL;
  return ep;
}

/* Send v to peer with tag and progress until it is done: 0, or nonzero. */
static int tcp_send_one(duet__tp_ep_t *ep, int peer, uint64_t v, uint64_t tag, char *err) {
  duet__tp_req_t s;
  if (duet__tp_tcp.isend(ep, peer, &v, sizeof v, tag, &s, err) != DUET_SUCCESS)
    return 1;
  for (double t = now(); !s.done && now() < t + WAIT_SEC;)
    if (duet__tp_tcp.progress(ep, err) < 0)
      return 1;
  return !s.done || s.status != DUET_SUCCESS;
}

/* Wait for the child, which must have exited with 0. */
static void tcp_pair_reap(pid_t pid) {
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "peer status 0x%x", status);
}

static void tcp_pair_pipes_close(int p2c[2], int c2p[2]) {
  for (int i = 0; i < 2; i++) {
    close(p2c[i]);
    close(c2p[i]);
  }
}

/* A connection that does not present the endpoint's token is dropped, and
 * the endpoint still works (here: messages to itself). */
Test(transport_tcp, stranger_dropped, .timeout = 60) {
  unsigned char addr[DUET_TP_ADDR_MAX], junk[40];
  size_t addrlen = 0;
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = tcp_lone_open(addr, &addrlen, err);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  uint64_t v = 42, got = 0;
  duet__tp_req_t s, r;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  /* the blob: magic (4), family (2), port (2, network order), ip (16), token */
  memcpy(&sin.sin_port, addr + 6, 2);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0, "%s", strerror(errno));
  memset(junk, 0x41, sizeof junk);
  cr_assert_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
  cr_assert_eq(duet__tp_tcp.insert_peers(ep, 1, addr, DUET_TP_ADDR_MAX, &addrlen, err),
               DUET_SUCCESS, "%s", err);
  /* the endpoint works, and accepting its own connection it met the stranger */
  cr_assert_eq(duet__tp_tcp.irecv(ep, 0, &got, sizeof got, 9, &r, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_tcp.isend(ep, 0, &v, sizeof v, 9, &s, err), DUET_SUCCESS, "%s", err);
  for (double t = now(); !(r.done && s.done) && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done && r.status == DUET_SUCCESS && got == 42, "message to self after a stranger");
  /* the stranger was closed on */
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  cr_assert_eq(poll(&pfd, 1, 5000), 1, "stranger's connection still open");
  cr_assert_eq(read(fd, junk, sizeof junk), 0, "stranger got data");
  close(fd);
  duet__tp_tcp.close(ep);
}

/* Lanes connect at their first message, one direction each: insert_peers
 * connects nothing, a small message to itself opens the main lane (dialled
 * and accepted), and a large one to itself takes the main lane too. */
Test(transport_tcp, lanes_connect_at_first_use, .timeout = 60) {
  unsigned char addr[DUET_TP_ADDR_MAX];
  size_t addrlen = 0;
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = tcp_lone_open(addr, &addrlen, err);
  const tcp_ep_t *e = (const tcp_ep_t *)ep;
  enum { MID = 256 * 1024 };
  unsigned char *big = malloc(MID), *back = calloc(1, MID);
  duet__tp_req_t s, r;

  cr_assert(big && back);
  memset(big, 0x5a, MID);
  cr_assert_eq(duet__tp_tcp.insert_peers(ep, 1, addr, DUET_TP_ADDR_MAX, &addrlen, err),
               DUET_SUCCESS, "%s", err);
  for (int l = 0; l < TCP_LANES; l++)
    cr_assert(e->conns[0].tx[l].fd < 0 && e->conns[0].rx[l].fd < 0,
              "lane %d connected by insert_peers", l);
  cr_assert_eq(duet__tp_tcp.irecv(ep, 0, back, MID, 3, &r, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_tcp.isend(ep, 0, big, MID, 3, &s, err), DUET_SUCCESS, "%s", err);
  for (double t = now(); !(r.done && s.done) && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done && r.status == DUET_SUCCESS && r.len == MID && memcmp(big, back, MID) == 0,
            "256 KiB to itself");
  cr_assert(e->conns[0].tx[TCP_MAIN].fd >= 0 && e->conns[0].rx[TCP_MAIN].fd >= 0,
            "main lane not connected");
  cr_assert(e->conns[0].tx[TCP_BULK].fd < 0 && e->conns[0].rx[TCP_BULK].fd < 0,
            "a bulk lane to itself");
  duet__tp_tcp.close(ep);
  free(big);
  free(back);
}

/* Both ends of a pair send their first message at once: both dial the main
 * lane, the connection dialled by the lower token stays (the other is
 * refused), and both messages arrive, on one main socket per end. Each
 * side posts its send before either progresses (a byte through a pipe each
 * way). Returns 0, or a line number. */
static int both_dial(int me, int to, int from) {
  char err[DUET_TP_ERRLEN] = "";
  duet__tp_ep_t *ep = tcp_pair_open(me, to, from, err);
  const tcp_ep_t *e = (const tcp_ep_t *)ep;
  uint64_t mine = 100 + (uint64_t)me, got = 0;
  duet__tp_req_t s, r;
  char b = 'x';
  if (!ep || duet__tp_tcp.isend(ep, !me, &mine, sizeof mine, 6, &s, err) != DUET_SUCCESS)
    return __LINE__;
  if (pipe_io(to, &b, 1, 1) || pipe_io(from, &b, 1, 0)) /* both have dialled */
    return __LINE__;
  if (duet__tp_tcp.irecv(ep, !me, &got, sizeof got, 6, &r, err) != DUET_SUCCESS)
    return __LINE__;
  for (double t = now(); !(s.done && r.done) && now() < t + WAIT_SEC;)
    if (duet__tp_tcp.progress(ep, err) < 0)
      return __LINE__;
  if (!s.done || !r.done || s.status != DUET_SUCCESS || r.status != DUET_SUCCESS ||
      got != 100 + (uint64_t)!me)
    return __LINE__;
  /* one main socket, both ways */
  if (e->conns[!me].tx[TCP_MAIN].fd < 0 ||
      e->conns[!me].tx[TCP_MAIN].fd != e->conns[!me].rx[TCP_MAIN].fd)
    return __LINE__;
  if (pipe_io(to, &b, 1, 1) || pipe_io(from, &b, 1, 0)) /* neither closes before both are done */
    return __LINE__;
  duet__tp_tcp.close(ep);
  return 0;
}

Test(transport_tcp, both_dial_main_at_once, .timeout = 60) {
  int p2c[2], c2p[2], line;
  pid_t pid;

  for (int round = 0; round < 5; round++) { /* either token may be the lower */
    if ((pid = pair_fork(p2c, c2p)) == 0)
      _exit(both_dial(1, c2p[1], p2c[0]) == 0 ? 0 : 1);
    line = both_dial(0, p2c[1], c2p[0]);
    tcp_pair_reap(pid);
    cr_assert_eq(line, 0, "round %d: this end failed at line %d", round, line);
    tcp_pair_pipes_close(p2c, c2p);
  }
}

/* A first message completes for its sender while the receiver expects
 * nothing from it yet (it progresses, waiting for something else): the
 * receiver takes the new main connection and answers its hello anyway, so a
 * sender that waits for its send before doing what the receiver waits for
 * cannot deadlock. Only then does the receiver post the receive. */
Test(transport_tcp, first_send_completes_before_its_receive, .timeout = 60) {
  int p2c[2], c2p[2];
  char err[DUET_TP_ERRLEN] = "", b = 'x';
  uint64_t got = 0;
  duet__tp_req_t r;
  pid_t pid = pair_fork(p2c, c2p);

  if (pid == 0) { /* the sender */
    duet__tp_ep_t *ep = tcp_pair_open(1, c2p[1], p2c[0], err);
    if (!ep)
      _exit(2);
    if (tcp_send_one(ep, 0, 99, 8, err))
      _exit(3);
    if (pipe_io(c2p[1], &b, 1, 1) || pipe_io(p2c[0], &b, 1, 0)) /* sent; keep it until read */
      _exit(6);
    _exit(0);
  }
  duet__tp_ep_t *ep = tcp_pair_open(0, p2c[1], c2p[0], err);
  cr_assert_not_null(ep, "address swap or insert_peers: %s", err);
  int sent = 0;
  for (double t = now(); !sent && now() < t + WAIT_SEC;) { /* progress, expecting nothing */
    struct pollfd pfd = {.fd = c2p[0], .events = POLLIN};
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
    sent = poll(&pfd, 1, 0) == 1 && read(c2p[0], &b, 1) == 1;
  }
  cr_assert(sent, "the peer's first send did not complete while this end expected nothing");
  cr_assert_eq(duet__tp_tcp.irecv(ep, 1, &got, sizeof got, 8, &r, err), DUET_SUCCESS, "%s", err);
  for (double t = now(); !r.done && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done && r.status == DUET_SUCCESS && got == 99, "the message");
  cr_assert_eq(pipe_io(p2c[1], &b, 1, 1), 0);
  tcp_pair_reap(pid);
  duet__tp_tcp.close(ep);
  tcp_pair_pipes_close(p2c, c2p);
}

/* A peer that dies fails the receive waiting for it (no hang), and later
 * posts to it fail at once. The peer sends one message (its lane connects),
 * then exits without a word. */
Test(transport_tcp, peer_death, .timeout = 60) {
  int p2c[2], c2p[2];
  char err[DUET_TP_ERRLEN] = "";
  uint64_t got = 0;
  duet__tp_req_t r;
  pid_t pid = pair_fork(p2c, c2p);

  if (pid == 0) { /* the peer: one message, then gone */
    duet__tp_ep_t *ep = tcp_pair_open(1, c2p[1], p2c[0], err);
    _exit(!ep ? 2 : tcp_send_one(ep, 0, 7, 4, err) ? 3 : 0);
  }
  duet__tp_ep_t *ep = tcp_pair_open(0, p2c[1], c2p[0], err);
  cr_assert_not_null(ep, "address swap or insert_peers: %s", err);
  cr_assert_eq(duet__tp_tcp.irecv(ep, 1, &got, sizeof got, 4, &r, err), DUET_SUCCESS, "%s", err);
  for (double t = now(); !r.done && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done && r.status == DUET_SUCCESS && got == 7, "the peer's last message");
  tcp_pair_reap(pid);
  cr_assert_eq(duet__tp_tcp.irecv(ep, 1, &got, sizeof got, 5, &r, err), DUET_SUCCESS, "%s", err);
  for (double t = now(); !r.done && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done, "receive from a dead peer never completed");
  cr_assert_eq(r.status, DUET_ERR_REMOTE, "status %d", r.status);
  cr_assert(strstr(err, "peer 1"), "errbuf does not name the peer: %s", err);
  cr_assert_eq(duet__tp_tcp.isend(ep, 1, &got, sizeof got, 5, &r, err), DUET_ERR_REMOTE);
  duet__tp_tcp.close(ep);
  tcp_pair_pipes_close(p2c, c2p);
}

/* watch (transport.h): a receive waits for a peer that has sent nothing, so
 * no connection would tell this end that the peer left; watch dials it.
 * WATCH_GONE: the peer's endpoint closed before the dial (refused);
 * WATCH_LEAVES: it closes while the dial waits, unanswered, in its listen
 * queue (the peer never progressed): neither may be taken for a refusal in
 * a simultaneous dial, which would wait for a connection that never comes;
 * WATCH_THERE: the peer is there and sends later (it dials too: one main
 * connection stays), and the message arrives. */
enum { WATCH_GONE, WATCH_LEAVES, WATCH_THERE };

static void watch_peer(int mode) {
  int p2c[2], c2p[2];
  char err[DUET_TP_ERRLEN] = "", b = 'x';
  uint64_t got = 0;
  duet__tp_req_t r;
  pid_t pid = pair_fork(p2c, c2p);

  if (pid == 0) { /* the peer: no progress until told */
    duet__tp_ep_t *ep = tcp_pair_open(1, c2p[1], p2c[0], err);
    if (!ep)
      _exit(2);
    if (mode == WATCH_GONE)
      duet__tp_tcp.close(ep);
    if (pipe_io(c2p[1], &b, 1, 1) || pipe_io(p2c[0], &b, 1, 0)) /* ready; wait for the dial */
      _exit(4);
    if (mode == WATCH_LEAVES)
      duet__tp_tcp.close(ep);
    if (mode == WATCH_THERE && tcp_send_one(ep, 0, 77, 5, err))
      _exit(5);
    (void)pipe_io(p2c[0], &b, 1, 0); /* alive (its process holds nothing) until the end */
    _exit(0);
  }
  duet__tp_ep_t *ep = tcp_pair_open(0, p2c[1], c2p[0], err);
  const tcp_ep_t *e = (const tcp_ep_t *)ep;
  cr_assert_not_null(ep, "address swap or insert_peers: %s", err);
  cr_assert_eq(pipe_io(c2p[0], &b, 1, 0), 0);
  cr_assert_eq(duet__tp_tcp.irecv(ep, 1, &got, sizeof got, 5, &r, err), DUET_SUCCESS, "%s", err);
  cr_assert_not_null(duet__tp_tcp.watch);
  duet__tp_tcp.watch(ep, 1);
  cr_assert(e->conns[1].tx[TCP_MAIN].state != TX_NONE || r.done, "watch did not dial");
  for (double t = now(); !r.done && now() < t + 0.05;) /* connected, the hello written */
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert_eq(pipe_io(p2c[1], &b, 1, 1), 0);
  for (double t = now(); !r.done && now() < t + WAIT_SEC;)
    cr_assert_geq(duet__tp_tcp.progress(ep, err), 0, "%s", err);
  cr_assert(r.done, "mode %d: the receive never completed", mode);
  if (mode == WATCH_THERE) {
    cr_assert(r.status == DUET_SUCCESS && got == 77, "the message: status %d, %llu", r.status,
              (unsigned long long)got);
    cr_assert(e->conns[1].tx[TCP_MAIN].fd >= 0 &&
                  e->conns[1].tx[TCP_MAIN].fd == e->conns[1].rx[TCP_MAIN].fd,
              "not one main socket both ways");
  } else {
    cr_assert_eq(r.status, DUET_ERR_REMOTE, "mode %d: status %d (%s)", mode, r.status, err);
    cr_assert(strstr(err, "peer 1"), "errbuf does not name the peer: %s", err);
  }
  cr_assert_eq(pipe_io(p2c[1], &b, 1, 1), 0);
  tcp_pair_reap(pid);
  duet__tp_tcp.close(ep);
  tcp_pair_pipes_close(p2c, c2p);
}

Test(transport_tcp, watch_finds_a_peer_gone, .timeout = 60) { watch_peer(WATCH_GONE); }
Test(transport_tcp, watch_finds_a_peer_leaving, .timeout = 60) { watch_peer(WATCH_LEAVES); }
Test(transport_tcp, watch_keeps_a_peer_there, .timeout = 60) { watch_peer(WATCH_THERE); }

/* A pair whose receive waits for a peer that has not connected is parked
 * off the active list (progress does not look at it: the HPN planes keep a
 * notice receive posted for every peer), and comes back when the peer's
 * connection is accepted, or when it is watched. One process, a hub and
 * NPARK peers, each endpoint progressed in turn. */
#define NPARK 8
static void progress_all(duet__tp_ep_t **eps, int n, const duet__tp_req_t *until, char *err) {
  for (double t = now(); !until->done && now() < t + WAIT_SEC;)
    for (int k = 0; k < n; k++)
      cr_assert_geq(duet__tp_tcp.progress(eps[k], err), 0, "endpoint %d: %s", k, err);
}

Test(transport_tcp, waiting_pairs_park, .timeout = 60) {
  unsigned char addrs[NPARK + 1][DUET_TP_ADDR_MAX];
  size_t lens[NPARK + 1];
  duet__tp_ep_t *eps[NPARK + 1];
  char err[DUET_TP_ERRLEN] = "";
  uint64_t got[NPARK + 1] = {0}, v3 = 303, v5 = 505;
  duet__tp_req_t r[NPARK + 1], s3, s5;
  const tcp_ep_t *hub;

  for (int k = 0; k <= NPARK; k++)
    eps[k] = tcp_lone_open(addrs[k], &lens[k], err);
  for (int k = 0; k <= NPARK; k++)
    cr_assert_eq(duet__tp_tcp.insert_peers(eps[k], NPARK + 1, addrs, DUET_TP_ADDR_MAX, lens, err),
                 DUET_SUCCESS, "%s", err);
  hub = (const tcp_ep_t *)eps[0];
  for (int k = 1; k <= NPARK; k++)
    cr_assert_eq(duet__tp_tcp.irecv(eps[0], k, &got[k], sizeof got[k], 1, &r[k], err),
                 DUET_SUCCESS, "%s", err);
  for (int i = 0; i < 3; i++)
    cr_assert_geq(duet__tp_tcp.progress(eps[0], err), 0, "%s", err);
  cr_assert(hub->nact == 0 && hub->npark == NPARK, "%d active, %d parked, not 0 and %d", hub->nact,
            hub->npark, NPARK);
  /* peer 3 connects and sends: its pair comes back and the message arrives */
  cr_assert_eq(duet__tp_tcp.isend(eps[3], 0, &v3, sizeof v3, 1, &s3, err), DUET_SUCCESS, "%s", err);
  progress_all(eps, NPARK + 1, &r[3], err);
  cr_assert(r[3].done && r[3].status == DUET_SUCCESS && got[3] == 303, "the parked pair's message");
  cr_assert_eq(hub->npark, NPARK - 1);
  /* a watched pair leaves the parked list to dial; its peer sends later */
  duet__tp_tcp.watch(eps[0], 5);
  cr_assert_eq(hub->npark, NPARK - 2);
  cr_assert_eq(duet__tp_tcp.isend(eps[5], 0, &v5, sizeof v5, 1, &s5, err), DUET_SUCCESS, "%s", err);
  progress_all(eps, NPARK + 1, &r[5], err);
  cr_assert(r[5].done && r[5].status == DUET_SUCCESS && got[5] == 505, "the watched pair's message");
  progress_all(eps, NPARK + 1, &s5, err);
  cr_assert(s3.done && s5.done, "the sends");
  for (int k = 1; k <= NPARK; k++)
    cr_assert(k == 3 || k == 5 || !r[k].done, "receive %d completed", k);
  for (int k = 0; k <= NPARK; k++)
    duet__tp_tcp.close(eps[k]);
}

/* A peer this endpoint has never talked to loses a plane: its DOWN notice
 * must still be read (the notices of untouched peers are read every few
 * progress calls, not on every one), and the plane is lost here too before
 * this endpoint sends anything. One process, three planes endpoints over
 * duet's tcp: 1 sends 4 MiB to 2 (both planes connect), every connection
 * on plane 1 is reset (ss -K), 1 and 2 lose the plane and say DOWN to every
 * peer, endpoint 0 among them, which has talked to neither; then 0 sends
 * 4 MiB to one of them, on plane 0. Had 0 missed the DOWN, it would learn
 * only when its part for plane 1 found that plane closed there. */
#define DOWN_ADDR "127.0.0.81" /* plane 1 of this test alone: ss -K hits all of it */
static void planes_progress_all(duet__tp_ep_t **eps, int n, const duet__tp_req_t *a,
                                const duet__tp_req_t *b, double sec, char *err) {
  for (double t = now(); (!a || !a->done || !b || !b->done) && now() < t + sec;)
    for (int k = 0; k < n; k++)
      (void)duet__tp_planes.progress(eps[k], err);
}

Test(transport_planes, an_untouched_peers_down_is_read, .timeout = 120) {
  enum { LEN = 4 << 20 };
  duet__tp_params_t params = {.provider = "tcp", .iface = "127.0.0.1," DOWN_ADDR};
  unsigned char addrs[3][DUET_TP_ADDR_MAX], *src = malloc(LEN), *dst = calloc(1, LEN);
  size_t lens[3];
  duet__tp_ep_t *eps[3];
  duet__tp_req_t s, r;
  char err[DUET_TP_ERRLEN] = "";
  int to;

  cr_assert(src && dst);
  for (size_t k = 0; k < LEN; k++)
    src[k] = (unsigned char)(k * 7 + 3);
  for (int k = 0; k < 3; k++) {
    cr_assert_eq(duet__tp_planes.open(&params, &eps[k], err), DUET_SUCCESS, "%s", err);
    cr_assert_eq(duet__tp_planes.get_addr(eps[k], addrs[k], &lens[k], err), DUET_SUCCESS, "%s",
                 err);
  }
  for (int k = 0; k < 3; k++)
    cr_assert_eq(duet__tp_planes.insert_peers(eps[k], 3, addrs, DUET_TP_ADDR_MAX, lens, err),
                 DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_planes.irecv(eps[2], 1, dst, LEN, 9, &r, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_planes.isend(eps[1], 2, src, LEN, 9, &s, err), DUET_SUCCESS, "%s", err);
  planes_progress_all(eps, 3, &s, &r, WAIT_SEC, err);
  cr_assert(s.done && r.done && r.status == DUET_SUCCESS && memcmp(src, dst, LEN) == 0,
            "1 to 2 before the reset");
  cr_assert_eq(system("ss -K -t '( src " DOWN_ADDR " or dst " DOWN_ADDR " )' >/dev/null"), 0,
               "ss -K failed");
  for (double t = now(); now() < t + WAIT_SEC && !(duet__tp_planes_dead(eps[1]) == 2 &&
                                                    duet__tp_planes_dead(eps[2]) == 2);)
    planes_progress_all(eps, 3, NULL, NULL, 0.01, err);
  cr_assert(duet__tp_planes_dead(eps[1]) == 2 || duet__tp_planes_dead(eps[2]) == 2,
            "neither 1 nor 2 lost plane 1 (dead %#x and %#x)", duet__tp_planes_dead(eps[1]),
            duet__tp_planes_dead(eps[2]));
  to = duet__tp_planes_dead(eps[1]) == 2 ? 1 : 2;
  planes_progress_all(eps, 3, NULL, NULL, 0.2, err); /* the DOWN notices arrive */
  cr_assert_eq(duet__tp_planes_dead(eps[0]), 2,
               "0 did not lose plane 1 (dead %#x): it missed the DOWN of peers it never talked to",
               duet__tp_planes_dead(eps[0]));
  memset(dst, 0, LEN);
  cr_assert_eq(duet__tp_planes.irecv(eps[to], 0, dst, LEN, 10, &r, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__tp_planes.isend(eps[0], to, src, LEN, 10, &s, err), DUET_SUCCESS, "%s", err);
  planes_progress_all(eps, 3, &s, &r, WAIT_SEC, err);
  cr_assert(s.done && r.done && r.status == DUET_SUCCESS && memcmp(src, dst, LEN) == 0,
            "0 to %d after the reset", to);
  for (int k = 0; k < 3; k++)
    duet__tp_planes.close(eps[k]);
  free(src);
  free(dst);
}
