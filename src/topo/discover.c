/*
 * discover.c - what this host looks like, through hwloc. Issue-level note:
 * the first use is counting the cores this process may use, so progress
 * knows when ranks outnumber cores and must yield.
 */
#include <hwloc.h>
#include <sched.h>
#include <unistd.h>

#include "core/log.h"
#include "topo/topo.h"

int duet__topo_ncores(void) {
  hwloc_topology_t topo;
  hwloc_bitmap_t set;
  int n = -1;

  if (hwloc_topology_init(&topo) == 0) {
    if (hwloc_topology_load(topo) == 0) {
      set = hwloc_bitmap_alloc();
      /* The cores this process is bound to (all when unbound). */
      if (set != NULL && hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) == 0) {
        int cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE);
        int pus = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_PU);
        n = cores > 0 ? cores : pus;
      }
      hwloc_bitmap_free(set);
    }
    hwloc_topology_destroy(topo);
  }
  if (n <= 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    n = c > 0 ? (int)c : 1;
    DUET_INFO(DUET_SUB_TOPO, "hwloc gave no core count; using sysconf: %d", n);
  }
  return n;
}
