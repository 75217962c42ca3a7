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
 * Each direction of a pair has two lanes (tcp.h): a main connection for
 * messages under 64 KiB and a bulk one for larger ones, each dialled by the
 * sender at its first message there.
 *
 * Wire format: a 32-byte header (magic, sequence number, tag, length, 8
 * bytes of zeros) then the payload, in host byte order (duet's ranks share
 * one architecture). The padding is for the kernel's copies, whose speed
 * depends on where a payload lies in the socket's pages relative to the
 * user's buffer: behind a 24-byte header, payloads from malloc'd buffers
 * (16 bytes past a page) were copied up to 2x slower. Two processes
 * swapping 256 KiB each way over loopback took 123-186 us behind 24 bytes,
 * 56-114 behind 32 and 62-113 behind 64 (12 alternating runs; 8 bytes:
 * 101-131); a 2-rank duet_irecv/duet_isend exchange of 256 KiB took
 * 122-129 against 70-80 us (page-aligned buffers: about 72 us either way).
 * TCP_MAGIC names the format, so a peer built with another fails at init.
 * The sequence number counts a pair's messages in one direction over both
 * lanes: a header that arrives before the other lane has delivered the ones
 * sent earlier is parked until they have, so messages match in send order.
 *
 * Receives: a lane is read only while a posted receive expects a message of
 * its size class (or a parked header waits for it), so a message nobody
 * waits for yet stays in the kernel's socket buffer (flow control for free).
 * A receive whose message came by the other lane (a length mismatch, or a
 * short message into a long receive) is found by a look at that lane's next
 * header (MSG_PEEK) every TCP_PEEK_NS while receives wait: the lane is read
 * when that message is next in order and a receive has its tag (a receive
 * of 1 KiB against a message of 64 KiB waited for its deadline without
 * that, when nothing else came). Reads go through a per-lane staging
 * buffer, which
 * takes small messages (header and payload of up to TCP_STAGED bytes in one
 * recv, then a copy: on 4 ranks over loopback a second recv cost more than
 * copying 32 KiB) and never reads past the message expected next; a payload
 * with at least TCP_DIRECT bytes still to come is read straight into its
 * destination.
 * A message whose receive is not posted but that sits in front of one that
 * is ("unexpected") is kept in a pooled buffer; a receive posted while such
 * a message is still arriving takes over the rest of it directly.
 * Matching: per pair, the oldest posted receive with the message's tag, in
 * send order.
 *
 * Sends: a send to a lane with nothing queued is written at once and
 * usually completes inside isend; the rest is queued and written by
 * progress. Nothing is copied: the caller keeps the buffer until done.
 *
 * Waiting (oversubscribed ranks): wait_fd returns an epoll descriptor holding
 * the lanes that must be read (readable) or have queued sends (writable);
 * the interest set is brought up to date only there.
 *
 * Progress and wait_fd look only at the pairs on the active list (a send or
 * receive posted, a connection under way), so their cost follows the peers
 * a call talks to, not the job's size. A pair whose receives wait for a
 * peer that has not connected, with nothing else under way, is parked off
 * that list until a connection from it is accepted (or a post or a watch
 * for it): the HPN planes keep a notice receive posted for every peer, most
 * of which never write.
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
#include <time.h>

#include "core/log.h"
#include "tcp.h"

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

/* Complete every operation of a list with st and return it to the pool. */
static void tcp_ops_fail(tcp_ep_t *e, tcp_op_t *head, duet_status_t st) {
  for (tcp_op_t *op = head, *next; op; op = next) {
    next = op->next;
    duet__tp_complete(op->req, st, 0);
    tcp_op_put(e, op);
  }
}

/* The pair failed: fail its receives and sends, remember why. */
void duet__tcp_conn_fail(tcp_ep_t *e, tcp_conn_t *c, duet_status_t st, const char *fmt, ...) {
  char msg[DUET_TP_ERRLEN];
  va_list ap;
  if (c->dead)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  duet__tp_seterr(e->errbuf, "tcp", "peer %d: %s", (int)(c - e->conns), msg);
  c->dead = st;
  for (int l = 0; l < TCP_LANES; l++) {
    tcp_rx_t *rx = &c->rx[l];
    tcp_tx_t *tx = &c->tx[l];
    if (rx->in_body && rx->cur) {
      duet__tp_complete(rx->cur->req, st, 0);
      tcp_op_put(e, rx->cur);
    }
    rx->cur = NULL;
    rx->parked = 0;
    tcp_ops_fail(e, tx->head, st);
    tx->head = NULL;
    tx->tail = &tx->head;
  }
  tcp_ops_fail(e, c->rq_head, st);
  c->rq_head = NULL;
  c->rq_tail = &c->rq_head;
  for (tcp_ux_t *u = c->ux_head; u; u = u->next)
    if (u->waiter) {
      duet__tp_complete(u->waiter->req, st, 0);
      tcp_op_put(e, u->waiter);
      u->waiter = NULL;
    }
  duet__tcp_wake(e, c); /* off the parked list: the next progress drops it */
}

/* The payload in progress on rx is complete: hand it to its receive or leave
 * it queued as unexpected. */
static void tcp_body_done(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx) {
  if (rx->cur) {
    tcp_op_t *op = rx->cur;
    if (rx->body_len > op->len) {
      duet__tp_complete(op->req, DUET_ERR_MISMATCH, op->len);
      duet__tp_seterr(e->errbuf, "tcp", "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
                      (int)(c - e->conns), rx->body_len, (unsigned long long)op->tag, op->len);
    } else {
      duet__tp_complete(op->req, DUET_SUCCESS, rx->body_len);
    }
    tcp_op_put(e, op);
  } else if (rx->cur_ux && rx->cur_ux->waiter) {
    /* a receive shorter than this message took it: deliver what fits */
    tcp_ux_t *u = rx->cur_ux, **pp = &c->ux_head;
    tcp_op_t *op = u->waiter;
    if (op->len > 0)
      memcpy(op->buf, u->data, op->len);
    duet__tp_complete(op->req, DUET_ERR_MISMATCH, op->len);
    duet__tp_seterr(e->errbuf, "tcp", "peer %d sent %zu bytes with tag %#llx, receive holds %zu",
                    (int)(c - e->conns), u->len, (unsigned long long)op->tag, op->len);
    tcp_op_put(e, op);
    while (*pp != u)
      pp = &(*pp)->next;
    *pp = u->next;
    if (c->ux_tail == &u->next)
      c->ux_tail = pp;
    tcp_ux_put(e, u);
  }
  rx->in_body = 0;
  rx->cur = NULL;
  rx->cur_ux = NULL;
}

/* The header whose turn it is: find its receive, or keep the message as
 * unexpected. */
static void tcp_hdr_in(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx, const tcp_hdr_t *h) {
  tcp_op_t **pp = &c->rq_head;

  c->rseq++;
  rx->in_body = 1;
  rx->body_len = (size_t)h->len;
  rx->body_got = 0;
  rx->cur = NULL;
  rx->cur_ux = NULL;
  while (*pp && (*pp)->tag != h->tag)
    pp = &(*pp)->next;
  if (*pp) {
    rx->cur = *pp;
    *pp = rx->cur->next;
    if (!*pp)
      c->rq_tail = pp;
    rx->cur->next = NULL;
    rx->body_keep = rx->body_len < rx->cur->len ? rx->body_len : rx->cur->len;
  } else {
    tcp_ux_t *u = tcp_ux_get(e, rx->body_len);
    if (!u) {
      duet__tcp_conn_fail(e, c, DUET_ERR_NO_MEMORY,
                          "out of memory for an unexpected %zu-byte message", rx->body_len);
      return;
    }
    u->tag = h->tag;
    *c->ux_tail = u;
    c->ux_tail = &u->next;
    rx->cur_ux = u;
    rx->body_keep = rx->body_len;
  }
  if (rx->body_len == 0)
    tcp_body_done(e, c, rx);
}

/* A header arrived on rx. Messages match in the order they were sent, over
 * both lanes: one that is early waits (parked) until the other lane has
 * delivered the headers before it. */
static void tcp_hdr_arrive(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx, const tcp_hdr_t *h) {
  if (h->magic != TCP_MAGIC || h->len > TCP_MAX_LEN) {
    duet__tcp_conn_fail(e, c, DUET_ERR_PROTOCOL, "bad message header (magic %#x, length %llu)",
                        h->magic, (unsigned long long)h->len);
    return;
  }
  if (h->seq != c->rseq) {
    rx->parked = 1;
    rx->hdr = *h;
    return;
  }
  tcp_hdr_in(e, c, rx, h);
  for (int l = 0; l < TCP_LANES && !c->dead; l++) { /* a parked header's turn may have come */
    tcp_rx_t *o = &c->rx[l];
    if (o->parked && !o->in_body && o->hdr.seq == c->rseq) {
      o->parked = 0;
      tcp_hdr_in(e, c, o, &o->hdr);
      l = -1; /* and the next one's */
    }
  }
}

/* Where the next payload bytes go (NULL: past what the receive holds). */
static uint8_t *tcp_body_dst(tcp_rx_t *rx) {
  if (rx->body_got >= rx->body_keep)
    return NULL;
  return (rx->cur ? rx->cur->buf : rx->cur_ux->data) + rx->body_got;
}

static void tcp_body_in(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx, size_t n) {
  rx->body_got += n;
  if (rx->cur_ux)
    rx->cur_ux->got = rx->body_got;
  if (rx->body_got == rx->body_len)
    tcp_body_done(e, c, rx);
}

/* Consume what rx's staging buffer holds; returns whether anything was. */
static int tcp_stage_parse(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx) {
  int moved = 0;
  while (rx->s_end > rx->s_beg && !c->dead && !rx->parked) {
    size_t have = rx->s_end - rx->s_beg;
    if (!rx->in_body) {
      tcp_hdr_t h;
      if (have < sizeof h) {
        if (rx->s_beg > 0) { /* keep the partial header at the front */
          memmove(rx->stage, rx->stage + rx->s_beg, have);
          rx->s_beg = 0;
          rx->s_end = have;
        }
        return moved;
      }
      memcpy(&h, rx->stage + rx->s_beg, sizeof h);
      rx->s_beg += sizeof h;
      tcp_hdr_arrive(e, c, rx, &h);
    } else {
      size_t n = rx->body_len - rx->body_got;
      uint8_t *dst = tcp_body_dst(rx);
      if (n > have)
        n = have;
      if (dst) {
        size_t k = rx->body_keep - rx->body_got;
        memcpy(dst, rx->stage + rx->s_beg, k < n ? k : n);
      }
      rx->s_beg += n;
      tcp_body_in(e, c, rx, n);
    }
    moved = 1;
  }
  if (rx->s_beg == rx->s_end)
    rx->s_beg = rx->s_end = 0;
  return moved;
}

/* Whether a receive waits for what rx is reading now. */
static int tcp_rx_has_target(const tcp_rx_t *rx) {
  return rx->in_body && (rx->cur || (rx->cur_ux && rx->cur_ux->waiter));
}

/* Whether lane l must be read now: a posted receive expects a message of
 * its size class there (senders pick the lane by length), a receive waits
 * for the payload it is reading, or the other lane holds a header back until
 * this one delivers earlier messages. Reading a lane that nobody waits on
 * would pull later messages into unexpected buffers. */
static int tcp_lane_wanted(const tcp_conn_t *c, int l) {
  const tcp_rx_t *rx = &c->rx[l], *o = &c->rx[1 - l];
  if (c->dead || rx->fd < 0 || rx->parked)
    return 0;
  if (tcp_rx_has_target(rx) || (o->fd >= 0 && o->parked))
    return 1;
  for (const tcp_op_t *op = c->rq_head; op; op = op->next)
    if (o->fd < 0 || (op->len >= TCP_BULK_MIN) == (l == TCP_BULK))
      return 1;
  return 0;
}

/* Whether the pair must be read now. */
static int tcp_wants_read(const tcp_conn_t *c) {
  return tcp_lane_wanted(c, TCP_MAIN) || tcp_lane_wanted(c, TCP_BULK);
}

/* Whether a lane the peer has not connected yet is awaited: the main lane
 * for any receive, or while this end's own main connection waits for its
 * welcome or was refused; the bulk lane for a large receive or for a header
 * that waits for an earlier (large) message. Then the listener is read. */
static int tcp_lane_awaited(const tcp_conn_t *c) {
  if (c->dead)
    return 0;
  if (c->tx[TCP_MAIN].state == TX_WELCOME || c->tx[TCP_MAIN].state == TX_AWAIT)
    return 1; /* the peer may have dialled the main lane too: its hello settles which stays */
  if (!c->rq_head)
    return 0;
  if (c->rx[TCP_MAIN].fd < 0)
    return 1;
  if (c->rx[TCP_BULK].fd >= 0 || c->self)
    return 0;
  if (c->rx[TCP_MAIN].parked)
    return 1;
  for (const tcp_op_t *op = c->rq_head; op; op = op->next)
    if (op->len >= TCP_BULK_MIN)
      return 1;
  return 0;
}

/* How many bytes to read into rx's staging buffer: no further than the
 * message we expect, so that a later message (the next call's, say) stays in
 * the kernel until its receive is posted instead of landing in an unexpected
 * buffer. Expecting a header: the header, plus, on the main lane, the first
 * posted receive's payload when it is small (one recv per small message). In
 * a payload: its rest. */
static size_t tcp_read_size(const tcp_conn_t *c, const tcp_rx_t *rx) {
  size_t room = TCP_STAGE - rx->s_end, want;
  if (rx->in_body) {
    want = rx->body_len - rx->body_got;
  } else {
    const tcp_op_t *op = c->rq_head;
    want = sizeof(tcp_hdr_t) - (rx->s_end - rx->s_beg); /* parse left less than a header */
    while (op && op->len >= TCP_BULK_MIN)               /* the first receive for this lane */
      op = op->next;
    if (rx == &c->rx[TCP_MAIN] && op && op->len <= TCP_STAGED)
      want += op->len;
  }
  return want < room ? want : room;
}

/* One recv on rx; returns whether bytes came. */
static int tcp_rx_read(tcp_ep_t *e, tcp_conn_t *c, tcp_rx_t *rx) {
  uint8_t *dst = rx->in_body ? tcp_body_dst(rx) : NULL;
  size_t left = rx->in_body ? rx->body_keep - rx->body_got : 0;
  ssize_t got;
  for (;;) {
    if (dst && left >= TCP_DIRECT) /* large payload: straight into place */
      got = recv(rx->fd, dst, left, MSG_DONTWAIT);
    else
      got = recv(rx->fd, rx->stage + rx->s_end, tcp_read_size(c, rx), MSG_DONTWAIT);
    if (got >= 0 || errno != EINTR)
      break;
  }
  if (got > 0) {
    if (dst && left >= TCP_DIRECT) {
      tcp_body_in(e, c, rx, (size_t)got);
    } else {
      rx->s_end += (size_t)got;
      tcp_stage_parse(e, c, rx);
    }
    return 1;
  }
  if (got == 0)
    duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "connection closed by the peer");
  else if (errno != EAGAIN && errno != EWOULDBLOCK)
    duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "recv: %s", strerror(errno));
  return 0;
}

/* Read what the pair's lanes have while a receive waits for it. */
static void tcp_conn_read(tcp_ep_t *e, tcp_conn_t *c) {
  int moved = 1;
  while (moved) {
    moved = 0;
    for (int l = 0; l < TCP_LANES; l++)
      if (c->rx[l].fd >= 0)
        moved |= tcp_stage_parse(e, c, &c->rx[l]);
    for (int l = 0; l < TCP_LANES; l++)
      if (tcp_lane_wanted(c, l))
        moved |= tcp_rx_read(e, c, &c->rx[l]);
    if (!tcp_wants_read(c))
      return;
  }
}

/* Look at the next header of each lane that is not read (tcp_lane_wanted):
 * if that message is next in order and a posted receive has its tag, its
 * lane is read. */
static void tcp_peek(tcp_ep_t *e, tcp_conn_t *c) {
  for (int l = 0; l < TCP_LANES && !c->dead; l++) {
    tcp_rx_t *rx = &c->rx[l];
    const tcp_op_t *op = c->rq_head;
    tcp_hdr_t h;
    if (rx->fd < 0 || rx->in_body || rx->parked || rx->s_end > rx->s_beg || tcp_lane_wanted(c, l) ||
        recv(rx->fd, &h, sizeof h, MSG_PEEK | MSG_DONTWAIT) != (ssize_t)sizeof h ||
        h.seq != c->rseq)
      continue;
    while (op && op->tag != h.tag)
      op = op->next;
    if (op) {
      tcp_rx_read(e, c, rx); /* the header; its payload then as a target's */
      tcp_conn_read(e, c);
    }
  }
}

/* ---- the active list ----------------------------------------------------- */

/* Put the pair on the active list: it has a send, a receive or a connection
 * under way. A parked pair leaves the parked list. */
static void tcp_activate(tcp_ep_t *e, tcp_conn_t *c) {
  if (c->active == TCP_ACTIVE)
    return;
  if (c->active == TCP_PARKED) {
    e->park[c->at] = e->park[--e->npark];
    e->conns[e->park[c->at]].at = c->at;
  }
  c->active = TCP_ACTIVE;
  c->at = e->nact;
  e->act[e->nact++] = (int)(c - e->conns);
}

void duet__tcp_wake(tcp_ep_t *e, tcp_conn_t *c) {
  if (c->active == TCP_PARKED)
    tcp_activate(e, c);
}

/* Whether an outgoing lane has writing to do: queued sends, or a dial
 * under way (a watch's has no send). */
static int tcp_tx_pending(const tcp_tx_t *tx) {
  return tx->head || tx->state == TX_CONNECTING || tx->state == TX_HELLO ||
         tx->state == TX_WELCOME;
}

/* Whether the pair has anything under way: queued sends, a dial, posted
 * receives, a receive waiting for the rest of a message, or reading to
 * do. */
static int tcp_conn_busy(const tcp_conn_t *c) {
  if (c->dead)
    return 0;
  if (tcp_tx_pending(&c->tx[TCP_MAIN]) || tcp_tx_pending(&c->tx[TCP_BULK]) || c->rq_head ||
      tcp_wants_read(c))
    return 1;
  for (const tcp_ux_t *u = c->ux_head; u; u = u->next)
    if (u->waiter)
      return 1;
  return 0;
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

/* Whether the busy pair waits only for the peer to connect: receives
 * posted, no incoming lane, nothing to write. */
static int tcp_conn_parkable(const tcp_conn_t *c) {
  return c->rx[TCP_MAIN].fd < 0 && c->rx[TCP_BULK].fd < 0 && !tcp_tx_pending(&c->tx[TCP_MAIN]) &&
         !tcp_tx_pending(&c->tx[TCP_BULK]);
}

/* Take pair act[i] off the active list, to no list (it is idle) or to the
 * parked one, and its sockets out of the epoll set (wait_fd registers the
 * active pairs' only). */
static void tcp_deactivate(tcp_ep_t *e, int i, int to) {
  tcp_conn_t *c = &e->conns[e->act[i]];
  if (e->epfd >= 0) {
    int fds[4] = {c->rx[TCP_MAIN].fd, c->rx[TCP_BULK].fd, c->tx[TCP_MAIN].fd, c->tx[TCP_BULK].fd};
    for (int f = 0; f < 4; f++)
      if (c->ev[f] && fds[f] >= 0 && tcp_epoll_set(e, fds[f], &c->ev[f], 0) != 0)
        c->ev[f] = 0; /* gone from the set with its socket */
  }
  e->act[i] = e->act[--e->nact];
  e->conns[e->act[i]].at = i;
  c->active = to;
  if (to == TCP_PARKED) {
    c->at = e->npark;
    e->park[e->npark++] = (int)(c - e->conns);
  }
}

/* ---- sending ------------------------------------------------------------- */

/* Write a lane's queued sends until its socket is full (once the lane's
 * connection is up). */
static void tcp_conn_write(tcp_ep_t *e, tcp_conn_t *c, tcp_tx_t *tx) {
  if (tx->state != TX_UP && !duet__tcp_dial_done(e, (int)(c - e->conns), (int)(tx - c->tx)))
    return;
  while (tx->head) {
    tcp_op_t *op = tx->head;
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
    n = sendmsg(tx->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "send: %s", strerror(errno));
      return;
    }
    op->off += (size_t)n;
    if (op->off < hlen + op->len)
      return; /* the socket is full */
    tx->head = op->next;
    if (!tx->head)
      tx->tail = &tx->head;
    duet__tp_complete(op->req, DUET_SUCCESS, op->len);
    tcp_op_put(e, op);
  }
}

/* ---- operations ---------------------------------------------------------- */

static duet_status_t tcp_check(tcp_ep_t *e, const char *call, int peer, const void *buf, size_t len,
                               duet__tp_req_t *req, char *errbuf) {
  if (!req) {
    duet__tp_seterr(errbuf, "tcp", "%s: req is NULL", call);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (peer < 0 || peer >= e->npeers) {
    duet__tp_seterr(errbuf, "tcp", "%s: peer %d out of range (%d peers)", call, peer, e->npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (!buf && len > 0) {
    duet__tp_seterr(errbuf, "tcp", "%s: buf is NULL with len %zu", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if ((uint64_t)len > TCP_MAX_LEN) {
    duet__tp_seterr(errbuf, "tcp", "%s: len %zu exceeds 2^48", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (e->conns[peer].dead) {
    duet__tp_seterr(errbuf, "tcp", "%s: the connection to peer %d failed earlier", call, peer);
    return e->conns[peer].dead;
  }
  return DUET_SUCCESS;
}

/* Check a send or receive and take an operation for it. */
static duet_status_t tcp_post(tcp_ep_t *e, const char *call, int peer, void *buf, size_t len,
                              uint64_t tag, duet__tp_req_t *req, char *errbuf, tcp_op_t **out) {
  duet_status_t st = tcp_check(e, call, peer, buf, len, req, errbuf);
  tcp_op_t *op;
  e->errbuf = errbuf;
  if (st != DUET_SUCCESS)
    return st;
  op = tcp_op_get(e);
  if (!op) {
    duet__tp_seterr(errbuf, "tcp", "%s: out of memory for an operation", call);
    return DUET_ERR_NO_MEMORY;
  }
  op->req = req;
  op->buf = buf;
  op->len = len;
  op->tag = tag;
  req->done = 0;
  *out = op;
  return DUET_SUCCESS;
}

static duet_status_t tcp_isend(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                               uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  tcp_conn_t *c;
  tcp_tx_t *tx;
  tcp_op_t *op;
  int lane;
  duet_status_t st = tcp_post(e, "isend", peer, (void *)buf, len, tag, req, errbuf, &op);
  if (st != DUET_SUCCESS)
    return st;
  c = &e->conns[peer];
  lane = len >= TCP_BULK_MIN && !c->self ? TCP_BULK : TCP_MAIN;
  tx = &c->tx[lane];
  if (tx->state == TX_NONE) {
    if ((st = duet__tcp_dial(e, peer, lane)) != DUET_SUCCESS) {
      tcp_op_put(e, op);
      return st;
    }
    e->accept_gap = TCP_ACCEPT_AWAITED_NS; /* the peer may be dialling too */
  }
  op->off = 0;
  op->hdr = (tcp_hdr_t){.magic = TCP_MAGIC, .seq = c->sseq++, .tag = tag, .len = len};
  *tx->tail = op;
  tx->tail = &op->next;
  tcp_activate(e, c);
  if (tx->head == op)
    tcp_conn_write(e, c, tx);
  return DUET_SUCCESS;
}

static duet_status_t tcp_irecv(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                               duet__tp_req_t *req, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  tcp_conn_t *c;
  tcp_ux_t **pp, *u;
  tcp_op_t *op;
  duet_status_t st = tcp_post(e, "irecv", peer, buf, len, tag, req, errbuf, &op);
  if (st != DUET_SUCCESS)
    return st;
  c = &e->conns[peer];
  tcp_activate(e, c);
  if (c->rx[TCP_MAIN].fd < 0 || (c->rx[TCP_BULK].fd < 0 && len >= TCP_BULK_MIN))
    e->accept_gap = TCP_ACCEPT_AWAITED_NS; /* its connection is to come */
  for (pp = &c->ux_head; *pp && ((*pp)->tag != tag || (*pp)->waiter); pp = &(*pp)->next)
    ;
  if (!*pp) { /* not here yet */
    *c->rq_tail = op;
    c->rq_tail = &op->next;
    tcp_conn_read(e, c);
    return DUET_SUCCESS;
  }
  u = *pp;
  if (u->got < u->len && u->len > len) { /* truncated and still arriving: wait for its end */
    u->waiter = op;
    tcp_conn_read(e, c);
    return DUET_SUCCESS;
  }
  if (u->got == u->len) {
    if (len > 0 && u->len > 0) /* an empty buffer may be NULL */
      memcpy(op->buf, u->data, u->len < len ? u->len : len);
    if (u->len > len) {
      duet__tp_seterr(errbuf, "tcp",
                      "irecv: peer %d sent %zu bytes with tag %#llx, receive holds %zu", peer,
                      u->len, (unsigned long long)tag, len);
      duet__tp_complete(op->req, DUET_ERR_MISMATCH, len);
    } else {
      duet__tp_complete(op->req, DUET_SUCCESS, u->len);
    }
    tcp_op_put(e, op);
    op = NULL;
  } else { /* still arriving on one lane and it fits: the rest goes straight into place */
    tcp_rx_t *rx = c->rx[TCP_MAIN].cur_ux == u ? &c->rx[TCP_MAIN] : &c->rx[TCP_BULK];
    if (u->got > 0)
      memcpy(op->buf, u->data, u->got);
    rx->cur = op;
    rx->cur_ux = NULL;
    rx->body_keep = rx->body_len;
  }
  *pp = u->next;
  if (c->ux_tail == &u->next)
    c->ux_tail = pp;
  tcp_ux_put(e, u);
  if (op)
    tcp_conn_read(e, c);
  return DUET_SUCCESS;
}

static duet_status_t tcp_progress(duet__tp_ep_t *ep, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  int awaited = 0, busy;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  e->errbuf = errbuf;
  for (int i = 0; i < e->nact;) {
    tcp_conn_t *c = &e->conns[e->act[i]];
    for (int l = 0; l < TCP_LANES; l++)
      if (tcp_tx_pending(&c->tx[l]))
        tcp_conn_write(e, c, &c->tx[l]);
    if (tcp_wants_read(c))
      tcp_conn_read(e, c);
    if (c->rq_head && now >= c->peek_ns) {
      tcp_peek(e, c);
      c->peek_ns = now + TCP_PEEK_NS;
    }
    busy = tcp_conn_busy(c);
    if (!busy || tcp_conn_parkable(c)) { /* act[i] is another pair now */
      tcp_deactivate(e, i, busy ? TCP_PARKED : TCP_IDLE);
      continue;
    }
    awaited |= tcp_lane_awaited(c);
    i++;
  }
  awaited |= e->npark > 0; /* their receives await a connection */
  /* A peer's connection is taken soon when a receive here awaits it, and
   * within a millisecond anyway: its dialler's first send on the main lane
   * waits for the welcome, and may be waited on before this end posts a
   * receive from it. The listener costs a system call, so not every call
   * reads it: while lanes are awaited, every accept_gap ns, which doubles
   * (to the idle period) each time nothing came, and starts again small
   * when a receive or a dial begins to wait for a connection (a receive
   * that waits long, as the planes' notice receives from peers that never
   * write, costs little). New lanes are read on the next call. */
  if (e->npend || now - e->accept_ns >= (awaited ? e->accept_gap : TCP_ACCEPT_IDLE_NS)) {
    unsigned filed = e->filed;
    int err = duet__tcp_accept(e);
    e->accept_ns = now;
    e->accept_gap = e->filed != filed                        ? TCP_ACCEPT_AWAITED_NS
                    : 2 * e->accept_gap < TCP_ACCEPT_IDLE_NS ? 2 * e->accept_gap
                                                             : TCP_ACCEPT_IDLE_NS;
    while (err && e->npark > 0) /* they await connections: check them with the rest */
      tcp_activate(e, &e->conns[e->park[0]]);
    for (int i = 0; err && i < e->nact; i++) /* this rank cannot take their connections */
      if (tcp_lane_awaited(&e->conns[e->act[i]]))
        duet__tcp_conn_fail(e, &e->conns[e->act[i]], DUET_ERR_SYSTEM, "accept: %s%s", strerror(err),
                            err == EMFILE ? " (RLIMIT_NOFILE: ulimit -n)" : "");
  }
  return DUET_SUCCESS;
}

/* A receive has waited a while for peer (transport.h): with no connection
 * from it, this end would not see it leave (its process exiting, or its
 * endpoint closing at duet_comm_abort), so dial the main lane as a first
 * send would. A peer that has left refuses the dial, or ends the connection
 * before answering it; one still there answers as usual, and its leaving
 * later ends the connection. */
static void tcp_watch(duet__tp_ep_t *ep, int peer) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  tcp_conn_t *c;
  if (peer < 0 || peer >= e->npeers)
    return;
  c = &e->conns[peer];
  if (c->self || c->dead || c->rx[TCP_MAIN].fd >= 0 || c->rx[TCP_BULK].fd >= 0 ||
      c->tx[TCP_MAIN].state != TX_NONE)
    return;
  DUET_INFO(DUET_SUB_NET, "tcp: dialling peer %d, which has not connected, to see it is there",
            peer);
  if (duet__tcp_dial(e, peer, TCP_MAIN) != DUET_SUCCESS)
    return; /* the pair failed, saying why */
  e->accept_gap = TCP_ACCEPT_AWAITED_NS; /* the peer may be dialling too */
  tcp_activate(e, c);
}

static duet_status_t tcp_wait_fd(duet__tp_ep_t *ep, int *fd, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  int watched = 0;
  unsigned filed = e->filed;
  if (e->epfd < 0)
    return DUET_ERR_UNSUPPORTED;
  /* connections waiting at the listener first: a new lane is progress's */
  (void)duet__tcp_accept(e);
  if (e->filed != filed)
    return DUET_IN_PROGRESS;
  for (int i = 0; i < e->nact; i++) {
    int k = e->act[i];
    tcp_conn_t *c = &e->conns[k];
    /* the sockets: rx main, rx bulk, tx main (unless it is rx main), tx bulk */
    int fds[4] = {c->rx[TCP_MAIN].fd, c->rx[TCP_BULK].fd,
                  c->tx[TCP_MAIN].fd != c->rx[TCP_MAIN].fd ? c->tx[TCP_MAIN].fd : -1,
                  c->tx[TCP_BULK].fd};
    uint32_t want[4] = {0, 0, 0, 0};
    for (int l = 0; l < TCP_LANES; l++) {
      const tcp_rx_t *rx = &c->rx[l];
      int lane_rd = tcp_lane_wanted(c, l);
      if (lane_rd && rx->s_end > rx->s_beg)
        return DUET_IN_PROGRESS; /* staged bytes to parse */
      if (lane_rd)
        want[l] |= EPOLLIN;
      if (!c->dead && tcp_tx_pending(&c->tx[l])) /* queued sends, or a dial to finish */
        want[l == TCP_MAIN && fds[2] < 0 ? 0 : 2 + l] |=
            c->tx[l].state == TX_WELCOME ? EPOLLIN : EPOLLOUT;
    }
    for (int i = 0; i < 4; i++) {
      if (fds[i] < 0)
        continue;
      if (tcp_epoll_set(e, fds[i], &c->ev[i], want[i]) != 0) {
        duet__tp_seterr(errbuf, "tcp", "epoll_ctl(peer %d): %s", k, strerror(errno));
        return DUET_ERR_UNSUPPORTED;
      }
      watched += want[i] != 0;
    }
  }
  /* the listener (a peer's new connection wakes this end: its dialler may
   * wait for the welcome), and what it gave */
  if (tcp_epoll_set(e, e->lfd, &e->lev, EPOLLIN) != 0) {
    duet__tp_seterr(errbuf, "tcp", "epoll_ctl(listener): %s", strerror(errno));
    return DUET_ERR_UNSUPPORTED;
  }
  watched++;
  for (int i = 0; i < e->npend; i++)
    if (tcp_epoll_set(e, e->pend[i].fd, &e->pend[i].ev, EPOLLIN) != 0) {
      duet__tp_seterr(errbuf, "tcp", "epoll_ctl(accepted): %s", strerror(errno));
      return DUET_ERR_UNSUPPORTED;
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
    .watch = tcp_watch,
};

const duet__tp_ops_t *duet__tp_for_provider(const char *provider) {
  return provider && strcmp(provider, "tcp") == 0 ? &duet__tp_tcp : &duet__tp_ofi;
}
