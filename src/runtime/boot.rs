//! Entry point `_start` (boot.s): stays at EL2 when entered there (with VHE where the CPU has it),
//! else drops from EL3 to EL1 (or starts at EL1); enables FP/SIMD, installs the vectors of its
//! level, parks secondary CPUs, zeroes .bss and calls `kernel_entry` (`runtime::start`).

/// CPUs the boot code has a stack for; any others stay parked.
pub const MAX_CPUS: usize = 4;
/// Boot stack of each CPU.
pub const STACK_SIZE: usize = 64 * 1024;
/// Unmapped page under each stack, so an overflow faults instead of corrupting memory.
pub const STACK_GUARD_SIZE: usize = 4096;

core::arch::global_asm!(
    include_str!("boot.s"),
    MAX_CPUS = const MAX_CPUS,
    STACK_SLOT = const STACK_GUARD_SIZE + STACK_SIZE,
);

/// "No CPU" in [`CPU_AFFINITY`].
pub const NO_CPU: u64 = u64::MAX;

/// The MPIDR_EL1 affinity (Aff3 << 32 | Aff2..Aff0) of each CPU index, [`NO_CPU`] where none:
/// boot.s gives a CPU the index where it finds its affinity, from 1; a CPU not there is the boot
/// CPU (index 0, which records itself here), and any later one stays parked. Before the kernel
/// has read the device tree it lists the CPUs the board's loader starts together with the boot
/// CPU (`board::STARTED_WITH_BOOT_CPU`); `runtime::smp` then adds the tree's other CPUs before it
/// starts them. In `.data` so that it is valid before .bss is cleared; read with the MMU off.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
pub static CPU_AFFINITY: [core::sync::atomic::AtomicU64; MAX_CPUS] = initial_affinity();

const fn initial_affinity() -> [core::sync::atomic::AtomicU64; MAX_CPUS] {
    let mut table = [const { core::sync::atomic::AtomicU64::new(NO_CPU) }; MAX_CPUS];
    let started = crate::runtime::board::STARTED_WITH_BOOT_CPU;
    let mut i = 0;
    while i < started.len() && i + 1 < MAX_CPUS {
        table[i + 1] = core::sync::atomic::AtomicU64::new(started[i]);
        i += 1;
    }
    table
}

/// The affinity fields of an MPIDR_EL1 value (Aff3, Aff2, Aff1, Aff0), as [`CPU_AFFINITY`] holds
/// them and as PSCI `CPU_ON` and the device tree's `reg` name a CPU.
pub const fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

/// Entry addresses for parked secondary CPUs, indexed by CPU number (0 = never used). In `.data`
/// so that it reads as zero before .bss is cleared.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
pub static SECONDARY_ENTRY: [core::sync::atomic::AtomicU64; MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_CPUS];

/// The services of the EL2 stub that boot.s leaves below the kernel when it was entered at EL2 or
/// EL3 (`HVC #0` with the function in x0; see boot.s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum El2Stub {
    /// Make a virtual SError pending at EL1 (HCR_EL2.AMO and VSE): it is taken as soon as
    /// PSTATE.A is clear. Until [`El2Stub::EndVirtualSError`], physical SErrors go to EL2.
    RaiseVirtualSError = 1,
    /// Clear HCR_EL2.AMO and VSE: physical SErrors are taken at EL1 again.
    EndVirtualSError = 2,
}

/// Whether the EL2 stub is there: the kernel was entered at EL3 and dropped to EL1, and the CPU
/// has EL2. (Entered at EL2 the kernel stays there: no stub.)
pub fn el2_stub_present(entry_el: u8) -> bool {
    use aarch64_cpu::registers::{ID_AA64PFR0_EL1, Readable};
    // ID_AA64PFR0_EL1.EL2, bits [11:8] (aarch64-cpu names no field for it).
    entry_el == 3
        && crate::arch::aarch64::cpu::current_el() == 1
        && (ID_AA64PFR0_EL1.get() >> 8) & 0xf != 0
}

/// Calls the EL2 stub; returns 0, or -1 for a function it does not know.
///
/// # Safety
/// The stub must be present ([`el2_stub_present`]). [`El2Stub::RaiseVirtualSError`] raises an
/// SError at EL1 that the caller must expect, and must be followed by
/// [`El2Stub::EndVirtualSError`].
pub unsafe fn el2_stub_call(function: El2Stub) -> i64 {
    let result: i64;
    // SAFETY: forwarded to the caller; the stub preserves every register but x0.
    unsafe {
        core::arch::asm!("hvc #0", inout("x0") function as u64 => result, options(nostack));
    }
    result
}
