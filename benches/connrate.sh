#!/usr/bin/env bash
# New connections a second (redis-benchmark -k 0: a fresh connection per PING, 20 clients), and
# what bounds them on this host. Rows: direct to redis; one hop of examples/hop.rs, a bare TCP
# relay (accept, dial, copy; no TLS, no multiplexing), the least any tunnel does per connection;
# two hops in two processes, the shape of a tunnel that opens a connection per stream, minus its
# TLS; sgw, gateway and client as two processes, logging at info as peers.sh runs them. Each
# round runs the four in a different order; the last line gives each column's median. A cell
# of 0 is a run that failed.
#
#   cargo build --release --bins --example hop && bash benches/connrate.sh    # ROUNDS=5 N=3000
# Needs: redis-server, redis-tools, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
HOP=${HOP_BIN:-target/release/examples/hop}
ROUNDS=${ROUNDS:-5}
N=${N:-3000}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
. benches/common.sh
need redis-server redis-benchmark python3
[ -x "$HOP" ] || { echo "$HOP missing: cargo build --release --example hop"; exit 1; }
redis_server

# hop TARGET NAME: a relay to TARGET; its port in $HOP_PORT.
hop() {
  "$HOP" 127.0.0.1:0 "$1" >"$dir/$2.addr" & pids+=($!)
  for _ in $(seq 100); do [ -s "$dir/$2.addr" ] && break; sleep 0.1; done
  [ -s "$dir/$2.addr" ] || { echo "$HOP did not start"; exit 1; }
  HOP_PORT=$(sed -E 's/.*://' "$dir/$2.addr")
}
hop "127.0.0.1:$RP" one; ONE=$HOP_PORT
hop "127.0.0.1:$RP" inner; hop "127.0.0.1:$HOP_PORT" outer; TWO=$HOP_PORT

CP=$(free_port)
sgw_init --expose "127.0.0.1:$RP@$CP"
"$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & pids+=($!)
"$SGW" client --config "$dir/sgw/client.toml" 2>"$dir/cl.log" & pids+=($!)
for _ in $(seq 100); do grep -q "tunnel up" "$dir/cl.log" && break; sleep 0.1; done
wait_port "$CP" || { echo "sgw did not come up:"; cat "$dir/gw.log" "$dir/cl.log"; exit 1; }

cps() { # port -> connections/s (0: the run failed)
  { timeout 60 redis-benchmark -p "$1" -c 20 -n "$N" -k 0 -t ping --csv 2>/dev/null || true; } |
    awk -F'"' '/PING_MBULK/{printf "%d", $4; f=1} END{if(!f) printf "0"}'
}
printf '%-6s %8s %8s %8s %8s\n' round direct one-hop two-hop sgw
: >"$dir/rows"
ports=("$RP" "$ONE" "$TWO" "$CP")
for r in $(seq "$ROUNDS"); do
  got=(0 0 0 0)
  for k in 0 1 2 3; do # this round's order: rotated by one each round
    i=$(((k + r) % 4))
    got[i]=$(cps "${ports[i]}")
  done
  echo "${got[*]}" >>"$dir/rows"
  printf '%-6s %8s %8s %8s %8s\n' "$r" "${got[@]}"
done
python3 - "$dir/rows" <<'PY'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [int(statistics.median(c)) for c in zip(*rows)]
print("%-6s %8d %8d %8d %8d" % ("median", *med))
if all(med):
    print("sgw / one-hop: %.2f   sgw / two-hop: %.2f   one-hop / direct: %.2f" % (med[3] / med[1], med[3] / med[2], med[1] / med[0]))
PY
