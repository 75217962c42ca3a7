/*
 * umem.c - duet_mem_alloc / duet_mem_free: memory the ranks of one host can
 * share (see umem.h). The registry is a short list under a mutex: programs
 * allocate a few large buffers, and a collective looks its send buffer up
 * once per call.
 */
#include "shm/umem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/comm.h"

typedef struct umem {
  struct umem *next;
  char *base; /* the mapping: header page, then the user's bytes */
  size_t size;
  int fd;
  uint64_t serial;
} umem_t;

static pthread_mutex_t umem_lock = PTHREAD_MUTEX_INITIALIZER;
static umem_t *umem_list;
static uint64_t umem_serial;
static uint64_t umem_nonce;

/* A process-random nonce, so a peer that opened some other process's
 * descriptor (another PID namespace, say) cannot take it for ours. */
static uint64_t nonce(void) {
  if (umem_nonce == 0) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      v = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    }
    umem_nonce = v | 1u;
  }
  return umem_nonce;
}

duet_status_t duet_mem_alloc(void **ptr, size_t size) {
  long page = sysconf(_SC_PAGESIZE);
  size_t total;
  umem_t *u;
  char *base;
  int fd;

  if (ptr == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT, "duet_mem_alloc: ptr is NULL");
  *ptr = NULL;
  if (page <= 0 || (size_t)page > DUET_UMEM_HEADER)
    page = DUET_UMEM_HEADER;
  if (size == 0 || size > SIZE_MAX - DUET_UMEM_HEADER - (size_t)page)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_mem_alloc: size %zu is not in [1, SIZE_MAX - 8 KiB]", size);
  total = DUET_UMEM_HEADER + (size + (size_t)page - 1) / (size_t)page * (size_t)page;
  u = calloc(1, sizeof *u);
  if (u == NULL)
    return duet__set_error(NULL, DUET_ERR_NO_MEMORY, "duet_mem_alloc: out of memory");
  fd = memfd_create("duet-mem", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)total) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    free(u);
    return duet__set_error(NULL, e == ENOMEM || e == ENOSPC ? DUET_ERR_NO_MEMORY : DUET_ERR_SYSTEM,
                           "duet_mem_alloc: memfd of %zu bytes: %s", total, strerror(e));
  }
  /* populated now, as a device allocator commits its memory: no call pays
   * the page faults later */
  base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (base == MAP_FAILED) {
    int e = errno;
    close(fd);
    free(u);
    return duet__set_error(NULL, e == ENOMEM ? DUET_ERR_NO_MEMORY : DUET_ERR_SYSTEM,
                           "duet_mem_alloc: mmap of %zu bytes: %s", total, strerror(e));
  }
  u->base = base;
  u->size = total;
  u->fd = fd;
  pthread_mutex_lock(&umem_lock);
  u->serial = ++umem_serial;
  *(duet__umem_head_t *)(void *)base = (duet__umem_head_t){
      .magic = DUET_UMEM_MAGIC, .nonce = nonce(), .serial = u->serial, .alive = 1};
  u->next = umem_list;
  umem_list = u;
  pthread_mutex_unlock(&umem_lock);
  *ptr = base + DUET_UMEM_HEADER;
  return DUET_SUCCESS;
}

duet_status_t duet_mem_free(void *ptr) {
  umem_t **pp, *u;
  if (ptr == NULL)
    return DUET_SUCCESS;
  pthread_mutex_lock(&umem_lock);
  for (pp = &umem_list; *pp != NULL && (*pp)->base + DUET_UMEM_HEADER != (char *)ptr;
       pp = &(*pp)->next)
    ;
  u = *pp;
  if (u != NULL)
    *pp = u->next;
  pthread_mutex_unlock(&umem_lock);
  if (u == NULL)
    return duet__set_error(NULL, DUET_ERR_INVALID_ARGUMENT,
                           "duet_mem_free: ptr %p did not come from duet_mem_alloc", ptr);
  /* peers that mapped it drop their mapping when they see this */
  __atomic_store_n(&((duet__umem_head_t *)(void *)u->base)->alive, 0, __ATOMIC_RELEASE);
  munmap(u->base, u->size);
  close(u->fd);
  free(u);
  return DUET_SUCCESS;
}

int duet__umem_find(const void *p, size_t len, duet__umem_ref_t *ref) {
  const char *c = p;
  int found = 0;
  if (p == NULL)
    return 0;
  pthread_mutex_lock(&umem_lock);
  for (const umem_t *u = umem_list; u != NULL; u = u->next) {
    const char *lo = u->base + DUET_UMEM_HEADER, *hi = u->base + u->size;
    if (c >= lo && c <= hi && len <= (size_t)(hi - c)) {
      *ref = (duet__umem_ref_t){.fd = u->fd,
                                .nonce = umem_nonce,
                                .serial = u->serial,
                                .size = u->size,
                                .offset = (size_t)(c - u->base)};
      found = 1;
      break;
    }
  }
  pthread_mutex_unlock(&umem_lock);
  return found;
}

char *duet__umem_map(int pid, const duet__umem_ref_t *ref) {
  const duet__umem_head_t *h;
  char path[64];
  char *base;
  int fd;

  snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, ref->fd);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  /* not populated: a large allocation may be read only in part */
  base = mmap(NULL, ref->size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED)
    return NULL;
  h = (const duet__umem_head_t *)(void *)base;
  if (h->magic != DUET_UMEM_MAGIC || h->nonce != ref->nonce || h->serial != ref->serial ||
      !__atomic_load_n(&h->alive, __ATOMIC_ACQUIRE)) {
    munmap(base, ref->size);
    errno = 0;
    return NULL;
  }
  return base;
}
