/*
 * self.c - the loopback transport: one endpoint whose only peer (index 0) is
 * itself. Used for communicators of one rank and for a rank's messages to
 * itself.
 *
 * A send matches the oldest posted receive with its tag and is copied at
 * once, completing both; without one it waits in a queue (we keep the
 * caller's buffer pointer, no copy) and completes when a receive with its
 * tag is posted. So a send to self completes only once its receive is posted,
 * which is fine because callers post the receive before they wait. A message
 * longer than the receive buffer completes both sides with DUET_ERR_MISMATCH
 * (the receive gets the first len bytes).
 *
 * Everything completes inside isend/irecv; progress has nothing to do.
 * Queue entries are recycled through a free list, so steady state does not
 * allocate. One thread at a time per endpoint.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "transport.h"

#define SELF_ADDR_BYTE 0x53 /* 'S': the whole address blob */

typedef struct self_op {
  struct self_op *next;
  duet__tp_req_t *req;
  void *buf; /* the caller's buffer (send: read only) */
  size_t len;
  uint64_t tag;
} self_op_t;

typedef struct self_queue {
  self_op_t *head;
  self_op_t **tail;
} self_queue_t;

typedef struct self_ep {
  self_queue_t sends; /* posted sends without a receive, in post order */
  self_queue_t recvs; /* posted receives without a send, in post order */
  self_op_t *free_ops;
  int npeers;
} self_ep_t;

/* Remove and return the oldest entry of q with tag, or NULL. */
static self_op_t *self_take(self_queue_t *q, uint64_t tag) {
  for (self_op_t **pp = &q->head; *pp; pp = &(*pp)->next) {
    self_op_t *op = *pp;
    if (op->tag != tag)
      continue;
    *pp = op->next;
    if (q->tail == &op->next)
      q->tail = pp;
    return op;
  }
  return NULL;
}

static duet_status_t self_enqueue(self_ep_t *e, self_queue_t *q, duet__tp_req_t *req, void *buf,
                                  size_t len, uint64_t tag, char *errbuf) {
  self_op_t *op = e->free_ops;
  if (op) {
    e->free_ops = op->next;
  } else if (!(op = malloc(sizeof *op))) {
    duet__tp_seterr(errbuf, "self", "out of memory queueing a message of %zu bytes", len);
    return DUET_ERR_NO_MEMORY;
  }
  op->next = NULL;
  op->req = req;
  op->buf = buf;
  op->len = len;
  op->tag = tag;
  *q->tail = op;
  q->tail = &op->next;
  return DUET_SUCCESS;
}

/* Deliver a send into a receive and complete both. */
static void self_deliver(duet__tp_req_t *sreq, const void *sbuf, size_t slen, duet__tp_req_t *rreq,
                         void *rbuf, size_t rlen, uint64_t tag) {
  size_t n = slen <= rlen ? slen : rlen;
  duet_status_t st = slen <= rlen ? DUET_SUCCESS : DUET_ERR_MISMATCH;
  if (n)
    memcpy(rbuf, sbuf, n);
  if (st != DUET_SUCCESS)
    DUET_WARN(DUET_SUB_NET,
              "self: message of %zu bytes, tag 0x%llx, longer than the receive "
              "buffer of %zu bytes",
              slen, (unsigned long long)tag, rlen);
  duet__tp_complete(sreq, st, slen);
  duet__tp_complete(rreq, st, n);
}

static duet_status_t self_check(self_ep_t *e, int peer, const void *buf, size_t len,
                                const char *call, char *errbuf) {
  if (peer != 0 || e->npeers != 1) {
    duet__tp_seterr(errbuf, "self", "%s: peer %d invalid (the only peer is 0%s)", call, peer,
                    e->npeers ? "" : ", and insert_peers was not called");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (len && !buf) {
    duet__tp_seterr(errbuf, "self", "%s: NULL buffer of %zu bytes", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  return DUET_SUCCESS;
}

static duet_status_t self_isend(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                                uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  self_ep_t *e = (self_ep_t *)ep;
  duet_status_t st = self_check(e, peer, buf, len, "isend", errbuf);
  self_op_t *r;
  if (st != DUET_SUCCESS)
    return st;
  req->done = 0;
  req->status = DUET_IN_PROGRESS;
  req->len = 0;
  r = self_take(&e->recvs, tag);
  if (!r)
    return self_enqueue(e, &e->sends, req, (void *)buf, len, tag, errbuf);
  self_deliver(req, buf, len, r->req, r->buf, r->len, tag);
  r->next = e->free_ops;
  e->free_ops = r;
  return DUET_SUCCESS;
}

static duet_status_t self_irecv(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                                duet__tp_req_t *req, char *errbuf) {
  self_ep_t *e = (self_ep_t *)ep;
  duet_status_t st = self_check(e, peer, buf, len, "irecv", errbuf);
  self_op_t *s;
  if (st != DUET_SUCCESS)
    return st;
  req->done = 0;
  req->status = DUET_IN_PROGRESS;
  req->len = 0;
  s = self_take(&e->sends, tag);
  if (!s)
    return self_enqueue(e, &e->recvs, req, buf, len, tag, errbuf);
  self_deliver(s->req, s->buf, s->len, req, buf, len, tag);
  s->next = e->free_ops;
  e->free_ops = s;
  return DUET_SUCCESS;
}

static duet_status_t self_progress(duet__tp_ep_t *ep, char *errbuf) {
  (void)ep;
  (void)errbuf;
  return DUET_SUCCESS;
}

/* Nothing arrives from outside: every message completes inside a post. */
static duet_status_t self_wait_fd(duet__tp_ep_t *ep, int *fd, char *errbuf) {
  (void)ep;
  (void)errbuf;
  *fd = -1;
  return DUET_SUCCESS;
}

static duet_status_t self_open(const duet__tp_params_t *params, duet__tp_ep_t **out, char *errbuf) {
  self_ep_t *e;
  (void)params;
  *out = NULL;
  e = calloc(1, sizeof *e);
  if (!e) {
    duet__tp_seterr(errbuf, "self", "open: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  e->sends.tail = &e->sends.head;
  e->recvs.tail = &e->recvs.head;
  *out = (duet__tp_ep_t *)e;
  return DUET_SUCCESS;
}

static duet_status_t self_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf) {
  (void)ep;
  (void)errbuf;
  *(unsigned char *)addr = SELF_ADDR_BYTE;
  *addrlen = 1;
  return DUET_SUCCESS;
}

static duet_status_t self_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                       size_t stride, const size_t *addrlens, char *errbuf) {
  self_ep_t *e = (self_ep_t *)ep;
  (void)stride;
  if (npeers != 1) {
    duet__tp_seterr(errbuf, "self", "insert_peers: %d peers; the self transport has exactly one",
                    npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if ((addrlens && addrlens[0] != 1) || *(const unsigned char *)addrs != SELF_ADDR_BYTE) {
    duet__tp_seterr(errbuf, "self", "insert_peers: address is not a self-transport address");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  e->npeers = 1;
  return DUET_SUCCESS;
}

/* Abandon queued operations (never completed) and free everything. */
static void self_close(duet__tp_ep_t *ep) {
  self_ep_t *e = (self_ep_t *)ep;
  self_op_t *lists[3];
  if (!e)
    return;
  lists[0] = e->sends.head;
  lists[1] = e->recvs.head;
  lists[2] = e->free_ops;
  for (int i = 0; i < 3; i++) {
    while (lists[i]) {
      self_op_t *op = lists[i];
      lists[i] = op->next;
      free(op);
    }
  }
  free(e);
}

const duet__tp_ops_t duet__tp_self = {
    .size = sizeof(duet__tp_ops_t),
    .name = "self",
    .open = self_open,
    .get_addr = self_get_addr,
    .insert_peers = self_insert_peers,
    .isend = self_isend,
    .irecv = self_irecv,
    .progress = self_progress,
    .close = self_close,
    .wait_fd = self_wait_fd,
};
