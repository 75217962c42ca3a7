/*
 * topo.h - this host's topology (hwloc) and the communicator's super-nodes.
 */
#ifndef DUET_TOPO_H
#define DUET_TOPO_H

#include <sched.h>
#include <stdint.h>
#include <stdio.h>

#include "duet.h"

/* Number of cores this process may run on (hwloc; falls back to sysconf). */
/* Cores the job may use on this host (the allowed cpuset; falls back to
 * sysconf). Ranks beyond this count oversubscribe the host. */
int duet__topo_ncores(void);

/* Placement on an oversubscribed host (place.c). cpu[r] is the CPU rank r
 * of n last ran on (-1 unknown), me this rank, mask the CPUs it may run on,
 * turn a number every rank computes alike at a check (the call count, or
 * the clock over the check period). Returns the CPU this rank should move
 * to, or -1. Only when there are more ranks than CPUs and this rank's CPU
 * holds at least two more ranks than some other CPU of the mask; then one
 * of its ranks moves, which one turning with `turn`. */
int duet__place_pick(const int *cpu, int n, int me, const cpu_set_t *mask, uint64_t turn);
/* Move the calling thread to `target`, then give it `mask` back, but only
 * while the host runs nothing but the job: at most nranks + 1 threads
 * runnable (/proc/loadavg). 0: moved; 1: the host is busy, not moved; -1:
 * the move failed. */
int duet__place_move(int target, const cpu_set_t *mask, int nranks);
/* Threads runnable on the host now (/proc/loadavg), or -1. A test of the
 * placement itself replaces it, to place its ranks as on a quiet host. */
extern int (*duet__place_running)(void);
/* Threads runnable on the host now, from /proc/loadavg text
 * ("0.12 0.10 0.05 3/245 1234" -> 3), or -1 if the text is not that. */
int duet__place_loadavg_running(const char *text);
/* The CPU process `pid` last ran on, from /proc, or -1. */
int duet__place_proc_cpu(int pid);
/* When process pid (0: this one) started, in clock ticks since boot
 * (/proc/<pid>/stat); 0 when there is no such process or it has ended (a
 * zombie not yet reaped); DUET_PROC_UNKNOWN when this process cannot tell
 * (out of file descriptors, ...). With the pid it names one process: pids
 * are reused, start times with them are not. */
#define DUET_PROC_UNKNOWN UINT64_MAX
uint64_t duet__proc_start(int pid);

/* --- This host's topology: cores, NUMA nodes, network devices and where they
 * sit. duet pins nothing; it reports locality so a rank (or duet_info) can
 * see which NIC is near it, and later rail/NIC choice can use it. --- */

#define DUET_TOPO_ERRLEN 256 /* size of duet__topo_discover's errbuf */

enum { DUET_TOPO_NIC_NET = 0, DUET_TOPO_NIC_OPENFABRICS = 1 };

/* One network device: an hwloc OS device of type network ("eth0", "ib0") or
 * OpenFabrics ("mlx5_0"). */
typedef struct duet__topo_nic {
  char name[64];
  int kind;     /* DUET_TOPO_NIC_NET or DUET_TOPO_NIC_OPENFABRICS */
  int numa;     /* OS index of the one NUMA node it is local to; -1 when its
                   locality spans several nodes (or none) */
  char *cpuset; /* the cpus near it, as a list ("8-15"); owned */
  char pci[16]; /* PCI bus id of its device ("0000:81:00.0"), "" if unknown */
} duet__topo_nic_t;

typedef struct duet__topo {
  /* This host's name; for an XML topology, its HostName ("unknown" if none). */
  char hostname[256];
  /* The whole machine (the part this process is allowed to use). */
  int npackages, nnuma, ncores, npus;
  /* Where this process may run: its cpus and their NUMA nodes as lists
   * ("0-15", "0-1"; owned); bound is 1 when that is less than the machine;
   * numa is the NUMA node (OS index) it is bound to, -1 when it is unbound
   * (printed "unbound") or bound across several nodes. */
  char *cpuset, *nodeset;
  int bound, numa;
  /* Network devices in hwloc's (PCI) order; owned. */
  int nnics;
  duet__topo_nic_t *nics;
} duet__topo_t;

/* Discover this host (xml_path NULL; I/O devices included) or load an hwloc
 * 2.x XML topology (a path; the process's binding is then not known and the
 * whole machine is reported, unbound). Fills *t, which the caller frees with
 * duet__topo_free, also after a failure (a cleared *t is safe to free).
 * Errors: DUET_ERR_SYSTEM with hwloc's reason in errbuf (DUET_TOPO_ERRLEN
 * bytes), DUET_ERR_NO_MEMORY, DUET_ERR_INVALID_ARGUMENT. Blocks while hwloc
 * reads /sys; any thread may call it. */
duet_status_t duet__topo_discover(duet__topo_t *t, const char *xml_path, char *errbuf);
void duet__topo_free(duet__topo_t *t);

/* The first NIC local to NUMA node numa (OS index), NULL when there is none.
 * numa < 0 (an unbound process): the first NIC of all, NULL when none. */
const duet__topo_nic_t *duet__topo_nic_near(const duet__topo_t *t, int numa);

/* Human-readable summary, as duet_info prints it. */
void duet__topo_print(const duet__topo_t *t, FILE *out);

/* What each rank tells the others in the first bootstrap round. */
/* Settings every rank must share (they decide each call's algorithm and
 * schedule), in the order of duet__agree_names in comm.c. */
#define DUET_AGREE_COUNT 9

typedef struct duet__rank_info {
  char host[64];
  char supernode[128];
  int32_t ncores;
  int32_t pid;
  uint64_t start;   /* duet__proc_start(0) */
  uint64_t machine; /* this kernel (its boot id), hashed; 0: unknown */
  uint64_t shm;     /* the machine and the /dev/shm this rank sees (its device), hashed */
  uint64_t agree[DUET_AGREE_COUNT]; /* a hash of each such setting */
} duet__rank_info_t;

/* FNV-1a over n bytes, continuing from h (DUET_FNV1A_BASIS to start). */
#define DUET_FNV1A_BASIS 1469598103934665603ull
uint64_t duet__fnv1a(uint64_t h, const void *p, size_t n);

/* Fill info->machine and info->shm for this process. Two ranks with one
 * host name are on one machine only if their kernels' boot ids match (two
 * hosts may share a name), and share memory only if they also see one
 * /dev/shm (containers of one host each have their own, unless run with
 * the host's IPC namespace). */
void duet__host_ids(duet__rank_info_t *info);
/* Same host name and kernel: the ranks share CPUs and can see each other's
 * processes (PID namespaces aside). */
int duet__same_machine(const duet__rank_info_t *a, const duet__rank_info_t *b);
/* Same machine and /dev/shm: the ranks can map one shared segment. */
int duet__same_shm(const duet__rank_info_t *a, const duet__rank_info_t *b);

/* The super-node layout derived from every rank's info. */
typedef struct duet__domains {
  int nsupernodes;
  int32_t *supernode;  /* per rank: super-node index, numbered by first rank */
  int32_t *local_rank; /* per rank: index inside its super-node */
  int32_t *local_size; /* per rank: size of its super-node */
  int32_t *host_ranks; /* per rank: ranks on the same machine (duet__same_machine) */
  int one_host;        /* every rank on one host, one /dev/shm (duet__same_shm) */
  int *domain_one_host; /* per super-node: all its ranks on one host, one /dev/shm */
} duet__domains_t;

duet_status_t duet__domains_build(const duet__rank_info_t *info, int nranks,
                                  duet__domains_t *d);
void duet__domains_free(duet__domains_t *d);

#endif
