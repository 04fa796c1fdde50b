//! Linux's `bpf_prog_pack` allocator (`kernel/bpf/core.c`), re-implemented over [`PackBackend`]
//! as the baseline the core allocator is measured against.
//!
//! Faithful to Linux in what costs time and space:
//!
//! - packs are 2 MiB with one bit per 64-byte chunk (`BPF_PROG_CHUNK_COUNT` = 32768 bits), kept on
//!   a list in creation order (`list_add_tail`);
//! - `bpf_prog_pack_alloc` walks the list and runs `bitmap_find_next_zero_area(bitmap, 32768, 0,
//!   nbits, 0)` on each pack until one has room (first fit), else creates a pack at the tail and
//!   takes its start;
//! - `bpf_prog_pack_free` walks the list to find the pack holding the address (O(packs)),
//!   refills `size` bytes with illegal instructions (`bpf_arch_text_invalidate`), clears the bits,
//!   and frees the pack only when `bitmap_find_next_zero_area(bitmap, 32768, 0, 32768, 0) == 0`,
//!   i.e. the bitmap is empty; no pack is kept;
//! - requests over a pack get an allocation of their own (`bpf_jit_alloc_exec`, rounded to 4 KiB;
//!   here, a run of whole packs of the pool) and are released directly.
//!
//! The bit operations follow `lib/find_bit.c` (`FIND_NEXT_BIT`, a word at a time from `start`)
//! and `lib/bitmap.c` (`bitmap_find_next_zero_area_off`, `__bitmap_set`, `__bitmap_clear`).
//!
//! Where Linux places a new pack (anywhere in vmalloc space) this uses the lowest free pack
//! position of the pool. Like Linux it trusts the caller: no double-free or size check, except
//! that a range past the end of a pack is refused instead of overrunning the bitmap.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{BenchStats, SlotAllocator};
use crate::pack::{AllocError, CHUNK_SIZE, MAX_PACKS, PACK_SIZE, PackBackend};

/// `BPF_PROG_CHUNK_COUNT`: bits of a pack's bitmap.
pub const CHUNK_COUNT: usize = PACK_SIZE / CHUNK_SIZE;

const BITS_PER_LONG: usize = 64;
const WORDS: usize = CHUNK_COUNT / BITS_PER_LONG;
const PAGE_SIZE: usize = 4096;

/// `struct bpf_prog_pack`: a pack and its chunk bitmap.
struct Pack {
    ptr: u64,
    bitmap: Box<[u64; WORDS]>,
}

/// A request over a pack, with its own mapping.
struct OwnAllocation {
    ptr: u64,
    packs: usize,
}

/// The `bpf_prog_pack` allocator over a pool of `n_packs` packs from `base`.
pub struct BpfProgPack<B: PackBackend> {
    backend: B,
    base: u64,
    n_packs: usize,
    /// `pack_list`, in creation order.
    pack_list: Vec<Pack>,
    own: Vec<OwnAllocation>,
    /// Pool positions in use (packs and own allocations), the stand-in for vmalloc's address choice.
    positions: u64,
    bytes_live: u64,
}

impl<B: PackBackend> BpfProgPack<B> {
    /// An empty allocator; `base` must be 2 MiB-aligned and `1 <= n_packs <= 64`.
    pub fn new(backend: B, base: u64, n_packs: usize) -> Self {
        Self {
            backend,
            base,
            n_packs: n_packs.clamp(1, MAX_PACKS),
            pack_list: Vec::new(),
            own: Vec::new(),
            positions: 0,
            bytes_live: 0,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Addresses of the packs, in list order.
    pub fn pack_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.pack_list.iter().map(|pack| pack.ptr)
    }

    /// `bpf_prog_pack_alloc`.
    pub fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        let nbits = size.div_ceil(CHUNK_SIZE);
        if size > PACK_SIZE {
            let packs = size.next_multiple_of(PAGE_SIZE).div_ceil(PACK_SIZE);
            let ptr = self.map_positions(packs, size)?;
            self.own.push(OwnAllocation { ptr, packs });
            self.bytes_live += size as u64;
            return Ok(ptr);
        }
        let mut found = None;
        for (i, pack) in self.pack_list.iter().enumerate() {
            let pos = bitmap_find_next_zero_area(&pack.bitmap[..], CHUNK_COUNT, 0, nbits, 0);
            if pos < CHUNK_COUNT {
                found = Some((i, pos));
                break;
            }
        }
        let (i, pos) = match found {
            Some(found) => found,
            None => (self.alloc_new_pack(size)?, 0),
        };
        let pack = &mut self.pack_list[i];
        bitmap_set(&mut pack.bitmap[..], pos, nbits);
        self.bytes_live += size as u64;
        Ok(pack.ptr + (pos * CHUNK_SIZE) as u64)
    }

    /// `bpf_prog_pack_free`.
    pub fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        if size > PACK_SIZE {
            let Some(i) = self.own.iter().position(|own| own.ptr == addr) else {
                return Err(AllocError::DoubleFree { addr });
            };
            let own = self.own.swap_remove(i);
            self.backend.unmap_packs(own.ptr, own.packs);
            self.release_positions(own.ptr, own.packs);
            self.bytes_live -= size as u64;
            return Ok(());
        }
        let Some(i) = self
            .pack_list
            .iter()
            .position(|pack| addr >= pack.ptr && pack.ptr + PACK_SIZE as u64 > addr)
        else {
            return Err(AllocError::DoubleFree { addr });
        };
        let nbits = size.div_ceil(CHUNK_SIZE);
        let pack = &mut self.pack_list[i];
        let pos = ((addr - pack.ptr) / CHUNK_SIZE as u64) as usize;
        if size == 0 || pos + nbits > CHUNK_COUNT {
            return Err(AllocError::WrongSize {
                addr,
                recorded: 0,
                given: size,
            });
        }
        self.backend
            .fill_brk(addr, size)
            .map_err(AllocError::RefillFailed)?;
        bitmap_clear(&mut pack.bitmap[..], pos, nbits);
        self.bytes_live -= size as u64;
        if bitmap_find_next_zero_area(&pack.bitmap[..], CHUNK_COUNT, 0, CHUNK_COUNT, 0) == 0 {
            let pack = self.pack_list.remove(i);
            self.backend.unmap_packs(pack.ptr, 1);
            self.release_positions(pack.ptr, 1);
        }
        Ok(())
    }

    /// `alloc_new_pack`: maps a BRK-filled pack and adds it at the tail of the list.
    fn alloc_new_pack(&mut self, size: usize) -> Result<usize, AllocError> {
        let bitmap = zeroed_bitmap().ok_or(AllocError::MetadataExhausted)?;
        let ptr = self.map_positions(1, size)?;
        self.pack_list.push(Pack { ptr, bitmap });
        Ok(self.pack_list.len() - 1)
    }

    /// Maps `count` packs at the lowest free run of pool positions.
    fn map_positions(&mut self, count: usize, size: usize) -> Result<u64, AllocError> {
        let window = u64::MAX >> (MAX_PACKS - self.n_packs);
        let free = !self.positions & window;
        let first = (0..self.n_packs)
            .find(|&first| {
                first + count <= self.n_packs && (free >> first).trailing_ones() as usize >= count
            })
            .ok_or(AllocError::PoolExhausted { size })?;
        let ptr = self.base + (first * PACK_SIZE) as u64;
        self.backend
            .map_packs(ptr, count)
            .map_err(AllocError::MapFailed)?;
        self.positions |= run_mask(first, count);
        Ok(ptr)
    }

    fn release_positions(&mut self, ptr: u64, count: usize) {
        let first = ((ptr - self.base) / PACK_SIZE as u64) as usize;
        self.positions &= !run_mask(first, count);
    }
}

impl<B: PackBackend> SlotAllocator for BpfProgPack<B> {
    fn name(&self) -> &'static str {
        "linux bpf_prog_pack"
    }

    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        BpfProgPack::alloc(self, size)
    }

    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        BpfProgPack::free(self, addr, size)
    }

    fn pool_packs(&self) -> usize {
        self.n_packs
    }

    fn stats(&self) -> BenchStats {
        let packs = self.positions.count_ones() as usize;
        BenchStats {
            packs_mapped: packs,
            bytes_reserved: (packs * PACK_SIZE) as u64,
            bytes_live: self.bytes_live,
        }
    }
}

fn run_mask(first: usize, count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        ((1u64 << count) - 1) << first
    }
}

fn zeroed_bitmap() -> Option<Box<[u64; WORDS]>> {
    let mut words = Vec::new();
    words.try_reserve_exact(WORDS).ok()?;
    words.resize(WORDS, 0);
    words.into_boxed_slice().try_into().ok()
}

/// `BITMAP_FIRST_WORD_MASK(start)`.
const fn first_word_mask(start: usize) -> u64 {
    u64::MAX << (start % BITS_PER_LONG)
}

/// `BITMAP_LAST_WORD_MASK(nbits)`.
const fn last_word_mask(nbits: usize) -> u64 {
    u64::MAX >> (nbits.wrapping_neg() % BITS_PER_LONG)
}

/// `FIND_NEXT_BIT(FETCH, MUNGE, size, start)` of `lib/find_bit.c`, with `invert` as the MUNGE of
/// `find_next_zero_bit`: scans a word at a time from `start`; returns `size` if nothing is found.
fn find_next(map: &[u64], size: usize, start: usize, invert: u64) -> usize {
    if start >= size {
        return size;
    }
    let mut idx = start / BITS_PER_LONG;
    let mut tmp = (map[idx] ^ invert) & first_word_mask(start);
    while tmp == 0 {
        if (idx + 1) * BITS_PER_LONG >= size {
            return size;
        }
        idx += 1;
        tmp = map[idx] ^ invert;
    }
    (idx * BITS_PER_LONG + tmp.trailing_zeros() as usize).min(size)
}

/// `find_next_bit`.
pub fn find_next_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, 0)
}

/// `find_next_zero_bit`.
pub fn find_next_zero_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, u64::MAX)
}

/// `bitmap_find_next_zero_area(map, size, start, nr, align_mask)`: the first run of `nr` zero bits
/// at or after `start`, or a value over `size` if there is none. Finds the next zero bit, checks
/// the area with `find_next_bit`, and on a set bit starts again just after it.
pub fn bitmap_find_next_zero_area(
    map: &[u64],
    size: usize,
    mut start: usize,
    nr: usize,
    align_mask: usize,
) -> usize {
    loop {
        let index = (find_next_zero_bit(map, size, start) + align_mask) & !align_mask;
        let end = index + nr;
        if end > size {
            return end;
        }
        let i = find_next_bit(map, end, index);
        if i < end {
            start = i + 1;
            continue;
        }
        return index;
    }
}

/// `__bitmap_set`.
pub fn bitmap_set(map: &mut [u64], start: usize, len: usize) {
    let size = start + len;
    let mut p = start / BITS_PER_LONG;
    let mut len = len as isize;
    let mut bits_to_set = (BITS_PER_LONG - start % BITS_PER_LONG) as isize;
    let mut mask_to_set = first_word_mask(start);
    while len - bits_to_set >= 0 {
        map[p] |= mask_to_set;
        len -= bits_to_set;
        bits_to_set = BITS_PER_LONG as isize;
        mask_to_set = u64::MAX;
        p += 1;
    }
    if len != 0 {
        mask_to_set &= last_word_mask(size);
        map[p] |= mask_to_set;
    }
}

/// `__bitmap_clear`.
pub fn bitmap_clear(map: &mut [u64], start: usize, len: usize) {
    let size = start + len;
    let mut p = start / BITS_PER_LONG;
    let mut len = len as isize;
    let mut bits_to_clear = (BITS_PER_LONG - start % BITS_PER_LONG) as isize;
    let mut mask_to_clear = first_word_mask(start);
    while len - bits_to_clear >= 0 {
        map[p] &= !mask_to_clear;
        len -= bits_to_clear;
        bits_to_clear = BITS_PER_LONG as isize;
        mask_to_clear = u64::MAX;
        p += 1;
    }
    if len != 0 {
        mask_to_clear &= last_word_mask(size);
        map[p] &= !mask_to_clear;
    }
}
