/*
 * endpoint.c - duet's TCP transport: opening an endpoint, its address,
 * connecting to the peers, closing. The message path is in tcp.c.
 *
 * Connections: every endpoint listens on the interface the caller names (an
 * interface name or an IP address; none: the first IPv4 interface that is
 * running and is neither loopback nor a container bridge, else loopback) for
 * its whole life. Init connects nothing: each lane is dialled by a sender at
 * its first message there (tcp.h), so a rank holds connections only to the
 * peers it talks to (a hierarchical job's rails, a ring's neighbours), at
 * most three per peer. The dialler's first 40 bytes are a hello holding the
 * lane, the listener's 128-bit token (learned from the address blob, which
 * came through the authenticated bootstrap) and its own; a connection that
 * does not present them is closed and logged. Incoming connections are
 * accepted when a receive waits for the lane they bring, or a main lane its
 * peer's.
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

/* ---- open / addresses / connections / close ------------------------------ */

/* An interface the default may take: running (up, with a carrier), not
 * loopback, not a container's or virtual machines' bridge (docker0,
 * virbr0: the same address on every host, so peers would dial their own),
 * and for IPv6 not link-local (an address no other host can use as is). */
static int tcp_default_iface(const struct ifaddrs *i) {
  if ((i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_RUNNING))
    return 0;
  if (strncmp(i->ifa_name, "docker", 6) == 0 || strncmp(i->ifa_name, "virbr", 5) == 0)
    return 0;
  return i->ifa_addr->sa_family != AF_INET6 ||
         !IN6_IS_ADDR_LINKLOCAL(&((const struct sockaddr_in6 *)i->ifa_addr)->sin6_addr);
}

/* The address to listen on: iface as an IP address or an interface name;
 * none: the first IPv4 interface tcp_default_iface takes (then IPv6), else
 * loopback. */
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
      if (iface ? strcmp(i->ifa_name, iface) == 0 : tcp_default_iface(i))
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

static double tcp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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
  e->accept_gap = TCP_ACCEPT_AWAITED_NS;
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

/* Register fd with the epoll set (want: events, 0: none); *have tracks it. */
static void tcp_epoll_forget(tcp_ep_t *e, int fd, uint32_t *have) {
  if (*have && e->epfd >= 0)
    (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
  *have = 0;
}

/* Start a non-blocking connect of lane to peer k's listener. */
duet_status_t duet__tcp_dial(tcp_ep_t *e, int k, int lane) {
  tcp_conn_t *c = &e->conns[k];
  const tcp_addr_t *a = &c->addr;
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
    duet__tcp_conn_fail(e, c,
                        errno == EMFILE || errno == ENFILE ? DUET_ERR_SYSTEM : DUET_ERR_REMOTE,
                        "socket for the %s lane: %s%s", lane == TCP_MAIN ? "main" : "bulk",
                        strerror(errno), errno == EMFILE ? " (RLIMIT_NOFILE: ulimit -n)" : "");
    return c->dead;
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
  c->tx[lane].fd = fd;
  c->tx[lane].state = TX_CONNECTING;
  c->tx[lane].hello_off = 0;
  if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 && errno != EINPROGRESS) {
    duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "connect: %s", strerror(errno));
    return c->dead;
  }
  return DUET_SUCCESS;
}

/* An incoming lane's staging buffer, made at its first connection. */
static int tcp_stage_make(tcp_ep_t *e, tcp_conn_t *c, int lane) {
  if (!c->rx[lane].stage && !(c->rx[lane].stage = malloc(TCP_STAGE))) {
    duet__tcp_conn_fail(e, c, DUET_ERR_NO_MEMORY, "out of memory for a staging buffer");
    return -1;
  }
  return 0;
}

/* The main lane to peer k is open on fd, both ways. */
static void tcp_main_up(tcp_conn_t *c, int fd) {
  c->tx[TCP_MAIN].fd = c->rx[TCP_MAIN].fd = fd;
  c->tx[TCP_MAIN].state = TX_UP;
}

/* Finish lane's connect to peer k: once the socket is writable its hello
 * (the first bytes on every connection), then, on the main lane to another
 * endpoint, the peer's welcome. Returns whether the lane is up. */
int duet__tcp_dial_done(tcp_ep_t *e, int k, int lane) {
  tcp_conn_t *c = &e->conns[k];
  tcp_tx_t *tx = &c->tx[lane];
  tcp_hello_t h = {.magic = TCP_HELLO_MAGIC, .lane = (uint32_t)lane};
  ssize_t n;
  if (tx->state == TX_CONNECTING) {
    struct pollfd q = {.fd = tx->fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&q, 1, 0) != 1)
      return 0;
    (void)getsockopt(tx->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "connect: %s", strerror(err));
      return 0;
    }
    tx->state = TX_HELLO;
  }
  if (tx->state == TX_HELLO) {
    memcpy(h.to, c->addr.token, sizeof h.to);
    memcpy(h.from, e->addr.token, sizeof h.from);
    n = send(tx->fd, (uint8_t *)&h + tx->hello_off, sizeof h - tx->hello_off,
             MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "hello: %s", strerror(errno));
      return 0;
    }
    if (n > 0)
      tx->hello_off += (size_t)n;
    if (tx->hello_off < sizeof h)
      return 0;
    tx->state = lane == TCP_MAIN && !c->self ? TX_WELCOME : TX_UP;
  }
  if (tx->state == TX_WELCOME) {
    uint8_t w = 0;
    n = recv(tx->fd, &w, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return 0;
    if (n == 1 && w == TCP_WELCOME) {
      if (tcp_stage_make(e, c, TCP_MAIN) != 0)
        return 0;
      c->ev[0] = c->ev[2]; /* its epoll registration now counts as the main lane's */
      c->ev[2] = 0;
      tcp_main_up(c, tx->fd);
    } else if (n == 1 && w == TCP_REFUSE) { /* the peer dialled too, and its connection stays */
      close(tx->fd);
      tx->fd = -1;
      c->ev[2] = 0;
      tx->state = TX_AWAIT;
    } else if (n == 1) {
      duet__tcp_conn_fail(e, c, DUET_ERR_PROTOCOL, "main lane: %#x instead of a welcome", w);
      return 0;
    } else { /* its endpoint closed with this connection unanswered */
      duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE,
                          "main lane: the peer's endpoint closed before answering (%s): it left",
                          n == 0 ? "end of stream" : strerror(errno));
      return 0;
    }
  }
  return tx->state == TX_UP;
}

/* Read more of an accepted connection's hello; when complete, file it under
 * its peer and lane. Returns 1 when the connection is done with (filed or
 * rejected), 0 when more bytes are due. */
static int tcp_hello_in(tcp_ep_t *e, tcp_pending_t *p) {
  ssize_t n = recv(p->fd, (uint8_t *)&p->hello + p->got, sizeof p->hello - p->got, MSG_DONTWAIT);
  const char *why = NULL;
  tcp_conn_t *c;
  uint32_t lane;
  int k;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    n = 0, errno = EAGAIN;
  else if (n <= 0) {
    why = n == 0 ? "closed before its hello" : strerror(errno);
    goto out_reject;
  }
  p->got += (size_t)n;
  if (p->got < sizeof p->hello) {
    if (tcp_now() - p->since < TCP_HELLO_SEC)
      return 0;
    why = "no hello within 10 s";
    goto out_reject;
  }
  if (p->hello.magic != TCP_HELLO_MAGIC || p->hello.to[0] != e->addr.token[0] ||
      p->hello.to[1] != e->addr.token[1]) {
    why = "a hello without this endpoint's token";
    goto out_reject;
  }
  for (k = 0; k < e->npeers; k++)
    if (e->conns[k].addr.token[0] == p->hello.from[0] &&
        e->conns[k].addr.token[1] == p->hello.from[1])
      break;
  if (k == e->npeers) {
    why = "a hello from no inserted peer";
    goto out_reject;
  }
  c = &e->conns[k];
  lane = p->hello.lane;
  if (lane != TCP_MAIN && lane != TCP_BULK) {
    why = "a hello for no lane";
    goto out_reject;
  }
  if (lane == TCP_MAIN && !c->self && c->rx[TCP_MAIN].fd >= 0)
    goto out_refuse; /* both ends dialled, and the other connection is up already */
  if (c->rx[lane].fd >= 0 || (lane == TCP_BULK && c->self)) {
    why = "a second connection for a lane";
    goto out_reject;
  }
  if (lane == TCP_MAIN && !c->self && c->tx[TCP_MAIN].fd >= 0) { /* both dialled */
    const uint64_t *mine = e->addr.token, *theirs = c->addr.token;
    if (mine[0] < theirs[0] || (mine[0] == theirs[0] && mine[1] < theirs[1]))
      goto out_refuse; /* ours stays: they wait for it */
    close(c->tx[TCP_MAIN].fd); /* theirs stays: ours was refused or will be */
    c->tx[TCP_MAIN].fd = -1;
    c->ev[2] = 0;
  }
  if (tcp_stage_make(e, c, (int)lane) != 0) {
    tcp_epoll_forget(e, p->fd, &p->ev);
    close(p->fd);
    return 1;
  }
  tcp_epoll_forget(e, p->fd, &p->ev);
  tcp_nodelay(p->fd);
  if (lane == TCP_MAIN && !c->self) {
    uint8_t w = TCP_WELCOME;
    if (send(p->fd, &w, 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
      duet__tcp_conn_fail(e, c, DUET_ERR_REMOTE, "welcome: %s", strerror(errno));
      close(p->fd);
      return 1;
    }
    tcp_main_up(c, p->fd);
  } else {
    c->rx[lane].fd = p->fd;
  }
  e->filed++;
  duet__tcp_wake(e, c);
  return 1;

out_refuse: { /* its dialler waits for our connection (a close alone would say we left) */
  uint8_t no = TCP_REFUSE;
  (void)send(p->fd, &no, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}
out_reject:
  if (why)
    DUET_WARN(DUET_SUB_NET, "tcp: dropped an incoming connection: %s", why);
  tcp_epoll_forget(e, p->fd, &p->ev);
  close(p->fd);
  return 1;
}

/* Accept the connections waiting at the listener and read their hellos.
 * Returns 0, or the errno of an accept that ran out of descriptors or
 * memory (the connection stays queued at the listener). */
int duet__tcp_accept(tcp_ep_t *e) {
  int err = 0;
  while (e->npend < TCP_PENDING_MAX) {
    int fd = accept4(e->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        err = errno;
      break;
    }
    e->pend[e->npend++] = (tcp_pending_t){.fd = fd, .since = tcp_now()};
  }
  for (int i = 0; i < e->npend;)
    if (tcp_hello_in(e, &e->pend[i]))
      e->pend[i] = e->pend[--e->npend];
    else
      i++;
  return err;
}

/* Learn the peers. Nothing is connected here: each lane is dialled by its
 * sender at its first message (a job's ranks talk to a few of their peers
 * only: the hierarchy's rails, a ring's neighbours), and accepted when a
 * receive waits for it. */
duet_status_t duet__tcp_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                     size_t stride, const size_t *addrlens, char *errbuf) {
  tcp_ep_t *e = (tcp_ep_t *)ep;

  if (e->conns) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: called twice");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (npeers <= 0) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: npeers %d", npeers);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  for (int k = 0; k < npeers; k++) {
    tcp_addr_t a;
    if (addrlens[k] != sizeof a) {
      duet__tp_seterr(errbuf, "tcp", "insert_peers: peer %d's address has %zu bytes, want %zu", k,
                      addrlens[k], sizeof a);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    memcpy(&a, (const char *)addrs + (size_t)k * stride, sizeof a);
    if (a.magic != TCP_MAGIC || (a.family != AF_INET && a.family != AF_INET6)) {
      duet__tp_seterr(errbuf, "tcp", "insert_peers: peer %d's address is not a tcp address", k);
      return DUET_ERR_INVALID_ARGUMENT;
    }
  }
  e->conns = calloc((size_t)npeers, sizeof *e->conns);
  e->act = calloc((size_t)npeers, sizeof *e->act);
  e->park = calloc((size_t)npeers, sizeof *e->park);
  if (!e->conns || !e->act || !e->park) {
    duet__tp_seterr(errbuf, "tcp", "insert_peers: out of memory for %d peers", npeers);
    return DUET_ERR_NO_MEMORY;
  }
  e->npeers = npeers;
  for (int k = 0; k < npeers; k++) {
    tcp_conn_t *c = &e->conns[k];
    memcpy(&c->addr, (const char *)addrs + (size_t)k * stride, sizeof c->addr);
    c->self = c->addr.token[0] == e->addr.token[0] && c->addr.token[1] == e->addr.token[1];
    for (int l = 0; l < TCP_LANES; l++) {
      c->tx[l].fd = c->rx[l].fd = -1;
      c->tx[l].tail = &c->tx[l].head;
    }
    c->rq_tail = &c->rq_head;
    c->ux_tail = &c->ux_head;
  }
  return DUET_SUCCESS;
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
  for (int i = 0; i < e->npend; i++)
    close(e->pend[i].fd);
  for (int i = 0; i < e->nchunks; i++)
    free(e->chunks[i]);
  free(e->chunks);
  free(e->conns);
  free(e->act);
  free(e->park);
  if (e->epfd >= 0)
    close(e->epfd);
  if (e->lfd >= 0)
    close(e->lfd);
  free(e);
}
