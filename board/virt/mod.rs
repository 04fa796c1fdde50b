//! QEMU `virt` (the default board): `-M virt -cpu cortex-a72 -m 512M`, optionally
//! `virtualization=on` (entry at EL2). RAM, CPUs, the GIC, the UART and the PSCI conduit come from
//! the device tree QEMU places at the start of RAM; the constants here are the fallback when no
//! tree is found (QEMU's hw/arm/virt.c memory map).

use crate::layout::Region;
use crate::machine::plan::Needs;
use crate::machine::{Cpu, EnableMethod, Gic, Machine};

/// Short name, as in `BOARD=virt`.
pub const NAME: &str = "virt";
/// What it is.
pub const DESCRIPTION: &str = "QEMU virt, Cortex-A72, GICv2, PL011";
/// CPUs the kernel can run (it has a boot stack and a poke slot for each).
pub const CPUS: usize = 4;
/// The CPUs (MPIDR affinity) the loader starts at the kernel's entry together with the boot CPU:
/// none, QEMU starts the others powered off (PSCI `CPU_ON`).
pub const STARTED_WITH_BOOT_CPU: &[u64] = &[];
/// Where the loader may leave a device tree without passing it in x0: QEMU puts it at the start
/// of RAM for an ELF kernel (x0 = 0); its raw-image boot passes the address in x0.
pub const DEVICE_TREE_PROBE: Option<u64> = Some(0x4000_0000);
/// RAM every virt machine has (`-m 128M`, QEMU's default): where a device tree may be looked for,
/// and the RAM of the static map.
pub const STATIC_RAM: Region = Region::new("RAM", 0x4000_0000, 128 << 20);
/// Console PL011 (UART0), if the tree names none.
pub const UART: Region = Region::new("PL011 UART", 0x0900_0000, 0x1000);
/// PL011 reference clock (the `apb-pclk` of QEMU's device tree; QEMU ignores the divisor).
pub const UART_CLOCK_HZ: u32 = 24_000_000;
/// Generic timer frequency if the tree states none (QEMU sets CNTFRQ_EL0 to 62.5 MHz itself).
pub const TIMER_HZ: u32 = 62_500_000;
/// Devices the kernel maps besides the UART and the GIC.
pub const OTHER_DEVICES: &[Region] = &[];
/// What the manager and runtime need of RAM and address space.
pub const NEEDS: Needs = Needs::STANDARD;

/// The machine when no device tree is found.
pub fn static_machine() -> Machine {
    let gic = Gic::V2 {
        distributor: Region::new("GICv2 GICD", 0x0800_0000, 0x1_0000),
        cpu_interface: Region::new("GICv2 GICC", 0x0801_0000, 0x1_0000),
    };
    let mut machine = Machine::fixed(STATIC_RAM, UART, gic);
    machine.cpus.push(Cpu {
        mpidr: 0,
        enable: EnableMethod::Unknown,
    });
    machine
}

/// The virt UART needs no pin set-up.
pub fn init_console_pins() {}
