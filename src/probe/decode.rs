//! What a probed instruction needs, portable: executed out of line (copied to a slot, followed by
//! a branch back), simulated (it reads or writes the PC, so a copy would compute from the wrong
//! address), or refused (it cannot run anywhere but in place). Linux arm64
//! `arm_probe_decode_insn` and `simulate-insn.c` make the same three choices.
//!
//! Simulated: `B`, `BL`, `B.cond` and `BC.cond`, `CBZ`/`CBNZ`, `TBZ`/`TBNZ`, `ADR`, `ADRP`,
//! `LDR`/`LDRSW` (literal) and `PRFM` (literal), and the register branches `BR`, `BLR`, `RET`
//! (`BLR` writes the return address). Refused:
//! - load/store exclusives (a breakpoint between the load and the store clears the monitor, so
//!   the pair never succeeds, Arm ARM B2.9.5; the registry also refuses any instruction between
//!   an exclusive load and its store);
//! - exception-generating instructions (`BRK`, `HLT`, `SVC`, `HVC`, `SMC`, `DCPSx`);
//! - every other branch to a register (`ERET`, `ERETAA/AB`, `DRPS`, and the pointer-authenticated
//!   `BRAA`, `BLRAA`, `RETAA` forms: an out-of-line `BLRAA` would return into the slot);
//! - system register moves (`MRS`, `MSR`, `MSR` to PSTATE fields): the breakpoint itself changes
//!   ELR, SPSR, ESR and FAR, so an out-of-line copy would read or overwrite the exception's;
//! - SIMD literal loads.
//!
//! Everything else executes out of line unchanged.

/// The registers a probe handler sees and a simulation changes: x0–x30, the PC, and PSTATE (for
/// the condition flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// x0–x30.
    pub x: [u64; 31],
    /// The probed instruction's address on entry; where execution goes on after a simulation.
    pub pc: u64,
    /// PSTATE as saved (SPSR): N, Z, C, V in bits 31..28.
    pub pstate: u64,
}

impl Regs {
    /// Register `n`, with 31 the zero register (as every simulated instruction reads it).
    pub fn get(&self, n: u8) -> u64 {
        self.x.get(n as usize).copied().unwrap_or(0)
    }

    /// Writes register `n`; 31 (the zero register) discards the value.
    pub fn set(&mut self, n: u8, value: u64) {
        if let Some(x) = self.x.get_mut(n as usize) {
            *x = value;
        }
    }
}

/// How a simulated literal load extends its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralKind {
    /// `LDR Wt`: 32 bits, zero-extended.
    W,
    /// `LDR Xt`: 64 bits.
    X,
    /// `LDRSW Xt`: 32 bits, sign-extended.
    Sw,
    /// `PRFM` (literal): a hint; nothing loaded.
    Prefetch,
}

/// A PC-relative instruction, decoded at its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simulated {
    /// `B target`.
    B(u64),
    /// `BL target`: x30 = pc + 4.
    Bl(u64),
    /// `B.cond target`.
    BCond {
        /// The condition code (0–15).
        cond: u8,
        /// Where it branches.
        target: u64,
    },
    /// `CBZ`/`CBNZ`.
    Cbz {
        /// The register tested.
        rt: u8,
        /// 64-bit (`Xt`) or 32-bit (`Wt`).
        wide: bool,
        /// `CBNZ`.
        nonzero: bool,
        /// Where it branches.
        target: u64,
    },
    /// `TBZ`/`TBNZ`.
    Tbz {
        /// The register tested.
        rt: u8,
        /// The bit tested.
        bit: u8,
        /// `TBNZ`.
        nonzero: bool,
        /// Where it branches.
        target: u64,
    },
    /// `ADR`/`ADRP`: Xd = the address.
    Adr {
        /// The destination.
        rd: u8,
        /// The address it computes.
        value: u64,
    },
    /// `LDR`/`LDRSW`/`PRFM` (literal).
    Literal {
        /// The destination.
        rt: u8,
        /// The address loaded from.
        addr: u64,
        /// Width and extension.
        kind: LiteralKind,
    },
    /// `BR Xn`.
    Br(u8),
    /// `BLR Xn`: x30 = pc + 4.
    Blr(u8),
    /// `RET Xn`.
    Ret(u8),
}

/// Why an instruction cannot be probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A load or store exclusive.
    Exclusive,
    /// `BRK`, `HLT`, `SVC`, `HVC`, `SMC` or `DCPSx`.
    ExceptionGenerating,
    /// A branch to a register other than `BR`, `BLR`, `RET`: `ERET`, `DRPS`, or a
    /// pointer-authenticated form.
    ExceptionReturn,
    /// A system register move (`MRS`, `MSR`).
    SystemRegister,
    /// Between an exclusive load and its store-exclusive.
    InsideExclusive,
    /// A SIMD and FP literal load.
    SimdLiteral,
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Exclusive => {
                "a load/store exclusive (a breakpoint inside the pair clears the monitor)"
            }
            Self::ExceptionGenerating => "an exception-generating instruction",
            Self::ExceptionReturn => {
                "an exception return or pointer-authenticated branch to a register"
            }
            Self::SystemRegister => {
                "a system register move (the breakpoint changes ELR, SPSR, ESR and FAR)"
            }
            Self::InsideExclusive => {
                "between an exclusive load and its store (the breakpoint would clear the monitor)"
            }
            Self::SimdLiteral => "a SIMD and FP literal load",
        })
    }
}

/// What to do with a probed instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Copy it to a slot, followed by a branch back, and run it there.
    OutOfLine,
    /// Simulate it in the breakpoint handler.
    Simulate(Simulated),
    /// Cannot be probed.
    Refused(Refusal),
}

fn sext(value: u64, bits: u32) -> i64 {
    ((value << (64 - bits)) as i64) >> (64 - bits)
}

fn rel(pc: u64, imm: u64, bits: u32) -> u64 {
    pc.wrapping_add((sext(imm, bits) * 4) as u64)
}

/// Decodes `insn`, found at `pc`.
pub fn decode(insn: u32, pc: u64) -> Decoded {
    let i = u64::from(insn);
    let reg = |shift: u32| ((insn >> shift) & 0x1f) as u8;
    let imm19 = (i >> 5) & 0x7_ffff;
    let sim = Decoded::Simulate;
    match insn {
        _ if insn & 0xfc00_0000 == 0x1400_0000 => sim(Simulated::B(rel(pc, i & 0x3ff_ffff, 26))),
        _ if insn & 0xfc00_0000 == 0x9400_0000 => sim(Simulated::Bl(rel(pc, i & 0x3ff_ffff, 26))),
        // B.cond, and BC.cond (bit 4: FEAT_HBC, the same branch with a hint).
        _ if insn & 0xff00_0000 == 0x5400_0000 => sim(Simulated::BCond {
            cond: (insn & 0xf) as u8,
            target: rel(pc, imm19, 19),
        }),
        _ if insn & 0x7e00_0000 == 0x3400_0000 => sim(Simulated::Cbz {
            rt: reg(0),
            wide: insn >> 31 == 1,
            nonzero: insn >> 24 & 1 == 1,
            target: rel(pc, imm19, 19),
        }),
        _ if insn & 0x7e00_0000 == 0x3600_0000 => sim(Simulated::Tbz {
            rt: reg(0),
            bit: ((insn >> 31) << 5 | (insn >> 19) & 0x1f) as u8,
            nonzero: insn >> 24 & 1 == 1,
            target: rel(pc, (i >> 5) & 0x3fff, 14),
        }),
        _ if insn & 0x1f00_0000 == 0x1000_0000 => {
            let imm = (imm19 << 2) | (i >> 29) & 3;
            let value = if insn >> 31 == 1 {
                (pc & !0xfff).wrapping_add((sext(imm, 21) << 12) as u64)
            } else {
                pc.wrapping_add(sext(imm, 21) as u64)
            };
            sim(Simulated::Adr { rd: reg(0), value })
        }
        _ if insn & 0x3b00_0000 == 0x1800_0000 => {
            if insn >> 26 & 1 == 1 {
                return Decoded::Refused(Refusal::SimdLiteral);
            }
            let kind = match insn >> 30 {
                0 => LiteralKind::W,
                1 => LiteralKind::X,
                2 => LiteralKind::Sw,
                _ => LiteralKind::Prefetch,
            };
            sim(Simulated::Literal {
                rt: reg(0),
                addr: rel(pc, imm19, 19),
                kind,
            })
        }
        _ if insn & 0xffff_fc1f == 0xd61f_0000 => sim(Simulated::Br(reg(5))),
        _ if insn & 0xffff_fc1f == 0xd63f_0000 => sim(Simulated::Blr(reg(5))),
        _ if insn & 0xffff_fc1f == 0xd65f_0000 => sim(Simulated::Ret(reg(5))),
        // Every other unconditional branch to a register.
        _ if insn & 0xfe00_0000 == 0xd600_0000 => Decoded::Refused(Refusal::ExceptionReturn),
        // MRS and MSR (register): 1101 0101 00L1 ...; MSR (immediate) to PSTATE: op0 = 0, CRn = 4.
        _ if insn & 0xffd0_0000 == 0xd510_0000 => Decoded::Refused(Refusal::SystemRegister),
        _ if insn & 0xfff8_f01f == 0xd500_401f => Decoded::Refused(Refusal::SystemRegister),
        // Load/store exclusive: bits 29..24 = 001000 with o2 (bit 23) clear.
        _ if insn & 0x3f80_0000 == 0x0800_0000 => Decoded::Refused(Refusal::Exclusive),
        _ if insn & 0xff00_0000 == 0xd400_0000 => Decoded::Refused(Refusal::ExceptionGenerating),
        _ => Decoded::OutOfLine,
    }
}

/// Whether `insn` is an exclusive load (`LDXR`, `LDAXR`, `LDXP`, `LDAXP`, any size).
pub fn is_exclusive_load(insn: u32) -> bool {
    insn & 0x3f80_0000 == 0x0800_0000 && insn >> 22 & 1 == 1
}

/// Whether `insn` is a store-exclusive (`STXR`, `STLXR`, `STXP`, `STLXP`, any size).
pub fn is_exclusive_store(insn: u32) -> bool {
    insn & 0x3f80_0000 == 0x0800_0000 && insn >> 22 & 1 == 0
}

/// Whether condition `cond` holds for the flags in `pstate` (Arm ARM C1.2.4, `ConditionHolds`).
pub fn condition_holds(cond: u8, pstate: u64) -> bool {
    let n = pstate >> 31 & 1 == 1;
    let z = pstate >> 30 & 1 == 1;
    let c = pstate >> 29 & 1 == 1;
    let v = pstate >> 28 & 1 == 1;
    let holds = match cond >> 1 {
        0 => z,
        1 => c,
        2 => n,
        3 => v,
        4 => c && !z,
        5 => n == v,
        6 => n == v && !z,
        _ => true,
    };
    if cond & 1 == 1 && cond != 0xf {
        !holds
    } else {
        holds
    }
}

/// Runs `sim` on `regs` (whose `pc` is the instruction's address) and leaves `regs.pc` where
/// execution goes on. `load(addr, bytes)` reads memory for literal loads.
pub fn simulate(sim: Simulated, regs: &mut Regs, load: impl Fn(u64, usize) -> u64) {
    let next = regs.pc.wrapping_add(4);
    regs.pc = match sim {
        Simulated::B(target) => target,
        Simulated::Bl(target) => {
            regs.set(30, next);
            target
        }
        Simulated::BCond { cond, target } => {
            if condition_holds(cond, regs.pstate) {
                target
            } else {
                next
            }
        }
        Simulated::Cbz {
            rt,
            wide,
            nonzero,
            target,
        } => {
            let value = if wide {
                regs.get(rt)
            } else {
                regs.get(rt) & 0xffff_ffff
            };
            if (value != 0) == nonzero {
                target
            } else {
                next
            }
        }
        Simulated::Tbz {
            rt,
            bit,
            nonzero,
            target,
        } => {
            if (regs.get(rt) >> bit & 1 == 1) == nonzero {
                target
            } else {
                next
            }
        }
        Simulated::Adr { rd, value } => {
            regs.set(rd, value);
            next
        }
        Simulated::Literal { rt, addr, kind } => {
            match kind {
                LiteralKind::W => regs.set(rt, load(addr, 4) & 0xffff_ffff),
                LiteralKind::X => regs.set(rt, load(addr, 8)),
                LiteralKind::Sw => regs.set(rt, load(addr, 4) as u32 as i32 as i64 as u64),
                LiteralKind::Prefetch => {}
            }
            next
        }
        Simulated::Br(rn) | Simulated::Ret(rn) => regs.get(rn),
        Simulated::Blr(rn) => {
            let target = regs.get(rn);
            regs.set(30, next);
            target
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const PC: u64 = 0x4008_1000;

    fn run(insn: u32, regs: &mut Regs) {
        regs.pc = PC;
        match decode(insn, PC) {
            Decoded::Simulate(sim) => simulate(sim, regs, |addr, bytes| {
                assert_eq!(addr, PC + 0x40);
                if bytes == 8 {
                    0x8877_6655_4433_2211
                } else {
                    0x8000_0001
                }
            }),
            other => panic!("{insn:#010x}: {other:?}"),
        }
    }

    #[test]
    fn branches_go_where_the_instruction_would() {
        let mut r = Regs::default();
        run(0x1400_0010, &mut r); // b +0x40
        assert_eq!(r.pc, PC + 0x40);
        run(0x17ff_fff0, &mut r); // b -0x40
        assert_eq!(r.pc, PC - 0x40);
        run(0x9400_0010, &mut r); // bl +0x40
        assert_eq!((r.pc, r.x[30]), (PC + 0x40, PC + 4));
        r.x[3] = 0x1234;
        run(0xd61f_0060, &mut r); // br x3
        assert_eq!(r.pc, 0x1234);
        run(0xd63f_0060, &mut r); // blr x3
        assert_eq!((r.pc, r.x[30]), (0x1234, PC + 4));
        run(0xd65f_03c0, &mut r); // ret
        assert_eq!(r.pc, PC + 4);
    }

    #[test]
    fn conditional_branches_follow_flags_and_registers() {
        let mut r = Regs {
            pstate: 1 << 30, // Z
            ..Regs::default()
        };
        run(0x5400_0200, &mut r); // b.eq +0x40
        assert_eq!(r.pc, PC + 0x40);
        run(0x5400_0201, &mut r); // b.ne +0x40
        assert_eq!(r.pc, PC + 4);
        r.pstate = 1 << 31; // N, V clear: lt holds
        run(0x5400_020b, &mut r); // b.lt
        assert_eq!(r.pc, PC + 0x40);
        run(0x5400_020a, &mut r); // b.ge
        assert_eq!(r.pc, PC + 4);
        run(0x5400_020e, &mut r); // b.al
        assert_eq!(r.pc, PC + 0x40);
        run(0x5400_021b, &mut r); // bc.lt (FEAT_HBC): the same branch
        assert_eq!(r.pc, PC + 0x40);
        r.x[5] = 0x1_0000_0000;
        run(0xb400_0205, &mut r); // cbz x5, +0x40: not zero
        assert_eq!(r.pc, PC + 4);
        run(0x3400_0205, &mut r); // cbz w5: low 32 bits are zero
        assert_eq!(r.pc, PC + 0x40);
        run(0xb500_0205, &mut r); // cbnz x5
        assert_eq!(r.pc, PC + 0x40);
        r.x[7] = 1 << 33;
        run(0xb608_0207, &mut r); // tbz x7, #33, +0x40: set, not taken
        assert_eq!(r.pc, PC + 4);
        run(0xb708_0207, &mut r); // tbnz x7, #33
        assert_eq!(r.pc, PC + 0x40);
        run(0x3600_0207, &mut r); // tbz w7, #0
        assert_eq!(r.pc, PC + 0x40);
        // cbz xzr always branches.
        run(0xb400_021f, &mut r);
        assert_eq!(r.pc, PC + 0x40);
    }

    #[test]
    fn addresses_and_literals_are_computed_from_the_original_pc() {
        let mut r = Regs::default();
        run(0x1000_0200, &mut r); // adr x0, +0x40
        assert_eq!((r.x[0], r.pc), (PC + 0x40, PC + 4));
        run(0xb000_0001, &mut r); // adrp x1, +0x1000 (immlo 1)
        assert_eq!(r.x[1], (PC & !0xfff) + 0x1000);
        run(0x9000_0002, &mut r); // adrp x2, 0
        assert_eq!(r.x[2], PC & !0xfff);
        run(0x5800_0203, &mut r); // ldr x3, +0x40
        assert_eq!(r.x[3], 0x8877_6655_4433_2211);
        run(0x1800_0204, &mut r); // ldr w4, +0x40
        assert_eq!(r.x[4], 0x8000_0001);
        run(0x9800_0205, &mut r); // ldrsw x5, +0x40
        assert_eq!(r.x[5], 0xffff_ffff_8000_0001);
        r.x[6] = 9;
        run(0xd800_0206, &mut r); // prfm (literal): nothing loaded
        assert_eq!((r.x[6], r.pc), (9, PC + 4));
        let before = r.x;
        run(0x1000_021f, &mut r); // adr xzr: discarded
        assert_eq!(r.x, before);
    }

    #[test]
    fn what_cannot_run_out_of_line_is_refused() {
        let refused = |insn| match decode(insn, PC) {
            Decoded::Refused(why) => why,
            other => panic!("{insn:#010x}: {other:?}"),
        };
        assert_eq!(refused(0xc85f_7c20), Refusal::Exclusive); // ldxr x0, [x1]
        assert_eq!(refused(0xc802_7c20), Refusal::Exclusive); // stxr w2, x0, [x1]
        assert_eq!(refused(0x885f_fc20), Refusal::Exclusive); // ldaxr w0, [x1]
        assert_eq!(refused(0xd420_0000), Refusal::ExceptionGenerating); // brk #0
        assert_eq!(refused(0xd400_0001), Refusal::ExceptionGenerating); // svc #0
        assert_eq!(refused(0xd400_0002), Refusal::ExceptionGenerating); // hvc #0
        assert_eq!(refused(0xd69f_03e0), Refusal::ExceptionReturn); // eret
        assert_eq!(refused(0xd69f_0bff), Refusal::ExceptionReturn); // eretaa
        assert_eq!(refused(0xd6bf_03e0), Refusal::ExceptionReturn); // drps
        assert_eq!(refused(0xd73f_0820), Refusal::ExceptionReturn); // blraa x1, x0
        assert_eq!(refused(0xd65f_0bff), Refusal::ExceptionReturn); // retaa
        assert_eq!(refused(0xd538_4020), Refusal::SystemRegister); // mrs x0, elr_el1
        assert_eq!(refused(0xd518_4020), Refusal::SystemRegister); // msr elr_el1, x0
        assert_eq!(refused(0xd53b_4220), Refusal::SystemRegister); // mrs x0, daif
        assert_eq!(refused(0xd503_43df), Refusal::SystemRegister); // msr daifset, #3
        assert!(is_exclusive_load(0xc85f_7c20) && !is_exclusive_store(0xc85f_7c20)); // ldxr
        assert!(is_exclusive_store(0xc802_7c20) && !is_exclusive_load(0xc802_7c20)); // stxr
        assert!(!is_exclusive_load(0xc8df_fc20)); // ldar: not exclusive
        assert_eq!(refused(0x5c00_0200), Refusal::SimdLiteral); // ldr d0, literal
        // Out of line: ordinary instructions, ordered (not exclusive) accesses, hints and
        // barriers: add, ldr, nop, ldar, isb, dmb ish.
        for insn in [
            0x8b02_0020u32,
            0xf940_0020,
            0xd503_201f,
            0xc8df_fc20,
            0xd503_3fdf,
            0xd503_3bbf,
        ] {
            assert_eq!(decode(insn, PC), Decoded::OutOfLine, "{insn:#010x}");
        }
    }

    #[test]
    fn every_condition_code() {
        // (cond, flags NZCV) pairs that hold.
        for (cond, holds_with) in [
            (0u8, 0b0100u64), // eq: Z
            (2, 0b0010),      // cs: C
            (4, 0b1000),      // mi: N
            (6, 0b0001),      // vs: V
            (8, 0b0010),      // hi: C and not Z
            (10, 0b1001),     // ge: N == V
            (12, 0b0000),     // gt: not Z, N == V
            (14, 0b0000),     // al
        ] {
            let pstate = holds_with << 28;
            assert!(condition_holds(cond, pstate), "cond {cond}");
            if cond != 14 {
                assert!(!condition_holds(cond + 1, pstate), "cond {}", cond + 1);
            }
        }
        assert!(condition_holds(15, 0), "nv executes as always");
    }
}
