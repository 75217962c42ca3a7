/*
 * shm.h - the UPN load/store path: allreduce, reduce, reduce-scatter,
 * allgather, broadcast, all-to-all and barrier among the ranks of one host
 * through one shared-memory segment, with loads and stores only.
 *
 * Small messages go through flag-synchronised slots (each rank stores its
 * data and a sequence number in its own slot, every rank waits for every
 * peer's number and reads the slots it needs, reducing in rank order); large
 * ones through double-buffered chunk buffers, each rank reducing its slice of
 * every chunk. Small broadcasts and reduces are the exception among the small
 * calls: they go through a per-rank ring of slots, only the ranks that need
 * data wait (broadcast non-roots for the root, the reduce root for the
 * others), and the ranks that only give data return at once, at most a ring's
 * depth of such calls ahead of the slowest peer. The segment is created once, sized for the engine
 * and pre-faulted; no call allocates or touches fresh pages, and no call makes a system call unless
 * it waits with yield != 0 (sched_yield), a wait runs long enough to read the clock, or a large
 * all-to-all reads through the kernel (duet__shm_set_kernel_copy).
 *
 * Threads: an engine is used by one thread of each rank at a time. All local
 * ranks call the collectives of one engine in the same order with the same
 * count, datatype, op, avg_n and root. Results are bitwise identical on all
 * ranks; reduce and reduce-scatter reduce in rank order.
 */
#ifndef DUET_SHM_H
#define DUET_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

#define DUET_SHM_ERRLEN 256

typedef struct duet__shm duet__shm_t;

/* Collective over the local_size ranks of one host: local rank 0 creates the
 * POSIX shared-memory segment `name` (O_CREAT|O_EXCL, mode 0600, sized for the
 * engine's needs, pre-faulted), the others open it, retrying until timeout_ms.
 * Returns when every rank has attached. DUET_ERR_SYSTEM / DUET_ERR_TIMEOUT /
 * DUET_ERR_INVALID_ARGUMENT with the reason in errbuf (DUET_SHM_ERRLEN
 * bytes). On success *shm belongs to the caller: free it with
 * duet__shm_close. Where /dev/shm has no room for the segment, local rank 0
 * fails and leaves the name behind, 1 byte long, so that the others fail at
 * once too instead of waiting; it removes it with duet__shm_forget once
 * they all have returned. */
duet_status_t duet__shm_open(duet__shm_t **shm, const char *name, int local_rank, int local_size,
                             int timeout_ms, char *errbuf);
/* Remove the name (call after every rank has opened it; the mapping stays).
 * Any rank may call it; it is idempotent within one process. */
void duet__shm_unlink(duet__shm_t *shm);
/* Local rank 0, once every local rank has returned from duet__shm_open:
 * remove what a failed open left under name (when it found no room in
 * /dev/shm, it leaves the name for the others to see why). */
void duet__shm_forget(const char *name);
/* Collective, blocking: allreduce of count elements over the local ranks;
 * sendbuf == recvbuf means in place; AVG divides once by avg_n (the caller
 * passes the number of ranks in the whole reduction). yield != 0: more ranks
 * than cores, so waiting loops call sched_yield(). Every wait has the deadline
 * timeout_ms: DUET_ERR_TIMEOUT naming which local rank did not arrive, for
 * which call sequence number. After a timeout the engine is unusable (later
 * calls return DUET_ERR_ABORTED); close it. */
duet_status_t duet__shm_allreduce(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t count, duet_datatype_t dt, duet_op_t op, int avg_n,
                                  int yield, int timeout_ms, char *errbuf);
/* Collective, blocking: all-to-all of `bytes` per block among the local
 * ranks (block d of sendbuf goes to local rank d, block s of recvbuf comes
 * from local rank s); sendbuf == recvbuf means in place. Waits, deadlines and
 * errors as duet__shm_allreduce. */
duet_status_t duet__shm_alltoall(duet__shm_t *shm, const void *sendbuf, void *recvbuf, size_t bytes,
                                 int yield, int timeout_ms, char *errbuf);
/* Collective, blocking: all-to-all with a count and displacement per local
 * rank, in elements of es bytes: scounts[d] elements from sendbuf +
 * sdispls[d] go to local rank d, rcounts[s] elements from local rank s land
 * at recvbuf + rdispls[s]. Not in place; scounts[rank] must equal
 * rcounts[rank]. Every call synchronises at least once; the ranks agree on
 * the number of steps through their flag lines. Waits, deadlines and errors
 * as duet__shm_allreduce. */
duet_status_t duet__shm_alltoallv(duet__shm_t *shm, const void *sendbuf, const size_t *scounts,
                                  const size_t *sdispls, void *recvbuf, const size_t *rcounts,
                                  const size_t *rdispls, size_t es, int yield, int timeout_ms,
                                  char *errbuf);
/* Collective, blocking: allgather of `bytes` per rank; block s of recvbuf
 * comes from local rank s. In place: sendbuf == recvbuf (this rank's block is
 * already at recvbuf + rank x bytes) or sendbuf == recvbuf + rank x bytes.
 * Waits, deadlines and errors as duet__shm_allreduce. */
duet_status_t duet__shm_allgather(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t bytes, int yield, int timeout_ms, char *errbuf);
/* Collective, blocking: broadcast of `bytes` from local rank root's sendbuf
 * to every rank's recvbuf (the root's too; sendbuf == recvbuf there means in
 * place). sendbuf is read on the root only. Waits, deadlines and errors as
 * duet__shm_allreduce (small messages: the root does not wait for the others
 * unless it is a ring's depth of calls ahead; timeouts name the rooted call
 * number). */
duet_status_t duet__shm_broadcast(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t bytes, int root, int yield, int timeout_ms, char *errbuf);
/* Collective, blocking: reduce-scatter; sendbuf holds local_size blocks of
 * recvcount elements, recvbuf receives block `rank` reduced over the local
 * ranks in rank order. In place: recvbuf == sendbuf (the result lands at the
 * start) or recvbuf == sendbuf + rank x recvcount. AVG, waits, deadlines
 * and errors as duet__shm_allreduce. */
duet_status_t duet__shm_reduce_scatter(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                       size_t recvcount, duet_datatype_t dt, duet_op_t op,
                                       int avg_n, int yield, int timeout_ms, char *errbuf);
/* Collective, blocking: reduce of count elements, in rank order, into local
 * rank root's recvbuf (sendbuf == recvbuf there means in place); recvbuf is
 * not touched elsewhere. AVG, waits, deadlines and errors as
 * duet__shm_allreduce (small messages: non-roots do not wait for the root
 * unless they are a ring's depth of calls ahead; timeouts name the rooted
 * call number). */
duet_status_t duet__shm_reduce(duet__shm_t *shm, const void *sendbuf, void *recvbuf, size_t count,
                               duet_datatype_t dt, duet_op_t op, int avg_n, int root, int yield,
                               int timeout_ms, char *errbuf);
/* Collective, blocking: returns when every local rank has entered it. */
duet_status_t duet__shm_barrier(duet__shm_t *shm, int yield, int timeout_ms, char *errbuf);
/* Unmap and free; never blocks, never unlinks. NULL is allowed. */
void duet__shm_close(duet__shm_t *shm);

/* While a call waits for a local rank without a suspend function
 * (duet__shm_set_suspend), it calls fn(arg) every few hundred polls: the
 * communicator moves the calls of the others that share its endpoints,
 * which that rank may be waiting for. fn must not call into this segment. */
void duet__shm_set_idle(duet__shm_t *shm, void (*fn)(void *arg), void *arg);

/* Tuning (and tests): the cache size against which out-of-place calls
 * decide to copy results out with streaming (non-temporal) stores (an
 * allreduce from 4 x local_size x bytes, see shm.c); 0 means always. The
 * default is the size of the last-level cache. Local: each rank may set its
 * own. */
void duet__shm_set_stream_min(duet__shm_t *shm, size_t bytes);

/* Large all-to-alls (blocks from 16 KiB, out of place) may read each block
 * straight from its sender's buffer through the kernel (process_vm_readv),
 * where every local rank's kernel lets it: use -1 (the default) lets local
 * rank 0 time both ways per size class and keep the faster, 1 takes the
 * kernel from a class's third call on (the first ones learn whether every rank
 * can), 0 never (and a rank set to 0 makes
 * the calls that would go through the kernel take the segment). Local. */
void duet__shm_set_kernel_copy(duet__shm_t *shm, int use);
/* All-to-alls that read at least one block through the kernel here. */
uint64_t duet__shm_kernel_copies(const duet__shm_t *shm);
/* Local rank 0's choice for the next call of a size class (1: through the
 * kernel). ns[w] holds the times (ns) of the last calls that went way w
 * (0: the segment, 1: the kernel), seen[w] how many went that way in all
 * (ns[w][seen[w] % DUET_SHM_KERNEL_RUN] is the next to replace), calls the class's calls so
 * far; *choice is the way taken outside the trials, which it updates.
 * allowed: every local rank can read every peer; forced: always 1. whole:
 * the times are of whole calls (the kernel where it is under 9/10 of the
 * segment, back above it); otherwise of the copies only (under 3/4, back
 * above 9/10).
 * duet__shm_kernel_best: the shortest of the last min(seen, DUET_SHM_KERNEL_RUN) times.
 * duet__shm_kernel_slowed: whether the way taken, with times ns and seen
 * as above, has slowed by half against floor, its best time since the
 * class's last trial or change of way (0: none yet), so that the next
 * trial starts at once.
 * Exposed for tests. */
/* Each way's trial runs, and the calls of a class between two trials. */
#define DUET_SHM_KERNEL_RUN 4u
#define DUET_SHM_KERNEL_TRY 1024u
int duet__shm_kernel_pick(const uint64_t ns[2][DUET_SHM_KERNEL_RUN], const uint32_t seen[2],
                          uint32_t calls, int *choice, int allowed, int forced, int whole);
uint64_t duet__shm_kernel_best(const uint64_t *ns, uint32_t seen);
int duet__shm_kernel_slowed(const uint64_t *ns, uint32_t seen, uint64_t floor);

/* The calling thread runs other threads' calls (the progress thread): its
 * CPU says nothing of where its rank runs, so it neither publishes it nor
 * moves to even out the host's ranks. */
void duet__shm_helper_thread(void);

/* The non-blocking calls (core/mem_queue.c) run the collectives above as a
 * task on a second stack: while fn is set, a wait whose peer has not arrived
 * calls fn(arg), which suspends the task until the caller's next progress
 * call, instead of spinning, then checks again. Deadlines are unchanged (the
 * clock is read every few hundred checks). NULL restores spinning. Local. */
void duet__shm_set_suspend(duet__shm_t *shm, void (*fn)(void *arg), void *arg);
/* While a task is suspended in a wait: the local rank it waits for; else -1. */
int duet__shm_awaited(const duet__shm_t *shm);

/* The segment's name, as given to duet__shm_open. */
const char *duet__shm_name(const duet__shm_t *shm);

/* Bytes of the segment an engine of local_size ranks maps. */
size_t duet__shm_segment_size(int local_size);

#endif /* DUET_SHM_H */
