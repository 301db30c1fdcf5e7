#!/usr/bin/env python3
"""Raw Ethernet frames for checking the lab's "switch" without the engine.

* ``send --dst-mac M [--count N]`` (in shoal-client): sends N UDP/IPv4
  frames from eth0 to MAC M, addressed to the VIP port 9 (discard), each
  carrying a marker so listeners count only this run's frames.
* ``listen --dst-mac M --seconds S --marker X`` (in a host namespace):
  counts frames on eth0 with destination MAC M and the marker, prints JSON.
* ``join --group G --seconds S`` (in a host namespace): holds an IGMP
  membership of group G for S seconds (what shoal does in igmp mode), so the
  bridge's snooping can be checked.

A packet socket sees every frame the veth delivers, whatever its
destination MAC, so a count is what the bridge forwarded to that port.
Only the Python standard library is used.
"""

import argparse
import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def mac_bytes(text):
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise SystemExit("bad MAC %r" % text)
    return bytes(int(p, 16) for p in parts)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dst_mac, src_mac, src_ip, dst_ip, payload):
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", 40000, 9, udp_len, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def cmd_send(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    src_mac = sock.getsockname()[4]
    frame = udp_frame(mac_bytes(args.dst_mac), src_mac, args.src, args.dst, args.marker.encode())
    for _ in range(args.count):
        sock.send(frame)
    print(json.dumps({"sent": args.count, "dst_mac": args.dst_mac}))
    return 0


def cmd_listen(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    sock.settimeout(0.1)
    want = mac_bytes(args.dst_mac)
    marker = args.marker.encode()
    seen = 0
    end = time.monotonic() + args.seconds
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    while time.monotonic() < end:
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if frame[:6] == want and marker in frame:
            seen += 1
    print(json.dumps({"seen": seen, "dst_mac": args.dst_mac}))
    return 0


def cmd_join(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # struct ip_mreqn: join on the named interface (the lab hosts have no
    # default route, so the kernel could not pick one from the group).
    mreq = struct.pack(
        "4s4si", socket.inet_aton(args.group), socket.inet_aton("0.0.0.0"),
        socket.if_nametoindex(args.interface),
    )
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    time.sleep(args.seconds)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--src", default="10.0.0.200")
    p.add_argument("--dst", default="10.0.0.100")
    p.add_argument("--marker", default="shoal-lab-frame")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("listen")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--marker", default="shoal-lab-frame")
    p.add_argument("--ready-file")
    p.set_defaults(func=cmd_listen)
    p = sub.add_parser("join")
    p.add_argument("--group", required=True)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--seconds", type=float, default=5.0)
    p.set_defaults(func=cmd_join)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
