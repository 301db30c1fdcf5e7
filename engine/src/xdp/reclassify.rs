//! The tcx companion of the XDP pass (see [`super::fast`]): marks, as "for
//! this host", frames that reach the stack carrying the NIC's own MAC but
//! classified as for another host.
//!
//! Why it exists: a driver that runs XDP on a buffer (every real NIC's
//! native mode) builds the skb after the program, from the rewritten
//! header, and generic XDP re-reads a header the program changed. veth's
//! native XDP runs on an skb the sending side already classified from the
//! original destination (the cluster MAC, so `PACKET_OTHERHOST`), and keeps
//! that: IPv4 then drops the datagram before counting it. This program, on
//! the NIC's tcx ingress, sets `PACKET_HOST` on exactly such frames
//! (`PACKET_OTHERHOST`, or `PACKET_MULTICAST` from a multicast cluster MAC,
//! with the NIC's own unicast MAC as destination: a combination the kernel
//! itself never produces) and lets every frame continue.
//!
//! Attached through a BPF link, so it leaves the interface when the process
//! dies; where tcx is missing (Linux < 6.6) the engine passes nothing in the
//! kernel rather than risk losing datagrams.

use super::asm::{Asm, AsmError, Cond, Insn, Reg, Size};

/// `bpf_skb_change_type`.
const HELPER_SKB_CHANGE_TYPE: i32 = 32;
/// Offsets in `struct __sk_buff`.
const SKB_PKT_TYPE: i16 = 4;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// `PACKET_HOST` (`linux/if_packet.h`).
const PACKET_HOST: i32 = 0;
/// `TCX_NEXT`: on to the next program, or the stack.
const TCX_NEXT: i32 = -1;

/// The program for a NIC whose MAC is `mac`.
pub fn program(mac: [u8; 6]) -> Result<Vec<Insn>, AsmError> {
    let mut asm = Asm::new();
    let next = asm.label();
    asm.mov64_reg(Reg::R6, Reg::R1);
    asm.ldx(Size::W, Reg::R2, Reg::R1, SKB_PKT_TYPE);
    asm.jmp_imm(Cond::Eq, Reg::R2, PACKET_HOST, next);
    asm.ldx(Size::W, Reg::R2, Reg::R1, SKB_DATA);
    asm.ldx(Size::W, Reg::R3, Reg::R1, SKB_DATA_END);
    asm.mov64_reg(Reg::R4, Reg::R2);
    asm.add64_imm(Reg::R4, 6);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, next);
    for (i, pair) in mac.chunks_exact(2).enumerate() {
        asm.ldx(Size::H, Reg::R4, Reg::R2, (2 * i) as i16);
        let half = u32::from(u16::from_ne_bytes([pair[0], pair[1]]));
        asm.jmp32_imm(Cond::Ne, Reg::R4, half, next);
    }
    asm.mov64_reg(Reg::R1, Reg::R6);
    asm.mov64_imm(Reg::R2, PACKET_HOST);
    asm.call(HELPER_SKB_CHANGE_TYPE);
    asm.bind(next);
    asm.mov64_imm(Reg::R0, TCX_NEXT);
    asm.exit();
    asm.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_every_octet_and_always_continues() {
        let insns = program([2, 0, 0, 0, 0x11, 1]).unwrap();
        // Three 16-bit compares, then the helper, then "next".
        let compares = insns.iter().filter(|i| i.encode()[0] == 0x56).count();
        assert_eq!(compares, 3);
        let last = insns[insns.len() - 2].encode();
        assert_eq!(i32::from_ne_bytes(last[4..8].try_into().unwrap()), TCX_NEXT);
    }
}
