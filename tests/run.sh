#!/usr/bin/env bash
# The whole test suite: build, `make check` (Criterion unit tests, the
# examples, the mpirun-launched tests over tcp and shm for np 1..8, and on
# emulated hosts in network namespaces), then
# `make distcheck` with AddressSanitizer + UndefinedBehaviorSanitizer (unit
# tests and a quick 2-3 rank MPI suite). Ends with "duet: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
pass=0
fail=0

step() { echo; echo "=== $*"; }
count() { # add the PASS/FAIL totals of an automake test-suite.log summary
  local log=$1 p f
  p=$(grep -E '^# PASS:' "$log" | tail -1 | awk '{print $3}')
  f=$(grep -E '^# (FAIL|ERROR|XPASS):' "$log" | awk '{s+=$3} END {print s+0}')
  pass=$((pass + ${p:-0}))
  fail=$((fail + ${f:-0}))
}

show_failed() { # print what the failed tests of a build tree said
  local dir=$1 l
  for l in "$dir"/tests/unit/*.log "$dir"/tests/mpi/*.log "$dir"/tests/*.log; do
    [ -f "$l" ] && grep -qE '^:test-result: (FAIL|ERROR)' "${l%.log}.trs" 2>/dev/null && {
      echo "--- $l"
      # criterion's own lines first (failed assertions and their messages,
      # cr_log output, [FAIL]): the library's warnings must not crowd them out
      grep -E '^\[(----|FAIL)\] .' "$l" | head -40
      grep -vE '^\[(----|FAIL)\]' "$l" | grep -E 'Assertion|FAIL|rank|did not|status' | head -40
      tail -20 "$l"
    }
  done
}

step "build"
if [ ! -x configure ]; then ./autogen.sh || exit 1; fi
if [ ! -f Makefile ]; then ./configure --enable-werror || exit 1; fi
make -j"$(nproc)" || exit 1

step "make check"
make -j1 check >"$top/check.out" 2>&1
rc=$?
grep -E '^(PASS|FAIL|ERROR|SKIP|XFAIL|XPASS|#)' "$top/check.out"
count "$top/check.out"
if [ $rc -ne 0 ]; then
  fail=$((fail > 0 ? fail : 1))
  show_failed .
fi

step "make distcheck (ASan + UBSan, quick MPI suite)"
export DUET_TEST_QUICK=1
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=$top/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
make distcheck DISTCHECK_CONFIGURE_FLAGS="--enable-asan --enable-ubsan --enable-werror" \
  >"$top/distcheck.out" 2>&1
rc=$?
grep -E '^(PASS|FAIL|ERROR|SKIP|XFAIL|XPASS|#)' "$top/distcheck.out"
count "$top/distcheck.out"
if [ $rc -ne 0 ]; then
  fail=$((fail > 0 ? fail : 1))
  tail -60 "$top/distcheck.out"
  for d in duet-*/_build/sub; do [ -d "$d" ] && show_failed "$d"; done
fi

echo
echo "duet: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
