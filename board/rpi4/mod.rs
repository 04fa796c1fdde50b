//! Raspberry Pi 4 Model B (BCM2711, 4 × Cortex-A72), and QEMU `-M raspi4b`. Peripherals in the
//! "low peripheral" mode the firmware sets up by default (BCM2711 ARM Peripherals, 1.2).

use tock_registers::{
    interfaces::ReadWriteable, register_bitfields, register_structs, registers::ReadWrite,
};

use crate::layout::Region;
use crate::machine::plan::Needs;
use crate::machine::{Cpu, EnableMethod, Gic, Machine};
use crate::runtime::mmio::Mmio;

/// Short name, as in `BOARD=rpi4`.
pub const NAME: &str = "rpi4";
/// What it is.
pub const DESCRIPTION: &str = "Raspberry Pi 4 Model B, BCM2711, Cortex-A72, GIC-400, PL011";
/// CPUs the kernel can run (the secondaries wait on the firmware's spin table at 0xd8..0xf0).
pub const CPUS: usize = 4;
/// The CPUs (MPIDR affinity) the loader may start at the kernel's entry together with the boot
/// CPU: QEMU raspi4b with an ELF kernel starts all four there (the firmware's spin table holds
/// them back on a real Pi).
pub const STARTED_WITH_BOOT_CPU: &[u64] = &[1, 2, 3];
/// Where the loader may leave a device tree without passing it in x0: the Pi firmware and QEMU's
/// raw-image boot pass its address in x0; QEMU raspi4b with an ELF kernel copies it to the start of
/// RAM and leaves x0 = 0. (On a real Pi the firmware's armstub is there, which has no FDT magic.)
pub const DEVICE_TREE_PROBE: Option<u64> = Some(0);
/// RAM every Pi 4 has below the VideoCore's share of the first GiB (the 1 GiB model with the
/// firmware's default `gpu_mem` of 76 MiB has 0x3b40_0000 bytes there): where a device tree may be,
/// and the RAM of the static map.
pub const STATIC_RAM: Region = Region::new("RAM", 0, 0x3b40_0000);
/// Console PL011 (UART0), on GPIO 14/15, if the tree names none.
pub const UART: Region = Region::new("PL011 UART", 0xfe20_1000, 0x200);
/// PL011 reference clock; config.txt pins it with `init_uart_clock=48000000`.
pub const UART_CLOCK_HZ: u32 = 48_000_000;
/// Generic timer frequency if the tree states none: the BCM2711's 54 MHz crystal.
pub const TIMER_HZ: u32 = 54_000_000;
/// GPIO block, for the console pins.
const GPIO: Region = Region::new("GPIO", 0xfe20_0000, 0x100);
/// Devices the kernel maps besides the UART and the GIC.
pub const OTHER_DEVICES: &[Region] = &[GPIO];
/// What the manager and runtime need of RAM and address space.
pub const NEEDS: Needs = Needs::STANDARD;

/// The machine when no device tree is found (the BCM2711's GIC-400 and UART0; the spin table the
/// firmware's armstub keeps at 0xd8..0xf0, in the page it reserves).
pub fn static_machine() -> Machine {
    let gic = Gic::V2 {
        distributor: Region::new("GICv2 GICD", 0xff84_1000, 0x1000),
        cpu_interface: Region::new("GICv2 GICC", 0xff84_2000, 0x2000),
    };
    let mut machine = Machine::fixed(STATIC_RAM, UART, gic);
    machine.reserved.push(Region::new("memreserve", 0, 0x1000));
    for (cpu, release) in [0xd8, 0xe0, 0xe8, 0xf0].into_iter().enumerate() {
        machine.cpus.push(Cpu {
            mpidr: cpu as u64,
            enable: EnableMethod::SpinTable(release),
        });
    }
    machine
}

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
