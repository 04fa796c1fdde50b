//! Where the kernel's own regions go in the machine's memory: the exec pool window (within one `BL`
//! of kernel text, both ways), the fixmap window in a GiB of its own, the heap, and the exec frames behind
//! the packs; and what RAM is left to map as ordinary data. Nothing is placed over the kernel image,
//! reserved memory, the device tree, the devices the kernel maps, or the null page.

use core::fmt;

use arrayvec::ArrayVec;

use super::Machine;
use crate::layout::{self, Region, Size};

const PAGE: u64 = 4 << 10;
const BLOCK: u64 = 2 << 20;
/// Pieces of RAM left to map (each reserved range or placed region splits at most one in two).
pub const MAX_PIECES: usize = 48;
/// Device regions the placement keeps clear of.
pub const MAX_DEVICES: usize = 16;

/// What the manager and the runtime need, in bytes (each a multiple of 2 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The kernel heap.
    pub heap: u64,
    /// The exec pool's VA window (one 2 MiB pack per block).
    pub pool: u64,
    /// The fixmap window: the poke slot's 2 MiB, then the pack-fill block (each CPU's own).
    pub fixmap: u64,
    /// The fewest bytes of exec frames the manager runs with.
    pub min_frames: u64,
    /// RAM for loaded modules' data and rodata, mapped page by page as modules come and go.
    pub module_data: u64,
}

impl Needs {
    /// What the demo runtime asks for: a 32 MiB heap, a 64 MiB pool window (32 packs), the 4 MiB
    /// fixmap, at least 8 MiB of frames (4 packs), and 4 MiB for module data.
    pub const STANDARD: Needs = Needs {
        heap: 32 << 20,
        pool: 64 << 20,
        fixmap: 4 << 20,
        min_frames: 8 << 20,
        module_data: 4 << 20,
    };
}

/// The kernel's regions, placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The kernel heap (RAM, mapped RW + XN).
    pub heap: Region,
    /// The exec pool's VA window (packs mapped RO + X, one L2 block each, while in use).
    pub exec_pool: Region,
    /// The physical frames behind the packs: never identity-mapped. When the pool window lies over
    /// free RAM (a board whose RAM starts at 0), these are that RAM, at the same addresses.
    pub exec_frames: Region,
    /// The fixmap window (poke slots, then the fill block); never mapped but during a poke or fill.
    pub fixmap: Region,
    /// RAM for module data and rodata (2 MiB aligned): identity-mapped page by page while a
    /// module holds it, RW + XN or (rodata) RO + XN, and mapped nowhere else.
    pub module_data: Region,
    /// RAM left for ordinary data mappings (RW + XN), in address order.
    pub free_ram: ArrayVec<Region, MAX_PIECES>,
}

/// Why the kernel's regions do not fit the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The kernel image does not lie inside one RAM bank.
    ImageOutsideRam(Region),
    /// A reserved range covers part of the kernel image.
    ImageOverlapsReserved {
        /// The image.
        image: Region,
        /// The reserved range.
        reserved: Region,
    },
    /// No GiB of the VA range free of the machine's memory and devices for the fixmap.
    NoFixmapWindow {
        /// Bytes the window needs.
        need: u64,
    },
    /// No 2 MiB-aligned window for the pool within one `BL` of the kernel text.
    NoPoolWindow {
        /// The kernel text.
        text: Region,
        /// Bytes the window needs.
        need: u64,
    },
    /// No 2 MiB-aligned free RAM for the heap.
    NoRoomForHeap {
        /// Bytes needed.
        need: u64,
    },
    /// No 2 MiB-aligned free RAM for module data.
    NoRoomForModuleData {
        /// Bytes needed.
        need: u64,
    },
    /// Too little 2 MiB-aligned free RAM for the exec frames.
    NoRoomForFrames {
        /// The fewest bytes the manager runs with.
        need: u64,
        /// The largest aligned free range left.
        largest: u64,
    },
    /// RAM is cut into more pieces than the plan records.
    TooFragmented,
    /// A region given to the placement wraps or ends past the 48-bit physical address space.
    OutOfRange(Region),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageOutsideRam(image) => {
                write!(f, "the kernel image {image} is not inside RAM")
            }
            Self::ImageOverlapsReserved { image, reserved } => write!(
                f,
                "the kernel image {image} overlaps reserved memory {reserved}"
            ),
            Self::NoPoolWindow { text, need } => write!(
                f,
                "no free {} window within one BL of {text} for the exec pool",
                Size(*need)
            ),
            Self::NoFixmapWindow { need } => write!(
                f,
                "no GiB of the VA range free of RAM and devices for the {} fixmap",
                Size(*need)
            ),
            Self::NoRoomForHeap { need } => write!(
                f,
                "RAM too small: no 2 MiB-aligned {} left for the heap",
                Size(*need)
            ),
            Self::NoRoomForModuleData { need } => write!(
                f,
                "RAM too small: no 2 MiB-aligned {} left for module data",
                Size(*need)
            ),
            Self::NoRoomForFrames { need, largest } => write!(
                f,
                "RAM too small: the exec frames need {}, the largest aligned free range is {}",
                Size(*need),
                Size(*largest)
            ),
            Self::TooFragmented => f.write_str("RAM is cut into too many pieces"),
            Self::OutOfRange(r) => write!(
                f,
                "{} at {:#x} + {:#x} goes past the 48-bit physical address space",
                r.name, r.start, r.size
            ),
        }
    }
}

/// Places the kernel's regions in `machine`'s memory.
///
/// `image` is the linked kernel (text first), `text` its code, `devices` every MMIO region the
/// kernel will map (the pool window must not shadow them).
pub fn place(
    machine: &Machine,
    image: Region,
    text: Region,
    devices: &[Region],
    needs: &Needs,
) -> Result<MemoryPlan, PlanError> {
    // Everything below adds sizes to addresses: nothing may wrap (dtb::read checks the same).
    let limit = super::dtb::PA_LIMIT;
    let inputs = machine.ram.iter().chain(&machine.reserved).chain(devices);
    for r in inputs.chain([&image, &text]) {
        if r.start.checked_add(r.size).is_none_or(|end| end > limit) {
            return Err(PlanError::OutOfRange(*r));
        }
    }
    if !machine
        .ram
        .iter()
        .any(|bank| bank.start <= image.start && image.end() <= bank.end())
    {
        return Err(PlanError::ImageOutsideRam(image));
    }
    if let Some(reserved) = machine.reserved.iter().find(|r| r.overlaps(&image)) {
        return Err(PlanError::ImageOverlapsReserved {
            image,
            reserved: *reserved,
        });
    }
    // What nothing may be placed over: the image, the null page, reserved memory, and devices (a
    // RAM bank that covers MMIO must not put RAM mappings over it).
    let mut taken: ArrayVec<Region, { super::MAX_RESERVED + 2 + MAX_DEVICES }> = ArrayVec::new();
    taken.push(round_out(image, PAGE));
    taken.push(Region::new("null page", 0, PAGE));
    taken.extend(machine.reserved.iter().map(|r| round_out(*r, PAGE)));
    for device in devices {
        taken
            .try_push(round_out(*device, PAGE))
            .map_err(|_| PlanError::TooFragmented)?;
    }
    let free =
        layout::subtract::<MAX_PIECES>(&machine.ram, &taken).ok_or(PlanError::TooFragmented)?;

    let (exec_pool, over_ram) = pool_window(machine, &free, &taken, text, needs)?;
    let fixmap = fixmap_window(machine, &taken, exec_pool, needs)?;
    let free = if over_ram {
        layout::subtract::<MAX_PIECES>(&free, &[exec_pool]).ok_or(PlanError::TooFragmented)?
    } else {
        free
    };

    let heap = aligned_fit(&free, needs.heap, image.end())
        .map(|start| Region::new("heap", start, needs.heap))
        .ok_or(PlanError::NoRoomForHeap { need: needs.heap })?;
    let free = layout::subtract::<MAX_PIECES>(&free, &[heap]).ok_or(PlanError::TooFragmented)?;
    let module_data = aligned_fit(&free, needs.module_data, heap.end())
        .map(|start| Region::new("module data", start, needs.module_data))
        .ok_or(PlanError::NoRoomForModuleData {
            need: needs.module_data,
        })?;
    let free =
        layout::subtract::<MAX_PIECES>(&free, &[module_data]).ok_or(PlanError::TooFragmented)?;

    let (exec_frames, free) = if over_ram {
        (
            Region::new("exec frames (PA)", exec_pool.start, exec_pool.size),
            free,
        )
    } else {
        // The highest, largest aligned range, up to one frame per pack.
        let best = free
            .iter()
            .map(|r| round_in(*r, BLOCK))
            .max_by_key(|r| (r.size, r.start))
            .unwrap_or(Region::new("", 0, 0));
        let size = best.size.min(exec_pool.size);
        if size < needs.min_frames {
            return Err(PlanError::NoRoomForFrames {
                need: needs.min_frames,
                largest: best.size,
            });
        }
        let frames = Region::new("exec frames (PA)", best.end() - size, size);
        let free =
            layout::subtract::<MAX_PIECES>(&free, &[frames]).ok_or(PlanError::TooFragmented)?;
        (frames, free)
    };

    let free_ram = free
        .into_iter()
        .map(|mut r| {
            r.name = "RAM";
            r
        })
        .collect();
    Ok(MemoryPlan {
        heap,
        exec_pool,
        exec_frames,
        fixmap,
        module_data,
        free_ram,
    })
}

/// The fixmap window: the start of the highest GiB of the 39-bit VA range that holds nothing of the
/// machine (RAM, devices, reserved memory) and not the pool. A GiB is one level-1 entry of the
/// kernel's root, and the manager makes that entry private to each CPU's view of the tables, so it
/// must map nothing shared.
fn fixmap_window(
    machine: &Machine,
    taken: &[Region],
    pool: Region,
    needs: &Needs,
) -> Result<Region, PlanError> {
    const GIB: u64 = 1 << 30;
    let top = crate::mmu::VA_LIMIT / GIB;
    (1..top)
        .rev()
        .map(|g| Region::new("fixmap GiB", g * GIB, GIB))
        .find(|gib| {
            !gib.overlaps(&pool)
                && !machine.ram.iter().any(|bank| bank.overlaps(gib))
                && !taken.iter().any(|r| r.overlaps(gib))
        })
        .map(|gib| Region::new("fixmap (VA)", gib.start, needs.fixmap))
        .ok_or(PlanError::NoFixmapWindow { need: needs.fixmap })
}

/// The window for the pool, nearest the kernel text: preferably where no RAM is (no memory is
/// given up), else over free RAM (whose frames then back the pool). Returns the pool and whether
/// the window lies over RAM.
fn pool_window(
    machine: &Machine,
    free: &[Region],
    taken: &[Region],
    text: Region,
    needs: &Needs,
) -> Result<(Region, bool), PlanError> {
    let size = needs.pool;
    let reach = layout::BRANCH_REACH as u64;
    let lowest = text
        .end()
        .saturating_sub(reach)
        .next_multiple_of(BLOCK)
        .max(BLOCK);
    let highest = (text.start + reach).saturating_sub(size);
    let mut best: Option<(u8, u64, u64)> = None;
    let mut base = lowest;
    while base <= highest {
        let window = Region::new("window", base, size);
        let pool = Region::new("exec pool (VA)", base, needs.pool);
        let clear = layout::branch_reaches(&pool, &text)
            && layout::branch_reaches(&text, &pool)
            && !taken.iter().any(|r| r.overlaps(&window));
        let class = if !clear {
            None
        } else if !machine.ram.iter().any(|bank| bank.overlaps(&window)) {
            Some(0)
        } else if free
            .iter()
            .any(|r| r.start <= window.start && window.end() <= r.end())
        {
            Some(1)
        } else {
            None
        };
        if let Some(class) = class {
            let distance = base.abs_diff(text.start);
            if best.is_none_or(|(c, d, _)| (class, distance) < (c, d)) {
                best = Some((class, distance, base));
            }
        }
        base += BLOCK;
    }
    let (class, _, base) = best.ok_or(PlanError::NoPoolWindow { text, need: size })?;
    Ok((Region::new("exec pool (VA)", base, needs.pool), class == 1))
}

/// The lowest 2 MiB-aligned start of `size` free bytes at or above `from`, else the lowest anywhere.
fn aligned_fit(free: &[Region], size: u64, from: u64) -> Option<u64> {
    let fits = |r: &Region, at_least: u64| {
        let start = r.start.max(at_least).next_multiple_of(BLOCK);
        (start + size <= r.end()).then_some(start)
    };
    free.iter()
        .find_map(|r| fits(r, from))
        .or_else(|| free.iter().find_map(|r| fits(r, 0)))
}

fn round_out(r: Region, to: u64) -> Region {
    Region::from_bounds(r.name, r.start / to * to, r.end().next_multiple_of(to))
}

fn round_in(r: Region, to: u64) -> Region {
    Region::from_bounds(r.name, r.start.next_multiple_of(to), r.end() / to * to)
}
