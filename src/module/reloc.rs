//! The AArch64 static relocations a module's object file needs, applied by the loader itself.
//!
//! A module is an ELF relocatable object (ET_REL): its instructions and data still have the holes
//! a static linker would fill. There is no linker at run time, so the loader fills them, with the
//! rules of "ELF for the Arm 64-bit Architecture" (AAELF64), section "Relocation", for the codes
//! that non-PIC code of the small and large code models uses:
//! - table "Null relocation codes": 0 and 256 (withdrawn, "Treat as `R_<CLS>_NONE`");
//! - table "Data relocations": ABS64/32/16 and PREL64/32/16;
//! - section "Static AArch64 relocations", table "Group relocations to create a 16-, 32-, 48-,
//!   or 64-bit unsigned data value or address inline": MOVW_UABS_G0..G3 (`movz`/`movk`);
//! - table "Relocations to generate 19, 21 and 33 bit PC-relative addresses": ADR_PREL_LO21,
//!   ADR_PREL_PG_HI21(_NC), ADD_ABS_LO12_NC and LDST8/16/32/64/128_ABS_LO12_NC (`adrp` + `add`
//!   or `ldr`/`str`);
//! - table "Relocations for control-flow instructions - all offsets are a multiple of 4":
//!   TSTBR14, CONDBR19, JUMP26, CALL26.
//!
//! Each relocation computes X from S (the symbol's value), A (the addend) and P (the place's
//! address) exactly, in `i128`, so that no wrap-around can hide an overflow; makes the table's
//! check (the range, and the alignment the notes ask for: branch offsets are multiples of 4, and
//! for LDSTn "a linker should check that the value of X is aligned to a multiple of the datum
//! size"); and only then writes X's bits into the field. On any error the place is left as it
//! was, so a failed load leaves no half-relocated code behind.
//!
//! Exact X is stricter than the note under "Data relocations", which views X "as a 64-bit signed
//! integer" (lld and Linux compute in 64 bits): there an ABS32 of `0xffff_ffff_8000_0000`
//! (-2^31) fits, here it is out of range; so is any S + A past 2^64 or below 0.
//!
//! The field is patched whatever instruction is at the place, as Linux (`reloc_insn_imm`,
//! `reloc_insn_movw`, `reloc_insn_adrp`) and lld do: the assembler chose the instruction and, for
//! MOVW, "it is the assembler's responsibility to encode the hw bits" (AAELF64, "Group
//! relocations"), so the opcode, `hw` and register fields stay as assembled. Instructions and data
//! are little-endian (the loader takes only little-endian objects).
//!
//! Not done here: veneers (a CALL26/JUMP26 beyond ±128 MiB is [`RelocError::OutOfRange`]; the
//! loader must place a module within reach of what it calls), GOT, TLS and the signed or
//! PC-relative MOVW groups; the loader reports their codes as unknown.

use core::fmt;

/// An AArch64 relocation the loader applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelocKind {
    /// `R_AARCH64_NONE` (0, and the withdrawn 256): nothing is done.
    None,
    /// `R_AARCH64_ABS64` (257): the 8 bytes of S + A, no check.
    Abs64,
    /// `R_AARCH64_ABS32` (258): the low 4 bytes of S + A; -2^31 <= X < 2^32.
    Abs32,
    /// `R_AARCH64_ABS16` (259): the low 2 bytes of S + A; -2^15 <= X < 2^16.
    Abs16,
    /// `R_AARCH64_PREL64` (260): the 8 bytes of S + A - P, no check.
    Prel64,
    /// `R_AARCH64_PREL32` (261): the low 4 bytes of S + A - P; -2^31 <= X < 2^32.
    Prel32,
    /// `R_AARCH64_PREL16` (262): the low 2 bytes of S + A - P; -2^15 <= X < 2^16.
    Prel16,
    /// `R_AARCH64_MOVW_UABS_G0` (263): `movz`/`movk` imm16 = `X[15:0]`; 0 <= X < 2^16.
    MovwUabsG0,
    /// `R_AARCH64_MOVW_UABS_G0_NC` (264): imm16 = `X[15:0]`, no check.
    MovwUabsG0Nc,
    /// `R_AARCH64_MOVW_UABS_G1` (265): imm16 = `X[31:16]`; 0 <= X < 2^32.
    MovwUabsG1,
    /// `R_AARCH64_MOVW_UABS_G1_NC` (266): imm16 = `X[31:16]`, no check.
    MovwUabsG1Nc,
    /// `R_AARCH64_MOVW_UABS_G2` (267): imm16 = `X[47:32]`; 0 <= X < 2^48.
    MovwUabsG2,
    /// `R_AARCH64_MOVW_UABS_G2_NC` (268): imm16 = `X[47:32]`, no check.
    MovwUabsG2Nc,
    /// `R_AARCH64_MOVW_UABS_G3` (269): imm16 = `X[63:48]`, no check (none needed).
    MovwUabsG3,
    /// `R_AARCH64_ADR_PREL_LO21` (274): `adr` immediate = `X[20:0]` of S + A - P;
    /// -2^20 <= X < 2^20.
    AdrPrelLo21,
    /// `R_AARCH64_ADR_PREL_PG_HI21` (275): `adrp` immediate = `X[32:12]` of Page(S + A) - Page(P);
    /// -2^32 <= X < 2^32.
    AdrPrelPgHi21,
    /// `R_AARCH64_ADR_PREL_PG_HI21_NC` (276): as [`Self::AdrPrelPgHi21`], no check.
    AdrPrelPgHi21Nc,
    /// `R_AARCH64_ADD_ABS_LO12_NC` (277): `add` imm12 = `X[11:0]` of S + A, no check.
    AddAbsLo12Nc,
    /// `R_AARCH64_LDST8_ABS_LO12_NC` (278): byte load/store imm12 = `X[11:0]`, no check.
    Ldst8AbsLo12Nc,
    /// `R_AARCH64_TSTBR14` (279): `tbz`/`tbnz` imm14 = `X[15:2]` of S + A - P;
    /// -2^15 <= X < 2^15, X a multiple of 4.
    TstBr14,
    /// `R_AARCH64_CONDBR19` (280): `b.cond`/`cbz`/`cbnz` imm19 = `X[20:2]` of S + A - P;
    /// -2^20 <= X < 2^20, X a multiple of 4.
    CondBr19,
    /// `R_AARCH64_JUMP26` (282): `b` imm26 = `X[27:2]` of S + A - P; -2^27 <= X < 2^27, X a
    /// multiple of 4.
    Jump26,
    /// `R_AARCH64_CALL26` (283): `bl` imm26 = `X[27:2]` of S + A - P; -2^27 <= X < 2^27, X a
    /// multiple of 4.
    Call26,
    /// `R_AARCH64_LDST16_ABS_LO12_NC` (284): halfword load/store imm12 = `X[11:1]`, no overflow
    /// check; X a multiple of 2.
    Ldst16AbsLo12Nc,
    /// `R_AARCH64_LDST32_ABS_LO12_NC` (285): word load/store imm12 = `X[11:2]`, no overflow check;
    /// X a multiple of 4.
    Ldst32AbsLo12Nc,
    /// `R_AARCH64_LDST64_ABS_LO12_NC` (286): doubleword load/store imm12 = `X[11:3]`, no overflow
    /// check; X a multiple of 8.
    Ldst64AbsLo12Nc,
    /// `R_AARCH64_LDST128_ABS_LO12_NC` (299): quadword load/store imm12 = `X[11:4]`, no overflow
    /// check; X a multiple of 16.
    Ldst128AbsLo12Nc,
}

/// How X is formed from S, A and P (the table's "Operation" column).
#[derive(Clone, Copy)]
enum Op {
    /// S + A.
    Abs,
    /// S + A - P.
    Prel,
    /// Page(S + A) - Page(P), Page(x) = x & !0xFFF whatever the translation granule.
    Page,
}

/// Where X's bits go in the place.
#[derive(Clone, Copy)]
enum Field {
    /// Nothing is written.
    Nothing,
    /// X[8n-1:0] as n little-endian bytes.
    Data(usize),
    /// `movz`/`movk` imm16 (bits 20:5) = X[shift+15:shift].
    Movw(u32),
    /// `adr` immlo (30:29) and immhi (23:5) = `X[20:0]`.
    Adr,
    /// `adrp` immlo and immhi = `X[32:12]`.
    Adrp,
    /// `add`/load/store imm12 (bits 21:10) = X[11:scale].
    Imm12(u32),
    /// A branch's imm (`bits` wide at bit `lsb`) = X[bits+1:2].
    Branch { lsb: u32, bits: u32 },
}

/// How AAELF64 says one relocation code is applied.
struct Spec {
    op: Op,
    /// The overflow check, `lo <= X < end`.
    range: Option<(i128, i128)>,
    /// X must be a multiple of this.
    align: u8,
    field: Field,
}

const fn pow2(n: u32) -> i128 {
    1 << n
}

/// A signed check, -2^(n-1) <= X < 2^(n-1).
const fn signed(bits: u32) -> Option<(i128, i128)> {
    Some((-pow2(bits - 1), pow2(bits - 1)))
}

/// The data check, -2^(n-1) <= X < 2^n: a signed or an unsigned n-bit value.
const fn either(bits: u32) -> Option<(i128, i128)> {
    Some((-pow2(bits - 1), pow2(bits)))
}

/// An unsigned check, 0 <= X < 2^n.
const fn unsigned(bits: u32) -> Option<(i128, i128)> {
    Some((0, pow2(bits)))
}

impl RelocKind {
    /// Every variant, in ELF code order.
    pub const ALL: [RelocKind; 27] = [
        RelocKind::None,
        RelocKind::Abs64,
        RelocKind::Abs32,
        RelocKind::Abs16,
        RelocKind::Prel64,
        RelocKind::Prel32,
        RelocKind::Prel16,
        RelocKind::MovwUabsG0,
        RelocKind::MovwUabsG0Nc,
        RelocKind::MovwUabsG1,
        RelocKind::MovwUabsG1Nc,
        RelocKind::MovwUabsG2,
        RelocKind::MovwUabsG2Nc,
        RelocKind::MovwUabsG3,
        RelocKind::AdrPrelLo21,
        RelocKind::AdrPrelPgHi21,
        RelocKind::AdrPrelPgHi21Nc,
        RelocKind::AddAbsLo12Nc,
        RelocKind::Ldst8AbsLo12Nc,
        RelocKind::TstBr14,
        RelocKind::CondBr19,
        RelocKind::Jump26,
        RelocKind::Call26,
        RelocKind::Ldst16AbsLo12Nc,
        RelocKind::Ldst32AbsLo12Nc,
        RelocKind::Ldst64AbsLo12Nc,
        RelocKind::Ldst128AbsLo12Nc,
    ];

    /// The relocation of ELF64 code `r_type`, or `None` if the loader does not apply it.
    pub fn from_elf(r_type: u32) -> Option<Self> {
        if r_type == 256 {
            // AAELF64 "Null relocation codes": withdrawn, treat as R_AARCH64_NONE.
            return Some(RelocKind::None);
        }
        Self::ALL.into_iter().find(|kind| kind.elf_type() == r_type)
    }

    /// The ELF64 code (`ELF64_R_TYPE`); 0 for [`RelocKind::None`].
    pub fn elf_type(self) -> u32 {
        self.code().0
    }

    /// The AAELF64 name, e.g. `"R_AARCH64_CALL26"`.
    pub fn name(self) -> &'static str {
        self.code().1
    }

    /// The bytes of the place the relocation writes: 8, 4 or 2 for data, 4 for an instruction,
    /// 0 for [`RelocKind::None`].
    pub fn width(self) -> usize {
        match self.spec().field {
            Field::Nothing => 0,
            Field::Data(bytes) => bytes,
            _ => 4,
        }
    }

    /// The first two columns of the AAELF64 table: ELF64 code and name.
    const fn code(self) -> (u32, &'static str) {
        match self {
            Self::None => (0, "R_AARCH64_NONE"),
            Self::Abs64 => (257, "R_AARCH64_ABS64"),
            Self::Abs32 => (258, "R_AARCH64_ABS32"),
            Self::Abs16 => (259, "R_AARCH64_ABS16"),
            Self::Prel64 => (260, "R_AARCH64_PREL64"),
            Self::Prel32 => (261, "R_AARCH64_PREL32"),
            Self::Prel16 => (262, "R_AARCH64_PREL16"),
            Self::MovwUabsG0 => (263, "R_AARCH64_MOVW_UABS_G0"),
            Self::MovwUabsG0Nc => (264, "R_AARCH64_MOVW_UABS_G0_NC"),
            Self::MovwUabsG1 => (265, "R_AARCH64_MOVW_UABS_G1"),
            Self::MovwUabsG1Nc => (266, "R_AARCH64_MOVW_UABS_G1_NC"),
            Self::MovwUabsG2 => (267, "R_AARCH64_MOVW_UABS_G2"),
            Self::MovwUabsG2Nc => (268, "R_AARCH64_MOVW_UABS_G2_NC"),
            Self::MovwUabsG3 => (269, "R_AARCH64_MOVW_UABS_G3"),
            Self::AdrPrelLo21 => (274, "R_AARCH64_ADR_PREL_LO21"),
            Self::AdrPrelPgHi21 => (275, "R_AARCH64_ADR_PREL_PG_HI21"),
            Self::AdrPrelPgHi21Nc => (276, "R_AARCH64_ADR_PREL_PG_HI21_NC"),
            Self::AddAbsLo12Nc => (277, "R_AARCH64_ADD_ABS_LO12_NC"),
            Self::Ldst8AbsLo12Nc => (278, "R_AARCH64_LDST8_ABS_LO12_NC"),
            Self::TstBr14 => (279, "R_AARCH64_TSTBR14"),
            Self::CondBr19 => (280, "R_AARCH64_CONDBR19"),
            Self::Jump26 => (282, "R_AARCH64_JUMP26"),
            Self::Call26 => (283, "R_AARCH64_CALL26"),
            Self::Ldst16AbsLo12Nc => (284, "R_AARCH64_LDST16_ABS_LO12_NC"),
            Self::Ldst32AbsLo12Nc => (285, "R_AARCH64_LDST32_ABS_LO12_NC"),
            Self::Ldst64AbsLo12Nc => (286, "R_AARCH64_LDST64_ABS_LO12_NC"),
            Self::Ldst128AbsLo12Nc => (299, "R_AARCH64_LDST128_ABS_LO12_NC"),
        }
    }

    /// The other columns: the operation, the check and the field.
    const fn spec(self) -> Spec {
        use Field::{Adr, Adrp, Branch, Data, Imm12, Movw, Nothing};
        use Op::{Abs, Page, Prel};
        const fn row(op: Op, range: Option<(i128, i128)>, align: u8, field: Field) -> Spec {
            Spec {
                op,
                range,
                align,
                field,
            }
        }
        match self {
            Self::None => row(Abs, None, 1, Nothing),
            Self::Abs64 => row(Abs, None, 1, Data(8)),
            Self::Abs32 => row(Abs, either(32), 1, Data(4)),
            Self::Abs16 => row(Abs, either(16), 1, Data(2)),
            Self::Prel64 => row(Prel, None, 1, Data(8)),
            Self::Prel32 => row(Prel, either(32), 1, Data(4)),
            Self::Prel16 => row(Prel, either(16), 1, Data(2)),
            Self::MovwUabsG0 => row(Abs, unsigned(16), 1, Movw(0)),
            Self::MovwUabsG0Nc => row(Abs, None, 1, Movw(0)),
            Self::MovwUabsG1 => row(Abs, unsigned(32), 1, Movw(16)),
            Self::MovwUabsG1Nc => row(Abs, None, 1, Movw(16)),
            Self::MovwUabsG2 => row(Abs, unsigned(48), 1, Movw(32)),
            Self::MovwUabsG2Nc => row(Abs, None, 1, Movw(32)),
            Self::MovwUabsG3 => row(Abs, None, 1, Movw(48)),
            Self::AdrPrelLo21 => row(Prel, signed(21), 1, Adr),
            Self::AdrPrelPgHi21 => row(Page, signed(33), 1, Adrp),
            Self::AdrPrelPgHi21Nc => row(Page, None, 1, Adrp),
            Self::AddAbsLo12Nc => row(Abs, None, 1, Imm12(0)),
            Self::Ldst8AbsLo12Nc => row(Abs, None, 1, Imm12(0)),
            Self::TstBr14 => row(Prel, signed(16), 4, Branch { lsb: 5, bits: 14 }),
            Self::CondBr19 => row(Prel, signed(21), 4, Branch { lsb: 5, bits: 19 }),
            Self::Jump26 | Self::Call26 => row(Prel, signed(28), 4, Branch { lsb: 0, bits: 26 }),
            Self::Ldst16AbsLo12Nc => row(Abs, None, 2, Imm12(1)),
            Self::Ldst32AbsLo12Nc => row(Abs, None, 4, Imm12(2)),
            Self::Ldst64AbsLo12Nc => row(Abs, None, 8, Imm12(3)),
            Self::Ldst128AbsLo12Nc => row(Abs, None, 16, Imm12(4)),
        }
    }
}

impl fmt::Display for RelocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a relocation could not be applied. The place is left unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocError {
    /// The value does not fit the field (the check of AAELF64 for that type).
    OutOfRange {
        /// The relocation.
        kind: RelocKind,
        /// X, exactly.
        value: i128,
    },
    /// The value has low bits the field cannot hold (branch targets not 4-byte aligned, LDSTn
    /// offsets not n-aligned).
    Misaligned {
        /// The relocation.
        kind: RelocKind,
        /// X, exactly.
        value: i128,
    },
    /// Fewer bytes at the place than the relocation writes.
    PlaceTooShort {
        /// The relocation.
        kind: RelocKind,
        /// The bytes there are.
        len: usize,
    },
}

/// An `i128` in hex with its sign in front (`-0x8000004`), not as two's complement.
struct Hex(i128);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{:#x}", self.0.unsigned_abs())
    }
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RelocError::OutOfRange { kind, value } => {
                write!(f, "{kind}: value {} out of range", Hex(value))?;
                if let Some((lo, end)) = kind.spec().range {
                    write!(f, " [{}, {})", Hex(lo), Hex(end))?;
                }
                Ok(())
            }
            RelocError::Misaligned { kind, value } => write!(
                f,
                "{kind}: value {} is not a multiple of {}",
                Hex(value),
                kind.spec().align
            ),
            RelocError::PlaceTooShort { kind, len } => write!(
                f,
                "{kind}: writes {} bytes, the place has {len}",
                kind.width()
            ),
        }
    }
}

impl core::error::Error for RelocError {}

/// Applies `kind` at `place` (the bytes at address `p`, at least `kind.width()` long; only the
/// first width bytes are touched), for symbol value `s` and addend `a`: X = S + A (absolute
/// kinds) or S + A - P (PC-relative kinds) or Page(S+A) - Page(P) (ADRP kinds), computed exactly
/// in i128, checked, then encoded into the field (instructions and data little-endian). Never
/// panics, for any inputs.
pub fn apply(kind: RelocKind, place: &mut [u8], p: u64, s: u64, a: i64) -> Result<(), RelocError> {
    let spec = kind.spec();
    let len = place.len();
    let too_short = RelocError::PlaceTooShort { kind, len };
    let place = place.get_mut(..kind.width()).ok_or(too_short)?;
    let (p, sa) = (i128::from(p), i128::from(s) + i128::from(a));
    let x = match spec.op {
        Op::Abs => sa,
        Op::Prel => sa - p,
        Op::Page => (sa & !0xFFF) - (p & !0xFFF),
    };
    // Alignment first, as lld: a misaligned target is wrong whatever its distance.
    if x & (i128::from(spec.align) - 1) != 0 {
        return Err(RelocError::Misaligned { kind, value: x });
    }
    if let Some((lo, end)) = spec.range
        && !(lo..end).contains(&x)
    {
        return Err(RelocError::OutOfRange { kind, value: x });
    }
    // The field is "reduced to fit" (AAELF64, "Relocation operations"): the low 64 bits of X
    // hold every bit any field takes.
    let v = x as u64;
    match spec.field {
        Field::Nothing => {}
        Field::Data(_) => {
            for (to, from) in place.iter_mut().zip(v.to_le_bytes()) {
                *to = from;
            }
        }
        field => {
            let word = place.first_chunk_mut::<4>().ok_or(too_short)?;
            *word = field.encode(u32::from_le_bytes(*word), v).to_le_bytes();
        }
    }
    Ok(())
}

impl Field {
    /// The instruction `word` with its immediate set from X's low 64 bits `v`.
    fn encode(self, word: u32, v: u64) -> u32 {
        match self {
            Field::Movw(shift) => insert(word, 5, 16, v >> shift),
            Field::Adr => adr_imm(word, v),
            Field::Adrp => adr_imm(word, v >> 12),
            Field::Imm12(scale) => insert(word, 10, 12, (v & 0xFFF) >> scale),
            Field::Branch { lsb, bits } => insert(word, lsb, bits, v >> 2),
            Field::Nothing | Field::Data(_) => word,
        }
    }
}

/// `word` with its `bits`-wide field at `lsb` replaced by the low bits of `value`.
fn insert(word: u32, lsb: u32, bits: u32, value: u64) -> u32 {
    let mask = ((1u32 << bits) - 1) << lsb;
    (word & !mask) | ((value as u32) << lsb & mask)
}

/// `word` (an ADR or ADRP) with its 21-bit immediate set to the low bits of `imm`: immlo
/// (bits 30:29) = `imm[1:0]`, immhi (bits 23:5) = `imm[20:2]`.
fn adr_imm(word: u32, imm: u64) -> u32 {
    insert(insert(word, 29, 2, imm), 5, 19, imm >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;

    // Instructions with every immediate bit zero (checked with llvm-mc -show-encoding).
    const BL: u32 = 0x9400_0000;
    const B: u32 = 0x1400_0000;
    const ADRP_X0: u32 = 0x9000_0000;
    const ADR_X0: u32 = 0x1000_0000;
    const ADD_X0: u32 = 0x9100_0000; // add x0, x0, #0
    const LDRB_W0: u32 = 0x3940_0000; // ldrb w0, [x0]
    const LDRH_W0: u32 = 0x7940_0000; // ldrh w0, [x0]
    const LDR_W0: u32 = 0xb940_0000; // ldr w0, [x0]
    const LDR_X0: u32 = 0xf940_0000; // ldr x0, [x0]
    const LDR_Q0: u32 = 0x3dc0_0000; // ldr q0, [x0]
    const MOVZ_X0_48: u32 = 0xd2e0_0000; // movz x0, #0, lsl #48
    const MOVK_X0_32: u32 = 0xf2c0_0000; // movk x0, #0, lsl #32
    const B_EQ: u32 = 0x5400_0000;
    const CBZ_X0: u32 = 0xb400_0000;
    const TBZ_X0_0: u32 = 0x3600_0000; // tbz x0, #0

    /// Bytes after the place, which no relocation may touch.
    const GUARD: [u8; 4] = [0xa5; 4];

    /// Applies `kind` to the instruction `word` at `p`; on error checks the place is unchanged.
    fn insn(kind: RelocKind, word: u32, p: u64, s: u64, a: i64) -> Result<u32, RelocError> {
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&word.to_le_bytes());
        buf[4..].copy_from_slice(&GUARD);
        let result = apply(kind, &mut buf, p, s, a);
        assert_eq!(buf[4..], GUARD, "{kind}: wrote past the place");
        let out = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                assert_eq!(out, word, "{kind}: place changed on {e:?}");
                Err(e)
            }
        }
    }

    /// Applies a data `kind` over `fill` bytes at `p`; on error checks they are unchanged.
    fn data(kind: RelocKind, p: u64, s: u64, a: i64) -> Result<Vec<u8>, RelocError> {
        let fill = [0x5au8; 8];
        let width = kind.width();
        let mut buf: Vec<u8> = fill[..width].iter().chain(&GUARD).copied().collect();
        let result = apply(kind, &mut buf, p, s, a);
        assert_eq!(buf[width..], GUARD, "{kind}: wrote past the place");
        buf.truncate(width);
        match result {
            Ok(()) => Ok(buf),
            Err(e) => {
                assert_eq!(buf, fill[..width], "{kind}: place changed on {e:?}");
                Err(e)
            }
        }
    }

    fn out_of_range(kind: RelocKind, value: i128) -> Result<u32, RelocError> {
        Err(RelocError::OutOfRange { kind, value })
    }

    fn misaligned(kind: RelocKind, value: i128) -> Result<u32, RelocError> {
        Err(RelocError::Misaligned { kind, value })
    }

    /// The AAELF64 tables, written out again independently of `spec`.
    const TABLE: [(RelocKind, u32, &str, usize); 27] = [
        (RelocKind::None, 0, "R_AARCH64_NONE", 0),
        (RelocKind::Abs64, 257, "R_AARCH64_ABS64", 8),
        (RelocKind::Abs32, 258, "R_AARCH64_ABS32", 4),
        (RelocKind::Abs16, 259, "R_AARCH64_ABS16", 2),
        (RelocKind::Prel64, 260, "R_AARCH64_PREL64", 8),
        (RelocKind::Prel32, 261, "R_AARCH64_PREL32", 4),
        (RelocKind::Prel16, 262, "R_AARCH64_PREL16", 2),
        (RelocKind::MovwUabsG0, 263, "R_AARCH64_MOVW_UABS_G0", 4),
        (RelocKind::MovwUabsG0Nc, 264, "R_AARCH64_MOVW_UABS_G0_NC", 4),
        (RelocKind::MovwUabsG1, 265, "R_AARCH64_MOVW_UABS_G1", 4),
        (RelocKind::MovwUabsG1Nc, 266, "R_AARCH64_MOVW_UABS_G1_NC", 4),
        (RelocKind::MovwUabsG2, 267, "R_AARCH64_MOVW_UABS_G2", 4),
        (RelocKind::MovwUabsG2Nc, 268, "R_AARCH64_MOVW_UABS_G2_NC", 4),
        (RelocKind::MovwUabsG3, 269, "R_AARCH64_MOVW_UABS_G3", 4),
        (RelocKind::AdrPrelLo21, 274, "R_AARCH64_ADR_PREL_LO21", 4),
        (
            RelocKind::AdrPrelPgHi21,
            275,
            "R_AARCH64_ADR_PREL_PG_HI21",
            4,
        ),
        (
            RelocKind::AdrPrelPgHi21Nc,
            276,
            "R_AARCH64_ADR_PREL_PG_HI21_NC",
            4,
        ),
        (RelocKind::AddAbsLo12Nc, 277, "R_AARCH64_ADD_ABS_LO12_NC", 4),
        (
            RelocKind::Ldst8AbsLo12Nc,
            278,
            "R_AARCH64_LDST8_ABS_LO12_NC",
            4,
        ),
        (RelocKind::TstBr14, 279, "R_AARCH64_TSTBR14", 4),
        (RelocKind::CondBr19, 280, "R_AARCH64_CONDBR19", 4),
        (RelocKind::Jump26, 282, "R_AARCH64_JUMP26", 4),
        (RelocKind::Call26, 283, "R_AARCH64_CALL26", 4),
        (
            RelocKind::Ldst16AbsLo12Nc,
            284,
            "R_AARCH64_LDST16_ABS_LO12_NC",
            4,
        ),
        (
            RelocKind::Ldst32AbsLo12Nc,
            285,
            "R_AARCH64_LDST32_ABS_LO12_NC",
            4,
        ),
        (
            RelocKind::Ldst64AbsLo12Nc,
            286,
            "R_AARCH64_LDST64_ABS_LO12_NC",
            4,
        ),
        (
            RelocKind::Ldst128AbsLo12Nc,
            299,
            "R_AARCH64_LDST128_ABS_LO12_NC",
            4,
        ),
    ];

    #[test]
    fn codes_names_and_widths_are_the_aaelf64_ones() {
        for (i, (kind, code, name, width)) in TABLE.into_iter().enumerate() {
            assert_eq!(RelocKind::ALL[i], kind);
            assert_eq!(kind.elf_type(), code, "{kind:?}");
            assert_eq!(kind.name(), name, "{kind:?}");
            assert_eq!(kind.width(), width, "{kind:?}");
            assert_eq!(RelocKind::from_elf(code), Some(kind), "{name}");
            assert_eq!(alloc::format!("{kind}"), name);
        }
    }

    #[test]
    fn all_holds_every_variant_once() {
        for (i, a) in RelocKind::ALL.iter().enumerate() {
            for b in &RelocKind::ALL[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(a.elf_type(), b.elf_type());
                assert_ne!(a.name(), b.name());
            }
            // A match with no wildcard: a new variant fails to compile here until it is listed.
            let listed = match a {
                RelocKind::None
                | RelocKind::Abs64
                | RelocKind::Abs32
                | RelocKind::Abs16
                | RelocKind::Prel64
                | RelocKind::Prel32
                | RelocKind::Prel16
                | RelocKind::MovwUabsG0
                | RelocKind::MovwUabsG0Nc
                | RelocKind::MovwUabsG1
                | RelocKind::MovwUabsG1Nc
                | RelocKind::MovwUabsG2
                | RelocKind::MovwUabsG2Nc
                | RelocKind::MovwUabsG3
                | RelocKind::AdrPrelLo21
                | RelocKind::AdrPrelPgHi21
                | RelocKind::AdrPrelPgHi21Nc
                | RelocKind::AddAbsLo12Nc
                | RelocKind::Ldst8AbsLo12Nc
                | RelocKind::TstBr14
                | RelocKind::CondBr19
                | RelocKind::Jump26
                | RelocKind::Call26
                | RelocKind::Ldst16AbsLo12Nc
                | RelocKind::Ldst32AbsLo12Nc
                | RelocKind::Ldst64AbsLo12Nc
                | RelocKind::Ldst128AbsLo12Nc => true,
            };
            assert!(listed);
        }
    }

    #[test]
    fn withdrawn_256_is_none_and_other_codes_are_unknown() {
        assert_eq!(RelocKind::from_elf(256), Some(RelocKind::None));
        assert_eq!(RelocKind::None.elf_type(), 0);
        // Neighbours and codes the loader does not apply: ELF32 ABS32 (1), MOVW_SABS_G0 (270),
        // LD_PREL_LO19 (273), 281 (unallocated), MOVW_PREL_G0 (287), ADR_GOT_PAGE (311),
        // PLT32 (314), TLSGD_ADR_PREL21 (512), COPY (1024), RELATIVE (1027).
        for code in [
            1,
            255,
            270,
            271,
            272,
            273,
            281,
            287,
            298,
            300,
            311,
            312,
            314,
            512,
            1024,
            1027,
            u32::MAX,
        ] {
            assert_eq!(RelocKind::from_elf(code), None, "{code}");
        }
        let known = (0..2048).filter_map(RelocKind::from_elf).count();
        assert_eq!(
            known,
            RelocKind::ALL.len() + 1,
            "0..2048: the 27 codes and 256"
        );
    }

    #[test]
    fn none_touches_nothing_and_needs_no_bytes() {
        assert_eq!(
            apply(RelocKind::None, &mut [], 0, u64::MAX, i64::MIN),
            Ok(())
        );
        let mut place = [1, 2, 3, 4, 5, 6, 7, 8];
        for (p, s, a) in [(0, 0, 0), (u64::MAX, 0, i64::MAX), (3, u64::MAX, i64::MIN)] {
            assert_eq!(apply(RelocKind::None, &mut place, p, s, a), Ok(()));
        }
        assert_eq!(place, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn abs64_and_prel64_write_eight_bytes_and_wrap() {
        let p = 0xffff_0000_1000_0000;
        assert_eq!(
            data(RelocKind::Abs64, p, 0x0123_4567_89ab_cdef, 0x10),
            Ok(0x0123_4567_89ab_cdff_u64.to_le_bytes().to_vec())
        );
        // No check: S + A beyond 2^64 and below 0 keep their low 64 bits.
        assert_eq!(
            data(RelocKind::Abs64, p, u64::MAX, 2),
            Ok(1u64.to_le_bytes().to_vec())
        );
        assert_eq!(
            data(RelocKind::Abs64, p, 0, -1),
            Ok(u64::MAX.to_le_bytes().to_vec())
        );
        assert_eq!(
            data(RelocKind::Prel64, p, p - 0x20, 0x8),
            Ok((-0x18i64).to_le_bytes().to_vec())
        );
        assert_eq!(
            data(RelocKind::Prel64, u64::MAX, 0, i64::MIN),
            Ok((1u64 << 63).wrapping_add(1).to_le_bytes().to_vec())
        );
    }

    #[test]
    fn abs32_and_abs16_limits() {
        for (kind, bits) in [(RelocKind::Abs32, 32), (RelocKind::Abs16, 16)] {
            let low = -(1i64 << (bits - 1));
            let high = (1u64 << bits) - 1;
            let bytes = |v: u64| Ok(v.to_le_bytes()[..bits / 8].to_vec());
            assert_eq!(
                data(kind, 0, 0, low),
                bytes(1u64 << (bits - 1)),
                "{kind} low"
            );
            assert_eq!(data(kind, 0, high, 0), bytes(high), "{kind} high");
            assert_eq!(data(kind, 0, 0, -1), bytes(high), "{kind} -1");
            assert_eq!(
                data(kind, 0, 0, low - 1),
                Err(RelocError::OutOfRange {
                    kind,
                    value: i128::from(low) - 1
                })
            );
            assert_eq!(
                data(kind, 0, high, 1),
                Err(RelocError::OutOfRange {
                    kind,
                    value: i128::from(high) + 1
                })
            );
        }
        assert_eq!(
            data(RelocKind::Abs32, 0, 0x1234_5678, 0x10),
            Ok(vec![0x88, 0x56, 0x34, 0x12])
        );
        // Exactly in i128: S + A past 2^64 does not wrap into range.
        assert_eq!(
            data(RelocKind::Abs32, 0, u64::MAX, 1),
            Err(RelocError::OutOfRange {
                kind: RelocKind::Abs32,
                value: 1 << 64
            })
        );
    }

    #[test]
    fn prel32_and_prel16_limits_both_ways() {
        let p = 0x1_4008_0000;
        for (kind, bits) in [(RelocKind::Prel32, 32), (RelocKind::Prel16, 16)] {
            let back = 1u64 << (bits - 1);
            let ahead = (1u64 << bits) - 1;
            let bytes = |v: u64| Ok(v.to_le_bytes()[..bits / 8].to_vec());
            assert_eq!(data(kind, p, p - back, 0), bytes(back), "{kind} back");
            assert_eq!(data(kind, p, p + ahead, 0), bytes(ahead), "{kind} ahead");
            assert_eq!(
                data(kind, p, p, -(back as i64)),
                bytes(back),
                "{kind} addend"
            );
            assert_eq!(
                data(kind, p, p - back - 1, 0),
                Err(RelocError::OutOfRange {
                    kind,
                    value: -i128::from(back) - 1
                })
            );
            assert_eq!(
                data(kind, p, p + ahead + 1, 0),
                Err(RelocError::OutOfRange {
                    kind,
                    value: i128::from(ahead) + 1
                })
            );
        }
        assert_eq!(
            data(RelocKind::Prel32, p, p - 8, 4),
            Ok(vec![0xfc, 0xff, 0xff, 0xff])
        );
        assert_eq!(
            data(RelocKind::Prel16, p, p + 0x1234, 0),
            Ok(vec![0x34, 0x12])
        );
        // S - P below 0 without wrapping: P near 2^64, S near 0.
        assert_eq!(
            data(RelocKind::Prel32, u64::MAX, 0, 0),
            Err(RelocError::OutOfRange {
                kind: RelocKind::Prel32,
                value: -i128::from(u64::MAX)
            })
        );
    }

    #[test]
    fn movw_uabs_writes_each_group_and_keeps_opcode_hw_and_register() {
        let s = 0x1234_5678_9abc_def0;
        let p = 0x8000;
        // movz x0, #0x1234, lsl #48 (llvm-mc: d2e24680).
        assert_eq!(
            insn(RelocKind::MovwUabsG3, MOVZ_X0_48, p, s, 0),
            Ok(0xd2e2_4680)
        );
        // movk x0, #0x5678, lsl #32 (f2cacf00).
        assert_eq!(
            insn(RelocKind::MovwUabsG2Nc, MOVK_X0_32, p, s, 0),
            Ok(0xf2ca_cf00)
        );
        // movk x5, #0x9abc, lsl #16 (f2b35785), from movk x5, #0, lsl #16 (f2a00005).
        assert_eq!(
            insn(RelocKind::MovwUabsG1Nc, 0xf2a0_0005, p, s, 0),
            Ok(0xf2b3_5785)
        );
        // movz w9, #0xdef0 (529bde09), from movz w9, #0 (52800009).
        assert_eq!(
            insn(RelocKind::MovwUabsG0Nc, 0x5280_0009, p, s, 0),
            Ok(0x529b_de09)
        );
        // The opcode and hw are the assembler's: G0 into a "movk x0, lsl #32" stays a movk with
        // hw = 2, only imm16 changes.
        assert_eq!(
            insn(RelocKind::MovwUabsG0, MOVK_X0_32, p, 0xbeef, 0),
            Ok(MOVK_X0_32 | 0xbeef << 5)
        );
        // The addend counts: G3 of 0xffff_0000_0000_0000 - 1.
        assert_eq!(
            insn(
                RelocKind::MovwUabsG3,
                MOVZ_X0_48,
                p,
                0xffff_0000_0000_0000,
                -1
            ),
            Ok(MOVZ_X0_48 | 0xfffe << 5)
        );
        // Bits other than imm16 already set stay set.
        assert_eq!(
            insn(RelocKind::MovwUabsG1Nc, !0x001f_ffe0, p, 0, 0),
            Ok(!0x001f_ffe0)
        );
    }

    #[test]
    fn movw_uabs_checked_groups_limits() {
        let p = 0x1000;
        for (kind, top, shift) in [
            (RelocKind::MovwUabsG0, 1u64 << 16, 0),
            (RelocKind::MovwUabsG1, 1 << 32, 16),
            (RelocKind::MovwUabsG2, 1 << 48, 32),
        ] {
            assert_eq!(
                insn(kind, MOVZ_X0_48, p, top - 1, 0),
                Ok(MOVZ_X0_48 | 0xffff << 5),
                "{kind}"
            );
            assert_eq!(
                insn(kind, MOVZ_X0_48, p, 1 << shift, 0),
                Ok(MOVZ_X0_48 | 1 << 5),
                "{kind}"
            );
            assert_eq!(insn(kind, MOVZ_X0_48, p, 0, 0), Ok(MOVZ_X0_48), "{kind}");
            assert_eq!(
                insn(kind, MOVZ_X0_48, p, top, 0),
                out_of_range(kind, i128::from(top))
            );
            assert_eq!(
                insn(kind, MOVZ_X0_48, p, top - 1, 1),
                out_of_range(kind, i128::from(top))
            );
            assert_eq!(insn(kind, MOVZ_X0_48, p, 0, -1), out_of_range(kind, -1));
        }
    }

    #[test]
    fn movw_uabs_unchecked_groups_take_any_value() {
        let p = 0x1000;
        for (kind, shift) in [
            (RelocKind::MovwUabsG0Nc, 0),
            (RelocKind::MovwUabsG1Nc, 16),
            (RelocKind::MovwUabsG2Nc, 32),
            (RelocKind::MovwUabsG3, 48),
        ] {
            // -1: every group is 0xffff.
            assert_eq!(
                insn(kind, MOVK_X0_32, p, 0, -1),
                Ok(MOVK_X0_32 | 0xffff << 5),
                "{kind}"
            );
            // X = 2^64 + 2^shift (S + A past 2^64): the group holds 1.
            assert_eq!(
                insn(kind, MOVK_X0_32, p, u64::MAX, (1 << shift) + 1),
                Ok(MOVK_X0_32 | 1 << 5),
                "{kind}"
            );
            assert_eq!(
                insn(kind, MOVK_X0_32, p, 0xa5a5 << shift, 0),
                Ok(MOVK_X0_32 | 0xa5a5 << 5),
                "{kind}"
            );
        }
    }

    #[test]
    fn adr_prel_lo21_encodes_and_limits() {
        let p = 0x4000_0000;
        // adr x0, #0x12345 (30091a20): immlo = 1, immhi = 0x48d1.
        assert_eq!(
            insn(RelocKind::AdrPrelLo21, ADR_X0, p, p + 0x12345, 0),
            Ok(0x3009_1a20)
        );
        // adr x0, #0xfffff (707fffe0): the last accepted forward.
        assert_eq!(
            insn(RelocKind::AdrPrelLo21, ADR_X0, p, p + M - 1, 0),
            Ok(0x707f_ffe0)
        );
        // adr x7, #-0x100000 (10800007): the last accepted backward, register kept.
        assert_eq!(
            insn(RelocKind::AdrPrelLo21, ADR_X0 | 7, p, p - M, 0),
            Ok(0x1080_0007)
        );
        // Through the addend, at P: adr x0, #-1.
        assert_eq!(
            insn(RelocKind::AdrPrelLo21, ADR_X0, p, p, -1),
            Ok(0x70ff_ffe0)
        );
        let kind = RelocKind::AdrPrelLo21;
        assert_eq!(insn(kind, ADR_X0, p, p + M, 0), out_of_range(kind, 1 << 20));
        assert_eq!(
            insn(kind, ADR_X0, p, p - M - 1, 0),
            out_of_range(kind, -(1 << 20) - 1)
        );
    }

    #[test]
    fn adrp_encodes_pages() {
        let kind = RelocKind::AdrPrelPgHi21;
        // From the last byte of a page to the first of the next: one page (adrp x0, #0x1000 is
        // b0000000).
        assert_eq!(
            insn(kind, ADRP_X0, 0x4000_0ffc, 0x4000_1000, 0),
            Ok(0xb000_0000)
        );
        // Same page: 0, whatever the low bits of S + A and P.
        assert_eq!(
            insn(kind, ADRP_X0, 0x4000_1ffc, 0x4000_1000, 0xff0),
            Ok(ADRP_X0)
        );
        // Page(S + A), not Page(S) + A: 0x1fff + 1 is on the next page.
        assert_eq!(insn(kind, ADRP_X0, 0, 0x1fff, 0), Ok(0xb000_0000));
        assert_eq!(insn(kind, ADRP_X0, 0, 0x1fff, 1), Ok(0xd000_0000));
        // One page back, register kept: adrp x3, #-0x1000 (f0ffffe3).
        assert_eq!(
            insn(kind, ADRP_X0 | 3, 0x4000_1000, 0x4000_0fff, 0),
            Ok(0xf0ff_ffe3)
        );
    }

    #[test]
    fn adrp_limits_and_nc() {
        let kind = RelocKind::AdrPrelPgHi21;
        let p = 0x1_0000_0000;
        let g = 1u64 << 32;
        // adrp x0, #0xfffff000 (f07fffe0): the last page forward, from anywhere in P's page.
        assert_eq!(
            insn(kind, ADRP_X0, p + 0xfff, p + g - 1, 0),
            Ok(0xf07f_ffe0)
        );
        // adrp x3, #-0x100000000 (90800003): the last page backward.
        assert_eq!(insn(kind, ADRP_X0 | 3, p, 0, 0), Ok(0x9080_0003));
        assert_eq!(
            insn(kind, ADRP_X0, p, p + g, 0),
            out_of_range(kind, 1 << 32)
        );
        assert_eq!(
            insn(kind, ADRP_X0, p + 0x1000, 0xfff, 0),
            out_of_range(kind, -(1 << 32) - 0x1000)
        );
        // Page(S + A) below zero is a page below zero.
        assert_eq!(
            insn(kind, ADRP_X0, p, 0, -1),
            out_of_range(kind, -(1 << 32) - 0x1000)
        );
        // _NC: no check; X[32:12] of 2^32 is 0x100000 (immhi bit 18 = bit 23).
        let nc = RelocKind::AdrPrelPgHi21Nc;
        assert_eq!(insn(nc, ADRP_X0, p, p + g, 0), Ok(0x9080_0000));
        assert_eq!(insn(nc, ADRP_X0, 0, 2 * g, 0), Ok(ADRP_X0));
        assert_eq!(
            insn(nc, ADRP_X0, 0x4000_0ffc, 0x4000_1000, 0),
            Ok(0xb000_0000)
        );
    }

    #[test]
    fn add_abs_lo12_takes_the_low_twelve_bits() {
        let kind = RelocKind::AddAbsLo12Nc;
        assert_eq!(
            insn(kind, ADD_X0, 0, 0x1234_5678, 0),
            Ok(ADD_X0 | 0x678 << 10)
        );
        // add x1, x2, #0x678 (9119e041), from add x1, x2, #0 (91000041).
        assert_eq!(
            insn(kind, 0x9100_0041, 0, 0x4000_0600, 0x78),
            Ok(0x9119_e041)
        );
        // No check: 2^64 - 1 and negative values give their low bits; any alignment.
        assert_eq!(insn(kind, ADD_X0, 0, u64::MAX, 0), Ok(ADD_X0 | 0xfff << 10));
        assert_eq!(insn(kind, ADD_X0, 0, 0, -1), Ok(ADD_X0 | 0xfff << 10));
        assert_eq!(insn(kind, ADD_X0, 0, 0x1000, 0), Ok(ADD_X0));
        // The shift bit (22) and everything outside imm12 stay as they were.
        assert_eq!(
            insn(kind, !0x003f_fc00, 0, 0x1001, 0),
            Ok(!0x003f_fc00 | 1 << 10)
        );
    }

    #[test]
    fn ldst_lo12_scales_by_the_access_size() {
        let page = 0x4020_0000u64;
        // The top of the page for each size (llvm-mc: ldrb w0, [x0, #0xfff] is 397ffc00, ...).
        for (kind, word, x, expected) in [
            (RelocKind::Ldst8AbsLo12Nc, LDRB_W0, 0xfff, 0x397f_fc00),
            (RelocKind::Ldst16AbsLo12Nc, LDRH_W0, 0xffe, 0x795f_fc00),
            (RelocKind::Ldst32AbsLo12Nc, LDR_W0, 0xffc, 0xb94f_fc00),
            (RelocKind::Ldst64AbsLo12Nc, LDR_X0, 0xff8, 0xf947_fc00),
            (RelocKind::Ldst128AbsLo12Nc, LDR_Q0, 0xff0, 0x3dc3_fc00),
        ] {
            assert_eq!(insn(kind, word, 0, page + x, 0), Ok(expected), "{kind}");
            // The next page starts again at 0; only X[11:0] counts.
            let next = (0x1000 - x) as i64;
            assert_eq!(insn(kind, word, 0, page + x, next), Ok(word), "{kind}");
        }
        // A middle offset, with Rn/Rt kept: ldr x1, [x2, #0x128].
        assert_eq!(
            insn(
                RelocKind::Ldst64AbsLo12Nc,
                LDR_X0 | 2 << 5 | 1,
                0,
                page,
                0x128
            ),
            Ok(LDR_X0 | 0x25 << 10 | 2 << 5 | 1)
        );
    }

    #[test]
    fn ldst_lo12_refuses_misaligned_offsets() {
        let page = 0x4020_0000u64;
        for (kind, word, size) in [
            (RelocKind::Ldst16AbsLo12Nc, LDRH_W0, 2u64),
            (RelocKind::Ldst32AbsLo12Nc, LDR_W0, 4),
            (RelocKind::Ldst64AbsLo12Nc, LDR_X0, 8),
            (RelocKind::Ldst128AbsLo12Nc, LDR_Q0, 16),
        ] {
            for low in 1..size {
                let x = page + 0x100 + low;
                assert_eq!(insn(kind, word, 0, x, 0), misaligned(kind, i128::from(x)));
                // Through the addend too.
                assert_eq!(
                    insn(kind, word, 0, page, (0x100 + low) as i64),
                    misaligned(kind, i128::from(x))
                );
            }
            assert!(insn(kind, word, 0, page + size, 0).is_ok(), "{kind}");
        }
        // A byte access has no alignment.
        for low in 0..16 {
            assert_eq!(
                insn(RelocKind::Ldst8AbsLo12Nc, LDRB_W0, 0, page + low, 0),
                Ok(LDRB_W0 | (low as u32) << 10)
            );
        }
    }

    #[test]
    fn call26_and_jump26_limits() {
        let p = 0x4000_0000;
        for (kind, word) in [(RelocKind::Call26, BL), (RelocKind::Jump26, B)] {
            let top = 128 * M;
            // bl #0x7fffffc (97ffffff less the opcode difference): imm26 all ones but the sign.
            assert_eq!(
                insn(kind, word, p, p + top - 4, 0),
                Ok(word | 0x01ff_ffff),
                "{kind}"
            );
            assert_eq!(
                insn(kind, word, p, p - top, 0),
                Ok(word | 0x0200_0000),
                "{kind}"
            );
            assert_eq!(
                insn(kind, word, p, p - 4, 0),
                Ok(word | 0x03ff_ffff),
                "{kind}"
            );
            assert_eq!(insn(kind, word, p, p, 0), Ok(word), "{kind}");
            assert_eq!(insn(kind, word, p, p + top, 0), out_of_range(kind, 1 << 27));
            assert_eq!(
                insn(kind, word, p, p - top - 4, 0),
                out_of_range(kind, -(1 << 27) - 4)
            );
        }
        // llvm-mc: bl #0x7fffffc is 95ffffff, bl #-0x8000000 96000000, b #0x7fffffc 15ffffff,
        // b #-0x8000000 16000000.
        let call = RelocKind::Call26;
        assert_eq!(insn(call, BL, p, p + 128 * M - 4, 0), Ok(0x95ff_ffff));
        assert_eq!(insn(call, BL, p, p - 128 * M, 0), Ok(0x9600_0000));
        let jump = RelocKind::Jump26;
        assert_eq!(insn(jump, B, p, p + 128 * M - 4, 0), Ok(0x15ff_ffff));
        assert_eq!(insn(jump, B, p, p - 128 * M, 0), Ok(0x1600_0000));
        // The usual call: S + A - P with A = 0 and a target 0x1234 bytes ahead.
        assert_eq!(insn(call, BL, p, p + 0x1234, 0), Ok(BL | 0x48d));
    }

    #[test]
    fn condbr19_limits_keep_the_condition_and_register() {
        let kind = RelocKind::CondBr19;
        let p = 0x4000_0000;
        // b.ne #0xffffc (547fffe1) and b.ne #-0x100000 (54800001): the condition (ne = 1) kept.
        assert_eq!(insn(kind, B_EQ | 1, p, p + M - 4, 0), Ok(0x547f_ffe1));
        assert_eq!(insn(kind, B_EQ | 1, p, p - M, 0), Ok(0x5480_0001));
        // cbz x0, #-0x100000 (b4800000).
        assert_eq!(insn(kind, CBZ_X0, p, p - M, 0), Ok(0xb480_0000));
        // b.eq to the next instruction, through the addend.
        assert_eq!(insn(kind, B_EQ, p, p, 4), Ok(B_EQ | 1 << 5));
        assert_eq!(insn(kind, B_EQ, p, p + M, 0), out_of_range(kind, 1 << 20));
        assert_eq!(
            insn(kind, CBZ_X0, p, p - M - 4, 0),
            out_of_range(kind, -(1 << 20) - 4)
        );
    }

    #[test]
    fn tstbr14_limits_keep_the_bit_number_and_register() {
        let kind = RelocKind::TstBr14;
        let p = 0x4000_0000;
        // tbnz x3, #37, #0x7ffc (b72bffe3), from tbnz x3, #37, #0 (b7280003): b5, b40, Rt kept.
        assert_eq!(
            insn(kind, 0xb728_0003, p, p + 32 * K - 4, 0),
            Ok(0xb72b_ffe3)
        );
        // tbz w0, #0, #-0x8000 (36040000).
        assert_eq!(insn(kind, TBZ_X0_0, p, p - 32 * K, 0), Ok(0x3604_0000));
        assert_eq!(
            insn(kind, TBZ_X0_0, p, p + 32 * K, 0),
            out_of_range(kind, 1 << 15)
        );
        assert_eq!(
            insn(kind, TBZ_X0_0, p, p - 32 * K - 4, 0),
            out_of_range(kind, -(1 << 15) - 4)
        );
    }

    #[test]
    fn branches_refuse_offsets_not_a_multiple_of_four() {
        let p = 0x4000_0000;
        for (kind, word) in [
            (RelocKind::Call26, BL),
            (RelocKind::Jump26, B),
            (RelocKind::CondBr19, B_EQ),
            (RelocKind::TstBr14, TBZ_X0_0),
        ] {
            for off in [1i64, 2, 3, -1, -2, -3, 0x101] {
                assert_eq!(
                    insn(kind, word, p, p, off),
                    misaligned(kind, i128::from(off)),
                    "{kind} {off}"
                );
            }
            // P misaligned is the same as S misaligned: X is what counts.
            assert_eq!(insn(kind, word, p + 2, p, 0), misaligned(kind, -2));
            assert_eq!(insn(kind, word, p + 2, p, 2), Ok(word), "{kind}");
        }
        // The others have no alignment rule.
        assert!(insn(RelocKind::AdrPrelLo21, ADR_X0, p, p + 3, 0).is_ok());
        assert!(data(RelocKind::Prel32, p, p + 3, 0).is_ok());
    }

    #[test]
    fn short_places_are_refused_and_untouched() {
        for kind in RelocKind::ALL {
            let width = kind.width();
            for len in 0..width {
                let mut place = [0x77u8; 8];
                let place = &mut place[..len];
                assert_eq!(
                    apply(kind, place, 0, 0, 0),
                    Err(RelocError::PlaceTooShort { kind, len }),
                    "{kind} {len}"
                );
                assert!(place.iter().all(|&b| b == 0x77), "{kind}");
            }
        }
    }

    #[test]
    fn only_the_first_width_bytes_are_touched() {
        for kind in RelocKind::ALL {
            let mut place = [0u8; 24];
            // S + A = 2^64 - 1 - 0xfff: every field but the low-12 ones gets ones.
            let result = apply(kind, &mut place, 0, u64::MAX - 0xfff, 0);
            assert!(place[kind.width()..].iter().all(|&b| b == 0), "{kind}");
            if result.is_ok() {
                // Something was written (S + A - P etc. with all ones above bit 11).
                let written = place[..kind.width()].iter().any(|&b| b != 0);
                let low12 = matches!(
                    kind,
                    RelocKind::AddAbsLo12Nc
                        | RelocKind::Ldst8AbsLo12Nc
                        | RelocKind::Ldst16AbsLo12Nc
                        | RelocKind::Ldst32AbsLo12Nc
                        | RelocKind::Ldst64AbsLo12Nc
                        | RelocKind::Ldst128AbsLo12Nc
                        | RelocKind::None
                );
                assert_eq!(written, !low12, "{kind}");
            }
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = RelocError::OutOfRange {
            kind: RelocKind::Call26,
            value: -(1 << 27) - 4,
        };
        assert_eq!(
            alloc::format!("{e}"),
            "R_AARCH64_CALL26: value -0x8000004 out of range [-0x8000000, 0x8000000)"
        );
        let e = RelocError::Misaligned {
            kind: RelocKind::Ldst64AbsLo12Nc,
            value: 0x1004,
        };
        assert_eq!(
            alloc::format!("{e}"),
            "R_AARCH64_LDST64_ABS_LO12_NC: value 0x1004 is not a multiple of 8"
        );
        let e = RelocError::PlaceTooShort {
            kind: RelocKind::Abs64,
            len: 3,
        };
        assert_eq!(
            alloc::format!("{e}"),
            "R_AARCH64_ABS64: writes 8 bytes, the place has 3"
        );
        let e: &dyn core::error::Error = &e;
        assert!(e.source().is_none());
    }

    /// What `ld.lld` (rust-lld 1.95) wrote for the same relocations: an independent
    /// implementation of the same tables. The object was assembled by llvm-mc and linked with
    /// `-Ttext=0x210000 -Tdata=0x300000 --defsym near=0x217ff0 --defsym far=0xf2345789
    /// --defsym far8=0xf2345128 --defsym big=0x800123456789 --defsym far16=0x7ffe`.
    #[test]
    fn matches_what_lld_writes() {
        let (near, far, far8, big) = (0x21_7ff0, 0xf234_5789, 0xf234_5128, 0x8001_2345_6789);
        // (kind, word as assembled, P, S, A, word as linked)
        let text: [(RelocKind, u32, u64, u64, i64, u32); 14] = [
            (RelocKind::Call26, BL, 0x21_0000, near, 0, 0x9400_1ffc), // bl near
            (RelocKind::Jump26, B, 0x21_0004, near, -0x10, 0x1400_1ff7), // b near-0x10
            (
                RelocKind::CondBr19,
                0x5400_000b,
                0x21_0008,
                near,
                0,
                0x5403_ff4b,
            ), // b.lt near
            (
                RelocKind::TstBr14,
                0x3628_0003,
                0x21_000c,
                near,
                0,
                0x362b_ff23,
            ), // tbz w3, #5
            (
                RelocKind::AdrPrelLo21,
                ADR_X0,
                0x21_0010,
                near,
                1,
                0x3003_ff00,
            ), // adr x0, near+1
            (
                RelocKind::AdrPrelPgHi21,
                ADRP_X0,
                0x21_0014,
                far,
                0,
                0xb079_09a0,
            ),
            (
                RelocKind::AddAbsLo12Nc,
                ADD_X0,
                0x21_0018,
                far,
                0,
                0x911e_2400,
            ),
            (
                RelocKind::Ldst8AbsLo12Nc,
                LDRB_W0,
                0x21_001c,
                far,
                0,
                0x395e_2400,
            ),
            (
                RelocKind::MovwUabsG2,
                0xd2c0_0000,
                0x21_0020,
                big,
                0,
                0xd2d0_0020,
            ),
            (
                RelocKind::MovwUabsG1Nc,
                0xf2a0_0000,
                0x21_0024,
                big,
                0,
                0xf2a4_68a0,
            ),
            (
                RelocKind::Ldst64AbsLo12Nc,
                0xf940_0041,
                0x21_0028,
                far8,
                0,
                0xf940_9441,
            ),
            (
                RelocKind::MovwUabsG3,
                MOVZ_X0_48,
                0x21_002c,
                big,
                0,
                MOVZ_X0_48,
            ),
            (
                RelocKind::MovwUabsG0Nc,
                0xf280_0000,
                0x21_0030,
                big,
                0,
                0xf28c_f120,
            ),
            (
                RelocKind::AdrPrelPgHi21Nc,
                ADRP_X0 | 4,
                0x21_0034,
                far,
                0x1000,
                0xd079_09a4,
            ),
        ];
        for (kind, word, p, s, a, linked) in text {
            assert_eq!(insn(kind, word, p, s, a), Ok(linked), "{kind}");
        }
        let data_cases: [(RelocKind, u64, u64, i64, &[u8]); 4] = [
            (
                RelocKind::Abs64,
                0x30_0000,
                big,
                5,
                &[0x8e, 0x67, 0x45, 0x23, 1, 0x80, 0, 0],
            ),
            (
                RelocKind::Prel32,
                0x30_0008,
                near,
                0,
                &[0xe8, 0x7f, 0xf1, 0xff],
            ),
            (RelocKind::Abs16, 0x30_000c, 0x7ffe, 0, &[0xfe, 0x7f]),
            (
                RelocKind::Abs32,
                0x30_000e,
                near,
                -0x21_0000,
                &[0xf0, 0x7f, 0, 0],
            ),
        ];
        for (kind, p, s, a, linked) in data_cases {
            assert_eq!(data(kind, p, s, a).as_deref(), Ok(linked), "{kind}");
        }
    }

    // The reference model for the property tests, from the AAELF64 columns.

    /// X, exactly.
    fn model_x(kind: RelocKind, p: u64, s: u64, a: i64) -> i128 {
        let (p, sa) = (i128::from(p), i128::from(s) + i128::from(a));
        match kind {
            RelocKind::Prel64
            | RelocKind::Prel32
            | RelocKind::Prel16
            | RelocKind::AdrPrelLo21
            | RelocKind::TstBr14
            | RelocKind::CondBr19
            | RelocKind::Jump26
            | RelocKind::Call26 => sa - p,
            RelocKind::AdrPrelPgHi21 | RelocKind::AdrPrelPgHi21Nc => {
                sa.div_euclid(4096) * 4096 - p.div_euclid(4096) * 4096
            }
            _ => sa,
        }
    }

    /// The check: `Some((lo, end))` for lo <= X < end.
    fn model_range(kind: RelocKind) -> Option<(i128, i128)> {
        let r = |lo: i128, end: i128| Some((lo, end));
        match kind {
            RelocKind::Abs32 | RelocKind::Prel32 => r(-(1 << 31), 1 << 32),
            RelocKind::Abs16 | RelocKind::Prel16 => r(-(1 << 15), 1 << 16),
            RelocKind::MovwUabsG0 => r(0, 1 << 16),
            RelocKind::MovwUabsG1 => r(0, 1 << 32),
            RelocKind::MovwUabsG2 => r(0, 1 << 48),
            RelocKind::AdrPrelLo21 | RelocKind::CondBr19 => r(-(1 << 20), 1 << 20),
            RelocKind::AdrPrelPgHi21 => r(-(1 << 32), 1 << 32),
            RelocKind::TstBr14 => r(-(1 << 15), 1 << 15),
            RelocKind::Jump26 | RelocKind::Call26 => r(-(1 << 27), 1 << 27),
            _ => None,
        }
    }

    fn model_align(kind: RelocKind) -> i128 {
        match kind {
            RelocKind::TstBr14
            | RelocKind::CondBr19
            | RelocKind::Jump26
            | RelocKind::Call26
            | RelocKind::Ldst32AbsLo12Nc => 4,
            RelocKind::Ldst16AbsLo12Nc => 2,
            RelocKind::Ldst64AbsLo12Nc => 8,
            RelocKind::Ldst128AbsLo12Nc => 16,
            _ => 1,
        }
    }

    /// For an instruction: the immediate's bits in the word, and the `(lsb, width)` of X they
    /// hold, lsb first.
    fn model_field(kind: RelocKind) -> (u32, u32, u32) {
        // (mask in the instruction, X's lowest bit held, bits held)
        match kind {
            RelocKind::MovwUabsG0 | RelocKind::MovwUabsG0Nc => (0x001f_ffe0, 0, 16),
            RelocKind::MovwUabsG1 | RelocKind::MovwUabsG1Nc => (0x001f_ffe0, 16, 16),
            RelocKind::MovwUabsG2 | RelocKind::MovwUabsG2Nc => (0x001f_ffe0, 32, 16),
            RelocKind::MovwUabsG3 => (0x001f_ffe0, 48, 16),
            RelocKind::AdrPrelLo21 => (0x60ff_ffe0, 0, 21),
            RelocKind::AdrPrelPgHi21 | RelocKind::AdrPrelPgHi21Nc => (0x60ff_ffe0, 12, 21),
            RelocKind::AddAbsLo12Nc | RelocKind::Ldst8AbsLo12Nc => (0x003f_fc00, 0, 12),
            RelocKind::Ldst16AbsLo12Nc => (0x003f_fc00, 1, 11),
            RelocKind::Ldst32AbsLo12Nc => (0x003f_fc00, 2, 10),
            RelocKind::Ldst64AbsLo12Nc => (0x003f_fc00, 3, 9),
            RelocKind::Ldst128AbsLo12Nc => (0x003f_fc00, 4, 8),
            RelocKind::TstBr14 => (0x0007_ffe0, 2, 14),
            RelocKind::CondBr19 => (0x00ff_ffe0, 2, 19),
            RelocKind::Jump26 | RelocKind::Call26 => (0x03ff_ffff, 2, 26),
            _ => (0, 0, 0),
        }
    }

    /// The raw immediate of `word` for `kind`, unsigned, lowest bit first.
    fn read_field(kind: RelocKind, word: u32) -> u64 {
        let w = u64::from(word);
        match kind {
            RelocKind::AdrPrelLo21 | RelocKind::AdrPrelPgHi21 | RelocKind::AdrPrelPgHi21Nc => {
                ((w >> 29) & 3) | ((w >> 5) & 0x7_ffff) << 2
            }
            RelocKind::Jump26 | RelocKind::Call26 => w & 0x03ff_ffff,
            RelocKind::AddAbsLo12Nc
            | RelocKind::Ldst8AbsLo12Nc
            | RelocKind::Ldst16AbsLo12Nc
            | RelocKind::Ldst32AbsLo12Nc
            | RelocKind::Ldst64AbsLo12Nc
            | RelocKind::Ldst128AbsLo12Nc => (w >> 10) & 0xfff,
            _ => {
                let (mask, _, _) = model_field(kind);
                (w & u64::from(mask)) >> 5
            }
        }
    }

    /// Checks `after` (the place once `kind` applied X to `before`) holds X and nothing else
    /// changed.
    fn check_encoding(kind: RelocKind, before: &[u8], after: &[u8], x: i128) {
        let width = kind.width();
        assert_eq!(before[width..], after[width..], "{kind}: past the place");
        let bits = |lo: u32, n: u32| ((x >> lo) & ((1i128 << n) - 1)) as u64;
        match kind {
            RelocKind::None => assert_eq!(before, after),
            RelocKind::Abs64
            | RelocKind::Abs32
            | RelocKind::Abs16
            | RelocKind::Prel64
            | RelocKind::Prel32
            | RelocKind::Prel16 => {
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(&after[..width]);
                let v = u64::from_le_bytes(v);
                assert_eq!(v, bits(0, 8 * width as u32), "{kind}");
                if let Some((lo, _)) = model_range(kind) {
                    // The field read as signed (X < 0) or unsigned (X >= 0) gives back X.
                    let back = if x < 0 {
                        i128::from(v) - (1 << (8 * width))
                    } else {
                        i128::from(v)
                    };
                    assert!(lo <= x);
                    assert_eq!(back, x, "{kind}");
                }
            }
            _ => {
                let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let (old, new) = (word(before), word(after));
                let (mask, lsb, n) = model_field(kind);
                assert_eq!(old & !mask, new & !mask, "{kind}: other bits changed");
                let field = read_field(kind, new);
                assert_eq!(field, bits(lsb, n), "{kind}");
                if let Some((lo, _)) = model_range(kind) {
                    // The field decoded (signed for PC-relative kinds) gives back X.
                    let decoded = if lo < 0 {
                        let signed = (i128::from(field) << (128 - n)) >> (128 - n);
                        signed << lsb
                    } else {
                        i128::from(field) << lsb
                    };
                    // MOVW holds X's group: the bits below it belong to other instructions.
                    assert_eq!(decoded, x & !((1 << lsb) - 1), "{kind}");
                    assert_eq!(decoded >> lsb, x >> lsb, "{kind}");
                }
            }
        }
    }

    fn any_kind() -> impl Strategy<Value = RelocKind> {
        (0..RelocKind::ALL.len()).prop_map(|i| RelocKind::ALL[i])
    }

    /// Values near the interesting edges as well as anywhere.
    fn edgy_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u32..64, -8i64..8).prop_map(|(b, d)| (1u64 << b).wrapping_add(d as u64)),
            (0u64..1 << 40),
        ]
    }

    proptest! {
        /// `apply` never panics, agrees with the model on every error and writes exactly X's bits
        /// on success.
        #[test]
        fn apply_agrees_with_the_model(
            kind in any_kind(),
            p in edgy_u64(),
            s in edgy_u64(),
            a in any::<i64>(),
            place in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let before = place.clone();
            let mut after = place;
            let result = apply(kind, &mut after, p, s, a);
            let x = model_x(kind, p, s, a);
            let expected = if before.len() < kind.width() {
                Err(RelocError::PlaceTooShort { kind, len: before.len() })
            } else if x % model_align(kind) != 0 {
                Err(RelocError::Misaligned { kind, value: x })
            } else if model_range(kind).is_some_and(|(lo, end)| x < lo || x >= end) {
                Err(RelocError::OutOfRange { kind, value: x })
            } else {
                Ok(())
            };
            prop_assert_eq!(result, expected);
            if result.is_err() {
                prop_assert_eq!(&after, &before);
            } else {
                check_encoding(kind, &before, &after, x);
            }
        }

        /// For every checked kind, a value anywhere in its range (aligned) is accepted and the
        /// field gives it back.
        #[test]
        fn in_range_values_round_trip(
            kind in any_kind(),
            pick in any::<u64>(),
            p in 0u64..1 << 62,
            a in -(1i64 << 30)..1 << 30,
            word in any::<u32>(),
        ) {
            let Some((lo, end)) = model_range(kind) else { return Ok(()) };
            let align = model_align(kind);
            let span = (end - lo) / align;
            let x = lo + (i128::from(pick) % span) * align;
            // S from the X wanted: X = S + A (- P), or for ADRP a byte of the wanted page.
            let sa = match kind {
                RelocKind::AdrPrelPgHi21 => {
                    x.div_euclid(4096) * 4096 + i128::from(p & !0xfff) + i128::from(pick & 0xfff)
                }
                _ if model_x(kind, 1, 0, 0) == -1 => x + i128::from(p),
                _ => x,
            };
            // S >= 0: an addend above S + A is cut down to it.
            let a = if sa < i128::from(a) { sa as i64 } else { a };
            let s = (sa - i128::from(a)) as u64;
            let before: Vec<u8> = word.to_le_bytes().into_iter().chain(GUARD).collect();
            let mut after = before.clone();
            prop_assert_eq!(apply(kind, &mut after, p, s, a), Ok(()));
            check_encoding(kind, &before, &after, model_x(kind, p, s, a));
        }
    }
}
