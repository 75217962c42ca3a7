/*
 * root.c - the bootstrap root: a thread that accepts one connection per rank
 * and answers each allgather round with every rank's blob.
 *
 * The root is one thread running a poll() loop over the listener and every
 * connection; sockets are non-blocking and each connection keeps its own read
 * and write state, so a slow or silent connection holds up nobody. A
 * connection that breaks the protocol, fails the MAC, claims a rank that is
 * taken or out of range, disagrees on nranks, or does not finish its handshake
 * within HANDSHAKE_MS is closed and logged (peer address and reason, never the
 * secret), and the root serves the rest. The root ends when all ranks joined
 * and closed, when a joined rank leaves while others wait on a round it will
 * never complete, or when timeout_ms passes without progress (since the start,
 * or since the last completed round).
 * On ending it closes every connection, so clients see an error, not a hang.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bootstrap/boot_int.h"
#include "core/config.h"
#include "core/log.h"

#define HANDSHAKE_MS 5000   /* a new connection must say HELLO within this */
#define ACCEPT_PAUSE_MS 100 /* back-off when accept runs out of fds */

static atomic_int roots_active;

int duet__boot_roots_active(void) {
  return atomic_load(&roots_active);
}

/* The roots this process runs, by unique id, until their threads end. */
typedef struct root_entry {
  duet_unique_id_t id;
  struct root_entry *next;
} root_entry_t;
static pthread_mutex_t roots_lock = PTHREAD_MUTEX_INITIALIZER;
static root_entry_t *roots;

static void root_entry_remove(root_entry_t *e) {
  pthread_mutex_lock(&roots_lock);
  for (root_entry_t **pp = &roots; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      break;
    }
  pthread_mutex_unlock(&roots_lock);
  free(e);
}

int duet__boot_root_here(const duet_unique_id_t *id) {
  int here = 0;
  pthread_mutex_lock(&roots_lock);
  for (root_entry_t *e = roots; e && !here; e = e->next)
    here = memcmp(&e->id, id, sizeof(*id)) == 0;
  pthread_mutex_unlock(&roots_lock);
  return here;
}

void duet__boot_root_wait(const duet_unique_id_t *id, int timeout_ms) {
  int64_t until = duet__boot_now_ms() + timeout_ms;
  while (duet__boot_root_here(id) && duet__boot_now_ms() < until)
    usleep(1000);
}

/* ======================================================================== */
/* The root                                                                 */
/* ======================================================================== */

typedef struct table { /* one round's answer, shared by every connection */
  uint8_t *data;
  size_t len;
  int refs;
} table_t;

enum { CONN_HANDSHAKE = 0, CONN_JOINED = 1, CONN_GONE = 2 };
enum { RANK_FREE = 0, RANK_JOINED = 1, RANK_LEFT = 2 };

typedef struct conn {
  int fd;
  int state;
  int rank; /* once joined */
  int64_t hs_deadline;
  uint64_t root_nonce, client_nonce;
  char peer[ADDR_STRLEN];
  /* read state: a frame accumulates in rbuf until rwant bytes are in */
  uint8_t *rbuf;
  size_t rcap, rgot, rwant;
  int have_hdr;
  duet__boot_hdr_t hdr;
  /* write state: whdr[woff..wlen) then wtab->data */
  uint8_t whdr[DUET_BOOT_HDR_LEN + CHALLENGE_LEN];
  size_t wlen, woff;
  table_t *wtab;
  /* this round's blob */
  uint8_t *blob;
} conn_t;

typedef struct root {
  int lfd;
  char addr[ADDR_STRLEN];
  uint8_t secret[16];
  int timeout_ms;
  int64_t deadline, accept_pause_until;
  conn_t **conns;
  size_t nconns, cap;
  int nranks; /* 0 until the first valid HELLO */
  conn_t **by_rank;
  uint8_t *rank_state;
  int joined, left;
  uint32_t round; /* last completed round */
  int ngathered;
  uint32_t round_len;
  int finished;
  root_entry_t *entry; /* in roots while the thread runs */
} root_t;

static void table_release(table_t *t) {
  if (t && --t->refs == 0) {
    free(t->data);
    free(t);
  }
}

static void conn_free(conn_t *c) {
  if (c->fd >= 0)
    close(c->fd);
  table_release(c->wtab);
  free(c->rbuf);
  free(c->blob);
  free(c);
}

/* Stop serving: every connection is closed on the way out. */
static void root_abort(root_t *r) {
  r->finished = 1;
}

/* Close c (the conn_t itself is freed when the array is compacted). level
 * DUET_LOG_WARN logs why; a joined rank leaving is normal at the end. */
static void conn_drop(root_t *r, conn_t *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void conn_drop(root_t *r, conn_t *c, int level, const char *fmt, ...) {
  char why[DUET_BOOT_ERRLEN];
  va_list ap;
  int was_joined = (c->state == CONN_JOINED);

  if (c->state == CONN_GONE)
    return;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  if (level == DUET_LOG_WARN) {
    if (was_joined)
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: closed rank %d's connection from %s: %s",
                r->addr, c->rank, c->peer, why);
    else
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: closed connection from %s: %s", r->addr, c->peer,
                why);
  } else {
    DUET_TRACE(DUET_SUB_BOOT, "bootstrap root %s: rank %d (%s) %s", r->addr, c->rank, c->peer, why);
  }
  close(c->fd);
  c->fd = -1;
  c->state = CONN_GONE;
  if (!was_joined)
    return;

  r->by_rank[c->rank] = NULL;
  r->rank_state[c->rank] = RANK_LEFT;
  r->left++;
  if (r->left == r->nranks) {
    DUET_INFO(DUET_SUB_BOOT, "bootstrap root %s: all %d ranks done after %u rounds", r->addr,
              r->nranks, (unsigned)r->round);
    r->finished = 1;
  } else if (r->ngathered > 0) {
    DUET_WARN(DUET_SUB_BOOT,
              "bootstrap root %s: rank %d left while %d of %d ranks wait on round %u; "
              "closing the rendezvous",
              r->addr, c->rank, r->ngathered, r->nranks, (unsigned)(r->round + 1));
    root_abort(r);
  }
}

/* Write what is queued on c; returns -1 when c was dropped. */
static int conn_flush(root_t *r, conn_t *c) {
  for (;;) {
    size_t tlen = c->wtab ? c->wtab->len : 0, total = c->wlen + tlen;
    struct iovec iov[2];
    struct msghdr msg;
    int niov = 0;
    ssize_t n;

    if (c->woff >= total) {
      table_release(c->wtab);
      c->wtab = NULL;
      c->wlen = c->woff = 0;
      return 0;
    }
    if (c->woff < c->wlen) {
      iov[niov].iov_base = c->whdr + c->woff;
      iov[niov++].iov_len = c->wlen - c->woff;
    }
    if (tlen > 0) {
      size_t skip = c->woff > c->wlen ? c->woff - c->wlen : 0;
      iov[niov].iov_base = c->wtab->data + skip;
      iov[niov++].iov_len = tlen - skip;
    }
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)niov;
    n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      conn_drop(r, c, DUET_LOG_WARN, "send failed: %s", strerror(errno));
      return -1;
    }
    c->woff += (size_t)n;
  }
}

static int conn_reserve(conn_t *c, size_t need) {
  uint8_t *p;
  if (c->rcap >= need)
    return 0;
  p = realloc(c->rbuf, need);
  if (!p)
    return -1;
  c->rbuf = p;
  c->rcap = need;
  return 0;
}

/* Every rank sent round r: queue each one's TABLE. */
static void root_complete_round(root_t *r) {
  uint32_t round = r->round + 1;
  size_t len = r->round_len, total = (size_t)r->nranks * len;
  table_t *t;

  if (total > UINT32_MAX) {
    DUET_WARN(DUET_SUB_BOOT,
              "bootstrap root %s: round %u's table of %d x %zu bytes exceeds 4 GiB; closing "
              "the rendezvous",
              r->addr, (unsigned)round, r->nranks, len);
    root_abort(r);
    return;
  }
  t = calloc(1, sizeof(*t));
  if (!t)
    goto out_nomem;
  t->len = total;
  t->data = malloc(total ? total : 1);
  if (!t->data)
    goto out_free_table;
  for (int i = 0; i < r->nranks; i++) {
    conn_t *c = r->by_rank[i];
    if (len)
      memcpy(t->data + (size_t)i * len, c->blob, len);
    free(c->blob);
    c->blob = NULL;
  }
  r->round = round;
  r->ngathered = 0;
  r->deadline = duet__boot_now_ms() + r->timeout_ms;
  DUET_TRACE(DUET_SUB_BOOT, "bootstrap root %s: round %u complete (%d x %zu bytes)", r->addr,
             (unsigned)round, r->nranks, len);

  t->refs = 1; /* held across the loop so an early drop cannot free it */
  for (int i = 0; i < r->nranks && !r->finished; i++) {
    conn_t *c = r->by_rank[i];
    if (!c)
      continue;
    if (c->wlen || c->wtab) { /* cannot happen: the rank waited for the last table */
      conn_drop(r, c, DUET_LOG_WARN, "internal error: output still pending at round %u",
                (unsigned)round);
      continue;
    }
    duet__boot_hdr_encode(c->whdr, DUET_BOOT_TABLE, round, t->data, (uint32_t)total, r->secret,
                          c->client_nonce, 1);
    c->wlen = DUET_BOOT_HDR_LEN;
    c->woff = 0;
    c->wtab = t;
    t->refs++;
    conn_flush(r, c);
  }
  table_release(t);
  return;

out_free_table:
  free(t);
out_nomem:
  DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: out of memory for round %u's table of %zu bytes",
            r->addr, (unsigned)round, total);
  root_abort(r);
}

static void root_on_hello(root_t *r, conn_t *c) {
  const uint8_t *p = c->rbuf + DUET_BOOT_HDR_LEN;
  char why[DUET_BOOT_ERRLEN];
  int32_t rank, nranks;

  if (duet__boot_frame_verify(c->rbuf, &c->hdr, r->secret, c->root_nonce, 0, why) != DUET_SUCCESS) {
    conn_drop(r, c, DUET_LOG_WARN, "HELLO: %s", why);
    return;
  }
  rank = (int32_t)(uint32_t)duet__boot_get_le(p, 4);
  nranks = (int32_t)(uint32_t)duet__boot_get_le(p + 4, 4);
  if (nranks < 1 || nranks > MAX_RANKS) {
    conn_drop(r, c, DUET_LOG_WARN, "HELLO with nranks %d outside [1, %d]", (int)nranks, MAX_RANKS);
    return;
  }
  if (r->nranks == 0) {
    r->by_rank = calloc((size_t)nranks, sizeof(*r->by_rank));
    r->rank_state = calloc((size_t)nranks, 1);
    if (!r->by_rank || !r->rank_state) {
      free(r->by_rank);
      free(r->rank_state);
      r->by_rank = NULL;
      r->rank_state = NULL;
      conn_drop(r, c, DUET_LOG_WARN, "out of memory for %d ranks", (int)nranks);
      return;
    }
    r->nranks = nranks;
  } else if (nranks != r->nranks) {
    conn_drop(r, c, DUET_LOG_WARN, "HELLO as rank %d of %d, but the first rank said %d ranks",
              (int)rank, (int)nranks, r->nranks);
    return;
  }
  if (rank < 0 || rank >= nranks) {
    conn_drop(r, c, DUET_LOG_WARN, "HELLO with rank %d outside [0, %d)", (int)rank, (int)nranks);
    return;
  }
  if (r->rank_state[rank] != RANK_FREE) {
    conn_drop(r, c, DUET_LOG_WARN, "HELLO as rank %d, which %s", (int)rank,
              r->rank_state[rank] == RANK_JOINED ? "has already joined" : "already left");
    return;
  }
  c->client_nonce = duet__boot_get_le(p + 8, 8);
  c->rank = rank;
  c->state = CONN_JOINED;
  r->by_rank[rank] = c;
  r->rank_state[rank] = RANK_JOINED;
  r->joined++;
  DUET_TRACE(DUET_SUB_BOOT, "bootstrap root %s: rank %d of %d joined from %s (%d joined)", r->addr,
             (int)rank, (int)nranks, c->peer, r->joined);
  if (r->joined == r->nranks && r->lfd >= 0) {
    DUET_INFO(DUET_SUB_BOOT, "bootstrap root %s: all %d ranks joined", r->addr, r->nranks);
    close(r->lfd); /* nobody else may join */
    r->lfd = -1;
  }
}

static void root_on_gather(root_t *r, conn_t *c) {
  char why[DUET_BOOT_ERRLEN];
  uint32_t len = c->hdr.length;

  if (duet__boot_frame_verify(c->rbuf, &c->hdr, r->secret, c->root_nonce, 0, why) != DUET_SUCCESS) {
    conn_drop(r, c, DUET_LOG_WARN, "GATHER: %s", why);
    return;
  }
  if (c->hdr.round != r->round + 1 || c->blob) {
    conn_drop(r, c, DUET_LOG_WARN, "GATHER for round %u while round %u is open%s",
              (unsigned)c->hdr.round, (unsigned)(r->round + 1),
              c->blob ? " and this rank already sent it" : "");
    return;
  }
  if (r->left > 0) {
    DUET_WARN(DUET_SUB_BOOT,
              "bootstrap root %s: rank %d started round %u but %d rank(s) already left; "
              "closing the rendezvous",
              r->addr, c->rank, (unsigned)c->hdr.round, r->left);
    root_abort(r);
    return;
  }
  if (r->ngathered > 0 && len != r->round_len) {
    conn_drop(r, c, DUET_LOG_WARN, "GATHER of %u bytes in round %u where other ranks sent %u",
              (unsigned)len, (unsigned)c->hdr.round, (unsigned)r->round_len);
    return;
  }
  c->blob = malloc(len ? len : 1);
  if (!c->blob) {
    conn_drop(r, c, DUET_LOG_WARN, "out of memory for a %u-byte blob", (unsigned)len);
    return;
  }
  memcpy(c->blob, c->rbuf + DUET_BOOT_HDR_LEN, len);
  r->round_len = len;
  if (++r->ngathered == r->nranks)
    root_complete_round(r);
}

/* A header is in: check it against what this connection may send now. */
static int root_check_hdr(root_t *r, conn_t *c) {
  char why[DUET_BOOT_ERRLEN];
  int hs = (c->state == CONN_HANDSHAKE);

  if (duet__boot_hdr_decode(c->rbuf, &c->hdr, hs ? HELLO_LEN : DUET_BOOT_MAX_BLOB, why) !=
      DUET_SUCCESS) {
    conn_drop(r, c, DUET_LOG_WARN, "%s", why);
    return -1;
  }
  if (hs && (c->hdr.type != DUET_BOOT_HELLO || c->hdr.length != HELLO_LEN)) {
    conn_drop(r, c, DUET_LOG_WARN, "expected a %d-byte HELLO, got type %u of %u bytes", HELLO_LEN,
              (unsigned)c->hdr.type, (unsigned)c->hdr.length);
    return -1;
  }
  if (!hs && c->hdr.type != DUET_BOOT_GATHER) {
    conn_drop(r, c, DUET_LOG_WARN, "expected GATHER, got frame type %u", (unsigned)c->hdr.type);
    return -1;
  }
  if (conn_reserve(c, DUET_BOOT_HDR_LEN + (size_t)c->hdr.length) != 0) {
    conn_drop(r, c, DUET_LOG_WARN, "out of memory for a %u-byte frame", (unsigned)c->hdr.length);
    return -1;
  }
  c->have_hdr = 1;
  c->rwant = DUET_BOOT_HDR_LEN + (size_t)c->hdr.length;
  return 0;
}

/* Read what c has sent and act on every complete frame. */
static void conn_read(root_t *r, conn_t *c) {
  while (c->state != CONN_GONE && !r->finished) {
    ssize_t n = recv(c->fd, c->rbuf + c->rgot, c->rwant - c->rgot, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        conn_drop(r, c, DUET_LOG_WARN, "recv failed: %s", strerror(errno));
      return;
    }
    if (n == 0) {
      if (c->state == CONN_JOINED && c->rgot == 0)
        conn_drop(r, c, DUET_LOG_TRACE, "closed its connection");
      else if (c->state == CONN_JOINED)
        conn_drop(r, c, DUET_LOG_WARN, "closed its connection in the middle of a frame");
      else
        conn_drop(r, c, DUET_LOG_WARN, "closed before finishing its handshake");
      return;
    }
    c->rgot += (size_t)n;
    if (c->rgot < c->rwant)
      continue;
    if (!c->have_hdr) {
      if (root_check_hdr(r, c) != 0)
        return;
      if (c->rgot < c->rwant)
        continue;
    }
    /* a whole frame */
    if (c->state == CONN_HANDSHAKE)
      root_on_hello(r, c);
    else
      root_on_gather(r, c);
    c->rgot = 0;
    c->have_hdr = 0;
    c->rwant = DUET_BOOT_HDR_LEN;
  }
}

static void root_accept(root_t *r) {
  for (;;) {
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    char peer[ADDR_STRLEN];
    conn_t *c;
    int fd = accept4(r->lfd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    uint8_t nonce[8];

    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: accept failed: %s; pausing %d ms", r->addr,
                strerror(errno), ACCEPT_PAUSE_MS);
      r->accept_pause_until = duet__boot_now_ms() + ACCEPT_PAUSE_MS;
      return;
    }
    duet__boot_addr_str((struct sockaddr *)&ss, peer, sizeof(peer));
    if (r->nconns == r->cap) {
      size_t ncap = r->cap ? 2 * r->cap : 16;
      conn_t **p = realloc(r->conns, ncap * sizeof(*p));
      if (!p)
        goto out_close_fd;
      r->conns = p;
      r->cap = ncap;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
      goto out_close_fd;
    c->fd = fd;
    c->rank = -1;
    memcpy(c->peer, peer, sizeof(peer));
    c->hs_deadline = duet__boot_now_ms() + HANDSHAKE_MS;
    c->rwant = DUET_BOOT_HDR_LEN;
    if (conn_reserve(c, DUET_BOOT_HDR_LEN + HELLO_LEN) != 0)
      goto out_free_conn;
    if (duet__boot_fill_random(nonce, sizeof(nonce)) != 0) {
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: getrandom failed: %s; dropping %s", r->addr,
                strerror(errno), peer);
      c->fd = -1;
      conn_free(c);
      close(fd);
      continue;
    }
    c->root_nonce = duet__boot_get_le(nonce, 8);
    duet__boot_set_nodelay(fd);
    duet__boot_frame_encode(c->whdr, DUET_BOOT_CHALLENGE, 0, nonce, CHALLENGE_LEN, r->secret, 0, 1);
    c->wlen = DUET_BOOT_HDR_LEN + CHALLENGE_LEN;
    r->conns[r->nconns++] = c;
    DUET_TRACE(DUET_SUB_BOOT, "bootstrap root %s: connection from %s", r->addr, peer);
    conn_flush(r, c);
    continue;

  out_free_conn:
    c->fd = -1;
    conn_free(c);
  out_close_fd:
    DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: out of memory; dropping connection from %s",
              r->addr, peer);
    close(fd);
  }
}

/* Free closed connections; keep the order of the rest. */
static void root_compact(root_t *r) {
  size_t j = 0;
  for (size_t i = 0; i < r->nconns; i++) {
    if (r->conns[i]->state == CONN_GONE)
      conn_free(r->conns[i]);
    else
      r->conns[j++] = r->conns[i];
  }
  r->nconns = j;
}

static void root_log_timeout(root_t *r) {
  char missing[160] = "";
  size_t off = 0;
  int waiting_join = r->nranks == 0 || r->joined < r->nranks;

  for (int i = 0; i < r->nranks && off < sizeof(missing) - 16; i++) {
    int miss = waiting_join ? r->rank_state[i] == RANK_FREE : r->by_rank[i] && !r->by_rank[i]->blob;
    if (miss)
      off += (size_t)snprintf(missing + off, sizeof(missing) - off, "%s%d", off ? "," : "", i);
  }
  if (waiting_join)
    DUET_WARN(DUET_SUB_BOOT,
              "bootstrap root %s: timed out after %d ms with %d of %d ranks joined (missing: "
              "%s); closing the rendezvous",
              r->addr, r->timeout_ms, r->joined, r->nranks, r->nranks ? missing : "all");
  else
    DUET_WARN(DUET_SUB_BOOT,
              "bootstrap root %s: no progress for %d ms in round %u (%d of %d ranks sent it; "
              "waiting for: %s); closing the rendezvous",
              r->addr, r->timeout_ms, (unsigned)(r->round + 1), r->ngathered, r->nranks, missing);
}

static void root_destroy(root_t *r) {
  for (size_t i = 0; i < r->nconns; i++)
    conn_free(r->conns[i]);
  free(r->conns);
  free(r->by_rank);
  free(r->rank_state);
  if (r->lfd >= 0)
    close(r->lfd);
  memset(r->secret, 0, sizeof(r->secret));
  free(r);
}

static void *root_main(void *arg) {
  root_t *r = arg;
  struct pollfd *pfds = NULL;
  size_t pcap = 0;

  while (!r->finished) {
    int64_t now = duet__boot_now_ms(), wake = r->deadline;
    size_t np = 0, base;
    int listening, rc;

    if (now >= r->deadline) {
      root_log_timeout(r);
      root_abort(r);
      break;
    }
    for (size_t i = 0; i < r->nconns; i++) {
      conn_t *c = r->conns[i];
      if (c->state != CONN_HANDSHAKE)
        continue;
      if (now >= c->hs_deadline)
        conn_drop(r, c, DUET_LOG_WARN, "no HELLO within %d ms", HANDSHAKE_MS);
      else if (c->hs_deadline < wake)
        wake = c->hs_deadline;
    }
    root_compact(r);

    if (pcap < r->nconns + 1) {
      size_t ncap = 2 * (r->nconns + 1);
      struct pollfd *p = realloc(pfds, ncap * sizeof(*p));
      if (!p) {
        DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: out of memory for %zu poll entries", r->addr,
                  ncap);
        root_abort(r);
        break;
      }
      pfds = p;
      pcap = ncap;
    }
    listening = r->lfd >= 0 && now >= r->accept_pause_until;
    if (r->lfd >= 0 && !listening && r->accept_pause_until < wake)
      wake = r->accept_pause_until;
    if (listening)
      pfds[np++] = (struct pollfd){.fd = r->lfd, .events = POLLIN};
    base = np;
    for (size_t i = 0; i < r->nconns; i++) {
      conn_t *c = r->conns[i];
      short ev = POLLIN;
      if (c->woff < c->wlen + (c->wtab ? c->wtab->len : 0))
        ev |= POLLOUT;
      pfds[np++] = (struct pollfd){.fd = c->fd, .events = ev};
    }

    rc = poll(pfds, (nfds_t)np, (int)(wake - now > 0 ? wake - now : 0));
    if (rc < 0) {
      if (errno == EINTR)
        continue;
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: poll failed: %s", r->addr, strerror(errno));
      root_abort(r);
      break;
    }
    for (size_t i = base; i < np && !r->finished; i++) {
      conn_t *c = r->conns[i - base];
      short re = pfds[i].revents;
      if (!re || c->state == CONN_GONE)
        continue;
      if ((re & POLLOUT) && conn_flush(r, c) != 0)
        continue;
      if (re & (POLLIN | POLLHUP | POLLERR))
        conn_read(r, c);
    }
    if (!r->finished && listening && r->lfd >= 0 && (pfds[0].revents & POLLIN))
      root_accept(r);
    root_compact(r);
  }

  free(pfds);
  root_entry_remove(r->entry);
  root_destroy(r);
  atomic_fetch_sub(&roots_active, 1);
  return NULL;
}

/* Bind and listen on sa, write the id, start the root thread. */
static duet_status_t root_start(duet_unique_id_t *id, const struct sockaddr *sa, socklen_t salen,
                                const uint8_t secret[16], int reuse, int timeout_ms, char *errbuf) {
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  char where[ADDR_STRLEN];
  pthread_attr_t attr;
  pthread_t tid;
  root_t *r;
  int lfd, one = 1, err;
  duet_status_t st;

  duet__boot_addr_str(sa, where, sizeof(where));
  lfd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    SET_ERR(errbuf, "bootstrap root: socket() for %s failed: %s", where, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  if (reuse && setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    SET_ERR(errbuf, "bootstrap root: SO_REUSEADDR on %s failed: %s", where, strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_listener;
  }
  if (bind(lfd, sa, salen) != 0) {
    SET_ERR(errbuf, "bootstrap root: bind to %s failed: %s", where, strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_listener;
  }
  if (listen(lfd, SOMAXCONN) != 0 || getsockname(lfd, (struct sockaddr *)&bound, &blen) != 0) {
    SET_ERR(errbuf, "bootstrap root: listen on %s failed: %s", where, strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_listener;
  }

  r = calloc(1, sizeof(*r));
  if (!r) {
    SET_ERR(errbuf, "bootstrap root: out of memory");
    st = DUET_ERR_NO_MEMORY;
    goto out_close_listener;
  }
  r->lfd = lfd;
  duet__boot_addr_str((struct sockaddr *)&bound, r->addr, sizeof(r->addr));
  memcpy(r->secret, secret, 16);
  r->timeout_ms = timeout_ms;
  r->deadline = duet__boot_now_ms() + timeout_ms;
  duet__boot_id_encode(id, (struct sockaddr *)&bound, secret);
  r->entry = calloc(1, sizeof(*r->entry));
  if (!r->entry) {
    SET_ERR(errbuf, "bootstrap root: out of memory");
    free(r);
    st = DUET_ERR_NO_MEMORY;
    goto out_close_listener;
  }
  r->entry->id = *id;
  pthread_mutex_lock(&roots_lock);
  r->entry->next = roots;
  roots = r->entry;
  pthread_mutex_unlock(&roots_lock);

  if ((err = pthread_attr_init(&attr)) != 0)
    goto out_free_root;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  atomic_fetch_add(&roots_active, 1);
  err = pthread_create(&tid, &attr, root_main, r);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    atomic_fetch_sub(&roots_active, 1);
    goto out_free_root;
  }
  DUET_INFO(DUET_SUB_BOOT, "bootstrap root listening at %s for up to %d ms", r->addr, timeout_ms);
  return DUET_SUCCESS; /* the thread owns r and lfd now */

out_free_root:
  SET_ERR(errbuf, "bootstrap root at %s: cannot start its thread: %s", r->addr, strerror(err));
  st = DUET_ERR_SYSTEM;
  root_entry_remove(r->entry);
  free(r);
out_close_listener:
  close(lfd);
  memset(id, 0, sizeof(*id));
  return st;
}

/* The address of interface name (IPv4 preferred), port 0. */
static duet_status_t iface_addr(const char *name, struct sockaddr_storage *ss, socklen_t *len,
                                char *errbuf) {
  struct ifaddrs *ifs, *ifa;
  int found = 0;

  if (getifaddrs(&ifs) != 0) {
    SET_ERR(errbuf, "getifaddrs failed: %s", strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  for (ifa = ifs; ifa; ifa = ifa->ifa_next) {
    int fam = ifa->ifa_addr ? ifa->ifa_addr->sa_family : AF_UNSPEC;
    if (strcmp(ifa->ifa_name, name) != 0 || (fam != AF_INET && fam != AF_INET6))
      continue;
    if (fam == AF_INET || !found) {
      *len = fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
      memset(ss, 0, sizeof(*ss));
      memcpy(ss, ifa->ifa_addr, *len);
      found = fam == AF_INET ? 2 : 1;
      if (found == 2)
        break;
    }
  }
  freeifaddrs(ifs);
  if (!found) {
    SET_ERR(errbuf, "DUET_BOOT_IFACE=%s: no interface of that name with an IPv4 or IPv6 address",
            name);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = 0;
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = 0;
  return DUET_SUCCESS;
}

duet_status_t duet__boot_root_create(duet_unique_id_t *id, int timeout_ms, char *errbuf) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  uint8_t secret[16];
  const char *iface;
  duet_status_t st;

  if (!id || timeout_ms <= 0) {
    SET_ERR(errbuf, "bootstrap root: %s", !id ? "id is NULL" : "timeout_ms must be positive");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  iface = duet__config_env("DUET_BOOT_IFACE");
  if (iface) {
    st = iface_addr(iface, &ss, &sslen, errbuf);
    if (st != DUET_SUCCESS)
      return st;
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    memset(&ss, 0, sizeof(ss));
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sslen = sizeof(*in);
  }
  if (duet__boot_fill_random(secret, sizeof(secret)) != 0) {
    SET_ERR(errbuf, "bootstrap root: getrandom failed: %s", strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  st = root_start(id, (struct sockaddr *)&ss, sslen, secret, 0, timeout_ms, errbuf);
  memset(secret, 0, sizeof(secret));
  return st;
}

duet_status_t duet__boot_root_at(duet_unique_id_t *id, const char *host, int port,
                                 const uint8_t secret[16], int start, int timeout_ms,
                                 char *errbuf) {
  struct addrinfo hints, *res;
  char portstr[16];
  duet_status_t st;
  int rc;

  if (!id || !host || !*host || !secret || port < 1 || port > 65535 || (start && timeout_ms <= 0)) {
    SET_ERR(errbuf,
            "bootstrap root at %s:%d: bad argument (host empty, port outside [1, 65535], "
            "NULL id or secret, or timeout_ms <= 0)",
            host ? host : "(null)", port);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  snprintf(portstr, sizeof(portstr), "%d", port);
  rc = getaddrinfo(host, portstr, &hints, &res);
  if (rc != 0) {
    SET_ERR(errbuf, "bootstrap root: cannot resolve '%s': %s", host, gai_strerror(rc));
    return rc == EAI_SYSTEM ? DUET_ERR_SYSTEM : DUET_ERR_INVALID_ARGUMENT;
  }
  if (start) {
    st = root_start(id, res->ai_addr, res->ai_addrlen, secret, 1, timeout_ms, errbuf);
  } else {
    duet__boot_id_encode(id, res->ai_addr, secret);
    st = DUET_SUCCESS;
  }
  freeaddrinfo(res);
  return st;
}
