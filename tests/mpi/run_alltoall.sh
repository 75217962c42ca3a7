#!/bin/bash
# run_alltoall.sh - mpi_alltoall (alltoall under every algorithm, alltoallv,
# the non-blocking forms, grouped send/recv, bad input, and the hierarchical
# all-to-all's HPN message and byte counts) on emulated super-nodes, run by
# `make check`.
#
# Super-nodes are emulated on this one host with DUET_SUPERNODE, set per
# mpirun app context (MPMD form: -np 2 -x DUET_SUPERNODE=a prog : -np 2 ...).
# Layouts (np 1..8): one super-node (the host-name default) of 1, 2, 3, 4, 5
# and 8 ranks; 2x2, 2x3, 3+1 and 3+2 (uneven), 4x1 and 2x4. Over the default
# providers (shm inside a super-node, tcp across), then over
# DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp, all in full (about 2 minutes
# on 2 cores). DUET_TEST_QUICK=1 (sanitizer builds) runs one super-node of 3
# (the flat all-to-all on the shared segment, duet_mem_alloc buffers read in
# place), 2x2, 3+1 and 3+2, quick, default providers only.
#
# Env: top_builddir (default .), MPIRUN (default mpirun), DUET_TEST_TIMEOUT
# (seconds per mpirun, default 300), DUET_A2A_LAYOUTS (override the layout
# list, e.g. "a:2,b:2 a:3,b:1"; "-" as the name leaves DUET_SUPERNODE unset).
set -u

builddir=${top_builddir:-.}
prog="$builddir/tests/mpi/mpi_alltoall"
. "$(dirname "$0")/mpirun_env.sh"
mpi_test_setup alltoall 300 "$prog"

passed=0
failed=0
failures=()

# run <tcp|default> <layout> [args...]
# layout: comma-separated name:np; the name "-" leaves DUET_SUPERNODE unset
# (every such rank is on the host's super-node).
run() {
  local prov=$1 layout=$2
  shift 2
  local envs=(env -u DUET_SUPERNODE -u DUET_ALGO)
  if [ "$prov" = tcp ]; then
    envs+=(DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp)
  else
    envs+=(-u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER)
  fi
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

if [ "${DUET_TEST_QUICK:-0}" = 1 ]; then
  for layout in -:3 a:2,b:2 a:3,b:1 a:3,b:2; do
    run default "$layout" -q
  done
else
  # one super-node of 1 2 3 4 5 8 ranks, 2x2, 2x3, 3+1, 3+2, 4x1, 2x4
  layouts=${DUET_A2A_LAYOUTS:-"-:1 -:2 -:3 -:4 -:5 -:8 a:2,b:2 a:3,b:3 a:3,b:1 a:3,b:2 a:1,b:1,c:1,d:1 a:4,b:4"}
  for layout in $layouts; do
    run default "$layout"
  done
  for layout in $layouts; do
    run tcp "$layout"
  done
fi

for f in "${failures[@]+"${failures[@]}"}"; do
  echo "# failed: $f"
done
echo "alltoall: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
