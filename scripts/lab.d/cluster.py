#!/usr/bin/env python3
"""What the lab's shoal hosts say about their cluster, from their stats files.

Every ``shoal run`` the lab starts writes ``<lab-dir>/hI.stats.json`` once a
second; with the control plane its ``cluster`` object carries ``state``,
``phase``, ``epoch``, ``members``, ``heartbeats_sent`` and
``heartbeats_refused``.

* ``wait --members 1,2,3 [--hosts 1,2] [--after-epoch N] [--timeout S]``:
  waits until every running lab host (pid file alive; or only ``--hosts``)
  has a stats file written since it started whose ``cluster.state`` is
  ``converged`` and whose ``cluster.members`` is exactly ``--members``
  (default: the running hosts), with ``cluster.epoch`` above N when given.
  Prints one JSON line; exit 0 when converged, 1 on timeout (the line then
  shows what each host last said).
* ``show``: every host's ``cluster`` object and ``kept`` counter, as JSON.

Contract: reads files only; never signals or talks to shoal. A stats file
older than its host's pid file is ignored (it belongs to an earlier run of
that host). Only the Python standard library is used.
"""

import argparse
import json
import os
import re
import sys
import time


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def running_hosts(lab_dir):
    """{host id: pid} of the lab hosts whose shoal runs."""
    hosts = {}
    for name in os.listdir(lab_dir):
        m = re.fullmatch(r"h(\d+)\.pid", name)
        if not m:
            continue
        try:
            pid = int(open(os.path.join(lab_dir, name)).read().strip())
        except (OSError, ValueError):
            continue
        if alive(pid):
            hosts[int(m.group(1))] = pid
    return hosts


def snapshot(lab_dir, host):
    """The host's current stats (None when absent, unreadable or older than
    its pid file)."""
    path = os.path.join(lab_dir, "h%d.stats.json" % host)
    pid_path = os.path.join(lab_dir, "h%d.pid" % host)
    try:
        if os.path.exists(pid_path) and os.path.getmtime(path) < os.path.getmtime(pid_path):
            return None
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def parse_ids(text):
    return sorted({int(x) for x in text.split(",") if x.strip()}) if text else None


def cmd_wait(args):
    began = time.monotonic()
    deadline = began + args.timeout
    last = {}
    while True:
        running = running_hosts(args.lab_dir)
        hosts = parse_ids(args.hosts) or sorted(running)
        want = parse_ids(args.members) or sorted(running)
        ok = bool(hosts)
        last = {}
        for h in hosts:
            snap = snapshot(args.lab_dir, h)
            cluster = (snap or {}).get("cluster")
            last[str(h)] = cluster
            if h not in running or cluster is None:
                ok = False
                continue
            if cluster.get("state") != "converged" or sorted(cluster.get("members", [])) != want:
                ok = False
            if args.after_epoch is not None and cluster.get("epoch", 0) <= args.after_epoch:
                ok = False
        if ok:
            print(json.dumps({"converged": True, "members": want, "waited_s": round(time.monotonic() - began, 3),
                              "hosts": last}, sort_keys=True))
            return 0
        if time.monotonic() >= deadline:
            print(json.dumps({"converged": False, "members": want, "waited_s": round(time.monotonic() - began, 3),
                              "hosts": last, "running": sorted(running)}, sort_keys=True))
            return 1
        time.sleep(0.1)


def cmd_show(args):
    out = {}
    running = running_hosts(args.lab_dir)
    for name in sorted(os.listdir(args.lab_dir)):
        m = re.fullmatch(r"h(\d+)\.stats\.json", name)
        if not m:
            continue
        host = int(m.group(1))
        snap = snapshot(args.lab_dir, host) or {}
        out[str(host)] = {"running": host in running, "cluster": snap.get("cluster"), "kept": snap.get("kept")}
    print(json.dumps(out, sort_keys=True))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lab-dir", default="/tmp/shoal-lab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wait")
    p.add_argument("--members", help="expected view, e.g. 1,2,4 (default: the running hosts)")
    p.add_argument("--hosts", help="whose stats to check (default: the running hosts)")
    p.add_argument("--after-epoch", type=int)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_wait)
    p = sub.add_parser("show")
    p.set_defaults(func=cmd_show)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
