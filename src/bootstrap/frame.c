/*
 * frame.c - SipHash-2-4 and the framing of bootstrap messages.
 *
 * A frame is a 24-byte little-endian header followed by `length` payload bytes:
 *
 *   0  magic   u32  DUET_BOOT_MAGIC
 *   4  version u16  DUET_BOOT_VERSION
 *   6  type    u16  DUET_BOOT_CHALLENGE .. DUET_BOOT_TABLE
 *   8  length  u32  payload bytes
 *  12  round   u32  allgather round, 0 for handshake frames
 *  16  mac     u64  SipHash-2-4(secret, nonce(8, LE) || dir(1) || bytes 0..15 || payload)
 *
 * The nonce is the receiver's per-connection nonce and dir says which way the
 * frame travels (0: client to root, 1: root to client), so a frame can be
 * neither replayed on another connection nor reflected back to its sender.
 *
 * SipHash-2-4 is written here from the published algorithm (Aumasson and
 * Bernstein, "SipHash: a fast short-input PRF", 2012); the unit test checks
 * it against the paper's vectors.
 */
#include <stdio.h>
#include <string.h>

#include "bootstrap/bootstrap.h"

/* --- SipHash-2-4, incremental so a MAC can span separate buffers --- */

typedef struct sip_state {
  uint64_t v0, v1, v2, v3;
  uint8_t buf[8]; /* pending bytes of an incomplete word */
  size_t nbuf;
  uint64_t total; /* bytes absorbed, for the final length byte */
} sip_state_t;

static inline uint64_t rotl64(uint64_t x, unsigned b) {
  return (x << b) | (x >> (64 - b));
}

static inline uint64_t load_le64(const uint8_t *p) {
  return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
         (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline void store_le16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static inline void store_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static inline void store_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t load_le16(const uint8_t *p) {
  return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t load_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void sip_round(sip_state_t *s) {
  s->v0 += s->v1;
  s->v1 = rotl64(s->v1, 13);
  s->v1 ^= s->v0;
  s->v0 = rotl64(s->v0, 32);
  s->v2 += s->v3;
  s->v3 = rotl64(s->v3, 16);
  s->v3 ^= s->v2;
  s->v0 += s->v3;
  s->v3 = rotl64(s->v3, 21);
  s->v3 ^= s->v0;
  s->v2 += s->v1;
  s->v1 = rotl64(s->v1, 17);
  s->v1 ^= s->v2;
  s->v2 = rotl64(s->v2, 32);
}

static void sip_compress(sip_state_t *s, uint64_t m) {
  s->v3 ^= m;
  sip_round(s); /* c = 2 */
  sip_round(s);
  s->v0 ^= m;
}

static void sip_init(sip_state_t *s, const uint8_t key[16]) {
  uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
  s->v0 = k0 ^ 0x736f6d6570736575ull; /* "somepseu" */
  s->v1 = k1 ^ 0x646f72616e646f6dull; /* "dorandom" */
  s->v2 = k0 ^ 0x6c7967656e657261ull; /* "lygenera" */
  s->v3 = k1 ^ 0x7465646279746573ull; /* "tedbytes" */
  s->nbuf = 0;
  s->total = 0;
}

static void sip_update(sip_state_t *s, const void *data, size_t len) {
  const uint8_t *p = data;
  s->total += len;
  if (s->nbuf > 0) {
    while (len > 0 && s->nbuf < 8) {
      s->buf[s->nbuf++] = *p++;
      len--;
    }
    if (s->nbuf < 8)
      return;
    sip_compress(s, load_le64(s->buf));
    s->nbuf = 0;
  }
  for (; len >= 8; p += 8, len -= 8)
    sip_compress(s, load_le64(p));
  memcpy(s->buf, p, len);
  s->nbuf = len;
}

static uint64_t sip_final(sip_state_t *s) {
  uint64_t b = (uint64_t)(s->total & 0xff) << 56;
  for (size_t i = 0; i < s->nbuf; i++)
    b |= (uint64_t)s->buf[i] << (8 * i);
  sip_compress(s, b);
  s->v2 ^= 0xff;
  for (int i = 0; i < 4; i++) /* d = 4 */
    sip_round(s);
  return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t duet__siphash24(const uint8_t key[16], const void *data, size_t len) {
  sip_state_t s;
  sip_init(&s, key);
  sip_update(&s, data, len);
  return sip_final(&s);
}

/* MAC of a frame whose first 16 header bytes are hdr16. */
static uint64_t frame_mac(const uint8_t secret[16], uint64_t nonce, int dir, const uint8_t *hdr16,
                          const void *payload, size_t len) {
  sip_state_t s;
  uint8_t pre[9];
  store_le64(pre, nonce);
  pre[8] = (uint8_t)(dir != 0);
  sip_init(&s, secret);
  sip_update(&s, pre, sizeof(pre));
  sip_update(&s, hdr16, 16);
  if (len > 0)
    sip_update(&s, payload, len);
  return sip_final(&s);
}

/* --- frames --- */

void duet__boot_hdr_encode(void *out, uint16_t type, uint32_t round, const void *payload,
                           uint32_t len, const uint8_t secret[16], uint64_t nonce, int dir) {
  uint8_t *h = out;
  store_le32(h + 0, DUET_BOOT_MAGIC);
  store_le16(h + 4, DUET_BOOT_VERSION);
  store_le16(h + 6, type);
  store_le32(h + 8, len);
  store_le32(h + 12, round);
  store_le64(h + 16, frame_mac(secret, nonce, dir, h, payload, len));
}

void duet__boot_frame_encode(void *out, uint16_t type, uint32_t round, const void *payload,
                             uint32_t len, const uint8_t secret[16], uint64_t nonce, int dir) {
  if (len > 0)
    memcpy((uint8_t *)out + DUET_BOOT_HDR_LEN, payload, len);
  duet__boot_hdr_encode(out, type, round, (uint8_t *)out + DUET_BOOT_HDR_LEN, len, secret, nonce,
                        dir);
}

#define SET_ERR(errbuf, ...)                                                                       \
  do {                                                                                             \
    if (errbuf)                                                                                    \
      snprintf((errbuf), DUET_BOOT_ERRLEN, __VA_ARGS__);                                           \
  } while (0)

duet_status_t duet__boot_hdr_decode_n(const void *in, size_t inlen, duet__boot_hdr_t *hdr,
                                      uint32_t max_len, char *errbuf) {
  const uint8_t *h = in;
  if (inlen < DUET_BOOT_HDR_LEN) {
    SET_ERR(errbuf, "truncated frame header: %zu of %d bytes", inlen, DUET_BOOT_HDR_LEN);
    return DUET_ERR_PROTOCOL;
  }
  hdr->magic = load_le32(h + 0);
  hdr->version = load_le16(h + 4);
  hdr->type = load_le16(h + 6);
  hdr->length = load_le32(h + 8);
  hdr->round = load_le32(h + 12);
  hdr->mac = load_le64(h + 16);
  if (hdr->magic != DUET_BOOT_MAGIC) {
    SET_ERR(errbuf, "bad magic 0x%08x (expected 0x%08x)", (unsigned)hdr->magic,
            (unsigned)DUET_BOOT_MAGIC);
    return DUET_ERR_PROTOCOL;
  }
  if (hdr->version != DUET_BOOT_VERSION) {
    SET_ERR(errbuf, "unsupported protocol version %u (this library speaks %u)",
            (unsigned)hdr->version, (unsigned)DUET_BOOT_VERSION);
    return DUET_ERR_PROTOCOL;
  }
  if (hdr->type < DUET_BOOT_CHALLENGE || hdr->type > DUET_BOOT_TABLE) {
    SET_ERR(errbuf, "unknown frame type %u", (unsigned)hdr->type);
    return DUET_ERR_PROTOCOL;
  }
  if (hdr->length > max_len) {
    SET_ERR(errbuf, "frame length %u exceeds the limit %u", (unsigned)hdr->length,
            (unsigned)max_len);
    return DUET_ERR_PROTOCOL;
  }
  return DUET_SUCCESS;
}

duet_status_t duet__boot_hdr_decode(const void *in, duet__boot_hdr_t *hdr, uint32_t max_len,
                                    char *errbuf) {
  return duet__boot_hdr_decode_n(in, DUET_BOOT_HDR_LEN, hdr, max_len, errbuf);
}

duet_status_t duet__boot_frame_verify(const void *frame, const duet__boot_hdr_t *hdr,
                                      const uint8_t secret[16], uint64_t nonce, int dir,
                                      char *errbuf) {
  const uint8_t *f = frame;
  uint8_t want[8], got[8];
  unsigned diff = 0;

  store_le64(want, frame_mac(secret, nonce, dir, f, f + DUET_BOOT_HDR_LEN, hdr->length));
  store_le64(got, hdr->mac);
  for (int i = 0; i < 8; i++) /* all 8 bytes, no early exit */
    diff |= (unsigned)(want[i] ^ got[i]);
  if (diff != 0) {
    SET_ERR(errbuf, "bad MAC on %u-byte frame of type %u (wrong secret, or a replayed frame)",
            (unsigned)hdr->length, (unsigned)hdr->type);
    return DUET_ERR_PROTOCOL;
  }
  return DUET_SUCCESS;
}
