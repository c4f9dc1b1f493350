#!/usr/bin/env bash
# Latency of an interactive stream while bulk streams fill the same tunnel.
#
# One redis client sends PINGs (redis-benchmark -c 1) through the tunnel, first alone, then
# while BULK iperf3 streams saturate the same tunnel; the p50/p99 of both runs are printed.
# sgw runs as two processes (gateway and client, one tunnel, as an on-prem host would run a
# small client); rathole-tls, which uses a TCP connection per stream, runs the same workload
# when PEERS holds it (see ../shared/bench/peers.sh). With ROUNDS > 1 the tunnels take turns,
# a row each per round, and the medians of their p99s follow: one round's p99 moves by 10-20%
# on a shared machine, more than the tunnels differ. BULK_RATE (iperf3's -b, per stream, e.g.
# 3500M) paces the bulk streams below what the tunnel carries: bursts, as real bulk traffic
# comes, instead of a saturated pipe. One rate is not below every tunnel's ceiling, though:
# BULK_SHARE (a percentage, e.g. 50) first measures what each row carries saturated (3 s),
# then paces its bulk at that share of it, so every row is compared at the same load
# relative to what it can carry; the last column is then "carried/ceiling".
#
#   cargo build --release && bash benches/fairness.sh   # BULK=2 N=20000 BULK_SECS=10 ROUNDS=1 BULK_RATE= BULK_SHARE= PEERS=...
# Needs: iperf3 redis-server redis-tools openssl python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
BULK=${BULK:-2}
N=${N:-20000}
# Long enough that the bulk streams outlast the PINGs (N=20000 takes about 2-4 s).
BULK_SECS=${BULK_SECS:-10}
ROUNDS=${ROUNDS:-1}
BULK_RATE=${BULK_RATE:-}
BULK_SHARE=${BULK_SHARE:-}
PEERS=${PEERS:-${TMPDIR:-/tmp}/peers}
. benches/common.sh
need iperf3 redis-server redis-benchmark openssl python3 ss
iperf3_server
redis_server

lat() { # redis port -> "p50 p99" in ms of one client's PINGs
  redis-benchmark -p "$1" -c 1 -n "$N" -t ping --csv 2>/dev/null |
    awk -F'"' '/PING_MBULK/{printf "%s %s", $10, $14; f=1} END{if(!f) printf "- -"}'
}
gbps() { # iperf3 JSON -> Gb/s received, or "?"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f"%(d["end"]["sum_received"]["bits_per_second"]/1e9))' "$1" 2>/dev/null || echo "?"
}
measure() { # name iperf-port redis-port
  local alone bulk g b rate=$BULK_RATE ceiling=""
  alone=$(lat "$3")
  if [ -n "$BULK_SHARE" ]; then
    iperf3 -c 127.0.0.1 -p "$2" -P "$BULK" -t 3 -J >"$dir/ceiling.json" 2>/dev/null || true
    ceiling=$(gbps "$dir/ceiling.json")
    # iperf3's -b is per stream, in bits/s.
    rate=$(python3 -c 'import sys; c,s,n=sys.argv[1:]; print("%dM"%(float(c)*1000*float(s)/100/int(n)) if c!="?" else "")' "$ceiling" "$BULK_SHARE" "$BULK")
  fi
  iperf3 -c 127.0.0.1 -p "$2" -P "$BULK" ${rate:+-b "$rate"} -t "$BULK_SECS" -J >"$dir/bulk.json" 2>/dev/null & b=$!
  sleep 2 # let the bulk streams fill their windows
  bulk=$(lat "$3")
  wait $b 2>/dev/null || true
  g=$(gbps "$dir/bulk.json")${ceiling:+/$ceiling}
  read -r a50 a99 <<<"$alone"; read -r b50 b99 <<<"$bulk"
  echo "$a99 $b99" >>"$dir/p99.$1"
  printf '%-12s %10s %10s %12s %12s %9s %10s\n' "$1" "$a50" "$a99" "$b50" "$b99" \
    "$(python3 -c "import sys; a,b=sys.argv[1:]; print('%.1fx'%(float(b)/float(a)) if a not in ('-','0','0.000') and b!='-' else '-')" "$a99" "$b99")" "$g"
}
printf '%-12s %10s %10s %12s %12s %9s %10s\n' tunnel "p50 alone" "p99 alone" "p50 w/bulk" "p99 w/bulk" "p99 ratio" "bulk Gb/s"
measure direct "$IP" "$RP"

# sgw: gateway and client as two processes, one tunnel.
CI=$(free_port); CR=$(free_port)
sgw_init --expose "127.0.0.1:$IP@$CI" --expose "127.0.0.1:$RP@$CR"
sed -i -E 's/^(tunnels *= *).*/\11/' "$dir/sgw/client.toml"
sgw_start
for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$CR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done

RI=$(free_port); RR=$(free_port)
rathole=""
if rathole_tls "$RI:$IP" "$RR:$RP"; then
  for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$RR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  rathole=1
else
  echo "rathole-tls: skipped (no $PEERS/rathole/bin/rathole)"
fi
for _ in $(seq "$ROUNDS"); do
  measure sgw "$CI" "$CR"
  [ -z "$rathole" ] || measure rathole-tls "$RI" "$RR"
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "medians of $ROUNDS rounds (p99 alone, p99 w/bulk, ms):"
  for t in sgw ${rathole:+rathole-tls}; do
    python3 -c 'import sys, statistics as st
rows = [l.split() for l in open(sys.argv[2])]
med = lambda i: "%.3f" % st.median(float(r[i]) for r in rows if r[i] != "-") if any(r[i] != "-" for r in rows) else "-"
print("  %-12s %s %s" % (sys.argv[1], med(0), med(1)))' "$t" "$dir/p99.$t"
  done
fi
