#!/bin/bash
# run_cluster.sh - duet across emulated hosts, run by `make check`.
#
# Each host is a network namespace of this script's own with two links,
# hpn0 and hpn1 (veth, MTU 9000), to two switches (bridges in one more
# namespace): plane 0 is 10.99.0.0/24, plane 1 10.99.1.0/24, host k has
# .k+1 on each. Nothing outside these namespaces carries a packet, and the
# script deletes them when it ends. Each host also has a bridge docker0 at
# 172.17.0.1, as every host with Docker has, listed before the links.
#
# mpirun starts the ranks on this machine; each rank, right after
# MPI_Init, moves into its host's namespace and into a UTS namespace named
# after the host (mt_enter_host in tests/mpi/mpi_common.h). So duet sees
# what it sees on a cluster: ranks on different hosts by host name (one
# super-node per host, DUET_SUPERNODE unset), no loopback between hosts,
# the bootstrap root on rank 0's hpn0 (DUET_BOOT_IFACE=hpn0), and endpoints
# on the default interface (hpn0, not docker0) or on the planes named by
# DUET_HPN_IFACE. MPI keeps its own shared memory and is the reference.
#
# Runs:
# - the examples that join through duet_comm_init_env (no MPI:
#   DUET_ROOT=10.99.0.1:29500) on hosts of 2+1;
# - mpi_hier (every algorithm of every collective, the hierarchy's traffic
#   bounds) on hosts of 2+2 and 2+1+2, and on 2+2 over DUET_UPN_PROVIDER=tcp
#   DUET_HPN_PROVIDER=tcp (duet's tcp inside a host, over hpn0 too);
# - mpi_alltoall on 2+2; mpi_random (random calls, fixed seeds) on 2+2 and
#   2+1+2, and on 2+2 over libfabric's tcp;ofi_rxm on both networks;
# - with DUET_HPN_IFACE=hpn0,hpn1, mpi_planes on 2+2 twice: host 0's plane-1
#   connections reset in the middle of a call (-k 10.99.1.1), then its
#   plane-1 link set down there (-x: a link that passes nothing, found by
#   probing);
# - mpi_partition on 2+2 with one plane, whose link on host 0 goes down
#   mid-call: every wait fails in bounded time;
# - without DUET_BOOT_IFACE, the rank on host 1 must fail within
#   DUET_TIMEOUT_MS with a message naming DUET_BOOT_IFACE;
# - last, hosts 0 and 1 must have sent traffic on both links.
# DUET_TEST_QUICK=1 (sanitizer builds) runs mpi_hier and mpi_random on 2+2
# only of the third and fourth items.
#
# Needs root (ip netns), iproute2 and mpirun. Env: top_builddir (default .),
# MPIRUN, DUET_TEST_TIMEOUT (seconds per mpirun, default 300).
set -u

builddir=${top_builddir:-.}
hier="$builddir/tests/mpi/mpi_hier"
a2a="$builddir/tests/mpi/mpi_alltoall"
random="$builddir/tests/mpi/mpi_random"
planes="$builddir/tests/mpi/mpi_planes"
partition="$builddir/tests/mpi/mpi_partition"
# shellcheck source=tests/mpi/mpirun_env.sh
. "$(dirname "$0")/../mpi/mpirun_env.sh"
mpi_test_setup cluster 300 "$hier" "$a2a" "$random" "$planes" "$partition" "$builddir/examples/allreduce_env" \
  "$builddir/examples/moe_dispatch" "$builddir/examples/grad_overlap"
# Every MPI peer is on this machine: MPI's shared memory, never a socket
# (a rank's sockets opened after it entered its host would be the host's).
# shellcheck disable=SC2054 # commas inside an option value
mpiopts=(--allow-run-as-root --oversubscribe --mca btl self,vader
         --mca oob_tcp_if_include lo)

passed=0
failed=0
failures=()
result() { # <what> <ok:0|1>
  if [ "$2" = 0 ]; then
    passed=$((passed + 1))
    echo "# passed: $1"
  else
    failed=$((failed + 1))
    failures+=("$1")
    echo "# FAILED: $1"
  fi
}

# ---- the emulated cluster ----
hosts=3
tag=duet$$
sw=${tag}sw
cleanup() {
  local k
  for k in $(seq 0 $((hosts - 1))); do ip netns del "${tag}h$k" 2>/dev/null; done
  ip netns del "$sw" 2>/dev/null
}
trap cleanup EXIT

setup() {
  local k p
  command -v ip >/dev/null || { echo "cluster: ip (iproute2) not found"; return 1; }
  ip netns add "$sw" || { echo "cluster: cannot make a network namespace (needs root)"; return 1; }
  for p in 0 1; do
    ip -n "$sw" link add "br$p" type bridge || return 1
    ip -n "$sw" link set "br$p" up || return 1
  done
  for k in $(seq 0 $((hosts - 1))); do
    ip netns add "${tag}h$k" || return 1
    ip -n "${tag}h$k" link set lo up || return 1
    # Before the links, as on a host with Docker: a bridge with the same
    # address on every host, running (a container's veth on it). The
    # default interface must not be it.
    ip -n "${tag}h$k" link add docker0 type bridge || return 1
    ip -n "${tag}h$k" link add ct0 type veth peer name ct1 || return 1
    ip -n "${tag}h$k" link set ct0 master docker0 up || return 1
    ip -n "${tag}h$k" link set ct1 up || return 1
    ip -n "${tag}h$k" addr add 172.17.0.1/16 dev docker0 || return 1
    ip -n "${tag}h$k" link set docker0 up || return 1
    for p in 0 1; do
      ip link add "hpn$p" netns "${tag}h$k" mtu 9000 type veth \
        peer name "h${k}p$p" netns "$sw" mtu 9000 || return 1
      ip -n "$sw" link set "h${k}p$p" master "br$p" up || return 1
      ip -n "${tag}h$k" addr add "10.99.$p.$((k + 1))/24" dev "hpn$p" || return 1
      ip -n "${tag}h$k" link set "hpn$p" up || return 1
    done
  done
}
if ! setup; then
  echo "cluster: 0 passed, 1 failed (the emulated hosts could not be made)"
  exit 1
fi
export DUET_BOOT_IFACE=hpn0
unset DUET_SUPERNODE DUET_ALGO DUET_UPN_PROVIDER DUET_HPN_PROVIDER DUET_HPN_IFACE DUET_UPN_IFACE

# launch <hosts> <program> [args...]: hosts is the ranks per host, e.g.
# 2,1,2; the environment of the call (VAR=value launch ...) reaches every
# rank. Returns mpirun's status.
launch() {
  local layout=$1 k=0 n apps=() sep='' counts=()
  shift
  IFS=, read -r -a counts <<<"$layout"
  for n in "${counts[@]}"; do
    [ -n "$sep" ] && apps+=(:)
    sep=:
    apps+=(-np "$n" -x "DUET_TEST_NETNS=${tag}h$k" -x "DUET_TEST_HOST=node$k" "$@")
    k=$((k + 1))
  done
  echo "+ timeout $limit $mpirun ${mpiopts[*]} ${apps[*]}"
  mpi_limited "$mpirun" "${mpiopts[@]}" "${apps[@]}"
}

# run <hosts> <program> [args...]: launch, which must succeed.
run() {
  local start=$SECONDS rc=0
  launch "$@" || rc=$?
  result "hosts $1: ${DUET_UPN_PROVIDER:+UPN $DUET_UPN_PROVIDER, }${DUET_HPN_PROVIDER:+HPN $DUET_HPN_PROVIDER, }${DUET_HPN_IFACE:+HPN $DUET_HPN_IFACE, }${*:2} (exit $rc, $((SECONDS - start)) s)" $((rc != 0))
}

# launch_env <hosts> <program>: no MPI; each rank started from this shell
# in its host (ip netns exec, then a UTS namespace named after the host),
# joining through duet_comm_init_env with DUET_ROOT on host 0's hpn0.
launch_env() {
  local layout=$1 prog=$2 k=0 r=0 n size=0 rc=0 counts=() pids=()
  IFS=, read -r -a counts <<<"$layout"
  for n in "${counts[@]}"; do size=$((size + n)); done
  for n in "${counts[@]}"; do
    for _ in $(seq 1 "$n"); do
      echo "+ DUET_RANK=$r DUET_SIZE=$size DUET_ROOT=10.99.0.1:29500 ip netns exec ${tag}h$k" \
        "unshare -u (host node$k) $prog &"
      # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
      DUET_RANK=$r DUET_SIZE=$size DUET_ROOT=10.99.0.1:29500 timeout "$limit" \
        ip netns exec "${tag}h$k" unshare -u sh -c 'hostname "$0" && exec "$@"' "node$k" "$prog" &
      pids+=($!)
      r=$((r + 1))
    done
    k=$((k + 1))
  done
  for n in "${pids[@]}"; do wait "$n" || rc=1; done
  result "hosts $layout, duet_comm_init_env: $prog" $rc
}

for ex in allreduce_env moe_dispatch grad_overlap; do
  launch_env 2,1 "$builddir/examples/$ex"
done
if [ "${DUET_TEST_QUICK:-0}" = 1 ]; then
  run 2,2 "$hier" -q
  run 2,2 "$random" -s 11 -i 150
else
  run 2,2 "$hier" -q
  run 2,1,2 "$hier" -q
  run 2,2 "$a2a" -q
  run 2,2 "$random" -s 11 -i 300
  run 2,1,2 "$random" -s 12 -i 300
  DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp run 2,2 "$hier" -q
  DUET_UPN_PROVIDER="tcp;ofi_rxm" DUET_HPN_PROVIDER="tcp;ofi_rxm" run 2,2 "$random" -s 13 -i 200
fi
DUET_HPN_IFACE=hpn0,hpn1 run 2,2 "$planes" -k 10.99.1.1 -r 4
# Host 0's plane-1 link goes down in the middle of a call. Nothing fails on a socket; the planes' probing finds it.
DUET_HPN_IFACE=hpn0,hpn1 run 2,2 "$planes" -k 10.99.1.1 -x "ip link set hpn1 down" -r 4
ip -n "${tag}h0" link set hpn1 up
# One plane, and host 0's link goes down in the middle of calls: every rank
# must fail each call in bounded time, and none may hang.
DUET_TIMEOUT_MS=3000 run 2,2 "$partition" -x "ip link set hpn0 down"
ip -n "${tag}h0" link set hpn0 up

# Without DUET_BOOT_IFACE, duet_get_unique_id's root listens on rank 0's
# loopback: the ranks on host 1 must fail in time, saying why.
out=$(mktemp)
(unset DUET_BOOT_IFACE; DUET_TIMEOUT_MS=3000 launch 1,1 "$random" -i 1) >"$out" 2>&1
rc=$?
cat "$out"
grep -q "rank 1: timed out after .* bootstrap root at 127.0.0.1.*set DUET_BOOT_IFACE" "$out"
named=$?
result "hosts 1,1 without DUET_BOOT_IFACE: rank 1 fails (exit $rc), naming DUET_BOOT_IFACE" \
  $((rc == 0 || named != 0))
rm -f "$out"

# The traffic between hosts crossed their links: both planes of hosts 0
# and 1 sent data (mpi_planes alone moves 16 MiB allreduces over them).
for k in 0 1; do
  for p in 0 1; do
    b=$(ip netns exec "${tag}h$k" cat "/sys/class/net/hpn$p/statistics/tx_bytes")
    result "host $k's hpn$p sent ${b:-?} bytes (more than 1 MiB)" $((${b:-0} <= 1048576))
  done
done

echo "cluster: $passed passed, $failed failed"
for f in "${failures[@]}"; do echo "#   $f"; done
[ "$failed" -eq 0 ]
