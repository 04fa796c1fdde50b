//! Property tests: random sequences of allocations, frees and bad calls, checked after every step
//! against a model (a map of live slots).
//!
//! Checked: slots are aligned, inside the pool, inside mapped packs and never overlap (at chunk
//! granularity); the counters match the model; a pack is released once empty, except one cached
//! empty pack; every bad call is refused with the right error and changes nothing; the structural
//! invariants of [`super::meta`] hold (checked every few steps and at the end).
//!
//! The suite runs 1,020,000 operations: the four properties below, cases × operations each.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::tests::{Snapshot, snapshot};
use super::*;

const BASE: u64 = 0xffff_8000_8000_0000;
const PACK: u64 = PACK_SIZE as u64;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
    },
    AllocAligned {
        size: usize,
        align_log: u32,
    },
    Free {
        pick: Index,
    },
    FreeWrongSize {
        pick: Index,
        delta: usize,
        larger: bool,
    },
    FreeInterior {
        pick: Index,
        chunk: Index,
    },
    FreeMisaligned {
        pick: Index,
        offset: u64,
    },
    FreeAgain {
        pick: Index,
    },
    FreeOutside {
        below: bool,
        distance: u64,
    },
    BadAlloc {
        kind: u8,
        amount: usize,
    },
    FrameLimit {
        headroom: Option<u8>,
    },
}

/// Sizes of the BPF mix (half under 500 B, three quarters under 2 KiB, tail to 64 KiB), a few up
/// to a whole pack, and with `large`, a few over a pack.
fn size(large: bool) -> impl Strategy<Value = usize> {
    prop_oneof![
        50 => 1usize..=500,
        25 => 501usize..=2048,
        20 => 2049usize..=65536,
        4 => 65537usize..=PACK_SIZE,
        if large { 1 } else { 0 } => (PACK_SIZE + 1)..=3 * PACK_SIZE,
    ]
}

/// Operations, weighted: `bad` is the weight of each kind of bad call.
fn op(large: bool, bad: u32, limits: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => size(large).prop_map(|size| Op::Alloc { size }),
        6 => (size(false), 6u32..=12).prop_map(|(size, align_log)| Op::AllocAligned { size, align_log }),
        42 => any::<Index>().prop_map(|pick| Op::Free { pick }),
        bad => (any::<Index>(), 1usize..200, any::<bool>())
            .prop_map(|(pick, delta, larger)| Op::FreeWrongSize { pick, delta, larger }),
        bad => (any::<Index>(), any::<Index>()).prop_map(|(pick, chunk)| Op::FreeInterior { pick, chunk }),
        bad => (any::<Index>(), 1u64..64).prop_map(|(pick, offset)| Op::FreeMisaligned { pick, offset }),
        bad => any::<Index>().prop_map(|pick| Op::FreeAgain { pick }),
        bad => (any::<bool>(), 0u64..(1 << 30)).prop_map(|(below, distance)| Op::FreeOutside { below, distance }),
        bad => (0u8..3, any::<usize>()).prop_map(|(kind, amount)| Op::BadAlloc { kind, amount }),
        if limits { 2 } else { 0 } => proptest::option::of(0u8..3).prop_map(|headroom| Op::FrameLimit { headroom }),
    ]
}

/// Bytes a slot holds: its chunks, or whole packs for a large slot.
fn extent(size: usize) -> u64 {
    if size > PACK_SIZE {
        size.div_ceil(PACK_SIZE) as u64 * PACK
    } else {
        size.next_multiple_of(CHUNK_SIZE) as u64
    }
}

struct Model {
    alloc: PackAllocator<SimBackend>,
    n_packs: usize,
    live: BTreeMap<u64, usize>,
    /// Recently freed slots, for double frees.
    freed: Vec<(u64, usize)>,
    /// Live slots per pack (slots up to a pack), and the packs of large slots.
    pack_slots: [u32; MAX_PACKS],
    large_packs: u64,
    allocations: u64,
    frees: u64,
    bytes_live: u64,
    chunk_bytes_live: u64,
}

impl Model {
    fn new(n_packs: usize) -> Self {
        Self {
            alloc: PackAllocator::new(SimBackend::new(), BASE, n_packs).expect("valid pool"),
            n_packs,
            live: BTreeMap::new(),
            freed: Vec::new(),
            pack_slots: [0; MAX_PACKS],
            large_packs: 0,
            allocations: 0,
            frees: 0,
            bytes_live: 0,
            chunk_bytes_live: 0,
        }
    }

    fn pack_of(addr: u64) -> usize {
        ((addr - BASE) / PACK) as usize
    }

    fn large_mask(addr: u64, size: usize) -> u64 {
        let count = size.div_ceil(PACK_SIZE);
        (u64::MAX >> (64 - count)) << Self::pack_of(addr)
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

    fn alloc_op(&mut self, size: usize, align: usize) -> Result<(), TestCaseError> {
        let before = self.alloc.stats();
        let mapped_before = self.alloc.backend().mapped_packs();
        let result = if align == CHUNK_SIZE {
            self.alloc.alloc(size).map(Slot::into_raw)
        } else {
            self.alloc.alloc_aligned(size, align).map(Slot::into_raw)
        };
        match result {
            Ok((addr, got)) => {
                prop_assert_eq!(got, size);
                prop_assert_eq!(addr % align.max(CHUNK_SIZE) as u64, 0, "alignment");
                let end = addr + extent(size);
                prop_assert!(
                    addr >= BASE && end <= BASE + (self.n_packs as u64) * PACK,
                    "in pool"
                );
                prop_assert!(self.alloc.backend().covers(addr, size), "in mapped packs");
                if size <= PACK_SIZE {
                    prop_assert_eq!(Self::pack_of(addr), Self::pack_of(end - 1), "one pack");
                }
                if let Some((&prev, &prev_size)) = self.live.range(..addr).next_back() {
                    prop_assert!(prev + extent(prev_size) <= addr, "overlaps the slot before");
                }
                if let Some((&next, _)) = self.live.range(addr..).next() {
                    prop_assert!(end <= next, "overlaps the slot after");
                }
                self.live.insert(addr, size);
                self.freed.retain(|&(freed, _)| freed != addr);
                if size > PACK_SIZE {
                    self.large_packs |= Self::large_mask(addr, size);
                } else {
                    self.pack_slots[Self::pack_of(addr)] += 1;
                }
                self.allocations += 1;
                self.bytes_live += size as u64;
                self.chunk_bytes_live += size.next_multiple_of(CHUNK_SIZE) as u64;
            }
            Err(error) => {
                prop_assert!(
                    matches!(
                        error,
                        AllocError::PoolExhausted { .. } | AllocError::MapFailed(_)
                    ),
                    "unexpected {:?}",
                    error
                );
                prop_assert_eq!(
                    self.alloc.stats(),
                    before,
                    "refused alloc changed the stats"
                );
                prop_assert_eq!(self.alloc.backend().mapped_packs(), mapped_before);
            }
        }
        Ok(())
    }

    fn free_op(&mut self, addr: u64, size: usize) -> Result<(), TestCaseError> {
        let result = self.alloc.free_raw(addr, size);
        prop_assert_eq!(result, Ok(()), "free of a live slot");
        self.live.remove(&addr);
        if self.freed.len() == 32 {
            self.freed.remove(0);
        }
        self.freed.push((addr, size));
        if size > PACK_SIZE {
            self.large_packs &= !Self::large_mask(addr, size);
        } else {
            self.pack_slots[Self::pack_of(addr)] -= 1;
        }
        self.frees += 1;
        self.bytes_live -= size as u64;
        self.chunk_bytes_live -= size.next_multiple_of(CHUNK_SIZE) as u64;
        Ok(())
    }

    /// A call that must be refused with `expected` and change nothing.
    fn refused(
        &mut self,
        expected: AllocError,
        call: impl FnOnce(&mut PackAllocator<SimBackend>) -> Result<(), AllocError>,
    ) -> Result<(), TestCaseError> {
        let before: Snapshot = snapshot(&self.alloc);
        let fills = self.alloc.backend().counts().fills;
        prop_assert_eq!(call(&mut self.alloc), Err(expected));
        prop_assert_eq!(
            snapshot(&self.alloc),
            before,
            "refused call changed the state"
        );
        prop_assert_eq!(self.alloc.backend().counts().fills, fills);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc { size } => self.alloc_op(size, CHUNK_SIZE)?,
            Op::AllocAligned { size, align_log } => self.alloc_op(size, 1 << align_log)?,
            Op::Free { ref pick } => {
                if let Some((addr, size)) = self.pick(pick) {
                    self.free_op(addr, size)?;
                }
            }
            Op::FreeWrongSize {
                ref pick,
                delta,
                larger,
            } => {
                if let Some((addr, recorded)) = self.pick(pick) {
                    let given = if larger {
                        recorded + delta
                    } else {
                        recorded.saturating_sub(delta).max(1)
                    };
                    if given != recorded {
                        let expected = AllocError::WrongSize {
                            addr,
                            recorded,
                            given,
                        };
                        self.refused(expected, |a| a.free_raw(addr, given))?;
                    }
                }
            }
            Op::FreeInterior {
                ref pick,
                ref chunk,
            } => {
                if let Some((slot, size)) = self.pick(pick) {
                    let chunks = (extent(size) / CHUNK_SIZE as u64) as usize;
                    if chunks > 1 {
                        let addr = slot + (1 + chunk.index(chunks - 1)) as u64 * CHUNK_SIZE as u64;
                        let expected = AllocError::InteriorPointer { addr, slot };
                        self.refused(expected, |a| a.free_raw(addr, size))?;
                    }
                }
            }
            Op::FreeMisaligned { ref pick, offset } => {
                if let Some((slot, size)) = self.pick(pick) {
                    let addr = slot + offset;
                    self.refused(AllocError::Misaligned { addr }, |a| a.free_raw(addr, size))?;
                }
            }
            Op::FreeAgain { ref pick } => {
                if !self.freed.is_empty() {
                    let (addr, size) = self.freed[pick.index(self.freed.len())];
                    let expected = match self.covering(addr) {
                        Some((start, _)) if start == addr => return Ok(()),
                        Some((slot, _)) => AllocError::InteriorPointer { addr, slot },
                        None => AllocError::DoubleFree { addr },
                    };
                    self.refused(expected, |a| a.free_raw(addr, size))?;
                }
            }
            Op::FreeOutside { below, distance } => {
                let addr = if below {
                    BASE - 1 - distance
                } else {
                    BASE + self.n_packs as u64 * PACK + distance
                };
                self.refused(AllocError::OutsidePool { addr }, |a| a.free_raw(addr, 64))?;
            }
            Op::BadAlloc { kind, amount } => {
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
                self.refused(expected, |a| a.alloc_aligned(size, align).map(drop))?;
            }
            Op::FrameLimit { headroom } => {
                let mapped = self.alloc.backend().mapped_packs();
                let limit = headroom.map(|extra| mapped + usize::from(extra));
                self.alloc.backend_mut().set_frame_limit(limit);
            }
        }
        self.check_counters()
    }

    fn check_counters(&self) -> Result<(), TestCaseError> {
        let stats = self.alloc.stats();
        prop_assert_eq!(stats.live_slots, self.live.len() as u64);
        prop_assert_eq!(stats.allocations, self.allocations);
        prop_assert_eq!(stats.frees, self.frees);
        prop_assert_eq!(stats.bytes_live, self.bytes_live);
        prop_assert_eq!(stats.chunk_bytes_live, self.chunk_bytes_live);
        prop_assert_eq!(stats.large_packs as u32, self.large_packs.count_ones());

        // Mapped = packs with live slots + large packs + at most one cached empty pack.
        let mut mapped = 0u64;
        for va in self.alloc.backend().mapped() {
            mapped |= 1 << Self::pack_of(va);
        }
        let mut needed = self.large_packs;
        for (pack, &slots) in self.pack_slots.iter().enumerate() {
            if slots > 0 {
                needed |= 1 << pack;
            }
        }
        prop_assert_eq!(needed & !mapped, 0, "a pack with live slots is not mapped");
        let empty = mapped & !needed;
        prop_assert!(
            empty.count_ones() <= 1,
            "more than one empty pack mapped: {:#x}",
            empty
        );
        prop_assert_eq!(stats.cached_packs as u32, empty.count_ones());
        prop_assert_eq!(stats.packs_mapped as u32, mapped.count_ones());
        prop_assert_eq!(
            self.alloc.backend().counts().violations,
            0,
            "backend misuse"
        );
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for (i, op) in ops.iter().enumerate() {
            self.step(op)?;
            if i % 64 == 63 {
                self.alloc.check_invariants();
            }
        }
        // Drain: everything frees, and one cached pack at most stays.
        let live: Vec<_> = self.live.iter().map(|(&a, &s)| (a, s)).collect();
        for (addr, size) in live {
            self.free_op(addr, size)?;
        }
        self.check_counters()?;
        self.alloc.check_invariants();
        prop_assert!(self.alloc.stats().packs_mapped <= 1);
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
    #![proptest_config(config(250))]
    /// A small pool: packs fill, empty, get cached and released; 250 × 1000 operations.
    #[test]
    fn small_pool(ops in proptest::collection::vec(op(false, 1, false), 1000)) {
        Model::new(6).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(250))]
    /// Three packs, large slots and a backend that runs out of frames; 250 × 1000 operations.
    #[test]
    fn large_slots_and_frame_exhaustion(ops in proptest::collection::vec(op(true, 1, true), 1000)) {
        Model::new(3).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(64))]
    /// The whole 64-pack window with large slots; 64 × 5000 operations.
    #[test]
    fn full_window(ops in proptest::collection::vec(op(true, 1, false), 5000)) {
        Model::new(64).run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(200))]
    /// Mostly bad calls, each refused with nothing changed; 200 × 1000 operations.
    #[test]
    fn bad_calls_change_nothing(ops in proptest::collection::vec(op(true, 12, true), 1000)) {
        Model::new(4).run(&ops)?;
    }
}
