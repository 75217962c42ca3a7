#!/bin/bash
# run_mpi.sh - the mpirun-launched duet tests, run by `make check`.
#
# mpi_allreduce (ring and recursive doubling) and mpi_coll for np = 1 2 3 4 5 8,
# each over duet's tcp transport and over the default (shm inside a host), and a
# quick pass over libfabric's tcp;ofi_rxm for np <= 4. Every
# datatype x op is covered at the quick counts for every np; the full count
# list (up to 1048579 elements) runs for np <= 4 on int32, float32, bfloat16,
# uint64 and float8e4m3 (DUET_TEST_FULL_TYPES=all for every type). DUET_TEST_QUICK=1
# (sanitizer builds) runs np 2 and 3 quick. Then allreduce on duet_mem_alloc
# buffers (mpi_allreduce -m all / mixed), the progress thread
# (mpi_async, and mpi_coll and mpi_split with DUET_PROGRESS_THREAD=1), and
# random calls of every collective (mpi_random, fixed seeds). Then
# DUET_ALGO set on one rank only must fail every rank's init with a message
# naming it. Last, a /dev/shm too small for libfabric's shm, and for the
# load/store segment, and a /dev/shm of each rank's own (mount namespaces of
# their own; needs root).
#
# Env: top_builddir (default .), MPIRUN (default mpirun), DUET_TEST_TIMEOUT
# (seconds per mpirun, default 300), DUET_TEST_NP (override the np list).
set -u

builddir=${top_builddir:-.}
allreduce="$builddir/tests/mpi/mpi_allreduce"
coll="$builddir/tests/mpi/mpi_coll"
split="$builddir/tests/mpi/mpi_split"
async="$builddir/tests/mpi/mpi_async"
random="$builddir/tests/mpi/mpi_random"
hier="$builddir/tests/mpi/mpi_hier"
. "$(dirname "$0")/mpirun_env.sh"
mpi_test_setup mpi 300 "$allreduce" "$coll" "$split" "$async" "$random" "$hier"

quick=${DUET_TEST_QUICK:-0}
if [ "$quick" = 1 ]; then
  nps=${DUET_TEST_NP:-"2 3"}
else
  nps=${DUET_TEST_NP:-"1 2 3 4 5 8"}
fi
full_types=${DUET_TEST_FULL_TYPES:-int32,uint64,float32,bfloat16,float8e4m3}

passed=0
failed=0
failures=()

# tally <0: passed | else: failed> <the failure, as listed at the end> [why it
# passed]: count one check and say how it went, timed from $start.
tally() {
  if [ "$1" = 0 ]; then
    passed=$((passed + 1))
    echo "# passed in $((SECONDS - start)) s${3:+: $3}"
  else
    failed=$((failed + 1))
    failures+=("$2")
    echo "# FAILED after $((SECONDS - start)) s: $2"
  fi
}

# run <provider> <np> <program> [args...]
run() {
  local prov=$1 np=$2
  shift 2
  local envs=()
  if [ "$prov" = tcp ]; then
    envs=(env DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp)
  elif [ "$prov" = ofi-tcp ]; then # libfabric's tcp, not duet's sockets
    envs=(env "DUET_UPN_PROVIDER=tcp;ofi_rxm" "DUET_HPN_PROVIDER=tcp;ofi_rxm")
  elif [ "$prov" = ofi-shm ]; then # libfabric's shm, not the load/store path
    envs=(env -u DUET_HPN_PROVIDER DUET_UPN_PROVIDER=shm)
  else
    envs=(env -u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER)
  fi
  local set=${DUET_PROGRESS_THREAD:+DUET_PROGRESS_THREAD=$DUET_PROGRESS_THREAD }
  set+=${DUET_ALGO:+DUET_ALGO=$DUET_ALGO }
  set+=${FI_OFI_RXM_TX_SIZE:+FI_OFI_RXM_TX_SIZE=$FI_OFI_RXM_TX_SIZE }
  set+=${FI_OFI_RXM_RX_SIZE:+FI_OFI_RXM_RX_SIZE=$FI_OFI_RXM_RX_SIZE }
  echo "+ $set${envs[*]} timeout $limit $mpirun ${mpiopts[*]} -np $np $*"
  local start=$SECONDS rc
  mpi_limited "${envs[@]}" "$mpirun" "${mpiopts[@]}" -np "$np" "$@"
  rc=$?
  tally $rc "[$set$prov np=$np rc=$rc] $*"
}

for np in $nps; do
  for prov in tcp shm; do
    # auto: on one host the default UPN is the shared-memory load/store path
    for algo in ring rd auto; do
      if [ "$quick" != 1 ] && [ "$np" -le 4 ]; then
        run $prov "$np" "$allreduce" -a $algo -t $full_types
      fi
      run $prov "$np" "$allreduce" -a $algo -q
    done
    if [ "$quick" != 1 ] && [ "$np" -le 4 ]; then
      run $prov "$np" "$coll"
    else
      run $prov "$np" "$coll" -q
    fi
    run $prov "$np" "$split"
  done
  # libfabric's tcp;ofi_rxm stays selectable: a quick pass over it
  if [ "$np" -le 4 ]; then
    run ofi-tcp "$np" "$allreduce" -a auto -q
    run ofi-tcp "$np" "$coll" -q
  fi
done

# Buffers from duet_mem_alloc: on one host the allreduce reads the peers'
# send buffers in place (every rank's memory), or all ranks fall back to
# copying (rank 0's from malloc); counts across several 1 MiB chunks.
for np in $nps; do
  [ "$np" -lt 2 ] && continue
  for m in all mixed; do
    if [ "$quick" = 1 ]; then
      run shm "$np" "$allreduce" -m $m -q -t int32,float32,bfloat16
    else
      run shm "$np" "$allreduce" -m $m -t int32,uint8,float32,bfloat16,float64 \
        -c 1,1023,65537,1048579,3000001
    fi
  done
done

# The progress thread: non-blocking calls complete while the caller makes no
# duet call (mpi_async asks for the thread itself), and the non-blocking,
# blocking-between and split checks of mpi_coll and mpi_split pass with it.
if [ "$quick" = 1 ]; then
  async_nps=${DUET_TEST_NP:-"2 3"}
else
  async_nps=${DUET_TEST_NP:-"1 2 3 4 5"}
fi
for np in $async_nps; do
  for prov in tcp shm; do
    run $prov "$np" "$async"
    DUET_PROGRESS_THREAD=1 run $prov "$np" "$coll" -q
    DUET_PROGRESS_THREAD=1 run $prov "$np" "$split"
  done
  if [ "$quick" != 1 ] && [ "$np" -le 3 ]; then # libfabric's tcp driven by the thread
    run ofi-tcp "$np" "$async"
  fi
done

# Random calls of every collective (mpi_random), with fixed seeds: a failure
# prints the seed and the call, and reproduces with them.
# With libfabric's queues cut to 4 transfers (FI_OFI_RXM_TX_SIZE/RX_SIZE),
# posting returns "busy" (FI_EAGAIN) within most calls: a busy send must not
# hold back the receives behind it (before, two ranks each waited for the
# other: an allgather at np 2 here, an allreduce of over 1 GiB at the
# default sizes). One call at a time (-1), and batches of calls in flight
# together, which could fill queues this short with transfers that wait for
# each other: only the oldest call in flight may fill a queue past half.
# Seed 2467511 (np 4, batches) timed out before that rule.
# Over libfabric's shm, a message of more than 4 KiB sent before its receive
# stalled the provider when other calls were in flight (ofiwg/libfabric#9853):
# seeds 202 (np 3) and 3023 (np 4, Rabenseifner forced) timed out before the
# transport's rendezvous.
if [ "$quick" = 1 ]; then
  for np in 2 3; do
    run shm "$np" "$random" -s "$np" -i 100 -m 1048576
  done
  FI_OFI_RXM_TX_SIZE=4 FI_OFI_RXM_RX_SIZE=4 run ofi-tcp 3 "$random" -1 -s 3 -i 40
  run ofi-shm 3 "$random" -s 202
else
  run ofi-shm 3 "$random" -s 202
  DUET_ALGO=allreduce=rabenseifner,reduce_scatter=pairwise run ofi-shm 4 "$random" -s 3023
  for np in 2 3 4 6; do
    for prov in tcp shm; do
      run $prov "$np" "$random" -s "$np"
    done
  done
  run ofi-tcp 3 "$random" -s 3
  for np in 2 3; do
    FI_OFI_RXM_TX_SIZE=4 FI_OFI_RXM_RX_SIZE=4 run ofi-tcp "$np" "$random" -1 -s "$np"
  done
  FI_OFI_RXM_TX_SIZE=4 FI_OFI_RXM_RX_SIZE=4 run ofi-tcp 4 "$random" -s 2467511
  DUET_PROGRESS_THREAD=1 run shm 4 "$random" -s 44
fi

# Settings that decide the algorithm must agree: DUET_ALGO exported to one
# app context only makes every rank's init fail at once with MISMATCH, naming
# it (before, the two ranks ran different schedules and waited for each other
# until DUET_TIMEOUT_MS).
differ() {
  local out rc start=$SECONDS
  echo "+ env -u DUET_ALGO timeout $limit $mpirun ${mpiopts[*]} -np 1 -x DUET_ALGO=allreduce=ring $allreduce -q : -np 1 $allreduce -q"
  out=$(env -u DUET_ALGO DUET_TIMEOUT_MS=60000 timeout "$limit" "$mpirun" "${mpiopts[@]}" \
    -np 1 -x DUET_ALGO=allreduce=ring "$allreduce" -q : -np 1 "$allreduce" -q 2>&1)
  rc=$?
  echo "$out" | grep -E "^\[rank" | head -2
  [ $rc -ne 0 ] && [ "$(echo "$out" | grep -c "DUET_ALGO differs between rank 0 and rank 1")" -eq 2 ] &&
    [ $((SECONDS - start)) -lt 30 ]
  tally $? "[settings differ rc=$rc after $((SECONDS - start)) s] DUET_ALGO on one rank only" \
    "both ranks refused, naming DUET_ALGO"
}
differ

# A /dev/shm too small, as a container's default 64 MiB is on a host of more
# than 3 CPUs: libfabric's shm does not open (it wants 16 MiB per online CPU
# free there), and the load/store segment may not fit either. Init must still
# succeed, every rank's UPN endpoints over tcp, the segment where it fits.
# Before, every rank's init failed ("fi_getinfo(prov=shm ...): No data
# available"), and a segment that did not fit killed local rank 0 with
# SIGBUS. Named (DUET_UPN_PROVIDER=shm), shm must fail saying why. In a
# mount namespace of the test's own (root); MPI keeps out of /dev/shm.
# small_shm <tmpfs size> <pass|fail> <message every rank must log> <mpirun args...>
small_shm() {
  local size=$1 expect=$2 want=$3 out rc saw ok=0 start=$SECONDS
  shift 3
  local opts=("${mpiopts[@]/self,vader,tcp/self,tcp}")
  echo "+ unshare -m (tmpfs of $size on /dev/shm) timeout $limit $mpirun ${opts[*]} $*"
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
  out=$(env -u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER unshare -m sh -c \
    'mount -t tmpfs -o size="$0" tmpfs /dev/shm && exec "$@"' "$size" \
    timeout "$limit" "$mpirun" "${opts[@]}" "$@" 2>&1)
  rc=$?
  echo "$out" | grep -E "duet WARN|^\[rank" | head -6
  saw=$(echo "$out" | grep -c -- "$want")
  if [ "$expect" = pass ] && [ $rc -eq 0 ]; then
    ok=1
  elif [ "$expect" = fail ] && [ $rc -ne 0 ]; then
    ok=1
  fi
  [ $ok = 1 ] && [ "$saw" -ge 4 ]
  tally $? "[/dev/shm of $size, rc=$rc (to $expect), $saw of 4 ranks said \"$want\"] $*" \
    "${expect}ed, every rank said \"$want\""
}
# room for the segments (mpi_coll and mpi_hier check that the collectives
# take them), not for libfabric's shm
tcp_lo="the UPN endpoints of every rank use tcp over lo instead"
small_shm 12m pass "$tcp_lo" -np 4 "$coll" -q
small_shm 12m pass "$tcp_lo" -np 2 -x DUET_SUPERNODE=a "$hier" -q : -np 2 -x DUET_SUPERNODE=b "$hier" -q
# room for neither (local rank 0 says it found no room, the others that it did)
small_shm 4m pass "no room" -np 4 "$random" -s 4 -i 100 -m 1048576
small_shm 12m fail "libfabric's shm needs .* (16 MiB per CPU" -np 4 -x DUET_UPN_PROVIDER=shm "$coll" -q

# A /dev/shm of each rank's own under one host name, as in a container per
# rank with the host's name and network but its own IPC namespace
# (DUET_TEST_OWN_SHM, mpi_common.h): the ranks share no memory, so they are
# not one host to duet and talk over tcp. Before, duet took them for one
# host: every rank's init waited for a segment only local rank 0 could see,
# and failed at the deadline.
own_shm_opts=("${mpiopts[@]/self,vader,tcp/self,tcp}" -x DUET_TEST_OWN_SHM=1 -x DUET_UPN_IFACE=lo)
echo "+ timeout $limit $mpirun ${own_shm_opts[*]} -np 4 $random -s 5 -i 100 -m 1048576"
start=$SECONDS
DUET_TIMEOUT_MS=20000 mpi_limited env -u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER "$mpirun" \
  "${own_shm_opts[@]}" -np 4 "$random" -s 5 -i 100 -m 1048576
rc=$?
tally $rc "[a /dev/shm per rank, rc=$rc] $random -s 5 -i 100 -m 1048576"

for f in "${failures[@]+"${failures[@]}"}"; do
  echo "# failed: $f"
done
echo "mpi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
