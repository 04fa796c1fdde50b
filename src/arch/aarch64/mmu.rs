//! The EL1&0 translation regime on the hardware: turning the MMU on, and the TLB maintenance that
//! follows a change to a live table entry. What to map is decided by the portable `mmu` module and
//! the kernel; this file only executes the system-register writes and the barrier sequences.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ID_AA64MMFR0_EL1, MAIR_EL1, ReadWriteable, Readable, SCTLR_EL1, TCR_EL1, TTBR0_EL1, Writeable,
};

use crate::cpu::Midr;
use crate::mmu::{MAIR_EL1_VALUE, T0SZ, TlbMaintenance};

/// Cores on which a broadcast `TLBI; DSB` can complete before earlier writes are observed
/// (Cortex-A76 #1286807, Cortex-A55 #2441007, Cortex-A510 #2441009; CVE-2025-10263): Linux issues
/// the pair twice (`ARM64_WORKAROUND_REPEAT_TLBI`). It matters most when tearing down the writable
/// text-poke alias, so it is applied to every broadcast invalidation here.
static REPEAT_TLBI: AtomicBool = AtomicBool::new(false);

fn needs_repeat_tlbi(midr: Midr) -> bool {
    midr.implementer() == 0x41 && matches!(midr.part(), 0xd0b | 0xd05 | 0xd46)
}

/// Programs MAIR/TCR/TTBR0 for the tables at `root_pa` and turns on the MMU, the caches and
/// `SCTLR_EL1.WXN` (every writable mapping is also execute-never, whatever its descriptor says).
///
/// `written` is the memory written with the MMU off (image, stacks, heap with the tables): those
/// stores went straight to memory, so any line a loader left in the data cache for these addresses is
/// stale; it is invalidated (`DC IVAC`, never a clean, which would write stale data back) before the
/// caches are turned on, as Linux does for its early tables (booting.rst only promises the image is
/// cleaned to the point of coherency).
///
/// # Safety
/// The tables at `root_pa` must map, at their current addresses, everything the CPU uses from here
/// on (this code, the stack, the data it touches, the console), and must not change except through
/// [`BroadcastTlb`]-maintained updates. The MMU and data cache must be off.
pub unsafe fn enable(
    root_pa: u64,
    midr: Midr,
    written: &[core::ops::Range<u64>],
) -> Result<(), &'static str> {
    if ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::TGran4) == 0xf {
        return Err("this CPU does not implement the 4 KiB translation granule");
    }
    // Only ever set: any CPU that needs the repeated TLBI makes every CPU repeat it.
    if needs_repeat_tlbi(midr) {
        REPEAT_TLBI.store(true, Ordering::Relaxed);
    }

    let line = crate::arch::aarch64::cpu::cache_type().d_line as u64;
    for range in written {
        let mut at = range.start / line * line;
        while at < range.end {
            // SAFETY: with the MMU off every address is accessible; the lines are discarded, and
            // the memory behind them already holds what was written (non-cacheable stores).
            unsafe { asm!("dc ivac, {at}", at = in(reg) at, options(nostack, preserves_flags)) };
            at += line;
        }
    }
    barrier::dsb(barrier::SY);

    MAIR_EL1.set(MAIR_EL1_VALUE);
    // Output size: what the CPU implements, capped at 48 bits (the descriptors' OA field).
    let pa_range = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101);
    TCR_EL1.write(
        TCR_EL1::T0SZ.val(T0SZ)
            + TCR_EL1::TG0::KiB_4
            + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::SH0::Inner
            + TCR_EL1::EPD1::DisableTTBR1Walks
            + TCR_EL1::TG1::KiB_4
            + TCR_EL1::IPS.val(pa_range),
    );
    TTBR0_EL1.set_baddr(root_pa);
    barrier::isb(barrier::SY);

    // Before the first translation: no stale TLB or I-cache entries from before this boot
    // (ARCH-NOTES "Before turning the MMU on"; the I-cache may hold lines fetched with the MMU off).
    // SAFETY: invalidations of this CPU's TLB and I-cache; nothing is translated yet, and
    // instructions are re-fetched after the ISB.
    unsafe {
        asm!(
            "tlbi vmalle1",
            "ic iallu",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };

    SCTLR_EL1.modify(
        SCTLR_EL1::M::Enable
            + SCTLR_EL1::C::Cacheable
            + SCTLR_EL1::I::Cacheable
            + SCTLR_EL1::SA::Enable
            + SCTLR_EL1::WXN::Enable,
    );
    // The next instruction is fetched through the new translation.
    barrier::isb(barrier::SY);
    Ok(())
}

/// Whether the MMU is on.
pub fn is_enabled() -> bool {
    SCTLR_EL1.matches_all(SCTLR_EL1::M::Enable)
}

/// Whether `SCTLR_EL1.WXN` is set (the audit takes it into account).
pub fn wxn_enabled() -> bool {
    SCTLR_EL1.matches_all(SCTLR_EL1::WXN::Enable)
}

/// The root table the hardware walks.
pub fn ttbr0() -> u64 {
    TTBR0_EL1.get_baddr()
}

/// TLB maintenance for the shared kernel tables: every invalidation is broadcast to the inner
/// shareable domain, because any CPU may hold any valid entry of shared tables, speculatively.
pub struct BroadcastTlb;

impl TlbMaintenance for BroadcastTlb {
    /// `DSB ISHST; TLBI VAAE1IS, va >> 12; DSB ISH; ISB` after an entry was written invalid
    /// (Arm ARM D8.14 break-before-make and D8.16 "TLB maintenance"): the DSB ISHST orders the
    /// table write before the invalidation, the DSB ISH waits until every CPU's TLB has dropped the
    /// entry, and the ISB makes this CPU's following instructions use the new state. VAAE1IS covers
    /// all ASIDs and all levels (global kernel entries, and a table entry may be what changed).
    fn invalidate_va(&mut self, va: u64, _level: u8) {
        let page = (va >> 12) & ((1 << 44) - 1);
        // One asm block per variant, so the compiler cannot separate the barriers from the TLBI.
        if REPEAT_TLBI.load(Ordering::Relaxed) {
            // SAFETY: barriers and TLB invalidations by VA; no memory or register changes but the
            // TLB state the caller wants dropped.
            unsafe {
                asm!("dsb ishst", "tlbi vaae1is, {page}", "dsb ish", "tlbi vaae1is, {page}", "dsb ish", "isb",
                    page = in(reg) page, options(nostack, preserves_flags));
            }
        } else {
            // SAFETY: as above.
            unsafe {
                asm!("dsb ishst", "tlbi vaae1is, {page}", "dsb ish", "isb",
                    page = in(reg) page, options(nostack, preserves_flags));
            }
        }
    }

    /// `DSB ISHST; ISB` after new entries were written into invalid slots: the table walker of any
    /// CPU then sees them (it is not coherent with earlier stores without the DSB), and this CPU's
    /// next accesses are translated with them. No TLBI: an invalid entry is never cached.
    fn publish(&mut self) {
        barrier::dsb(barrier::ISHST);
        barrier::isb(barrier::SY);
    }
}
