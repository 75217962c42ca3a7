/*
 * test_failure.c - DESIGN section 7, end to end: a rank that aborts
 * (duet_comm_abort) or dies (SIGKILL) while its peers are inside a
 * collective makes every surviving rank's pending call, its next call and
 * its duet_comm_destroy return within the deadline: the two calls with
 * DUET_ERR_REMOTE or DUET_ERR_TIMEOUT, nothing hangs. Over each set-up of
 * the networks: the load/store UPN of one host, duet's tcp, libfabric's
 * tcp;ofi_rxm and shm, two super-nodes (segment inside, tcp across), and
 * two HPN planes.
 *
 * Blocking calls, and non-blocking ones polled with duet_test (with and
 * without a progress thread).
 *
 * The ranks are processes forked from the test, on loopback, with a
 * DUET_TIMEOUT of 3 s. Every rank first runs one allreduce that must be
 * right; then the victim waits 300 ms (its peers are in the next allreduce
 * by then) and aborts or kills itself. An aborting victim stays alive for
 * twice the deadline after the abort, so its peers must learn of the abort
 * itself, not of a process that is gone. In the "before any call"
 * scenarios there is no first allreduce: the victim leaves before any
 * transport has talked to it, so duet's tcp (which connects at the first
 * message) has no connection that could end, and a survivor waiting for
 * the victim must dial it to find it gone (watch, transport.h).
 *
 * No rank, killed or not, may leave libfabric shm's region in /dev/shm.
 *
 * The survivors must say DUET_ERR_REMOTE well before the deadline, as duet
 * sees the victim go: duet's tcp (the connection closes), the load/store
 * UPN (a closed segment, or a process that is gone), libfabric (an abort
 * notice; the awaited rank's process looked up when it is on this host),
 * and planes and super-nodes built of them. Only a rank that dies on
 * another host (not tested here) leaves libfabric peers the deadline.
 *
 * Descriptor limits: a rank whose RLIMIT_NOFILE cannot hold the sockets
 * init connects (libfabric's tcp) makes every rank's init fail at once,
 * saying so, instead of its peers waiting for its connections; one that
 * runs out of sockets later (duet's tcp connects each lane at its first
 * message) fails its call, saying so; a soft limit under the hard one is
 * raised.
 *
 * Point to point with counts that differ (duet_send of more or fewer bytes
 * than the duet_recv): the receive fails with DUET_ERR_MISMATCH well before
 * the deadline, writing nothing past its buffer, over each network.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "duet.h"

#define TIMEOUT_MS 3000
#define BIG 262144 /* floats in the call the victim leaves: 1 MiB */
#define MAXR 4

typedef struct setup {
  const char *name;
  int n;
  const char *upn, *hpn, *hpn_iface; /* NULL: the default */
  const char *sn[MAXR];              /* super-node per rank; NULL: the host's */
  int thread;                        /* DUET_PROGRESS_THREAD */
} setup_t;

typedef struct report {
  int rank, stage; /* stage 4: every step ran */
  int init, first, pending, later, destroy;
  long pending_ms, later_ms, destroy_ms;
  char err[400];
} report_t;

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Rank r's communicator over su. Rank 0 makes the rendezvous (its root is
 * a thread, so it is made after the fork: a process forked while another
 * thread holds an allocator's lock can deadlock) and hands the id to the
 * others on idp. On failure err says why. */
static duet_status_t rank_init(const setup_t *su, const int idp[2], int r, duet_comm_t **c,
                               char *err, size_t errlen) {
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_unique_id_t id;
  duet_status_t st = DUET_SUCCESS;
  if (r == 0) {
    st = duet_get_unique_id(&id);
    for (int k = 1; k < su->n && st == DUET_SUCCESS; k++)
      if (write(idp[1], &id, sizeof(id)) != (ssize_t)sizeof(id))
        st = DUET_ERR_SYSTEM;
  } else if (read(idp[0], &id, sizeof(id)) != (ssize_t)sizeof(id)) { /* one write each: atomic */
    st = DUET_ERR_SYSTEM;
  }
  if (st != DUET_SUCCESS) {
    snprintf(err, errlen, "the unique id: %s", duet_last_error(NULL));
    return st;
  }
  cfg.timeout_ms = TIMEOUT_MS;
  cfg.upn_provider = su->upn;
  cfg.hpn_provider = su->hpn;
  cfg.hpn_iface = su->hpn_iface;
  cfg.supernode = su->sn[r];
  cfg.progress_thread = su->thread;
  st = duet_comm_init_rank(c, su->n, id, r, &cfg);
  if (st != DUET_SUCCESS)
    snprintf(err, errlen, "init: %s", duet_last_error(NULL));
  return st;
}

/* What one forked rank runs: it writes one report to fd and exits. */
typedef void (*rank_fn_t)(const setup_t *su, const int idp[2], int r, const void *arg, int fd);

/* libfabric shm's region (ofi.c names it duet_<pid>_<random>) must not
 * outlive a rank, however it ends: ofi.c unlinks it once every peer has it
 * mapped, which is before init returns. Counts, and removes, what the reaped
 * rank pid left in /dev/shm. */
static int regions_left(pid_t pid) {
  char prefix[32], name[300];
  DIR *d = opendir("/dev/shm");
  struct dirent *de;
  size_t n = (size_t)snprintf(prefix, sizeof prefix, "duet_%d_", (int)pid);
  int left = 0;
  if (!d)
    return 0;
  while ((de = readdir(d)) != NULL)
    if (strncmp(de->d_name, prefix, n) == 0) {
      snprintf(name, sizeof name, "/%s", de->d_name);
      (void)shm_unlink(name);
      left++;
    }
  closedir(d);
  return left;
}

/* Fork su->n ranks running fn and read up to want reports of size bytes
 * each into reps, for at most limit_ms; then reap the ranks (ours; gone by
 * now unless something hung), killing those still there, and say in fate
 * how any rank but spare ended badly. Returns how many reports came. */
static int ranks_run(const setup_t *su, rank_fn_t fn, const void *arg, void *reps, size_t size,
                     int want, long limit_ms, int spare, char *fate, size_t fatelen) {
  pid_t pid[MAXR];
  int fds[2], idp[2], got = 0, left = 0;
  long t0;

  fate[0] = '\0';
  cr_assert_eq(pipe(fds), 0);
  cr_assert_eq(pipe(idp), 0);
  for (int r = 0; r < su->n; r++) {
    pid[r] = fork();
    cr_assert_geq(pid[r], 0);
    if (pid[r] == 0) {
      close(fds[0]);
      fn(su, idp, r, arg, fds[1]);
      _exit(4); /* fn exits */
    }
  }
  close(fds[1]);
  close(idp[0]);
  close(idp[1]);
  t0 = now_ms();
  while (got < want && now_ms() - t0 < limit_ms) {
    struct pollfd p = {fds[0], POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0)
      continue;
    ssize_t k = read(fds[0], (char *)reps + (size_t)got * size, size);
    if (k == (ssize_t)size)
      got++;
    else if (k == 0)
      break; /* every writer is gone */
  }
  close(fds[0]);
  for (int r = 0; r < su->n; r++) {
    int status = 0, len = (int)strlen(fate);
    pid_t done;
    long t1 = now_ms();
    /* a rank that has just reported may still be exiting: give it 2 s */
    while ((done = waitpid(pid[r], &status, WNOHANG)) == 0 && now_ms() - t1 < 2000)
      usleep(10 * 1000);
    if (done == 0) {
      kill(pid[r], SIGKILL);
      waitpid(pid[r], &status, 0);
      snprintf(fate + len, fatelen - (size_t)len, " rank %d hung;", r);
    } else if (WIFSIGNALED(status) && r != spare) {
      snprintf(fate + len, fatelen - (size_t)len, " rank %d died of signal %d;", r,
               WTERMSIG(status));
    } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
      snprintf(fate + len, fatelen - (size_t)len, " rank %d exited %d;", r, WEXITSTATUS(status));
    }
    left += regions_left(pid[r]);
  }
  cr_assert_eq(left, 0, "%s: the ranks left %d libfabric shm regions in /dev/shm:%s", su->name,
               left, fate);
  return got;
}

typedef struct scene {
  int victim, kill_it, nb, cold;
} scene_t;

/* Rank r of a scenario (scenario_run): one allreduce, then the victim
 * leaves while the others are in the next. */
static void rank_main(const setup_t *su, const int idp[2], int r, const void *arg, int fd) {
  const scene_t *sc = arg;
  const int victim = sc->victim, kill_it = sc->kill_it, nb = sc->nb, cold = sc->cold;
  duet_comm_t *c = NULL;
  report_t rep;
  float *a = calloc(BIG, sizeof(float)), *b = calloc(BIG, sizeof(float));
  long t;

  memset(&rep, 0, sizeof(rep));
  rep.rank = r;
  rep.init = rank_init(su, idp, r, &c, rep.err, sizeof(rep.err));
  if (rep.init != DUET_SUCCESS)
    goto out;
  rep.stage = 1;
  if (cold) /* no first call: nothing has been connected when the victim leaves */
    goto leave;
  for (int i = 0; i < 1000; i++)
    a[i] = (float)(r + i);
  rep.first = duet_allreduce(a, b, 1000, DUET_FLOAT32, DUET_SUM, c);
  for (int i = 0; i < 1000 && rep.first == DUET_SUCCESS; i++) /* sum over ranks of r + i */
    if (b[i] != (float)(su->n * i + su->n * (su->n - 1) / 2)) {
      snprintf(rep.err, sizeof(rep.err), "first allreduce: element %d is %g", i, (double)b[i]);
      rep.first = DUET_ERR_INTERNAL;
    }
  if (rep.first != DUET_SUCCESS)
    goto out;
leave:
  rep.stage = 2;
  if (r == victim) {
    usleep(300 * 1000);
    if (kill_it)
      raise(SIGKILL);
    duet_comm_abort(c);
    usleep(2 * TIMEOUT_MS * 1000);
    _exit(0);
  }
  t = now_ms();
  if (!nb) {
    rep.pending = duet_allreduce(a, b, BIG, DUET_FLOAT32, DUET_SUM, c);
  } else { /* posted, then polled with duet_test as a training loop would */
    duet_request_t *req = NULL;
    int done = 0;
    rep.pending = duet_iallreduce(a, b, BIG, DUET_FLOAT32, DUET_SUM, c, &req);
    while (rep.pending == DUET_SUCCESS && !done && now_ms() - t < 30000) {
      rep.pending = duet_test(req, &done);
      if (rep.pending == DUET_IN_PROGRESS)
        rep.pending = DUET_SUCCESS;
      usleep(100);
    }
    if (rep.pending == DUET_SUCCESS && !done)
      rep.pending = DUET_IN_PROGRESS; /* still pending after 30 s */
  }
  rep.pending_ms = now_ms() - t;
  if (rep.pending != DUET_SUCCESS)
    snprintf(rep.err, sizeof(rep.err), "%s", duet_last_error(c));
  rep.stage = 3;
  t = now_ms();
  rep.later = duet_allreduce(a, b, 8, DUET_FLOAT32, DUET_SUM, c);
  rep.later_ms = now_ms() - t;
  t = now_ms();
  rep.destroy = duet_comm_destroy(c);
  rep.destroy_ms = now_ms() - t;
  rep.stage = 4;
out:
  if (write(fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
    _exit(3);
  _exit(0);
}

static int is_failure(int st) {
  return st == DUET_ERR_REMOTE || st == DUET_ERR_TIMEOUT;
}

/* Run one scenario (nb: the survivors' pending call is duet_iallreduce,
 * polled with duet_test; cold: the victim leaves before any call, so no
 * transport has talked to it yet); every survivor's report is checked. */
static void scenario_run(const setup_t *su, int victim, int kill_it, int nb, int cold) {
  const char *how = cold      ? (kill_it ? "killed before any call" : "aborted before any call")
                    : kill_it ? (nb ? "killed (non-blocking)" : "killed")
                              : "aborted";
  const long limit_ms = 60000; /* every rank is done long before */
  /* Survivors learn within about 100 ms of the victim leaving (300 ms
   * in). Before any call, a slower path (a plane's stall probe, say) must
   * not pass for the one under test: half the deadline. */
  const long soon_ms = cold ? TIMEOUT_MS / 2 : TIMEOUT_MS;
  const scene_t sc = {victim, kill_it, nb, cold};
  report_t reps[MAXR];
  char fate[256];
  int got = ranks_run(su, rank_main, &sc, reps, sizeof(reps[0]), su->n - 1, limit_ms, victim, fate,
                      sizeof(fate));

  cr_assert_eq(got, su->n - 1, "%s, rank %d %s: %d of %d survivors reported within %ld s:%s",
               su->name, victim, how, got, su->n - 1, limit_ms / 1000, fate);
  for (int k = 0; k < got; k++) {
    const report_t *p = &reps[k];
    cr_assert_eq(p->stage, 4, "%s, rank %d %s: rank %d stopped at stage %d (init %d, first %d): %s",
                 su->name, victim, how, p->rank, p->stage, p->init, p->first, p->err);
    cr_assert(p->pending == DUET_ERR_REMOTE && p->pending_ms < soon_ms,
              "%s, rank %d %s: rank %d's pending allreduce returned %d (%s) after %ld ms, not "
              "DUET_ERR_REMOTE within %ld ms: %s",
              su->name, victim, how, p->rank, p->pending, duet_strerror(p->pending),
              p->pending_ms, soon_ms, p->err);
    cr_assert(is_failure(p->pending),
              "%s, rank %d %s: rank %d's pending allreduce returned %d (%s), not "
              "DUET_ERR_REMOTE or DUET_ERR_TIMEOUT: %s",
              su->name, victim, how, p->rank, p->pending, duet_strerror(p->pending), p->err);
    cr_assert(is_failure(p->later), "%s, rank %d %s: rank %d's next allreduce returned %d (%s)",
              su->name, victim, how, p->rank, p->later, duet_strerror(p->later));
    /* the deadline, plus what an oversubscribed host adds */
    cr_assert_leq(p->pending_ms, TIMEOUT_MS + 4000, "%s, rank %d %s: rank %d waited %ld ms",
                  su->name, victim, how, p->rank, p->pending_ms);
    cr_assert_leq(p->later_ms, TIMEOUT_MS + 4000, "%s, rank %d %s: the next call took %ld ms",
                  su->name, victim, how, p->later_ms);
    cr_assert_leq(p->destroy_ms, TIMEOUT_MS + 4000,
                  "%s, rank %d %s: rank %d's duet_comm_destroy took %ld ms", su->name, victim, how,
                  p->rank, p->destroy_ms);
    cr_log_info("%s, rank %d %s: rank %d: %s after %ld ms, then %s; destroy %d in %ld ms: %s",
                su->name, victim, how, p->rank, duet_strerror(p->pending), p->pending_ms,
                duet_strerror(p->later), p->destroy, p->destroy_ms, p->err);
  }
}

static void scenario(const setup_t *su, int victim, int kill_it, int nb) {
  scenario_run(su, victim, kill_it, nb, 0);
}

static const setup_t one_host = {"one host, load/store UPN", 3, NULL, NULL, NULL, {NULL}, 0};
static const setup_t tcp = {"duet's tcp", 3, "tcp", "tcp", NULL, {NULL}, 0};
static const setup_t tcp4 = {"duet's tcp, 4 ranks", 4, "tcp", "tcp", NULL, {NULL}, 0};
static const setup_t ofi_tcp = {"libfabric tcp;ofi_rxm", 3, "tcp;ofi_rxm", "tcp;ofi_rxm", NULL,
                                {NULL}, 0};
static const setup_t ofi_shm = {"libfabric shm", 3, "shm", "tcp", NULL, {NULL}, 0};
static const setup_t two_sn = {"2 x 2 super-nodes", 4, NULL, NULL, NULL, {"a", "a", "b", "b"}, 0};
static const setup_t planes = {"2 x 2, two HPN planes", 4, "tcp", "tcp", "127.0.0.1,127.0.0.77",
                               {"a", "a", "b", "b"}, 0};
static const setup_t ofi_tcp_thread = {
    "libfabric tcp;ofi_rxm, progress thread", 3, "tcp;ofi_rxm", "tcp;ofi_rxm", NULL, {NULL}, 1};
static const setup_t two_sn_thread = {
    "2 x 2 super-nodes, progress thread", 4, NULL, NULL, NULL, {"a", "a", "b", "b"}, 1};

Test(failure, one_host_abort, .timeout = 90) { scenario(&one_host, 1, 0, 0); }
Test(failure, one_host_kill, .timeout = 90) { scenario(&one_host, 1, 1, 0); }
Test(failure, tcp_abort, .timeout = 90) { scenario(&tcp, 1, 0, 0); }
Test(failure, tcp_kill, .timeout = 90) { scenario(&tcp, 1, 1, 0); }
Test(failure, ofi_tcp_abort, .timeout = 90) { scenario(&ofi_tcp, 1, 0, 0); }
Test(failure, ofi_tcp_kill, .timeout = 90) { scenario(&ofi_tcp, 1, 1, 0); }
Test(failure, ofi_shm_abort, .timeout = 90) { scenario(&ofi_shm, 1, 0, 0); }
Test(failure, ofi_shm_kill, .timeout = 90) { scenario(&ofi_shm, 1, 1, 0); }
Test(failure, two_supernodes_abort, .timeout = 90) { scenario(&two_sn, 2, 0, 0); }
Test(failure, two_supernodes_kill, .timeout = 90) { scenario(&two_sn, 2, 1, 0); }
Test(failure, two_planes_abort, .timeout = 90) { scenario(&planes, 3, 0, 0); }
Test(failure, two_planes_kill, .timeout = 90) { scenario(&planes, 3, 1, 0); }
Test(failure, one_host_kill_nonblocking, .timeout = 90) { scenario(&one_host, 1, 1, 1); }
Test(failure, ofi_tcp_kill_nonblocking, .timeout = 90) { scenario(&ofi_tcp, 1, 1, 1); }
Test(failure, ofi_shm_kill_nonblocking, .timeout = 90) { scenario(&ofi_shm, 1, 1, 1); }
Test(failure, two_supernodes_kill_nonblocking, .timeout = 90) { scenario(&two_sn, 2, 1, 1); }
Test(failure, ofi_tcp_abort_progress_thread, .timeout = 90) { scenario(&ofi_tcp_thread, 1, 0, 1); }
Test(failure, two_supernodes_kill_progress_thread, .timeout = 90) {
  scenario(&two_sn_thread, 2, 1, 1);
}
Test(failure, tcp_abort_before_any_call, .timeout = 90) { scenario_run(&tcp4, 1, 0, 0, 1); }
Test(failure, tcp_kill_before_any_call, .timeout = 90) { scenario_run(&tcp4, 1, 1, 0, 1); }
Test(failure, two_supernodes_abort_before_any_call, .timeout = 90) {
  scenario_run(&two_sn, 2, 0, 0, 1);
}
Test(failure, two_planes_abort_before_any_call, .timeout = 90) {
  scenario_run(&planes, 3, 0, 0, 1);
}

/* ---- descriptor limits --------------------------------------------------- */

typedef struct limit_report {
  int rank, init, call, sum;
  long init_ms, call_ms;
  unsigned long long soft_before, soft_after; /* RLIMIT_NOFILE around init */
  char err[400];
} limit_report_t;

/* Leave this process 0, 1, 2 and the given descriptors only, as 3 .. 3 + n - 1
 * (updated in fd[]), so that the next descriptors are 3 + n, 3 + n + 1, ... */
static void fds_compact(int *fd[], int n) {
  struct rlimit rl;
  for (int i = 0; i < n; i++) {
    int to = 3 + i, from = *fd[i];
    if (from == to)
      continue;
    for (int j = i + 1; j < n; j++) /* one still to move sits where this one goes */
      if (*fd[j] == to && (*fd[j] = dup(to)) < 0)
        _exit(6);
    if (dup2(from, to) < 0)
      _exit(6);
    close(from);
    *fd[i] = to;
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    _exit(6);
  for (int f = 3 + n; f < (int)(rl.rlim_cur < 65536 ? rl.rlim_cur : 65536); f++)
    close(f);
}

/* Four ranks over provider. Rank 1 first closes every descriptor but 0, 1,
 * 2 and its report's, then leaves itself room for soft_room more
 * (RLIMIT_NOFILE's soft limit), and hard_room more under the hard limit (0:
 * unchanged). */
static void limit_rank(const char *provider, const int idp[2], int r, long soft_room,
                       long hard_room, int fd) {
  duet_config_t cfg = DUET_CONFIG_INIT;
  duet_comm_t *c = NULL;
  duet_unique_id_t id;
  limit_report_t rep;
  struct rlimit rl;
  long t;

  memset(&rep, 0, sizeof(rep));
  rep.rank = r;
  if (r == 0) {
    rep.init = duet_get_unique_id(&id);
    for (int k = 1; k < 4 && rep.init == DUET_SUCCESS; k++)
      if (write(idp[1], &id, sizeof(id)) != (ssize_t)sizeof(id))
        rep.init = DUET_ERR_SYSTEM;
  } else if (read(idp[0], &id, sizeof(id)) != (ssize_t)sizeof(id)) {
    rep.init = DUET_ERR_SYSTEM;
  }
  if (rep.init != DUET_SUCCESS)
    goto out;
  if (r == 1) {
    int *keep[] = {&fd};
    fds_compact(keep, 1); /* 0 .. 3 open */
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
      _exit(4);
    if (hard_room > 0)
      rl.rlim_max = (rlim_t)(4 + hard_room);
    rl.rlim_cur = (rlim_t)(4 + soft_room);
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      _exit(5);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    rep.soft_before = (unsigned long long)rl.rlim_cur;
  cfg.timeout_ms = TIMEOUT_MS;
  cfg.upn_provider = provider;
  cfg.hpn_provider = provider;
  t = now_ms();
  rep.init = duet_comm_init_rank(&c, 4, id, r, &cfg);
  rep.init_ms = now_ms() - t;
  if (rep.init != DUET_SUCCESS) {
    snprintf(rep.err, sizeof(rep.err), "%s", duet_last_error(NULL));
  } else {
    int one = 1;
    t = now_ms();
    rep.call = duet_allreduce(&one, &rep.sum, 1, DUET_INT32, DUET_SUM, c);
    rep.call_ms = now_ms() - t;
    if (rep.call != DUET_SUCCESS)
      snprintf(rep.err, sizeof(rep.err), "%s", duet_last_error(c));
    duet_comm_destroy(c);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    rep.soft_after = (unsigned long long)rl.rlim_cur;
out:
  if (write(fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
    _exit(3);
  _exit(0);
}

/* Run the four ranks; reps[r] is rank r's report. */
static void limit_run(const char *provider, long soft_room, long hard_room,
                      limit_report_t reps[4]) {
  pid_t pid[4];
  int fds[2], idp[2], got = 0;
  long t0;

  cr_assert_eq(pipe(fds), 0);
  cr_assert_eq(pipe(idp), 0);
  for (int r = 0; r < 4; r++) {
    pid[r] = fork();
    cr_assert_geq(pid[r], 0);
    if (pid[r] == 0) {
      close(fds[0]);
      limit_rank(provider, idp, r, soft_room, hard_room, fds[1]);
    }
  }
  close(fds[1]);
  close(idp[0]);
  close(idp[1]);
  t0 = now_ms();
  while (got < 4 && now_ms() - t0 < 90000) {
    struct pollfd p = {fds[0], POLLIN, 0};
    limit_report_t rep;
    if (poll(&p, 1, 1000) <= 0)
      continue;
    ssize_t k = read(fds[0], &rep, sizeof(rep));
    if (k != (ssize_t)sizeof(rep))
      break;
    reps[rep.rank] = rep;
    got++;
  }
  close(fds[0]);
  for (int r = 0; r < 4; r++) {
    int status = 0;
    if (got < 4 && waitpid(pid[r], &status, WNOHANG) == 0) /* hung */
      kill(pid[r], SIGKILL);
    waitpid(pid[r], &status, 0);
    cr_assert_eq(regions_left(pid[r]), 0, "rank %d left libfabric shm regions in /dev/shm", r);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rank %d: exit status %#x", r, status);
  }
  cr_assert_eq(got, 4, "%d of 4 ranks reported", got);
  for (int r = 0; r < 4; r++)
    cr_log_info("rank %d: init %d in %ld ms, allreduce %d in %ld ms, sum %d, RLIMIT_NOFILE %llu "
                "then %llu: %s",
                r, reps[r].init, reps[r].init_ms, reps[r].call, reps[r].call_ms, reps[r].sum,
                reps[r].soft_before, reps[r].soft_after, reps[r].err);
}

/* libfabric's tcp connects at init, one socket per peer. Rank 1's hard limit
 * leaves room for 2 more descriptors (the bootstrap takes one); it needs 3
 * for its peers. */
Test(limits, hard_limit_too_low_fails_every_rank_at_once, .timeout = 120) {
  limit_report_t reps[4];
  limit_run("tcp;ofi_rxm", 2, 2, reps);
  cr_assert_eq(reps[1].init, DUET_ERR_SYSTEM, "rank 1's init returned %d: %s", reps[1].init,
               reps[1].err);
  cr_assert(strstr(reps[1].err, "RLIMIT_NOFILE") != NULL, "rank 1 says: %s", reps[1].err);
  for (int r = 0; r < 4; r++) {
    if (r != 1) {
      cr_assert_eq(reps[r].init, DUET_ERR_REMOTE, "rank %d's init returned %d: %s", r,
                   reps[r].init, reps[r].err);
      cr_assert(strstr(reps[r].err, "rank 1") != NULL && strstr(reps[r].err, "RLIMIT_NOFILE"),
                "rank %d does not name rank 1 and the limit: %s", r, reps[r].err);
    }
    /* not libfabric's connect deadline (60 s) */
    cr_assert_lt(reps[r].init_ms, 10000, "rank %d's init took %ld ms", r, reps[r].init_ms);
  }
}

/* duet's tcp connects at a lane's first message. Rank 1's hard limit leaves
 * room for 2 more descriptors: init works, its allreduce fails for want of
 * sockets and says so, and its peers' allreduce ends within the deadline. */
Test(limits, out_of_sockets_fails_the_call, .timeout = 120) {
  limit_report_t reps[4];
  limit_run("tcp", 2, 2, reps);
  for (int r = 0; r < 4; r++) {
    cr_assert_eq(reps[r].init, DUET_SUCCESS, "rank %d's init returned %d: %s", r, reps[r].init,
                 reps[r].err);
    if (r == 1) {
      cr_assert_eq(reps[r].call, DUET_ERR_SYSTEM, "rank 1's allreduce returned %d: %s",
                   reps[r].call, reps[r].err);
      cr_assert(strstr(reps[r].err, "RLIMIT_NOFILE") != NULL, "rank 1 says: %s", reps[r].err);
    } else { /* done before it needed rank 1's part, or failed */
      cr_assert((reps[r].call == DUET_SUCCESS && reps[r].sum == 4) || is_failure(reps[r].call),
                "rank %d's allreduce returned %d (sum %d): %s", r, reps[r].call, reps[r].sum,
                reps[r].err);
    }
    cr_assert_leq(reps[r].call_ms, TIMEOUT_MS + 4000, "rank %d's allreduce took %ld ms", r,
                  reps[r].call_ms);
  }
}

/* Rank 1's soft limit leaves room for 4 more descriptors, its hard limit for
 * plenty: init raises the soft one, for up to 4 sockets per peer, and the
 * allreduce works. */
Test(limits, soft_limit_is_raised, .timeout = 120) {
  limit_report_t reps[4];
  limit_run("tcp", 4, 0, reps);
  for (int r = 0; r < 4; r++) {
    cr_assert_eq(reps[r].init, DUET_SUCCESS, "rank %d's init returned %d: %s", r, reps[r].init,
                 reps[r].err);
    cr_assert_eq(reps[r].sum, 4, "rank %d's allreduce gave %d: %s", r, reps[r].sum, reps[r].err);
  }
  cr_assert_geq(reps[1].soft_after, reps[1].soft_before + 12,
                "rank 1's soft limit: %llu, then %llu", reps[1].soft_before, reps[1].soft_after);
}

/* ---- point to point with counts that differ -------------------------- */

typedef struct mm_report {
  int rank, init, call, guard_ok;
  long call_ms;
  char err[400];
} mm_report_t;

typedef struct mm_case {
  int from, to;
  size_t sbytes, rbytes;
} mm_case_t;

/* Rank `from` sends sbytes to rank `to`, which receives rbytes into a
 * buffer with guard bytes behind them; the others only init and destroy. */
static void mm_rank(const setup_t *su, const int idp[2], int r, const void *arg, int fd) {
  enum { GUARD = 64 };
  const mm_case_t *mc = arg;
  const int from = mc->from, to = mc->to;
  const size_t sbytes = mc->sbytes, rbytes = mc->rbytes;
  duet_comm_t *c = NULL;
  mm_report_t rep;
  unsigned char *buf = malloc((sbytes > rbytes ? sbytes : rbytes) + GUARD);
  long t;

  memset(&rep, 0, sizeof(rep));
  rep.rank = r;
  rep.guard_ok = 1;
  if (!buf) {
    rep.init = DUET_ERR_NO_MEMORY;
    snprintf(rep.err, sizeof(rep.err), "malloc");
    goto out;
  }
  rep.init = rank_init(su, idp, r, &c, rep.err, sizeof(rep.err));
  if (rep.init != DUET_SUCCESS)
    goto out;
  t = now_ms();
  if (r == from) {
    memset(buf, 0x5a, sbytes);
    rep.call = duet_send(buf, sbytes, DUET_UINT8, to, c);
  } else if (r == to) {
    memset(buf, 0, rbytes + GUARD);
    rep.call = duet_recv(buf, rbytes, DUET_UINT8, from, c);
    for (size_t i = rbytes; i < rbytes + GUARD; i++)
      rep.guard_ok &= buf[i] == 0;
  }
  rep.call_ms = now_ms() - t;
  if (rep.call != DUET_SUCCESS)
    snprintf(rep.err, sizeof(rep.err), "%s", duet_last_error(c));
  duet_comm_destroy(c);
out:
  free(buf);
  if (write(fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
    _exit(3);
  _exit(0);
}

/* duet_send of sbytes against duet_recv of rbytes: the receiver fails with
 * DUET_ERR_MISMATCH well before the deadline, writing nothing past its
 * buffer; the sender succeeds (its message was sent whole) or fails with
 * DUET_ERR_MISMATCH too, as soon. Over libfabric's shm a message past 4 KiB
 * into a receive of 4 KiB or less, over its tcp one of 64-128 KiB into a
 * receive of 0 bytes, timed out on both sides before. */
static void mismatch(const setup_t *su, int from, int to, size_t sbytes, size_t rbytes) {
  const mm_case_t mc = {from, to, sbytes, rbytes};
  mm_report_t reps[MAXR];
  char fate[256];
  int got =
      ranks_run(su, mm_rank, &mc, reps, sizeof(reps[0]), su->n, 60000, -1, fate, sizeof(fate));

  cr_assert_eq(got, su->n, "%s, %zu bytes sent to a receive of %zu: %d of %d ranks reported:%s",
               su->name, sbytes, rbytes, got, su->n, fate);
  for (int k = 0; k < got; k++) {
    const mm_report_t *p = &reps[k];
    cr_assert_eq(p->init, DUET_SUCCESS, "%s: rank %d: %s", su->name, p->rank, p->err);
    if (p->rank == to)
      cr_assert(p->call == DUET_ERR_MISMATCH && p->guard_ok,
                "%s, %zu bytes sent to a receive of %zu: the receive returned %d (%s) after %ld "
                "ms, guard %s: %s",
                su->name, sbytes, rbytes, p->call, duet_strerror(p->call), p->call_ms,
                p->guard_ok ? "intact" : "overwritten", p->err);
    else if (p->rank == from)
      cr_assert(p->call == DUET_SUCCESS || p->call == DUET_ERR_MISMATCH,
                "%s, %zu bytes sent to a receive of %zu: the send returned %d (%s) after %ld ms: "
                "%s",
                su->name, sbytes, rbytes, p->call, duet_strerror(p->call), p->call_ms, p->err);
    cr_assert_lt(p->call_ms, TIMEOUT_MS / 2,
                 "%s, %zu bytes sent to a receive of %zu: rank %d took %ld ms", su->name, sbytes,
                 rbytes, p->rank, p->call_ms);
  }
}

static void mismatches(const setup_t *su, int from, int to) {
  static const size_t sizes[][2] = {
      {16384, 1024}, {1024, 16384}, {65536, 32768}, {4097, 4096}, {100000, 0}};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
    mismatch(su, from, to, sizes[i][0], sizes[i][1]);
}

Test(mismatch, one_host, .timeout = 120) {
  mismatches(&one_host, 0, 1);
}
Test(mismatch, tcp, .timeout = 120) {
  mismatches(&tcp, 0, 1);
}
Test(mismatch, ofi_tcp, .timeout = 120) {
  mismatches(&ofi_tcp, 0, 1);
}
Test(mismatch, ofi_shm, .timeout = 120) {
  mismatches(&ofi_shm, 0, 1);
}
Test(mismatch, two_supernodes, .timeout = 120) {
  mismatches(&two_sn, 0, 2);
}
/* Over two HPN planes a message from 128 KiB on is cut into a part per
 * plane, one under 16 KiB goes on plane 0: these lengths lie on different
 * planes whatever the tag. */
Test(mismatch, two_planes, .timeout = 180) {
  mismatches(&planes, 0, 2);
  mismatch(&planes, 0, 2, 262144, 1024);
  mismatch(&planes, 0, 2, 1024, 262144);
}
