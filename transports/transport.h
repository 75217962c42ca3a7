/*
 * transport.h - the small internal transport interface.
 *
 * A transport opens one endpoint on one network, exports its address as an
 * opaque blob, learns its peers' blobs, and moves tagged messages. Operations
 * are asynchronous: isend/irecv post and return; progress() drives the
 * network and marks completed requests. Nothing here blocks for long: every
 * call returns DUET_SUCCESS, DUET_IN_PROGRESS (resource busy: progress and
 * post again) or a negative status with a message in errbuf.
 *
 * Receives are directed: a receive matches only a message from its peer with
 * exactly its tag. Messages between one pair with one tag match in order
 * (libfabric over shm: only those on the same side of 4 KiB, see ofi.c's
 * rendezvous; duet never has two messages of one tag in flight between a
 * pair: a tag names the call and the message within it).
 */
#ifndef DUET_TRANSPORT_H
#define DUET_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

#define DUET_TP_ADDR_MAX 256 /* largest address blob any transport exports */
#define DUET_TP_ERRLEN 256

/* One posted operation. Owned by the caller, which must keep it alive until
 * done != 0. The transport sets status, then len (bytes actually received),
 * then done. */
typedef struct duet__tp_req {
  volatile int done;
  duet_status_t status;
  size_t len;
} duet__tp_req_t;

typedef struct duet__tp_params {
  const char *provider; /* libfabric provider name ("tcp;ofi_rxm", "shm", ...); NULL: any */
  const char *iface;    /* interface name (tcp: or IP address) / libfabric domain name;
                           NULL: provider's choice */
  int yield;            /* progress should yield the CPU: more ranks than cores */
  int timeout_ms;       /* deadline of a wait inside the transport (libfabric's connection
                           warm-up in insert_peers): the communicator's; 0: 60 s */
  int tcp_sndbuf;       /* duet's tcp: SO_SNDBUF of bulk connections; 0: kernel's autotuning */
  int stall_ms;         /* planes: a plane whose transfer to a peer has made no progress this
                           long, while the peer answers on the other planes, is lost; 0: never */
} duet__tp_params_t;

typedef struct duet__tp_ep duet__tp_ep_t; /* one transport's endpoint */

typedef struct duet__tp_ops {
  size_t size;      /* sizeof(duet__tp_ops_t) this transport was built with */
  const char *name; /* "ofi", "self" */
  /* Open an endpoint. Blocks briefly (provider setup). */
  duet_status_t (*open)(const duet__tp_params_t *params, duet__tp_ep_t **ep, char *errbuf);
  /* Copy the endpoint's address blob into addr (DUET_TP_ADDR_MAX bytes). */
  duet_status_t (*get_addr)(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf);
  /* Learn npeers peers: addrs holds npeers blobs of stride bytes each, the
   * k-th blob addrlens[k] long; afterwards peer index k names that peer. May
   * connect eagerly. Called once. */
  duet_status_t (*insert_peers)(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                size_t stride, const size_t *addrlens, char *errbuf);
  duet_status_t (*isend)(duet__tp_ep_t *ep, int peer, const void *buf, size_t len,
                         uint64_t tag, duet__tp_req_t *req, char *errbuf);
  duet_status_t (*irecv)(duet__tp_ep_t *ep, int peer, void *buf, size_t len, uint64_t tag,
                         duet__tp_req_t *req, char *errbuf);
  /* Drive the network; completes requests. Returns a negative status only for
   * an endpoint-wide failure (errors of one request go into req->status). */
  duet_status_t (*progress)(duet__tp_ep_t *ep, char *errbuf);
  /* Close; outstanding requests are abandoned (never completed). */
  void (*close)(duet__tp_ep_t *ep);
  /* Optional (NULL: the endpoint cannot block). Ask whether the caller may
   * sleep until the network has work: DUET_SUCCESS with *fd set to a
   * descriptor that polls readable when it has (nothing is pending that only
   * progress() would find), or to -1 when nothing can arrive from outside
   * (no descriptor needed); DUET_IN_PROGRESS when progress() must run first;
   * DUET_ERR_UNSUPPORTED when this endpoint has no such descriptor. Used only
   * when params->yield is set (more ranks than cores). */
  duet_status_t (*wait_fd)(duet__tp_ep_t *ep, int *fd, char *errbuf);
  /* Optional (NULL: the transport needs nothing). A wait for peer has lasted
   * a while (DESIGN section 7): make sure this endpoint will learn if peer
   * has left. A transport that connects lazily and sees a peer leave only
   * on a connection connects to it now; the peer leaving then fails the
   * pair's requests (a refused dial, a connection's end). Never blocks. */
  void (*watch)(duet__tp_ep_t *ep, int peer);
  /* Optional (NULL: no bound). How many sends and how many receives the
   * endpoint can hold posted at once (0: no bound); past that, isend/irecv
   * return DUET_IN_PROGRESS until some complete. Asked after insert_peers. */
  void (*queue_sizes)(duet__tp_ep_t *ep, size_t *sends, size_t *recvs);
} duet__tp_ops_t;

/* Write the message into errbuf (if any) and log it once as a warning,
 * prefixed with who ("ofi", "tcp", "self"). */
void duet__tp_seterr(char *errbuf, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Complete a request: status, then len, then done (release). */
void duet__tp_complete(duet__tp_req_t *req, duet_status_t status, size_t len);

/* The descriptors an endpoint of ops may hold per peer: duet's tcp up to
 * four sockets (two lanes each way, each dialled at its first message),
 * libfabric's socket-based providers one connection, shared memory none;
 * planes the sum over their planes (iface: the comma list). *at_init: how
 * many of them insert_peers opens (libfabric's, connected eagerly). */
int duet__tp_fds_per_peer(const duet__tp_ops_t *ops, const char *provider, const char *iface,
                          int *at_init);

extern const duet__tp_ops_t duet__tp_ofi;
/* Why libfabric's shm is not offered, when it is /dev/shm's free space (it
 * wants 16 MiB there per online CPU): "; /dev/shm has ...", or "" in why. */
void duet__ofi_shm_space_hint(char *why, size_t len);
extern const duet__tp_ops_t duet__tp_self;
extern const duet__tp_ops_t duet__tp_tcp; /* duet's own sockets: provider "tcp" */
/* Two or more HPN planes: params->iface is a comma list, one endpoint of the
 * provider's transport per plane, striping and failover (planes/planes.c). */
extern const duet__tp_ops_t duet__tp_planes;
/* The planes an endpoint of duet__tp_planes has lost (bit q: plane q). */
unsigned duet__tp_planes_dead(const duet__tp_ep_t *ep);

/* The transport that carries a provider name: "tcp" is duet's socket
 * transport, every other name (including "tcp;ofi_rxm") libfabric's. */
const duet__tp_ops_t *duet__tp_for_provider(const char *provider);

#endif /* DUET_TRANSPORT_H */
