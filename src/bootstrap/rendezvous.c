/*
 * rendezvous.c - a rank's side of the bootstrap: connect to the root named by
 * the unique id, join with the handshake, and run allgather rounds through it.
 * The root is in root.c, the unique id in unique_id.c; the protocol is
 * described in boot_int.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bootstrap/boot_int.h"
#include "core/log.h"

#define RETRY_MS 50 /* client's connect retry period */

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
    int64_t left = deadline - duet__boot_now_ms();
    int rc;
    if (left <= 0) {
      SET_ERR(errbuf, "rank %d: timed out after %lld ms waiting %s the bootstrap root at %s",
              b->rank, (long long)(duet__boot_now_ms() - start), what, b->addr);
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

static int is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  return sa->sa_family == AF_INET6 &&
         IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

/* duet_get_unique_id's root listens on loopback unless DUET_BOOT_IFACE is
 * set: a rank on another host that was handed such an id connects to its
 * own loopback, and only this hint tells its user why. */
#define LOOPBACK_HINT                                                                              \
  "; a loopback address, which other hosts cannot reach: for a job across hosts set "              \
  "DUET_BOOT_IFACE (e.g. eth0) where duet_get_unique_id runs"
#define LOOPBACK_WARN_MS 10000 /* refused that long: say so before the timeout */

/* Connect b->fd to sa, retrying every RETRY_MS until deadline. */
static duet_status_t client_connect(duet__boot_t *b, const struct sockaddr *sa, socklen_t salen,
                                    int64_t start, int64_t deadline, char *errbuf) {
  int last = 0, tries = 0, warned = 0;
  const int loopback = is_loopback(sa);
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
        if (st == DUET_ERR_TIMEOUT && loopback && last == ECONNREFUSED && errbuf)
          snprintf(errbuf + strlen(errbuf), DUET_BOOT_ERRLEN - strlen(errbuf),
                   " (refused %d times)" LOOPBACK_HINT, tries - 1);
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
    left = deadline - duet__boot_now_ms();
    if (left <= 0) {
      SET_ERR(errbuf,
              "rank %d: timed out after %lld ms waiting to connect to the bootstrap root at %s "
              "(%d attempts, last error: %s)%s",
              b->rank, (long long)(duet__boot_now_ms() - start), b->addr, tries, strerror(last),
              loopback && last == ECONNREFUSED ? LOOPBACK_HINT : "");
      return DUET_ERR_TIMEOUT;
    }
    if (loopback && last == ECONNREFUSED && !warned &&
        duet__boot_now_ms() - start >= LOOPBACK_WARN_MS) {
      warned = 1;
      DUET_WARN(DUET_SUB_BOOT,
                "rank %d: nothing has listened at the bootstrap root %s for %d s%s; still trying "
                "for %lld s",
                b->rank, b->addr, LOOPBACK_WARN_MS / 1000, LOOPBACK_HINT, (long long)(left / 1000));
    }
    poll(NULL, 0, (int)(left < RETRY_MS ? left : RETRY_MS));
  }
  duet__boot_set_nodelay(b->fd);
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
  int64_t start = duet__boot_now_ms(), deadline;
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
  st = duet__boot_id_decode(id, &ss, &sslen, b->secret, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free_boot;
  duet__boot_addr_str((struct sockaddr *)&ss, b->addr, sizeof(b->addr));

  st = client_connect(b, (struct sockaddr *)&ss, sslen, start, deadline, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free_boot;
  st = client_recv_frame(b, chal, DUET_BOOT_CHALLENGE, 0, CHALLENGE_LEN, 0, start, deadline,
                         "the CHALLENGE", errbuf);
  if (st != DUET_SUCCESS)
    goto out_close_socket;
  b->root_nonce = duet__boot_get_le(chal + DUET_BOOT_HDR_LEN, 8);

  if (duet__boot_fill_random(&b->client_nonce, sizeof(b->client_nonce)) != 0) {
    SET_ERR(errbuf, "rank %d: getrandom failed: %s", rank, strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_close_socket;
  }
  duet__boot_put_le(payload, (uint32_t)rank, 4);
  duet__boot_put_le(payload + 4, (uint32_t)nranks, 4);
  duet__boot_put_le(payload + 8, b->client_nonce, 8);
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
  int64_t start = duet__boot_now_ms(), deadline;
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
