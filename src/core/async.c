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
 * Idling. With nothing posted the thread sleeps on a condition variable
 * until a non-blocking call is posted (duet__async_kick). With calls posted
 * but nothing arriving it yields a few times, then naps, doubling the nap
 * up to DUET_ASYNC_NAP_MAX_US: a rank waiting for a peer must leave the
 * core to the peer and to the caller's computation (on an oversubscribed
 * host every rank's thread shares the few cores).
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

/* Kicks: a non-blocking call was posted. The thread reads the count before
 * a pass and sleeps only if it did not change, so a kick is never lost. */
static pthread_mutex_t kick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kick_cond = PTHREAD_COND_INITIALIZER;
static uint64_t kicks;

void duet__async_kick(void) {
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
 * Sets *pending when a call is still posted (or a communicator was busy). */
static int async_pass(int *pending) {
  int moved = 0;
  *pending = 0;
  pthread_mutex_lock(&async_lock);
  for (size_t i = 0; i < async_len; i++) {
    duet_comm_t *c = async_comms[i];
    if (pthread_mutex_trylock(&c->nets->lock) != 0) {
      *pending = 1; /* the caller is inside duet on this family */
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
  for (;;) {
    uint64_t seen;
    int pending, stop;
    pthread_mutex_lock(&kick_lock);
    seen = kicks;
    stop = async_stop;
    pthread_mutex_unlock(&kick_lock);
    if (stop)
      break;
    if (async_pass(&pending)) {
      idle = nap = 0;
      continue;
    }
    if (!pending) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += DUET_ASYNC_IDLE_MS / 1000;
      pthread_mutex_lock(&kick_lock);
      while (kicks == seen && !async_stop)
        if (pthread_cond_timedwait(&kick_cond, &kick_lock, &until) == ETIMEDOUT)
          break;
      pthread_mutex_unlock(&kick_lock);
      idle = nap = 0;
      continue;
    }
    if (++idle <= DUET_ASYNC_YIELDS) {
      sched_yield();
      continue;
    }
    nap = nap == 0 ? DUET_ASYNC_NAP_MIN_US : nap * 2;
    if (nap > DUET_ASYNC_NAP_MAX_US)
      nap = DUET_ASYNC_NAP_MAX_US;
    async_nap(nap);
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
