//! Decoding of the ID registers the manager depends on: MIDR_EL1 (which core, for errata) and
//! CTR_EL0 (cache line sizes and whether code writes need cleaning or invalidation at all).
//!
//! Portable: the values are read by `arch::aarch64` and decoded here, so the decisions are unit-tested
//! on the host.

use core::fmt;

/// MIDR_EL1 decoded: implementer, part number, variant and revision (Arm ARM D23.2 "MIDR_EL1").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Midr(pub u64);

impl Midr {
    /// Implementer code, bits \[31:24\] (0x41 = Arm Ltd).
    pub const fn implementer(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// Primary part number, bits \[15:4\].
    pub const fn part(self) -> u16 {
        ((self.0 >> 4) & 0xfff) as u16
    }
    /// Variant, bits \[23:20\] (the `r` of `rNpM`).
    pub const fn variant(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// Revision, bits \[3:0\] (the `p` of `rNpM`).
    pub const fn revision(self) -> u8 {
        (self.0 & 0xf) as u8
    }

    /// The core's marketing name, if known.
    pub fn name(self) -> Option<&'static str> {
        let name = match (self.implementer(), self.part()) {
            (0x41, 0xd03) => "Cortex-A53",
            (0x41, 0xd04) => "Cortex-A35",
            (0x41, 0xd05) => "Cortex-A55",
            (0x41, 0xd07) => "Cortex-A57",
            (0x41, 0xd08) => "Cortex-A72",
            (0x41, 0xd09) => "Cortex-A73",
            (0x41, 0xd0a) => "Cortex-A75",
            (0x41, 0xd0b) => "Cortex-A76",
            (0x41, 0xd0c) => "Neoverse-N1",
            (0x41, 0xd0d) => "Cortex-A77",
            (0x41, 0xd40) => "Neoverse-V1",
            (0x41, 0xd41) => "Cortex-A78",
            (0x41, 0xd44) => "Cortex-X1",
            (0x41, 0xd46) => "Cortex-A510",
            (0x41, 0xd47) => "Cortex-A710",
            (0x41, 0xd48) => "Cortex-X2",
            (0x41, 0xd49) => "Neoverse-N2",
            (0x41, 0xd4d) => "Cortex-A715",
            (0x41, 0xd4f) => "Neoverse-V2",
            (0x46, 0x001) => "A64FX",
            _ => return None,
        };
        Some(name)
    }

    /// Cortex-A53 errata 819472, 826319, 827319 and 824069: a `DC CVAU` may not be enough to make
    /// written instructions visible; Linux upgrades it to `DC CIVAC` on this core
    /// (`ARM64_WORKAROUND_CLEAN_CACHE`).
    pub const fn needs_clean_invalidate_for_code(self) -> bool {
        self.implementer() == 0x41 && self.part() == 0xd03
    }

    /// Cores on which a broadcast `TLBI; DSB` can complete before earlier writes are observed
    /// (Cortex-A76 #1286807, Cortex-A55 #2441007, Cortex-A510 #2441009; CVE-2025-10263): Linux
    /// issues the pair twice (`ARM64_WORKAROUND_REPEAT_TLBI`).
    pub const fn needs_repeat_tlbi(self) -> bool {
        self.implementer() == 0x41 && matches!(self.part(), 0xd0b | 0xd05 | 0xd46)
    }
}

impl fmt::Display for Midr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} r{}p{}", self.variant(), self.revision()),
            None => write!(
                f,
                "unknown core (implementer {:#04x}, part {:#05x}) r{}p{}",
                self.implementer(),
                self.part(),
                self.variant(),
                self.revision()
            ),
        }
    }
}

/// CTR_EL0 decoded: what cache maintenance written code needs (Arm ARM D23.2 "CTR_EL0", B2.4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheType {
    /// Smallest instruction-cache line in bytes (IminLine, bits \[3:0\], log2 of words).
    pub i_line: usize,
    /// Smallest data-cache line in bytes (DminLine, bits \[19:16\], log2 of words).
    pub d_line: usize,
    /// IDC, bit 28: data-cache clean to the point of unification is not required for
    /// instruction-to-data coherence.
    pub idc: bool,
    /// DIC, bit 29: instruction-cache invalidation to the point of unification is not required.
    pub dic: bool,
}

impl CacheType {
    /// Decodes a raw CTR_EL0 value.
    pub const fn from_ctr(ctr: u64) -> Self {
        Self {
            i_line: 4 << (ctr & 0xf),
            d_line: 4 << ((ctr >> 16) & 0xf),
            idc: (ctr >> 28) & 1 == 1,
            dic: (ctr >> 29) & 1 == 1,
        }
    }

    /// The view that is safe on every CPU of a system whose CPUs report `self` and `other`: the
    /// smaller line sizes (a loop stepping by a too-large line skips lines: Mono's SIGILLs on
    /// big.LITTLE Exynos 8890) and a maintenance step skipped only if every CPU allows it.
    pub const fn common(self, other: Self) -> Self {
        Self {
            i_line: if self.i_line < other.i_line {
                self.i_line
            } else {
                other.i_line
            },
            d_line: if self.d_line < other.d_line {
                self.d_line
            } else {
                other.d_line
            },
            idc: self.idc && other.idc,
            dic: self.dic && other.dic,
        }
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "I-line {} B, D-line {} B, IDC={} ({}), DIC={} ({})",
            self.i_line,
            self.d_line,
            u8::from(self.idc),
            if self.idc {
                "no D-clean for code"
            } else {
                "D-clean to PoU needed"
            },
            u8::from(self.dic),
            if self.dic {
                "no I-invalidate"
            } else {
                "I-invalidate needed"
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cortex_a72_midr() {
        // QEMU cortex-a72: 0x410FD083.
        let midr = Midr(0x410f_d083);
        assert_eq!(midr.name(), Some("Cortex-A72"));
        assert_eq!((midr.variant(), midr.revision()), (0, 3));
        assert!(!midr.needs_clean_invalidate_for_code());
        assert_eq!(alloc::format!("{midr}"), "Cortex-A72 r0p3");
    }

    #[test]
    fn cortex_a53_needs_civac() {
        assert!(Midr(0x410f_d034).needs_clean_invalidate_for_code());
    }

    #[test]
    fn unknown_core_is_named_by_numbers() {
        let s = alloc::format!("{}", Midr(0x5100_0010));
        assert!(
            s.starts_with("unknown core (implementer 0x51, part 0x001)"),
            "{s}"
        );
    }

    #[test]
    fn ctr_decoding() {
        // Cortex-A72: CTR_EL0 = 0x8444C004: 64 B lines, IDC = DIC = 0.
        let a72 = CacheType::from_ctr(0x8444_c004);
        assert_eq!(
            (a72.i_line, a72.d_line, a72.idc, a72.dic),
            (64, 64, false, false)
        );
        // IDC and DIC set, 64 B lines (neoverse-n2 style).
        let n2 = CacheType::from_ctr(0xb444_c004);
        assert!(n2.idc && n2.dic);
        // A64FX: 256-byte lines (log2 words = 6).
        let a64fx = CacheType::from_ctr(0x8006_0006);
        assert_eq!((a64fx.i_line, a64fx.d_line), (256, 256));
    }

    #[test]
    fn common_view_is_the_most_conservative() {
        let big = CacheType {
            i_line: 128,
            d_line: 64,
            idc: true,
            dic: true,
        };
        let little = CacheType {
            i_line: 64,
            d_line: 128,
            idc: true,
            dic: false,
        };
        let both = big.common(little);
        assert_eq!(
            both,
            CacheType {
                i_line: 64,
                d_line: 64,
                idc: true,
                dic: false
            }
        );
    }
}
