//! `buddy_system_allocator` used directly as the slot allocator, as the second baseline.
//!
//! Its `FrameAllocator` hands out power-of-two blocks of 64-byte chunks over the whole pool
//! (chunk indices `0..n_packs * 32768`), aligned to their size, and merges buddies on free. A pack
//! is mapped while at least one live block touches it and unmapped when the last one goes, which
//! is kinder to buddy than mapping the whole pool up front: its space figure is then its rounding
//! and its placement, not the pool size. Blocks up to a pack never cross a pack boundary (they are
//! aligned to their size); larger ones cover whole packs.
//!
//! The crate trusts the size given to `dealloc`, so this wrapper records each slot's size in a
//! `BTreeMap` and refuses frees that do not match, rather than corrupt the buddy lists. The
//! crate's own lists are `BTreeSet`s, so that lookup is of the same order as its own work.

use alloc::collections::BTreeMap;

use buddy_system_allocator::FrameAllocator;

use super::{BenchStats, SlotAllocator};
use crate::pack::{AllocError, CHUNK_SIZE, CHUNKS_PER_PACK, MAX_PACKS, PACK_SIZE, PackBackend};

/// Orders of the frame allocator: blocks up to 2^21 chunks, a whole 64-pack pool.
const ORDER: usize = 22;

/// Slots from a buddy allocator of 64-byte chunks over the pool.
pub struct BuddySlots<B: PackBackend> {
    backend: B,
    base: u64,
    n_packs: usize,
    frames: FrameAllocator<ORDER>,
    /// Live blocks touching each pack.
    pack_users: [u32; MAX_PACKS],
    sizes: BTreeMap<u64, usize>,
    packs_mapped: usize,
    bytes_live: u64,
}

impl<B: PackBackend> BuddySlots<B> {
    /// An allocator over `n_packs` packs from `base` (2 MiB-aligned), none mapped yet.
    pub fn new(backend: B, base: u64, n_packs: usize) -> Self {
        let n_packs = n_packs.clamp(1, MAX_PACKS);
        let mut frames = FrameAllocator::new();
        frames.add_frame(0, n_packs * CHUNKS_PER_PACK as usize);
        Self {
            backend,
            base,
            n_packs,
            frames,
            pack_users: [0; MAX_PACKS],
            sizes: BTreeMap::new(),
            packs_mapped: 0,
            bytes_live: 0,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Packs `[first, first + count)` covered by a block of `chunks` chunks at chunk `start`.
    fn packs_of(start: usize, chunks: usize) -> (usize, usize) {
        let per_pack = CHUNKS_PER_PACK as usize;
        let first = start / per_pack;
        (first, (start + chunks).div_ceil(per_pack) - first)
    }

    fn pack_va(&self, pack: usize) -> u64 {
        self.base + (pack * PACK_SIZE) as u64
    }
}

impl<B: PackBackend> SlotAllocator for BuddySlots<B> {
    fn name(&self) -> &'static str {
        "buddy_system_allocator"
    }

    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        let pool = self.n_packs * PACK_SIZE;
        if size > pool {
            return Err(AllocError::TooLarge { size, pool });
        }
        let chunks = size.div_ceil(CHUNK_SIZE);
        let start = self
            .frames
            .alloc(chunks)
            .ok_or(AllocError::PoolExhausted { size })?;
        let block = chunks.next_power_of_two();
        let (first, count) = Self::packs_of(start, block);
        for pack in first..first + count {
            if self.pack_users[pack] == 0 {
                if let Err(why) = self.backend.map_packs(self.pack_va(pack), 1) {
                    for mapped in first..pack {
                        self.pack_users[mapped] -= 1;
                        if self.pack_users[mapped] == 0 {
                            self.backend.unmap_packs(self.pack_va(mapped), 1);
                            self.packs_mapped -= 1;
                        }
                    }
                    self.frames.dealloc(start, chunks);
                    return Err(AllocError::MapFailed(why));
                }
                self.packs_mapped += 1;
            }
            self.pack_users[pack] += 1;
        }
        let addr = self.base + (start * CHUNK_SIZE) as u64;
        self.sizes.insert(addr, size);
        self.bytes_live += size as u64;
        Ok(addr)
    }

    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        match self.sizes.get(&addr) {
            None => return Err(AllocError::DoubleFree { addr }),
            Some(&recorded) if recorded != size => {
                return Err(AllocError::WrongSize {
                    addr,
                    recorded,
                    given: size,
                });
            }
            Some(_) => {}
        }
        let chunks = size.div_ceil(CHUNK_SIZE);
        let start = ((addr - self.base) / CHUNK_SIZE as u64) as usize;
        self.backend
            .fill_brk(addr, chunks * CHUNK_SIZE)
            .map_err(AllocError::RefillFailed)?;
        self.sizes.remove(&addr);
        self.frames.dealloc(start, chunks);
        let (first, count) = Self::packs_of(start, chunks.next_power_of_two());
        for pack in first..first + count {
            self.pack_users[pack] -= 1;
            if self.pack_users[pack] == 0 {
                self.backend.unmap_packs(self.pack_va(pack), 1);
                self.packs_mapped -= 1;
            }
        }
        self.bytes_live -= size as u64;
        Ok(())
    }

    fn pool_packs(&self) -> usize {
        self.n_packs
    }

    fn stats(&self) -> BenchStats {
        BenchStats {
            packs_mapped: self.packs_mapped,
            bytes_reserved: (self.packs_mapped * PACK_SIZE) as u64,
            bytes_live: self.bytes_live,
        }
    }
}
