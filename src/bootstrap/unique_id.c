/*
 * unique_id.c - the unique id (encode, decode), and the small helpers the root
 * and the client share that are too big to inline (error text, address text,
 * random bytes).
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
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "bootstrap/boot_int.h"

#define ID_MAGIC 0x44554944u /* "DUID" */
#define ID_VERSION 1u

void duet__boot_set_err(char *errbuf, const char *fmt, ...) {
  va_list ap;
  if (!errbuf)
    return;
  va_start(ap, fmt);
  vsnprintf(errbuf, DUET_BOOT_ERRLEN, fmt, ap); /* a long message is cut, not overrun */
  va_end(ap);
}

/* --- small helpers --- */

/* "1.2.3.4:5" or "[::1]:5" */
void duet__boot_addr_str(const struct sockaddr *sa, char *buf, size_t len) {
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

int duet__boot_fill_random(void *buf, size_t len) {
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

/* --- the unique id --- */

void duet__boot_id_encode(duet_unique_id_t *id, const struct sockaddr *sa,
                          const uint8_t secret[16]) {
  uint8_t *b = id->bytes;
  memset(id, 0, sizeof(*id));
  duet__boot_put_le(b + 0, ID_MAGIC, 4);
  duet__boot_put_le(b + 4, ID_VERSION, 2);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    duet__boot_put_le(b + 6, 4, 2);
    duet__boot_put_le(b + 8, ntohs(in->sin_port), 2);
    memcpy(b + 12, &in->sin_addr, 4);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    duet__boot_put_le(b + 6, 6, 2);
    duet__boot_put_le(b + 8, ntohs(in6->sin6_port), 2);
    memcpy(b + 12, &in6->sin6_addr, 16);
    duet__boot_put_le(b + 44, in6->sin6_scope_id, 4);
  }
  memcpy(b + 28, secret, 16);
}

duet_status_t duet__boot_id_decode(const duet_unique_id_t *id, struct sockaddr_storage *ss,
                                   socklen_t *sslen, uint8_t secret[16], char *errbuf) {
  const uint8_t *b = id->bytes;
  uint32_t magic = (uint32_t)duet__boot_get_le(b, 4);
  unsigned version = (unsigned)duet__boot_get_le(b + 4, 2),
           family = (unsigned)duet__boot_get_le(b + 6, 2);
  uint16_t port = (uint16_t)duet__boot_get_le(b + 8, 2);

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
    in6->sin6_scope_id = (uint32_t)duet__boot_get_le(b + 44, 4);
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
