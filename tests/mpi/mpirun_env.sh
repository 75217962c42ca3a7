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
  # Sanitizer builds: LeakSanitizer cannot attribute Open MPI's allocations
  # (its components are dlopen'ed and unloaded at MPI_Finalize, so their
  # frames show as unknown modules), so leak checking is off for
  # mpirun-launched programs. duet's own leaks are checked by the unit tests,
  # which create and destroy communicators without MPI. ASan's other checks
  # and UBSan stay on.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
}
