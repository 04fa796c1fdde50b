//! What firmware does before it enters a kernel at EL2 or EL1, done by the kernel itself when it is
//! entered at EL3 (QEMU raspi4b with an ELF; a board started without the Pi's armstub): every CPU
//! programs CNTFRQ_EL0, which only the highest exception level can write and which resets to an
//! UNKNOWN value (Arm ARM D12.1.3, "the counter frequency register is written by firmware"), and
//! puts the GIC's interrupts into Group 1 with the distributor and its CPU interface set up, so the
//! non-secure kernel can use them (a GICv2 with the Security Extensions resets every interrupt to
//! Group 0, which non-secure software cannot see or enable: GIC v2 Architecture Specification 4.3.4).
//!
//! It runs before the kernel's own boot: MMU off, .bss not zeroed yet, no exception vectors at EL3.
//! Nothing here may fault: the device tree is read exactly as the EL1 boot will read it again, and a
//! tree the EL1 boot will refuse leaves the board's constants in force.

use core::sync::atomic::{AtomicU64, Ordering};

use core::ptr::NonNull;

use arm_gic::gicv2::{GicV2, registers::Gicc};
use safe_mmio::{UniqueMmioPointer, field};

use crate::machine::Gic;
use crate::runtime::board;
use crate::runtime::memory;

/// CPU 0's findings for the other CPUs: the timer frequency (0 until published), GICD, GICC. In
/// `.data`, which holds its initial value before .bss is cleared.
#[unsafe(link_section = ".data")]
static PUBLISHED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Called by boot.s on every CPU entered at EL3, on its boot stack, before dropping to EL1.
#[unsafe(no_mangle)]
extern "C" fn el3_firmware_setup(cpu: u64, x0: u64) {
    let [timer_hz, gicd, gicc] = &PUBLISHED;
    if cpu == 0 {
        let machine = memory::read_machine(x0).unwrap_or_else(|_| board::static_machine());
        // 0 would also read as "not published yet" below; a tree stating 0 is ignored.
        let hz = machine
            .timer_hz
            .filter(|&hz| hz != 0)
            .unwrap_or(board::TIMER_HZ);
        // The GIC is written with the MMU off, so a tree that puts it over RAM (the kernel, say)
        // is not believed: the board's GIC then.
        let over_ram = |gic: &Gic| {
            gic.regions()
                .iter()
                .any(|r| machine.ram.iter().any(|bank| bank.overlaps(r)))
        };
        let gic = match machine
            .gic
            .filter(|gic| !over_ram(gic))
            .or(board::static_machine().gic)
        {
            Some(Gic::V2 {
                distributor,
                cpu_interface,
            }) => (distributor.start, cpu_interface.start),
            // A GICv3 sets its groups through the redistributors; neither board has one at EL3.
            _ => (0, 0),
        };
        gicd.store(gic.0, Ordering::Relaxed);
        gicc.store(gic.1, Ordering::Relaxed);
        // Plain stores and loads only (the MMU is off: memory is Device, no exclusives).
        timer_hz.store(u64::from(hz), Ordering::Release);
        aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
        aarch64_cpu::asm::sev();
    } else {
        while timer_hz.load(Ordering::Acquire) == 0 {
            aarch64_cpu::asm::wfe();
        }
    }
    let hz = timer_hz.load(Ordering::Acquire);
    // SAFETY: at EL3, CNTFRQ_EL0 is writable and only informs software of the counter's rate.
    unsafe { core::arch::asm!("msr cntfrq_el0, {}", in(reg) hz, options(nomem, nostack)) };
    let (gicd, gicc) = (gicd.load(Ordering::Relaxed), gicc.load(Ordering::Relaxed));
    if gicd != 0 && gicc != 0 {
        let secure = {
            // SAFETY: the tree's (or the board's) GIC-400, not over RAM; at EL3 with the MMU off
            // its registers are Device memory, and nothing else drives it yet. `setup` puts every
            // interrupt in Group 1 (IGROUPR0, banked, for this CPU's SGIs and PPIs; the rest once
            // more, with the same value, on every CPU), enables group 1 at the distributor, this
            // CPU's interface, and a priority mask of 0xff.
            let mut gic = unsafe { GicV2::new(gicd as *mut _, gicc as *mut _) };
            gic.setup();
            gic.typer().has_security_extension()
        };
        if secure {
            // `setup` sets GICC_CTLR bit 0, which in the Secure copy is EnableGrp0; Group 1, what
            // the non-secure kernel uses, is bit 1 there (GIC v2 Architecture Specification
            // 4.4.1). Group 0 stays off: nothing is in it, and it would be signalled as an IRQ the
            // non-secure side cannot acknowledge.
            // SAFETY: this CPU's GICC; the driver above is gone, so this is the only pointer.
            let mut cpu_interface = unsafe {
                UniqueMmioPointer::new(NonNull::new(gicc as *mut Gicc).expect("non-zero"))
            };
            field!(cpu_interface, ctlr).write(0b10);
        }
    }
}
