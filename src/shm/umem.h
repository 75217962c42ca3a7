/*
 * umem.h - user memory the ranks of one host can share (duet_mem_alloc).
 *
 * Each allocation is a memfd mapped MAP_SHARED by its owner: a header page,
 * then the user's bytes. A peer on the same host maps it by opening
 * /proc/<owner pid>/fd/<fd> (as UCX's posix transport does), so the
 * load/store path can read the owner's send buffer in place and copy once.
 * The header carries a process-random nonce and the allocation's serial,
 * which a peer checks after mapping, and an `alive` word the owner clears
 * in duet_mem_free, which tells peers to drop their mapping.
 */
#ifndef DUET_SHM_UMEM_H
#define DUET_SHM_UMEM_H

#include <stddef.h>
#include <stdint.h>

#define DUET_UMEM_HEADER 4096u
#define DUET_UMEM_MAGIC 0x64756574756d656dull /* "duetumem" */

/* The header page at the start of every allocation's memfd. */
typedef struct {
  uint64_t magic;
  uint64_t nonce;  /* the owner process's */
  uint64_t serial; /* the allocation's, unique in the owner process */
  uint64_t alive;  /* 1 until duet_mem_free */
} duet__umem_head_t;

/* Where a buffer lies in an allocation, as a peer needs it to map it. */
typedef struct {
  int fd;          /* the owner's descriptor of the memfd */
  uint64_t nonce;  /* as in the header */
  uint64_t serial; /* as in the header; never 0 */
  size_t size;     /* bytes of the memfd, header included */
  size_t offset;   /* of the buffer from the memfd's start */
} duet__umem_ref_t;

/* Whether [p, p + len) lies inside one shareable allocation of this
 * process; if so, fills *ref. */
int duet__umem_find(const void *p, size_t len, duet__umem_ref_t *ref);

/* Process pid's allocation that ref describes (fd, nonce, serial, size; the
 * offset is not used), mapped read-only here through /proc/<pid>/fd/<fd>
 * and checked against its header (still allocated, the same serial and
 * nonce). Returns the mapping's start (munmap it with ref->size bytes), or
 * NULL; with errno set when the descriptor could not be opened. */
char *duet__umem_map(int pid, const duet__umem_ref_t *ref);

#endif
