#!/usr/bin/env python3
"""Raw Ethernet frames: checking the lab's "switch", watching a port, an
emulated PPTP client (TCP control connection plus GRE frames), hostile
frames for the cluster, and captured heartbeats replayed, forged and cut.

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

* ``hostile --dst-mac M --src S --rounds N --seconds T --run-id R`` (in
  a bystander namespace): N rounds, spread over T seconds, of one frame of
  every class in ``HOSTILE_CLASSES`` (truncated and inconsistent IPv4/TCP/
  UDP headers, IPv4 options, IPv6 extension-header chains, tiny, impossible
  and overlapping fragments, GRE without PPTP, a foreign destination behind
  the cluster MAC, a non-IP EtherType), all from S to the cluster MAC M.
  UDP classes carry ids ``R-CLASS-i`` for the lab's UDP echo log. Prints
  JSON: frames sent per class and the ids per UDP class.
* ``l2probe --macs NAME=MAC,... --count N --syns M --run-id R`` (in
  shoal-client): for each destination MAC, N UDP datagrams to the VIP's
  echo (port 7001, token ``R-NAME-i``) and M TCP SYNs to the VIP's port 80,
  each from its own client address and port, sent raw on eth0; meanwhile it
  captures the answers on eth0 (UDP from port 7001 of any address: the echo
  answers from the host's own; SYN-ACKs from the VIP's port 80) and reports, per MAC, how many answers each datagram
  got and how many distinct source MACs (hosts) answered each SYN, plus
  the answering source MACs. Prints JSON.
* ``hb-capture --host H --out FILE [--seconds S]``: waits for a heartbeat
  from host H (EtherType 0x886F, host ID at payload offset 16) and writes
  the whole frame to FILE; prints JSON with its length.
* ``hb-inject --frame FILE --kind K --count N``: sends N variants of the
  captured heartbeat: ``replay`` (the frame as captured), ``forged`` (one
  payload byte after the cluster id flipped, tag left), ``truncated`` (cut
  to payload lengths 1, 10, 100 and declared-1, round robin),
  ``declared_oversized`` (the payload length field says 1600) and
  ``padded`` (non-zero bytes after the declared payload, up to 1500).
  Prints JSON with the frames sent.
* ``hb-record --host H --out FILE [--seconds S] [--until-file F
  --replay-seconds R]``: writes every heartbeat from host H seen for S
  seconds (or until file F exists) to FILE (each frame after a 2-byte
  big-endian length); with ``--replay-seconds``, then at once sends the
  recorded frames back, in order, round robin, every 20 ms for R seconds
  (no process start between the trigger and the first replay); prints
  JSON with the counts.
* ``hb-replay --frames FILE [--seconds S] [--gap G]``: sends the recorded
  frames in order, round robin, one every G seconds for S seconds; prints
  JSON with the frames sent.
* ``flood-conf --frame FILE --src-mac M --src S --vip V --ns-target T
  --out CONF``: writes a trafgen configuration of three frames, sent round
  robin: an ARP request from M/S for V (broadcast), an IPv6 neighbour
  solicitation from M for T (to T's solicited-node group), and the
  captured heartbeat FILE with a fresh random tag in every frame (right
  cluster id, bad tag: each costs a receiver an HMAC); ``--kinds`` keeps
  a subset. Prints JSON with the frame lengths.

A packet socket sees every frame the veth delivers, whatever its
destination MAC, so a count is what the bridge forwarded to that port.
Only the Python standard library is used.
"""

import argparse
import os
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


# ---------------------------------------------------------------- hostile frames
#
# Every class is one frame per round, built so that exactly one check of the
# dataplane's parser (or one policy) refuses it; lab-test's hostile_frames
# holds the reasons and how many hosts see each class. Checksums are left 0
# where no kernel ever reads the frame; the UDP classes that a host keeps
# carry a correct IPv4 header checksum and UDP checksum 0 (none).

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_GRE = 47
IPV6_DST_OPTS = 60
IPV6_HOP_BY_HOP = 0
FOREIGN_V4 = "10.0.0.99"
FOREIGN_V6 = "2001:db8::64"
ECHO_PORT = 7001


def eth(dst_mac, src_mac, ethertype):
    return dst_mac + src_mac + struct.pack("!H", ethertype)


def ipv4(src, dst, proto, payload, ihl=5, options=b"", total=None, frag=0x4000, ident=0, version=4):
    """An IPv4 header (declared IHL and total length may lie) plus payload."""
    if total is None:
        total = 20 + len(options) + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total & 0xFFFF, ident & 0xFFFF, frag, 64,
                       proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + payload


def tcp(sport, dport, flags=0x02, offset=5):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 64240, 0, 0)


def udp(sport, dport, payload, length=None):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


def ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload


def ext_chain(kinds, upper):
    """IPv6 extension headers of 8 bytes each (PadN filled), types KINDS in
    order, the last one pointing at UPPER."""
    out = b""
    for i, _kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else upper
        out += struct.pack("!BB", nxt, 0) + b"\x01\x04\x00\x00\x00\x00"
    return out


def fragments(src, dst, ident, datagram, cuts):
    """IPv4 fragments of DATAGRAM (an IP payload) at byte ranges CUTS
    [(start, end), ...]; MF on every one but the last."""
    out = []
    for n, (start, end) in enumerate(cuts):
        more = 0x2000 if n + 1 < len(cuts) else 0
        out.append(ipv4(src, dst, PROTO_UDP, datagram[start:end], frag=more | (start // 8), ident=ident,
                        total=20 + end - start))
    return out


# class -> builder(src, vip, ident, udp_payload) -> [IP-level frames as
# (ethertype, bytes)]. The order is the send order within a round.
def hostile_classes():
    def v4(frame):
        return [(ETH_IPV4, frame)]

    def v6(frame):
        return [(ETH_IPV6, frame)]

    syn = tcp(40001, 80)
    classes = {
        # Truncated and inconsistent IPv4 headers.
        "ipv4_empty": lambda s, d, i, p: v4(b""),
        "ipv4_cut": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn)[:12]),
        "ipv4_bad_version": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn, version=6)),
        "ipv4_bad_ihl": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn, ihl=3)),
        "ipv4_total_short": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn, total=12)),
        "ipv4_total_long": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn, total=1000)),
        "ipv4_bad_options": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn, ihl=6, options=b"\x44\x28\x05\x00")),
        # Truncated and inconsistent transport headers.
        "tcp_cut": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn[:10])),
        "tcp_ports_cut": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn[:2])),
        "tcp_bad_offset": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, tcp(40001, 80, offset=3))),
        "udp_bad_length": lambda s, d, i, p: v4(ipv4(s, d, PROTO_UDP, udp(40001, ECHO_PORT, b"x" * 8, length=4))),
        # Well-formed IPv4 options (four NOPs): served like any datagram.
        "ipv4_options_ok": lambda s, d, i, p: v4(ipv4(s, d, PROTO_UDP, udp(40002, ECHO_PORT, p), ihl=6,
                                                      options=b"\x01\x01\x01\x01")),
        # IPv6 extension-header chains (the cluster has no IPv6 VIP).
        "ipv6_chain": lambda s, d, i, p: v6(ipv6("fd00::60", FOREIGN_V6, IPV6_DST_OPTS,
                                                 ext_chain([IPV6_DST_OPTS] * 3, PROTO_TCP) + syn)),
        "ipv6_long_chain": lambda s, d, i, p: v6(ipv6("fd00::60", FOREIGN_V6, IPV6_DST_OPTS,
                                                      ext_chain([IPV6_DST_OPTS] * 9, PROTO_TCP) + syn)),
        "ipv6_longer_chain": lambda s, d, i, p: v6(ipv6("fd00::60", FOREIGN_V6, IPV6_DST_OPTS,
                                                        ext_chain([IPV6_DST_OPTS] * 100, PROTO_TCP) + syn)),
        "ipv6_hbh_late": lambda s, d, i, p: v6(ipv6("fd00::60", FOREIGN_V6, IPV6_DST_OPTS,
                                                    ext_chain([IPV6_DST_OPTS, IPV6_HOP_BY_HOP], PROTO_TCP) + syn)),
        "ipv6_ext_cut": lambda s, d, i, p: v6(ipv6("fd00::60", FOREIGN_V6, IPV6_DST_OPTS,
                                                   struct.pack("!BB", PROTO_TCP, 5) + b"\x01\x04\x00\x00\x00\x00")),
        # Fragments: a tiny first fragment (8 bytes of TCP), an impossible one
        # (non-final, not a multiple of 8), a datagram in two overlapping
        # fragments, and the same datagram in two clean ones.
        "frag_tiny": lambda s, d, i, p: v4(ipv4(s, d, PROTO_TCP, syn[:8], frag=0x2000, ident=i)),
        "frag_bad": lambda s, d, i, p: v4(ipv4(s, d, PROTO_UDP, udp(40003, ECHO_PORT, b"x" * 4), frag=0x2000,
                                               ident=i)),
        "frag_overlap": lambda s, d, i, p: [(ETH_IPV4, f) for f in fragments(
            s, d, i, udp(40004, ECHO_PORT, p.ljust(40, b" ")), [(0, 24), (16, 48)])],
        "frag_ok": lambda s, d, i, p: [(ETH_IPV4, f) for f in fragments(
            s, d, i, udp(40005, ECHO_PORT, p.ljust(40, b" ")), [(0, 24), (24, 48)])],
        # GRE that no PPTP control connection announced: plain GRE (version
        # 0, carrying IPv4), enhanced GRE (PPTP's format), and version 2.
        "gre_plain": lambda s, d, i, p: v4(ipv4(s, d, PROTO_GRE, struct.pack("!HH", 0, ETH_IPV4) + syn)),
        "gre_pptp": lambda s, d, i, p: v4(ipv4(s, d, PROTO_GRE, struct.pack("!HHHHI", 0x3001, GRE_PPP, 4, 7, i)
                                               + b"ppp!")),
        "gre_bad_version": lambda s, d, i, p: v4(ipv4(s, d, PROTO_GRE, struct.pack("!HH", 2, ETH_IPV4) + syn)),
        # Behind the cluster MAC, not for a VIP; and not IP at all.
        "foreign_vip": lambda s, d, i, p: v4(ipv4(s, FOREIGN_V4, PROTO_TCP, syn)),
        "not_ip": lambda s, d, i, p: [(0x88B5, b"shoal-lab not ip".ljust(46, b"\0"))],
    }
    return classes


UDP_ID_CLASSES = ("ipv4_options_ok", "frag_overlap", "frag_ok")


def cmd_hostile(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    src_mac = sock.getsockname()[4]
    dst_mac = mac_bytes(args.dst_mac)
    classes = hostile_classes()
    wanted = [c for c in (args.classes.split(",") if args.classes else classes) if c]
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise SystemExit("unknown classes %s" % unknown)
    sent = {c: 0 for c in wanted}
    ids = {c: [] for c in wanted if c in UDP_ID_CLASSES}
    errors = {}
    gap = args.seconds / max(1, args.rounds)
    start = time.monotonic()
    if args.rounds > 1024:
        raise SystemExit("--rounds must be at most 1024 (IPv4 ids are class * 1024 + round)")
    order = list(classes)
    for n in range(args.rounds):
        for c in wanted:
            ident = "%s-%s-%d" % (args.run_id, c, n)
            # A distinct IPv4 id per class and round: the owner's kernel
            # reassembles by (source, destination, protocol, id).
            ip_id = order.index(c) * 1024 + n
            for ethertype, body in classes[c](args.src, args.vip, ip_id, ident.encode() + b" "):
                try:
                    sock.send(eth(dst_mac, src_mac, ethertype) + body)
                    sent[c] += 1
                except OSError as err:
                    errors[c] = errors.get(c, 0) + 1
                    errors[c + ":last"] = str(err)
            if c in ids:
                ids[c].append(ident)
        pause = start + (n + 1) * gap - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    print(json.dumps({"sent": sent, "ids": ids, "errors": errors, "rounds": args.rounds,
                      "seconds": round(time.monotonic() - start, 3)}, sort_keys=True))
    return 0 if not errors else 1


# ---------------------------------------------------------------- heartbeats

HB_HOST_OFFSET = 16
HB_LENGTH_OFFSET = 4
HB_FORGE_OFFSET = 52  # the "hears" bitmap: past the cluster id, under the tag
HB_MAX_PAYLOAD = 1500


def tcp_syn(src, dst, sport, dport, seq):
    """A TCP SYN with a valid checksum (the hosts' stacks check it)."""
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(head))
    return head[:16] + struct.pack("!H", checksum(pseudo + head)) + head[18:]


def cmd_l2probe(args):
    cases = []
    for item in args.macs.split(","):
        name, _, mac = item.partition("=")
        cases.append((name, mac_bytes(mac)))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    src_mac = sock.getsockname()[4]
    vip = socket.inet_aton(args.vip)
    # Probe k of case c comes from client address 10.0.1.(1 + n % 150) and
    # a port of its own, so probes spread over buckets and never share a flow.
    probes = {}
    n = 0
    frames = []
    for c, (name, mac) in enumerate(cases):
        for i in range(args.count):
            src = "10.0.1.%d" % (1 + n % 150)
            sport = 20000 + c * 1000 + i
            token = "%s-%s-%d" % (args.run_id, name, i)
            probes[("udp", src, sport)] = (name, token)
            frames.append(ipv4_frame(mac, src_mac, src, args.vip, 17,
                                     udp(sport, args.udp_port, token.encode() + b" l2probe\n"), ident=n))
            n += 1
        for i in range(args.syns):
            src = "10.0.1.%d" % (1 + n % 150)
            sport = 40000 + c * 1000 + i
            probes[("tcp", src, sport)] = (name, "syn-%d" % i)
            frames.append(ipv4_frame(mac, src_mac, src, args.vip, 6,
                                     tcp_syn(src, args.vip, sport, args.tcp_port, 1000 + n), ident=n))
            n += 1
    answers = {}  # probe key -> [source MACs of answers]
    sock.settimeout(0.05)
    sent = 0
    end = None
    while True:
        if sent < len(frames):
            sock.send(frames[sent])
            sent += 1
            if sent == len(frames):
                end = time.monotonic() + args.wait
        elif time.monotonic() >= end:
            break
        while True:
            try:
                frame = sock.recv(65535) if sent == len(frames) else sock.recv(65535, socket.MSG_DONTWAIT)
            except (socket.timeout, BlockingIOError):
                break
            # The echo's socket is not bound to the VIP: its answers leave
            # from the host's own address. SYN-ACKs come from the VIP.
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[6:12] == src_mac:
                continue
            ihl = (frame[14] & 0x0F) * 4
            l4 = frame[14 + ihl:]
            proto = frame[23]
            dst = socket.inet_ntoa(frame[30:34])
            if len(l4) < 14:
                continue
            sport, dport = struct.unpack("!HH", l4[:4])
            if proto == 17 and sport == args.udp_port:
                key = ("udp", dst, dport)
            elif proto == 6 and sport == args.tcp_port and l4[13] & 0x12 == 0x12 and frame[26:30] == vip:
                key = ("tcp", dst, dport)
            else:
                continue
            if key in probes:
                answers.setdefault(key, []).append(frame[6:12].hex(":"))
            if sent < len(frames):
                break
    out = {}
    for key, (name, _) in probes.items():
        kind = "udp" if key[0] == "udp" else "syn"
        entry = out.setdefault(name, {}).setdefault(kind, {"sent": 0, "per_probe": {}, "by_mac": {}})
        entry["sent"] += 1
        macs = answers.get(key, [])
        # A datagram counts its answers; a SYN the hosts that answered it
        # (a host may retransmit its SYN-ACK).
        k = len(macs) if kind == "udp" else len(set(macs))
        entry["per_probe"][str(k)] = entry["per_probe"].get(str(k), 0) + 1
        for m in (macs if kind == "udp" else set(macs)):
            entry["by_mac"][m] = entry["by_mac"].get(m, 0) + 1
    print(json.dumps({"sent": sent, "cases": out}))
    return 0


def cmd_hb_capture(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_HEARTBEAT))
    sock.bind((args.interface, 0))
    sock.settimeout(0.1)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(frame) < 14 + HB_HOST_OFFSET + 1:
            continue
        if struct.unpack("!H", frame[12:14])[0] != ETHERTYPE_HEARTBEAT or frame[14 + HB_HOST_OFFSET] != args.host:
            continue
        with open(args.out, "wb") as f:
            f.write(frame)
        print(json.dumps({"captured": True, "host": args.host, "length": len(frame),
                          "declared": struct.unpack("!H", frame[14 + HB_LENGTH_OFFSET:16 + HB_LENGTH_OFFSET])[0]}))
        return 0
    print(json.dumps({"captured": False, "host": args.host}))
    return 1


def cmd_hb_record(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_HEARTBEAT))
    sock.bind((args.interface, 0))
    sock.settimeout(0.1)
    end = time.monotonic() + args.seconds
    frames = []
    while time.monotonic() < end:
        if args.until_file and os.path.exists(args.until_file):
            break
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(frame) < 14 + HB_HOST_OFFSET + 1:
            continue
        if struct.unpack("!H", frame[12:14])[0] != ETHERTYPE_HEARTBEAT or frame[14 + HB_HOST_OFFSET] != args.host:
            continue
        frames.append(frame)
    sent = 0
    errors = []
    if args.replay_seconds and frames:
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        out.bind((args.interface, 0))
        stop = time.monotonic() + args.replay_seconds
        while time.monotonic() < stop:
            try:
                out.send(frames[sent % len(frames)])
                sent += 1
            except OSError as err:
                errors.append(str(err))
            time.sleep(0.02)
    with open(args.out, "wb") as f:
        for frame in frames:
            f.write(struct.pack("!H", len(frame)) + frame)
    print(json.dumps({"recorded": len(frames), "host": args.host, "sent": sent, "errors": errors[:3]}))
    return 0 if frames and not errors else 1


def cmd_hb_replay(args):
    with open(args.frames, "rb") as f:
        data = f.read()
    frames = []
    while len(data) >= 2:
        n = struct.unpack("!H", data[:2])[0]
        frames.append(data[2:2 + n])
        data = data[2 + n:]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    sent = 0
    errors = []
    end = time.monotonic() + args.seconds
    while frames and time.monotonic() < end:
        try:
            sock.send(frames[sent % len(frames)])
            sent += 1
        except OSError as err:
            errors.append(str(err))
        time.sleep(args.gap)
    print(json.dumps({"sent": sent, "frames": len(frames), "errors": errors[:3]}))
    return 0 if not errors else 1


def hb_variants(frame, kind):
    """The frames of one injection kind (one or several, sent round robin)."""
    head, payload = frame[:14], frame[14:]
    declared = struct.unpack("!H", payload[HB_LENGTH_OFFSET:HB_LENGTH_OFFSET + 2])[0]
    if kind == "replay":
        return [frame]
    if kind == "forged":
        p = bytearray(payload)
        p[HB_FORGE_OFFSET] ^= 0x01
        return [head + bytes(p)]
    if kind == "truncated":
        return [head + payload[:n] for n in (1, 10, 100, declared - 1)]
    if kind == "declared_oversized":
        return [head + payload[:HB_LENGTH_OFFSET] + struct.pack("!H", 1600) + payload[HB_LENGTH_OFFSET + 2:]]
    if kind == "padded":
        return [head + payload[:declared] + b"\xa5" * (HB_MAX_PAYLOAD - declared)]
    raise SystemExit("unknown heartbeat kind %r" % kind)


def cmd_hb_inject(args):
    with open(args.frame, "rb") as f:
        frame = f.read()
    variants = hb_variants(frame, args.kind)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.interface, 0))
    sent = 0
    errors = []
    for n in range(args.count):
        try:
            sock.send(variants[n % len(variants)])
            sent += 1
        except OSError as err:
            errors.append(str(err))
        time.sleep(args.gap)
    print(json.dumps({"kind": args.kind, "sent": sent, "lengths": sorted({len(v) for v in variants}),
                      "errors": errors[:3]}))
    return 0 if not errors else 1


def arp_request(src_mac, src_ip, target_ip):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + socket.inet_aton(src_ip) + b"\0" * 6 \
        + socket.inet_aton(target_ip)
    frame = eth(b"\xff" * 6, src_mac, 0x0806) + body
    return frame + b"\0" * (60 - len(frame))


def neighbour_solicitation(src_mac, target):
    """An NS for TARGET (IPv6 text) from the link-local address of SRC_MAC."""
    t = socket.inet_pton(socket.AF_INET6, target)
    src = b"\xfe\x80" + b"\0" * 6 + bytes([src_mac[0] ^ 2]) + src_mac[1:3] + b"\xff\xfe" + src_mac[3:6]
    dst = b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + t[13:16]
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + t + bytes([1, 1]) + src_mac
    pseudo = src + dst + struct.pack("!IxxxB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + src + dst
    return eth(b"\x33\x33" + dst[12:16], src_mac, 0x86DD) + ip6 + icmp


def trafgen_bytes(data):
    return ", ".join("0x%02x" % b for b in data)


def cmd_flood_conf(args):
    with open(args.frame, "rb") as f:
        hb = f.read()
    declared = struct.unpack("!H", hb[14 + HB_LENGTH_OFFSET:16 + HB_LENGTH_OFFSET])[0]
    tag_at = 14 + declared - 16
    src_mac = mac_bytes(args.src_mac)
    arp = arp_request(src_mac, args.src, args.vip)
    ns = neighbour_solicitation(src_mac, args.ns_target)
    with open(args.out, "w") as f:
        f.write("/* control_flood: ARP request, neighbour solicitation, forged heartbeat */\n")
        kinds = args.kinds.split(",")
        if "arp" in kinds:
            f.write("{ %s }\n" % trafgen_bytes(arp))
        if "ns" in kinds:
            f.write("{ %s }\n" % trafgen_bytes(ns))
        if "heartbeat" in kinds:
            f.write("{ %s, drnd(16), %s }\n" % (trafgen_bytes(hb[:tag_at]), trafgen_bytes(hb[tag_at + 16:]) or "")
                if len(hb) > tag_at + 16 else "{ %s, drnd(16) }\n" % trafgen_bytes(hb[:tag_at]))
    print(json.dumps({"arp": len(arp), "ns": len(ns), "heartbeat": len(hb), "tag_at": tag_at}))
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
    p = sub.add_parser("hostile")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--vip", default="10.0.0.100")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--run-id", default="hostile")
    p.add_argument("--classes", help="comma-separated subset (default: every class)")
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_hostile)
    p = sub.add_parser("l2probe")
    p.add_argument("--macs", required=True, help="NAME=MAC,... destination MACs")
    p.add_argument("--count", type=int, default=20, help="UDP datagrams per MAC")
    p.add_argument("--syns", type=int, default=10, help="TCP SYNs per MAC")
    p.add_argument("--vip", default="10.0.0.100")
    p.add_argument("--udp-port", type=int, default=7001)
    p.add_argument("--tcp-port", type=int, default=80)
    p.add_argument("--run-id", default="l2probe")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to listen after the last probe")
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_l2probe)
    p = sub.add_parser("hb-capture")
    p.add_argument("--host", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_hb_capture)
    p = sub.add_parser("hb-inject")
    p.add_argument("--frame", required=True)
    p.add_argument("--kind", required=True,
                   choices=["replay", "forged", "truncated", "declared_oversized", "padded"])
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.01)
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_hb_inject)
    p = sub.add_parser("hb-record")
    p.add_argument("--host", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--until-file")
    p.add_argument("--replay-seconds", type=float, default=0.0)
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_hb_record)
    p = sub.add_parser("hb-replay")
    p.add_argument("--frames", required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--gap", type=float, default=0.02)
    p.add_argument("--interface", default="eth0")
    p.set_defaults(func=cmd_hb_replay)
    p = sub.add_parser("flood-conf")
    p.add_argument("--frame", required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--vip", default="10.0.0.100")
    p.add_argument("--ns-target", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", default="arp,ns,heartbeat", help="which of the three frames to write")
    p.set_defaults(func=cmd_flood_conf)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
