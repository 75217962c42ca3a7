/*
 * async.c - the progress thread (DUET_PROGRESS_THREAD=1).
 *
 * Without it a non-blocking call moves only inside duet calls (duet_test,
 * duet_wait, any call on the communicator): a rank that posts an
 * allreduce and then computes leaves its peers waiting for its part. With
 * it, one thread per process drives the posted calls of every communicator
 * that asked for it while the caller computes, as UCC's progress thread
 * and MPI's asynchronous progress do.
 *
 * Locking. Communicators split from one another share their endpoints (the
 * netset), so the netset's mutex is the lock: every duet call that changes
 * a threaded communicator's state holds it (duet__comm_lock; recursive, as
 * some calls make others), and the thread only ever try-locks it. A caller
 * inside duet thus never waits for the thread longer than one pass, and the
 * thread never waits for the caller: when the lock is taken, the caller is
 * progressing that communicator itself. Lock order: the thread holds
 * async_lock (the list of communicators) and try-locks a netset; a caller
 * may hold a netset's lock and then take async_lock (destroy, split), which
 * is safe because the try-lock never blocks.
 *
 * Idling. A caller leaving duet with calls still posted kicks the thread
 * (duet__comm_unlock), but only when it sleeps: a kick is a system call.
 * With calls posted and nothing arriving, the thread yields a few times,
 * then naps, doubling the nap up to DUET_ASYNC_NAP_MAX_US: a rank waiting
 * for a peer must leave the core to the peer and to the caller's
 * computation (on an oversubscribed host every rank's thread shares the few
 * cores). With nothing posted, or the caller inside duet (who kicks when it
 * leaves calls posted), it sleeps on a condition variable: a call posted
 * and waited at once costs no wakeup beyond that one kick.
 *
 * Policy. The thread runs under SCHED_IDLE: it takes only cores that
 * nothing else wants, so it never preempts a rank or the caller's
 * computation, and a rank that yields while waiting gives its core to its
 * peers first. It still runs whenever the caller sleeps (waits for an
 * accelerator, for I/O) or a core is free. A call posted and waited at once
 * (duet_perf --nonblocking, 1000 calls): with a core per rank no
 * difference (2 ranks, 8 B over tcp 6.2-6.5 us without the thread, 6.5-6.7
 * with it); 4 ranks on 2 cores over tcp 30.7-33.1 against 32.1-33.4 us
 * (86-88 us at the normal policy), on the load/store path 2.8-2.9 against
 * 7.7-8.6 us: the kick.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/comm.h"
#include "core/log.h"

#define DUET_ASYNC_YIELDS 8       /* idle passes that only yield */
#define DUET_ASYNC_NAP_MIN_US 4   /* first nap */
#define DUET_ASYNC_NAP_MAX_US 256 /* longest nap while calls are pending */
#define DUET_ASYNC_IDLE_MS 1000   /* sleep with nothing posted (a kick wakes it) */

/* life_lock orders starting and stopping the thread (the thread never takes
 * it); async_lock guards the list the thread walks. */
static pthread_mutex_t life_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t async_lock = PTHREAD_MUTEX_INITIALIZER;
static duet_comm_t **async_comms; /* the threaded communicators */
static size_t async_len, async_cap;
static pthread_t async_thread;
static int async_running, async_stop;

/* Kicks: a non-blocking call was posted while the thread sleeps deeply
 * (deep). The thread reads the count before its last pass and sleeps only
 * if it did not change. A poster that saw deep == 0 needs no kick: the
 * thread stored deep = 1 after it (both sides fence), so its last pass
 * before sleeping sees the posted call. */
static pthread_mutex_t kick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kick_cond = PTHREAD_COND_INITIALIZER;
static uint64_t kicks;
static int deep;

void duet__async_kick(void) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (!__atomic_load_n(&deep, __ATOMIC_RELAXED))
    return; /* awake or napping: it will look */
  pthread_mutex_lock(&kick_lock);
  kicks++;
  pthread_cond_signal(&kick_cond);
  pthread_mutex_unlock(&kick_lock);
}

static void async_nap(unsigned us) {
  struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)us * 1000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* One pass over every threaded communicator that the caller is not inside.
 * Sets *pending when a call is still posted, *busy when a communicator was
 * skipped because the caller is inside duet on it. */
static int async_pass(int *pending, int *busy) {
  int moved = 0;
  *pending = *busy = 0;
  pthread_mutex_lock(&async_lock);
  for (size_t i = 0; i < async_len; i++) {
    duet_comm_t *c = async_comms[i];
    if (__atomic_load_n(&c->nets->want, __ATOMIC_RELAXED) > 0 ||
        pthread_mutex_trylock(&c->nets->lock) != 0) {
      *busy = 1; /* the caller is inside duet, or about to be: it progresses */
      continue;
    }
    if (c->failed == DUET_SUCCESS && (c->active_head != NULL || c->mem_head != NULL)) {
      int m = 0;
      duet__progress_once(c, &m);
      moved |= m;
      *pending |= c->active_head != NULL || c->mem_head != NULL;
    }
    pthread_mutex_unlock(&c->nets->lock);
  }
  pthread_mutex_unlock(&async_lock);
  return moved;
}

static void *async_main(void *arg) {
  unsigned idle = 0, nap = 0;
  (void)arg;
  duet__shm_helper_thread();
  /* Only cores nothing else wants: never preempt a rank or the caller's
   * computation (a failure leaves the normal policy). */
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &(struct sched_param){0});
  for (;;) {
    uint64_t seen;
    int pending, busy, stop;
    pthread_mutex_lock(&kick_lock);
    stop = async_stop;
    pthread_mutex_unlock(&kick_lock);
    if (stop)
      break;
    if (async_pass(&pending, &busy)) {
      idle = nap = 0;
      continue;
    }
    if (pending) { /* posted calls wait for peers: yield, then nap longer and longer */
      if (++idle <= DUET_ASYNC_YIELDS) {
        sched_yield();
        continue;
      }
      nap = nap == 0 ? DUET_ASYNC_NAP_MIN_US : nap * 2;
      if (nap > DUET_ASYNC_NAP_MAX_US)
        nap = DUET_ASYNC_NAP_MAX_US;
      async_nap(nap);
      continue;
    }
    /* Nothing posted, or the caller is inside duet (and kicks when it
     * leaves calls posted): sleep. Say so first, then look once more (a
     * call left posted without a kick is visible now). */
    idle = nap = 0;
    __atomic_store_n(&deep, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    pthread_mutex_lock(&kick_lock);
    seen = kicks;
    pthread_mutex_unlock(&kick_lock);
    if (async_pass(&pending, &busy) || pending) {
      __atomic_store_n(&deep, 0, __ATOMIC_RELAXED);
      continue;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DUET_ASYNC_IDLE_MS / 1000;
    pthread_mutex_lock(&kick_lock);
    while (kicks == seen && !async_stop)
      if (pthread_cond_timedwait(&kick_cond, &kick_lock, &until) == ETIMEDOUT)
        break;
    pthread_mutex_unlock(&kick_lock);
    __atomic_store_n(&deep, 0, __ATOMIC_RELAXED);
  }
  return NULL;
}

duet_status_t duet__async_start(duet_comm_t *comm) {
  duet_status_t rc = DUET_SUCCESS;
  pthread_mutex_lock(&life_lock);
  pthread_mutex_lock(&async_lock);
  if (async_len == async_cap) {
    size_t ncap = async_cap ? 2 * async_cap : 8;
    duet_comm_t **n = realloc(async_comms, ncap * sizeof(*n));
    if (n == NULL) {
      rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "progress thread: out of memory");
      goto out;
    }
    async_comms = n;
    async_cap = ncap;
  }
  if (!async_running) {
    sigset_t all, old;
    int err;
    pthread_mutex_lock(&kick_lock);
    async_stop = 0;
    pthread_mutex_unlock(&kick_lock);
    sigfillset(&all); /* the caller's signals stay with the caller's threads */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&async_thread, NULL, async_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
      rc = duet__set_error(comm, DUET_ERR_SYSTEM, "progress thread: pthread_create: %s",
                           strerror(err));
      goto out;
    }
    pthread_setname_np(async_thread, "duet-progress");
    async_running = 1;
    DUET_INFO(DUET_SUB_INIT, "progress thread started");
  }
  async_comms[async_len++] = comm;
out:
  pthread_mutex_unlock(&async_lock);
  pthread_mutex_unlock(&life_lock);
  return rc;
}

void duet__async_stop(duet_comm_t *comm) {
  int join = 0;
  pthread_mutex_lock(&life_lock);
  pthread_mutex_lock(&async_lock);
  for (size_t i = 0; i < async_len; i++)
    if (async_comms[i] == comm) {
      async_comms[i] = async_comms[--async_len];
      if (async_len == 0 && async_running) {
        join = 1;
        async_running = 0;
      }
      break;
    }
  pthread_mutex_unlock(&async_lock);
  if (join) {
    pthread_mutex_lock(&kick_lock);
    async_stop = 1;
    pthread_cond_signal(&kick_cond);
    pthread_mutex_unlock(&kick_lock);
    pthread_join(async_thread, NULL);
    DUET_INFO(DUET_SUB_INIT, "progress thread stopped");
  }
  pthread_mutex_unlock(&life_lock);
}
