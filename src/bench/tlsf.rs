//! `rlsf` (the Rust TLSF crate) as a slot allocator: the baseline an embedded user would pick
//! instead of a dedicated one. O(1) good fit over segregated free lists, like the core allocator,
//! but with its block headers in band.
//!
//! Exec memory is never writable, so it can never hold TLSF's headers: the allocator runs over a
//! writable shadow arena from the heap, of the same size as the pool window the other allocators
//! get (or, where the heap cannot give that much, the largest power-of-two number of packs it can:
//! [`TlsfSlots::new_fitting`]), and an arena address is translated into the window by its offset.
//! Slots are asked for with 64-byte alignment, what every slot allocator here returns; rlsf then
//! puts its 16-byte header and up to 48 bytes of padding before the payload.
//!
//! Space is counted like the buddy baseline's: a 2 MiB piece of the arena is "reserved" (a pack,
//! mapped through the backend) while any live block touches it, headers included, counted from 64
//! bytes before the payload (the most header and padding a 64-byte-aligned payload gets) to the
//! payload's end rounded to rlsf's 32-byte granularity. Free blocks' headers do not count: an
//! empty piece holds only free space.
//!
//! rlsf trusts the pointer given to `deallocate` (a wrong one corrupts its lists), so this wrapper
//! records each slot's size in a table of one `u32` per 64-byte chunk of the arena (arena / 16
//! bytes) and refuses frees that do not match, in O(1) like rlsf itself.

use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use rlsf::Tlsf;

use super::{BenchStats, SlotAllocator};
use crate::pack::{AllocError, CHUNK_SIZE, MAX_PACKS, PACK_SIZE, PackBackend};

/// First-level lists: rlsf's largest block is `(32 << FLLEN) - 32` bytes and each pool region at
/// most `32 << FLLEN`, so 22 is the least that lets a whole 64-pack (128 MiB) arena be one free
/// block, as the pool is one window for the other allocators (with less, rlsf would cut the arena
/// into regions with sentinels between them, which no slot could span).
const FLLEN: usize = 22;

/// Second-level lists per power of two: sixteen, as the core allocator's classes above 4 KiB, so a
/// request is rounded up by at most 1/16 in both good fits and their space figures compare the
/// placement, not the class width.
const SLLEN: usize = 16;

/// The TLSF control block: 22 first-level bits in a `u32`, 16 second-level bits in a `u16`.
type Control = Tlsf<'static, u32, u16, FLLEN, SLLEN>;

/// Alignment of every slot, as the other allocators give.
const SLOT_ALIGN: usize = CHUNK_SIZE;

/// Bytes before a payload that its block can start at: rlsf's 16-byte header and the padding that
/// aligns the payload to 64 bytes.
const MAX_HEADER: usize = 64;

/// rlsf's block granularity (`rlsf::GRANULARITY` on 64-bit targets): block ends are rounded to it.
const GRANULARITY: usize = rlsf::GRANULARITY;

/// Slots from rlsf over a shadow arena standing in for the pool window.
pub struct TlsfSlots<B: PackBackend> {
    backend: B,
    base: u64,
    tlsf: Control,
    arena: NonNull<u8>,
    arena_packs: usize,
    /// Requested size of the slot whose payload starts at each 64-byte chunk of the arena; 0 where
    /// none does.
    sizes: Vec<u32>,
    /// Live blocks touching each 2 MiB piece of the arena.
    pack_users: [u32; MAX_PACKS],
    packs_mapped: usize,
    bytes_live: u64,
}

impl<B: PackBackend> TlsfSlots<B> {
    /// An allocator over a shadow arena of `n_packs` packs (1 to 64) standing in for the window at
    /// `base` (2 MiB-aligned), none mapped yet; `MetadataExhausted` if the heap cannot hold the
    /// arena and its size table.
    pub fn new(backend: B, base: u64, n_packs: usize) -> Result<Self, AllocError> {
        let n_packs = n_packs.clamp(1, MAX_PACKS);
        // 2 MiB-aligned, so each 2 MiB piece of the arena is one pack of the window and 64-byte
        // alignment carries over. The arena before its table: a buddy heap holds an arena of half
        // its size only in its one naturally aligned block of that size, and the table (arena / 16)
        // must not be carved out of that block first.
        let layout = Self::arena_layout(n_packs);
        // SAFETY: the layout's size is not zero (at least one pack).
        let arena = NonNull::new(unsafe { alloc::alloc::alloc(layout) })
            .ok_or(AllocError::MetadataExhausted)?;
        let mut sizes = Vec::new();
        if sizes.try_reserve_exact(layout.size() / CHUNK_SIZE).is_err() {
            // SAFETY: just allocated with this layout, never used.
            unsafe { alloc::alloc::dealloc(arena.as_ptr(), layout) };
            return Err(AllocError::MetadataExhausted);
        }
        sizes.resize(layout.size() / CHUNK_SIZE, 0);
        let mut tlsf = Control::new();
        // SAFETY: the arena is ours alone (just allocated), writable, and lives until `drop`,
        // after which `tlsf` is never used again: it outlives every use of the control block.
        let inserted = unsafe {
            tlsf.insert_free_block_ptr(NonNull::slice_from_raw_parts(arena, layout.size()))
        };
        debug_assert_eq!(inserted.map(|n| n.get()), Some(layout.size()));
        Ok(Self {
            backend,
            base,
            tlsf,
            arena,
            arena_packs: n_packs,
            sizes,
            pack_users: [0; MAX_PACKS],
            packs_mapped: 0,
            bytes_live: 0,
        })
    }

    /// [`TlsfSlots::new`] with the largest arena the heap can give: `n_packs` packs, else half as
    /// many, and so on down to one. For a kernel whose heap is smaller than the pool window.
    ///
    /// Each size is tried for real. A probe that allocates and frees without using the memory
    /// proves nothing: the compiler may remove such a pair and take the allocation as successful.
    pub fn new_fitting(backend: B, base: u64, n_packs: usize) -> Result<Self, AllocError>
    where
        B: Clone,
    {
        let mut packs = n_packs.clamp(1, MAX_PACKS);
        loop {
            match Self::new(backend.clone(), base, packs) {
                Err(AllocError::MetadataExhausted) if packs > 1 => packs /= 2,
                result => return result,
            }
        }
    }

    fn arena_layout(n_packs: usize) -> Layout {
        // 1 to 64 packs of 2 MiB, 2 MiB-aligned: always a valid layout.
        Layout::from_size_align(n_packs * PACK_SIZE, PACK_SIZE).unwrap_or(Layout::new::<u8>())
    }

    /// Packs of the shadow arena (the window's first `arena_packs` packs are usable).
    pub fn arena_packs(&self) -> usize {
        self.arena_packs
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (e.g. to change a simulated frame limit).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn arena_len(&self) -> usize {
        self.arena_packs * PACK_SIZE
    }

    /// The pieces of the arena that the block of a `size`-byte slot at arena offset `offset`
    /// touches: first and last.
    fn pieces(offset: usize, size: usize) -> (usize, usize) {
        let start = offset.saturating_sub(MAX_HEADER);
        let end = (offset + size).next_multiple_of(GRANULARITY);
        (start / PACK_SIZE, (end - 1) / PACK_SIZE)
    }

    fn pack_va(&self, pack: usize) -> u64 {
        self.base + (pack * PACK_SIZE) as u64
    }

    /// One more live block touches `pack`: maps it if it is the first.
    fn touch(&mut self, pack: usize) -> Result<(), AllocError> {
        if self.pack_users[pack % MAX_PACKS] == 0 {
            self.backend
                .map_packs(self.pack_va(pack), 1)
                .map_err(AllocError::MapFailed)?;
            self.packs_mapped += 1;
        }
        self.pack_users[pack % MAX_PACKS] += 1;
        Ok(())
    }

    /// One live block fewer touches `pack`: unmaps it if it was the last.
    fn untouch(&mut self, pack: usize) {
        self.pack_users[pack % MAX_PACKS] -= 1;
        if self.pack_users[pack % MAX_PACKS] == 0 {
            self.backend.unmap_packs(self.pack_va(pack), 1);
            self.packs_mapped -= 1;
        }
    }
}

impl<B: PackBackend> Drop for TlsfSlots<B> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the control block that pointed into it is
        // dropped with `self` and never used again.
        unsafe { alloc::alloc::dealloc(self.arena.as_ptr(), Self::arena_layout(self.arena_packs)) };
    }
}

impl<B: PackBackend> SlotAllocator for TlsfSlots<B> {
    fn name(&self) -> &'static str {
        "rlsf (shadow arena)"
    }

    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        let pool = self.arena_len();
        if size > pool {
            return Err(AllocError::TooLarge { size, pool });
        }
        let layout = Layout::from_size_align(size, SLOT_ALIGN)
            .map_err(|_| AllocError::TooLarge { size, pool })?;
        let ptr = self
            .tlsf
            .allocate(layout)
            .ok_or(AllocError::PoolExhausted { size })?;
        let offset = ptr.as_ptr() as usize - self.arena.as_ptr() as usize;
        let (first, last) = Self::pieces(offset, size);
        for pack in first..=last {
            if let Err(error) = self.touch(pack) {
                for touched in first..pack {
                    self.untouch(touched);
                }
                // SAFETY: `ptr` was just allocated from `tlsf` with this alignment.
                unsafe { self.tlsf.deallocate(ptr, SLOT_ALIGN) };
                return Err(error);
            }
        }
        self.sizes[offset / CHUNK_SIZE] = size as u32;
        self.bytes_live += size as u64;
        Ok(self.base + offset as u64)
    }

    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.arena_len() as u64 {
            return Err(AllocError::OutsidePool { addr });
        }
        if !offset.is_multiple_of(CHUNK_SIZE as u64) {
            return Err(AllocError::Misaligned { addr });
        }
        let offset = offset as usize;
        let recorded = self.sizes[offset / CHUNK_SIZE] as usize;
        if recorded == 0 {
            return Err(AllocError::DoubleFree { addr });
        }
        if recorded != size {
            return Err(AllocError::WrongSize {
                addr,
                recorded,
                given: size,
            });
        }
        self.backend
            .fill_brk(addr, size.next_multiple_of(CHUNK_SIZE))
            .map_err(AllocError::RefillFailed)?;
        // SAFETY: a live slot starts here (its size is recorded), so the arena address is one
        // `tlsf.allocate` returned with `SLOT_ALIGN` and has not been deallocated since.
        unsafe { self.tlsf.deallocate(self.arena.add(offset), SLOT_ALIGN) };
        self.sizes[offset / CHUNK_SIZE] = 0;
        let (first, last) = Self::pieces(offset, size);
        for pack in first..=last {
            self.untouch(pack);
        }
        self.bytes_live -= size as u64;
        Ok(())
    }

    fn stats(&self) -> BenchStats {
        BenchStats {
            packs_mapped: self.packs_mapped,
            bytes_reserved: (self.packs_mapped * PACK_SIZE) as u64,
            bytes_live: self.bytes_live,
        }
    }

    fn packs_mapped(&self) -> usize {
        self.packs_mapped
    }

    fn pool_packs(&self) -> usize {
        self.arena_packs
    }
}
