#!/usr/bin/env python3
"""The lab's per-host service: what a shoal cluster host serves on the VIP.

Runs inside one host namespace (``shoal-hI``), listening on 0.0.0.0 so it
answers on the VIP (which shoal puts on its TAP) and on the dedicated address:

* HTTP on port 80: every request is answered with ``host I\\n`` and a header
  ``X-Shoal-Host: I``, then the connection is closed. Each request's
  ``X-Request-Id`` is appended to ``<log-dir>/requests-hI.log`` as one line
  ``ID CLIENT_IP:PORT LOCAL_IP UNIX_TIME`` *before* the answer is sent, so
  a test that has its answer can also find it in the log.
* TCP line echo on port 7000: each line is answered with ``I <line>``
  (long-lived connections for failover and drain tests). Port 1723 runs
  the same echo: it stands in for a PPTP control connection, whose GRE
  stream the cluster must keep on the same host.
* UDP echo on ports 7001 and 4000: each datagram is answered with
  ``I <payload>``; the first token of every datagram is logged to
  ``<log-dir>/udp-hI.log``.

Contract: one process, one thread, a ``selectors`` loop, so thousands of
concurrent connections cost one file descriptor each and nothing else (the
file limit is raised to the hard limit at start). Bounded work per event:
requests larger than 16 KiB and lines longer than 64 KiB close the
connection. The service never exits on a client's misbehaviour; SIGTERM
stops it cleanly.

Only the Python standard library is used.
"""

import argparse
import errno
import os
import resource
import selectors
import signal
import socket
import sys
import time

MAX_REQUEST = 16 * 1024
MAX_LINE = 64 * 1024
IDLE_HTTP_S = 30.0


class LogFile:
    """An append-only log written with one write(2) per line (O_APPEND), so
    lines are never interleaved or lost in a user-space buffer."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text):
        os.write(self.fd, (text + "\n").encode("utf-8", "replace"))


class HttpConnection:
    def __init__(self, service, sock, peer):
        self.service = service
        self.sock = sock
        self.peer = peer
        self.inbuf = b""
        self.outbuf = b""
        self.since = time.monotonic()

    def readable(self):
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.inbuf += data
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.inbuf) > MAX_REQUEST:
                self.close()
            return
        head = self.inbuf[:end].decode("latin-1")
        self.respond(head)

    def respond(self, head):
        lines = head.split("\r\n")
        request_line = lines[0].split(" ")
        request_id = "-"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-request-id":
                request_id = value.strip().replace(" ", "_") or "-"
        host = self.service.host_id
        if len(request_line) < 3 or request_line[0] not in ("GET", "HEAD"):
            body = b"bad request\n"
            status = "400 Bad Request"
        else:
            body = ("host %d\n" % host).encode()
            status = "200 OK"
            try:
                local = self.sock.getsockname()[0]
            except OSError:
                local = "?"
            self.service.requests.line(
                "%s %s:%d %s %.6f" % (request_id, self.peer[0], self.peer[1], local, time.time())
            )
            self.service.served += 1
        head_out = (
            "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            "X-Shoal-Host: %d\r\nConnection: close\r\n\r\n" % (status, len(body), host)
        ).encode()
        if request_line[0] == "HEAD":
            body = b""
        self.outbuf = head_out + body
        self.service.sel.modify(self.sock, selectors.EVENT_WRITE, self)

    def writable(self):
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.outbuf = self.outbuf[sent:]
        if not self.outbuf:
            self.close()

    def expired(self, now):
        return now - self.since > IDLE_HTTP_S

    def close(self):
        self.service.forget(self)


class LineConnection:
    """Port 7000: answers each line with ``I <line>``; lives until the peer
    closes it."""

    def __init__(self, service, sock, peer):
        self.service = service
        self.sock = sock
        self.peer = peer
        self.inbuf = b""
        self.outbuf = b""
        self.prefix = ("%d " % service.host_id).encode()

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
        self.inbuf += data
        while True:
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                break
            line, self.inbuf = self.inbuf[: nl + 1], self.inbuf[nl + 1 :]
            self.outbuf += self.prefix + line
        if len(self.inbuf) > MAX_LINE or len(self.outbuf) > 4 * MAX_LINE:
            self.close()
            return
        if self.outbuf:
            self.writable()

    def writable(self):
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.outbuf = self.outbuf[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        try:
            self.service.sel.modify(self.sock, events, self)
        except (KeyError, ValueError):
            pass

    def expired(self, now):
        return False

    def close(self):
        self.service.forget(self)


class Listener:
    def __init__(self, service, sock, kind):
        self.service = service
        self.sock = sock
        self.kind = kind

    def readable(self):
        for _ in range(256):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.service.log("accept: %s" % err)
                return
            conn.setblocking(False)
            handler = self.kind(self.service, conn, peer)
            self.service.conns.add(handler)
            self.service.sel.register(conn, selectors.EVENT_READ, handler)


class UdpEcho:
    def __init__(self, service, sock):
        self.service = service
        self.sock = sock
        self.prefix = ("%d " % service.host_id).encode()

    def readable(self):
        for _ in range(512):
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            token = data.split(b" ", 1)[0][:128].decode("latin-1", "replace") or "-"
            self.service.udp.line("%s %s:%d %.6f" % (token, peer[0], peer[1], time.time()))
            try:
                self.sock.sendto(self.prefix + data, peer)
            except OSError:
                self.service.udp_send_errors += 1


class Service:
    def __init__(self, args):
        self.host_id = args.host_id
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.served = 0
        self.udp_send_errors = 0
        os.makedirs(args.log_dir, exist_ok=True)
        self.requests = LogFile(os.path.join(args.log_dir, "requests-h%d.log" % args.host_id))
        self.udp = LogFile(os.path.join(args.log_dir, "udp-h%d.log" % args.host_id))
        self.running = True
        listeners = [(args.http_port, HttpConnection), (args.line_port, LineConnection)]
        if args.pptp_port:
            listeners.append((args.pptp_port, LineConnection))
        for port, kind in listeners:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.bind, port))
            sock.listen(4096)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, Listener(self, sock, kind))
        for port in (args.udp_port, args.udp_port_2):
            if not port:
                continue
            usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            usock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            except OSError:
                pass
            usock.bind((args.bind, port))
            usock.setblocking(False)
            self.sel.register(usock, selectors.EVENT_READ, UdpEcho(self, usock))

    def log(self, text):
        sys.stderr.write("service h%d: %s\n" % (self.host_id, text))
        sys.stderr.flush()

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
        last_sweep = time.monotonic()
        while self.running:
            try:
                events = self.sel.select(timeout=0.2)
            except InterruptedError:
                continue
            for key, mask in events:
                handler = key.data
                if mask & selectors.EVENT_READ:
                    handler.readable()
                if mask & selectors.EVENT_WRITE and handler in self.conns:
                    handler.writable()
            now = time.monotonic()
            if now - last_sweep > 5.0:
                last_sweep = now
                for handler in [h for h in self.conns if h.expired(now)]:
                    handler.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host-id", type=int, required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--line-port", type=int, default=7000)
    parser.add_argument("--udp-port", type=int, default=7001)
    parser.add_argument("--pptp-port", type=int, default=1723, help="a second line echo (0: none)")
    parser.add_argument("--udp-port-2", type=int, default=4000,
                        help="a second UDP echo, inside seed 000's WLBS rule range 1024-5000 (0: none)")
    parser.add_argument("--log-dir", default="/tmp/shoal-lab")
    parser.add_argument("--pid-file")
    args = parser.parse_args()
    if not 1 <= args.host_id <= 64:
        parser.error("--host-id must be in 1..=64")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass

    try:
        service = Service(args)
    except OSError as err:
        sys.stderr.write("service h%d: cannot listen: %s\n" % (args.host_id, err))
        return 1

    def stop(_signum, _frame):
        service.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write("%d\n" % os.getpid())
    service.log(
        "listening (http %d, line %d and %d, udp %d)" % (args.http_port, args.line_port, args.pptp_port, args.udp_port)
    )
    service.run()
    service.log("stopped after %d http requests" % service.served)
    return 0


if __name__ == "__main__":
    sys.exit(main())
