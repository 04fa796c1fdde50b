//! The performance monitors (PMUv3, Arm ARM D13): event counter 0 counts INST_RETIRED (event
//! 0x08) and the cycle counter runs, at EL0, EL1 and EL2 (NSH = 1: a kernel running at EL2 is
//! counted too). Under QEMU with `-icount shift=0` the
//! instruction count is exact and repeatable; without icount QEMU's counters read 0.

use core::arch::asm;

/// PMU event: instruction architecturally executed.
pub const INST_RETIRED: u64 = 0x08;

/// PMEVTYPER<n>_EL0.NSH / PMCCFILTR_EL0.NSH: count at EL2 as well.
const NSH: u64 = 1 << 27;

/// Enables event counter 0 on INST_RETIRED and the cycle counter.
pub fn init() {
    // SAFETY: PMU configuration at EL1 or EL2 (PMUSERENR is not involved); it affects only the
    // counters.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {event}",   // counts EL0, EL1 (P = U = 0) and EL2 (NSH = 1)
            "msr pmccfiltr_el0, {filter}",
            "msr pmcntenset_el0, {enable}",  // counter 0 and the cycle counter (bit 31)
            "msr pmcr_el0, {pmcr}",          // E: enable, P: reset event counters, C: reset cycles
            "isb",
            event = in(reg) INST_RETIRED | NSH,
            filter = in(reg) NSH,
            enable = in(reg) (1u64 << 31) | 1,
            pmcr = in(reg) 0b111u64,
            options(nostack, preserves_flags),
        );
    }
}

/// Instructions retired so far (event counter 0; 32 bits wide, so take differences with
/// `wrapping_sub` over spans shorter than 2^32 instructions).
#[inline(always)]
pub fn instructions() -> u32 {
    let count: u64;
    // SAFETY: reads a PMU counter; the ISB keeps earlier instructions from being counted late.
    unsafe {
        asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) count, options(nostack, preserves_flags))
    };
    count as u32
}

/// Cycles so far (PMCCNTR_EL0).
#[inline(always)]
pub fn cycles() -> u64 {
    let count: u64;
    // SAFETY: reads the cycle counter.
    unsafe {
        asm!("isb", "mrs {}, pmccntr_el0", out(reg) count, options(nostack, preserves_flags))
    };
    count
}
