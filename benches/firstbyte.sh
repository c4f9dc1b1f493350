#!/usr/bin/env bash
# A new connection's first answer over a WAN-like tunnel: the client reaches the gateway
# through benches/delay_proxy.py (DELAY_MS each way). For each of N fresh connections to a
# redis destination, the time from connect to the PONG of a first PING; prints the median and
# the 90th percentile in ms, with the tunnel's round trip for scale. A caller that speaks
# first costs one round trip when its bytes go with the OPEN (`early_data`), two when they
# wait for the OPEN_OK.
#
#   cargo build --release && bash benches/firstbyte.sh      # DELAY_MS=25 N=40
#   SGW_BINS="old/sgw new/sgw" bash benches/firstbyte.sh     # builds side by side
# With PEERS holding rathole (../shared/bench/peers.sh), rathole-tls runs the same path.
# Needs: redis-server python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DELAY_MS=${DELAY_MS:-25}
N=${N:-40}
PEERS=${PEERS:-}
command -v redis-server >/dev/null || { echo "redis-server missing"; exit 1; }
. benches/common.sh
RP=$(free_port)
redis-server --port "$RP" --save '' --appendonly no >/dev/null 2>&1 & pids+=($!)
wait_port "$RP"

firstbyte() { # port -> "median p90" ms of N fresh connections' first PING
  python3 - "$1" "$N" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
ms = []
for _ in range(n):
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        b = s.recv(64)
        if not b:
            sys.exit("connection closed before the answer")
        got += b
    ms.append((time.monotonic() - t) * 1000)
    assert got == b"+PONG\r\n", got
    s.close()
ms.sort()
print("%.1f %.1f" % (ms[len(ms) // 2], ms[int(len(ms) * 0.9)]))
PY
}

delay_proxy() { # listen target: a delay proxy, once it listens
  python3 benches/delay_proxy.py "$1" "$2" "$DELAY_MS" >"$dir/proxy.$1" 2>&1 & pids+=($!)
  for _ in $(seq 100); do grep -q ready "$dir/proxy.$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "delay proxy did not start"; exit 1
}
pong() { # port: answered a PING through it
  [ "$(python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",int(sys.argv[1])),timeout=5); s.sendall(b"PING\r\n"); print(s.recv(64).decode().strip())' "$1" 2>/dev/null)" = "+PONG" ]
}
row() { printf '%-40s first answer: median %6s ms, p90 %6s ms\n' "$1" "$2" "$3"; }

echo "tunnel: ${DELAY_MS} ms each way (round trip $((2 * DELAY_MS)) ms); $N fresh connections each"
for SGW in ${SGW_BINS:-${SGW_BIN:-target/release/sgw}}; do
  CI=$(free_port); PT=$(free_port)
  sgw_init --expose "127.0.0.1:$RP@$CI"
  sed -i -E "s#^(url *= *).*#\1\"wss://localhost:$PT/tunnel\"#" "$dir/sgw/client.toml"
  delay_proxy "$PT" "$TUN"
  sgw_start
  for _ in $(seq 100); do pong "$CI" && break; sleep 0.2; done
  read -r med p90 <<<"$(firstbyte "$CI")"
  row "$SGW" "$med" "$p90"
  kill "$GW" "$CL" 2>/dev/null || true; wait "$GW" "$CL" 2>/dev/null || true
  rm -rf "$dir/sgw"
done
RATHOLE_PORT=$(free_port); RATHOLE_REMOTE=$(free_port); CB=$(free_port)
delay_proxy "$RATHOLE_REMOTE" "$RATHOLE_PORT"
if RATHOLE_PORT=$RATHOLE_PORT RATHOLE_REMOTE=$RATHOLE_REMOTE rathole_tls "$CB:$RP"; then
  for _ in $(seq 100); do pong "$CB" && break; sleep 0.2; done
  read -r med p90 <<<"$(firstbyte "$CB")"
  row rathole-tls "$med" "$p90"
fi
