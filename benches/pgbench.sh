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
. benches/common.sh
pg_start -c max_connections=200
"$BIN/pgbench" -h 127.0.0.1 -p "$PG" -U postgres -i -s 10 -q postgres >/dev/null 2>&1

tps() { # port -> transactions/s and mean latency
  "$BIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -S -c "$CLIENTS" -j 2 -T "$SECS" postgres 2>/dev/null |
    awk '/latency average/{lat=$4} /^tps/{tps=$3} END{printf "%8.0f tps  latency %s ms\n", tps, lat}'
}
printf '%-12s %s' direct "$(tps "$PG")"; echo

CP=$(free_port)
sgw_init --expose "127.0.0.1:$PG@$CP"
sgw_start
for _ in $(seq 100); do "$BIN/pg_isready" -h 127.0.0.1 -p "$CP" >/dev/null 2>&1 && break; sleep 0.1; done
printf '%-12s %s' sgw "$(tps "$CP")"; echo

RP=$(free_port)
if rathole_tls "$RP:$PG"; then
  for _ in $(seq 100); do "$BIN/pg_isready" -h 127.0.0.1 -p "$RP" >/dev/null 2>&1 && break; sleep 0.1; done
  printf '%-12s %s' rathole-tls "$(tps "$RP")"; echo
else
  echo "rathole-tls: skipped (no $PEERS/rathole/bin/rathole)"
fi
