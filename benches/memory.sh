#!/usr/bin/env bash
# Peak RSS (VmHWM) of `sgw quickstart` after iperf3 with 1 and 8 streams and redis-benchmark
# through it, on loopback. Usage: benches/memory.sh [path/to/sgw]  (default target/release/sgw)
# Needs: iperf3 redis-server redis-tools python3.
set -u
SGW=${1:-target/release/sgw}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; kill $ip $rs 2>/dev/null; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
IP=$(free_port); RP=$(free_port); CI=$(free_port); CR=$(free_port)
iperf3 -s -p "$IP" >/dev/null 2>&1 & ip=$!
redis-server --port "$RP" --save '' --appendonly no >/dev/null 2>&1 & rs=$!
"$SGW" quickstart --dir "$W/qs" --expose 127.0.0.1:$IP@$CI --expose 127.0.0.1:$RP@$CR >"$W/log" 2>&1 & s=$!
for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$CR) 2>/dev/null && break; sleep 0.2; done
hwm() { awk '/VmHWM/{printf "%.1f", $2/1024}' /proc/$s/status; }
gbps() { iperf3 -c 127.0.0.1 -p "$CI" -t 4 -P "$1" -J | python3 -c 'import json,sys; print("%.2f"%(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
echo "iperf3 1 stream:  $(gbps 1) Gbit/s, peak RSS $(hwm) MiB"
echo "iperf3 8 streams: $(gbps 8) Gbit/s, peak RSS $(hwm) MiB"
rps=$(redis-benchmark -p "$CR" -c 50 -n 100000 -t ping --csv 2>/dev/null | awk -F'"' '/PING_MBULK/{print $4}')
echo "redis PING 50 clients: $rps rps, peak RSS $(hwm) MiB"
kill -TERM $s; wait $s; echo "sgw exit code on SIGTERM: $?"
