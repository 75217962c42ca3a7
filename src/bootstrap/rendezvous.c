/*
 * rendezvous.c - the bootstrap root (a thread) and its clients (the ranks).
 *
 * Unique id layout (duet_unique_id_t, 128 bytes, little-endian):
 *
 *   0  magic    u32  ID_MAGIC ("DUID")
 *   4  version  u16  ID_VERSION
 *   6  family   u16  4 (IPv4) or 6 (IPv6)
 *   8  port     u16  the root's TCP port
 *  10  reserved u16  0
 *  12  addr     16 bytes: IPv4 in the first 4, or IPv6
 *  28  secret   16 bytes, from getrandom (or DUET_SECRET via init_env)
 *  44  scope    u32  IPv6 scope id (link-local addresses), else 0
 *  48  zero to the end
 *
 * Protocol (frames as in frame.c; "nonce/dir" is what the MAC is keyed with):
 *
 *   root -> client  CHALLENGE {root nonce u64}                      nonce 0, dir 1
 *   client -> root  HELLO {rank i32, nranks i32, client nonce u64}  root nonce, dir 0
 *   client -> root  GATHER round r {blob}                           root nonce, dir 0
 *   root -> client  TABLE round r {nranks blobs in rank order}      client nonce, dir 1
 *
 * Rounds count from 1. The root answers round r once every rank has sent it,
 * all with the same length.
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
 *
 * Threads: any number of roots and clients may live in one process; they
 * share nothing but the roots_active counter.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"
#include "core/config.h"
#include "core/log.h"

#define ID_MAGIC 0x44554944u /* "DUID" */
#define ID_VERSION 1u
#define HANDSHAKE_MS 5000   /* a new connection must say HELLO within this */
#define RETRY_MS 50         /* client's connect retry period */
#define HELLO_LEN 16        /* rank i32, nranks i32, client nonce u64 */
#define CHALLENGE_LEN 8     /* root nonce u64 */
#define MAX_RANKS (1 << 22) /* sanity bound on nranks */
#define ACCEPT_PAUSE_MS 100 /* back-off when accept runs out of fds */
#define ADDR_STRLEN (INET6_ADDRSTRLEN + 16)

static void set_err(char *errbuf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char *errbuf, const char *fmt, ...) {
  va_list ap;
  if (!errbuf)
    return;
  va_start(ap, fmt);
  vsnprintf(errbuf, DUET_BOOT_ERRLEN, fmt, ap); /* a long message is cut, not overrun */
  va_end(ap);
}
#define SET_ERR set_err

static atomic_int roots_active;

int duet__boot_roots_active(void) {
  return atomic_load(&roots_active);
}

/* --- small helpers --- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* "1.2.3.4:5" or "[::1]:5" */
static void addr_str(const struct sockaddr *sa, char *buf, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s:%u", host, (unsigned)ntohs(in->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    snprintf(buf, len, "[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
  } else {
    snprintf(buf, len, "(address family %d)", (int)sa->sa_family);
  }
}

static int fill_random(void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void set_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* --- the unique id --- */

static void id_encode(duet_unique_id_t *id, const struct sockaddr *sa, const uint8_t secret[16]) {
  uint8_t *b = id->bytes;
  memset(id, 0, sizeof(*id));
  put_le(b + 0, ID_MAGIC, 4);
  put_le(b + 4, ID_VERSION, 2);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    put_le(b + 6, 4, 2);
    put_le(b + 8, ntohs(in->sin_port), 2);
    memcpy(b + 12, &in->sin_addr, 4);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    put_le(b + 6, 6, 2);
    put_le(b + 8, ntohs(in6->sin6_port), 2);
    memcpy(b + 12, &in6->sin6_addr, 16);
    put_le(b + 44, in6->sin6_scope_id, 4);
  }
  memcpy(b + 28, secret, 16);
}

static duet_status_t id_decode(const duet_unique_id_t *id, struct sockaddr_storage *ss,
                               socklen_t *sslen, uint8_t secret[16], char *errbuf) {
  const uint8_t *b = id->bytes;
  uint32_t magic = (uint32_t)get_le(b, 4);
  unsigned version = (unsigned)get_le(b + 4, 2), family = (unsigned)get_le(b + 6, 2);
  uint16_t port = (uint16_t)get_le(b + 8, 2);

  if (magic != ID_MAGIC || version != ID_VERSION) {
    SET_ERR(errbuf,
            "not a duet unique id (magic 0x%08x, version %u; expected 0x%08x, %u): was it made "
            "by duet_get_unique_id and copied whole?",
            (unsigned)magic, version, (unsigned)ID_MAGIC, (unsigned)ID_VERSION);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  memset(ss, 0, sizeof(*ss));
  if (family == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    memcpy(&in->sin_addr, b + 12, 4);
    *sslen = sizeof(*in);
  } else if (family == 6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    memcpy(&in6->sin6_addr, b + 12, 16);
    in6->sin6_scope_id = (uint32_t)get_le(b + 44, 4);
    *sslen = sizeof(*in6);
  } else {
    SET_ERR(errbuf, "unique id has unknown address family %u", family);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (port == 0) {
    SET_ERR(errbuf, "unique id has port 0");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  memcpy(secret, b + 28, 16);
  return DUET_SUCCESS;
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
  r->deadline = now_ms() + r->timeout_ms;
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
  rank = (int32_t)(uint32_t)get_le(p, 4);
  nranks = (int32_t)(uint32_t)get_le(p + 4, 4);
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
  c->client_nonce = get_le(p + 8, 8);
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
      r->accept_pause_until = now_ms() + ACCEPT_PAUSE_MS;
      return;
    }
    addr_str((struct sockaddr *)&ss, peer, sizeof(peer));
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
    c->hs_deadline = now_ms() + HANDSHAKE_MS;
    c->rwant = DUET_BOOT_HDR_LEN;
    if (conn_reserve(c, DUET_BOOT_HDR_LEN + HELLO_LEN) != 0)
      goto out_free_conn;
    if (fill_random(nonce, sizeof(nonce)) != 0) {
      DUET_WARN(DUET_SUB_BOOT, "bootstrap root %s: getrandom failed: %s; dropping %s", r->addr,
                strerror(errno), peer);
      c->fd = -1;
      conn_free(c);
      close(fd);
      continue;
    }
    c->root_nonce = get_le(nonce, 8);
    set_nodelay(fd);
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
    int64_t now = now_ms(), wake = r->deadline;
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

  addr_str(sa, where, sizeof(where));
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
  addr_str((struct sockaddr *)&bound, r->addr, sizeof(r->addr));
  memcpy(r->secret, secret, 16);
  r->timeout_ms = timeout_ms;
  r->deadline = now_ms() + timeout_ms;
  id_encode(id, (struct sockaddr *)&bound, secret);

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
  if (fill_random(secret, sizeof(secret)) != 0) {
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
    id_encode(id, res->ai_addr, secret);
    st = DUET_SUCCESS;
  }
  freeaddrinfo(res);
  return st;
}

/* ======================================================================== */
/* The client                                                               */
/* ======================================================================== */

struct duet__boot {
  int fd;
  int rank, nranks;
  int timeout_ms;
  uint8_t secret[16];
  uint64_t root_nonce, client_nonce;
  uint32_t round;       /* last completed allgather round */
  duet_status_t failed; /* an earlier error leaves the connection unusable */
  char addr[ADDR_STRLEN];
};

/* Wait for events on fd until deadline. */
static duet_status_t client_wait(duet__boot_t *b, short events, int64_t start, int64_t deadline,
                                 const char *what, char *errbuf) {
  for (;;) {
    struct pollfd p = {.fd = b->fd, .events = events};
    int64_t left = deadline - now_ms();
    int rc;
    if (left <= 0) {
      SET_ERR(errbuf, "rank %d: timed out after %lld ms waiting %s the bootstrap root at %s",
              b->rank, (long long)(now_ms() - start), what, b->addr);
      return DUET_ERR_TIMEOUT;
    }
    rc = poll(&p, 1, (int)left);
    if (rc > 0)
      return DUET_SUCCESS;
    if (rc < 0 && errno != EINTR) {
      SET_ERR(errbuf, "rank %d: poll on the connection to the bootstrap root at %s failed: %s",
              b->rank, b->addr, strerror(errno));
      return DUET_ERR_SYSTEM;
    }
  }
}

static duet_status_t client_send(duet__boot_t *b, const void *buf, size_t len, int64_t start,
                                 int64_t deadline, const char *what, char *errbuf) {
  const uint8_t *p = buf;
  char desc[96];
  snprintf(desc, sizeof(desc), "to send %s to", what);
  while (len > 0) {
    ssize_t n = send(b->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      duet_status_t st = client_wait(b, POLLOUT, start, deadline, desc, errbuf);
      if (st != DUET_SUCCESS)
        return st;
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      SET_ERR(errbuf,
              "rank %d: the bootstrap root at %s closed the connection as this rank sent "
              "%s (it may have timed out or rejected this rank; see its log)",
              b->rank, b->addr, what);
      return DUET_ERR_REMOTE;
    }
    SET_ERR(errbuf, "rank %d: send of %s to the bootstrap root at %s failed: %s", b->rank, what,
            b->addr, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  return DUET_SUCCESS;
}

static duet_status_t client_recv(duet__boot_t *b, void *buf, size_t len, int64_t start,
                                 int64_t deadline, const char *what, char *errbuf) {
  uint8_t *p = buf;
  char desc[96];
  snprintf(desc, sizeof(desc), "for %s from", what);
  while (len > 0) {
    ssize_t n = recv(b->fd, p, len, MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      duet_status_t st = client_wait(b, POLLIN, start, deadline, desc, errbuf);
      if (st != DUET_SUCCESS)
        return st;
      continue;
    }
    if (n == 0 || errno == ECONNRESET) {
      SET_ERR(errbuf,
              "rank %d: the bootstrap root at %s closed the connection while this rank "
              "waited for %s (it may have timed out or rejected this rank; see its log)",
              b->rank, b->addr, what);
      return DUET_ERR_REMOTE;
    }
    SET_ERR(errbuf, "rank %d: recv of %s from the bootstrap root at %s failed: %s", b->rank, what,
            b->addr, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  return DUET_SUCCESS;
}

/* Read one frame of the given type, round and exact length into frame
 * (DUET_BOOT_HDR_LEN + len bytes) and check its MAC. */
static duet_status_t client_recv_frame(duet__boot_t *b, uint8_t *frame, uint16_t type,
                                       uint32_t round, uint32_t len, uint64_t nonce, int64_t start,
                                       int64_t deadline, const char *what, char *errbuf) {
  char why[DUET_BOOT_ERRLEN];
  duet__boot_hdr_t hdr;
  duet_status_t st;

  st = client_recv(b, frame, DUET_BOOT_HDR_LEN, start, deadline, what, errbuf);
  if (st != DUET_SUCCESS)
    return st;
  if (duet__boot_hdr_decode(frame, &hdr, len, why) != DUET_SUCCESS)
    goto out_protocol;
  if (hdr.type != type || hdr.round != round || hdr.length != len) {
    snprintf(why, sizeof(why),
             "expected frame type %u round %u of %u bytes, got type %u round %u of %u bytes",
             (unsigned)type, (unsigned)round, (unsigned)len, (unsigned)hdr.type,
             (unsigned)hdr.round, (unsigned)hdr.length);
    goto out_protocol;
  }
  st = client_recv(b, frame + DUET_BOOT_HDR_LEN, len, start, deadline, what, errbuf);
  if (st != DUET_SUCCESS)
    return st;
  if (duet__boot_frame_verify(frame, &hdr, b->secret, nonce, 1, why) != DUET_SUCCESS)
    goto out_protocol;
  return DUET_SUCCESS;

out_protocol:
  SET_ERR(errbuf, "rank %d: bad %s from the bootstrap root at %s: %s", b->rank, what, b->addr, why);
  return DUET_ERR_PROTOCOL;
}

static int retryable(int err) {
  return err == ECONNREFUSED || err == ETIMEDOUT || err == EHOSTUNREACH || err == ENETUNREACH ||
         err == ECONNRESET || err == ECONNABORTED || err == EAGAIN || err == EINTR ||
         err == EADDRNOTAVAIL;
}

/* Connect b->fd to sa, retrying every RETRY_MS until deadline. */
static duet_status_t client_connect(duet__boot_t *b, const struct sockaddr *sa, socklen_t salen,
                                    int64_t start, int64_t deadline, char *errbuf) {
  int last = 0, tries = 0;
  duet_status_t st;

  for (;;) {
    int err = 0;
    socklen_t elen = sizeof(err);
    int64_t left;

    tries++;
    b->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (b->fd < 0) {
      SET_ERR(errbuf, "rank %d: socket() for the bootstrap root at %s failed: %s", b->rank, b->addr,
              strerror(errno));
      return DUET_ERR_SYSTEM;
    }
    if (connect(b->fd, sa, salen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        st = client_wait(b, POLLOUT, start, deadline, "to connect to", errbuf);
        if (st != DUET_SUCCESS)
          goto out_close_socket;
        if (getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
          err = errno;
      }
    }
    if (err == 0) {
      struct sockaddr_storage me, peer;
      socklen_t ml = sizeof(me), pl = sizeof(peer);
      /* a loopback retry can connect a socket to itself (TCP simultaneous open) */
      if (getsockname(b->fd, (struct sockaddr *)&me, &ml) == 0 &&
          getpeername(b->fd, (struct sockaddr *)&peer, &pl) == 0 && ml == pl &&
          memcmp(&me, &peer, ml) == 0)
        err = ECONNREFUSED;
      else
        break;
    }
    close(b->fd);
    b->fd = -1;
    last = err;
    if (!retryable(err)) {
      SET_ERR(errbuf, "rank %d: connect to the bootstrap root at %s failed: %s", b->rank, b->addr,
              strerror(err));
      return DUET_ERR_SYSTEM;
    }
    left = deadline - now_ms();
    if (left <= 0) {
      SET_ERR(errbuf,
              "rank %d: timed out after %lld ms waiting to connect to the bootstrap root at %s "
              "(%d attempts, last error: %s)",
              b->rank, (long long)(now_ms() - start), b->addr, tries, strerror(last));
      return DUET_ERR_TIMEOUT;
    }
    poll(NULL, 0, (int)(left < RETRY_MS ? left : RETRY_MS));
  }
  set_nodelay(b->fd);
  return DUET_SUCCESS;

out_close_socket:
  close(b->fd);
  b->fd = -1;
  return st;
}

duet_status_t duet__boot_connect(const duet_unique_id_t *id, int rank, int nranks, int timeout_ms,
                                 duet__boot_t **boot, char *errbuf) {
  uint8_t chal[DUET_BOOT_HDR_LEN + CHALLENGE_LEN], hello[DUET_BOOT_HDR_LEN + HELLO_LEN];
  uint8_t payload[HELLO_LEN];
  struct sockaddr_storage ss;
  socklen_t sslen;
  int64_t start = now_ms(), deadline;
  duet__boot_t *b;
  duet_status_t st;

  if (boot)
    *boot = NULL;
  if (!id || !boot || nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks ||
      timeout_ms <= 0) {
    SET_ERR(errbuf,
            "bootstrap connect: bad argument (rank %d, nranks %d, timeout_ms %d; need 0 <= rank "
            "< nranks <= %d, timeout_ms > 0, id and boot not NULL)",
            rank, nranks, timeout_ms, MAX_RANKS);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  deadline = start + timeout_ms;
  b = calloc(1, sizeof(*b));
  if (!b) {
    SET_ERR(errbuf, "bootstrap connect: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  b->fd = -1;
  b->rank = rank;
  b->nranks = nranks;
  b->timeout_ms = timeout_ms;
  st = id_decode(id, &ss, &sslen, b->secret, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free_boot;
  addr_str((struct sockaddr *)&ss, b->addr, sizeof(b->addr));

  st = client_connect(b, (struct sockaddr *)&ss, sslen, start, deadline, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free_boot;
  st = client_recv_frame(b, chal, DUET_BOOT_CHALLENGE, 0, CHALLENGE_LEN, 0, start, deadline,
                         "the CHALLENGE", errbuf);
  if (st != DUET_SUCCESS)
    goto out_close_socket;
  b->root_nonce = get_le(chal + DUET_BOOT_HDR_LEN, 8);

  if (fill_random(&b->client_nonce, sizeof(b->client_nonce)) != 0) {
    SET_ERR(errbuf, "rank %d: getrandom failed: %s", rank, strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_socket;
  }
  put_le(payload, (uint32_t)rank, 4);
  put_le(payload + 4, (uint32_t)nranks, 4);
  put_le(payload + 8, b->client_nonce, 8);
  duet__boot_frame_encode(hello, DUET_BOOT_HELLO, 0, payload, HELLO_LEN, b->secret, b->root_nonce,
                          0);
  st = client_send(b, hello, sizeof(hello), start, deadline, "HELLO", errbuf);
  if (st != DUET_SUCCESS)
    goto out_close_socket;
  DUET_TRACE(DUET_SUB_BOOT, "rank %d of %d joined the bootstrap root at %s", rank, nranks, b->addr);
  *boot = b;
  return DUET_SUCCESS;

out_close_socket:
  close(b->fd);
out_free_boot:
  memset(b->secret, 0, sizeof(b->secret));
  free(b);
  return st;
}

duet_status_t duet__boot_allgather(duet__boot_t *b, const void *mine, size_t len, void *all,
                                   char *errbuf) {
  int64_t start = now_ms(), deadline;
  uint8_t *out, *in;
  size_t total;
  uint32_t round;
  char what[64];
  duet_status_t st;

  if (!b || len > DUET_BOOT_MAX_BLOB || (len > 0 && (!mine || !all))) {
    SET_ERR(errbuf, "bootstrap allgather: bad argument (len %zu, limit %d, or a NULL pointer)", len,
            DUET_BOOT_MAX_BLOB);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (b->failed != DUET_SUCCESS) {
    SET_ERR(errbuf, "rank %d: the connection to the bootstrap root at %s failed earlier (%s)",
            b->rank, b->addr, duet_strerror(b->failed));
    return b->failed;
  }
  total = (size_t)b->nranks * len;
  if (total > UINT32_MAX) {
    SET_ERR(errbuf, "bootstrap allgather: %d ranks x %zu bytes exceeds 4 GiB", b->nranks, len);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  deadline = start + b->timeout_ms;
  round = b->round + 1;

  out = malloc(DUET_BOOT_HDR_LEN + len);
  if (!out) {
    SET_ERR(errbuf, "bootstrap allgather: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  duet__boot_frame_encode(out, DUET_BOOT_GATHER, round, mine, (uint32_t)len, b->secret,
                          b->root_nonce, 0);
  snprintf(what, sizeof(what), "GATHER of round %u", (unsigned)round);
  st = client_send(b, out, DUET_BOOT_HDR_LEN + len, start, deadline, what, errbuf);
  free(out);
  if (st != DUET_SUCCESS)
    goto out_fail;

  in = malloc(DUET_BOOT_HDR_LEN + total);
  if (!in) {
    SET_ERR(errbuf, "bootstrap allgather: out of memory for %zu bytes", total);
    st = DUET_ERR_NO_MEMORY;
    goto out_fail;
  }
  snprintf(what, sizeof(what), "the TABLE of round %u", (unsigned)round);
  st = client_recv_frame(b, in, DUET_BOOT_TABLE, round, (uint32_t)total, b->client_nonce, start,
                         deadline, what, errbuf);
  if (st == DUET_SUCCESS) {
    if (total)
      memcpy(all, in + DUET_BOOT_HDR_LEN, total);
    b->round = round;
  }
  free(in);
  if (st != DUET_SUCCESS)
    goto out_fail;
  return DUET_SUCCESS;

out_fail:
  b->failed = st;
  return st;
}

void duet__boot_close(duet__boot_t *b) {
  if (!b)
    return;
  if (b->fd >= 0)
    close(b->fd);
  memset(b->secret, 0, sizeof(b->secret));
  free(b);
}
