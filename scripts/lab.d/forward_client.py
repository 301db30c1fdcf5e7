#!/usr/bin/env python3
"""The forwarder lab's client (scripts/lab-test group forward), run in
shoal-client.

    forward_client.py sessions --port P --sessions N --requests R [--seed S]
        [--path /app] [--sources 10.0.1.1-150]
        N sessions of R requests each, every request on a new connection from
        another source address (a proxy farm), each session keeping the
        cookies it was given. Prints one JSON object: {"requests": [...]}.
    forward_client.py one --port P --src ADDR [--path /] [--method GET]
        [--header 'Name: value' ...] [--cookie 'a=b; c=d']
        One request; prints its record.
    forward_client.py continue --port P --state FILE --requests R [--seed S]
        More requests of sessions saved by `sessions --save FILE`.
    forward_client.py abort --port P --tls CAFILE [--connections N]
        N HTTPS connections from the sources that each send a request and
        reset (SO_LINGER 0) without reading the answer, so the member's
        answer and close meet a closed socket. Prints {"sent": N, "errors": [...]}.

With --tls CAFILE (sessions, one): HTTPS, the server's certificate checked
against CAFILE (its name: the VIP), ALPN http/1.1; each record gets "tls":
the protocol version and the ALPN protocol the server chose.

A record: session, src, status, the application's JSON (host, count ...),
set_cookie (every Set-Cookie value), served_by, via (every Via value: the
member that received the request adds the last entry), error (a failed or
truncated exchange), retried (in sessions and continue: the reset that
made the client send the request once more).
"""

import argparse
import http.client
import json
import random
import socket
import ssl
import struct
import sys

VIP = "10.0.0.100"
TLS = None  # an ssl.SSLContext when --tls is given


def tls_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    # The lab's certificate is self-signed (its own CA): not strict X.509.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def sources(spec):
    out = []
    for part in spec.split(","):
        base, _, rng = part.rpartition(".")
        lo, _, hi = rng.partition("-")
        for i in range(int(lo), int(hi or lo) + 1):
            out.append("%s.%d" % (base, i))
    return out


def request(port, src, path="/app", method="GET", headers=None, cookies=None, timeout=10.0):
    rec = {"src": src, "path": path, "method": method}
    try:
        if TLS is None:
            conn = http.client.HTTPConnection(VIP, port, timeout=timeout, source_address=(src, 0))
        else:
            conn = http.client.HTTPSConnection(VIP, port, timeout=timeout, source_address=(src, 0),
                                               context=TLS)
        h = dict(headers or {})
        if cookies:
            h["Cookie"] = "; ".join("%s=%s" % kv for kv in cookies.items())
        conn.request(method, path, headers=h)
        if TLS is not None:
            rec["tls"] = {"version": conn.sock.version(), "alpn": conn.sock.selected_alpn_protocol()}
        resp = conn.getresponse()
        rec["status"] = resp.status
        rec["set_cookie"] = resp.headers.get_all("Set-Cookie") or []
        rec["served_by"] = resp.headers.get("x-shoal-served-by")
        rec["via"] = resp.headers.get_all("Via") or []
        body = resp.read()
        try:
            rec["app"] = json.loads(body)
        except ValueError:
            rec["text"] = body.decode("utf-8", "replace")[:300]
        conn.close()
    except (OSError, http.client.HTTPException) as err:
        rec["error"] = "%s: %s" % (type(err).__name__, err)
    return rec


def abort(port, srcs, n):
    sent, errors = 0, []
    for i in range(n):
        src = srcs[i % len(srcs)]
        try:
            raw = socket.create_connection((VIP, port), timeout=2, source_address=(src, 0))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s = TLS.wrap_socket(raw, server_hostname=VIP)
            s.sendall(b"GET /app HTTP/1.1\r\nHost: shop.lab\r\n\r\n")
            sent += 1
            s.close()  # SO_LINGER 0: a reset, no TLS close_notify
        except (OSError, ssl.SSLError) as err:
            errors.append("%s: %s" % (type(err).__name__, err))
            if len(errors) >= 3:
                break  # a member gone: no use waiting on every attempt
    return {"sent": sent, "errors": errors}


def absorb(cookies, rec):
    for sc in rec.get("set_cookie", []):
        name, _, rest = sc.partition("=")
        cookies[name.strip()] = rest.split(";")[0].strip()


def run_sessions(a, sessions):
    rnd = random.Random(a.seed)
    addrs = sources(a.sources)
    out = []
    for _ in range(a.requests):
        for s in sessions:
            src = rnd.choice(addrs)
            rec = request(a.port, src, a.path, cookies=s["cookies"])
            if rec.get("error", "").startswith(("ConnectionResetError", "ConnectionRefusedError")):
                # A connection reset before any answer (the cluster moving
                # buckets): a client retries it, as a browser does; a request
                # the application had counted would show as a skipped count.
                first = rec["error"]
                rec = request(a.port, src, a.path, cookies=s["cookies"])
                rec["retried"] = first
            rec["session"] = s["id"]
            absorb(s["cookies"], rec)
            out.append(rec)
    return out


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sessions")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--sessions", type=int, default=30)
    s.add_argument("--requests", type=int, default=5)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--path", default="/app")
    s.add_argument("--sources", default="10.0.1.1-150")
    s.add_argument("--save")
    s.add_argument("--tls", help="HTTPS, trusting this CA file")
    c = sub.add_parser("continue")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--state", required=True)
    c.add_argument("--requests", type=int, default=3)
    c.add_argument("--seed", type=int, default=2)
    c.add_argument("--path", default="/app")
    c.add_argument("--sources", default="10.0.1.1-150")
    c.add_argument("--only", default="", help="comma-separated session ids")
    o = sub.add_parser("one")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--src", required=True)
    o.add_argument("--path", default="/app")
    o.add_argument("--method", default="GET")
    o.add_argument("--header", action="append", default=[])
    o.add_argument("--cookie", default="")
    o.add_argument("--timeout", type=float, default=10.0)
    o.add_argument("--tls", help="HTTPS, trusting this CA file")
    b = sub.add_parser("abort")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--tls", required=True, help="HTTPS, trusting this CA file")
    b.add_argument("--connections", type=int, default=40)
    b.add_argument("--sources", default="10.0.1.1-150")
    a = p.parse_args()
    global TLS
    if getattr(a, "tls", None):
        TLS = tls_context(a.tls)
    if a.cmd == "abort":
        print(json.dumps(abort(a.port, sources(a.sources), a.connections)))
        return 0
    if a.cmd == "one":
        headers = {}
        for h in a.header:
            k, _, v = h.partition(":")
            headers[k.strip()] = v.strip()
        if a.cookie:
            headers["Cookie"] = a.cookie
        print(json.dumps(request(a.port, a.src, a.path, a.method, headers, timeout=a.timeout)))
        return 0
    if a.cmd == "sessions":
        sessions = [{"id": i, "cookies": {}} for i in range(a.sessions)]
    else:
        sessions = json.load(open(a.state))
        if a.only:
            keep = {int(x) for x in a.only.split(",")}
            sessions = [s for s in sessions if s["id"] in keep]
    out = run_sessions(a, sessions)
    save = getattr(a, "save", None) or (a.state if a.cmd == "continue" else None)
    if save:
        if a.cmd == "continue":
            old = {s["id"]: s for s in json.load(open(a.state))}
            for s in sessions:
                old[s["id"]] = s
            sessions = list(old.values())
        json.dump(sessions, open(save, "w"))
    print(json.dumps({"requests": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
