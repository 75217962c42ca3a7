#!/usr/bin/env bash
# Quick start: install the Debian packages duet needs (if missing), build
# everything, and run the benchmarks on 4 ranks of this machine:
#   1. allreduce on one super-node (libfabric shm);
#   2. allreduce and all-to-all on 2 emulated super-nodes of 2 ranks
#      (DUET_SUPERNODE=a|b): UPN shm inside, HPN tcp across, so the tuner
#      picks the hierarchical algorithms;
#   3. the same with tcp for both networks.
set -euo pipefail
# Open MPI's hwloc asks X servers about GPUs (display :0, TCP port 6000 up)
# and waits forever where something else listens there: no display probing.
export HWLOC_COMPONENTS=${HWLOC_COMPONENTS:--gl,-opencl}
cd "$(dirname "$0")"

pkgs=$(cat .ci/packages)
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing="$missing $p"
done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing:$missing"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

echo "== building"
[ -x configure ] || ./autogen.sh
[ -f Makefile ] || ./configure --enable-werror
make -j"$(nproc)"

mpi=(timeout 900 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader,tcp
     --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
# run TITLE -- ARGS...: 4 ranks on one super-node
run() { echo; echo "== $1"; shift; "${mpi[@]}" -np 4 "$@"; }
# run2x2 TITLE -- ARGS...: 2 super-nodes of 2 ranks
run2x2() {
  echo; echo "== $1"; shift
  "${mpi[@]}" -np 2 -x DUET_SUPERNODE=a "$@" : -np 2 -x DUET_SUPERNODE=b "$@"
}

run "allreduce, 4 ranks, one super-node (shm)" perf/duet_perf -b 8 -e 64M -f 4 -c 1
run2x2 "allreduce, 2 super-nodes x 2 ranks (UPN shm, HPN tcp)" perf/duet_perf -b 8 -e 64M -f 4 -c 1
run2x2 "alltoall, 2 super-nodes x 2 ranks (UPN shm, HPN tcp)" perf/duet_perf -o alltoall -b 8 -e 64M -f 4 -c 1
export DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp
run "allreduce, 4 ranks, tcp" perf/duet_perf -b 8 -e 64M -f 4 -c 1
run2x2 "allreduce, 2 super-nodes x 2 ranks, tcp" perf/duet_perf -b 8 -e 64M -f 4 -c 1
run2x2 "alltoall, 2 super-nodes x 2 ranks, tcp" perf/duet_perf -o alltoall -b 8 -e 64M -f 4 -c 1
