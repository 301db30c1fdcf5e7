#!/usr/bin/env python3
"""A small application server that keeps sessions in memory (the forwarder
lab's `local` on every host, scripts/lab-test group forward).

    sessions.py --host-id I [--listen 127.0.0.1:8081]

Every answer is JSON: this host's ID, the session (cookie JSESSIONID; a
request without a known one starts a session and gets Set-Cookie), the
session's request count (1, 2, 3 ...), and what the application saw of the
request: method, path, Host, Forwarded, X-Forwarded-For,
X-Shoal-Forwarded-By, and whether any shoal-member / shoal-hops header
reached it. Special paths, for the error cases:
  /slow?ms=N   answers after N ms
  /drip?ms=N   sends the head and 10 chunks of a 10-chunk body, N ms apart
  (with --mark-dir D, /slow and /drip touch D/fwd-<path>-started first)
  /auth        NTLM-like handshake: 401 + WWW-Authenticate: NTLM unless the
               request has Authorization; reports the peer port (which
               upstream connection served it)
"""

import argparse
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSIONS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    host_id = 0
    mark_dir = None

    def log_message(self, *args):
        pass

    def answer(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        cookies = {}
        for field in self.headers.get_all("Cookie") or []:
            for pair in field.split(";"):
                name, _, value = pair.strip().partition("=")
                cookies[name] = value
        sid = cookies.get("JSESSIONID")
        new = False
        with LOCK:
            if sid not in SESSIONS:
                sid = secrets.token_hex(8)
                SESSIONS[sid] = 0
                new = True
            SESSIONS[sid] += 1
            count = SESSIONS[sid]
        body = {
            "host": self.host_id,
            "session": sid,
            "count": count,
            "new": new,
            "method": self.command,
            "path": url.path,
            "host_header": self.headers.get("Host"),
            "forwarded": self.headers.get_all("Forwarded") or [],
            "xff": self.headers.get_all("X-Forwarded-For") or [],
            "forwarded_by": self.headers.get("X-Shoal-Forwarded-By"),
            "member_header": self.headers.get("shoal-member") is not None,
            "hops_header": self.headers.get("shoal-hops") is not None,
            "real_ip": self.headers.get("X-Real-IP"),
            "peer_port": self.client_address[1],
        }
        status = 200
        extra = []
        if url.path == "/auth" and not self.headers.get("Authorization"):
            status = 401
            extra.append(("WWW-Authenticate", "NTLM"))
        if url.path in ("/slow", "/drip") and self.mark_dir:
            open("%s/fwd-%s-started" % (self.mark_dir, url.path[1:]), "w").close()
        if url.path == "/slow":
            time.sleep(int(query.get("ms", "1000")) / 1000)
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if new:
            self.send_header("Set-Cookie", "JSESSIONID=%s; Path=/" % sid)
        for k, v in extra:
            self.send_header(k, v)
        if url.path == "/drip":
            chunk = b"x" * 100
            self.send_header("Content-Length", str(10 * len(chunk)))
            self.end_headers()
            for _ in range(10):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(int(query.get("ms", "300")) / 1000)
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PROPFIND = do_MKCOL = do_PROPPATCH = answer
    do_COPY = do_MOVE = do_LOCK = do_UNLOCK = answer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host-id", type=int, required=True)
    p.add_argument("--listen", default="127.0.0.1:8081")
    p.add_argument("--mark-dir")
    a = p.parse_args()
    Handler.mark_dir = a.mark_dir
    host, _, port = a.listen.rpartition(":")
    Handler.host_id = a.host_id
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    sys.stdout.write("listening %s\n" % a.listen)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
