#!/usr/bin/env bash
# Latency of an interactive stream while bulk streams fill the same tunnel.
#
# One redis client sends PINGs (redis-benchmark -c 1) through the tunnel, first alone, then
# while BULK iperf3 streams saturate the same tunnel; the p50/p99 of both runs are printed.
# sgw runs as two processes (gateway and client, one tunnel, as an on-prem host would run a
# small client); rathole-tls, which uses a TCP connection per stream, runs the same workload
# when PEERS holds it (see ../shared/bench/peers.sh).
#
#   cargo build --release && bash benches/fairness.sh   # BULK=2 N=20000 BULK_SECS=10 PEERS=...
# Needs: iperf3 redis-server redis-tools openssl python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
BULK=${BULK:-2}
N=${N:-20000}
# Long enough that the bulk streams outlast the PINGs (N=20000 takes about 2-4 s).
BULK_SECS=${BULK_SECS:-10}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
for t in iperf3 redis-server redis-benchmark openssl python3; do
  command -v $t >/dev/null || { echo "$t missing"; exit 1; }
done
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
IP=$(free_port); RP=$(free_port)
iperf3 -s -p "$IP" >/dev/null 2>&1 & pids+=($!)
redis-server --port "$RP" --save '' --appendonly no >/dev/null 2>&1 & pids+=($!)
wait_port "$RP"

lat() { # redis port -> "p50 p99" in ms of one client's PINGs
  redis-benchmark -p "$1" -c 1 -n "$N" -t ping --csv 2>/dev/null |
    awk -F'"' '/PING_MBULK/{printf "%s %s", $10, $14; f=1} END{if(!f) printf "- -"}'
}
measure() { # name iperf-port redis-port
  local alone bulk g b
  alone=$(lat "$3")
  iperf3 -c 127.0.0.1 -p "$2" -P "$BULK" -t "$BULK_SECS" -J >"$dir/bulk.json" 2>/dev/null & b=$!
  sleep 2 # let the bulk streams fill their windows
  bulk=$(lat "$3")
  wait $b 2>/dev/null || true
  g=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f"%(d["end"]["sum_received"]["bits_per_second"]/1e9))' "$dir/bulk.json" 2>/dev/null || echo "?")
  read -r a50 a99 <<<"$alone"; read -r b50 b99 <<<"$bulk"
  printf '%-12s %10s %10s %12s %12s %9s %10s\n' "$1" "$a50" "$a99" "$b50" "$b99" \
    "$(python3 -c "import sys; a,b=sys.argv[1:]; print('%.1fx'%(float(b)/float(a)) if a not in ('-','0','0.000') and b!='-' else '-')" "$a99" "$b99")" "$g"
}
printf '%-12s %10s %10s %12s %12s %9s %10s\n' tunnel "p50 alone" "p99 alone" "p50 w/bulk" "p99 w/bulk" "p99 ratio" "bulk Gb/s"
measure direct "$IP" "$RP"

# sgw: gateway and client as two processes, one tunnel.
TUN=$(free_port); API=$(free_port); CI=$(free_port); CR=$(free_port)
"$SGW" init "$dir/sgw" --listen "127.0.0.1:$TUN" --expose "127.0.0.1:$IP@$CI" --expose "127.0.0.1:$RP@$CR" >/dev/null
sed -i -E "s/^(api_listen *= *).*/\1\"127.0.0.1:$API\"/" "$dir/sgw/gateway.toml"
sed -i -E 's/^(admin_listen *= *).*/\1"127.0.0.1:0"/; s/^(tunnels *= *).*/\11/' "$dir/sgw/client.toml"
SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & pids+=($!)
SGW_CLIENT_LOG_LEVEL=warn "$SGW" client --config "$dir/sgw/client.toml" 2>"$dir/cl.log" & pids+=($!)
for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$CR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
measure sgw "$CI" "$CR"

RH=$PEERS/rathole/bin/rathole
if [ -x "$RH" ]; then
  (cd "$dir" && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 &&
    openssl pkcs12 -export -out id.pfx -inkey key.pem -in cert.pem -passout pass:1234 >/dev/null 2>&1)
  RT=$(free_port); RI=$(free_port); RR=$(free_port)
  cat >"$dir/rs.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$RT"
[server.transport]
type = "tls"
[server.transport.tls]
pkcs12 = "$dir/id.pfx"
pkcs12_password = "1234"
[server.services.a]
token = "t"
bind_addr = "127.0.0.1:$RI"
[server.services.b]
token = "t"
bind_addr = "127.0.0.1:$RR"
EOF
  cat >"$dir/rc.toml" <<EOF
[client]
remote_addr = "localhost:$RT"
[client.transport]
type = "tls"
[client.transport.tls]
trusted_root = "$dir/cert.pem"
hostname = "localhost"
[client.services.a]
token = "t"
local_addr = "127.0.0.1:$IP"
[client.services.b]
token = "t"
local_addr = "127.0.0.1:$RP"
EOF
  "$RH" -s "$dir/rs.toml" >/dev/null 2>&1 & pids+=($!)
  "$RH" -c "$dir/rc.toml" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$RR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  measure rathole-tls "$RI" "$RR"
else
  echo "rathole-tls: skipped ($RH missing)"
fi
