/*
 * endpoint.c - duet's TCP transport: opening an endpoint, its address,
 * connecting to the peers, closing. The message path is in tcp.c.
 *
 * Connections: every endpoint listens on the interface the caller names (an
 * interface name or an IP address; none: the first non-loopback IPv4
 * interface that is up, else loopback). insert_peers makes, per pair of
 * endpoints, a main connection used in both directions (small messages; the
 * kernel's acknowledgements ride on data going the other way), dialled by
 * the endpoint with the lower random token, and one bulk connection per
 * direction (messages of 64 KiB or more), dialled by the sender, so that
 * two large transfers in opposite directions do not contend for one
 * socket. An endpoint reaches itself only through a main lane of two
 * sockets (it sends on the one it dialled and receives on the one it
 * accepted). The dialler's first 40 bytes are a hello holding the lane, the
 * listener's 128-bit token (learned from the address blob, which came
 * through the authenticated bootstrap) and its own; a connection that does
 * not present them is closed and logged. insert_peers is collective over the
 * inserted peers and fails after TCP_CONNECT_SEC naming the peer it lacks.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "tcp.h"

static double tcp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- open / addresses / connections / close ------------------------------ */

/* The address to listen on: iface as an IP address or an interface name;
 * none: the first non-loopback IPv4 interface that is up, else loopback. */
static duet_status_t tcp_pick_addr(const char *iface, struct sockaddr_storage *ss, socklen_t *sslen,
                                   char *errbuf) {
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
    duet__tp_seterr(errbuf, "tcp", "getifaddrs: %s", strerror(errno));
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
    duet__tp_seterr(errbuf, "tcp",
                    "interface '%s' has no IP address that is up (DUET_UPN_IFACE / "
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

duet_status_t duet__tcp_open(const duet__tp_params_t *params, duet__tp_ep_t **out, char *errbuf) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  tcp_ep_t *e;
  duet_status_t st;
  int one = 1;

  *out = NULL;
  e = calloc(1, sizeof *e);
  if (!e) {
    duet__tp_seterr(errbuf, "tcp", "open: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  e->epfd = -1;
  e->yield = params ? params->yield : 0;
  e->sndbuf = params ? params->tcp_sndbuf : 0;
  st = tcp_pick_addr(params ? params->iface : NULL, &ss, &sslen, errbuf);
  if (st != DUET_SUCCESS)
    goto out_free;
  if (getrandom(e->addr.token, sizeof e->addr.token, 0) != (ssize_t)sizeof e->addr.token) {
    duet__tp_seterr(errbuf, "tcp", "getrandom: %s", strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_free;
  }
  e->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (e->lfd < 0) {
    duet__tp_seterr(errbuf, "tcp", "socket: %s", strerror(errno));
    st = DUET_ERR_SYSTEM;
    goto out_free;
  }
  (void)setsockopt(e->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(e->lfd, (struct sockaddr *)&ss, sslen) != 0 || listen(e->lfd, SOMAXCONN) != 0 ||
      getsockname(e->lfd, (struct sockaddr *)&ss, &sslen) != 0) {
    duet__tp_seterr(errbuf, "tcp", "listen on %s: %s",
                    params && params->iface ? params->iface : "default", strerror(errno));
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

duet_status_t duet__tcp_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf) {
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
static duet_status_t tcp_connect_start(tcp_ep_t *e, int k, int lane, const tcp_addr_t *a,
                                       char *errbuf) {
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
    duet__tp_seterr(errbuf, "tcp", "socket for peer %d: %s%s", k, strerror(errno),
                    errno == EMFILE ? " (RLIMIT_NOFILE: ulimit -n)" : "");
    return DUET_ERR_SYSTEM;
  }
  tcp_nodelay(fd);
  /* A bounded send buffer on the bulk lane: the sender stays a few hundred
   * KiB ahead of its receiver instead of the megabytes autotuning grants, so
   * the receiver copies out bytes that are still in cache and the kernel
   * allocates fewer buffers. On loopback at 4 MiB and more this took a
   * quarter off the CPU time of an all-to-all (docs/PERFORMANCE.md). */
  if (lane == TCP_BULK && e->sndbuf > 0 &&
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &e->sndbuf, sizeof e->sndbuf) != 0)
    DUET_INFO(DUET_SUB_NET, "tcp: SO_SNDBUF %d for peer %d: %s", e->sndbuf, k, strerror(errno));
  if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 && errno != EINPROGRESS) {
    duet__tp_seterr(errbuf, "tcp", "connect to peer %d: %s", k, strerror(errno));
    close(fd);
    return DUET_ERR_REMOTE;
  }
  e->conns[k].tx[lane].fd = fd;
  return DUET_SUCCESS;
}

/* Read more of an accepted connection's hello; when complete, file it under
 * its peer. Returns 1 when the connection is done with (identified or
 * rejected), 0 when more bytes are due. */
static int tcp_hello_in(tcp_ep_t *e, tcp_pending_t *p, int *nin) {
  ssize_t n = recv(p->fd, (uint8_t *)&p->hello + p->got, sizeof p->hello - p->got, MSG_DONTWAIT);
  const char *why = NULL;
  uint32_t lane;
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
  if (k == e->npeers) {
    why = "a hello from no inserted peer";
    goto out_reject;
  }
  lane = p->hello.lane;
  if (lane != TCP_MAIN && lane != TCP_BULK) {
    why = "a hello for no lane";
    goto out_reject;
  }
  if (e->conns[k].rx[lane].fd >= 0 ||
      (lane == TCP_MAIN ? tcp_dials(e, k) > 0 : tcp_dials(e, k) == 0)) {
    why = e->conns[k].rx[lane].fd >= 0 ? "a second connection from a peer"
                                       : "a connection this endpoint should have dialled";
    goto out_reject;
  }
  e->conns[k].rx[lane].fd = p->fd;
  if (lane == TCP_MAIN && tcp_dials(e, k) < 0) /* not itself: both directions */
    e->conns[k].tx[TCP_MAIN].fd = p->fd;
  tcp_nodelay(p->fd);
  (*nin)++;
  return 1;

out_reject:
  DUET_WARN(DUET_SUB_NET, "tcp: dropped an incoming connection: %s", why);
  close(p->fd);
  return 1;
}

/* Whether peer k's lane still lacks the connection the peer dials. */
static int tcp_in_missing(const tcp_ep_t *e, int k, int lane) {
  int expected = lane == TCP_MAIN ? tcp_dials(e, k) <= 0 : tcp_dials(e, k) != 0;
  return expected && e->conns[k].rx[lane].fd < 0;
}

duet_status_t duet__tcp_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                     size_t stride, const size_t *addrlens, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  double t0 = tcp_now(), deadline = t0 + TCP_CONNECT_SEC;
  tcp_pending_t *pend = NULL;
  struct pollfd *pfd = NULL;
  int npend = 0, maxpend, nin = 0, nout = 0, want_in = 0, want_out = 0;
  char *sent = NULL; /* [2k + lane]: hello written (or nothing to dial) */
  duet_status_t st = DUET_SUCCESS;

  if (e->conns) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: called twice");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (npeers <= 0) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: npeers %d", npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  e->conns = calloc((size_t)npeers, sizeof *e->conns);
  maxpend = 2 * npeers + TCP_PENDING_EXTRA;
  pend = calloc((size_t)maxpend, sizeof *pend);
  pfd = calloc(2 * (size_t)npeers + (size_t)maxpend + 1, sizeof *pfd);
  sent = calloc(2 * (size_t)npeers, 1);
  if (!e->conns || !pend || !pfd || !sent) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: out of memory for %d peers", npeers);
    st = DUET_ERR_NO_MEMORY;
    goto out;
  }
  e->npeers = npeers;
  for (int k = 0; k < npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    for (int l = 0; l < TCP_LANES; l++) {
      c->tx[l].fd = c->rx[l].fd = -1;
      c->tx[l].tail = &c->tx[l].head;
    }
    c->rq_tail = &c->rq_head;
    c->ux_tail = &c->ux_head;
  }
  for (int k = 0; k < npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    tcp_addr_t a;
    if (addrlens[k] != sizeof a) {
      duet__tp_seterr(errbuf, "tcp", "insert_peers: peer %d's address has %zu bytes, want %zu", k,
                      addrlens[k], sizeof a);
      st = DUET_ERR_INVALID_ARGUMENT;
      goto out;
    }
    memcpy(&a, (const char *)addrs + (size_t)k * stride, sizeof a);
    if (a.magic != TCP_MAGIC || (a.family != AF_INET && a.family != AF_INET6)) {
      duet__tp_seterr(errbuf, "tcp", "insert_peers: peer %d's address is not a tcp address", k);
      st = DUET_ERR_INVALID_ARGUMENT;
      goto out;
    }
    c->token[0] = a.token[0];
    c->token[1] = a.token[1];
    for (int l = 0; l < TCP_LANES; l++) {
      /* main: dialled by the lower token (by both ends when it is itself);
       * bulk: by each end for its own sends (none to itself) */
      int dial = l == TCP_MAIN ? tcp_dials(e, k) >= 0 : tcp_dials(e, k) != 0;
      if (l == TCP_BULK && tcp_dials(e, k) == 0) {
        sent[2 * k + l] = 1;
        continue;
      }
      want_in += tcp_in_missing(e, k, l);
      c->rx[l].stage = malloc(TCP_STAGE);
      if (!c->rx[l].stage) {
        duet__tp_seterr(errbuf, "tcp", "insert_peers: out of memory for staging buffers");
        st = DUET_ERR_NO_MEMORY;
        goto out;
      }
      if (!dial) {
        sent[2 * k + l] = 1; /* the peer dials */
        continue;
      }
      want_out++;
      st = tcp_connect_start(e, k, l, &a, errbuf);
      if (st != DUET_SUCCESS)
        goto out;
    }
  }
  /* Finish our connects (hello once writable), accept and identify theirs. */
  while (nout < want_out || nin < want_in) {
    int n = 0, ready;
    if (tcp_now() > deadline) {
      int k = 0, out_missing = 0;
      for (; k < npeers; k++) {
        out_missing = !sent[2 * k] || !sent[2 * k + 1];
        if (out_missing || tcp_in_missing(e, k, TCP_MAIN) || tcp_in_missing(e, k, TCP_BULK))
          break;
      }
      duet__tp_seterr(errbuf, "tcp",
                      "insert_peers: no %s peer %d within %d s (it did not open its endpoint, "
                      "or failed in insert_peers: see its own error)",
                      out_missing ? "connection to" : "connection from", k, TCP_CONNECT_SEC);
      st = DUET_ERR_TIMEOUT;
      goto out;
    }
    pfd[n++] = (struct pollfd){.fd = e->lfd, .events = POLLIN};
    for (int i = 0; i < 2 * npeers; i++)
      if (!sent[i])
        pfd[n++] = (struct pollfd){.fd = e->conns[i / 2].tx[i % 2].fd, .events = POLLOUT};
    for (int i = 0; i < npend; i++)
      pfd[n++] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
    ready = poll(pfd, (nfds_t)n, 100);
    if (ready < 0 && errno != EINTR) {
      duet__tp_seterr(errbuf, "tcp", "insert_peers: poll: %s", strerror(errno));
      st = DUET_ERR_SYSTEM;
      goto out;
    }
    if (ready <= 0)
      continue;
    for (int i = 0; i < 2 * npeers; i++) { /* connects that finished */
      int k = i / 2, l = i % 2, fd = e->conns[k].tx[l].fd, err = 0;
      socklen_t len = sizeof err;
      tcp_hello_t h = {.magic = TCP_HELLO_MAGIC, .lane = (uint32_t)l};
      struct pollfd q = {.fd = fd, .events = POLLOUT};
      if (sent[i] || poll(&q, 1, 0) != 1)
        continue;
      (void)getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        duet__tp_seterr(errbuf, "tcp", "insert_peers: connect to peer %d: %s", k, strerror(err));
        st = DUET_ERR_REMOTE;
        goto out;
      }
      memcpy(h.to, e->conns[k].token, sizeof h.to);
      memcpy(h.from, e->addr.token, sizeof h.from);
      if (send(fd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h) {
        duet__tp_seterr(errbuf, "tcp", "insert_peers: hello to peer %d: %s", k, strerror(errno));
        st = DUET_ERR_REMOTE;
        goto out;
      }
      sent[i] = 1;
      nout++;
      if (l == TCP_MAIN && tcp_dials(e, k) > 0) /* not itself: both directions */
        e->conns[k].rx[TCP_MAIN].fd = fd;
    }
    for (int i = 0; i < npend;) /* hellos of accepted connections */
      if (tcp_hello_in(e, &pend[i], &nin))
        pend[i] = pend[--npend];
      else
        i++;
    while (npend < maxpend) { /* new connections */
      int fd = accept4(e->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
        duet__tp_seterr(errbuf, "tcp", "insert_peers: accept: %s (%d peers, 3 sockets each)",
                        strerror(errno), npeers);
        st = DUET_ERR_SYSTEM;
        goto out;
      }
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

void duet__tcp_close(duet__tp_ep_t *ep) {
  tcp_ep_t *e = (tcp_ep_t *)ep;
  if (!e)
    return;
  for (int k = 0; e->conns && k < e->npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    for (int l = 0; l < TCP_LANES; l++) {
      if (c->tx[l].fd >= 0)
        close(c->tx[l].fd);
      if (c->rx[l].fd >= 0 && c->rx[l].fd != c->tx[l].fd)
        close(c->rx[l].fd);
      free(c->rx[l].stage);
    }
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
