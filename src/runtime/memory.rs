//! The memory map of this boot: the kernel image's sections (from the linker script's symbols),
//! the machine (from the loader's device tree, or the board's static map when there is none) and
//! where the heap, exec pool, exec frames and fixmap were placed in it.

use core::cell::UnsafeCell;
use core::fmt;

use spin::Once;

use crate::arch::aarch64::cpu;
use crate::layout::Region;
use crate::machine::dtb::{self, DtbError};
use crate::machine::plan::{self, MemoryPlan, PlanError};
use crate::machine::{Machine, Source};
use crate::runtime::board;
use crate::runtime::boot::{MAX_CPUS, STACK_GUARD_SIZE, STACK_SIZE};
use crate::runtime::mmu::{LayoutError, check_exec_layout};

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_end_exclusive: u8;
    static __rodata_start: u8;
    static __rodata_end_exclusive: u8;
    static __data_start: u8;
    static __bss_start: u8;
    static __bss_end_exclusive: u8;
    static __stacks_start: u8;
    static __stacks_end_exclusive: u8;
}

fn addr(symbol: &u8) -> u64 {
    symbol as *const u8 as u64
}

/// The kernel image, section by section, as linked (all page aligned; see linker.ld).
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    /// Code: `.text` (boot code and vectors first).
    pub text: Region,
    /// Read-only data.
    pub rodata: Region,
    /// `.data` and `.bss`.
    pub data: Region,
    /// Boot stacks, each with a guard page below it.
    pub stacks: Region,
}

impl KernelImage {
    /// The image the running kernel was linked as.
    pub fn current() -> Self {
        // SAFETY: the symbols are defined by linker.ld; only their addresses are taken.
        let (start, text_end, ro_start, ro_end, data_start, stacks_start, stacks_end) = unsafe {
            (
                addr(&__kernel_start),
                addr(&__text_end_exclusive),
                addr(&__rodata_start),
                addr(&__rodata_end_exclusive),
                addr(&__data_start),
                addr(&__stacks_start),
                addr(&__stacks_end_exclusive),
            )
        };
        Self {
            text: Region::from_bounds("kernel .text", start, text_end),
            rodata: Region::from_bounds("kernel .rodata", ro_start, ro_end),
            data: Region::from_bounds("kernel .data/.bss", data_start, stacks_start),
            stacks: Region::from_bounds("boot stacks + guards", stacks_start, stacks_end),
        }
    }

    /// The whole image.
    pub fn all(&self) -> Region {
        Region::from_bounds("kernel", self.text.start, self.stacks.end())
    }

    /// The guard page under CPU `cpu`'s stack.
    pub fn stack_guard(&self, cpu: usize) -> Region {
        let slot = (STACK_GUARD_SIZE + STACK_SIZE) as u64;
        Region::new(
            "stack guard",
            self.stacks.start + cpu as u64 * slot,
            STACK_GUARD_SIZE as u64,
        )
    }

    /// CPU `cpu`'s stack (without its guard).
    pub fn stack(&self, cpu: usize) -> Region {
        let guard = self.stack_guard(cpu);
        Region::new("stack", guard.end(), STACK_SIZE as u64)
    }

    /// Number of boot stacks.
    pub const fn stack_count(&self) -> usize {
        MAX_CPUS
    }

    /// Bytes the boot code expects `.stacks` to have (linker.ld reserves them): a guard page and a
    /// stack per CPU.
    pub const fn stacks_size() -> u64 {
        (MAX_CPUS * (STACK_GUARD_SIZE + STACK_SIZE)) as u64
    }
}

/// `.bss` bounds (for the boot report).
pub fn bss() -> Region {
    // SAFETY: linker-defined symbols; only addresses are taken.
    unsafe {
        Region::from_bounds(
            "kernel .bss",
            addr(&__bss_start),
            addr(&__bss_end_exclusive),
        )
    }
}

/// Why this boot has no usable memory map: reported in one line, then the kernel stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// A device tree was found (its magic is there) but cannot be used.
    DeviceTree {
        /// Where it is.
        address: u64,
        /// What is wrong with it.
        error: DtbError,
    },
    /// The kernel's regions do not fit the machine's memory.
    Placement {
        /// Where the map came from.
        source: Source,
        /// Why.
        error: PlanError,
    },
    /// The placed regions fail the exec layout check (a placement bug if it ever happens).
    Layout(LayoutError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceTree { address, error } => {
                write!(f, "device tree at {address:#x}: {error}")
            }
            Self::Placement { source, error } => write!(f, "memory map ({source}): {error}"),
            Self::Layout(error) => write!(f, "exec layout: {error}"),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceTree { address, size } => {
                write!(f, "device tree at {address:#x}, {size} bytes")
            }
            Self::Static => write!(
                f,
                "static map of board {} (no device tree found)",
                board::NAME
            ),
        }
    }
}

/// Where a device tree copy goes when its property names need filtering (`machine::dtb`): the
/// firmware's Raspberry Pi 4 trees are about 55 KiB.
const DTB_SCRATCH_SIZE: usize = 128 << 10;

struct Scratch(UnsafeCell<[u8; DTB_SCRATCH_SIZE]>);

// SAFETY: used by CPU 0 alone, before any other CPU runs Rust at EL1: at EL3 (`runtime::firmware`,
// while the other CPUs wait) and again at EL1 (`discover`), one after the other.
unsafe impl Sync for Scratch {}

static DTB_SCRATCH: Scratch = Scratch(UnsafeCell::new([0; DTB_SCRATCH_SIZE]));

/// The device tree the loader left: at `x0` if it points to one, else at the board's probe address.
/// A candidate is read only if it is 8-byte aligned inside the RAM every variant of the board has
/// (so looking never faults, even with the MMU off); `None` if no candidate has the FDT magic.
/// Returns the tree's address and size.
fn find_device_tree(x0: u64) -> Result<Option<(u64, u64)>, BootError> {
    let ram = board::STATIC_RAM;
    for address in [Some(x0).filter(|&a| a != 0), board::DEVICE_TREE_PROBE]
        .into_iter()
        .flatten()
    {
        if !address.is_multiple_of(8) || !ram.contains(address) || ram.end() - address < 8 {
            continue;
        }
        let mut prefix = [0; dtb::HEADER_PREFIX];
        // SAFETY: 8 bytes of RAM every board of this kind has; the MMU is off.
        unsafe { cpu::copy_from_physical(&mut prefix, address) };
        let size = match dtb::total_size(prefix) {
            Ok(size) => u64::from(size),
            Err(DtbError::BadMagic(_)) => continue,
            Err(error) => return Err(BootError::DeviceTree { address, error }),
        };
        if size > ram.end() - address {
            let available = ram.end() - address;
            let error = DtbError::Truncated { size, available };
            return Err(BootError::DeviceTree { address, error });
        }
        let image = KernelImage::current().all();
        if Region::new("device tree", address, size).overlaps(&image) {
            let error = DtbError::OverlapsKernel { image };
            return Err(BootError::DeviceTree { address, error });
        }
        return Ok(Some((address, size)));
    }
    Ok(None)
}

/// The machine from the loader's device tree, or the board's static map if there is none. Runs on
/// CPU 0 alone, with the MMU off.
pub fn read_machine(x0: u64) -> Result<Machine, BootError> {
    match find_device_tree(x0)? {
        Some((address, size)) => read_device_tree(address, size),
        None => Ok(board::static_machine()),
    }
}

/// Reads the machine (see [`read_machine`]), places the kernel's regions in it and checks the exec
/// layout, all before anything is written to a placed region. Runs once, on CPU 0, with the MMU off
/// and before the heap exists.
///
/// `heap` is the heap the binary asks for (`entry!(main, heap = ...)`): placed if it is larger than
/// the board's and the machine has the RAM for it, else the board's needs are placed, and their
/// error is the one reported.
pub fn discover(x0: u64, heap: Option<u64>) -> Result<(Machine, MemoryPlan), BootError> {
    let machine = read_machine(x0)?;
    let image = KernelImage::current();
    let place = |needs: &plan::Needs| {
        plan::place(&machine, image.all(), image.text, &devices(&machine), needs)
    };
    let larger = heap
        .filter(|&heap| heap > board::NEEDS.heap)
        .and_then(|heap| {
            place(&plan::Needs {
                heap,
                ..board::NEEDS
            })
            .ok()
        });
    let plan = match larger {
        Some(plan) => plan,
        None => place(&board::NEEDS).map_err(|error| BootError::Placement {
            source: machine.source,
            error,
        })?,
    };
    check_exec_layout(&image, &plan).map_err(BootError::Layout)?;
    Ok((machine, plan))
}

/// Reads the tree at `address`: in place, or from a copy where it sits at address 0 (no Rust
/// reference can point there) or its property names need filtering (`machine::dtb`).
fn read_device_tree(address: u64, size: u64) -> Result<Machine, BootError> {
    // SAFETY: CPU 0 alone calls this, at EL3 and then at EL1, never both at once (see `Scratch`);
    // nothing else uses the buffer.
    let scratch = unsafe { &mut *DTB_SCRATCH.0.get() };
    let error = |error| BootError::DeviceTree { address, error };
    if address == 0 {
        let available = scratch.len() as u64;
        let copy = scratch
            .get_mut(..size as usize)
            .ok_or(error(DtbError::Truncated { size, available }))?;
        // SAFETY: `find_device_tree` checked the tree lies in RAM; the MMU is off.
        unsafe { cpu::copy_from_physical(copy, 0) };
        return dtb::read_copy(copy, address).map_err(error);
    }
    // SAFETY: a non-null range of RAM (checked by `find_device_tree`) holding the loader's tree,
    // which nothing writes while the kernel runs: the memory map leaves it alone.
    let blob = unsafe { core::slice::from_raw_parts(address as *const u8, size as usize) };
    dtb::read(blob, address, scratch).map_err(error)
}

/// Devices [`devices`] lists: the UART, two GIC regions, and the board's own.
const MAX_DEVICES: usize = 8;
const _: () = assert!(
    board::OTHER_DEVICES.len() <= MAX_DEVICES - 3,
    "raise MAX_DEVICES"
);

/// Every MMIO region the kernel maps: the console UART, the GIC, and the board's own.
pub fn devices(machine: &Machine) -> arrayvec::ArrayVec<Region, MAX_DEVICES> {
    let mut devices = arrayvec::ArrayVec::new();
    devices.push(machine.uart.unwrap_or(board::UART));
    if let Some(gic) = machine.gic {
        devices.extend(gic.regions());
    }
    devices.extend(board::OTHER_DEVICES.iter().copied());
    devices
}

/// This boot's machine and memory plan.
pub struct BootMap {
    /// The machine.
    pub machine: Machine,
    /// Where the kernel's regions are.
    pub plan: MemoryPlan,
}

static MAP: Once<BootMap> = Once::new();

/// Keeps the map for the rest of the run. Called once the MMU is on (a `Once` needs atomics).
pub(crate) fn publish(machine: Machine, plan: MemoryPlan) {
    MAP.call_once(|| BootMap { machine, plan });
}

/// This boot's memory map.
pub fn map() -> &'static BootMap {
    MAP.get()
        .expect("the memory map is published at boot, before any kernel main runs")
}

/// The regions the kernel placed.
pub fn plan() -> &'static MemoryPlan {
    &map().plan
}

/// The machine.
pub fn machine() -> &'static Machine {
    &map().machine
}
