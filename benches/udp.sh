#!/usr/bin/env bash
# UDP through a UDP destination, side by side with direct: iperf3 -u at a fixed offered rate,
# datagrams/s delivered and loss. iperf3's TCP control connection goes through a TCP
# destination on the same cloud port (TCP and UDP may share one).
#
#   cargo build --release && bash benches/udp.sh            # RATE=1G LEN=1400 SECS=5
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
SECS=${SECS:-5}
RATE=${RATE:-1G}
LEN=${LEN:-1400}
command -v iperf3 >/dev/null || { echo "iperf3 missing (apt-get install iperf3)"; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
srv=$(free_port); cloud=$(free_port); tun=$(free_port); admin=$(free_port)

iperf3 -s -B 127.0.0.1 -p "$srv" >/dev/null 2>&1 & pids+=($!)
"$SGW" init "$dir/conf" --listen "127.0.0.1:$tun" --expose "127.0.0.1:$srv@$cloud" >/dev/null
cat >>"$dir/conf/gateway.toml" <<EOF

[[gateways.destinations]]
id = "iperf-udp"
protocol = "UDP"
ip = "127.0.0.1"
port = $srv
cloud_host = "127.0.0.1"
cloud_port = $cloud
EOF
SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/conf/gateway.toml" 2>"$dir/gw.log" & pids+=($!)
SGW_CLIENT_ADMIN_LISTEN="127.0.0.1:$admin" "$SGW" client --config "$dir/conf/client.toml" 2>"$dir/client.log" & pids+=($!)
for _ in $(seq 100); do grep -q "tunnel up" "$dir/client.log" 2>/dev/null && break; sleep 0.1; done
grep -q "tunnel up" "$dir/client.log" || { cat "$dir/client.log"; exit 1; }

run() {
  iperf3 -c 127.0.0.1 -p "$1" -u -b "$RATE" -l "$LEN" -t "$SECS" -J | python3 -c '
import json, sys
s = json.load(sys.stdin)["end"]["sum"]
secs = s["seconds"] or 1
got = s["packets"] - s["lost_packets"]
print("%-8s sent %8d  delivered %8.0f/s  %7.1f Mbit/s  loss %5.2f%%  jitter %.3f ms" % (
    sys.argv[1], s["packets"], got / secs, got * int(sys.argv[2]) * 8 / secs / 1e6,
    s["lost_percent"], s["jitter_ms"]))' "$2" "$LEN"
}
echo "iperf3 -u -b $RATE -l $LEN -t $SECS"
run "$srv" direct
run "$cloud" sgw
