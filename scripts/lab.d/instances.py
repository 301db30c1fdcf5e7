#!/usr/bin/env python3
"""Frontend instances in the lab (lab-test group ``instances``).

    instances.py serve --host-id I --port P
        One frontend instance on 0.0.0.0:P in host I's namespace. A
        connection whose first bytes are an HTTP request gets one answer,
        ``HTTP/1.1 200`` with ``X-Shoal-Host: I`` and ``X-Shoal-Instance: P``
        (body ``I P``), and is closed; any other connection is a line echo
        answering each line with ``I P <line>`` (held connections).

    instances.py connect --vip V --port 3128 --connections N
                         [--concurrency C] [--rate R] [--timeout S]
        N new connections from the client namespace's 300 addresses, each
        one HTTP request; prints one JSON object: ok, failed, by_host,
        by_instance ("host:port" -> count), errors by kind, and (with
        --events) every attempt as [unix time, "host:port" or null].
        --rate R spaces the starts at R per second (a stream). --url U
        sends ``GET U`` in proxy form, for instances that are proxies (a
        Squid instance names itself ``inst-H-P`` in its Via header).

    instances.py hold --vip V --port 3128 --connections N [--seconds S]
        N long-lived line-echo connections, a line on each every 0.2 s,
        until SIGTERM or S seconds; prints JSON: per connection its first
        "host:port", whether it ever answered from another one, failures.

    instances.py proxy --vip V --port P --urls FILE [--shift K]
                       [--concurrency C] [--timeout S]
        Each URL of FILE (one a line) fetched once through the proxy at
        V:P on a new connection (proxy form), from the client addresses in
        turn starting at the K-th; prints one JSON object: ok, failed,
        errors, seconds, by_frontend, by_backend, by_cache and per URL
        [url, status, frontend, backend, cache, seconds, client]. The frontend is read from
        Via: a Squid instance's ``inst-H-P`` ("H:P"), or shoal's own entry
        ``feH.lab (shoal)`` ("H:shoal"); the backend is the Via entry of a
        ``beN`` Squid; the cache result is the backend's ``X-Cache``
        (HIT or MISS).

Only the Python standard library. The server is one selectors loop; the
clients are threads (N is a few thousand at most).
"""

import argparse
import json
import selectors
import signal
import socket
import sys
import threading
import time


def serve(args):
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", args.port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    tag = "%d %d" % (args.host_id, args.port)
    bufs = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def close(conn):
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        bufs.pop(conn, None)
        conn.close()

    while not stop:
        for key, _ in sel.select(timeout=0.5):
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                bufs[conn] = b""
                sel.register(conn, selectors.EVENT_READ, "c")
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                close(conn)
                continue
            buf = bufs.get(conn, b"") + data
            if buf.startswith(b"GET ") or buf.startswith(b"HEAD "):
                if b"\r\n\r\n" not in buf:
                    bufs[conn] = buf[-16384:]
                    continue
                body = (tag + "\n").encode()
                head = ("HTTP/1.1 200 OK\r\nX-Shoal-Host: %d\r\nX-Shoal-Instance: %d\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n" % (args.host_id, args.port, len(body)))
                try:
                    conn.setblocking(True)
                    conn.settimeout(2)
                    conn.sendall(head.encode() + body)
                except OSError:
                    pass
                close(conn)
                continue
            out = b""
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out += tag.encode() + b" " + line + b"\n"
            bufs[conn] = buf[-65536:]
            if out:
                try:
                    conn.send(out)
                except OSError:
                    close(conn)


def sources():
    return ["10.0.1.%d" % i for i in range(1, 151)] + ["10.0.2.%d" % i for i in range(1, 151)]


def one_request(vip, port, src, timeout, url=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((vip, port))
        if url:
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                       % (url, url.split("/")[2])).encode())
        else:
            s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        host = inst = None
        for line in data.split(b"\r\n"):
            if line.lower().startswith(b"x-shoal-host:"):
                host = line.split(b":", 1)[1].strip().decode()
            if line.lower().startswith(b"x-shoal-instance:"):
                inst = line.split(b":", 1)[1].strip().decode()
            # A Squid instance names itself in Via: "1.1 inst-H-P (squid/...)".
            if line.lower().startswith(b"via:") and b"inst-" in line:
                name = line.split(b"inst-", 1)[1].split()[0].decode()
                host, inst = name.split("-")[:2]
        if host is None or inst is None:
            return None, "no_answer"
        return "%s:%s" % (host, inst), None
    except socket.timeout:
        return None, "timeout"
    except ConnectionRefusedError:
        return None, "refused"
    except ConnectionResetError:
        return None, "reset"
    except OSError as err:
        return None, type(err).__name__
    finally:
        s.close()


def for_each_index(count, concurrency, job):
    """Calls JOB(i) for every i in 0..COUNT on CONCURRENCY threads, each
    taking the next index as it finishes one; returns when all are done."""
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                if i >= count:
                    return
                nxt[0] += 1
            job(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def connect(args):
    srcs = sources()
    results = [None] * args.connections
    began = time.time()

    def job(i):
        if args.rate:
            delay = began + i / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
        t = time.time()
        got, err = one_request(args.vip, args.port, srcs[i % len(srcs)], args.timeout, args.url)
        results[i] = (t, got, err)

    for_each_index(args.connections, args.concurrency, job)
    by_host, by_instance, errors = {}, {}, {}
    ok = 0
    for _, got, err in results:
        if got:
            ok += 1
            by_instance[got] = by_instance.get(got, 0) + 1
            h = got.split(":")[0]
            by_host[h] = by_host.get(h, 0) + 1
        else:
            errors[err] = errors.get(err, 0) + 1
    out = {"ok": ok, "failed": args.connections - ok, "by_host": by_host, "by_instance": by_instance,
           "errors": errors, "seconds": round(time.time() - began, 3)}
    if args.events:
        out["events"] = [[round(t, 3), got] for t, got, _ in results]
    print(json.dumps(out), flush=True)


def via_names(values):
    """Received-by names of every entry of the Via header VALUES, with
    whether the entry is shoal's."""
    out = []
    for value in values:
        for entry in value.split(","):
            parts = entry.split()
            if len(parts) >= 2:
                out.append((parts[1], "(shoal)" in entry))
    return out


def proxy_fetch(vip, port, src, url, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((vip, port))
        host = url.split("/")[2]
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (url, host)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        if not lines or not lines[0].startswith("HTTP/1."):
            return None, "no_answer"
        status = int(lines[0].split()[1])
        vias, caches = [], []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "via":
                vias.append(value.strip())
            elif name.strip().lower() == "x-cache":
                caches.append(value.strip())
        frontend = backend = None
        for name, is_shoal in via_names(vias):
            if name.startswith("inst-"):
                h, p = name[len("inst-"):].split("-")[:2]
                frontend = "%s:%s" % (h, p)
            elif is_shoal and name.startswith("fe"):
                frontend = "%s:shoal" % name[2:].split(".")[0]
            elif name.startswith("be"):
                backend = name
        cache = None
        for c in caches:
            word, _, by = c.partition(" from ")
            if by.strip().startswith("be"):
                cache = word.strip()
        return [url, status, frontend, backend, cache], None
    except socket.timeout:
        return None, "timeout"
    except ConnectionRefusedError:
        return None, "refused"
    except ConnectionResetError:
        return None, "reset"
    except (OSError, ValueError, IndexError) as err:
        return None, type(err).__name__
    finally:
        s.close()


def proxy(args):
    srcs = sources()
    with open(args.urls) as f:
        urls = [l.strip() for l in f if l.strip()]
    rows = [None] * len(urls)
    errors = {}
    lock = threading.Lock()
    began = time.time()

    def job(i):
        src = srcs[(i + args.shift) % len(srcs)]
        t = time.time()
        row, err = proxy_fetch(args.vip, args.port, src, urls[i], args.timeout)
        took = round(time.time() - t, 3)
        with lock:
            if row:
                rows[i] = row + [took, src]
            else:
                errors[err] = errors.get(err, 0) + 1
                rows[i] = [urls[i], None, None, None, None, took, src]

    for_each_index(len(urls), args.concurrency, job)
    tally = {"by_frontend": {}, "by_backend": {}, "by_cache": {}}
    ok = 0
    for _url, status, fe, be, cache, _took, _src in rows:
        if status == 200:
            ok += 1
        for key, v in (("by_frontend", fe), ("by_backend", be), ("by_cache", cache)):
            tally[key][str(v)] = tally[key].get(str(v), 0) + 1
    out = {"ok": ok, "failed": len(urls) - ok, "errors": errors, "seconds": round(time.time() - began, 3),
           "rows": rows}
    out.update(tally)
    print(json.dumps(out), flush=True)


def hold(args):
    srcs = sources()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    conns = []
    first = {}
    moved = {}
    failures = []
    for i in range(args.connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.bind((srcs[i % len(srcs)], 0))
            s.connect((args.vip, args.port))
            conns.append((i, s, s.makefile("rb")))
        except OSError as err:
            failures.append([i, "connect", type(err).__name__])
            s.close()
    began = time.time()
    live = list(conns)
    seq = 0
    while not stop.is_set() and time.time() - began < args.seconds and live:
        seq += 1
        for entry in list(live):
            i, s, f = entry
            try:
                s.sendall(b"ping %d\n" % seq)
                line = f.readline()
                if not line:
                    raise ConnectionResetError("closed")
                parts = line.decode().split()
                at = "%s:%s" % (parts[0], parts[1])
                first.setdefault(i, at)
                if at != first[i]:
                    moved[i] = at
            except (OSError, IndexError) as err:
                failures.append([i, "echo", type(err).__name__])
                live.remove(entry)
        stop.wait(args.interval)
    for _, s, _ in conns:
        s.close()
    by_instance = {}
    for at in first.values():
        by_instance[at] = by_instance.get(at, 0) + 1
    print(json.dumps({"connections": len(conns), "first": {str(k): v for k, v in first.items()},
                      "by_instance": by_instance, "moved": {str(k): v for k, v in moved.items()},
                      "failures": failures, "rounds": seq}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host-id", type=int, required=True)
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("connect")
    c.add_argument("--vip", default="10.0.0.100")
    c.add_argument("--port", type=int, default=3128)
    c.add_argument("--connections", type=int, default=4000)
    c.add_argument("--concurrency", type=int, default=40)
    c.add_argument("--rate", type=float, default=0)
    c.add_argument("--timeout", type=float, default=2.0)
    c.add_argument("--events", action="store_true")
    c.add_argument("--url", help="send GET URL in proxy form (instances that are proxies, e.g. Squid)")
    x = sub.add_parser("proxy")
    x.add_argument("--vip", default="10.0.0.100")
    x.add_argument("--port", type=int, default=3128)
    x.add_argument("--urls", required=True)
    x.add_argument("--shift", type=int, default=0)
    x.add_argument("--concurrency", type=int, default=40)
    x.add_argument("--timeout", type=float, default=5.0)
    h = sub.add_parser("hold")
    h.add_argument("--vip", default="10.0.0.100")
    h.add_argument("--port", type=int, default=3128)
    h.add_argument("--connections", type=int, default=60)
    h.add_argument("--seconds", type=float, default=120)
    h.add_argument("--interval", type=float, default=0.2)
    args = p.parse_args()
    {"serve": serve, "connect": connect, "proxy": proxy, "hold": hold}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
