//! Per-CPU magazines of small slots in front of the shared [`PackAllocator`]: the fast path for
//! slots of up to 4 KiB (Bonwick's magazines, Linux SLUB's per-CPU sheaves, mimalloc's free
//! lists).
//!
//! The shared allocator is exact and dense, but each of its calls keeps a free-run index in step
//! (about 300 instructions a pair) under one lock every CPU takes. Most exec slots are small and
//! come and go in the same few sizes (BPF programs, trampolines, probes), so each CPU keeps, per
//! size class, a short stack of slots freed recently: an allocation pops one, a free pushes one,
//! both touching only that CPU's state. The stacks are refilled from the shared allocator and
//! returned to it in batches.
//!
//! # Design
//!
//! - **Classes by exact chunk count**: class `c` holds slots of `c + 1` chunks of 64 bytes
//!   (64 B to 4 KiB, 64 classes). A slot is allocated from the shared allocator at its class size
//!   ([`class_bytes`]), so any freed slot of the class serves any request of it, and the rounding
//!   is the chunk rounding the shared allocator makes anyway: no density is lost to classes.
//! - **The user's size, lock-free**: the shared allocator records the class size; the size the
//!   user asked for is kept in a per-pack table of one `AtomicU16` per chunk (0: no slot handed
//!   out starts here), set when a slot is handed out and swapped back to 0 by a compare-exchange
//!   on free. A free is checked against it on any CPU without any lock, and two racing frees of
//!   one slot have one winner. (A cheaper exact record was sought: a byte per chunk cannot tell
//!   4096 sizes apart, and making up the rest from an end-of-slot bitmap needs a check and a claim
//!   that are not one atomic step, so a wrong-size free could race a free-and-reuse of the slot.)
//!   Tables are made, under the shared lock, for a pack before any slot of it is handed out (a
//!   spare is kept ready so this never fails after the slot is taken), and kept until the layer
//!   is dropped: a table is read without a lock, so it may never be freed under a reader.
//! - **Per-CPU state under a per-CPU lock** ([`MagazineLock`], the caller's kind: the manager
//!   masks interrupts; the model checks use loom's). Only its own CPU takes it on the fast path,
//!   so it is uncontended (one exclusive load/store pair and a release store, on a line no other
//!   CPU writes) except while another CPU drains it. Locks are taken in one order: one CPU's
//!   lock, then the shared allocator's; only [`Magazines::stats`] and
//!   `Magazines::check_invariants` hold several CPU locks, taken in index order.
//! - **Batches and bounds**: a class holds at most [`MAGAZINE_SLOTS`] slots; an empty one is
//!   refilled with up to [`REFILL_BYTES`] of slots at once (within the budget), a full one
//!   flushed to half. A CPU's magazines hold at most [`RESTING_BUDGET`] bytes in all; a free that
//!   would pass it first flushes most of what each class left unused since the last time (its
//!   low-water mark), then if need be the largest classes, until three quarters of it are used.
//!   So at most `cpus × RESTING_BUDGET` of exec memory rests in magazines, and the deferred
//!   merging of free runs in the shared allocator is bounded by it. (One slot of each of the 64
//!   classes is 130 KiB: a CPU that cycles through all of them at once keeps its small classes
//!   and goes to the shared allocator for some large ones.)
//! - **Pressure and trim**: an allocation the shared allocator refuses for want of memory
//!   (`PoolExhausted`, `MapFailed`, `MetadataExhausted`) drains every CPU's magazines into it and
//!   retries once; [`Magazines::trim`] drains them all, drops the spare table and trims the
//!   shared allocator.
//! - **BRK before reuse**: a free refills the slot with BRK ([`SlotFill`], the contract of
//!   [`PackBackend::fill_brk`]) before it enters a magazine, so a slot is never handed out with
//!   stale code, and a stale call traps at once. Slots from a refill are fresh from the shared
//!   allocator, which fills on its own frees and maps packs BRK-filled.
//! - **Honest figures**: slots resting in magazines are counted reserved, not live
//!   ([`MagazineStats`]): `bytes_live` is the sum of the users' sizes.
//!
//! Larger slots, and aligned small ones when no magazine slot has the alignment, go to the shared
//! allocator directly (a freed aligned small slot then joins its class's magazine: it is a slot of
//! the class like any other).
//!
//! # The fast paths, step by step
//!
//! [`Magazines::alloc`] of `size` bytes on CPU `cpu`:
//! 1. `class = (size - 1) >> 6`; a class of 64 or more (or `size == 0`) goes to the slow path;
//! 2. take this CPU's lock (`cpu` past the count uses the last CPU's: correct, only slower);
//! 3. pop the top slot (a chunk offset from the pool base) of the class's stack; empty: unlock,
//!    slow path (refill);
//! 4. load the pack's record table pointer (acquire) and store `size` in the slot's record;
//! 5. subtract the class size from the CPU's resting bytes, add the rounding slack, count the
//!    allocation; unlock;
//! 6. return `base + (chunk << 6)`.
//!
//! [`Magazines::free_raw`] of `(addr, size)` on CPU `cpu`:
//! 1. `offset = addr - base`: outside the pool, not 64-byte aligned, or `size` not of a class:
//!    slow path (which words the error);
//! 2. load the pack's record table pointer (acquire; none: slow path) and compare-exchange the
//!    slot's record from `size` to 0: another non-zero value is `WrongSize` at once; 0 (no slot
//!    handed out starts here): slow path, which tells an interior pointer from a double free or
//!    a slot resting in a magazine;
//! 3. take this CPU's lock; a full magazine or a full budget: flush (slow path, shared lock);
//! 4. refill the slot with BRK (the fill callback; on error the record is restored and the free
//!    refused);
//! 5. push the chunk, add the class size to the resting bytes, subtract the slack, count the free;
//!    unlock.
//!
//! Neither touches a cache line another CPU writes in steady state, except the record of a slot
//! freed on another CPU than the one that allocated it (and records of neighbouring chunks share
//! a line: 32 chunks, 2 KiB of pack, per 64-byte line).
//!
//! # Costs
//!
//! - Memory: 64 KiB of records per pack that ever held a small slot (3.1% of the pack, beside the
//!   shared allocator's 72 KiB per live pack), plus one spare table of 64 KiB, dropped by trim;
//!   per CPU about 4.2 KiB of magazines ([`CpuMagazines`]: 64 classes × 16 slots × 4 bytes, the
//!   counts and counters); 512 bytes of table pointers. Exec memory resting in magazines: at most
//!   [`RESTING_BUDGET`] (64 KiB) per CPU, counted reserved.
//! - Time: the fast paths do a bounded, small amount of work whatever the number of packs or
//!   slots; no allocation, no loop. A refill or flush costs the shared allocator's calls for the
//!   batch, amortised over at least half a magazine of fast-path calls.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ops::DerefMut;
use core::ptr;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicU16, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU16, Ordering};

use arrayvec::ArrayVec;

use super::{
    AllocError, BackendError, CHUNK_SIZE, CHUNKS_PER_PACK, MAX_ALIGN, MAX_PACKS, PackAllocator,
    PackBackend, Slot, SlotInfo, Stats,
};

#[cfg(all(test, loom))]
#[path = "magazine_loom.rs"]
mod loom_tests;
#[cfg(test)]
#[path = "magazine_tests.rs"]
mod tests;

/// Size classes: one per chunk count from 1 to 64.
pub const CLASSES: usize = 64;
/// Largest slot the magazines serve (4 KiB); larger ones go to the shared allocator.
pub const SMALL_SLOT_MAX: usize = CLASSES * CHUNK_SIZE;
/// Slots a class's magazine holds on one CPU.
pub const MAGAZINE_SLOTS: usize = 16;
/// Bytes of slots one refill takes from the shared allocator at most (from 1 to
/// [`MAX_REFILL`] slots: 8 of 1 KiB and less, 2 of 4 KiB).
pub const REFILL_BYTES: usize = 8 * 1024;
/// Slots one refill takes at most: half a magazine, so the next free does not flush.
pub const MAX_REFILL: usize = MAGAZINE_SLOTS / 2;
/// Bytes of exec memory the magazines of one CPU hold at most.
pub const RESTING_BUDGET: usize = 64 * 1024;
/// What a CPU over its budget flushes down to (with the slot being freed): three quarters.
const RESTING_AFTER_FLUSH: usize = RESTING_BUDGET - RESTING_BUDGET / 4;
/// Most CPUs one layer serves (the manager's limit).
pub const MAX_CPUS: usize = 64;

const CHUNK_SHIFT: u32 = CHUNK_SIZE.trailing_zeros();
/// Chunks per pack, as a shift: a chunk offset from the pool base over this is the pack.
const PACK_CHUNK_SHIFT: u32 = CHUNKS_PER_PACK.trailing_zeros();

/// Records per pack table: one per chunk. The model checks (`cfg(loom)`) keep 64 per pack, taken
/// modulo 64: loom tracks every atomic, and 32768 per table are past what it can explore; their
/// slots all lie in the last 64 chunks of one pack, so no two alias.
const RECORD_CHUNKS: usize = if cfg!(loom) {
    64
} else {
    CHUNKS_PER_PACK as usize
};

/// Each class's first refill: [`REFILL_BYTES`] of slots, 1 to [`MAX_REFILL`].
const fn first_refills() -> [u8; CLASSES] {
    let mut refill = [0; CLASSES];
    let mut class = 0;
    while class < CLASSES {
        let slots = REFILL_BYTES / class_bytes(class);
        refill[class] = if slots > MAX_REFILL {
            MAX_REFILL as u8
        } else if slots < 1 {
            1
        } else {
            slots as u8
        };
        class += 1;
    }
    refill
}

/// Bytes of the slots of class `class` (0-based: `class + 1` chunks).
#[inline]
pub const fn class_bytes(class: usize) -> usize {
    (class + 1) << CHUNK_SHIFT
}

/// A lock around one CPU's magazines or around the shared allocator, of the caller's kind: the
/// manager uses its spin lock that masks interrupts, the model checks loom's mutex. An
/// implementation for `spin`'s mutex is provided.
///
/// The layer releases the locks it holds at once last-taken first: a guard of the manager's
/// locks restores the interrupt mask its `lock` saved, and only that order leaves the mask as it
/// was (released the other way, the first lock taken would unmask interrupts under the second,
/// and the second then mask them for good).
pub trait MagazineLock<T> {
    /// Held: the value, until dropped.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;
    /// A lock holding `value`.
    fn new(value: T) -> Self;
    /// Takes it, waiting as long as it takes.
    fn lock(&self) -> Self::Guard<'_>;
}

impl<T, R: spin::RelaxStrategy> MagazineLock<T> for spin::mutex::Mutex<T, R> {
    type Guard<'a>
        = spin::mutex::MutexGuard<'a, T, R>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        spin::mutex::Mutex::new(value)
    }

    fn lock(&self) -> Self::Guard<'_> {
        spin::mutex::Mutex::lock(self)
    }
}

/// Refills freed code with BRK, from any CPU and without the shared allocator's lock: the contract
/// of [`PackBackend::fill_brk`] (`[va, va + len)` is whole chunks of a slot the caller owns, in a
/// mapped pack; on error nothing was written, or what was is BRK). The manager's is the text-poke
/// BRK fill. Called with the freeing CPU's magazine lock held.
pub trait SlotFill {
    /// Fills `[va, va + len)` with BRK.
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError>;
}

impl<T: SlotFill + ?Sized> SlotFill for &T {
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError> {
        (**self).fill_brk(va, len)
    }
}

/// Why a layer could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MagazineError {
    /// The CPU count is 0 or over [`MAX_CPUS`].
    BadCpuCount {
        /// The count given.
        cpus: usize,
    },
    /// The shared allocator already has live slots, allocated without the layer's records.
    NotEmpty,
    /// The heap could not hold the CPUs' magazines.
    MetadataExhausted,
}

impl fmt::Display for MagazineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadCpuCount { cpus } => write!(f, "{cpus} CPUs: must be 1 to {MAX_CPUS}"),
            Self::NotEmpty => f.write_str("the slot allocator already has live slots"),
            Self::MetadataExhausted => f.write_str("heap exhausted: no room for the magazines"),
        }
    }
}

impl core::error::Error for MagazineError {}

/// The figures of the pool with the magazines counted: everything adds up.
///
/// - `shared.chunk_bytes_live == pool.chunk_bytes_live + resting_bytes`
/// - `shared.live_slots == pool.live_slots + resting_slots`
/// - `pool.bytes_live <= pool.chunk_bytes_live`, and
///   `pool.chunk_bytes_live + resting_bytes <= pool.bytes_reserved`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MagazineStats {
    /// The pool as its users see it: `bytes_live` is the sum of the sizes they asked for,
    /// `chunk_bytes_live` and `live_slots` leave out the slots resting in magazines (which count
    /// in `bytes_reserved` only), `allocations` and `frees` count their calls, not refills and
    /// flushes. Packs as the shared allocator reports them.
    pub pool: Stats,
    /// The shared allocator's own figures, in which resting slots are live at their class size.
    pub shared: Stats,
    /// Slots resting in magazines, on every CPU.
    pub resting_slots: u64,
    /// Their bytes (whole chunks).
    pub resting_bytes: u64,
    /// Refills of an empty magazine from the shared allocator.
    pub refills: u64,
    /// Flushes of a full magazine, or of a CPU over its budget, to the shared allocator.
    pub flushes: u64,
}

/// One CPU's magazines: per class, a stack of resting slots (chunk offsets from the pool base),
/// with the CPU's counters. Kept behind the CPU's [`MagazineLock`]; opaque to the caller.
///
/// `repr(C)` to keep the counters a fast path bumps apart: side by side, the compiler pairs
/// them into one vector add through the stack (a dozen instructions more per call).
#[repr(C)]
pub struct CpuMagazines {
    /// Slots in each class's stack.
    lens: [u8; CLASSES],
    /// Each stack's low-water mark since the last time this CPU went over its budget: that many
    /// of its slots rested all along, unused.
    low: [u8; CLASSES],
    /// Slots each class's next refill takes (1 to [`MAX_REFILL`]): halved when its slots went
    /// unused, doubled when it ran empty twice, at each pass over the budget.
    refill: [u8; CLASSES],
    /// Bytes of all slots resting here (at most [`RESTING_BUDGET`]).
    resting_bytes: u32,
    /// Users' allocations served on this CPU (bumped with `slack`).
    allocations: u64,
    refills: u64,
    /// Of the small slots handed out here less those freed here: chunk bytes minus the users'
    /// sizes (so the sum over CPUs is the rounding of the live small slots, whichever CPU frees).
    slack: i64,
    flushes: u64,
    /// Users' frees made on this CPU (bumped with `slack`).
    frees: u64,
    /// Classes refilled since the last pass over the budget, and those refilled twice or more.
    missed: u64,
    missed_twice: u64,
    /// The stacks.
    slots: [[u32; MAGAZINE_SLOTS]; CLASSES],
}

impl CpuMagazines {
    /// Empty magazines.
    pub const fn new() -> Self {
        Self {
            lens: [0; CLASSES],
            low: [0; CLASSES],
            refill: first_refills(),
            missed: 0,
            missed_twice: 0,
            resting_bytes: 0,
            slack: 0,
            allocations: 0,
            frees: 0,
            refills: 0,
            flushes: 0,
            slots: [[0; MAGAZINE_SLOTS]; CLASSES],
        }
    }

    /// Pops the top slot of `class`.
    #[inline]
    fn pop(&mut self, class: usize) -> Option<u32> {
        let class = class % CLASSES;
        let len = self.lens[class].checked_sub(1)?;
        self.lens[class] = len;
        self.low[class] = self.low[class].min(len);
        self.resting_bytes -= class_bytes(class) as u32;
        Some(self.slots[class][usize::from(len) % MAGAZINE_SLOTS])
    }

    /// The top slot of `class`, left in place.
    fn top(&self, class: usize) -> Option<u32> {
        let class = class % CLASSES;
        let len = self.lens[class].checked_sub(1)?;
        Some(self.slots[class][usize::from(len) % MAGAZINE_SLOTS])
    }

    /// Takes a slot of `class` whose chunk offset is a multiple of `align_chunks` (a power of
    /// two): the top one if it is, else the first that is, moving the top one into its place.
    fn take_aligned(&mut self, class: usize, align_chunks: u32) -> Option<u32> {
        let class = class % CLASSES;
        let len = usize::from(self.lens[class]);
        let stack = &mut self.slots[class][..len.min(MAGAZINE_SLOTS)];
        let at = stack.iter().rposition(|&chunk| chunk % align_chunks == 0)?;
        let last = stack.len() - 1;
        stack.swap(at, last);
        self.pop(class)
    }

    /// Whether a slot of `class` (of `bytes`) fits: in its stack and in the budget.
    #[inline]
    fn has_room(&self, class: usize, bytes: usize) -> bool {
        usize::from(self.lens[class % CLASSES]) < MAGAZINE_SLOTS
            && self.resting_bytes as usize + bytes <= RESTING_BUDGET
    }

    /// Pushes a slot of `class`; the caller checked [`CpuMagazines::has_room`] (a full stack
    /// keeps its slots and drops nothing: the push is then not made).
    #[inline]
    fn push(&mut self, class: usize, chunk: u32) {
        let class = class % CLASSES;
        let len = usize::from(self.lens[class]);
        if len < MAGAZINE_SLOTS {
            self.slots[class][len] = chunk;
            self.lens[class] = len as u8 + 1;
            self.resting_bytes += class_bytes(class) as u32;
        }
    }

    fn resting_slots(&self) -> u64 {
        self.lens.iter().map(|&len| u64::from(len)).sum()
    }
}

impl Default for CpuMagazines {
    fn default() -> Self {
        Self::new()
    }
}

/// Its own 64-byte cache lines: no CPU's hot state shares a line with another's, nor with the
/// shared allocator's lock.
#[repr(align(64))]
struct CacheLine<T>(T);

/// One pack's records: per chunk, the size the user asked for of the slot handed out that starts
/// there, or 0.
struct RecordTable {
    records: [AtomicU16; RECORD_CHUNKS],
    /// Under loom, written when the table is made and read on every use, so that loom checks
    /// that each use happens after the making (the publication's release and acquire): loom does
    /// not track the plain memory the table is made in.
    #[cfg(loom)]
    made: loom::cell::UnsafeCell<()>,
}

impl RecordTable {
    /// A table of zeros on the heap, or `None` if the heap is exhausted. Made in place: 64 KiB
    /// never pass through the stack.
    #[cfg(not(loom))]
    fn try_new() -> Option<Box<Self>> {
        let layout = core::alloc::Layout::new::<Self>();
        // SAFETY: the layout is not zero-sized (32768 records).
        let table = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<Self>();
        if table.is_null() {
            return None;
        }
        // SAFETY: allocated by the global allocator with the layout of `Self`, and zero bytes
        // are a valid `Self` (atomic integers holding 0).
        Some(unsafe { Box::from_raw(table) })
    }

    /// A table of zeros on the heap (loom's atomics are objects: made one by one).
    #[cfg(loom)]
    fn try_new() -> Option<Box<Self>> {
        let made = loom::cell::UnsafeCell::new(());
        made.with_mut(|_| ());
        Some(Box::new(Self {
            records: core::array::from_fn(|_| AtomicU16::new(0)),
            made,
        }))
    }

    #[inline]
    fn record(&self, chunk: u32) -> &AtomicU16 {
        #[cfg(loom)]
        self.made.with(|_| ());
        &self.records[chunk as usize % RECORD_CHUNKS]
    }
}

/// The magazine layer: per-CPU magazines of small slots over a shared [`PackAllocator`]. See
/// the module documentation for the design.
///
/// - `B`: the shared allocator's backend;
/// - `S`: the lock around the shared allocator;
/// - `L`: the lock around each CPU's [`CpuMagazines`];
/// - `F`: the BRK fill used on free.
///
/// Every method is `&self` and may be called from any CPU at once; `cpu` is the caller's CPU
/// index (below the count given to [`Magazines::new`]), whose magazines it uses. The fast path
/// is correct whatever the caller does (the CPU's state is locked), and uncontended if each CPU
/// passes its own index and no other CPU drains at the same time; the caller masks interrupts
/// (or uses a lock that does) if an interrupt handler on the same CPU may allocate or free.
pub struct Magazines<B, S, L, F> {
    base: u64,
    pool_size: u64,
    cpus: Box<[CacheLine<L>]>,
    /// Per pack position, its records (null: no slot of it was ever taken for the layer).
    /// Written under the shared lock, with release; read with acquire, locked or not.
    records: [AtomicPtr<RecordTable>; MAX_PACKS],
    /// A table ready for the next pack that needs one (only touched under the shared lock).
    spare: AtomicPtr<RecordTable>,
    fill: F,
    shared: CacheLine<S>,
    _backend: PhantomData<fn() -> B>,
}

impl<B, S, L, F> Magazines<B, S, L, F>
where
    B: PackBackend,
    S: MagazineLock<PackAllocator<B>>,
    L: MagazineLock<CpuMagazines>,
    F: SlotFill,
{
    /// The layer over `allocator` (which must have no live slot: the layer records every slot it
    /// hands out), for `cpus` CPUs, filling freed slots with `fill`.
    pub fn new(allocator: PackAllocator<B>, fill: F, cpus: usize) -> Result<Self, MagazineError> {
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(MagazineError::BadCpuCount { cpus });
        }
        if allocator.stats().live_slots != 0 {
            return Err(MagazineError::NotEmpty);
        }
        let mut caches = Vec::new();
        caches
            .try_reserve_exact(cpus)
            .map_err(|_| MagazineError::MetadataExhausted)?;
        for _ in 0..cpus {
            caches.push(CacheLine(L::new(CpuMagazines::new())));
        }
        Ok(Self {
            base: allocator.base(),
            pool_size: allocator.pool_size() as u64,
            cpus: caches.into_boxed_slice(),
            records: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            spare: AtomicPtr::new(ptr::null_mut()),
            fill,
            shared: CacheLine(S::new(allocator)),
            _backend: PhantomData,
        })
    }

    /// CPUs served.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    /// The fill used on free.
    pub fn fill(&self) -> &F {
        &self.fill
    }

    /// The shared allocator, locked: for what the layer does not wrap (the pack map, the mapped
    /// packs, the backend). Slots allocated or freed through it directly bypass the layer's
    /// records: every slot must go through the layer.
    pub fn shared(&self) -> S::Guard<'_> {
        self.shared.0.lock()
    }

    /// A slot of `size` bytes, 64-byte aligned, BRK-filled.
    #[inline]
    pub fn alloc(&self, cpu: usize, size: usize) -> Result<Slot, AllocError> {
        self.allocate(cpu, size, CHUNK_SIZE)
            .map(|addr| Slot::from_raw(addr, size))
    }

    /// A slot of `size` bytes aligned to `align` (a power of two up to [`MAX_ALIGN`]).
    #[inline]
    pub fn alloc_aligned(&self, cpu: usize, size: usize, align: usize) -> Result<Slot, AllocError> {
        self.allocate(cpu, size, align)
            .map(|addr| Slot::from_raw(addr, size))
    }

    /// [`Magazines::alloc`] for callers that keep the address and size themselves.
    #[inline]
    pub fn alloc_raw(&self, cpu: usize, size: usize) -> Result<u64, AllocError> {
        self.allocate(cpu, size, CHUNK_SIZE)
    }

    /// Frees a slot.
    #[inline]
    pub fn free(&self, cpu: usize, slot: Slot) -> Result<(), AllocError> {
        let (addr, size) = slot.into_raw();
        self.free_raw(cpu, addr, size)
    }

    /// Frees the slot at `addr`, which must have been allocated with exactly `size` bytes: a
    /// wrong size, an address that is not a live slot's start, a slot already freed (resting in a
    /// magazine or not) are refused with the error the shared allocator would give, and change
    /// nothing. On [`AllocError::RefillFailed`] the slot stays allocated.
    #[inline]
    pub fn free_raw(&self, cpu: usize, addr: u64, size: usize) -> Result<(), AllocError> {
        let offset = addr.wrapping_sub(self.base);
        let class = size.wrapping_sub(1) >> CHUNK_SHIFT;
        if offset < self.pool_size && offset.is_multiple_of(CHUNK_SIZE as u64) && class < CLASSES {
            let chunk = (offset >> CHUNK_SHIFT) as u32;
            if let Some(record) = self.record(chunk) {
                match record.compare_exchange(size as u16, 0, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => {
                        return self.finish_free(self.cpu(cpu).lock(), chunk, class, size, record);
                    }
                    Err(0) => {}
                    Err(recorded) => {
                        return Err(AllocError::WrongSize {
                            addr,
                            recorded: recorded.into(),
                            given: size,
                        });
                    }
                }
            }
        }
        self.free_slow(cpu, addr, size)
    }

    /// The live slot that covers `addr`, if any: its start and the size its user asked for. A
    /// slot resting in a magazine is not live. Takes the shared lock.
    pub fn slot_at(&self, addr: u64) -> Option<SlotInfo> {
        let pool = self.shared.0.lock();
        let slot = pool.slot_at(addr)?;
        if slot.size > SMALL_SLOT_MAX {
            return Some(slot);
        }
        let size = self
            .record(self.chunk_of(slot.addr))?
            .load(Ordering::Relaxed);
        drop(pool);
        (size != 0).then_some(SlotInfo {
            addr: slot.addr,
            size: size.into(),
        })
    }

    /// Returns every CPU's resting slots to the shared allocator (each CPU's magazines under its
    /// lock, one CPU at a time). Returns how many went back; a slot the shared allocator refuses
    /// (its BRK refill failed) stays where it was.
    pub fn drain(&self) -> usize {
        let mut returned = 0;
        for cpu in self.cpus.iter() {
            let mut cache = cpu.0.lock();
            if cache.resting_bytes == 0 {
                continue;
            }
            let before = cache.resting_slots();
            let mut pool = self.shared.0.lock();
            for class in 0..CLASSES {
                if self.flush(&mut cache, &mut pool, class, 0).is_err() {
                    break;
                }
            }
            returned += (before - cache.resting_slots()) as usize;
        }
        returned
    }

    /// Drains every magazine ([`Magazines::drain`]), drops the spare record table and releases
    /// the shared allocator's cached empty pack ([`PackAllocator::trim`]). Returns whether a pack
    /// was released.
    pub fn trim(&self) -> bool {
        self.drain();
        let mut pool = self.shared.0.lock();
        let spare = self.spare.swap(ptr::null_mut(), Ordering::Relaxed);
        if !spare.is_null() {
            // SAFETY: a non-null spare comes from `Box::into_raw` in `take_from_pool`; it was
            // swapped out here under the shared lock, which every access to the spare holds, so
            // nothing else owns or reads it.
            drop(unsafe { Box::from_raw(spare) });
        }
        pool.trim()
    }

    /// The figures with the magazines counted (see [`MagazineStats`]). Takes every CPU's lock
    /// (in index order) and the shared lock, for one consistent snapshot.
    pub fn stats(&self) -> MagazineStats {
        let caches: ArrayVec<L::Guard<'_>, MAX_CPUS> = self
            .cpus
            .iter()
            .take(MAX_CPUS)
            .map(|cpu| cpu.0.lock())
            .collect();
        let shared = self.shared.0.lock().stats();
        let mut stats = MagazineStats {
            shared,
            ..MagazineStats::default()
        };
        let (mut allocations, mut frees, mut slack) = (0u64, 0u64, 0i64);
        for cache in &caches {
            stats.resting_slots += cache.resting_slots();
            stats.resting_bytes += u64::from(cache.resting_bytes);
            stats.refills += cache.refills;
            stats.flushes += cache.flushes;
            allocations += cache.allocations;
            frees += cache.frees;
            slack += cache.slack;
        }
        release_in_reverse(caches);
        stats.pool = Stats {
            bytes_live: shared
                .bytes_live
                .saturating_sub(stats.resting_bytes)
                .saturating_sub(slack.max(0) as u64),
            chunk_bytes_live: shared.chunk_bytes_live.saturating_sub(stats.resting_bytes),
            live_slots: allocations.saturating_sub(frees),
            allocations,
            frees,
            ..shared
        };
        stats
    }

    // ---- allocation ----

    #[inline]
    fn allocate(&self, cpu: usize, size: usize, align: usize) -> Result<u64, AllocError> {
        let class = size.wrapping_sub(1) >> CHUNK_SHIFT;
        if class < CLASSES && align <= CHUNK_SIZE && align.is_power_of_two() {
            let mut cache = self.cpu(cpu).lock();
            if let Some(chunk) = cache.pop(class) {
                if let Some(record) = self.record(chunk) {
                    record.store(size as u16, Ordering::Relaxed);
                    cache.slack += (class_bytes(class) - size) as i64;
                    cache.allocations += 1;
                    return Ok(self.chunk_va(chunk));
                }
                // Every resting slot's pack has records (made before its slot was taken); if
                // that were broken, the slot stays resting and the slow path serves the call.
                cache.push(class, chunk);
            }
            drop(cache);
        }
        self.allocate_slow(cpu, size, align)
    }

    /// An empty magazine, a large or aligned request, or a bad one: checked as the shared
    /// allocator checks, then served from the shared allocator, draining every magazine and
    /// retrying once if it is out of memory.
    #[cold]
    #[inline(never)]
    fn allocate_slow(&self, cpu: usize, size: usize, align: usize) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(AllocError::BadAlignment { align });
        }
        match self.allocate_locked(cpu, size, align, true) {
            Err(
                AllocError::PoolExhausted { .. }
                | AllocError::MapFailed(_)
                | AllocError::MetadataExhausted,
            ) => {
                self.drain();
                self.allocate_locked(cpu, size, align, false)
            }
            result => result,
        }
    }

    /// Serves a request under the CPU's lock and the shared lock: a large one directly; a small
    /// one from the magazine (a slot with the alignment), else by a refill (`batch`: up to
    /// [`REFILL_BYTES`] of slots, the rest resting) or one slot from the shared allocator.
    fn allocate_locked(
        &self,
        cpu: usize,
        size: usize,
        align: usize,
        batch: bool,
    ) -> Result<u64, AllocError> {
        let mut cache = self.cpu(cpu).lock();
        let mut pool = self.shared.0.lock();
        let class = size.wrapping_sub(1) >> CHUNK_SHIFT;
        if class >= CLASSES {
            let (addr, _) = pool.alloc_aligned(size, align)?.into_raw();
            cache.allocations += 1;
            return Ok(addr);
        }
        let align_chunks = (align >> CHUNK_SHIFT).max(1) as u32;
        let chunk = match cache.take_aligned(class, align_chunks) {
            Some(chunk) => Ok(chunk),
            None if batch && align <= CHUNK_SIZE => self.refill(&mut cache, &mut pool, class),
            None => self.take_from_pool(&mut pool, class_bytes(class), align),
        }
        .map_err(|error| for_request(error, size))?;
        let Some(record) = self.record(chunk) else {
            // Not reached: `take_from_pool` makes the records first.
            cache.push(class, chunk);
            return Err(AllocError::MetadataExhausted);
        };
        record.store(size as u16, Ordering::Relaxed);
        cache.slack += (class_bytes(class) - size) as i64;
        cache.allocations += 1;
        Ok(self.chunk_va(chunk))
    }

    /// Takes a slot of `class` for the caller and as many more for the magazine as the class's
    /// refill count says (less one), within its room and the budget; fails only if the first
    /// cannot be had.
    fn refill(
        &self,
        cache: &mut CpuMagazines,
        pool: &mut PackAllocator<B>,
        class: usize,
    ) -> Result<u32, AllocError> {
        let bytes = class_bytes(class);
        let first = self.take_from_pool(pool, bytes, CHUNK_SIZE)?;
        cache.refills += 1;
        let bit = 1 << (class % CLASSES);
        cache.missed_twice |= cache.missed & bit;
        cache.missed |= bit;
        for _ in 1..cache.refill[class % CLASSES] {
            if !cache.has_room(class, bytes) {
                break;
            }
            match self.take_from_pool(pool, bytes, CHUNK_SIZE) {
                Ok(chunk) => cache.push(class, chunk),
                Err(_) => break,
            }
        }
        Ok(first)
    }

    /// A slot of `bytes` (a class size) from the shared allocator, as a chunk offset, with its
    /// pack's records made. The records' table is allocated before the slot is taken (as the
    /// spare), so once the slot is taken nothing can fail.
    fn take_from_pool(
        &self,
        pool: &mut PackAllocator<B>,
        bytes: usize,
        align: usize,
    ) -> Result<u32, AllocError> {
        // The shared lock is held (`pool`): the spare and the tables are made by one CPU at a
        // time, so a null spare stays null until this stores one.
        if self.spare.load(Ordering::Relaxed).is_null() {
            let table = RecordTable::try_new().ok_or(AllocError::MetadataExhausted)?;
            self.spare.store(Box::into_raw(table), Ordering::Relaxed);
        }
        let (addr, _) = pool.alloc_aligned(bytes, align)?.into_raw();
        let chunk = self.chunk_of(addr);
        let table = &self.records[(chunk >> PACK_CHUNK_SHIFT) as usize % MAX_PACKS];
        if table.load(Ordering::Relaxed).is_null() {
            let spare = self.spare.swap(ptr::null_mut(), Ordering::Relaxed);
            // Release: a CPU that finds the pointer (acquire) finds the zeros it was made with.
            table.store(spare, Ordering::Release);
        }
        Ok(chunk)
    }

    // ---- free ----

    /// The end of a free whose record was claimed (set to 0), with the CPU's magazines held:
    /// the BRK fill and the push, or, if there is no room, [`Magazines::free_into_full`]. On
    /// error the record is restored: the slot is still the user's. The guard is passed on, so
    /// that the cold path is a tail call and the fast one saves no registers.
    #[inline]
    fn finish_free(
        &self,
        mut cache: L::Guard<'_>,
        chunk: u32,
        class: usize,
        size: usize,
        record: &AtomicU16,
    ) -> Result<(), AllocError> {
        if !cache.has_room(class, class_bytes(class)) {
            return self.free_into_full(cache, chunk, class, size, record);
        }
        self.fill_and_push(&mut cache, chunk, class, size, record)
    }

    /// [`Magazines::finish_free`] into a full magazine or a full budget: room first (the shared
    /// lock), then the fill and the push.
    #[cold]
    #[inline(never)]
    fn free_into_full(
        &self,
        mut cache: L::Guard<'_>,
        chunk: u32,
        class: usize,
        size: usize,
        record: &AtomicU16,
    ) -> Result<(), AllocError> {
        if let Err(error) = self.make_room(&mut cache, class) {
            record.store(size as u16, Ordering::Relaxed);
            return Err(error);
        }
        self.fill_and_push(&mut cache, chunk, class, size, record)
    }

    /// The slot's BRK fill and its push onto its class's stack, which has room; on a failed fill
    /// the record is restored (the slot is still the user's) and nothing else changes.
    #[inline(always)]
    fn fill_and_push(
        &self,
        cache: &mut CpuMagazines,
        chunk: u32,
        class: usize,
        size: usize,
        record: &AtomicU16,
    ) -> Result<(), AllocError> {
        let bytes = class_bytes(class);
        if let Err(why) = self.fill.fill_brk(self.chunk_va(chunk), bytes) {
            record.store(size as u16, Ordering::Relaxed);
            return Err(AllocError::RefillFailed(why));
        }
        cache.push(class, chunk);
        cache.slack -= (bytes - size) as i64;
        cache.frees += 1;
        Ok(())
    }

    /// Makes room for a slot of `class`: a full stack is flushed to half. A CPU whose budget the
    /// slot would pass first collects (jemalloc's thread-cache GC): each class flushes three
    /// quarters of the slots it left unused since the last collection (its low-water mark) and
    /// halves its refill count, or doubles it if it ran empty twice meanwhile (demand, not an
    /// eviction: a refill's extra slots that only fill the budget would be flushed unused, two
    /// shared calls for nothing). Classes in use keep
    /// their slots whatever their size, and batches shrink where they only fill the budget. If
    /// that is not enough, the largest classes (a slot of them ties up the most memory) flush to
    /// half, then to nothing, until the slot fits in three quarters of the budget, so that the
    /// next frees do not flush again at once.
    #[cold]
    #[inline(never)]
    fn make_room(&self, cache: &mut CpuMagazines, class: usize) -> Result<(), AllocError> {
        let mut pool = self.shared.0.lock();
        cache.flushes += 1;
        if usize::from(cache.lens[class % CLASSES]) >= MAGAZINE_SLOTS {
            self.flush(cache, &mut pool, class, MAGAZINE_SLOTS / 2)?;
        }
        let bytes = class_bytes(class);
        if cache.resting_bytes as usize + bytes <= RESTING_BUDGET {
            return Ok(());
        }
        for other in 0..CLASSES {
            let (len, unused, refill) = (cache.lens[other], cache.low[other], cache.refill[other]);
            if unused > 0 {
                self.flush(
                    cache,
                    &mut pool,
                    other,
                    (len - (unused - unused / 4)).into(),
                )?;
                cache.refill[other] = (refill / 2).max(1);
            } else if cache.missed_twice & (1 << other) != 0 {
                cache.refill[other] = (refill * 2).min(MAX_REFILL as u8);
            }
            cache.low[other] = cache.lens[other];
        }
        cache.missed = 0;
        cache.missed_twice = 0;
        for halve in [true, false] {
            for other in (0..CLASSES).rev() {
                if cache.resting_bytes as usize + bytes <= RESTING_AFTER_FLUSH {
                    return Ok(());
                }
                let keep = if halve {
                    usize::from(cache.lens[other]) / 2
                } else {
                    0
                };
                self.flush(cache, &mut pool, other, keep)?;
                cache.low[other] = cache.lens[other];
            }
        }
        Ok(())
    }

    /// Returns slots of `class` to the shared allocator from the top of the stack until `keep`
    /// are left. A refused return (the refill failed) stops it, the slot still resting.
    fn flush(
        &self,
        cache: &mut CpuMagazines,
        pool: &mut PackAllocator<B>,
        class: usize,
        keep: usize,
    ) -> Result<(), AllocError> {
        while usize::from(cache.lens[class % CLASSES]) > keep {
            let Some(chunk) = cache.top(class) else {
                break;
            };
            pool.free_raw(self.chunk_va(chunk), class_bytes(class))?;
            cache.pop(class);
        }
        Ok(())
    }

    /// Everything the fast path does not settle: addresses outside the pool or misaligned,
    /// sizes over 4 KiB, and addresses where no handed-out slot starts (or the fast path lost a
    /// race with one being handed out). Words the error as the shared allocator would for the
    /// users' slots (a resting slot is free), or frees a large slot through it.
    #[cold]
    #[inline(never)]
    fn free_slow(&self, cpu: usize, addr: u64, size: usize) -> Result<(), AllocError> {
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.pool_size {
            return Err(AllocError::OutsidePool { addr });
        }
        if !offset.is_multiple_of(CHUNK_SIZE as u64) {
            return Err(AllocError::Misaligned { addr });
        }
        let mut cache = self.cpu(cpu).lock();
        let mut pool = self.shared.0.lock();
        let Some(slot) = pool.slot_at(addr) else {
            return Err(AllocError::DoubleFree { addr });
        };
        if slot.size > SMALL_SLOT_MAX {
            if slot.addr != addr {
                return Err(AllocError::InteriorPointer {
                    addr,
                    slot: slot.addr,
                });
            }
            pool.free_raw(addr, size)?;
            cache.frees += 1;
            return Ok(());
        }
        let start = self.chunk_of(slot.addr);
        let Some(record) = self.record(start) else {
            return Err(AllocError::DoubleFree { addr });
        };
        let recorded = record.load(Ordering::Relaxed);
        if recorded == 0 {
            // Resting in a magazine (or on its way into one): free, as far as users can tell.
            return Err(AllocError::DoubleFree { addr });
        }
        if slot.addr != addr {
            return Err(AllocError::InteriorPointer {
                addr,
                slot: slot.addr,
            });
        }
        if size != usize::from(recorded) {
            return Err(AllocError::WrongSize {
                addr,
                recorded: recorded.into(),
                given: size,
            });
        }
        match record.compare_exchange(recorded, 0, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                drop(pool);
                let class = size.wrapping_sub(1) >> CHUNK_SHIFT;
                self.finish_free(cache, start, class, size, record)
            }
            Err(0) => Err(AllocError::DoubleFree { addr }),
            Err(recorded) => Err(AllocError::WrongSize {
                addr,
                recorded: recorded.into(),
                given: size,
            }),
        }
    }

    // ---- helpers ----

    /// This CPU's magazines' lock (an index past the count uses the last CPU's).
    #[inline]
    fn cpu(&self, cpu: usize) -> &L {
        match self.cpus.get(cpu) {
            Some(line) => &line.0,
            None => self.last_cpu(),
        }
    }

    #[cold]
    fn last_cpu(&self) -> &L {
        // `new` makes at least one.
        &self.cpus[self.cpus.len() - 1].0
    }

    /// The record of the slot starting at chunk offset `chunk`, if its pack has records.
    #[inline]
    fn record(&self, chunk: u32) -> Option<&AtomicU16> {
        let table =
            self.records[(chunk >> PACK_CHUNK_SHIFT) as usize % MAX_PACKS].load(Ordering::Acquire);
        if table.is_null() {
            return None;
        }
        // SAFETY: a non-null table pointer comes from `Box::into_raw` of a table made in full
        // before it was stored with release (this load is acquire); tables are freed only in
        // `drop`, which has `&mut self`, so none is freed while this `&self` borrow lives.
        let table = unsafe { &*table };
        Some(table.record(chunk))
    }

    #[inline]
    fn chunk_va(&self, chunk: u32) -> u64 {
        self.base + (u64::from(chunk) << CHUNK_SHIFT)
    }

    /// Chunk offset of `addr`, a slot start in the pool.
    fn chunk_of(&self, addr: u64) -> u32 {
        ((addr - self.base) >> CHUNK_SHIFT) as u32
    }

    /// Every slot resting in a magazine: its CPU, class and address (for the tests).
    #[cfg(test)]
    pub(crate) fn resting(&self) -> Vec<(usize, usize, u64)> {
        let mut out = Vec::new();
        for (cpu, lock) in self.cpus.iter().enumerate() {
            let cache = lock.0.lock();
            for class in 0..CLASSES {
                let len = usize::from(cache.lens[class]);
                for &chunk in &cache.slots[class][..len] {
                    out.push((cpu, class, self.chunk_va(chunk)));
                }
            }
        }
        out
    }

    /// Checks the layer's invariants and the shared allocator's, panicking with the first one
    /// violated: every resting slot is a live slot of its class in the shared allocator, in one
    /// magazine only, with its pack's records and no user size; each CPU's resting bytes are its
    /// slots' and within the budget; the users' live slots are the shared allocator's less the
    /// resting ones; every record names a live slot of its size's class. For tests (the host
    /// tests run it every few steps; a kernel's with the `check-invariants` feature).
    #[cfg(any(test, feature = "check-invariants"))]
    pub fn check_invariants(&self) {
        use alloc::collections::BTreeSet;

        let caches: ArrayVec<L::Guard<'_>, MAX_CPUS> = self
            .cpus
            .iter()
            .take(MAX_CPUS)
            .map(|cpu| cpu.0.lock())
            .collect();
        let pool = self.shared.0.lock();
        pool.check_invariants();
        let mut resting = BTreeSet::new();
        let (mut allocations, mut frees, mut resting_slots) = (0u64, 0u64, 0u64);
        for (cpu, cache) in caches.iter().enumerate() {
            let mut bytes = 0;
            for class in 0..CLASSES {
                let len = usize::from(cache.lens[class]);
                assert!(
                    len <= MAGAZINE_SLOTS,
                    "CPU {cpu} class {class}: {len} slots"
                );
                for &chunk in &cache.slots[class][..len] {
                    let addr = self.chunk_va(chunk);
                    assert!(resting.insert(addr), "slot {addr:#x} rests twice");
                    let size = class_bytes(class);
                    assert_eq!(
                        pool.slot_at(addr),
                        Some(SlotInfo { addr, size }),
                        "resting slot {addr:#x} (CPU {cpu}) is not a shared slot of its class"
                    );
                    let record = self.record(chunk);
                    assert!(
                        record.is_some(),
                        "resting slot {addr:#x}: pack has no records"
                    );
                    assert_eq!(
                        record.map(|r| r.load(Ordering::Relaxed)),
                        Some(0),
                        "resting slot {addr:#x} has a user size"
                    );
                }
                bytes += len * class_bytes(class);
                resting_slots += len as u64;
            }
            assert_eq!(
                cache.resting_bytes as usize, bytes,
                "CPU {cpu}: resting bytes"
            );
            assert!(bytes <= RESTING_BUDGET, "CPU {cpu}: {bytes} bytes resting");
            allocations += cache.allocations;
            frees += cache.frees;
        }
        let shared = pool.stats();
        assert_eq!(
            allocations - frees,
            shared.live_slots - resting_slots,
            "live slots: the users' against the shared allocator's less the resting ones"
        );
        for (pack, table) in self.records.iter().enumerate() {
            let table = table.load(Ordering::Acquire);
            if table.is_null() {
                continue;
            }
            // SAFETY: as in `record`: made in full, published with release, freed only in drop.
            let table = unsafe { &*table };
            for (index, record) in table.records.iter().enumerate() {
                let size = usize::from(record.load(Ordering::Relaxed));
                if size == 0 {
                    continue;
                }
                // A table's records are its pack's last `RECORD_CHUNKS` chunks (all of them
                // but under loom).
                let chunk = (((pack + 1) << PACK_CHUNK_SHIFT) - RECORD_CHUNKS + index) as u64;
                let addr = self.base + (chunk << CHUNK_SHIFT);
                let class = (size - 1) >> CHUNK_SHIFT;
                assert!(class < CLASSES, "record at {addr:#x}: {size} bytes");
                assert_eq!(
                    pool.slot_at(addr),
                    Some(SlotInfo {
                        addr,
                        size: class_bytes(class)
                    }),
                    "record at {addr:#x} ({size} bytes) names no slot of its class"
                );
                assert!(
                    !resting.contains(&addr),
                    "slot {addr:#x} handed out and resting"
                );
            }
        }
        drop(pool);
        release_in_reverse(caches);
    }
}

/// Drops the CPU locks' guards taken in index order, last-taken first (see [`MagazineLock`]).
fn release_in_reverse<G>(mut guards: ArrayVec<G, MAX_CPUS>) {
    while let Some(guard) = guards.pop() {
        drop(guard);
    }
}

impl<B, S, L, F> Drop for Magazines<B, S, L, F> {
    fn drop(&mut self) {
        for table in self.records.iter().chain(core::iter::once(&self.spare)) {
            let table = table.swap(ptr::null_mut(), Ordering::Acquire);
            if !table.is_null() {
                // SAFETY: from `Box::into_raw` of a table; swapped out, so freed once, and
                // `&mut self` means no reference into it is alive.
                drop(unsafe { Box::from_raw(table) });
            }
        }
    }
}

/// The shared allocator's error for a request it saw at its class size, worded for the user's.
fn for_request(error: AllocError, size: usize) -> AllocError {
    match error {
        AllocError::PoolExhausted { .. } => AllocError::PoolExhausted { size },
        other => other,
    }
}
