#!/usr/bin/env bash
# The store is off the data path: one gateway replica with its API's gateways in a state file,
# then the same with them in PostgreSQL (state_store), each with a destination created through
# the API and a client (two processes). iperf3 1 and 8 streams, redis-benchmark PING, and the
# gateway's and client's CPU seconds per GB of the 1-stream run, alternating the two stores
# ROUNDS times so machine noise falls on both.
#
#   cargo build --release && bash benches/ha.sh        # SECS=5 ROUNDS=2 SGW_BIN=...
# Needs: Debian's postgresql, iperf3, redis-server, redis-tools, curl, python3; as root it runs
# PostgreSQL as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
. benches/common.sh
pg_start
iperf3_server
redis_server
sgw_init
cp "$dir/sgw/gateway.toml" "$dir/gateway.base"
API=$(sed -nE 's/^api_listen *= *"(.*)"/\1/p' "$dir/sgw/gateway.toml")
ADMIN=$(cat "$dir/sgw/api.token")

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user+system ticks
run() { # store-line -> one row
  local store=$1 name=$2
  # In place of state_file: top-level keys must come before the first table.
  sed -E "s#^state_file *=.*#$store#" "$dir/gateway.base" >"$dir/sgw/gateway.toml"
  rm -f "$dir/sgw/state.json"
  as_pg "$BIN/psql" -q -h 127.0.0.1 -p "$PG" -U postgres -c 'SET client_min_messages = warning; DROP TABLE IF EXISTS sgw_gateways, sgw_presence, sgw_schema' postgres >/dev/null
  SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & GW=$!; pids+=($GW)
  wait_port "${API##*:}"
  api() { curl -sS --cacert "$dir/sgw/ca.pem" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' "$@"; }
  local g id tok
  g=$(api -X POST -d '{"desc":"bench"}' "https://$API/v1/sgconfig")
  id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$g")
  tok=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["security_token"])' <<<"$g")
  CI=$(free_port); CR=$(free_port)
  api -X POST -d "{\"ip\":\"127.0.0.1\",\"port\":$IP,\"cloud_port\":$CI}" "https://$API/v1/sgconfig/$id/destinations" >/dev/null
  api -X POST -d "{\"ip\":\"127.0.0.1\",\"port\":$RP,\"cloud_port\":$CR}" "https://$API/v1/sgconfig/$id/destinations" >/dev/null
  # Beside the files init wrote (paths in it are relative), for the gateway id just made.
  sed -E -e "s/^gateway_id *=.*/gateway_id = \"$id\"/" -e "s/^token(_file)? *=.*/token = \"$tok\"/" \
    -e 's/^acl_file *=.*/acl_file = "acl-bench.list"/' "$dir/sgw/client.toml" >"$dir/sgw/client-bench.toml"
  printf 'acl allow 127.0.0.1:%s\nacl allow 127.0.0.1:%s\n' "$IP" "$RP" >"$dir/sgw/acl-bench.list"
  SGW_CLIENT_LOG_LEVEL=warn "$SGW" client --config "$dir/sgw/client-bench.toml" 2>"$dir/cl.log" & CL=$!; pids+=($CL)
  for _ in $(seq 100); do timeout 2 redis-cli -p "$CR" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  local c0 bytes g1 g8 rps cpu_s
  c0=$(( $(cpu $GW) + $(cpu $CL) ))
  bytes=$(iperf3 -c 127.0.0.1 -p "$CI" -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])')
  cpu_s=$(python3 -c "print(($(cpu $GW) + $(cpu $CL) - $c0) / $(getconf CLK_TCK))")
  g1=$(python3 -c "print('%.2f' % ($bytes * 8 / $SECS / 1e9))")
  g8=$(iperf3 -c 127.0.0.1 -p "$CI" -t "$SECS" -P 8 -J | python3 -c 'import json,sys; print("%.2f"%(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  rps=$(redis-benchmark -p "$CR" -c 50 -n 200000 -t ping --csv 2>/dev/null | awk -F'"' '/PING_MBULK/{print $4}')
  printf '%-16s %8s %8s %10s %8.2f\n' "$name" "$g1" "$g8" "$rps" "$(python3 -c "print($cpu_s / ($bytes / 1e9))")"
  kill "$CL" "$GW"; wait "$CL" "$GW" 2>/dev/null || true
}
printf '%-16s %8s %8s %10s %8s\n' store "1x Gb/s" "8x Gb/s" "redis rps" "cpu-s/GB"
for _ in $(seq "$ROUNDS"); do
  run 'state_file = "state.json"' state_file
  run "state_store = \"postgres://postgres@127.0.0.1:$PG/postgres?sslmode=disable\"" postgres
done
