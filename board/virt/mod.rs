//! QEMU `virt` (the default board): `-M virt -cpu cortex-a72 -m 512M`, optionally
//! `virtualization=on` (entry at EL2). Memory map from QEMU's hw/arm/virt.c.

use crate::layout::Region;

/// Short name, as in `BOARD=virt`.
pub const NAME: &str = "virt";
/// What it is.
pub const DESCRIPTION: &str = "QEMU virt, Cortex-A72, GICv2, PL011";
/// CPUs the board can have online (QEMU `-smp`; the boot code has stacks for this many).
pub const CPUS: usize = 4;
/// RAM as QEMU gives it with `-m 512M` (see qemu.modes).
pub const RAM: Region = Region::new("RAM", 0x4000_0000, 512 << 20);
/// Console PL011 (UART0).
pub const UART: Region = Region::new("PL011 UART0", 0x0900_0000, 0x1000);
/// PL011 reference clock (the `apb-pclk` of QEMU's device tree; QEMU ignores the divisor).
pub const UART_CLOCK_HZ: u32 = 24_000_000;
/// Devices the kernel maps.
pub const DEVICES: &[Region] = &[Region::new("GICv2 GICD+GICC", 0x0800_0000, 0x2_0000), UART];
/// Kernel heap size.
pub const HEAP_SIZE: u64 = 32 << 20;
/// VA window for exec packs: 32 packs of 2 MiB just below RAM, within one `BL` of the kernel text
/// both ways (checked at boot). Nothing else is mapped there.
pub const EXEC_POOL_VA: Region = Region::new("exec pool (VA)", 0x3c00_0000, 64 << 20);
/// Physical memory behind the packs: the top 64 MiB of RAM, which the RAM map leaves out, so exec
/// memory has no writable identity alias.
pub const EXEC_FRAMES: Region = Region::new("exec frames (PA)", 0x5c00_0000, 64 << 20);
/// Fixmap window: the per-CPU 4 KiB text-poke slots in its first 2 MiB, the pack-fill block in the
/// second.
pub const FIXMAP_VA: Region = Region::new("fixmap (VA)", 0x3bc0_0000, 4 << 20);

/// The virt UART needs no pin set-up.
pub fn init_console_pins() {}
