#!/usr/bin/env bash
# compare.sh - duet against Open MPI and Gloo, allreduce and all-to-all, on one host.
#
#   perf/compare.sh [-o OUTDIR] [-q]
#
# For each collective (allreduce, alltoall), rank count (2, 4) and network
#   default  duet's default providers, Open MPI's default BTLs (shared memory)
#   tcp      DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp, Open MPI --mca btl self,tcp
# it runs perf/duet_perf, Open MPI's equivalent collective and perf/gloo_perf
# (Gloo is always TCP on 127.0.0.1, so it is run once per collective and rank
# count and shown in both networks' tables) on float32 sum, sizes 8 B .. 128 KiB
# by x4 (-b 8 -f 4) and 512 KiB .. 64 MiB by x2 (-b 512K -e 64M -f 2: every
# size from the 1 MiB of the speed targets to their 64 MiB), and writes to
# OUTDIR (default results/<date>):
#   raw/*.log              every benchmark's output
#   csv/<lib>_<coll>_np<N>_<net>.csv   one CSV per run
#   results.md             one combined table with duet/MPI and duet/Gloo ratios
#   plots/<coll>_np<N>_<net>.png       busbw vs size, log-log, one line per library
#   meta.txt               commit, command, machine, versions, notes
#
# Open MPI's numbers: if `duet_perf -h` mentions --compare, duet_perf is run
# with `--compare mpi` and times MPI's collective in the same processes on the
# same buffers, interleaved (its mpi_time column); otherwise, and for a
# collective duet_perf does not know, perf/mpi_perf.c (MPI_Allreduce /
# MPI_Alltoall, same columns) is built with mpicc and run separately.
#
# Environment (all optional):
#   DUET_BUILDDIR  build tree holding perf/duet_perf (default: this source tree)
#   DUET_PERF      the duet_perf to run (default $DUET_BUILDDIR/perf/duet_perf)
#   MPI_PERF       a built mpi_perf (default: $DUET_BUILDDIR/perf/mpi_perf, else built
#                  from perf/mpi_perf.c with mpicc into OUTDIR/bin)
#   GLOO_PERF      a built gloo_perf (default: $DUET_BUILDDIR/perf/gloo_perf, gloo_perf on
#                  PATH, else built with g++ -lgloo into OUTDIR/bin; skipped if impossible)
#   COLLS NPS NETS what to run (default "allreduce alltoall", "2 4", "default tcp")
#   SMALL_ITERS SMALL_WARMUP  -n/-w for 8 B .. 128 KiB (default 100 10)
#   LARGE_ITERS LARGE_WARMUP  -n/-w for 512 KiB .. 64 MiB (default 20 3)
#   SMALL_FACTOR LARGE_FACTOR  the size steps of the two parts (default 4 2)
#   RUN_TIMEOUT    seconds allowed per mpirun (default 300)
#   DUET_COMMIT    the commit duet_perf was built from, for the report (default: git HEAD here)
# -q: quick smoke run (np 2, sizes up to 2 MiB, few iterations).
set -u
# Open MPI's hwloc asks X servers about GPUs (display :0, TCP port 6000 up)
# and waits forever where something else listens there: no display probing.
export HWLOC_COMPONENTS=${HWLOC_COMPONENTS:--gl,-opencl}

SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
BUILDDIR=${DUET_BUILDDIR:-$SRCDIR}
DUET_PERF=${DUET_PERF:-$BUILDDIR/perf/duet_perf}
COLLS=${COLLS:-"allreduce alltoall"}
NPS=${NPS:-"2 4"}
NETS=${NETS:-"default tcp"}
SMALL_ITERS=${SMALL_ITERS:-100}
SMALL_WARMUP=${SMALL_WARMUP:-10}
LARGE_ITERS=${LARGE_ITERS:-20}
LARGE_WARMUP=${LARGE_WARMUP:-3}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
SMALL_FACTOR=${SMALL_FACTOR:-4}
LARGE_FACTOR=${LARGE_FACTOR:-2}
MINB=8 SPLITB=512K MAXB=64M
OUT=""
CMDLINE="$0 $*"

while getopts "o:qh" opt; do
  case $opt in
  o) OUT=$OPTARG ;;
  q) NPS=2 MAXB=2M SMALL_ITERS=5 SMALL_WARMUP=1 LARGE_ITERS=2 LARGE_WARMUP=1 ;;
  h) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) exit 2 ;;
  esac
done
OUT=${OUT:-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/raw" "$OUT/csv" "$OUT/plots" "$OUT/bin" || exit 1
OUT=$(cd "$OUT" && pwd)
NOTES="$OUT/notes.txt"
: >"$NOTES"
note() { echo "note: $*" | tee -a "$NOTES" >&2; }
STATUS=0
T0=$(date +%s)

MPIRUN=(timeout -k 10 "$RUN_TIMEOUT" mpirun --allow-run-as-root --oversubscribe
  --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)

# ---- the programs ----
if [ ! -x "$DUET_PERF" ]; then
  echo "compare.sh: no duet_perf at $DUET_PERF (build first, or set DUET_BUILDDIR / DUET_PERF)" >&2
  exit 2
fi
DUET_HELP=$(timeout 60 "$DUET_PERF" -h 2>&1)
HAVE_COMPARE=0
if grep -q -- '--compare' <<<"$DUET_HELP"; then HAVE_COMPARE=1; fi
duet_knows() { # collective name appears in duet_perf's -C line
  grep -E -- '^ *-C ' <<<"$DUET_HELP" | grep -qw "$1"
}

MPI_PERF=${MPI_PERF:-}
if [ -z "$MPI_PERF" ] && [ -x "$BUILDDIR/perf/mpi_perf" ]; then MPI_PERF=$BUILDDIR/perf/mpi_perf; fi
mpi_perf_bin() { # build perf/mpi_perf.c once, when first needed
  if [ -z "$MPI_PERF" ]; then
    if mpicc -O2 -o "$OUT/bin/mpi_perf" "$SRCDIR/perf/mpi_perf.c" 2>"$OUT/bin/mpi_perf.build.log"; then
      MPI_PERF=$OUT/bin/mpi_perf
    else
      MPI_PERF=none
      note "mpicc could not build perf/mpi_perf.c (see bin/mpi_perf.build.log): no MPI numbers"
    fi
  fi
  [ "$MPI_PERF" != none ]
}

GLOO_PERF=${GLOO_PERF:-}
if [ -z "$GLOO_PERF" ]; then
  if [ -x "$BUILDDIR/perf/gloo_perf" ]; then
    GLOO_PERF=$BUILDDIR/perf/gloo_perf
  elif command -v gloo_perf >/dev/null 2>&1; then
    GLOO_PERF=$(command -v gloo_perf)
  elif [ -f /usr/include/gloo/allreduce.h ] && command -v g++ >/dev/null 2>&1 &&
    g++ -O2 -std=c++17 -o "$OUT/bin/gloo_perf" "$SRCDIR/perf/gloo_perf.cc" -lgloo \
      2>"$OUT/bin/gloo_perf.build.log"; then
    GLOO_PERF=$OUT/bin/gloo_perf
  fi
fi
HAVE_GLOO=0
if [ -n "$GLOO_PERF" ] && [ -x "$GLOO_PERF" ]; then
  HAVE_GLOO=1
else
  note "Gloo not found (apt-get install -y libgloo-dev, or set GLOO_PERF): Gloo columns skipped"
fi
HAVE_GNUPLOT=0
if command -v gnuplot >/dev/null 2>&1; then HAVE_GNUPLOT=1; else
  note "gnuplot not found (apt-get install -y gnuplot-nox): no plots"
fi

# ---- output parsing ----
# to_csv LOG LIB COLL NP NET [mpi]: the data rows of LOG as CSV rows. busbw is
# recomputed from size and time, which are printed with more digits. With
# "mpi", the row's out-of-place mpi_time column (duet_perf --compare mpi adds
# "mpi_time ratio" after each group's #wrong) instead of duet's; N/A is empty.
to_csv() {
  awk -v lib="$2" -v coll="$3" -v np="$4" -v net="$5" -v which="${6:-}" '
    function bus(b, t) {
      if (t !~ /^[0-9.]+$/ || t <= 0) return ""
      f = coll == "allreduce" ? 2.0 * (np - 1) / np : (np - 1) / np
      return sprintf("%.6g", b / t / 1e3 * f)
    }
    /^#/ && / size / && / count / {           # the column names: find MPI'"'"'s
      sub(/^#/, "")
      nt = nw = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^mpi_time/) { if (!mcol) mcol = i }   # the first: out of place
        else if ($i == "time") tcol[++nt] = i
        else if ($i == "#wrong") wcol[++nw] = i
      }
      next
    }
    /^#/ || NF < 8 || $1 !~ /^[0-9]+$/ { next }
    {
      if (which == "mpi") {
        c = mcol ? mcol : NF - 2
        mt = $c == "N/A" ? "" : $c
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,,,\n", lib, coll, np, net, $1, $2, $3, $4, mt, bus($1, mt)
      } else {
        t1 = nt >= 1 ? tcol[1] : 5; w1 = nw >= 1 ? wcol[1] : 8   # out of place
        t2 = nt >= 2 ? tcol[2] : 9; w2 = nw >= 2 ? wcol[2] : 12  # in place
        ipt = NF >= t2 && $t2 != "N/A" ? $t2 : ""
        ipw = NF >= w2 && $w2 != "N/A" ? $w2 : ""
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", lib, coll, np, net, $1, $2, $3, $4,
          $t1, bus($1, $t1), $w1, ipt, ipw
      }
    }' "$1"
}
CSV_HEADER="library,collective,np,network,size_bytes,count,type,redop,time_us,busbw_GBps,wrong,inplace_time_us,inplace_wrong"

# run_one LIB COLL NP NET: every size, as two launches (small sizes with more
# iterations, then large ones), into raw/ and csv/.
run_one() {
  local lib=$1 coll=$2 np=$3 net=$4 bin args=() envs=() mca=() log csv part rc
  log="$OUT/raw/${lib}_${coll}_np${np}_${net}.log"
  csv="$OUT/csv/${lib}_${coll}_np${np}_${net}.csv"
  : >"$log"
  case $lib in
  duet)
    bin=$DUET_PERF
    args=(-C "$coll")
    [ "$HAVE_COMPARE" = 1 ] && args+=(--compare mpi)
    ;;
  mpi) bin=$MPI_PERF args=(-C "$coll") ;;
  gloo) bin=$GLOO_PERF args=(-C "$coll") ;;
  esac
  if [ "$net" = tcp ]; then
    [ "$lib" = gloo ] || mca=(--mca btl self,tcp)
    [ "$lib" = duet ] && envs=(-x DUET_UPN_PROVIDER=tcp -x DUET_HPN_PROVIDER=tcp)
  fi
  for part in small large; do
    local range=(-b "$MINB" -e $((512 * 1024 - 1)) -f "$SMALL_FACTOR" -n "$SMALL_ITERS"
      -w "$SMALL_WARMUP")
    [ $part = large ] &&
      range=(-b "$SPLITB" -e "$MAXB" -f "$LARGE_FACTOR" -n "$LARGE_ITERS" -w "$LARGE_WARMUP")
    local extra=()
    local store=""
    if [ "$lib" = gloo ]; then
      store=$(mktemp -d /tmp/gloo_store.XXXXXX)
      extra=(-s "$store")
    fi
    echo "## $lib $coll np $np $net $part: $(date +%T)" >>"$log"
    echo "## mpirun -np $np ${mca[*]} ${envs[*]} $bin ${args[*]} ${range[*]} ${extra[*]}" >>"$log"
    env -u DUET_UPN_PROVIDER -u DUET_HPN_PROVIDER "${MPIRUN[@]}" -np "$np" "${mca[@]}" "${envs[@]}" \
      "$bin" "${args[@]}" "${range[@]}" "${extra[@]}" >>"$log" 2>&1
    rc=$?
    [ -n "$store" ] && rm -rf "$store"
    if [ $rc -ne 0 ]; then
      note "$lib $coll np $np $net ($part sizes) exited with $rc$([ $rc = 124 ] && echo ' (timeout)'): see raw/$(basename "$log")"
      STATUS=1
    fi
  done
  { echo "$CSV_HEADER"; to_csv "$log" "$lib" "$coll" "$np" "$net"; } >"$csv"
  if [ "$lib" = duet ] && [ "$HAVE_COMPARE" = 1 ]; then
    { echo "$CSV_HEADER"; to_csv "$log" mpi "$coll" "$np" "$net" mpi; } \
      >"$OUT/csv/mpi_${coll}_np${np}_${net}.csv"
  fi
  if awk -F, 'NR > 1 && (($11 != "" && $11 != 0) || ($13 != "" && $13 != 0)) { bad = 1 } END { exit !bad }' "$csv"; then
    note "$lib $coll np $np $net: #wrong is not 0 on some rows"
    STATUS=1
  fi
  echo "  $lib $coll np $np $net: $(($(wc -l <"$csv") - 1)) sizes ($(($(date +%s) - T0)) s so far)" >&2
}

# ---- the runs ----
echo "compare.sh: results in $OUT" >&2
for coll in $COLLS; do
  for np in $NPS; do
    for net in $NETS; do
      if duet_knows "$coll"; then
        run_one duet "$coll" "$np" "$net"
      elif [ "$np $net" = "${NPS%% *} ${NETS%% *}" ]; then
        note "this duet_perf has no $coll (-C): the duet columns of $coll are empty"
      fi
      if [ "$HAVE_COMPARE" = 1 ] && duet_knows "$coll" &&
        [ "$(wc -l <"$OUT/csv/mpi_${coll}_np${np}_${net}.csv")" -gt 1 ]; then
        : # MPI timed inside duet_perf --compare mpi
      elif mpi_perf_bin; then
        run_one mpi "$coll" "$np" "$net"
      fi
    done
    [ "$HAVE_GLOO" = 1 ] && run_one gloo "$coll" "$np" tcp
  done
done

# ---- the combined table ----
MPI_SOURCE="perf/mpi_perf (MPI_Allreduce / MPI_Alltoall, separate run)"
[ "$HAVE_COMPARE" = 1 ] && MPI_SOURCE="duet_perf --compare mpi (same processes and buffers, interleaved)"
cat "$OUT"/csv/*.csv 2>/dev/null | awk -F, -v gloo="$HAVE_GLOO" -v colls="$COLLS" -v nps="$NPS" -v nets="$NETS" '
  function hsize(b) {
    if (b >= 1048576) return sprintf("%g MiB", b / 1048576)
    if (b >= 1024) return sprintf("%g KiB", b / 1024)
    return b " B"
  }
  function t(x) { return x == "" ? "-" : sprintf("%.1f", x) }
  function bw(x) { return x == "" ? "-" : sprintf("%.3g", x) }
  function ratio(d, o) { return d == "" || o == "" || d <= 0 ? "-" : sprintf("%.2f", o / d) }
  $1 == "library" { next }
  {
    k = $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
    T[$1, k] = $9; B[$1, k] = $10
    if (!(($2, $3, $5) in seen)) { seen[$2, $3, $5] = 1; sizes[$2, $3] = sizes[$2, $3] " " $5 }
  }
  END {
    printf "| collective | np | network | size | duet time (us) | MPI time (us) |%s duet busbw (GB/s) | MPI busbw (GB/s) |%s duet/MPI |%s\n",
      gloo ? " Gloo time (us) |" : "", gloo ? " Gloo busbw (GB/s) |" : "", gloo ? " duet/Gloo |" : ""
    printf "|---|---:|---|---:|---:|---:|%s---:|---:|%s---:|%s\n", gloo ? "---:|" : "", gloo ? "---:|" : "", gloo ? "---:|" : ""
    nc = split(colls, C, " "); nn = split(nps, N, " "); nw = split(nets, W, " ")
    for (ci = 1; ci <= nc; ci++) for (ni = 1; ni <= nn; ni++) for (wi = 1; wi <= nw; wi++) {
      c = C[ci]; n = N[ni]; w = W[wi]
      ns = split(sizes[c, n], S, " ")
      # sizes in increasing order
      for (i = 2; i <= ns; i++) { v = S[i]; j = i - 1; while (j > 0 && S[j] + 0 > v + 0) { S[j + 1] = S[j]; j-- } S[j + 1] = v }
      for (i = 1; i <= ns; i++) {
        k = c SUBSEP n SUBSEP w SUBSEP S[i]; g = c SUBSEP n SUBSEP "tcp" SUBSEP S[i]
        if (!(("duet", k) in T) && !(("mpi", k) in T)) continue
        printf "| %s | %s | %s | %s | %s | %s |", c, n, w, hsize(S[i]), t(T["duet", k]), t(T["mpi", k])
        if (gloo) printf " %s |", t(T["gloo", g])
        printf " %s | %s |", bw(B["duet", k]), bw(B["mpi", k])
        if (gloo) printf " %s |", bw(B["gloo", g])
        printf " %s |", ratio(T["duet", k], T["mpi", k])
        if (gloo) printf " %s |", ratio(T["duet", k], T["gloo", g])
        printf "\n"
      }
    }
  }' >"$OUT/table.md"

COMMIT=$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -f "$SRCDIR/.git" ] || [ -d "$SRCDIR/.git" ] || COMMIT="unknown (not a git checkout: $SRCDIR)"
{
  echo "# duet vs Open MPI vs Gloo"
  echo
  echo "- date: $(date -Is), host $(hostname), $(nproc) cores, $(uname -sr)"
  echo "- duet_perf: $DUET_PERF (source commit: ${DUET_COMMIT:-$COMMIT})"
  echo "- Open MPI: $(mpirun --version 2>/dev/null | head -1); numbers from $MPI_SOURCE"
  if [ "$HAVE_GLOO" = 1 ]; then echo "- Gloo: $GLOO_PERF ($(dpkg-query -W -f '${Package} ${Version}' libgloo-dev 2>/dev/null || echo 'libgloo'), TCP on 127.0.0.1)"; fi
  echo "- command: $CMDLINE (COLLS=\"$COLLS\" NPS=\"$NPS\" NETS=\"$NETS\";" \
    "sizes x$SMALL_FACTOR from $MINB B with -n $SMALL_ITERS -w $SMALL_WARMUP below 512 KiB," \
    "x$LARGE_FACTOR from 512 KiB to $MAXB with -n $LARGE_ITERS -w $LARGE_WARMUP; RUN_TIMEOUT=$RUN_TIMEOUT)"
  TIME_DEF="average per call over the timed loop, averaged over ranks"
  [ "$HAVE_COMPARE" = 1 ] && TIME_DEF="$TIME_DEF (duet and MPI: median of duet_perf's 3 interleaved rounds)"
  echo "- float32 sum; time = $TIME_DEF;" \
    "busbw = size/time x 2(n-1)/n (allreduce) or (n-1)/n (alltoall);" \
    "duet/X = X time / duet time = duet busbw / X busbw (> 1: duet faster)."
  echo "- network default: duet's default providers, Open MPI's default BTLs;" \
    "tcp: DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp, --mca btl self,tcp. Gloo is always TCP" \
    "(the same Gloo run appears under both networks)."
  if [ -s "$NOTES" ]; then
    echo
    sed 's/^/- /' "$NOTES"
  fi
} >"$OUT/meta.txt"
{ cat "$OUT/meta.txt"; echo; cat "$OUT/table.md"; } >"$OUT/results.md"

# ---- plots ----
if [ "$HAVE_GNUPLOT" = 1 ]; then
  for coll in $COLLS; do for np in $NPS; do for net in $NETS; do
    dat="$OUT/plots/${coll}_np${np}_${net}.dat"
    cat "$OUT"/csv/*.csv | awk -F, -v c="$coll" -v n="$np" -v w="$net" '
      $1 == "library" || $2 != c || $3 != n { next }
      $1 == "gloo" || $4 == w { B[$1, $5] = $10; if (!($5 in s)) { s[$5] = 1; L[++m] = $5 } }
      function v(x) { return x == "" ? "NaN" : x }
      END {
        for (i = 2; i <= m; i++) { x = L[i]; j = i - 1; while (j > 0 && L[j] + 0 > x + 0) { L[j + 1] = L[j]; j-- } L[j + 1] = x }
        print "# size duet mpi gloo (busbw GB/s)"
        for (i = 1; i <= m; i++) print L[i], v(B["duet", L[i]]), v(B["mpi", L[i]]), v(B["gloo", L[i]])
      }' >"$dat"
    [ "$(grep -vc '^#' "$dat")" -gt 0 ] || continue
    gnuplot -e "datafile='$dat'; outfile='$OUT/plots/${coll}_np${np}_${net}.png'; plottitle='$coll, $np ranks, $net network: busbw (higher is better)'; ncols=$((HAVE_GLOO ? 4 : 3))" \
      "$SRCDIR/perf/plot.gp" 2>>"$OUT/plots/gnuplot.log" || note "gnuplot failed for $coll np $np $net"
  done; done; done
fi

echo "compare.sh: done in $(($(date +%s) - T0)) s: $OUT/results.md, $OUT/plots/, $OUT/csv/" >&2
exit $STATUS
