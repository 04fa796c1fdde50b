//! What the machine is: its RAM, the memory that is not ours to use, its CPUs and the devices the
//! kernel drives, as the loader's device tree describes them ([`dtb`]) or, when there is none, as the
//! board's static description says; and where the kernel puts its own regions in that map
//! ([`plan`]). Portable: both run in host tests on real device trees.

pub mod dtb;
pub mod plan;

use arrayvec::ArrayVec;

use crate::layout::Region;

/// RAM banks recorded (memory nodes' `reg` entries).
pub const MAX_RAM_BANKS: usize = 8;
/// Reserved ranges recorded (memreserve entries, `/reserved-memory` children, the tree itself).
pub const MAX_RESERVED: usize = 16;
/// CPUs recorded from `/cpus` (the kernel brings up as many as it has stacks for).
pub const MAX_CPUS: usize = 16;

/// How the PSCI firmware interface is called (the `/psci` node's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `HVC #0`: the firmware (or a hypervisor) runs at EL2.
    Hvc,
    /// `SMC #0`: the firmware runs at EL3.
    Smc,
}

/// How a secondary CPU is started (its `enable-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    /// PSCI `CPU_ON`.
    Psci,
    /// The spin table: write the entry address to this physical address, clean it, `SEV`.
    SpinTable(u64),
    /// Neither (or the boot CPU of a tree that names no method).
    Unknown,
}

/// One CPU of `/cpus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its MPIDR affinity value (the `reg` property: Aff3 in bits \[39:32\], Aff2..Aff0 in \[23:0\]).
    pub mpidr: u64,
    /// How it is started.
    pub enable: EnableMethod,
}

/// The interrupt controller's programming interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    /// GICv2 (GIC-400, QEMU `arm,cortex-a15-gic`): distributor and the CPU interface, whose
    /// GICC_DIR sits in its second 4 KiB page (so both pages are mapped).
    V2 {
        /// GICD.
        distributor: Region,
        /// GICC.
        cpu_interface: Region,
    },
    /// GICv3: distributor and redistributors (system-register CPU interface).
    V3 {
        /// GICD.
        distributor: Region,
        /// All redistributor frames.
        redistributors: Region,
    },
}

impl Gic {
    /// The MMIO regions to map.
    pub fn regions(&self) -> [Region; 2] {
        match *self {
            Self::V2 {
                distributor,
                cpu_interface,
            } => [distributor, cpu_interface],
            Self::V3 {
                distributor,
                redistributors,
            } => [distributor, redistributors],
        }
    }
}

/// Where the description came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A flattened device tree at this physical address, of this many bytes.
    DeviceTree {
        /// Its address.
        address: u64,
        /// `totalsize` from its header.
        size: u64,
    },
    /// No valid device tree was found: the board's static description.
    Static,
}

/// The machine as the kernel needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Where this came from.
    pub source: Source,
    /// RAM banks, in the order the tree lists them.
    pub ram: ArrayVec<Region, MAX_RAM_BANKS>,
    /// Memory inside RAM the kernel must leave alone: the memreserve block, `/reserved-memory`
    /// children with a `reg`, and the device tree itself.
    pub reserved: ArrayVec<Region, MAX_RESERVED>,
    /// CPUs, in `/cpus` order.
    pub cpus: ArrayVec<Cpu, MAX_CPUS>,
    /// The console PL011 (`/chosen/stdout-path`, else the first enabled `arm,pl011`).
    pub uart: Option<Region>,
    /// The interrupt controller.
    pub gic: Option<Gic>,
    /// The PSCI conduit, if the tree has a `/psci` node.
    pub psci: Option<PsciConduit>,
    /// The generic timer's frequency, where the tree states it (`/timer` `clock-frequency`).
    pub timer_hz: Option<u32>,
}

impl Machine {
    /// A machine described by constants (a board's fallback when no device tree is found): one RAM
    /// bank, the console UART and the GIC; CPUs and reserved ranges are for the caller to add.
    pub fn fixed(ram: Region, uart: Region, gic: Gic) -> Self {
        let mut machine = Self {
            source: Source::Static,
            ram: ArrayVec::new(),
            reserved: ArrayVec::new(),
            cpus: ArrayVec::new(),
            uart: Some(uart),
            gic: Some(gic),
            psci: None,
            timer_hz: None,
        };
        machine.ram.push(ram);
        machine
    }

    /// RAM in all banks.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|r| r.size).sum()
    }
}

#[cfg(test)]
mod tests;
