//! A translation regime on the hardware: turning its MMU on, reading its state, and the TLB
//! maintenance that follows a change to a live table entry. Every function is generic over the
//! regime and issues the instructions [`RegimeControl`] names for it (EL1&0: `_EL1` registers and
//! `TLBI VAAE1IS`; EL2 and EL2&0: `_EL2` registers and `TLBI VAE2IS`), so EL2 tables never get
//! EL1 maintenance. What to map is decided by the portable `mmu` module and the kernel; this
//! file only executes the system-register writes and the barrier sequences.

use core::arch::asm;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ID_AA64MMFR0_EL1, MAIR_EL1, MAIR_EL2, Readable, SCTLR_EL1, SCTLR_EL2, TCR_EL1, TCR_EL2,
    TTBR0_EL1, TTBR0_EL2, TTBR1_EL1, Writeable,
};

use crate::cpu::Midr;
use crate::mmu::control::{
    AtWrite, ControlRegisters, RegimeControl, SCTLR_MMU_ON, SCTLR_WXN, TlbiAll, TlbiByVa,
};
use crate::mmu::{MAIR_EL1_VALUE, TableRoot, TlbMaintenance, VaRange};

/// Whether every broadcast invalidation is issued twice: on cores where a broadcast `TLBI; DSB`
/// can complete before earlier writes are observed ([`Midr::needs_repeat_tlbi`], CVE-2025-10263),
/// Linux issues the pair twice (`ARM64_WORKAROUND_REPEAT_TLBI`). It matters most when tearing
/// down the writable text-poke alias, so it is applied to every broadcast invalidation here.
static REPEAT_TLBI: AtomicBool = AtomicBool::new(false);

/// Notes a CPU's MIDR: if any CPU of the system needs the repeated TLBI, every broadcast
/// invalidation repeats it from then on (only ever set). [`enable`] notes the CPU it runs on; the
/// manager's `init` applies its maintenance plan's `repeat_tlbi`, which covers every CPU the plan
/// was made for.
pub fn note_cpu(midr: Midr) {
    if midr.needs_repeat_tlbi() {
        repeat_tlbi();
    }
}

/// Repeats every broadcast invalidation from now on (see [`note_cpu`]).
pub fn repeat_tlbi() {
    REPEAT_TLBI.store(true, Ordering::Relaxed);
}

/// Programs MAIR/TCR/TTBR0 of regime `R` for the tables at `root` and turns on the MMU, the
/// caches and `SCTLR_ELx.WXN` (every writable mapping is also execute-never, whatever its
/// descriptor says). Runs at the regime's exception level (EL1 for EL1&0, EL2 for both EL2
/// regimes; for EL2&0, HCR_EL2.E2H is already 1).
///
/// `written` is the memory written with the MMU off (image, stacks, heap with the tables): those
/// stores went straight to memory, so any line a loader left in the data cache for these addresses is
/// stale; it is invalidated (`DC IVAC`, never a clean, which would write stale data back) before the
/// caches are turned on, as Linux does for its early tables (booting.rst only promises the image is
/// cleaned to the point of coherency).
///
/// # Safety
/// The tables at `root` must map, at their current addresses, everything the CPU uses from here
/// on (this code, the stack, the data it touches, the console), and must not change except through
/// [`BroadcastTlb`]-maintained updates. The MMU and data cache must be off.
pub unsafe fn enable<R: RegimeControl>(
    root: TableRoot,
    midr: Midr,
    written: &[core::ops::Range<u64>],
) -> Result<(), &'static str> {
    if ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::TGran4) == 0xf {
        return Err("this CPU does not implement the 4 KiB translation granule");
    }
    // Output size: what the CPU implements, capped at 48 bits (the descriptors' OA field).
    let pa_range = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange) as u8;
    let tcr = R::tcr(root.range, pa_range).ok_or("only a TTBR0 range is turned on here")?;
    note_cpu(midr);

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

    match R::REGISTERS {
        ControlRegisters::El1 => {
            MAIR_EL1.set(MAIR_EL1_VALUE);
            TCR_EL1.set(tcr);
            TTBR0_EL1.set_baddr(root.pa);
        }
        ControlRegisters::El2 => {
            MAIR_EL2.set(MAIR_EL1_VALUE);
            TCR_EL2.set(tcr);
            TTBR0_EL2.set_baddr(root.pa);
        }
    }
    barrier::isb(barrier::SY);

    // Before the first translation: no stale TLB or I-cache entries from before this boot
    // (ARCH-NOTES "Before turning the MMU on"; the I-cache may hold lines fetched with the MMU off).
    invalidate_all_local::<R>();

    let sctlr = read_sctlr::<R>() | SCTLR_MMU_ON;
    match R::REGISTERS {
        ControlRegisters::El1 => SCTLR_EL1.set(sctlr),
        ControlRegisters::El2 => SCTLR_EL2.set(sctlr),
    }
    // The next instruction is fetched through the new translation.
    barrier::isb(barrier::SY);
    Ok(())
}

/// `TLBI VMALLE1` or `TLBI ALLE2`, `IC IALLU`, `DSB NSH`, `ISB`: this CPU's TLB and I-cache for
/// regime `R` dropped, before its MMU is turned on.
pub fn invalidate_all_local<R: RegimeControl>() {
    match R::TLBI_ALL {
        // SAFETY: invalidations of this CPU's TLB and I-cache; instructions are re-fetched after
        // the ISB, and nothing relies on a cached translation (the MMU is off).
        TlbiAll::Vmalle1 => unsafe {
            asm!(
                "tlbi vmalle1",
                "ic iallu",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        },
        // SAFETY: as above, for the EL2 regime.
        TlbiAll::Alle2 => unsafe {
            asm!(
                "tlbi alle2",
                "ic iallu",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        },
    }
}

fn read_sctlr<R: RegimeControl>() -> u64 {
    match R::REGISTERS {
        ControlRegisters::El1 => SCTLR_EL1.get(),
        ControlRegisters::El2 => SCTLR_EL2.get(),
    }
}

/// Whether regime `R`'s MMU is on.
pub fn is_enabled<R: RegimeControl>() -> bool {
    read_sctlr::<R>() & 1 != 0
}

/// Whether `SCTLR_ELx.WXN` is set for regime `R` (the audit takes it into account).
pub fn wxn_enabled<R: RegimeControl>() -> bool {
    read_sctlr::<R>() & SCTLR_WXN != 0
}

/// Regime `R`'s MAIR_ELx: which memory type each AttrIndx of its descriptors means.
pub fn mair<R: RegimeControl>() -> u64 {
    match R::REGISTERS {
        ControlRegisters::El1 => MAIR_EL1.get(),
        ControlRegisters::El2 => MAIR_EL2.get(),
    }
}

/// The root table regime `R`'s hardware walks for the lower range (TTBR0_ELx.BADDR).
pub fn ttbr0<R: RegimeControl>() -> u64 {
    match R::REGISTERS {
        ControlRegisters::El1 => TTBR0_EL1.get_baddr(),
        ControlRegisters::El2 => TTBR0_EL2.get_baddr(),
    }
}

/// What the hardware makes of a privileged write to `va` in regime `R` (`AT S1E1W` or
/// `AT S1E2W`): the physical address, or `None` if the write would fault.
///
/// The translation and the read of PAR_EL1 are one sequence with interrupts masked: an exception
/// taken in between may run its own `AT` (the runtime's vectors check the stack with one) and
/// leave another translation's result in PAR_EL1.
pub fn translate_write<R: RegimeControl>(va: u64) -> Option<u64> {
    let par: u64;
    match R::AT_WRITE {
        // SAFETY: masks interrupts (restored from the saved DAIF), translates, reads PAR_EL1:
        // only PAR_EL1 and the two scratch registers change. The ISB makes the result visible
        // to the read (D8.10, "PAR_EL1 is updated ... after a context synchronization event").
        AtWrite::S1e1w => unsafe {
            asm!(
                "mrs {saved}, daif",
                "msr daifset, #0xf",
                "at s1e1w, {va}",
                "isb",
                "mrs {par}, par_el1",
                "msr daif, {saved}",
                va = in(reg) va, saved = out(reg) _, par = out(reg) par,
                options(nostack, preserves_flags)
            )
        },
        // SAFETY: as above.
        AtWrite::S1e2w => unsafe {
            asm!(
                "mrs {saved}, daif",
                "msr daifset, #0xf",
                "at s1e2w, {va}",
                "isb",
                "mrs {par}, par_el1",
                "msr daif, {saved}",
                va = in(reg) va, saved = out(reg) _, par = out(reg) par,
                options(nostack, preserves_flags)
            )
        },
    }
    (par & 1 == 0).then_some((par & 0x0000_ffff_ffff_f000) | (va & 0xfff))
}

/// Broadcast TLB invalidation of the page at `va` in regime `R`, with its barriers:
/// `DSB ISHST; TLBI <R::TLBI_VA>, va >> 12; DSB ISH; ISB` (Arm ARM D8.14 break-before-make and
/// D8.16 "TLB maintenance"): the DSB ISHST orders the table write before the invalidation, the
/// DSB ISH waits until every CPU's TLB has dropped the entry, and the ISB makes this CPU's
/// following instructions use the new state. The forms cover all levels (a table entry may be
/// what changed) and every ASID for global kernel entries.
pub fn invalidate_va_broadcast<R: RegimeControl>(va: u64) {
    let page = (va >> 12) & ((1 << 44) - 1);
    let repeat = REPEAT_TLBI.load(Ordering::Relaxed);
    // One asm block per variant, so the compiler cannot separate the barriers from the TLBI.
    match (R::TLBI_VA, repeat) {
        // SAFETY: barriers and TLB invalidations by VA; no memory or register changes but the
        // TLB state the caller wants dropped.
        (TlbiByVa::Vaae1is, false) => unsafe {
            asm!("dsb ishst", "tlbi vaae1is, {page}", "dsb ish", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above.
        (TlbiByVa::Vaae1is, true) => unsafe {
            asm!("dsb ishst", "tlbi vaae1is, {page}", "dsb ish", "tlbi vaae1is, {page}", "dsb ish", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above, for the EL2 regimes.
        (TlbiByVa::Vae2is, false) => unsafe {
            asm!("dsb ishst", "tlbi vae2is, {page}", "dsb ish", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above.
        (TlbiByVa::Vae2is, true) => unsafe {
            asm!("dsb ishst", "tlbi vae2is, {page}", "dsb ish", "tlbi vae2is, {page}", "dsb ish", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
    }
}

/// TLB maintenance for shared tables of regime `R`: every invalidation is broadcast to the inner
/// shareable domain, because any CPU may hold any valid entry of shared tables, speculatively.
/// It implements only `TlbMaintenance<R>`, so it cannot be used on another regime's tables
/// (`BroadcastTlb::<El1And0>` on an `AddressSpace<El2>` does not compile; the compile-fail test
/// is on [`TlbMaintenance`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct BroadcastTlb<R>(PhantomData<R>);

impl<R> BroadcastTlb<R> {
    /// The maintenance of regime `R`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<R: RegimeControl> TlbMaintenance<R> for BroadcastTlb<R> {
    /// [`invalidate_va_broadcast`] after an entry was written invalid.
    fn invalidate_va(&mut self, va: u64, _level: u8) {
        invalidate_va_broadcast::<R>(va);
    }

    /// [`invalidate_all_broadcast`] after a root entry was written invalid.
    fn invalidate_all(&mut self) {
        invalidate_all_broadcast::<R>();
    }

    /// `DSB ISHST; ISB` after new entries were written into invalid slots: the table walker of any
    /// CPU then sees them (it is not coherent with earlier stores without the DSB), and this CPU's
    /// next accesses are translated with them. No TLBI: an invalid entry is never cached.
    fn publish(&mut self) {
        barrier::dsb(barrier::ISHST);
        barrier::isb(barrier::SY);
    }
}

/// Broadcast invalidation of every entry of regime `R`: `DSB ISHST; TLBI VMALLE1IS` (or
/// `TLBI ALLE2IS`); `DSB ISH; ISB`, the pair repeated where the errata want it. For a changed root
/// entry, whose span no invalidation by VA covers.
pub fn invalidate_all_broadcast<R: RegimeControl>() {
    let repeat = REPEAT_TLBI.load(Ordering::Relaxed);
    match (R::TLBI_ALL, repeat) {
        // SAFETY: barriers and a TLB invalidation; nothing but TLB state changes.
        (TlbiAll::Vmalle1, false) => unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        },
        // SAFETY: as above.
        (TlbiAll::Vmalle1, true) => unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalle1is",
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        },
        // SAFETY: as above, for the EL2 regimes.
        (TlbiAll::Alle2, false) => unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle2is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        },
        // SAFETY: as above.
        (TlbiAll::Alle2, true) => unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle2is",
                "dsb ish",
                "tlbi alle2is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        },
    }
}

/// Invalidation of the last-level entry for `va` in this CPU's TLB only: `DSB NSHST;
/// TLBI VAALE1, va >> 12` (or `TLBI VALE2`); `DSB NSH; ISB` (Linux `local_flush_tlb_page`).
/// Enough, and only enough, for an entry of tables no other CPU walks: a CPU's private view
/// ([`crate::mmu::AddressSpace::add_private_root`]), whose entries no other TLB can hold (TTBR.CnP
/// is 0: translations are not shared between PEs, Arm ARM D8.16). The pair is repeated where the
/// errata want it, as Linux repeats every TLBI.
pub fn invalidate_leaf_local<R: RegimeControl>(va: u64) {
    let page = (va >> 12) & ((1 << 44) - 1);
    let repeat = REPEAT_TLBI.load(Ordering::Relaxed);
    match (R::TLBI_VA, repeat) {
        // SAFETY: barriers and a local TLB invalidation by VA; only TLB state changes.
        (TlbiByVa::Vaae1is, false) => unsafe {
            asm!("dsb nshst", "tlbi vaale1, {page}", "dsb nsh", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above.
        (TlbiByVa::Vaae1is, true) => unsafe {
            asm!("dsb nshst", "tlbi vaale1, {page}", "dsb nsh", "tlbi vaale1, {page}", "dsb nsh", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above, for the EL2 regimes (global entries match any ASID under E2H).
        (TlbiByVa::Vae2is, false) => unsafe {
            asm!("dsb nshst", "tlbi vale2, {page}", "dsb nsh", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
        // SAFETY: as above.
        (TlbiByVa::Vae2is, true) => unsafe {
            asm!("dsb nshst", "tlbi vale2, {page}", "dsb nsh", "tlbi vale2, {page}", "dsb nsh", "isb",
                page = in(reg) page, options(nostack, preserves_flags));
        },
    }
}

/// TLB maintenance for a CPU's private view, on that CPU: invalidations stay local
/// ([`invalidate_leaf_local`]). Using it on shared tables would leave other CPUs' TLBs stale.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalTlb<R>(PhantomData<R>);

impl<R> LocalTlb<R> {
    /// The local maintenance of regime `R`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<R: RegimeControl> TlbMaintenance<R> for LocalTlb<R> {
    /// [`invalidate_leaf_local`]: the private entries are leaves (a view's tables are made once
    /// and never unlinked).
    fn invalidate_va(&mut self, va: u64, _level: u8) {
        invalidate_leaf_local::<R>(va);
    }

    /// A private view's root entry is never rewritten; a local `TLBI VMALLE1` / `ALLE2` if asked.
    fn invalidate_all(&mut self) {
        barrier::dsb(barrier::NSHST);
        invalidate_all_local_tlb::<R>();
    }

    /// `DSB ISHST; ISB`, as for shared tables (the walker must see the new entry).
    fn publish(&mut self) {
        barrier::dsb(barrier::ISHST);
        barrier::isb(barrier::SY);
    }
}

/// `TLBI VMALLE1` or `TLBI ALLE2`; `DSB NSH; ISB`: this CPU's TLB for regime `R` dropped.
fn invalidate_all_local_tlb<R: RegimeControl>() {
    match R::TLBI_ALL {
        // SAFETY: a local invalidation of this CPU's TLB; only TLB state changes.
        TlbiAll::Vmalle1 => unsafe {
            asm!(
                "tlbi vmalle1",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        },
        // SAFETY: as above, for the EL2 regimes.
        TlbiAll::Alle2 => unsafe {
            asm!(
                "tlbi alle2",
                "dsb nsh",
                "isb",
                options(nostack, preserves_flags)
            )
        },
    }
}

/// The root table regime `R` walks for `range` on this CPU (TTBR0_ELx or TTBR1_ELx BADDR).
pub fn ttbr<R: RegimeControl>(range: VaRange) -> u64 {
    match (R::REGISTERS, range.is_upper()) {
        (ControlRegisters::El1, false) => TTBR0_EL1.get_baddr(),
        (ControlRegisters::El1, true) => TTBR1_EL1.get_baddr(),
        (ControlRegisters::El2, false) => TTBR0_EL2.get_baddr(),
        (ControlRegisters::El2, true) => {
            let value: u64;
            // SAFETY: reads TTBR1_EL2 (S3_4_C2_C0_1), which exists in the EL2&0 regime (E2H = 1),
            // the only EL2 regime with an upper range.
            unsafe { asm!("mrs {}, S3_4_C2_C0_1", out(reg) value, options(nomem, nostack)) };
            value & TTBR_BADDR
        }
    }
}

/// TTBR_ELx.BADDR, bits \[47:1\].
const TTBR_BADDR: u64 = 0x0000_ffff_ffff_fffe;
/// TTBR_ELx.CnP, bit 0: with 1, other PEs with the same TTBR may share its TLB entries.
const TTBR_CNP: u64 = 1;

/// Switches this CPU to the root at `pa` for `range` (TTBR0_ELx or TTBR1_ELx): BADDR replaced,
/// the ASID kept, CnP cleared (Arm ARM D8.16: with CnP = 0 no other PE may use this PE's TLB
/// entries, which is what makes a CPU's view private), then drops this CPU's TLB for the regime
/// (`TLBI VMALLE1` or `ALLE2`, `DSB NSH`, `ISB`), so no walk-cache entry of the old root survives.
///
/// # Safety
/// The new root maps everything this CPU uses exactly as the old one does (a view of the same
/// tables), so the switch changes no translation the running code depends on.
pub unsafe fn switch_root<R: RegimeControl>(range: VaRange, pa: u64) {
    let swap = |old: u64| (old & !(TTBR_BADDR | TTBR_CNP)) | (pa & TTBR_BADDR);
    // Table walks of the new root must see the root's entries.
    barrier::dsb(barrier::ISHST);
    match (R::REGISTERS, range.is_upper()) {
        (ControlRegisters::El1, false) => TTBR0_EL1.set(swap(TTBR0_EL1.get())),
        (ControlRegisters::El1, true) => TTBR1_EL1.set(swap(TTBR1_EL1.get())),
        (ControlRegisters::El2, false) => TTBR0_EL2.set(swap(TTBR0_EL2.get())),
        (ControlRegisters::El2, true) => {
            // SAFETY: as for `ttbr`: TTBR1_EL2 (S3_4_C2_C0_1) under E2H = 1; the caller's contract
            // makes the switch invisible to the running code.
            unsafe {
                let old: u64;
                asm!("mrs {}, S3_4_C2_C0_1", out(reg) old, options(nomem, nostack));
                asm!("msr S3_4_C2_C0_1, {}", in(reg) swap(old), options(nostack));
            }
        }
    }
    barrier::isb(barrier::SY);
    invalidate_all_local_tlb::<R>();
}
