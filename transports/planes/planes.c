/*
 * planes.c - an HPN of two or more planes (DESIGN.md section 4): one endpoint
 * of the provider's transport per plane, DUET_HPN_IFACE=hpn0,hpn1.
 *
 * Striping. A message under PL_SPREAD_MIN bytes goes on plane 0; a larger
 * one goes whole on a plane chosen by its tag (the low bits of a tag count
 * the messages of a schedule, so the chunks of a pipelined transfer
 * alternate planes); from PL_SPLIT_MIN bytes it is cut into one part per
 * plane. Both sides compute the same mapping from the tag and the length
 * (a receive's length is the message's: duet posts exact lengths), and each
 * plane keeps the inner transport's order per (peer, tag).
 *
 * Lengths that differ. A receive posted for another length than its
 * message's (ranks called with different counts) may lie on other planes
 * than the message, where neither would ever complete. So a receive that
 * has waited PL_ASK_NS tells its sender once (WAITING: tag, length). If the
 * message under that tag lies on other planes or is longer, the sender
 * fails it and says so (NAK_RECV); a sender that has not posted it yet
 * keeps the notice (up to PL_KEEP, for PL_KEEP_NS) and fails the send when
 * it comes, sending nothing. The receiver fails its receive: its parts on
 * planes the message has no part on stay posted with the inner transport
 * (which cannot cancel; the operation is then never reused), and it drains
 * the message's parts that no receive part meets (pl_drain). Both callers
 * hear of the failure (DUET_ERR_MISMATCH) only once the message's transfers
 * have ended (a receive part left posted meets none). Where the planes
 * agree, the inner transport finds the mismatch, and the receiver answers
 * NAK_SEND instead of an ack. Each side acts on these notices inside duet:
 * a rank whose own call has already returned (a copied send; a receive
 * that failed first) does its part at its next call, so a peer that it
 * then waits for outside duet still waits for the deadline.
 *
 * Failover. A plane whose transfer fails (a reset connection, an error of
 * its endpoint) is dead for this process: its endpoint is closed, which
 * abandons its transfers and tells the peers' endpoints, and every peer gets
 * a DOWN notice on the live planes. Parts of a dead plane move to a live one
 * (pl_map). The receiver decides: it reposts its unfinished parts at once;
 * the sender resends the parts it had put on that plane only once the peer's
 * DOWN notice has arrived, so the two sides post a moved part in the same
 * order on its new plane (parts still on their own plane first, then the
 * moved ones in part order).
 *
 * Acknowledgements. A sender cannot know what a failed plane delivered, so
 * it keeps every send until the receiver acknowledges it (ACK notices, on
 * every live plane, so that one lost plane loses none). Sends of up to
 * PL_COPY_MAX bytes are copied into the peer's arena and their caller's
 * request completes without waiting; their acks are batched (a full notice,
 * PL_LAZY_BYTES of them, every PL_LAZY_TICKS progress calls, before the
 * endpoint sleeps, or with an urgent one). A larger send completes at its
 * ack, one message later than a single plane would complete it; its receive
 * completes for its caller only once that ack is written on a plane
 * (pl_settle), since a receiver that goes on outside duet would leave it
 * unsent (a lane still connecting) and its sender waiting until the
 * receiver's next call. After a plane is lost the receiver acknowledges what
 * it completed before it says so, and takes again every part of the lost
 * plane of a message still incomplete, so that every part resent finds its
 * receive (pl_handle_down).
 *
 * Closing. An endpoint that closes says BYE on every plane first, to every
 * peer it exchanged messages or notices with. A peer's connection ending after its BYE
 * on that plane (which follows everything it sent there) is its leaving,
 * not a lost plane.
 *
 * Idle planes. A plane with no transfer in flight is polled every
 * PL_IDLE_POLL progress calls (notices are rare there), and after a sleep.
 *
 * Silent planes. A plane that passes nothing (a link down without a reset)
 * is found by probing (pl_check_stalls, params->stall_ms from
 * DUET_PLANE_TIMEOUT_MS) and lost as above. The kernel's TCP_USER_TIMEOUT
 * would find it too, but also fails a connection whose receiver does not
 * read for that long (a zero window), which a compute phase does.
 *
 * What is not handled: with every plane dead the endpoint fails as a single
 * one would; a peer that crashes (no BYE) takes the planes down with it
 * here, which fails what is in flight to the others too (DUET_ERR_REMOTE:
 * a rank is gone), as a crashed rank fails the job anyway.
 *
 * Control notices travel under one tag of a layered transport's space (bits
 * 63, 62 and 61 set, comm.h), one receive posted per peer and plane.
 * Operations and notice buffers come from free lists that grow and are kept
 * until close. One thread at a time per endpoint.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "transport.h"

#define PL_MAX 4                   /* planes */
#define PL_SPLIT_MIN (128 * 1024)  /* messages from here on are cut into parts */
#define PL_SPREAD_MIN (16 * 1024)  /* smaller ones all go on plane 0 */
#define PL_COPY_MAX (64 * 1024)    /* sends up to here are copied: the caller does not wait */
#define PL_LAZY_BYTES (256 * 1024) /* copied bytes a receiver may leave unacknowledged */
#define PL_LAZY_TICKS 64           /* progress calls between flushes of lazy acks */
#define PL_TAG_CTL UINT64_C(0xE0000000706C616E) /* a layered transport's tag: "plan" */
#define PL_CTL_MAGIC 0x706c6e31u
#define PL_CTL_TAGS 62
#define PL_ADDR_MAGIC 0x50 /* 'P' */
#define PL_CHUNK 64        /* operations / notice buffers allocated at a time */
#define PL_OPS_CHUNK 256   /* operations allocated at a time */
/* Copies go to a per-peer arena of PL_ARENA_PAGES pages of 4 KiB, made at
 * the first copy to that peer, so steady traffic allocates nothing. A send
 * finding no room there is refused with DUET_IN_PROGRESS (busy: progress,
 * which brings the peer's acks, and post again): flow control, as a full
 * socket buffer is. */
#define PL_PAGE 4096
#define PL_ARENA_PAGES 128
/* A plane with nothing in flight but notice receives is polled every this
 * many progress calls. */
#define PL_IDLE_POLL 16

enum { PL_SEND, PL_RECV };
/* How long a receive waits before it tells its sender its length, how many
 * such notices a sender keeps for messages not posted yet, and how long. */
#define PL_ASK_NS 100000000ull
#define PL_KEEP 64
#define PL_KEEP_NS 60000000000ull

enum {
  PL_ACK = 1,
  PL_DOWN = 2,
  PL_BYE = 3,
  PL_PROBE = 4,
  PL_PROBE_ACK = 5,
  PL_WAITING = 6,  /* a receive waits: tags[0] its tag, tags[1] its length */
  PL_NAK_SEND = 7, /* the receive under tags[0] (tags[1] bytes) failed: not its message's length */
  PL_NAK_RECV = 8  /* the message under tags[0] (tags[1] bytes) does not fit the receive of
                      tags[2] bytes; tags[3]: it was sent */
};
/* A part's state. WAIT: its plane is dead here, and (send) the peer has not
 * said so yet. RETRY: the inner transport was busy; post again. LEFT: a
 * receive part on a plane that its message has no part on, failed and left
 * posted with the inner transport (which cannot cancel). */
enum { PART_IDLE, PART_POSTED, PART_DONE, PART_WAIT, PART_RETRY, PART_LEFT };

typedef struct pl_ctl {
  uint32_t magic;
  uint16_t kind; /* PL_ACK: n tags; PL_DOWN: n is the sender's dead mask; PL_BYE: closing;
                    PL_PROBE, PL_PROBE_ACK: tags[0] is the probe's number; the others above */
  uint16_t n;
  uint64_t tags[PL_CTL_TAGS];
} pl_ctl_t;

typedef struct pl_part {
  duet__tp_req_t r;
  size_t off, len;
  uint64_t since_ns; /* when it was posted (with stall detection) */
  uint8_t plane;     /* the plane it is (or was last) posted on */
  uint8_t state;
} pl_part_t;

typedef struct pl_op {
  struct pl_op *next, *prev; /* active or parked list, in post order */
  duet__tp_req_t *req;       /* the caller's; NULL once completed */
  int kind, peer, nparts, acked, parked;
  uint64_t tag;
  uint8_t *buf; /* the caller's buffer, or its copy in the peer's arena */
  size_t len;
  duet_status_t status;
  pl_part_t part[PL_MAX];
  int copy_page, copy_pages; /* the copy's pages in the peer's arena; 0 pages: none */
  uint64_t seen_ns;          /* a receive: when pl_ask_waiting first saw it (0: not yet) */
  int asked;                 /* a receive: it has told its sender its length */
  int told;                  /* a receive: its sender knows of its mismatch */
  uint64_t ack_seq;          /* a receive in the acking list: its ack's notice (pl_peer_t) */
} pl_op_t;

typedef struct pl_kept { /* a WAITING notice for a message not sent yet */
  int peer;
  uint64_t tag, len;
  uint64_t ns; /* when it came; 0: a free entry */
} pl_kept_t;

typedef struct pl_ctl_slot { /* a notice being sent, or a posted notice receive */
  struct pl_ctl_slot *next;
  duet__tp_req_t r;
  int plane, posted, peer;
  uint64_t seq; /* an ack notice being sent: its number (pl_peer_t's acks_sent) */
  pl_ctl_t msg;
} pl_ctl_slot_t;

typedef struct pl_peer {
  uint8_t tx_dead;           /* planes this peer said it lost */
  uint8_t bye;               /* planes on which it said it is closing: what it sent there
                                has arrived, and their failures are its leaving */
  int nacks, queued, urgent; /* tags to acknowledge; in ackq; one is urgent */
  size_t lazy_bytes;         /* bytes of the copied messages among them */
  uint64_t acks_sent;        /* ack notices posted to it, numbered from 1 */
  uint64_t acks_written;     /* the highest of them written on some plane */
  uint64_t acks[PL_CTL_TAGS];
  pl_ctl_slot_t rx[PL_MAX]; /* its notices, per plane */
  uint8_t *arena;           /* copies of the sends to it */
  /* stall detection: the probe in flight (0: none), the planes it went on
   * and those its answers came back on, when the first came back, and
   * until when no new probe is sent */
  uint64_t probe_seq, probe_ns, back_ns, quiet_ns;
  uint8_t probe_sent, probe_back;
  uint8_t touched; /* messages or notices went either way with this peer: it gets a BYE */
  uint64_t pages[PL_ARENA_PAGES / 64]; /* the arena's pages in use */
} pl_peer_t;

typedef struct pl_list {
  pl_op_t *head, *tail;
} pl_list_t;

typedef struct pl_ep {
  const duet__tp_ops_t *in;
  int n, npeers;
  duet__tp_ep_t *ep[PL_MAX];
  char iface[PL_MAX][64];
  char perr[PL_MAX][DUET_TP_ERRLEN]; /* every plane call's errbuf: a transport may keep it */
  uint8_t dead;                      /* planes dead here */
  uint8_t down;                      /* planes whose death is still to be handled */
  duet_status_t lost_st[PL_MAX];     /* why each lost plane was lost (0: a peer said so) */
  char lost_why[DUET_TP_ERRLEN];     /* the plane's error when it was lost */
  duet_status_t failed;
  char why[DUET_TP_ERRLEN];
  pl_peer_t *peers;
  int *ackq, nackq; /* peers with acks to send */
  int *hot, nhot;   /* the touched peers (pl_touch), whose notices are read on every call */
  pl_list_t active; /* operations with transfers to watch */
  pl_list_t parked; /* copied sends done for their caller, waiting for an ack */
  pl_list_t acking; /* receives done but for their caller, until their ack is written */
  pl_op_t *free_ops;
  int busy[PL_MAX]; /* data and notice transfers in flight per plane */
  int awaiting;     /* sends whose caller waits for their ack */
  pl_kept_t kept[PL_KEEP];
  int nkept;        /* entries of kept in use */
  uint8_t sink[8];  /* where drained messages go (pl_drain) */
  int poll_all;     /* poll idle planes too: after a sleep, or on the tick */
  unsigned tick;
  uint64_t stall_ns; /* params->stall_ms; 0: no stall detection */
  pl_ctl_slot_t *ctl_busy, *ctl_free;
  void **chunks;
  int nchunks;
  int epfd, epin[PL_MAX]; /* wait_fd: the planes' descriptors, nested */
  char *errbuf;
} pl_ep_t;

static uint64_t pl_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int pl_live(const pl_ep_t *e, uint8_t dead) {
  return __builtin_popcount((unsigned)(~dead) & ((1u << e->n) - 1));
}

/* Where a part whose own plane is p goes when the planes in dead are lost:
 * p itself, else the live planes in turn; -1 with none left. */
static int pl_map(const pl_ep_t *e, uint8_t dead, int p) {
  int live[PL_MAX], k = 0;
  if (!(dead & (1u << p)))
    return p;
  for (int i = 0; i < e->n; i++)
    if (!(dead & (1u << i)))
      live[k++] = i;
  return k ? live[p % k] : -1;
}

/* Where a message of len bytes under tag goes while every plane lives: -1,
 * cut into one part per plane; else the plane it goes on whole (small
 * messages on plane 0, so the others stay idle, polled rarely; larger ones
 * by tag). */
static int pl_layout(const pl_ep_t *e, size_t len, uint64_t tag) {
  return len >= PL_SPLIT_MIN && e->n > 1 ? -1
         : len < PL_SPREAD_MIN           ? 0
                                         : (int)(tag % (uint64_t)e->n);
}

/* The plane part i of op goes on while every plane lives. */
static int pl_own_plane(const pl_ep_t *e, const pl_op_t *op, int i) {
  return op->nparts > 1 ? i : pl_layout(e, op->len, op->tag);
}

static int pl_grow(pl_ep_t *e, void *mem) {
  void **c = realloc(e->chunks, (size_t)(e->nchunks + 1) * sizeof(*c));
  if (!c) {
    free(mem);
    return -1;
  }
  e->chunks = c;
  e->chunks[e->nchunks++] = mem;
  return 0;
}

static pl_op_t *pl_op_get(pl_ep_t *e) {
  pl_op_t *op;
  if (!e->free_ops) {
    pl_op_t *c = calloc(PL_OPS_CHUNK, sizeof(*c));
    if (!c || pl_grow(e, c) != 0)
      return NULL;
    for (int i = 0; i < PL_OPS_CHUNK; i++) {
      c[i].next = e->free_ops;
      e->free_ops = &c[i];
    }
  }
  op = e->free_ops;
  e->free_ops = op->next;
  op->next = op->prev = NULL;
  return op;
}

/* Take n free pages in a row from peer's arena (first fit): their index, or
 * -1 (no arena and none can be made, or no room). */
static int pl_pages_take(pl_ep_t *e, int peer, int n) {
  pl_peer_t *pp = &e->peers[peer];
  if (!pp->arena && !(pp->arena = malloc((size_t)PL_ARENA_PAGES * PL_PAGE)))
    return -1;
  for (int at = 0, run = 0; at < PL_ARENA_PAGES; at++) {
    run = (pp->pages[at / 64] >> (at % 64)) & 1 ? 0 : run + 1;
    if (run == n) {
      for (int k = at - n + 1; k <= at; k++)
        pp->pages[k / 64] |= UINT64_C(1) << (k % 64);
      return at - n + 1;
    }
  }
  return -1;
}

static void pl_pages_give(pl_ep_t *e, pl_op_t *op) {
  pl_peer_t *pp = &e->peers[op->peer];
  for (int k = op->copy_page; k < op->copy_page + op->copy_pages; k++)
    pp->pages[k / 64] &= ~(UINT64_C(1) << (k % 64));
  op->copy_pages = 0;
}

static pl_ctl_slot_t *pl_slot_get(pl_ep_t *e) {
  pl_ctl_slot_t *s;
  if (!e->ctl_free) {
    pl_ctl_slot_t *c = calloc(PL_CHUNK, sizeof(*c));
    if (!c || pl_grow(e, c) != 0)
      return NULL;
    for (int i = 0; i < PL_CHUNK; i++) {
      c[i].next = e->ctl_free;
      e->ctl_free = &c[i];
    }
  }
  s = e->ctl_free;
  e->ctl_free = s->next;
  return s;
}

static void pl_list_add(pl_list_t *l, pl_op_t *op) {
  op->next = NULL;
  op->prev = l->tail;
  if (l->tail)
    l->tail->next = op;
  else
    l->head = op;
  l->tail = op;
}

static void pl_list_del(pl_list_t *l, pl_op_t *op) {
  if (op->prev)
    op->prev->next = op->next;
  else
    l->head = op->next;
  if (op->next)
    op->next->prev = op->prev;
  else
    l->tail = op->prev;
  op->next = op->prev = NULL;
}

static void pl_retire(pl_ep_t *e, pl_op_t *op) {
  pl_list_del(op->parked ? &e->parked : op->ack_seq ? &e->acking : &e->active, op);
  if (op->copy_pages)
    pl_pages_give(e, op);
  op->next = e->free_ops;
  e->free_ops = op;
}

/* A transfer on plane q failed with st (the plane's transport said why in
 * its errbuf), or a peer lost the plane (st 0): the plane is lost, handled
 * by pl_handle_down at the next safe point. */
static void pl_lose(pl_ep_t *e, int q, duet_status_t st, const char *what) {
  if ((e->dead | e->down) & (1u << q))
    return;
  e->down |= (uint8_t)(1u << q);
  e->lost_st[q] = st;
  if (st)
    snprintf(e->lost_why, sizeof e->lost_why, "%s", e->perr[q]);
  DUET_WARN(DUET_SUB_NET,
            "planes: plane %d (%s) lost (%s%s%s%s%s); its traffic moves to the others", q,
            e->iface[q], what, st ? ": " : "", st ? duet_strerror(st) : "",
            st && e->perr[q][0] ? ": " : "", st ? e->perr[q] : "");
}

/* Post part i of op on plane q (a live plane here). */
static void pl_post_part(pl_ep_t *e, pl_op_t *op, int i, int q) {
  pl_part_t *p = &op->part[i];
  duet_status_t rc;
  p->plane = (uint8_t)q;
  p->state = PART_POSTED;
  p->since_ns = e->stall_ns ? pl_now_ns() : 0;
  p->r.done = 0;
  e->busy[q]++;
  if (op->kind == PL_SEND)
    rc = e->in->isend(e->ep[q], op->peer, op->buf ? op->buf + p->off : NULL, p->len, op->tag, &p->r,
                      e->perr[q]);
  else
    rc = e->in->irecv(e->ep[q], op->peer, op->buf ? op->buf + p->off : NULL, p->len, op->tag, &p->r,
                      e->perr[q]);
  if (rc == DUET_IN_PROGRESS) {
    p->state = PART_RETRY;
    e->busy[q]--;
  } else if (rc != DUET_SUCCESS)
    duet__tp_complete(&p->r, rc, 0); /* found by the next scan: the plane is lost */
}

/* Post (or leave waiting) the parts of op listed in mask, on the planes the
 * dead set dmap gives them: first those that stay on their own plane, then
 * the moved ones, each group in part order. The peer posts them in the
 * same order. */
static void pl_place(pl_ep_t *e, pl_op_t *op, unsigned mask, uint8_t dmap) {
  for (int moved = 0; moved < 2; moved++)
    for (int i = 0; i < op->nparts; i++) {
      int own = pl_own_plane(e, op, i), q;
      if (!(mask & (1u << i)) || (int)((dmap >> own) & 1) != moved)
        continue;
      q = pl_map(e, dmap, own);
      if (q < 0 || (e->dead & (1u << q))) {
        op->part[i].plane = (uint8_t)(q < 0 ? own : q);
        op->part[i].state = PART_WAIT;
      } else {
        pl_post_part(e, op, i, q);
      }
    }
}

/* Messages or notices go between this endpoint and peer: it gets a BYE at
 * close, and its notice receives are looked at on every progress call
 * (those of the other peers every PL_IDLE_POLL calls: what an untouched
 * peer can send, a DOWN or a probe of a message not yet received, waits
 * that long at most). */
static void pl_touch(pl_ep_t *e, int peer) {
  if (!e->peers[peer].touched) {
    e->peers[peer].touched = 1;
    e->hot[e->nhot++] = peer;
  }
}

/* Send one notice to peer on the planes in mask that are live here and that
 * the peer has not lost; the planes it went on. */
static uint8_t pl_notice_on(pl_ep_t *e, int peer, uint8_t mask, int kind, int n,
                            const uint64_t *tags) {
  uint8_t sent = 0;
  const uint64_t seq = kind == PL_ACK ? ++e->peers[peer].acks_sent : 0;
  if (kind != PL_BYE)
    pl_touch(e, peer);
  for (int q = 0; q < e->n; q++) {
    pl_ctl_slot_t *s;
    duet_status_t rc;
    if (!((mask >> q) & 1) ||
        (((e->dead | e->down | e->peers[peer].tx_dead | e->peers[peer].bye) >> q) & 1))
      continue;
    s = pl_slot_get(e);
    if (!s) {
      e->failed = DUET_ERR_NO_MEMORY;
      snprintf(e->why, sizeof e->why, "planes: out of memory for a notice");
      return sent;
    }
    s->msg.magic = PL_CTL_MAGIC;
    s->msg.kind = (uint16_t)kind;
    s->msg.n = (uint16_t)n;
    if (tags && n > 0)
      memcpy(s->msg.tags, tags, (size_t)n * sizeof(*tags));
    s->plane = q;
    s->peer = peer;
    s->seq = seq;
    s->r.done = 0;
    rc = e->in->isend(e->ep[q], peer, &s->msg,
                      offsetof(pl_ctl_t, tags) + (tags ? (size_t)n * sizeof(*tags) : 0), PL_TAG_CTL,
                      &s->r, e->perr[q]);
    if (rc != DUET_SUCCESS) {
      s->next = e->ctl_free;
      e->ctl_free = s;
      pl_lose(e, q, rc == DUET_IN_PROGRESS ? DUET_ERR_TRANSPORT : rc, "notice");
      continue;
    }
    s->next = e->ctl_busy;
    e->ctl_busy = s;
    e->busy[q]++;
    sent |= (uint8_t)(1u << q);
  }
  if (seq && !sent) /* no plane can carry it: nothing will come of waiting */
    e->peers[peer].acks_written = seq;
  return sent;
}

/* The same on every plane. */
static void pl_notice(pl_ep_t *e, int peer, int kind, int n, const uint64_t *tags) {
  (void)pl_notice_on(e, peer, 0xff, kind, n, tags);
}

/* The same on one plane, the first that can carry it: for a notice that
 * must arrive once. */
static void pl_notice_once(pl_ep_t *e, int peer, int kind, int n, const uint64_t *tags) {
  unsigned can = ~(unsigned)(e->dead | e->down | e->peers[peer].tx_dead | e->peers[peer].bye) &
                 ((1u << e->n) - 1);
  if (can)
    (void)pl_notice_on(e, peer, (uint8_t)(can & -can), kind, n, tags);
}

static void pl_post_ctl(pl_ep_t *e, int peer, int q) {
  pl_ctl_slot_t *s = &e->peers[peer].rx[q];
  duet_status_t rc;
  s->plane = q;
  s->r.done = 0;
  s->posted = 1;
  rc = e->in->irecv(e->ep[q], peer, &s->msg, sizeof(s->msg), PL_TAG_CTL, &s->r, e->perr[q]);
  if (rc != DUET_SUCCESS) {
    s->posted = 0;
    pl_lose(e, q, rc == DUET_IN_PROGRESS ? DUET_ERR_TRANSPORT : rc, "notice receive");
  }
}

static void pl_ack_flush(pl_ep_t *e, int all);

/* Planes lost since the last call: close them, move their receives, tell
 * every peer. */
static void pl_handle_down(pl_ep_t *e) {
  while (e->down) {
    uint8_t lost = e->down;
    e->down = 0;
    for (int q = 0; q < e->n; q++) {
      if (!((lost >> q) & 1))
        continue;
      e->dead |= (uint8_t)(1u << q);
      if (e->epfd >= 0 && e->epin[q] >= 0)
        (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->epin[q], NULL);
      e->epin[q] = -1;
      e->in->close(e->ep[q]); /* abandons its transfers; the peers see it go */
      e->ep[q] = NULL;
      e->busy[q] = 0;
      for (int k = 0; k < e->npeers; k++)
        e->peers[k].rx[q].posted = 0;
    }
    for (pl_ctl_slot_t **pp = &e->ctl_busy; *pp;) { /* notices abandoned */
      pl_ctl_slot_t *s = *pp;
      if ((e->dead >> s->plane) & 1) {
        *pp = s->next;
        s->next = e->ctl_free;
        e->ctl_free = s;
      } else {
        pp = &s->next;
      }
    }
    if (pl_live(e, e->dead) == 0) {
      /* A rank that dies closes its connections on every plane at once:
       * when every plane went that way (or a peer said it lost it), say
       * that a rank is gone (DESIGN section 7), not that the network
       * failed. */
      int remote = 0, other = 0, gone;
      for (int q = 0; q < e->n; q++) {
        remote += e->lost_st[q] == DUET_ERR_REMOTE;
        other += e->lost_st[q] != DUET_ERR_REMOTE && e->lost_st[q] != DUET_SUCCESS;
      }
      gone = remote > 0 && other == 0;
      e->failed = gone ? DUET_ERR_REMOTE : DUET_ERR_TRANSPORT;
      snprintf(e->why, sizeof e->why, "planes: every plane failed%s%.120s",
               gone ? ", each because a remote rank closed it (failed or aborted): " : "",
               gone ? e->lost_why : "");
      return;
    }
    /* The sender resends every part it put on a lost plane of each message
     * not acknowledged when the DOWN notice reaches it. So the receiver
     * takes all of them again, the parts already in too (the same bytes to
     * the same place: the message is not complete yet), and acknowledges
     * every message it completed before the notice goes (on each plane an
     * ack travels ahead of the DOWN). A resent part that no receive took
     * would stay in the inner transport and be matched by a later message
     * under the same tag (tags come round again), with the wrong bytes. */
    for (pl_op_t *op = e->active.head; op; op = op->next) {
      unsigned move = 0;
      for (int i = 0; i < op->nparts; i++) {
        pl_part_t *p = &op->part[i];
        if (!((e->dead >> p->plane) & 1))
          continue;
        if (p->state == PART_POSTED || p->state == PART_RETRY ||
            (op->kind == PL_RECV && p->state == PART_DONE))
          p->state = PART_WAIT; /* abandoned with the plane, or to be taken again */
        if (op->kind == PL_RECV && p->state == PART_WAIT)
          move |= 1u << i;
      }
      if (move)
        pl_place(e, op, move, e->dead);
    }
    pl_ack_flush(e, 1);
    for (int k = 0; k < e->npeers; k++)
      pl_notice(e, k, PL_DOWN, e->dead, NULL);
  }
}

/* The peer lost the planes in mask: resend what went there. */
static void pl_peer_down(pl_ep_t *e, int peer, uint8_t mask) {
  pl_peer_t *pp = &e->peers[peer];
  uint8_t fresh = (uint8_t)(mask & ~pp->tx_dead & ((1u << e->n) - 1));
  if (!fresh)
    return;
  /* a plane the peer lost is lost here too */
  for (int q = 0; q < e->n; q++)
    if ((fresh >> q) & 1)
      pl_lose(e, q, DUET_SUCCESS, "a peer lost it");
  pl_handle_down(e);
  pp->tx_dead |= fresh;
  for (pl_op_t *op = e->parked.head, *next; op; op = next) { /* copies to resend */
    next = op->next;
    if (op->peer == peer) {
      pl_list_del(&e->parked, op);
      op->parked = 0;
      pl_list_add(&e->active, op);
    }
  }
  for (pl_op_t *op = e->active.head; op; op = op->next) {
    unsigned move = 0;
    if (op->kind != PL_SEND || op->peer != peer || op->acked)
      continue;
    for (int i = 0; i < op->nparts; i++)
      if ((pp->tx_dead >> op->part[i].plane) & 1)
        move |= 1u << i;
    if (move)
      pl_place(e, op, move, pp->tx_dead);
  }
}

/* Acknowledge a message of len bytes. The sender of a copied one is not
 * waiting: its acknowledgement rides with the next urgent one, or goes when
 * a batch is full or holds PL_LAZY_BYTES (which bounds the sender's copies),
 * every PL_LAZY_TICKS progress calls, or before this endpoint sleeps. (A
 * sender whose arena was full waits for such a lazy ack.) */
static void pl_ack_queue(pl_ep_t *e, int peer, uint64_t tag, size_t len) {
  pl_peer_t *pp = &e->peers[peer];
  pp->acks[pp->nacks++] = tag;
  if (len <= PL_COPY_MAX)
    pp->lazy_bytes += len;
  if (pp->nacks == PL_CTL_TAGS) {
    pl_notice(e, peer, PL_ACK, pp->nacks, pp->acks);
    pp->nacks = 0;
    pp->lazy_bytes = 0;
  }
  if (len > PL_COPY_MAX || pp->lazy_bytes >= PL_LAZY_BYTES)
    pp->urgent = 1;
  if (!pp->queued) {
    pp->queued = 1;
    e->ackq[e->nackq++] = peer;
  }
}

/* Send the queued acks: the urgent ones, or all. */
static void pl_ack_flush(pl_ep_t *e, int all) {
  int keep = 0;
  for (int i = 0; i < e->nackq; i++) {
    pl_peer_t *pp = &e->peers[e->ackq[i]];
    if (!all && !pp->urgent && pp->nacks > 0) {
      e->ackq[keep++] = e->ackq[i];
      continue;
    }
    if (pp->nacks)
      pl_notice(e, e->ackq[i], PL_ACK, pp->nacks, pp->acks);
    pp->nacks = 0;
    pp->lazy_bytes = 0;
    pp->queued = 0;
    pp->urgent = 0;
  }
  e->nackq = keep;
}

/* The operation of kind with peer under tag that the peer has not
 * acknowledged yet (a receive: whose caller waits), or NULL. Parked copies
 * first: most acks are theirs. */
static pl_op_t *pl_find(pl_ep_t *e, int kind, int peer, uint64_t tag) {
  for (pl_op_t *op = e->parked.head; kind == PL_SEND && op; op = op->next)
    if (op->peer == peer && op->tag == tag)
      return op;
  for (pl_op_t *op = e->active.head; op; op = op->next)
    if (op->kind == kind && op->peer == peer && op->tag == tag && !op->acked &&
        (kind == PL_SEND || op->req))
      return op;
  return NULL;
}

static void pl_acked(pl_ep_t *e, int peer, uint64_t tag) {
  pl_op_t *op = pl_find(e, PL_SEND, peer, tag);
  if (op && op->parked)
    pl_retire(e, op);
  else if (op)
    op->acked = 1; /* settled by the scan */
}

/* Does op's caller wait for the receiver's ack (a send not copied)? */
static int pl_awaits(const pl_op_t *op) {
  return op->kind == PL_SEND && op->copy_pages == 0 && op->len > 0;
}

/* Whether a message of mlen bytes under tag fails in a receive of rlen:
 * the two lie on different planes, or the message is longer (which the
 * inner transport would find only once the message is in, and some never
 * read a message longer than every receive they wait for). */
static int pl_misfit(const pl_ep_t *e, size_t mlen, size_t rlen, uint64_t tag) {
  return mlen > rlen || pl_layout(e, mlen, tag) != pl_layout(e, rlen, tag);
}

/* The planes here that a message of len bytes under tag has parts on. */
static unsigned pl_planes_of(const pl_ep_t *e, size_t len, uint64_t tag) {
  const int l = pl_layout(e, len, tag);
  unsigned m = 0;
  for (int i = l < 0 ? 0 : l; i < (l < 0 ? e->n : l + 1); i++) {
    int q = pl_map(e, e->dead, i);
    if (q >= 0)
      m |= 1u << q;
  }
  return m;
}

/* The receive of rlen bytes at the peer under op's tag cannot take op's
 * message: op fails (once its parts have ended, pl_settle), and the peer
 * is told so, with what it needs to take in, into nothing, the parts that
 * no receive part meets there. A parked copy has ended: it goes. */
static void pl_send_misfit(pl_ep_t *e, pl_op_t *op, size_t rlen) {
  const uint64_t m[4] = {op->tag, op->len, rlen, 1};
  if (op->status == DUET_ERR_MISMATCH)
    return;
  op->status = DUET_ERR_MISMATCH;
  pl_notice_once(e, op->peer, PL_NAK_RECV, 4, m);
  if (op->parked)
    pl_retire(e, op);
}

/* Take in the message part under tag on plane q into nothing (a receive of
 * 8 bytes into e->sink, which the inner transport ends as a mismatch; of 0
 * bytes, rxm's never ended): its sender's transfer then ends. */
static void pl_drain(pl_ep_t *e, int peer, uint64_t tag, int q) {
  pl_op_t *op = pl_op_get(e);
  if (!op) {
    DUET_WARN(DUET_SUB_NET, "planes: out of memory to take in a message that failed");
    return;
  }
  memset(op, 0, sizeof(*op));
  op->kind = PL_RECV;
  op->peer = peer;
  op->tag = tag;
  op->nparts = 1;
  op->buf = e->sink;
  op->len = op->part[0].len = sizeof e->sink;
  op->asked = op->told = 1;
  pl_list_add(&e->active, op);
  pl_post_part(e, op, 0, q);
}

static void pl_settle(pl_ep_t *e, pl_op_t *op);

/* The peer's message under tag (mlen bytes; sent: it went out) does not fit
 * the receive of rlen bytes here (NAK_RECV). The receive, if its caller
 * still waits, fails: its parts on planes the message has no part on are
 * left to the inner transport (nothing comes there), the others end as the
 * inner transport ends them. The message's parts that no receive part meets
 * are drained. */
static void pl_recv_misfit(pl_ep_t *e, int peer, uint64_t tag, size_t mlen, size_t rlen, int sent) {
  const unsigned mp = pl_planes_of(e, mlen, tag), rp = pl_planes_of(e, rlen, tag);
  pl_op_t *op = pl_find(e, PL_RECV, peer, tag);
  if (op) {
    op->status = DUET_ERR_MISMATCH;
    op->told = 1;
    for (int i = 0; i < op->nparts; i++) {
      pl_part_t *p = &op->part[i];
      if ((mp >> p->plane) & 1)
        continue;
      if (p->state == PART_POSTED) {
        p->state = PART_LEFT;
        e->busy[p->plane]--;
      } else if (p->state != PART_DONE) {
        p->state = PART_DONE; /* not posted: nothing to leave */
      }
    }
    pl_settle(e, op);
  }
  for (int q = 0; sent && q < e->n; q++)
    if (((mp & ~rp) >> q) & 1)
      pl_drain(e, peer, tag, q);
}

/* A receive of len bytes under tag waits at peer (WAITING). If the message
 * does not fit it, fail both; if it is not posted yet, keep the notice for
 * it (the oldest goes when all PL_KEEP are in use). */
static void pl_peer_waits(pl_ep_t *e, int peer, uint64_t tag, uint64_t len) {
  pl_op_t *op = pl_find(e, PL_SEND, peer, tag);
  int k = 0;
  if (op) {
    if (pl_misfit(e, op->len, (size_t)len, tag))
      pl_send_misfit(e, op, (size_t)len);
    return;
  }
  for (int i = 1; i < PL_KEEP; i++)
    if (!e->kept[k].ns || (e->kept[i].ns && e->kept[i].ns < e->kept[k].ns))
      k = i;
  e->nkept += !e->kept[k].ns;
  e->kept[k] = (pl_kept_t){peer, tag, len, pl_now_ns()};
}

/* A send of len bytes to peer under tag is posted: the length of a receive
 * waiting for it that it does not fit, else SIZE_MAX (the kept notice goes
 * either way). */
static size_t pl_kept_misfit(pl_ep_t *e, int peer, uint64_t tag, size_t len) {
  for (int i = 0; i < PL_KEEP; i++) {
    pl_kept_t *k = &e->kept[i];
    if (k->ns && k->peer == peer && k->tag == tag) {
      k->ns = 0;
      e->nkept--;
      return pl_misfit(e, len, (size_t)k->len, tag) ? (size_t)k->len : SIZE_MAX;
    }
  }
  return SIZE_MAX;
}

/* Receives that have waited PL_ASK_NS tell their senders (once); kept
 * notices older than PL_KEEP_NS go. */
static void pl_ask_waiting(pl_ep_t *e) {
  const uint64_t now = pl_now_ns();
  for (pl_op_t *op = e->active.head; op; op = op->next) {
    if (op->kind != PL_RECV || !op->req || op->asked)
      continue;
    if (!op->seen_ns) {
      op->seen_ns = now;
    } else if (now - op->seen_ns >= PL_ASK_NS) {
      const uint64_t m[2] = {op->tag, op->len};
      pl_notice_once(e, op->peer, PL_WAITING, 2, m);
      op->asked = 1;
    }
  }
  for (int i = 0; e->nkept && i < PL_KEEP; i++)
    if (e->kept[i].ns && now - e->kept[i].ns >= PL_KEEP_NS) {
      e->kept[i].ns = 0;
      e->nkept--;
    }
}

/* The peer closes its endpoint: what it sent on plane q has arrived. Parts
 * still expected there from it, and its acks, will not come. */
static void pl_peer_bye(pl_ep_t *e, int peer, int q) {
  e->peers[peer].bye |= (uint8_t)(1u << q);
  for (pl_op_t *op = e->parked.head, *next; op; op = next) {
    next = op->next;
    if (op->peer == peer)
      pl_retire(e, op);
  }
  for (pl_op_t *op = e->active.head; op; op = op->next)
    for (int i = 0; op->peer == peer && i < op->nparts; i++) {
      pl_part_t *p = &op->part[i];
      if (p->state == PART_WAIT || p->state == PART_RETRY || p->state == PART_IDLE ||
          (op->kind == PL_RECV && p->state == PART_POSTED && p->plane == q)) {
        if (p->state == PART_POSTED)
          continue; /* the transport fails it when the connection closes */
        p->state = PART_DONE;
        op->status = DUET_ERR_REMOTE;
      }
    }
}

/* Handle a notice that arrived from peer. */
static void pl_ctl_in(pl_ep_t *e, int peer, pl_ctl_slot_t *s) {
  const pl_ctl_t *m = &s->msg;
  pl_touch(e, peer);
  if (s->r.len < offsetof(pl_ctl_t, tags) || m->magic != PL_CTL_MAGIC) {
    DUET_WARN(DUET_SUB_NET, "planes: peer %d sent a malformed notice (%zu bytes)", peer, s->r.len);
    return;
  }
  if (m->kind == PL_ACK) {
    size_t n = (s->r.len - offsetof(pl_ctl_t, tags)) / sizeof(uint64_t);
    for (size_t i = 0; i < n && i < m->n; i++)
      pl_acked(e, peer, m->tags[i]);
  } else if (m->kind == PL_DOWN) {
    pl_peer_down(e, peer, (uint8_t)m->n);
  } else if (m->kind == PL_BYE) {
    pl_peer_bye(e, peer, s->plane);
  } else if (m->kind == PL_PROBE && s->r.len >= offsetof(pl_ctl_t, tags) + sizeof(uint64_t)) {
    (void)pl_notice_on(e, peer, (uint8_t)(1u << s->plane), PL_PROBE_ACK, 1, m->tags);
  } else if (m->kind == PL_WAITING && s->r.len >= offsetof(pl_ctl_t, tags) + 2 * sizeof(uint64_t)) {
    pl_peer_waits(e, peer, m->tags[0], m->tags[1]);
  } else if (m->kind == PL_NAK_SEND &&
             s->r.len >= offsetof(pl_ctl_t, tags) + 2 * sizeof(uint64_t)) {
    pl_op_t *op = pl_find(e, PL_SEND, peer, m->tags[0]);
    if (op)
      pl_send_misfit(e, op, (size_t)m->tags[1]);
  } else if (m->kind == PL_NAK_RECV &&
             s->r.len >= offsetof(pl_ctl_t, tags) + 4 * sizeof(uint64_t)) {
    pl_recv_misfit(e, peer, m->tags[0], (size_t)m->tags[1], (size_t)m->tags[2], m->tags[3] != 0);
  } else if (m->kind == PL_PROBE_ACK && s->r.len >= offsetof(pl_ctl_t, tags) + sizeof(uint64_t)) {
    pl_peer_t *pp = &e->peers[peer];
    if (pp->probe_ns && m->tags[0] == pp->probe_seq) {
      if (!pp->probe_back)
        pp->back_ns = pl_now_ns();
      pp->probe_back |= (uint8_t)(1u << s->plane);
    }
  }
}

/* May op give its caller the result, and may it go? */
static void pl_settle(pl_ep_t *e, pl_op_t *op) {
  int done = 0, inflight = 0, left = 0;
  for (int i = 0; i < op->nparts; i++) {
    done += op->part[i].state == PART_DONE;
    inflight += op->part[i].state == PART_POSTED;
    left += op->part[i].state == PART_LEFT;
  }
  int gone = e->peers[op->peer].bye != 0;
  if (op->req) {
    int ready = op->kind == PL_RECV                                    ? done + left == op->nparts
                : op->acked || gone || op->status == DUET_ERR_MISMATCH ? inflight == 0
                : op->copy_pages || op->len == 0                       ? done == op->nparts
                                                                       : 0;
    if (ready && op->kind == PL_RECV && op->status == DUET_SUCCESS && op->len > PL_COPY_MAX &&
        !gone) {
      /* Its sender waits for the ack: send it now, and give the caller the
       * result once it is written (pl_scan). */
      pl_ack_queue(e, op->peer, op->tag, op->len);
      pl_ack_flush(e, 0);
      pl_list_del(&e->active, op);
      op->ack_seq = e->peers[op->peer].acks_sent;
      pl_list_add(&e->acking, op);
      return;
    }
    if (ready) {
      duet__tp_complete(op->req, op->status, op->kind == PL_RECV ? op->len : 0);
      op->req = NULL;
      e->awaiting -= pl_awaits(op);
      if (op->kind == PL_RECV && op->status == DUET_ERR_MISMATCH && !op->told) {
        const uint64_t m[2] = {op->tag, op->len};
        pl_notice_once(e, op->peer, PL_NAK_SEND, 2, m); /* in place of the ack */
      } else if (op->kind == PL_RECV && op->status != DUET_ERR_MISMATCH) {
        pl_ack_queue(e, op->peer, op->tag, op->len);
      }
    }
  }
  if (op->req || inflight > 0)
    return;
  if (left) { /* parts left with the inner transport: op is never reused */
    pl_list_del(&e->active, op);
  } else if (op->kind == PL_RECV || op->acked || gone || op->status == DUET_ERR_MISMATCH) {
    pl_retire(e, op);
  } else { /* a copied send: out of the scan until its ack */
    pl_list_del(&e->active, op);
    op->parked = 1;
    pl_list_add(&e->parked, op);
  }
}

/* Find completed transfers and notices (every peer's notices with all, else
 * the touched peers'). Returns how many it found. */
static int pl_scan(pl_ep_t *e, int all) {
  const int npeers = all ? e->npeers : e->nhot;
  int found = 0;
  /* notices first: a peer's bye explains the failures that follow it; the
   * touched peers' only, unless all (pl_touch) */
  for (int i = 0; i < npeers; i++)
    for (int q = 0, k = all ? i : e->hot[i]; q < e->n; q++) {
      pl_ctl_slot_t *s = &e->peers[k].rx[q];
      if (!s->posted || !__atomic_load_n(&s->r.done, __ATOMIC_ACQUIRE))
        continue;
      found++;
      s->posted = 0;
      if (s->r.status != DUET_SUCCESS) {
        if (!((e->peers[k].bye >> q) & 1))
          pl_lose(e, q, s->r.status, "notice receive");
        continue;
      }
      pl_ctl_in(e, k, s);
      if (!(((e->dead | e->down | e->peers[k].bye) >> q) & 1))
        pl_post_ctl(e, k, q);
    }
  for (pl_op_t *op = e->active.head, *next; op; op = next) {
    next = op->next;
    for (int i = 0; i < op->nparts; i++) {
      pl_part_t *p = &op->part[i];
      if (p->state == PART_RETRY && !((e->dead >> p->plane) & 1)) {
        pl_post_part(e, op, i, p->plane);
        found++;
      }
      if (p->state != PART_POSTED || !__atomic_load_n(&p->r.done, __ATOMIC_ACQUIRE))
        continue;
      found++;
      e->busy[p->plane]--;
      if (p->r.status == DUET_SUCCESS || p->r.status == DUET_ERR_MISMATCH) {
        p->state = PART_DONE; /* a mismatch fails the message, not the plane */
        if (op->kind == PL_RECV && p->r.status == DUET_SUCCESS && op->nparts == 1)
          op->len = p->r.len; /* a receive may hold more than the message */
        else if (p->r.status != DUET_SUCCESS || (op->kind == PL_RECV && p->r.len != p->len))
          op->status = DUET_ERR_MISMATCH;
        if (op->status == DUET_ERR_MISMATCH && op->req && e->errbuf)
          memcpy(e->errbuf, e->perr[p->plane], DUET_TP_ERRLEN);
      } else if ((e->peers[op->peer].bye >> p->plane) & 1) {
        p->state = PART_DONE; /* the peer left */
        op->status = p->r.status;
      } else {
        p->state = PART_WAIT;
        pl_lose(e, p->plane, p->r.status, op->kind == PL_SEND ? "send" : "receive");
      }
    }
    pl_settle(e, op);
  }
  for (pl_ctl_slot_t **pp = &e->ctl_busy; *pp;) {
    pl_ctl_slot_t *s = *pp;
    if (!__atomic_load_n(&s->r.done, __ATOMIC_ACQUIRE)) {
      pp = &s->next;
      continue;
    }
    if (s->r.status != DUET_SUCCESS && !((e->peers[s->peer].bye >> s->plane) & 1))
      pl_lose(e, s->plane, s->r.status, "notice");
    else if (s->r.status == DUET_SUCCESS && s->seq > e->peers[s->peer].acks_written)
      e->peers[s->peer].acks_written = s->seq;
    e->busy[s->plane]--;
    *pp = s->next;
    s->next = e->ctl_free;
    e->ctl_free = s;
  }
  for (pl_op_t *op = e->acking.head, *next; op; op = next) {
    next = op->next;
    if (e->peers[op->peer].acks_written >= op->ack_seq || e->peers[op->peer].bye) {
      duet__tp_complete(op->req, op->status, op->len);
      op->req = NULL;
      pl_retire(e, op);
      found++;
    }
  }
  return found;
}

/* Stall detection. A transfer posted on a plane for stall_ns / 2 without
 * completing makes this endpoint probe its peer on every live plane; the
 * peer answers each probe on the plane it came by. When answers have come
 * back on some planes but, stall_ns / 2 after the first, not on others,
 * those are lost: the peer is alive and reading, and they carry nothing.
 * A peer that answers on no plane is busy elsewhere (not progressing): no
 * verdict, and a new probe later. */
static void pl_check_stalls(pl_ep_t *e) {
  const uint64_t now = pl_now_ns(), half = e->stall_ns / 2;
  for (pl_op_t *op = e->active.head; op; op = op->next)
    for (int i = 0; i < op->nparts; i++) {
      pl_part_t *p = &op->part[i];
      pl_peer_t *pp = &e->peers[op->peer];
      if (p->state != PART_POSTED || now - p->since_ns < half || pp->probe_ns || now < pp->quiet_ns)
        continue;
      pp->probe_seq++;
      pp->probe_sent = pl_notice_on(e, op->peer, 0xff, PL_PROBE, 1, &pp->probe_seq);
      pp->probe_back = 0;
      pp->probe_ns = now;
    }
  for (int i = 0; i < e->nhot; i++) { /* a probed peer is touched */
    const int k = e->hot[i];
    pl_peer_t *pp = &e->peers[k];
    uint8_t silent = (uint8_t)(pp->probe_sent & ~pp->probe_back & ~e->dead);
    if (!pp->probe_ns)
      continue;
    if (!silent) { /* every plane answered */
      pp->probe_ns = 0;
      pp->quiet_ns = now + half;
    } else if (pp->probe_back && now - pp->back_ns >= half) {
      for (int q = 0; q < e->n; q++)
        if ((silent >> q) & 1)
          pl_lose(e, q, DUET_SUCCESS,
                  "a transfer stalled there, and the peer answers on another plane only");
      pp->probe_ns = 0;
    } else if (!pp->probe_back && now - pp->probe_ns >= 2 * e->stall_ns) {
      pp->probe_ns = 0; /* no answer at all: ask again */
    }
  }
}

/* Every plane is gone: fail what is left. */
static void pl_fail_all(pl_ep_t *e) {
  while (e->acking.head) { /* received whole: only the ack is lost */
    pl_op_t *op = e->acking.head;
    duet__tp_complete(op->req, op->status, op->len);
    op->req = NULL;
    pl_retire(e, op);
  }
  while (e->active.head || e->parked.head) {
    pl_op_t *op = e->active.head ? e->active.head : e->parked.head;
    if (op->req) {
      duet__tp_complete(op->req, e->failed, 0);
      e->awaiting -= pl_awaits(op);
    }
    op->req = NULL;
    pl_retire(e, op);
  }
}

static duet_status_t pl_progress(duet__tp_ep_t *ep, char *errbuf) {
  pl_ep_t *e = (pl_ep_t *)ep;
  e->errbuf = errbuf;
  if (!e->failed) {
    e->tick++;
    for (int q = 0; q < e->n; q++) {
      duet_status_t rc;
      if (((e->dead >> q) & 1) ||
          (e->busy[q] == 0 && !e->poll_all && !e->awaiting && e->tick % PL_IDLE_POLL != 0))
        continue;
      rc = e->in->progress(e->ep[q], e->perr[q]);
      if (rc < 0)
        pl_lose(e, q, rc, e->perr[q]);
    }
    if (e->stall_ns && e->tick % PL_LAZY_TICKS == 0 && pl_live(e, e->dead) > 1)
      pl_check_stalls(e);
    if ((e->active.head || e->nkept) && (e->poll_all || e->tick % PL_IDLE_POLL == 0))
      pl_ask_waiting(e);
    for (int round = 0; round < 4; round++) {
      int found = pl_scan(e, e->poll_all || e->tick % PL_IDLE_POLL == 0);
      pl_handle_down(e);
      if (!found || e->failed)
        break;
    }
    pl_ack_flush(e, e->tick % PL_LAZY_TICKS == 0);
    e->poll_all = 0;
  }
  if (e->failed) {
    pl_fail_all(e);
    duet__tp_seterr(errbuf, "planes", "%s", e->why);
    return e->failed;
  }
  return DUET_SUCCESS;
}

static duet_status_t pl_post(pl_ep_t *e, int kind, int peer, const void *buf, size_t len,
                             uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  const char *call = kind == PL_SEND ? "isend" : "irecv";
  pl_op_t *op;
  size_t rlen;
  e->errbuf = errbuf;
  if (!req || peer < 0 || peer >= e->npeers || (!buf && len > 0) || (tag >> 62) == 3) {
    duet__tp_seterr(errbuf, "planes", "%s: %s", call,
                    !req                              ? "req is NULL"
                    : (peer < 0 || peer >= e->npeers) ? "peer out of range"
                    : (tag >> 62) == 3                ? "tag reserved (bits 63 and 62 set)"
                                                      : "buf is NULL with len > 0");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (e->failed) {
    duet__tp_seterr(errbuf, "planes", "%s: %s", call, e->why);
    return e->failed;
  }
  if (kind == PL_SEND && e->nkept && (rlen = pl_kept_misfit(e, peer, tag, len)) != SIZE_MAX) {
    /* its receive, posted already, cannot take it: nothing is sent */
    const uint64_t m[4] = {tag, len, rlen, 0};
    pl_notice_once(e, peer, PL_NAK_RECV, 4, m);
    duet__tp_complete(req, DUET_ERR_MISMATCH, 0);
    return DUET_SUCCESS;
  }
  op = pl_op_get(e);
  if (!op) {
    duet__tp_seterr(errbuf, "planes", "%s: out of memory for an operation", call);
    return DUET_ERR_NO_MEMORY;
  }
  req->done = 0;
  pl_touch(e, peer);
  op->req = req;
  op->kind = kind;
  op->peer = peer;
  op->tag = tag;
  op->len = len;
  op->acked = 0;
  op->seen_ns = 0;
  op->asked = 0;
  op->told = 0;
  op->ack_seq = 0;
  op->status = DUET_SUCCESS;
  op->buf = (uint8_t *)buf;
  op->copy_pages = 0;
  if (kind == PL_SEND && len > 0 && len <= PL_COPY_MAX) {
    int pages = (int)((len + PL_PAGE - 1) / PL_PAGE);
    op->copy_page = pl_pages_take(e, peer, pages);
    if (op->copy_page < 0) { /* full of copies the peer has not acknowledged yet */
      op->next = e->free_ops;
      e->free_ops = op;
      if (!e->peers[peer].arena) {
        duet__tp_seterr(errbuf, "planes", "isend: out of memory for the copies to peer %d", peer);
        return DUET_ERR_NO_MEMORY;
      }
      return DUET_IN_PROGRESS;
    }
    op->copy_pages = pages;
    op->buf = e->peers[peer].arena + (size_t)op->copy_page * PL_PAGE;
    memcpy(op->buf, buf, len);
  }
  op->nparts = pl_layout(e, len, tag) < 0 ? e->n : 1;
  for (int i = 0; i < op->nparts; i++) {
    size_t per = ((len + (size_t)op->nparts - 1) / (size_t)op->nparts + 4095) & ~(size_t)4095;
    op->part[i].off = (size_t)i * per < len ? (size_t)i * per : len;
    op->part[i].len = op->part[i].off + per < len ? per : len - op->part[i].off;
    op->part[i].state = PART_IDLE;
    op->part[i].plane = 0;
  }
  op->parked = 0;
  pl_list_add(&e->active, op);
  e->awaiting += pl_awaits(op);
  pl_place(e, op, (1u << op->nparts) - 1, kind == PL_SEND ? e->peers[peer].tx_dead : e->dead);
  return DUET_SUCCESS;
}

static duet_status_t pl_isend(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                              uint64_t tag, duet__tp_req_t *req, char *errbuf) {
  return pl_post((pl_ep_t *)ep, PL_SEND, peer, buf, len, tag, req, errbuf);
}

static duet_status_t pl_irecv(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                              duet__tp_req_t *req, char *errbuf) {
  return pl_post((pl_ep_t *)ep, PL_RECV, peer, buf, len, tag, req, errbuf);
}

/* Tell the peers this endpoint exchanged messages or notices with (the
 * touched ones) that it closes, so that they take the connections' end for
 * that and not for a lost plane; wait briefly for the notices. The others
 * have no connection with it whose end they could take for a lost plane (a
 * transport that connects at the first message, as duet's tcp, would
 * otherwise dial every peer of the job to say it). */
static void pl_say_bye(pl_ep_t *e) {
  for (int i = 0; i < e->nhot; i++)
    pl_notice(e, e->hot[i], PL_BYE, 0, NULL);
  for (int i = 0; i < 1000 && e->ctl_busy && !e->failed; i++) {
    for (int q = 0; q < e->n; q++)
      if (!((e->dead >> q) & 1))
        (void)e->in->progress(e->ep[q], e->perr[q]);
    for (pl_ctl_slot_t **pp = &e->ctl_busy; *pp;) {
      pl_ctl_slot_t *s = *pp;
      if (__atomic_load_n(&s->r.done, __ATOMIC_ACQUIRE) || ((e->dead >> s->plane) & 1)) {
        *pp = s->next;
        s->next = e->ctl_free;
        e->ctl_free = s;
      } else {
        pp = &s->next;
      }
    }
  }
}

static void pl_close(duet__tp_ep_t *ep) {
  pl_ep_t *e = (pl_ep_t *)ep;
  if (!e)
    return;
  if (e->peers)
    pl_say_bye(e);
  for (int q = 0; q < e->n; q++)
    if (e->ep[q])
      e->in->close(e->ep[q]);
  if (e->epfd >= 0)
    close(e->epfd);
  for (int k = 0; e->peers && k < e->npeers; k++)
    free(e->peers[k].arena);
  for (int i = 0; i < e->nchunks; i++)
    free(e->chunks[i]);
  free(e->chunks);
  free(e->peers);
  free(e->ackq);
  free(e->hot);
  free(e);
}

static duet_status_t pl_open(const duet__tp_params_t *params, duet__tp_ep_t **out, char *errbuf) {
  pl_ep_t *e;
  const char *list = params && params->iface ? params->iface : "";
  duet_status_t rc;
  *out = NULL;
  e = calloc(1, sizeof(*e));
  if (!e) {
    duet__tp_seterr(errbuf, "planes", "out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  e->epfd = -1;
  e->in = duet__tp_for_provider(params ? params->provider : NULL);
  e->stall_ns = params && params->stall_ms > 0 ? (uint64_t)params->stall_ms * 1000000ull : 0;
  for (const char *s = list;;) {
    const char *c = strchr(s, ',');
    size_t n = c ? (size_t)(c - s) : strlen(s);
    if (n == 0 || n >= sizeof(e->iface[0]) || e->n == PL_MAX) {
      duet__tp_seterr(errbuf, "planes", "DUET_HPN_IFACE \"%s\": %s", list,
                      e->n == PL_MAX ? "more than 4 planes"
                      : n == 0       ? "an empty interface in the list"
                                     : "an interface name too long");
      free(e);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    memcpy(e->iface[e->n], s, n);
    e->iface[e->n][n] = '\0';
    e->epin[e->n] = -1;
    e->n++;
    if (!c)
      break;
    s = c + 1;
  }
  for (int q = 0; q < e->n; q++) {
    duet__tp_params_t p = *params;
    p.iface = e->iface[q];
    rc = e->in->open(&p, &e->ep[q], errbuf);
    if (rc != DUET_SUCCESS) {
      e->ep[q] = NULL;
      pl_close((duet__tp_ep_t *)e);
      return rc;
    }
  }
  DUET_INFO(DUET_SUB_NET, "planes: %d planes over %s (%s)", e->n, e->in->name, list);
  *out = (duet__tp_ep_t *)e;
  return DUET_SUCCESS;
}

/* The blob: magic, plane count, then per plane a 2-byte length and the
 * plane endpoint's blob. */
static duet_status_t pl_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf) {
  pl_ep_t *e = (pl_ep_t *)ep;
  uint8_t *out = addr, one[DUET_TP_ADDR_MAX];
  size_t at = 2;
  out[0] = PL_ADDR_MAGIC;
  out[1] = (uint8_t)e->n;
  for (int q = 0; q < e->n; q++) {
    size_t len = sizeof(one);
    duet_status_t rc = e->in->get_addr(e->ep[q], one, &len, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (at + 2 + len > DUET_TP_ADDR_MAX) {
      duet__tp_seterr(errbuf, "planes", "%d planes' addresses exceed %d bytes", e->n,
                      DUET_TP_ADDR_MAX);
      return DUET_ERR_UNSUPPORTED;
    }
    out[at] = (uint8_t)(len & 0xff);
    out[at + 1] = (uint8_t)(len >> 8);
    memcpy(out + at + 2, one, len);
    at += 2 + len;
  }
  *addrlen = at;
  return DUET_SUCCESS;
}

/* Plane q's blob inside a peer's address, or NULL if malformed. */
static const uint8_t *pl_addr_plane(const uint8_t *a, size_t alen, int q, size_t *len) {
  size_t at = 2;
  for (int i = 0; at + 2 <= alen; i++) {
    size_t l = (size_t)a[at] | (size_t)a[at + 1] << 8;
    if (at + 2 + l > alen || l > DUET_TP_ADDR_MAX)
      return NULL;
    if (i == q) {
      *len = l;
      return a + at + 2;
    }
    at += 2 + l;
  }
  return NULL;
}

static duet_status_t pl_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                     size_t stride, const size_t *addrlens, char *errbuf) {
  pl_ep_t *e = (pl_ep_t *)ep;
  uint8_t *blobs = NULL;
  size_t *lens = NULL;
  duet_status_t rc = DUET_SUCCESS;
  e->peers = calloc((size_t)(npeers > 0 ? npeers : 1), sizeof(*e->peers));
  e->ackq = calloc((size_t)(npeers > 0 ? npeers : 1), sizeof(*e->ackq));
  e->hot = calloc((size_t)(npeers > 0 ? npeers : 1), sizeof(*e->hot));
  blobs = malloc((size_t)(npeers > 0 ? npeers : 1) * DUET_TP_ADDR_MAX);
  lens = calloc((size_t)(npeers > 0 ? npeers : 1), sizeof(*lens));
  if (!e->peers || !e->ackq || !e->hot || !blobs || !lens) {
    duet__tp_seterr(errbuf, "planes", "out of memory for %d peers", npeers);
    rc = DUET_ERR_NO_MEMORY;
    goto out_free;
  }
  e->npeers = npeers;
  for (int q = 0; q < e->n; q++) {
    for (int k = 0; k < npeers; k++) {
      const uint8_t *a = (const uint8_t *)addrs + (size_t)k * stride, *mine;
      size_t len = 0;
      if (addrlens[k] < 2 || a[0] != PL_ADDR_MAGIC || a[1] != e->n) {
        duet__tp_seterr(errbuf, "planes",
                        "peer %d has %d HPN planes, this rank %d: give every rank the same "
                        "DUET_HPN_IFACE list",
                        k, addrlens[k] >= 2 && a[0] == PL_ADDR_MAGIC ? a[1] : 1, e->n);
        rc = DUET_ERR_INVALID_ARGUMENT;
        goto out_free;
      }
      mine = pl_addr_plane(a, addrlens[k], q, &len);
      if (!mine) {
        duet__tp_seterr(errbuf, "planes", "peer %d: malformed address", k);
        rc = DUET_ERR_PROTOCOL;
        goto out_free;
      }
      memcpy(blobs + (size_t)k * DUET_TP_ADDR_MAX, mine, len);
      lens[k] = len;
    }
    rc = e->in->insert_peers(e->ep[q], npeers, blobs, DUET_TP_ADDR_MAX, lens, errbuf);
    if (rc != DUET_SUCCESS)
      goto out_free;
  }
  for (int k = 0; k < npeers; k++)
    for (int q = 0; q < e->n; q++)
      pl_post_ctl(e, k, q);
  pl_handle_down(e);
  if (e->failed) {
    duet__tp_seterr(errbuf, "planes", "%s", e->why);
    rc = e->failed;
  }
out_free:
  free(blobs);
  free(lens);
  return rc;
}

/* A wait for peer has lasted a while (transport.h): every live plane
 * watches it. A plane that finds it gone is lost as any failed plane is,
 * and with every plane lost the endpoint fails (a crashed peer, above). */
static void pl_watch(duet__tp_ep_t *ep, int peer) {
  pl_ep_t *e = (pl_ep_t *)ep;
  if (e->in->watch == NULL || peer < 0 || peer >= e->npeers)
    return;
  for (int q = 0; q < e->n; q++)
    if (!((e->dead >> q) & 1))
      e->in->watch(e->ep[q], peer);
}

/* One descriptor for all planes: an epoll set holding each plane's. */
static duet_status_t pl_wait_fd(duet__tp_ep_t *ep, int *fd, char *errbuf) {
  pl_ep_t *e = (pl_ep_t *)ep;
  int any = 0;
  e->errbuf = errbuf;
  if (e->nackq)
    pl_ack_flush(e, 1); /* no lazy ack waits for this rank's sleep */
  if (e->failed || e->down || !e->in->wait_fd)
    return e->in->wait_fd ? DUET_IN_PROGRESS : DUET_ERR_UNSUPPORTED;
  if (pl_scan(e, 1) > 0 || e->down || e->nackq || e->acking.head) /* nothing waits when it sleeps */
    return DUET_IN_PROGRESS;
  if (e->epfd < 0) {
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
      duet__tp_seterr(errbuf, "planes", "epoll_create1: %s", strerror(errno));
      return DUET_ERR_UNSUPPORTED;
    }
  }
  for (int q = 0; q < e->n; q++) {
    int f = -1;
    duet_status_t rc;
    if ((e->dead >> q) & 1)
      continue;
    rc = e->in->wait_fd(e->ep[q], &f, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (f < 0)
      continue;
    if (e->epin[q] != f) {
      struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)q};
      if (e->epin[q] >= 0)
        (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->epin[q], NULL);
      e->epin[q] = -1;
      if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, f, &ev) != 0) {
        duet__tp_seterr(errbuf, "planes", "epoll_ctl: %s", strerror(errno));
        return DUET_ERR_UNSUPPORTED;
      }
      e->epin[q] = f;
    }
    any = 1;
  }
  *fd = any ? e->epfd : -1;
  e->poll_all = 1; /* whatever wakes the caller, every plane is read next */
  return DUET_SUCCESS;
}

unsigned duet__tp_planes_dead(const duet__tp_ep_t *ep) {
  const pl_ep_t *e = (const pl_ep_t *)ep;
  return (unsigned)(e->dead | e->down);
}

const duet__tp_ops_t duet__tp_planes = {
    .size = sizeof(duet__tp_ops_t),
    .name = "planes",
    .open = pl_open,
    .get_addr = pl_get_addr,
    .insert_peers = pl_insert_peers,
    .isend = pl_isend,
    .irecv = pl_irecv,
    .progress = pl_progress,
    .close = pl_close,
    .wait_fd = pl_wait_fd,
    .watch = pl_watch,
};
