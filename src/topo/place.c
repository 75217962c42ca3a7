/*
 * place.c - evening out ranks over the CPUs of an oversubscribed host.
 *
 * With every core busy the scheduler has no idle core to pull work to, and
 * it may leave ranks unevenly placed for many milliseconds: three on one
 * core and one on the other of two. Every call then waits for three context
 * switches on the crowded core instead of two (4 ranks on 2 cores, 8-byte
 * all-to-all on the load/store path: 4.0 against 2.0 us; allreduce over
 * tcp: 48 against 25 us). Ranks that see where their peers run move one
 * rank of a crowded CPU: duet__place_pick decides which, by a turn every
 * rank computes alike, and duet__place_move moves it. A move sets a one-CPU mask and then restores
 * the thread's own mask, so the scheduler may still place the rank as it likes later: duet binds
 * nothing. Ranks move only while the host runs nothing but the job (see
 * duet__place_move).
 *
 * The load/store engine reads its peers' CPUs from their flag lines
 * (shm.c); other paths read /proc/<pid>/stat of the host's ranks, at most
 * every DUET_PLACE_PERIOD_NS (progress.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "topo/topo.h"

int duet__place_pick(const int *cpu, int n, int me, const cpu_set_t *mask, uint64_t turn) {
  uint16_t count[CPU_SETSIZE] = {0};
  int mine = cpu[me], fewest = -1, ncpus = CPU_COUNT(mask), k;

  if (ncpus < 2 || n <= ncpus || mine < 0 || mine >= CPU_SETSIZE || !CPU_ISSET(mine, mask))
    return -1;
  for (int r = 0; r < n; r++)
    if (cpu[r] >= 0 && cpu[r] < CPU_SETSIZE)
      count[cpu[r]]++;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (c != mine && CPU_ISSET(c, mask) && (fewest < 0 || count[c] < count[fewest]))
      fewest = c;
  if (fewest < 0 || count[fewest] + 2 > count[mine])
    return -1;
  /* One rank of the crowded CPU moves: the turn-th of them in rank order,
   * so that a rank that cannot move (or just moved) does not block the
   * others for good. */
  k = (int)(turn % count[mine]);
  for (int r = 0; r < n; r++)
    if (cpu[r] == mine && k-- == 0)
      return r == me ? fewest : -1;
  return -1;
}

int duet__place_loadavg_running(const char *text) {
  double l1, l5, l15;
  int running, total;
  if (text == NULL || sscanf(text, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) != 5 ||
      running < 0 || total < running)
    return -1;
  return running;
}

/* Read a small /proc file into buf as a string. 0, or -1. */
/* Read a /proc file; -1 with errno (ENOENT or ESRCH: no such process). */
static int read_proc(const char *path, char *buf, size_t len) {
  ssize_t n;
  int fd = open(path, O_RDONLY | O_CLOEXEC), err;
  if (fd < 0)
    return -1;
  n = read(fd, buf, len - 1);
  err = n < 0 ? errno : ESRCH; /* empty: the process went */
  close(fd);
  if (n <= 0) {
    errno = err;
    return -1;
  }
  buf[n] = '\0';
  return 0;
}

static int host_running(void) {
  char buf[128];
  return read_proc("/proc/loadavg", buf, sizeof(buf)) == 0 ? duet__place_loadavg_running(buf) : -1;
}

int (*duet__place_running)(void) = host_running;

int duet__place_move(int target, const cpu_set_t *mask, int nranks) {
  cpu_set_t one;
  int running = duet__place_running();
  /* While its mask holds one CPU, the thread can run nowhere else. Where
   * other work keeps that CPU busy, under group scheduling (autogroup,
   * cgroups) the job's share of it may be tiny: a rank that moved to a CPU
   * busy with another session's work was seen to wait 20 s there before
   * it could even restore its mask. So move only on a host that runs
   * nothing but the job (its ranks, spinning or yielding, and the thread
   * reading /proc/loadavg); on a busy host the scheduler's own balancing,
   * which weighs the other work, is the better judge. */
  if (running < 0 || running > nranks + 1)
    return 1;
  CPU_ZERO(&one);
  CPU_SET(target, &one);
  if (sched_setaffinity(0, sizeof(one), &one) != 0)
    return -1;
  if (sched_setaffinity(0, sizeof(*mask), mask) != 0)
    DUET_WARN(DUET_SUB_TOPO, "could not restore this thread's CPU mask: %s", strerror(errno));
  return 0;
}

/* Field `field` (3 or more: the state, ...) of /proc/<pid>/stat (pid 0:
 * this process), read into buf; NULL when there is no such process. */
static const char *proc_stat_field(int pid, int field, char *buf, size_t len) {
  char path[64];
  const char *p;

  errno = EINVAL;
  if (pid < 0)
    return NULL;
  if (pid > 0)
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  else
    snprintf(path, sizeof(path), "/proc/self/stat");
  if (read_proc(path, buf, len) != 0)
    return NULL;
  errno = EINVAL; /* not the text of a stat file */
  p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  if (p == NULL)
    return NULL;
  for (int f = 2; f < field; f++) { /* fields 3.. follow */
    p = strchr(p + 1, ' ');
    if (p == NULL)
      return NULL;
  }
  return p + 1;
}

int duet__place_proc_cpu(int pid) {
  char buf[1024];
  const char *p = proc_stat_field(pid, 39, buf, sizeof(buf)); /* "processor" */
  return p != NULL ? atoi(p) : -1;
}

uint64_t duet__proc_start(int pid) {
  char buf[1024];
  const char *state = proc_stat_field(pid, 3, buf, sizeof(buf)), *p;
  if (state == NULL) /* gone, or this process cannot tell (out of descriptors...) */
    return errno == ENOENT || errno == ESRCH || pid < 0 ? 0 : DUET_PROC_UNKNOWN;
  if (*state == 'Z' || *state == 'X')
    return 0;
  p = proc_stat_field(pid, 22, buf, sizeof(buf));
  if (p == NULL)
    return errno == ENOENT || errno == ESRCH ? 0 : DUET_PROC_UNKNOWN;
  return strtoull(p, NULL, 10);
}
