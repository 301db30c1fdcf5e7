#!/usr/bin/env python3
"""Make the lab bridge forward the IGMP cluster MAC the way a hardware
snooping switch does: only to ports that joined the cluster's group.

Why this exists: NLB's IGMP multicast mode sends frames whose destination
MAC is the group MAC 01-00-5E-7F-y-z but whose destination IP is the
(unicast) VIP. A hardware switch programs IGMP memberships into its MAC
table and forwards such frames to member ports. The Linux bridge snoops by
destination *IP*: a frame to a multicast MAC whose IP destination is not a
group is "router ports only", so with a querier present it reaches no host
at all (measured in the lab, kernel 6.18).

What it does (runs in shoal-sw): every ``--interval`` seconds it reads the
bridge's IGMP membership table (``bridge -j mdb show``) and makes exactly
the ports that are members of ``--group`` permanent multicast-router ports
(``mcast_router 2``) and every other port a non-router port
(``mcast_router 0``). Router ports receive the "router ports only" frames,
so the cluster MAC reaches member ports and no others; the membership
itself is still learned by the kernel's snooping from the hosts' IGMP
reports and expires with them. Trade-off: member ports also receive other
non-group IP multicast, which the lab never sends.

Each change is logged on stderr. SIGTERM stops it; it leaves the ports as
they are (the bridge is deleted with the lab).
"""

import argparse
import json
import signal
import subprocess
import sys
import time


def bridge_json(*args):
    out = subprocess.run(["bridge", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def members(bridge, group):
    found = set()
    for block in bridge_json("mdb", "show", "dev", bridge):
        for entry in block.get("mdb", []):
            if entry.get("grp") == group and entry.get("port"):
                found.add(entry["port"])
    return found


def ports(bridge):
    return sorted(
        link["ifname"] for link in bridge_json("link", "show") if link.get("master") == bridge
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bridge", default="br0")
    parser.add_argument("--group", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    running = True

    def stop(_signum, _frame):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    state = {}
    while running:
        try:
            joined = members(args.bridge, args.group)
            for port in ports(args.bridge):
                want = 2 if port in joined else 0
                if state.get(port) != want:
                    subprocess.run(
                        ["bridge", "link", "set", "dev", port, "mcast_router", str(want)],
                        check=True, capture_output=True,
                    )
                    state[port] = want
                    sys.stderr.write(
                        "snoop: %s %s %s\n" % (port, "joined" if want else "not a member of", args.group)
                    )
                    sys.stderr.flush()
        except (subprocess.CalledProcessError, ValueError, OSError) as err:
            sys.stderr.write("snoop: %s\n" % err)
            sys.stderr.flush()
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
