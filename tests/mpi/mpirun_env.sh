# mpirun_env.sh - sourced by the mpirun-launched test scripts (tests/perf.sh,
# tests/mpi/run_*.sh): finds mpirun and the programs, and sets what every
# launch shares.
#
#   mpi_test_setup <name> <default seconds per mpirun> <program>...
#
# Sets mpirun (MPIRUN, default mpirun), limit (DUET_TEST_TIMEOUT, else the
# default given) and mpiopts; exits with "<name>: 0 passed, 1 failed" when
# mpirun or a program is missing.

mpi_test_setup() {
  local name=$1 seconds=$2 prog
  shift 2
  mpirun=${MPIRUN:-mpirun}
  limit=${DUET_TEST_TIMEOUT:-$seconds}
  if ! command -v "$mpirun" >/dev/null 2>&1; then
    echo "$name: $mpirun not found (configure found MPI; install openmpi-bin)"
    echo "$name: 0 passed, 1 failed"
    exit 1
  fi
  for prog in "$@"; do
    if [ ! -x "$prog" ]; then
      echo "$name: $prog not built (make check builds it)"
      echo "$name: 0 passed, 1 failed"
      exit 1
    fi
  done

  # Loopback only, oversubscribed (this may run on a 2-core machine).
  mpiopts=(--allow-run-as-root --oversubscribe --mca btl self,vader,tcp
           --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
  # A failing rank should give up well before the mpirun timeout.
  export DUET_TIMEOUT_MS=${DUET_TIMEOUT_MS:-120000}
  # Open MPI's hwloc asks X servers about GPUs (display :0, TCP port 6000
  # up) and waits forever where something else listens there (a launch hung
  # in CI with no output): no display probing.
  export HWLOC_COMPONENTS=${HWLOC_COMPONENTS:--gl,-opencl}
  # Sanitizer builds: LeakSanitizer cannot attribute Open MPI's allocations
  # (its components are dlopen'ed and unloaded at MPI_Finalize, so their
  # frames show as unknown modules), so leak checking is off for
  # mpirun-launched programs. duet's own leaks are checked by the unit tests,
  # which create and destroy communicators without MPI. ASan's other checks
  # and UBSan stay on.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
}

# mpi_limited <command>...: run it as `timeout "$limit" <command>` does, but
# shortly before the limit print the stacks of every process still running
# under it (mpi_dump_stacks), so that a launch killed for hanging shows where
# each rank waited. The watchdog sleeps; a launch that ends in time ends it.
mpi_limited() {
  local early=$((limit / 10)) cmd watchdog rc
  [ "$early" -lt 5 ] && early=5
  [ "$early" -ge "$limit" ] && early=$((limit / 2))
  timeout "$limit" "$@" &
  cmd=$!
  (
    trap 'kill $nap 2>/dev/null; wait $nap; exit 0' TERM
    sleep $((limit - early)) &
    nap=$!
    wait $nap && mpi_dump_stacks "$cmd" "$((limit - early))"
  ) &
  watchdog=$!
  wait "$cmd"
  rc=$?
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  return $rc
}

# mpi_dump_stacks <pid> <seconds>: to stderr, every thread's stack of each
# process below pid that is not a launcher (gdb, where installed; else the
# kernel's wait channel).
mpi_dump_stacks() {
  local root=$1 secs=$2 pids=() queue=("$1") p kids name
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    kids=$(ps -o pid= --ppid "$p" 2>/dev/null)
    for k in $kids; do
      queue+=("$k")
      pids+=("$k")
    done
  done
  echo "# still running after $secs s: stacks of the processes under $root" >&2
  for p in "${pids[@]}"; do
    name=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    case $name in mpirun | orterun | orted | prterun | prted | timeout | env | sleep) continue ;; esac
    echo "# --- pid $p ($name), state $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" >&2
    if command -v gdb >/dev/null 2>&1; then
      timeout 60 gdb -p "$p" -batch -nx -ex "set pagination off" -ex "thread apply all bt" 2>&1 |
        grep -E '^(Thread|#[0-9])' >&2
    else
      echo "# (gdb not installed) wchan $(cat "/proc/$p/wchan" 2>/dev/null)" >&2
    fi
  done
}
