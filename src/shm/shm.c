/*
 * shm.c - the UPN load/store path (see shm.h and DESIGN.md section 5).
 *
 * Segment layout (offsets are the same in every process; pointers are not):
 *
 *   header     one page: magic (stored last by rank 0), local_size, size
 *   sync[L]    one 128-byte line per rank: a monotonic counter of sync
 *              points; a rank stores its next value (release) and waits
 *              until every peer's counter has reached it (acquire)
 *   eager[2][L]  slots for small messages, double-buffered by call parity:
 *              an 8-byte sequence number and then the data, so a message of
 *              up to 56 bytes shares one cache line with its flag
 *   ring[L][D] per rank a ring of D slots (same form) for the rooted eager
 *              calls, small broadcasts and reduces
 *   done[L]    one 128-byte line per rank: how many rooted eager calls it
 *              has completed
 *   chunk[2][L]  one chunk buffer per rank, double-buffered by chunk parity
 *
 * Small messages (eager): each rank copies its input into its slot and
 * stores the call's sequence number; every rank then reduces all L slots in
 * rank order 0..L-1 into its recvbuf, so all ranks compute the same bytes.
 * A slot is reused two calls later; by then every peer has read it, because
 * a rank cannot finish call n+1 before every peer has entered it.
 *
 * Large messages: a chunk of the message is split into L slices of whole
 * cache lines. Per chunk:
 *   1. copy-in: rank r copies the slices s != r of its sendbuf into its
 *      chunk buffer (it reduces its own slice straight from its sendbuf);
 *   2. sync; rank r reduces slice r in place into the buffer of rank r+1
 *      (acc += buf[r+2] ... += buf[r-1] += sendbuf_r), the cheap in-place
 *      form of the kernel, then divides once for AVG;
 *   3. sync; every rank copies all L reduced slices to its recvbuf.
 * Each byte is copied in once and out once. The chunk buffers alternate; a
 * rank writes buffer b for chunk k only after the sync that starts the
 * reduction of chunk k-1, which every peer passes after its copy-out of
 * chunk k-2, the previous user of b. No rank reads another's private
 * memory, so a call needs no trailing synchronisation.
 *
 * The other collectives reuse both mechanisms (see the comments at
 * allgather_run, broadcast_run, reduce_scatter_run and reduce_run): eager
 * slots with the same every-rank-publishes-and-waits rule (except small
 * broadcasts and reduces, which use the rings and wait only for the ranks
 * whose data they need; see "rooted eager calls" below), chunk buffers
 * with one sync per step (allgather, broadcast, reduce-scatter, all-to-all)
 * or per chunk plus one (reduce), reductions in rank order on the rank that
 * owns the slice or block.
 *
 * Cross-memory attach (process_vm_readv) was measured as an alternative to
 * copy-in (reading the peer's user buffer directly): 2-3 GB/s on this class
 * of machine against 10-17 GB/s for memcpy (7-8 against 25-30 GB/s on a
 * later one, huge pages or not), so it is not the default. Large
 * all-to-alls use it where the segment itself is slow: when the ranks'
 * cores do not share a cache, every staged line crosses to its reader
 * dirty, and one copy through the kernel beats two through the segment by
 * far. Local rank 0 times both (see DUET_SHM_KERNEL_MIN).
 *
 * Send buffers from duet_mem_alloc (umem.h) are the exception: a peer can
 * map them. A large out-of-place all-to-all or alltoallv whose every send
 * buffer is such memory publishes where each lies, maps the peers' (kept,
 * see map_peer), and copies each block once, straight from the sender's
 * buffer into the receiver's; a last sync keeps every send buffer until its
 * readers are done. See direct_agree.
 *
 * Large out-of-place messages (what the local ranks touch outgrows the
 * last-level cache) are copied out with streaming stores: recvbuf will not
 * stay in cache, and skipping the read-for-ownership of each destination line
 * leaves the minimum memory traffic per rank: read sendbuf once, write
 * recvbuf once; the chunk buffers stay in cache.
 *
 * Waiting: spin with a pause instruction while the awaited peer runs on
 * another core; sched_yield() when the caller says the host is
 * oversubscribed, when the peer last ran on this CPU (each rank publishes
 * sched_getcpu() in its flag line), or after DUET_SHM_SPIN_MAX spins. The
 * clock is read only every few hundred iterations, so short waits make no
 * system call. With more ranks than CPUs, the same published CPUs let the
 * ranks even out their placement (see balance()).
 */
#include "shm/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "reduce/reduce.h"
#include "shm/umem.h"
#include "topo/topo.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define SHM_MAGIC 0x6475657473686d31ull /* "duetshm1" */
#define SHM_LINE 256                    /* flag spacing: whole lines, no false sharing */
#define SHM_HEADER 4096
#define SHM_MAX_RANKS 256
#define SHM_NO_ROOM 1 /* the size of a segment local rank 0 found no room for */

/* Largest message (bytes) sent through the eager slots. */
#ifndef DUET_SHM_EAGER_MAX
#define DUET_SHM_EAGER_MAX (8u << 10)
#endif
/* Slots in each rank's ring for the rooted eager calls (broadcast, reduce):
 * how many such calls a rank may run ahead of the slowest reader. Deep
 * enough that a writer rarely waits: 8-byte broadcasts back to back, 4 ranks
 * on 2 cores, median of 5 launches: 0.69 us with 8 slots, 0.38 with 32, no
 * better with 64 (Open MPI 0.24-0.38 us in the same runs). */
#ifndef DUET_SHM_ROOTED_DEPTH
#define DUET_SHM_ROOTED_DEPTH 32u
#endif
/* Bytes of the message handled per pipeline step (one chunk buffer per
 * rank). A step's buffers must stay in the cores' private caches: where the
 * last-level cache does not carry lines between the cores quickly, a 1 MiB
 * buffer (this machine's L2) written on one core and read on the other
 * moved at 7 GB/s, 768 KiB at 40 GB/s. 2 ranks, duet_perf --compare mpi,
 * median of 2 launches, 1 MiB against 512 KiB chunks: broadcast 2 MiB 281
 * against 79 us, 8 MiB 1196 against 343 (Open MPI 156 and 790); allgather
 * 2 MiB 173 against 78, 8 MiB 705 against 316 (Open MPI 102, 413); the
 * other collectives and 4 ranks alike within noise. */
#ifndef DUET_SHM_CHUNK
#define DUET_SHM_CHUNK (512u << 10)
#endif

/* Out-of-place messages are copied out with non-temporal stores when what
 * the local ranks touch outgrows the last-level cache (each collective
 * counts it its own way, e.g. allreduce_chunked): recvbuf would not stay in
 * cache anyway, and streaming stores skip reading every destination line
 * first. In place, the destination was just read and is in cache, so
 * ordinary stores are cheaper. The cache size
 * comes from sysfs (sysconf's figure can be the whole package's, several
 * times what this CPU shares); this is the fallback. */
#ifndef DUET_SHM_LLC_DEFAULT
#define DUET_SHM_LLC_DEFAULT (32u << 20)
#endif

/* Calls between two placement checks of a rank (see balance()), and calls
 * a rank that moved waits before it checks again. */
#ifndef DUET_SHM_BALANCE_EVERY
#define DUET_SHM_BALANCE_EVERY 16u
#endif
#ifndef DUET_SHM_BALANCE_HOLD
#define DUET_SHM_BALANCE_HOLD (4u * DUET_SHM_BALANCE_EVERY)
#endif

/* Pause iterations (~45 ns each on this class of machine, so ~45 us) a
 * waiter spins, when its peer runs on another core, before it yields even
 * with yield == 0. */
#ifndef DUET_SHM_SPIN_MAX
#define DUET_SHM_SPIN_MAX 1024u
#endif
/* Pause iterations before the first yield: none when the caller says the
 * host is oversubscribed (a peer that has not arrived is then most likely
 * waiting for this core, and 16 pauses cost ~0.7 us), 16 otherwise. 4 ranks
 * on 2 cores, each call timed alone after an MPI_Barrier, as OSU's
 * benchmarks do: 16-byte all-to-all 3.1-3.2 against 3.9-4.0 us (Open MPI
 * 3.6), 8-byte allreduce 3.2 against 4.0-4.6 us. */
#ifndef DUET_SHM_YIELD_SPINS
#define DUET_SHM_YIELD_SPINS 0u
#endif
#define DUET_SHM_SPINS_FIRST 16u

/* All-to-all blocks (bytes) from which send buffers in duet_mem_alloc memory
 * are read in place (two more syncs per call, one copy less per byte):
 * DUET_SHM_DIRECT_MIN with a core per rank, DUET_SHM_DIRECT_MIN_YIELD on an
 * oversubscribed host, where each sync costs task switches. Measured with
 * duet_perf -o alltoall --mem-alloc -n 200, the threshold at 4 KiB against
 * these: 2 ranks, 16 KiB blocks 0.49 against 0.68 us (8 KiB: alike); 4 ranks
 * on 2 cores, 4 KiB blocks 6.4-6.8 against 3.1-3.6 us, 16 KiB 7.4 against
 * 5.1-5.8 us, 32 KiB alike. */
#ifndef DUET_SHM_DIRECT_MIN
#define DUET_SHM_DIRECT_MIN (16u << 10)
#endif
#ifndef DUET_SHM_DIRECT_MIN_YIELD
#define DUET_SHM_DIRECT_MIN_YIELD (64u << 10)
#endif
/* Mappings of a peer's duet_mem_alloc memory kept per peer; the oldest
 * goes when another is needed, and any goes once its owner freed it. */
#ifndef DUET_SHM_MAPS
#define DUET_SHM_MAPS 4
#endif

/* Out-of-place all-to-alls with blocks from DUET_SHM_KERNEL_MIN bytes may
 * read each block straight from its sender's buffer through the kernel
 * (process_vm_readv, Linux's cross-memory attach, as Open MPI does): one
 * copy instead of two, at the kernel's copy speed, one sync more. The
 * segment wins while the cores that share it pass cache lines quickly; the
 * kernel wins by far when they do not: on this 2-vCPU machine the
 * hypervisor at times runs the two vCPUs on different core complexes (a
 * cache line's round trip between them 330 instead of 60 ns), and every
 * line a rank stages must then cross to its reader's complex, dirty.
 * duet_perf -o alltoall --compare mpi, 2 ranks, 2 MiB: near, through the
 * segment 94-100 us, through the kernel 104-108 (Open MPI 105-112); far,
 * 560-680 against 108 us. 4 ranks on 2 cores, near: 2 MiB 264-300 against
 * 313-340 us, 8 MiB 1830-1960 against 2370-2750; far: 2 MiB 1230 against
 * 330 us. Blocks of 32-128 KiB, 2 ranks, even near: through the segment
 * 7-25 us, 0.7-0.96 of Open MPI's time (which reads clean lines of the
 * send buffer through the kernel, while the segment's lines cross dirty),
 * through the kernel 1.0-1.2. So local rank 0 times both ways per size
 * class, and duet__shm_kernel_pick chooses: each way DUET_SHM_KERNEL_RUN
 * times first, then by the shortest of each way's last DUET_SHM_KERNEL_RUN
 * times; the last DUET_SHM_KERNEL_RUN of every DUET_SHM_KERNEL_TRY calls
 * of a class go the other way, so that a change is seen. Where every rank
 * has a core it times whole calls and takes the kernel under 9/10 of the
 * segment's time (back above it); on an oversubscribed host, where a wait
 * measures the scheduler more than the way, only its copies, and takes the
 * kernel under 3/4 of the segment's (back above 9/10: the kernel's calls
 * sync once more). It times those copies in the thread's CPU time, not the
 * clock's: with more ranks than cores a copy's wall time counts the other
 * ranks' slices too, and process_vm_readv's also its waits in the kernel
 * (4 ranks on 2 cores, 8 MiB blocks: through the kernel 5.1-6.0 ms of wall
 * time for 3.8-4.4 of CPU, through the segment 2.9-3.3 either way near,
 * 9.2 far). Wall times chose the segment far, where its call took 20-25
 * ms against the kernel's 12-13 (Open MPI 12-15); CPU times, 4.0 against
 * 9.2, choose the kernel. A class whose way taken has slowed by half (the
 * best of its last DUET_SHM_KERNEL_RUN times against the best since the
 * last trial) starts its next trial at once: the cores can turn far in
 * the middle of a job. 4 ranks on 2 cores, rank 0's copy CPU time through
 * the kernel over that through the segment: near 1.1-1.3, far 0.4-0.45. */
#ifndef DUET_SHM_KERNEL_MIN
#define DUET_SHM_KERNEL_MIN (16u << 10)
#endif
#define KERNEL_CLASSES 64 /* size classes: floor(log2(bytes per block)) */

struct shm_header {
  uint64_t magic;
  uint64_t local_size;
  uint64_t size;
  /* All-to-all calls from DUET_SHM_KERNEL_MIN, by parity of their count:
   * bit c set = blocks of size class c go through the kernel (see
   * kernel_path). Written by local rank 0 only. */
  uint64_t kpath[2];
  uint64_t pad[3];
  /* Per local rank: when its process started (clock ticks since boot, from
   * /proc), published at open; SHM_LEFT once it closed the segment
   * (duet_comm_destroy or duet_comm_abort). See peer_gone. */
  uint64_t life[SHM_MAX_RANKS];
};
_Static_assert(sizeof(struct shm_header) <= SHM_HEADER, "the header fits its page");
#define SHM_LEFT UINT64_MAX

/* A send buffer in memory from duet_mem_alloc, as a peer needs it to map
 * it (see umem.h); serial 0: not such memory. */
struct shm_reg {
  uint64_t serial, nonce, size, offset;
  int32_t fd;
};

struct shm_flag {
  uint64_t value;        /* sync points passed */
  int32_t cpu;           /* CPU the rank last ran on, a hint for waiters */
  int32_t pid;           /* the rank's process, for /proc/<pid>/fd */
  uint64_t vmax[2];      /* alltoallv: the rank's largest block, by sync parity */
  struct shm_reg reg[2]; /* all-to-all: the rank's send buffer, by sync parity */
  uint32_t mapped[2];    /* all-to-all: mapped every peer's, by sync parity */
  uint64_t addr[2];      /* all-to-all: the send buffer, for the kernel's copy (sync parity) */
  uint64_t self;         /* where this line lies in the rank's own mapping (the probe) */
  uint32_t kernel;       /* KERNEL_UNKNOWN, KERNEL_OK or KERNEL_NO: reading every peer */
};
_Static_assert(sizeof(struct shm_flag) <= SHM_LINE, "a flag line holds struct shm_flag");

enum { KERNEL_UNKNOWN, KERNEL_OK, KERNEL_NO };

/* Local rank 0's timings of one all-to-all size class, by way: 0 through
 * the segment, 1 through the kernel. */
struct kernel_class {
  uint64_t ns[2][DUET_SHM_KERNEL_RUN]; /* the last calls' times (ns), by way */
  uint32_t seen[2];                    /* calls timed, by way */
  uint32_t calls;                      /* calls of the class */
  int choice;                          /* the way taken outside the trials */
  uint64_t floor;                      /* its best time since the last trial or change, 0: none */
};

/* A peer's duet_mem_alloc memory this rank has mapped (read-only). */
struct shm_map {
  uint64_t serial, nonce;
  char *base;
  size_t size;
  uint64_t used; /* call (seq) that last used it */
};

struct duet__shm {
  char *base;       /* the mapping */
  size_t size;      /* bytes mapped */
  int rank, nranks; /* local rank and local size */
  int unlinked;
  int broken;           /* a wait timed out: the ranks are out of step */
  uint64_t seq;         /* collective calls made (all ranks agree) */
  uint64_t sync;        /* sync points passed (all ranks agree) */
  uint64_t chunks;      /* chunk steps made (all ranks agree) */
  uint64_t rooted;      /* rooted eager calls made (all ranks agree) */
  uint64_t rooted_done; /* every peer had completed this many at the last look */
  size_t sync_off;      /* offsets into the segment */
  size_t eager_off, eager_stride;
  size_t ring_off, done_off;
  size_t chunk_off;
  size_t nt_min;              /* the last-level cache: copy-out streams past it */
  void (*suspend)(void *arg); /* non-blocking calls: waits suspend the task */
  void *suspend_arg;
  void (*idle)(void *arg); /* other waits call it now and then (duet__shm_set_idle) */
  void *idle_arg;
  int awaited; /* the local rank a suspended wait is for, or -1 */
  int gone;    /* the local rank whose leaving ended the last wait, or -1 */
  const char *gone_how;
  uint64_t gone_ms;             /* how long that wait had lasted */
  uint64_t alive_at;            /* when waits look at the peer's process next (ns) */
  uint8_t watch[SHM_MAX_RANKS]; /* 1: the peer's process can be looked up here */
  cpu_set_t cpus;               /* CPUs this rank may run on (at open) */
  int ncpus;                    /* how many; 0 when unknown */
  uint64_t balance_at;          /* call (seq) of the next placement check */
  int mapped;                   /* entries of maps in use */
  int kernel_use;         /* DUET_MEM_KERNEL_COPY: -1 auto, 0 never, 1 always (where allowed) */
  int kernel_state;       /* KERNEL_*: whether this rank can read every peer's memory */
  uint64_t kernel_calls;  /* all-to-alls from DUET_SHM_KERNEL_MIN (all ranks agree) */
  uint64_t kernel_copies; /* of them, calls that read through the kernel here */
  uint64_t kernel_want;   /* rank 0: kpath bits for the next call */
  int timing;             /* rank 0: this call's copies are timed (work_begin) */
  uint64_t work;          /* their time so far (ns of this thread's CPU time) */
  uint8_t via_kernel[SHM_MAX_RANKS];          /* direct_agree: read peer p through the kernel */
  struct kernel_class kclass[KERNEL_CLASSES]; /* rank 0 */
  struct shm_map maps[SHM_MAX_RANKS][DUET_SHM_MAPS]; /* per local rank */
  char name[NAME_MAX + 1];
};

static void shm_err(char *errbuf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void shm_err(char *errbuf, const char *fmt, ...) {
  va_list ap;
  if (errbuf == NULL)
    return;
  va_start(ap, fmt);
  vsnprintf(errbuf, DUET_SHM_ERRLEN, fmt, ap);
  va_end(ap);
}

static size_t round_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

static size_t eager_stride(void) {
  return round_up(sizeof(uint64_t) + DUET_SHM_EAGER_MAX, SHM_LINE);
}

/* Offsets of the regions (every rank computes the same) and the size. */
static size_t shm_layout(int local_size, size_t *eager, size_t *ring, size_t *done, size_t *chunk) {
  size_t l = (size_t)local_size;
  size_t s = SHM_HEADER + round_up(l * SHM_LINE, SHM_LINE);
  *eager = s = round_up(s, 4096);
  s += 2 * l * eager_stride();
  *ring = s = round_up(s, 4096);
  s += l * (size_t)DUET_SHM_ROOTED_DEPTH * eager_stride();
  *done = s = round_up(s, 4096);
  s += l * SHM_LINE;
  *chunk = s = round_up(s, 4096);
  s += 2 * l * (size_t)DUET_SHM_CHUNK;
  return round_up(s, 4096);
}

size_t duet__shm_segment_size(int local_size) {
  size_t e, r, d, c;
  return shm_layout(local_size, &e, &r, &d, &c);
}

static struct shm_flag *flag_line(const duet__shm_t *shm, int r) {
  return (struct shm_flag *)(shm->base + shm->sync_off + (size_t)r * SHM_LINE);
}

static uint64_t *sync_flag(const duet__shm_t *shm, int r) {
  return &flag_line(shm, r)->value;
}

/* Oversubscribed hosts (topo/place.c): every DUET_SHM_BALANCE_EVERY calls
 * a rank reads its peers' published CPUs; if it is the rank that should
 * move to even them out, it moves. Every rank checks at the same calls, so
 * they agree whose turn it is. A rank that moved skips a few checks: its
 * published CPU is stale until its next call. */
static void balance(duet__shm_t *shm, int cpu) {
  int where[SHM_MAX_RANKS], to;

  if (shm->ncpus < 2 || shm->nranks <= shm->ncpus)
    return;
  for (int r = 0; r < shm->nranks; r++)
    where[r] = r == shm->rank ? cpu : __atomic_load_n(&flag_line(shm, r)->cpu, __ATOMIC_RELAXED);
  to = duet__place_pick(where, shm->nranks, shm->rank, &shm->cpus,
                        shm->seq / DUET_SHM_BALANCE_EVERY);
  if (to < 0 || duet__place_move(to, &shm->cpus, shm->nranks) != 0)
    return;
  shm->balance_at = shm->seq + DUET_SHM_BALANCE_HOLD;
  DUET_INFO(DUET_SUB_COLL, "shm %s: local rank %d: moved from cpu %d to cpu %d", shm->name,
            shm->rank, cpu, to);
}

static _Thread_local int shm_helper;

void duet__shm_helper_thread(void) {
  shm_helper = 1;
}

/* Publish the CPU this rank runs on (only when it changed: peers poll the
 * line). Returns it, or -1 if unknown. On a helper thread: the rank's last
 * published CPU, unchanged. */
static int publish_cpu(duet__shm_t *shm) {
  int32_t *mine = &flag_line(shm, shm->rank)->cpu;
  if (shm_helper)
    return __atomic_load_n(mine, __ATOMIC_RELAXED);
  int cpu = sched_getcpu();
  if (shm->seq >= shm->balance_at) {
    shm->balance_at = shm->seq + DUET_SHM_BALANCE_EVERY;
    balance(shm, cpu);
    cpu = sched_getcpu();
  }
  if (__atomic_load_n(mine, __ATOMIC_RELAXED) != cpu)
    __atomic_store_n(mine, cpu, __ATOMIC_RELAXED);
  return cpu;
}

static char *eager_slot(const duet__shm_t *shm, uint64_t parity, int r) {
  return shm->base + shm->eager_off +
         ((size_t)parity * (size_t)shm->nranks + (size_t)r) * shm->eager_stride;
}

/* Slot of rooted eager call k in rank r's ring: an 8-byte sequence number
 * (k + 1 once the data of call k is in), then the data. */
static char *ring_slot(const duet__shm_t *shm, int r, uint64_t k) {
  return shm->base + shm->ring_off +
         ((size_t)r * DUET_SHM_ROOTED_DEPTH + (size_t)(k % DUET_SHM_ROOTED_DEPTH)) *
             shm->eager_stride;
}

/* Rooted eager calls rank r has completed (its own 128-byte line). */
static uint64_t *done_flag(const duet__shm_t *shm, int r) {
  return (uint64_t *)(void *)(shm->base + shm->done_off + (size_t)r * SHM_LINE);
}

static char *chunk_buf(const duet__shm_t *shm, uint64_t parity, int r) {
  return shm->base + shm->chunk_off +
         ((size_t)parity * (size_t)shm->nranks + (size_t)r) * (size_t)DUET_SHM_CHUNK;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* How often (ms of waiting) a wait looks up the awaited peer's process. */
#ifndef DUET_SHM_ALIVE_MS
#define DUET_SHM_ALIVE_MS 100u
#endif

/* Whether local rank p has left while this rank waits for it: it closed
 * the segment (duet_comm_abort, duet_comm_destroy, a failed init), or its
 * process is gone. The process is looked up at most every
 * DUET_SHM_ALIVE_MS of waiting, and only where open could see it (a peer
 * in another PID namespace cannot be looked up: its waits end at the
 * deadline). Says how in shm->gone_how. */
static int peer_gone(duet__shm_t *shm, int p, uint64_t now) {
  const struct shm_header *h = (const struct shm_header *)(const void *)shm->base;
  uint64_t life = __atomic_load_n(&h->life[p], __ATOMIC_ACQUIRE), seen;
  if (life == SHM_LEFT) {
    shm->gone_how = "left the communicator (duet_comm_abort or duet_comm_destroy)";
    return 1;
  }
  if (!shm->watch[p] || now < shm->alive_at)
    return 0;
  shm->alive_at = now + DUET_SHM_ALIVE_MS * 1000000ull;
  seen = duet__proc_start(flag_line(shm, p)->pid);
  if (seen == life || seen == DUET_PROC_UNKNOWN)
    return 0;
  shm->gone_how = "exited or was killed";
  return 1;
}

/*
 * Wait until *flag >= want (acquire), for peer `p`. The deadline starts at
 * the first clock reading, a few hundred iterations in, so a wait that ends
 * quickly costs no system call. Returns 0, or -1 when timeout_ms passed or
 * the peer left (peer_gone; shm->gone says which).
 *
 * Spinning is right when the peer runs on another core; when it shares this
 * core (the scheduler put both there, or the host is oversubscribed), every
 * spin only delays it. So the waiter yields at once if the caller said so,
 * after a short spin if the peer last ran on this CPU, and after
 * DUET_SHM_SPIN_MAX iterations in any case (the peer may have been
 * preempted by other work).
 * A non-blocking call's task (duet__shm_set_suspend) suspends instead, and
 * checks again when resumed; other waits call the idle function (if set)
 * at each clock reading.
 */
static int wait_ge(duet__shm_t *shm, const uint64_t *flag, uint64_t want, int p, int cpu, int yield,
                   int timeout_ms) {
  const int32_t *peer_cpu = &flag_line(shm, p)->cpu;
  const unsigned first = yield ? DUET_SHM_YIELD_SPINS : DUET_SHM_SPINS_FIRST;
  unsigned spins = 0;
  unsigned check = yield ? 8u : 512u;
  uint64_t deadline = 0;
  while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < want) {
    if (shm->suspend != NULL) {
      shm->awaited = p; /* for the caller's timeout message */
      shm->suspend(shm->suspend_arg);
      shm->awaited = -1;
    } else if (spins < first || (!yield && spins < DUET_SHM_SPIN_MAX &&
                                 (cpu < 0 || __atomic_load_n(peer_cpu, __ATOMIC_RELAXED) != cpu)))
      cpu_relax();
    else
      sched_yield();
    if (++spins % check == 0) {
      uint64_t t;
      if (shm->idle != NULL && shm->suspend == NULL)
        shm->idle(shm->idle_arg);
      t = now_ns();
      if (deadline == 0)
        deadline = t + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
      else if (t >= deadline)
        return __atomic_load_n(flag, __ATOMIC_ACQUIRE) >= want ? 0 : -1;
      if (peer_gone(shm, p, t)) { /* what it stored before it left is seen by now */
        if (__atomic_load_n(flag, __ATOMIC_ACQUIRE) >= want)
          return 0;
        shm->gone = p;
        shm->gone_ms =
            (t + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull - deadline) / 1000000ull;
        return -1;
      }
    }
  }
  return 0;
}

/* A wait timed out: break the engine and name the peer and the call (`kind`
 * says which counter numbers it: "call" for shm->seq, "rooted call" for the
 * rooted eager calls). */
static duet_status_t timed_out_at(duet__shm_t *shm, int peer, const char *what, const char *kind,
                                  uint64_t call, int timeout_ms, char *errbuf) {
  shm->broken = 1;
  if (shm->gone == peer) {
    shm_err(errbuf,
            "shm %s: local rank %d (pid %d) %s while this rank waited for it in %s %llu (for "
            "%llu ms)",
            what, peer, (int)flag_line(shm, peer)->pid, shm->gone_how, kind,
            (unsigned long long)call, (unsigned long long)shm->gone_ms);
    DUET_WARN(DUET_SUB_COLL, "shm %s: local rank %d %s while this rank waited for it in %s %llu",
              what, peer, shm->gone_how, kind, (unsigned long long)call);
    return DUET_ERR_REMOTE;
  }
  shm_err(errbuf, "shm %s: local rank %d did not arrive for %s %llu within %d ms (segment %s)",
          what, peer, kind, (unsigned long long)call, timeout_ms, shm->name);
  DUET_WARN(DUET_SUB_COLL, "shm %s: local rank %d did not arrive for %s %llu within %d ms", what,
            peer, kind, (unsigned long long)call, timeout_ms);
  return DUET_ERR_TIMEOUT;
}

static duet_status_t timed_out(duet__shm_t *shm, int peer, const char *what, int timeout_ms,
                               char *errbuf) {
  return timed_out_at(shm, peer, what, "call", shm->seq, timeout_ms, errbuf);
}

/* Store this rank's next sync value and wait for every peer to reach it. */
static duet_status_t sync_all(duet__shm_t *shm, const char *what, int cpu, int yield,
                              int timeout_ms, char *errbuf) {
  uint64_t v = ++shm->sync;
  __atomic_store_n(sync_flag(shm, shm->rank), v, __ATOMIC_RELEASE);
  for (int i = 1; i < shm->nranks; i++) {
    int p = (shm->rank + i) % shm->nranks;
    if (wait_ge(shm, sync_flag(shm, p), v, p, cpu, yield, timeout_ms) != 0)
      return timed_out(shm, p, what, timeout_ms, errbuf);
  }
  return DUET_SUCCESS;
}

/* memcpy with streaming stores where the CPU has them; the caller issues
 * the store fence (copy_fence) before the data may be seen elsewhere. */
static void copy_nt(void *dst, const void *src, size_t n) {
#if defined(__SSE2__)
  char *d = dst;
  const char *s = src;
  size_t head = (16 - ((uintptr_t)d & 15u)) & 15u, i = 0;
  if (head > n)
    head = n;
  memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 32));
    __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 48));
    _mm_stream_si128((__m128i *)(void *)(d + i), a);
    _mm_stream_si128((__m128i *)(void *)(d + i + 16), b);
    _mm_stream_si128((__m128i *)(void *)(d + i + 32), c);
    _mm_stream_si128((__m128i *)(void *)(d + i + 48), e);
  }
  memcpy(d + i, s + i, n - i);
#else
  memcpy(dst, src, n);
#endif
}

static void copy_fence(void) {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/* A copy to recvbuf: streaming stores when nt (see copy_nt), else memcpy. */
static void copy_out(int nt, void *dst, const void *src, size_t n) {
  if (nt)
    copy_nt(dst, src, n);
  else
    memcpy(dst, src, n);
}

/* Bytes of the last-level cache cpu0 shares, from sysfs ("32768K"). */
static size_t llc_bytes(void) {
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  unsigned long v = 0;
  char unit = 'K';
  if (f == NULL)
    return DUET_SHM_LLC_DEFAULT;
  int got = fscanf(f, "%lu%c", &v, &unit);
  fclose(f);
  if (got < 1 || v == 0)
    return DUET_SHM_LLC_DEFAULT;
  return (size_t)v << (unit == 'M' ? 20 : unit == 'G' ? 30 : unit == 'K' ? 10 : 0);
}

/* ---- open / close ---- */

static duet_status_t shm_map(duet__shm_t *shm, int fd, char *errbuf) {
  void *p = mmap(NULL, shm->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    shm_err(errbuf, "mmap of %zu bytes of %s: %s", shm->size, shm->name, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  shm->base = p;
  return DUET_SUCCESS;
}

/* Fault every page in writable now, so no call ever takes a page fault. */
static void shm_prefault(duet__shm_t *shm) {
#ifdef MADV_POPULATE_WRITE
  if (madvise(shm->base, shm->size, MADV_POPULATE_WRITE) == 0)
    return;
#endif
  /* Older kernels: read every page (the mapping was populated; this only
   * makes sure), writes then take at most a cheap permission fault. */
  for (size_t off = 0; off < shm->size; off += 4096)
    (void)*(volatile char *)(shm->base + off);
}

static duet_status_t shm_create(duet__shm_t *shm, char *errbuf) {
  duet_status_t rc;
  int fd = shm_open(shm->name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    shm_err(errbuf, "shm_open(%s, O_CREAT|O_EXCL): %s", shm->name, strerror(errno));
    return DUET_ERR_SYSTEM;
  }
  /* Allocate every page now: on a /dev/shm too small for the segment (a
   * container's 64 MiB) the first write to a missing page would be SIGBUS. */
  int err = posix_fallocate(fd, 0, (off_t)shm->size);
  if (err != 0) {
    struct statvfs sv;
    unsigned long long avail =
        fstatvfs(fd, &sv) == 0 ? (unsigned long long)sv.f_bavail * sv.f_frsize : 0;
    shm_err(errbuf, "no room for the %zu MiB segment %s (%llu MiB free in /dev/shm): %s",
            (shm->size + (1u << 20) - 1) >> 20, shm->name, avail >> 20, strerror(err));
    /* Leave the name, sized SHM_NO_ROOM, so that the other ranks give up at
     * once instead of waiting for a segment; duet__shm_forget removes it. */
    if (ftruncate(fd, SHM_NO_ROOM) != 0)
      shm_unlink(shm->name);
    close(fd);
    return DUET_ERR_SYSTEM;
  }
  rc = shm_map(shm, fd, errbuf);
  if (rc != DUET_SUCCESS)
    goto out_unlink;
  /* Writing every page allocates it (tmpfs has no shared zero page). */
  memset(shm->base, 0, shm->size);
  struct shm_header *h = (struct shm_header *)shm->base;
  h->local_size = (uint64_t)shm->nranks;
  h->size = shm->size;
  __atomic_store_n(&h->magic, SHM_MAGIC, __ATOMIC_RELEASE);
  close(fd);
  return DUET_SUCCESS;

out_unlink:
  shm_unlink(shm->name);
  close(fd);
  return rc;
}

static duet_status_t shm_attach(duet__shm_t *shm, int timeout_ms, char *errbuf) {
  uint64_t deadline = now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
  duet_status_t rc;
  struct stat st;
  int fd;
  /* The creator may not have created or sized the segment yet. */
  for (;;) {
    fd = shm_open(shm->name, O_RDWR, 0600);
    if (fd >= 0) {
      int sized = fstat(fd, &st) == 0;
      if (sized && (size_t)st.st_size == shm->size)
        break;
      close(fd);
      if (sized && st.st_size == SHM_NO_ROOM) {
        shm_err(errbuf, "local rank 0 found no room in /dev/shm for the %zu MiB segment %s",
                (shm->size + (1u << 20) - 1) >> 20, shm->name);
        return DUET_ERR_SYSTEM;
      }
    } else if (errno != ENOENT) {
      shm_err(errbuf, "shm_open(%s): %s", shm->name, strerror(errno));
      return DUET_ERR_SYSTEM;
    }
    if (now_ns() >= deadline) {
      shm_err(errbuf, "shm segment %s not created (sized %zu) by local rank 0 within %d ms",
              shm->name, shm->size, timeout_ms);
      return DUET_ERR_TIMEOUT;
    }
    usleep(1000);
  }
  rc = shm_map(shm, fd, errbuf);
  close(fd);
  if (rc != DUET_SUCCESS)
    return rc;
  struct shm_header *h = (struct shm_header *)shm->base;
  while (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != SHM_MAGIC) {
    if (now_ns() >= deadline) {
      shm_err(errbuf, "shm segment %s not initialised by local rank 0 within %d ms", shm->name,
              timeout_ms);
      rc = DUET_ERR_TIMEOUT;
      goto out_unmap;
    }
    usleep(100);
  }
  if (h->local_size != (uint64_t)shm->nranks || h->size != shm->size) {
    shm_err(errbuf, "shm segment %s was made for %llu ranks (%llu bytes), this rank expects %d",
            shm->name, (unsigned long long)h->local_size, (unsigned long long)h->size, shm->nranks);
    rc = DUET_ERR_MISMATCH;
    goto out_unmap;
  }
  shm_prefault(shm);
  return DUET_SUCCESS;

out_unmap:
  munmap(shm->base, shm->size);
  shm->base = NULL;
  return rc;
}

duet_status_t duet__shm_open(duet__shm_t **shmp, const char *name, int local_rank, int local_size,
                             int timeout_ms, char *errbuf) {
  struct shm_header *h;
  duet__shm_t *shm;
  duet_status_t rc;
  uint64_t me;

  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shmp == NULL || name == NULL || name[0] != '/' || strlen(name) > NAME_MAX ||
      strchr(name + 1, '/') != NULL || local_size < 1 || local_size > SHM_MAX_RANKS ||
      local_rank < 0 || local_rank >= local_size) {
    shm_err(errbuf, "shm open: bad argument (name %s, local rank %d of %d)", name ? name : "(null)",
            local_rank, local_size);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  *shmp = NULL;
  shm = calloc(1, sizeof(*shm));
  if (shm == NULL) {
    shm_err(errbuf, "shm open: out of memory");
    return DUET_ERR_NO_MEMORY;
  }
  snprintf(shm->name, sizeof(shm->name), "%s", name);
  shm->rank = local_rank;
  shm->nranks = local_size;
  shm->size =
      shm_layout(local_size, &shm->eager_off, &shm->ring_off, &shm->done_off, &shm->chunk_off);
  shm->sync_off = SHM_HEADER;
  shm->eager_stride = eager_stride();
  shm->nt_min = llc_bytes();
  shm->awaited = -1;
  shm->gone = -1;
  if (sched_getaffinity(0, sizeof(shm->cpus), &shm->cpus) == 0)
    shm->ncpus = CPU_COUNT(&shm->cpus);
  shm->balance_at = UINT64_MAX; /* until every rank has published its CPU */
  shm->kernel_use = -1;

  rc = local_rank == 0 ? shm_create(shm, errbuf) : shm_attach(shm, timeout_ms, errbuf);
  if (rc != DUET_SUCCESS)
    goto out_free;
  /* Attach: sync point 1. After it every rank has the segment mapped, so
   * the name may be unlinked. */
  h = (struct shm_header *)(void *)shm->base;
  flag_line(shm, local_rank)->pid = (int32_t)getpid();
  flag_line(shm, local_rank)->self = (uint64_t)(uintptr_t)flag_line(shm, local_rank);
  me = duet__proc_start(0); /* 0 (not looked up) when unknown: SHM_LEFT is that value too */
  __atomic_store_n(&h->life[local_rank], me == DUET_PROC_UNKNOWN ? 0 : me, __ATOMIC_RELAXED);
  rc = sync_all(shm, "open", publish_cpu(shm), 1, timeout_ms, errbuf);
  if (rc != DUET_SUCCESS) {
    if (local_rank == 0)
      shm_unlink(shm->name);
    goto out_unmap;
  }
  for (int p = 0; p < local_size; p++) /* the peers whose process this rank can look up */
    shm->watch[p] = p != local_rank && h->life[p] != 0 && h->life[p] != SHM_LEFT &&
                    duet__proc_start(flag_line(shm, p)->pid) == h->life[p];
  /* every rank's CPU is published now: place the ranks evenly from the start */
  shm->balance_at = DUET_SHM_BALANCE_EVERY;
  balance(shm, sched_getcpu());
  DUET_INFO(DUET_SUB_INIT, "shm %s: local rank %d of %d attached, %zu bytes", shm->name, local_rank,
            local_size, shm->size);
  *shmp = shm;
  return DUET_SUCCESS;

out_unmap:
  munmap(shm->base, shm->size);
out_free:
  free(shm);
  return rc;
}

void duet__shm_unlink(duet__shm_t *shm) {
  if (shm == NULL || shm->unlinked)
    return;
  shm->unlinked = 1;
  if (shm_unlink(shm->name) != 0 && errno != ENOENT)
    DUET_WARN(DUET_SUB_INIT, "shm_unlink(%s): %s", shm->name, strerror(errno));
}

void duet__shm_forget(const char *name) {
  if (shm_unlink(name) != 0 && errno != ENOENT)
    DUET_WARN(DUET_SUB_INIT, "shm_unlink(%s): %s", name, strerror(errno));
}

static void unmap_peer(duet__shm_t *shm, struct shm_map *m);

void duet__shm_close(duet__shm_t *shm) {
  if (shm == NULL)
    return;
  if (shm->base != NULL) /* a peer still waiting for this rank stops waiting */
    __atomic_store_n(&((struct shm_header *)(void *)shm->base)->life[shm->rank], SHM_LEFT,
                     __ATOMIC_RELEASE);
  for (int p = 0; p < shm->nranks && shm->mapped > 0; p++)
    for (int k = 0; k < DUET_SHM_MAPS; k++)
      if (shm->maps[p][k].base != NULL)
        unmap_peer(shm, &shm->maps[p][k]);
  if (shm->base != NULL)
    munmap(shm->base, shm->size);
  free(shm);
}

void duet__shm_set_suspend(duet__shm_t *shm, void (*fn)(void *arg), void *arg) {
  shm->suspend = fn;
  shm->suspend_arg = arg;
}

void duet__shm_set_idle(duet__shm_t *shm, void (*fn)(void *arg), void *arg) {
  shm->idle = fn;
  shm->idle_arg = arg;
}

const char *duet__shm_name(const duet__shm_t *shm) {
  return shm->name;
}

int duet__shm_awaited(const duet__shm_t *shm) {
  return shm != NULL ? shm->awaited : -1;
}

void duet__shm_set_stream_min(duet__shm_t *shm, size_t bytes) {
  if (shm != NULL)
    shm->nt_min = bytes;
}

/* ---- collectives ---- */

/* A reduction over one rank: copy, and divide for AVG. */
static duet_status_t reduce_alone(const void *sendbuf, void *recvbuf, size_t count,
                                  duet_datatype_t dt, duet_op_t op, int avg_n) {
  if (sendbuf != recvbuf)
    memcpy(recvbuf, sendbuf, count * duet__dt_size(dt));
  if (op == DUET_AVG)
    duet__reduce_avg_finish(recvbuf, count, dt, avg_n);
  return DUET_SUCCESS;
}

duet_status_t duet__shm_barrier(duet__shm_t *shm, int yield, int timeout_ms, char *errbuf) {
  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL) {
    shm_err(errbuf, "shm barrier: NULL engine");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (shm->broken) {
    shm_err(errbuf, "shm barrier: engine %s timed out earlier; ranks are out of step", shm->name);
    return DUET_ERR_ABORTED;
  }
  shm->seq++;
  return sync_all(shm, "barrier", publish_cpu(shm), yield, timeout_ms, errbuf);
}

/* Small messages: every rank reduces every rank's slot, in rank order. */
static duet_status_t allreduce_eager(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                     size_t count, duet_datatype_t dt, duet_op_t op, int avg_n,
                                     int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks;
  const uint64_t seq = shm->seq, par = seq & 1u;
  const size_t bytes = count * duet__dt_size(dt);
  char *mine = eager_slot(shm, par, shm->rank);

  memcpy(mine + sizeof(uint64_t), sendbuf, bytes);
  __atomic_store_n((uint64_t *)mine, seq, __ATOMIC_RELEASE);
  for (int i = 1; i < n; i++) {
    int p = (shm->rank + i) % n;
    if (wait_ge(shm, (const uint64_t *)eager_slot(shm, par, p), seq, p, cpu, yield, timeout_ms) !=
        0)
      return timed_out(shm, p, "allreduce", timeout_ms, errbuf);
  }
  duet__reduce(recvbuf, eager_slot(shm, par, 0) + sizeof(uint64_t),
               eager_slot(shm, par, 1) + sizeof(uint64_t), count, dt, op);
  for (int p = 2; p < n; p++)
    duet__reduce(recvbuf, recvbuf, eager_slot(shm, par, p) + sizeof(uint64_t), count, dt, op);
  if (op == DUET_AVG)
    duet__reduce_avg_finish(recvbuf, count, dt, avg_n);
  return DUET_SUCCESS;
}

/* Send buffers in duet_mem_alloc memory, read in place (see below, after
 * the all-to-all's use of them). */
enum { DIRECT_NONE, DIRECT_GO, DIRECT_STAGE };
static int publish_reg(duet__shm_t *shm, const char *sb, size_t sext, const char *rb, size_t rext,
                       int big, int kernel);
static size_t direct_min(int yield);
static duet_status_t direct_agree(duet__shm_t *shm, const char *what, size_t need, const char **src,
                                  size_t *ext, int *verdict, int cpu, int yield, int timeout_ms,
                                  char *errbuf);

/* Slice s of a chunk of `elems` elements split `n` ways in whole cache lines. */
static void slice_range(size_t elems, int n, int s, size_t *lo, size_t *hi) {
  size_t q = round_up((elems + (size_t)n - 1) / (size_t)n, 64);
  size_t a = q * (size_t)s, b = a + q;
  *lo = a < elems ? a : elems;
  *hi = b < elems ? b : elems;
}

/* Reduce slice [lo, lo + m) of a chunk into acc: the peers' data in rank
 * order from r + 1 on, this rank's own (own) last, as every path does. */
static void reduce_slice(char *acc, const char *const *src, const char *own, int n, int r, size_t m,
                         duet_datatype_t dt, duet_op_t op, int avg_n) {
  if (n == 2) {
    duet__reduce(acc, src[(r + 1) % n], own, m, dt, op);
  } else {
    duet__reduce(acc, src[(r + 1) % n], src[(r + 2) % n], m, dt, op);
    for (int i = 3; i < n; i++)
      duet__reduce(acc, acc, src[(r + i) % n], m, dt, op);
    duet__reduce(acc, acc, own, m, dt, op);
  }
  if (op == DUET_AVG)
    duet__reduce_avg_finish(acc, m, dt, avg_n);
}

/* Copy-out of a chunk: every reduced slice, own slice first (it is in
 * cache); slice s lies in chunk buffer `holder(s)` of parity par. */
static void allreduce_copy_out(duet__shm_t *shm, uint64_t par, char *dst, size_t elems, size_t esz,
                               int shift, int nt) {
  const int n = shm->nranks, r = shm->rank;
  size_t lo, hi;
  for (int i = 0; i < n; i++) {
    int s = (r + i) % n;
    slice_range(elems, n, s, &lo, &hi);
    if (hi > lo)
      copy_out(nt, dst + lo * esz, chunk_buf(shm, par, (s + shift) % n) + lo * esz,
               (hi - lo) * esz);
  }
}

/* Large messages: chunked reduce-scatter + allgather through the buffers.
 *
 * When every rank's send buffer is duet_mem_alloc memory (publish_reg,
 * direct_agree; from DUET_SHM_DIRECT_MIN per rank's slice of a chunk), the
 * copy-in goes: each rank reduces its slice of a chunk straight from the
 * peers' send buffers into its own chunk buffer, one sync, then every rank
 * copies every slice out. One sync per chunk instead of two, and a copy of
 * (n - 1) / n of the data less. Send buffers stay valid to the end: a rank
 * returns only after the last chunk's sync, which every peer passes after
 * its last read. In place is safe too: a rank overwrites a chunk of its
 * buffer only after the sync that follows every peer's reads of it; but
 * with a core per rank it is no faster there (the peers' buffers hold the
 * last call's results, dirty in their caches), so only out of place or on
 * an oversubscribed host. 4 ranks on 2 cores, 2 MiB: 174-191 against
 * 233-252 us out of place, 166-186 against 210-233 in place; 2 ranks, 8 MiB
 * out of place: 392-414 against 402-484 us. */
/* Copy-in of a chunk: the slices other ranks reduce, into this rank's
 * chunk buffer of parity par. */
static void allreduce_copy_in(duet__shm_t *shm, uint64_t par, const char *own, size_t elems,
                              size_t esz) {
  const int n = shm->nranks, r = shm->rank;
  char *buf = chunk_buf(shm, par, r);
  size_t lo, hi;
  for (int s = 0; s < n; s++) {
    slice_range(elems, n, s, &lo, &hi);
    if (s != r && hi > lo)
      memcpy(buf + lo * esz, own + lo * esz, (hi - lo) * esz);
  }
}

static duet_status_t allreduce_chunked(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                       size_t count, duet_datatype_t dt, duet_op_t op, int avg_n,
                                       int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const size_t esz = duet__dt_size(dt);
  const size_t per = DUET_SHM_CHUNK / esz;
  const char *sb = sendbuf;
  char *rb = recvbuf;
  /* streaming stores once the local ranks' send and receive buffers
   * together (2 x n x bytes) fill half the last-level cache: 2 ranks,
   * 8 MiB, 1222-1315 against 1666-1958 us when the rule counted the
   * receive buffers against the whole cache; 4 MiB 549-601 against 686-815;
   * 4 ranks on 2 cores, 4 MiB, 1305-1661 against 1661-2415; 2 MiB (2
   * ranks) and 1 MiB (4) are faster with ordinary stores */
  const int nt = sendbuf != recvbuf && 4 * count * esz * (size_t)n >= shm->nt_min;
  const size_t first = count < per ? count : per; /* chunk 0's elements */
  const char *src[SHM_MAX_RANKS];
  size_t ext[SHM_MAX_RANKS], lo, hi;
  uint64_t par = shm->chunks++ & 1u;
  int mine, verdict;
  duet_status_t rc;

  /* Chunk 0's copy-in (not by a rank whose send buffer peers may read),
   * the first sync, and the verdict on reading send buffers in place. */
  mine = publish_reg(shm, sb, count * esz, rb, sb == rb ? 0 : count * esz,
                     first * esz >= direct_min(yield) * (size_t)n && (sb != rb || yield), 0);
  if (!mine)
    allreduce_copy_in(shm, par, sb, first, esz);
  rc = sync_all(shm, "allreduce", cpu, yield, timeout_ms, errbuf);
  if (rc == DUET_SUCCESS)
    rc = direct_agree(shm, "allreduce", count * esz, src, ext, &verdict, cpu, yield, timeout_ms,
                      errbuf);
  if (rc == DUET_SUCCESS && verdict == DIRECT_STAGE) { /* the ranks that published copy in late */
    if (mine)
      allreduce_copy_in(shm, par, sb, first, esz);
    rc = sync_all(shm, "allreduce", cpu, yield, timeout_ms, errbuf);
  }
  if (rc != DUET_SUCCESS)
    return rc;
  src[r] = sb;

  for (size_t off = 0; off < count; off += per) {
    size_t elems = count - off < per ? count - off : per;
    const char *own = sb + off * esz;
    const char *at[SHM_MAX_RANKS];
    char *acc;
    if (off > 0)
      par = shm->chunks++ & 1u;
    slice_range(elems, n, r, &lo, &hi);

    if (verdict == DIRECT_GO) { /* slice r straight from the send buffers */
      for (int p = 0; p < n; p++)
        at[p] = src[p] + (off + lo) * esz;
      acc = chunk_buf(shm, par, r) + lo * esz;
    } else { /* 1. copy-in; 2. slice r reduced into rank r + 1's buffer */
      if (off > 0) {
        allreduce_copy_in(shm, par, own, elems, esz);
        rc = sync_all(shm, "allreduce", cpu, yield, timeout_ms, errbuf);
        if (rc != DUET_SUCCESS)
          return rc;
      }
      for (int p = 0; p < n; p++)
        at[p] = chunk_buf(shm, par, p) + lo * esz;
      acc = chunk_buf(shm, par, (r + 1) % n) + lo * esz;
    }
    if (hi > lo)
      reduce_slice(acc, at, own + lo * esz, n, r, hi - lo, dt, op, avg_n);
    rc = sync_all(shm, "allreduce", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    /* 3. copy-out of every reduced slice */
    allreduce_copy_out(shm, par, rb + off * esz, elems, esz, verdict == DIRECT_GO ? 0 : 1, nt);
  }
  if (nt)
    copy_fence();
  return DUET_SUCCESS;
}

duet_status_t duet__shm_allreduce(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t count, duet_datatype_t dt, duet_op_t op, int avg_n,
                                  int yield, int timeout_ms, char *errbuf) {
  size_t esz = duet__dt_size(dt);

  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL || esz == 0 || (unsigned)op >= (unsigned)DUET_NUM_OPS ||
      (count > 0 && (sendbuf == NULL || recvbuf == NULL)) || count > SIZE_MAX / esz ||
      (op == DUET_AVG && avg_n < 1)) {
    shm_err(errbuf, "shm allreduce: bad argument (count %zu, datatype %d, op %d, avg_n %d)", count,
            (int)dt, (int)op, avg_n);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (shm->broken) {
    shm_err(errbuf, "shm allreduce: engine %s timed out earlier; ranks are out of step", shm->name);
    return DUET_ERR_ABORTED;
  }
  /* count 0 is no call at all: it must not advance the slot parity (a slot
   * may be rewritten only after a call in which every peer arrived) */
  if (count == 0)
    return DUET_SUCCESS;
  shm->seq++;
  if (shm->nranks == 1)
    return reduce_alone(sendbuf, recvbuf, count, dt, op, avg_n);
  int cpu = publish_cpu(shm);
  if (count * esz <= DUET_SHM_EAGER_MAX)
    return allreduce_eager(shm, sendbuf, recvbuf, count, dt, op, avg_n, cpu, yield, timeout_ms,
                           errbuf);
  return allreduce_chunked(shm, sendbuf, recvbuf, count, dt, op, avg_n, cpu, yield, timeout_ms,
                           errbuf);
}

/* ---- all-to-all ---- */

/* Small: rank r stores its blocks for every peer in its slot (block d at
 * d x bytes; its own block goes straight to recvbuf), then copies block r
 * out of every peer's slot. In place is safe: every send block is stored in
 * the slot before any receive block overwrites it. */
static duet_status_t alltoall_eager(duet__shm_t *shm, const char *sb, char *rb, size_t bytes,
                                    int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const uint64_t seq = shm->seq, par = seq & 1u;
  char *mine = eager_slot(shm, par, r) + sizeof(uint64_t);

  for (int d = 0; d < n; d++)
    if (d != r)
      memcpy(mine + (size_t)d * bytes, sb + (size_t)d * bytes, bytes);
  __atomic_store_n((uint64_t *)eager_slot(shm, par, r), seq, __ATOMIC_RELEASE);
  if (sb != rb)
    memcpy(rb + (size_t)r * bytes, sb + (size_t)r * bytes, bytes);
  for (int i = 1; i < n; i++) {
    int p = (r + n - i) % n; /* the peer that wrote last is read last */
    const char *slot = eager_slot(shm, par, p);
    if (wait_ge(shm, (const uint64_t *)slot, seq, p, cpu, yield, timeout_ms) != 0)
      return timed_out(shm, p, "alltoall", timeout_ms, errbuf);
    memcpy(rb + (size_t)p * bytes, slot + sizeof(uint64_t) + (size_t)r * bytes, bytes);
  }
  return DUET_SUCCESS;
}

/* Piece size of a step that moves one piece of every block: the chunk
 * buffer holds one piece per rank, whole cache lines each. */
static size_t piece_bytes(const duet__shm_t *shm) {
  return (DUET_SHM_CHUNK / (size_t)shm->nranks) & ~(size_t)63;
}

/* The all-to-alls stage no piece for the rank itself: a chunk buffer holds
 * one piece per peer, the piece from `from` for `to` in slot
 * a2a_slot(from, to). 2 ranks, 2 MiB: pieces of 512 KiB instead of 256,
 * 81-83 against 94-105 us. */
static size_t a2a_piece_bytes(const duet__shm_t *shm) {
  return (DUET_SHM_CHUNK / (size_t)(shm->nranks - 1)) & ~(size_t)63;
}

static size_t a2a_slot(const duet__shm_t *shm, int from, int to) {
  return (size_t)((to - from - 1 + shm->nranks) % shm->nranks);
}

/* Copy-in of one step: store bytes [off, off + m) of each of sb's blocks
 * (block d, `bytes` long, for rank d) other than this rank's own into this
 * rank's chunk buffer `par`, the piece for d at d x q (packed: at
 * a2a_slot(rank, d) x q). Returns the buffer. */
static char *stage_pieces(duet__shm_t *shm, uint64_t par, const char *sb, size_t bytes, size_t off,
                          size_t m, size_t q, int packed) {
  const int n = shm->nranks, r = shm->rank;
  char *mine = chunk_buf(shm, par, r);
  for (int i = 1; i < n; i++) {
    int d = (r + i) % n;
    size_t at = packed ? a2a_slot(shm, r, d) : (size_t)d;
    memcpy(mine + at * q, sb + (size_t)d * bytes + off, m);
  }
  return mine;
}

/* ---- send buffers in duet_mem_alloc memory (umem.h) ---- */

static void unmap_peer(duet__shm_t *shm, struct shm_map *m) {
  munmap(m->base, m->size);
  memset(m, 0, sizeof *m);
  shm->mapped--;
}

/* Drop the mappings whose owner has freed the memory. */
static void sweep_maps(duet__shm_t *shm) {
  for (int p = 0; p < shm->nranks && shm->mapped > 0; p++)
    for (int k = 0; k < DUET_SHM_MAPS; k++) {
      struct shm_map *m = &shm->maps[p][k];
      if (m->base != NULL &&
          !__atomic_load_n(&((const duet__umem_head_t *)(void *)m->base)->alive, __ATOMIC_ACQUIRE))
        unmap_peer(shm, m);
    }
}

/* Local rank p's memory that g describes, mapped read-only here: from the
 * cache, or by duet__umem_map. Returns the send buffer (the mapping plus g's
 * offset), or NULL when the memory cannot be mapped or holds fewer than
 * `need` bytes from the offset on. */
static const char *map_peer(duet__shm_t *shm, int p, const struct shm_reg *g, size_t need) {
  struct shm_map *m = shm->maps[p], *slot = &m[0];
  const duet__umem_ref_t ref = {
      .fd = g->fd, .nonce = g->nonce, .serial = g->serial, .size = g->size};
  char *base;

  if (g->offset < DUET_UMEM_HEADER || g->offset > g->size || need > g->size - g->offset)
    return NULL;
  for (int k = 0; k < DUET_SHM_MAPS; k++) {
    if (m[k].base != NULL && m[k].serial == g->serial && m[k].nonce == g->nonce &&
        m[k].size == g->size) {
      m[k].used = shm->seq;
      return m[k].base + g->offset;
    }
    if (slot->base != NULL && (m[k].base == NULL || m[k].used < slot->used))
      slot = &m[k]; /* a free entry, else the least recently used */
  }
  base = duet__umem_map(flag_line(shm, p)->pid, &ref);
  if (base == NULL) {
    DUET_INFO(DUET_SUB_COLL,
              "shm %s: local rank %d's memory cannot be mapped here (%s); the "
              "all-to-all copies twice",
              shm->name, p, errno ? strerror(errno) : "not its memory");
    return NULL;
  }
  if (slot->base != NULL)
    unmap_peer(shm, slot);
  *slot = (struct shm_map){
      .serial = g->serial, .nonce = g->nonce, .base = base, .size = g->size, .used = shm->seq};
  shm->mapped++;
  return base + g->offset;
}

/* Publish, for the next sync, where this rank's send buffer (`sext` bytes
 * from sb) lies if peers may read it in place: not overlapping recvbuf
 * (`rext` bytes from rb), and either duet_mem_alloc memory worth mapping
 * (`big`: the caller's size rule) or, when `kernel` (the all-to-all's way
 * this call, kernel_path), any memory, for the kernel to copy from. What
 * is not published is zero. Returns whether it published either. First
 * drops the mappings of peers' freed memory. */
static int publish_reg(duet__shm_t *shm, const char *sb, size_t sext, const char *rb, size_t rext,
                       int big, int kernel) {
  struct shm_flag *f = flag_line(shm, shm->rank);
  const uint64_t par = (shm->sync + 1) & 1u;
  struct shm_reg *g = &f->reg[par];
  const int apart = sext > 0 && !(rext > 0 && sb < rb + rext && rb < sb + sext);
  const uint64_t addr = apart && kernel ? (uint64_t)(uintptr_t)sb : 0;
  duet__umem_ref_t ref;
  if (shm->mapped > 0)
    sweep_maps(shm);
  if (f->addr[par] != addr) /* peers poll this line: write only a change */
    f->addr[par] = addr;
  if (!big || !apart || !duet__umem_find(sb, sext, &ref)) {
    if (g->serial != 0)
      g->serial = 0;
    return addr != 0;
  }
  *g = (struct shm_reg){.serial = ref.serial,
                        .nonce = ref.nonce,
                        .size = ref.size,
                        .offset = ref.offset,
                        .fd = ref.fd};
  return 1;
}

/* The smallest block read in place (DUET_SHM_DIRECT_MIN). */
static size_t direct_min(int yield) {
  return yield ? DUET_SHM_DIRECT_MIN_YIELD : DUET_SHM_DIRECT_MIN;
}

/* Right after the first sync of a chunked all-to-all, in which the ranks
 * whose send buffer can be read in place (publish_reg) published it and
 * staged nothing. Every rank reaches the same verdict:
 *   DIRECT_NONE   nobody published: go on as usual;
 *   DIRECT_GO     every rank published, and mapped every peer's buffer
 *                 or can have the kernel read it (one more sync to agree
 *                 on that): src[p] is local rank p's send buffer, ext[p]
 *                 (>= need) bytes of it readable (to the end of its
 *                 allocation), and the caller copies its blocks straight
 *                 out of them, then passes one last sync, so that no rank
 *                 returns (and reuses its send buffer) while a peer still
 *                 reads it. Where shm->via_kernel[p] is set, src[p] is an
 *                 address in p's process, for process_vm_readv, and ext[p]
 *                 is need. A rank publishes such an address only if it can
 *                 have the kernel read every peer (kernel_path), so when
 *                 every rank did, every rank reads every peer one way or
 *                 the other, and there is nothing to agree on;
 *   DIRECT_STAGE  otherwise: the ranks that published stage their first
 *                 step now, and after one more sync the call goes on as
 *                 usual. */
static duet_status_t direct_agree(duet__shm_t *shm, const char *what, size_t need, const char **src,
                                  size_t *ext, int *verdict, int cpu, int yield, int timeout_ms,
                                  char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const uint64_t rpar = shm->sync & 1u, mpar = (shm->sync + 1) & 1u;
  int nreg = 0, nkernel = 0, ok = 1;
  duet_status_t rc;

  for (int p = 0; p < n; p++) {
    nreg += flag_line(shm, p)->reg[rpar].serial != 0 || flag_line(shm, p)->addr[rpar] != 0;
    nkernel += flag_line(shm, p)->addr[rpar] != 0;
  }
  *verdict = nreg == 0 ? DIRECT_NONE : DIRECT_STAGE;
  if (nreg < n)
    return DUET_SUCCESS;
  for (int i = 1; i < n && ok; i++) {
    int p = (r + i) % n;
    const struct shm_reg *g = &flag_line(shm, p)->reg[rpar];
    const uint64_t addr = flag_line(shm, p)->addr[rpar];
    src[p] = g->serial != 0 ? map_peer(shm, p, g, need) : NULL;
    ext[p] = (size_t)(g->size - g->offset);
    shm->via_kernel[p] = src[p] == NULL && addr != 0 && shm->kernel_state == KERNEL_OK;
    if (shm->via_kernel[p]) {
      src[p] = (const char *)(uintptr_t)addr;
      ext[p] = need;
    }
    ok = src[p] != NULL;
  }
  if (nkernel == n) { /* each published only if it can read every peer: all can */
    *verdict = DIRECT_GO;
    return DUET_SUCCESS;
  }
  __atomic_store_n(&flag_line(shm, r)->mapped[mpar], (uint32_t)ok, __ATOMIC_RELAXED);
  rc = sync_all(shm, what, cpu, yield, timeout_ms, errbuf);
  for (int p = 0; p < n && rc == DUET_SUCCESS; p++)
    ok = ok && __atomic_load_n(&flag_line(shm, p)->mapped[mpar], __ATOMIC_RELAXED);
  if (ok)
    *verdict = DIRECT_GO;
  return rc;
}

/* Local rank 0 times the copies of the all-to-alls it weighs (see
 * kernel_path): work_end(shm, work_begin(shm)) around each. */
static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t work_begin(const duet__shm_t *shm) {
  return shm->timing ? cpu_ns() : 0;
}

static void work_end(duet__shm_t *shm, uint64_t t) {
  if (t != 0)
    shm->work += cpu_ns() - t;
}

/* Copy `bytes` from address `from` in local rank p's process to `to`
 * through the kernel. 0, or -1 with errno. */
static int kernel_read(const duet__shm_t *shm, int p, char *to, const char *from, size_t bytes) {
  struct iovec here = {to, bytes}, there = {(void *)(uintptr_t)from, bytes};
  ssize_t got = process_vm_readv((pid_t)flag_line(shm, p)->pid, &here, 1, &there, 1, 0);
  if (got == (ssize_t)bytes)
    return 0;
  if (got >= 0)
    errno = EFAULT; /* a partial read: the rest is not mapped there */
  return -1;
}

/* alltoall after direct_agree: DIRECT_GO copies block r of every peer's
 * send buffer into place (mapped, or through the kernel) and passes the
 * last sync (*done = 1); DIRECT_STAGE stages this rank's first step if it
 * skipped it. A read the kernel refuses fails the call on this rank, after
 * the last sync, and this rank reads through the kernel no more. */
static duet_status_t alltoall_direct(duet__shm_t *shm, int mine, const char *sb, char *rb,
                                     size_t bytes, uint64_t par, size_t m, size_t q, int nt,
                                     int cpu, int yield, int timeout_ms, char *errbuf, int *done) {
  const int n = shm->nranks, r = shm->rank;
  const char *src[SHM_MAX_RANKS];
  size_t ext[SHM_MAX_RANKS];
  int verdict, bad = -1, err = 0, kernel = 0;
  duet_status_t rc;

  *done = 0;
  rc = direct_agree(shm, "alltoall", bytes * (size_t)n, src, ext, &verdict, cpu, yield, timeout_ms,
                    errbuf);
  if (rc != DUET_SUCCESS || verdict == DIRECT_NONE)
    return rc;
  if (verdict == DIRECT_GO) {
    uint64_t t = work_begin(shm);
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n; /* the order of the staged path's copy-out */
      if (!shm->via_kernel[p]) {
        copy_out(nt, rb + (size_t)p * bytes, src[p] + (size_t)r * bytes, bytes);
      } else if (kernel_read(shm, p, rb + (size_t)p * bytes, src[p] + (size_t)r * bytes, bytes) ==
                 0) {
        kernel = 1;
      } else if (bad < 0) {
        bad = p;
        err = errno;
      }
    }
    work_end(shm, t);
    shm->kernel_copies += (uint64_t)kernel;
    *done = 1;
    rc = sync_all(shm, "alltoall", cpu, yield, timeout_ms, errbuf);
    if (rc == DUET_SUCCESS && bad >= 0) {
      shm->kernel_state = KERNEL_NO;
      __atomic_store_n(&flag_line(shm, r)->kernel, (uint32_t)KERNEL_NO, __ATOMIC_RELAXED);
      shm_err(errbuf,
              "shm alltoall: reading local rank %d's send buffer through the kernel "
              "(process_vm_readv): %s",
              bad, strerror(err));
      rc = DUET_ERR_SYSTEM;
    }
    return rc;
  }
  if (mine) {
    uint64_t t = work_begin(shm);
    stage_pieces(shm, par, sb, bytes, 0, m, q, 1);
    work_end(shm, t);
  }
  return sync_all(shm, "alltoall", cpu, yield, timeout_ms, errbuf);
}

/* Large: per step, every block advances by one piece of `q` bytes; rank r
 * stores its pieces for every peer in its chunk buffer (the piece for d in
 * slot a2a_slot(r, d)), synchronises once, and copies its piece out of every peer's
 * buffer. One sync per step is enough: a rank overwrites buffer b (step k)
 * only after passing the sync of step k-1, which every peer enters after its
 * copy-out of step k-2, the previous user of b. Each byte is copied in once
 * and out once; the steps pipeline, since a rank's copy-in of step k+1
 * overlaps its peers' copy-out of step k. */
static duet_status_t alltoall_run(duet__shm_t *shm, const char *sb, char *rb, size_t bytes,
                                  int kernel, int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const size_t q = a2a_piece_bytes(shm);
  /* streaming stores once the local ranks' send and receive buffers
   * together (2 x n x n x bytes) outgrow the last-level cache: 4 ranks on 2
   * cores, 4 MiB per rank (32 MiB in all, this machine's LLC), 0.93-0.98 ms
   * against 1.13-1.43 ms before, when the rule counted the receive buffers
   * only; 2 MiB alike either way */
  const int nt = sb != rb && 2 * bytes * (size_t)n * (size_t)n >= shm->nt_min;
  int mine, done;
  duet_status_t rc;

  mine = publish_reg(shm, sb, bytes * (size_t)n, rb, bytes * (size_t)n,
                     sb != rb && bytes >= direct_min(yield), kernel);
  if (sb != rb) {
    copy_out(nt, rb + (size_t)r * bytes, sb + (size_t)r * bytes, bytes);
  }
  for (size_t off = 0; off < bytes; off += q) {
    size_t m = bytes - off < q ? bytes - off : q;
    uint64_t par = shm->chunks++ & 1u, t;
    if (off > 0 || !mine) {
      t = work_begin(shm);
      stage_pieces(shm, par, sb, bytes, off, m, q, 1);
      work_end(shm, t);
    }
    rc = sync_all(shm, "alltoall", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (off == 0) {
      rc = alltoall_direct(shm, mine, sb, rb, bytes, par, m, q, nt, cpu, yield, timeout_ms, errbuf,
                           &done);
      if (rc != DUET_SUCCESS || done) {
        if (nt)
          copy_fence();
        return rc;
      }
    }
    t = work_begin(shm);
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n;
      const char *src = chunk_buf(shm, par, p) + a2a_slot(shm, p, r) * q;
      copy_out(nt, rb + (size_t)p * bytes + off, src, m);
    }
    work_end(shm, t);
  }
  if (nt)
    copy_fence();
  return DUET_SUCCESS;
}

/* ---- which way a large all-to-all takes ---- */

/* Whether this rank can have the kernel read every peer's memory: it reads
 * each peer's pid out of the peer's flag line at the address the peer
 * published at open (its own mapping of the line) and compares. Once per
 * engine; the verdict is published for local rank 0's choice. */
static int kernel_probe(duet__shm_t *shm) {
  int ok = 1;
  if (shm->kernel_state != KERNEL_UNKNOWN)
    return shm->kernel_state == KERNEL_OK;
  for (int p = 0; p < shm->nranks && ok; p++) {
    const struct shm_flag *f = flag_line(shm, p);
    int32_t pid = 0;
    if (p != shm->rank)
      ok = f->self != 0 &&
           kernel_read(shm, p, (char *)&pid,
                       (const char *)(uintptr_t)(f->self + offsetof(struct shm_flag, pid)),
                       sizeof(pid)) == 0 &&
           pid == f->pid;
  }
  shm->kernel_state = ok ? KERNEL_OK : KERNEL_NO;
  __atomic_store_n(&flag_line(shm, shm->rank)->kernel, (uint32_t)shm->kernel_state,
                   __ATOMIC_RELAXED);
  DUET_INFO(DUET_SUB_COLL, "shm %s: local rank %d %s read its peers' memory through the kernel%s%s",
            shm->name, shm->rank, ok ? "can" : "cannot", ok ? "" : ": ", ok ? "" : strerror(errno));
  return ok;
}

static int kernel_class_of(size_t bytes) {
  return 63 - __builtin_clzll((unsigned long long)bytes);
}

/* Local rank 0: a call of class s went `way` in `ns`. */
static void kernel_record(struct kernel_class *s, int way, uint64_t ns) {
  s->ns[way][s->seen[way]++ % DUET_SHM_KERNEL_RUN] = ns;
  if (way == s->choice && (s->floor == 0 || ns < s->floor))
    s->floor = ns;
}

/* Local rank 0, before choosing: when the way taken has slowed by half
 * since the last trial, the trial starts with this call. */
static void kernel_retry(struct kernel_class *s) {
  const uint32_t at = s->calls % DUET_SHM_KERNEL_TRY,
                 from = DUET_SHM_KERNEL_TRY - DUET_SHM_KERNEL_RUN;
  if (at == from) {
    s->floor = 0; /* a trial starts: the way taken is timed anew after it */
  } else if (at < from && duet__shm_kernel_slowed(s->ns[s->choice], s->seen[s->choice], s->floor)) {
    s->calls += from - at;
    s->floor = 0;
  }
}

uint64_t duet__shm_kernel_best(const uint64_t *ns, uint32_t seen) {
  uint64_t best = UINT64_MAX;
  for (uint32_t i = 0; i < seen && i < DUET_SHM_KERNEL_RUN; i++)
    best = ns[i] < best ? ns[i] : best;
  return best;
}

int duet__shm_kernel_slowed(const uint64_t *ns, uint32_t seen, uint64_t floor) {
  return floor != 0 && seen >= DUET_SHM_KERNEL_RUN &&
         2 * duet__shm_kernel_best(ns, seen) > 3 * floor;
}

int duet__shm_kernel_pick(const uint64_t ns[2][DUET_SHM_KERNEL_RUN], const uint32_t seen[2],
                          uint32_t calls, int *choice, int allowed, int forced, int whole) {
  uint64_t best[2];
  if (!allowed)
    return 0;
  if (forced)
    return 1;
  if (seen[0] < DUET_SHM_KERNEL_RUN)
    return 0;
  if (seen[1] < DUET_SHM_KERNEL_RUN)
    return 1;
  if (calls % DUET_SHM_KERNEL_TRY >= DUET_SHM_KERNEL_TRY - DUET_SHM_KERNEL_RUN)
    return !*choice;
  best[0] = duet__shm_kernel_best(ns[0], seen[0]);
  best[1] = duet__shm_kernel_best(ns[1], seen[1]);
  if (whole) {
    /* whole calls, syncs and all: the kernel where it is a tenth faster,
     * back where it is slower */
    if (*choice ? best[1] > best[0] : 10 * best[1] < 9 * best[0])
      *choice = !*choice;
  } else if (*choice ? 10 * best[1] > 9 * best[0] : 4 * best[1] < 3 * best[0]) {
    /* copies only: the kernel where it saves a quarter of the copying,
     * since its calls sync once more; back above nine tenths */
    *choice = !*choice;
  }
  return *choice;
}

/* The way of this all-to-all of `bytes` per block: 1 through the kernel.
 * Every rank counts the calls from DUET_SHM_KERNEL_MIN alike and takes the
 * way local rank 0 published for this count's parity. Rank 0 then
 * publishes the next call's ways: every rank has read this call's (none
 * can be behind rank 0 by a whole call), and reads the next only after
 * this call's syncs, which follow the store. A rank that may not (its
 * setting, or the kernel refuses) publishes no address, and the call falls
 * back to the segment (direct_agree). */
static int kernel_path(duet__shm_t *shm, size_t bytes, int yield) {
  struct shm_header *h = (struct shm_header *)(void *)shm->base;
  const int c = kernel_class_of(bytes);
  uint64_t k;
  int way, can;

  if (bytes < DUET_SHM_KERNEL_MIN)
    return 0;
  k = shm->kernel_calls++;
  way = (int)((__atomic_load_n(&h->kpath[k & 1u], __ATOMIC_RELAXED) >> c) & 1u);
  can = shm->kernel_use != 0 && kernel_probe(shm);
  if (shm->rank == 0) {
    struct kernel_class *s = &shm->kclass[c];
    const int was = s->choice;
    int all = can;
    for (int p = 1; p < shm->nranks && all; p++)
      all = __atomic_load_n(&flag_line(shm, p)->kernel, __ATOMIC_RELAXED) == KERNEL_OK;
    s->calls++;
    kernel_retry(s);
    if (duet__shm_kernel_pick((const uint64_t(*)[DUET_SHM_KERNEL_RUN])s->ns, s->seen, s->calls,
                              &s->choice, all, shm->kernel_use == 1, !yield))
      shm->kernel_want |= 1ull << c;
    else
      shm->kernel_want &= ~(1ull << c);
    if (s->choice != was)
      s->floor = 0; /* the way taken changed: its times start anew */
    __atomic_store_n(&h->kpath[(k + 1) & 1u], shm->kernel_want, __ATOMIC_RELAXED);
  }
  return way && can;
}

/* Large all-to-all: its way (kernel_path), then the run, which local rank
 * 0 times for the next choices: the whole call where every rank has a core
 * (!yield), its copies only where ranks share cores and a wait measures
 * the scheduler more than the way. */
static duet_status_t alltoall_chunked(duet__shm_t *shm, const char *sb, char *rb, size_t bytes,
                                      int cpu, int yield, int timeout_ms, char *errbuf) {
  const int way = kernel_path(shm, bytes, yield);
  const int timed = shm->rank == 0 && bytes >= DUET_SHM_KERNEL_MIN;
  const uint64_t t0 = timed && !yield ? now_ns() : 0;
  duet_status_t rc;
  shm->timing = timed && yield;
  shm->work = 0;
  rc = alltoall_run(shm, sb, rb, bytes, way, cpu, yield, timeout_ms, errbuf);
  shm->timing = 0;
  if (timed && rc == DUET_SUCCESS)
    kernel_record(&shm->kclass[kernel_class_of(bytes)], way, yield ? shm->work : now_ns() - t0);
  return rc;
}

void duet__shm_set_kernel_copy(duet__shm_t *shm, int use) {
  if (shm != NULL)
    shm->kernel_use = use < 0 ? -1 : use > 0;
}

uint64_t duet__shm_kernel_copies(const duet__shm_t *shm) {
  return shm != NULL ? shm->kernel_copies : 0;
}

/* alltoallv: counts differ per pair and only the two ends of a pair know
 * theirs, but every rank must run the same number of steps. A rank stores
 * its largest block (sent or received) in its flag line, under the parity
 * of the sync value it is about to store, copies in the first piece of
 * every block it sends, and passes that sync (v); the largest of all ranks'
 * values then gives the step count. So the agreement costs no extra
 * synchronisation: every call has that first sync, even when every count is
 * 0. The parity of v (not of the call: rooted eager calls do not
 * synchronise) keeps it safe: a rank writes that entry again only before
 * sync v+2, after passing sync v+1, which no peer enters before it has read
 * the values of sync v. Steps follow alltoall_chunked: piece k of the block for d (if the
 * block has one) in slot a2a_slot(rank, d) of this rank's chunk buffer, one sync, piece k of
 * block r from every peer's buffer. */
static void stage_pieces_v(duet__shm_t *shm, uint64_t par, const char *sb, const size_t *scounts,
                           const size_t *sdispls, size_t es, size_t off, size_t q) {
  const int n = shm->nranks, r = shm->rank;
  char *mine = chunk_buf(shm, par, r);
  for (int i = 1; i < n; i++) {
    int d = (r + i) % n;
    size_t len = scounts[d] * es;
    if (off < len)
      memcpy(mine + a2a_slot(shm, r, d) * q, sb + sdispls[d] * es + off,
             len - off < q ? len - off : q);
  }
}

/* alltoallv after direct_agree (see alltoall_direct): with DIRECT_GO each
 * block comes straight from its sender's buffer, found by the table of
 * byte displacements the sender left in its chunk buffer `par`. A block
 * that would end past the sender's allocation (the ranks disagree on the
 * counts) is not copied, and the call fails once every rank is done. */
static duet_status_t alltoallv_direct(duet__shm_t *shm, int reg, const char *sb,
                                      const size_t *scounts, const size_t *sdispls, char *rb,
                                      const size_t *rcounts, const size_t *rdispls, size_t es,
                                      uint64_t par, size_t q, int nt, int cpu, int yield,
                                      int timeout_ms, char *errbuf, int *done) {
  const int n = shm->nranks, r = shm->rank;
  const char *src[SHM_MAX_RANKS];
  size_t ext[SHM_MAX_RANKS];
  int verdict, bad = -1;
  duet_status_t rc;

  *done = 0;
  rc = direct_agree(shm, "alltoallv", 0, src, ext, &verdict, cpu, yield, timeout_ms, errbuf);
  if (rc != DUET_SUCCESS || verdict == DIRECT_NONE)
    return rc;
  if (verdict == DIRECT_STAGE) {
    if (reg)
      stage_pieces_v(shm, par, sb, scounts, sdispls, es, 0, q);
    return sync_all(shm, "alltoallv", cpu, yield, timeout_ms, errbuf);
  }
  for (int i = 1; i < n; i++) {
    int p = (r + n - i) % n;
    size_t len = rcounts[p] * es;
    uint64_t d = ((const uint64_t *)(const void *)chunk_buf(shm, par, p))[r];
    if (len == 0)
      continue;
    if (d > ext[p] || len > ext[p] - d) {
      bad = p;
      continue;
    }
    copy_out(nt, rb + rdispls[p] * es, src[p] + d, len);
  }
  *done = 1;
  rc = sync_all(shm, "alltoallv", cpu, yield, timeout_ms, errbuf);
  if (rc == DUET_SUCCESS && bad >= 0) {
    shm_err(errbuf, "shm alltoallv: local rank %d's block for this rank ends past its send buffer",
            bad);
    rc = DUET_ERR_MISMATCH;
  }
  return rc;
}

duet_status_t duet__shm_alltoallv(duet__shm_t *shm, const void *sendbuf, const size_t *scounts,
                                  const size_t *sdispls, void *recvbuf, const size_t *rcounts,
                                  const size_t *rdispls, size_t es, int yield, int timeout_ms,
                                  char *errbuf) {
  const char *sb = sendbuf;
  char *rb = recvbuf;
  size_t q, mine = 0, most = 0, total = 0, sext = 0, rext = 0;
  int n, r, cpu, nt, reg, done;
  uint64_t par;
  duet_status_t rc;

  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL || scounts == NULL || sdispls == NULL || rcounts == NULL || rdispls == NULL ||
      es == 0) {
    shm_err(errbuf, "shm alltoallv: bad argument (NULL engine, counts or displacements)");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (shm->broken) {
    shm_err(errbuf, "shm alltoallv: engine %s timed out earlier; ranks are out of step", shm->name);
    return DUET_ERR_ABORTED;
  }
  n = shm->nranks;
  r = shm->rank;
  if (scounts[r] != rcounts[r]) {
    shm_err(errbuf, "shm alltoallv: bad argument (%zu elements to itself, %zu expected)",
            scounts[r], rcounts[r]);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  for (int d = 0; d < n; d++) {
    if ((scounts[d] > 0 && sb == NULL) || (rcounts[d] > 0 && rb == NULL)) {
      shm_err(errbuf, "shm alltoallv: bad argument (NULL buffer with elements for rank %d)", d);
      return DUET_ERR_INVALID_ARGUMENT;
    }
    if (scounts[d] > 0 && sdispls[d] + scounts[d] > sext)
      sext = sdispls[d] + scounts[d];
    if (rcounts[d] > 0 && rdispls[d] + rcounts[d] > rext)
      rext = rdispls[d] + rcounts[d];
    if (d == r)
      continue;
    mine = scounts[d] > mine ? scounts[d] : mine;
    mine = rcounts[d] > mine ? rcounts[d] : mine;
    total += rcounts[d];
  }
  mine *= es;
  total *= es;
  sext *= es;
  rext *= es;
  shm->seq++;
  if (scounts[r] > 0 && rb + rdispls[r] * es != sb + sdispls[r] * es)
    memcpy(rb + rdispls[r] * es, sb + sdispls[r] * es, scounts[r] * es);
  if (n == 1)
    return DUET_SUCCESS;
  cpu = publish_cpu(shm);
  q = a2a_piece_bytes(shm);
  nt = total * (size_t)n >= shm->nt_min;
  par = (shm->sync + 1) & 1u; /* the value sync_all stores next */
  __atomic_store_n(&flag_line(shm, r)->vmax[par], (uint64_t)mine, __ATOMIC_RELAXED);
  reg = publish_reg(shm, sb, sext, rb, rext, mine >= direct_min(yield), 0);
  for (size_t off = 0;; off += q) {
    uint64_t cpar = shm->chunks++ & 1u;
    if (off > 0 || !reg)
      stage_pieces_v(shm, cpar, sb, scounts, sdispls, es, off, q);
    else /* peers that read in place find their blocks by this table */
      for (int d = 0; d < n; d++)
        ((uint64_t *)(void *)chunk_buf(shm, cpar, r))[d] = (uint64_t)(sdispls[d] * es);
    rc = sync_all(shm, "alltoallv", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (off == 0) { /* every peer stored its value before this sync */
      for (int p = 0; p < n; p++) {
        uint64_t v = __atomic_load_n(&flag_line(shm, p)->vmax[par], __ATOMIC_RELAXED);
        most = v > most ? (size_t)v : most;
      }
      rc = alltoallv_direct(shm, reg, sb, scounts, sdispls, rb, rcounts, rdispls, es, cpar, q, nt,
                            cpu, yield, timeout_ms, errbuf, &done);
      if (rc != DUET_SUCCESS || done) {
        if (nt)
          copy_fence();
        return rc;
      }
    }
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n;
      const char *src = chunk_buf(shm, cpar, p) + a2a_slot(shm, p, r) * q;
      size_t len = rcounts[p] * es, m;
      if (off >= len)
        continue;
      m = len - off < q ? len - off : q;
      copy_out(nt, rb + rdispls[p] * es + off, src, m);
    }
    if (most <= off + q)
      break;
  }
  if (nt)
    copy_fence();
  return DUET_SUCCESS;
}

duet_status_t duet__shm_alltoall(duet__shm_t *shm, const void *sendbuf, void *recvbuf, size_t bytes,
                                 int yield, int timeout_ms, char *errbuf) {
  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL || (bytes > 0 && (sendbuf == NULL || recvbuf == NULL)) ||
      (shm != NULL && bytes > SIZE_MAX / (size_t)shm->nranks)) {
    shm_err(errbuf, "shm alltoall: bad argument (%zu bytes per block)", bytes);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (shm->broken) {
    shm_err(errbuf, "shm alltoall: engine %s timed out earlier; ranks are out of step", shm->name);
    return DUET_ERR_ABORTED;
  }
  if (bytes == 0) /* no call: the slot parity must not advance */
    return DUET_SUCCESS;
  shm->seq++;
  if (shm->nranks == 1) {
    if (sendbuf != recvbuf)
      memcpy(recvbuf, sendbuf, bytes);
    return DUET_SUCCESS;
  }
  int cpu = publish_cpu(shm);
  if (bytes * (size_t)shm->nranks <= DUET_SHM_EAGER_MAX)
    return alltoall_eager(shm, sendbuf, recvbuf, bytes, cpu, yield, timeout_ms, errbuf);
  return alltoall_chunked(shm, sendbuf, recvbuf, bytes, cpu, yield, timeout_ms, errbuf);
}

/* ---- allgather, broadcast, reduce-scatter, reduce ----
 *
 * Eager allgathers and reduce-scatters keep the allreduce invariant: every
 * rank stores the call's sequence number in its own slot, and waits for every
 * peer's, before it returns. A rank rewrites its slot of parity p in call n+2
 * only after call n+1 saw every peer's flag, which a peer stores only after
 * finishing call n, the last reader of that slot. A rank that skipped a wait
 * could race two calls ahead of a peer still reading.
 *
 * Rooted eager calls (broadcast and reduce of up to DUET_SHM_EAGER_MAX
 * bytes) do not synchronise: only the writers store data (the broadcast
 * root, the reduce non-roots), only the readers wait (broadcast non-roots
 * for the root, the reduce root for every non-root), and a writer returns as
 * soon as its data is in, so back-to-back calls pipeline. They are numbered
 * by their own counter shm->rooted (k = 0, 1, ...; all ranks agree, since
 * all make the same calls; empty calls are no calls and do not count) and
 * call k uses slot k % D (D = DUET_SHM_ROOTED_DEPTH) of the writers' rings,
 * with sequence k + 1. Every rank stores done = k + 1 when it completes call
 * k, whatever its part in it, so one done counter covers broadcasts and
 * reduces in one sequence. Reuse is safe: before writing slot k % D of its
 * ring a writer waits until every peer's done >= k - D + 1, so every peer has
 * completed call k - D and, calls completing in order, every earlier call,
 * among them every earlier user of that slot. A rank running ahead thus stays
 * at most D rooted calls ahead of the slowest, and never overwrites a slot
 * still being read; a reader waits for exactly sequence k + 1, which the slot
 * cannot pass before the reader's own done reaches k + 1.
 *
 * Mixing with the other calls is safe: rooted eager calls touch only the
 * rings and done lines, which nothing else uses, and never shm->seq, the
 * eager slot parity, the sync counter or the chunk buffers. The invariant
 * above counts only the calls that advance shm->seq: a peer storing its flag
 * for call n+1 has finished call n, and any rooted calls between, in program
 * order, so a slot is still rewritten only after its last reader finished.
 * No wait can deadlock: every wait, of either kind, is for something a peer
 * does in an earlier or the same call of the one sequence all ranks follow.
 * Large broadcasts and reduces advance shm->seq and use the chunk buffers as
 * before.
 *
 * Chunked calls follow alltoall_chunked: a rank writes chunk buffers of
 * parity p for step k only after passing the sync of step k-1, which every
 * peer enters after its reads of step k-2, the previous users of parity p;
 * the first step of a call writes only its own parity before its first sync,
 * which is the parity the previous call's last reads did not use. */

/* dst = src[0] op src[1] op ... op src[n-1], in this order (n >= 2). dst may
 * equal one of the sources when acc (scratch of the same size, aliasing none
 * of them) is given: every source but the last is consumed into acc first. */
static void reduce_ordered(void *dst, void *acc, const char *const *src, int n, size_t m,
                           duet_datatype_t dt, duet_op_t op) {
  void *a = acc != NULL && n > 2 ? acc : dst;
  duet__reduce(n > 2 ? a : dst, src[0], src[1], m, dt, op);
  for (int p = 2; p < n; p++)
    duet__reduce(p == n - 1 ? dst : a, a, src[p], m, dt, op);
}

static duet_status_t shm_check(duet__shm_t *shm, const char *what, char *errbuf) {
  if (shm->broken) {
    shm_err(errbuf, "shm %s: engine %s timed out earlier; ranks are out of step", what, shm->name);
    return DUET_ERR_ABORTED;
  }
  return DUET_SUCCESS;
}

/* Store this call's sequence number in the slot, then wait for every peer's. */
static duet_status_t eager_publish_wait(duet__shm_t *shm, const char *what, uint64_t seq,
                                        uint64_t par, int cpu, int yield, int timeout_ms,
                                        char *errbuf) {
  const int n = shm->nranks;
  __atomic_store_n((uint64_t *)eager_slot(shm, par, shm->rank), seq, __ATOMIC_RELEASE);
  for (int i = 1; i < n; i++) {
    int p = (shm->rank + n - i) % n;
    if (wait_ge(shm, (const uint64_t *)eager_slot(shm, par, p), seq, p, cpu, yield, timeout_ms) !=
        0)
      return timed_out(shm, p, what, timeout_ms, errbuf);
  }
  return DUET_SUCCESS;
}

/* Allgather, small: rank r stores its block in its slot; every rank copies
 * every peer's. Large: per step every block advances by one piece of up to
 * a chunk; rank r stores its piece in its chunk buffer, synchronises once
 * (see above) and copies every peer's piece out. Each byte is copied in once
 * and out once per receiver. */
static duet_status_t allgather_run(duet__shm_t *shm, const char *own, char *rb, size_t bytes,
                                   int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  char *mine_out = rb + (size_t)r * bytes;
  duet_status_t rc;

  if (bytes <= DUET_SHM_EAGER_MAX) {
    const uint64_t seq = shm->seq, par = seq & 1u;
    memcpy(eager_slot(shm, par, r) + sizeof(uint64_t), own, bytes);
    __atomic_store_n((uint64_t *)eager_slot(shm, par, r), seq, __ATOMIC_RELEASE);
    if (own != mine_out)
      memcpy(mine_out, own, bytes);
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n;
      const char *slot = eager_slot(shm, par, p);
      if (wait_ge(shm, (const uint64_t *)slot, seq, p, cpu, yield, timeout_ms) != 0)
        return timed_out(shm, p, "allgather", timeout_ms, errbuf);
      memcpy(rb + (size_t)p * bytes, slot + sizeof(uint64_t), bytes);
    }
    return DUET_SUCCESS;
  }
  const int nt = bytes * (size_t)n * (size_t)n >= shm->nt_min;
  const size_t first = bytes < DUET_SHM_CHUNK ? bytes : DUET_SHM_CHUNK;
  const char *src[SHM_MAX_RANKS];
  size_t ext[SHM_MAX_RANKS];
  uint64_t par = shm->chunks++ & 1u;
  int mine, verdict;

  /* Chunk 0's copy-in (not by a rank whose block peers may read in place:
   * duet_mem_alloc memory; in place it lies in recvbuf, where this rank
   * writes only the other blocks), the first sync, and the verdict. */
  mine = publish_reg(shm, own, bytes, rb, own == mine_out ? 0 : bytes * (size_t)n,
                     bytes >= direct_min(yield), 0);
  if (!mine)
    memcpy(chunk_buf(shm, par, r), own, first);
  if (own != mine_out)
    memcpy(mine_out, own, bytes);
  rc = sync_all(shm, "allgather", cpu, yield, timeout_ms, errbuf);
  if (rc == DUET_SUCCESS)
    rc = direct_agree(shm, "allgather", bytes, src, ext, &verdict, cpu, yield, timeout_ms, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  if (verdict == DIRECT_GO) { /* every block straight from its owner, then a last sync */
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n;
      copy_out(nt, rb + (size_t)p * bytes, src[p], bytes);
    }
    if (nt)
      copy_fence();
    return sync_all(shm, "allgather", cpu, yield, timeout_ms, errbuf);
  }
  if (verdict == DIRECT_STAGE) {
    if (mine)
      memcpy(chunk_buf(shm, par, r), own, first);
    rc = sync_all(shm, "allgather", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
  }
  for (size_t off = 0; off < bytes; off += DUET_SHM_CHUNK) {
    size_t m = bytes - off < DUET_SHM_CHUNK ? bytes - off : DUET_SHM_CHUNK;
    if (off > 0) {
      par = shm->chunks++ & 1u;
      memcpy(chunk_buf(shm, par, r), own + off, m);
      rc = sync_all(shm, "allgather", cpu, yield, timeout_ms, errbuf);
      if (rc != DUET_SUCCESS)
        return rc;
    }
    for (int i = 1; i < n; i++) {
      int p = (r + n - i) % n;
      copy_out(nt, rb + (size_t)p * bytes + off, chunk_buf(shm, par, p), m);
    }
  }
  if (nt)
    copy_fence();
  return DUET_SUCCESS;
}

duet_status_t duet__shm_allgather(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t bytes, int yield, int timeout_ms, char *errbuf) {
  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL) {
    shm_err(errbuf, "shm allgather: engine is NULL");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (bytes > 0 && (sendbuf == NULL || recvbuf == NULL)) {
    shm_err(errbuf, "shm allgather: %s is NULL (%zu bytes per block)",
            sendbuf == NULL ? "sendbuf" : "recvbuf", bytes);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (bytes > SIZE_MAX / (size_t)shm->nranks) {
    shm_err(errbuf, "shm allgather: bytes %zu x %d ranks overflows", bytes, shm->nranks);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  duet_status_t rc = shm_check(shm, "allgather", errbuf);
  if (rc != DUET_SUCCESS || bytes == 0) /* no call: the slot parity must not advance */
    return rc;
  /* In place: sendbuf == recvbuf (this rank's block is already in place) or
   * sendbuf == recvbuf + rank x bytes. */
  const char *own =
      sendbuf == recvbuf ? (const char *)recvbuf + (size_t)shm->rank * bytes : sendbuf;
  shm->seq++;
  if (shm->nranks == 1) {
    if (own != recvbuf)
      memcpy(recvbuf, own, bytes);
    return DUET_SUCCESS;
  }
  return allgather_run(shm, own, recvbuf, bytes, publish_cpu(shm), yield, timeout_ms, errbuf);
}

/* Flow control of rooted eager call k: before a rank writes slot k % D of
 * its ring, wait until every peer's done counter is at least k - D + 1, that
 * is until every peer has completed call k - D and so every earlier call that
 * used that slot. */
static duet_status_t rooted_flow(duet__shm_t *shm, const char *what, uint64_t k, int cpu, int yield,
                                 int timeout_ms, char *errbuf) {
  const int n = shm->nranks;
  uint64_t least = UINT64_MAX;
  if (k < DUET_SHM_ROOTED_DEPTH)
    return DUET_SUCCESS;
  const uint64_t want = k - DUET_SHM_ROOTED_DEPTH + 1;
  /* Done counters only grow: a peer seen at rooted_done or beyond is still
   * there, and the reads stay off the peers' lines for most calls. */
  if (shm->rooted_done >= want)
    return DUET_SUCCESS;
  for (int i = 1; i < n; i++) {
    int p = (shm->rank + i) % n;
    uint64_t v;
    if (wait_ge(shm, done_flag(shm, p), want, p, cpu, yield, timeout_ms) != 0)
      return timed_out_at(shm, p, what, "rooted call", k + 1, timeout_ms, errbuf);
    v = __atomic_load_n(done_flag(shm, p), __ATOMIC_ACQUIRE);
    least = v < least ? v : least;
  }
  shm->rooted_done = least;
  return DUET_SUCCESS;
}

/* Broadcast, small (rooted call k, see "rooted eager calls" above): the
 * root, after the flow-control wait, stores the data and then the sequence
 * k + 1 in slot k % D of its ring and returns; a non-root waits for that
 * sequence in the root's slot, copies the data out and stores done = k + 1,
 * which lets the root reuse the slot D calls later. */
static duet_status_t broadcast_eager(duet__shm_t *shm, const char *sb, char *rb, size_t bytes,
                                     int root, int cpu, int yield, int timeout_ms, char *errbuf) {
  const uint64_t k = shm->rooted++;
  char *slot = ring_slot(shm, root, k);

  if (shm->rank == root) {
    duet_status_t rc = rooted_flow(shm, "broadcast", k, cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    memcpy(slot + sizeof(uint64_t), sb, bytes);
    __atomic_store_n((uint64_t *)(void *)slot, k + 1, __ATOMIC_RELEASE);
    if (sb != rb)
      memcpy(rb, sb, bytes);
  } else {
    if (wait_ge(shm, (const uint64_t *)(const void *)slot, k + 1, root, cpu, yield, timeout_ms) !=
        0)
      return timed_out_at(shm, root, "broadcast", "rooted call", k + 1, timeout_ms, errbuf);
    memcpy(rb, slot + sizeof(uint64_t), bytes);
  }
  __atomic_store_n(done_flag(shm, shm->rank), k + 1, __ATOMIC_RELEASE);
  return DUET_SUCCESS;
}

/* Broadcast, large: per step the root stores a chunk in its buffer, all
 * synchronise once, the others copy it out while the root stores the next
 * one. */
static duet_status_t broadcast_run(duet__shm_t *shm, const char *sb, char *rb, size_t bytes,
                                   int root, int cpu, int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  duet_status_t rc;

  const int nt = r != root && bytes * (size_t)n >= shm->nt_min;
  for (size_t off = 0; off < bytes; off += DUET_SHM_CHUNK) {
    size_t m = bytes - off < DUET_SHM_CHUNK ? bytes - off : DUET_SHM_CHUNK;
    uint64_t par = shm->chunks++ & 1u;
    if (r == root)
      memcpy(chunk_buf(shm, par, root), sb + off, m);
    rc = sync_all(shm, "broadcast", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (r == root) {
      if (sb != rb)
        memcpy(rb + off, sb + off, m);
    } else {
      copy_out(nt, rb + off, chunk_buf(shm, par, root), m);
    }
  }
  if (nt)
    copy_fence();
  return DUET_SUCCESS;
}

duet_status_t duet__shm_broadcast(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                  size_t bytes, int root, int yield, int timeout_ms, char *errbuf) {
  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL) {
    shm_err(errbuf, "shm broadcast: engine is NULL");
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (root < 0 || root >= shm->nranks) {
    shm_err(errbuf, "shm broadcast: root %d is not a local rank (0..%d)", root, shm->nranks - 1);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (bytes > 0 && (recvbuf == NULL || (shm->rank == root && sendbuf == NULL))) {
    shm_err(errbuf, "shm broadcast: %s is NULL (%zu bytes)",
            recvbuf == NULL ? "recvbuf" : "sendbuf", bytes);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  duet_status_t rc = shm_check(shm, "broadcast", errbuf);
  if (rc != DUET_SUCCESS || bytes == 0) /* no call: no counter may advance */
    return rc;
  if (shm->nranks == 1) {
    if (sendbuf != recvbuf)
      memcpy(recvbuf, sendbuf, bytes);
    return DUET_SUCCESS;
  }
  if (bytes <= DUET_SHM_EAGER_MAX) /* rooted eager: shm->seq does not advance */
    return broadcast_eager(shm, sendbuf, recvbuf, bytes, root, publish_cpu(shm), yield, timeout_ms,
                           errbuf);
  shm->seq++;
  return broadcast_run(shm, sendbuf, recvbuf, bytes, root, publish_cpu(shm), yield, timeout_ms,
                       errbuf);
}

/* Checks shared by the reducing calls. */
static duet_status_t reduce_args(duet__shm_t *shm, const char *what, size_t count,
                                 duet_datatype_t dt, duet_op_t op, int avg_n, char *errbuf) {
  size_t esz = duet__dt_size(dt);
  if (errbuf != NULL)
    errbuf[0] = '\0';
  if (shm == NULL) {
    shm_err(errbuf, "shm %s: engine is NULL", what);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (esz == 0) {
    shm_err(errbuf, "shm %s: datatype %d unknown", what, (int)dt);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if ((unsigned)op >= (unsigned)DUET_NUM_OPS) {
    shm_err(errbuf, "shm %s: op %d unknown", what, (int)op);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (op == DUET_AVG && avg_n < 1) {
    shm_err(errbuf, "shm %s: avg_n %d < 1", what, avg_n);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (count > SIZE_MAX / esz / (size_t)shm->nranks) {
    shm_err(errbuf, "shm %s: count %zu x %d ranks overflows", what, count, shm->nranks);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  return DUET_SUCCESS;
}

/* Reduce-scatter, small: rank r stores the blocks d != r of its sendbuf in
 * its slot (block d at d x bytes), waits for every peer and reduces block r
 * of every slot, its own from sendbuf, in rank order. Large: per step every
 * block advances by one piece of q bytes; rank r stores its pieces for the
 * others in its chunk buffer (the piece for d at d x q), synchronises once
 * (see above) and reduces its pieces in rank order straight into recvbuf.
 * Each byte is copied in once and read once by its reducer. In place the
 * result may overwrite this rank's own block while it is still a source:
 * the reduction then accumulates in the unused part of this rank's slot or
 * chunk buffer (offset r x bytes or r x q) and only the last step writes
 * recvbuf. */
static duet_status_t reduce_scatter_run(duet__shm_t *shm, const char *sb, char *rb, size_t count,
                                        duet_datatype_t dt, duet_op_t op, int avg_n, int cpu,
                                        int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const size_t esz = duet__dt_size(dt), bytes = count * esz;
  const int alias = rb == sb + (size_t)r * bytes;
  const char *src[SHM_MAX_RANKS];
  duet_status_t rc;

  if (bytes * (size_t)n <= DUET_SHM_EAGER_MAX) {
    const uint64_t seq = shm->seq, par = seq & 1u;
    char *mine = eager_slot(shm, par, r) + sizeof(uint64_t);
    for (int d = 0; d < n; d++)
      if (d != r)
        memcpy(mine + (size_t)d * bytes, sb + (size_t)d * bytes, bytes);
    rc = eager_publish_wait(shm, "reduce_scatter", seq, par, cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    for (int p = 0; p < n; p++)
      src[p] = p == r ? sb + (size_t)r * bytes
                      : eager_slot(shm, par, p) + sizeof(uint64_t) + (size_t)r * bytes;
    reduce_ordered(rb, alias ? mine + (size_t)r * bytes : NULL, src, n, count, dt, op);
    if (op == DUET_AVG)
      duet__reduce_avg_finish(rb, count, dt, avg_n);
    return DUET_SUCCESS;
  }
  const size_t q = piece_bytes(shm);
  const char *peer[SHM_MAX_RANKS];
  size_t ext[SHM_MAX_RANKS];
  uint64_t par = shm->chunks++ & 1u;
  char *mine = chunk_buf(shm, par, r);
  int reg, verdict;

  /* Step 0's copy-in (not by a rank whose send buffer peers may read in
   * place: duet_mem_alloc memory; in place this rank writes only its own
   * block, which no peer reads), the first sync, and the verdict. */
  reg =
      publish_reg(shm, sb, bytes * (size_t)n, rb, alias ? 0 : bytes, bytes >= direct_min(yield), 0);
  if (!reg)
    stage_pieces(shm, par, sb, bytes, 0, bytes < q ? bytes : q, q, 0);
  rc = sync_all(shm, "reduce_scatter", cpu, yield, timeout_ms, errbuf);
  if (rc == DUET_SUCCESS)
    rc = direct_agree(shm, "reduce_scatter", bytes * (size_t)n, peer, ext, &verdict, cpu, yield,
                      timeout_ms, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  if (verdict == DIRECT_GO) { /* block r straight from every send buffer, then a last sync */
    peer[r] = sb;
    for (size_t off = 0; off < bytes; off += q) {
      size_t m = bytes - off < q ? bytes - off : q;
      for (int p = 0; p < n; p++)
        src[p] = peer[p] + (size_t)r * bytes + off;
      reduce_ordered(rb + off, alias ? mine : NULL, src, n, m / esz, dt, op);
      if (op == DUET_AVG)
        duet__reduce_avg_finish(rb + off, m / esz, dt, avg_n);
    }
    return sync_all(shm, "reduce_scatter", cpu, yield, timeout_ms, errbuf);
  }
  if (verdict == DIRECT_STAGE) {
    if (reg)
      stage_pieces(shm, par, sb, bytes, 0, bytes < q ? bytes : q, q, 0);
    rc = sync_all(shm, "reduce_scatter", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
  }
  for (size_t off = 0; off < bytes; off += q) {
    size_t m = bytes - off < q ? bytes - off : q;
    if (off > 0) {
      par = shm->chunks++ & 1u;
      mine = stage_pieces(shm, par, sb, bytes, off, m, q, 0);
      rc = sync_all(shm, "reduce_scatter", cpu, yield, timeout_ms, errbuf);
      if (rc != DUET_SUCCESS)
        return rc;
    }
    for (int p = 0; p < n; p++)
      src[p] = p == r ? sb + (size_t)r * bytes + off : chunk_buf(shm, par, p) + (size_t)r * q;
    reduce_ordered(rb + off, alias ? mine + (size_t)r * q : NULL, src, n, m / esz, dt, op);
    if (op == DUET_AVG)
      duet__reduce_avg_finish(rb + off, m / esz, dt, avg_n);
  }
  return DUET_SUCCESS;
}

duet_status_t duet__shm_reduce_scatter(duet__shm_t *shm, const void *sendbuf, void *recvbuf,
                                       size_t recvcount, duet_datatype_t dt, duet_op_t op,
                                       int avg_n, int yield, int timeout_ms, char *errbuf) {
  duet_status_t rc = reduce_args(shm, "reduce_scatter", recvcount, dt, op, avg_n, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  if (recvcount > 0 && (sendbuf == NULL || recvbuf == NULL)) {
    shm_err(errbuf, "shm reduce_scatter: %s is NULL (recvcount %zu)",
            sendbuf == NULL ? "sendbuf" : "recvbuf", recvcount);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  rc = shm_check(shm, "reduce_scatter", errbuf);
  if (rc != DUET_SUCCESS || recvcount == 0) /* no call: the slot parity must not advance */
    return rc;
  shm->seq++;
  if (shm->nranks == 1)
    return reduce_alone(sendbuf, recvbuf, recvcount, dt, op, avg_n);
  return reduce_scatter_run(shm, sendbuf, recvbuf, recvcount, dt, op, avg_n, publish_cpu(shm),
                            yield, timeout_ms, errbuf);
}

/* Reduce: elements per chunk, a multiple of 64 x local_size, so that every
 * slice of any chunk (slice_range) fits in per / local_size elements. */
static size_t reduce_per(const duet__shm_t *shm, size_t esz) {
  return (DUET_SHM_CHUNK / esz / (size_t)shm->nranks & ~(size_t)63) * (size_t)shm->nranks;
}

/* Reduce: rank r stores the slices s != r of the chunk at element `off` in
 * its chunk buffer of parity `par`, slice s at s x slot bytes whatever the
 * chunk's length, so the slice-r slot is never written by a copy-in. */
static void reduce_copy_in(duet__shm_t *shm, const char *sb, size_t count, size_t esz, size_t off,
                           uint64_t par) {
  const size_t per = reduce_per(shm, esz), slot = per / (size_t)shm->nranks * esz;
  const size_t elems = count - off < per ? count - off : per;
  char *mine = chunk_buf(shm, par, shm->rank);
  size_t lo, hi;
  for (int s = 0; s < shm->nranks; s++) {
    if (s == shm->rank)
      continue;
    slice_range(elems, shm->nranks, s, &lo, &hi);
    if (hi > lo)
      memcpy(mine + (size_t)s * slot, sb + (off + lo) * esz, (hi - lo) * esz);
  }
}

/* Reduce, small (rooted call k, see "rooted eager calls" above): a
 * non-root, after the flow-control wait, stores its data and then the
 * sequence k + 1 in slot k % D of its own ring, stores done = k + 1 and
 * returns; the root waits for every non-root's slot to hold k + 1 and reduces
 * the slots, its own data from sendbuf, in rank order 0..L-1 (the same
 * reduce_ordered as every reduction here, so the same bytes), then stores
 * done = k + 1, which lets the non-roots reuse their slots D calls later.
 * In place with L > 2 the root accumulates in slot k % D of its own ring:
 * its previous readers ran calls k - D and earlier, and each non-root had
 * completed those before it published call k, which the root has seen. */
static duet_status_t reduce_eager(duet__shm_t *shm, const char *sb, char *rb, size_t count,
                                  duet_datatype_t dt, duet_op_t op, int avg_n, int root, int cpu,
                                  int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const uint64_t k = shm->rooted++;
  const char *src[SHM_MAX_RANKS];

  if (r != root) {
    duet_status_t rc = rooted_flow(shm, "reduce", k, cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    char *slot = ring_slot(shm, r, k);
    memcpy(slot + sizeof(uint64_t), sb, count * duet__dt_size(dt));
    __atomic_store_n((uint64_t *)(void *)slot, k + 1, __ATOMIC_RELEASE);
    __atomic_store_n(done_flag(shm, r), k + 1, __ATOMIC_RELEASE);
    return DUET_SUCCESS;
  }
  for (int i = 1; i < n; i++) {
    int p = (r + n - i) % n;
    const char *slot = ring_slot(shm, p, k);
    if (wait_ge(shm, (const uint64_t *)(const void *)slot, k + 1, p, cpu, yield, timeout_ms) != 0)
      return timed_out_at(shm, p, "reduce", "rooted call", k + 1, timeout_ms, errbuf);
  }
  for (int p = 0; p < n; p++)
    src[p] = p == r ? sb : ring_slot(shm, p, k) + sizeof(uint64_t);
  reduce_ordered(rb, sb == rb ? ring_slot(shm, r, k) + sizeof(uint64_t) : NULL, src, n, count, dt,
                 op);
  if (op == DUET_AVG)
    duet__reduce_avg_finish(rb, count, dt, avg_n);
  __atomic_store_n(done_flag(shm, r), k + 1, __ATOMIC_RELEASE);
  return DUET_SUCCESS;
}

/* Reduce, large: each
 * chunk is split into slices as for allreduce; rank r stores the slices
 * s != r in its chunk buffer, and after a sync reduces slice r in rank order
 * into the slice-r part of its own buffer, which no copy-in writes (the root
 * reduces its slice straight into recvbuf). Slice s sits at s x per/L
 * elements in every chunk buffer, whatever the chunk's length (a shorter last
 * chunk has shorter slices at other offsets, which must not reach into the
 * slice-r results of two chunks before). The next sync both publishes those
 * results and starts the next chunk: in step k a rank reduces chunk k
 * and copies chunk k+1 in, then all synchronise, then the root copies the
 * slices of chunk k out. So a call of K chunks makes K + 1 syncs, not 2K.
 * This is safe: copy-in of chunk k+2 (same parity as k) happens in step k+1
 * and writes only slices s != r, not the slice-r results the root is reading
 * then; the reduction of chunk k+2 overwrites them only after the sync that
 * ends step k+1, which the root enters after its copy-out of chunk k. Each
 * byte is copied in once, and the result copied out once by the root. */
static duet_status_t reduce_run(duet__shm_t *shm, const char *sb, char *rb, size_t count,
                                duet_datatype_t dt, duet_op_t op, int avg_n, int root, int cpu,
                                int yield, int timeout_ms, char *errbuf) {
  const int n = shm->nranks, r = shm->rank;
  const size_t esz = duet__dt_size(dt);
  const char *src[SHM_MAX_RANKS];
  duet_status_t rc;

  const size_t per = reduce_per(shm, esz), slot = per / (size_t)n * esz;
  size_t lo, hi;
  uint64_t par = shm->chunks & 1u;
  reduce_copy_in(shm, sb, count, esz, 0, par);
  rc = sync_all(shm, "reduce", cpu, yield, timeout_ms, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  for (size_t off = 0; off < count; off += per) {
    size_t elems = count - off < per ? count - off : per;
    par = shm->chunks++ & 1u;
    /* reduce slice r of this chunk */
    slice_range(elems, n, r, &lo, &hi);
    if (hi > lo) {
      char *own = chunk_buf(shm, par, r) + (size_t)r * slot;
      for (int p = 0; p < n; p++)
        src[p] = p == r ? sb + (off + lo) * esz : chunk_buf(shm, par, p) + (size_t)r * slot;
      char *dst = r == root ? rb + (off + lo) * esz : own;
      reduce_ordered(dst, r == root && sb == rb ? own : NULL, src, n, hi - lo, dt, op);
      if (op == DUET_AVG)
        duet__reduce_avg_finish(dst, hi - lo, dt, avg_n);
    }
    if (off + per < count)
      reduce_copy_in(shm, sb, count, esz, off + per, par ^ 1u);
    rc = sync_all(shm, "reduce", cpu, yield, timeout_ms, errbuf);
    if (rc != DUET_SUCCESS)
      return rc;
    if (r != root)
      continue;
    for (int i = 1; i < n; i++) {
      int s = (r + i) % n;
      slice_range(elems, n, s, &lo, &hi);
      if (hi > lo)
        memcpy(rb + (off + lo) * esz, chunk_buf(shm, par, s) + (size_t)s * slot, (hi - lo) * esz);
    }
  }
  return DUET_SUCCESS;
}

duet_status_t duet__shm_reduce(duet__shm_t *shm, const void *sendbuf, void *recvbuf, size_t count,
                               duet_datatype_t dt, duet_op_t op, int avg_n, int root, int yield,
                               int timeout_ms, char *errbuf) {
  duet_status_t rc = reduce_args(shm, "reduce", count, dt, op, avg_n, errbuf);
  if (rc != DUET_SUCCESS)
    return rc;
  if (root < 0 || root >= shm->nranks) {
    shm_err(errbuf, "shm reduce: root %d is not a local rank (0..%d)", root, shm->nranks - 1);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  if (count > 0 && (sendbuf == NULL || (shm->rank == root && recvbuf == NULL))) {
    shm_err(errbuf, "shm reduce: %s is NULL (count %zu)", sendbuf == NULL ? "sendbuf" : "recvbuf",
            count);
    return DUET_ERR_INVALID_ARGUMENT;
  }
  rc = shm_check(shm, "reduce", errbuf);
  if (rc != DUET_SUCCESS || count == 0) /* no call: no counter may advance */
    return rc;
  if (shm->nranks == 1)
    return reduce_alone(sendbuf, recvbuf, count, dt, op, avg_n);
  if (count * duet__dt_size(dt) <= DUET_SHM_EAGER_MAX) /* rooted eager: shm->seq stays */
    return reduce_eager(shm, sendbuf, shm->rank == root ? recvbuf : NULL, count, dt, op, avg_n,
                        root, publish_cpu(shm), yield, timeout_ms, errbuf);
  shm->seq++;
  return reduce_run(shm, sendbuf, shm->rank == root ? recvbuf : NULL, count, dt, op, avg_n, root,
                    publish_cpu(shm), yield, timeout_ms, errbuf);
}
