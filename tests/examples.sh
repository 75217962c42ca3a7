#!/bin/bash
# examples.sh - run the example programs, as `make check` does.
#
# examples/allreduce_env, examples/moe_dispatch and examples/grad_overlap
# (non-blocking allreduces with the progress thread): 3 ranks each, started
# from this shell with DUET_RANK/DUET_SIZE/DUET_ROOT; examples/allreduce_mpi
# under mpirun -np 2 when it was built. Env: top_builddir (default .), MPIRUN (default mpirun).
set -u
# Open MPI's hwloc asks X servers about GPUs (display :0, TCP port 6000 up)
# and waits forever where something else listens there: no display probing.
export HWLOC_COMPONENTS=${HWLOC_COMPONENTS:--gl,-opencl}

builddir=${top_builddir:-.}
mpirun=${MPIRUN:-mpirun}
limit=${DUET_TEST_TIMEOUT:-120}
passed=0
failed=0

result() { # <name> <ok:0|1>
  if [ "$2" = 0 ]; then
    passed=$((passed + 1))
    echo "# $1: passed"
  else
    failed=$((failed + 1))
    echo "# $1: FAILED"
  fi
}

# A port nobody listens on, from $1 up.
free_port() {
  local port=$1
  for _ in $(seq 1 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    port=$((port + 1))
  done
  echo "$port"
}

# run_env <name> <nranks> <base port>: the program's ranks started from this
# shell with DUET_RANK/DUET_SIZE/DUET_ROOT.
run_env() {
  local name=$1 n=$2 port prog="$builddir/examples/$1" rc=0 pids=()
  port=$(free_port "$3")
  if [ ! -x "$prog" ]; then
    echo "# $prog not built"
    result "$name" 1
    return
  fi
  for r in $(seq 0 $((n - 1))); do
    echo "+ DUET_RANK=$r DUET_SIZE=$n DUET_ROOT=127.0.0.1:$port timeout $limit $prog &"
    DUET_RANK=$r DUET_SIZE=$n DUET_ROOT=127.0.0.1:$port timeout "$limit" "$prog" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    if ! wait "$pid"; then rc=1; fi
  done
  result "$name ($n ranks)" $rc
}

run_env allreduce_env 3 $((29500 + $$ % 1000))
run_env moe_dispatch 3 $((30600 + $$ % 1000))
run_env grad_overlap 3 $((31700 + $$ % 1000))

prog="$builddir/examples/allreduce_mpi"
if [ -e "$prog" ]; then
  if command -v "$mpirun" >/dev/null 2>&1; then
    # Leak checks off under mpirun: see tests/mpi/run_mpi.sh.
    cmd=(env ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" timeout "$limit" "$mpirun" --allow-run-as-root --oversubscribe --mca btl self,vader,tcp
         --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 2 "$prog")
    echo "+ ${cmd[*]}"
    "${cmd[@]}"
    result "allreduce_mpi (mpirun -np 2)" $?
  else
    echo "# $mpirun not found but allreduce_mpi was built"
    result "allreduce_mpi (mpirun missing)" 1
  fi
fi

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
