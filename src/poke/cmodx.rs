//! Concurrent modification and execution (CMODX): which instruction words may be replaced while
//! another CPU may be executing them.
//!
//! Arm ARM B2.2.5: when one CPU writes an instruction that another CPU executes without explicit
//! synchronisation, the executing CPU may behave as if it ran *any* instruction sequence reachable at
//! that exception level — unless the instruction before and the instruction after the modification are
//! both one of B, BL, BRK, HVC, ISB, NOP, SMC or SVC. Then it executes either the old or the new
//! instruction. The write must be a single aligned 32-bit store, followed by the cache maintenance of
//! B2.4.4 (see [`super::cache`]); the other CPUs pick up the new word at their next context
//! synchronisation event.
//!
//! Any other pair (for example RET to B, or MOVZ to MOVZ) needs every other CPU stopped while the word
//! changes: the batch (stop-the-world) path, as Linux's `aarch64_insn_patch_text` does with
//! `stop_machine`.

use core::fmt;

use super::PokeError;

/// An instruction of the CMODX set (Arm ARM B2.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmodxInsn {
    /// `B imm26`: mask 0xFC00_0000, value 0x1400_0000 (any offset).
    B,
    /// `BL imm26`: mask 0xFC00_0000, value 0x9400_0000 (any offset).
    Bl,
    /// `BRK #imm16`: mask 0xFFE0_001F, value 0xD420_0000 (any imm16).
    Brk,
    /// `HVC #imm16`: mask 0xFFE0_001F, value 0xD400_0002.
    Hvc,
    /// `ISB {option}`: mask 0xFFFF_F0FF, value 0xD503_30DF. CRm is the option; only SY (0b1111) is
    /// named, the other values are reserved but still encode the ISB instruction (the same mask as
    /// Linux's `aarch64_insn_is_isb`).
    Isb,
    /// `NOP`: exactly 0xD503_201F (HINT #0). Other hints — YIELD, WFE, BTI, PACIASP, and the
    /// unallocated hints that execute as NOP — are different instructions and are not in the set.
    Nop,
    /// `SMC #imm16`: mask 0xFFE0_001F, value 0xD400_0003.
    Smc,
    /// `SVC #imm16`: mask 0xFFE0_001F, value 0xD400_0001.
    Svc,
}

/// (instruction, mask of its fixed bits, value of those bits), from the Arm ARM C6.2 encodings; the
/// same masks as Linux's `arch/arm64/include/asm/insn.h`. The patterns are disjoint (tested).
const ENCODINGS: [(CmodxInsn, u32, u32); 8] = [
    (CmodxInsn::B, 0xfc00_0000, 0x1400_0000),
    (CmodxInsn::Bl, 0xfc00_0000, 0x9400_0000),
    (CmodxInsn::Brk, 0xffe0_001f, 0xd420_0000),
    (CmodxInsn::Hvc, 0xffe0_001f, 0xd400_0002),
    (CmodxInsn::Isb, 0xffff_f0ff, 0xd503_30df),
    (CmodxInsn::Nop, 0xffff_ffff, 0xd503_201f),
    (CmodxInsn::Smc, 0xffe0_001f, 0xd400_0003),
    (CmodxInsn::Svc, 0xffe0_001f, 0xd400_0001),
];

impl CmodxInsn {
    /// Every member of the set.
    pub const ALL: [Self; 8] = [
        Self::B,
        Self::Bl,
        Self::Brk,
        Self::Hvc,
        Self::Isb,
        Self::Nop,
        Self::Smc,
        Self::Svc,
    ];

    /// Which member of the set `insn` is, or `None` if it is outside the set.
    pub const fn classify(insn: u32) -> Option<Self> {
        let mut i = 0;
        while i < ENCODINGS.len() {
            let (class, mask, value) = ENCODINGS[i];
            if insn & mask == value {
                return Some(class);
            }
            i += 1;
        }
        None
    }

    /// The instruction's name as the Arm ARM writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::B => "B",
            Self::Bl => "BL",
            Self::Brk => "BRK",
            Self::Hvc => "HVC",
            Self::Isb => "ISB",
            Self::Nop => "NOP",
            Self::Smc => "SMC",
            Self::Svc => "SVC",
        }
    }
}

impl fmt::Display for CmodxInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the word `old` may be replaced by `new` while other CPUs may execute it (Arm ARM B2.2.5):
/// both must be in the CMODX set. Otherwise [`PokeError::NotCmodxSafe`], naming both instructions:
/// the caller must take the batch (stop-the-world) path instead.
pub fn check_pair(old: u32, new: u32) -> Result<(), PokeError> {
    if is_cmodx(old) && is_cmodx(new) {
        Ok(())
    } else {
        Err(PokeError::NotCmodxSafe { old, new })
    }
}

/// Whether `insn` is in the CMODX set: [`CmodxInsn::classify`] is `Some`, without naming the
/// member. The live-patch path asks this for two words per patch, so the commonest members come
/// first (B and BL in one test: they differ only in bit 31; then NOP), and the exception
/// generators share one mask.
#[inline]
pub const fn is_cmodx(insn: u32) -> bool {
    // B, BL: bits [30:26] = 0b00101.
    if insn & 0x7c00_0000 == 0x1400_0000 || insn == 0xd503_201f {
        return true;
    }
    // BRK (0xd420_0000), and SVC, HVC, SMC (0xd400_0001..=3): the same fixed bits.
    let exception = insn & 0xffe0_001f;
    exception == 0xd420_0000
        || (exception & !3 == 0xd400_0000 && exception != 0xd400_0000)
        || insn & 0xffff_f0ff == 0xd503_30df
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poke::insn::{self, X0, X16};
    use alloc::format;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn is_cmodx_agrees_with_classify(word in any::<u32>(), member in 0usize..8, low in any::<u32>()) {
            prop_assert_eq!(is_cmodx(word), CmodxInsn::classify(word).is_some());
            // Near the set too: each member's fixed bits with random operand bits.
            let (_, mask, value) = ENCODINGS[member];
            let near = value | (low & !mask);
            prop_assert!(is_cmodx(near));
            for bit in 0..32 {
                let flipped = near ^ (1 << bit);
                prop_assert_eq!(is_cmodx(flipped), CmodxInsn::classify(flipped).is_some());
            }
        }
    }

    #[test]
    fn classifies_the_set() {
        let cases = [
            (insn::b(0, 0x100).unwrap(), CmodxInsn::B),
            (insn::b(0x100, 0).unwrap(), CmodxInsn::B),
            (insn::bl(0, 0x7ff_fffc).unwrap(), CmodxInsn::Bl),
            (insn::brk(0), CmodxInsn::Brk),
            (insn::brk(0xffff), CmodxInsn::Brk),
            (insn::hvc(0), CmodxInsn::Hvc),
            (insn::hvc(0xffff), CmodxInsn::Hvc),
            (insn::isb(), CmodxInsn::Isb),
            (0xd503_30df, CmodxInsn::Isb), // `isb #0` (llvm-mc)
            (insn::nop(), CmodxInsn::Nop),
            (insn::smc(0x1234), CmodxInsn::Smc),
            (insn::svc(0), CmodxInsn::Svc),
            (insn::svc(0xffff), CmodxInsn::Svc),
        ];
        for (word, class) in cases {
            assert_eq!(CmodxInsn::classify(word), Some(class), "{word:#010x}");
        }
    }

    #[test]
    fn rejects_neighbours_of_the_set() {
        let outside = [
            insn::ret(),
            insn::br(X16).unwrap(),
            insn::blr(X16).unwrap(),
            insn::movz(X0, 1, 0).unwrap(),
            insn::add_imm(X0, X0, 1, false).unwrap(),
            0x0000_0000, // UDF #0
            0xd503_203f, // YIELD: a hint, but not NOP
            0xd503_233f, // HINT #25 (PACIASP)
            0xd503_241f, // BTI
            0xd503_3f9f, // DSB SY
            0xd503_3fbf, // DMB SY
            0xd440_0000, // HLT #0
            0x5400_0000, // B.EQ: conditional branches are not in the set
            0xb400_0000, // CBZ X0
            0xd400_0000, // exception-generation class with LL = 00: unallocated
            0xd420_0001, // BRK pattern with LL = 01: unallocated
            0xd4a0_0001, // DCPS1: exception-generation class, not in the set
        ];
        for word in outside {
            assert_eq!(CmodxInsn::classify(word), None, "{word:#010x}");
        }
    }

    #[test]
    fn pairs() {
        let b = insn::b(0x1000, 0x2000).unwrap();
        assert_eq!(check_pair(insn::nop(), b), Ok(()));
        assert_eq!(check_pair(b, insn::nop()), Ok(()));
        assert_eq!(
            check_pair(insn::brk(0x3e8), insn::bl(0, 8).unwrap()),
            Ok(())
        );
        assert_eq!(check_pair(insn::isb(), insn::svc(0)), Ok(()));
        assert_eq!(
            check_pair(insn::ret(), b),
            Err(PokeError::NotCmodxSafe {
                old: insn::ret(),
                new: b
            })
        );
        assert!(check_pair(b, insn::ret()).is_err());
        assert!(check_pair(insn::ret(), insn::ret()).is_err());
    }

    #[test]
    fn refusal_names_both_and_points_to_batch_path() {
        let err = check_pair(insn::ret(), insn::nop()).unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains("0xd65f03c0 (RET)"), "{msg}");
        assert!(msg.contains("0xd503201f (NOP)"), "{msg}");
        assert!(msg.contains("B2.2.5"), "{msg}");
        assert!(msg.contains("batch (stop-the-world)"), "{msg}");
    }

    #[test]
    fn names_round_trip() {
        for class in CmodxInsn::ALL {
            assert_eq!(format!("{class}"), class.name());
            let (_, _, value) = ENCODINGS.iter().copied().find(|e| e.0 == class).unwrap();
            assert_eq!(CmodxInsn::classify(value), Some(class));
        }
    }

    proptest! {
        #[test]
        fn patterns_are_disjoint(word: u32) {
            let matches = ENCODINGS.iter().filter(|&&(_, m, v)| word & m == v).count();
            prop_assert!(matches <= 1, "{:#010x} matches {} patterns", word, matches);
        }

        #[test]
        fn any_b_or_bl_offset_is_in_the_set(imm26 in 0u32..(1 << 26)) {
            prop_assert_eq!(CmodxInsn::classify(0x1400_0000 | imm26), Some(CmodxInsn::B));
            prop_assert_eq!(CmodxInsn::classify(0x9400_0000 | imm26), Some(CmodxInsn::Bl));
        }
    }
}
