#!/bin/bash
# run_hier.sh - mpi_hier (every algorithm of every collective, and the
# hierarchy's traffic bounds) on emulated super-nodes, run by `make check`.
#
# Super-nodes are emulated on this one host with DUET_SUPERNODE, set per
# mpirun app context (MPMD form: -np 3 -x DUET_SUPERNODE=a prog : -np 3 ...).
# Layouts: one super-node of 4 (the host-name default), 2x2, 2x3, 3+1
# (uneven), 3+2 (uneven, each with the load/store UPN), 4x1, three
# super-nodes of one rank, 1 rank, 2x4 and one super-node of 5; over the default providers (shm inside a super-node, tcp
# across) in full for the layouts of up to 4 ranks (quick above), then over
# DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp, quick. DUET_TEST_QUICK=1
# (sanitizer builds) runs 2x2, 3+1 and 3+2, quick, default providers only.
# Last, always: mpi_async (the progress thread) on 2x2 and 3+2, and
# mpi_local (rank 0 posts every non-blocking call before the others) on
# 1x4, 2x2, 3+1 and 3+2 over both provider sets, auto and every collective
# forced hierarchical, once with the progress thread; then two HPN planes:
# mpi_hier on 2x2 and 3+2 (quick), mpi_planes on 2x2 and 3+2 with plane 1
# lost mid-call (-k; the sanitizer builds run these two only). And random
# calls of every collective against MPI (mpi_random, fixed seeds) on 2x2
# and 3+2 (2x2 only, shorter, in the sanitizer builds), over both provider
# sets, once with every collective forced hierarchical.
#
# Env: top_builddir (default .), MPIRUN (default mpirun), DUET_TEST_TIMEOUT
# (seconds per mpirun, default 300), DUET_HIER_LAYOUTS (override the layout
# list of the default-provider pass, e.g. "a:2,b:2 a:3,b:1").
set -u

builddir=${top_builddir:-.}
prog="$builddir/tests/mpi/mpi_hier"
async="$builddir/tests/mpi/mpi_async"
local_posts="$builddir/tests/mpi/mpi_local"
planes="$builddir/tests/mpi/mpi_planes"
random="$builddir/tests/mpi/mpi_random"
plane1=127.0.0.78 # mpi_planes -k resets every connection on it: this script's alone
. "$(dirname "$0")/mpirun_env.sh"
mpi_test_setup hier 300 "$prog" "$async" "$local_posts" "$planes" "$random"

passed=0
failed=0
failures=()

# run <tcp|default> <layout> [args...]
# layout: comma-separated name:np; the name "-" leaves DUET_SUPERNODE unset
# (every such rank is on the host's super-node). DUET_ALGO is unset unless
# the variable algo is set.
run() {
  local prov=$1 layout=$2
  shift 2
  local envs=(env -u DUET_SUPERNODE -u DUET_ALGO)
  if [ "$prov" = tcp ]; then
    envs+=(DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp)
  else
    envs+=(-u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER)
  fi
  [ -n "${algo:-}" ] && envs+=("DUET_ALGO=$algo") # after the -u options
  local apps=() parts=() part name np sep=
  IFS=, read -r -a parts <<<"$layout"
  for part in "${parts[@]}"; do
    name=${part%%:*}
    np=${part##*:}
    [ -n "$sep" ] && apps+=(:)
    sep=:
    apps+=(-np "$np")
    [ "$name" != - ] && apps+=(-x "DUET_SUPERNODE=$name")
    apps+=("$prog" "$@")
  done
  echo "+ ${envs[*]} timeout $limit $mpirun ${mpiopts[*]} ${apps[*]}"
  local start=$SECONDS
  if mpi_limited "${envs[@]}" "$mpirun" "${mpiopts[@]}" "${apps[@]}"; then
    passed=$((passed + 1))
    echo "# passed in $((SECONDS - start)) s"
  else
    local rc=$?
    failed=$((failed + 1))
    failures+=("[$prov $layout rc=$rc] $*")
    echo "# FAILED (exit $rc) after $((SECONDS - start)) s"
  fi
}

# ranks in a layout
nranks() {
  local n=0 part parts=()
  IFS=, read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do n=$((n + ${part##*:})); done
  echo $n
}

if [ "${DUET_TEST_QUICK:-0}" = 1 ]; then
  for layout in a:2,b:2 a:3,b:1 a:3,b:2; do
    run default "$layout" -q
  done
else
  # 1x4 (host name), 2x2, 2x3, 3+1, 3+2, 4x1, 3 super-nodes of 1, 1 rank,
  # 2x4, 1x5
  layouts=${DUET_HIER_LAYOUTS:-"-:4 a:2,b:2 a:3,b:3 a:3,b:1 a:3,b:2 a:1,b:1,c:1,d:1 a:1,b:1,c:1 -:1 a:4,b:4 -:5"}
  for layout in $layouts; do
    if [ "$(nranks "$layout")" -le 4 ]; then
      run default "$layout"
    else
      run default "$layout" -q
    fi
  done
  for layout in $layouts; do
    run tcp "$layout" -q
  done
fi
# The progress thread drives the hierarchy's non-blocking calls too (their
# rail phase is a schedule the queued task waits for).
for layout in a:2,b:2 a:3,b:2; do
  prog=$async run default "$layout"
done
# A non-blocking post waits for no peer (a deadline of 20 s: a post that
# waited would fail the run there instead of after the default's minutes).
hier_all="allreduce=hier,alltoall=hier,alltoallv=hier,allgather=hier,reduce_scatter=hier,broadcast=hier,reduce=hier,barrier=hier"
for prov in default tcp; do
  for layout in -:4 a:2,b:2 a:3,b:1 a:3,b:2; do
    DUET_TIMEOUT_MS=20000 prog=$local_posts run "$prov" "$layout"
    DUET_TIMEOUT_MS=20000 algo=$hier_all prog=$local_posts run "$prov" "$layout"
  done
done
DUET_TIMEOUT_MS=20000 prog=$local_posts run default a:2,b:2 -t
# Two HPN planes (DUET_HPN_IFACE=a,b: plane 1 on its own loopback address):
# every algorithm of every collective, then mpi_planes, whose -k resets
# plane 1's connections in the middle of a 16 MiB allreduce and alltoall.
if [ "${DUET_TEST_QUICK:-0}" = 1 ]; then
  prog=$random run default a:2,b:2 -s 22 -i 100 -m 1048576
else
  prog=$random run default a:2,b:2 -s 22
  prog=$random run default a:3,b:2 -s 32
  prog=$random run tcp a:2,b:3 -s 23
  algo=$hier_all prog=$random run default a:3,b:2 -s 320
fi
planes_if=127.0.0.1,$plane1
if [ "${DUET_TEST_QUICK:-0}" != 1 ]; then
  DUET_HPN_IFACE=$planes_if run default a:2,b:2 -q
  DUET_HPN_IFACE=$planes_if run tcp a:3,b:2 -q
  DUET_HPN_IFACE=$planes_if DUET_TIMEOUT_MS=20000 prog=$planes run default a:2,b:2
fi
DUET_HPN_IFACE=$planes_if DUET_TIMEOUT_MS=20000 prog=$planes run default a:2,b:2 -k "$plane1"
DUET_HPN_IFACE=$planes_if DUET_TIMEOUT_MS=20000 prog=$planes run tcp a:3,b:2 -k "$plane1"

for f in "${failures[@]+"${failures[@]}"}"; do
  echo "# failed: $f"
done
echo "hier: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
