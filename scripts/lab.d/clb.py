#!/usr/bin/env python3
"""scripts/lab.d/clb.py — the CLB lab's back-end server and load generator.

    clb.py serve --listen ADDR:PORT --name NAME [--delay-ms D]
                 [--freeze-every S --freeze-for S] [--workers N]
    clb.py load --url http://HOST:PORT/PATH --rate R --seconds S
                [--source ADDR ...] [--timeout S] [--close]

serve: an asyncio HTTP/1.1 server with keep-alive. Every request (the
probe path too) is answered after D ms with the body NAME; with
--freeze-every, the server answers nothing from second k*S to k*S+F after
it started (requests arriving then wait until the freeze ends), as a
server stalled by garbage collection or a full disk would. With --workers
N at most N requests are served at once and the rest queue (a server with
a capacity: 1000/D requests/s per worker). On SIGTERM it
stops listening at once (new connections are refused), closes its idle
connections, answers the requests it holds, and exits.

load: an open-loop generator: request k is due at start + k/R, whatever
happened to the earlier ones, and its latency is measured from when it was
due (so a stalled server shows up in the tail instead of slowing the
offered load: no coordinated omission). Requests go over keep-alive
connections (a new one whenever none is idle), bound to the --source
addresses in turn. Prints one JSON object: sent, ok, statuses,
errors, served_by counts, latency percentiles (ms), and per 100 ms slot
which back ends served; with --freeze-started, the p99 of the requests due
while a freezing server was frozen and of the rest. --dump FILE writes
one line per request: due time (s from the start), latency ms (- when
failed), status, back end (None unless x-shoal-served-by named it), and
"frozen" when it was due while the freezing server was frozen, else -.
"""

import argparse
import asyncio
import json
import signal
import sys
import time


# ---------------------------------------------------------------- serve

async def serve(args):
    start = time.monotonic()
    print("started %.6f" % time.time(), flush=True)
    body = args.name.encode()

    gate = asyncio.Semaphore(args.workers) if args.workers > 0 else None

    async def pause():
        if gate is not None:
            async with gate:
                await work()
        else:
            await work()

    async def work():
        if args.delay_ms > 0:
            await asyncio.sleep(args.delay_ms / 1000.0)
        if args.freeze_every > 0:
            t = time.monotonic() - start
            phase = t % args.freeze_every
            if phase < args.freeze_for:
                await asyncio.sleep(args.freeze_for - phase)

    conns = {}  # writer -> busy
    stopping = asyncio.Event()

    async def handle(reader, writer):
        conns[writer] = False
        try:
            while not stopping.is_set():
                head = await reader.readuntil(b"\r\n\r\n")
                conns[writer] = True
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip() or 0)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length:
                    await reader.readexactly(length)
                await pause()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s\r\n%s"
                             % (len(body), b"Connection: close\r\n" if close else b"", body))
                await writer.drain()
                conns[writer] = False
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            conns.pop(writer, None)
            writer.close()

    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(handle, host, int(port), backlog=1024, reuse_address=True)
    print("listening %s" % args.listen, flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    # SIGTERM: stop listening (new connections are refused), close idle
    # connections, let the busy ones answer, then exit.
    server.close()
    for writer, busy in list(conns.items()):
        if not busy:
            writer.close()
    deadline = time.monotonic() + 3
    while any(conns.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- load

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def load(args):
    host_port = args.url.split("//", 1)[1]
    hostport, _, path = host_port.partition("/")
    path = "/" + path
    host, _, port = hostport.rpartition(":")
    port = int(port)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        path, hostport, "Connection: close\r\n" if args.close else "")).encode()
    idle = []
    open_count = 0
    sources = args.source or [None]
    next_source = 0
    results = []  # (due offset s, latency ms or None, status or error, served_by)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    start_epoch = time.time() + (start - loop.time())
    total = int(args.rate * args.seconds)

    async def connection():
        nonlocal open_count, next_source
        while idle:
            conn = idle.pop()
            if not conn[1].is_closing():
                return conn
        open_count += 1
        src = sources[next_source % len(sources)]
        next_source += 1
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(src, 0) if src else None)
        return reader, writer

    async def one(k, due):
        conn = None
        try:
            conn = await asyncio.wait_for(connection(), args.timeout)
            reader, writer = conn
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = 0
            served = None
            keep = True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"x-shoal-served-by":
                    served = value.strip().decode()
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            if length:
                await asyncio.wait_for(reader.readexactly(length), args.timeout)
            latency = (loop.time() - due) * 1000.0
            results.append((due - start, latency, status, served))
            if keep:
                idle.append(conn)
            else:
                writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
            results.append((due - start, None, type(err).__name__, None))
            if conn:
                conn[1].close()

    tasks = []
    for k in range(total):
        due = start + k / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(k, due)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    ok = sorted(r[1] for r in results if r[1] is not None and r[2] == 200)
    # Failed requests count at the timeout in the latency distribution.
    every = sorted([r[1] if r[1] is not None else args.timeout * 1000.0 for r in results])
    statuses = {}
    served = {}
    slots = {}
    for due, lat, status, by in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if by:
            served[by] = served.get(by, 0) + 1
            slot = slots.setdefault(int(due * 10), {})
            slot[by] = slot.get(by, 0) + 1
    elapsed = loop.time() - start
    out = {
        "sent": total,
        "start_epoch": start_epoch,
        "failed_due": [round(r[0], 3) for r in results if r[2] != 200],
        "ok": len(ok),
        "statuses": statuses,
        "served_by": served,
        "connections": open_count,
        "rps": round(len(ok) / elapsed, 1) if elapsed > 0 else 0,
        "p50_ms": percentile(every, 0.50),
        "p90_ms": percentile(every, 0.90),
        "p99_ms": percentile(every, 0.99),
        "p999_ms": percentile(every, 0.999),
        "max_ms": every[-1] if every else None,
        "p99_freeze_ms": None,
        "p99_rest_ms": None,
        "slots": {str(k): v for k, v in sorted(slots.items())},
    }
    def frozen(due):
        # Whether the request was due while the freezing server (started
        # at that epoch) was frozen.
        if not args.freeze_started:
            return False
        t = start_epoch + due - args.freeze_started
        return t >= 0 and t % args.freeze_every < args.freeze_for
    def settling(due):
        # Within --settle seconds after a freeze ended.
        if not args.freeze_started or args.settle <= 0:
            return False
        t = start_epoch + due - args.freeze_started
        return t >= 0 and args.freeze_for <= t % args.freeze_every < args.freeze_for + args.settle
    if args.freeze_started:
        lat = lambda r: r[1] if r[1] is not None else args.timeout * 1000.0
        during = sorted(lat(r) for r in results if frozen(r[0]))
        rest = sorted(lat(r) for r in results if not frozen(r[0]) and not settling(r[0]))
        out["p99_freeze_ms"] = percentile(during, 0.99)
        out["p50_freeze_ms"] = percentile(during, 0.50)
        out["p99_rest_ms"] = percentile(rest, 0.99)
        out["freeze_share"] = round(len(during) / max(1, len(results)), 3)
    if args.over is not None:
        out["over_share"] = round(sum(1 for v in every if v > args.over) / max(1, len(every)), 4)
    if args.dump:
        with open(args.dump, "w") as f:
            for due, lat, status, by in results:
                f.write("%.4f %s %s %s %s\n" % (due, "%.2f" % lat if lat is not None else "-",
                                                 status, by, "frozen" if frozen(due) else "-"))
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--delay-ms", type=float, default=0.0)
    s.add_argument("--freeze-every", type=float, default=0.0)
    s.add_argument("--freeze-for", type=float, default=0.0)
    s.add_argument("--workers", type=int, default=0,
                   help="requests served at once (0: no limit); the rest queue")
    l = sub.add_parser("load")
    l.add_argument("--url", required=True)
    l.add_argument("--rate", type=float, required=True)
    l.add_argument("--seconds", type=float, required=True)
    l.add_argument("--source", action="append")
    l.add_argument("--timeout", type=float, default=10.0)
    l.add_argument("--close", action="store_true", help="one connection per request")
    l.add_argument("--freeze-started", type=float,
                   help="epoch a server freezing every --freeze-every s for --freeze-for s started: p99 split by it")
    l.add_argument("--freeze-every", type=float, default=10.0)
    l.add_argument("--freeze-for", type=float, default=2.0)
    l.add_argument("--over", type=float,
                   help="also report the share of requests slower than this many ms (over_share)")
    l.add_argument("--settle", type=float, default=0.0,
                   help="seconds after each freeze that count in neither split (the rest is then all healthy)")
    l.add_argument("--dump", help="write one line per request: due s, latency ms, status, served by, frozen")
    args = p.parse_args()
    if args.cmd == "serve":
        asyncio.run(serve(args))
    else:
        asyncio.run(load(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
