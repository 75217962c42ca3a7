/*
 * ofi.c - the libfabric transport: one FI_EP_RDM endpoint moving tagged
 * messages on the provider ("tcp", "shm", ...) and domain (interface) the
 * caller names.
 *
 * Each endpoint owns its fabric, domain, address vector (FI_AV_TABLE: peer k
 * is fi_addr k), completion queue (FI_CQ_FORMAT_TAGGED) and endpoint, opened
 * with FI_THREAD_DOMAIN: one thread at a time per endpoint, no locking here;
 * different endpoints may be driven by different threads.
 *
 * Memory registration: we offer FI_MR_LOCAL | FI_MR_VIRT_ADDR |
 * FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT and honour what the
 * provider keeps. When it keeps FI_MR_LOCAL (or FI_MR_HMEM) every buffer is
 * registered on first use and the registration is cached by page range, so a
 * reused buffer is not registered again. The cache cannot see free(): a
 * buffer freed and reallocated at the same address reuses the old
 * registration, so callers should keep their scratch buffers for the
 * communicator's lifetime (DESIGN.md section 5 asks for that anyway).
 *
 * Reserved tags: tags with bits 63 and 62 set and bit 61 clear belong to
 * this transport (the connection warm-up uses OFI_TAG_WARMUP, the
 * rendezvous below OFI_TAG_CTL). isend/irecv
 * refuse them with DUET_ERR_INVALID_ARGUMENT. With bit 61 set too they are a
 * layered transport's (the HPN planes' notices) and pass.
 *
 * Rendezvous on shm: libfabric 1.17's shm provider moves a message larger
 * than its inject size (4 KiB) by a protocol that misbehaves while the
 * message is unexpected (sent before its receive is posted), or longer than
 * its receive. Through the kernel (CMA, the default where allowed) the
 * sender's completions queue up behind that message's until the receiver
 * matches it, so every later transfer to that peer waits too, and calls in
 * flight together can wait on each other for good (ofiwg/libfabric#9853);
 * through the segment (SAR, where CMA is not allowed) two such messages to
 * one receiver stall both (ofiwg/libfabric#9143); a truncated one never
 * completes either way. So on shm a larger message is sent only once its
 * receive is posted and holds it. irecv posts the receive, then sends a
 * clear-to-send (CTS: tag and length) on the reserved tag OFI_TAG_CTL, into
 * one of OFI_CTL_SLOTS receives each endpoint keeps posted per peer (more
 * wait in the provider as unexpected injects, which it buffers). isend of
 * such a message waits for its CTS (e->cts_wait), or takes one that came
 * first (e->cts_early), then posts the send; if the receive is too short it
 * sends a NAK instead, the receiver cancels its receive, and both fail with
 * DUET_ERR_MISMATCH, nothing written. A posted receive costs one 24-byte
 * message; a send whose receive was posted first waits for nothing more. A
 * receive of at most 4 KiB sends no CTS, so a send still waiting for its CTS
 * after OFI_PROBE_SEC tells its receiver once (PROBE: tag and length). A
 * receiver with such a short receive posted for the message answers with a
 * CTS of its length, and the pair fails as truncated too, instead of timing
 * out; with no receive posted for it yet it keeps the probe (e->probes, up
 * to OFI_PROBE_KEEP) for the receive to answer when posted. One probe per
 * send that waits, so a receiver that is late for many sends gets one
 * message for each. Posts the provider refuses as busy wait in e->retry and
 * are tried again at each progress.
 *
 * insert_peers connects eagerly: the tcp provider connects lazily on the
 * first send (about 0.1 s each), so we exchange one zero-byte message with
 * every inserted peer (itself included) and wait for all of them. That makes
 * insert_peers collective over the inserted peers: it returns once every
 * peer has called it too, or DUET_ERR_TIMEOUT after the communicator's
 * timeout_ms (params; 60 s without one) naming a peer that did not answer.
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#include "core/log.h"
#include "transport.h"

#define OFI_API_VERSION FI_VERSION(1, 11) /* configure.ac requires libfabric >= 1.11 */
#define OFI_TAG_RESERVED (UINT64_C(3) << 62)
#define OFI_TAG_RESERVED_MASK (UINT64_C(7) << 61)
#define OFI_TAG_WARMUP (OFI_TAG_RESERVED | UINT64_C(0x1fffffffffffffff))
#define OFI_TAG_CTL (OFI_TAG_RESERVED | UINT64_C(0x1ffffffffffffffe))
#define OFI_CTL_SLOTS 4   /* rendezvous receives kept posted per peer */
#define OFI_PROBE_SEC 0.1 /* a send waiting this long for its CTS probes its receiver */
#define OFI_PROBE_KEEP 60.0 /* a probe that found no receive waits this long for one */
#define OFI_CQ_BATCH 16
#define OFI_CTX_CHUNK 64  /* contexts allocated at a time, kept until close */
#define OFI_MR_CACHE 32   /* cached registrations per endpoint */
#define OFI_WARMUP_SEC 60 /* deadline of the connection warm-up without params->timeout_ms */
/* Test hook: register buffers even when the provider does not ask for it,
 * so the registration cache runs on tcp and shm. Read at open. */
int duet__ofi_test_force_mr;
/* Test hook: rendezvous for messages longer than this many bytes on every
 * provider (0: on shm only, above its inject size). Read at open. */
int duet__ofi_test_rndv;

#define OFI_MR_MODE_OFFERED                                                                        \
  (FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)

/* One cached registration of the pages [base, base + len). */
typedef struct ofi_mr {
  struct fid_mr *mr; /* NULL: free slot */
  void *desc;
  uintptr_t base;
  size_t len;
  unsigned refs;     /* posted operations using it; evictable at 0 */
  uint64_t last_use; /* for LRU eviction */
} ofi_mr_t;

/* What a context stands for. */
enum {
  OFI_OP_USER,      /* a caller's send or receive, posted */
  OFI_OP_SEND_RNDV, /* a caller's send not posted yet: waits for its CTS, or for room */
  OFI_OP_CTL_RECV,  /* one of the receives of control messages kept posted */
  OFI_OP_CTL_SEND,  /* a control message the provider refused as busy, to send again */
  OFI_OP_CTS_EARLY, /* a CTS that came before its send was posted */
  OFI_OP_PROBE_KEPT /* a PROBE that came before its receive was posted */
};

/* A control message of the rendezvous, on tag OFI_TAG_CTL. */
enum { OFI_CTL_CTS = 1, OFI_CTL_NAK = 2, OFI_CTL_PROBE = 3 };
typedef struct ofi_ctl {
  uint64_t kind; /* OFI_CTL_CTS: the receive is posted; OFI_CTL_NAK: it is too short;
                    OFI_CTL_PROBE: the send still waits for its CTS */
  uint64_t tag;  /* of the message */
  uint64_t len;  /* CTS: the receive's length; NAK, PROBE: the message's */
} ofi_ctl_t;

/* Internal context of one posted operation; op_context points here. */
typedef struct ofi_ctx {
  struct fi_context2 fi; /* first: providers asking FI_CONTEXT(2) write here */
  duet__tp_req_t *req;
  ofi_mr_t *mr;          /* cache entry pinned by this operation, or NULL */
  struct fid_mr *own_mr; /* uncached registration (cache full), closed at completion */
  uint64_t tag;
  size_t len; /* posted length */
  int peer;
  int is_recv;
  int op;               /* OFI_OP_* */
  void *buf, *desc;     /* OFI_OP_SEND_RNDV: what to post (desc: also OFI_OP_CTL_RECV's) */
  ofi_ctl_t ctl;        /* OFI_OP_CTL_*: the message received or to send; CTS_EARLY: the CTS */
  size_t olen;          /* a receive the sender's NAK cancelled: the message's length */
  int answered;         /* a receive too short for a CTS: it answered a PROBE with one */
  double probe_at;      /* OFI_OP_SEND_RNDV in e->cts_wait: when to probe its receiver
                           (0: probed); kept control messages: when they came */
  struct ofi_ctx *next; /* in e->cts_wait, e->cts_early, e->probes or e->retry */
  struct ofi_ctx *next_free;
} ofi_ctx_t;

/* A FIFO list of contexts. */
typedef struct ofi_list {
  ofi_ctx_t *head, *tail;
} ofi_list_t;

typedef struct ofi_chunk {
  struct ofi_chunk *next;
  ofi_ctx_t ctx[OFI_CTX_CHUNK];
} ofi_chunk_t;

typedef struct ofi_ep {
  struct fi_info *info;
  struct fid_fabric *fabric;
  struct fid_domain *domain;
  struct fid_av *av;
  struct fid_cq *cq;
  struct fid_ep *ep;
  uint64_t mr_mode;
  int need_desc; /* provider wants local descriptors (FI_MR_LOCAL / FI_MR_HMEM) */
  uint8_t sink[8]; /* what a receive of 0 bytes posts (ofi_post) */
  size_t max_msg;
  size_t page;
  int yield;
  double warm_sec; /* deadline of the warm-up */
  int wait_fd; /* the CQ's wait descriptor (FI_WAIT_FD), or -1 */
  fi_addr_t *peers;
  int npeers;
  ofi_ctx_t *free_ctx;
  ofi_chunk_t *chunks;
  ofi_mr_t mrs[OFI_MR_CACHE];
  uint64_t mr_clock;
  uint64_t mr_key;      /* requested keys when the provider does not pick them */
  duet__tp_req_t *warm; /* warm-up requests; freed at close (a late completion may touch them) */
  size_t rndv_min;      /* rendezvous for messages longer than this; 0: never (not shm) */
  ofi_list_t cts_wait;  /* sends waiting for their CTS */
  double probe_due;     /* the earliest probe_at in cts_wait (or earlier); 0: none */
  ofi_list_t probes;    /* PROBEs waiting for their receives */
  ofi_list_t cts_early; /* CTSs waiting for their sends */
  ofi_list_t retry;     /* posts refused as busy: sends, CTSs and CTS receives */
  size_t ctl_slots;     /* receives of control messages kept posted, all peers */
  char shm_name[64];    /* shm: our region's name (ofi_unique_name); "" for others */
} ofi_ep_t;

static double ofi_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void ofi_close_fid(struct fid *fid, const char *what) {
  int ret;
  if (!fid)
    return;
  ret = fi_close(fid);
  if (ret)
    DUET_WARN(DUET_SUB_NET, "ofi: fi_close(%s): %s", what, fi_strerror(-ret));
}

/* ---- contexts ---------------------------------------------------------- */

static ofi_ctx_t *ofi_ctx_get(ofi_ep_t *e) {
  ofi_ctx_t *c = e->free_ctx;
  if (!c) {
    ofi_chunk_t *ch = calloc(1, sizeof *ch);
    if (!ch)
      return NULL;
    ch->next = e->chunks;
    e->chunks = ch;
    for (int i = OFI_CTX_CHUNK - 1; i >= 0; i--) {
      ch->ctx[i].next_free = e->free_ctx;
      e->free_ctx = &ch->ctx[i];
    }
    c = e->free_ctx;
  }
  e->free_ctx = c->next_free;
  memset(c, 0, sizeof *c);
  return c;
}

/* Unpin the context's registration and return it to the free list. */
static void ofi_ctx_put(ofi_ep_t *e, ofi_ctx_t *c) {
  if (c->mr)
    c->mr->refs--;
  if (c->own_mr)
    ofi_close_fid(&c->own_mr->fid, "uncached mr");
  c->mr = NULL;
  c->own_mr = NULL;
  c->req = NULL;
  c->next_free = e->free_ctx;
  e->free_ctx = c;
}

static void ofi_list_push(ofi_list_t *l, ofi_ctx_t *c) {
  c->next = NULL;
  if (l->tail)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
}

/* Remove and return the first context of l for (peer, tag), or NULL. */
static ofi_ctx_t *ofi_list_take(ofi_list_t *l, int peer, uint64_t tag) {
  for (ofi_ctx_t *prev = NULL, *c = l->head; c; prev = c, c = c->next)
    if (c->peer == peer && c->tag == tag) {
      if (prev)
        prev->next = c->next;
      else
        l->head = c->next;
      if (l->tail == c)
        l->tail = prev;
      c->next = NULL;
      return c;
    }
  return NULL;
}

/* ---- registration cache ------------------------------------------------ */

/* Find or make a registration covering [buf, buf + len) for context c and
 * return its descriptor. */
static duet_status_t ofi_mr_get(ofi_ep_t *e, const void *buf, size_t len, ofi_ctx_t *c, void **desc,
                                char *errbuf) {
  uintptr_t a = (uintptr_t)buf;
  uintptr_t base = a & ~(uintptr_t)(e->page - 1);
  uintptr_t end = (a + len + e->page - 1) & ~(uintptr_t)(e->page - 1);
  ofi_mr_t *victim = NULL;
  struct fid_mr *mr = NULL;
  int ret;

  for (int i = 0; i < OFI_MR_CACHE; i++) {
    ofi_mr_t *m = &e->mrs[i];
    if (m->mr && a >= m->base && a + len <= m->base + m->len) {
      m->refs++;
      m->last_use = ++e->mr_clock;
      c->mr = m;
      *desc = m->desc;
      return DUET_SUCCESS;
    }
    if (m->refs)
      continue;
    if (!victim || (victim->mr && (!m->mr || m->last_use < victim->last_use)))
      victim = m;
  }

  ret = fi_mr_reg(e->domain, (void *)base, end - base, FI_SEND | FI_RECV, 0, ++e->mr_key, 0, &mr,
                  NULL);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_mr_reg(%p, %zu bytes): %s", (void *)base,
                    (size_t)(end - base), fi_strerror(-ret));
    return DUET_ERR_TRANSPORT;
  }
  if (e->mr_mode & FI_MR_ENDPOINT) {
    ret = fi_mr_bind(mr, &e->ep->fid, 0);
    if (!ret)
      ret = fi_mr_enable(mr);
    if (ret) {
      duet__tp_seterr(errbuf, "ofi", "fi_mr_bind/fi_mr_enable(%p, %zu bytes): %s", (void *)base,
                      (size_t)(end - base), fi_strerror(-ret));
      ofi_close_fid(&mr->fid, "mr");
      return DUET_ERR_TRANSPORT;
    }
  }
  DUET_TRACE(DUET_SUB_NET, "ofi: registered %p + %zu", (void *)base, (size_t)(end - base));

  if (!victim) { /* every slot busy: use it once, close at completion */
    c->own_mr = mr;
    *desc = fi_mr_desc(mr);
    return DUET_SUCCESS;
  }
  if (victim->mr)
    ofi_close_fid(&victim->mr->fid, "cached mr");
  victim->mr = mr;
  victim->desc = fi_mr_desc(mr);
  victim->base = base;
  victim->len = end - base;
  victim->refs = 1;
  victim->last_use = ++e->mr_clock;
  c->mr = victim;
  *desc = victim->desc;
  return DUET_SUCCESS;
}

/* ---- completions ------------------------------------------------------- */

static void ofi_complete(ofi_ep_t *e, ofi_ctx_t *c, size_t len, duet_status_t status) {
  duet__tp_complete(c->req, status, len);
  ofi_ctx_put(e, c);
}

/* Read one error completion and fail its request. */
static duet_status_t ofi_cq_error(ofi_ep_t *e, char *errbuf) {
  struct fi_cq_err_entry err;
  char provbuf[128];
  const char *provtxt;
  ofi_ctx_t *c;
  ssize_t ret;
  duet_status_t st;

  memset(&err, 0, sizeof err);
  ret = fi_cq_readerr(e->cq, &err, 0);
  if (ret == -FI_EAGAIN)
    return DUET_IN_PROGRESS; /* nothing there after all */
  if (ret < 0) {
    duet__tp_seterr(errbuf, "ofi", "fi_cq_readerr: %s", fi_strerror((int)-ret));
    return DUET_ERR_TRANSPORT;
  }
  if (err.err < 0) /* some providers (shm 1.17) store a negative code */
    err.err = -err.err;
  provtxt = fi_cq_strerror(e->cq, err.prov_errno, err.err_data, provbuf, sizeof provbuf);
  c = err.op_context;
  if (c && c->op == OFI_OP_CTL_RECV) {
    duet__tp_seterr(errbuf, "ofi", "receive of rendezvous messages from peer %d failed: %s (%s)",
                    c->peer, fi_strerror(err.err), provtxt ? provtxt : "");
    return DUET_ERR_TRANSPORT;
  }
  if (!c || !c->req) {
    duet__tp_seterr(errbuf, "ofi", "fi_cq_readerr: error without a request: %s (%s)",
                    fi_strerror(err.err), provtxt ? provtxt : "");
    return DUET_ERR_TRANSPORT;
  }
  if (c->olen) { /* cancelled on the sender's NAK (rendezvous) */
    st = DUET_ERR_MISMATCH;
    duet__tp_seterr(errbuf, "ofi",
                    "recv from peer %d tag 0x%" PRIx64
                    ": message of %zu bytes, longer than the posted %zu; nothing received",
                    c->peer, c->tag, c->olen, c->len);
  } else if (err.err == FI_ETRUNC) {
    st = DUET_ERR_MISMATCH;
    char over[48] = "";
    if (err.olen) /* not every provider says by how much */
      snprintf(over, sizeof over, " (%zu bytes over)", err.olen);
    duet__tp_seterr(errbuf, "ofi",
                    "recv from peer %d tag 0x%" PRIx64
                    ": message longer than the posted %zu bytes%s: %s",
                    c->peer, c->tag, c->len, over, fi_strerror(err.err));
  } else {
    st = DUET_ERR_TRANSPORT;
    duet__tp_seterr(errbuf, "ofi", "%s peer %d tag 0x%" PRIx64 " (%zu bytes) failed: %s (%s)",
                    c->is_recv ? "recv from" : "send to", c->peer, c->tag, c->len,
                    fi_strerror(err.err), provtxt ? provtxt : "");
  }
  ofi_complete(e, c, c->is_recv ? err.len : 0, st);
  return DUET_SUCCESS;
}

/* ---- rendezvous (shm) -------------------------------------------------- */

/* Post what c stands for: a send whose CTS came, a control message, or a
 * control receive. */
static ssize_t ofi_post_op(ofi_ep_t *e, ofi_ctx_t *c) {
  switch (c->op) {
  case OFI_OP_SEND_RNDV:
    return fi_tsend(e->ep, c->buf, c->len, c->desc, e->peers[c->peer], c->tag, c);
  case OFI_OP_CTL_RECV:
    return fi_trecv(e->ep, &c->ctl, sizeof c->ctl, c->desc, e->peers[c->peer], OFI_TAG_CTL, 0, c);
  default: /* OFI_OP_CTL_SEND */
    return fi_tinject(e->ep, &c->ctl, sizeof c->ctl, e->peers[c->peer], OFI_TAG_CTL);
  }
}

/* Post c, or queue it on e->retry while the provider is busy. A send that
 * fails completes its request with the error; a control message or receive
 * that fails fails the endpoint. */
static duet_status_t ofi_start(ofi_ep_t *e, ofi_ctx_t *c, char *errbuf) {
  ssize_t ret = ofi_post_op(e, c);
  int op = c->op;
  if (ret == -FI_EAGAIN) {
    ofi_list_push(&e->retry, c);
    return DUET_SUCCESS;
  }
  if (ret == 0) {
    if (op == OFI_OP_SEND_RNDV)
      c->op = OFI_OP_USER; /* posted: completes as any send */
    else if (op == OFI_OP_CTL_SEND)
      ofi_ctx_put(e, c);
    return DUET_SUCCESS;
  }
  duet__tp_seterr(errbuf, "ofi", "%s peer %d tag 0x%" PRIx64 ": %s",
                  op == OFI_OP_SEND_RNDV  ? "fi_tsend after CTS to"
                  : op == OFI_OP_CTL_RECV ? "fi_trecv of rendezvous messages from"
                                          : "fi_tinject of a rendezvous message to",
                  c->peer, op == OFI_OP_SEND_RNDV ? c->tag : c->ctl.tag, fi_strerror((int)-ret));
  if (op == OFI_OP_SEND_RNDV) {
    ofi_complete(e, c, 0, DUET_ERR_TRANSPORT);
    return DUET_SUCCESS;
  }
  if (op == OFI_OP_CTL_SEND)
    ofi_ctx_put(e, c);
  return DUET_ERR_TRANSPORT;
}

/* Send peer a control message about the message of tag. */
static duet_status_t ofi_send_ctl(ofi_ep_t *e, int peer, uint64_t kind, uint64_t tag, size_t len,
                                  char *errbuf) {
  ofi_ctx_t *c = ofi_ctx_get(e);
  if (!c) {
    duet__tp_seterr(errbuf, "ofi", "rendezvous message to peer %d: out of memory for a context",
                    peer);
    return DUET_ERR_NO_MEMORY;
  }
  c->op = OFI_OP_CTL_SEND;
  c->peer = peer;
  c->ctl = (ofi_ctl_t){.kind = kind, .tag = tag, .len = len};
  if (e->retry.head) { /* behind what already waits for room */
    ofi_list_push(&e->retry, c);
    return DUET_SUCCESS;
  }
  return ofi_start(e, c, errbuf);
}

/* Send s has its CTS: post it if the receive holds it; otherwise tell the
 * receiver (NAK) and fail both, sending nothing. */
static duet_status_t ofi_cleared(ofi_ep_t *e, ofi_ctx_t *s, size_t recv_len, char *errbuf) {
  duet_status_t st;
  if (s->len <= recv_len)
    return ofi_start(e, s, errbuf);
  st = ofi_send_ctl(e, s->peer, OFI_CTL_NAK, s->tag, s->len, errbuf);
  duet__tp_seterr(errbuf, "ofi",
                  "send to peer %d tag 0x%" PRIx64 ": %zu bytes, longer than its receive of %zu",
                  s->peer, s->tag, s->len, recv_len);
  ofi_complete(e, s, 0, DUET_ERR_MISMATCH);
  return st;
}

/* The posted receive of (peer, tag) that no NAK has cancelled yet. */
static ofi_ctx_t *ofi_find_recv(ofi_ep_t *e, int peer, uint64_t tag) {
  for (ofi_chunk_t *ch = e->chunks; ch; ch = ch->next)
    for (int i = 0; i < OFI_CTX_CHUNK; i++) {
      ofi_ctx_t *c = &ch->ctx[i];
      if (c->req && c->op == OFI_OP_USER && c->is_recv && !c->olen && c->peer == peer &&
          c->tag == tag)
        return c;
    }
  return NULL;
}

/* Keep the control message in r, which came before what it is for, on l
 * (e->cts_early or e->probes) as a context of kind op. */
static duet_status_t ofi_keep(ofi_ep_t *e, ofi_list_t *l, int op, const ofi_ctx_t *r,
                              char *errbuf) {
  ofi_ctx_t *k = ofi_ctx_get(e);
  if (!k) {
    duet__tp_seterr(errbuf, "ofi", "%s from peer %d: out of memory for a context",
                    op == OFI_OP_CTS_EARLY ? "CTS" : "probe", r->peer);
    return DUET_ERR_NO_MEMORY;
  }
  k->op = op;
  k->peer = r->peer;
  k->tag = r->ctl.tag;
  k->ctl = r->ctl;
  k->probe_at = ofi_now();
  ofi_list_push(l, k);
  return DUET_SUCCESS;
}

/* A control message came into receive r: act on it, then post r again. */
static duet_status_t ofi_got_ctl(ofi_ep_t *e, ofi_ctx_t *r, char *errbuf) {
  duet_status_t st = DUET_SUCCESS;
  if (r->ctl.kind == OFI_CTL_CTS) {
    ofi_ctx_t *s = ofi_list_take(&e->cts_wait, r->peer, r->ctl.tag);
    if (s) {
      st = ofi_cleared(e, s, r->ctl.len, errbuf);
    } else { /* the send is not posted yet */
      st = ofi_keep(e, &e->cts_early, OFI_OP_CTS_EARLY, r, errbuf);
    }
  } else if (r->ctl.kind == OFI_CTL_PROBE) {
    /* a send still waits for its CTS: if its receive is posted but too short
     * to have sent one, answer with its length (the sender then NAKs); if it
     * is not posted yet, keep the probe for it */
    ofi_ctx_t *c = ofi_find_recv(e, r->peer, r->ctl.tag);
    if (c && c->len <= e->rndv_min && !c->answered) {
      c->answered = 1;
      st = ofi_send_ctl(e, r->peer, OFI_CTL_CTS, r->ctl.tag, c->len, errbuf);
    } else if (!c) {
      st = ofi_keep(e, &e->probes, OFI_OP_PROBE_KEPT, r, errbuf);
    }
  } else if (r->ctl.kind == OFI_CTL_NAK) {
    /* the message is longer than our receive: cancel it; it fails with
     * DUET_ERR_MISMATCH through the CQ (ofi_cq_error) */
    ofi_ctx_t *c = ofi_find_recv(e, r->peer, r->ctl.tag);
    if (c) {
      c->olen = r->ctl.len;
      fi_cancel(&e->ep->fid, c);
    }
  } else {
    DUET_WARN(DUET_SUB_NET, "ofi: unknown rendezvous message %" PRIu64 " from peer %d ignored",
              r->ctl.kind, r->peer);
  }
  if (st == DUET_SUCCESS)
    st = ofi_start(e, r, errbuf);
  return st;
}

/* Post again what the provider refused as busy, in order. */
static duet_status_t ofi_retry(ofi_ep_t *e, char *errbuf) {
  ofi_ctx_t *c = e->retry.head;
  e->retry.head = e->retry.tail = NULL;
  while (c) {
    ofi_ctx_t *next = c->next;
    duet_status_t st = ofi_start(e, c, errbuf);
    if (st != DUET_SUCCESS) {
      while (next) { /* keep the rest */
        c = next;
        next = c->next;
        ofi_list_push(&e->retry, c);
      }
      return st;
    }
    c = next;
  }
  return DUET_SUCCESS;
}

/* Keep OFI_CTL_SLOTS receives of control messages posted per peer (fewer
 * when the provider's receive queue is short). */
static duet_status_t ofi_post_ctl_slots(ofi_ep_t *e, char *errbuf) {
  size_t rx = e->info->rx_attr->size ? e->info->rx_attr->size : 1024;
  size_t slots = rx / (4 * (size_t)e->npeers);
  slots = slots < 1 ? 1 : slots > OFI_CTL_SLOTS ? OFI_CTL_SLOTS : slots;
  for (int peer = 0; peer < e->npeers; peer++)
    for (size_t k = 0; k < slots; k++) {
      ofi_ctx_t *c = ofi_ctx_get(e);
      duet_status_t st;
      if (!c) {
        duet__tp_seterr(errbuf, "ofi", "insert_peers: out of memory for rendezvous receives");
        return DUET_ERR_NO_MEMORY;
      }
      c->op = OFI_OP_CTL_RECV;
      c->peer = peer;
      c->tag = OFI_TAG_CTL;
      c->is_recv = 1;
      if (e->need_desc) { /* pinned for the endpoint's life */
        st = ofi_mr_get(e, &c->ctl, sizeof c->ctl, c, &c->desc, errbuf);
        if (st != DUET_SUCCESS)
          return st;
      }
      st = ofi_start(e, c, errbuf);
      if (st != DUET_SUCCESS)
        return st;
      e->ctl_slots++;
    }
  return DUET_SUCCESS;
}

/* Probe the receivers of the sends that have waited OFI_PROBE_SEC for their
 * CTS (see the file's comment). */
static duet_status_t ofi_probe(ofi_ep_t *e, char *errbuf) {
  double now = ofi_now();
  e->probe_due = 0;
  for (ofi_ctx_t *c = e->cts_wait.head; c; c = c->next) {
    if (c->probe_at && c->probe_at <= now) {
      duet_status_t st = ofi_send_ctl(e, c->peer, OFI_CTL_PROBE, c->tag, c->len, errbuf);
      if (st != DUET_SUCCESS)
        return st;
      c->probe_at = 0;
    }
    if (c->probe_at && (!e->probe_due || c->probe_at < e->probe_due))
      e->probe_due = c->probe_at;
  }
  return DUET_SUCCESS;
}

/* Whether a probe for (peer, tag) was kept; drop it, and the probes kept
 * longer than OFI_PROBE_KEEP on the way. */
static int ofi_take_probe(ofi_ep_t *e, int peer, uint64_t tag) {
  double now = ofi_now();
  int found = 0;
  for (ofi_ctx_t *prev = NULL, *c = e->probes.head, *next; c; c = next) {
    int match = !found && c->peer == peer && c->tag == tag;
    next = c->next;
    if (!match && now - c->probe_at <= OFI_PROBE_KEEP) {
      prev = c;
      continue;
    }
    if (prev)
      prev->next = next;
    else
      e->probes.head = next;
    if (e->probes.tail == c)
      e->probes.tail = prev;
    c->next = NULL;
    found |= match;
    ofi_ctx_put(e, c);
  }
  return found;
}

/* ---- progress ---------------------------------------------------------- */

static duet_status_t ofi_progress_ep(ofi_ep_t *e, char *errbuf) {
  struct fi_cq_tagged_entry ent[OFI_CQ_BATCH];

  for (;;) {
    ssize_t n = fi_cq_read(e->cq, ent, OFI_CQ_BATCH);
    if (n > 0) {
      duet_status_t failed = DUET_SUCCESS;
      for (ssize_t i = 0; i < n; i++) { /* the whole batch, so no completion is lost */
        ofi_ctx_t *c = ent[i].op_context;
        if (c->op != OFI_OP_CTL_RECV) /* longer than a receive: into the sink of one of 0 */
          ofi_complete(e, c, c->is_recv ? ent[i].len : c->len,
                       c->is_recv && ent[i].len > c->len ? DUET_ERR_MISMATCH : DUET_SUCCESS);
        else if (failed == DUET_SUCCESS)
          failed = ofi_got_ctl(e, c, errbuf);
      }
      if (failed != DUET_SUCCESS)
        return failed;
      if (n < OFI_CQ_BATCH)
        break;
    } else if (n == -FI_EAGAIN) {
      break;
    } else if (n == -FI_EAVAIL) {
      duet_status_t st = ofi_cq_error(e, errbuf);
      if (st < 0)
        return st;
      if (st == DUET_IN_PROGRESS)
        break;
    } else {
      duet__tp_seterr(errbuf, "ofi", "fi_cq_read: %s", fi_strerror((int)-n));
      return DUET_ERR_TRANSPORT;
    }
  }
  if (e->probe_due && ofi_now() >= e->probe_due) {
    duet_status_t st = ofi_probe(e, errbuf);
    if (st != DUET_SUCCESS)
      return st;
  }
  return e->retry.head ? ofi_retry(e, errbuf) : DUET_SUCCESS;
}

static duet_status_t ofi_progress(duet__tp_ep_t *ep, char *errbuf) {
  return ofi_progress_ep((ofi_ep_t *)ep, errbuf);
}

/* fi_trywait: FI_SUCCESS means nothing is pending that only a CQ read would
 * find, so the caller may poll the descriptor. */
static duet_status_t ofi_wait_fd(duet__tp_ep_t *ep, int *fd, char *errbuf) {
  ofi_ep_t *e = (ofi_ep_t *)ep;
  struct fid *fids[1];
  int ret;
  (void)errbuf;
  if (e->wait_fd < 0)
    return DUET_ERR_UNSUPPORTED;
  if (e->retry.head) /* posts to try again: no completion will wake us for them */
    return DUET_IN_PROGRESS;
  fids[0] = &e->cq->fid;
  ret = fi_trywait(e->fabric, fids, 1);
  if (ret == FI_SUCCESS) {
    *fd = e->wait_fd;
    return DUET_SUCCESS;
  }
  return ret == -FI_EAGAIN ? DUET_IN_PROGRESS : DUET_ERR_UNSUPPORTED;
}

/* ---- posting ----------------------------------------------------------- */

static duet_status_t ofi_post(ofi_ep_t *e, int is_recv, int peer, void *buf, size_t len,
                              uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  const char *call = is_recv ? "fi_trecv" : "fi_tsend";
  void *desc = NULL, *pbuf = buf;
  size_t plen = len;
  ofi_ctx_t *c;
  ssize_t ret;
  duet_status_t st;
  int probed;

  if (peer < 0 || peer >= e->npeers) {
    duet__tp_seterr(errbuf, "ofi", "%s: peer %d out of range (%d peers)", call, peer, e->npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (len > e->max_msg) {
    duet__tp_seterr(errbuf, "ofi", "%s: %zu bytes exceed the provider's max_msg_size %zu", call,
                    len, e->max_msg);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (len && !buf) {
    duet__tp_seterr(errbuf, "ofi", "%s: NULL buffer of %zu bytes", call, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (is_recv && len == 0) {
    /* rxm never ended a message of its segmented size class (64-128 KiB)
     * that met a receive of 0 bytes: take it into 8 bytes of the
     * endpoint's, a message of any length then fails the receive
     * (ofi_progress_ep) */
    pbuf = e->sink;
    plen = sizeof e->sink;
  }
  c = ofi_ctx_get(e);
  if (!c) {
    duet__tp_seterr(errbuf, "ofi", "%s: out of memory for a request context", call);
    return DUET_ERR_NO_MEMORY;
  }
  if (e->need_desc && plen) {
    st = ofi_mr_get(e, pbuf, plen, c, &desc, errbuf);
    if (st != DUET_SUCCESS) {
      ofi_ctx_put(e, c);
      return st;
    }
  }
  c->req = req;
  c->tag = tag;
  c->len = len;
  c->peer = peer;
  c->is_recv = is_recv;
  req->done = 0;
  req->status = DUET_IN_PROGRESS;
  req->len = 0;

  if (!is_recv && e->rndv_min && len > e->rndv_min) { /* send once its CTS is here */
    ofi_ctx_t *cts = ofi_list_take(&e->cts_early, peer, tag);
    size_t recv_len;
    c->op = OFI_OP_SEND_RNDV;
    c->buf = buf;
    c->desc = desc;
    if (!cts) {
      c->probe_at = ofi_now() + OFI_PROBE_SEC;
      if (!e->probe_due)
        e->probe_due = c->probe_at;
      ofi_list_push(&e->cts_wait, c);
      return DUET_SUCCESS;
    }
    recv_len = cts->ctl.len;
    ofi_ctx_put(e, cts);
    return ofi_cleared(e, c, recv_len, errbuf);
  }
  if (!is_recv && e->cts_early.head) { /* a CTS for this short message (its receive is
                                          longer): it goes without, drop the CTS */
    ofi_ctx_t *cts = ofi_list_take(&e->cts_early, peer, tag);
    if (cts)
      ofi_ctx_put(e, cts);
  }
  if (is_recv)
    ret = fi_trecv(e->ep, pbuf, plen, desc, e->peers[peer], tag, 0, c);
  else
    ret = fi_tsend(e->ep, buf, len, desc, e->peers[peer], tag, c);
  /* a receive sends a CTS when it is long, or when its sender has probed
   * already (too short for the message then: see OFI_CTL_PROBE); either
   * way the probe kept for it goes */
  probed = ret == 0 && is_recv && e->probes.head && ofi_take_probe(e, peer, tag);
  if (ret == 0 && is_recv && e->rndv_min && (len > e->rndv_min || probed)) {
    c->answered = len <= e->rndv_min;
    st = ofi_send_ctl(e, peer, OFI_CTL_CTS, tag, len, errbuf);
    if (st != DUET_SUCCESS) /* the receive fails through the CQ */
      fi_cancel(&e->ep->fid, c);
    return DUET_SUCCESS;
  }
  if (ret == 0)
    return DUET_SUCCESS;
  ofi_ctx_put(e, c);
  if (ret == -FI_EAGAIN) {
    st = ofi_progress_ep(e, errbuf);
    return st < 0 ? st : DUET_IN_PROGRESS;
  }
  duet__tp_seterr(errbuf, "ofi", "%s(peer %d, %zu bytes, tag 0x%" PRIx64 "): %s", call, peer, len,
                  tag, fi_strerror((int)-ret));
  return DUET_ERR_TRANSPORT;
}

static int ofi_tag_ok(uint64_t tag, const char *call, char *errbuf) {
  if ((tag & OFI_TAG_RESERVED_MASK) != OFI_TAG_RESERVED)
    return 1;
  duet__tp_seterr(errbuf, "ofi",
                  "%s: tag 0x%" PRIx64 " is reserved (bits 63 and 62 set, bit 61 clear)", call,
                  tag);
  return 0;
}

static duet_status_t ofi_isend(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                               uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  if (!ofi_tag_ok(tag, "isend", errbuf))
    return DUET_ERR_INVALID_ARGUMENT;
  return ofi_post((ofi_ep_t *)ep, 0, peer, (void *)buf, len, tag, req, errbuf);
}

static duet_status_t ofi_irecv(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                               duet__tp_req_t *req, char *errbuf) {
  if (!ofi_tag_ok(tag, "irecv", errbuf))
    return DUET_ERR_INVALID_ARGUMENT;
  return ofi_post((ofi_ep_t *)ep, 1, peer, buf, len, tag, req, errbuf);
}

/* ---- open / addresses / close ------------------------------------------ */

/* "tcp" names "tcp;ofi_rxm": a provider matches by its name or its first layer. */
static int ofi_prov_match(const char *have, const char *want) {
  size_t n = strlen(want);
  return !strcmp(have, want) || (!strncmp(have, want, n) && have[n] == ';');
}

/*
 * Defaults for libfabric's tcp;ofi_rxm, set in the environment before the
 * first fi_getinfo of the process, and only where the user set nothing
 * (libfabric reads its variables once, when it loads its providers).
 *
 * rxm sends messages up to its bounce-buffer size eagerly, those up to
 * FI_OFI_RXM_SAR_LIMIT (128 KiB) in buffer-sized segments, and larger ones
 * by rendezvous. With its 16 KiB default, a 32 KiB message already pays the
 * segmentation protocol (35 us against 13 us eager, 2 ranks on loopback) and
 * a 512 KiB allreduce runs 1.7x slower than with 64 KiB buffers. Larger
 * buffers cost memory per posted receive buffer, 128 of them per connection
 * by default; 32 per connection keeps the total near the default's (measured
 * peak RSS per rank: 115 MB default, 339 MB with 64 KiB buffers, 145 MB with
 * 64 KiB buffers and 32 receives). Our pipelines keep at most a few chunks in
 * flight per peer, so 32 posted receives do not throttle them.
 */
static const struct {
  const char *name, *value;
} ofi_env_defaults[] = {
    {"FI_OFI_RXM_BUFFER_SIZE", "65536"},
    {"FI_OFI_RXM_MSG_RX_SIZE", "32"},
};

static void ofi_set_env_defaults(void) {
  static int done;
  if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL))
    return;
  for (size_t i = 0; i < sizeof ofi_env_defaults / sizeof ofi_env_defaults[0]; i++)
    if (getenv(ofi_env_defaults[i].name) == NULL) {
      setenv(ofi_env_defaults[i].name, ofi_env_defaults[i].value, 0);
      DUET_INFO(DUET_SUB_NET, "ofi: %s=%s (default of duet; set it to override)",
                ofi_env_defaults[i].name, ofi_env_defaults[i].value);
    }
}

/*
 * shm names an endpoint's shared-memory region after the process id
 * ("<pid>:<n>:0" under /dev/shm) and creates it exclusively. A process that
 * was killed leaves its region behind, and a later process that gets the
 * same id then fails in fi_enable with "Device or resource busy". A random
 * name of our own avoids that; the address exchange carries whatever name
 * the endpoint has. Other providers keep their own names.
 *
 * The region stays in /dev/shm until the endpoint closes, or for good when
 * the process is killed by a signal libfabric cannot catch (SIGKILL, the OOM
 * killer): ofi_warmup unlinks it once a message from every peer has come,
 * since each of them had mapped the region to send it, and nothing opens it
 * by name after that.
 */
static void ofi_unique_name(ofi_ep_t *e) {
  uint64_t r = 0;
  char name[64];
  int ret;
  if (strcmp(e->info->fabric_attr->prov_name, "shm") != 0)
    return;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
    r = (uint64_t)ofi_now() * 1000003u ^ (uint64_t)getpid();
  snprintf(name, sizeof name, "duet_%d_%016" PRIx64, (int)getpid(), r);
  ret = fi_setname(&e->ep->fid, name, strlen(name) + 1);
  if (ret)
    DUET_INFO(DUET_SUB_NET, "ofi: shm keeps its own endpoint name (fi_setname: %s)",
              fi_strerror(-ret));
  else
    memcpy(e->shm_name, name, sizeof e->shm_name);
}

/* fi_getinfo for the wanted provider; returns the matching entry (a copy) or
 * a negative libfabric code.
 *
 * "tcp" is tcp;ofi_rxm. libfabric 1.17 also offers "net", the TCP
 * implementation with RDM built in (named tcp again from 1.18): faster here
 * (8-byte allreduce 6.1 against 7.8 us, 2 ranks; 14 MB RSS against 145 MB),
 * but it queues at most one unexpected message per connection and stops
 * reading it meanwhile, and with 3 or more ranks our send/receive tests hang
 * on it. It can still be named explicitly; it is not the default. */
static int ofi_getinfo(const char *prov, const char *iface, struct fi_info **out) {
  struct fi_info *hints, *list = NULL, *pick = NULL;
  int ret;

  *out = NULL;
  hints = fi_allocinfo();
  if (!hints)
    return -FI_ENOMEM;
  hints->ep_attr->type = FI_EP_RDM;
  hints->caps = FI_TAGGED | FI_DIRECTED_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->domain_attr->mr_mode = OFI_MR_MODE_OFFERED;
  hints->domain_attr->threading = FI_THREAD_DOMAIN;
  hints->tx_attr->msg_order = FI_ORDER_SAS; /* one pair, one tag: match in order */
  hints->rx_attr->msg_order = FI_ORDER_SAS;
  if (iface && !(hints->domain_attr->name = strdup(iface))) {
    ret = -FI_ENOMEM;
    goto out_free_hints;
  }
  /* Ask by name first; if the name only matches a layered provider's first
   * layer and libfabric does not resolve it, ask for all and filter. Filter
   * the domain ourselves too: tcp;ofi_rxm (1.17) ignores the domain hint and
   * would hand us eth0 for "lo". */
  for (int pass = 0; pass < 2 && !pick; pass++) {
    free(hints->fabric_attr->prov_name);
    hints->fabric_attr->prov_name = NULL;
    if (pass == 0 && prov && !(hints->fabric_attr->prov_name = strdup(prov))) {
      ret = -FI_ENOMEM;
      goto out_free_hints;
    }
    ret = fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, hints, &list);
    if (ret && ret != -FI_ENODATA)
      goto out_free_hints;
    for (struct fi_info *i = ret ? NULL : list; i && !pick; i = i->next)
      if ((!prov || ofi_prov_match(i->fabric_attr->prov_name, prov)) &&
          (!iface || (i->domain_attr->name && !strcmp(i->domain_attr->name, iface))))
        pick = i;
    if (pick && !(pick = fi_dupinfo(pick)))
      ret = -FI_ENOMEM;
    fi_freeinfo(list);
    list = NULL;
    if (!prov || ret == -FI_ENOMEM)
      break;
  }
  if (pick) {
    *out = pick;
    ret = 0;
  } else if (!ret) {
    ret = -FI_ENODATA;
  }
out_free_hints:
  fi_freeinfo(hints);
  return ret;
}

/*
 * libfabric 1.17's shm offers itself only while /dev/shm has room for one
 * region (16 MiB) per online CPU, which a container's default 64 MiB does
 * not hold on a host of more than 3 CPUs. When that is why shm is missing,
 * say so in why: fi_getinfo itself says only "No data available".
 */
#define OFI_SHM_REGION (16u << 20)
void duet__ofi_shm_space_hint(char *why, size_t len) {
  struct statvfs sv;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  unsigned long long avail, want;
  if (cpus < 1 || statvfs("/dev/shm", &sv) != 0)
    return;
  avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
  want = (unsigned long long)cpus * OFI_SHM_REGION;
  if (avail < want)
    snprintf(why, len,
             "; /dev/shm has %llu MiB free, libfabric's shm needs %llu (16 MiB per CPU, %ld "
             "CPUs): enlarge /dev/shm (docker run --shm-size)",
             avail >> 20, want >> 20, cpus);
}

static duet_status_t ofi_open(const duet__tp_params_t *params, duet__tp_ep_t **out, char *errbuf) {
  const char *prov = params && params->provider ? params->provider : NULL;
  const char *iface = params && params->iface ? params->iface : NULL;
  struct fi_av_attr av_attr;
  struct fi_cq_attr cq_attr;
  duet_status_t st = DUET_ERR_TRANSPORT;
  ofi_ep_t *e;
  long page;
  int ret;

  *out = NULL;
  e = calloc(1, sizeof *e);
  if (!e) {
    duet__tp_seterr(errbuf, "ofi", "open: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  page = sysconf(_SC_PAGESIZE);
  e->page = page > 0 ? (size_t)page : 4096;
  e->yield = params ? params->yield : 0;
  e->warm_sec = params && params->timeout_ms > 0 ? params->timeout_ms / 1000.0 : OFI_WARMUP_SEC;

  ofi_set_env_defaults();
  ret = ofi_getinfo(prov, iface, &e->info);
  if (ret) {
    char why[192] = "";
    if (prov && strcmp(prov, "shm") == 0)
      duet__ofi_shm_space_hint(why, sizeof why);
    duet__tp_seterr(errbuf, "ofi", "fi_getinfo(prov=%s, iface=%s): %s%s", prov ? prov : "any",
                    iface ? iface : "any", fi_strerror(-ret), why);
    st = ret == -FI_ENODATA  ? DUET_ERR_UNSUPPORTED
         : ret == -FI_ENOMEM ? DUET_ERR_NO_MEMORY
                             : DUET_ERR_TRANSPORT;
    goto out_free_ep;
  }
  e->mr_mode = e->info->domain_attr->mr_mode;
  e->need_desc = (e->mr_mode & (FI_MR_LOCAL | FI_MR_HMEM)) != 0 || duet__ofi_test_force_mr;
  e->max_msg = e->info->ep_attr->max_msg_size;
  if (duet__ofi_test_rndv)
    e->rndv_min = (size_t)duet__ofi_test_rndv;
  else if (strcmp(e->info->fabric_attr->prov_name, "shm") == 0)
    e->rndv_min = e->info->tx_attr->inject_size ? e->info->tx_attr->inject_size : 4096;
  if (DUET_LOG_ON(DUET_LOG_INFO, DUET_SUB_NET)) {
    char mrtxt[128];
    int mr_mode = e->info->domain_attr->mr_mode; /* fi_tostr reads an int */
#if FI_VERSION_GE(FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION), FI_VERSION(1, 16))
    fi_tostr_r(mrtxt, sizeof mrtxt, &mr_mode, FI_TYPE_MR_MODE);
#else
    snprintf(mrtxt, sizeof mrtxt, "%s", fi_tostr(&mr_mode, FI_TYPE_MR_MODE));
#endif
    DUET_INFO(DUET_SUB_NET, "ofi: provider %s fabric %s domain %s mr_mode [%s] max_msg_size %zu",
              e->info->fabric_attr->prov_name, e->info->fabric_attr->name,
              e->info->domain_attr->name, mrtxt, e->max_msg);
  }

  ret = fi_fabric(e->info->fabric_attr, &e->fabric, NULL);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_fabric(%s): %s", e->info->fabric_attr->name,
                    fi_strerror(-ret));
    goto out_free_info;
  }
  ret = fi_domain(e->fabric, e->info, &e->domain, NULL);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_domain(%s): %s", e->info->domain_attr->name,
                    fi_strerror(-ret));
    goto out_close_fabric;
  }
  memset(&av_attr, 0, sizeof av_attr);
  av_attr.type = FI_AV_TABLE;
  ret = fi_av_open(e->domain, &av_attr, &e->av, NULL);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_av_open: %s", fi_strerror(-ret));
    goto out_close_domain;
  }
  /* Oversubscribed ranks sleep on the CQ's descriptor instead of spinning
   * (ofi_wait_fd); a provider without FI_WAIT_FD gets a plain CQ and the
   * engine yields instead. */
  e->wait_fd = -1;
  memset(&cq_attr, 0, sizeof cq_attr);
  cq_attr.format = FI_CQ_FORMAT_TAGGED;
  cq_attr.wait_obj = e->yield ? FI_WAIT_FD : FI_WAIT_NONE;
  ret = fi_cq_open(e->domain, &cq_attr, &e->cq, NULL);
  if (ret == 0 && e->yield && fi_control(&e->cq->fid, FI_GETWAIT, &e->wait_fd) != 0) {
    e->wait_fd = -1;
  } else if (ret && e->yield) {
    DUET_INFO(DUET_SUB_NET, "ofi: provider %s has no FI_WAIT_FD completion queue (%s); yielding",
              e->info->fabric_attr->prov_name, fi_strerror(-ret));
    cq_attr.wait_obj = FI_WAIT_NONE;
    ret = fi_cq_open(e->domain, &cq_attr, &e->cq, NULL);
  }
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_cq_open: %s", fi_strerror(-ret));
    goto out_close_av;
  }
  ret = fi_endpoint(e->domain, e->info, &e->ep, NULL);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_endpoint: %s", fi_strerror(-ret));
    goto out_close_cq;
  }
  ret = fi_ep_bind(e->ep, &e->av->fid, 0);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_ep_bind(av): %s", fi_strerror(-ret));
    goto out_close_endpoint;
  }
  ret = fi_ep_bind(e->ep, &e->cq->fid, FI_TRANSMIT | FI_RECV);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_ep_bind(cq): %s", fi_strerror(-ret));
    goto out_close_endpoint;
  }
  ofi_unique_name(e);
  ret = fi_enable(e->ep);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_enable: %s", fi_strerror(-ret));
    goto out_close_endpoint;
  }
  *out = (duet__tp_ep_t *)e;
  return DUET_SUCCESS;

out_close_endpoint:
  ofi_close_fid(&e->ep->fid, "ep");
out_close_cq:
  ofi_close_fid(&e->cq->fid, "cq");
out_close_av:
  ofi_close_fid(&e->av->fid, "av");
out_close_domain:
  ofi_close_fid(&e->domain->fid, "domain");
out_close_fabric:
  ofi_close_fid(&e->fabric->fid, "fabric");
out_free_info:
  fi_freeinfo(e->info);
out_free_ep:
  free(e);
  return st;
}

static duet_status_t ofi_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf) {
  ofi_ep_t *e = (ofi_ep_t *)ep;
  size_t len = DUET_TP_ADDR_MAX;
  int ret = fi_getname(&e->ep->fid, addr, &len);
  if (ret) {
    duet__tp_seterr(errbuf, "ofi", "fi_getname: %s (address of %zu bytes, room for %d)",
                    fi_strerror(-ret), len, DUET_TP_ADDR_MAX);
    return DUET_ERR_TRANSPORT;
  }
  *addrlen = len;
  return DUET_SUCCESS;
}

/* Exchange one zero-byte message with every peer so that connections exist
 * before the first collective. */
static duet_status_t ofi_warmup(ofi_ep_t *e, char *errbuf) {
  int n = e->npeers;
  double t0 = ofi_now(), deadline = t0 + e->warm_sec;
  duet_status_t st;

  e->warm = calloc(2 * (size_t)n, sizeof *e->warm);
  if (!e->warm) {
    duet__tp_seterr(errbuf, "ofi", "insert_peers: out of memory for %d warm-up requests", 2 * n);
    return DUET_ERR_NO_MEMORY;
  }
  /* receives first, then sends; each post retries while the provider is busy */
  for (int i = 0; i < 2 * n; i++) {
    int peer = i % n, is_recv = i < n;
    duet__tp_req_t *req = &e->warm[2 * peer + !is_recv];
    while ((st = ofi_post(e, is_recv, peer, NULL, 0, OFI_TAG_WARMUP, req, errbuf)) ==
           DUET_IN_PROGRESS) {
      if (ofi_now() > deadline) {
        duet__tp_seterr(errbuf, "ofi", "warm-up: could not post a %s for peer %d within %g s",
                        is_recv ? "receive" : "send", peer, e->warm_sec);
        return DUET_ERR_TIMEOUT;
      }
    }
    if (st != DUET_SUCCESS)
      return st;
  }
  for (int next = 0;;) {
    while (next < 2 * n && e->warm[next].done) {
      if (e->warm[next].status != DUET_SUCCESS) {
        duet__tp_seterr(errbuf, "ofi", "warm-up %s peer %d failed: %s",
                        next % 2 ? "send to" : "recv from", next / 2,
                        errbuf ? errbuf : "see the log");
        return e->warm[next].status;
      }
      next++;
    }
    if (next == 2 * n)
      break;
    if (ofi_now() > deadline) {
      duet__tp_seterr(errbuf, "ofi", "warm-up: peer %d did not %s within %g s", next / 2,
                      next % 2 ? "accept our message" : "send its message", e->warm_sec);
      return DUET_ERR_TIMEOUT;
    }
    st = ofi_progress_ep(e, errbuf);
    if (st < 0)
      return st;
  }
  DUET_INFO(DUET_SUB_NET, "ofi: connected to %d peers in %.3f s", n, ofi_now() - t0);
  if (e->shm_name[0] && shm_unlink(e->shm_name) != 0)
    DUET_WARN(DUET_SUB_NET, "ofi: shm_unlink(%s): %s", e->shm_name, strerror(errno));
  return DUET_SUCCESS;
}

static duet_status_t ofi_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                      size_t stride, const size_t *addrlens, char *errbuf) {
  ofi_ep_t *e = (ofi_ep_t *)ep;
  (void)addrlens; /* the provider knows its address format */

  if (e->peers) {
    duet__tp_seterr(errbuf, "ofi", "insert_peers: called twice");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (npeers <= 0) {
    duet__tp_seterr(errbuf, "ofi", "insert_peers: npeers %d", npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  e->peers = calloc((size_t)npeers, sizeof *e->peers);
  if (!e->peers) {
    duet__tp_seterr(errbuf, "ofi", "insert_peers: out of memory for %d peers", npeers);
    return DUET_ERR_NO_MEMORY;
  }
  for (int k = 0; k < npeers; k++) {
    int ret =
        fi_av_insert(e->av, (const char *)addrs + (size_t)k * stride, 1, &e->peers[k], 0, NULL);
    if (ret != 1) {
      duet__tp_seterr(errbuf, "ofi", "fi_av_insert(peer %d): %s", k,
                      ret < 0 ? fi_strerror(-ret) : "address rejected");
      return DUET_ERR_TRANSPORT;
    }
  }
  e->npeers = npeers;
  if (e->rndv_min) {
    duet_status_t st = ofi_post_ctl_slots(e, errbuf);
    if (st != DUET_SUCCESS)
      return st;
  }
  return ofi_warmup(e, errbuf);
}

static void ofi_close(duet__tp_ep_t *ep) {
  ofi_ep_t *e = (ofi_ep_t *)ep;
  if (!e)
    return;
  ofi_close_fid(&e->ep->fid, "ep");
  for (int i = 0; i < OFI_MR_CACHE; i++)
    if (e->mrs[i].mr)
      ofi_close_fid(&e->mrs[i].mr->fid, "cached mr");
  /* abandoned operations may still hold uncached registrations */
  for (ofi_chunk_t *ch = e->chunks; ch; ch = ch->next)
    for (int i = 0; i < OFI_CTX_CHUNK; i++)
      if (ch->ctx[i].own_mr)
        ofi_close_fid(&ch->ctx[i].own_mr->fid, "uncached mr");
  ofi_close_fid(&e->cq->fid, "cq");
  ofi_close_fid(&e->av->fid, "av");
  ofi_close_fid(&e->domain->fid, "domain");
  ofi_close_fid(&e->fabric->fid, "fabric");
  fi_freeinfo(e->info);
  while (e->chunks) {
    ofi_chunk_t *ch = e->chunks;
    e->chunks = ch->next;
    free(ch);
  }
  free(e->warm);
  free(e->peers);
  free(e);
}

/* The provider's queues, less the receives the rendezvous keeps posted. */
static void ofi_queue_sizes(duet__tp_ep_t *ep, size_t *sends, size_t *recvs) {
  ofi_ep_t *e = (ofi_ep_t *)ep;
  *sends = e->info->tx_attr->size;
  *recvs = e->info->rx_attr->size > e->ctl_slots ? e->info->rx_attr->size - e->ctl_slots : 1;
}

const duet__tp_ops_t duet__tp_ofi = {
    .size = sizeof(duet__tp_ops_t),
    .name = "ofi",
    .open = ofi_open,
    .get_addr = ofi_get_addr,
    .insert_peers = ofi_insert_peers,
    .isend = ofi_isend,
    .irecv = ofi_irecv,
    .progress = ofi_progress,
    .wait_fd = ofi_wait_fd,
    .close = ofi_close,
    .queue_sizes = ofi_queue_sizes,
};
