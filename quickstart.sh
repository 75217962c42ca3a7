#!/usr/bin/env bash
# Quick start: install the Debian packages duet needs (if missing), build
# everything, and run the allreduce benchmark on 4 ranks over the default
# one-host path (libfabric shm) and over tcp.
set -euo pipefail
cd "$(dirname "$0")"

pkgs=$(cat .ci/packages)
missing=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $pkgs 2>/dev/null |
          awk '$2 != "installed" {print $1}'; for p in $pkgs; do dpkg-query -W "$p" >/dev/null 2>&1 || echo "$p"; done)
missing=$(echo "$missing" | sort -u | tr '\n' ' ')
if [ -n "${missing// /}" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing: $missing"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

echo "== building"
[ -x configure ] || ./autogen.sh
[ -f Makefile ] || ./configure --enable-werror
make -j"$(nproc)"

run() {
  echo "== $*"
  timeout 600 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader,tcp \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 4 "$@"
}
run perf/duet_perf -b 8 -e 64M -f 4 -c 1
DUET_UPN_PROVIDER=tcp DUET_HPN_PROVIDER=tcp run perf/duet_perf -b 8 -e 64M -f 4 -c 1
