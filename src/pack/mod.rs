//! The exec slot allocator: many small executable slots packed into shared 2 MiB packs.
//!
//! The pool is a virtual address window `[base, base + n_packs * 2 MiB)` within branch range of the
//! kernel text. Each pack of the window, when in use, is backed by one 2 MiB physical block and
//! mapped read-only + executable by one level-2 block descriptor; it is never writable (code goes in
//! through the text-poke alias). The allocator itself never touches that memory: it decides where
//! slots go and asks a [`PackBackend`] to map and unmap packs and to refill freed slots with BRK.
//! The kernel wraps it in a `spin::Mutex` over the real backend; tests run it over [`SimBackend`].
//!
//! # Design
//!
//! A pack is 32768 chunks of 64 bytes. A slot is a run of chunks inside one pack; a request over
//! 2 MiB gets a run of whole packs instead. The free chunks of a pack form free runs, and the
//! allocator is a TLSF-style good fit over them (Masmano et al. 2004), with all its metadata out of
//! band because the packs are never writable:
//!
//! - **Size classes** (module `class`): one class per run length below 64 chunks (4 KiB, where most
//!   programs fall), sixteen per power of two above. Each pack keeps its runs of 8 chunks or more on
//!   doubly linked free lists per class, and its shorter ("tiny") runs in a bitmap per length. A
//!   pool-wide index holds, per class, a 64-bit mask of the packs that have a run of it, and a
//!   bitmap of the classes some pack has.
//! - **Alloc** is a best fit over the whole pool: a find-first-set over the class bitmap gives the
//!   smallest class that surely fits (a run of exactly the requested length when there is one),
//!   and the lowest pack that has it. From 4 KiB up a class spans several lengths, so the first
//!   run of the class holding the length itself is tried before rounding up: the hole of a freed
//!   slot is then reused by the next slot of the same size. Small slots (up to 2 KiB) are cut from
//!   the end of the run and larger ones from its start, so the two collect at opposite ends of a
//!   pack; cutting from the end also keeps the rest of the run at its place on its list, so usually
//!   only its length is rewritten.
//! - **Free** finds the pack by address arithmetic (`(addr - base) >> 21`), checks the address
//!   against a per-chunk "slot starts here" bit and the size against the recorded size, refills the
//!   slot with BRK, and merges it with its free neighbours (boundary bits and length tags, module
//!   `meta`); a run before it that stays in its class grows in place.
//! - **Placement across packs.** The brief asked for the fullest pack that fits; the lowest pack
//!   that has the best-fitting class is used instead. Measured over churn with the BPF mix, ranking
//!   by fill level (kept bit-sliced, four AND steps) gave the same packs mapped as lowest-first once
//!   the class choice is pool-wide best fit, and cost about 25 instructions per alloc/free pair;
//!   with first fit by pack (fullest or lowest pack first, then best fit inside it) the pool needed
//!   up to a third more packs. Lowest-first is address-ordered best fit: in steady state the low
//!   packs are the full ones and the highest drain and are released. Issue 13's module-like
//!   churn (few, large slots per pack, packs emptying often) needed two exceptions: a slot whose
//!   best fit lies in one of the six highest slot packs (the draining packs, kept as a mask
//!   updated when a pack is mapped or released), or any slot over 64 KiB, goes to the lowest
//!   pack with room (first fit by pack, best fit inside it), so the high packs drain. Averaged
//!   over 20 seeds of the module-like churn at 16 MiB live this holds 11.37 packs against 11.52
//!   with the rule for slots over 4 KiB only, and the BPF churn at 32 MiB live ends with 18
//!   packs on every seed instead of 19 on most (100 MiB: 55 either way).
//! - **Empty packs** are unmapped and their frames returned, except one, kept mapped and BRK-filled
//!   so alloc/free at a pack boundary does not map and unmap each time, but only while the other
//!   slot packs have less than a quarter of a pack of free chunks in all (with more, the next
//!   requests fit elsewhere, and the cached pack counts as a whole pack reserved). Being a
//!   whole-pack run, it is the last choice of the best fit.
//! - **Large requests** (over 2 MiB) take a run of contiguous unused pack positions (the cached
//!   empty pack counts as unused, and joins as it is), mapped in at most two calls and released as
//!   a whole. Slot packs come from the bottom of the window and large runs from the top, to keep
//!   runs of free positions long.
//!
//! # Costs
//!
//! - Time: alloc and free do a bounded amount of work whatever the number of packs, slots or free
//!   runs. The only loops are over the four words of the class bitmap; nothing walks the packs, the
//!   free lists or the chunk bitmaps, and finding the pack on free is a shift. Off the common path:
//!   mapping a pack (the backend's cost), large requests (bit operations over the 64 positions),
//!   and telling an interior pointer from a double free (a backward scan of one pack's bitmaps,
//!   only to word the error). Measured on AArch64 (QEMU, `-icount shift=0`, PMU instructions
//!   retired, release build, no-op backend, [`crate::bench`] workload (a)): about 330-350
//!   instructions per alloc + free pair for 64-byte slots, 340-370 for 512 bytes and 360-400 for
//!   4 KiB (the most at 64 packs), against up to 17,000 for Linux's `bpf_prog_pack`; about 500 per
//!   operation in the churn of workload (b), 200-280 in the module-like and mixed churns. (The
//!   per-CPU magazines in front of it, [`magazine`], make the manager's pair 89.)
//! - Memory: 72 KiB per live pack (3.5% of it: 8 KiB of slot-edge bitmaps, 32 KiB of shadow bytes,
//!   32 KiB of tiny-run bitmaps) plus about 1 KiB of list heads and summaries, allocated when the
//!   pack is mapped and dropped when it is released; pool-wide, 4 KiB of class index (per class the
//!   packs, per pack the classes) and a 64-entry pack table (about 70 KiB).
//! - Space: with the BPF mix, after churn at 100 MiB live in a 128 MiB window, live/reserved is
//!   about 91% (Linux: 83%); at 32 MiB live it is 89% (Linux: 84%), 18 packs for 16 of live
//!   bytes (84% with the magazines in front, which hold a 19th). The rest is slack between slots
//!   that no request of the mix fits at that moment, plus rounding each slot to 64 bytes (0.6%).
//!
//! Errors never change anything: every check is made before the first write, and a failed mapping
//! is undone before returning.
//!
//! # Pack map
//!
//! [`PackAllocator::render_pack_map`] prints one line per mapped pack, one character per 32 KiB:
//! `' '` empty, `'.'` up to a third used, `':'` up to two thirds, `'+'` more but not full, `'#'`
//! full. Packs of a large slot print as full.

mod class;
pub mod magazine;
mod meta;
mod sim;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use class::{LINEAR_LIMIT, MIN_RUN, RunIndex, class_at_least, class_of};
use meta::PackMeta;

pub use sim::{SimBackend, SimCounts};

/// Bytes of a pack: one level-2 block.
pub const PACK_SIZE: usize = 2 << 20;
/// Bytes of a chunk, the unit of slot sizes and addresses.
pub const CHUNK_SIZE: usize = 64;
/// Chunks in a pack.
pub const CHUNKS_PER_PACK: u32 = (PACK_SIZE / CHUNK_SIZE) as u32;
/// Most packs a pool can have: the window must sit within ±128 MiB of kernel text (BL range).
pub const MAX_PACKS: usize = 64;
/// Largest alignment [`PackAllocator::alloc_aligned`] accepts.
pub const MAX_ALIGN: usize = 4096;

const PACK_SHIFT: u32 = PACK_SIZE.trailing_zeros();
const CHUNK_SHIFT: u32 = CHUNK_SIZE.trailing_zeros();

/// Slots of at most this many chunks (2 KiB) are cut from the end of a free run, larger ones
/// from its start.
const SMALL_SLOT_CHUNKS: u32 = 32;

/// Slots over 64 KiB (more than any BPF program) go to the lowest pack that has room for them
/// (first fit by pack, best fit inside it) rather than to the best-fitting run of the pool.
const FIRST_FIT_CHUNKS: u32 = 1024;

/// A slot whose best-fitting run lies in one of this many highest slot packs goes to the lowest
/// pack that has room instead, if that is lower (see "Placement across packs").
const DRAINING_PACKS: u32 = 6;

/// An emptied pack is kept mapped (cached) only while the other slot packs have fewer free chunks
/// than this in all: a quarter of a pack.
const CACHE_FREE_LIMIT: u32 = CHUNKS_PER_PACK / 4;

/// Why a backend could not map packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// No free 2 MiB-aligned physical block is left.
    OutOfFrames,
    /// A page table could not be allocated or changed.
    PageTable,
    /// The address is already mapped (an allocator bug, reported rather than overwritten).
    AlreadyMapped,
    /// Freed code could not be overwritten with BRK (the text poke refused).
    Refill,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfFrames => "no free 2 MiB physical block",
            Self::PageTable => "page table could not be allocated or changed",
            Self::AlreadyMapped => "address already mapped",
            Self::Refill => "freed code could not be refilled with BRK",
        })
    }
}

/// What the allocator needs from the memory system: map and unmap whole packs, and refill freed
/// code with BRK. The kernel implements it with the MMU and the text-poke alias.
pub trait PackBackend {
    /// Back `count` contiguous packs at pool address `va` with 2 MiB-aligned physical blocks, fill
    /// them entirely with BRK, and map each as one RX 2 MiB block. On error nothing stays mapped.
    fn map_packs(&mut self, va: u64, count: usize) -> Result<(), BackendError>;
    /// Unmap (break-before-make and TLB invalidation) and return the physical blocks.
    fn unmap_packs(&mut self, va: u64, count: usize);
    /// Refill `[va, va + len)` with BRK through the text-poke alias, so a stale call traps. On
    /// error the free is refused: the slot stays allocated, its code as it was.
    fn fill_brk(&mut self, va: u64, len: usize) -> Result<(), BackendError>;
}

/// Why an allocation or a free was refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The exec manager is not set up yet (`ExecManager::init` has not run).
    Uninitialised,
    /// A size of zero bytes.
    ZeroSize,
    /// More bytes than the whole pool.
    TooLarge {
        /// Bytes requested.
        size: usize,
        /// Bytes of the pool.
        pool: usize,
    },
    /// The alignment is not a power of two or is over [`MAX_ALIGN`].
    BadAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// No pack has room and no pack position is left to map.
    PoolExhausted {
        /// Bytes requested.
        size: usize,
    },
    /// The backend could not map a new pack (out of physical blocks or page tables).
    MapFailed(BackendError),
    /// A freed slot could not be refilled with BRK; it stays allocated.
    RefillFailed(BackendError),
    /// The heap could not hold the metadata of a new pack.
    MetadataExhausted,
    /// The address is not in the pool.
    OutsidePool {
        /// The address given.
        addr: u64,
    },
    /// The address is not on a 64-byte chunk boundary, so no slot can start there.
    Misaligned {
        /// The address given.
        addr: u64,
    },
    /// The address is inside a live slot but not at its start.
    InteriorPointer {
        /// The address given.
        addr: u64,
        /// Start of the slot that contains it.
        slot: u64,
    },
    /// No live slot starts at the address: it was already freed, or never allocated.
    DoubleFree {
        /// The address given.
        addr: u64,
    },
    /// The size given does not match the size the slot was allocated with.
    WrongSize {
        /// The slot's address.
        addr: u64,
        /// The size recorded at allocation.
        recorded: usize,
        /// The size given.
        given: usize,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Uninitialised => write!(f, "the exec manager is not set up yet"),
            Self::ZeroSize => write!(f, "cannot allocate an exec slot of 0 bytes"),
            Self::TooLarge { size, pool } => {
                write!(
                    f,
                    "exec slot of {size} bytes is larger than the {pool}-byte pool"
                )
            }
            Self::BadAlignment { align } => write!(
                f,
                "alignment {align} is not a power of two of at most {MAX_ALIGN} bytes"
            ),
            Self::PoolExhausted { size } => {
                write!(f, "exec pool exhausted: no room for {size} bytes")
            }
            Self::MapFailed(why) => write!(f, "could not map a new exec pack: {why}"),
            Self::RefillFailed(why) => write!(f, "exec slot not freed: {why}"),
            Self::MetadataExhausted => write!(f, "heap exhausted: no room for pack metadata"),
            Self::OutsidePool { addr } => write!(f, "{addr:#x} is not in the exec pool"),
            Self::Misaligned { addr } => {
                write!(
                    f,
                    "{addr:#x} is not {CHUNK_SIZE}-byte aligned: not a slot start"
                )
            }
            Self::InteriorPointer { addr, slot } => {
                write!(
                    f,
                    "{addr:#x} is inside the exec slot at {slot:#x}, not its start"
                )
            }
            Self::DoubleFree { addr } => {
                write!(
                    f,
                    "no live exec slot at {addr:#x}: already freed or never allocated"
                )
            }
            Self::WrongSize {
                addr,
                recorded,
                given,
            } => write!(
                f,
                "exec slot at {addr:#x} has {recorded} bytes, free was given {given}"
            ),
        }
    }
}

impl core::error::Error for AllocError {}

/// Why a pool could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The base is not 2 MiB-aligned.
    BaseMisaligned {
        /// The base given.
        base: u64,
    },
    /// The pack count is 0 or over [`MAX_PACKS`].
    BadPackCount {
        /// The count given.
        n_packs: usize,
    },
    /// The window would wrap around the address space.
    AddressOverflow,
    /// The heap could not hold the pack table.
    MetadataExhausted,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BaseMisaligned { base } => write!(f, "pool base {base:#x} is not 2 MiB-aligned"),
            Self::BadPackCount { n_packs } => {
                write!(f, "pool of {n_packs} packs: must be 1 to {MAX_PACKS}")
            }
            Self::AddressOverflow => write!(f, "pool window wraps around the address space"),
            Self::MetadataExhausted => write!(f, "heap exhausted: no room for the pack table"),
        }
    }
}

impl core::error::Error for PoolError {}

/// An allocated slot: its address and the exact size it was allocated with.
///
/// Not `Clone`: freeing consumes it, so a slot handle cannot be freed twice. Raw callers use
/// [`PackAllocator::alloc_raw`] / [`PackAllocator::free_raw`], which check the same things at run
/// time.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a slot dropped without being freed stays allocated"]
pub struct Slot {
    addr: u64,
    size: usize,
}

impl Slot {
    /// Start address (the exec address in the pool).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Size in bytes, as requested.
    pub fn size(&self) -> usize {
        self.size
    }

    /// First address after the slot.
    pub fn end(&self) -> u64 {
        // Saturating: a handle rebuilt from a wrong pair may not overflow (the allocator refuses
        // it anyway).
        self.addr.saturating_add(self.size as u64)
    }

    /// The address and size, for a caller that stores them elsewhere.
    pub fn into_raw(self) -> (u64, usize) {
        (self.addr, self.size)
    }

    /// Rebuilds a slot from [`Slot::into_raw`]; [`PackAllocator::free`] checks it like a raw free.
    pub fn from_raw(addr: u64, size: usize) -> Self {
        Self { addr, size }
    }
}

/// A live slot found by [`PackAllocator::slot_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its first byte.
    pub addr: u64,
    /// The size it was allocated with.
    pub size: usize,
}

/// Counters of the whole pool, kept up to date on every operation (reading them is O(1)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packs mapped: slot packs, packs of large slots and the cached empty pack.
    pub packs_mapped: usize,
    /// Of those, packs held by large slots.
    pub large_packs: usize,
    /// Empty packs kept mapped (0 or 1).
    pub cached_packs: usize,
    /// Bytes of the mapped packs.
    pub bytes_reserved: u64,
    /// Sum of the requested sizes of live slots.
    pub bytes_live: u64,
    /// Bytes of the 64-byte chunks that live slots cover.
    pub chunk_bytes_live: u64,
    /// Live slots.
    pub live_slots: u64,
    /// Successful allocations so far.
    pub allocations: u64,
    /// Successful frees so far.
    pub frees: u64,
}

/// Occupancy of one slot pack, from a walk over its runs (O(slots in the pack)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Address of the pack.
    pub va: u64,
    /// Live slots in the pack.
    pub live_slots: u32,
    /// Bytes of the chunks they cover.
    pub used_bytes: u64,
    /// Longest free run, in bytes.
    pub largest_free_run: u64,
    /// Bytes in tiny free runs (under 512 bytes: the holes small slots leave).
    pub tiny_run_bytes: u64,
}

/// A run of whole packs held by one large slot, recorded at its first pack.
#[derive(Clone, Copy, Debug, Default)]
struct LargeSlot {
    packs: u8,
    size: usize,
}

/// The allocator. See the module documentation for the design.
pub struct PackAllocator<B: PackBackend> {
    backend: B,
    base: u64,
    n_packs: usize,
    /// Metadata of slot packs; `None` for unmapped packs and packs of large slots.
    packs: Box<[Option<PackMeta>; MAX_PACKS]>,
    index: RunIndex,
    /// Every mapped pack, one bit per pack position.
    mapped: u64,
    /// The empty slot pack kept mapped, if any.
    cached: Option<usize>,
    /// The slot packs the placement lets drain: the [`DRAINING_PACKS`] highest, less the lowest
    /// slot pack (see [`PackAllocator::update_draining`]).
    draining: u64,
    /// First packs of large slots, and all their packs.
    large_start: u64,
    large_member: u64,
    large: [LargeSlot; MAX_PACKS],
    bytes_live: u64,
    // `frees` sits between the two counters an allocation bumps, so that the compiler does not
    // pair them into a vector add through the stack.
    frees: u64,
    allocations: u64,
}

impl<B: PackBackend> PackAllocator<B> {
    /// A pool of `n_packs` packs from `base` (2 MiB-aligned), none mapped yet.
    pub fn new(backend: B, base: u64, n_packs: usize) -> Result<Self, PoolError> {
        if !base.is_multiple_of(PACK_SIZE as u64) {
            return Err(PoolError::BaseMisaligned { base });
        }
        if n_packs == 0 || n_packs > MAX_PACKS {
            return Err(PoolError::BadPackCount { n_packs });
        }
        if base.checked_add((n_packs * PACK_SIZE) as u64).is_none() {
            return Err(PoolError::AddressOverflow);
        }
        let mut packs = Vec::new();
        packs
            .try_reserve_exact(MAX_PACKS)
            .map_err(|_| PoolError::MetadataExhausted)?;
        packs.resize_with(MAX_PACKS, || None);
        let packs = packs
            .into_boxed_slice()
            .try_into()
            .map_err(|_| PoolError::MetadataExhausted)?;
        Ok(Self {
            backend,
            base,
            n_packs,
            packs,
            index: RunIndex::new(),
            mapped: 0,
            cached: None,
            draining: 0,
            large_start: 0,
            large_member: 0,
            large: [LargeSlot::default(); MAX_PACKS],
            bytes_live: 0,
            frees: 0,
            allocations: 0,
        })
    }

    /// First address of the pool.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes of the pool window.
    pub fn pool_size(&self) -> usize {
        self.n_packs * PACK_SIZE
    }

    /// Whether `addr` lies in the pool window.
    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.base) < self.pool_size() as u64
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (e.g. to change a simulated frame limit).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// A slot of `size` bytes, 64-byte aligned.
    pub fn alloc(&mut self, size: usize) -> Result<Slot, AllocError> {
        self.alloc_aligned(size, CHUNK_SIZE)
    }

    /// A slot of `size` bytes aligned to `align` (a power of two up to [`MAX_ALIGN`]; anything up
    /// to 64 gives 64).
    pub fn alloc_aligned(&mut self, size: usize, align: usize) -> Result<Slot, AllocError> {
        let addr = self.allocate(size, align)?;
        Ok(Slot { addr, size })
    }

    /// [`PackAllocator::alloc`] for callers that keep the address and size themselves.
    pub fn alloc_raw(&mut self, size: usize) -> Result<u64, AllocError> {
        self.allocate(size, CHUNK_SIZE)
    }

    /// Frees a slot.
    pub fn free(&mut self, slot: Slot) -> Result<(), AllocError> {
        self.free_raw(slot.addr, slot.size)
    }

    /// Frees the slot at `addr`, which must have been allocated with exactly `size` bytes.
    pub fn free_raw(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.pool_size() as u64 {
            return Err(AllocError::OutsidePool { addr });
        }
        if !offset.is_multiple_of(CHUNK_SIZE as u64) {
            return Err(AllocError::Misaligned { addr });
        }
        let pack = (offset >> PACK_SHIFT) as usize % MAX_PACKS;
        let chunk = (offset >> CHUNK_SHIFT) as u32 % CHUNKS_PER_PACK;
        let Some(meta) = self.packs[pack].as_mut() else {
            return self.free_large(addr, size);
        };
        let Some(recorded) = meta.slot_size(chunk) else {
            return Err(match meta.slot_covering(chunk) {
                Some(start) => AllocError::InteriorPointer {
                    addr,
                    slot: addr - u64::from(chunk - start) * CHUNK_SIZE as u64,
                },
                None => AllocError::DoubleFree { addr },
            });
        };
        if recorded as usize != size {
            return Err(AllocError::WrongSize {
                addr,
                recorded: recorded as usize,
                given: size,
            });
        }
        let n = recorded.div_ceil(CHUNK_SIZE as u32);

        self.backend
            .fill_brk(addr, (n as usize) << CHUNK_SHIFT)
            .map_err(AllocError::RefillFailed)?;
        meta.release(&mut self.index, pack, chunk, n);
        let empty = meta.used_chunks() == 0;
        self.bytes_live -= size as u64;
        self.frees += 1;
        if empty {
            self.pack_emptied(pack);
        }
        Ok(())
    }

    /// The live slot that covers `addr` (a fault address, a return address in a backtrace), if
    /// any: its start and the size it was allocated with. Nothing is changed.
    pub fn slot_at(&self, addr: u64) -> Option<SlotInfo> {
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.pool_size() as u64 {
            return None;
        }
        let pack = (offset >> PACK_SHIFT) as usize % MAX_PACKS;
        let bit = 1u64 << pack;
        if let Some(meta) = self.packs[pack].as_ref() {
            let chunk = (offset >> CHUNK_SHIFT) as u32 % CHUNKS_PER_PACK;
            let start = meta.slot_covering(chunk)?;
            let size = meta.slot_size(start)? as usize;
            return Some(SlotInfo {
                addr: self.pack_va(pack) + (u64::from(start) << CHUNK_SHIFT),
                size,
            });
        }
        if self.large_member & bit == 0 {
            return None;
        }
        let first = 63 - (self.large_start & (bit | (bit - 1))).leading_zeros() as usize;
        let large = self.large[first];
        let start = self.pack_va(first);
        (addr - start < (usize::from(large.packs) * PACK_SIZE) as u64).then_some(SlotInfo {
            addr: start,
            size: large.size,
        })
    }

    /// The pool addresses of the mapped packs (slot packs, the cached empty pack and the packs of
    /// large slots), in address order: what the audit expects to find mapped as pack blocks.
    pub fn mapped_packs(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.n_packs)
            .filter(|&pack| self.mapped & (1 << pack) != 0)
            .map(|pack| self.pack_va(pack))
    }

    /// Releases the cached empty pack, if one is kept (its frame goes back to the backend).
    /// Returns whether one was released. An allocation that fails for want of frames while a
    /// pack is cached does this itself and retries.
    pub fn trim(&mut self) -> bool {
        let Some(pack) = self.cached.take() else {
            return false;
        };
        self.drop_pack_meta(pack);
        self.mapped &= !(1 << pack);
        self.update_draining();
        self.backend.unmap_packs(self.pack_va(pack), 1);
        true
    }

    /// Packs mapped (slot packs, the cached empty pack and packs of large slots): the first
    /// figure of [`PackAllocator::stats`], without its walk over the pack table.
    pub fn packs_mapped(&self) -> usize {
        self.mapped.count_ones() as usize
    }

    /// The pool-wide counters.
    pub fn stats(&self) -> Stats {
        let packs_mapped = self.mapped.count_ones() as usize;
        let slot_chunks: u64 = self
            .packs
            .iter()
            .flatten()
            .map(|m| u64::from(m.used_chunks()))
            .sum();
        let large_bytes: u64 = self
            .large
            .iter()
            .map(|l| l.size.next_multiple_of(CHUNK_SIZE) as u64)
            .sum();
        Stats {
            packs_mapped,
            large_packs: self.large_member.count_ones() as usize,
            cached_packs: usize::from(self.cached.is_some()),
            bytes_reserved: (packs_mapped * PACK_SIZE) as u64,
            bytes_live: self.bytes_live,
            chunk_bytes_live: (slot_chunks << CHUNK_SHIFT) + large_bytes,
            live_slots: self.allocations - self.frees,
            allocations: self.allocations,
            frees: self.frees,
        }
    }

    /// Occupancy of the slot pack at position `pack` (0-based in the window), or `None` if no slot
    /// pack is mapped there.
    pub fn pack_stats(&self, pack: usize) -> Option<PackStats> {
        let meta = self.packs.get(pack)?.as_ref()?;
        let mut stats = PackStats {
            va: self.pack_va(pack),
            ..PackStats::default()
        };
        for run in meta.runs() {
            let bytes = u64::from(run.len) << CHUNK_SHIFT;
            match run.slot_size {
                Some(_) => {
                    stats.used_bytes += bytes;
                    stats.live_slots += 1;
                }
                None => {
                    stats.largest_free_run = stats.largest_free_run.max(bytes);
                    if run.len < MIN_RUN {
                        stats.tiny_run_bytes += bytes;
                    }
                }
            }
        }
        Some(stats)
    }

    /// Writes the pack map: one line per mapped pack, one character per 32 KiB (legend in the
    /// module documentation).
    pub fn render_pack_map(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        const CELLS: usize = 64;
        const CELL_CHUNKS: u32 = CHUNKS_PER_PACK / CELLS as u32;
        for pack in 0..self.n_packs {
            if self.mapped & (1 << pack) == 0 {
                continue;
            }
            let mut used = [0u32; CELLS];
            let note = match &self.packs[pack] {
                Some(meta) => {
                    for run in meta.runs().filter(|run| run.slot_size.is_some()) {
                        let mut chunk = run.start;
                        while chunk < run.start + run.len {
                            let cell_end = (chunk / CELL_CHUNKS + 1) * CELL_CHUNKS;
                            let stop = cell_end.min(run.start + run.len);
                            used[(chunk / CELL_CHUNKS) as usize % CELLS] += stop - chunk;
                            chunk = stop;
                        }
                    }
                    if self.cached == Some(pack) {
                        "empty, cached"
                    } else {
                        ""
                    }
                }
                None => {
                    used = [CELL_CHUNKS; CELLS];
                    "large slot"
                }
            };
            write!(out, "{pack:>2} {:#x} |", self.pack_va(pack))?;
            let mut total = 0;
            for &cell in &used {
                total += cell;
                out.write_char(match cell {
                    0 => ' ',
                    c if c * 3 <= CELL_CHUNKS => '.',
                    c if c * 3 <= CELL_CHUNKS * 2 => ':',
                    c if c < CELL_CHUNKS => '+',
                    _ => '#',
                })?;
            }
            writeln!(out, "| {:>3}% {note}", total * 100 / CHUNKS_PER_PACK)?;
        }
        Ok(())
    }

    // ---- allocation ----

    fn allocate(&mut self, size: usize, align: usize) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(AllocError::BadAlignment { align });
        }
        if size > PACK_SIZE {
            // Large slots start on a pack boundary, which satisfies any accepted alignment.
            return self.allocate_large(size);
        }
        let n = size.div_ceil(CHUNK_SIZE) as u32;
        let align = (align >> CHUNK_SHIFT).max(1) as u32;
        let (pack, run) = match self.find_run(n, align) {
            Some(found) => found,
            None => (
                self.map_pack(size)?,
                (0, CHUNKS_PER_PACK, class_of(CHUNKS_PER_PACK)),
            ),
        };
        let Some(meta) = self.packs[pack % MAX_PACKS].as_mut() else {
            // The index only names packs with metadata; reaching here is an allocator bug.
            return Err(AllocError::PoolExhausted { size });
        };
        if meta.used_chunks() == 0 {
            // The cached empty pack (or a new one) is in use again.
            self.cached = None;
        }
        let slot = meta.carve(
            &mut self.index,
            pack,
            run,
            (n, align),
            n <= SMALL_SLOT_CHUNKS,
        );
        meta.mark_used(slot, n, size as u32);
        self.bytes_live += size as u64;
        self.allocations += 1;
        Ok(self.pack_va(pack) + (u64::from(slot) << CHUNK_SHIFT))
    }

    /// A free run that fits `n` chunks aligned to `align` chunks: its pack, and its first chunk,
    /// length and class.
    ///
    /// Best fit over the whole pool: the smallest class that surely fits (for `n < 64`, exactly
    /// `n` chunks if some pack has such a run), in the lowest pack that has it. From 4 KiB up a
    /// class spans several lengths, so first the class holding `n + align - 1` itself is tried: its
    /// first run may be long enough, which lets a slot reuse the hole of a freed slot of the same
    /// size. Over 4 KiB the rest is [`PackAllocator::find_wide_run`]'s. An empty pack's run is of
    /// the largest class, so it is taken last.
    #[inline]
    fn find_run(&self, n: u32, align: u32) -> Option<(usize, (u32, u32, usize))> {
        // A whole-pack run starts at chunk 0, aligned for anything, so clamping is safe.
        let span = (n + align - 1).min(CHUNKS_PER_PACK);
        if span >= LINEAR_LIMIT {
            let class = class_of(span);
            let packs = self.index.packs_with(class);
            if packs != 0 {
                let pack = lowest(packs);
                let (start, len) = self.packs[pack].as_ref()?.run_of_class(class)?;
                if len >= span {
                    return Some((pack, (start, len, class)));
                }
            }
            if span > LINEAR_LIMIT {
                return self.find_wide_run(span);
            }
        }
        let class = self.index.first_at_least(class_at_least(span))?;
        let pack = lowest(self.index.packs_with(class));
        if self.draining & (1 << pack) != 0
            && let Some(found) = self.lowest_fit(span)
        {
            return Some(found);
        }
        let (start, len) = self.packs[pack].as_ref()?.run_of_class(class)?;
        Some((pack, (start, len, class)))
    }

    /// [`PackAllocator::find_run`] for a span over 4 KiB that no run of its own class fits: the
    /// best fit, unless the slot is over 64 KiB or the best fit is in a draining pack
    /// ([`PackAllocator::update_draining`]); then the lowest pack with room
    /// ([`PackAllocator::lowest_fit`]).
    ///
    /// Out of line: slots over 4 KiB are a minority of requests, and the sizes up to 4 KiB keep
    /// their path as it was. The first fit walks the non-empty classes from the span's up (the
    /// four words of the class bitmap, one load per class found).
    #[inline(never)]
    fn find_wide_run(&self, span: u32) -> Option<(usize, (u32, u32, usize))> {
        let class = self.index.first_at_least(class_at_least(span))?;
        let pack = lowest(self.index.packs_with(class));
        if (span > FIRST_FIT_CHUNKS || self.draining & (1 << pack) != 0)
            && let Some(found) = self.lowest_fit(span)
        {
            return Some(found);
        }
        let (start, len) = self.packs[pack].as_ref()?.run_of_class(class)?;
        Some((pack, (start, len, class)))
    }

    /// Recomputes the draining packs after the set of slot packs changed (a pack mapped or
    /// released, a large slot made or freed): the [`DRAINING_PACKS`] highest slot packs, less the
    /// lowest slot pack, so that a pool of one pack has none. Kept as a mask so the placement
    /// tests a bit instead of counting packs on every allocation.
    fn update_draining(&mut self) {
        let slot_packs = self.mapped & !self.large_member;
        let mut rest = slot_packs;
        let mut draining = 0u64;
        for _ in 0..DRAINING_PACKS {
            if rest == 0 {
                break;
            }
            let top = 1u64 << (63 - rest.leading_zeros());
            draining |= top;
            rest &= !top;
        }
        self.draining = draining & !(slot_packs & slot_packs.wrapping_neg());
    }

    /// First fit by pack: the lowest pack with a free run of at least `span` chunks (an empty
    /// pack only if no other has one), and in it the best-fitting class (first the class of
    /// `span` itself, if its first run is long enough).
    ///
    /// Walks the slot packs upwards with one find-first-set over each pack's classes
    /// ([`RunIndex`]'s per-pack sets), and stops at the first that fits: in steady state the low
    /// packs are nearly full, but a small slot fits in one of the first few. (Walking the classes
    /// instead, to union the packs that have each, cost up to twice the instructions per
    /// operation in the mixed churn, the draining rule sending small slots here.)
    #[inline(never)]
    fn lowest_fit(&self, span: u32) -> Option<(usize, (u32, u32, usize))> {
        let least = class_at_least(span);
        let mut packs = self.mapped & !self.large_member;
        let mut empty = None;
        while packs != 0 {
            let pack = packs.trailing_zeros() as usize;
            packs &= packs - 1;
            let classes = self.index.classes_of(pack);
            let Some(found) = classes.first_at_least(least) else {
                continue;
            };
            if classes.contains(class::CLASSES - 1) {
                // Empty (or nearly): only if no partly used pack has room.
                empty = empty.or(Some((pack, found)));
                continue;
            }
            return self.fit_in(pack, span, found);
        }
        let (pack, found) = empty?;
        self.fit_in(pack, span, found)
    }

    /// The run of pack `pack` that [`PackAllocator::lowest_fit`] takes for `span` chunks: the
    /// first run of the class of `span` itself if it is long enough, else the first run of
    /// `found`, the pack's smallest class whose runs all fit.
    fn fit_in(&self, pack: usize, span: u32, found: usize) -> Option<(usize, (u32, u32, usize))> {
        let meta = self.packs[pack].as_ref()?;
        let own = class_of(span);
        if own < found && self.index.classes_of(pack).contains(own) {
            let (start, len) = meta.run_of_class(own)?;
            if len >= span {
                return Some((pack, (start, len, own)));
            }
        }
        let (start, len) = meta.run_of_class(found)?;
        Some((pack, (start, len, found)))
    }

    /// Maps a new slot pack at the lowest unused position and lists it as one free run.
    #[cold]
    fn map_pack(&mut self, size: usize) -> Result<usize, AllocError> {
        let unused = !self.mapped & self.window_mask();
        if unused == 0 {
            return Err(AllocError::PoolExhausted { size });
        }
        self.map_pack_at(unused.trailing_zeros() as usize)
    }

    /// Maps a new slot pack at the unused position `pack`, as one free run.
    #[cold]
    fn map_pack_at(&mut self, pack: usize) -> Result<usize, AllocError> {
        let mut meta = PackMeta::try_new().ok_or(AllocError::MetadataExhausted)?;
        self.backend
            .map_packs(self.pack_va(pack), 1)
            .map_err(AllocError::MapFailed)?;
        meta.add_free(&mut self.index, pack, 0, CHUNKS_PER_PACK);
        self.packs[pack] = Some(meta);
        self.mapped |= 1 << pack;
        self.update_draining();
        Ok(pack)
    }

    /// A pack became empty: keep it as the cached pack if there is none and the other slot packs
    /// have less than [`CACHE_FREE_LIMIT`] free chunks in all, else release it. With that much
    /// room elsewhere the next requests are unlikely to need it, and a mapped empty pack costs a
    /// whole pack of reserve (under module-like load and unload churn, where packs empty often,
    /// keeping one regardless held about half a pack more on average).
    #[cold]
    fn pack_emptied(&mut self, pack: usize) {
        if self.cached.is_none() && self.free_chunks_elsewhere(pack) < CACHE_FREE_LIMIT {
            self.cached = Some(pack);
            return;
        }
        self.drop_pack_meta(pack);
        self.mapped &= !(1 << pack);
        self.update_draining();
        self.backend.unmap_packs(self.pack_va(pack), 1);
    }

    /// Free chunks of the slot packs other than `pack` (a walk over the pack table, on the cold
    /// path of a pack emptying).
    fn free_chunks_elsewhere(&self, pack: usize) -> u32 {
        let mut free = 0;
        for (other, meta) in self.packs.iter().enumerate() {
            if let Some(meta) = meta
                && other != pack
            {
                free += CHUNKS_PER_PACK - meta.used_chunks();
            }
        }
        free
    }

    /// Forgets an empty slot pack's metadata (its single free run leaves the index).
    fn drop_pack_meta(&mut self, pack: usize) {
        if let Some(mut meta) = self.packs[pack].take() {
            meta.remove_free(&mut self.index, pack, 0, CHUNKS_PER_PACK);
        }
    }

    // ---- large slots ----

    /// A large slot, from the highest free run. If the frames run out while the cached empty
    /// pack holds one outside that run, the frame is used after all: first through a run that
    /// takes the cached pack in, else by releasing it and trying again (and caching a pack again
    /// if that fails too), so a refused request leaves the allocator as it was.
    #[cold]
    fn allocate_large(&mut self, size: usize) -> Result<u64, AllocError> {
        let pool = self.pool_size();
        if size > pool {
            return Err(AllocError::TooLarge { size, pool });
        }
        let count = size.div_ceil(PACK_SIZE);
        let cached = self.cached.map_or(0, |pack| 1u64 << pack);
        let usable = (!self.mapped & self.window_mask()) | cached;
        let start = highest_run(usable, count).ok_or(AllocError::PoolExhausted { size })?;
        let out_of_frames = match self.allocate_large_at(start, count, size) {
            Err(AllocError::MapFailed(BackendError::OutOfFrames)) => {
                AllocError::MapFailed(BackendError::OutOfFrames)
            }
            result => return result,
        };
        let Some(pack) = self
            .cached
            .filter(|&pack| run_mask(start, count) & (1 << pack) == 0)
        else {
            return Err(out_of_frames);
        };
        // A run over the cached pack needs one frame less.
        if let Some(start) = highest_run_over(usable, count, pack) {
            return self.allocate_large_at(start, count, size);
        }
        self.trim();
        let result = self.allocate_large_at(start, count, size);
        if result.is_err() {
            // Put a cached pack back where it was (the frame just released is free).
            let _ = self.map_pack_at(pack);
            self.cached = self.packs[pack].as_ref().map(|_| pack);
        }
        result
    }

    /// The large slot of `count` packs from `start` (all unmapped or the cached pack).
    #[cold]
    fn allocate_large_at(
        &mut self,
        start: usize,
        count: usize,
        size: usize,
    ) -> Result<u64, AllocError> {
        let cached = self.cached.map_or(0, |pack| 1u64 << pack);
        let run = run_mask(start, count);

        // Map what is not mapped yet: the run minus the cached pack, at most two pieces.
        let mut mapped_now = 0u64;
        let mut to_map = run & !cached;
        while to_map != 0 {
            let first = to_map.trailing_zeros() as usize;
            let len = (to_map >> first).trailing_ones() as usize;
            if let Err(why) = self.backend.map_packs(self.pack_va(first), len) {
                while mapped_now != 0 {
                    let first = mapped_now.trailing_zeros() as usize;
                    let len = (mapped_now >> first).trailing_ones() as usize;
                    self.backend.unmap_packs(self.pack_va(first), len);
                    mapped_now &= !run_mask(first, len);
                }
                return Err(AllocError::MapFailed(why));
            }
            mapped_now |= run_mask(first, len);
            to_map &= !run_mask(first, len);
        }
        // The cached pack is already mapped RX and BRK-filled: it joins the large slot as it is.
        if let Some(pack) = self.cached.filter(|&pack| run & (1 << pack) != 0) {
            self.drop_pack_meta(pack);
            self.cached = None;
        }
        self.mapped |= run;
        self.large_start |= 1 << start;
        self.large_member |= run;
        self.update_draining();
        self.large[start] = LargeSlot {
            packs: count as u8,
            size,
        };
        self.bytes_live += size as u64;
        self.allocations += 1;
        Ok(self.pack_va(start))
    }

    /// Frees a large slot; `addr` is in the pool and not in a slot pack.
    #[cold]
    fn free_large(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        let offset = addr - self.base;
        let pack = (offset >> PACK_SHIFT) as usize % MAX_PACKS;
        let bit = 1u64 << pack;
        if self.large_member & bit == 0 {
            return Err(AllocError::DoubleFree { addr });
        }
        let first = 63 - (self.large_start & (bit | (bit - 1))).leading_zeros() as usize;
        if first != pack || !offset.is_multiple_of(PACK_SIZE as u64) {
            return Err(AllocError::InteriorPointer {
                addr,
                slot: self.pack_va(first),
            });
        }
        let large = self.large[pack];
        if large.size != size {
            return Err(AllocError::WrongSize {
                addr,
                recorded: large.size,
                given: size,
            });
        }
        let count = usize::from(large.packs);
        let run = run_mask(pack, count);
        self.backend.unmap_packs(addr, count);
        self.mapped &= !run;
        self.large_start &= !bit;
        self.large_member &= !run;
        self.update_draining();
        self.large[pack] = LargeSlot::default();
        self.bytes_live -= size as u64;
        self.frees += 1;
        Ok(())
    }

    // ---- helpers ----

    fn pack_va(&self, pack: usize) -> u64 {
        self.base + ((pack as u64) << PACK_SHIFT)
    }

    /// One bit per pack position of the window.
    fn window_mask(&self) -> u64 {
        u64::MAX >> (MAX_PACKS - self.n_packs)
    }

    /// Checks every structural invariant of the allocator's records (free-run index, slot
    /// edges, mapped and cached packs, large slots) and panics with the first one violated. For
    /// tests: the host tests run it after every operation, and a kernel's own tests can with the
    /// `check-invariants` feature.
    #[cfg(any(test, feature = "check-invariants"))]
    pub fn check_invariants(&self) {
        let mut slot_packs = 0u64;
        for (pack, meta) in self.packs.iter().enumerate() {
            if let Some(meta) = meta {
                meta.check(&self.index, pack);
                slot_packs |= 1 << pack;
                if meta.used_chunks() == 0 {
                    assert_eq!(self.cached, Some(pack), "pack {pack}: empty but not cached");
                }
            }
        }
        assert_eq!(
            slot_packs & self.large_member,
            0,
            "slot pack inside a large slot"
        );
        assert_eq!(slot_packs | self.large_member, self.mapped, "mapped packs");
        // The definition, one pack at a time: fewer than DRAINING_PACKS slot packs above it, and
        // one below it.
        let draining = (0..MAX_PACKS)
            .filter(|&pack| {
                let above = slot_packs & !(u64::MAX >> (63 - pack));
                let below = slot_packs & ((1u64 << pack) - 1);
                slot_packs & (1 << pack) != 0 && above.count_ones() < DRAINING_PACKS && below != 0
            })
            .fold(0u64, |mask, pack| mask | 1 << pack);
        assert_eq!(self.draining, draining, "draining packs");
        assert_eq!(
            self.mapped & !self.window_mask(),
            0,
            "mapped beyond the window"
        );
        if let Some(pack) = self.cached {
            assert!(
                slot_packs & (1 << pack) != 0,
                "cached pack {pack} has no metadata"
            );
        }
        for class in 0..class::CLASSES {
            assert_eq!(
                self.index.packs_with(class) & !slot_packs,
                0,
                "class {class} index"
            );
            for pack in 0..MAX_PACKS {
                assert_eq!(
                    self.index.classes_of(pack).contains(class),
                    self.index.packs_with(class) & (1 << pack) != 0,
                    "class {class} of pack {pack} in the per-pack index"
                );
            }
        }
    }
}

/// The lowest pack of a non-empty set of packs.
#[inline]
fn lowest(packs: u64) -> usize {
    packs.trailing_zeros() as usize % MAX_PACKS
}

/// Start of the highest run of `count` consecutive set bits in `bits`.
fn highest_run(bits: u64, count: usize) -> Option<usize> {
    let mut starts = bits;
    for _ in 1..count {
        starts &= starts >> 1;
    }
    (starts != 0).then(|| 63 - starts.leading_zeros() as usize)
}

/// Start of the highest run of `count` consecutive set bits in `bits` that includes bit `pack`.
fn highest_run_over(bits: u64, count: usize, pack: usize) -> Option<usize> {
    let lowest_start = (pack + 1).saturating_sub(count);
    (lowest_start..=pack).rev().find(|&start| {
        start + count <= 64 && bits & run_mask(start, count) == run_mask(start, count)
    })
}

/// `count` set bits from bit `first`.
fn run_mask(first: usize, count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        ((1u64 << count) - 1) << first
    }
}
