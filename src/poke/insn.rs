//! A small A64 instruction emitter, so tests and the demo write real instructions rather than magic
//! numbers.
//!
//! Only the handful of instructions the manager needs: moves of immediates (MOVZ/MOVK), ADD
//! (immediate), direct and indirect branches, RET, and the single-word instructions that matter for
//! patching (NOP, ISB, BRK, SVC, HVC, SMC). Every encoding follows the Arm ARM, C6.2 "Alphabetical
//! list of A64 base instructions", and every constant in the tests was checked against LLVM's
//! assembler (`llvm-mc -show-encoding`).
//!
//! Register 31 means different things in different operand slots: XZR/WZR for MOVZ/MOVK's Rd and for
//! BR/BLR/RET's Rn, SP/WSP for ADD (immediate)'s Rd and Rn. [`Reg`] keeps the two apart, and an
//! encoder refuses the one its slot cannot express instead of silently encoding the other.

use alloc::vec::Vec;
use core::fmt;

use super::cmodx::CmodxInsn;

/// Bytes per A64 instruction: every instruction is one 32-bit, 4-byte-aligned little-endian word
/// (instruction fetches are always little-endian in AArch64, whatever SCTLR_ELx.EE says).
pub const INSN_BYTES: usize = 4;

/// Largest forward B/BL offset: imm26 is a signed count of words, so +(2^25 - 1) * 4.
pub const BRANCH_MAX_FORWARD: i64 = (1 << 27) - 4;
/// Largest backward B/BL offset: -(2^25) * 4 = -128 MiB.
pub const BRANCH_MAX_BACKWARD: i64 = -(1 << 27);

/// Register width: the `sf` bit of the instructions that have one (0 = 32-bit W, 1 = 64-bit X).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// 32-bit view (Wn, WZR, WSP).
    W,
    /// 64-bit view (Xn, XZR, SP).
    X,
}

impl Width {
    const fn sf(self) -> u32 {
        match self {
            Self::W => 0,
            Self::X => 1 << 31,
        }
    }
}

/// What register 31 is in a given operand slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RegKind {
    /// X0–X30 / W0–W30.
    General(u8),
    /// XZR / WZR: register 31 where the instruction reads zero or discards the result.
    Zero,
    /// SP / WSP: register 31 where the instruction uses the stack pointer.
    StackPointer,
}

/// A general-purpose register operand with its width; register 31 is either the zero register or
/// the stack pointer, never an ambiguous "X31".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg {
    width: Width,
    kind: RegKind,
}

impl Reg {
    /// `Xn`, for `n` in 0..=30. Register 31 must be named as [`XZR`] or [`SP`].
    pub const fn x(n: u8) -> Result<Self, EncodeError> {
        Self::general(Width::X, n)
    }

    /// `Wn`, for `n` in 0..=30. Register 31 must be named as [`WZR`] or [`WSP`].
    pub const fn w(n: u8) -> Result<Self, EncodeError> {
        Self::general(Width::W, n)
    }

    const fn general(width: Width, n: u8) -> Result<Self, EncodeError> {
        if n <= 30 {
            Ok(Self {
                width,
                kind: RegKind::General(n),
            })
        } else {
            Err(EncodeError::NoSuchRegister { number: n })
        }
    }

    /// The register's width.
    pub const fn width(self) -> Width {
        self.width
    }

    /// The 5-bit register field value (31 for both the zero register and the stack pointer).
    pub const fn number(self) -> u8 {
        match self.kind {
            RegKind::General(n) => n,
            RegKind::Zero | RegKind::StackPointer => 31,
        }
    }

    /// The field for a slot where register 31 is the zero register (MOVZ/MOVK Rd, BR/BLR/RET Rn).
    const fn field_zr(self, insn: &'static str) -> Result<u32, EncodeError> {
        match self.kind {
            RegKind::StackPointer => Err(EncodeError::InvalidRegister {
                insn,
                reg: self,
                reason: "register 31 is the zero register in this slot, SP cannot be encoded",
            }),
            RegKind::General(n) => Ok(n as u32),
            RegKind::Zero => Ok(31),
        }
    }

    /// The field for a slot where register 31 is the stack pointer (ADD (immediate) Rd and Rn).
    const fn field_sp(self, insn: &'static str) -> Result<u32, EncodeError> {
        match self.kind {
            RegKind::Zero => Err(EncodeError::InvalidRegister {
                insn,
                reg: self,
                reason: "register 31 is the stack pointer in this slot, the zero register cannot \
                         be encoded",
            }),
            RegKind::General(n) => Ok(n as u32),
            RegKind::StackPointer => Ok(31),
        }
    }

    /// The field for a 64-bit branch target register (BR, BLR, RET: register 31 is XZR).
    const fn field_branch(self, insn: &'static str) -> Result<u32, EncodeError> {
        match self.width {
            Width::X => self.field_zr(insn),
            Width::W => Err(EncodeError::InvalidRegister {
                insn,
                reg: self,
                reason: "a branch target is a 64-bit X register",
            }),
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.width, self.kind) {
            (Width::X, RegKind::General(n)) => write!(f, "x{n}"),
            (Width::W, RegKind::General(n)) => write!(f, "w{n}"),
            (Width::X, RegKind::Zero) => f.write_str("xzr"),
            (Width::W, RegKind::Zero) => f.write_str("wzr"),
            (Width::X, RegKind::StackPointer) => f.write_str("sp"),
            (Width::W, RegKind::StackPointer) => f.write_str("wsp"),
        }
    }
}

macro_rules! general_registers {
    ($($x:ident $w:ident $n:literal),* $(,)?) => {
        $(
            #[doc = concat!("64-bit general-purpose register X", stringify!($n), ".")]
            pub const $x: Reg = Reg { width: Width::X, kind: RegKind::General($n) };
            #[doc = concat!("32-bit general-purpose register W", stringify!($n), ".")]
            pub const $w: Reg = Reg { width: Width::W, kind: RegKind::General($n) };
        )*
    };
}

general_registers!(
    X0 W0 0, X1 W1 1, X2 W2 2, X3 W3 3, X4 W4 4, X5 W5 5, X6 W6 6, X7 W7 7,
    X8 W8 8, X9 W9 9, X10 W10 10, X11 W11 11, X12 W12 12, X13 W13 13, X14 W14 14, X15 W15 15,
    X16 W16 16, X17 W17 17, X18 W18 18, X19 W19 19, X20 W20 20, X21 W21 21, X22 W22 22,
    X23 W23 23, X24 W24 24, X25 W25 25, X26 W26 26, X27 W27 27, X28 W28 28, X29 W29 29,
    X30 W30 30,
);

/// The link register: BL and BLR write the return address to X30, and RET returns to it by default.
pub const LR: Reg = X30;
/// 64-bit zero register (register 31 in slots that read zero or discard the result).
pub const XZR: Reg = Reg {
    width: Width::X,
    kind: RegKind::Zero,
};
/// 32-bit zero register.
pub const WZR: Reg = Reg {
    width: Width::W,
    kind: RegKind::Zero,
};
/// The stack pointer (register 31 in the slots of ADD (immediate) and other SP-capable operands).
pub const SP: Reg = Reg {
    width: Width::X,
    kind: RegKind::StackPointer,
};
/// The 32-bit view of the stack pointer.
pub const WSP: Reg = Reg {
    width: Width::W,
    kind: RegKind::StackPointer,
};

/// Why an instruction could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A register number outside 0..=30 was asked for by number; register 31 must be named as the
    /// zero register or the stack pointer.
    NoSuchRegister {
        /// The number asked for.
        number: u8,
    },
    /// The register cannot be encoded in this operand slot.
    InvalidRegister {
        /// The instruction being encoded.
        insn: &'static str,
        /// The offending operand.
        reg: Reg,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The shift amount is not one the instruction can encode.
    InvalidShift {
        /// The instruction being encoded.
        insn: &'static str,
        /// The shift asked for.
        shift: u8,
        /// The destination width (MOVZ/MOVK on a W register shift only by 0 or 16).
        width: Width,
    },
    /// An immediate does not fit its field.
    ImmediateOutOfRange {
        /// The instruction being encoded.
        insn: &'static str,
        /// The offending value.
        value: u64,
        /// The largest value the field holds.
        max: u64,
    },
    /// A B/BL target is further than the ±128 MiB imm26 reaches.
    BranchOutOfRange {
        /// Address of the branch instruction.
        from: u64,
        /// Branch target.
        to: u64,
        /// `to - from`, modulo 2^64 as the PC arithmetic is.
        offset: i64,
    },
    /// A branch source or target is not 4-byte aligned.
    Misaligned {
        /// Which address: "branch source" or "branch target".
        what: &'static str,
        /// The address.
        addr: u64,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoSuchRegister { number } => write!(
                f,
                "no general-purpose register {number}: numbers are 0..=30, name register 31 as \
                 XZR/WZR or SP/WSP"
            ),
            Self::InvalidRegister { insn, reg, reason } => {
                write!(f, "{insn}: cannot encode {reg}: {reason}")
            }
            Self::InvalidShift { insn, shift, width } => write!(
                f,
                "{insn}: invalid shift LSL #{shift} for a {} register (allowed: {})",
                match width {
                    Width::W => "32-bit",
                    Width::X => "64-bit",
                },
                match width {
                    Width::W => "0, 16",
                    Width::X => "0, 16, 32, 48",
                }
            ),
            Self::ImmediateOutOfRange { insn, value, max } => {
                write!(
                    f,
                    "{insn}: immediate {value:#x} out of range (max {max:#x})"
                )
            }
            Self::BranchOutOfRange { from, to, offset } => write!(
                f,
                "branch from {from:#x} to {to:#x}: offset {offset:#x} is outside ±128 MiB \
                 (imm26); use an indirect branch (load the address, BR/BLR)"
            ),
            Self::Misaligned { what, addr } => {
                write!(f, "{what} {addr:#x} is not 4-byte aligned")
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// Opcode bits of MOVZ with sf = 0 (C6.2 "MOVZ": sf 10 100101 hw imm16 Rd).
const MOVZ: u32 = 0x5280_0000;
/// Opcode bits of MOVK with sf = 0 (C6.2 "MOVK": sf 11 100101 hw imm16 Rd).
const MOVK: u32 = 0x7280_0000;
/// Mask selecting sf-independent opcode bits of the move-wide and add/sub-immediate classes.
const WIDE_CLASS_MASK: u32 = 0x7f80_0000;
/// Opcode bits of ADD (immediate) with sf = 0 (C6.2 "ADD (immediate)": sf 0 0 100010 sh imm12 Rn Rd).
const ADD_IMM: u32 = 0x1100_0000;
/// ADD (immediate) `sh` bit: imm12 is shifted left by 12.
const ADD_IMM_LSL12: u32 = 1 << 22;
/// BR Xn (C6.2 "BR": 1101011 0000 11111 000000 Rn 00000).
const BR: u32 = 0xd61f_0000;
/// BLR Xn (C6.2 "BLR").
const BLR: u32 = 0xd63f_0000;
/// RET Xn (C6.2 "RET").
const RET: u32 = 0xd65f_0000;
/// Mask of the fixed bits of BR/BLR/RET (all but Rn).
const BRANCH_REG_MASK: u32 = 0xffff_fc1f;
/// B imm26 (C6.2 "B": 0 00101 imm26).
const B: u32 = 0x1400_0000;
/// BL imm26 (C6.2 "BL": 1 00101 imm26).
const BL: u32 = 0x9400_0000;
/// Opcode bits of B and BL.
const BRANCH_IMM_MASK: u32 = 0xfc00_0000;
/// The imm26 field of B and BL.
const IMM26_MASK: u32 = 0x03ff_ffff;
/// UDF #imm16 (C6.2 "UDF": 0000000000000000 imm16): permanently undefined.
const UDF_MASK: u32 = 0xffff_0000;

/// `NOP` (HINT #0).
pub const fn nop() -> u32 {
    0xd503_201f
}

/// `ISB` (ISB SY, CRm = 0b1111): the context synchronisation a CPU needs before it may execute
/// freshly written code (Arm ARM B2.4.4).
pub const fn isb() -> u32 {
    0xd503_3fdf
}

/// `RET` (returns to X30).
pub const fn ret() -> u32 {
    RET | (30 << 5)
}

/// `RET Xn`. Register 31 is XZR here (a return to address 0).
pub fn ret_to(rn: Reg) -> Result<u32, EncodeError> {
    Ok(RET | (rn.field_branch("RET")? << 5))
}

/// `BR Xn`: indirect branch. Register 31 is XZR.
pub fn br(rn: Reg) -> Result<u32, EncodeError> {
    Ok(BR | (rn.field_branch("BR")? << 5))
}

/// `BLR Xn`: indirect call, return address to X30. Register 31 is XZR.
pub fn blr(rn: Reg) -> Result<u32, EncodeError> {
    Ok(BLR | (rn.field_branch("BLR")? << 5))
}

/// `BRK #imm16`: breakpoint; the exec pool fills free space with it so a stray jump traps.
pub const fn brk(imm16: u16) -> u32 {
    0xd420_0000 | ((imm16 as u32) << 5)
}

/// `SVC #imm16`: supervisor call.
pub const fn svc(imm16: u16) -> u32 {
    0xd400_0001 | ((imm16 as u32) << 5)
}

/// `HVC #imm16`: hypervisor call.
pub const fn hvc(imm16: u16) -> u32 {
    0xd400_0002 | ((imm16 as u32) << 5)
}

/// `SMC #imm16`: secure monitor call.
pub const fn smc(imm16: u16) -> u32 {
    0xd400_0003 | ((imm16 as u32) << 5)
}

/// The `hw` field of MOVZ/MOVK: shift / 16; 32 and 48 only exist for X registers (sf = 1).
fn move_wide_hw(insn: &'static str, width: Width, shift: u8) -> Result<u32, EncodeError> {
    match (width, shift) {
        (_, 0) => Ok(0),
        (_, 16) => Ok(1),
        (Width::X, 32) => Ok(2),
        (Width::X, 48) => Ok(3),
        _ => Err(EncodeError::InvalidShift { insn, shift, width }),
    }
}

/// `MOVZ Rd, #imm16, LSL #shift`: Rd = imm16 << shift, other bits zero. Register 31 is XZR/WZR.
/// `shift` is 0 or 16, and also 32 or 48 for an X register.
pub fn movz(rd: Reg, imm16: u16, shift: u8) -> Result<u32, EncodeError> {
    let hw = move_wide_hw("MOVZ", rd.width, shift)?;
    Ok(rd.width.sf() | MOVZ | (hw << 21) | (u32::from(imm16) << 5) | rd.field_zr("MOVZ")?)
}

/// `MOVK Rd, #imm16, LSL #shift`: replaces one 16-bit field of Rd, keeps the others. Register 31 is
/// XZR/WZR. `shift` is 0 or 16, and also 32 or 48 for an X register.
pub fn movk(rd: Reg, imm16: u16, shift: u8) -> Result<u32, EncodeError> {
    let hw = move_wide_hw("MOVK", rd.width, shift)?;
    Ok(rd.width.sf() | MOVK | (hw << 21) | (u32::from(imm16) << 5) | rd.field_zr("MOVK")?)
}

/// `ADD Rd, Rn, #imm12{, LSL #12}`. Register 31 is SP/WSP in both slots; Rd and Rn must have the
/// same width. `imm12` is 0..=4095.
pub fn add_imm(rd: Reg, rn: Reg, imm12: u16, lsl12: bool) -> Result<u32, EncodeError> {
    if rd.width != rn.width {
        return Err(EncodeError::InvalidRegister {
            insn: "ADD",
            reg: rn,
            reason: "source and destination must have the same width",
        });
    }
    if imm12 > 0xfff {
        return Err(EncodeError::ImmediateOutOfRange {
            insn: "ADD",
            value: u64::from(imm12),
            max: 0xfff,
        });
    }
    let sh = if lsl12 { ADD_IMM_LSL12 } else { 0 };
    Ok(rd.width.sf()
        | ADD_IMM
        | sh
        | (u32::from(imm12) << 10)
        | (rn.field_sp("ADD")? << 5)
        | rd.field_sp("ADD")?)
}

/// The imm26 field for a branch at `from` to `to`: both 4-byte aligned, offset within
/// [`BRANCH_MAX_BACKWARD`]..=[`BRANCH_MAX_FORWARD`]. The target is PC + SignExtend(imm26:'00'),
/// computed modulo 2^64, so the offset is the wrapping difference.
fn imm26(from: u64, to: u64) -> Result<u32, EncodeError> {
    if !from.is_multiple_of(INSN_BYTES as u64) {
        return Err(EncodeError::Misaligned {
            what: "branch source",
            addr: from,
        });
    }
    if !to.is_multiple_of(INSN_BYTES as u64) {
        return Err(EncodeError::Misaligned {
            what: "branch target",
            addr: to,
        });
    }
    let offset = to.wrapping_sub(from) as i64;
    if !(BRANCH_MAX_BACKWARD..=BRANCH_MAX_FORWARD).contains(&offset) {
        return Err(EncodeError::BranchOutOfRange { from, to, offset });
    }
    Ok(((offset >> 2) as u32) & IMM26_MASK)
}

/// `B to`, for a B placed at `from`.
pub fn b(from: u64, to: u64) -> Result<u32, EncodeError> {
    Ok(B | imm26(from, to)?)
}

/// `BL to`, for a BL placed at `from` (return address `from + 4` in X30).
pub fn bl(from: u64, to: u64) -> Result<u32, EncodeError> {
    Ok(BL | imm26(from, to)?)
}

/// Where a B or BL at `pc` goes, or `None` for any other instruction.
pub const fn branch_target(insn: u32, pc: u64) -> Option<u64> {
    let opcode = insn & BRANCH_IMM_MASK;
    if opcode != B && opcode != BL {
        return None;
    }
    // Sign-extend imm26 from bit 25, then scale to bytes.
    let words = (((insn & IMM26_MASK) << 6) as i32) >> 6;
    Some(pc.wrapping_add((words as i64 * INSN_BYTES as i64) as u64))
}

/// A short mnemonic for error messages and reports: the CMODX set, the instructions this module
/// emits, and UDF; anything else is "other".
pub const fn mnemonic(insn: u32) -> &'static str {
    if let Some(class) = CmodxInsn::classify(insn) {
        return class.name();
    }
    let hw = (insn >> 21) & 0b11;
    let sf = insn >> 31;
    match insn & WIDE_CLASS_MASK {
        // A 32-bit move-wide with hw = 2 or 3 is unallocated.
        MOVZ if sf == 1 || hw < 2 => return "MOVZ",
        MOVK if sf == 1 || hw < 2 => return "MOVK",
        ADD_IMM => return "ADD (immediate)",
        _ => {}
    }
    match insn & BRANCH_REG_MASK {
        RET => return "RET",
        BR => return "BR",
        BLR => return "BLR",
        _ => {}
    }
    if insn & UDF_MASK == 0 {
        return "UDF";
    }
    "other"
}

/// A growing sequence of instructions that knows the address it will run at, so branches can be
/// encoded relative to their own position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeBuf {
    base: u64,
    words: Vec<u32>,
}

impl CodeBuf {
    /// An empty buffer whose first instruction will execute at `base`.
    pub const fn new(base: u64) -> Self {
        Self {
            base,
            words: Vec::new(),
        }
    }

    /// The address of the first instruction.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// The address the next pushed instruction will have.
    pub fn here(&self) -> u64 {
        self.base.wrapping_add(self.len_bytes() as u64)
    }

    /// Appends one instruction.
    pub fn push(&mut self, insn: u32) {
        self.words.push(insn);
    }

    /// Appends `B to`, encoded from the current position.
    pub fn push_b(&mut self, to: u64) -> Result<(), EncodeError> {
        let insn = b(self.here(), to)?;
        self.push(insn);
        Ok(())
    }

    /// Appends `BL to`, encoded from the current position.
    pub fn push_bl(&mut self, to: u64) -> Result<(), EncodeError> {
        let insn = bl(self.here(), to)?;
        self.push(insn);
        Ok(())
    }

    /// Appends the shortest MOVZ/MOVK sequence that loads `value` into `rd`: MOVZ for the lowest
    /// non-zero 16-bit field (MOVZ #0 for zero), then MOVK for each further non-zero field, so 1 to
    /// 4 instructions. For a W register the value must fit in 32 bits. (MOVN and ORR-immediate forms
    /// could be shorter for some values; not needed here.) Nothing is appended on error.
    pub fn load_imm64(&mut self, rd: Reg, value: u64) -> Result<(), EncodeError> {
        let fields: u8 = match rd.width {
            Width::X => 4,
            Width::W => 2,
        };
        if rd.width == Width::W && value > u64::from(u32::MAX) {
            return Err(EncodeError::ImmediateOutOfRange {
                insn: "MOVZ/MOVK",
                value,
                max: u64::from(u32::MAX),
            });
        }
        if value == 0 {
            self.words.push(movz(rd, 0, 0)?);
            return Ok(());
        }
        let mut seq = [0u32; 4];
        let mut n = 0;
        for i in 0..fields {
            let shift = i * 16;
            let imm16 = (value >> shift) as u16;
            if imm16 == 0 {
                continue;
            }
            seq[n] = if n == 0 {
                movz(rd, imm16, shift)?
            } else {
                movk(rd, imm16, shift)?
            };
            n += 1;
        }
        self.words.extend_from_slice(&seq[..n]);
        Ok(())
    }

    /// The instructions.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether no instruction has been pushed.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.words.len() * INSN_BYTES
    }

    /// The code as the bytes to store: each word little-endian, the order the instruction fetch
    /// reads. Copies.
    pub fn as_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use proptest::prelude::*;

    // Every expected word below is from `llvm-mc -triple=aarch64 -show-encoding` (or
    // `llvm-objdump -d` of an assembled object for branches), read as a little-endian word.

    #[test]
    fn system_and_exception_instructions() {
        assert_eq!(nop(), 0xd503_201f);
        assert_eq!(isb(), 0xd503_3fdf);
        assert_eq!(ret(), 0xd65f_03c0);
        assert_eq!(brk(0), 0xd420_0000);
        assert_eq!(brk(0x3e8), 0xd420_7d00);
        assert_eq!(brk(0xffff), 0xd43f_ffe0);
        assert_eq!(svc(0), 0xd400_0001);
        assert_eq!(svc(0xffff), 0xd41f_ffe1);
        assert_eq!(hvc(0), 0xd400_0002);
        assert_eq!(smc(0), 0xd400_0003);
    }

    #[test]
    fn register_branches() {
        assert_eq!(br(X16), Ok(0xd61f_0200));
        assert_eq!(blr(X16), Ok(0xd63f_0200));
        assert_eq!(ret_to(LR), Ok(ret()));
        assert_eq!(ret_to(X1), Ok(0xd65f_0020));
        // Register 31 is XZR in BR's Rn: llvm-mc `br xzr` = 0xd61f03e0.
        assert_eq!(br(XZR), Ok(0xd61f_03e0));
        assert!(matches!(
            br(SP),
            Err(EncodeError::InvalidRegister { insn: "BR", .. })
        ));
        assert!(matches!(
            blr(W16),
            Err(EncodeError::InvalidRegister { insn: "BLR", .. })
        ));
    }

    #[test]
    fn move_wide() {
        assert_eq!(movz(W0, 42, 0), Ok(0x5280_0540));
        assert_eq!(movz(X1, 0x1234, 16), Ok(0xd2a2_4681));
        assert_eq!(movk(X1, 0xbeef, 0), Ok(0xf297_dde1));
        assert_eq!(movk(W3, 0xffff, 16), Ok(0x72bf_ffe3));
        assert_eq!(movz(X2, 1, 48), Ok(0xd2e0_0022));
        assert_eq!(movk(X2, 1, 32), Ok(0xf2c0_0022));
        // Register 31 is XZR in MOVZ's Rd: llvm-mc `movz xzr, #5` = 0xd28000bf.
        assert_eq!(movz(XZR, 5, 0), Ok(0xd280_00bf));
    }

    #[test]
    fn move_wide_rejects_bad_shifts_and_sp() {
        assert_eq!(
            movz(W0, 1, 32),
            Err(EncodeError::InvalidShift {
                insn: "MOVZ",
                shift: 32,
                width: Width::W
            })
        );
        assert!(matches!(
            movk(W0, 1, 48),
            Err(EncodeError::InvalidShift { .. })
        ));
        assert!(matches!(
            movz(X0, 1, 8),
            Err(EncodeError::InvalidShift { shift: 8, .. })
        ));
        assert!(matches!(
            movz(SP, 1, 0),
            Err(EncodeError::InvalidRegister { .. })
        ));
    }

    #[test]
    fn add_immediate() {
        assert_eq!(add_imm(X0, X0, 1, false), Ok(0x9100_0400));
        assert_eq!(add_imm(X0, SP, 1, false), Ok(0x9100_07e0));
        assert_eq!(add_imm(SP, SP, 16, false), Ok(0x9100_43ff));
        assert_eq!(add_imm(W5, W6, 0xfff, true), Ok(0x117f_fcc5));
        assert_eq!(
            add_imm(X0, X0, 0x1000, false),
            Err(EncodeError::ImmediateOutOfRange {
                insn: "ADD",
                value: 0x1000,
                max: 0xfff
            })
        );
        // Register 31 is SP in ADD (immediate): XZR cannot be encoded.
        assert!(matches!(
            add_imm(XZR, X0, 1, false),
            Err(EncodeError::InvalidRegister { .. })
        ));
        assert!(matches!(
            add_imm(X0, WZR, 1, false),
            Err(EncodeError::InvalidRegister { .. })
        ));
        assert!(matches!(
            add_imm(X0, W0, 1, false),
            Err(EncodeError::InvalidRegister { .. })
        ));
    }

    #[test]
    fn direct_branches() {
        // From llvm-objdump of an assembled object (offsets relative to each instruction).
        assert_eq!(b(0, 0x7ff_fffc), Ok(0x15ff_ffff)); // +128 MiB - 4: the forward limit
        assert_eq!(b(4, 4u64.wrapping_sub(0x800_0000)), Ok(0x1600_0000)); // -128 MiB
        assert_eq!(bl(8, 0x18), Ok(0x9400_0004));
        assert_eq!(bl(0xc, 0x8), Ok(0x97ff_ffff));
        assert_eq!(b(0x10, 0x10), Ok(0x1400_0000));
        assert_eq!(bl(0x14, 0x18u64.wrapping_sub(0x800_0000)), Ok(0x9600_0001));
        assert_eq!(bl(0x18, 0x800_0014), Ok(0x95ff_ffff));
    }

    #[test]
    fn branch_limits_and_alignment() {
        let base = 0x4000_0000u64;
        assert!(b(base, base + 0x800_0000).is_err());
        assert_eq!(
            bl(base, base + 0x800_0000),
            Err(EncodeError::BranchOutOfRange {
                from: base,
                to: base + 0x800_0000,
                offset: 0x800_0000
            })
        );
        assert!(b(base, base - 0x800_0000).is_ok());
        assert!(matches!(
            b(base, base - 0x800_0004),
            Err(EncodeError::BranchOutOfRange {
                offset: -0x800_0004,
                ..
            })
        ));
        assert_eq!(
            b(base + 2, base),
            Err(EncodeError::Misaligned {
                what: "branch source",
                addr: base + 2
            })
        );
        assert_eq!(
            bl(base, base + 1),
            Err(EncodeError::Misaligned {
                what: "branch target",
                addr: base + 1
            })
        );
        // High (TTBR1) kernel addresses: the offset is the wrapping difference.
        let hi = 0xffff_0000_1000_0000u64;
        assert_eq!(b(hi, hi - 4), Ok(0x17ff_ffff));
    }

    #[test]
    fn branch_target_decodes() {
        assert_eq!(branch_target(0x15ff_ffff, 0), Some(0x7ff_fffc));
        assert_eq!(branch_target(0x97ff_ffff, 0xc), Some(0x8));
        assert_eq!(branch_target(nop(), 0), None);
    }

    #[test]
    fn registers() {
        assert_eq!(Reg::x(5), Ok(X5));
        assert_eq!(Reg::w(30), Ok(W30));
        assert_eq!(Reg::x(31), Err(EncodeError::NoSuchRegister { number: 31 }));
        assert_eq!(X5.number(), 5);
        assert_eq!((SP.number(), XZR.number()), (31, 31));
        assert_eq!(X5.width(), Width::X);
        let names: alloc::vec::Vec<_> = [X5, W5, XZR, WZR, SP, WSP]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["x5", "w5", "xzr", "wzr", "sp", "wsp"]);
    }

    #[test]
    fn mnemonics() {
        assert_eq!(mnemonic(ret()), "RET");
        assert_eq!(mnemonic(0xd61f_0200), "BR");
        assert_eq!(mnemonic(0xd63f_0200), "BLR");
        assert_eq!(mnemonic(0x5280_0540), "MOVZ");
        assert_eq!(mnemonic(0xf297_dde1), "MOVK");
        assert_eq!(mnemonic(0x9100_0400), "ADD (immediate)");
        assert_eq!(mnemonic(0), "UDF");
        assert_eq!(mnemonic(nop()), "NOP");
        assert_eq!(mnemonic(0x1400_0000), "B");
        // MOVZ W with hw = 2 is unallocated (llvm-mc: invalid instruction encoding).
        assert_eq!(mnemonic(0x52c0_0000), "other");
    }

    #[test]
    fn code_buf_layout() {
        let mut buf = CodeBuf::new(0x4020_0000);
        assert!(buf.is_empty());
        buf.push(movz(W0, 42, 0).unwrap());
        assert_eq!(buf.here(), 0x4020_0004);
        buf.push_bl(0x4020_0000).unwrap();
        buf.push(ret());
        assert_eq!(buf.words(), [0x5280_0540, 0x97ff_ffff, 0xd65f_03c0]);
        assert_eq!((buf.len(), buf.len_bytes()), (3, 12));
        assert_eq!(
            &buf.as_bytes()[..8],
            [0x40, 0x05, 0x80, 0x52, 0xff, 0xff, 0xff, 0x97]
        );
        assert!(buf.push_b(0x4020_0002).is_err());
        assert_eq!(buf.len(), 3, "nothing pushed on error");
    }

    #[test]
    fn load_imm64_sequences() {
        let mut buf = CodeBuf::new(0);
        buf.load_imm64(X1, 0xdead_beef).unwrap();
        // mov x1, #0xbeef; movk x1, #0xdead, lsl #16
        assert_eq!(buf.words(), [0xd297_dde1, 0xf2bb_d5a1]);

        let mut buf = CodeBuf::new(0);
        buf.load_imm64(X0, 0).unwrap();
        assert_eq!(buf.words(), [0xd280_0000]);

        let mut buf = CodeBuf::new(0);
        buf.load_imm64(X2, 1 << 48).unwrap();
        assert_eq!(buf.words(), [0xd2e0_0022]);

        let mut buf = CodeBuf::new(0);
        buf.load_imm64(X16, 0xffff_0000_4020_1234).unwrap();
        assert_eq!(buf.len(), 3);

        let mut buf = CodeBuf::new(0);
        assert!(buf.load_imm64(W0, 1 << 32).is_err());
        assert!(buf.load_imm64(SP, 1).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn errors_display() {
        let e = b(0, 0x800_0000).unwrap_err();
        assert!(format!("{e}").contains("±128 MiB"), "{e}");
        let e = movz(W0, 0, 48).unwrap_err();
        assert_eq!(
            format!("{e}"),
            "MOVZ: invalid shift LSL #48 for a 32-bit register (allowed: 0, 16)"
        );
        let e = add_imm(XZR, X0, 0, false).unwrap_err();
        assert!(format!("{e}").starts_with("ADD: cannot encode xzr"), "{e}");
    }

    /// Runs a MOVZ/MOVK sequence on a model of the register.
    fn run_move_wide(words: &[u32]) -> u64 {
        let mut reg = 0u64;
        for &w in words {
            let shift = ((w >> 21) & 3) * 16;
            let imm = u64::from((w >> 5) as u16) << shift;
            match w & WIDE_CLASS_MASK {
                MOVZ => reg = imm,
                MOVK => reg = (reg & !(0xffff << shift)) | imm,
                _ => panic!("not a move-wide: {w:#x}"),
            }
        }
        reg
    }

    proptest! {
        #[test]
        fn load_imm64_loads_the_value(value: u64) {
            let mut buf = CodeBuf::new(0);
            buf.load_imm64(X9, value).unwrap();
            prop_assert!((1..=4).contains(&buf.len()));
            prop_assert_eq!(run_move_wide(buf.words()), value);
            prop_assert!(buf.words().iter().all(|w| w & 0x1f == 9));
        }

        #[test]
        fn branch_round_trips(from in 0u64..(1 << 40), words in -(1i64 << 25)..(1i64 << 25)) {
            let from = from & !3;
            let to = from.wrapping_add((words * 4) as u64);
            let insn = b(from, to).unwrap();
            prop_assert_eq!(branch_target(insn, from), Some(to));
            let insn = bl(from, to).unwrap();
            prop_assert_eq!(insn & BRANCH_IMM_MASK, BL);
            prop_assert_eq!(branch_target(insn, from), Some(to));
        }
    }
}
