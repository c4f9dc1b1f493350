#!/usr/bin/env bash
# What a small request costs: redis PINGs (redis-benchmark, kept-alive connections) through
# sgw (gateway and client as two processes) and, when PEERS holds them, wstunnel-wss and
# rathole-tls, at each client count in CLIENTS, the tunnels taking turns ROUNDS times.
# Per row: requests/s, p50 and p99 in ms, and per request, for both tunnel processes
# together, CPU microseconds, context switches and, where perf can count system calls,
# futex calls and writes (the tunnel's and the endpoints').
#
#   cargo build --release && bash benches/requests.sh   # CLIENTS="1 8 50" N=50000 ROUNDS=2 PEERS=...
# Needs: redis-server redis-tools openssl python3; perf (Debian's linux-perf) for the
# system-call columns.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
CLIENTS=${CLIENTS:-1 8 50}
N=${N:-50000}
ROUNDS=${ROUNDS:-2}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
. benches/common.sh
need redis-server redis-benchmark redis-cli openssl python3
redis_server
perf_ok=0
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_futex -- true >/dev/null 2>&1; then
  perf_ok=1
fi

# Tunnels: name, port, and the pids to charge.
names=(); ports=(); procs=()

CR=$(free_port)
sgw_init --expose "127.0.0.1:$RP@$CR"
sed -i -E 's/^(tunnels *= *).*/\11/' "$dir/sgw/client.toml"
sgw_start
for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$CR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
names+=(sgw-2proc); ports+=("$CR"); procs+=("$GW $CL")

WS=$PEERS/wstunnel/target/release/wstunnel
if [ -x "$WS" ]; then
  (cd "$dir" && openssl req -x509 -newkey rsa:2048 -nodes -keyout wkey.pem -out wcert.pem -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1)
  WT=$(free_port); WR=$(free_port)
  "$WS" server "wss://127.0.0.1:$WT" --tls-certificate "$dir/wcert.pem" \
    --tls-private-key "$dir/wkey.pem" >/dev/null 2>&1 & ws=$!; pids+=($ws)
  wait_port "$WT"
  "$WS" client -R "tcp://127.0.0.1:$WR:127.0.0.1:$RP" "wss://127.0.0.1:$WT" >/dev/null 2>&1 & wc=$!
  pids+=($wc)
  for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$WR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  names+=(wstunnel-wss); ports+=("$WR"); procs+=("$ws $wc")
else
  echo "wstunnel-wss: skipped (no $WS)"
fi

RR=$(free_port)
if rathole_tls "$RR:$RP"; then
  for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$RR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  names+=(rathole-tls); ports+=("$RR"); procs+=("${pids[-2]} ${pids[-1]}")
else
  echo "rathole-tls: skipped (no $PEERS/rathole/bin/rathole)"
fi

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
switches() {
  local t=0 p f
  for p in "$@"; do for f in /proc/"$p"/task/*/status; do
    t=$((t + $(awk '/voluntary_ctxt_switches/{s+=$2} END{print s+0}' "$f" 2>/dev/null || echo 0)))
  done; done
  echo $t
}
one() { # name port clients pids...
  local name=$1 port=$2 c=$3; shift 3
  local t0 s0 t1 s1 r st=$dir/stat.txt pp
  pp=$(echo "$@" | tr ' ' ,)
  rm -f "$st"
  if [ $perf_ok = 1 ]; then
    perf stat -x, -e syscalls:sys_enter_futex,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto \
      -p "$pp" -o "$st" & sp=$!
    sleep 0.3
  fi
  t0=$(ticks "$@"); s0=$(switches "$@")
  r=$(timeout 120 redis-benchmark -p "$port" -c "$c" -n "$N" -t ping_mbulk --csv 2>/dev/null |
    awk -F'"' '/PING_MBULK/{printf "%d %s %s", $4, $10, $14; f=1} END{if(!f) printf "0 - -"}')
  t1=$(ticks "$@"); s1=$(switches "$@")
  if [ $perf_ok = 1 ]; then kill -INT $sp; wait $sp 2>/dev/null || true; fi
  python3 - "$name" "$c" "$r" "$t0" "$t1" "$s0" "$s1" "$N" "$st" <<'PY'
import os, sys
name, c, r, t0, t1, s0, s1, n, st = sys.argv[1:]
rps, p50, p99 = r.split()
n = int(n)
cpu = (int(t1) - int(t0)) / os.sysconf('SC_CLK_TCK') * 1e6 / n
cs = (int(s1) - int(s0)) / n
futex = writes = '-'
if os.path.exists(st):
    v = {}
    for line in open(st):
        f = line.strip().split(',')
        if len(f) > 2 and f[0].isdigit():
            v[f[2].split('_')[-1]] = int(f[0])
    futex = '%.2f' % (v.get('futex', 0) / n)
    writes = '%.2f' % (sum(v.get(k, 0) for k in ('writev', 'write', 'sendto')) / n)
print('%-13s %7s %8s %7s %7s %11.1f %9.2f %7s %7s' % (name, c, rps, p50, p99, cpu, cs, futex, writes))
PY
}
printf '%-13s %7s %8s %7s %7s %11s %9s %7s %7s\n' tunnel clients req/s p50ms p99ms cpu-us/req switches futex writes
for c in $CLIENTS; do
  for _ in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
      # shellcheck disable=SC2086
      one "${names[$i]}" "${ports[$i]}" "$c" ${procs[$i]}
    done
  done
done
