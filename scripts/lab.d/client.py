#!/usr/bin/env python3
"""The lab's client load tool: real kernel sockets from many source addresses.

Runs inside the ``shoal-client`` namespace (``scripts/lab client ...`` or
``ip netns exec shoal-client python3 client.py ...``). Every subcommand binds
each socket to one of the lab's client addresses before connecting, so the
cluster sees many distinct clients. Client addresses, in order:
10.0.1.1-10.0.1.150 then 10.0.2.1-10.0.2.150 (300); ``--clients K`` uses the
first K, round-robin.

Subcommands (results are JSON on stdout; diagnostics on stderr):

* ``http``   N requests, one new TCP connection each, at most C in flight;
  reports answers by host, resets, timeouts, errors, and the hosts each
  client address saw.
* ``udp``    N datagrams with unique ids to the UDP echo; reports how many
  replies each id got (0 = missing, 2+ = duplicated), by host.
* ``hold``   M long-lived TCP connections to the line echo, each pinged every
  interval; reports which host holds each connection and every failure
  (reset, close, reply timeout) with its time. SIGTERM or SIGINT ends it
  early, with the same report (connections still open are then closed by
  the client, which is not a failure).
* ``stream`` a steady rate of new HTTP connections; one JSON line per
  connection (start time, result, host, latency) then a summary line.
* ``probe``  rounds of one request per client address until the answers are
  complete, cover the expected hosts and are stable; exit 0 when ready.
* ``proxy``  given URLs through an HTTP proxy (the array tier's VIP, a
  member's address, or DIRECT per URL), a new connection each; reports
  answers by status, by ``x-shoal-served-by`` and by Squid's ``X-Cache``
  (HIT/MISS), and with ``--per-url`` each URL's result.

Contract: one thread, one ``selectors`` loop for every subcommand, so
thousands of sockets cost one descriptor each. A reset is an RST seen by
the client (ECONNRESET, or ECONNREFUSED while connecting); a timeout is no
complete answer within ``--timeout``; anything else is an error, counted by
errno name. Only the Python standard library is used.
"""

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
import uuid

IP_BIND_ADDRESS_NO_PORT = 24


def client_addresses():
    return ["10.0.1.%d" % i for i in range(1, 151)] + ["10.0.2.%d" % i for i in range(1, 151)]


def pick_sources(args):
    if getattr(args, "sources", None):
        return [s for s in args.sources.split(",") if s]
    addrs = client_addresses()
    if not 1 <= args.clients <= len(addrs):
        raise SystemExit("--clients must be in 1..=%d" % len(addrs))
    return addrs[: args.clients]


def raise_nofile():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def errname(code):
    return errno.errorcode.get(code, "E%d" % code)


def classify(code):
    """Map an errno to the result categories every subcommand reports."""
    if code in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE):
        return "reset"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "error"


def stream_socket(src, kind=socket.SOCK_STREAM):
    sock = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass
    sock.bind((src, 0))
    sock.setblocking(False)
    return sock


def dump(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# HTTP: one fetch = one connection = one request.


class Fetch:
    """A non-blocking HTTP GET over a fresh connection from ``src``."""

    def __init__(self, sel, src, dst, port, request_id, timeout, now):
        self.sel = sel
        self.src = src
        self.request_id = request_id
        self.started = now
        self.wall = time.time()
        self.deadline = now + timeout
        self.result = None  # "ok" | "reset" | "timeout" | "error"
        self.detail = None
        self.host = None
        self.finished = None
        self.inbuf = b""
        self.request = (
            "GET / HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\nConnection: close\r\n"
            "User-Agent: shoal-lab\r\n\r\n" % (dst, request_id)
        ).encode()
        try:
            self.sock = stream_socket(src)
        except OSError as err:
            self.sock = None
            self.finish(classify(err.errno), errname(err.errno), now)
            return
        code = self.sock.connect_ex((dst, port))
        if code not in (0, errno.EINPROGRESS):
            self.finish(classify(code), errname(code), now)
            return
        self.state = "connecting"
        sel.register(self.sock, selectors.EVENT_WRITE, self)

    def on_event(self, mask, now):
        if self.state == "connecting":
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.finish(classify(code), errname(code), now)
                return
            try:
                self.sock.send(self.request)
            except OSError as err:
                self.finish(classify(err.errno), errname(err.errno), now)
                return
            self.state = "reading"
            self.sel.modify(self.sock, selectors.EVENT_READ, self)
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.finish(classify(err.errno), errname(err.errno), now)
            return
        if data:
            self.inbuf += data
            if len(self.inbuf) > 1 << 20:
                self.finish("error", "oversized_answer", now)
            return
        self.parse(now)

    def parse(self, now):
        head, sep, _body = self.inbuf.partition(b"\r\n\r\n")
        if not sep:
            self.finish("error", "truncated_answer", now)
            return
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ")
        if len(status) < 2 or status[1] != "200":
            self.finish("error", "status_%s" % (status[1] if len(status) > 1 else "none"), now)
            return
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-shoal-host":
                self.host = value.strip()
        if self.host is None:
            self.finish("error", "no_host_header", now)
            return
        self.finish("ok", None, now)

    def check_timeout(self, now):
        if self.result is None and now >= self.deadline:
            self.finish("timeout", "deadline", now)

    def finish(self, result, detail, now):
        if self.result is not None:
            return
        self.result = result
        self.detail = detail
        self.finished = now
        if self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()


class HttpTally:
    def __init__(self, run_id):
        self.run_id = run_id
        self.requests = 0
        self.ok = 0
        self.resets = 0
        self.timeouts = 0
        self.errors = 0
        self.by_host = {}
        self.by_error = {}
        self.by_client = {}
        self.samples = []

    def add(self, fetch):
        self.requests += 1
        if fetch.result == "ok":
            self.ok += 1
            self.by_host[fetch.host] = self.by_host.get(fetch.host, 0) + 1
            self.by_client.setdefault(fetch.src, set()).add(fetch.host)
            return
        if fetch.result == "reset":
            self.resets += 1
        elif fetch.result == "timeout":
            self.timeouts += 1
        else:
            self.errors += 1
        key = fetch.detail or fetch.result
        self.by_error[key] = self.by_error.get(key, 0) + 1
        if len(self.samples) < 20:
            self.samples.append({"id": fetch.request_id, "src": fetch.src, "result": fetch.result, "detail": fetch.detail})

    def report(self):
        return {
            "run_id": self.run_id,
            "requests": self.requests,
            "ok": self.ok,
            "resets": self.resets,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "by_host": dict(sorted(self.by_host.items())),
            "by_error": self.by_error,
            "error_samples": self.samples,
            "by_client": {c: sorted(h) for c, h in sorted(self.by_client.items())},
        }


def run_fetches(starts, sources, args, run_id, on_done, make=None):
    """Drive fetches: ``starts`` yields (due_time_or_None, index); a fetch
    starts when it is due and fewer than ``args.concurrency`` are in flight.
    ``make(sel, src, index, now)`` builds a fetch (default: ``Fetch``)."""
    sel = selectors.DefaultSelector()
    active = set()
    pending = None
    starts = iter(starts)
    exhausted = False
    while True:
        now = time.monotonic()
        while not exhausted and len(active) < args.concurrency:
            if pending is None:
                pending = next(starts, None)
                if pending is None:
                    exhausted = True
                    break
            due, index = pending
            if due is not None and due > now:
                break
            pending = None
            src = sources[index % len(sources)]
            if make is None:
                fetch = Fetch(sel, src, args.vip, args.port, "%s-%d" % (run_id, index), args.timeout, now)
            else:
                fetch = make(sel, src, index, now)
            fetch.index = index
            if fetch.result is not None:
                on_done(fetch)
            else:
                active.add(fetch)
        if exhausted and not active:
            return
        wait = 0.05
        if pending is not None and pending[0] is not None:
            wait = max(0.0, min(wait, pending[0] - now))
        for key, mask in sel.select(timeout=wait if active else max(wait, 0.001)):
            key.data.on_event(mask, time.monotonic())
        now = time.monotonic()
        for fetch in [f for f in active if f.result is None]:
            fetch.check_timeout(now)
        for fetch in [f for f in active if f.result is not None]:
            active.discard(fetch)
            on_done(fetch)


def cmd_http(args):
    sources = pick_sources(args)
    run_id = args.run_id or "http-" + uuid.uuid4().hex[:12]
    tally = HttpTally(run_id)
    began = time.monotonic()
    run_fetches(((None, i) for i in range(args.requests)), sources, args, run_id, tally.add)
    report = tally.report()
    report.update(
        {
            "vip": args.vip,
            "port": args.port,
            "clients": len(sources),
            "duration_s": round(time.monotonic() - began, 3),
        }
    )
    dump(report)
    return 0


def cmd_stream(args):
    sources = pick_sources(args)
    run_id = args.run_id or "stream-" + uuid.uuid4().hex[:12]
    tally = HttpTally(run_id)
    t0 = time.monotonic()
    wall0 = time.time()
    total = int(args.rate * args.seconds)
    failed = []

    def done(fetch):
        tally.add(fetch)
        line = {
            "i": fetch.index,
            "ts": round(fetch.wall, 6),
            "t": round(fetch.started - t0, 6),
            "src": fetch.src,
            "result": fetch.result,
            "host": fetch.host,
            "ms": round((fetch.finished - fetch.started) * 1000.0, 3),
        }
        if fetch.detail:
            line["detail"] = fetch.detail
        if fetch.result != "ok":
            failed.append(fetch.wall)
        dump(line)

    # A stream must not be throttled by slow answers: allow every connection
    # that can be alive within one timeout to be in flight.
    args.concurrency = max(args.concurrency, int(args.rate * (args.timeout + 1)) + 1)
    run_fetches(((t0 + i / args.rate, i) for i in range(total)), sources, args, run_id, done)
    summary = tally.report()
    del summary["by_client"]
    summary.update(
        {
            "summary": True,
            "rate": args.rate,
            "seconds": args.seconds,
            "start_ts": round(wall0, 6),
            "failed_first_ts": round(min(failed), 6) if failed else None,
            "failed_last_ts": round(max(failed), 6) if failed else None,
        }
    )
    dump(summary)
    return 0


def cmd_probe(args):
    """Ready = ``--stable`` consecutive rounds in which every client address
    got an answer, the answering hosts are exactly the expected count, and
    (with ``--same-mapping``) each address saw the same host as last round."""
    sources = pick_sources(args)
    deadline = time.monotonic() + args.wait
    good_rounds = 0
    previous = None
    rounds = 0
    last = None
    while time.monotonic() < deadline:
        rounds += 1
        run_id = "probe-%s-%d" % (uuid.uuid4().hex[:8], rounds)
        tally = HttpTally(run_id)
        run_fetches(((None, i) for i in range(len(sources))), sources, args, run_id, tally.add)
        last = tally.report()
        mapping = last["by_client"]
        complete = last["ok"] == len(sources) and all(len(h) == 1 for h in mapping.values())
        hosts_ok = args.expect_hosts is None or len(last["by_host"]) == args.expect_hosts
        same = previous is None or not args.same_mapping or mapping == previous
        if complete and hosts_ok and same:
            good_rounds += 1
        else:
            good_rounds = 1 if complete and hosts_ok else 0
        previous = mapping if complete else None
        if good_rounds >= args.stable:
            del last["by_client"]
            dump({"ready": True, "rounds": rounds, "last": last})
            return 0
        time.sleep(args.pause)
    if last is not None:
        last.pop("by_client", None)
        last["error_samples"] = last["error_samples"][:3]
    dump({"ready": False, "rounds": rounds, "last": last})
    return 1


# --------------------------------------------------------------------------
# UDP echo.


def cmd_udp(args):
    sources = pick_sources(args)
    run_id = args.run_id or "udp-" + uuid.uuid4().hex[:12]
    sel = selectors.DefaultSelector()
    socks = []
    for src in sources:
        sock = stream_socket(src, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        sel.register(sock, selectors.EVENT_READ, src)
        socks.append((src, sock))
    replies = {}
    by_host = {}
    by_client = {}
    stray = 0
    send_errors = {}
    sent = 0
    dest = (args.vip, args.port)
    t0 = time.monotonic()
    last_send = None
    pad = b"x" * max(0, args.size)

    def drain(timeout):
        nonlocal stray
        for key, _mask in sel.select(timeout=timeout):
            sock = key.fileobj
            for _ in range(256):
                try:
                    data, _peer = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                parts = data.split(b" ", 2)
                if len(parts) < 2:
                    stray += 1
                    continue
                host = parts[0].decode("latin-1")
                ident = parts[1].decode("latin-1")
                if not ident.startswith(run_id + "-"):
                    stray += 1
                    continue
                replies[ident] = replies.get(ident, 0) + 1
                by_host[host] = by_host.get(host, 0) + 1
                by_client.setdefault(key.data, set()).add(host)

    while sent < args.datagrams:
        now = time.monotonic()
        due = int((now - t0) * args.rate) + 1
        while sent < min(due, args.datagrams):
            src, sock = socks[sent % len(socks)]
            payload = ("%s-%d " % (run_id, sent)).encode() + pad
            try:
                sock.sendto(payload, dest)
            except OSError as err:
                name = errname(err.errno)
                send_errors[name] = send_errors.get(name, 0) + 1
            sent += 1
        last_send = time.monotonic()
        drain(0.002)
    end = (last_send or time.monotonic()) + args.wait
    while time.monotonic() < end:
        drain(max(0.0, min(0.1, end - time.monotonic())))
    for _src, sock in socks:
        sock.close()

    histogram = {"0": 0}
    missing_sample = []
    for i in range(args.datagrams):
        ident = "%s-%d" % (run_id, i)
        count = replies.get(ident, 0)
        histogram[str(count)] = histogram.get(str(count), 0) + 1
        if count == 0 and len(missing_sample) < 20:
            missing_sample.append(ident)
    dump(
        {
            "run_id": run_id,
            "datagrams": args.datagrams,
            "sent": sent,
            "send_errors": send_errors,
            "replies": sum(replies.values()),
            "answered": sum(1 for c in replies.values() if c >= 1),
            "missing": histogram["0"],
            "duplicated": sum(1 for c in replies.values() if c > 1),
            "replies_per_id": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
            "stray": stray,
            "by_host": dict(sorted(by_host.items())),
            "by_client": {c: sorted(h) for c, h in sorted(by_client.items())},
            "missing_sample": missing_sample,
            "clients": len(sources),
            "duration_s": round(time.monotonic() - t0, 3),
        }
    )
    return 0


# --------------------------------------------------------------------------
# Long-lived connections.


class Held:
    """One long-lived connection to the line echo. Each ping is
    ``ping <conn> <seq>\\n``; the answer ``H ping <conn> <seq>`` names the
    host. A connection fails once: reset, closed, connect failure, or no
    answer within the reply timeout; it is then closed and never retried."""

    def __init__(self, sel, index, src, args, now):
        self.sel = sel
        self.index = index
        self.src = src
        self.args = args
        self.host = None
        self.hosts = set()
        self.seq = 0
        self.outstanding = None  # (seq, sent_at)
        self.next_ping = None
        self.inbuf = b""
        self.outbuf = b""
        self.failure = None
        self.established = False
        self.connect_deadline = now + args.timeout
        self.rtts = []
        self.answered = 0
        try:
            self.sock = stream_socket(src)
        except OSError as err:
            self.sock = None
            self.fail("connect_" + classify(err.errno), errname(err.errno), now)
            return
        code = self.sock.connect_ex((args.vip, args.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail("connect_" + classify(code), errname(code), now)
            return
        sel.register(self.sock, selectors.EVENT_WRITE, self)

    def fail(self, reason, detail, now):
        if self.failure is not None:
            return
        self.failure = {
            "conn": self.index,
            "src": self.src,
            "host": self.host,
            "reason": reason,
            "detail": detail,
            "t": round(now - self.args.t0, 3),
            "ts": round(time.time(), 6),
        }
        if self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()

    def on_event(self, mask, now):
        if not self.established:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail("connect_" + classify(code), errname(code), now)
                return
            self.established = True
            self.sel.modify(self.sock, selectors.EVENT_READ, self)
            self.ping(now)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as err:
                self.fail(classify(err.errno), errname(err.errno), now)
                return
            if data == b"":
                self.fail("closed", "eof", now)
                return
            if data:
                self.inbuf += data
                self.take_answers(now)
        if self.failure is None and mask & selectors.EVENT_WRITE:
            self.flush(now)

    def take_answers(self, now):
        while self.failure is None:
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                return
            line, self.inbuf = self.inbuf[:nl], self.inbuf[nl + 1 :]
            parts = line.decode("latin-1").split(" ")
            if len(parts) != 4 or parts[1] != "ping" or self.outstanding is None:
                self.fail("error", "bad_answer", now)
                return
            host, seq = parts[0], int(parts[3]) if parts[3].isdigit() else -1
            if seq != self.outstanding[0]:
                self.fail("error", "out_of_order", now)
                return
            if self.host is None:
                self.host = host
            self.hosts.add(host)
            self.rtts.append(now - self.outstanding[1])
            self.answered += 1
            self.outstanding = None

    def ping(self, now):
        self.seq += 1
        self.outstanding = (self.seq, now)
        self.next_ping = now + self.args.interval
        self.outbuf += ("ping %d %d\n" % (self.index, self.seq)).encode()
        self.flush(now)

    def flush(self, now):
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self.fail(classify(err.errno), errname(err.errno), now)
            return
        self.outbuf = self.outbuf[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.sel.modify(self.sock, events, self)

    def tick(self, now):
        if self.failure is not None:
            return
        if not self.established:
            if now >= self.connect_deadline:
                self.fail("connect_timeout", "deadline", now)
            return
        if self.outstanding is not None:
            if now - self.outstanding[1] >= self.args.reply_timeout:
                self.fail("timeout", "no_answer", now)
            return
        if now >= self.next_ping:
            self.ping(now)

    def close(self):
        if self.failure is None and self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()


def cmd_hold(args):
    sources = pick_sources(args)
    sel = selectors.DefaultSelector()
    now = time.monotonic()
    args.t0 = now
    end = now + args.seconds
    conns = []
    next_open = now
    stopping = []

    def stop(_signum, _frame):
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        now = time.monotonic()
        if now >= end or stopping:
            break
        while len(conns) < args.connections and next_open <= now:
            conns.append(Held(sel, len(conns), sources[len(conns) % len(sources)], args, now))
            next_open += 1.0 / args.connect_rate
        for key, mask in sel.select(timeout=0.02):
            key.data.on_event(mask, time.monotonic())
        now = time.monotonic()
        for conn in conns:
            conn.tick(now)
    for conn in conns:
        conn.close()

    failures = [c.failure for c in conns if c.failure is not None]
    by_reason = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    by_host = {}
    for c in conns:
        if c.host is not None:
            by_host[c.host] = by_host.get(c.host, 0) + 1
    rtts = sorted(r for c in conns for r in c.rtts)

    def pct(p):
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000.0, 3) if rtts else None

    dump(
        {
            "connections": args.connections,
            "opened": len(conns),
            "established": sum(1 for c in conns if c.established),
            "survived": sum(1 for c in conns if c.established and c.failure is None),
            "failures": len(failures),
            "by_reason": by_reason,
            "resets": by_reason.get("reset", 0),
            "timeouts": by_reason.get("timeout", 0),
            "connect_failures": sum(v for k, v in by_reason.items() if k.startswith("connect_")),
            "host_changes": sum(1 for c in conns if len(c.hosts) > 1),
            "by_host": dict(sorted(by_host.items())),
            "pings_sent": sum(c.seq for c in conns),
            "pings_answered": sum(c.answered for c in conns),
            "rtt_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "failure_events": failures[: args.max_events],
            "connection_hosts": {str(c.index): c.host for c in conns} if args.per_connection else None,
            "seconds": args.seconds,
            "held_s": round(time.monotonic() - args.t0, 3),
            "stopped_early": bool(stopping),
        }
    )
    return 0


# --------------------------------------------------------------------------
# Proxy: requests for given URLs through an HTTP proxy (the array tier).


class ProxyFetch:
    """One request over a fresh connection to ``proxy`` (``host:port``), or
    straight to the URL's host (``DIRECT``, resolved with ``resolve``):
    absolute-form through a proxy, origin-form directly, authority-form for
    CONNECT. Reads the answer to its end (``Content-Length``, or the close)
    and keeps its status and the headers the array judges read."""

    def __init__(self, sel, src, url, proxy, method, headers, resolve, timeout, now):
        self.sel = sel
        self.src = src
        self.url = url
        self.proxy = proxy
        self.method = method
        self.started = now
        self.deadline = now + timeout
        self.result = None
        self.detail = None
        self.status = None
        self.head = {}
        self.body = b""
        self.sock = None
        self.inbuf = b""
        if method == "CONNECT":
            target = host = url
        else:
            rest = url.split("://", 1)[-1]
            host, slash, path = rest.partition("/")
            target = url if proxy != "DIRECT" else "/" + path if slash else "/"
        lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % host]
        lines += headers
        lines += ["Connection: close", "User-Agent: shoal-lab", "", ""]
        self.request = "\r\n".join(lines).encode("latin-1")
        if proxy == "DIRECT":
            name, _, port = host.partition(":")
            dst = (resolve.get(name.lower(), name), int(port or 80))
        else:
            addr, _, port = proxy.rpartition(":")
            dst = (addr, int(port))
        try:
            self.sock = stream_socket(src) if src else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setblocking(False)
        except OSError as err:
            self.sock = None
            self.finish(classify(err.errno), errname(err.errno), now)
            return
        code = self.sock.connect_ex(dst)
        if code not in (0, errno.EINPROGRESS):
            self.finish(classify(code), errname(code), now)
            return
        self.state = "connecting"
        sel.register(self.sock, selectors.EVENT_WRITE, self)

    def on_event(self, mask, now):
        if self.state == "connecting":
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.finish(classify(code), errname(code), now)
                return
            self.state = "sending"
        if self.state == "sending":
            try:
                sent = self.sock.send(self.request)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.finish(classify(err.errno), errname(err.errno), now)
                return
            self.request = self.request[sent:]
            if not self.request:
                self.state = "reading"
                self.sel.modify(self.sock, selectors.EVENT_READ, self)
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            # An answer already complete before the reset still counts.
            if not self.parse(now, final=True):
                self.finish(classify(err.errno), errname(err.errno), now)
            return
        self.inbuf += data
        if len(self.inbuf) > 1 << 20:
            self.finish("error", "oversized_answer", now)
            return
        if not self.parse(now, final=not data) and not data:
            self.finish("error", "truncated_answer", now)

    def parse(self, now, final):
        """True once the answer is complete (and recorded)."""
        head, sep, body = self.inbuf.partition(b"\r\n\r\n")
        if not sep:
            return False
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        length = headers.get("content-length")
        if self.method == "CONNECT" or self.method == "HEAD":
            body = b""
        elif length is not None and length.isdigit():
            if len(body) < int(length):
                return False
            body = body[: int(length)]
        elif not final:
            return False
        self.status = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        self.head = headers
        self.body = body
        self.finish("ok", None, now)
        return True

    def check_timeout(self, now):
        if self.result is None and now >= self.deadline:
            self.finish("timeout", "deadline", now)

    def finish(self, result, detail, now):
        if self.result is not None:
            return
        self.result = result
        self.detail = detail
        self.finished = now
        if self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()


def cache_verdict(value):
    """HIT, MISS or "-" from a Squid ``X-Cache`` header value."""
    word = (value or "").split(" ", 1)[0].upper()
    return word if word in ("HIT", "MISS") else "-"


def cmd_proxy(args):
    """Every URL of --urls (``URL`` or ``URL<TAB>PROXY`` per line, PROXY
    ``host:port`` or ``DIRECT``) once, through --proxy unless the line names
    its own. Reports answers by status, by ``x-shoal-served-by`` and by
    Squid's ``X-Cache``; --per-url adds each URL's result."""
    rows = []
    with open(args.urls) if args.urls != "-" else sys.stdin as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            url, _, via = line.partition("\t")
            rows.append((url, via or args.proxy))
    resolve = {}
    if args.resolve:
        with open(args.resolve) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                for name in fields[1:]:
                    resolve[name.lower()] = fields[0]
    sources = [s for s in args.sources.split(",") if s] if args.sources else (
        pick_sources(args) if args.clients else [None])
    headers = list(args.header or [])
    results = [None] * len(rows)
    tally = {"requests": 0, "answered": 0, "resets": 0, "timeouts": 0, "errors": 0, "by_status": {},
             "by_served_by": {}, "by_cache": {}, "by_error": {}}

    def make(sel, src, index, now):
        url, via = rows[index]
        fetch = ProxyFetch(sel, src, url, via, args.method, headers, resolve, args.timeout, now)
        fetch.index = index
        return fetch

    def done(fetch):
        tally["requests"] += 1
        url, via = rows[fetch.index]
        row = {"url": url, "proxy": via, "result": fetch.result}
        if fetch.result == "ok":
            tally["answered"] += 1
            status = str(fetch.status)
            served = fetch.head.get("x-shoal-served-by", "-")
            cache = cache_verdict(fetch.head.get("x-cache"))
            tally["by_status"][status] = tally["by_status"].get(status, 0) + 1
            if fetch.status == 200:
                tally["by_served_by"][served] = tally["by_served_by"].get(served, 0) + 1
                tally["by_cache"][cache] = tally["by_cache"].get(cache, 0) + 1
            row.update({"status": fetch.status, "served_by": served, "cache": cache,
                        "body": fetch.body[:200].decode("latin-1")})
            for name in args.keep_header or []:
                row[name.lower()] = fetch.head.get(name.lower())
        else:
            tally[{"reset": "resets", "timeout": "timeouts"}.get(fetch.result, "errors")] += 1
            key = fetch.detail or fetch.result
            tally["by_error"][key] = tally["by_error"].get(key, 0) + 1
            row["detail"] = fetch.detail
        results[fetch.index] = row

    began = time.monotonic()
    run_fetches(((None, i) for i in range(len(rows))), sources, args, None, done, make=make)
    tally["duration_s"] = round(time.monotonic() - began, 3)
    if args.per_url:
        tally["results"] = results
    dump(tally)
    return 0


# --------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, port, timeout=3.0):
        p.add_argument("--vip", default="10.0.0.100")
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--clients", type=int, default=300, help="use the first K client addresses")
        p.add_argument("--sources", help="comma-separated source addresses instead of --clients")
        p.add_argument("--timeout", type=float, default=timeout, help="seconds per connection/answer")
        p.add_argument("--run-id", help="prefix of every request id (default: random)")

    p = sub.add_parser("http", help="N requests, a new connection each")
    common(p, 80)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=50)
    p.set_defaults(func=cmd_http)

    p = sub.add_parser("stream", help="a steady rate of new HTTP connections")
    common(p, 80, timeout=2.0)
    p.add_argument("--rate", type=float, default=100.0, help="connections per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=0)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("probe", help="wait until the VIP answers every client, stably")
    common(p, 80, timeout=1.5)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--expect-hosts", type=int)
    p.add_argument("--same-mapping", action="store_true", help="a client must see the same host each round")
    p.add_argument("--stable", type=int, default=2, help="consecutive good rounds needed")
    p.add_argument("--wait", type=float, default=60.0, help="give up after this many seconds")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between rounds")
    p.set_defaults(func=cmd_probe, run_id=None)

    p = sub.add_parser("udp", help="N datagrams to the UDP echo")
    common(p, 7001)
    p.add_argument("--datagrams", type=int, default=10000)
    p.add_argument("--rate", type=float, default=5000.0, help="datagrams per second")
    p.add_argument("--size", type=int, default=16, help="padding bytes per datagram")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect replies after the last send")
    p.set_defaults(func=cmd_udp)

    p = sub.add_parser("proxy", help="given URLs through an HTTP proxy (or DIRECT), a connection each")
    p.add_argument("--urls", required=True, help="file of URL or URL<TAB>PROXY lines (- for stdin)")
    p.add_argument("--proxy", default="10.0.0.100:8080", help="host:port, or DIRECT")
    p.add_argument("--resolve", help="hosts file for DIRECT lines")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", help="'Name: value' added to every request (repeatable)")
    p.add_argument("--keep-header", action="append", help="answer header copied into --per-url rows")
    p.add_argument("--clients", type=int, default=300, help="use the first K client addresses (0: any)")
    p.add_argument("--sources", help="comma-separated source addresses instead of --clients")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--per-url", action="store_true", help="report each URL's result")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("hold", help="M long-lived connections, pinged")
    common(p, 7000)
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between pings")
    p.add_argument("--reply-timeout", type=float, default=2.0)
    p.add_argument("--connect-rate", type=float, default=500.0, help="new connections per second")
    p.add_argument("--max-events", type=int, default=500)
    p.add_argument("--per-connection", action="store_true", help="report each connection's host")
    p.set_defaults(func=cmd_hold)

    args = parser.parse_args()
    raise_nofile()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
