#!/usr/bin/env bash
# Peak memory of sgw as two processes (gateway and client, as ../shared/bench/peers.sh's
# sgw-2proc row runs them) through peers.sh's phases: iperf3 with 1 and then 8 streams,
# redis-benchmark on kept-alive connections, then a new connection per PING. After each
# phase, each process's VmHWM (MiB) and the sum; the last sum is what peers.sh reports.
# Runs alternate between the binaries in SGW_BINS, so an A/B sees the same machine; the
# machine is shared and noisy, and one run's peak moves by a few MiB: compare several.
#
#   cargo build --release && bash benches/phases.sh     # RUNS=3 SECS=5 SGW_BINS="a b"
#   LIMITS='max_stream_window = "256KiB"' bash benches/phases.sh   # a [limits] line for both
# Needs: iperf3 redis-server redis-tools python3 iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW_BINS=${SGW_BINS:-${SGW_BIN:-target/release/sgw}}
RUNS=${RUNS:-3}
SECS=${SECS:-5}
. benches/common.sh
need iperf3 redis-server redis-benchmark redis-cli python3 ss
iperf3_server
redis_server
hwm() { awk '/VmHWM/{print int($2/1024)}' "/proc/$1/status"; }
one() { # sgw binary -> one line: VmHWM gateway+client=sum after each phase
  SGW=$1
  rm -rf "$dir/sgw"
  local i1 r1 line="" g c
  i1=$(free_port); r1=$(free_port)
  sgw_init --expose "127.0.0.1:$IP@$i1" --expose "127.0.0.1:$RP@$r1"
  if [ -n "${LIMITS:-}" ]; then sgw_limits "$LIMITS"; fi
  sgw_start
  for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$r1" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  phase() { g=$(hwm "$GW"); c=$(hwm "$CL"); line+=$(printf ' %s %2d+%2d=%2d' "$1" "$g" "$c" $((g + c))); }
  phase start
  timeout $((SECS + 20)) iperf3 -c 127.0.0.1 -p "$i1" -t "$SECS" -P 1 >/dev/null; phase 1x
  timeout $((SECS + 20)) iperf3 -c 127.0.0.1 -p "$i1" -t "$SECS" -P 8 >/dev/null; phase 8x
  timeout 60 redis-benchmark -p "$r1" -c 50 -n 100000 -t ping -q >/dev/null 2>&1; phase rps
  timeout 60 redis-benchmark -p "$r1" -c 20 -n 3000 -k 0 -t ping -q >/dev/null 2>&1; phase conn
  kill "$GW" "$CL"; wait "$GW" "$CL" 2>/dev/null || true
  echo "$line"
}
for _ in $(seq "$RUNS"); do
  for b in $SGW_BINS; do
    printf '%-28s%s\n' "$b" "$(one "$b")"
  done
done
