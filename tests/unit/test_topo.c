/* Topology discovery (src/topo/discover.c) on hand-made hwloc XML topologies,
 * so no particular hardware is needed, and on this host.
 *
 * tests/unit/topo/ holds (made with `lstopo --input "<synthetic>" --of xml`,
 * then a HostName and PCI bridges with OS devices added under chosen
 * objects; `lstopo --input FILE` shows them):
 *   two_socket.xml  "node-a": pack:2 numa:1 core:4 pu:2; eth0 (and an NVMe
 *                   disk, not a NIC) near NUMA 0; ib0 + mlx5_0 (one card)
 *                   near NUMA 1.
 *   four_numa.xml   "node-b": pack:2 numa:2 core:2 pu:1; mlx5_0 near NUMA 1,
 *                   mlx5_1 near NUMA 3, eno1 on the machine (no single node).
 *   laptop.xml      "laptop": core:2 pu:1, no package level, no NIC.
 */
#include <criterion/criterion.h>
#include <hwloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "topo/topo.h"

#ifndef TOPO_XML_DIR
#error "TOPO_XML_DIR (the absolute path of tests/unit/topo) must be defined by the build"
#endif

static void load(duet__topo_t *t, const char *file) {
  char path[1024], err[DUET_TOPO_ERRLEN] = "";
  snprintf(path, sizeof(path), "%s/%s", TOPO_XML_DIR, file);
  cr_assert_eq(duet__topo_discover(t, path, err), DUET_SUCCESS, "%s: %s", path, err);
}

static void expect_nic(const duet__topo_t *t, int i, const char *name, int kind, int numa,
                       const char *cpus, const char *pci) {
  cr_assert_lt(i, t->nnics, "NIC %d missing (%d NICs)", i, t->nnics);
  cr_expect_str_eq(t->nics[i].name, name, "NIC %d", i);
  cr_expect_eq(t->nics[i].kind, kind, "%s kind", name);
  cr_expect_eq(t->nics[i].numa, numa, "%s numa", name);
  cr_expect_str_eq(t->nics[i].cpuset, cpus, "%s cpus", name);
  cr_expect_str_eq(t->nics[i].pci, pci, "%s pci", name);
}

Test(topo, two_socket_counts_and_nics) {
  duet__topo_t t;
  load(&t, "two_socket.xml");
  cr_expect_str_eq(t.hostname, "node-a");
  cr_expect_eq(t.npackages, 2);
  cr_expect_eq(t.nnuma, 2);
  cr_expect_eq(t.ncores, 8);
  cr_expect_eq(t.npus, 16);
  /* An XML topology is another host: the whole machine, unbound. */
  cr_expect_str_eq(t.cpuset, "0-15");
  cr_expect_str_eq(t.nodeset, "0-1");
  cr_expect_eq(t.bound, 0);
  cr_expect_eq(t.numa, -1);
  /* The NVMe block device is not a NIC. */
  cr_assert_eq(t.nnics, 3);
  expect_nic(&t, 0, "eth0", DUET_TOPO_NIC_NET, 0, "0-7", "0000:01:00.0");
  expect_nic(&t, 1, "ib0", DUET_TOPO_NIC_NET, 1, "8-15", "0000:81:00.0");
  expect_nic(&t, 2, "mlx5_0", DUET_TOPO_NIC_OPENFABRICS, 1, "8-15", "0000:81:00.0");
  duet__topo_free(&t);
  cr_expect_null(t.nics);
  cr_expect_eq(t.nnics, 0);
}

Test(topo, two_socket_nic_near) {
  duet__topo_t t;
  load(&t, "two_socket.xml");
  cr_assert_not_null(duet__topo_nic_near(&t, 0));
  cr_expect_str_eq(duet__topo_nic_near(&t, 0)->name, "eth0");
  cr_assert_not_null(duet__topo_nic_near(&t, 1));
  cr_expect_str_eq(duet__topo_nic_near(&t, 1)->name, "ib0");
  cr_expect_null(duet__topo_nic_near(&t, 2));
  cr_assert_not_null(duet__topo_nic_near(&t, -1));
  cr_expect_str_eq(duet__topo_nic_near(&t, -1)->name, "eth0");
  duet__topo_free(&t);
}

Test(topo, four_numa_nodes_per_group) {
  duet__topo_t t;
  load(&t, "four_numa.xml");
  cr_expect_str_eq(t.hostname, "node-b");
  cr_expect_eq(t.npackages, 2);
  cr_expect_eq(t.nnuma, 4);
  cr_expect_eq(t.ncores, 8);
  cr_expect_eq(t.npus, 8);
  cr_assert_eq(t.nnics, 3);
  expect_nic(&t, 0, "mlx5_0", DUET_TOPO_NIC_OPENFABRICS, 1, "2-3", "0000:41:00.0");
  expect_nic(&t, 1, "mlx5_1", DUET_TOPO_NIC_OPENFABRICS, 3, "6-7", "0000:c1:00.0");
  /* On the machine, near every node and so local to none. */
  expect_nic(&t, 2, "eno1", DUET_TOPO_NIC_NET, -1, "0-7", "0000:02:00.0");
  cr_expect_null(duet__topo_nic_near(&t, 0));
  cr_assert_not_null(duet__topo_nic_near(&t, 1));
  cr_expect_str_eq(duet__topo_nic_near(&t, 1)->name, "mlx5_0");
  cr_expect_null(duet__topo_nic_near(&t, 2));
  cr_assert_not_null(duet__topo_nic_near(&t, 3));
  cr_expect_str_eq(duet__topo_nic_near(&t, 3)->name, "mlx5_1");
  duet__topo_free(&t);
}

Test(topo, laptop_without_nics) {
  duet__topo_t t;
  load(&t, "laptop.xml");
  cr_expect_str_eq(t.hostname, "laptop");
  cr_expect_eq(t.npackages, 0);
  cr_expect_eq(t.nnuma, 1);
  cr_expect_eq(t.ncores, 2);
  cr_expect_eq(t.npus, 2);
  cr_expect_eq(t.nnics, 0);
  cr_expect_null(duet__topo_nic_near(&t, 0));
  cr_expect_null(duet__topo_nic_near(&t, -1));
  duet__topo_free(&t);
}

Test(topo, print) {
  duet__topo_t t;
  char *text = NULL;
  size_t len = 0;
  FILE *f;
  load(&t, "two_socket.xml");
  f = open_memstream(&text, &len);
  cr_assert_not_null(f);
  duet__topo_print(&t, f);
  fclose(f);
  cr_expect(strstr(text, "host node-a: 2 packages, 2 NUMA nodes, 8 cores, 16 PUs") != NULL, "%s",
            text);
  cr_expect(strstr(text, "cpus 0-15, numa unbound") != NULL, "%s", text);
  cr_expect(strstr(text, "mlx5_0") != NULL && strstr(text, "openfabrics") != NULL, "%s", text);
  cr_expect(strstr(text, "0000:81:00.0") != NULL, "%s", text);
  free(text);
  duet__topo_free(&t);
}

Test(topo, missing_file_is_a_clean_error) {
  duet__topo_t t;
  char err[DUET_TOPO_ERRLEN] = "";
  const char *path = TOPO_XML_DIR "/no_such_topology.xml";
  cr_expect_eq(duet__topo_discover(&t, path, err), DUET_ERR_SYSTEM);
  cr_expect(strstr(err, "no_such_topology.xml") != NULL, "message does not name the file: %s", err);
  cr_expect_eq(t.nnics, 0);
  duet__topo_free(&t); /* safe after a failure */
}

static void expect_garbage_fails(const char *content) {
  duet__topo_t t;
  char err[DUET_TOPO_ERRLEN] = "";
  char path[] = "/tmp/duet_topo_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
  close(fd);
  cr_expect_eq(duet__topo_discover(&t, path, err), DUET_ERR_SYSTEM, "'%s' accepted", content);
  cr_expect_neq(err[0], '\0');
  cr_expect(strstr(err, path) != NULL, "message does not name the file: %s", err);
  duet__topo_free(&t);
  unlink(path);
}

Test(topo, garbage_is_a_clean_error) {
  expect_garbage_fails("this is not a topology\n");
  expect_garbage_fails("");
  expect_garbage_fails("<?xml version=\"1.0\"?>\n<html><body>hi</body></html>\n");
}

Test(topo, this_host) {
  duet__topo_t t;
  char err[DUET_TOPO_ERRLEN] = "", host[256] = "";
  cr_assert_eq(duet__topo_discover(&t, NULL, err), DUET_SUCCESS, "%s", err);
  cr_expect_geq(t.ncores, 1);
  cr_expect_geq(t.npus, t.ncores);
  cr_expect_geq(t.nnuma, 1);
  cr_assert_not_null(t.cpuset);
  cr_expect_neq(t.cpuset[0], '\0');
  gethostname(host, sizeof(host) - 1);
  cr_expect_str_eq(t.hostname, host);
  for (int i = 0; i < t.nnics; i++)
    cr_expect_neq(t.nics[i].name[0], '\0');
  /* The core's count still works and never exceeds the machine. */
  cr_expect_geq(duet__topo_ncores(), 1);
  cr_expect_leq(duet__topo_ncores(), t.ncores);
  duet__topo_free(&t);
}

/* Bound to one cpu (every thread; Criterion runs each test in its own
 * process), this process reports that cpu and its NUMA node. */
Test(topo, this_host_bound_to_one_cpu) {
  duet__topo_t t;
  char err[DUET_TOPO_ERRLEN] = "", want[32];
  hwloc_topology_t topo;
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  hwloc_obj_t pu, node;
  int cpu;

  cr_assert_eq(hwloc_topology_init(&topo), 0);
  cr_assert_eq(hwloc_topology_load(topo), 0);
  cr_assert_eq(hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS), 0);
  if (hwloc_bitmap_weight(set) < 2) {
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
    cr_skip_test("this process may use a single cpu; binding would change nothing");
  }
  cpu = hwloc_bitmap_last(set);
  pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
  cr_assert_not_null(pu);
  /* NUMA nodes hang beside the cpus in hwloc 2: the one whose cpus hold it. */
  node = NULL;
  while ((node = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, node)) != NULL)
    if (hwloc_bitmap_isset(node->cpuset, (unsigned)cpu))
      break;
  cr_assert_not_null(node);
  hwloc_bitmap_only(set, (unsigned)cpu);
  cr_assert_eq(hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS), 0);

  cr_assert_eq(duet__topo_discover(&t, NULL, err), DUET_SUCCESS, "%s", err);
  snprintf(want, sizeof(want), "%d", cpu);
  cr_expect_str_eq(t.cpuset, want);
  cr_expect_eq(t.bound, 1);
  cr_expect_eq(t.numa, (int)node->os_index);
  /* A rank's own binding does not shrink the host: the oversubscription
   * test compares ranks with the cores the job may use on this host. */
  cr_expect_eq(duet__topo_ncores(), t.ncores, "ncores %d, host has %d", duet__topo_ncores(),
               t.ncores);
  duet__topo_free(&t);
  hwloc_bitmap_free(set);
  hwloc_topology_destroy(topo);
}

/* ---- placement on an oversubscribed host (place.c) ---- */

static cpu_set_t mask_of(int ncpus) {
  cpu_set_t m;
  CPU_ZERO(&m);
  for (int c = 0; c < ncpus; c++)
    CPU_SET(c, &m);
  return m;
}

/* The rank of a crowded CPU that moves, for a turn, or -1 for none. */
static int mover(const int *cpu, int n, const cpu_set_t *m, uint64_t turn, int *to) {
  int who = -1;
  for (int r = 0; r < n; r++) {
    int c = duet__place_pick(cpu, n, r, m, turn);
    if (c >= 0) {
      cr_expect_eq(who, -1, "turn %llu: ranks %d and %d both move", (unsigned long long)turn, who,
                   r);
      who = r;
      *to = c;
    }
  }
  return who;
}

/* Three ranks on CPU 0 and one on CPU 1: exactly one of the three moves,
 * to CPU 1, each of them in turn; after it, nobody does. */
Test(topo, place_three_plus_one_moves_one) {
  cpu_set_t m = mask_of(2);
  int cpu[4] = {0, 0, 1, 0}, to = -1;
  const int expect[3] = {0, 1, 3};
  for (uint64_t turn = 0; turn < 6; turn++) {
    cr_expect_eq(mover(cpu, 4, &m, turn, &to), expect[turn % 3], "turn %llu",
                 (unsigned long long)turn);
    cr_expect_eq(to, 1);
  }
  cpu[3] = 1;
  for (uint64_t turn = 0; turn < 4; turn++)
    cr_expect_eq(mover(cpu, 4, &m, turn, &to), -1, "a rank moves from an even placement");
}

/* All on one CPU: one moves, to the lowest emptiest CPU. */
Test(topo, place_all_on_one_cpu) {
  cpu_set_t m = mask_of(3);
  int cpu[6] = {2, 2, 2, 2, 2, 2}, to = -1;
  cr_expect_eq(mover(cpu, 6, &m, 11, &to), 5);
  cr_expect_eq(to, 0);
}

/* No more ranks than CPUs: the scheduler has idle CPUs to balance with. */
Test(topo, place_not_oversubscribed) {
  cpu_set_t m = mask_of(4);
  int cpu[4] = {0, 0, 0, 0}, to = -1;
  cr_expect_eq(mover(cpu, 4, &m, 0, &to), -1);
}

/* Only CPUs of the mask are targets, a rank outside its mask stays, and
 * ranks whose CPU is unknown (-1) are not counted. */
Test(topo, place_respects_the_mask) {
  cpu_set_t m;
  int to = -1;
  CPU_ZERO(&m);
  CPU_SET(1, &m);
  CPU_SET(3, &m);
  int even[5] = {1, 1, 1, 3, 3};
  cr_expect_eq(mover(even, 5, &m, 0, &to), -1, "3 against 2 is even enough");
  int crowd[5] = {1, 1, 1, 1, 3};
  cr_expect_eq(mover(crowd, 5, &m, 2, &to), 2);
  cr_expect_eq(to, 3, "never CPU 0 or 2, outside the mask");
  int outside[5] = {1, 3, 0, 0, 0};
  cr_expect_eq(mover(outside, 5, &m, 0, &to), -1, "ranks outside their mask stay");
  int unknown[5] = {1, 1, -1, -1, 3};
  cr_expect_eq(mover(unknown, 5, &m, 0, &to), -1, "2 against 1 with 2 unknown");
}
/* This process's CPU as /proc tells it: one of those it may run on. */
Test(topo, place_proc_cpu_of_self) {
  cpu_set_t m;
  cr_assert(sched_getaffinity(0, sizeof(m), &m) == 0);
  int c = duet__place_proc_cpu((int)getpid());
  cr_expect(c >= 0 && c < CPU_SETSIZE && CPU_ISSET(c, &m), "cpu %d", c);
  cr_expect_eq(duet__place_proc_cpu(-5), -1);
}

/* A process's start time names it while it lives: this process's is the
 * same read as "self" or by pid, a child's differs or is 0 once it has
 * ended (a zombie counts as ended), and no pid has one after it is reaped. */
Test(topo, proc_start_names_a_live_process) {
  uint64_t me = duet__proc_start(0);
  int fds[2];
  char c;
  pid_t kid;
  cr_assert_neq(me, 0u);
  cr_expect_eq(duet__proc_start((int)getpid()), me);
  cr_expect_eq(duet__proc_start(-5), 0u);
  cr_assert_eq(pipe(fds), 0);
  kid = fork();
  cr_assert_geq(kid, 0);
  if (kid == 0) { /* waits until the parent closes the pipe */
    close(fds[1]);
    _exit(read(fds[0], &c, 1) < 0);
  }
  close(fds[0]);
  cr_expect_neq(duet__proc_start((int)kid), 0u, "a live child has a start time");
  close(fds[1]); /* the child ends: a zombie until reaped */
  for (int i = 0; i < 200 && duet__proc_start((int)kid) != 0; i++)
    usleep(5000);
  cr_expect_eq(duet__proc_start((int)kid), 0u, "an ended (zombie) child has none");
  cr_assert_eq(waitpid(kid, NULL, 0), kid);
  cr_expect_eq(duet__proc_start((int)kid), 0u, "a reaped child has none");
}

/* A process out of file descriptors cannot read /proc: it must say it
 * cannot tell, not that the process is gone (which would fail a
 * communicator whose peers are all alive). */
Test(topo, proc_start_unknown_is_not_gone) {
  struct rlimit old, low;
  int fds[64], n = 0;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 32;
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  while (n < 64 && (fds[n] = dup(0)) >= 0)
    n++;
  cr_assert_lt(n, 64, "the descriptors did not run out");
  cr_expect_eq(duet__proc_start((int)getpid()), DUET_PROC_UNKNOWN);
  while (n > 0)
    close(fds[--n]);
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  cr_expect_neq(duet__proc_start((int)getpid()), DUET_PROC_UNKNOWN);
}

/* /proc/loadavg's runnable count, and text that is not loadavg. */
Test(topo, place_loadavg_running) {
  cr_expect_eq(duet__place_loadavg_running("0.52 0.58 0.59 3/467 12345\n"), 3);
  cr_expect_eq(duet__place_loadavg_running("12.00 8.10 4.05 17/1024 1"), 17);
  cr_expect_eq(duet__place_loadavg_running("0.00 0.00 0.00 0/1 1"), 0);
  cr_expect_eq(duet__place_loadavg_running(NULL), -1);
  cr_expect_eq(duet__place_loadavg_running(""), -1);
  cr_expect_eq(duet__place_loadavg_running("0.52 0.58 0.59 3 467"), -1);
  cr_expect_eq(duet__place_loadavg_running("0.52 0.58 0.59 9/4 1"), -1, "more running than exist");
  cr_expect_eq(duet__place_loadavg_running("0.52 0.58 0.59 -2/4 1"), -1);
}

/* On a host busy with other work a rank does not move: pinned to one CPU
 * it could starve there (place.c). Busy children keep more threads
 * runnable than a job of one rank and one more; the move must refuse and
 * leave this thread's mask as it was. */
Test(topo, place_move_refuses_on_a_busy_host) {
  enum { BUSY = 6 };
  pid_t kids[BUSY];
  cpu_set_t before, after;
  int target, rc = -2;

  cr_assert(sched_getaffinity(0, sizeof(before), &before) == 0);
  target = sched_getcpu();
  for (int i = 0; i < BUSY; i++) {
    kids[i] = fork();
    cr_assert(kids[i] >= 0);
    if (kids[i] == 0)
      for (;;)
        __asm__ __volatile__("" ::: "memory");
  }
  /* the children are runnable as soon as they exist; a few tries cover a
   * /proc/loadavg read that raced their start */
  for (int tries = 0; tries < 50 && rc != 1; tries++) {
    usleep(10000);
    rc = duet__place_move(target, &before, 1);
  }
  for (int i = 0; i < BUSY; i++)
    kill(kids[i], SIGKILL);
  for (int i = 0; i < BUSY; i++)
    waitpid(kids[i], NULL, 0);
  cr_expect_eq(rc, 1, "moved (%d) with %d busy processes on the host", rc, BUSY);
  cr_assert(sched_getaffinity(0, sizeof(after), &after) == 0);
  cr_expect(CPU_EQUAL(&before, &after), "the mask changed");
}

/* Discovery must not talk to X servers: hwloc's "gl" plugin connects to
 * display :0 (TCP port 6000 when there is no X socket) and waits forever
 * for an answer from whatever listens there without speaking X. Here a
 * socket listens on 127.0.0.1:6000 and never answers (or, if the port is
 * taken, something else does); discovery in a child must end within 10 s. */
Test(topo, discovery_asks_no_x_display, .timeout = 60) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(6000)};
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, status = 0;
  pid_t kid;
  cr_assert_geq(s, 0);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  (void)setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(s, (struct sockaddr *)&a, sizeof(a)) == 0)
    cr_assert_eq(listen(s, 8), 0);
  kid = fork();
  cr_assert_geq(kid, 0);
  if (kid == 0) {
    duet__topo_t t;
    char err[DUET_TOPO_ERRLEN];
    alarm(10);
    _exit(duet__topo_discover(&t, NULL, err) == DUET_SUCCESS ? 0 : 1);
  }
  cr_assert_eq(waitpid(kid, &status, 0), kid);
  close(s);
  cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "discovery %s", WIFSIGNALED(status) ? "hung (killed after 10 s)" : "failed");
}
