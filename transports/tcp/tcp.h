/*
 * tcp.h - the types duet's TCP transport shares between its two files:
 * tcp.c (messages: posting, matching, reading, writing, waiting) and
 * endpoint.c (addresses, connections, teardown).
 */
#ifndef DUET_TCP_H
#define DUET_TCP_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

#define TCP_MAGIC 0x64756532u       /* "due2": the wire format of 32-byte headers */
#define TCP_HELLO_MAGIC 0x64754831u /* hello of a new connection */
#define TCP_STAGE (64 * 1024)       /* staging buffer per incoming connection */
#define TCP_DIRECT 4096             /* payload left to read straight into place */
#define TCP_STAGED (32 * 1024)      /* payloads read with their header, in one recv */
#define TCP_OPS_CHUNK 64            /* operations allocated at a time */
#define TCP_PENDING_MAX 64          /* accepted connections awaiting their hello */
#define TCP_HELLO_SEC 10.0          /* ... for at most this long */
/* Progress reads the listener this often (ns) when a receive starts to
 * await a lane the peer has not connected (less often the longer nothing
 * comes), and at least every TCP_ACCEPT_IDLE_NS. */
#define TCP_ACCEPT_AWAITED_NS 20000
#define TCP_ACCEPT_IDLE_NS 1000000
/* While receives wait, progress looks at the next header of a lane they do
 * not read this often (ns): a message of the other size class for one of
 * them (a length mismatch, or a short message into a long receive). */
#define TCP_PEEK_NS 10000000
#define TCP_MAX_LEN (UINT64_C(1) << 48)
#define TCP_BULK_MIN (64 * 1024) /* messages from here on take the bulk lane */
#define TCP_UX_CLASSES 40        /* unexpected buffers: power-of-two size classes */

/* The address blob. */
typedef struct tcp_addr {
  uint32_t magic;
  uint16_t family; /* AF_INET or AF_INET6 */
  uint16_t port;   /* network order */
  uint8_t ip[16];
  uint64_t token[2]; /* random; a connector must present it */
} tcp_addr_t;

typedef struct tcp_hello {
  uint32_t magic;
  uint32_t lane;    /* TCP_MAIN or TCP_BULK */
  uint64_t to[2];   /* the listener's token */
  uint64_t from[2]; /* the connector's token */
} tcp_hello_t;

typedef struct tcp_hdr {
  uint32_t magic;
  uint32_t seq; /* per pair and direction, over both lanes: restores the send order */
  uint64_t tag;
  uint64_t len;
  uint64_t pad; /* zero: 32 bytes, see the wire format in tcp.c */
} tcp_hdr_t;
_Static_assert(sizeof(tcp_hdr_t) == 32, "tcp_hdr_t: 32 bytes on the wire");

/* A posted send or receive. */
typedef struct tcp_op {
  struct tcp_op *next;
  duet__tp_req_t *req;
  uint8_t *buf;
  size_t len;
  uint64_t tag;
  size_t off;    /* send: bytes of header and payload written */
  tcp_hdr_t hdr; /* send: the header */
} tcp_op_t;

/* A message that arrived before its receive was posted. */
typedef struct tcp_ux {
  struct tcp_ux *next;
  uint8_t *data;
  size_t cap; /* 1 << cls, or 0 for an empty message without a buffer */
  int cls;
  uint64_t tag;
  size_t len, got;  /* length, bytes arrived so far */
  tcp_op_t *waiter; /* a receive shorter than the message, waiting for its end */
} tcp_ux_t;

/* Lanes of a pair: small messages go on the main connection, which carries
 * both directions (acknowledgements ride on data); messages of TCP_BULK_MIN
 * bytes or more on a bulk connection per direction, so that two large
 * transfers in opposite directions do not contend for one socket. An
 * endpoint's messages to itself take a main lane of two sockets (it sends
 * on the one it dialled and receives on the one it accepted).
 *
 * Every connection is made by a sender at its first message on that lane.
 * A bulk connection carries its dialler's messages only. The main one is
 * dialled by whichever end sends first, or by an end whose receive has
 * waited a while for a peer it has no connection from (watch: the peer's
 * leaving shows only on a connection); the acceptor answers the hello with
 * one welcome byte, and only then does the dialler send on it. When both
 * ends dial at once, the connection dialled by the lower token stays: its
 * dialler refuses the other (one refusal byte, then it closes it), whose
 * dialler waits for the other's (TX_AWAIT). A main connection that ends
 * before either byte was refused by no one: the peer's endpoint closed. */
enum { TCP_MAIN = 0, TCP_BULK = 1, TCP_LANES = 2 };

/* An outgoing lane's connection: being connected, its hello being written,
 * (main) waiting for the welcome, (main) refused and waiting for the peer's
 * connection, open. */
enum { TX_NONE, TX_CONNECTING, TX_HELLO, TX_WELCOME, TX_AWAIT, TX_UP };
#define TCP_WELCOME 0x57 /* the acceptor's answer to a main lane's hello */
#define TCP_REFUSE 0x52  /* ... when the acceptor's own connection stays */

/* One outgoing lane. */
typedef struct tcp_tx {
  int fd;                 /* main: the pair's socket once open; -1: none */
  int state;              /* TX_* */
  size_t hello_off;       /* bytes of the hello written */
  tcp_op_t *head, **tail; /* queued sends, in order */
} tcp_tx_t;

/* One incoming lane: a byte stream of headers and payloads. */
typedef struct tcp_rx {
  int fd; /* -1: no such lane */
  uint8_t *stage;
  size_t s_beg, s_end;
  int in_body;                          /* reading a payload (else a header) */
  tcp_op_t *cur;                        /* payload target: a receive ... */
  tcp_ux_t *cur_ux;                     /* ... or an unexpected buffer */
  size_t body_len, body_got, body_keep; /* keep: bytes that fit the target */
  int parked;    /* hdr arrived before an earlier message on the other lane */
  tcp_hdr_t hdr; /* the parked header */
} tcp_rx_t;

typedef struct tcp_conn {
  tcp_tx_t tx[TCP_LANES];       /* main: the pair's socket (itself: the one it dialled) */
  tcp_rx_t rx[TCP_LANES];       /* main: the pair's socket (itself: the one it accepted) */
  uint32_t sseq, rseq;          /* next sequence number to send / to match */
  tcp_op_t *rq_head, **rq_tail; /* posted receives without a message */
  tcp_ux_t *ux_head, **ux_tail; /* unexpected messages, in send order */
  duet_status_t dead;           /* DUET_SUCCESS, or why the pair is unusable */
  uint32_t ev[4];               /* epoll events registered: rx[0], rx[1], tx[0], tx[1] fds */
  int active;                   /* TCP_IDLE, TCP_ACTIVE or TCP_PARKED: in which list */
  int at;                       /* its index there */
  int self;                     /* the peer is this endpoint */
  tcp_addr_t addr;              /* the peer's, to dial */
  uint64_t peek_ns;             /* when progress may look at an unread lane again */
} tcp_conn_t;

/* A pair's place: on neither list, on the active list (a send, a
 * receive or a connection under way: progress looks at it), or parked (its
 * receives wait for the peer to connect, and nothing else is under way:
 * only an accepted connection, a new post or a watch brings it back). */
enum { TCP_IDLE, TCP_ACTIVE, TCP_PARKED };

/* A connection accepted but not yet identified by its hello. */
typedef struct tcp_pending {
  int fd;
  uint32_t ev;  /* epoll events registered */
  double since; /* accepted at (CLOCK_MONOTONIC seconds) */
  size_t got;
  tcp_hello_t hello;
} tcp_pending_t;

typedef struct tcp_ep {
  int lfd;      /* the listener, open for the endpoint's life */
  uint32_t lev; /* its epoll events registered */
  tcp_pending_t pend[TCP_PENDING_MAX];
  int npend;
  unsigned filed; /* accepted connections filed as lanes, ever */
  tcp_addr_t addr;
  int yield;
  int sndbuf; /* SO_SNDBUF of the bulk lanes we dial (our sends); 0: autotuning */
  int epfd;
  int npeers;
  tcp_conn_t *conns;
  int *act, nact; /* the pairs with sends, receives or connections under way: progress
                     and wait_fd look at these only, not at every peer */
  int *park, npark; /* the parked pairs (the HPN planes' notice receives from peers that
                       never write, say): progress does not look at them */
  uint64_t accept_ns, accept_gap; /* when progress last read the listener, and how long it
                                     waits to read it again while a lane is awaited */
  tcp_op_t *free_ops;
  void **chunks; /* operation chunks, freed at close */
  int nchunks;
  tcp_ux_t *free_ux[TCP_UX_CLASSES + 1]; /* by class; [TCP_UX_CLASSES]: empty ones */
  char *errbuf; /* the current call's errbuf: a receive's error is written there */
} tcp_ep_t;

/* endpoint.c: the transport's open, get_addr, insert_peers and close;
 * dialling a lane (tx state TX_NONE to TX_CONNECTING), finishing it (to
 * TX_UP: returns 0 while it is not), and accepting the peers' connections
 * (filed under their peer and lane; returns the errno of an accept out of
 * descriptors, else 0). Errors of a pair fail it (duet__tcp_conn_fail). */
duet_status_t duet__tcp_dial(tcp_ep_t *e, int k, int lane);
void duet__tcp_wake(tcp_ep_t *e, tcp_conn_t *c); /* tcp.c: a lane came: unpark the pair */
int duet__tcp_dial_done(tcp_ep_t *e, int k, int lane);
int duet__tcp_accept(tcp_ep_t *e);
void duet__tcp_conn_fail(tcp_ep_t *e, tcp_conn_t *c, duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
duet_status_t duet__tcp_open(const duet__tp_params_t *params, duet__tp_ep_t **out, char *errbuf);
duet_status_t duet__tcp_get_addr(duet__tp_ep_t *ep, void *addr, size_t *addrlen, char *errbuf);
duet_status_t duet__tcp_insert_peers(duet__tp_ep_t *ep, int npeers, const void *addrs,
                                     size_t stride, const size_t *addrlens, char *errbuf);
void duet__tcp_close(duet__tp_ep_t *ep);

#endif /* DUET_TCP_H */
