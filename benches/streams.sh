#!/usr/bin/env bash
# Many concurrent streams: STREAMS kept-alive redis connections through one gateway and one
# client (two processes, the client's default two tunnels), each answering a PING when opened
# and again once all are open; memory per stream is the growth of both processes' RSS over
# the idle tunnels, divided by the streams.
#
#   cargo build --release && bash benches/streams.sh          # STREAMS=10000
# Needs: redis-server python3, and a hard fd limit above 2 × STREAMS (this raises the soft one).
#
# At the default 256 KiB window, 10,000 streams promise 2.5 GiB of receive window: over the
# default `limits.window_budget` (2 GiB), which would refuse the last ones. This raises it to
# 3 GiB in both processes, as an operator expecting that many streams would.
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
STREAMS=${STREAMS:-10000}
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((STREAMS + 1000)) ] || { echo "fd limit $(ulimit -n) is too low for $STREAMS streams"; exit 1; }
PEERS=${PEERS:-}
. benches/common.sh
RP=$(free_port); CR=$(free_port)
redis-server --port "$RP" --save '' --appendonly no --maxclients $((STREAMS + 100)) >/dev/null 2>&1 & pids+=($!)
sgw_init --expose "127.0.0.1:$RP@$CR"
sgw_limits 'window_budget = "3GiB"'
sgw_start
gw=$GW; cl=$CL
for _ in $(seq 100); do [ "$(timeout 2 redis-cli -p "$CR" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
base=$(( $(rss $gw) + $(rss $cl) ))
python3 - "$CR" "$STREAMS" "$gw" "$cl" "$base" <<'PY'
import asyncio, sys, time
port, n, gw, cl, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
async def ping(r, w):
    w.write(b"PING\r\n")
    await w.drain()
    return await asyncio.wait_for(r.readline(), 30) == b"+PONG\r\n"
async def main():
    gate = asyncio.Semaphore(200)  # opens in flight: below the client's accept backlog
    conns, failed = [], 0
    async def one():
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                if await ping(r, w):
                    conns.append((r, w))
                    return
            except Exception:
                pass
            failed += 1
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    opened = time.monotonic() - t0
    again = await asyncio.gather(*(ping(r, w) for r, w in conns), return_exceptions=True)
    ok = sum(1 for a in again if a is True)
    grown = rss(gw) + rss(cl) - base
    print(f"{n} streams: {len(conns)} opened and answered in {opened:.1f} s, {ok} answered again "
          f"while all open, {failed} failed")
    print(f"RSS gateway {rss(gw)//1024} MiB + client {rss(cl)//1024} MiB; "
          f"growth over idle {grown//1024} MiB = {grown/max(len(conns),1):.1f} KiB per stream")
    for r, w in conns:
        w.close()
    sys.exit(0 if ok == n else 1)
asyncio.run(main())
PY
