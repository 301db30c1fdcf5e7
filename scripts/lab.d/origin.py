#!/usr/bin/env python3
"""The array lab's origin server and upstream parents (namespace shoal-origin).

Listeners (each ``ADDR:PORT=ROLE`` from ``--listen``):

* ``origin``: an HTTP/1.1 web server for every host name the lab's hosts
  file maps to it. Each GET or HEAD is logged to ``<log-dir>/origin.log``
  *before* it is answered, one line ``URL<TAB>PEER_IP<TAB>ROLE<TAB>TIME``,
  where URL is ``http://HOST[:PORT]PATH`` rebuilt from the request target
  and ``Host`` (an absolute-form target is logged as sent, so the same
  listener also serves as a parent proxy). The answer is 200 with a small
  body naming the URL, ``Cache-Control: public, max-age=3600`` and a
  ``Content-Length``, so a cache keeps it; keep-alive is honoured.
* ``stall``: a parent that accepts, reads the request head, logs it the same
  way (ROLE ``stall``) and never answers; the connection stays open until
  the peer closes it.

Contract: one process, one thread, a ``selectors`` loop; bounded work per
event (heads over 64 KiB close the connection). Any request other than
GET/HEAD gets 405 and is logged with ROLE ``refused``. SIGTERM stops it.
Only the Python standard library is used.
"""

import argparse
import os
import resource
import selectors
import signal
import socket
import sys
import time

MAX_HEAD = 64 * 1024
MAX_AGE_S = 3600


class LogFile:
    """Append-only, one write(2) per line, so lines never interleave."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text):
        os.write(self.fd, (text + "\n").encode("utf-8", "replace"))


class Connection:
    def __init__(self, server, sock, peer, role):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.role = role
        self.inbuf = b""
        self.outbuf = b""
        self.close_after = False
        self.stalled = False

    def readable(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.stalled:
            return
        self.inbuf += data
        while not self.close_after and not self.stalled:
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.inbuf) > MAX_HEAD:
                    self.close()
                    return
                break
            head, self.inbuf = self.inbuf[:end].decode("latin-1"), self.inbuf[end + 4 :]
            self.request(head)
        self.flush()

    def request(self, head):
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        method = parts[0] if parts else ""
        target = parts[1] if len(parts) > 1 else ""
        if target.startswith("/"):
            url = "http://%s%s" % (headers.get("host", "-"), target)
        else:
            url = target
        version = parts[2] if len(parts) > 2 else "HTTP/1.0"
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method not in ("GET", "HEAD") or len(parts) != 3:
            self.server.log.line("%s\t%s\trefused\t%.6f" % (url, self.peer[0], time.time()))
            self.answer("405 Method Not Allowed", b"", "", False, method)
            return
        self.server.log.line("%s\t%s\t%s\t%.6f" % (url, self.peer[0], self.role, time.time()))
        if self.role == "stall":
            self.stalled = True
            return
        self.server.fetches += 1
        body = ("origin %s\n" % url).encode()
        extra = "Cache-Control: public, max-age=%d\r\nX-Origin-Fetch: %d\r\n" % (MAX_AGE_S, self.server.fetches)
        self.answer("200 OK", body, extra, keep, method)

    def answer(self, status, body, extra, keep, method):
        now = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        head = (
            "HTTP/1.1 %s\r\nDate: %s\r\nLast-Modified: %s\r\nContent-Type: text/plain\r\n"
            "Content-Length: %d\r\n%sConnection: %s\r\n\r\n"
            % (status, now, now, len(body), extra, "keep-alive" if keep else "close")
        ).encode()
        self.outbuf += head + (b"" if method == "HEAD" else body)
        self.close_after = not keep

    def flush(self):
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.outbuf = self.outbuf[sent:]
        if not self.outbuf and self.close_after:
            self.close()
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        try:
            self.server.sel.modify(self.sock, events, self)
        except (KeyError, ValueError):
            pass

    def writable(self):
        self.flush()

    def close(self):
        self.server.forget(self)


class Listener:
    def __init__(self, server, sock, role):
        self.server = server
        self.sock = sock
        self.role = role

    def readable(self):
        for _ in range(256):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                sys.stderr.write("origin: accept: %s\n" % err)
                return
            conn.setblocking(False)
            handler = Connection(self.server, conn, peer, self.role)
            self.server.conns.add(handler)
            self.server.sel.register(conn, selectors.EVENT_READ, handler)


class Server:
    def __init__(self, args):
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.fetches = 0
        os.makedirs(args.log_dir, exist_ok=True)
        self.log = LogFile(os.path.join(args.log_dir, "origin.log"))
        for spec in args.listen:
            addr, _, role = spec.partition("=")
            host, _, port = addr.rpartition(":")
            if role not in ("origin", "stall"):
                raise SystemExit("--listen %s: role must be origin or stall" % spec)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(4096)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, Listener(self, sock, role))

    def forget(self, handler):
        if handler in self.conns:
            self.conns.discard(handler)
            try:
                self.sel.unregister(handler.sock)
            except (KeyError, ValueError):
                pass
            try:
                handler.sock.close()
            except OSError:
                pass

    def run(self):
        while True:
            for key, mask in self.sel.select(timeout=1.0):
                handler = key.data
                if mask & selectors.EVENT_READ:
                    handler.readable()
                if mask & selectors.EVENT_WRITE and handler in self.conns:
                    handler.writable()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", action="append", required=True, help="ADDR:PORT=origin|stall (repeatable)")
    parser.add_argument("--log-dir", default="/tmp/shoal-lab")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(args).run()


if __name__ == "__main__":
    sys.exit(main())
