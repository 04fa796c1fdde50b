//! The bare-metal runtime that hosts the manager: entry from the boot code, console, heap,
//! exceptions, panic, and how a run ends.
//!
//! A kernel binary (the demo, each QEMU test, the benchmark) links this library and names its main
//! function with [`entry!`](crate::entry); `_start` (runtime/boot.s) reaches `start`, which
//! brings the machine up and calls it.

pub mod bench;
pub mod board;
pub mod boot;
pub mod console;
pub mod exception;
pub mod exec_pool;
pub mod fault;
mod firmware;
pub mod gic;
pub mod heap;
pub mod irq;
pub mod memory;
pub mod mmio;
pub mod mmu;
pub mod modules;
mod panic;
pub mod pl011;
pub mod poke;
pub mod probe;
pub mod rendezvous;
pub mod report;
pub mod slot;
pub mod smp;
#[cfg(feature = "qemu")]
pub mod testing;
pub mod trace;

use core::sync::atomic::{AtomicBool, Ordering};

use spin::Once;

use crate::arch::aarch64::cpu;

/// Facts about this boot, for the report and for tests.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Exception level the firmware or QEMU entered the kernel at (1, 2 or 3).
    pub entry_el: u8,
    /// x0 at entry: the device tree address where the loader passes one.
    pub dtb: u64,
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Set once the MMU and caches are on. Before, all memory is Device-nGnRnE and exclusive accesses
/// (spin locks, atomic read-modify-write) may never succeed on real hardware, so the boot path
/// takes no lock and does no atomic read-modify-write until then; only plain loads and stores of
/// this flag.
/// In `.data`: the EL3 firmware duties (and a panic there) read it before `.bss` is zeroed.
#[unsafe(link_section = ".data")]
static LOCKS_READY: AtomicBool = AtomicBool::new(false);

/// Whether spin locks and atomic read-modify-write may be used.
pub fn locks_ready() -> bool {
    LOCKS_READY.load(Ordering::Relaxed)
}

/// Called by `mmu::init` right after the MMU and caches are on.
pub(crate) fn set_locks_ready() {
    LOCKS_READY.store(true, Ordering::Release);
}

/// This boot's facts.
pub fn boot_info() -> BootInfo {
    *BOOT_INFO
        .get()
        .expect("boot info is set before any kernel main runs")
}

unsafe extern "Rust" {
    /// The binary's main function, defined by [`entry!`](crate::entry).
    fn __execmem_main();
    /// The heap the binary asks for, if more than the board's (`entry!(main, heap = ...)`);
    /// defined by [`entry!`](crate::entry).
    static __EXECMEM_HEAP: Option<u64>;
}

/// Rust entry from boot.s on CPU 0: at EL1, stack set, .bss zeroed, FP/SIMD on, vectors installed.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(dtb: u64, entry_el: u64) -> ! {
    start(dtb, entry_el as u8)
}

fn start(x0: u64, entry_el: u8) -> ! {
    // Until mmu::init has turned the MMU on: no locks, no atomic read-modify-write (LOCKS_READY).
    // SAFETY: defined by the binary through `entry!`, with the type declared above; a constant.
    let heap = unsafe { __EXECMEM_HEAP };
    let discovered = memory::discover(x0, heap);
    let uart = discovered.as_ref().ok().and_then(|(m, _)| m.uart);
    console::init(uart.unwrap_or(board::UART));
    let (machine, plan) = discovered.unwrap_or_else(|e| boot_error(format_args!("{e}")));
    // The other CPUs to boot.s's park loop while the MMU is off (a spin-table release address
    // lies in the null page the tables leave unmapped).
    let sent = smp::start_secondaries(&machine);
    // SAFETY: the plan placed the heap in free RAM, apart from the image, the device tree, reserved
    // memory and everything else it placed; this is the only call.
    unsafe { heap::init(plan.heap) };
    assert!(
        matches!(cpu::current_el(), 1 | 2),
        "boot code must leave us at EL1 or EL2"
    );
    let stacks = memory::KernelImage::current().stacks.size;
    let expected = memory::KernelImage::stacks_size();
    assert_eq!(
        stacks, expected,
        "linker.ld's .stacks must match arch::aarch64::boot's stack constants"
    );
    if let Err(e) = mmu::init(&machine, &plan) {
        boot_error(format_args!("address space: {e}"));
    }
    // The SGIs the CPUs send each other (the GIC is mapped now), and WFE waits that see their
    // deadlines.
    gic::init(machine.gic);
    cpu::enable_event_stream();
    memory::publish(machine, plan);
    // The vectors are in place (boot.s), the console works and locks work: from here an SError is
    // reported when it happens instead of staying pending, and IRQs are taken (masked only in
    // critical sections). Not earlier: until now the console and heap are used without their
    // locks, on the premise that nothing interrupts.
    cpu::unmask_serror_and_irq();
    BOOT_INFO.call_once(|| BootInfo { entry_el, dtb: x0 });
    let online = smp::bring_online(sent);
    if online & sent != sent {
        crate::println!(
            "execmem: CPUs {:#x} were started but did not come online within five seconds",
            sent & !online
        );
    }
    exec_pool::init();
    // SAFETY: defined by the binary through `entry!`, with the signature declared above.
    unsafe { __execmem_main() };
    exit(true)
}

/// A boot that cannot go on: one line on the console, then the run ends with failure.
fn boot_error(what: core::fmt::Arguments<'_>) -> ! {
    console::write_fmt_emergency(format_args!("execmem: boot error: {what}\n"));
    exit(false)
}

/// Ends the run: under QEMU (feature `qemu`) through semihosting with the verdict as exit status;
/// on hardware the CPU parks.
pub fn exit(success: bool) -> ! {
    #[cfg(feature = "qemu")]
    {
        use qemu_exit::QEMUExit;
        let semihosting = qemu_exit::AArch64::new();
        if success {
            semihosting.exit_success()
        } else {
            semihosting.exit_failure()
        }
    }
    #[cfg(not(feature = "qemu"))]
    {
        console::write_fmt_emergency(format_args!(
            "execmem: {}; parked\n",
            if success {
                "done"
            } else {
                "stopped on an error"
            }
        ));
        cpu::park()
    }
}

/// Names the kernel binary's main function: `execmem::entry!(main);` with `fn main()`. When it
/// returns, the run ends with success.
///
/// `execmem::entry!(main, heap = BYTES);` also asks for a kernel heap of `BYTES` (a multiple of
/// 2 MiB) instead of the board's (`Needs::heap`), where the machine has the RAM for it; where it
/// has not, the kernel boots with the board's heap (see [`crate::runtime::memory::discover`]).
/// The benchmark does, for the shadow arena of its rlsf baseline; the demo and the tests keep the
/// board's.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!(@define $main, ::core::option::Option::None);
    };
    ($main:path, heap = $heap:expr) => {
        $crate::entry!(@define $main, ::core::option::Option::Some($heap));
    };
    (@define $main:path, $heap:expr) => {
        #[unsafe(no_mangle)]
        fn __execmem_main() {
            let main: fn() = $main;
            main()
        }

        #[unsafe(no_mangle)]
        static __EXECMEM_HEAP: ::core::option::Option<u64> = $heap;
    };
}
