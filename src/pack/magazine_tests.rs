//! Tests of the magazine layer: unit tests of its rules, and property tests against a model.
//!
//! The property tests run random allocations, frees, bad calls, slot lookups, drains, trims,
//! frame limits and BRK-fill failures from several simulated CPUs (sequentially interleaved,
//! with one index past the CPU count, which must use the last CPU's magazines) over
//! `PackAllocator<SimBackend>`, and check after every step against a model (a map of the users'
//! live slots):
//! - slots are aligned, inside mapped packs, and overlap no live slot and no resting one;
//! - every free of a small slot BRK-fills exactly that slot's chunks, through the layer's fill,
//!   before it can be handed out again (the fill log), and nothing else is filled through it;
//! - the figures add up with the magazines counted: users' bytes and slots, resting bytes and
//!   slots against the shared allocator's, the budget; packs mapped are those with live or
//!   resting slots plus at most one cached empty one;
//! - every bad call is refused with the error the model expects and changes nothing (the shared
//!   allocator's full snapshot, the magazines, the figures, no fill); a free whose fill fails is
//!   refused and the slot is still its user's; a refused allocation drained every magazine;
//! - `slot_at` of any address gives the model's live slot covering it, with the user's size;
//! - the layer's invariants and the shared allocator's (`check_invariants`) hold, every 64 steps
//!   and at the end, where everything is freed and trimmed and no pack stays mapped.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::mem::ManuallyDrop;
use core::ops::Deref;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::super::tests::{Snapshot, snapshot};
use super::*;
use crate::pack::{PACK_SIZE, SimBackend};

const BASE: u64 = 0xffff_8000_c000_0000;
const PACK: u64 = PACK_SIZE as u64;

/// The layer's fill: records what it filled; fails while `fail` is set.
#[derive(Default)]
struct LogFill {
    log: RefCell<Vec<(u64, usize)>>,
    fail: Cell<bool>,
}

impl SlotFill for LogFill {
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError> {
        if self.fail.get() {
            return Err(BackendError::Refill);
        }
        self.log.borrow_mut().push((va, len));
        Ok(())
    }
}

impl LogFill {
    fn take(&self) -> Vec<(u64, usize)> {
        core::mem::take(&mut *self.log.borrow_mut())
    }
}

/// A lock that counts how often it is taken (to show what the fast path does not take).
struct Counted<T> {
    inner: spin::Mutex<T>,
    takes: Cell<u64>,
}

impl<T> MagazineLock<T> for Counted<T> {
    type Guard<'a>
        = spin::MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            takes: Cell::new(0),
        }
    }

    fn lock(&self) -> Self::Guard<'_> {
        self.takes.set(self.takes.get() + 1);
        self.inner.lock()
    }
}

std::thread_local! {
    /// The [`Nested`] locks this thread holds, in the order taken.
    static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// A lock that checks it is released as the manager's interrupt-masking locks must be: the last
/// one taken first (each of their guards restores the interrupt mask its `lock` saved).
struct Nested<T> {
    inner: spin::Mutex<T>,
}

struct NestedGuard<'a, T> {
    guard: ManuallyDrop<spin::MutexGuard<'a, T>>,
    id: usize,
}

impl<T> MagazineLock<T> for Nested<T> {
    type Guard<'a>
        = NestedGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    fn lock(&self) -> Self::Guard<'_> {
        let guard = ManuallyDrop::new(self.inner.lock());
        let id = ptr::from_ref(self) as usize;
        HELD.with(|held| held.borrow_mut().push(id));
        NestedGuard { guard, id }
    }
}

impl<T> Deref for NestedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for NestedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for NestedGuard<'_, T> {
    fn drop(&mut self) {
        let last = HELD.with(|held| held.borrow_mut().pop());
        assert_eq!(
            last,
            Some(self.id),
            "a lock released before one taken after it"
        );
        // SAFETY: dropped once, here.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
    }
}

#[test]
fn locks_are_released_last_taken_first() {
    let layer = layer(4, 3);
    for cpu in 0..3 {
        let slot = layer.alloc(cpu, 64).expect("alloc");
        layer.free(cpu, slot).expect("free");
    }
    let _ = layer.stats();
    layer.check_invariants();
    assert!(layer.drain() >= 3);
    let _ = layer.trim();
    assert!(HELD.with(|held| held.borrow().is_empty()));
}

type Shared = Nested<PackAllocator<SimBackend>>;
type Cpu = Nested<CpuMagazines>;
type Layer = Magazines<SimBackend, Shared, Cpu, LogFill>;
type CountedLayer = Magazines<SimBackend, Counted<PackAllocator<SimBackend>>, Cpu, LogFill>;

fn layer(n_packs: usize, cpus: usize) -> Layer {
    let pool = PackAllocator::new(SimBackend::new(), BASE, n_packs).expect("valid pool");
    Magazines::new(pool, LogFill::default(), cpus).expect("valid layer")
}

fn counted_layer(n_packs: usize, cpus: usize) -> CountedLayer {
    let pool = PackAllocator::new(SimBackend::new(), BASE, n_packs).expect("valid pool");
    Magazines::new(pool, LogFill::default(), cpus).expect("valid layer")
}

fn shared_takes(layer: &CountedLayer) -> u64 {
    layer.shared.0.takes.get()
}

// ---- unit tests ----

#[test]
fn setup_is_checked() {
    let pool = || PackAllocator::new(SimBackend::new(), BASE, 2).expect("valid pool");
    let new = |pool, cpus| Layer::new(pool, LogFill::default(), cpus).map(drop);
    assert_eq!(new(pool(), 0), Err(MagazineError::BadCpuCount { cpus: 0 }));
    assert_eq!(
        new(pool(), MAX_CPUS + 1),
        Err(MagazineError::BadCpuCount { cpus: 65 })
    );
    let mut used = pool();
    let _slot = used.alloc(64).expect("room");
    assert_eq!(new(used, 1), Err(MagazineError::NotEmpty));
    assert!(new(pool(), MAX_CPUS).is_ok());
    assert!(!MagazineError::NotEmpty.to_string().is_empty());
}

/// Sizes of every kind of pair the benchmark measures, and a few more: their refills fit in the
/// budget together.
const PAIR_SIZES: [usize; 9] = [1, 64, 100, 256, 300, 512, 1000, 2048, 4096];

#[test]
fn the_fast_path_reuses_a_slot_on_its_cpu_without_the_shared_lock() {
    let layer = counted_layer(2, 2);
    // Each first allocation refills from the shared allocator.
    for &size in &PAIR_SIZES {
        let slot = layer.alloc(0, size).expect("room");
        layer.free(0, slot).expect("live");
    }
    let before = layer.stats();
    let takes = shared_takes(&layer);
    for _ in 0..1000 {
        for &size in &PAIR_SIZES {
            let slot = layer.alloc(0, size).expect("room");
            layer.free(0, slot).expect("live");
        }
    }
    assert_eq!(
        shared_takes(&layer),
        takes,
        "a fast path took the shared lock"
    );
    let after = layer.stats();
    assert_eq!(after.shared.allocations, before.shared.allocations);
    assert_eq!(after.pool.allocations - before.pool.allocations, 9000);
    assert_eq!(
        (after.refills, after.flushes),
        (before.refills, before.flushes)
    );
    // The same on the other CPU, interleaved with the first.
    for &size in &PAIR_SIZES {
        let slot = layer.alloc(1, size).expect("room");
        layer.free(1, slot).expect("live");
    }
    let takes = shared_takes(&layer);
    for _ in 0..100 {
        for &size in &PAIR_SIZES {
            for cpu in [0, 1] {
                let slot = layer.alloc(cpu, size).expect("room");
                layer.free(cpu, slot).expect("live");
            }
        }
    }
    assert_eq!(shared_takes(&layer), takes);
    layer.check_invariants();
}

#[test]
fn a_class_in_use_keeps_its_slots_while_the_budget_is_collected() {
    let layer = layer(8, 1);
    let slot = layer.alloc(0, 100).expect("room");
    layer.free(0, slot).expect("live");
    let big: Vec<Slot> = (0..64)
        .map(|_| layer.alloc_aligned(0, 4096, 4096).expect("room"))
        .collect();
    let before = layer.stats();
    // Frees of 4 KiB slots pass the budget again and again; the 100-byte pair in between keeps
    // being served from its magazine.
    for slot in big {
        layer.free(0, slot).expect("live");
        let slot = layer.alloc(0, 100).expect("room");
        layer.free(0, slot).expect("live");
        assert!(layer.stats().resting_bytes <= RESTING_BUDGET as u64);
    }
    let after = layer.stats();
    assert!(after.flushes > before.flushes);
    assert_eq!(
        after.refills, before.refills,
        "the class in use was flushed"
    );
    layer.check_invariants();
}

#[test]
fn a_cpu_cycling_through_every_class_costs_what_the_shared_allocator_alone_does() {
    // One slot of each class is twice the budget: nothing is reused (a cycle longer than what
    // the cache holds is the worst case of any recency rule), and the refills' extra slots stop.
    let layer = layer(8, 1);
    let sizes: Vec<usize> = (1..=CLASSES).map(|c| c * CHUNK_SIZE - 7).collect();
    for &size in &sizes {
        let slot = layer.alloc(0, size).expect("room");
        layer.free(0, slot).expect("live");
    }
    let before = layer.stats();
    for _ in 0..20 {
        for &size in &sizes {
            let slot = layer.alloc(0, size).expect("room");
            layer.free(0, slot).expect("live");
            assert!(layer.stats().resting_bytes <= RESTING_BUDGET as u64);
        }
    }
    let after = layer.stats();
    let calls = (after.shared.allocations + after.shared.frees)
        - (before.shared.allocations + before.shared.frees);
    assert!(
        calls <= 2 * 20 * 64 * 11 / 10,
        "{calls} shared calls for 2560 users' calls"
    );
    layer.check_invariants();
}

#[test]
fn a_slot_freed_on_another_cpu_rests_there_and_is_reused_there() {
    let layer = layer(2, 3);
    let slot = layer.alloc(0, 100).expect("room");
    let addr = slot.addr();
    layer.free(2, slot).expect("live");
    assert!(layer.resting().contains(&(2, 1, addr)));
    assert_eq!(layer.slot_at(addr), None, "a resting slot is not live");
    let again = layer.alloc(2, 90).expect("room");
    assert_eq!(again.addr(), addr, "the slot freed on CPU 2 serves CPU 2");
    assert_eq!(
        layer.slot_at(addr + 64),
        Some(SlotInfo { addr, size: 90 }),
        "the user's size"
    );
    layer.free(1, again).expect("live");
    layer.check_invariants();
}

#[test]
fn bad_frees_are_refused_with_the_shared_allocators_errors() {
    let layer = layer(2, 2);
    let slot = layer.alloc(0, 100).expect("room");
    let addr = slot.addr();
    let before = layer.stats();
    let free = |cpu, addr, size| layer.free_raw(cpu, addr, size);
    assert_eq!(
        free(1, addr, 128),
        Err(AllocError::WrongSize {
            addr,
            recorded: 100,
            given: 128
        })
    );
    assert_eq!(
        free(1, addr, 5000),
        Err(AllocError::WrongSize {
            addr,
            recorded: 100,
            given: 5000
        })
    );
    assert_eq!(
        free(0, addr, 0),
        Err(AllocError::WrongSize {
            addr,
            recorded: 100,
            given: 0
        })
    );
    assert_eq!(
        free(0, addr + 64, 100),
        Err(AllocError::InteriorPointer {
            addr: addr + 64,
            slot: addr
        })
    );
    assert_eq!(
        free(0, addr + 3, 100),
        Err(AllocError::Misaligned { addr: addr + 3 })
    );
    assert_eq!(
        free(0, BASE - 64, 64),
        Err(AllocError::OutsidePool { addr: BASE - 64 })
    );
    // The refill's other slots rest in CPU 0's magazine: freeing one is a double free.
    let (_, class, resting) = layer.resting()[0];
    assert_eq!(
        free(1, resting, class_bytes(class)),
        Err(AllocError::DoubleFree { addr: resting })
    );
    assert_eq!(
        free(1, resting + 64, 64),
        Err(AllocError::DoubleFree { addr: resting + 64 })
    );
    assert_eq!(layer.stats(), before);
    assert!(layer.fill().take().is_empty(), "a refused free filled");
    free(1, addr, 100).expect("live");
    assert_eq!(free(0, addr, 100), Err(AllocError::DoubleFree { addr }));
    layer.check_invariants();
}

#[test]
fn a_free_whose_fill_fails_is_refused_and_the_slot_stays_its_users() {
    let layer = layer(2, 1);
    let slot = layer.alloc(0, 300).expect("room");
    let addr = slot.addr();
    layer.fill().fail.set(true);
    assert_eq!(
        layer.free_raw(0, addr, 300),
        Err(AllocError::RefillFailed(BackendError::Refill))
    );
    assert_eq!(layer.slot_at(addr), Some(SlotInfo { addr, size: 300 }));
    layer.fill().fail.set(false);
    layer.free_raw(0, addr, 300).expect("live");
    assert_eq!(layer.fill().take(), [(addr, 320)]);
    layer.check_invariants();
}

#[test]
fn large_and_aligned_slots() {
    let layer = layer(4, 2);
    let big = layer.alloc(1, 5000).expect("room");
    assert_eq!(
        layer.slot_at(big.addr() + 4999),
        Some(SlotInfo {
            addr: big.addr(),
            size: 5000
        })
    );
    let huge = layer.alloc(0, PACK_SIZE + 1).expect("room");
    let page = layer.alloc_aligned(0, 100, 4096).expect("room");
    assert_eq!(page.addr() % 4096, 0);
    let page_addr = page.addr();
    layer.free(1, page).expect("live");
    // A page-aligned slot of the class rests on CPU 1: it serves the next such request there.
    let before = layer.stats().shared.allocations;
    let page = layer.alloc_aligned(1, 70, 4096).expect("room");
    assert_eq!(page.addr(), page_addr);
    assert_eq!(layer.stats().shared.allocations, before);
    assert_eq!(
        layer.alloc_aligned(0, 64, 3),
        Err(AllocError::BadAlignment { align: 3 })
    );
    assert_eq!(layer.alloc(0, 0), Err(AllocError::ZeroSize));
    for slot in [big, huge, page] {
        layer.free(0, slot).expect("live");
    }
    assert!(layer.trim());
    assert_eq!(layer.stats().pool.packs_mapped, 0);
    layer.check_invariants();
}

#[test]
fn magazines_stay_within_their_slots_and_budget() {
    let layer = layer(8, 1);
    let slots: Vec<Slot> = (0..200)
        .map(|_| layer.alloc(0, 4096).expect("room"))
        .collect();
    for slot in slots {
        layer.free(0, slot).expect("live");
        let stats = layer.stats();
        assert!(stats.resting_bytes <= RESTING_BUDGET as u64);
    }
    let stats = layer.stats();
    assert!(stats.flushes > 0);
    assert_eq!(stats.pool.live_slots, 0);
    assert_eq!(stats.pool.bytes_live, 0);
    assert_eq!(stats.shared.chunk_bytes_live, stats.resting_bytes);
    let slots: Vec<Slot> = (0..100)
        .map(|_| layer.alloc(0, 64).expect("room"))
        .collect();
    for slot in slots {
        layer.free(0, slot).expect("live");
    }
    assert!(layer.resting().len() <= MAGAZINE_SLOTS * 2);
    layer.check_invariants();
}

#[test]
fn an_allocation_under_pressure_drains_every_cpu_and_retries() {
    let pool = PackAllocator::new(SimBackend::with_frame_limit(1), BASE, 4).expect("valid pool");
    let layer = Layer::new(pool, LogFill::default(), 3).expect("valid layer");
    for cpu in 0..3 {
        let slots: Vec<Slot> = (0..6)
            .map(|_| layer.alloc(cpu, 200).expect("room"))
            .collect();
        for slot in slots {
            layer.free(cpu, slot).expect("live");
        }
    }
    assert!(layer.stats().resting_slots > 0);
    // A whole pack: the only frame is held by resting slots until the magazines are drained.
    let whole = layer.alloc(1, PACK_SIZE).expect("drained, then room");
    let stats = layer.stats();
    assert_eq!(stats.resting_slots, 0);
    assert_eq!(stats.pool.live_slots, 1);
    assert_eq!(
        layer.alloc(0, 64).map(drop),
        Err(AllocError::MapFailed(BackendError::OutOfFrames))
    );
    layer.free(2, whole).expect("live");
    layer.check_invariants();
}

#[test]
fn an_index_past_the_cpu_count_uses_the_last_cpu() {
    let layer = layer(2, 2);
    let slot = layer.alloc(7, 64).expect("room");
    let addr = slot.addr();
    layer.free(usize::MAX, slot).expect("live");
    assert!(layer.resting().contains(&(1, 0, addr)));
    layer.check_invariants();
}

// ---- property tests ----

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        size: usize,
    },
    AllocAligned {
        cpu: usize,
        size: usize,
        align_log: u32,
    },
    Free {
        cpu: usize,
        pick: Index,
    },
    FreeWrongSize {
        cpu: usize,
        pick: Index,
        delta: usize,
        larger: bool,
    },
    FreeInterior {
        cpu: usize,
        pick: Index,
        chunk: Index,
    },
    FreeMisaligned {
        cpu: usize,
        pick: Index,
        offset: u64,
    },
    FreeAgain {
        cpu: usize,
        pick: Index,
    },
    FreeResting {
        cpu: usize,
        pick: Index,
        size: Option<usize>,
    },
    FreeOutside {
        cpu: usize,
        below: bool,
        distance: u64,
    },
    BadAlloc {
        cpu: usize,
        kind: u8,
        amount: usize,
    },
    SlotAt {
        kind: u8,
        pick: Index,
        offset: u64,
    },
    Drain,
    Trim,
    FrameLimit {
        headroom: Option<u8>,
    },
    FillFailure {
        fail: bool,
    },
}

/// Sizes: mostly small, half of those from a few favourites (so magazines are reused, fill and
/// flush), some up to 64 KiB and a pack, and with `large`, a few over a pack.
fn size(large: bool) -> impl Strategy<Value = usize> {
    prop_oneof![
        30 => proptest::sample::select(vec![1usize, 64, 100, 128, 300, 512, 700, 2048, 4000, 4096]),
        30 => 1usize..=SMALL_SLOT_MAX,
        10 => (SMALL_SLOT_MAX + 1)..=65536,
        2 => 65537usize..=PACK_SIZE,
        if large { 1 } else { 0 } => (PACK_SIZE + 1)..=3 * PACK_SIZE,
    ]
}

/// Operations from CPUs `0..=cpus` (the last one past the count), weighted: `bad` is the weight
/// of each kind of bad call; `limits` adds frame limits and fill failures.
fn op(cpus: usize, large: bool, bad: u32, limits: bool) -> impl Strategy<Value = Op> {
    let cpu = 0..=cpus;
    let limit = if limits { 1 } else { 0 };
    let options: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (
            40,
            (cpu.clone(), size(large))
                .prop_map(|(cpu, size)| Op::Alloc { cpu, size })
                .boxed(),
        ),
        (
            4,
            (cpu.clone(), size(false), 6u32..=12)
                .prop_map(|(cpu, size, align_log)| Op::AllocAligned {
                    cpu,
                    size,
                    align_log,
                })
                .boxed(),
        ),
        (
            42,
            (cpu.clone(), any::<Index>())
                .prop_map(|(cpu, pick)| Op::Free { cpu, pick })
                .boxed(),
        ),
        (
            bad,
            (cpu.clone(), any::<Index>(), 1usize..200, any::<bool>())
                .prop_map(|(cpu, pick, delta, larger)| Op::FreeWrongSize {
                    cpu,
                    pick,
                    delta,
                    larger,
                })
                .boxed(),
        ),
        (
            bad,
            (cpu.clone(), any::<Index>(), any::<Index>())
                .prop_map(|(cpu, pick, chunk)| Op::FreeInterior { cpu, pick, chunk })
                .boxed(),
        ),
        (
            bad,
            (cpu.clone(), any::<Index>(), 1u64..64)
                .prop_map(|(cpu, pick, offset)| Op::FreeMisaligned { cpu, pick, offset })
                .boxed(),
        ),
        (
            bad,
            (cpu.clone(), any::<Index>())
                .prop_map(|(cpu, pick)| Op::FreeAgain { cpu, pick })
                .boxed(),
        ),
        (
            bad,
            (
                cpu.clone(),
                any::<Index>(),
                proptest::option::of(0usize..=5000),
            )
                .prop_map(|(cpu, pick, size)| Op::FreeResting { cpu, pick, size })
                .boxed(),
        ),
        (
            bad,
            (cpu.clone(), any::<bool>(), 0u64..(1 << 30))
                .prop_map(|(cpu, below, distance)| Op::FreeOutside {
                    cpu,
                    below,
                    distance,
                })
                .boxed(),
        ),
        (
            bad,
            (cpu, 0u8..3, any::<usize>())
                .prop_map(|(cpu, kind, amount)| Op::BadAlloc { cpu, kind, amount })
                .boxed(),
        ),
        (
            4,
            (0u8..3, any::<Index>(), 0u64..(2 * PACK))
                .prop_map(|(kind, pick, offset)| Op::SlotAt { kind, pick, offset })
                .boxed(),
        ),
        (1, Just(Op::Drain).boxed()),
        (1, Just(Op::Trim).boxed()),
        (
            2 * limit,
            proptest::option::of(0u8..3)
                .prop_map(|headroom| Op::FrameLimit { headroom })
                .boxed(),
        ),
        (
            limit,
            any::<bool>()
                .prop_map(|fail| Op::FillFailure { fail })
                .boxed(),
        ),
    ];
    // A union of more than ten options refuses weights of 0: leave those out.
    proptest::strategy::Union::new_weighted(
        options
            .into_iter()
            .filter(|&(weight, _)| weight > 0)
            .collect(),
    )
}

/// Bytes a slot holds: its chunks, or whole packs for a large slot.
fn extent(size: usize) -> u64 {
    if size > PACK_SIZE {
        size.div_ceil(PACK_SIZE) as u64 * PACK
    } else {
        size.next_multiple_of(CHUNK_SIZE) as u64
    }
}

/// Everything observable, to compare before and after a refused call.
#[derive(Debug, PartialEq, Eq)]
struct State {
    shared: Snapshot,
    stats: MagazineStats,
    resting: Vec<(usize, usize, u64)>,
}

struct Model {
    layer: Layer,
    n_packs: usize,
    live: BTreeMap<u64, usize>,
    /// Recently freed slots, for double frees.
    freed: Vec<(u64, usize)>,
    allocations: u64,
    frees: u64,
    bytes_live: u64,
    chunk_bytes_live: u64,
    fills_fail: bool,
}

impl Model {
    fn new(n_packs: usize, cpus: usize) -> Self {
        Self {
            layer: layer(n_packs, cpus),
            n_packs,
            live: BTreeMap::new(),
            freed: Vec::new(),
            allocations: 0,
            frees: 0,
            bytes_live: 0,
            chunk_bytes_live: 0,
            fills_fail: false,
        }
    }

    fn state(&self) -> State {
        // The guard is dropped before `stats` takes the lock again.
        let shared = snapshot(&self.layer.shared());
        State {
            shared,
            stats: self.layer.stats(),
            resting: self.layer.resting(),
        }
    }

    fn pick(&self, pick: &Index) -> Option<(u64, usize)> {
        if self.live.is_empty() {
            return None;
        }
        self.live
            .iter()
            .nth(pick.index(self.live.len()))
            .map(|(&a, &s)| (a, s))
    }

    /// The live slot that covers `addr`, if any.
    fn covering(&self, addr: u64) -> Option<(u64, usize)> {
        let (&start, &size) = self.live.range(..=addr).next_back()?;
        (addr < start + extent(size)).then_some((start, size))
    }

    fn pool_end(&self) -> u64 {
        BASE + self.n_packs as u64 * PACK
    }

    /// The user-visible figures: what no refused call may change.
    fn users_view(stats: &MagazineStats) -> (u64, u64, u64, u64, u64) {
        let pool = &stats.pool;
        (
            pool.live_slots,
            pool.allocations,
            pool.frees,
            pool.bytes_live,
            pool.chunk_bytes_live,
        )
    }

    fn alloc_op(&mut self, cpu: usize, size: usize, align: usize) -> Result<(), TestCaseError> {
        let before = self.layer.stats();
        let result = if align == CHUNK_SIZE {
            self.layer.alloc(cpu, size).map(Slot::into_raw)
        } else {
            self.layer
                .alloc_aligned(cpu, size, align)
                .map(Slot::into_raw)
        };
        prop_assert!(self.layer.fill().take().is_empty(), "an allocation filled");
        match result {
            Ok((addr, got)) => {
                prop_assert_eq!(got, size);
                prop_assert_eq!(addr % align.max(CHUNK_SIZE) as u64, 0, "alignment");
                let end = addr + extent(size);
                prop_assert!(addr >= BASE && end <= self.pool_end(), "in pool");
                prop_assert!(
                    self.layer.shared().backend().covers(addr, size),
                    "in mapped packs"
                );
                if size <= PACK_SIZE {
                    prop_assert_eq!((addr - BASE) / PACK, (end - 1 - BASE) / PACK, "one pack");
                }
                if let Some((&prev, &prev_size)) = self.live.range(..addr).next_back() {
                    prop_assert!(prev + extent(prev_size) <= addr, "overlaps the slot before");
                }
                if let Some((&next, _)) = self.live.range(addr..).next() {
                    prop_assert!(end <= next, "overlaps the slot after");
                }
                for (_, class, resting) in self.layer.resting() {
                    prop_assert!(
                        resting + class_bytes(class) as u64 <= addr || end <= resting,
                        "overlaps resting slot {:#x}",
                        resting
                    );
                }
                let info = Some(SlotInfo { addr, size });
                prop_assert_eq!(self.layer.slot_at(addr), info);
                prop_assert_eq!(self.layer.slot_at(end - 1), info);
                self.live.insert(addr, size);
                self.freed.retain(|&(freed, _)| freed != addr);
                self.allocations += 1;
                self.bytes_live += size as u64;
                // The shared allocator counts a large slot's bytes rounded to chunks, not its packs.
                self.chunk_bytes_live += size.next_multiple_of(CHUNK_SIZE) as u64;
            }
            Err(error) => {
                prop_assert!(
                    error == AllocError::PoolExhausted { size }
                        || matches!(error, AllocError::MapFailed(_)),
                    "unexpected {:?}",
                    error
                );
                let after = self.layer.stats();
                prop_assert_eq!(Self::users_view(&after), Self::users_view(&before));
                if !self.fills_fail {
                    prop_assert_eq!(after.resting_slots, 0, "refused without draining");
                }
            }
        }
        Ok(())
    }

    fn free_op(&mut self, cpu: usize, addr: u64, size: usize) -> Result<(), TestCaseError> {
        let before = self.layer.stats();
        let result = self.layer.free_raw(cpu, addr, size);
        let fills = self.layer.fill().take();
        if self.fills_fail && size <= PACK_SIZE {
            prop_assert_eq!(result, Err(AllocError::RefillFailed(BackendError::Refill)));
            prop_assert!(fills.is_empty());
            prop_assert_eq!(
                Self::users_view(&self.layer.stats()),
                Self::users_view(&before)
            );
            prop_assert_eq!(self.layer.slot_at(addr), Some(SlotInfo { addr, size }));
            return Ok(());
        }
        prop_assert_eq!(result, Ok(()), "free of a live slot");
        if size <= SMALL_SLOT_MAX {
            // Filled through the layer, exactly its chunks, before it rests.
            prop_assert_eq!(fills, [(addr, extent(size) as usize)]);
            prop_assert!(
                self.layer
                    .resting()
                    .iter()
                    .any(|&(_, _, resting)| resting == addr),
                "a freed small slot rests in a magazine"
            );
        } else {
            prop_assert!(fills.is_empty(), "the shared allocator fills large slots");
        }
        prop_assert_eq!(self.layer.slot_at(addr), None);
        self.live.remove(&addr);
        if self.freed.len() == 32 {
            self.freed.remove(0);
        }
        self.freed.push((addr, size));
        self.frees += 1;
        self.bytes_live -= size as u64;
        self.chunk_bytes_live -= size.next_multiple_of(CHUNK_SIZE) as u64;
        Ok(())
    }

    /// A call that must be refused with `expected` and change nothing.
    fn refused(
        &mut self,
        expected: AllocError,
        call: impl FnOnce(&Layer) -> Result<(), AllocError>,
    ) -> Result<(), TestCaseError> {
        let before = self.state();
        let fills = self.layer.shared().backend().counts().fills;
        prop_assert_eq!(call(&self.layer), Err(expected));
        prop_assert_eq!(self.state(), before, "refused call changed the state");
        prop_assert_eq!(self.layer.shared().backend().counts().fills, fills);
        prop_assert!(self.layer.fill().take().is_empty(), "refused call filled");
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc { cpu, size } => self.alloc_op(cpu, size, CHUNK_SIZE)?,
            Op::AllocAligned {
                cpu,
                size,
                align_log,
            } => self.alloc_op(cpu, size, 1 << align_log)?,
            Op::Free { cpu, ref pick } => {
                if let Some((addr, size)) = self.pick(pick) {
                    self.free_op(cpu, addr, size)?;
                }
            }
            Op::FreeWrongSize {
                cpu,
                ref pick,
                delta,
                larger,
            } => {
                if let Some((addr, recorded)) = self.pick(pick) {
                    let given = if larger {
                        recorded + delta
                    } else {
                        recorded.saturating_sub(delta)
                    };
                    let expected = AllocError::WrongSize {
                        addr,
                        recorded,
                        given,
                    };
                    self.refused(expected, |l| l.free_raw(cpu, addr, given))?;
                }
            }
            Op::FreeInterior {
                cpu,
                ref pick,
                ref chunk,
            } => {
                if let Some((slot, size)) = self.pick(pick) {
                    let chunks = (extent(size) / CHUNK_SIZE as u64) as usize;
                    if chunks > 1 {
                        let addr = slot + (1 + chunk.index(chunks - 1)) as u64 * CHUNK_SIZE as u64;
                        let expected = AllocError::InteriorPointer { addr, slot };
                        self.refused(expected, |l| l.free_raw(cpu, addr, size))?;
                    }
                }
            }
            Op::FreeMisaligned {
                cpu,
                ref pick,
                offset,
            } => {
                if let Some((slot, size)) = self.pick(pick) {
                    let addr = slot + offset;
                    let expected = AllocError::Misaligned { addr };
                    self.refused(expected, |l| l.free_raw(cpu, addr, size))?;
                }
            }
            Op::FreeAgain { cpu, ref pick } => {
                if !self.freed.is_empty() {
                    let (addr, size) = self.freed[pick.index(self.freed.len())];
                    let expected = match self.covering(addr) {
                        Some((start, _)) if start == addr => return Ok(()),
                        Some((slot, _)) => AllocError::InteriorPointer { addr, slot },
                        None => AllocError::DoubleFree { addr },
                    };
                    self.refused(expected, |l| l.free_raw(cpu, addr, size))?;
                }
            }
            Op::FreeResting {
                cpu,
                ref pick,
                size,
            } => {
                let resting = self.layer.resting();
                if !resting.is_empty() {
                    let (_, class, addr) = resting[pick.index(resting.len())];
                    prop_assert_eq!(self.covering(addr), None, "a resting slot is live");
                    let size = size.unwrap_or(class_bytes(class));
                    let expected = AllocError::DoubleFree { addr };
                    self.refused(expected, |l| l.free_raw(cpu, addr, size))?;
                }
            }
            Op::FreeOutside {
                cpu,
                below,
                distance,
            } => {
                let addr = if below {
                    BASE - 1 - distance
                } else {
                    self.pool_end() + distance
                };
                let expected = AllocError::OutsidePool { addr };
                self.refused(expected, |l| l.free_raw(cpu, addr, 64))?;
            }
            Op::BadAlloc { cpu, kind, amount } => {
                let pool = self.n_packs * PACK_SIZE;
                let (expected, size, align) = match kind {
                    0 => (AllocError::ZeroSize, 0, CHUNK_SIZE),
                    1 => {
                        let size = pool.saturating_add(1 + amount % (1 << 30));
                        (AllocError::TooLarge { size, pool }, size, CHUNK_SIZE)
                    }
                    _ => {
                        let align = amount % (1 << 20);
                        if align.is_power_of_two() && align <= MAX_ALIGN {
                            return Ok(());
                        }
                        (AllocError::BadAlignment { align }, 64, align)
                    }
                };
                self.refused(expected, |l| l.alloc_aligned(cpu, size, align).map(drop))?;
            }
            Op::SlotAt {
                kind,
                ref pick,
                offset,
            } => {
                let addr = match kind {
                    0 => match self.pick(pick) {
                        Some((slot, size)) => slot + offset % (extent(size) + 128),
                        None => return Ok(()),
                    },
                    1 => {
                        let resting = self.layer.resting();
                        if resting.is_empty() {
                            return Ok(());
                        }
                        let (_, class, slot) = resting[pick.index(resting.len())];
                        slot + offset % class_bytes(class) as u64
                    }
                    _ => BASE + offset % (self.n_packs as u64 * PACK),
                };
                let expected = self
                    .covering(addr)
                    .map(|(addr, size)| SlotInfo { addr, size });
                prop_assert_eq!(self.layer.slot_at(addr), expected, "slot_at({:#x})", addr);
            }
            Op::Drain => {
                let before = self.layer.stats();
                self.layer.drain();
                let after = self.layer.stats();
                prop_assert_eq!(Self::users_view(&after), Self::users_view(&before));
                if !self.fills_fail {
                    prop_assert_eq!(after.resting_slots, 0);
                }
            }
            Op::Trim => {
                let before = self.layer.stats();
                self.layer.trim();
                let after = self.layer.stats();
                prop_assert_eq!(Self::users_view(&after), Self::users_view(&before));
                if !self.fills_fail {
                    prop_assert_eq!(after.resting_slots, 0);
                    prop_assert_eq!(after.pool.cached_packs, 0);
                }
            }
            Op::FrameLimit { headroom } => {
                let mut shared = self.layer.shared();
                let mapped = shared.backend().mapped_packs();
                let limit = headroom.map(|extra| mapped + usize::from(extra));
                shared.backend_mut().set_frame_limit(limit);
            }
            Op::FillFailure { fail } => self.set_fill_failure(fail),
        }
        self.check_counters()
    }

    fn set_fill_failure(&mut self, fail: bool) {
        self.fills_fail = fail;
        self.layer.fill().fail.set(fail);
        self.layer.shared().backend_mut().set_refill_failure(fail);
    }

    fn check_counters(&self) -> Result<(), TestCaseError> {
        let stats = self.layer.stats();
        let (pool, shared) = (stats.pool, stats.shared);
        prop_assert_eq!(pool.live_slots, self.live.len() as u64);
        prop_assert_eq!(pool.allocations, self.allocations);
        prop_assert_eq!(pool.frees, self.frees);
        prop_assert_eq!(pool.bytes_live, self.bytes_live);
        prop_assert_eq!(pool.chunk_bytes_live, self.chunk_bytes_live);
        // The magazines add up.
        let resting = self.layer.resting();
        prop_assert_eq!(stats.resting_slots, resting.len() as u64);
        let resting_bytes: u64 = resting.iter().map(|&(_, c, _)| class_bytes(c) as u64).sum();
        prop_assert_eq!(stats.resting_bytes, resting_bytes);
        prop_assert_eq!(
            shared.chunk_bytes_live,
            pool.chunk_bytes_live + resting_bytes
        );
        prop_assert_eq!(shared.live_slots, pool.live_slots + stats.resting_slots);
        prop_assert!(pool.chunk_bytes_live + resting_bytes <= pool.bytes_reserved);
        prop_assert!(
            resting_bytes <= (self.layer.cpus() * RESTING_BUDGET) as u64,
            "over budget"
        );
        for cpu in 0..self.layer.cpus() {
            let bytes: usize = resting
                .iter()
                .filter(|&&(c, _, _)| c == cpu)
                .map(|&(_, class, _)| class_bytes(class))
                .sum();
            prop_assert!(bytes <= RESTING_BUDGET, "CPU {} over budget", cpu);
        }
        // Mapped: packs with live or resting slots, large packs, at most one cached empty one.
        let shared_pool = self.layer.shared();
        let mut mapped = 0u64;
        for va in shared_pool.backend().mapped() {
            mapped |= 1 << ((va - BASE) / PACK);
        }
        let mut needed = 0u64;
        let slots = self
            .live
            .iter()
            .map(|(&addr, &size)| (addr, extent(size)))
            .chain(resting.iter().map(|&(_, c, a)| (a, class_bytes(c) as u64)));
        for (addr, len) in slots {
            for pack in (addr - BASE) / PACK..=(addr + len - 1 - BASE) / PACK {
                needed |= 1 << pack;
            }
        }
        prop_assert_eq!(needed & !mapped, 0, "a pack in use is not mapped");
        let empty = mapped & !needed;
        prop_assert!(empty.count_ones() <= 1, "empty packs mapped: {:#x}", empty);
        prop_assert_eq!(pool.cached_packs as u32, empty.count_ones());
        prop_assert_eq!(pool.packs_mapped as u32, mapped.count_ones());
        prop_assert_eq!(shared_pool.backend().counts().violations, 0);
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for (i, op) in ops.iter().enumerate() {
            self.step(op)?;
            if i % 64 == 63 {
                self.layer.check_invariants();
                for (&addr, &size) in &self.live {
                    prop_assert_eq!(self.layer.slot_at(addr), Some(SlotInfo { addr, size }));
                }
            }
        }
        // Everything is freed and trimmed: no pack stays mapped.
        self.set_fill_failure(false);
        self.layer.shared().backend_mut().set_frame_limit(None);
        let live: Vec<_> = self.live.iter().map(|(&a, &s)| (a, s)).collect();
        for (i, (addr, size)) in live.into_iter().enumerate() {
            self.free_op(i % (self.layer.cpus() + 1), addr, size)?;
        }
        self.check_counters()?;
        self.layer.check_invariants();
        self.layer.trim();
        self.check_counters()?;
        let stats = self.layer.stats();
        prop_assert_eq!(stats.pool.packs_mapped, 0);
        prop_assert_eq!(stats.resting_slots, 0);
        prop_assert_eq!(stats.shared.live_slots, 0);
        self.layer.check_invariants();
        Ok(())
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(200))]
    /// Three CPUs over six packs: magazines fill, flush, refill, and slots move between CPUs;
    /// 200 × 1000 operations.
    #[test]
    fn three_cpus_small_pool(ops in proptest::collection::vec(op(3, false, 1, false), 1000)) {
        Model::new(6, 3).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(200))]
    /// Two CPUs over three packs, large slots, frames running out (allocations that drain every
    /// magazine) and BRK fills failing; 200 × 1000 operations.
    #[test]
    fn pressure_and_fill_failures(ops in proptest::collection::vec(op(2, true, 1, true), 1000)) {
        Model::new(3, 2).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(24))]
    /// Four CPUs over the whole 64-pack window with large slots; 24 × 4000 operations.
    #[test]
    fn four_cpus_full_window(ops in proptest::collection::vec(op(4, true, 1, false), 4000)) {
        Model::new(64, 4).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(150))]
    /// Mostly bad calls, each refused with nothing changed; 150 × 1000 operations.
    #[test]
    fn bad_calls_change_nothing(ops in proptest::collection::vec(op(3, true, 12, true), 1000)) {
        Model::new(4, 3).run(&ops)?;
    }
}

// ---- policy figures ----

/// Shared-allocator calls per operation (a plain allocator makes one per call: 2 per pair), the
/// refills and flushes, and the bytes resting at the end, for the workloads of `make bench` run on
/// the host with one CPU. Not a check: the figures that chose the policy. Run with
/// `cargo test --lib pack::magazine::tests::policy_figures -- --ignored --nocapture`.
#[test]
#[ignore]
fn policy_figures() {
    use crate::bench::workload::{Rng, bpf_size};

    fn report(name: &str, layer: &Layer, before: MagazineStats, ops: u64) {
        let after = layer.stats();
        let calls = (after.shared.allocations + after.shared.frees)
            - (before.shared.allocations + before.shared.frees);
        std::println!(
            "{name:>44}: {:.3} shared calls per user call, {} refills, {} flushes, {} KiB resting",
            calls as f64 / ops as f64,
            after.refills - before.refills,
            after.flushes - before.flushes,
            after.resting_bytes / 1024
        );
    }

    // Every class in turn.
    let cycling = layer(8, 1);
    let sizes: Vec<usize> = (1..=CLASSES).map(|c| c * CHUNK_SIZE).collect();
    let before = cycling.stats();
    for _ in 0..50 {
        for &size in &sizes {
            let slot = cycling.alloc(0, size).expect("room");
            cycling.free(0, slot).expect("live");
        }
    }
    report("64 classes in turn", &cycling, before, 2 * 50 * 64);

    // BPF churn: free a random live slot, allocate back to the live bytes.
    for live_bytes in [4u64 << 20, 16 << 20] {
        let churn = layer(16, 1);
        let mut rng = Rng::new(7);
        let mut live: Vec<(u64, usize)> = Vec::new();
        let mut bytes = 0u64;
        let mut calls = 0u64;
        while bytes < live_bytes {
            let size = bpf_size(&mut rng);
            live.push((churn.alloc_raw(0, size).expect("room"), size));
            bytes += size as u64;
        }
        let before = churn.stats();
        for _ in 0..50_000 {
            let victim = rng.below(live.len() as u64) as usize;
            let (addr, size) = live.swap_remove(victim);
            churn.free_raw(0, addr, size).expect("live");
            bytes -= size as u64;
            calls += 1;
            while bytes < live_bytes {
                let size = bpf_size(&mut rng);
                live.push((churn.alloc_raw(0, size).expect("room"), size));
                bytes += size as u64;
                calls += 1;
            }
        }
        let name = alloc::format!("BPF churn at {} MiB", live_bytes >> 20);
        report(&name, &churn, before, calls);
        let mut plain = PackAllocator::new(SimBackend::new(), BASE, 16).expect("valid pool");
        let mut rng = Rng::new(7);
        let mut plain_live: Vec<(u64, usize)> = Vec::new();
        let mut plain_bytes = 0u64;
        while plain_bytes < live_bytes {
            let size = bpf_size(&mut rng);
            plain_live.push((plain.alloc_raw(size).expect("room"), size));
            plain_bytes += size as u64;
        }
        for _ in 0..50_000 {
            let victim = rng.below(plain_live.len() as u64) as usize;
            let (addr, size) = plain_live.swap_remove(victim);
            plain.free_raw(addr, size).expect("live");
            plain_bytes -= size as u64;
            while plain_bytes < live_bytes {
                let size = bpf_size(&mut rng);
                plain_live.push((plain.alloc_raw(size).expect("room"), size));
                plain_bytes += size as u64;
            }
        }
        let plain = plain.stats();
        std::println!(
            "{:>44}  the shared allocator alone: density {:.1}%",
            "",
            plain.bytes_live as f64 * 100.0 / plain.bytes_reserved as f64
        );
        let stats = churn.stats();
        std::println!(
            "{:>44}  density {:.1}% (shared allocator's chunks: {:.1}%)",
            "",
            stats.pool.bytes_live as f64 * 100.0 / stats.pool.bytes_reserved as f64,
            stats.shared.chunk_bytes_live as f64 * 100.0 / stats.pool.bytes_reserved as f64,
        );
    }

    // Fixed-size pairs over a BPF-filled live set (victims of any size), and over a live set of
    // the same size.
    for same in [false, true] {
        for size in [64usize, 512, 4096] {
            let pairs = layer(16, 1);
            let mut rng = Rng::new(size as u64);
            let mut live: Vec<(u64, usize)> = Vec::new();
            for _ in 0..2000 {
                let s = if same { size } else { bpf_size(&mut rng) };
                live.push((pairs.alloc_raw(0, s).expect("room"), s));
            }
            let before = pairs.stats();
            for _ in 0..1000 {
                let addr = pairs.alloc_raw(0, size).expect("room");
                let victim = rng.below(live.len() as u64) as usize;
                let (old, old_size) = core::mem::replace(&mut live[victim], (addr, size));
                pairs.free_raw(0, old, old_size).expect("live");
            }
            let victims = if same { "same-size" } else { "BPF-mix" };
            let name = alloc::format!("{size} B pairs, {victims} victims");
            report(&name, &pairs, before, 2000);
        }
    }
}
