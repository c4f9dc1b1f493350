#!/usr/bin/env bash
# What one bulk stream costs through sgw as two processes (gateway and client, as peers run).
#
# For each run: iperf3 Gbit/s; CPU seconds per GB of both processes; context switches per GB
# (voluntary: a thread went to sleep; involuntary: it was preempted), summed over all threads
# of both processes; minor page faults per GB (each one a freshly zeroed page); peak RSS of
# both, and the part of it that is the binary's own pages.
# machine-cpu-s/GB is the busy time of every CPU (/proc/stat) per GB: on loopback the kernel
# sends a socket's queued bytes in the context of whichever process opens the window, so
# how a tunnel reads and writes moves iperf3's sending cost onto it or off it; the whole
# machine's cost does not move (docs/PERFORMANCE.md, "Who pays on loopback").
# Runs alternate between the binaries in SGW_BINS, so an A/B sees the same machine; the
# word `wstunnel` in SGW_BINS runs $PEERS/wstunnel (as ../shared/bench/peers.sh builds it) in
# the same place, as a reverse tunnel like sgw's. The medians are printed at the end. The
# machine is shared and noisy: compare medians of 6+ runs.
#
# CALLGRIND=1 instead runs both processes under valgrind's callgrind while iperf3 sends MB
# MiB, and prints user-space instructions per byte: slow, but it repeats to the percent on a
# noisy machine (the kernel's share is not counted).
#
#   cargo build --release && bash benches/onestream.sh    # RUNS=6 SECS=3 P=1 SGW_BINS="a b"
# Needs: iperf3 python3 iproute2 (valgrind for CALLGRIND=1).
set -euo pipefail
cd "$(dirname "$0")/.."
SGW_BINS=${SGW_BINS:-${SGW_BIN:-target/release/sgw}}
RUNS=${RUNS:-6}
SECS=${SECS:-3}
P=${P:-1}
MB=${MB:-200}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
. benches/common.sh
need iperf3 python3 ss
[ -z "${CALLGRIND:-}" ] || need valgrind
iperf3_server

ticks() { # pids -> CPU ticks (user + system) so far
  local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t
}
faults() { # pids -> minor page faults so far (each one a fresh zeroed page)
  local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $10}' "/proc/$p/stat"))); done; echo $t
}
switches() { # pids -> "voluntary involuntary", all threads
  cat $(for p in "$@"; do echo /proc/$p/task/*/status; done) 2>/dev/null |
    awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}'
}
peak() { # pids -> "peak-MiB binary-MiB"
  local k=0 f=0 p; for p in "$@"; do
    k=$((k + $(awk '/VmHWM/{print $2}' "/proc/$p/status")))
    f=$((f + $(awk '/RssFile/{print $2}' "/proc/$p/status"))); done
  echo $((k / 1024)) $((f / 1024))
}

busy() { # -> busy ticks of all CPUs so far (user nice system irq softirq steal)
  awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

wstunnel() { # sets port, gw and cl: wstunnel-wss (server, client) forwarding $port to iperf3
  local ws=$PEERS/wstunnel/target/release/wstunnel wp
  [ -x "$ws" ] || { echo "no $ws" >&2; return 1; }
  [ -f "$dir/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" \
    -out "$dir/cert.pem" -days 2 -subj /CN=localhost >/dev/null 2>&1
  wp=$(free_port); port=$(free_port)
  "$ws" server "wss://127.0.0.1:$wp" --tls-certificate "$dir/cert.pem" \
    --tls-private-key "$dir/key.pem" >/dev/null 2>&1 & gw=$!; pids+=($gw)
  wait_port "$wp" >&2
  "$ws" client -R "tcp://127.0.0.1:$port:127.0.0.1:$IP" "wss://127.0.0.1:$wp" >/dev/null 2>&1 &
  cl=$!; pids+=($cl)
  # The reverse listener opens once the tunnel is up; a probe there would reach iperf3.
  for _ in $(seq 100); do ss -ltn | grep -q ":$port " && break; sleep 0.1; done
}

one() { # binary -> one result line
  local SGW=$1 port c0 c1 s0 s1 m0 m1 gw cl cg=()
  if [ "$SGW" = wstunnel ]; then
    wstunnel || return 1
    measure
    return
  fi
  rm -rf "$dir/sgw"
  port=$(free_port)
  sgw_init --expose "127.0.0.1:$IP@$port"
  sed -i -E 's/^(tunnels *= *).*/\11/' "$dir/sgw/client.toml"
  [ -n "${CALLGRIND:-}" ] && cg=(valgrind -q --tool=callgrind)
  SGW_GATEWAY_LOG_LEVEL=warn ${cg[@]+"${cg[@]}"} ${cg[@]+--callgrind-out-file=$dir/gw.cg} \
    "$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & gw=$!; pids+=($gw)
  ${cg[@]+"${cg[@]}"} ${cg[@]+--callgrind-out-file=$dir/cl.cg} \
    "$SGW" client --config "$dir/sgw/client.toml" 2>"$dir/cl.log" & cl=$!; pids+=($cl)
  # The client's log, not a probe connection: it would reach iperf3's server.
  for _ in $(seq 600); do grep -q "tunnel up" "$dir/cl.log" && break; sleep 0.1; done
  if [ -n "${CALLGRIND:-}" ]; then
    iperf3 -c 127.0.0.1 -p "$port" -n "${MB}M" -J >"$dir/i.json" 2>/dev/null || true
    kill -INT $gw $cl; wait $gw $cl 2>/dev/null || true
    python3 - "$dir/i.json" "$dir/gw.cg" "$dir/cl.cg" "$MB" <<'PY'
import json, sys
def ir(f):
    return next(int(l.split()[1]) for l in open(f) if l.startswith("summary:"))
b = int(sys.argv[4]) * 1048576
g, c = ir(sys.argv[2]), ir(sys.argv[3])
json.load(open(sys.argv[1]))["end"]["sum_received"]  # the transfer happened
print("instr/byte gateway %.2f client %.2f both %.2f" % (g / b, c / b, (g + c) / b))
PY
    return
  fi
  measure
}

measure() { # one iperf3 run through the tunnel at $port, whose processes are $gw and $cl
  c0=$(ticks $gw $cl); s0=$(switches $gw $cl); f0=$(faults $gw $cl); m0=$(busy)
  iperf3 -c 127.0.0.1 -p "$port" -t "$SECS" -P "$P" -J >"$dir/i.json" 2>/dev/null || true
  c1=$(ticks $gw $cl); s1=$(switches $gw $cl); f1=$(faults $gw $cl); m1=$(busy)
  python3 - "$dir/i.json" "$c0" "$c1" "$s0" "$s1" "$(peak $gw $cl)" "$SECS" "$((f1 - f0))" \
    "$((m1 - m0))" <<'PY'
import json, os, sys
g = json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9
gb = g * int(sys.argv[7]) / 8
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / os.sysconf("SC_CLK_TCK")
v0, n0 = map(int, sys.argv[4].split()); v1, n1 = map(int, sys.argv[5].split())
pk, fl = sys.argv[6].split()
mcpu = int(sys.argv[9]) / os.sysconf("SC_CLK_TCK")
print("Gb/s %.2f cpu-s/GB %.2f machine-cpu-s/GB %.2f vol/GB %d invol/GB %d faults/GB %d "
      "peakMiB %s binaryMiB %s"
      % (g, cpu / gb, mcpu / gb, (v1 - v0) / gb, (n1 - n0) / gb, int(sys.argv[8]) / gb, pk, fl))
PY
  kill $gw $cl; wait $gw $cl 2>/dev/null || true
}

for r in $(seq "$RUNS"); do
  for b in $SGW_BINS; do
    echo "$b $(one "$b" || echo failed)" | tee -a "$dir/results"
  done
done
[ -n "${CALLGRIND:-}" ] || python3 - "$dir/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) > 2 and f[1] == "Gb/s":
        runs[f[0]].append({f[i]: float(f[i + 1]) for i in range(1, len(f) - 1, 2)})
print("medians:")
for b, rs in runs.items():
    print("  %s (%d runs): %s" % (b, len(rs), "  ".join(
        "%s %s" % (k, ("%.2f" % statistics.median(r[k] for r in rs)).rstrip("0").rstrip("."))
        for k in rs[0])))
PY
