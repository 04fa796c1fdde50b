//! The kernel heap: `buddy_system_allocator` as the global allocator, so `alloc` (Box, Vec, the
//! allocator's metadata, translation tables) works.

use buddy_system_allocator::LockedHeap;

use crate::layout::Region;

/// Order 32: blocks up to 2^31 bytes, more than any heap here.
#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands `region` to the allocator.
///
/// # Safety
/// `region` must be RAM that nothing else uses for the rest of the kernel's life, and this may be
/// called once.
pub unsafe fn init(region: Region) {
    // SAFETY: forwarded to the caller: the memory is ours alone.
    unsafe {
        HEAP.lock()
            .init(region.start as usize, region.size as usize)
    };
}

/// Bytes handed out and bytes available, for reports.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_alloc_actual(), heap.stats_total_bytes())
}
