#!/bin/bash
# perf.sh - perf/duet_perf as a test, run by `make check`.
#
# Every collective (-C) at np 2 and np 3 with -c 1 over a few small sizes,
# in CSV: the header must be the documented one and every row must have
# #wrong 0 (out of place, and in place where the collective has that form);
# at np 3 with --compare mpi, MPI's result must be right too.
# The reductions run every datatype and op at np 3 (-d all -o all), reduce
# and broadcast with root 1 at np 3. Then --compare mpi once (the ratio
# column must be a positive number, MPI's check 0), the table format (its
# columns and summary), the JSON format (valid JSON, checked with python3
# when there is one) and bad arguments (exit 2 with a message naming the
# option). Every collective once more with --nonblocking (np 3, duet's and
# MPI's results checked); allreduce and alltoall with --barrier and with
# --mem-alloc; allreduce with --overlap and --overlap-sleep and the progress
# thread. About 45 s on 2 cores. DUET_TEST_QUICK=1
# (sanitizer builds): the per-collective runs at np 2 only.
#
# Env: top_builddir (default .), MPIRUN (default mpirun), DUET_TEST_TIMEOUT
# (seconds per mpirun, default 120).
set -u

builddir=${top_builddir:-.}
prog="$builddir/perf/duet_perf"
out=$(mktemp -d "${TMPDIR:-/tmp}/duet_perf_test.XXXXXX") || exit 1
trap 'rm -rf "$out"' EXIT
export DUET_TIMEOUT_MS=${DUET_TIMEOUT_MS:-60000}
. "$(dirname "$0")/mpi/mpirun_env.sh"
mpi_test_setup perf 120 "$prog" "$builddir/perf/duet_info"

passed=0
failed=0
result() { # <name> <ok:0|1> [why]
  if [ "$2" = 0 ]; then
    passed=$((passed + 1))
    echo "# $1: passed"
  else
    failed=$((failed + 1))
    echo "# $1: FAILED${3:+ ($3)}"
  fi
}

# perf <np> <outfile> [args...]: run duet_perf, stdout to outfile, stderr to outfile.err
perf() {
  local np=$1 file=$2
  shift 2
  echo "+ $mpirun -np $np $prog $*"
  timeout -k 10 "$limit" "$mpirun" "${mpiopts[@]}" -np "$np" "$prog" "$@" >"$file" 2>"$file.err"
}

HEADER="collective,nranks,size,count,type,op,root,time_oop,algbw_oop,busbw_oop,wrong_oop,time_ip,algbw_ip,busbw_ip,wrong_ip,mpi_time_oop,ratio_oop,mpi_wrong_oop,mpi_time_ip,ratio_ip,mpi_wrong_ip"

# check_csv <file> <collective> <np>: the header, at least one row, and per
# row: time_oop > 0; wrong_oop 0; wrong_ip 0 (or empty with no in-place form);
# barrier: no wrong columns. Prints why it fails.
check_csv() {
  local file=$1 coll=$2 np=$3
  if [ "$(head -1 "$file")" != "$HEADER" ]; then
    echo "  unexpected header: $(head -1 "$file")"
    return 1
  fi
  awk -F, -v coll="$coll" -v np="$np" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    function v(name) { return $col[name] }
    function num(x) { return x ~ /^[0-9]+(\.[0-9]+)?$/ }
    {
      rows++
      if (NF != 21) { print "  row " NR ": " NF " fields, not 21"; bad = 1 }
      if (v("collective") != coll || v("nranks") != np) { print "  row " NR ": collective/nranks " v("collective") "/" v("nranks"); bad = 1 }
      if (!num(v("time_oop")) || v("time_oop") <= 0) { print "  row " NR ": time_oop \"" v("time_oop") "\""; bad = 1 }
      if (coll == "barrier") {
        if (v("wrong_oop") != "" || v("time_ip") != "") { print "  row " NR ": barrier has wrong/in-place values"; bad = 1 }
        next
      }
      if (v("wrong_oop") != "0") { print "  row " NR " (" v("size") " B " v("type") " " v("op") "): wrong_oop \"" v("wrong_oop") "\""; bad = 1 }
      for (k = 1; k <= 2; k++) { # with --compare mpi: MPI checked where it can be
        w = v("mpi_wrong" (k == 1 ? "_oop" : "_ip"))
        if (w != "" && w != "0") { print "  row " NR " (" v("size") " B " v("type") " " v("op") "): MPI wrong \"" w "\""; bad = 1 }
      }
      noip = coll == "alltoallv"
      if (noip ? v("wrong_ip") != "" : v("wrong_ip") != "0") { print "  row " NR " (" v("size") " B " v("type") " " v("op") "): wrong_ip \"" v("wrong_ip") "\""; bad = 1 }
    }
    END {
      if (!rows) { print "  no rows"; bad = 1 }
      exit bad
    }' "$file"
}

# perf_csv <name> <np> <coll> <outfile> [args...]: run duet_perf with --format
# csv and report check_csv's verdict (and a non-zero exit) as one result.
perf_csv() {
  local name=$1 np=$2 coll=$3 file=$4 rc why ok
  shift 4
  perf "$np" "$file" "$@" --format csv
  rc=$?
  why=$(check_csv "$file" "$coll" "$np")
  ok=$?
  [ $rc -ne 0 ] && { ok=1; why="exit $rc; $why $(tail -3 "$file.err" | tr '\n' ' ')"; }
  result "$name" $ok "$why"
}

# ---- every collective, np 2 and 3, checked ----
SIZES=(-b 8 -e 40K -f 5 -n 2 -w 1 -c 1)
nps="2 3"
[ "${DUET_TEST_QUICK:-0}" = 1 ] && nps=2
for np in $nps; do
  for coll in allreduce allgather reduce_scatter reduce broadcast alltoall alltoallv barrier; do
    args=(-C "$coll" "${SIZES[@]}")
    name="$coll np $np"
    # np 3 also checks MPI's equivalent call, as --compare mpi maps it
    [ "$np" = 3 ] && args+=(--compare mpi --rounds 1) name="$name, --compare mpi"
    case "$coll:$np" in
    allreduce:3 | reduce_scatter:3) args+=(-d all -o all) name="$name (all types and ops)" ;;
    reduce:3) args+=(-d all -o all -r 1) name="$name (all types and ops, root 1)" ;;
    broadcast:3) args+=(-d all -r 1) name="$name (all types, root 1)" ;;
    allgather:3 | alltoall:3) args+=(-d all) name="$name (all types)" ;;
    alltoallv:3) args+=(--skew 1) name="$name (skew 1)" ;;
    esac
    perf_csv "$name" "$np" "$coll" "$out/${coll}_np$np.csv" "${args[@]}"
  done
done

# ---- --nonblocking: every collective's non-blocking form (on one host, the
# load/store path's queued tasks), duet's and MPI's results right, eager and
# chunked sizes ----
for coll in allreduce allgather reduce_scatter reduce broadcast alltoall alltoallv barrier; do
  perf_csv "$coll np 3 --nonblocking --compare mpi" 3 "$coll" "$out/${coll}_nonblocking.csv" \
    -C "$coll" --nonblocking -b 8 -e 2M -f 64 -n 2 -w 1 -c 1 --compare mpi --rounds 1
done

# ---- --barrier: each call timed alone after a barrier (OSU's way); both
# libraries' results right, the mode named in the table and the JSON ----
for coll in allreduce alltoall; do
  perf_csv "$coll np 3 --barrier --compare mpi" 3 "$coll" "$out/${coll}_barrier.csv" \
    -C "$coll" --barrier -b 8 -e 2M -f 64 -n 3 -w 1 -c 1 --compare mpi --rounds 1
done
f="$out/barrier.txt"
perf 2 "$f" -C allreduce --barrier -b 8 -e 64 -n 2 -w 1
grep -q "each call timed alone after an MPI_Barrier" "$f"
result "--barrier named in the table's header" $? "$(head -5 "$f" | tr '\n' ' ')"
f="$out/barrier.json"
perf 2 "$f" -C allreduce --barrier -b 8 -e 64 -n 2 -w 1 --format json
grep -q '"barrier": true' "$f"
result "--barrier named in the JSON" $? "$(grep barrier "$f")"

# ---- --mem-alloc: buffers from duet_mem_alloc (the all-to-all reads its
# peers' blocks in place on one host), both libraries' results right, the
# mode named in the table and the JSON ----
for coll in alltoall allreduce; do
  perf_csv "$coll np 3 --mem-alloc --compare mpi" 3 "$coll" "$out/${coll}_mem.csv" \
    -C "$coll" --mem-alloc -b 8 -e 2M -f 16 -n 3 -w 1 -c 1 --compare mpi --rounds 1
done
f="$out/mem.txt"
perf 2 "$f" -C alltoall --mem-alloc -b 1M -e 1M -n 2 -w 1
grep -q "buffers from duet_mem_alloc" "$f"
result "--mem-alloc named in the table's header" $? "$(head -5 "$f" | tr '\n' ' ')"
f="$out/mem.json"
perf 2 "$f" -C alltoall --mem-alloc -b 1M -e 1M -n 2 -w 1 --format json
grep -q '"mem_alloc": true' "$f"
result "--mem-alloc named in the JSON" $? "$(grep mem_alloc "$f")"

# ---- --overlap / --overlap-sleep: computation between post and wait, with
# the progress thread; both libraries' results right, every time at least
# the computation (it is not skipped), the mode named in the table and the
# JSON ----
for mode in overlap overlap-sleep; do
  f="$out/$mode.csv"
  DUET_PROGRESS_THREAD=1 perf_csv "allreduce np 3 --$mode 300 --compare mpi" 3 allreduce "$f" \
    -C allreduce --$mode 300 -b 8 -e 1M -f 64 -n 3 -w 1 -c 1 --compare mpi --rounds 1
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { n++; for (k = 1; k <= 2; k++) { s = k == 1 ? "_oop" : "_ip"
        if ($col["time" s] < 300 || $col["mpi_time" s] < 300) { print "  row " NR ": time" s " " $col["time" s] " mpi_time" s " " $col["mpi_time" s] " under 300 us"; bad = 1 } } }
    END { exit bad || n == 0 }' "$f" >"$f.why"
  result "--$mode: every call takes at least its computation" $? "$(cat "$f.why")"
done
f="$out/overlap.txt"
perf 2 "$f" -C allreduce --overlap 50 -b 8 -e 64 -n 2 -w 1
grep -q "each call posted, 50 us of computation (spinning), then waited" "$f"
result "--overlap named in the table's header" $? "$(head -5 "$f" | tr '\n' ' ')"
f="$out/overlap.json"
perf 2 "$f" -C allreduce --overlap-sleep 50 -b 8 -e 64 -n 2 -w 1 --format json
grep -q '"overlap_us": 50,' "$f" && grep -q '"overlap_sleep": true' "$f"
result "--overlap-sleep named in the JSON" $? "$(grep overlap "$f")"

# ---- --compare mpi: ratio a positive number, MPI's result right ----
f="$out/compare.csv"
perf 2 "$f" -C reduce_scatter -b 8 -e 64K -f 8 -n 2 -w 1 -c 1 --compare mpi --format csv
rc=$?
why=$(check_csv "$f" reduce_scatter 2)
ok=$?
if ! awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  {
    n++
    for (k = 1; k <= 2; k++) {
      s = k == 1 ? "_oop" : "_ip"
      r = $col["ratio" s]; m = $col["mpi_time" s]; w = $col["mpi_wrong" s]
      if (r !~ /^[0-9]+(\.[0-9]+)?$/ || r <= 0 || m !~ /^[0-9]+(\.[0-9]+)?$/ || w != "0") {
        print "  row " NR ": ratio" s " \"" r "\" mpi_time" s " \"" m "\" mpi_wrong" s " \"" w "\""; bad = 1
      }
    }
  }
  END { exit bad || !n }' "$f" >"$f.why"; then
  ok=1 why="$why $(cat "$f.why")"
fi
[ $rc -ne 0 ] && { ok=1; why="exit $rc; $why"; }
result "--compare mpi (ratio > 0, MPI checked)" $ok "$why"

# A type MPI cannot reduce: N/A (empty) MPI columns, duet still checked.
f="$out/compare_bf16.csv"
perf 2 "$f" -C allreduce -d bfloat16 -b 8 -e 1K -f 8 -n 2 -w 1 -c 1 --compare mpi --format csv
rc=$?
why=$(check_csv "$f" allreduce 2)
ok=$?
if ! awk -F, 'NR > 1 && ($16 != "" || $17 != "") { bad = 1 } END { exit bad }' "$f"; then
  ok=1 why="$why MPI columns not empty for bfloat16"
fi
[ $rc -ne 0 ] && { ok=1; why="exit $rc; $why"; }
result "--compare mpi with bfloat16 (MPI N/A)" $ok "$why"

# ---- the table: the nccl-tests columns, compare columns, the summary ----
f="$out/table.txt"
perf 2 "$f" -C allgather -b 8 -e 1K -f 8 -n 2 -w 1 -c 1 --compare mpi
rc=$?
ok=0 why=""
grep -Eq '^# +size +count +type +redop +time +algbw +busbw +#wrong +mpi_time +ratio +time +algbw +busbw +#wrong +mpi_time +ratio$' "$f" || { ok=1; why="column names"; }
grep -q '^# Out of bounds values : 0 OK$' "$f" || { ok=1; why="$why, duet summary"; }
grep -q '^# MPI out of bounds values : 0 OK$' "$f" || { ok=1; why="$why, MPI summary"; }
[ "$(grep -Ec '^ +[0-9]+ ' "$f")" -ge 3 ] || { ok=1; why="$why, rows"; }
[ $rc -ne 0 ] && { ok=1; why="exit $rc; $why"; }
result "table format" $ok "$why"

# ---- JSON ----
f="$out/perf.json"
perf 3 "$f" -C reduce -r 2 -d all -o max -b 8 -e 4K -f 8 -n 2 -w 1 -c 1 --compare mpi --format json
rc=$?
if [ $rc -ne 0 ]; then
  result "json format" 1 "exit $rc"
elif command -v python3 >/dev/null 2>&1; then
  why=$(python3 - "$f" <<'EOF' 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
assert d["collective"] == "reduce" and d["nranks"] == 3 and d["root"] == 2, d
assert d["compare"] == "mpi" and d["iterations"] == 2 and d["op"] == "max", d
assert d["wrong"] == 0 and d["mpi_wrong"] == 0, (d["wrong"], d["mpi_wrong"])
assert len(d["rows"]) == 12 * 4, len(d["rows"])
for r in d["rows"]:
    assert r["wrong_oop"] == 0 and r["wrong_ip"] == 0 and r["root"] == 2, r
    assert r["time_oop"] > 0 and r["busbw_oop"] >= 0, r
    if r["type"] in ("float16", "bfloat16", "float8e4m3", "float8e5m2"):
        assert r["mpi_time_oop"] is None and r["ratio_oop"] is None, r
    else:
        assert r["ratio_oop"] > 0 and r["mpi_wrong_oop"] == 0, r
EOF
)
  result "json format (python3)" $? "$why"
else
  echo "# json format: python3 not found, the JSON is not validated"
  grep -q '"rows": \[' "$f"
  result "json format (no python3: rows present)" $?
fi

# ---- duet_info's tuner choices are the library's: each call's choice as
# the library traces it (DUET_DEBUG=TRACE, TUNE) against duet_info's row of
# the same collective and size, for the job duet_info is told of ----

# lib_choices <file>: "collective bytes algorithm chunk est" of each call on
# the whole communicator (the library's trace lines), once each.
lib_choices() {
  sed -n 's/.* TRACE \([a-z_]*\) \([0-9]*\) bytes on [0-9]* ranks (.*): \([a-z]*\) (.*), chunk \([0-9]*\), est \([0-9.]*\) us$/\1 \2 \3 \4 \5/p' \
    "$1.err" | sort -u
}

# info_choices <file> [VAR=value ...] -- <duet_info args>: its rows as
# "collective bytes algorithm chunk est" (load/store rows: "- -").
info_choices() {
  local file=$1 vars=()
  shift
  while [ "$1" != "--" ]; do vars+=("$1"); shift; done
  shift
  env ${vars[@]+"${vars[@]}"} "$info" "$@" -t >"$file.info" 2>&1 || return 1
  awk '$3 ~ /^[KMG]?i?B$/ && $4 ~ /^[0-9]+$/ { print $1, $4, $5, $6, $7 }' "$file.info"
}

# same_choices <name> <file>: every traced choice whose collective and size
# duet_info shows is the same there; at least 5 compared.
same_choices() {
  local name=$1 file=$2 n=0 bad="" line key want
  while read -r line; do
    key=${line% * * *}
    want=$(grep -m1 "^$key " "$file.want")
    [ -z "$want" ] && continue
    n=$((n + 1))
    [ "$want" = "$line" ] || bad="$bad library '$line', duet_info '$want';"
  done < <(lib_choices "$file")
  if [ -n "$bad" ] || [ "$n" -lt 5 ]; then
    result "$name" 1 "$n compared:$bad $(grep -m3 -i 'error\|fail' "$file.err" | tr '\n' ' ')"
  else
    result "$name ($n calls)" 0
  fi
}

# traced <file> <mpirun arguments...>: a launch with the tuner's trace on
# (in the first of several programs: -x before -np reaches only that one)
traced() {
  local file=$1
  shift
  echo "+ $mpirun $*"
  timeout -k 10 "$limit" "$mpirun" "${mpiopts[@]}" -x DUET_DEBUG=TRACE -x DUET_DEBUG_SUBSYS=TUNE \
    "$@" >"$file" 2>"$file.err"
}

info="$builddir/perf/duet_info"
sweep=(-b 8 -e 2M -f 8 -n 1 -w 0 -c 0)
for np in 2 4; do
  for coll in allreduce alltoall; do
    f="$out/choice_${coll}_tcp_np$np"
    info_choices "$f" DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp -- -n "$np" >"$f.want"
    traced "$f" -x DUET_UPN_PROVIDER=tcp -x DUET_HPN_PROVIDER=tcp -np "$np" "$prog" -C "$coll" \
      "${sweep[@]}"
    same_choices "duet_info -n $np = the library's choices, $coll over tcp" "$f"
  done
done
# two emulated super-nodes of 2 (the hierarchy, load/store inside each)
for coll in allreduce alltoall; do
  f="$out/choice_${coll}_sn"
  info_choices "$f" -- -n 4 -s 2 >"$f.want"
  traced "$f" -np 2 -x DUET_SUPERNODE=a "$prog" -C "$coll" "${sweep[@]}" : \
    -np 2 -x DUET_SUPERNODE=b "$prog" -C "$coll" "${sweep[@]}"
  same_choices "duet_info -n 4 -s 2 = the library's choices, $coll on 2 super-nodes" "$f"
done
# DUET_UPN_PROVIDER=mem names the default load/store path: priced alike
f="$out/choice_allreduce_sn_mem"
info_choices "$f" DUET_UPN_PROVIDER=mem -- -n 4 -s 2 >"$f.want"
traced "$f" -np 2 -x DUET_UPN_PROVIDER=mem -x DUET_SUPERNODE=a "$prog" -C allreduce "${sweep[@]}" \
  : -np 2 -x DUET_UPN_PROVIDER=mem -x DUET_SUPERNODE=b "$prog" -C allreduce "${sweep[@]}"
same_choices "DUET_UPN_PROVIDER=mem: duet_info -n 4 -s 2 = the library's choices" "$f"
# one host, the load/store path: no tuner call, and duet_info says so
f="$out/choice_mem"
info_choices "$f" -- -n 2 >"$f.want"
traced "$f" -np 2 "$prog" -C allreduce "${sweep[@]}"
rows=$(grep -c '^allreduce .* - -$' "$f.want")
[ "$rows" -ge 5 ] && [ "$(lib_choices "$f" | grep -c '^allreduce ')" = 0 ] &&
  ! grep -q '^allreduce .*[0-9]$' "$f.want"
result "duet_info -n 2: load/store for the one-host allreduce, as the library" $? \
  "$rows load/store rows; library: $(lib_choices "$f" | grep -m2 '^allreduce ' | tr '\n' ' ')"

# ---- bad arguments: exit 2, the option named, no hang ----
for bad in "-C nosuch:-C" "-n 0:-n" "-c 2:-c" "--compare nccl:--compare" "--format xml:--format" \
  "-C reduce -r 7:-r" "-b 1M -e 1K:-b" "--rounds 0:--rounds" "--nosuch:--nosuch" "-f x:-f" \
  "--overlap -5:--overlap" "--overlap-sleep x:--overlap-sleep"; do
  args=${bad%%:*} opt=${bad##*:}
  f="$out/bad.txt"
  # shellcheck disable=SC2086 # the arguments are words
  perf 2 "$f" $args
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q -- "^duet_perf: .*$opt" "$f.err"; then
    result "bad argument '$args' (exit $rc)" 0
  else
    result "bad argument '$args'" 1 "exit $rc: $(head -2 "$f.err" | tr '\n' ' ')"
  fi
done

echo "perf: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
