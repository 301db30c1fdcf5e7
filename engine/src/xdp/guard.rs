//! The XDP program's guard counters: the frames it selected for the engine
//! but could not, or would not, hand to an AF_XDP socket, and the VIP frames
//! it selected by their IP destination alone.
//!
//! # What it owns
//!
//! The layout of the guard map (one `ARRAY` element of [`GUARD_VALUE_BYTES`]
//! holding `u64` counters at the word indices below), the instructions that
//! add one to a counter ([`emit_bump`]), and reading the counters back
//! ([`GuardMap::counters`]).
//!
//! # Guarantees
//!
//! - Every frame the program selects (heartbeat, ARP or ND for a VIP, a
//!   frame to a cluster MAC, an IP frame to a VIP) and does not hand to a
//!   socket, drop by the fast path's verdict, or pass by the fast path's
//!   verdict is counted here: [`GUARD_UNOWNED_QUEUE`] when no socket is bound
//!   to its rx queue, [`GUARD_OVERSIZE`] when it is longer than a UMEM frame
//!   holds. Both are dropped, never passed to the kernel stack.
//! - Counters are added with an atomic add on one shared element: they are
//!   rare events (a hostile or misconfigured segment), so contention does
//!   not matter and no per-CPU layout is needed.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::bpf::{Bpf, BpfError, BpfMap, MapKind, MapSpec};

use super::asm::{Asm, Cond, Reg, Size};

/// Bytes of the guard map's one value: eight `u64` counters.
pub const GUARD_VALUE_BYTES: u32 = 64;
/// Counter: selected frames dropped because no AF_XDP socket owns their rx
/// queue (the XSKMAP slot is empty).
pub const GUARD_UNOWNED_QUEUE: usize = 0;
/// Counter: selected frames dropped because they are longer than a UMEM
/// frame holds (the socket would drop them itself).
pub const GUARD_OVERSIZE: usize = 1;
/// Counter: IPv4 or IPv6 frames to a VIP whose destination MAC is not a
/// cluster MAC (broadcast, another multicast group, a host's own MAC),
/// sent to the engine to be judged like cluster traffic.
pub const GUARD_OTHER_MAC: usize = 2;

/// `bpf_map_lookup_elem`.
const HELPER_MAP_LOOKUP: i32 = 1;
/// Stack slot for the map key (below the fast path's slots).
const KEY_SLOT: i16 = -20;

/// The guard map's spec.
pub fn map_spec() -> MapSpec {
    MapSpec {
        kind: MapKind::Array,
        key_size: 4,
        value_size: GUARD_VALUE_BYTES,
        max_entries: 1,
        name: "shoal_guard".into(),
    }
}

/// Emits `guard[counter] += 1`. Clobbers `r0` to `r5`; keeps `r6` to `r9`.
pub fn emit_bump(asm: &mut Asm, guard: BorrowedFd<'_>, counter: usize) {
    let skip = asm.label();
    asm.st_imm(Size::W, Reg::R10, KEY_SLOT, 0);
    asm.ld_map_fd(Reg::R1, guard.as_raw_fd());
    asm.mov64_reg(Reg::R2, Reg::R10);
    asm.add64_imm(Reg::R2, i32::from(KEY_SLOT));
    asm.call(HELPER_MAP_LOOKUP);
    asm.jmp_imm(Cond::Eq, Reg::R0, 0, skip);
    asm.mov64_imm(Reg::R1, 1);
    // Counters are below 8, so the offset fits.
    asm.atomic_add64(Reg::R0, Reg::R1, (counter * 8) as i16);
    asm.bind(skip);
}

/// The guard counters, as read from the map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardCounters {
    /// See [`GUARD_UNOWNED_QUEUE`].
    pub unowned_queue: u64,
    /// See [`GUARD_OVERSIZE`].
    pub oversize: u64,
    /// See [`GUARD_OTHER_MAC`].
    pub other_mac: u64,
}

/// The guard map of one XDP attachment.
#[derive(Debug)]
pub struct GuardMap {
    map: BpfMap,
}

impl GuardMap {
    /// Creates the map (all counters zero).
    pub fn create(bpf: &dyn Bpf) -> Result<Self, BpfError> {
        Ok(Self {
            map: bpf.map_create(&map_spec())?,
        })
    }

    /// The map, for the program.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }

    /// Reads the counters (zero when the element cannot be read).
    pub fn counters(&self, bpf: &dyn Bpf) -> Result<GuardCounters, BpfError> {
        let mut raw = [0u8; GUARD_VALUE_BYTES as usize];
        if !bpf.map_lookup(&self.map, &0u32.to_ne_bytes(), &mut raw)? {
            return Ok(GuardCounters::default());
        }
        let word = |w: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[w * 8..w * 8 + 8]);
            u64::from_ne_bytes(b)
        };
        Ok(GuardCounters {
            unowned_queue: word(GUARD_UNOWNED_QUEUE),
            oversize: word(GUARD_OVERSIZE),
            other_mac: word(GUARD_OTHER_MAC),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_bump_is_one_lookup_and_one_atomic_add() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut asm = Asm::new();
        emit_bump(&mut asm, f.as_fd(), GUARD_OVERSIZE);
        asm.exit();
        let insns = asm.finish().unwrap();
        let calls: Vec<i32> = insns
            .iter()
            .filter(|i| i.code == 0x85)
            .map(|i| i.imm)
            .collect();
        assert_eq!(calls, vec![HELPER_MAP_LOOKUP]);
        let add = insns.iter().find(|i| i.code == 0xdb).unwrap();
        assert_eq!(add.off, 8);
        // A missing element skips the add and lands on the next instruction.
        let null_check = insns.iter().position(|i| i.code == 0x15).unwrap();
        assert_eq!(
            null_check + 1 + insns[null_check].off as usize,
            insns.len() - 1
        );
    }
}
