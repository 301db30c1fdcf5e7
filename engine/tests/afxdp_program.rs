//! shoal's XDP program against the real verifier, and its classification run
//! by the kernel itself (`BPF_PROG_TEST_RUN`). Needs root; no namespaces.
//!
//! The programs here are built with `XDP_DROP` as the redirect fallback: with
//! an empty XSKMAP, a frame the program redirects comes back as `XDP_DROP`
//! (1) and a frame it passes as `XDP_PASS` (2).

mod afxdp_common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use afxdp_common::*;
use shoal_engine::sys::bpf::{Bpf, BpfError, Kernel, MapSpec};
use shoal_engine::xdp::{XdpAction, XdpParams, XdpProgram, HEARTBEAT_ETHERTYPE};

const REDIRECTED: u32 = XdpAction::Drop as u32;
const PASSED: u32 = XdpAction::Pass as u32;

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
        heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
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
    for (i, vip) in p.vips_v6.iter().enumerate() {
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
    for n in 0..=4 {
        let p = params(n);
        // The production program (fallback XDP_PASS) must load too.
        let prod = XdpProgram::build(&p, map.fd()).unwrap();
        bpf.prog_load_xdp("shoal_xdp", &prod.encode())
            .unwrap_or_else(|e| panic!("{n} entries: {e}"));

        let test = XdpProgram::build_with_fallback(&p, map.fd(), XdpAction::Drop).unwrap();
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
    let p = params(1);
    let test = XdpProgram::build_with_fallback(&p, map.fd(), XdpAction::Drop).unwrap();
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
