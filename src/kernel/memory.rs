//! The kernel image's sections, from the linker script's symbols, and the regions placed after
//! it (heap).

use crate::arch::aarch64::boot::{MAX_CPUS, STACK_GUARD_SIZE, STACK_SIZE};
use crate::board;
use crate::layout::Region;

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
    static __kernel_end_exclusive: u8;
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

/// The heap: the board's heap size, starting at the first 2 MiB boundary after the image (so it can
/// be mapped with blocks).
pub fn heap_region() -> Region {
    // SAFETY: linker-defined symbol; only its address is taken.
    let end = unsafe { addr(&__kernel_end_exclusive) };
    let start = end.next_multiple_of(2 << 20);
    Region::new("heap", start, board::HEAP_SIZE)
}
