//! The module space of a kernel that runs an [`ExecManager`]: text in an exec slot (sharing packs
//! with every other user of exec memory), written with [`ExecManager::write`] and so published to
//! every CPU; rodata and data in the kernel's own read-write, execute-never pages
//! ([`ModuleMemory`]), rodata sealed read-only once relocated.

use crate::manager::{ExecManager, ExecSlot, Platform};
use crate::pack::AllocError;

use super::{ModuleSpace, Segment, SpaceError};

const PAGE: usize = 4096;

/// Pages for module data, from the kernel (Linux: `execmem_alloc(EXECMEM_MODULE_DATA)` and
/// `set_memory_ro`).
pub trait ModuleMemory {
    /// `size` bytes (a multiple of 4 KiB) of zeroed, page-aligned memory, mapped read-write and
    /// execute-never, within ±4 GiB of the exec pool (so `ADRP` in module code reaches it), or
    /// `None` if there is none.
    fn alloc(&mut self, size: usize) -> Option<u64>;

    /// Makes memory from [`ModuleMemory::alloc`] read-only and execute-never, on every CPU, with
    /// no writable mapping of it left anywhere.
    fn make_read_only(&mut self, addr: u64, size: usize) -> Result<(), SpaceError>;

    /// Gives back memory from [`ModuleMemory::alloc`], read-only or not.
    fn free(&mut self, addr: u64, size: usize);
}

/// Modules in an [`ExecManager`]'s slots and a kernel's [`ModuleMemory`].
pub struct ExecModules<P: Platform, M: ModuleMemory> {
    exec: &'static ExecManager<P>,
    memory: M,
    live: [usize; 3],
}

impl<P: Platform, M: ModuleMemory> ExecModules<P, M> {
    /// The space over `exec` (set up) and `memory`.
    pub fn new(exec: &'static ExecManager<P>, memory: M) -> Self {
        Self {
            exec,
            memory,
            live: [0; 3],
        }
    }

    /// Bytes of each segment kind held by loaded modules ([`Segment::index`]; text as asked,
    /// data in pages).
    pub fn live_bytes(&self) -> [usize; 3] {
        self.live
    }

    /// The data pages.
    pub fn memory(&self) -> &M {
        &self.memory
    }
}

impl<P: Platform, M: ModuleMemory> ModuleSpace for ExecModules<P, M> {
    fn alloc(&mut self, segment: Segment, size: usize, align: usize) -> Result<u64, SpaceError> {
        let addr = match segment {
            Segment::Text => match self.exec.alloc_aligned(size, align) {
                Ok(slot) => slot.into_raw().0 as u64,
                Err(AllocError::TooLarge { .. }) => return Err(SpaceError::TooLarge),
                Err(_) => return Err(SpaceError::NoMemory),
            },
            Segment::Rodata | Segment::Data => {
                let pages = size
                    .checked_next_multiple_of(PAGE)
                    .ok_or(SpaceError::TooLarge)?;
                self.memory.alloc(pages).ok_or(SpaceError::NoMemory)?
            }
        };
        self.live[segment.index()] += data_size(segment, size);
        Ok(addr)
    }

    fn fill(&mut self, segment: Segment, addr: u64, image: &[u8]) -> Result<(), SpaceError> {
        match segment {
            Segment::Text => {
                let slot = ExecSlot::from_raw(addr as *const u8, image.len());
                let written = self.exec.write(&slot, 0, image);
                let _ = slot.into_raw();
                written.map_err(|_| SpaceError::Failed("the text poke refused the write"))
            }
            Segment::Rodata | Segment::Data => {
                // SAFETY: `addr` is memory from `alloc` of at least `image.len()` bytes, mapped
                // read-write (rodata is sealed only below), and nothing else uses it yet.
                unsafe {
                    core::ptr::copy_nonoverlapping(image.as_ptr(), addr as *mut u8, image.len())
                };
                if segment == Segment::Rodata {
                    self.memory
                        .make_read_only(addr, image.len().next_multiple_of(PAGE))?;
                }
                Ok(())
            }
        }
    }

    fn free(&mut self, segment: Segment, addr: u64, size: usize) {
        match segment {
            Segment::Text => {
                // The slot is the loader's own record of what `alloc` gave: free cannot refuse it.
                let _ = self.exec.free(ExecSlot::from_raw(addr as *const u8, size));
            }
            Segment::Rodata | Segment::Data => {
                self.memory.free(addr, size.next_multiple_of(PAGE));
            }
        }
        self.live[segment.index()] -= data_size(segment, size);
    }

    unsafe fn call_init(&mut self, addr: u64) -> i32 {
        // SAFETY: the caller guarantees `addr` is a published `extern "C" fn() -> i32`.
        let init: extern "C" fn() -> i32 = unsafe { core::mem::transmute(addr as *const ()) };
        init()
    }

    unsafe fn call_exit(&mut self, addr: u64) {
        // SAFETY: the caller guarantees `addr` is a published `extern "C" fn()`.
        let exit: extern "C" fn() = unsafe { core::mem::transmute(addr as *const ()) };
        exit()
    }
}

/// What a segment of `size` bytes holds: text as asked, data in whole pages.
fn data_size(segment: Segment, size: usize) -> usize {
    match segment {
        Segment::Text => size,
        _ => size.next_multiple_of(PAGE),
    }
}
