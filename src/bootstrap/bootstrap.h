/*
 * bootstrap.h - rendezvous of the ranks of a new communicator.
 *
 * The unique id holds the root's TCP address and a random 128-bit secret.
 * The root (a thread in the process that made the id) accepts one connection
 * per rank and serves allgathers over them: each rank sends a blob, the root
 * answers with all ranks' blobs in rank order. Every message is framed
 * (magic, version, type, length) and carries a SipHash-2-4 MAC keyed by the
 * secret over per-connection nonces, so strangers and replays are dropped and
 * logged while the root keeps serving the rest. Every step has a deadline.
 */
#ifndef DUET_BOOTSTRAP_H
#define DUET_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

#define DUET_BOOT_ERRLEN 384
#define DUET_BOOT_MAX_BLOB (64 * 1024) /* largest blob one rank may send */

typedef struct duet__boot duet__boot_t; /* one rank's connection to the root */

/* Make an id for a root at host:port ("" host: DUET_BOOT_IFACE's address,
 * default loopback; port 0: any) with a fresh secret from getrandom, bind and
 * listen, and start the root thread. The root serves until every rank that
 * joined has closed, or timeout_ms passes. */
duet_status_t duet__boot_root_create(duet_unique_id_t *id, int timeout_ms, char *errbuf);

/* Build an id for a root that rank 0 will start at host:port with secret
 * (init_env); with start != 0 also bind, listen and start the root thread. */
duet_status_t duet__boot_root_at(duet_unique_id_t *id, const char *host, int port,
                                 const uint8_t secret[16], int start, int timeout_ms,
                                 char *errbuf);

/* Connect to the root named by id, retrying until timeout_ms, and join as
 * rank of nranks. */
duet_status_t duet__boot_connect(const duet_unique_id_t *id, int rank, int nranks,
                                 int timeout_ms, duet__boot_t **boot, char *errbuf);

/* Collective over the ranks of one rendezvous: every rank sends len bytes
 * (the same len everywhere, at most DUET_BOOT_MAX_BLOB) and receives nranks*len
 * bytes into all, in rank order. */
duet_status_t duet__boot_allgather(duet__boot_t *boot, const void *mine, size_t len,
                                   void *all, char *errbuf);

void duet__boot_close(duet__boot_t *boot);

/* Number of root threads of this process still serving (for tests and for a
 * clean exit: a root ends on its own once its ranks closed or it timed out). */
int duet__boot_roots_active(void);

/* Whether this process runs id's root, and waiting (at most timeout_ms) for
 * it to end: a root lives in the process that made it, and ends once every
 * rank has closed its rendezvous (at the end of its init) or it timed out.
 * A process done with its communicator waits for that before it may exit,
 * so that ranks still in init keep their rendezvous. */
int duet__boot_root_here(const duet_unique_id_t *id);
void duet__boot_root_wait(const duet_unique_id_t *id, int timeout_ms);

/* The launcher's environment: DUET_RANK/DUET_SIZE/DUET_ROOT, Open MPI's
 * OMPI_COMM_WORLD_RANK/SIZE with DUET_ROOT, torchrun's RANK/WORLD_SIZE/
 * MASTER_ADDR/MASTER_PORT (root at MASTER_PORT + 1, since torchrun's own store
 * holds MASTER_PORT). DUET_SECRET (32 hex digits) is the shared secret;
 * without it a secret derived from the root address and size is used and a
 * DUET_INFO line says the rendezvous is then not authenticated against other
 * jobs. */
typedef struct duet__boot_env {
  int rank, size;
  char host[256];
  int port;
  uint8_t secret[16];
  int secret_given;
  const char *source; /* "DUET", "OMPI", "torchrun" */
} duet__boot_env_t;
duet_status_t duet__boot_env_read(duet__boot_env_t *env, char *errbuf);

/* --- framing, exposed for unit tests --- */
#define DUET_BOOT_MAGIC 0x44554554u /* "DUET" */
#define DUET_BOOT_VERSION 1u
#define DUET_BOOT_HDR_LEN 24

enum { DUET_BOOT_CHALLENGE = 1, DUET_BOOT_HELLO = 2, DUET_BOOT_GATHER = 3, DUET_BOOT_TABLE = 4 };

typedef struct duet__boot_hdr {
  uint32_t magic;
  uint16_t version, type;
  uint32_t length; /* payload bytes after the header */
  uint32_t round;  /* allgather round, 0 for handshake frames */
  uint64_t mac;    /* SipHash-2-4(secret, nonce || dir || header-without-mac || payload) */
} duet__boot_hdr_t;

uint64_t duet__siphash24(const uint8_t key[16], const void *data, size_t len);

/* Encode a frame into out (DUET_BOOT_HDR_LEN + len bytes). */
void duet__boot_frame_encode(void *out, uint16_t type, uint32_t round, const void *payload,
                             uint32_t len, const uint8_t secret[16], uint64_t nonce, int dir);
/* The header alone (DUET_BOOT_HDR_LEN bytes, MAC over payload included), for
 * senders that keep the payload elsewhere. */
void duet__boot_hdr_encode(void *out, uint16_t type, uint32_t round, const void *payload,
                           uint32_t len, const uint8_t secret[16], uint64_t nonce, int dir);
/* Check a header read off the wire and, once the payload is in, its MAC.
 * Returns DUET_SUCCESS or DUET_ERR_PROTOCOL with the reason in errbuf. */
duet_status_t duet__boot_hdr_decode(const void *in, duet__boot_hdr_t *hdr, uint32_t max_len,
                                    char *errbuf);
/* As duet__boot_hdr_decode for inlen bytes of input: fewer than
 * DUET_BOOT_HDR_LEN is a truncated header. */
duet_status_t duet__boot_hdr_decode_n(const void *in, size_t inlen, duet__boot_hdr_t *hdr,
                                      uint32_t max_len, char *errbuf);
duet_status_t duet__boot_frame_verify(const void *frame, const duet__boot_hdr_t *hdr,
                                      const uint8_t secret[16], uint64_t nonce, int dir,
                                      char *errbuf);
#endif /* DUET_BOOTSTRAP_H */
