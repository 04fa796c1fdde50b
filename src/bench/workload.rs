//! Workloads shared by all allocators: the size mixes (BPF programs, kernel modules, trampolines),
//! filling to a given number of packs and occupancy, steady-state alloc/free pairs, and churn: the
//! BPF churn ([`churn`]) and the load/unload churn of one or more kinds of user at once
//! ([`StreamChurn`]: modules alone, or modules, BPF programs and trampolines together).
//!
//! All randomness comes from a seeded [`Rng`], so a workload is the same sequence of requests for
//! every allocator and on every machine. Request sizes and victims of the measured loops are drawn
//! up front ([`Pairs`]) so the loop itself does little besides calling the allocator; the stream
//! churn keeps its own count of live bytes, so its decisions never depend on the allocator and a
//! run over [`super::NullSlots`] measures its loop exactly.

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

/// Octaves of [`module_size`]: sizes in `[2^(8 + i), 2^(9 + i))` for entry `i`, drawn with the
/// probability of the entry minus the one before, in units of 1/10000. The cumulative shares are
/// those of a log-normal with its median at 4 KiB, bent to the figures given for kernel modules'
/// text: half under 4 KiB, 90% under 32 KiB, 99% under 256 KiB, and one in a thousand past 2 MiB
/// (up to 8 MiB).
const MODULE_OCTAVES: [u16; 15] = [
    300,   // 256 B - 512 B
    1000,  // - 1 KiB
    2500,  // - 2 KiB
    5000,  // - 4 KiB: the median
    6800,  // - 8 KiB
    8100,  // - 16 KiB
    9000,  // - 32 KiB: p90
    9500,  // - 64 KiB
    9780,  // - 128 KiB
    9900,  // - 256 KiB: p99
    9950,  // - 512 KiB
    9975,  // - 1 MiB
    9990,  // - 2 MiB
    9997,  // - 4 MiB
    10000, // - 8 MiB
];

/// A size like a kernel module's text: a heavy tail, median about 4 KiB, p90 about 32 KiB, p99
/// about 256 KiB, one in a thousand over 2 MiB. Piecewise over octaves (`MODULE_OCTAVES`),
/// uniform within an octave; the host tests check the quantiles.
pub fn module_size(rng: &mut Rng) -> usize {
    let draw = rng.below(10000) as u16;
    let octave = MODULE_OCTAVES
        .iter()
        .position(|&share| draw < share)
        .unwrap_or(MODULE_OCTAVES.len() - 1);
    let low = 256u64 << octave;
    (low + rng.below(low)) as usize
}

/// Largest size [`module_size`] draws.
pub const MAX_MODULE_SIZE: usize = 256 << MODULE_OCTAVES.len();

/// A trampoline or probe slot: half are tracing trampolines (152 bytes: the entry, x0-x8 and
/// q0-q7 saved, the tracer called, the displaced instruction), a quarter probe slots (8 bytes:
/// the instruction stepped out of line and a branch back, one 64-byte chunk), and a quarter other
/// trampolines of 64 to 256 bytes.
pub fn trampoline_size(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 | 1 => 152,
        2 => 8,
        _ => 64 + rng.below(193) as usize,
    }
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
    let mut live_bytes = 0;
    while live_bytes < bytes {
        let size = bpf_size(rng);
        live.slots.push((a.alloc(size)?, size));
        live_bytes += size as u64;
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
    // The live bytes are counted here, not asked of the allocator: the decisions are the same for
    // every allocator, and the count covers the allocator's calls only, not its statistics.
    let mut bytes: u64 = live.slots.iter().map(|&(_, size)| size as u64).sum();
    for _ in 0..ops {
        if !live.slots.is_empty() {
            let victim = rng.below(live.slots.len() as u64) as usize;
            let size = live.slots[victim].1;
            live.free_at(a, victim)?;
            bytes -= size as u64;
        }
        while bytes < live_bytes {
            let size = bpf_size(rng);
            live.slots.push((a.alloc(size)?, size));
            bytes += size as u64;
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

/// One kind of user of exec memory in a [`StreamChurn`]: what sizes it asks for, how many live
/// bytes it keeps, how often a step is its turn, and how many slots one of its turns may replace.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Short name for reports.
    pub name: &'static str,
    /// Draws a request size.
    pub size: fn(&mut Rng) -> usize,
    /// Live bytes the stream keeps: after its turn it loads slots until it holds at least this.
    pub live_bytes: u64,
    /// Relative share of the steps that are this stream's turn.
    pub weight: u64,
    /// Most slots one turn unloads: with more than one, one turn in eight unloads from two to
    /// this many at once, and the loads that follow come as a burst.
    pub burst: u64,
}

impl Stream {
    /// Kernel modules ([`module_size`]) keeping `live_bytes`, one in eight unloads a burst of up
    /// to four.
    pub const fn modules(live_bytes: u64) -> Self {
        Self {
            name: "modules",
            size: module_size,
            live_bytes,
            weight: 1,
            burst: 4,
        }
    }

    /// JIT'd BPF programs ([`bpf_size`]), replaced one at a time.
    pub const fn bpf(live_bytes: u64) -> Self {
        Self {
            name: "bpf",
            size: bpf_size,
            live_bytes,
            weight: 2,
            burst: 1,
        }
    }

    /// Tracing trampolines and probe slots ([`trampoline_size`]), replaced one at a time.
    pub const fn trampolines(live_bytes: u64) -> Self {
        Self {
            name: "trampolines",
            size: trampoline_size,
            live_bytes,
            weight: 2,
            burst: 1,
        }
    }
}

/// What a [`StreamChurn`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChurnReport {
    /// Steps run.
    pub steps: u64,
    /// Allocator calls made by the steps (allocations and frees).
    pub ops: u64,
    /// Sum over the steps of the packs mapped after each.
    pub packs_sum: u64,
    /// Sum over the steps of the ideal packs after each: ceil(live bytes / 2 MiB).
    pub ideal_sum: u64,
    /// Most packs mapped after any step.
    pub packs_max: usize,
    /// Space figures after the last step.
    pub last: super::BenchStats,
}

impl ChurnReport {
    /// Average packs mapped over the steps, in hundredths.
    pub fn average_packs_x100(&self) -> u64 {
        (self.packs_sum * 100).checked_div(self.steps).unwrap_or(0)
    }

    /// Average ideal packs over the steps, in hundredths.
    pub fn average_ideal_x100(&self) -> u64 {
        (self.ideal_sum * 100).checked_div(self.steps).unwrap_or(0)
    }
}

/// Load/unload churn of several kinds of user at once, like a system that loads modules, JITs BPF
/// programs and traces functions: each step picks a stream by weight, unloads one random live slot
/// of it (or a burst), and loads new slots of it until it is back at its live bytes. Unloads and
/// loads are per stream, so every stream keeps its share of the pool and only the placement
/// decides how many packs the whole takes.
#[derive(Clone, Debug)]
pub struct StreamChurn {
    streams: Vec<Stream>,
    live: Vec<LiveSet>,
    /// Live bytes per stream, counted here (not asked of the allocator).
    bytes: Vec<u64>,
    total_weight: u64,
}

impl StreamChurn {
    /// A churn of `streams`, nothing loaded yet.
    pub fn new(streams: &[Stream]) -> Self {
        Self {
            streams: streams.to_vec(),
            live: streams.iter().map(|_| LiveSet::default()).collect(),
            bytes: streams.iter().map(|_| 0).collect(),
            total_weight: streams.iter().map(|s| s.weight).sum(),
        }
    }

    /// Live bytes of all streams.
    pub fn live_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Loads slots of stream `s` until it holds its live bytes. Returns the allocator calls made.
    fn load<A: SlotAllocator>(
        &mut self,
        a: &mut A,
        rng: &mut Rng,
        s: usize,
    ) -> Result<u64, AllocError> {
        let mut ops = 0;
        while self.bytes[s] < self.streams[s].live_bytes {
            let size = (self.streams[s].size)(rng);
            self.live[s].slots.push((a.alloc(size)?, size));
            self.bytes[s] += size as u64;
            ops += 1;
        }
        Ok(ops)
    }

    /// Loads every stream to its live bytes, interleaved (one slot of each in turn), as a system
    /// starting up would.
    pub fn fill<A: SlotAllocator>(&mut self, a: &mut A, rng: &mut Rng) -> Result<(), AllocError> {
        loop {
            let mut loaded = false;
            for s in 0..self.streams.len() {
                if self.bytes[s] < self.streams[s].live_bytes {
                    let size = (self.streams[s].size)(rng);
                    self.live[s].slots.push((a.alloc(size)?, size));
                    self.bytes[s] += size as u64;
                    loaded = true;
                }
            }
            if !loaded {
                return Ok(());
            }
        }
    }

    /// Runs `steps` steps and reports packs mapped after each (through
    /// [`SlotAllocator::packs_mapped`], cheap for every allocator, so sampling costs little).
    pub fn run<A: SlotAllocator>(
        &mut self,
        a: &mut A,
        rng: &mut Rng,
        steps: u64,
    ) -> Result<ChurnReport, AllocError> {
        let mut report = ChurnReport::default();
        for _ in 0..steps {
            let mut turn = rng.below(self.total_weight.max(1));
            let mut s = 0;
            while s + 1 < self.streams.len() && turn >= self.streams[s].weight {
                turn -= self.streams[s].weight;
                s += 1;
            }
            let burst = self.streams[s].burst;
            let unloads = if burst > 1 && rng.below(8) == 0 {
                2 + rng.below(burst - 1)
            } else {
                1
            };
            for _ in 0..unloads {
                let live = &mut self.live[s];
                if live.slots.is_empty() {
                    break;
                }
                let victim = rng.below(live.slots.len() as u64) as usize;
                let size = live.slots[victim].1;
                live.free_at(a, victim)?;
                self.bytes[s] -= size as u64;
                report.ops += 1;
            }
            report.ops += self.load(a, rng, s)?;
            let packs = a.packs_mapped();
            report.steps += 1;
            report.packs_sum += packs as u64;
            report.packs_max = report.packs_max.max(packs);
            report.ideal_sum += self.live_bytes().div_ceil(PACK_SIZE as u64);
        }
        report.last = a.stats();
        Ok(report)
    }

    /// Frees every live slot of every stream.
    pub fn free_all<A: SlotAllocator>(&mut self, a: &mut A) -> Result<(), AllocError> {
        for (live, bytes) in self.live.iter_mut().zip(&mut self.bytes) {
            live.free_all(a)?;
            *bytes = 0;
        }
        Ok(())
    }
}

/// The module-like churn: modules alone, `live_bytes` of them.
pub fn module_streams(live_bytes: u64) -> [Stream; 1] {
    [Stream::modules(live_bytes)]
}

/// The mixed churn at `live_bytes` in all: half of it modules, seven sixteenths BPF programs, a
/// sixteenth trampolines and probe slots (at 16 MiB: 8 MiB of modules, 7 MiB of BPF, 1 MiB of
/// trampolines, about 7000 of them).
pub fn mixed_streams(live_bytes: u64) -> [Stream; 3] {
    [
        Stream::modules(live_bytes / 2),
        Stream::bpf(live_bytes / 16 * 7),
        Stream::trampolines(live_bytes / 16),
    ]
}

/// Fills `streams` and runs `steps` steps of churn on a fresh `a`, from `seed`; frees everything
/// at the end. The space scenario of the host tests.
pub fn stream_churn<A: SlotAllocator>(
    a: &mut A,
    seed: u64,
    streams: &[Stream],
    steps: u64,
) -> Result<ChurnReport, AllocError> {
    let mut rng = Rng::new(seed);
    let mut churn = StreamChurn::new(streams);
    let result = churn
        .fill(a, &mut rng)
        .and_then(|()| churn.run(a, &mut rng, steps));
    churn.free_all(a)?;
    result
}
