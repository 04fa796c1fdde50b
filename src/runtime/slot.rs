//! The manager's slot API in the demo kernel (Linux `vmalloc_exec(size)` / `vfree_exec(ptr,
//! size)` on bpf_prog_pack), on the kernel's instance:
//!
//! ```ignore
//! let slot = slot::alloc(code.len())?;          // 64-byte aligned, RX, filled with BRK
//! slot::write(&slot, 0, &code)?;                // through the text poke, bounds-checked
//! let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(slot.as_ptr()) };
//! f();
//! slot::free(slot)?;                            // refilled with BRK, kept in this CPU's magazine
//! ```

use core::fmt;

pub use crate::manager::ExecSlot;
use crate::pack::magazine::MagazineStats;
use crate::pack::{AllocError, SlotInfo, Stats};
use crate::poke::PokeError;
use crate::runtime::exec_pool::with_manager;

/// Allocates `size` bytes of exec memory, 64-byte aligned, filled with BRK.
pub fn alloc(size: usize) -> Result<ExecSlot, AllocError> {
    with_manager!(m => m.alloc(size))
}

/// Allocates with a power-of-two alignment up to 4 KiB (e.g. page-aligned module text).
pub fn alloc_aligned(size: usize, align: usize) -> Result<ExecSlot, AllocError> {
    with_manager!(m => m.alloc_aligned(size, align))
}

/// Writes `code` at `offset` into `slot` through the text poke; nothing past the slot.
pub fn write(slot: &ExecSlot, offset: usize, code: &[u8]) -> Result<(), PokeError> {
    with_manager!(m => m.write(slot, offset, code))
}

/// Several writes, checked first, published once.
pub fn write_all(writes: &[(&ExecSlot, usize, &[u8])]) -> Result<(), PokeError> {
    with_manager!(m => m.write_all(writes))
}

/// Frees a slot: refilled with BRK, then kept in this CPU's magazine (up to 4 KiB) or its chunks
/// released, an empty pack unmapped (one is cached).
pub fn free(slot: ExecSlot) -> Result<(), AllocError> {
    with_manager!(m => m.free(slot))
}

/// C-style allocation: the address, or an error.
pub fn alloc_raw(size: usize) -> Result<*const u8, AllocError> {
    with_manager!(m => m.alloc_raw(size))
}

/// C-style free; `size` must be the size the slot was allocated with.
pub fn free_raw(ptr: *const u8, size: usize) -> Result<(), AllocError> {
    with_manager!(m => m.free_raw(ptr, size))
}

/// Returns every CPU's magazines to the pool and releases the cached empty pack.
pub fn trim() -> Result<bool, AllocError> {
    with_manager!(m => m.trim())
}

/// Returns every CPU's magazines to the pool; the number of slots returned.
pub fn drain_magazines() -> Result<usize, AllocError> {
    with_manager!(m => m.drain_magazines())
}

/// The live slot covering `addr`.
pub fn slot_at(addr: u64) -> Option<SlotInfo> {
    with_manager!(m => m.slot_at(addr))
}

/// Allocator statistics, as the users see them (resting slots count as reserved only).
pub fn stats() -> Stats {
    with_manager!(m => m.stats())
}

/// The statistics with the magazines counted.
pub fn magazine_stats() -> MagazineStats {
    with_manager!(m => m.magazine_stats())
}

/// Writes the pack map (one line per mapped pack, one character per 32 KiB).
pub fn render_pack_map(out: &mut dyn fmt::Write) -> fmt::Result {
    with_manager!(m => m.render_pack_map(out))
}
