#!/bin/bash
# info.sh - perf/duet_info, as `make check` runs it: the version line, the
# libfabric providers (and why shm is missing, when /dev/shm is too small),
# the topology and whether another process can map duet_mem_alloc memory,
# the DUET_* settings with their source, the tuner's choices (and DUET_ALGO
# forcing them), and the exit status of bad input.
# Env: top_builddir (default .). Ends with "info: N passed, M failed".
set -u

builddir=${top_builddir:-.}
prog="$builddir/perf/duet_info"
limit=${DUET_TEST_TIMEOUT:-60}
. "$(dirname "$0")/mpi/mpirun_env.sh" # mpi_limited
passed=0
failed=0
out=$(mktemp "${TMPDIR:-/tmp}/duet_info.XXXXXX")
err=$(mktemp "${TMPDIR:-/tmp}/duet_info.XXXXXX")
trap 'rm -f "$out" "$err"' EXIT

result() { # <name> <ok:0|1>
  if [ "$2" = 0 ]; then
    passed=$((passed + 1))
    echo "# $1: passed"
  else
    failed=$((failed + 1))
    echo "# $1: FAILED"
    echo "## stdout:"; sed 's/^/## /' "$out"
    echo "## stderr:"; sed 's/^/## /' "$err"
  fi
}

# run [VAR=value ...] -- [duet_info arguments]: output in $out/$err, status in $rc.
run() {
  local vars=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done
  shift
  echo "+ ${vars[*]+${vars[*]} }duet_info $*"
  # Only the DUET_* variables under test: none inherited from the caller.
  local unset=() v
  for v in $(compgen -e); do
    case $v in DUET_*) unset+=(-u "$v") ;; esac
  done
  # as `timeout "$limit"`, but a run about to be killed first prints its
  # stacks (into $err, shown when a check fails)
  mpi_limited env ${unset[@]+"${unset[@]}"} ${vars[@]+"${vars[@]}"} \
    "$prog" "$@" >"$out" 2>"$err"
  rc=$?
}

# has REGEX: a line of the last stdout matches (extended regex).
has() { grep -Eq -- "$1" "$out"; }

if [ ! -x "$prog" ]; then
  echo "# $prog not built"
  result "duet_info built" 1
  echo "info: $passed passed, $failed failed"
  exit 1
fi

run --
ok=1
[ "$rc" = 0 ] && has '^duet version [0-9]+\.[0-9]+\.[0-9]+ \(build: .*\)$' &&
  has '^libfabric [0-9]+\.[0-9]+' && ok=0
result "version and libfabric lines" $ok

ok=1
has '^ +tcp(;[a-z_]+)? +' && ok=0
result "the tcp provider is listed" $ok

ok=1
has "^transports: tcp \\(duet's own sockets\\)" && ok=0
result "duet's transports are listed" $ok

# Where /dev/shm is too small for libfabric's shm (a container's default
# 64 MiB on more than 3 CPUs), shm is missing from the list: say why. In a
# mount namespace of this test's own with a 12 MiB /dev/shm (needs root).
echo "+ unshare -m (tmpfs of 12m on /dev/shm) duet_info -a"
# shellcheck disable=SC2016 # $0 is the inner shell's
unshare -m sh -c 'mount -t tmpfs -o size=12m tmpfs /dev/shm && exec "$0" -a' "$prog" \
  >"$out" 2>"$err"
rc=$?
ok=1
[ "$rc" = 0 ] && ! has '^ +shm +shm' &&
  has "^  shm: not offered; /dev/shm has [0-9]+ MiB free, libfabric's shm needs [0-9]+ \(16 MiB per CPU" &&
  ok=0
result "a /dev/shm too small for libfabric's shm is named" $ok

ok=1
has '^topology:' && has '^host .*: [0-9]+ packages, [0-9]+ NUMA nodes, [1-9][0-9]* cores' &&
  has 'this process: cpus ' && ok=0
result "topology section" $ok

# a child of duet_info maps its duet_mem_alloc memory as peer ranks do
ok=1
has '^  duet_mem_alloc: other processes can map it \(all-to-all on it copies once\)' && ok=0
result "duet_mem_alloc memory can be mapped by another process" $ok

ok=1
has '^ +DUET_TIMEOUT_MS += 300000 +default ' && has '^ +DUET_ALGO += \(unset\) +default ' && ok=0
result "DUET_TIMEOUT_MS row: default" $ok

run DUET_TIMEOUT_MS=1234 --
ok=1
[ "$rc" = 0 ] && has '^ +DUET_TIMEOUT_MS += 1234 +env ' && ! has '^ +DUET_TIMEOUT_MS += 1234 +default' &&
  ok=0
result "DUET_TIMEOUT_MS=1234 row: 1234 from env" $ok

run DUET_SECRET=0123456789abcdef0123456789abcdef --
ok=1
[ "$rc" = 0 ] && has '^ +DUET_SECRET += \(set, not shown\) +env ' &&
  ! grep -q 0123456789abcdef "$out" && ok=0
result "DUET_SECRET is not printed" $ok

run -- -n 8 -s 2 -t
ok=1
[ "$rc" = 0 ] && has '^tuner: 8 ranks in 2 super-nodes of 4' &&
  has '^ +allreduce +8 B +8 +[a-z]+ +[0-9]+ ' &&
  has '^ +allreduce +256 MiB +268435456 +[a-z]+ +[0-9]+ ' &&
  has '^ +alltoallv +256 MiB ' && has '^ +barrier ' &&
  ! has '^duet version' && ! has '^ +DUET_TIMEOUT_MS' && ok=0
result "-n 8 -s 2 -t: allreduce at 8 B and 256 MiB, tuner only" $ok

run -- -n 8 -s 2
ok=1
[ "$rc" = 0 ] && has '^duet version' && has '^ +DUET_TIMEOUT_MS' && has '^ +allreduce +8 B ' && ok=0
result "-n 8 -s 2: every section" $ok

run DUET_ALGO=allreduce=ring -- -n 8 -s 2 -t
rows=$(grep -Ec '^ +allreduce ' "$out")
ring=$(grep -Ec '^ +allreduce +[0-9]+ [KMG]?i?B +[0-9]+ +ring +' "$out")
ok=1
[ "$rc" = 0 ] && [ "$rows" -ge 10 ] && [ "$rows" = "$ring" ] && ok=0
result "DUET_ALGO=allreduce=ring: ring in all $rows allreduce rows ($ring)" $ok

# one host: the load/store path carries a one-super-node job's allreduce;
# with -m (super-nodes across hosts) the tuner's algorithms do
run -- -n 2 -t
ok=1
[ "$rc" = 0 ] && has '^ +allreduce +8 B +8 +load/store +- +-$' &&
  has '^ +each super-node on one host of [1-9][0-9]* cores' && ok=0
result "-n 2 -t: the one-host allreduce takes the load/store path" $ok
run -- -n 2 -m -t
ok=1
[ "$rc" = 0 ] && has '^ +allreduce +8 B +8 +[a-z]+ +[0-9]+ ' && ! has 'load/store' &&
  has '^ +each super-node on several hosts' && has '^  UPN tcp:' && ok=0
result "-n 2 -m -t: several hosts, tcp inside the super-node" $ok
run DUET_UPN_PROVIDER=tcp -- -n 4096 -t
ok=1
[ "$rc" = 0 ] && has 'more ranks than cores' && ! has 'load/store' && ok=0
result "-n 4096 -t over tcp: more ranks than cores" $ok

run DUET_TIMEOUT_MS=abc --
ok=1
[ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q 'DUET_TIMEOUT_MS' "$err" && ok=0
result "DUET_TIMEOUT_MS=abc: exit $rc, message names it" $ok

run DUET_ALGO=allreduce=fast -- -n 4 -t
ok=1
[ "$rc" = 1 ] && grep -q 'DUET_ALGO' "$err" && ok=0
result "DUET_ALGO=allreduce=fast: exit $rc, message names it" $ok

for args in "-x" "-n" "-n 0" "-n abc" "-t" "-s 2" "-n 2 -s 4" "-m" "extra"; do
  # shellcheck disable=SC2086 # split on purpose
  run -- $args
  ok=1
  [ "$rc" = 2 ] && [ -s "$err" ] && ok=0
  result "bad command line '$args': exit $rc (2 wanted), with a message" $ok
done

run -- -v
ok=1
[ "$rc" = 0 ] && [ "$(wc -l <"$out")" = 1 ] && has '^duet version ' && ok=0
result "-v: the version line only" $ok

run -- -h
ok=1
[ "$rc" = 0 ] && has '^usage: duet_info' && ok=0
result "-h: usage, exit 0" $ok

echo "info: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
