//! What each translation regime needs from the hardware, as data: which system registers hold
//! its state, which TLB invalidation and address-translation instructions act on it, and the
//! TCR and SCTLR values that turn it on. `arch::aarch64::regime` issues exactly these (a `match`
//! on the constants, resolved at compile time), and the host tests check them against the Arm ARM.
//!
//! Why it matters: the instructions of one regime do not act on another. `TLBI VAAE1IS` does not
//! remove EL2 entries (Arm ARM D8.16: TLB maintenance applies to the regime named by the
//! instruction), so EL1 maintenance on EL2 tables leaves a torn-down writable alias cached, and
//! `SCTLR_EL1.WXN` says nothing about what a hypervisor's own EL2 mappings allow.

use super::descriptor::{El1And0, El2, El2And0, Regime};
use super::table::VaRange;

/// The exception level whose system registers (SCTLR, TCR, MAIR, TTBR0, VBAR, ESR, FAR, ELR,
/// SPSR) hold the regime's state. EL2&0 uses the `_EL2` registers, which take the EL1 layout
/// when HCR_EL2.E2H is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRegisters {
    /// `SCTLR_EL1`, `TCR_EL1`, `TTBR0_EL1`, ...
    El1,
    /// `SCTLR_EL2`, `TCR_EL2`, `TTBR0_EL2`, ...
    El2,
}

/// The broadcast invalidation by VA of one page's global entries, at every level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiByVa {
    /// `TLBI VAAE1IS`: EL1&0, all ASIDs.
    Vaae1is,
    /// `TLBI VAE2IS`: EL2, or EL2&0 when E2H = 1 (global entries match any ASID).
    Vae2is,
}

/// The invalidation of every entry of the regime, on this CPU only (before the MMU is turned on)
/// or broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiAll {
    /// `TLBI VMALLE1` / `TLBI VMALLE1IS`.
    Vmalle1,
    /// `TLBI ALLE2` / `TLBI ALLE2IS`.
    Alle2,
}

/// The stage-1 address translation of a privileged write (`AT`), whose result is in PAR_EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtWrite {
    /// `AT S1E1W`.
    S1e1w,
    /// `AT S1E2W`.
    S1e2w,
}

/// SCTLR_ELx.M: stage-1 translation on.
pub const SCTLR_M: u64 = 1 << 0;
/// SCTLR_ELx.C: data accesses cacheable.
pub const SCTLR_C: u64 = 1 << 2;
/// SCTLR_ELx.SA: stack alignment check.
pub const SCTLR_SA: u64 = 1 << 3;
/// SCTLR_ELx.I: instruction fetches cacheable.
pub const SCTLR_I: u64 = 1 << 12;
/// SCTLR_ELx.WXN: every writable mapping is execute-never (D8.4.1.3, same bit at EL1 and EL2).
pub const SCTLR_WXN: u64 = 1 << 19;
/// The bits the manager's regimes run with: MMU, caches, stack alignment, WXN.
pub const SCTLR_MMU_ON: u64 = SCTLR_M | SCTLR_C | SCTLR_SA | SCTLR_I | SCTLR_WXN;

/// The inner/outer write-back read/write-allocate, inner-shareable walk attributes (IRGN0 = 1,
/// ORGN0 = 1, SH0 = 3) and the 4 KiB granule (TG0 = 0), at the same bits in every TCR layout.
const TCR_WALK_WB_INNER: u64 = (0b01 << 8) | (0b01 << 10) | (0b11 << 12);

/// A translation regime's hardware controls. Sealed through [`Regime`].
pub trait RegimeControl: Regime {
    /// The registers that hold the regime's state.
    const REGISTERS: ControlRegisters;
    /// The broadcast page invalidation.
    const TLBI_VA: TlbiByVa;
    /// The whole-regime invalidation.
    const TLBI_ALL: TlbiAll;
    /// The write translation the audit and the tests probe with.
    const AT_WRITE: AtWrite;
    /// SCTLR's RES1 bits with the MMU, caches and alignment checks off (boot value).
    const SCTLR_RES1: u64;

    /// The TCR value for tables over the lower `range`, with output size `pa_range`
    /// (ID_AA64MMFR0_EL1.PARange, capped at 0b101 = 48 bits). `None` for an upper range: turning
    /// on a TTBR1 space is the embedding kernel's own business.
    fn tcr(range: VaRange, pa_range: u8) -> Option<u64>;
}

/// TCR in the EL1 layout (TCR_EL1, and TCR_EL2 with E2H = 1): T0SZ [5:0], walk attributes,
/// EPD1 [23] (no TTBR1 walks), TG1 [31:30] = 0b10 (4 KiB, a valid value even when unused),
/// IPS [34:32].
fn tcr_el1_layout(range: VaRange, pa_range: u8) -> Option<u64> {
    if range.is_upper() {
        return None;
    }
    let ips = u64::from(pa_range.min(0b101));
    Some(range.tcr_size_offset() | TCR_WALK_WB_INNER | (1 << 23) | (0b10 << 30) | (ips << 32))
}

impl RegimeControl for El1And0 {
    const REGISTERS: ControlRegisters = ControlRegisters::El1;
    const TLBI_VA: TlbiByVa = TlbiByVa::Vaae1is;
    const TLBI_ALL: TlbiAll = TlbiAll::Vmalle1;
    const AT_WRITE: AtWrite = AtWrite::S1e1w;
    /// Bits 11, 20, 22, 23, 28, 29 (Linux `INIT_SCTLR_EL1_MMU_OFF`).
    const SCTLR_RES1: u64 = 0x30d0_0800;

    fn tcr(range: VaRange, pa_range: u8) -> Option<u64> {
        tcr_el1_layout(range, pa_range)
    }
}

impl RegimeControl for El2 {
    const REGISTERS: ControlRegisters = ControlRegisters::El2;
    const TLBI_VA: TlbiByVa = TlbiByVa::Vae2is;
    const TLBI_ALL: TlbiAll = TlbiAll::Alle2;
    const AT_WRITE: AtWrite = AtWrite::S1e2w;
    /// Bits 4, 5, 11, 16, 18, 22, 23, 28, 29 (Linux `SCTLR_EL2_RES1`).
    const SCTLR_RES1: u64 = 0x30c5_0830;

    /// TCR_EL2 without VHE: RES1 bits 31 and 23, T0SZ \[5:0\], walk attributes, PS \[18:16\].
    fn tcr(range: VaRange, pa_range: u8) -> Option<u64> {
        if range.is_upper() {
            return None;
        }
        let ps = u64::from(pa_range.min(0b101));
        Some(range.tcr_size_offset() | TCR_WALK_WB_INNER | (1 << 31) | (1 << 23) | (ps << 16))
    }
}

impl RegimeControl for El2And0 {
    const REGISTERS: ControlRegisters = ControlRegisters::El2;
    const TLBI_VA: TlbiByVa = TlbiByVa::Vae2is;
    const TLBI_ALL: TlbiAll = TlbiAll::Alle2;
    const AT_WRITE: AtWrite = AtWrite::S1e2w;
    /// With E2H = 1 SCTLR_EL2 has the SCTLR_EL1 layout (Linux `INIT_SCTLR_EL2_MMU_OFF` under VHE
    /// is the EL1 value).
    const SCTLR_RES1: u64 = 0x30d0_0800;

    fn tcr(range: VaRange, pa_range: u8) -> Option<u64> {
        tcr_el1_layout(range, pa_range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn el1_uses_el1_instructions() {
        assert_eq!(El1And0::REGISTERS, ControlRegisters::El1);
        assert_eq!(El1And0::TLBI_VA, TlbiByVa::Vaae1is);
        assert_eq!(El1And0::TLBI_ALL, TlbiAll::Vmalle1);
        assert_eq!(El1And0::AT_WRITE, AtWrite::S1e1w);
    }

    #[test]
    fn both_el2_regimes_use_el2_instructions() {
        // VAAE1IS would leave EL2 entries (a torn-down poke alias) in every TLB.
        for (registers, tlbi, all, at) in [
            (El2::REGISTERS, El2::TLBI_VA, El2::TLBI_ALL, El2::AT_WRITE),
            (
                El2And0::REGISTERS,
                El2And0::TLBI_VA,
                El2And0::TLBI_ALL,
                El2And0::AT_WRITE,
            ),
        ] {
            assert_eq!(registers, ControlRegisters::El2);
            assert_eq!(tlbi, TlbiByVa::Vae2is);
            assert_eq!(all, TlbiAll::Alle2);
            assert_eq!(at, AtWrite::S1e2w);
        }
    }

    #[test]
    fn el1_tcr_is_the_demo_kernels() {
        // T0SZ 25, IRGN0/ORGN0 WB, SH0 inner, TG0 4K, EPD1, TG1 4K, IPS 40 bits (0b010).
        let tcr = El1And0::tcr(VaRange::LOWER_39, 0b010).expect("lower range");
        assert_eq!(tcr, 25 | 0x3500 | (1 << 23) | (0b10 << 30) | (0b010 << 32));
        // 48 bits: T0SZ 16; PARange above 48 bits is capped (the descriptors hold 48).
        let tcr = El1And0::tcr(VaRange::LOWER_48, 0b110).expect("lower range");
        assert_eq!(tcr & 0x3f, 16);
        assert_eq!((tcr >> 32) & 0b111, 0b101);
        assert_eq!(El1And0::tcr(VaRange::UPPER_48, 0b101), None);
    }

    #[test]
    fn el2_tcr_has_its_own_layout() {
        let tcr = El2::tcr(VaRange::LOWER_39, 0b010).expect("lower range");
        // RES1 [31] and [23], PS at [18:16] (not IPS at [34:32]), no TG1 or EPD1 fields.
        assert_eq!(tcr, 25 | 0x3500 | (1 << 31) | (1 << 23) | (0b010 << 16));
        assert_eq!(tcr >> 32, 0);
        let tcr = El2::tcr(VaRange::LOWER_48, 0b111).expect("lower range");
        assert_eq!((tcr >> 16) & 0b111, 0b101);
        // VHE: the EL1 layout.
        assert_eq!(
            El2And0::tcr(VaRange::LOWER_39, 0b010),
            El1And0::tcr(VaRange::LOWER_39, 0b010)
        );
    }

    #[test]
    fn sctlr_bits() {
        assert_eq!(SCTLR_MMU_ON, 0x8_100d);
        assert_eq!(El1And0::SCTLR_RES1 & SCTLR_MMU_ON, 0);
        assert_eq!(El2::SCTLR_RES1 & SCTLR_MMU_ON, 0);
        // The EL2 RES1 set includes bits 4 and 5 (the EL1 layout's CP15BEN/ITD are not RES1).
        assert_eq!(El2::SCTLR_RES1 & 0x30, 0x30);
        assert_eq!(El1And0::SCTLR_RES1 & 0x30, 0);
    }
}
