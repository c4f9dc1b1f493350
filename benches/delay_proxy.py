#!/usr/bin/env python3
"""A TCP proxy that behaves like a WAN link: each direction carries RATE bits per second and
delivers every byte DELAY after it went onto the link; what waits for the link is at most
about two bandwidth-delay products, as a router's queue would hold. Used by benches/wan.sh.

    delay_proxy.py LISTEN_PORT TARGET_PORT [DELAY_MS=25] [RATE_MBIT=1000]

Prints "ready" once listening.
"""
import asyncio
import sys

CHUNK = 64 * 1024


async def pipe(r, w, delay, rate):
    loop = asyncio.get_running_loop()
    limit = max(2 * rate / 8 * delay, 4 * CHUNK)  # bytes: two bandwidth-delay products
    q = asyncio.Queue()
    held = 0
    room = asyncio.Event()
    room.set()
    link_free = 0.0

    async def read():
        nonlocal held, link_free
        while True:
            await room.wait()
            data = await r.read(CHUNK)
            now = loop.time()
            start = max(now, link_free)
            link_free = start + len(data) * 8 / rate
            held += len(data)
            if held >= limit:
                room.clear()
            q.put_nowait((link_free + delay, data))
            if not data:
                return

    async def write():
        nonlocal held
        while True:
            due, data = await q.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            held -= len(data)
            if held < limit:
                room.set()
            if not data:
                if w.can_write_eof():
                    w.write_eof()
                return
            w.write(data)
            await w.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def main():
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    delay = (float(sys.argv[3]) if len(sys.argv) > 3 else 25.0) / 1000
    rate = (float(sys.argv[4]) if len(sys.argv) > 4 else 1000.0) * 1e6

    async def handle(cr, cw):
        try:
            tr, tw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, tw, delay, rate), pipe(tr, cw, delay, rate))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
