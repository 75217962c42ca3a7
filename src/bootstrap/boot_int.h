/*
 * boot_int.h - what the bootstrap root (root.c) and its clients
 * (rendezvous.c) share: the handshake's sizes and limits, the unique id's
 * encode/decode (unique_id.c) and small helpers. Internal to src/bootstrap;
 * the rest of the library uses bootstrap.h.
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
 * Threads: any number of roots and clients may live in one process; they
 * share nothing but the roots_active counter.
 */
#ifndef DUET_BOOT_INT_H
#define DUET_BOOT_INT_H

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "bootstrap/bootstrap.h"

#define HELLO_LEN 16        /* rank i32, nranks i32, client nonce u64 */
#define CHALLENGE_LEN 8     /* root nonce u64 */
#define MAX_RANKS (1 << 22) /* sanity bound on nranks */
#define ADDR_STRLEN (INET6_ADDRSTRLEN + 16)

/* Format into errbuf (DUET_BOOT_ERRLEN bytes; NULL: do nothing). */
void duet__boot_set_err(char *errbuf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define SET_ERR duet__boot_set_err

/* --- small helpers --- */

static inline int64_t duet__boot_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void duet__boot_put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t duet__boot_get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Format sa as "1.2.3.4:5" or "[::1]:5" into buf. */
void duet__boot_addr_str(const struct sockaddr *sa, char *buf, size_t len);

/* Fill buf with len bytes from getrandom; 0 on success, -1 with errno set. */
int duet__boot_fill_random(void *buf, size_t len);

static inline void duet__boot_set_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* --- the unique id (unique_id.c) --- */

/* Write the id for a root listening at sa (port included) with secret. */
void duet__boot_id_encode(duet_unique_id_t *id, const struct sockaddr *sa,
                          const uint8_t secret[16]);

/* Read the root's address and the secret back out of id; DUET_SUCCESS, or
 * DUET_ERR_INVALID_ARGUMENT with the reason in errbuf. */
duet_status_t duet__boot_id_decode(const duet_unique_id_t *id, struct sockaddr_storage *ss,
                                   socklen_t *sslen, uint8_t secret[16], char *errbuf);

#endif /* DUET_BOOT_INT_H */
