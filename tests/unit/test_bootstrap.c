/*
 * test_bootstrap.c - SipHash, framing, rendezvous (ranks as threads, over
 * loopback only), hostile connections, timeouts, and the launcher env.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"

/* ---------------------------------------------------------------- helpers */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rand_bytes(void *buf, size_t len) {
  cr_assert_eq(getrandom(buf, len, 0), (ssize_t)len);
}

static int fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  cr_assert(d);
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

static int fds_at_start;

static void note_fds(void) {
  fds_at_start = fd_count();
}

/* Every root this test started has ended (they end on their own), and no
 * file descriptor is left open. */
static void wait_roots_done(int ms) {
  int64_t end = now_ms() + ms;
  while (duet__boot_roots_active() > 0 && now_ms() < end)
    poll(NULL, 0, 10);
  cr_assert_eq(duet__boot_roots_active(), 0, "a bootstrap root is still running after %d ms", ms);
  cr_assert_eq(fd_count(), fds_at_start, "file descriptors leaked: %d open, %d at the start",
               fd_count(), fds_at_start);
}

static uint16_t id_port(const duet_unique_id_t *id) {
  return (uint16_t)(id->bytes[8] | id->bytes[9] << 8);
}

static void id_secret(const duet_unique_id_t *id, uint8_t secret[16]) {
  memcpy(secret, id->bytes + 28, 16);
}

/* A raw loopback connection to the root of id, as a stranger would open. */
static int raw_connect(const duet_unique_id_t *id) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(id_port(id))};
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(fd >= 0);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s", strerror(errno));
  return fd;
}

/* Read until EOF/reset or ms pass; returns 1 when the peer closed. */
static int wait_closed(int fd, int ms) {
  int64_t end = now_ms() + ms;
  char buf[256];
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t left = end - now_ms();
    if (left <= 0 || poll(&p, 1, (int)left) <= 0)
      return 0;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return 1;
    if (n < 0)
      return 0;
  }
}

static size_t recv_n(int fd, void *buf, size_t len, int ms);

/* Connect, answer the CHALLENGE with a HELLO for rank of nranks MAC'd with
 * the id's secret (what a buggy but authenticated client would send). */
static int raw_hello(const duet_unique_id_t *id, int32_t rank, int32_t nranks) {
  uint8_t chal[DUET_BOOT_HDR_LEN + 8], hello[DUET_BOOT_HDR_LEN + 16], p[16] = {0}, secret[16];
  duet__boot_hdr_t h;
  char err[DUET_BOOT_ERRLEN];
  uint64_t nonce = 0;
  int fd = raw_connect(id);

  cr_assert_eq(recv_n(fd, chal, sizeof(chal), 2000), sizeof(chal));
  cr_assert_eq(duet__boot_hdr_decode(chal, &h, 8, err), DUET_SUCCESS, "%s", err);
  for (int i = 0; i < 8; i++)
    nonce |= (uint64_t)chal[DUET_BOOT_HDR_LEN + i] << (8 * i);
  memcpy(p, &rank, 4); /* little-endian host assumed by the test */
  memcpy(p + 4, &nranks, 4);
  id_secret(id, secret);
  duet__boot_frame_encode(hello, DUET_BOOT_HELLO, 0, p, 16, secret, nonce, 0);
  cr_assert_eq(send(fd, hello, sizeof(hello), MSG_NOSIGNAL), (ssize_t)sizeof(hello));
  return fd;
}

static size_t recv_n(int fd, void *buf, size_t len, int ms) {
  size_t got = 0;
  int64_t end = now_ms() + ms;
  while (got < len) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t left = end - now_ms();
    if (left <= 0 || poll(&p, 1, (int)left) <= 0)
      break;
    ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  return got;
}

/* ------------------------------------------------------------- SipHash */

static const uint64_t sip_vectors[64] = {
    0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull, 0x0d6c8009d9a94f5aull, 0x85676696d7fb7e2dull,
    0xcf2794e0277187b7ull, 0x18765564cd99a68dull, 0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull,
    0x93f5f5799a932462ull, 0x9e0082df0ba9e4b0ull, 0x7a5dbbc594ddb9f3ull, 0xf4b32f46226bada7ull,
    0x751e8fbc860ee5fbull, 0x14ea5627c0843d90ull, 0xf723ca908e7af2eeull, 0xa129ca6149be45e5ull,
    0x3f2acc7f57c29bdbull, 0x699ae9f52cbe4794ull, 0x4bc1b3f0968dd39cull, 0xbb6dc91da77961bdull,
    0xbed65cf21aa2ee98ull, 0xd0f2cbb02e3b67c7ull, 0x93536795e3a33e88ull, 0xa80c038ccd5ccec8ull,
    0xb8ad50c6f649af94ull, 0xbce192de8a85b8eaull, 0x17d835b85bbb15f3ull, 0x2f2e6163076bcfadull,
    0xde4daaaca71dc9a5ull, 0xa6a2506687956571ull, 0xad87a3535c49ef28ull, 0x32d892fad841c342ull,
    0x7127512f72f27cceull, 0xa7f32346f95978e3ull, 0x12e0b01abb051238ull, 0x15e034d40fa197aeull,
    0x314dffbe0815a3b4ull, 0x027990f029623981ull, 0xcadcd4e59ef40c4dull, 0x9abfd8766a33735cull,
    0x0e3ea96b5304a7d0ull, 0xad0c42d6fc585992ull, 0x187306c89bc215a9ull, 0xd4a60abcf3792b95ull,
    0xf935451de4f21df2ull, 0xa9538f0419755787ull, 0xdb9acddff56ca510ull, 0xd06c98cd5c0975ebull,
    0xe612a3cb9ecba951ull, 0xc766e62cfcadaf96ull, 0xee64435a9752fe72ull, 0xa192d576b245165aull,
    0x0a8787bf8ecb74b2ull, 0x81b3e73d20b49b6full, 0x7fa8220ba3b2eceaull, 0x245731c13ca42499ull,
    0xb78dbfaf3a8d83bdull, 0xea1ad565322a1a0bull, 0x60e61c23a3795013ull, 0x6606d7e446282b93ull,
    0x6ca4ecb15c5f91e1ull, 0x9f626da15c9625f3ull, 0xe51b38608ef25f57ull, 0x958a324ceb064572ull,
};

Test(siphash, paper_vectors) {
  uint8_t key[16], msg[64];
  for (int i = 0; i < 16; i++)
    key[i] = (uint8_t)i;
  for (int i = 0; i < 64; i++)
    msg[i] = (uint8_t)i;
  /* the paper's worked example: key 00..0f, message 00..0e */
  cr_assert_eq(duet__siphash24(key, msg, 15), 0xa129ca6149be45e5ull);
  for (int len = 0; len < 64; len++)
    cr_assert_eq(duet__siphash24(key, msg, (size_t)len), sip_vectors[len],
                 "length %d: got %016llx want %016llx", len,
                 (unsigned long long)duet__siphash24(key, msg, (size_t)len),
                 (unsigned long long)sip_vectors[len]);
}

/* ------------------------------------------------------------- frames */

static const uint8_t key_a[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t key_b[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17};

static void make_frame(uint8_t *f, uint32_t len) {
  uint8_t payload[64];
  for (uint32_t i = 0; i < len; i++)
    payload[i] = (uint8_t)(i * 13 + 1);
  duet__boot_frame_encode(f, DUET_BOOT_GATHER, 7, payload, len, key_a, 0x1122334455667788ull, 0);
}

Test(frame, round_trip) {
  uint8_t f[DUET_BOOT_HDR_LEN + 40];
  duet__boot_hdr_t h;
  char err[DUET_BOOT_ERRLEN];

  make_frame(f, 40);
  /* little-endian on the wire */
  cr_assert_eq(f[0], 0x54);
  cr_assert_eq(f[3], 0x44);
  cr_assert_eq(f[4], 1);
  cr_assert_eq(f[6], DUET_BOOT_GATHER);
  cr_assert_eq(f[8], 40);
  cr_assert_eq(f[12], 7);
  cr_assert_eq(duet__boot_hdr_decode(f, &h, 40, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(h.magic, DUET_BOOT_MAGIC);
  cr_assert_eq(h.version, DUET_BOOT_VERSION);
  cr_assert_eq(h.type, DUET_BOOT_GATHER);
  cr_assert_eq(h.length, 40);
  cr_assert_eq(h.round, 7);
  cr_assert_eq(duet__boot_frame_verify(f, &h, key_a, 0x1122334455667788ull, 0, err), DUET_SUCCESS,
               "%s", err);
  for (int i = 0; i < 40; i++)
    cr_assert_eq(f[DUET_BOOT_HDR_LEN + i], (uint8_t)(i * 13 + 1));

  /* empty payload */
  duet__boot_frame_encode(f, DUET_BOOT_TABLE, 0, NULL, 0, key_a, 5, 1);
  cr_assert_eq(duet__boot_hdr_decode(f, &h, 0, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_frame_verify(f, &h, key_a, 5, 1, err), DUET_SUCCESS, "%s", err);
}

Test(frame, decode_rejects) {
  uint8_t f[DUET_BOOT_HDR_LEN + 40], g[sizeof(f)];
  duet__boot_hdr_t h;
  char err[DUET_BOOT_ERRLEN];

  make_frame(f, 40);
  cr_assert_eq(duet__boot_hdr_decode_n(f, DUET_BOOT_HDR_LEN - 1, &h, 40, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "truncated"), "%s", err);
  cr_assert_eq(duet__boot_hdr_decode_n(f, 0, &h, 40, err), DUET_ERR_PROTOCOL);

  memcpy(g, f, sizeof(f));
  g[0] ^= 1;
  cr_assert_eq(duet__boot_hdr_decode(g, &h, 40, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "magic"), "%s", err);

  memcpy(g, f, sizeof(f));
  g[4] = 2;
  cr_assert_eq(duet__boot_hdr_decode(g, &h, 40, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "version"), "%s", err);

  memcpy(g, f, sizeof(f));
  g[6] = 0;
  cr_assert_eq(duet__boot_hdr_decode(g, &h, 40, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "type"), "%s", err);
  g[6] = 5;
  cr_assert_eq(duet__boot_hdr_decode(g, &h, 40, err), DUET_ERR_PROTOCOL);
  g[6] = 0;
  g[7] = 1; /* type 256 */
  cr_assert_eq(duet__boot_hdr_decode(g, &h, 40, err), DUET_ERR_PROTOCOL);

  cr_assert_eq(duet__boot_hdr_decode(f, &h, 39, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "length"), "%s", err);
  memcpy(g, f, sizeof(f));
  g[11] = 0x80; /* 2 GiB */
  cr_assert_eq(duet__boot_hdr_decode(g, &h, DUET_BOOT_MAX_BLOB, err), DUET_ERR_PROTOCOL);
}

Test(frame, verify_rejects) {
  const uint64_t nonce = 0x1122334455667788ull;
  uint8_t f[DUET_BOOT_HDR_LEN + 40], g[sizeof(f)];
  duet__boot_hdr_t h;
  char err[DUET_BOOT_ERRLEN];

  make_frame(f, 40);
  cr_assert_eq(duet__boot_hdr_decode(f, &h, 40, err), DUET_SUCCESS);
  cr_assert_eq(duet__boot_frame_verify(f, &h, key_b, nonce, 0, err), DUET_ERR_PROTOCOL);
  cr_assert(strstr(err, "MAC"), "%s", err);
  cr_assert_eq(duet__boot_frame_verify(f, &h, key_a, nonce + 1, 0, err), DUET_ERR_PROTOCOL);
  cr_assert_eq(duet__boot_frame_verify(f, &h, key_a, nonce, 1, err), DUET_ERR_PROTOCOL,
               "a frame reflected in the other direction must not verify");

  /* every single payload and header bit */
  for (size_t bit = 0; bit < 8 * sizeof(f); bit++) {
    duet__boot_hdr_t hg;
    if (bit / 8 >= 8 && bit / 8 < 12)
      continue; /* length: decoded below, changes what is covered */
    memcpy(g, f, sizeof(f));
    g[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    if (duet__boot_hdr_decode(g, &hg, 40, err) != DUET_SUCCESS)
      continue; /* rejected before the MAC, also fine */
    cr_assert_eq(duet__boot_frame_verify(g, &hg, key_a, nonce, 0, err), DUET_ERR_PROTOCOL,
                 "flipped bit %zu verified", bit);
  }

  /* random bytes shaped like a valid header */
  for (int i = 0; i < 2000; i++) {
    uint8_t r[DUET_BOOT_HDR_LEN + 16];
    rand_bytes(r, sizeof(r));
    memcpy(r, f, 8); /* magic, version, type */
    r[8] = 16;
    r[9] = r[10] = r[11] = 0;
    cr_assert_eq(duet__boot_hdr_decode(r, &h, 16, err), DUET_SUCCESS, "%s", err);
    cr_assert_eq(duet__boot_frame_verify(r, &h, key_a, nonce, 0, err), DUET_ERR_PROTOCOL);
  }
}

/* ------------------------------------------------------------- rendezvous */

#define BLOB1 24
#define BLOB2 4

typedef struct rank_job {
  const duet_unique_id_t *id;
  int rank, nranks, timeout_ms;
  int delay_ms; /* before connecting */
  duet_status_t st;
  char err[DUET_BOOT_ERRLEN];
  uint8_t *all1, *all2;
} rank_job_t;

static void blob1(int rank, uint8_t *b) {
  for (int i = 0; i < BLOB1; i++)
    b[i] = (uint8_t)(rank * 31 + i);
}

static void blob2(int rank, uint8_t *b) {
  uint32_t v = 0xabc00000u + (uint32_t)rank;
  memcpy(b, &v, 4);
}

static void *rank_main(void *arg) {
  rank_job_t *j = arg;
  duet__boot_t *boot;
  uint8_t b1[BLOB1], b2[BLOB2];

  if (j->delay_ms)
    poll(NULL, 0, j->delay_ms);
  j->st = duet__boot_connect(j->id, j->rank, j->nranks, j->timeout_ms, &boot, j->err);
  if (j->st != DUET_SUCCESS)
    return NULL;
  blob1(j->rank, b1);
  blob2(j->rank, b2);
  j->st = duet__boot_allgather(boot, b1, BLOB1, j->all1, j->err);
  if (j->st == DUET_SUCCESS)
    j->st = duet__boot_allgather(boot, b2, BLOB2, j->all2, j->err);
  duet__boot_close(boot);
  return NULL;
}

static void check_job(const rank_job_t *j) {
  uint8_t want1[BLOB1], want2[BLOB2];
  cr_assert_eq(j->st, DUET_SUCCESS, "rank %d: %s", j->rank, j->err);
  for (int r = 0; r < j->nranks; r++) {
    blob1(r, want1);
    blob2(r, want2);
    cr_assert(memcmp(j->all1 + (size_t)r * BLOB1, want1, BLOB1) == 0,
              "rank %d: round 1 slot %d wrong", j->rank, r);
    cr_assert(memcmp(j->all2 + (size_t)r * BLOB2, want2, BLOB2) == 0,
              "rank %d: round 2 slot %d wrong", j->rank, r);
  }
}

typedef struct world {
  duet_unique_id_t id;
  int n;
  rank_job_t *jobs;
  pthread_t *tids;
} world_t;

static void world_start(world_t *w, int n, int timeout_ms, int stagger_ms) {
  char err[DUET_BOOT_ERRLEN];
  w->n = n;
  cr_assert_eq(duet__boot_root_create(&w->id, 20000, err), DUET_SUCCESS, "%s", err);
  w->jobs = calloc((size_t)n, sizeof(*w->jobs));
  w->tids = calloc((size_t)n, sizeof(*w->tids));
  cr_assert(w->jobs && w->tids);
  for (int i = 0; i < n; i++) {
    rank_job_t *j = &w->jobs[i];
    j->id = &w->id;
    j->rank = n - 1 - i; /* join in reverse order */
    j->nranks = n;
    j->timeout_ms = timeout_ms;
    j->delay_ms = stagger_ms * i;
    j->all1 = calloc((size_t)n, BLOB1);
    j->all2 = calloc((size_t)n, BLOB2);
    cr_assert(j->all1 && j->all2);
    cr_assert_eq(pthread_create(&w->tids[i], NULL, rank_main, j), 0);
  }
}

static void world_finish(world_t *w) {
  for (int i = 0; i < w->n; i++)
    pthread_join(w->tids[i], NULL);
  for (int i = 0; i < w->n; i++) {
    check_job(&w->jobs[i]);
    free(w->jobs[i].all1);
    free(w->jobs[i].all2);
  }
  free(w->jobs);
  free(w->tids);
}

Test(rendezvous, unique_id_layout) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  uint8_t zero[16] = {0}, secret[16];
  duet__boot_t *boot;
  uint8_t mine = 42, all = 0;

  cr_assert_eq(duet__boot_root_create(&id, 5000, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(id.bytes[0] | id.bytes[1] << 8 | id.bytes[2] << 16 | (uint32_t)id.bytes[3] << 24,
               0x44554944u);
  cr_assert_eq(id.bytes[4], 1);
  cr_assert_eq(id.bytes[6], 4); /* IPv4 */
  cr_assert_neq(id_port(&id), 0);
  cr_assert_eq(id.bytes[12], 127);
  cr_assert_eq(id.bytes[15], 1);
  id_secret(&id, secret);
  cr_assert(memcmp(secret, zero, 16) != 0, "secret is all zero");
  for (size_t i = 48; i < sizeof(id.bytes); i++)
    cr_assert_eq(id.bytes[i], 0, "byte %zu of the id is not zero", i);

  /* a second id has another secret and port */
  duet_unique_id_t id2;
  cr_assert_eq(duet__boot_root_create(&id2, 5000, err), DUET_SUCCESS, "%s", err);
  cr_assert(memcmp(id.bytes + 28, id2.bytes + 28, 16) != 0);
  cr_assert_neq(id_port(&id), id_port(&id2));

  /* serve both with a single rank so the roots end */
  cr_assert_eq(duet__boot_connect(&id, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_allgather(boot, &mine, 1, &all, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(all, 42);
  duet__boot_close(boot);
  cr_assert_eq(duet__boot_connect(&id2, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  duet__boot_close(boot);
  wait_roots_done(3000);
}

Test(rendezvous, one_rank) {
  note_fds();
  world_t w;
  world_start(&w, 1, 5000, 0);
  world_finish(&w);
  wait_roots_done(3000);
}

Test(rendezvous, two_ranks) {
  note_fds();
  world_t w;
  world_start(&w, 2, 5000, 0);
  world_finish(&w);
  wait_roots_done(3000);
}

Test(rendezvous, five_ranks_staggered) {
  note_fds();
  world_t w;
  world_start(&w, 5, 5000, 30);
  world_finish(&w);
  wait_roots_done(3000);
}

Test(rendezvous, three_worlds_at_once) {
  note_fds();
  world_t w[3];
  world_start(&w[0], 5, 5000, 0);
  world_start(&w[1], 2, 5000, 5);
  world_start(&w[2], 3, 5000, 0);
  for (int i = 0; i < 3; i++)
    world_finish(&w[i]);
  wait_roots_done(3000);
}

Test(rendezvous, root_at_loopback) {
  note_fds();
  duet_unique_id_t id, id2;
  char err[DUET_BOOT_ERRLEN];
  uint8_t secret[16];
  int fd, port;
  struct sockaddr_in sa = {.sin_family = AF_INET};
  socklen_t sl = sizeof(sa);
  duet__boot_t *boot;

  /* find a free port */
  fd = socket(AF_INET, SOCK_STREAM, 0);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  port = ntohs(sa.sin_port);
  close(fd);

  rand_bytes(secret, 16);
  /* the non-root ranks' id equals the root's */
  cr_assert_eq(duet__boot_root_at(&id2, "127.0.0.1", port, secret, 0, 0, err), DUET_SUCCESS, "%s",
               err);
  cr_assert_eq(duet__boot_root_at(&id, "127.0.0.1", port, secret, 1, 5000, err), DUET_SUCCESS, "%s",
               err);
  cr_assert(memcmp(&id, &id2, sizeof(id)) == 0);
  cr_assert_eq(duet__boot_connect(&id2, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  duet__boot_close(boot);

  cr_assert_eq(duet__boot_root_at(&id, "", port, secret, 0, 0, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__boot_root_at(&id, "127.0.0.1", 0, secret, 0, 0, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_assert_neq(duet__boot_root_at(&id, "no-such-host.invalid", port, secret, 0, 0, err),
                DUET_SUCCESS);
  wait_roots_done(3000);
}

Test(rendezvous, boot_iface) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  duet__boot_t *boot;

  setenv("DUET_BOOT_IFACE", "lo", 1);
  cr_assert_eq(duet__boot_root_create(&id, 5000, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(id.bytes[12], 127);
  cr_assert_eq(duet__boot_connect(&id, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  duet__boot_close(boot);

  setenv("DUET_BOOT_IFACE", "nosuchif0", 1);
  cr_assert_eq(duet__boot_root_create(&id, 5000, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "nosuchif0"), "%s", err);
  unsetenv("DUET_BOOT_IFACE");
  wait_roots_done(3000);
}

/* ------------------------------------------------------------- hostile peers */

Test(hostile, strangers_do_not_stop_the_rendezvous, .timeout = 30) {
  note_fds();
  world_t w;
  char err[DUET_BOOT_ERRLEN];
  uint8_t junk[64], chal[DUET_BOOT_HDR_LEN + 8], hello[DUET_BOOT_HDR_LEN + 16], payload[16];
  uint8_t wrong[16], hdr[DUET_BOOT_HDR_LEN];
  duet__boot_hdr_t h;
  int s_junk, s_huge, s_silent, s_badmac, s_slow;
  int64_t t0;

  /* strangers connect before any real rank */
  cr_assert_eq(duet__boot_root_create(&w.id, 20000, err), DUET_SUCCESS, "%s", err);

  s_junk = raw_connect(&w.id);
  rand_bytes(junk, sizeof(junk));
  junk[0] ^= 0x5a; /* make sure the magic is wrong */
  cr_assert_eq(send(s_junk, junk, sizeof(junk), MSG_NOSIGNAL), (ssize_t)sizeof(junk));

  s_huge = raw_connect(&w.id);
  duet__boot_frame_encode(hdr, DUET_BOOT_HELLO, 0, NULL, 0, key_a, 0, 0);
  hdr[8] = hdr[9] = hdr[10] = 0xff;
  hdr[11] = 0x7f;
  cr_assert_eq(send(s_huge, hdr, sizeof(hdr), MSG_NOSIGNAL), (ssize_t)sizeof(hdr));

  s_silent = raw_connect(&w.id);

  /* a slow-loris: half a header, then nothing */
  s_slow = raw_connect(&w.id);
  cr_assert_eq(send(s_slow, hdr, 10, MSG_NOSIGNAL), 10);

  /* a HELLO for rank 0 MAC'd with the wrong secret */
  s_badmac = raw_connect(&w.id);
  cr_assert_eq(recv_n(s_badmac, chal, sizeof(chal), 2000), sizeof(chal));
  cr_assert_eq(duet__boot_hdr_decode(chal, &h, 8, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(h.type, DUET_BOOT_CHALLENGE);
  id_secret(&w.id, wrong);
  wrong[3] ^= 0x10;
  uint64_t root_nonce = 0;
  for (int i = 0; i < 8; i++)
    root_nonce |= (uint64_t)chal[DUET_BOOT_HDR_LEN + i] << (8 * i);
  memset(payload, 0, sizeof(payload));
  payload[4] = 5; /* rank 0 of 5 */
  duet__boot_frame_encode(hello, DUET_BOOT_HELLO, 0, payload, 16, wrong, root_nonce, 0);
  cr_assert_eq(send(s_badmac, hello, sizeof(hello), MSG_NOSIGNAL), (ssize_t)sizeof(hello));

  /* each bad stranger is closed promptly */
  cr_assert(wait_closed(s_junk, 2000), "random bytes were not dropped");
  cr_assert(wait_closed(s_huge, 2000), "huge length was not dropped");
  cr_assert(wait_closed(s_badmac, 2000), "wrong-secret HELLO was not dropped");

  /* now the real ranks, while the silent ones hold their connections */
  t0 = now_ms();
  w.n = 5;
  w.jobs = calloc(5, sizeof(*w.jobs));
  w.tids = calloc(5, sizeof(*w.tids));
  for (int i = 0; i < 5; i++) {
    rank_job_t *j = &w.jobs[i];
    j->id = &w.id;
    j->rank = i;
    j->nranks = 5;
    j->timeout_ms = 10000;
    j->all1 = calloc(5, BLOB1);
    j->all2 = calloc(5, BLOB2);
    cr_assert_eq(pthread_create(&w.tids[i], NULL, rank_main, j), 0);
  }
  world_finish(&w);
  cr_assert(now_ms() - t0 < 4000, "the ranks took %lld ms: silent strangers held them up",
            (long long)(now_ms() - t0));

  /* the root ended and closed the silent ones too */
  cr_assert(wait_closed(s_silent, 3000), "silent stranger still open after the root ended");
  cr_assert(wait_closed(s_slow, 3000), "slow stranger still open after the root ended");
  close(s_junk);
  close(s_huge);
  close(s_silent);
  close(s_slow);
  close(s_badmac);
  wait_roots_done(3000);
}

Test(hostile, handshake_timeout_drops_silent_stranger, .timeout = 30) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  int64_t t0 = now_ms();
  int s;

  cr_assert_eq(duet__boot_root_create(&id, 20000, err), DUET_SUCCESS, "%s", err);
  s = raw_connect(&id);
  cr_assert(wait_closed(s, 8000), "silent stranger not dropped");
  cr_assert(now_ms() - t0 >= 4500, "dropped after only %lld ms", (long long)(now_ms() - t0));
  close(s);

  /* the root still serves */
  duet__boot_t *boot;
  cr_assert_eq(duet__boot_connect(&id, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  duet__boot_close(boot);
  wait_roots_done(3000);
}

Test(hostile, wrong_secret_client_gets_protocol_error) {
  note_fds();
  duet_unique_id_t id, bad;
  char err[DUET_BOOT_ERRLEN];
  duet__boot_t *boot;

  cr_assert_eq(duet__boot_root_create(&id, 5000, err), DUET_SUCCESS, "%s", err);
  bad = id;
  bad.bytes[30] ^= 1;
  cr_assert_eq(duet__boot_connect(&bad, 0, 1, 2000, &boot, err), DUET_ERR_PROTOCOL);
  cr_assert_null(boot);
  cr_assert(strstr(err, "MAC"), "%s", err);

  /* a mangled id is refused before any connection */
  bad = id;
  bad.bytes[0] ^= 1;
  cr_assert_eq(duet__boot_connect(&bad, 0, 1, 2000, &boot, err), DUET_ERR_INVALID_ARGUMENT);

  cr_assert_eq(duet__boot_connect(&id, 0, 1, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  duet__boot_close(boot);
  wait_roots_done(3000);
}

static void *dup_main(void *arg) {
  rank_job_t *j = arg;
  duet__boot_t *boot;
  uint8_t b1[BLOB1];
  j->st = duet__boot_connect(j->id, j->rank, j->nranks, j->timeout_ms, &boot, j->err);
  if (j->st != DUET_SUCCESS)
    return NULL;
  blob1(j->rank, b1);
  j->st = duet__boot_allgather(boot, b1, BLOB1, j->all1, j->err);
  duet__boot_close(boot);
  return NULL;
}

Test(hostile, duplicate_and_bad_ranks_are_refused, .timeout = 30) {
  note_fds();
  world_t w;
  rank_job_t dup = {0}, oor = {0}, badn = {0};
  pthread_t t0, td, to, tb;
  char err[DUET_BOOT_ERRLEN];
  uint8_t all[3 * BLOB1];

  cr_assert_eq(duet__boot_root_create(&w.id, 20000, err), DUET_SUCCESS, "%s", err);
  w.n = 3;
  w.jobs = calloc(3, sizeof(*w.jobs));
  w.tids = calloc(3, sizeof(*w.tids));
  for (int i = 0; i < 3; i++) {
    w.jobs[i] = (rank_job_t){.id = &w.id, .rank = i, .nranks = 3, .timeout_ms = 10000};
    w.jobs[i].all1 = calloc(3, BLOB1);
    w.jobs[i].all2 = calloc(3, BLOB2);
  }
  /* rank 0 joins first and waits in its first allgather */
  cr_assert_eq(pthread_create(&t0, NULL, rank_main, &w.jobs[0]), 0);
  poll(NULL, 0, 200);

  /* a second rank 0, a rank 7 of 9 and a rank 1 of 4 (nranks differ): refused */
  dup = (rank_job_t){.id = &w.id, .rank = 0, .nranks = 3, .timeout_ms = 3000, .all1 = all};
  oor = (rank_job_t){.id = &w.id, .rank = 7, .nranks = 9, .timeout_ms = 3000, .all1 = all};
  badn = (rank_job_t){.id = &w.id, .rank = 1, .nranks = 4, .timeout_ms = 3000, .all1 = all};
  cr_assert_eq(pthread_create(&td, NULL, dup_main, &dup), 0);
  cr_assert_eq(pthread_create(&to, NULL, dup_main, &oor), 0);
  cr_assert_eq(pthread_create(&tb, NULL, dup_main, &badn), 0);
  pthread_join(td, NULL);
  pthread_join(to, NULL);
  pthread_join(tb, NULL);
  cr_assert_eq(dup.st, DUET_ERR_REMOTE, "duplicate rank: %d %s", dup.st, dup.err);
  cr_assert_eq(oor.st, DUET_ERR_REMOTE, "nranks mismatch: %d %s", oor.st, oor.err);
  cr_assert_eq(badn.st, DUET_ERR_REMOTE, "nranks mismatch: %d %s", badn.st, badn.err);
  cr_assert(strstr(dup.err, "closed"), "%s", dup.err);

  /* hand-made HELLOs with the right secret: rank out of range, negative rank */
  int s1 = raw_hello(&w.id, 3, 3), s2 = raw_hello(&w.id, -1, 3);
  cr_assert(wait_closed(s1, 2000), "rank 3 of 3 was not dropped");
  cr_assert(wait_closed(s2, 2000), "rank -1 was not dropped");
  close(s1);
  close(s2);

  /* the real ranks 1 and 2 finish with rank 0 */
  w.tids[0] = t0;
  cr_assert_eq(pthread_create(&w.tids[1], NULL, rank_main, &w.jobs[1]), 0);
  cr_assert_eq(pthread_create(&w.tids[2], NULL, rank_main, &w.jobs[2]), 0);
  world_finish(&w);
  wait_roots_done(3000);
}

typedef struct len_job {
  const duet_unique_id_t *id;
  int rank;
  size_t len;
  duet_status_t st;
  char err[DUET_BOOT_ERRLEN];
} len_job_t;

static void *len_main(void *arg) {
  len_job_t *j = arg;
  duet__boot_t *boot;
  uint8_t mine[16] = {0}, all[32];
  j->st = duet__boot_connect(j->id, j->rank, 2, 5000, &boot, j->err);
  if (j->st == DUET_SUCCESS) {
    j->st = duet__boot_allgather(boot, mine, j->len, all, j->err);
    duet__boot_close(boot);
  }
  return NULL;
}

Test(hostile, ranks_disagreeing_on_length_fail_fast, .timeout = 30) {
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  len_job_t j0 = {.rank = 0, .len = 4}, j1 = {.rank = 1, .len = 8};
  pthread_t t0, t1;
  int64_t start;

  note_fds();
  cr_assert_eq(duet__boot_root_create(&id, 20000, err), DUET_SUCCESS, "%s", err);
  j0.id = j1.id = &id;
  start = now_ms();
  cr_assert_eq(pthread_create(&t0, NULL, len_main, &j0), 0);
  cr_assert_eq(pthread_create(&t1, NULL, len_main, &j1), 0);
  pthread_join(t0, NULL);
  pthread_join(t1, NULL);
  cr_assert_eq(j0.st, DUET_ERR_REMOTE, "%d %s", j0.st, j0.err);
  cr_assert_eq(j1.st, DUET_ERR_REMOTE, "%d %s", j1.st, j1.err);
  cr_assert(now_ms() - start < 3000);
  wait_roots_done(3000);
}

Test(hostile, oversized_gather_is_dropped, .timeout = 30) {
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  uint8_t hdr[DUET_BOOT_HDR_LEN], big[1];
  duet__boot_t *boot;
  int fd;

  note_fds();
  cr_assert_eq(duet__boot_root_create(&id, 20000, err), DUET_SUCCESS, "%s", err);
  /* the client refuses to send more than DUET_BOOT_MAX_BLOB */
  cr_assert_eq(duet__boot_connect(&id, 1, 2, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_allgather(boot, big, DUET_BOOT_MAX_BLOB + 1, big, err),
               DUET_ERR_INVALID_ARGUMENT);
  duet__boot_close(boot);
  /* an authenticated rank 0 announcing a GATHER over the limit is dropped,
   * and since the other rank left, the root ends */
  fd = raw_hello(&id, 0, 2);
  duet__boot_frame_encode(hdr, DUET_BOOT_GATHER, 1, NULL, 0, key_a, 0, 0);
  hdr[8] = 1;
  hdr[10] = 1; /* 64 KiB + 1 */
  cr_assert_eq(send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL), (ssize_t)sizeof(hdr));
  cr_assert(wait_closed(fd, 2000), "oversized GATHER was not dropped");
  close(fd);
  wait_roots_done(3000);
}

/* ------------------------------------------------------------- timeouts */

Test(timeout, root_never_appears) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  uint8_t secret[16] = {0};
  struct sockaddr_in sa = {.sin_family = AF_INET};
  socklen_t sl = sizeof(sa);
  duet__boot_t *boot = (duet__boot_t *)&sa;
  int fd;
  int64_t t0, dt;

  /* a port that is bound but never listens: connects are refused */
  fd = socket(AF_INET, SOCK_STREAM, 0);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  cr_assert_eq(duet__boot_root_at(&id, "127.0.0.1", ntohs(sa.sin_port), secret, 0, 0, err),
               DUET_SUCCESS, "%s", err);
  t0 = now_ms();
  cr_assert_eq(duet__boot_connect(&id, 0, 2, 500, &boot, err), DUET_ERR_TIMEOUT, "%s", err);
  dt = now_ms() - t0;
  cr_assert(dt >= 450 && dt < 1500, "timed out after %lld ms", (long long)dt);
  cr_assert_null(boot);
  cr_assert(strstr(err, "127.0.0.1"), "%s", err);
  cr_assert(strstr(err, "connect"), "%s", err);
  /* a loopback root: the error says why ranks on other hosts never reach it */
  cr_assert(strstr(err, "loopback") && strstr(err, "DUET_BOOT_IFACE"), "%s", err);
  close(fd);
  wait_roots_done(0);
}

Test(timeout, root_appears_late) {
  note_fds();
  world_t w;
  char err[DUET_BOOT_ERRLEN];
  uint8_t secret[16];
  struct sockaddr_in sa = {.sin_family = AF_INET};
  socklen_t sl = sizeof(sa);
  duet_unique_id_t rid;
  int fd, port;

  fd = socket(AF_INET, SOCK_STREAM, 0);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  port = ntohs(sa.sin_port);
  rand_bytes(secret, 16);
  cr_assert_eq(duet__boot_root_at(&w.id, "127.0.0.1", port, secret, 0, 0, err), DUET_SUCCESS);

  w.n = 2;
  w.jobs = calloc(2, sizeof(*w.jobs));
  w.tids = calloc(2, sizeof(*w.tids));
  for (int i = 0; i < 2; i++) {
    w.jobs[i] = (rank_job_t){.id = &w.id, .rank = i, .nranks = 2, .timeout_ms = 5000};
    w.jobs[i].all1 = calloc(2, BLOB1);
    w.jobs[i].all2 = calloc(2, BLOB2);
    cr_assert_eq(pthread_create(&w.tids[i], NULL, rank_main, &w.jobs[i]), 0);
  }
  poll(NULL, 0, 300); /* the ranks retry meanwhile */
  close(fd);
  cr_assert_eq(duet__boot_root_at(&rid, "127.0.0.1", port, secret, 1, 5000, err), DUET_SUCCESS,
               "%s", err);
  world_finish(&w);
  wait_roots_done(3000);
}

Test(timeout, root_gives_up_and_clients_see_an_error) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  duet__boot_t *boot;
  uint8_t mine[4] = {1, 2, 3, 4}, all[8];
  int64_t t0;

  cr_assert_eq(duet__boot_root_create(&id, 400, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_connect(&id, 0, 2, 5000, &boot, err), DUET_SUCCESS, "%s", err);
  t0 = now_ms();
  /* rank 1 never comes: the root gives up and closes */
  cr_assert_eq(duet__boot_allgather(boot, mine, 4, all, err), DUET_ERR_REMOTE, "%s", err);
  cr_assert(now_ms() - t0 < 2000, "client waited %lld ms", (long long)(now_ms() - t0));
  /* later calls fail at once */
  cr_assert_eq(duet__boot_allgather(boot, mine, 4, all, err), DUET_ERR_REMOTE);
  duet__boot_close(boot);
  wait_roots_done(3000);
}

Test(timeout, allgather_deadline_when_a_peer_is_slow) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  duet__boot_t *b0, *b1;
  uint8_t mine[4] = {0}, all[8];
  int64_t t0;

  cr_assert_eq(duet__boot_root_create(&id, 5000, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_connect(&id, 0, 2, 300, &b0, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__boot_connect(&id, 1, 2, 300, &b1, err), DUET_SUCCESS, "%s", err);
  t0 = now_ms();
  cr_assert_eq(duet__boot_allgather(b0, mine, 4, all, err), DUET_ERR_TIMEOUT, "%s", err);
  cr_assert(now_ms() - t0 >= 250 && now_ms() - t0 < 1500);
  cr_assert(strstr(err, "TABLE"), "%s", err);
  duet__boot_close(b0);
  duet__boot_close(b1);
  wait_roots_done(3000);
}

Test(args, bad_arguments) {
  note_fds();
  duet_unique_id_t id;
  char err[DUET_BOOT_ERRLEN];
  duet__boot_t *boot;
  memset(&id, 0, sizeof(id));
  cr_assert_eq(duet__boot_root_create(NULL, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__boot_root_create(&id, 0, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__boot_connect(&id, 2, 2, 100, &boot, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__boot_connect(&id, -1, 2, 100, &boot, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__boot_connect(&id, 0, 2, 100, &boot, err), DUET_ERR_INVALID_ARGUMENT,
               "an all-zero id must be refused");
  duet__boot_close(NULL);
  wait_roots_done(0);
}

/* ------------------------------------------------------------- env */

static void clear_env(void) {
  static const char *vars[] = {"DUET_RANK",
                               "DUET_SIZE",
                               "DUET_ROOT",
                               "DUET_SECRET",
                               "OMPI_COMM_WORLD_RANK",
                               "OMPI_COMM_WORLD_SIZE",
                               "RANK",
                               "WORLD_SIZE",
                               "MASTER_ADDR",
                               "MASTER_PORT"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
    unsetenv(vars[i]);
}

Test(env, duet_style) {
  duet__boot_env_t e;
  char err[DUET_BOOT_ERRLEN];
  clear_env();
  setenv("DUET_RANK", "3", 1);
  setenv("DUET_SIZE", "8", 1);
  setenv("DUET_ROOT", "127.0.0.1:29600", 1);
  setenv("DUET_SECRET", "00112233445566778899aAbBcCdDeEfF", 1);
  /* lower precedence styles are ignored */
  setenv("OMPI_COMM_WORLD_RANK", "5", 1);
  setenv("RANK", "6", 1);
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_SUCCESS, "%s", err);
  cr_assert_str_eq(e.source, "DUET");
  cr_assert_eq(e.rank, 3);
  cr_assert_eq(e.size, 8);
  cr_assert_str_eq(e.host, "127.0.0.1");
  cr_assert_eq(e.port, 29600);
  cr_assert_eq(e.secret_given, 1);
  static const uint8_t want[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                   0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
  cr_assert(memcmp(e.secret, want, 16) == 0);

  setenv("DUET_ROOT", "[::1]:1234", 1);
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_SUCCESS, "%s", err);
  cr_assert_str_eq(e.host, "::1");
  cr_assert_eq(e.port, 1234);
}

Test(env, ompi_style) {
  duet__boot_env_t e;
  char err[DUET_BOOT_ERRLEN];
  clear_env();
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  setenv("RANK", "1", 1); /* torchrun's are ignored */
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "DUET_ROOT"), "%s", err);
  setenv("DUET_ROOT", "localhost:4000", 1);
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_SUCCESS, "%s", err);
  cr_assert_str_eq(e.source, "OMPI");
  cr_assert_eq(e.rank, 0);
  cr_assert_eq(e.size, 2);
  cr_assert_str_eq(e.host, "localhost");
  cr_assert_eq(e.port, 4000);
  cr_assert_eq(e.secret_given, 0);
}

Test(env, torchrun_style) {
  duet__boot_env_t e, e2;
  char err[DUET_BOOT_ERRLEN];
  clear_env();
  setenv("RANK", "2", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", "29500", 1);
  setenv("DUET_ROOT", "10.0.0.1:1", 1); /* not used by torchrun style */
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_SUCCESS, "%s", err);
  cr_assert_str_eq(e.source, "torchrun");
  cr_assert_eq(e.rank, 2);
  cr_assert_eq(e.size, 4);
  cr_assert_str_eq(e.host, "127.0.0.1");
  cr_assert_eq(e.port, 29501);
  cr_assert_eq(e.secret_given, 0);

  /* the derived secret is the same on every rank, and differs by size */
  setenv("RANK", "0", 1);
  cr_assert_eq(duet__boot_env_read(&e2, err), DUET_SUCCESS, "%s", err);
  cr_assert(memcmp(e.secret, e2.secret, 16) == 0);
  setenv("WORLD_SIZE", "5", 1);
  cr_assert_eq(duet__boot_env_read(&e2, err), DUET_SUCCESS, "%s", err);
  cr_assert(memcmp(e.secret, e2.secret, 16) != 0);

  setenv("MASTER_PORT", "65535", 1); /* root would be at 65536 */
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "MASTER_PORT") && strstr(err, "65535"), "%s", err);
  unsetenv("MASTER_PORT");
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "MASTER_PORT"), "%s", err);
  setenv("MASTER_PORT", "29500", 1);
  unsetenv("MASTER_ADDR");
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "MASTER_ADDR"), "%s", err);
}

static void expect_bad(const char *var, const char *value, const char *needle) {
  duet__boot_env_t e;
  char err[DUET_BOOT_ERRLEN] = "";
  clear_env();
  setenv("DUET_RANK", "1", 1);
  setenv("DUET_SIZE", "4", 1);
  setenv("DUET_ROOT", "127.0.0.1:5000", 1);
  if (value)
    setenv(var, value, 1);
  else
    unsetenv(var);
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT, "%s=%s accepted", var,
               value ? value : "(unset)");
  cr_assert(strstr(err, var), "message does not name %s: %s", var, err);
  if (needle)
    cr_assert(strstr(err, needle), "message does not show '%s': %s", needle, err);
}

Test(env, bad_values) {
  expect_bad("DUET_RANK", "abc", "abc");
  expect_bad("DUET_RANK", "4", "'4'");
  expect_bad("DUET_RANK", "-1", "-1");
  expect_bad("DUET_RANK", "1x", "1x");
  expect_bad("DUET_RANK", NULL, NULL);
  expect_bad("DUET_SIZE", "0", "'0'");
  expect_bad("DUET_SIZE", "99999999999999999999", "99999999999999999999");
  expect_bad("DUET_SIZE", NULL, NULL);
  expect_bad("DUET_ROOT", NULL, NULL);
  expect_bad("DUET_ROOT", "127.0.0.1", "127.0.0.1");
  expect_bad("DUET_ROOT", "127.0.0.1:0", "127.0.0.1:0");
  expect_bad("DUET_ROOT", "127.0.0.1:70000", "70000");
  expect_bad("DUET_ROOT", ":5000", ":5000");
  expect_bad("DUET_ROOT", "::1:5000", "::1:5000");
  expect_bad("DUET_ROOT", "[::1]5000", "[::1]5000");
  expect_bad("DUET_SECRET", "0011", "32 hex digits");
  expect_bad("DUET_SECRET", "0011223344556677889900112233445g", "32 hex digits");
  expect_bad("DUET_SECRET", "00112233445566778899001122334455ff", "32 hex digits");

  /* nothing at all */
  duet__boot_env_t e;
  char err[DUET_BOOT_ERRLEN];
  clear_env();
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "DUET_RANK"), "%s", err);
}

Test(env, secret_is_never_echoed) {
  duet__boot_env_t e;
  char err[DUET_BOOT_ERRLEN];
  clear_env();
  setenv("DUET_RANK", "0", 1);
  setenv("DUET_SIZE", "1", 1);
  setenv("DUET_ROOT", "127.0.0.1:5000", 1);
  setenv("DUET_SECRET", "zz112233445566778899aabbccddeeff", 1);
  cr_assert_eq(duet__boot_env_read(&e, err), DUET_ERR_INVALID_ARGUMENT);
  cr_assert_null(strstr(err, "zz1122"), "%s", err);
}
