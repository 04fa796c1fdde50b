//! Entry point `_start` (boot.s): drops from EL3 or EL2 to EL1, enables FP/SIMD, installs the
//! vectors, parks secondary CPUs, zeroes .bss and calls [`kernel_entry`](crate::kernel::start).

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

/// Entry addresses for parked secondary CPUs, indexed by CPU number (0 = never used). In `.data`
/// so that it reads as zero before .bss is cleared.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
pub static SECONDARY_ENTRY: [core::sync::atomic::AtomicU64; MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_CPUS];
