/*
 * tcp.c - duet's own TCP transport: tagged messages over kernel sockets.
 *
 * Why not libfabric's tcp;ofi_rxm (still selectable as "tcp;ofi_rxm"): rxm
 * adds a progress signal (a write and a read per message) to every transfer
 * and a rendezvous handshake above 128 KiB, and 1.17's native RDM provider
 * (`net`) holds one unexpected message per connection (DESIGN.md section 8).
 * Here a small message costs one sendmsg and one recv; a large one streams
 * straight from the sender's buffer into the receiver's, as NCCL's and
 * Gloo's socket transports do.
 *
 * Connections: every endpoint listens on the interface the caller names (an
 * interface name or an IP address; none: the first non-loopback IPv4
 * interface that is up, else loopback). insert_peers makes one connection
 * per pair, used in both directions (so the kernel's acknowledgements ride
 * on data going the other way instead of travelling alone): of two
 * endpoints the one with the lower random token dials. An endpoint reaches
 * itself through two sockets, sending on the one it dialled and receiving on
 * the one it accepted. The dialler's first 40 bytes are a hello holding the
 * listener's 128-bit token (learned from the address blob, which came
 * through the authenticated bootstrap) and its own; a connection that does
 * not present them is closed and logged. insert_peers is collective over the
 * inserted peers and fails after TCP_CONNECT_SEC naming the peer it lacks.
 *
 * Wire format: a 24-byte header (magic, tag, length) then the payload, in
 * host byte order (duet's ranks share one architecture).
 *
 * Receives: a connection is read only while it has a posted receive, so a
 * message nobody waits for yet stays in the kernel's socket buffer (flow
 * control for free). Reads go through a per-connection staging buffer, which
 * takes small messages (header and payload in one recv) and never reads past
 * the message expected next; a payload with at least TCP_DIRECT bytes still
 * to come is read straight into its destination.
 * A message whose receive is not posted but that sits in front of one that
 * is ("unexpected") is kept in a pooled buffer; a receive posted while such
 * a message is still arriving takes over the rest of it directly.
 * Matching: per connection, the oldest posted receive with the message's
 * tag; messages of one tag arrive in order (one stream per direction).
 *
 * Sends: a send to a connection with nothing queued is written at once and
 * usually completes inside isend; the rest is queued and written by
 * progress. Nothing is copied: the caller keeps the buffer until done.
 *
 * Waiting (oversubscribed ranks): wait_fd returns an epoll descriptor holding
 * the connections that have posted receives (readable) or queued sends
 * (writable); the interest set is brought up to date only there.
 *
 * Memory: operations and unexpected buffers come from free lists that grow
 * and are kept until close; steady state allocates nothing.
 * One thread at a time per endpoint.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "transport.h"

#define TCP_MAGIC 0x64756574u       /* "duet" */
#define TCP_HELLO_MAGIC 0x64754831u /* hello of a new connection */
#define TCP_STAGE (64 * 1024)       /* staging buffer per incoming connection */
#define TCP_DIRECT 4096             /* payload left to read straight into place */
#define TCP_CONNECT_SEC 60          /* deadline of insert_peers */
#define TCP_OPS_CHUNK 64            /* operations allocated at a time */
#define TCP_PENDING_EXTRA 16        /* accepted connections beyond npeers awaiting a hello */
#define TCP_MAX_LEN (UINT64_C(1) << 48)
#define TCP_UX_CLASSES 40 /* unexpected buffers: power-of-two size classes */

/* The address blob. */
typedef struct tcp_addr {
  uint32_t magic;
  uint16_t family; /* AF_INET or AF_INET6 */
  uint16_t port;   /* network order */
  uint8_t ip[16];
  uint64_t token[2]; /* random; a connector must present it */
} tcp_addr_t;

typedef struct tcp_hello {
  uint32_t magic;
  uint32_t zero;
  uint64_t to[2];   /* the listener's token */
  uint64_t from[2]; /* the connector's token */
} tcp_hello_t;

typedef struct tcp_hdr {
  uint32_t magic;
  uint32_t zero;
  uint64_t tag;
  uint64_t len;
} tcp_hdr_t;

/* A posted send or receive. */
typedef struct tcp_op {
  struct tcp_op *next;
  duet__tp_req_t *req;
  uint8_t *buf;
  size_t len;
  uint64_t tag;
  size_t off;    /* send: bytes of header and payload written */
  tcp_hdr_t hdr; /* send: the header */
} tcp_op_t;

/* A message that arrived before its receive was posted. */
typedef struct tcp_ux {
  struct tcp_ux *next;
  uint8_t *data;
  size_t cap; /* 1 << cls, or 0 for an empty message without a buffer */
  int cls;
  uint64_t tag;
  size_t len, got; /* length, bytes arrived so far */
  tcp_op_t *waiter; /* a receive shorter than the message, waiting for its end */
} tcp_ux_t;

typedef struct tcp_conn {
  /* sending side (the same socket as rfd but for the endpoint itself) */
  int sfd;
  tcp_op_t *sq_head, **sq_tail; /* queued sends, in order */
  /* receiving side */
  int rfd;
  tcp_op_t *rq_head, **rq_tail; /* posted receives without a message */
  tcp_ux_t *ux_head, **ux_tail; /* unexpected messages, in arrival order */
  uint8_t *stage;
  size_t s_beg, s_end;
  int in_body;     /* reading a payload (else a header) */
  tcp_op_t *cur;   /* payload target: a receive ... */
  tcp_ux_t *cur_ux; /* ... or an unexpected buffer */
  size_t body_len, body_got, body_keep; /* keep: bytes that fit the target */
  duet_status_t dead; /* DUET_SUCCESS, or why the connection is unusable */
  uint32_t ev;        /* epoll events registered for rfd (and sfd when it is rfd) */
  uint32_t sev;       /* ... for sfd when it is another socket */
  uint64_t token[2]; /* the peer's */
} tcp_conn_t;

typedef struct tcp_ep {
  int lfd;
  tcp_addr_t addr;
  int yield;
  int epfd;
  int npeers;
  tcp_conn_t *conns;
  tcp_op_t *free_ops;
  void **chunks; /* operation chunks, freed at close */
  int nchunks;
  tcp_ux_t *free_ux[TCP_UX_CLASSES + 1]; /* by class; [TCP_UX_CLASSES]: empty ones */
  int nsend_queued; /* connections with queued sends */
  char *errbuf;     /* the current call's errbuf: a receive's error is written there */
} tcp_ep_t;

static void tcp_seterr(char *errbuf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tcp_seterr(char *errbuf, const char *fmt, ...) {
  char tmp[DUET_TP_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (errbuf)
    memcpy(errbuf, tmp, sizeof tmp);
  DUET_WARN(DUET_SUB_NET, "tcp: %s", tmp);
}

static double tcp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void tcp_complete(tcp_op_t *op, duet_status_t st, size_t len) {
  op->req->status = st;
  op->req->len = len;
  __atomic_store_n(&op->req->done, 1, __ATOMIC_RELEASE);
}

/* ---- free lists ---------------------------------------------------------- */

static tcp_op_t *tcp_op_get(tcp_ep_t *e) {
  tcp_op_t *op = e->free_ops;
  if (!op) {
    void **chunks = realloc(e->chunks, (size_t)(e->nchunks + 1) * sizeof *chunks);
    tcp_op_t *c;
    if (!chunks)
      return NULL;
    e->chunks = chunks;
    c = calloc(TCP_OPS_CHUNK, sizeof *c);
    if (!c)
      return NULL;
    e->chunks[e->nchunks++] = c;
    for (int i = TCP_OPS_CHUNK - 1; i >= 0; i--) {
      c[i].next = e->free_ops;
      e->free_ops = &c[i];
    }
    op = e->free_ops;
  }
  e->free_ops = op->next;
  op->next = NULL;
  return op;
}

static void tcp_op_put(tcp_ep_t *e, tcp_op_t *op) {
  op->next = e->free_ops;
  e->free_ops = op;
}

/* An unexpected-message buffer for len bytes, from its size class. */
static tcp_ux_t *tcp_ux_get(tcp_ep_t *e, size_t len) {
  int cls = TCP_UX_CLASSES;
  tcp_ux_t *u;
  if (len > 0)
    for (cls = 8; cls < TCP_UX_CLASSES && ((size_t)1 << cls) < len; cls++)
      ;
  if (cls == TCP_UX_CLASSES && len > 0)
    return NULL;
  u = e->free_ux[cls];
  if (u) {
    e->free_ux[cls] = u->next;
  } else {
    u = calloc(1, sizeof *u);
    if (!u)
      return NULL;
    u->cls = cls;
    u->cap = len > 0 ? (size_t)1 << cls : 0;
    if (u->cap && !(u->data = malloc(u->cap))) {
      free(u);
      return NULL;
    }
  }
  u->next = NULL;
  u->len = len;
  u->got = 0;
  u->waiter = NULL;
  return u;
}

static void tcp_ux_put(tcp_ep_t *e, tcp_ux_t *u) {
  u->next = e->free_ux[u->cls];
  e->free_ux[u->cls] = u;
}

/* ---- receiving ----------------------------------------------------------- */

/* The connection failed: fail its receives and sends, remember why. */
static void tcp_conn_fail(tcp_ep_t *e, tcp_conn_t *c, duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void tcp_conn_fail(tcp_ep_t *e, tcp_conn_t *c, duet_status_t st, const char *fmt, ...) {
  char msg[DUET_TP_ERRLEN];
  va_list ap;
  if (c->dead)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  tcp_seterr(e->errbuf, "peer %d: %s", (int)(c - e->conns), msg);
  c->dead = st;
  if (c->in_body && c->cur) {
    tcp_complete(c->cur, st, 0);
    tcp_op_put(e, c->cur);
  }
  c->cur = NULL;
  for (tcp_op_t *op = c->rq_head, *next; op; op = next) {
    next = op->next;
    tcp_complete(op, st, 0);
    tcp_op_put(e, op);
  }
  c->rq_head = NULL;
  c->rq_tail = &c->rq_head;
  for (tcp_ux_t *u = c->ux_head; u; u = u->next)
    if (u->waiter) {
      tcp_complete(u->waiter, st, 0);
      tcp_op_put(e, u->waiter);
      u->waiter = NULL;
    }
  if (c->sq_head)
    e->nsend_queued--;
  for (tcp_op_t *op = c->sq_head, *next; op; op = next) {
    next = op->next;
    tcp_complete(op, st, 0);
    tcp_op_put(e, op);
  }
  c->sq_head = NULL;
  c->sq_tail = &c->sq_head;
}

/* The payload in progress is complete: hand it to its receive or leave it
 * queued as unexpected. */
static void tcp_body_done(tcp_ep_t *e, tcp_conn_t *c) {
  if (c->cur) {
    tcp_op_t *op = c->cur;
    if (c->body_len > op->len)
      tcp_complete(op, DUET_ERR_MISMATCH, op->len);
    else
      tcp_complete(op, DUET_SUCCESS, c->body_len);
    if (c->body_len > op->len)
      tcp_seterr(e->errbuf, "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
                 (int)(c - e->conns), c->body_len, (unsigned long long)op->tag, op->len);
    tcp_op_put(e, op);
  } else if (c->cur_ux && c->cur_ux->waiter) {
    /* a receive shorter than this message took it: deliver what fits */
    tcp_ux_t *u = c->cur_ux, **pp = &c->ux_head;
    tcp_op_t *op = u->waiter;
    if (op->len > 0)
      memcpy(op->buf, u->data, op->len);
    tcp_complete(op, DUET_ERR_MISMATCH, op->len);
    tcp_seterr(e->errbuf, "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
               (int)(c - e->conns), u->len, (unsigned long long)op->tag, op->len);
    tcp_op_put(e, op);
    while (*pp != u)
      pp = &(*pp)->next;
    *pp = u->next;
    if (c->ux_tail == &u->next)
      c->ux_tail = pp;
    tcp_ux_put(e, u);
  }
  c->in_body = 0;
  c->cur = NULL;
  c->cur_ux = NULL;
}

/* A header arrived: find its receive, or keep it as unexpected. */
static void tcp_hdr_in(tcp_ep_t *e, tcp_conn_t *c, const tcp_hdr_t *h) {
  tcp_op_t **pp = &c->rq_head;

  if (h->magic != TCP_MAGIC || h->zero != 0 || h->len > TCP_MAX_LEN) {
    tcp_conn_fail(e, c, DUET_ERR_PROTOCOL, "bad message header (magic %#x, length %llu)",
                  h->magic, (unsigned long long)h->len);
    return;
  }
  c->in_body = 1;
  c->body_len = (size_t)h->len;
  c->body_got = 0;
  c->cur = NULL;
  c->cur_ux = NULL;
  while (*pp && (*pp)->tag != h->tag)
    pp = &(*pp)->next;
  if (*pp) {
    c->cur = *pp;
    *pp = c->cur->next;
    if (!*pp)
      c->rq_tail = pp;
    c->cur->next = NULL;
    c->body_keep = c->body_len < c->cur->len ? c->body_len : c->cur->len;
  } else {
    tcp_ux_t *u = tcp_ux_get(e, c->body_len);
    if (!u) {
      tcp_conn_fail(e, c, DUET_ERR_NO_MEMORY, "out of memory for an unexpected %zu-byte message",
                    c->body_len);
      return;
    }
    u->tag = h->tag;
    *c->ux_tail = u;
    c->ux_tail = &u->next;
    c->cur_ux = u;
    c->body_keep = c->body_len;
  }
  if (c->body_len == 0)
    tcp_body_done(e, c);
}

/* Where the next payload bytes go (NULL: past what the receive holds). */
static uint8_t *tcp_body_dst(tcp_conn_t *c) {
  if (c->body_got >= c->body_keep)
    return NULL;
  return (c->cur ? c->cur->buf : c->cur_ux->data) + c->body_got;
}

static void tcp_body_in(tcp_ep_t *e, tcp_conn_t *c, size_t n) {
  c->body_got += n;
  if (c->cur_ux)
    c->cur_ux->got = c->body_got;
  if (c->body_got == c->body_len)
    tcp_body_done(e, c);
}

/* Consume what the staging buffer holds. */
static void tcp_stage_parse(tcp_ep_t *e, tcp_conn_t *c) {
  while (c->s_end > c->s_beg && !c->dead) {
    size_t have = c->s_end - c->s_beg;
    if (!c->in_body) {
      tcp_hdr_t h;
      if (have < sizeof h) {
        if (c->s_beg > 0) { /* keep the partial header at the front */
          memmove(c->stage, c->stage + c->s_beg, have);
          c->s_beg = 0;
          c->s_end = have;
        }
        return;
      }
      memcpy(&h, c->stage + c->s_beg, sizeof h);
      c->s_beg += sizeof h;
      tcp_hdr_in(e, c, &h);
    } else {
      size_t n = c->body_len - c->body_got;
      uint8_t *dst = tcp_body_dst(c);
      if (n > have)
        n = have;
      if (dst) {
        size_t k = c->body_keep - c->body_got;
        memcpy(dst, c->stage + c->s_beg, k < n ? k : n);
      }
      c->s_beg += n;
      tcp_body_in(e, c, n);
    }
  }
  if (c->s_beg == c->s_end)
    c->s_beg = c->s_end = 0;
}

/* Whether this connection must be read now: a receive waits for it. */
static int tcp_wants_read(const tcp_conn_t *c) {
  return !c->dead && (c->rq_head || (c->in_body && (c->cur || (c->cur_ux && c->cur_ux->waiter))));
}

/* How many bytes to read into the staging buffer: no further than the
 * message we expect, so that a later message (the next call's, say) stays in
 * the kernel until its receive is posted instead of landing in an unexpected
 * buffer. Expecting a header: the header, plus the first posted receive's
 * payload when it is small (one recv per small message). In a payload: its
 * rest. */
static size_t tcp_read_size(const tcp_conn_t *c) {
  size_t room = TCP_STAGE - c->s_end, want;
  if (c->in_body) {
    want = c->body_len - c->body_got;
  } else {
    want = sizeof(tcp_hdr_t) - (c->s_end - c->s_beg); /* parse left less than a header */
    if (c->rq_head && c->rq_head->len < TCP_DIRECT)
      want += c->rq_head->len;
  }
  return want < room ? want : room;
}

/* Read what the connection has while a receive waits for it. */
static void tcp_conn_read(tcp_ep_t *e, tcp_conn_t *c) {
  tcp_stage_parse(e, c);
  while (tcp_wants_read(c)) {
    ssize_t got;
    uint8_t *dst = c->in_body ? tcp_body_dst(c) : NULL;
    size_t left = c->in_body ? c->body_keep - c->body_got : 0;
    if (dst && left >= TCP_DIRECT) { /* large payload: straight into place */
      got = recv(c->rfd, dst, left, MSG_DONTWAIT);
      if (got > 0) {
        tcp_body_in(e, c, (size_t)got);
        continue;
      }
    } else {
      got = recv(c->rfd, c->stage + c->s_end, tcp_read_size(c), MSG_DONTWAIT);
      if (got > 0) {
        c->s_end += (size_t)got;
        tcp_stage_parse(e, c);
        continue;
      }
    }
    if (got == 0) {
      tcp_conn_fail(e, c, DUET_ERR_REMOTE, "connection closed by the peer");
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      tcp_conn_fail(e, c, DUET_ERR_REMOTE, "recv: %s", strerror(errno));
    }
    return;
  }
}

/* ---- sending ------------------------------------------------------------- */

/* Write queued sends until the socket is full. */
static void tcp_conn_write(tcp_ep_t *e, tcp_conn_t *c) {
  while (c->sq_head) {
    tcp_op_t *op = c->sq_head;
    struct iovec iov[2];
    struct msghdr mh = {.msg_iov = iov};
    size_t hlen = sizeof op->hdr;
    ssize_t n;
    if (op->off < hlen) {
      iov[0].iov_base = (uint8_t *)&op->hdr + op->off;
      iov[0].iov_len = hlen - op->off;
      iov[1].iov_base = op->buf;
      iov[1].iov_len = op->len;
      mh.msg_iovlen = op->len ? 2 : 1;
    } else {
      iov[0].iov_base = op->buf + (op->off - hlen);
      iov[0].iov_len = op->len - (op->off - hlen);
      mh.msg_iovlen = 1;
    }
    n = sendmsg(c->sfd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        tcp_conn_fail(e, c, DUET_ERR_REMOTE, "send: %s", strerror(errno));
      return;
    }
    op->off += (size_t)n;
    if (op->off < hlen + op->len)
      return; /* the socket is full */
    c->sq_head = op->next;
    if (!c->sq_head) {
      c->sq_tail = &c->sq_head;
      e->nsend_queued--;
    }
    tcp_complete(op, DUET_SUCCESS, op->len);
    tcp_op_put(e, op);
  }
}

/* ---- operations ---------------------------------------------------------- */

static duet_status_t tcp_check(tcp_ep_t *e, const char *call, int peer, const void *buf,
                               size_t len, duet__tp_req_t *req, char *errbuf) {
  if (!req) {
    tcp_seterr(errbuf, "%s: req is NULL", call);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (peer < 0 || peer >= e->npeers) {
    tcp_seterr(errbuf, "%s: peer %d out of range (%d peers)", call, peer, e->npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (!buf && len > 0) {
    tcp_seterr(errbuf, "%s: buf is NULL with len %zu", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if ((uint64_t)len > TCP_MAX_LEN) {
    tcp_seterr(errbuf, "%s: len %zu exceeds 2^48", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (e->conns[peer].dead) {
    tcp_seterr(errbuf, "%s: the connection to peer %d failed earlier", call, peer);
    return e->conns[peer].dead;
  }
  return DUET_SUCCESS;
}

static duet_status_t tcp_isend(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                               uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  duet_status_t st = tcp_check(e, "isend", peer, buf, len, req, errbuf);
  e->errbuf = errbuf;
  tcp_conn_t *c;
  tcp_op_t *op;
  if (st != DUET_SUCCESS)
    return st;
  c = &e->conns[peer];
  op = tcp_op_get(e);
  if (!op) {
    tcp_seterr(errbuf, "isend: out of memory for an operation");
    return DUET_ERR_NO_MEMORY;
  }
  op->req = req;
  op->buf = (uint8_t *)buf;
  op->len = len;
  op->tag = tag;
  op->off = 0;
  op->hdr = (tcp_hdr_t){.magic = TCP_MAGIC, .tag = tag, .len = len};
  req->done = 0;
  if (!c->sq_head)
    e->nsend_queued++;
  *c->sq_tail = op;
  c->sq_tail = &op->next;
  if (c->sq_head == op)
    tcp_conn_write(e, c);
  return DUET_SUCCESS;
}

static duet_status_t tcp_irecv(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                               duet__tp_req_t *req, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  duet_status_t st = tcp_check(e, "irecv", peer, buf, len, req, errbuf);
  e->errbuf = errbuf;
  tcp_conn_t *c;
  tcp_ux_t **pp;
  tcp_op_t *op;
  if (st != DUET_SUCCESS)
    return st;
  c = &e->conns[peer];
  op = tcp_op_get(e);
  if (!op) {
    tcp_seterr(errbuf, "irecv: out of memory for an operation");
    return DUET_ERR_NO_MEMORY;
  }
  op->req = req;
  op->buf = buf;
  op->len = len;
  op->tag = tag;
  req->done = 0;
  for (pp = &c->ux_head; *pp && ((*pp)->tag != tag || (*pp)->waiter); pp = &(*pp)->next)
    ;
  if (!*pp) { /* not here yet */
    *c->rq_tail = op;
    c->rq_tail = &op->next;
    tcp_conn_read(e, c);
    return DUET_SUCCESS;
  }
  tcp_ux_t *u = *pp;
  if (u->got == u->len || u->len > len) {
    if (u->got < u->len) { /* truncated and still arriving: wait for its end */
      u->waiter = op;
      tcp_conn_read(e, c);
      return DUET_SUCCESS;
    }
    if (len > 0 && u->len > 0) /* an empty buffer may be NULL */
      memcpy(op->buf, u->data, u->len < len ? u->len : len);
    if (u->len > len) {
      tcp_seterr(errbuf, "irecv: peer %d sent %zu bytes with tag %#llx, receive holds %zu", peer,
                 u->len, (unsigned long long)tag, len);
      tcp_complete(op, DUET_ERR_MISMATCH, len);
    } else {
      tcp_complete(op, DUET_SUCCESS, u->len);
    }
    tcp_op_put(e, op);
  } else { /* still arriving and it fits: the rest goes straight into place */
    if (u->got > 0)
      memcpy(op->buf, u->data, u->got);
    c->cur = op;
    c->cur_ux = NULL;
    c->body_keep = c->body_len;
  }
  *pp = u->next;
  if (c->ux_tail == &u->next)
    c->ux_tail = pp;
  tcp_ux_put(e, u);
  if (c->cur == op)
    tcp_conn_read(e, c);
  return DUET_SUCCESS;
}

static duet_status_t tcp_progress(duet__tp_ep_t *ep, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  e->errbuf = errbuf;
  for (int k = 0; k < e->npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    if (c->sq_head)
      tcp_conn_write(e, c);
    if (tcp_wants_read(c))
      tcp_conn_read(e, c);
  }
  return DUET_SUCCESS;
}

/* Bring fd's registration in the epoll set to want (0: none). */
static int tcp_epoll_set(tcp_ep_t *e, int fd, uint32_t *have, uint32_t want) {
  struct epoll_event ev = {.events = want, .data.fd = fd};
  int op = !*have ? EPOLL_CTL_ADD : !want ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  if (*have == want)
    return 0;
  if (epoll_ctl(e->epfd, op, fd, &ev) != 0)
    return -1;
  *have = want;
  return 0;
}

static duet_status_t tcp_wait_fd(duet__tp_ep_t *ep, int *fd, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  int watched = 0;
  if (e->epfd < 0)
    return DUET_ERR_UNSUPPORTED;
  for (int k = 0; k < e->npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    int rd = tcp_wants_read(c), wr = !c->dead && c->sq_head != NULL;
    if (rd && c->s_end > c->s_beg)
      return DUET_IN_PROGRESS; /* staged bytes to parse */
    uint32_t in = rd ? EPOLLIN : 0, out = wr ? EPOLLOUT : 0;
    if (c->sfd == c->rfd ? tcp_epoll_set(e, c->rfd, &c->ev, in | out) != 0
                         : tcp_epoll_set(e, c->rfd, &c->ev, in) != 0 ||
                               tcp_epoll_set(e, c->sfd, &c->sev, out) != 0) {
      tcp_seterr(errbuf, "epoll_ctl(peer %d): %s", k, strerror(errno));
      return DUET_ERR_UNSUPPORTED;
    }
    watched += rd + wr;
  }
  *fd = watched ? e->epfd : -1;
  return DUET_SUCCESS;
}

/* ---- open / addresses / connections / close ------------------------------ */

/* The address to listen on: iface as an IP address or an interface name;
 * none: the first non-loopback IPv4 interface that is up, else loopback. */
static duet_status_t tcp_pick_addr(const char *iface, struct sockaddr_storage *ss,
                                   socklen_t *sslen, char *errbuf) {
  struct sockaddr_in *sin = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  struct ifaddrs *ifs, *i, *pick = NULL;

  memset(ss, 0, sizeof *ss);
  if (iface && inet_pton(AF_INET, iface, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    *sslen = sizeof *sin;
    return DUET_SUCCESS;
  }
  if (iface && inet_pton(AF_INET6, iface, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    *sslen = sizeof *sin6;
    return DUET_SUCCESS;
  }
  if (getifaddrs(&ifs) != 0) {
    tcp_seterr(errbuf, "getifaddrs: %s", strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  for (int pass = 0; pass < 2 && !pick; pass++) /* IPv4 first, then IPv6 */
    for (i = ifs; i && !pick; i = i->ifa_next) {
      int fam = pass == 0 ? AF_INET : AF_INET6;
      if (!i->ifa_addr || i->ifa_addr->sa_family != fam || !(i->ifa_flags & IFF_UP))
        continue;
      if (iface ? strcmp(i->ifa_name, iface) == 0 : !(i->ifa_flags & IFF_LOOPBACK))
        pick = i;
    }
  if (pick) {
    *sslen = pick->ifa_addr->sa_family == AF_INET ? sizeof *sin : sizeof *sin6;
    memcpy(ss, pick->ifa_addr, *sslen);
  } else if (!iface) {
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *sslen = sizeof *sin;
  }
  freeifaddrs(ifs);
  if (!pick && iface) {
    tcp_seterr(errbuf, "interface '%s' has no IP address that is up (DUET_UPN_IFACE / "
                       "DUET_HPN_IFACE name an interface or an address)",
               iface);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  return DUET_SUCCESS;
}

static void tcp_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static duet_status_t tcp_open(const duet__tp_params_t *params, duet__tp_ep_t **out,
                              char *errbuf) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  tcp_ep_t *e;
  duet_status_t st;
  int one = 1;

  *out = NULL;
  e = calloc(1, sizeof *e);
  if (!e) {
    tcp_seterr(errbuf, "open: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  e->epfd = -1;
  e->yield = params ? params->yield : 0;
  st = tcp_pick_addr(params ? params->iface : NULL, &ss, &sslen, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free;
  if (getrandom(e->addr.token, sizeof e->addr.token, 0) != (ssize_t)sizeof e->addr.token) {
    tcp_seterr(errbuf, "getrandom: %s", strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_free;
  }
  e->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (e->lfd < 0) {
    tcp_seterr(errbuf, "socket: %s", strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_free;
  }
  (void)setsockopt(e->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(e->lfd, (struct sockaddr *)&ss, sslen) != 0 || listen(e->lfd, SOMAXCONN) != 0 ||
      getsockname(e->lfd, (struct sockaddr *)&ss, &sslen) != 0) {
    tcp_seterr(errbuf, "listen on %s: %s", params && params->iface ? params->iface : "default",
               strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_listen;
  }
  e->addr.magic = TCP_MAGIC;
  e->addr.family = ss.ss_family;
  if (ss.ss_family == AF_INET) {
    e->addr.port = ((struct sockaddr_in *)&ss)->sin_port;
    memcpy(e->addr.ip, &((struct sockaddr_in *)&ss)->sin_addr, 4);
  } else {
    e->addr.port = ((struct sockaddr_in6 *)&ss)->sin6_port;
    memcpy(e->addr.ip, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
  }
  if (e->yield && (e->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
    DUET_INFO(DUET_SUB_NET, "tcp: epoll_create1: %s; yielding instead", strerror(errno));
  *out = (duet__tp_ep_t *)e;
  return DUET_SUCCESS;

out_close_listen:
  close(e->lfd);
out_free:
  free(e);
  return st;
}

static duet_status_t tcp_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf) {
  (void)errbuf;
  memcpy(addr, &((tcp_ep_t *)ep)->addr, sizeof(tcp_addr_t));
  *addrlen = sizeof(tcp_addr_t);
  return DUET_SUCCESS;
}

/* Who makes the connection to peer k: 1 this endpoint (its token is lower),
 * -1 the peer, 0 both (peer k is this endpoint). */
static int tcp_dials(const tcp_ep_t *e, int k) {
  const uint64_t *mine = e->addr.token, *theirs = e->conns[k].token;
  if (mine[0] != theirs[0])
    return mine[0] < theirs[0] ? 1 : -1;
  if (mine[1] != theirs[1])
    return mine[1] < theirs[1] ? 1 : -1;
  return 0;
}

/* A connection accepted but not yet identified by its hello. */
typedef struct tcp_pending {
  int fd;
  size_t got;
  tcp_hello_t hello;
} tcp_pending_t;

/* Start a non-blocking connect to peer k's listener. */
static duet_status_t tcp_connect_start(tcp_ep_t *e, int k, const tcp_addr_t *a, char *errbuf) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  int fd;
  memset(&ss, 0, sizeof ss);
  if (a->family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = a->port;
    memcpy(&sin->sin_addr, a->ip, 4);
    sslen = sizeof *sin;
  } else {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = a->port;
    memcpy(&sin6->sin6_addr, a->ip, 16);
    sslen = sizeof *sin6;
  }
  fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    tcp_seterr(errbuf, "socket for peer %d: %s", k, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  tcp_nodelay(fd);
  if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 && errno != EINPROGRESS) {
    tcp_seterr(errbuf, "connect to peer %d: %s", k, strerror(errno));
    close(fd);
    return DUET_ERR_REMOTE;
  }
  e->conns[k].sfd = fd;
  return DUET_SUCCESS;
}

/* Read more of an accepted connection's hello; when complete, file it under
 * its peer. Returns 1 when the connection is done with (identified or
 * rejected), 0 when more bytes are due. */
static int tcp_hello_in(tcp_ep_t *e, tcp_pending_t *p, int *nin) {
  ssize_t n = recv(p->fd, (uint8_t *)&p->hello + p->got, sizeof p->hello - p->got, MSG_DONTWAIT);
  const char *why = NULL;
  int k;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return 0;
  if (n <= 0) {
    why = n == 0 ? "closed before its hello" : strerror(errno);
    goto out_reject;
  }
  p->got += (size_t)n;
  if (p->got < sizeof p->hello)
    return 0;
  if (p->hello.magic != TCP_HELLO_MAGIC || p->hello.to[0] != e->addr.token[0] ||
      p->hello.to[1] != e->addr.token[1]) {
    why = "a hello without this endpoint's token";
    goto out_reject;
  }
  for (k = 0; k < e->npeers; k++)
    if (e->conns[k].token[0] == p->hello.from[0] && e->conns[k].token[1] == p->hello.from[1])
      break;
  if (k == e->npeers || e->conns[k].rfd >= 0 || tcp_dials(e, k) > 0) {
    why = k == e->npeers        ? "a hello from no inserted peer"
          : tcp_dials(e, k) > 0 ? "a connection from a peer this endpoint dials"
                                : "a second connection from a peer";
    goto out_reject;
  }
  e->conns[k].rfd = p->fd;
  if (tcp_dials(e, k) < 0) /* not itself: one socket for both directions */
    e->conns[k].sfd = p->fd;
  tcp_nodelay(p->fd);
  (*nin)++;
  return 1;

out_reject:
  DUET_WARN(DUET_SUB_NET, "tcp: dropped an incoming connection: %s", why);
  close(p->fd);
  return 1;
}

static duet_status_t tcp_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                      size_t stride, const size_t *addrlens, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  double t0 = tcp_now(), deadline = t0 + TCP_CONNECT_SEC;
  tcp_pending_t *pend = NULL;
  struct pollfd *pfd = NULL;
  int npend = 0, maxpend, nin = 0, nout = 0, want_in = 0, want_out = 0;
  char *sent = NULL; /* hello written on conns[k].sfd */
  duet_status_t st = DUET_SUCCESS;

  if (e->conns) {
    tcp_seterr(errbuf, "insert_peers: called twice");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (npeers <= 0) {
    tcp_seterr(errbuf, "insert_peers: npeers %d", npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  e->conns = calloc((size_t)npeers, sizeof *e->conns);
  maxpend = npeers + TCP_PENDING_EXTRA;
  pend = calloc((size_t)maxpend, sizeof *pend);
  pfd = calloc((size_t)npeers + (size_t)maxpend + 1, sizeof *pfd);
  sent = calloc((size_t)npeers, 1);
  if (!e->conns || !pend || !pfd || !sent) {
    tcp_seterr(errbuf, "insert_peers: out of memory for %d peers", npeers);
    st = DUET_ERR_NO_MEMORY;
    goto out;
  }
  e->npeers = npeers;
  for (int k = 0; k < npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    c->sfd = c->rfd = -1;
    c->sq_tail = &c->sq_head;
    c->rq_tail = &c->rq_head;
    c->ux_tail = &c->ux_head;
  }
  for (int k = 0; k < npeers; k++) {
    tcp_addr_t a;
    if (addrlens[k] != sizeof a) {
      tcp_seterr(errbuf, "insert_peers: peer %d's address has %zu bytes, want %zu", k,
                 addrlens[k], sizeof a);
      st = DUET_ERR_INVALID_ARGUMENT;
      goto out;
    }
    memcpy(&a, (const char *)addrs + (size_t)k * stride, sizeof a);
    if (a.magic != TCP_MAGIC || (a.family != AF_INET && a.family != AF_INET6)) {
      tcp_seterr(errbuf, "insert_peers: peer %d's address is not a tcp address", k);
      st = DUET_ERR_INVALID_ARGUMENT;
      goto out;
    }
    e->conns[k].token[0] = a.token[0];
    e->conns[k].token[1] = a.token[1];
    e->conns[k].stage = malloc(TCP_STAGE);
    if (!e->conns[k].stage) {
      tcp_seterr(errbuf, "insert_peers: out of memory for staging buffers");
      st = DUET_ERR_NO_MEMORY;
      goto out;
    }
    want_in += tcp_dials(e, k) <= 0;
    if (tcp_dials(e, k) < 0) {
      sent[k] = 1; /* the peer dials */
      continue;
    }
    want_out++;
    st = tcp_connect_start(e, k, &a, errbuf);
    if (st != DUET_SUCCESS)
      goto out;
  }
  /* Finish our connects (hello once writable), accept and identify theirs. */
  while (nout < want_out || nin < want_in) {
    int n = 0, ready;
    if (tcp_now() > deadline) {
      int k = 0;
      while (k < npeers && (tcp_dials(e, k) < 0 ? e->conns[k].rfd >= 0 : sent[k]) &&
             (tcp_dials(e, k) != 0 || e->conns[k].rfd >= 0))
        k++;
      tcp_seterr(errbuf, "insert_peers: no %s peer %d within %d s (it did not open its endpoint?)",
                 k < npeers && !sent[k] ? "connection to" : "connection from", k, TCP_CONNECT_SEC);
      st = DUET_ERR_TIMEOUT;
      goto out;
    }
    pfd[n++] = (struct pollfd){.fd = e->lfd, .events = POLLIN};
    for (int k = 0; k < npeers; k++)
      if (!sent[k])
        pfd[n++] = (struct pollfd){.fd = e->conns[k].sfd, .events = POLLOUT};
    for (int i = 0; i < npend; i++)
      pfd[n++] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
    ready = poll(pfd, (nfds_t)n, 100);
    if (ready < 0 && errno != EINTR) {
      tcp_seterr(errbuf, "insert_peers: poll: %s", strerror(errno));
      st = DUET_ERR_SYSTEM;
      goto out;
    }
    if (ready <= 0)
      continue;
    for (int k = 0; k < npeers; k++) { /* connects that finished */
      int err = 0;
      socklen_t len = sizeof err;
      tcp_hello_t h = {.magic = TCP_HELLO_MAGIC};
      if (sent[k])
        continue;
      struct pollfd q = {.fd = e->conns[k].sfd, .events = POLLOUT};
      if (poll(&q, 1, 0) != 1)
        continue;
      (void)getsockopt(e->conns[k].sfd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        tcp_seterr(errbuf, "insert_peers: connect to peer %d: %s", k, strerror(err));
        st = DUET_ERR_REMOTE;
        goto out;
      }
      memcpy(h.to, e->conns[k].token, sizeof h.to);
      memcpy(h.from, e->addr.token, sizeof h.from);
      if (send(e->conns[k].sfd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h) {
        tcp_seterr(errbuf, "insert_peers: hello to peer %d: %s", k, strerror(errno));
        st = DUET_ERR_REMOTE;
        goto out;
      }
      sent[k] = 1;
      nout++;
      if (tcp_dials(e, k) > 0) /* not itself: one socket for both directions */
        e->conns[k].rfd = e->conns[k].sfd;
    }
    for (int i = 0; i < npend;) /* hellos of accepted connections */
      if (tcp_hello_in(e, &pend[i], &nin))
        pend[i] = pend[--npend];
      else
        i++;
    while (npend < maxpend) { /* new connections */
      int fd = accept4(e->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        break;
      pend[npend++] = (tcp_pending_t){.fd = fd};
    }
  }
  DUET_INFO(DUET_SUB_NET, "tcp: connected to %d peers in %.3f s", npeers, tcp_now() - t0);
  close(e->lfd); /* every peer is connected; nobody else may come in */
  e->lfd = -1;

out:
  for (int i = 0; i < npend; i++)
    close(pend[i].fd);
  free(pend);
  free(pfd);
  free(sent);
  return st;
}

static void tcp_close(duet__tp_ep_t *ep) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  if (!e)
    return;
  for (int k = 0; e->conns && k < e->npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    if (c->sfd >= 0)
      close(c->sfd);
    if (c->rfd >= 0 && c->rfd != c->sfd)
      close(c->rfd);
    free(c->stage);
    for (tcp_ux_t *u = c->ux_head, *next; u; u = next) {
      next = u->next;
      free(u->data);
      free(u);
    }
  }
  for (int cls = 0; cls <= TCP_UX_CLASSES; cls++)
    for (tcp_ux_t *u = e->free_ux[cls], *next; u; u = next) {
      next = u->next;
      free(u->data);
      free(u);
    }
  for (int i = 0; i < e->nchunks; i++)
    free(e->chunks[i]);
  free(e->chunks);
  free(e->conns);
  if (e->epfd >= 0)
    close(e->epfd);
  if (e->lfd >= 0)
    close(e->lfd);
  free(e);
}

const duet__tp_ops_t duet__tp_tcp = {
    .size = sizeof(duet__tp_ops_t),
    .name = "tcp",
    .open = tcp_open,
    .get_addr = tcp_get_addr,
    .insert_peers = tcp_insert_peers,
    .isend = tcp_isend,
    .irecv = tcp_irecv,
    .progress = tcp_progress,
    .close = tcp_close,
    .wait_fd = tcp_wait_fd,
};

const duet__tp_ops_t *duet__tp_for_provider(const char *provider) {
  return provider && strcmp(provider, "tcp") == 0 ? &duet__tp_tcp : &duet__tp_ofi;
}
