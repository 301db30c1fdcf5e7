#!/usr/bin/env python3
"""The array lab's view of each member's CARP membership table.

Runs in ``shoal-client`` (any namespace that reaches the hosts' dedicated
addresses). Members come from the lab's config: per ``[[host]]``, its
``name`` (else its first dedicated address) and that address.

* ``table --config C --port P [--hosts 1,2]``: every member's table, fetched
  at ``http://DEDICATED:P/array.dll?Get.Info.v1``, as JSON ``{host id:
  {"status": N, "config_id": S, "members": {name: "UP"|"DOWN"}}}`` (an
  unreachable member: ``{"error": "..."}``).
* ``ready --config C --port P [--timeout S]``: until every member's table
  lists every member UP; one JSON line, exit 0 (1 on timeout).
* ``wait --config C --port P --member NAME --state UP|DOWN [--hosts 1,2]
  [--timeout S]``: until the tables of the given hosts (default all) show
  NAME in that state; prints the seconds it took (exit 1 on timeout).

Contract: plain HTTP/1.1 GETs with a 1 s timeout, nothing else; the table's
member lines are parsed as the draft's section 2 lays them out (name
first, UP/DOWN third from the end). Only the Python standard library.
"""

import argparse
import json
import socket
import sys
import time
import tomllib

TABLE_PATH = "/array.dll?Get.Info.v1"


def members(config):
    with open(config, "rb") as f:
        conf = tomllib.load(f)
    out = {}
    for h in conf.get("host", []):
        addr = h.get("dedicated", ["?"])[0].split("/")[0]
        out[h["id"]] = (h.get("name") or addr, addr)
    return out


def get(addr, port, path, timeout=1.0):
    """(status, body) of one GET; raises OSError."""
    with socket.create_connection((addr, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (path, addr, port)).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    return int(status[1]) if len(status) > 1 and status[1].isdigit() else 0, body.decode("latin-1")


def parse_table(body):
    config_id, rows = None, {}
    head, _, lines = body.partition("\r\n\r\n")
    for line in head.split("\r\n"):
        if line.startswith("ConfigID:"):
            config_id = line.split(":", 1)[1].strip()
    for line in lines.split("\r\n"):
        fields = line.split()
        if len(fields) >= 9:
            rows[fields[0]] = fields[-3]
    return config_id, rows


def tables(config, port, hosts=None):
    out = {}
    for hid, (_name, addr) in sorted(members(config).items()):
        if hosts and hid not in hosts:
            continue
        try:
            status, body = get(addr, port, TABLE_PATH)
            config_id, rows = parse_table(body)
            out[hid] = {"status": status, "config_id": config_id, "members": rows}
        except OSError as err:
            out[hid] = {"error": "%s: %s" % (type(err).__name__, err)}
    return out


def host_list(text):
    return [int(x) for x in text.split(",") if x] if text else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("table", "ready", "wait"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--hosts")
        p.add_argument("--timeout", type=float, default=30.0)
        if name == "wait":
            p.add_argument("--member", required=True)
            p.add_argument("--state", choices=("UP", "DOWN"), required=True)
    args = parser.parse_args()
    hosts = host_list(args.hosts)
    if args.command == "table":
        print(json.dumps(tables(args.config, args.port, hosts), sort_keys=True))
        return 0
    names = {name for name, _ in members(args.config).values()}
    began = time.monotonic()
    while True:
        seen = tables(args.config, args.port, hosts)
        if args.command == "ready":
            ok = all(t.get("status") == 200 and t.get("members") == {n: "UP" for n in names} for t in seen.values())
        else:
            ok = all(t.get("members", {}).get(args.member) == args.state for t in seen.values())
        waited = round(time.monotonic() - began, 3)
        if ok:
            print(json.dumps({"ok": True, "waited_s": waited, "tables": seen}, sort_keys=True))
            return 0
        if waited > args.timeout:
            print(json.dumps({"ok": False, "waited_s": waited, "tables": seen}, sort_keys=True))
            return 1
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
