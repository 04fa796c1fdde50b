//! Workloads shared by all allocators: the BPF size mix, filling to a given number of packs and
//! occupancy, steady-state alloc/free pairs, and churn.
//!
//! All randomness comes from a seeded [`Rng`], so a workload is the same sequence of requests for
//! every allocator and on every machine. Request sizes and victims of the measured loops are drawn
//! up front ([`Pairs`]) so the loop itself does little besides calling the allocator.

use alloc::vec::Vec;

use super::SlotAllocator;
use crate::pack::{AllocError, PACK_SIZE};

/// xorshift64* (Vigna 2016): small, fast and good enough to draw sizes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included): the state is seeded through SplitMix64,
    /// so nearby seeds give unrelated sequences.
    pub const fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        (self.next_u64() >> 11) % bound.max(1)
    }
}

/// A size from the BPF program mix reported for Meta's fleet (Song Liu, bpf_prog_pack cover
/// letter): half under 500 bytes, three quarters under 2 KiB, the rest up to 64 KiB. Here: 50%
/// uniform in 16..500, 25% uniform in 500..2048, 25% spread evenly over the octaves from 2 KiB to
/// 64 KiB (uniform within each).
pub fn bpf_size(rng: &mut Rng) -> usize {
    let bucket = rng.below(100);
    let size = if bucket < 50 {
        16 + rng.below(484)
    } else if bucket < 75 {
        500 + rng.below(1548)
    } else {
        let octave = 1 << (11 + rng.below(5));
        octave + rng.below(octave)
    };
    size as usize
}

/// The live slots of a workload.
#[derive(Clone, Debug, Default)]
pub struct LiveSet {
    /// Address and size of each live slot, in no particular order.
    pub slots: Vec<(u64, usize)>,
}

impl LiveSet {
    /// Frees the live slot at `index` (order is not kept).
    pub fn free_at<A: SlotAllocator>(&mut self, a: &mut A, index: usize) -> Result<(), AllocError> {
        let (addr, size) = self.slots.swap_remove(index);
        a.free(addr, size)
    }

    /// Frees every live slot.
    pub fn free_all<A: SlotAllocator>(&mut self, a: &mut A) -> Result<(), AllocError> {
        while let Some((addr, size)) = self.slots.pop() {
            a.free(addr, size)?;
        }
        Ok(())
    }
}

/// Fills `a` with BPF-mix slots until `packs` packs are mapped and full (the first allocation that
/// would map one more is undone, or the pool runs out), then frees random slots until the live
/// bytes are `occupancy_percent` of what they were.
pub fn fill<A: SlotAllocator>(
    a: &mut A,
    rng: &mut Rng,
    packs: usize,
    occupancy_percent: u64,
) -> Result<LiveSet, AllocError> {
    let mut live = LiveSet::default();
    loop {
        let size = bpf_size(rng);
        match a.alloc(size) {
            Ok(addr) if a.stats().packs_mapped > packs => {
                a.free(addr, size)?;
                break;
            }
            Ok(addr) => live.slots.push((addr, size)),
            Err(AllocError::PoolExhausted { .. } | AllocError::MapFailed(_)) => break,
            Err(error) => return Err(error),
        }
    }
    let target = a.stats().bytes_live * occupancy_percent / 100;
    while a.stats().bytes_live > target && !live.slots.is_empty() {
        let victim = rng.below(live.slots.len() as u64) as usize;
        live.free_at(a, victim)?;
    }
    Ok(live)
}

/// Allocates BPF-mix slots until `bytes` live bytes are reached.
pub fn fill_bytes<A: SlotAllocator>(
    a: &mut A,
    rng: &mut Rng,
    bytes: u64,
) -> Result<LiveSet, AllocError> {
    let mut live = LiveSet::default();
    while a.stats().bytes_live < bytes {
        let size = bpf_size(rng);
        live.slots.push((a.alloc(size)?, size));
    }
    Ok(live)
}

/// A measured loop drawn in advance: each pair allocates `sizes[i]` and then frees the live slot
/// at `victims[i]`, which the new slot replaces, so the live set stays the same size and the frees
/// hit slots all over the pool, as in steady state.
#[derive(Clone, Debug, Default)]
pub struct Pairs {
    /// Request sizes.
    pub sizes: Vec<usize>,
    /// Indices into the live set, below its length.
    pub victims: Vec<usize>,
}

impl Pairs {
    /// `count` pairs over a live set of `live` slots (`live > 0`).
    pub fn new(rng: &mut Rng, count: usize, live: usize) -> Self {
        let sizes = (0..count).map(|_| bpf_size(rng)).collect();
        let victims = (0..count)
            .map(|_| rng.below(live as u64) as usize)
            .collect();
        Self { sizes, victims }
    }

    /// Runs the pairs. This is the loop to count instructions around.
    pub fn run<A: SlotAllocator>(&self, a: &mut A, live: &mut LiveSet) -> Result<(), AllocError> {
        for (&size, &victim) in self.sizes.iter().zip(&self.victims) {
            let addr = a.alloc(size)?;
            let Some(slot) = live.slots.get_mut(victim) else {
                continue;
            };
            let (old, old_size) = core::mem::replace(slot, (addr, size));
            a.free(old, old_size)?;
        }
        Ok(())
    }
}

/// `ops` steps of churn at a steady `live_bytes`: free a random live slot, then allocate BPF-mix
/// slots until the live bytes are back at the target. Programs are replaced, not accumulated: the
/// live bytes stay within one slot of the target, so what grows is only fragmentation. (Freeing one
/// and allocating one would let the live bytes drift as a random walk, and the packs mapped would
/// then measure the walk's peak rather than the allocator.)
pub fn churn<A: SlotAllocator>(
    a: &mut A,
    rng: &mut Rng,
    live: &mut LiveSet,
    live_bytes: u64,
    ops: usize,
) -> Result<(), AllocError> {
    for _ in 0..ops {
        if !live.slots.is_empty() {
            let victim = rng.below(live.slots.len() as u64) as usize;
            live.free_at(a, victim)?;
        }
        while a.stats().bytes_live < live_bytes {
            let size = bpf_size(rng);
            live.slots.push((a.alloc(size)?, size));
        }
    }
    Ok(())
}

/// The space scenario: `live_bytes` of BPF-mix slots, then `rounds` times as many churn steps as
/// there are live slots (each slot replaced `rounds` times on average). Returns the space figures
/// at the end (live/reserved is the density) and frees everything.
pub fn density_after_churn<A: SlotAllocator>(
    a: &mut A,
    seed: u64,
    live_bytes: u64,
    rounds: usize,
) -> Result<super::BenchStats, AllocError> {
    let mut rng = Rng::new(seed);
    let mut live = fill_bytes(a, &mut rng, live_bytes)?;
    let ops = live.slots.len() * rounds;
    churn(a, &mut rng, &mut live, live_bytes, ops)?;
    let stats = a.stats();
    live.free_all(a)?;
    Ok(stats)
}

/// Largest request of the mix, for sizing pools.
pub const MAX_BPF_SIZE: usize = 1 << 16;

const _: () = assert!(MAX_BPF_SIZE < PACK_SIZE);
