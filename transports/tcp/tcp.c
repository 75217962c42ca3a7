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
 * Connections, addresses and teardown: endpoint.c; the shared types: tcp.h.
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
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "core/log.h"
#include "tcp.h"

void duet__tcp_seterr(char *errbuf, const char *fmt, ...) {
  char tmp[DUET_TP_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (errbuf)
    memcpy(errbuf, tmp, sizeof tmp);
  DUET_WARN(DUET_SUB_NET, "tcp: %s", tmp);
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
  duet__tcp_seterr(e->errbuf, "peer %d: %s", (int)(c - e->conns), msg);
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
      duet__tcp_seterr(e->errbuf, "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
                       (int)(c - e->conns), c->body_len, (unsigned long long)op->tag, op->len);
    tcp_op_put(e, op);
  } else if (c->cur_ux && c->cur_ux->waiter) {
    /* a receive shorter than this message took it: deliver what fits */
    tcp_ux_t *u = c->cur_ux, **pp = &c->ux_head;
    tcp_op_t *op = u->waiter;
    if (op->len > 0)
      memcpy(op->buf, u->data, op->len);
    tcp_complete(op, DUET_ERR_MISMATCH, op->len);
    duet__tcp_seterr(e->errbuf, "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
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
    tcp_conn_fail(e, c, DUET_ERR_PROTOCOL, "bad message header (magic %#x, length %llu)", h->magic,
                  (unsigned long long)h->len);
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

static duet_status_t tcp_check(tcp_ep_t *e, const char *call, int peer, const void *buf, size_t len,
                               duet__tp_req_t *req, char *errbuf) {
  if (!req) {
    duet__tcp_seterr(errbuf, "%s: req is NULL", call);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (peer < 0 || peer >= e->npeers) {
    duet__tcp_seterr(errbuf, "%s: peer %d out of range (%d peers)", call, peer, e->npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (!buf && len > 0) {
    duet__tcp_seterr(errbuf, "%s: buf is NULL with len %zu", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if ((uint64_t)len > TCP_MAX_LEN) {
    duet__tcp_seterr(errbuf, "%s: len %zu exceeds 2^48", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (e->conns[peer].dead) {
    duet__tcp_seterr(errbuf, "%s: the connection to peer %d failed earlier", call, peer);
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
    duet__tcp_seterr(errbuf, "isend: out of memory for an operation");
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
    duet__tcp_seterr(errbuf, "irecv: out of memory for an operation");
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
      duet__tcp_seterr(errbuf, "irecv: peer %d sent %zu bytes with tag %#llx, receive holds %zu",
                       peer, u->len, (unsigned long long)tag, len);
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
      duet__tcp_seterr(errbuf, "epoll_ctl(peer %d): %s", k, strerror(errno));
      return DUET_ERR_UNSUPPORTED;
    }
    watched += rd + wr;
  }
  *fd = watched ? e->epfd : -1;
  return DUET_SUCCESS;
}

const duet__tp_ops_t duet__tp_tcp = {
    .size = sizeof(duet__tp_ops_t),
    .name = "tcp",
    .open = duet__tcp_open,
    .get_addr = duet__tcp_get_addr,
    .insert_peers = duet__tcp_insert_peers,
    .isend = tcp_isend,
    .irecv = tcp_irecv,
    .progress = tcp_progress,
    .close = duet__tcp_close,
    .wait_fd = tcp_wait_fd,
};

const duet__tp_ops_t *duet__tp_for_provider(const char *provider) {
  return provider && strcmp(provider, "tcp") == 0 ? &duet__tp_tcp : &duet__tp_ofi;
}
