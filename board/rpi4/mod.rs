//! Raspberry Pi 4 Model B (BCM2711, 4 × Cortex-A72), and QEMU `-M raspi4b`. Peripherals in the
//! "low peripheral" mode the firmware sets up by default (BCM2711 ARM Peripherals, 1.2).

use tock_registers::{
    interfaces::ReadWriteable, register_bitfields, register_structs, registers::ReadWrite,
};

use crate::kernel::mmio::Mmio;
use crate::layout::Region;

/// Short name, as in `BOARD=rpi4`.
pub const NAME: &str = "rpi4";
/// What it is.
pub const DESCRIPTION: &str = "Raspberry Pi 4 Model B, BCM2711, Cortex-A72, GIC-400, PL011";
/// CPUs (the secondaries wait on the firmware's spin table at 0xd8..0xf0).
pub const CPUS: usize = 4;
/// RAM used by the kernel: the low 960 MiB, below the VideoCore's share at the top of the first GiB,
/// which config.txt pins to 64 MiB (`gpu_mem=64`). QEMU raspi4b has 2 GiB; real boards 1 to 8 GiB.
pub const RAM: Region = Region::new("RAM", 0, 960 << 20);
/// Console PL011 (UART0), on GPIO 14/15.
pub const UART: Region = Region::new("PL011 UART0", 0xfe20_1000, 0x200);
/// PL011 reference clock; config.txt pins it with `init_uart_clock=48000000`.
pub const UART_CLOCK_HZ: u32 = 48_000_000;
/// GPIO block, for the console pins.
const GPIO: Region = Region::new("GPIO", 0xfe20_0000, 0x100);
/// Devices the kernel maps.
pub const DEVICES: &[Region] = &[
    GPIO,
    UART,
    Region::new("GIC-400 GICD+GICC", 0xff84_1000, 0x2000),
];
/// Kernel heap size.
pub const HEAP_SIZE: u64 = 32 << 20;
/// VA window for exec packs: 32 packs of 2 MiB from 64 MiB up, within one `BL` of the kernel
/// text at 0x8_0000 both ways (checked at boot). RAM starts at 0 here, so the window sits inside the
/// RAM's identity range; the RAM map leaves a hole for it.
pub const EXEC_POOL_VA: Region = Region::new("exec pool (VA)", 0x0400_0000, 64 << 20);
/// Physical memory behind the packs: the RAM under the pool window, which the RAM map leaves out
/// anyway (the pool maps it at the same addresses, but only through 2 MiB RX blocks).
pub const EXEC_FRAMES: Region = Region::new("exec frames (PA)", 0x0400_0000, 64 << 20);
/// Fixmap window: the per-CPU 4 KiB text-poke slots in its first 2 MiB, the pack-fill block in the
/// second (a hole in the RAM map too).
pub const FIXMAP_VA: Region = Region::new("fixmap (VA)", 0x03c0_0000, 4 << 20);

register_bitfields! {
    u32,
    GPFSEL1 [
        /// GPIO 15: RXD0 is alternate function 0.
        FSEL15 OFFSET(15) NUMBITS(3) [Input = 0b000, Alt0 = 0b100],
        /// GPIO 14: TXD0 is alternate function 0.
        FSEL14 OFFSET(12) NUMBITS(3) [Input = 0b000, Alt0 = 0b100]
    ],
    GPIO_PUP_PDN_CNTRL_REG0 [
        /// GPIO 15 pull: none.
        GPIO_PUP_PDN_CNTRL15 OFFSET(30) NUMBITS(2) [NoResistor = 0b00],
        /// GPIO 14 pull: none.
        GPIO_PUP_PDN_CNTRL14 OFFSET(28) NUMBITS(2) [NoResistor = 0b00]
    ]
}

register_structs! {
    #[allow(non_snake_case)]
    GpioRegisters {
        (0x00 => _reserved0),
        (0x04 => GPFSEL1: ReadWrite<u32, GPFSEL1::Register>),
        (0x08 => _reserved1),
        (0xe4 => GPIO_PUP_PDN_CNTRL_REG0: ReadWrite<u32, GPIO_PUP_PDN_CNTRL_REG0::Register>),
        (0xe8 => @END),
    }
}

/// Routes UART0 to GPIO 14/15 without pulls (BCM2711 ARM Peripherals, 5.3). The firmware may have
/// done it already; doing it again is harmless and makes the console independent of config.txt.
pub fn init_console_pins() {
    // SAFETY: GPIO is the BCM2711 GPIO block in low-peripheral mode; the kernel drives no other pin.
    let gpio: Mmio<GpioRegisters> = unsafe { Mmio::new(GPIO.start as usize) };
    gpio.GPFSEL1
        .modify(GPFSEL1::FSEL14::Alt0 + GPFSEL1::FSEL15::Alt0);
    gpio.GPIO_PUP_PDN_CNTRL_REG0.modify(
        GPIO_PUP_PDN_CNTRL_REG0::GPIO_PUP_PDN_CNTRL14::NoResistor
            + GPIO_PUP_PDN_CNTRL_REG0::GPIO_PUP_PDN_CNTRL15::NoResistor,
    );
}
