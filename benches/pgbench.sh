#!/usr/bin/env bash
# pgbench -S (read-only, CLIENTS clients on kept-alive connections) against a fresh PostgreSQL:
# direct, through sgw (gateway and client as two processes) and, when PEERS holds it, through
# rathole-tls, which uses a TCP connection per stream.
#
#   cargo build --release && bash benches/pgbench.sh     # CLIENTS=8 SECS=10 PEERS=...
# Needs: Debian's postgresql (initdb, postgres, pgbench), openssl, python3; as root it runs
# PostgreSQL as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
CLIENTS=${CLIENTS:-8}
SECS=${SECS:-10}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)
[ -x "$BIN/initdb" ] || { echo "PostgreSQL server missing (apt-get install postgresql)"; exit 1; }
dir=$(mktemp -d)
chmod 755 "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
PG=$(free_port)
mkdir "$dir/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$dir/pg"
as_pg "$BIN/initdb" -A trust -U postgres -D "$dir/pg/data" >/dev/null
as_pg "$BIN/postgres" -D "$dir/pg/data" -c listen_addresses=127.0.0.1 -p "$PG" -k "$dir/pg" \
  -c max_connections=200 >"$dir/pg.log" 2>&1 & pids+=($!)
wait_port "$PG"
for _ in $(seq 50); do "$BIN/pg_isready" -h 127.0.0.1 -p "$PG" >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/pgbench" -h 127.0.0.1 -p "$PG" -U postgres -i -s 10 -q postgres >/dev/null 2>&1

tps() { # port -> transactions/s and mean latency
  "$BIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -S -c "$CLIENTS" -j 2 -T "$SECS" postgres 2>/dev/null |
    awk '/latency average/{lat=$4} /^tps/{tps=$3} END{printf "%8.0f tps  latency %s ms\n", tps, lat}'
}
printf '%-12s %s' direct "$(tps "$PG")"; echo

TUN=$(free_port); API=$(free_port); CP=$(free_port)
"$SGW" init "$dir/sgw" --listen "127.0.0.1:$TUN" --expose "127.0.0.1:$PG@$CP" >/dev/null
sed -i -E "s/^(api_listen *= *).*/\1\"127.0.0.1:$API\"/" "$dir/sgw/gateway.toml"
sed -i -E 's/^(admin_listen *= *).*/\1"127.0.0.1:0"/' "$dir/sgw/client.toml" "$dir/sgw/gateway.toml"
SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & pids+=($!)
SGW_CLIENT_LOG_LEVEL=warn "$SGW" client --config "$dir/sgw/client.toml" 2>"$dir/cl.log" & pids+=($!)
for _ in $(seq 100); do "$BIN/pg_isready" -h 127.0.0.1 -p "$CP" >/dev/null 2>&1 && break; sleep 0.1; done
printf '%-12s %s' sgw "$(tps "$CP")"; echo

RH=$PEERS/rathole/bin/rathole
if [ -x "$RH" ]; then
  (cd "$dir" && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 &&
    openssl pkcs12 -export -out id.pfx -inkey key.pem -in cert.pem -passout pass:1234 >/dev/null 2>&1)
  RT=$(free_port); RP=$(free_port)
  printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "%s/id.pfx"\npkcs12_password = "1234"\n[server.services.pg]\ntoken = "t"\nbind_addr = "127.0.0.1:%s"\n' \
    "$RT" "$dir" "$RP" >"$dir/rs.toml"
  printf '[client]\nremote_addr = "localhost:%s"\n[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "%s/cert.pem"\nhostname = "localhost"\n[client.services.pg]\ntoken = "t"\nlocal_addr = "127.0.0.1:%s"\n' \
    "$RT" "$dir" "$PG" >"$dir/rc.toml"
  "$RH" -s "$dir/rs.toml" >/dev/null 2>&1 & pids+=($!)
  "$RH" -c "$dir/rc.toml" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 100); do "$BIN/pg_isready" -h 127.0.0.1 -p "$RP" >/dev/null 2>&1 && break; sleep 0.1; done
  printf '%-12s %s' rathole-tls "$(tps "$RP")"; echo
else
  echo "rathole-tls: skipped ($RH missing)"
fi
