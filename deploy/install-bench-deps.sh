#!/usr/bin/env bash
# Installs the peers the benchmarks compare portwatch with and the tools they
# measure with, from Debian's packages, only those missing (plus what the
# tests need: deploy/install-test-deps.sh). Nothing is started.
#   prometheus-blackbox-exporter  the comparison (tcp_connect module)
#   tshark                        the timing truth: a packet capture
#   linux-perf, valgrind          profiles where a goal is missed
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-test-deps.sh

declare -A need=(
  [prometheus-blackbox-exporter]=prometheus-blackbox-exporter
  [tshark]=tshark
  [perf]=linux-perf
  [valgrind]=valgrind
)
missing=()
for bin in "${!need[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    missing+=("${need[$bin]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Answer wireshark-common's "may non-root users capture?" without asking.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
echo "benchmark dependencies present"
