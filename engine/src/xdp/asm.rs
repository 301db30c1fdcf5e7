//! A tiny eBPF instruction encoder: just the instructions shoal's XDP program
//! needs (register moves, 64-bit arithmetic and logic, byte swaps, packet,
//! context and map-value loads, stack stores, atomic adds, 64-bit
//! immediates and map fds, conditional jumps to labels, helper calls, exit).
//!
//! # Contract
//!
//! - [`Insn::encode`] yields the kernel's `struct bpf_insn` bytes in native
//!   byte order (the register nibbles follow the C bit-field layout of the
//!   target's endianness), ready for `BPF_PROG_LOAD`.
//! - Jumps name [`Label`]s; [`Asm::finish`] resolves them and fails (never
//!   panics) on an unbound label, a label bound twice, or a jump too far for
//!   the 16-bit offset. Only forward jumps are emitted by shoal, but backward
//!   ones encode correctly too; the verifier is the judge of loops.
//! - Instruction-class and opcode constants follow
//!   `include/uapi/linux/bpf_common.h` and `bpf.h`.

/// `BPF_LD`.
const CLASS_LD: u8 = 0x00;
/// `BPF_LDX`.
const CLASS_LDX: u8 = 0x01;
/// `BPF_ST`.
const CLASS_ST: u8 = 0x02;
/// `BPF_STX`.
const CLASS_STX: u8 = 0x03;
/// `BPF_ALU` (32-bit; only the byte-swap instruction uses it here).
const CLASS_ALU: u8 = 0x04;
/// `BPF_JMP`.
const CLASS_JMP: u8 = 0x05;
/// `BPF_JMP32`.
const CLASS_JMP32: u8 = 0x06;
/// `BPF_ALU64`.
const CLASS_ALU64: u8 = 0x07;

/// `BPF_MEM`.
const MODE_MEM: u8 = 0x60;
/// `BPF_ATOMIC` (`BPF_XADD` before Linux 5.12; same encoding for an add).
const MODE_ATOMIC: u8 = 0xc0;
/// `BPF_ADD` as the operation of an atomic instruction (in `imm`).
const ATOMIC_ADD: i32 = 0x00;
/// `BPF_IMM`.
const MODE_IMM: u8 = 0x00;
/// `BPF_K`: the operand is the immediate.
const SRC_K: u8 = 0x00;
/// `BPF_X`: the operand is the source register.
const SRC_X: u8 = 0x08;

/// `BPF_ADD`.
const ALU_ADD: u8 = 0x00;
/// `BPF_MOV`.
const ALU_MOV: u8 = 0xb0;
/// `BPF_END`: byte swap.
const ALU_END: u8 = 0xd0;
/// `BPF_TO_BE`: the source bit of `BPF_END` selecting big-endian.
const END_TO_BE: u8 = 0x08;

/// `BPF_JA`.
const JMP_JA: u8 = 0x00;
/// `BPF_CALL`.
const JMP_CALL: u8 = 0x80;
/// `BPF_EXIT`.
const JMP_EXIT: u8 = 0x90;

/// `BPF_PSEUDO_MAP_FD`: the 64-bit immediate is a map fd to resolve.
pub const PSEUDO_MAP_FD: u8 = 1;

/// An eBPF register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value and helper result.
    R0 = 0,
    /// First argument; the context on entry.
    R1 = 1,
    /// Second argument.
    R2 = 2,
    /// Third argument.
    R3 = 3,
    /// Fourth argument.
    R4 = 4,
    /// Fifth argument.
    R5 = 5,
    /// Callee-saved.
    R6 = 6,
    /// Callee-saved.
    R7 = 7,
    /// Callee-saved.
    R8 = 8,
    /// Callee-saved.
    R9 = 9,
    /// Read-only frame pointer.
    R10 = 10,
}

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 8 bits, `BPF_B`.
    B,
    /// 16 bits, `BPF_H`.
    H,
    /// 32 bits, `BPF_W`.
    W,
    /// 64 bits, `BPF_DW`.
    Dw,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Self::W => 0x00,
            Self::H => 0x08,
            Self::B => 0x10,
            Self::Dw => 0x18,
        }
    }
}

/// A 64-bit arithmetic or logic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    /// `+`, `BPF_ADD`.
    Add,
    /// `*` (wrapping), `BPF_MUL`.
    Mul,
    /// `|`, `BPF_OR`.
    Or,
    /// `&`, `BPF_AND`.
    And,
    /// `<<`, `BPF_LSH`.
    Lsh,
    /// logical `>>`, `BPF_RSH`.
    Rsh,
    /// `^`, `BPF_XOR`.
    Xor,
}

impl Alu {
    fn op(self) -> u8 {
        match self {
            Self::Add => 0x00,
            Self::Mul => 0x20,
            Self::Or => 0x40,
            Self::And => 0x50,
            Self::Lsh => 0x60,
            Self::Rsh => 0x70,
            Self::Xor => 0xa0,
        }
    }
}

/// A jump condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// `==`, `BPF_JEQ`.
    Eq,
    /// `!=`, `BPF_JNE`.
    Ne,
    /// unsigned `>`, `BPF_JGT`.
    Gt,
    /// unsigned `>=`, `BPF_JGE`.
    Ge,
    /// unsigned `<`, `BPF_JLT`.
    Lt,
    /// unsigned `<=`, `BPF_JLE`.
    Le,
}

impl Cond {
    fn op(self) -> u8 {
        match self {
            Self::Eq => 0x10,
            Self::Gt => 0x20,
            Self::Ge => 0x30,
            Self::Ne => 0x50,
            Self::Lt => 0xa0,
            Self::Le => 0xb0,
        }
    }
}

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class | size/op | mode/source.
    pub code: u8,
    /// Destination register (4 bits).
    pub dst: u8,
    /// Source register or pseudo marker (4 bits).
    pub src: u8,
    /// Signed offset (memory displacement or jump distance).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel expects, in native byte order.
    pub fn encode(&self) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0x0f)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

/// A jump target, created by [`Asm::label`] and placed by [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A jump names a label that was never bound.
    #[error("label {0} is used but never bound")]
    Unbound(usize),
    /// A label was bound at two places.
    #[error("label {0} is bound twice")]
    BoundTwice(usize),
    /// A jump does not fit the 16-bit offset.
    #[error("jump from instruction {from} to {to} does not fit 16 bits")]
    TooFar {
        /// Index of the jump.
        from: usize,
        /// Index of the target.
        to: usize,
    },
}

/// An instruction buffer with labels.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    errors: Vec<AsmError>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Instructions emitted so far (a 64-bit immediate counts two).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether nothing was emitted yet.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` at the next instruction.
    pub fn bind(&mut self, label: Label) {
        match self.labels.get_mut(label.0) {
            Some(slot @ None) => *slot = Some(self.insns.len()),
            Some(Some(_)) => self.errors.push(AsmError::BoundTwice(label.0)),
            None => self.errors.push(AsmError::Unbound(label.0)),
        }
    }

    fn push(&mut self, code: u8, dst: Reg, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            dst: dst as u8,
            src,
            off,
            imm,
        });
    }

    fn jump(&mut self, code: u8, dst: Reg, src: u8, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.push(code, dst, src, 0, imm);
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) {
        self.push(CLASS_ALU64 | ALU_MOV | SRC_X, dst, src as u8, 0, 0);
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) {
        self.push(CLASS_ALU64 | ALU_MOV | SRC_K, dst, 0, 0, imm);
    }

    /// `dst += imm` (64-bit).
    pub fn add64_imm(&mut self, dst: Reg, imm: i32) {
        self.push(CLASS_ALU64 | ALU_ADD | SRC_K, dst, 0, 0, imm);
    }

    /// `dst <op>= imm` (64-bit; `imm` is sign-extended, shifts take 0..=63).
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.push(CLASS_ALU64 | op.op() | SRC_K, dst, 0, 0, imm);
    }

    /// `dst <op>= src` (64-bit; shifts use `src & 63`).
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.push(CLASS_ALU64 | op.op() | SRC_X, dst, src as u8, 0, 0);
    }

    /// `dst = imm` for a full 64-bit constant (`BPF_LD | BPF_IMM | BPF_DW`
    /// without a pseudo source, two slots).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) {
        self.push(
            CLASS_LD | MODE_IMM | Size::Dw.bits(),
            dst,
            0,
            0,
            imm as u32 as i32,
        );
        self.insns.push(Insn {
            code: 0,
            dst: 0,
            src: 0,
            off: 0,
            imm: (imm >> 32) as u32 as i32,
        });
    }

    /// `dst = htobe<bits>(dst)`, zero-extended: on a little-endian machine a
    /// byte swap of the low `bits` (16, 32 or 64) bits, so that a field
    /// loaded from the wire reads as the number it carries.
    pub fn to_be(&mut self, dst: Reg, bits: i32) {
        self.push(CLASS_ALU | ALU_END | END_TO_BE, dst, 0, 0, bits);
    }

    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(CLASS_STX | MODE_MEM | size.bits(), dst, src as u8, off, 0);
    }

    /// `lock *(u64 *)(dst + off) += src` (`BPF_STX | BPF_ATOMIC | BPF_DW`
    /// with `BPF_ADD`, the old `BPF_XADD`): an add other CPUs cannot lose.
    pub fn atomic_add64(&mut self, dst: Reg, src: Reg, off: i16) {
        self.push(
            CLASS_STX | MODE_ATOMIC | Size::Dw.bits(),
            dst,
            src as u8,
            off,
            ATOMIC_ADD,
        );
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.push(CLASS_ST | MODE_MEM | size.bits(), dst, 0, off, imm);
    }

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(CLASS_LDX | MODE_MEM | size.bits(), dst, src as u8, off, 0);
    }

    /// `dst = map` where `map_fd` is resolved by the kernel at load time
    /// (`BPF_LD | BPF_IMM | BPF_DW` with `BPF_PSEUDO_MAP_FD`, two slots).
    pub fn ld_map_fd(&mut self, dst: Reg, map_fd: i32) {
        self.push(
            CLASS_LD | MODE_IMM | Size::Dw.bits(),
            dst,
            PSEUDO_MAP_FD,
            0,
            map_fd,
        );
        self.insns.push(Insn {
            code: 0,
            dst: 0,
            src: 0,
            off: 0,
            imm: 0,
        });
    }

    /// `if dst <cond> src goto target` (64-bit compare, as packet pointer
    /// bounds checks need).
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) {
        self.jump(CLASS_JMP | cond.op() | SRC_X, dst, src as u8, 0, target);
    }

    /// `if (u32)dst <cond> (u32)imm goto target` (32-bit compare, so that
    /// immediates with the top bit set compare as written).
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: u32, target: Label) {
        self.jump(CLASS_JMP32 | cond.op() | SRC_K, dst, 0, imm as i32, target);
    }

    /// `if dst <cond> imm goto target` (64-bit compare against the
    /// sign-extended immediate, as pointer null checks need).
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) {
        self.jump(CLASS_JMP | cond.op() | SRC_K, dst, 0, imm, target);
    }

    /// `goto target`.
    pub fn ja(&mut self, target: Label) {
        self.jump(CLASS_JMP | JMP_JA, Reg::R0, 0, 0, target);
    }

    /// Calls helper number `helper`.
    pub fn call(&mut self, helper: i32) {
        self.push(CLASS_JMP | JMP_CALL, Reg::R0, 0, 0, helper);
    }

    /// Returns `r0`.
    pub fn exit(&mut self) {
        self.push(CLASS_JMP | JMP_EXIT, Reg::R0, 0, 0, 0);
    }

    /// Resolves every jump and returns the program.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        for (at, label) in std::mem::take(&mut self.fixups) {
            let to = self
                .labels
                .get(label.0)
                .copied()
                .flatten()
                .ok_or(AsmError::Unbound(label.0))?;
            let delta = i64::try_from(to).unwrap_or(i64::MAX) - i64::try_from(at).unwrap_or(0) - 1;
            let off = i16::try_from(delta).map_err(|_| AsmError::TooFar { from: at, to })?;
            if let Some(insn) = self.insns.get_mut(at) {
                insn.off = off;
            }
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn encodes_the_classic_redirect_program() {
        let mut a = Asm::new();
        a.ldx(Size::W, Reg::R2, Reg::R1, 16);
        a.ld_map_fd(Reg::R1, 5);
        a.mov64_imm(Reg::R3, 2);
        a.call(51);
        a.exit();
        let bytes: Vec<[u8; 8]> = a.finish().unwrap().iter().map(Insn::encode).collect();
        assert_eq!(
            bytes,
            vec![
                [0x61, 0x12, 16, 0, 0, 0, 0, 0],
                [0x18, 0x11, 0, 0, 5, 0, 0, 0],
                [0, 0, 0, 0, 0, 0, 0, 0],
                [0xb7, 0x03, 0, 0, 2, 0, 0, 0],
                [0x85, 0x00, 0, 0, 51, 0, 0, 0],
                [0x95, 0, 0, 0, 0, 0, 0, 0],
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn encodes_loads_moves_and_jumps() {
        let mut a = Asm::new();
        let end = a.label();
        a.mov64_reg(Reg::R6, Reg::R1); // 0
        a.ldx(Size::H, Reg::R5, Reg::R2, 12); // 1
        a.ldx(Size::B, Reg::R7, Reg::R2, -1); // 2
        a.add64_imm(Reg::R4, 14); // 3
        a.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, end); // 4 -> 7: off 2
        a.jmp32_imm(Cond::Ne, Reg::R5, 0xffff_fffe, end); // 5 -> 7: off 1
        a.ja(end); // 6 -> 7: off 0
        a.bind(end);
        a.exit(); // 7
        let bytes: Vec<[u8; 8]> = a.finish().unwrap().iter().map(Insn::encode).collect();
        assert_eq!(bytes[0], [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[1], [0x69, 0x25, 12, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[2], [0x71, 0x27, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(bytes[3], [0x07, 0x04, 0, 0, 14, 0, 0, 0]);
        assert_eq!(bytes[4], [0x2d, 0x34, 2, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[5], [0x56, 0x05, 1, 0, 0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(bytes[6], [0x05, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[7], [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn encodes_alu_stores_swaps_and_wide_constants() {
        let mut a = Asm::new();
        let end = a.label();
        a.alu64_imm(Alu::Rsh, Reg::R0, 33); // 0
        a.alu64_reg(Alu::Xor, Reg::R0, Reg::R1); // 1
        a.alu64_reg(Alu::Mul, Reg::R1, Reg::R7); // 2
        a.alu64_imm(Alu::And, Reg::R7, -256); // 3
        a.ld_imm64(Reg::R1, 0x9e37_79b9_7f4a_7c15); // 4, 5
        a.to_be(Reg::R8, 16); // 6
        a.stx(Size::W, Reg::R10, Reg::R9, -4); // 7
        a.st_imm(Size::W, Reg::R10, -4, 0); // 8
        a.jmp_imm(Cond::Eq, Reg::R0, 0, end); // 9 -> 12: off 2
        a.jmp32_imm(Cond::Lt, Reg::R5, 20, end); // 10 -> 12: off 1
        a.atomic_add64(Reg::R0, Reg::R1, 8); // 11
        a.bind(end);
        a.exit();
        let bytes: Vec<[u8; 8]> = a.finish().unwrap().iter().map(Insn::encode).collect();
        assert_eq!(bytes[0], [0x77, 0x00, 0, 0, 33, 0, 0, 0]);
        assert_eq!(bytes[1], [0xaf, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[2], [0x2f, 0x71, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[3], [0x57, 0x07, 0, 0, 0x00, 0xff, 0xff, 0xff]);
        assert_eq!(bytes[4], [0x18, 0x01, 0, 0, 0x15, 0x7c, 0x4a, 0x7f]);
        assert_eq!(bytes[5], [0, 0, 0, 0, 0xb9, 0x79, 0x37, 0x9e]);
        assert_eq!(bytes[6], [0xdc, 0x08, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes[7], [0x63, 0x9a, 0xfc, 0xff, 0, 0, 0, 0]);
        assert_eq!(bytes[8], [0x62, 0x0a, 0xfc, 0xff, 0, 0, 0, 0]);
        assert_eq!(bytes[9], [0x15, 0x00, 2, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[10], [0xa6, 0x05, 1, 0, 20, 0, 0, 0]);
        assert_eq!(bytes[11], [0xdb, 0x10, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn backward_jumps_have_negative_offsets() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        a.mov64_imm(Reg::R0, 0);
        a.ja(top);
        let insns = a.finish().unwrap();
        assert_eq!(insns[1].off, -2);
    }

    #[test]
    fn label_errors_are_reported_not_panicked() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));

        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.exit();
        a.bind(l);
        assert_eq!(a.finish(), Err(AsmError::BoundTwice(0)));

        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        for _ in 0..40_000 {
            a.mov64_imm(Reg::R0, 0);
        }
        a.bind(l);
        a.exit();
        assert_eq!(
            a.finish(),
            Err(AsmError::TooFar {
                from: 0,
                to: 40_001
            })
        );
    }
}
