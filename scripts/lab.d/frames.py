#!/usr/bin/env python3
"""Raw Ethernet frames: checking the lab's "switch", watching a port, and an
emulated PPTP client (TCP control connection plus GRE frames).

* ``send --dst-mac M [--count N]`` (in shoal-client): sends N UDP/IPv4
  frames from eth0 to MAC M, addressed to the VIP port 9 (discard), each
  carrying a marker so listeners count only this run's frames.
* ``listen --dst-mac M --seconds S --marker X`` (in a host namespace):
  counts frames on eth0 with destination MAC M and the marker, prints JSON.
* ``join --group G --seconds S`` (in a host namespace): holds an IGMP
  membership of group G for S seconds (what shoal does in igmp mode), so the
  bridge's snooping can be checked.
* ``watch --seconds S --dst-mac M --ip A`` (in any lab namespace): counts
  every frame eth0 receives, and among them those to MAC M, those with IPv4
  destination A, and heartbeats (EtherType 0x886F); prints JSON.
* ``pptp --src S`` (in shoal-client): an emulated PPTP client. It opens the
  control connection, TCP from S to VIP:1723 (the lab service echoes lines
  there), and then obeys commands on stdin, one per line, answering each
  with one JSON line on stdout: ``ping`` (a line over the control
  connection; the answer names the host), ``gre N`` (N enhanced-GRE frames,
  RFC 2637: IP protocol 47, GRE protocol 0x880B, version 1, key and
  sequence present, from S to the VIP, sent raw on eth0 to the VIP's MAC
  from the neighbour table), ``quit``.

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
ETHERTYPE_HEARTBEAT = 0x886F
GRE_PPP = 0x880B


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


def ipv4_frame(dst_mac, src_mac, src_ip, dst_ip, proto, payload, ident=0):
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, 64, proto, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + payload


def gre_frame(dst_mac, src_mac, src_ip, dst_ip, call_id, seq, payload):
    """An enhanced GRE (PPTP) frame: flags K and S, version 1, protocol
    0x880B, payload length, call ID, sequence number."""
    gre = struct.pack("!HHHHI", 0x3001, GRE_PPP, len(payload), call_id, seq) + payload
    return ipv4_frame(dst_mac, src_mac, src_ip, dst_ip, 47, gre, ident=seq)


def neighbour_mac(ip):
    """The complete neighbour entry for ip in this namespace, or None."""
    with open("/proc/net/arp") as f:
        next(f, None)
        for line in f:
            cols = line.split()
            if len(cols) >= 4 and cols[0] == ip and int(cols[2], 16) & 0x2:
                return mac_bytes(cols[3])
    return None


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


def cmd_watch(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    sock.settimeout(0.1)
    want_mac = mac_bytes(args.dst_mac)
    want_ip = socket.inet_aton(args.ip)
    counts = {"frames": 0, "to_mac": 0, "to_ip": 0, "heartbeats": 0}
    end = time.monotonic() + args.seconds
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    while time.monotonic() < end:
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(frame) < 14:
            continue
        counts["frames"] += 1
        if frame[:6] == want_mac:
            counts["to_mac"] += 1
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == ETHERTYPE_HEARTBEAT:
            counts["heartbeats"] += 1
        if ethertype == 0x0800 and len(frame) >= 34 and frame[30:34] == want_ip:
            counts["to_ip"] += 1
    print(json.dumps(counts, sort_keys=True))
    return 0


def cmd_pptp(args):
    def say(obj):
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()

    ctl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ctl.bind((args.src, 0))
    ctl.settimeout(args.timeout)
    try:
        ctl.connect((args.vip, args.port))
    except OSError as err:
        say({"event": "error", "detail": "control connection: %s" % err})
        return 1
    reader = ctl.makefile("rb")
    pings = 0

    def ping():
        nonlocal pings
        pings += 1
        ctl.sendall(b"pptp-control %d\n" % pings)
        line = reader.readline().decode("latin-1").split()
        if len(line) != 3 or line[1:] != ["pptp-control", str(pings)]:
            raise OSError("bad answer %r" % line)
        return line[0]

    try:
        host = ping()
    except OSError as err:
        say({"event": "error", "detail": "first ping: %s" % err})
        return 1
    dst_mac = neighbour_mac(args.vip)
    if dst_mac is None:
        say({"event": "error", "detail": "no neighbour entry for %s" % args.vip})
        return 1
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind((args.interface, 0))
    src_mac = raw.getsockname()[4]
    say({"event": "connected", "host": host, "src": args.src, "local_port": ctl.getsockname()[1],
         "dst_mac": ":".join("%02x" % b for b in dst_mac)})
    seq = 0
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "ping":
                say({"event": "ping", "host": ping()})
            elif words[0] == "gre" and len(words) == 2 and words[1].isdigit():
                for _ in range(int(words[1])):
                    seq += 1
                    raw.send(gre_frame(dst_mac, src_mac, args.src, args.vip, args.call_id, seq,
                                       b"shoal-lab-gre %d" % seq))
                    time.sleep(args.gap)
                say({"event": "gre", "sent": int(words[1]), "last_seq": seq})
            elif words[0] == "quit":
                break
            else:
                say({"event": "error", "detail": "unknown command %r" % line.strip()})
        except OSError as err:
            say({"event": "error", "detail": "%s: %s" % (words[0], err)})
            return 1
    ctl.close()
    say({"event": "closed"})
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
    p = sub.add_parser("watch")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--ip", default="10.0.0.100")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--ready-file")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("pptp")
    p.add_argument("--src", required=True)
    p.add_argument("--vip", default="10.0.0.100")
    p.add_argument("--port", type=int, default=1723)
    p.add_argument("--call-id", type=int, default=0x5A5A)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--gap", type=float, default=0.001, help="seconds between GRE frames")
    p.set_defaults(func=cmd_pptp)
    p = sub.add_parser("join")
    p.add_argument("--group", required=True)
    p.add_argument("--interface", default="eth0")
    p.add_argument("--seconds", type=float, default=5.0)
    p.set_defaults(func=cmd_join)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
