#!/usr/bin/env bash
# One stream over a WAN-like path: the tunnel between client and gateway goes through
# benches/delay_proxy.py (DELAY_MS each way, RATE_MBIT per direction). Prints what the proxy
# carries for a plain TCP stream (iperf3 through it, no sgw), what one stream through sgw
# carries in each direction, and the ratio.
#
#   cargo build --release && bash benches/wan.sh      # DELAY_MS=25 RATE_MBIT=1000 SECS=10
#   LIMITS='tunnel_buffer = "4MiB"' bash benches/wan.sh   # a [limits] line for both processes
# Needs: iperf3 python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
DELAY_MS=${DELAY_MS:-25}
RATE_MBIT=${RATE_MBIT:-1000}
SECS=${SECS:-10}
PEERS=${PEERS:-}
. benches/common.sh
proxy() { # listen target: starts a delay proxy, waits until it listens
  python3 benches/delay_proxy.py "$1" "$2" "$DELAY_MS" "$RATE_MBIT" >"$dir/proxy.$1" 2>&1 & pids+=($!)
  for _ in $(seq 100); do grep -q ready "$dir/proxy.$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "delay proxy did not start"; exit 1
}
gbps() { # port [-R] -> Gbit/s received
  iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" ${2:-} -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.3f"%(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' 2>/dev/null || echo 0
}
IP=$(free_port); PD=$(free_port)
iperf3 -s -p "$IP" >/dev/null 2>&1 & pids+=($!)
proxy "$PD" "$IP"
direct=$(gbps "$PD")

PT=$(free_port); CI=$(free_port)
sgw_init --expose "127.0.0.1:$IP@$CI"
# The client reaches the gateway through the delay proxy.
sed -i -E "s#^(url *= *).*#\1\"wss://localhost:$PT/tunnel\"#" "$dir/sgw/client.toml"
proxy "$PT" "$TUN"
[ -z "${LIMITS:-}" ] || sgw_limits "$LIMITS"
sgw_start
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$CI) 2>/dev/null && iperf3 -c 127.0.0.1 -p "$CI" -n 1K >/dev/null 2>&1 && break; sleep 0.2; done
down=$(gbps "$CI")
up=$(gbps "$CI" -R)
echo "path: ${DELAY_MS} ms each way, ${RATE_MBIT} Mbit/s; one iperf3 stream for ${SECS} s"
python3 - "$direct" "$down" "$up" <<'PY'
import sys
d, a, b = map(float, sys.argv[1:])
print(f"through the proxy alone:             {d:.3f} Gbit/s")
for name, v in (("through sgw, gateway -> client:", a), ("through sgw, client -> gateway:", b)):
    print(f"{name:36} {v:.3f} Gbit/s = {100 * v / d if d else 0:.0f}% of the proxy alone")
PY
