//! The manager's API for a kernel: executable slots packed into 2 MiB packs (Linux
//! `vmalloc_exec(size)` / `vfree_exec(ptr, size)` on bpf_prog_pack), here with an owning handle and
//! with `size` checked against the allocator's own record.
//!
//! ```ignore
//! let slot = slot::alloc(code.len())?;          // 64-byte aligned, RX, filled with BRK
//! slot.write(0, &code)?;                        // through the text poke, bounds-checked
//! let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(slot.as_ptr()) };
//! f();
//! slot::free(slot)?;                            // refilled with BRK, chunks released
//! ```
//!
//! The allocator ([`crate::pack::PackAllocator`]) runs here over the real backend: packs come from
//! [`exec_pool`] (2 MiB frames, BRK-filled, one RX block each) and freed slots are refilled with BRK
//! through the text poke.

use core::fmt;

use spin::{Mutex, Once};

use crate::pack::{
    AllocError, BackendError, MAX_PACKS, PACK_SIZE, PackAllocator, PackBackend, Slot, Stats,
};
use crate::poke::{ExecRegion, PokeError, insn};
use crate::runtime::{exec_pool, memory, poke};

/// The hardware backend of the allocator.
pub struct PoolBackend;

/// Packs the allocator has released but that are still mapped: their unmapping (break-before-make
/// with a broadcast TLBI, which waits for every CPU) is done after the allocator's lock is dropped,
/// so other CPUs can allocate and free meanwhile. Whoever drains the queue holds its lock until the
/// packs are unmapped, so a pack is never seen as both released and mapped by a new owner.
static RELEASED_PACKS: Mutex<ReleasedPacks> = Mutex::new(ReleasedPacks {
    packs: [0; MAX_PACKS],
    len: 0,
});

/// The queue behind [`RELEASED_PACKS`]: at most every pack of the pool can wait to be unmapped.
struct ReleasedPacks {
    packs: [u64; MAX_PACKS],
    len: usize,
}

impl ReleasedPacks {
    fn push(&mut self, va: u64) {
        // A pack is released at most once before it is unmapped, so this never overflows; if it
        // did, the pack would only stay mapped (BRK-filled, RX), which the audit accepts.
        if self.len < MAX_PACKS {
            self.packs[self.len] = va;
            self.len += 1;
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        let len = core::mem::replace(&mut self.len, 0);
        self.packs[..len].iter().copied()
    }
}

/// Unmaps the packs the allocator released. Called without the allocator's lock (after a free),
/// and with it before mapping (so a released pack is gone before its VA is used again).
fn unmap_released_packs() {
    let mut queue = RELEASED_PACKS.lock();
    for va in queue.drain() {
        // The allocator released exactly this pack; it is mapped until now.
        let _ = exec_pool::unmap_pack(va);
    }
}

impl PackBackend for PoolBackend {
    fn map_packs(&mut self, va: u64, count: usize) -> Result<(), BackendError> {
        unmap_released_packs();
        for i in 0..count {
            let pack = va + (i * PACK_SIZE) as u64;
            if let Err(e) = exec_pool::map_pack(pack) {
                // Undo the packs mapped so far: a failed request changes nothing.
                for j in 0..i {
                    let _ = exec_pool::unmap_pack(va + (j * PACK_SIZE) as u64);
                }
                return Err(match e {
                    exec_pool::PoolError::OutOfFrames => BackendError::OutOfFrames,
                    exec_pool::PoolError::AlreadyMapped(_) => BackendError::AlreadyMapped,
                    _ => BackendError::PageTable,
                });
            }
        }
        Ok(())
    }

    /// Queued: the caller (`free`) unmaps after dropping the allocator's lock.
    fn unmap_packs(&mut self, va: u64, count: usize) {
        let mut queue = RELEASED_PACKS.lock();
        for i in 0..count {
            queue.push(va + (i * PACK_SIZE) as u64);
        }
    }

    fn fill_brk(&mut self, va: u64, len: usize) {
        // The allocator passes whole chunks of a slot it owns, inside a mapped pack.
        let _ = poke::text_set(va, insn::brk(0), len / insn::INSN_BYTES);
    }
}

static ALLOCATOR: Once<Mutex<PackAllocator<PoolBackend>>> = Once::new();

fn allocator() -> &'static Mutex<PackAllocator<PoolBackend>> {
    ALLOCATOR.call_once(|| {
        let pool = memory::plan().exec_pool;
        let packs = (pool.size / PACK_SIZE as u64) as usize;
        Mutex::new(
            PackAllocator::new(PoolBackend, pool.start, packs)
                .unwrap_or_else(|e| panic!("exec pool window {pool}: {e}")),
        )
    })
}

/// An executable slot: owns `size` bytes of exec memory at `addr` until it is given to [`free`].
/// Dropping it without `free` leaks the slot (like a raw pointer); [`ExecSlot::into_raw`] and
/// [`ExecSlot::from_raw`] convert for C-style callers.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an exec slot is freed with slot::free"]
pub struct ExecSlot {
    slot: Slot,
}

impl ExecSlot {
    /// First byte (64-byte aligned, or as requested).
    pub fn addr(&self) -> u64 {
        self.slot.addr()
    }

    /// The size asked for.
    pub fn size(&self) -> usize {
        self.slot.size()
    }

    /// The slot as a code pointer (cast it to a function pointer to call the code).
    pub fn as_ptr(&self) -> *const u8 {
        self.slot.addr() as *const u8
    }

    /// The slot as a poke region: writes through it may not leave the slot.
    pub fn region(&self) -> ExecRegion {
        ExecRegion::slot(self.slot.addr(), self.slot.end())
    }

    /// Writes `code` at `offset` into the slot through the text poke; refuses anything that would
    /// run past the slot.
    pub fn write(&self, offset: usize, code: &[u8]) -> Result<(), PokeError> {
        poke::text_copy_within(self.region(), self.addr() + offset as u64, code)
    }

    /// Gives up the handle: pointer and size for [`free_raw`] or [`ExecSlot::from_raw`].
    pub fn into_raw(self) -> (*const u8, usize) {
        (self.as_ptr(), self.size())
    }

    /// Rebuilds a handle from [`ExecSlot::into_raw`]. Nothing is checked here; [`free`] checks the
    /// pointer and size against the allocator's record, so a wrong pair is refused there.
    pub fn from_raw(ptr: *const u8, size: usize) -> Self {
        Self {
            slot: Slot::from_raw(ptr as u64, size),
        }
    }
}

impl fmt::Display for ExecSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec slot {:#x}+{}", self.addr(), self.size())
    }
}

/// Allocates `size` bytes of exec memory, 64-byte aligned, filled with BRK.
pub fn alloc(size: usize) -> Result<ExecSlot, AllocError> {
    allocator().lock().alloc(size).map(|slot| ExecSlot { slot })
}

/// Allocates with a power-of-two alignment up to 4 KiB (e.g. page-aligned module text).
pub fn alloc_aligned(size: usize, align: usize) -> Result<ExecSlot, AllocError> {
    allocator()
        .lock()
        .alloc_aligned(size, align)
        .map(|slot| ExecSlot { slot })
}

/// Frees a slot: refilled with BRK (a stale call traps), chunks released, an empty pack unmapped
/// (one is kept cached). On error the slot is unchanged and still allocated.
pub fn free(slot: ExecSlot) -> Result<(), AllocError> {
    let result = allocator().lock().free(slot.slot);
    unmap_released_packs();
    result
}

/// C-style allocation: the address, or an error.
pub fn alloc_raw(size: usize) -> Result<*const u8, AllocError> {
    allocator()
        .lock()
        .alloc_raw(size)
        .map(|addr| addr as *const u8)
}

/// C-style free; `size` must be the size the slot was allocated with.
pub fn free_raw(ptr: *const u8, size: usize) -> Result<(), AllocError> {
    let result = allocator().lock().free_raw(ptr as u64, size);
    unmap_released_packs();
    result
}

/// Allocator statistics.
pub fn stats() -> Stats {
    allocator().lock().stats()
}

/// Writes the pack map (one line per mapped pack, one character per 32 KiB).
pub fn render_pack_map(out: &mut dyn fmt::Write) -> fmt::Result {
    allocator().lock().render_pack_map(out)
}
