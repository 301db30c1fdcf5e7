//! shoal's XDP program against the real verifier, and its classification run
//! by the kernel itself (`BPF_PROG_TEST_RUN`). Needs root; no namespaces.
//!
//! The programs here are built with `XDP_ABORTED` as the redirect fallback:
//! with an empty XSKMAP, a frame the program redirects comes back as
//! `XDP_ABORTED` (0), a frame it drops as `XDP_DROP` (1) and a frame it
//! passes as `XDP_PASS` (2). The production program (fallback `XDP_DROP`)
//! is checked to drop and count what it cannot redirect.

mod afxdp_common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use afxdp_common::*;
use shoal_dataplane::wire::ethertype::HEARTBEAT as HEARTBEAT_ETHERTYPE;
use shoal_dataplane::wire::{ip_proto, tcp::flags};
use shoal_engine::sys::bpf::{Bpf, BpfError, Kernel, MapSpec};
use shoal_engine::xdp::guard::{GuardCounters, GuardMap};
use shoal_engine::xdp::program::{max_frame_len, ProgramMaps};
use shoal_engine::xdp::{XdpAction, XdpParams, XdpProgram};
use shoal_testkit::frame::{self, Ipv4};

const REDIRECTED: u32 = XdpAction::Aborted as u32;
const DROPPED: u32 = XdpAction::Drop as u32;
const PASSED: u32 = XdpAction::Pass as u32;
/// Another host's MAC on the segment.
const C_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x03];
/// A multicast MAC that is no cluster's (all-hosts group).
const OTHER_GROUP: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];

fn params(n: usize) -> XdpParams {
    XdpParams {
        cluster_macs: (0..n)
            .map(|i| [0x02, 0xbf, 10, 77, 0, 100 + i as u8])
            .collect(),
        vips_v4: (0..n)
            .map(|i| Ipv4Addr::new(10, 77, 0, 100 + i as u8))
            .collect(),
        vips_v6: (0..n)
            .map(|i| Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100 + i as u16))
            .collect(),
        ..XdpParams::default()
    }
}

/// An IPv4 TCP SYN from port 40000.
fn ipv4_syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    Ipv4::new(src, dst, ip_proto::TCP).packet(&frame::tcp(40000, dport, flags::SYN))
}

/// An IPv6 UDP datagram to `dst` from port 40000 to 7001.
fn ipv6_udp(dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let src = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
    frame::ipv6(
        src,
        dst,
        ip_proto::UDP,
        64,
        &frame::udp(40000, 7001, payload),
    )
}

fn guard(bpf: &Kernel) -> GuardMap {
    GuardMap::create(bpf).expect("guard map")
}

fn maps<'a>(xsk: &'a shoal_engine::sys::bpf::BpfMap, guard: &'a GuardMap) -> ProgramMaps<'a> {
    ProgramMaps {
        xskmap: xsk.fd(),
        guard: guard.fd(),
    }
}

fn xskmap(bpf: &Kernel) -> shoal_engine::sys::bpf::BpfMap {
    bpf.map_create(&MapSpec::xsk_map("shoal_test", 4))
        .expect("XSKMAP creation (the kernel needs CONFIG_XDP_SOCKETS)")
}

struct Case {
    what: String,
    frame: Vec<u8>,
    expect: u32,
}

fn cases(p: &XdpParams) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |what: String, frame: Vec<u8>, expect: u32| {
        // Every case also runs under one and two VLAN tags, except those whose
        // verdict depends only on the destination MAC (tags do not change it).
        out.push(Case {
            what: what.clone(),
            frame: frame.clone(),
            expect,
        });
        let one = vlan_tagged(&frame, 0x8100, 7);
        out.push(Case {
            what: format!("{what} (802.1Q)"),
            frame: one.clone(),
            expect,
        });
        out.push(Case {
            what: format!("{what} (QinQ)"),
            frame: vlan_tagged(&one, 0x88a8, 9),
            expect,
        });
    };
    let other = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
    add(
        "heartbeat".into(),
        ethernet(BROADCAST, B_MAC, HEARTBEAT_ETHERTYPE, &[0; 46]),
        REDIRECTED,
    );
    add(
        "plain IPv4 to own MAC".into(),
        ethernet(A_MAC, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, 9, b"x")),
        PASSED,
    );
    add(
        "ARP for an unrelated address".into(),
        ethernet(
            BROADCAST,
            B_MAC,
            0x0806,
            &arp_request(B_MAC, B_IP, Ipv4Addr::new(10, 77, 0, 55)),
        ),
        PASSED,
    );
    add(
        "NS for an unrelated address".into(),
        ethernet(
            other,
            B_MAC,
            0x86dd,
            &ipv6_ns(
                Ipv6Addr::LOCALHOST,
                Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1),
                &[],
            ),
        ),
        PASSED,
    );
    for (i, mac) in p.cluster_macs.iter().enumerate() {
        add(
            format!("IPv4 to cluster MAC {i}"),
            ethernet(*mac, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, 9, b"x")),
            REDIRECTED,
        );
        // Differs from the cluster MAC in the last byte only.
        let mut near = *mac;
        near[5] ^= 0x80;
        add(
            format!("IPv4 to near-miss MAC {i}"),
            ethernet(near, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, 9, b"x")),
            PASSED,
        );
    }
    for (i, vip) in p.vips_v4.iter().enumerate() {
        add(
            format!("ARP for VIP {i}"),
            ethernet(BROADCAST, B_MAC, 0x0806, &arp_request(B_MAC, B_IP, *vip)),
            REDIRECTED,
        );
        let mut truncated = ethernet(BROADCAST, B_MAC, 0x0806, &arp_request(B_MAC, B_IP, *vip));
        truncated.truncate(14 + 27);
        add(format!("truncated ARP for VIP {i}"), truncated, PASSED);
        // The sender, not the target, is the VIP: not ours.
        add(
            format!("ARP from VIP {i}"),
            ethernet(
                BROADCAST,
                B_MAC,
                0x0806,
                &arp_request(B_MAC, *vip, Ipv4Addr::new(10, 77, 0, 55)),
            ),
            PASSED,
        );
    }
    // IP to a VIP, whatever the destination MAC: to the engine.
    let macs = [
        ("broadcast", BROADCAST),
        ("another multicast group", OTHER_GROUP),
        ("another host's MAC", C_MAC),
        ("the receiving host's own MAC", A_MAC),
    ];
    for (i, vip) in p.vips_v4.iter().enumerate() {
        for (name, mac) in macs {
            add(
                format!("UDP to VIP {i} at {name}"),
                ethernet(mac, B_MAC, 0x0800, &ipv4_udp(B_IP, *vip, 7001, b"x")),
                REDIRECTED,
            );
            add(
                format!("TCP SYN to VIP {i} at {name}"),
                ethernet(mac, B_MAC, 0x0800, &ipv4_syn(B_IP, *vip, 80)),
                REDIRECTED,
            );
        }
        let mut cut = ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, *vip, 7001, b""));
        cut.truncate(14 + 19);
        add(format!("IPv4 header to VIP {i} cut short"), cut, PASSED);
        // The source, not the destination, is the VIP: not ours.
        add(
            format!("UDP from VIP {i} at broadcast"),
            ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(*vip, A_IP, 7001, b"x")),
            PASSED,
        );
    }
    add(
        "UDP to another address at broadcast".into(),
        ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, 7001, b"x")),
        PASSED,
    );
    for (i, vip) in p.vips_v6.iter().enumerate() {
        for (name, mac) in macs {
            add(
                format!("UDP to VIP6 {i} at {name}"),
                ethernet(mac, B_MAC, 0x86dd, &ipv6_udp(*vip, b"x")),
                REDIRECTED,
            );
        }
        add(
            format!("NS for VIP6 {i}"),
            ethernet(
                other,
                B_MAC,
                0x86dd,
                &ipv6_ns(Ipv6Addr::LOCALHOST, *vip, &[]),
            ),
            REDIRECTED,
        );
        let mut na = ipv6_ns(Ipv6Addr::LOCALHOST, *vip, &[]);
        na[40] = 136; // a neighbour advertisement is not a solicitation
        add(
            format!("NA for VIP6 {i}"),
            ethernet(other, B_MAC, 0x86dd, &na),
            PASSED,
        );
        let mut short = ethernet(
            other,
            B_MAC,
            0x86dd,
            &ipv6_ns(Ipv6Addr::LOCALHOST, *vip, &[]),
        );
        short.truncate(short.len() - 1);
        add(format!("truncated NS for VIP6 {i}"), short, PASSED);
    }
    out
}

#[test]
fn program_passes_the_verifier_and_classifies_for_0_to_4_entries() {
    if !privileged("program_passes_the_verifier_and_classifies_for_0_to_4_entries") {
        return;
    }
    let bpf = Kernel;
    let map = xskmap(&bpf);
    let g = guard(&bpf);
    for n in 0..=4 {
        let p = params(n);
        // The production program (fallback XDP_DROP) must load too.
        let prod = XdpProgram::build(&p, maps(&map, &g)).unwrap();
        bpf.prog_load_xdp("shoal_xdp", &prod.encode())
            .unwrap_or_else(|e| panic!("{n} entries: {e}"));

        let test = XdpProgram::build_with_fallback(&p, maps(&map, &g), XdpAction::Aborted).unwrap();
        let fd = bpf
            .prog_load_xdp("shoal_xdp_t", &test.encode())
            .unwrap_or_else(|e| panic!("{n} entries: {e}"));
        let all = cases(&p);
        assert!(all.len() >= 12);
        for case in all {
            let got = bpf.prog_test_run(fd.as_fd(), &case.frame).unwrap();
            assert_eq!(
                got, case.expect,
                "{n} entries: {} gave {got}, want {}",
                case.what, case.expect
            );
        }
    }
}

#[test]
fn a_bad_program_is_rejected_with_the_verifier_log() {
    if !privileged("a_bad_program_is_rejected_with_the_verifier_log") {
        return;
    }
    use shoal_engine::xdp::asm::{Asm, Reg, Size};
    // Reads the packet without a bounds check.
    let mut a = Asm::new();
    a.ldx(Size::W, Reg::R2, Reg::R1, 0);
    a.ldx(Size::H, Reg::R0, Reg::R2, 12);
    a.exit();
    let insns: Vec<[u8; 8]> = a.finish().unwrap().iter().map(|i| i.encode()).collect();
    match Kernel.prog_load_xdp("shoal_bad", &insns) {
        Err(BpfError::ProgramRejected { log, source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{log}");
            assert!(log.contains("invalid access to packet"), "{log}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn test_run_on_a_minimal_frame() {
    if !privileged("test_run_on_a_minimal_frame") {
        return;
    }
    let bpf = Kernel;
    let map = xskmap(&bpf);
    let g = guard(&bpf);
    let p = params(1);
    let test = XdpProgram::build_with_fallback(&p, maps(&map, &g), XdpAction::Aborted).unwrap();
    let fd = bpf.prog_load_xdp("shoal_xdp_t", &test.encode()).unwrap();
    // Exactly an Ethernet header: heartbeat redirects, a VLAN tag with nothing
    // after it passes (bounds check), ARP header alone passes.
    let hb = ethernet(BROADCAST, B_MAC, HEARTBEAT_ETHERTYPE, &[]);
    assert_eq!(bpf.prog_test_run(fd.as_fd(), &hb).unwrap(), REDIRECTED);
    let tag = ethernet(BROADCAST, B_MAC, 0x8100, &[]);
    assert_eq!(bpf.prog_test_run(fd.as_fd(), &tag).unwrap(), PASSED);
    let arp = ethernet(BROADCAST, B_MAC, 0x0806, &[]);
    assert_eq!(bpf.prog_test_run(fd.as_fd(), &arp).unwrap(), PASSED);
}

#[test]
fn frames_for_a_queue_without_a_socket_are_dropped_and_counted_never_passed() {
    if !privileged("frames_for_a_queue_without_a_socket_are_dropped_and_counted_never_passed") {
        return;
    }
    let bpf = Kernel;
    let map = xskmap(&bpf);
    let g = guard(&bpf);
    let p = params(1);
    let vip = p.vips_v4[0];
    let prod = XdpProgram::build(&p, maps(&map, &g)).unwrap();
    let fd = bpf.prog_load_xdp("shoal_xdp", &prod.encode()).unwrap();
    let run = |frame: &[u8]| bpf.prog_test_run(fd.as_fd(), frame).unwrap();

    let broadcast = ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, vip, 7001, b"x"));
    assert_eq!(run(&broadcast), DROPPED, "broadcast UDP to the VIP");
    let own = ethernet(A_MAC, B_MAC, 0x0800, &ipv4_syn(B_IP, vip, 80));
    assert_eq!(run(&own), DROPPED, "a SYN to the VIP at the host's own MAC");
    let cluster = ethernet(
        p.cluster_macs[0],
        B_MAC,
        0x0800,
        &ipv4_udp(B_IP, vip, 7001, b"x"),
    );
    assert_eq!(run(&cluster), DROPPED, "UDP to the cluster MAC");
    let plain = ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, 7001, b"x"));
    assert_eq!(run(&plain), PASSED, "non-VIP traffic at broadcast");
    assert_eq!(
        g.counters(&bpf).unwrap(),
        GuardCounters {
            unowned_queue: 3,
            oversize: 0,
            other_mac: 2,
        }
    );
}

#[test]
fn selected_frames_longer_than_a_umem_frame_are_dropped_and_counted() {
    if !privileged("selected_frames_longer_than_a_umem_frame_are_dropped_and_counted") {
        return;
    }
    let bpf = Kernel;
    let map = xskmap(&bpf);
    // BPF_PROG_TEST_RUN takes at most about 3.5 KB for a program without
    // multi-buffer support: the 4096-byte UMEM frame's limit (3840) is
    // checked by the unit tests, a smaller one here.
    for frame_size in [max_frame_len(2048), 1000] {
        let g = guard(&bpf);
        let p = XdpParams {
            max_frame_len: frame_size,
            ..params(1)
        };
        let room = p.max_frame_len as usize;
        let test = XdpProgram::build_with_fallback(&p, maps(&map, &g), XdpAction::Aborted).unwrap();
        let fd = bpf.prog_load_xdp("shoal_xdp_t", &test.encode()).unwrap();
        let run = |frame: &[u8]| bpf.prog_test_run(fd.as_fd(), frame).unwrap();
        // A frame of `len` bytes to the VIP at `mac`.
        let sized = |mac: [u8; 6], len: usize| {
            ethernet(
                mac,
                B_MAC,
                0x0800,
                &ipv4_udp(B_IP, p.vips_v4[0], 7001, &vec![0x5a; len - 14 - 28]),
            )
        };
        for mac in [p.cluster_macs[0], BROADCAST] {
            assert_eq!(run(&sized(mac, room)), REDIRECTED, "{frame_size}: fits");
            assert_eq!(
                run(&sized(mac, room + 1)),
                DROPPED,
                "{frame_size}: one byte over"
            );
        }
        let hb = ethernet(
            BROADCAST,
            B_MAC,
            HEARTBEAT_ETHERTYPE,
            &vec![0; room + 1 - 14],
        );
        assert_eq!(run(&hb), DROPPED, "{frame_size}: an oversize heartbeat");
        // Not selected: the stack's business, whatever the size.
        let plain = ethernet(
            A_MAC,
            B_MAC,
            0x0800,
            &ipv4_udp(B_IP, A_IP, 9, &vec![0; room]),
        );
        assert_eq!(run(&plain), PASSED);
        let c = g.counters(&bpf).unwrap();
        assert_eq!((c.oversize, c.unowned_queue), (3, 2), "{frame_size}: {c:?}");
    }
}

#[test]
fn the_largest_program_passes_the_verifier() {
    if !privileged("the_largest_program_passes_the_verifier") {
        return;
    }
    use shoal_engine::xdp::program::{MAX_CLUSTER_MACS, MAX_VIPS_V4, MAX_VIPS_V6};
    let bpf = Kernel;
    let map = xskmap(&bpf);
    let g = guard(&bpf);
    let p = XdpParams {
        cluster_macs: (0..MAX_CLUSTER_MACS)
            .map(|i| [0x02, 0xbf, 10, 77, 1, i as u8])
            .collect(),
        vips_v4: (0..MAX_VIPS_V4)
            .map(|i| Ipv4Addr::new(10, 78, (i >> 8) as u8, i as u8))
            .collect(),
        vips_v6: (0..MAX_VIPS_V6)
            .map(|i| Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, i as u16))
            .collect(),
        ..XdpParams::default()
    };
    let prod = XdpProgram::build(&p, maps(&map, &g)).unwrap();
    let fd = bpf
        .prog_load_xdp("shoal_xdp_max", &prod.encode())
        .unwrap_or_else(|e| panic!("{} instructions: {e}", prod.instructions().len()));
    // The last VIP of each family, at broadcast, still reaches the engine
    // (dropped here: no socket).
    let last4 = *p.vips_v4.last().unwrap();
    let f = ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, last4, 7001, b"x"));
    assert_eq!(bpf.prog_test_run(fd.as_fd(), &f).unwrap(), DROPPED);
    let last6 = *p.vips_v6.last().unwrap();
    let f = vlan_tagged(
        &ethernet(BROADCAST, B_MAC, 0x86dd, &ipv6_udp(last6, b"x")),
        0x8100,
        3,
    );
    assert_eq!(bpf.prog_test_run(fd.as_fd(), &f).unwrap(), DROPPED);
}
