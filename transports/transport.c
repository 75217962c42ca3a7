/*
 * transport.c - what every transport shares: reporting an error, completing
 * a request, the descriptors an endpoint needs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "transport.h"

void duet__tp_seterr(char *errbuf, const char *who, const char *fmt, ...) {
  char tmp[DUET_TP_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (errbuf)
    memcpy(errbuf, tmp, sizeof tmp);
  DUET_WARN(DUET_SUB_NET, "%s: %s", who, tmp);
}

void duet__tp_complete(duet__tp_req_t *req, duet_status_t status, size_t len) {
  req->status = status;
  req->len = len;
  __atomic_store_n(&req->done, 1, __ATOMIC_RELEASE);
}

int duet__tp_fds_per_peer(const duet__tp_ops_t *ops, const char *provider, const char *iface,
                          int *at_init) {
  *at_init = 0;
  if (ops == &duet__tp_planes) {
    int planes = 1, most;
    for (const char *c = iface; c && *c; c++)
      planes += *c == ',';
    most = duet__tp_fds_per_peer(duet__tp_for_provider(provider), provider, NULL, at_init);
    *at_init *= planes;
    return planes * most;
  }
  if (ops == &duet__tp_tcp)
    return 4;
  if (ops == &duet__tp_ofi && !(provider && strcmp(provider, "shm") == 0))
    return *at_init = 1;
  return 0;
}
