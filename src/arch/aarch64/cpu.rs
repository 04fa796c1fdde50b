//! Identity and state of the running CPU, read from system registers.

use aarch64_cpu::registers::{CNTFRQ_EL0, CurrentEL, MIDR_EL1, MPIDR_EL1, Readable};

use crate::cpu::{CacheType, Midr};

/// This CPU's MIDR_EL1.
pub fn midr() -> Midr {
    Midr(MIDR_EL1.get())
}

/// This CPU's cache geometry, from CTR_EL0.
pub fn cache_type() -> CacheType {
    CacheType::from_ctr(ctr_el0())
}

/// CTR_EL0 raw (aarch64-cpu has no accessor for it).
pub fn ctr_el0() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects and is permitted at EL1 (and at EL0 unless
    // SCTLR_EL1.UCT traps it, which does not concern EL1).
    unsafe {
        core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags))
    };
    ctr
}

/// The generic timer's frequency in Hz (CNTFRQ_EL0, which only the highest exception level can set).
pub fn timer_frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// Copies `dst.len()` bytes from physical address `pa` with byte loads. For memory that Rust cannot
/// point at: address 0, where QEMU raspi4b puts the device tree for an ELF kernel, is RAM there,
/// but a null pointer to Rust.
///
/// # Safety
/// The MMU must be off (or `pa` identity-mapped), and `pa .. pa + dst.len()` must be readable
/// memory that nothing writes meanwhile.
pub unsafe fn copy_from_physical(dst: &mut [u8], pa: u64) {
    if dst.is_empty() {
        return;
    }
    // SAFETY: forwarded to the caller: the source range is readable; `dst` is ours to write.
    unsafe {
        core::arch::asm!(
            "1: ldrb {byte:w}, [{src}], #1",
            "strb {byte:w}, [{dst}], #1",
            "subs {left}, {left}, #1",
            "b.ne 1b",
            src = inout(reg) pa => _,
            dst = inout(reg) dst.as_mut_ptr() => _,
            left = inout(reg) dst.len() => _,
            byte = out(reg) _,
            options(nostack)
        )
    };
}

/// Unmasks SError (PSTATE.A) and IRQ (PSTATE.I); debug exceptions and FIQ stay masked (FIQ is the
/// secure world's Group 0 on these boards).
pub fn unmask_serror_and_irq() {
    use aarch64_cpu::registers::{DAIF, ReadWriteable};
    DAIF.modify(DAIF::A::Unmasked + DAIF::I::Unmasked);
}

/// Whether the CPU has VHE (ID_AA64MMFR1_EL1.VH, bits \[11:8\]).
pub fn has_vhe() -> bool {
    use aarch64_cpu::registers::ID_AA64MMFR1_EL1;
    (ID_AA64MMFR1_EL1.get() >> 8) & 0xf != 0
}

/// Whether HCR_EL2.E2H may be 0 (FEAT_E2H0): ID_AA64MMFR4_EL1.E2H0, bits \[27:24\], is 0 when it
/// may; a negative value (0b1110, 0b1111) means E2H is RES1, so EL2 only runs with VHE.
pub fn e2h_is_res1() -> bool {
    let mmfr4: u64;
    // SAFETY: reading an ID register (ID_AA64MMFR4_EL1, S3_0_C0_C7_4, RAZ before Armv8.7's
    // definition) has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, S3_0_C0_C7_4", out(reg) mmfr4, options(nomem, nostack, preserves_flags))
    };
    (mmfr4 >> 24) & 0xf >= 0b1110
}

/// The current exception level (0..=3).
pub fn current_el() -> u8 {
    CurrentEL.read(CurrentEL::EL) as u8
}

/// This CPU's MPIDR_EL1 affinity fields (Aff3 << 32 | Aff2..Aff0): what names it to PSCI and
/// in the device tree. A kernel maps it to its own CPU index (cores of several clusters share
/// Aff0).
pub fn mpidr_affinity() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// The bit of the counter whose transitions make the event stream: one event every 2^11 ticks,
/// 33 us at 62.5 MHz (QEMU virt), 38 us at 54 MHz (Pi 4).
const EVENT_STREAM_BIT: u64 = 10;

/// Turns the generic timer's event stream on for this CPU: a `WFE` wake-up event at every rising
/// edge of counter bit 10 (every 2^11 ticks; Arm ARM D12.2.3, "Event streams"), so that a `WFE`
/// wait for another CPU's store also wakes when no `SEV` comes, and sees its deadline. Through
/// CNTKCTL_EL1 at EL1 and CNTHCTL_EL2 at EL2 (EVNTEN is bit 2 and EVNTI bits \[7:4\] in both of
/// CNTHCTL_EL2's layouts).
pub fn enable_event_stream() {
    const EVNTEN: u64 = 1 << 2;
    const EVNTI: u64 = 0xf << 4;
    let bits = EVNTEN | (EVENT_STREAM_BIT << 4);
    if current_el() == 2 {
        use aarch64_cpu::registers::{CNTHCTL_EL2, Writeable};
        CNTHCTL_EL2.set((CNTHCTL_EL2.get() & !EVNTI) | bits);
    } else {
        use aarch64_cpu::registers::{CNTKCTL_EL1, Writeable};
        CNTKCTL_EL1.set((CNTKCTL_EL1.get() & !EVNTI) | bits);
    }
}

/// Waits for an event, forever: where a CPU goes when there is nothing left to do.
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
