#!/bin/bash
# planes.sh - what a second HPN plane buys, on one host.
#
# Two emulated super-nodes of 2 ranks; the HPN over duet's tcp on plane
# addresses 127.0.0.76 and 127.0.0.77, each shaped to RATE (a link of that
# speed) by an htb qdisc on the loopback of a private network namespace of
# this script's own (unshare -n: nothing outside it is touched). duet_perf
# runs each collective with DUET_HPN_IFACE=127.0.0.76 (one plane) and
# DUET_HPN_IFACE=127.0.0.76,127.0.0.77 (two), alternating, RUNS launches
# each, results checked (-c 1); the table gives median times and the speedup.
#
# Needs root (a network namespace and tc), mpirun, tc (iproute2) and a build.
# Usage: perf/planes.sh [-r RATE] [-n RUNS] [collective...]
#   defaults: -r 4gbit -n 2 allreduce alltoall
# Env: top_builddir (default: this script's parent), SIZES (duet_perf's
# -b/-e/-f, default "-b 256K -e 64M -f 4").
set -eu
# Open MPI's hwloc asks X servers about GPUs (display :0, TCP port 6000 up)
# and waits forever where something else listens there: no display probing.
export HWLOC_COMPONENTS=${HWLOC_COMPONENTS:--gl,-opencl}

rate=4gbit
runs=2
while getopts "r:n:" o; do
  case $o in
  r) rate=$OPTARG ;;
  n) runs=$OPTARG ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
colls=${*:-allreduce alltoall}
top=${top_builddir:-$(cd "$(dirname "$0")/.." && pwd)}
sizes=${SIZES:-"-b 256K -e 64M -f 4"}

if [ -z "${DUET_PLANES_INSIDE:-}" ]; then
  for t in unshare tc mpirun; do
    command -v $t >/dev/null || { echo "planes.sh: $t not found" >&2; exit 1; }
  done
  [ -x "$top/perf/duet_perf" ] || { echo "planes.sh: build first (make)" >&2; exit 1; }
  exec env DUET_PLANES_INSIDE=1 unshare -n "$0" -r "$rate" -n "$runs" $colls
fi

# Inside the namespace: its own loopback, two shaped plane addresses.
ip link set lo up
tc qdisc add dev lo root handle 1: htb default 99 r2q 1000 2>/dev/null
tc class add dev lo parent 1: classid 1:99 htb rate 100gbit 2>/dev/null
for k in 1 2; do
  a=127.0.0.7$((5 + k))
  tc class add dev lo parent 1: classid 1:$k htb rate "$rate" ceil "$rate" 2>/dev/null
  tc filter add dev lo parent 1: protocol ip u32 match ip dst $a/32 flowid 1:$k
  tc filter add dev lo parent 1: protocol ip u32 match ip src $a/32 flowid 1:$k
done

mpiopts=(--allow-run-as-root --oversubscribe --mca btl self,vader,tcp
         --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
perf=("$top/perf/duet_perf")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for coll in $colls; do
  for r in $(seq 1 "$runs"); do
    for ifs in 127.0.0.76 127.0.0.76,127.0.0.77; do
      echo "== $coll $ifs" >>"$out"
      env DUET_HPN_IFACE=$ifs DUET_HPN_PROVIDER=tcp timeout 600 mpirun "${mpiopts[@]}" \
        -np 2 -x DUET_SUPERNODE=a "${perf[@]}" -o "$coll" $sizes -n 5 -w 2 -c 1 : \
        -np 2 -x DUET_SUPERNODE=b "${perf[@]}" -o "$coll" $sizes -n 5 -w 2 -c 1 |
        grep -E '^ +[0-9]' >>"$out"
    done
  done
done

echo "# planes.sh: 2x2 super-nodes, HPN planes shaped to $rate each, $runs launches, median us (out of place)"
printf "%-10s %12s %14s %14s %8s\n" coll bytes "one plane" "two planes" speedup
awk '
  /^==/ { coll = $2; planes = ($3 ~ /,/) ? 2 : 1; next }
  { key = coll " " $1; t[key, planes, ++n[key, planes]] = $(NF - 7); keys[key] = 1 }
  function med(key, p,   m, i, j, v, tmp) {
    m = n[key, p]
    for (i = 1; i <= m; i++) v[i] = t[key, p, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { tmp = v[i]; v[i] = v[j]; v[j] = tmp }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    for (key in keys) {
      split(key, f, " "); one = med(key, 1); two = med(key, 2)
      printf "%-10s %12d %14.1f %14.1f %7.2fx\n", f[1], f[2], one, two, one / two
    }
  }' "$out" | sort -k1,1 -k2,2n
wrong=$(awk '!/^==/ { w += $(NF - 4) + $NF } END { print w + 0 }' "$out")
echo "# wrong results: $wrong"
[ "$wrong" -eq 0 ]
