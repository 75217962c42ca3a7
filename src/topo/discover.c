/*
 * discover.c - what this host looks like, through hwloc: packages, NUMA
 * nodes, cores and PUs, the cpus this process may run on and the NUMA nodes
 * they belong to, and the network devices (hwloc OS devices of type network
 * or OpenFabrics) with the NUMA node and cpus each is near. duet binds
 * nothing; it reports. Unit tests load hand-written XML topologies instead
 * of this host.
 */
#include <errno.h>
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "topo/topo.h"

int duet__topo_ncores(void) {
  hwloc_topology_t topo;
  hwloc_bitmap_t set;
  int n = -1;

  if (hwloc_topology_init(&topo) == 0) {
    if (hwloc_topology_load(topo) == 0) {
      /* The cores this host lets the job use (a container's cpuset, not one
       * process's binding: a launcher that binds each rank to its own core
       * is not oversubscribing). */
      set = hwloc_bitmap_dup(hwloc_topology_get_allowed_cpuset(topo));
      if (set != NULL) {
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

/* The one NUMA node (OS index) a nodeset names, -1 for none or several. */
static int duet__topo_single_node(hwloc_const_nodeset_t nodeset) {
  return nodeset != NULL && hwloc_bitmap_weight(nodeset) == 1 ? hwloc_bitmap_first(nodeset) : -1;
}

/* Where this process may run: its binding on this host, the whole machine
 * for an XML topology (which describes some other host). */
static duet_status_t duet__topo_locate(hwloc_topology_t topo, int thissystem, duet__topo_t *t,
                                       char *errbuf) {
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
  duet_status_t rc = DUET_ERR_NO_MEMORY;

  if (set == NULL || nodes == NULL) {
    snprintf(errbuf, DUET_TOPO_ERRLEN, "hwloc_bitmap_alloc: out of memory");
    goto out_free_bitmaps;
  }
  if (!thissystem || hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0 ||
      hwloc_bitmap_iszero(set)) {
    if (thissystem)
      DUET_INFO(DUET_SUB_TOPO, "hwloc_get_cpubind: %s; reporting the whole machine",
                strerror(errno));
    if (hwloc_bitmap_copy(set, allowed) != 0)
      goto out_free_bitmaps;
  }
  /* Only the cpus hwloc knows (the binding may name offline ones). */
  if (hwloc_bitmap_and(set, set, allowed) != 0)
    goto out_free_bitmaps;
  t->bound = !hwloc_bitmap_isincluded(allowed, set);
  if (hwloc_cpuset_to_nodeset(topo, set, nodes) != 0)
    goto out_free_bitmaps;
  t->numa = t->bound ? duet__topo_single_node(nodes) : -1;
  if (hwloc_bitmap_list_asprintf(&t->cpuset, set) < 0 ||
      hwloc_bitmap_list_asprintf(&t->nodeset, nodes) < 0) {
    snprintf(errbuf, DUET_TOPO_ERRLEN, "hwloc_bitmap_list_asprintf: out of memory");
    goto out_free_bitmaps;
  }
  rc = DUET_SUCCESS;
out_free_bitmaps:
  if (rc != DUET_SUCCESS && errbuf[0] == '\0')
    snprintf(errbuf, DUET_TOPO_ERRLEN, "hwloc bitmap: out of memory");
  hwloc_bitmap_free(nodes);
  hwloc_bitmap_free(set);
  return rc;
}

/* Every OS device of type network or OpenFabrics, with its locality. */
static duet_status_t duet__topo_find_nics(hwloc_topology_t topo, duet__topo_t *t, char *errbuf) {
  hwloc_obj_t os = NULL;
  int n = 0;

  while ((os = hwloc_get_next_osdev(topo, os)) != NULL)
    if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK ||
        os->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS)
      n++;
  if (n == 0)
    return DUET_SUCCESS;
  t->nics = calloc((size_t)n, sizeof(*t->nics));
  if (t->nics == NULL) {
    snprintf(errbuf, DUET_TOPO_ERRLEN, "out of memory for %d NICs", n);
    return DUET_ERR_NO_MEMORY;
  }
  while ((os = hwloc_get_next_osdev(topo, os)) != NULL && t->nnics < n) {
    duet__topo_nic_t *nic = &t->nics[t->nnics];
    hwloc_obj_t near;
    if (os->attr->osdev.type != HWLOC_OBJ_OSDEV_NETWORK &&
        os->attr->osdev.type != HWLOC_OBJ_OSDEV_OPENFABRICS)
      continue;
    snprintf(nic->name, sizeof(nic->name), "%s", os->name != NULL ? os->name : "?");
    nic->kind = os->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS ? DUET_TOPO_NIC_OPENFABRICS
                                                                    : DUET_TOPO_NIC_NET;
    if (os->parent != NULL && os->parent->type == HWLOC_OBJ_PCI_DEVICE) {
      const struct hwloc_pcidev_attr_s *pci = &os->parent->attr->pcidev;
      snprintf(nic->pci, sizeof(nic->pci), "%04x:%02x:%02x.%01x", pci->domain & 0xffffu, pci->bus,
               pci->dev & 0x1fu, pci->func & 0x7u);
    }
    /* Its locality is that of the first CPU-side object above it. */
    near = hwloc_get_non_io_ancestor_obj(topo, os);
    if (near == NULL)
      near = hwloc_get_root_obj(topo);
    nic->numa = duet__topo_single_node(near->nodeset);
    if (hwloc_bitmap_list_asprintf(&nic->cpuset, near->cpuset) < 0) {
      snprintf(errbuf, DUET_TOPO_ERRLEN, "hwloc_bitmap_list_asprintf: out of memory");
      return DUET_ERR_NO_MEMORY;
    }
    t->nnics++;
  }
  return DUET_SUCCESS;
}

duet_status_t duet__topo_discover(duet__topo_t *t, const char *xml_path, char *errbuf) {
  hwloc_topology_t topo;
  const char *what;
  const char *host;
  int cores, err;
  duet_status_t rc;

  if (t == NULL || errbuf == NULL)
    return DUET_ERR_INVALID_ARGUMENT;
  duet__log_init(); /* DUET_DEBUG applies also before any communicator exists */
  memset(t, 0, sizeof(*t));
  t->numa = -1;
  errbuf[0] = '\0';
  if (hwloc_topology_init(&topo) != 0) {
    snprintf(errbuf, DUET_TOPO_ERRLEN, "hwloc_topology_init: %s", strerror(errno));
    rc = DUET_ERR_SYSTEM;
    goto out_log;
  }
  errno = 0;
  what = "hwloc_topology_set_io_types_filter";
  if (hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT) != 0)
    goto out_hwloc_error;
  what = "hwloc_topology_set_xml";
  if (xml_path != NULL && hwloc_topology_set_xml(topo, xml_path) != 0)
    goto out_hwloc_error;
#if defined(__linux__) && HWLOC_API_VERSION >= 0x00020100
  /* On Linux hwloc's own sysfs scan finds the PCI devices and their NICs; its
   * libpciaccess-based "pci" plugin finds nothing more and leaks at unload,
   * which fails every LeakSanitizer run. The "gl" plugin asks X servers
   * about their GPUs, display :0 and on: where anything listens on TCP port
   * 6000 and up without speaking X, it waits forever (duet_info hung in CI
   * that way); duet wants no display. Nor OpenCL devices. Not fatal if hwloc
   * lacks any of them. */
  if (xml_path == NULL) {
    (void)hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
    (void)hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "gl");
    (void)hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "opencl");
  }
#endif
  what = "hwloc_topology_load";
  if (hwloc_topology_load(topo) != 0)
    goto out_hwloc_error;

  host = hwloc_obj_get_info_by_name(hwloc_get_root_obj(topo), "HostName");
  if (xml_path == NULL && gethostname(t->hostname, sizeof(t->hostname)) == 0)
    t->hostname[sizeof(t->hostname) - 1] = '\0';
  else
    snprintf(t->hostname, sizeof(t->hostname), "%s", host != NULL ? host : "unknown");
  t->npackages = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE);
  t->nnuma = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  t->npus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
  cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  t->ncores = cores > 0 ? cores : t->npus; /* no core level: a PU is a core */

  rc = duet__topo_locate(topo, xml_path == NULL, t, errbuf);
  if (rc == DUET_SUCCESS)
    rc = duet__topo_find_nics(topo, t, errbuf);
  hwloc_topology_destroy(topo);
  if (rc != DUET_SUCCESS)
    goto out_log;
  DUET_INFO(DUET_SUB_TOPO,
            "%s%s: %d packages, %d NUMA nodes, %d cores, %d PUs; cpus %s (%s); %d NICs",
            xml_path != NULL ? "XML topology " : "host ", xml_path != NULL ? xml_path : t->hostname,
            t->npackages, t->nnuma, t->ncores, t->npus, t->cpuset, t->bound ? "bound" : "unbound",
            t->nnics);
  return DUET_SUCCESS;

out_hwloc_error:
  err = errno;
  snprintf(errbuf, DUET_TOPO_ERRLEN, "%s(%s): %s%s", what,
           xml_path != NULL ? xml_path : "this host", err != 0 ? strerror(err) : "failed",
           xml_path != NULL && err == EINVAL ? " (not an hwloc XML topology; HWLOC_XML_VERBOSE=1 "
                                               "makes hwloc say why)"
                                             : "");
  hwloc_topology_destroy(topo);
  rc = DUET_ERR_SYSTEM;
out_log:
  DUET_WARN(DUET_SUB_TOPO, "topology discovery failed: %s", errbuf);
  return rc;
}

void duet__topo_free(duet__topo_t *t) {
  if (t == NULL)
    return;
  for (int i = 0; i < t->nnics; i++)
    free(t->nics[i].cpuset);
  free(t->nics);
  free(t->cpuset);
  free(t->nodeset);
  memset(t, 0, sizeof(*t));
  t->numa = -1;
}

const duet__topo_nic_t *duet__topo_nic_near(const duet__topo_t *t, int numa) {
  if (t == NULL || t->nnics == 0)
    return NULL;
  if (numa < 0)
    return &t->nics[0];
  for (int i = 0; i < t->nnics; i++)
    if (t->nics[i].numa == numa)
      return &t->nics[i];
  return NULL;
}

void duet__topo_print(const duet__topo_t *t, FILE *out) {
  fprintf(out, "host %s: %d packages, %d NUMA nodes, %d cores, %d PUs\n", t->hostname, t->npackages,
          t->nnuma, t->ncores, t->npus);
  fprintf(out, "  this process: cpus %s, ", t->cpuset != NULL ? t->cpuset : "?");
  if (!t->bound)
    fprintf(out, "numa unbound\n");
  else if (t->numa >= 0)
    fprintf(out, "numa %d (bound)\n", t->numa);
  else
    fprintf(out, "numa %s (bound across nodes)\n", t->nodeset != NULL ? t->nodeset : "?");
  fprintf(out, "  NICs: %d\n", t->nnics);
  for (int i = 0; i < t->nnics; i++) {
    const duet__topo_nic_t *nic = &t->nics[i];
    char numa[16];
    if (nic->numa >= 0)
      snprintf(numa, sizeof(numa), "%d", nic->numa);
    else
      snprintf(numa, sizeof(numa), "-");
    fprintf(out, "    %-12s %-11s numa %-3s cpus %-12s pci %s\n", nic->name,
            nic->kind == DUET_TOPO_NIC_OPENFABRICS ? "openfabrics" : "net", numa,
            nic->cpuset != NULL ? nic->cpuset : "?", nic->pci[0] != '\0' ? nic->pci : "-");
  }
}
