//! The kernel heap: a `buddy_system_allocator` heap as the global allocator, so `alloc` (Box, Vec,
//! the allocator's metadata, translation tables) works — from the first line of Rust, before the MMU
//! is on, when the boot path builds the translation tables.
//!
//! Why not `LockedHeap`: with the MMU off every data access is Device-nGnRnE, and exclusive
//! load/store (what a spin lock is made of) to Device memory need not ever succeed (Arm ARM B2.9.5;
//! on a Raspberry Pi 4 nothing outside the core monitors them). Until [`super::locks_ready`], one CPU
//! runs with interrupts masked, so the heap is used without its lock.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use buddy_system_allocator::Heap;
use spin::mutex::SpinMutex;

use crate::layout::Region;

/// Order 32: blocks up to 2^31 bytes, more than any heap here.
struct KernelHeap(SpinMutex<Heap<32>, crate::runtime::irq::Pause>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(SpinMutex::new(Heap::new()));

impl KernelHeap {
    fn with<T>(&self, f: impl FnOnce(&mut Heap<32>) -> T) -> T {
        if super::locks_ready() {
            // Interrupts masked while held: a handler on this CPU that allocates does not wait
            // for its own CPU (Linux `spin_lock_irqsave`).
            crate::runtime::irq::without_interrupts(|| f(&mut self.0.lock()))
        } else {
            // SAFETY: before locks are ready only CPU 0 runs, with interrupts masked, and no
            // reference into the heap outlives this call: access is exclusive.
            f(unsafe { &mut *self.0.as_mut_ptr() })
        }
    }
}

// SAFETY: allocation and deallocation are delegated to the buddy heap, which returns blocks of at
// least the requested size and alignment, or null.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|heap| heap.alloc(layout).map_or(ptr::null_mut(), NonNull::as_ptr))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned, with its layout.
            self.with(|heap| unsafe { heap.dealloc(ptr, layout) });
        }
    }
}

/// Hands `region` to the allocator.
///
/// # Safety
/// `region` must be RAM that nothing else uses for the rest of the kernel's life, and this may be
/// called once.
pub unsafe fn init(region: Region) {
    // SAFETY: forwarded to the caller: the memory is ours alone.
    HEAP.with(|heap| unsafe { heap.init(region.start as usize, region.size as usize) });
}

/// Bytes handed out and bytes available, for reports.
pub fn usage() -> (usize, usize) {
    HEAP.with(|heap| (heap.stats_alloc_actual(), heap.stats_total_bytes()))
}
