#!/bin/bash
# vectorized.sh - the reduction kernels of this build run on packed SIMD
# instructions. They are plain C loops left to the compiler's vectoriser, and
# a build that stops vectorising them (CFLAGS=-O2 with GCC 12 did, until
# configure asked for the vectoriser's flags) still passes every correctness
# test while allreduce over tcp runs 20-40% slower. This reads the machine
# code of the kernels in the build's object file and fails if a kernel has no
# packed arithmetic. x86-64 only: other targets name their SIMD differently.
# A sanitizer build instruments every access before the vectoriser runs, so
# there the kernels are compiled again, the library's way without the
# sanitizers (CC, CFLAGS, VEC_CFLAGS from make), and that object is read.
# Env: top_builddir, top_srcdir (default .), SAN_FLAGS, CC, CFLAGS,
# VEC_CFLAGS. Ends with "vectorized: N passed, M failed".
set -u

builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
obj="$builddir/src/reduce/.libs/libduet_core_la-reduce.o"
[ -f "$obj" ] || obj="$builddir/src/reduce/libduet_core_la-reduce.o"
passed=0
failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/duet_vec.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [ "$(uname -m)" != x86_64 ]; then
  echo "vectorized: not x86-64 ($(uname -m)): nothing to check"
  echo "vectorized: 0 passed, 0 failed"
  exit 0
fi
if ! command -v objdump >/dev/null; then
  echo "vectorized: objdump (binutils) is missing"; exit 1
fi
if [ -n "${SAN_FLAGS:-}" ]; then
  obj="$tmp/reduce.o"
  echo "# sanitizer build ($SAN_FLAGS): reading reduce.c compiled without them"
  # shellcheck disable=SC2086 # the flags are word lists
  ${CC:-cc} -std=c11 -D_GNU_SOURCE -DHAVE_CONFIG_H -I"$builddir" -I"$srcdir/include" \
    -I"$srcdir/src" -O3 ${VEC_CFLAGS:-} ${CFLAGS:-} -c "$srcdir/src/reduce/reduce.c" \
    -o "$obj" || exit 1
fi
if [ ! -f "$obj" ]; then
  echo "vectorized: no object file for src/reduce/reduce.c under $builddir"; exit 1
fi
dis=$(objdump -d --no-show-raw-insn "$obj") || exit 1

# <kernel> <instruction regex>: the kernel and its aliasing variants
# (k_sum_f32, k_sum_f32_abc, k_sum_f32_da, ...) hold at least one.
check() {
  local n
  n=$(printf '%s\n' "$dis" | awk -v fn="$1" -v re="$2" '
    /^[0-9a-f]+ <.*>:$/ { name = $2; gsub(/[<>:]/, "", name); inside = (name == fn || index(name, fn "_") == 1) }
    inside && $0 ~ re { n++ }
    END { print n + 0 }')
  if [ "$n" -gt 0 ]; then
    passed=$((passed + 1)); echo "# $1: $n packed instructions: passed"
  else
    failed=$((failed + 1)); echo "# $1: no packed instruction matching /$2/: FAILED"
  fi
}

check k_sum_f32 '[[:space:]]v?addps[[:space:]]'
check k_sum_f64 '[[:space:]]v?addpd[[:space:]]'
check k_prod_f32 '[[:space:]]v?mulps[[:space:]]'
check k_sum_i32 '[[:space:]]v?paddd[[:space:]]'
check k_sum_i64 '[[:space:]]v?paddq[[:space:]]'
check k_max_f32 '[[:space:]]v?(cmp[a-z]*ps|blendvps|andn?ps)[[:space:]]'
check k_min_f64 '[[:space:]]v?(cmp[a-z]*pd|blendvpd|andn?pd)[[:space:]]'
check k_min_i8 '[[:space:]]v?(pminsb|pcmpgtb|pand|pandn|por|pblendvb)[[:space:]]'
# 8- and 16-bit floats: the word loops (kw_*, built for AVX2 and the base ISA
# where the toolchain has target_clones) widen, reduce and narrow in lanes.
check kw_sum_bf16 '[[:space:]]v?addps[[:space:]]'
check kw_max_f16 '[[:space:]]v?(cmp[a-z]*ps|blendvps|andn?ps)[[:space:]]'
check kw_prod_e4m3 '[[:space:]]v?mulps[[:space:]]'
check kw_sum_e5m2 '[[:space:]]v?addps[[:space:]]'

echo "vectorized: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
