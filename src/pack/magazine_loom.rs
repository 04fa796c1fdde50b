//! Model checks of the magazine layer (issue 13): `loom` runs each model in every interleaving of
//! its CPUs' threads (and every value a load may return under the C++ memory model), up to a
//! preemption bound. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib pack::magazine::loom_tests`.
//!
//! Each model runs the real layer over the real shared allocator ([`PackAllocator`] over
//! [`SimBackend`]), with loom's mutex as the CPUs' locks and the shared one, and loom's atomics
//! for the records and the table pointers (the layer's `cfg(loom)` hooks: 64 records per table,
//! each table's publication checked through its `made` cell). A thread stands for a CPU and
//! passes its index; the model's own thread sets the layer up, starts and joins the CPUs, then
//! checks. The races: refill, drain and trim against frees from other CPUs, two frees of one
//! slot, a wrong-size free against a free and reuse of the slot.
//!
//! After every model, besides what the model itself expects:
//! - the layer's invariants and the shared allocator's ([`Magazines::check_invariants`]);
//! - no two live slots overlap, nor a live slot and a resting one (checked on every hand-out too),
//!   and `slot_at` gives each live slot with its user's size;
//! - every slot handed out was BRK-filled since its last user wrote it (the layer's fill and the
//!   backend's are recorded; a freshly mapped pack is all BRK), every resting slot too, and no
//!   fill ever touched a live slot;
//! - the figures add up as [`MagazineStats`] says, and match the users' live slots, sizes, calls;
//! - once everything is freed and the layer trimmed, nothing is live, resting or mapped.
//!
//! Each model also proves that its interesting interleavings were explored: a flag is set when
//! one runs, and the model fails if one never did.
//!
//! The checks' bookkeeping (the users' live slots, the chunks written since their last fill) is
//! in a std mutex, which loom does not see: it is taken only for a moment, never across a loom
//! operation, so it adds no interleaving and orders nothing. Refill batches are 2 slots (each
//! class's refill count set so at set-up) so that a refill stays a few loom operations; all
//! slots are of class 0 (64 bytes) and lie in the last 64 chunks of the pool's first pack,
//! where the model's 64 records per table do not alias (checked on every hand-out).
//!
//! A free that claims its record with a load and a store instead of the compare-exchange (two
//! frees of one slot both win), a table published with a Relaxed store (a causality violation
//! on the table's `made` cell), or a free that lets its slot rest without the BRK fill, makes a
//! model fail (checked by mutating the layer by hand).
//!
//! The preemption bound is `LOOM_MAX_PREEMPTIONS` when set, else the one each model names.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdMutexGuard};

use loom::sync::{Mutex, MutexGuard};
use loom::thread::{self, JoinHandle};

use super::*;
use crate::pack::SimBackend;

const BASE: u64 = 0xffff_8000_c000_0000;
const PACK: u64 = crate::pack::PACK_SIZE as u64;
/// The first address the model's slots may have: the last [`RECORD_CHUNKS`] chunks of the first
/// pack (small slots are cut from the end of a free run), where no two records alias.
const WINDOW: u64 = BASE + PACK - (RECORD_CHUNKS * CHUNK_SIZE) as u64;
/// Slots a refill takes (the class's refill count, set at set-up).
const REFILL: u8 = 2;
/// The first slot the pool hands out (cut from the end of the first pack).
const FIRST_SLOT: u64 = BASE + PACK - CHUNK_SIZE as u64;
/// The users' sizes: all of class 0.
const SIZE: usize = 64;
const REUSE: usize = 32;
const WRONG: usize = 48;

/// Explores `f` in every interleaving with at most `preemptions` forced switches (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(preemptions);
    builder.check(f);
}

/// loom's mutex as the CPUs' locks and the shared one.
struct LoomLock<T>(Mutex<T>);

impl<T> MagazineLock<T> for LoomLock<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    fn lock(&self) -> Self::Guard<'_> {
        self.0.lock().unwrap()
    }
}

/// Chunk addresses of `[addr, addr + len)`.
fn chunks(addr: u64, len: usize) -> impl Iterator<Item = u64> {
    (0..len.div_ceil(CHUNK_SIZE) as u64).map(move |i| addr + i * CHUNK_SIZE as u64)
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` share a chunk.
fn overlap(a: u64, a_len: usize, b: u64, b_len: usize) -> bool {
    a < b + b_len.next_multiple_of(CHUNK_SIZE) as u64
        && b < a + a_len.next_multiple_of(CHUNK_SIZE) as u64
}

/// What the users and the fills did, as the checks see it.
#[derive(Default)]
struct Book {
    /// The users' live slots: address, size.
    live: BTreeMap<u64, usize>,
    /// Chunks a user had (and may have written code into) since their last BRK fill.
    dirty: BTreeSet<u64>,
    /// The users' successful calls.
    allocations: u64,
    frees: u64,
}

impl Book {
    fn handed_out(&mut self, addr: u64, size: usize) {
        assert!(
            addr >= WINDOW && addr + size as u64 <= BASE + PACK,
            "slot {addr:#x} is outside the model's record window"
        );
        for (&other, &other_size) in &self.live {
            assert!(
                !overlap(addr, size, other, other_size),
                "slot {addr:#x} ({size} bytes) overlaps the live slot {other:#x} ({other_size})"
            );
        }
        for chunk in chunks(addr, size) {
            assert!(
                !self.dirty.contains(&chunk),
                "slot {addr:#x} handed out with chunk {chunk:#x} not BRK-filled since its last use"
            );
        }
        self.dirty.extend(chunks(addr, size));
        self.live.insert(addr, size);
        self.allocations += 1;
    }

    /// `[va, va + len)` was filled with BRK (by the layer's fill or the backend's).
    fn filled(&mut self, va: u64, len: usize) {
        for (&slot, &size) in &self.live {
            assert!(
                !overlap(va, len, slot, size),
                "BRK fill of [{va:#x}, +{len:#x}) over the live slot {slot:#x}"
            );
        }
        for chunk in chunks(va, len) {
            self.dirty.remove(&chunk);
        }
    }

    /// `count` packs at `va` were mapped, BRK-filled.
    fn mapped(&mut self, va: u64, count: usize) {
        let end = va + count as u64 * PACK;
        self.dirty.retain(|&chunk| chunk < va || chunk >= end);
    }
}

/// The book, shared by the users (the model's threads), the layer's fill and the backend.
#[derive(Clone, Default)]
struct Shared(Arc<StdMutex<Book>>);

impl Shared {
    fn lock(&self) -> StdMutexGuard<'_, Book> {
        self.0.lock().unwrap()
    }
}

/// [`SimBackend`] that tells the book what it filled and mapped.
struct Backend {
    sim: SimBackend,
    book: Shared,
}

impl PackBackend for Backend {
    fn map_packs(&mut self, va: u64, count: usize) -> Result<(), BackendError> {
        self.sim.map_packs(va, count)?;
        self.book.lock().mapped(va, count);
        Ok(())
    }

    fn unmap_packs(&mut self, va: u64, count: usize) {
        self.sim.unmap_packs(va, count);
    }

    fn fill_brk(&mut self, va: u64, len: usize) -> Result<(), BackendError> {
        self.sim.fill_brk(va, len)?;
        self.book.lock().filled(va, len);
        Ok(())
    }
}

/// The layer's fill: tells the book.
struct Fill(Shared);

impl SlotFill for Fill {
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError> {
        self.0.lock().filled(va, len);
        Ok(())
    }
}

type Layer = Magazines<Backend, LoomLock<PackAllocator<Backend>>, LoomLock<CpuMagazines>, Fill>;

/// A model's layer and book.
struct World {
    layer: Layer,
    book: Shared,
}

impl World {
    /// A layer of `cpus` CPUs over a pool of one pack, with refills of [`REFILL`] slots.
    fn new(cpus: usize) -> Arc<Self> {
        let book = Shared::default();
        let backend = Backend {
            sim: SimBackend::new(),
            book: book.clone(),
        };
        let pool = PackAllocator::new(backend, BASE, 1).expect("valid pool");
        let layer = Layer::new(pool, Fill(book.clone()), cpus).expect("valid layer");
        for cpu in layer.cpus.iter() {
            cpu.0.lock().refill = [REFILL; CLASSES];
        }
        Arc::new(Self { layer, book })
    }

    /// Runs `body` on a thread of its own (a CPU).
    fn spawn<T: Send + 'static>(
        self: &Arc<Self>,
        body: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let world = self.clone();
        thread::spawn(move || body(&world))
    }

    /// A slot of `size` bytes for a user on `cpu`.
    fn alloc(&self, cpu: usize, size: usize) -> u64 {
        let addr = self
            .layer
            .alloc_raw(cpu, size)
            .unwrap_or_else(|error| panic!("CPU {cpu}: alloc of {size} bytes: {error:?}"));
        self.book.lock().handed_out(addr, size);
        addr
    }

    /// The user of the live slot at `addr` lets it go (before freeing it): its size.
    fn give_up(&self, addr: u64) -> usize {
        self.book
            .lock()
            .live
            .remove(&addr)
            .expect("a live slot of the model")
    }

    /// The user on `cpu` frees its slot at `addr`.
    fn free(&self, cpu: usize, addr: u64) {
        let size = self.give_up(addr);
        if let Err(error) = self.layer.free_raw(cpu, addr, size) {
            panic!("CPU {cpu}: free of {addr:#x} ({size} bytes): {error:?}");
        }
        self.freed();
    }

    /// A free of a slot given up made it.
    fn freed(&self) {
        self.book.lock().frees += 1;
    }

    /// The checks made after every model (see the module documentation); the CPUs are joined.
    fn check(&self) {
        self.layer.check_invariants();
        let (live, dirty, allocations, frees) = {
            let book = self.book.lock();
            (
                book.live.clone(),
                book.dirty.clone(),
                book.allocations,
                book.frees,
            )
        };
        let stats = self.layer.stats();
        let resting = self.layer.resting();
        for &(cpu, class, addr) in &resting {
            let len = class_bytes(class);
            assert_eq!(class, 0, "resting slot {addr:#x} of another class");
            for (&slot, &size) in &live {
                assert!(
                    !overlap(addr, len, slot, size),
                    "resting slot {addr:#x} (CPU {cpu}) overlaps the live slot {slot:#x}"
                );
            }
            for chunk in chunks(addr, len) {
                assert!(
                    !dirty.contains(&chunk),
                    "resting slot {addr:#x} (CPU {cpu}) not BRK-filled"
                );
            }
        }
        for (&addr, &size) in &live {
            assert_eq!(
                self.layer.slot_at(addr),
                Some(SlotInfo { addr, size }),
                "live slot {addr:#x}"
            );
        }
        // The figures, as `MagazineStats` documents them.
        let (pool, shared) = (stats.pool, stats.shared);
        assert_eq!(
            shared.chunk_bytes_live,
            pool.chunk_bytes_live + stats.resting_bytes
        );
        assert_eq!(shared.live_slots, pool.live_slots + stats.resting_slots);
        assert!(pool.bytes_live <= pool.chunk_bytes_live);
        assert!(pool.chunk_bytes_live + stats.resting_bytes <= pool.bytes_reserved);
        // ... and as the users and the magazines see them.
        let bytes: usize = live.values().sum();
        let chunk_bytes: usize = live
            .values()
            .map(|size| size.next_multiple_of(CHUNK_SIZE))
            .sum();
        assert_eq!(pool.live_slots, live.len() as u64, "users' live slots");
        assert_eq!(pool.bytes_live, bytes as u64, "users' live bytes");
        assert_eq!(pool.chunk_bytes_live, chunk_bytes as u64);
        assert_eq!((pool.allocations, pool.frees), (allocations, frees));
        assert_eq!(stats.resting_slots, resting.len() as u64);
        let resting_bytes: usize = resting
            .iter()
            .map(|&(_, class, _)| class_bytes(class))
            .sum();
        assert_eq!(stats.resting_bytes, resting_bytes as u64);
        assert_eq!(self.layer.shared().backend().sim.counts().violations, 0);
    }

    /// [`World::check`], then everything freed (on CPU 0) and the layer trimmed: nothing is left
    /// live, resting or mapped, and the checks hold again.
    fn finish(&self) {
        self.check();
        let live: Vec<u64> = self.book.lock().live.keys().copied().collect();
        for addr in live {
            self.free(0, addr);
        }
        self.layer.trim();
        self.check();
        let stats = self.layer.stats();
        assert_eq!(
            stats.shared.live_slots, 0,
            "a slot left in the shared allocator"
        );
        assert_eq!(stats.resting_slots, 0, "a slot left resting after trim");
        assert_eq!(
            stats.shared.packs_mapped, 0,
            "a pack left mapped after trim"
        );
    }
}

/// Interleavings a model must have explored, each flagged when one ran, and the executions.
struct Seen {
    flags: Vec<(&'static str, std::sync::atomic::AtomicBool)>,
    runs: std::sync::atomic::AtomicUsize,
}

impl Seen {
    fn new(names: &[&'static str]) -> Arc<Self> {
        Arc::new(Self {
            flags: names
                .iter()
                .map(|&name| (name, std::sync::atomic::AtomicBool::new(false)))
                .collect(),
            runs: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// One more execution explored.
    fn ran(&self) {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn hit(&self, name: &str) {
        let (_, flag) = self
            .flags
            .iter()
            .find(|(known, _)| *known == name)
            .expect("a named interleaving");
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Checks that every flagged interleaving ran; prints the executions explored.
    fn all(&self) {
        let runs = self.runs.load(std::sync::atomic::Ordering::Relaxed);
        std::println!("{runs} executions explored");
        for (name, flag) in &self.flags {
            assert!(
                flag.load(std::sync::atomic::Ordering::Relaxed),
                "never explored: {name}"
            );
        }
    }
}

/// CPU 0 frees two slots into its magazine (taken by its refill at set-up, so it held none)
/// while CPU 1, whose magazine is empty, allocates two of the same class (a refill, then its
/// magazine's slot) and a third CPU drains every magazine. Proves: every free and allocation
/// succeeds, with the checks of every model; CPU 1 refilled once, or twice when the drain took
/// the slot its refill left resting; no flush. Explored: CPU 1 served a slot CPU 0 freed (the
/// drain returned it to the shared allocator before CPU 1's refill), and the drain taking CPU
/// 1's refilled slot. Preemption bound 5.
#[test]
fn a_refill_races_frees_on_another_cpu_and_a_drain() {
    let seen = Seen::new(&["CPU 1 served a slot CPU 0 freed", "drain took CPU 1's slot"]);
    let explored = seen.clone();
    model(5, move || {
        let world = World::new(2);
        let a = world.alloc(0, SIZE);
        let b = world.alloc(0, SIZE);
        let freeing = world.spawn(move |w| {
            w.free(0, a);
            w.free(0, b);
        });
        let refilling = world.spawn(|w| [w.alloc(1, SIZE), w.alloc(1, SIZE)]);
        let draining = world.spawn(|w| w.layer.drain());
        freeing.join().unwrap();
        let served = refilling.join().unwrap();
        let drained = draining.join().unwrap();
        assert!(drained <= 3, "{drained} slots drained of at most 3 resting");
        let stats = world.layer.stats();
        assert!(
            (2..=3).contains(&stats.refills),
            "{} refills",
            stats.refills
        );
        assert_eq!(stats.flushes, 0);
        if served.iter().any(|slot| [a, b].contains(slot)) {
            seen.hit("CPU 1 served a slot CPU 0 freed");
        }
        if stats.refills == 3 {
            seen.hit("drain took CPU 1's slot");
        }
        world.finish();
        seen.ran();
    });
    explored.all();
}

/// CPU 0 allocates a slot, hands it to CPU 1 (a message: the user's own synchronisation), trims,
/// and allocates again; CPU 1 frees the slot (into its own magazine) and allocates one. Proves,
/// with the checks of every model: every call succeeds; the slot freed on CPU 1 rests there or
/// went back to the shared allocator, never both; a trim that released the pack left nothing
/// behind, and the allocations after it mapped the pack again (all BRK) with a new spare table.
/// Explored: trim released the pack (CPU 1's free drained before it); CPU 1 served again
/// the slot it freed. Preemption bound 8: every interleaving (a higher one explores no more).
#[test]
fn a_slot_freed_on_another_cpu_races_a_trim() {
    let seen = Seen::new(&["trim released the pack", "CPU 1 reused the slot it freed"]);
    let explored = seen.clone();
    model(8, move || {
        let world = World::new(2);
        let (send, receive) = loom::sync::mpsc::channel();
        let trimming = world.spawn(move |w| {
            let slot = w.alloc(0, SIZE);
            send.send(slot).unwrap();
            let released = w.layer.trim();
            (slot, released, w.alloc(0, SIZE))
        });
        let freeing = world.spawn(move |w| {
            let slot = receive.recv().unwrap();
            w.free(1, slot);
            w.alloc(1, SIZE)
        });
        let (slot, released, _) = trimming.join().unwrap();
        let again = freeing.join().unwrap();
        if released {
            seen.hit("trim released the pack");
            let stats = world.layer.stats();
            assert_eq!(stats.shared.packs_mapped, 1, "the pack mapped again");
        }
        if again == slot {
            seen.hit("CPU 1 reused the slot it freed");
        }
        world.finish();
        seen.ran();
    });
    explored.all();
}

/// A slot allocated at set-up on CPU 0 is freed by CPU 0 and CPU 1 at once while a third CPU
/// drains. Proves, with the checks of every model: exactly one free succeeds, the other is
/// refused as a double free (whether it lost the claim of the record, or found the slot resting
/// or back in the shared allocator); the slot then rests once, on the winner's CPU, or is back
/// in the shared allocator. Explored: each CPU winning; the drain taking the slot, and not.
/// Preemption bound 5.
#[test]
fn two_frees_of_one_slot_race_a_drain_and_one_wins() {
    let seen = Seen::new(&[
        "CPU 0 won",
        "CPU 1 won",
        "the drain returned the slot",
        "the slot rests on the winner",
    ]);
    let explored = seen.clone();
    model(5, move || {
        let world = World::new(2);
        let slot = world.alloc(0, SIZE);
        // Both CPUs free it: its user lets it go before either does.
        world.give_up(slot);
        let frees: Vec<_> = (0..2)
            .map(|cpu| world.spawn(move |w| w.layer.free_raw(cpu, slot, SIZE)))
            .collect();
        let draining = world.spawn(|w| w.layer.drain());
        let results: Vec<_> = frees.into_iter().map(|t| t.join().unwrap()).collect();
        draining.join().unwrap();
        let winners: Vec<usize> = (0..2).filter(|&cpu| results[cpu].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "not exactly one free made it: {results:?}"
        );
        let winner = winners[0];
        assert_eq!(
            results[1 - winner],
            Err(AllocError::DoubleFree { addr: slot }),
            "CPU {}",
            1 - winner
        );
        world.freed();
        seen.hit(["CPU 0 won", "CPU 1 won"][winner]);
        let resting = world.layer.resting();
        let rests = resting.iter().filter(|&&(_, _, addr)| addr == slot).count();
        if rests == 1 {
            assert!(
                resting.contains(&(winner, 0, slot)),
                "rests on the winner's CPU"
            );
            seen.hit("the slot rests on the winner");
        } else {
            assert_eq!(rests, 0);
            assert_eq!(world.layer.shared().slot_at(slot), None);
            seen.hit("the drain returned the slot");
        }
        world.finish();
        seen.ran();
    });
    explored.all();
}

/// CPU 0 allocates the pool's first slot with 64 bytes (mapping the pack and publishing its
/// record table), frees it and allocates 32 bytes of the same class (served the same slot, its
/// magazine's top), while CPU 1 frees that address with 48 bytes (also of the class: only the
/// layer's record tells the sizes apart), knowing it from nowhere (no synchronisation with CPU
/// 0: only the table's publication orders what it reads). Proves, with the checks of every
/// model: CPU 1 is refused, as a wrong size (with the size recorded when it looked, 64 or 32) or
/// a double free (no slot there yet, or the slot resting between the two), and changes nothing:
/// CPU 0's new slot is live with 32 bytes. Explored: each of the three refusals. Preemption
/// bound 8: every interleaving (a higher one explores no more).
#[test]
fn a_wrong_size_free_races_a_free_and_reuse() {
    let seen = Seen::new(&[
        "wrong size, 64 recorded",
        "wrong size, 32 recorded",
        "double free",
    ]);
    let explored = seen.clone();
    model(8, move || {
        let world = World::new(2);
        let reusing = world.spawn(|w| {
            let slot = w.alloc(0, SIZE);
            assert_eq!(
                slot, FIRST_SLOT,
                "small slots are cut from the end of the pack"
            );
            w.free(0, slot);
            w.alloc(0, REUSE)
        });
        let wrong = world.spawn(|w| w.layer.free_raw(1, FIRST_SLOT, WRONG));
        let again = reusing.join().unwrap();
        let refused = wrong.join().unwrap();
        assert_eq!(
            again, FIRST_SLOT,
            "CPU 0's magazine served the slot it freed"
        );
        match refused {
            Err(AllocError::WrongSize {
                addr,
                recorded,
                given: WRONG,
            }) if addr == FIRST_SLOT && recorded == SIZE => seen.hit("wrong size, 64 recorded"),
            Err(AllocError::WrongSize {
                addr,
                recorded,
                given: WRONG,
            }) if addr == FIRST_SLOT && recorded == REUSE => seen.hit("wrong size, 32 recorded"),
            Err(AllocError::DoubleFree { addr }) if addr == FIRST_SLOT => seen.hit("double free"),
            other => panic!("the wrong-size free: {other:?}"),
        }
        world.finish();
        seen.ran();
    });
    explored.all();
}
