//! The benchmark (`make bench`): guest instructions per operation, counted by the PMU
//! (INST_RETIRED) under QEMU `-icount shift=0`, where the count is exact, so every figure is the
//! same on every run. Each figure is the median over several rounds.
//!
//! Workloads (issue #6, and (i)/(j) from issue 13), all four allocators over the same requests and
//! the same backend (execmem, Linux's bpf_prog_pack, buddy_system_allocator, and rlsf over a
//! shadow arena from the heap, of the pool window's size where the heap holds it: see [`HEAP`]):
//! - (a) alloc+free pairs of 64 B, 512 B and 4 KiB, with 1, 8 and 64 packs filled with BPF-sized
//!   programs to 10, 50 and 90% occupancy; each pair allocates one slot and frees a random live one,
//!   so frees land all over the pool as in steady state;
//! - (b) churn: 100,000 frees, each followed by BPF-sized allocations back to a fixed live size;
//!   live/reserved density and packs used against the ideal ceil(live / 2 MiB);
//! - (i) module-like churn: kernel-module sizes (heavy tail, median 4 KiB, past 2 MiB at the top)
//!   loaded and unloaded, sometimes in bursts, at a fixed live size; (j) the mixed churn: modules,
//!   BPF programs and trampolines at once ([`workload::StreamChurn`]); packs mapped on average
//!   over the steps and at most, against the ideal, final density, instructions per operation;
//! - (c) `text_copy` of 4 B, 256 B, 4 KiB and 64 KiB on the real backend, against the floor: a plain
//!   copy into RW memory plus the cache maintenance that range needs;
//! - (d) `patch_insn` (NOP <-> B), against one store plus the maintenance of one instruction;
//! - (e) SMP, (f) publication (see their functions);
//! - (g) the module loader: load and unload per module, per relocation, per KiB of text;
//! - (h) tracing (trace, untrace, a traced call) and probes (a hit, out of line and simulated).
//!
//! The allocator workloads run over [`NullBackend`] (mapping and BRK fill cost nothing), so they
//! measure the allocators alone; the loop's own cost, measured with [`NullSlots`], is subtracted.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::arch::aarch64::{cache, pmu};
use crate::bench::bpf_prog_pack::BpfProgPack;
use crate::bench::buddy::BuddySlots;
use crate::bench::tlsf::TlsfSlots;
use crate::bench::workload::{self, ChurnReport, LiveSet, Pairs, Rng, Stream, StreamChurn};
use crate::bench::{NullBackend, NullFill, NullSlots, SlotAllocator};
use crate::mmu::El1And0;
use crate::pack::magazine::{CpuMagazines, Magazines};
use crate::pack::{AllocError, PACK_SIZE, PackAllocator};
use crate::poke::insn;
use crate::println;
use crate::runtime::{exec_pool, poke, slot};

/// How much work: the full benchmark, or a smoke run that only proves it still works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// `make bench`.
    Full,
    /// `make test`: tiny sizes, same code paths.
    Smoke,
}

struct Config {
    rounds: usize,
    pairs: usize,
    pack_counts: &'static [usize],
    occupancies: &'static [u64],
    sizes: &'static [usize],
    churn_ops: usize,
    churn_live: &'static [u64],
    module_live: &'static [u64],
    mixed_live: &'static [u64],
    stream_steps: u64,
    copy_sizes: &'static [usize],
    copy_reps: usize,
    smp_pairs: usize,
}

impl Config {
    fn of(scale: Scale) -> Self {
        match scale {
            Scale::Full => Self {
                rounds: 5,
                pairs: 200,
                pack_counts: &[1, 8, 64],
                occupancies: &[10, 50, 90],
                sizes: &[64, 512, 4096],
                churn_ops: 100_000,
                churn_live: &[32 << 20, 100 << 20],
                module_live: &[4 << 20, 16 << 20],
                mixed_live: &[16 << 20, 32 << 20],
                stream_steps: 20_000,
                copy_sizes: &[4, 256, 4096, 65536],
                copy_reps: 20,
                smp_pairs: 2000,
            },
            Scale::Smoke => Self {
                rounds: 3,
                pairs: 10,
                pack_counts: &[1, 2],
                occupancies: &[50],
                sizes: &[64, 4096],
                churn_ops: 200,
                churn_live: &[2 << 20],
                module_live: &[4 << 20],
                mixed_live: &[4 << 20],
                stream_steps: 100,
                copy_sizes: &[4, 4096],
                copy_reps: 2,
                smp_pairs: 50,
            },
        }
    }
}

/// The pool the allocator workloads run in: 64 packs (the most a pool can have), never mapped.
const SIM_BASE: u64 = 0x40_0000_0000;
const SIM_PACKS: usize = 64;

/// The kernel heap the benchmark kernel asks for (`entry!(main, heap = HEAP)`, `src/bin/bench.rs`),
/// where the machine has the RAM (`make bench` boots `virt` with 512 MiB): twice rlsf's shadow arena
/// of `SIM_PACKS` packs. A buddy heap hands out a block of 2^n bytes only where one lies
/// 2^n-aligned inside it, and any 2^(n+1) bytes hold one such block wherever they start; the rest
/// holds the arena's size table (arena / 16) and what the kernel allocates besides.
pub const HEAP: u64 = 2 * (SIM_PACKS * PACK_SIZE) as u64;

/// One measured figure.
struct Figure {
    workload: &'static str,
    allocator: &'static str,
    params: String,
    value: u64,
    unit: &'static str,
}

/// Median instructions per operation of `rounds` runs of `run`, each doing `ops` operations.
fn median_per_op(rounds: usize, ops: usize, mut run: impl FnMut()) -> u64 {
    let mut samples: Vec<u64> = (0..rounds)
        .map(|_| {
            let start = pmu::instructions();
            run();
            u64::from(pmu::instructions().wrapping_sub(start)) / ops.max(1) as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The lock the manager puts around each CPU's magazines and the shared allocator: a spin lock
/// taken with interrupts masked (the demo's platform; the regime does not matter to a lock).
type ManagerLock<T> = crate::manager::lock::IrqMutex<crate::runtime::exec_pool::Demo<El1And0>, T>;

/// What the manager runs: one CPU's magazines in front of the shared allocator, with the
/// manager's locks (a no-op fill, as the backend is).
type ManagerSlots = Magazines<
    NullBackend,
    ManagerLock<PackAllocator<NullBackend>>,
    ManagerLock<CpuMagazines>,
    NullFill,
>;

fn magazine_allocator() -> ManagerSlots {
    Magazines::new(shared_allocator(), NullFill, 1).expect("one CPU, an empty pool")
}

fn shared_allocator() -> PackAllocator<NullBackend> {
    PackAllocator::new(NullBackend, SIM_BASE, SIM_PACKS).expect("a 64-pack pool is valid")
}

fn linux_allocator() -> BpfProgPack<NullBackend> {
    BpfProgPack::new(NullBackend, SIM_BASE, SIM_PACKS)
}

fn buddy_allocator() -> BuddySlots<NullBackend> {
    BuddySlots::new(NullBackend, SIM_BASE, SIM_PACKS)
}

/// rlsf over a shadow arena from the heap: of the pool's 64 packs if the heap can give them, else
/// the largest power-of-two number of packs it can. The benchmark kernel asks for a heap of
/// [`HEAP`] bytes, which holds the whole 128 MiB; with the board's 32 MiB heap (`make test`'s smoke
/// run, or a machine without the RAM) the arena is at most 16 MiB, and rlsf's rows of workloads
/// that need more say so. `None` if not even one pack fits.
fn rlsf_allocator() -> Option<TlsfSlots<NullBackend>> {
    TlsfSlots::new_fitting(NullBackend, SIM_BASE, SIM_PACKS).ok()
}

/// Runs `$body` with `$a` bound to a fresh instance of each allocator in turn (statically
/// dispatched, so no allocator pays for a virtual call), `$which` its column.
macro_rules! for_each_allocator {
    (|$which:ident, $a:ident| $body:block) => {{
        {
            let $which = 0usize;
            let mut $a = magazine_allocator();
            $body
        }
        {
            let $which = 1usize;
            let mut $a = shared_allocator();
            $body
        }
        {
            let $which = 2usize;
            let mut $a = linux_allocator();
            $body
        }
        {
            let $which = 3usize;
            let mut $a = buddy_allocator();
            $body
        }
        if let Some(mut $a) = rlsf_allocator() {
            let $which = 4usize;
            $body
        }
    }};
}

/// Pairs of fixed `size` requests over a live set of `live` slots.
fn fixed_pairs(rng: &mut Rng, count: usize, size: usize, live: usize) -> Pairs {
    Pairs {
        sizes: vec![size; count],
        victims: (0..count)
            .map(|_| rng.below(live as u64) as usize)
            .collect(),
    }
}

/// Loop overhead of `Pairs::run` per pair, from the allocator that does nothing.
fn pairs_overhead(config: &Config) -> u64 {
    let mut null = NullSlots::default();
    let mut rng = Rng::new(1);
    let mut live = LiveSet {
        slots: (0..64).map(|i| (i * 64, 64)).collect(),
    };
    let pairs = fixed_pairs(&mut rng, config.pairs, 64, live.slots.len());
    median_per_op(config.rounds, config.pairs, || {
        let _ = pairs.run(&mut null, &mut live);
    })
}

fn workload_pairs(config: &Config, out: &mut Vec<Figure>) {
    let overhead = pairs_overhead(config);
    println!(
        "(a) alloc+free pairs: instructions per pair, median of {} rounds of {} pairs (loop overhead {overhead} subtracted)",
        config.rounds, config.pairs
    );
    println!(
        "    (execmem: the manager's path, this CPU's magazines in front of the shared allocator; shared: the shared allocator alone; ratios: theirs / execmem's)"
    );
    println!(
        "    {:>6} {:>5} {:>4} | {:>9} | {:>9} {:>7} | {:>14} {:>7} | {:>9} {:>7} | {:>9} {:>7}",
        "size",
        "packs",
        "occ",
        "execmem",
        "shared",
        "ratio",
        "bpf_prog_pack",
        "ratio",
        "buddy",
        "ratio",
        "rlsf",
        "ratio"
    );
    for &packs in config.pack_counts {
        for &occupancy in config.occupancies {
            let mut row: Vec<(usize, [u64; 5])> =
                config.sizes.iter().map(|&s| (s, [0; 5])).collect();
            for_each_allocator!(|which, a| {
                let mut rng = Rng::new(packs as u64 * 1000 + occupancy);
                // rlsf's arena may hold fewer packs than the row asks for: no figure then.
                if a.pool_packs() >= packs
                    && let Ok(mut live) = workload::fill(&mut a, &mut rng, packs, occupancy)
                    && !live.slots.is_empty()
                {
                    for (size, values) in row.iter_mut() {
                        let pairs = fixed_pairs(&mut rng, config.pairs, *size, live.slots.len());
                        let mut refused = None;
                        let per_pair = median_per_op(config.rounds, config.pairs, || {
                            if let Err(e) = pairs.run(&mut a, &mut live) {
                                refused = Some(e);
                            }
                        });
                        if let Some(e) = refused {
                            // A refused call ends the run early: its count would flatter.
                            println!("    {} refused a pair ({e}): no figure", a.name());
                            continue;
                        }
                        values[which] = per_pair.saturating_sub(overhead);
                        out.push(Figure {
                            workload: "alloc_free_pair",
                            allocator: a.name(),
                            params: alloc::format!(
                                "\"size\": {size}, \"packs\": {packs}, \"occupancy\": {occupancy}"
                            ),
                            value: values[which],
                            unit: "instructions",
                        });
                    }
                    let _ = live.free_all(&mut a);
                }
            });
            for (size, [ours, shared, linux, buddy, tlsf]) in row {
                let tlsf_cells = if tlsf == 0 {
                    alloc::format!("{:>9} {:>7}", "-", "")
                } else {
                    alloc::format!("{:>9} {:>6.1}x", tlsf, ratio(tlsf, ours))
                };
                println!(
                    "    {:>6} {:>5} {:>3}% | {:>9} | {:>9} {:>6.1}x | {:>14} {:>6.1}x | {:>9} {:>6.1}x | {tlsf_cells}",
                    size,
                    packs,
                    occupancy,
                    ours,
                    shared,
                    ratio(shared, ours),
                    linux,
                    ratio(linux, ours),
                    buddy,
                    ratio(buddy, ours)
                );
            }
        }
    }
}

fn ratio(theirs: u64, ours: u64) -> f64 {
    theirs as f64 / ours.max(1) as f64
}

fn workload_churn(config: &Config, out: &mut Vec<Figure>) {
    println!(
        "(b) churn: {} frees, each refilled with BPF-sized programs to a fixed live size",
        config.churn_ops
    );
    print_arena();
    println!(
        "    {:>8} | {:>22} | {:>9} {:>8} {:>6} {:>6} | {:>10}",
        "live", "allocator", "density", "reserved", "packs", "ideal", "insns/op"
    );
    for &live_bytes in config.churn_live {
        for_each_allocator!(|_which, a| {
            let mut rng = Rng::new(live_bytes);
            let result = workload::fill_bytes(&mut a, &mut rng, live_bytes).and_then(|mut live| {
                let start = pmu::instructions();
                workload::churn(&mut a, &mut rng, &mut live, live_bytes, config.churn_ops)?;
                let insns =
                    u64::from(pmu::instructions().wrapping_sub(start)) / config.churn_ops as u64;
                let stats = SlotAllocator::stats(&a);
                live.free_all(&mut a)?;
                Ok((stats, insns))
            });
            let name = a.name();
            match result {
                Ok((stats, insns)) => {
                    let ideal = stats.bytes_live.div_ceil(PACK_SIZE as u64);
                    let density = stats.density_permille();
                    println!(
                        "    {:>6} M | {:>22} | {:>7}.{}% {:>6} M {:>6} {:>6} | {:>10}",
                        live_bytes >> 20,
                        name,
                        density / 10,
                        density % 10,
                        stats.bytes_reserved >> 20,
                        stats.packs_mapped,
                        ideal,
                        insns
                    );
                    let params = alloc::format!(
                        "\"live_bytes\": {live_bytes}, \"ops\": {}",
                        config.churn_ops
                    );
                    for (workload, value, unit) in [
                        ("churn_density", density, "permille"),
                        ("churn_packs", stats.packs_mapped as u64, "packs"),
                        ("churn_ideal_packs", ideal, "packs"),
                        ("churn_op", insns, "instructions"),
                    ] {
                        out.push(Figure {
                            workload,
                            allocator: name,
                            params: params.clone(),
                            value,
                            unit,
                        });
                    }
                }
                Err(e) => println!(
                    "    {:>6} M | {:>22} | failed: {e} (pool of {} MiB)",
                    live_bytes >> 20,
                    name,
                    (a.pool_packs() * PACK_SIZE) >> 20
                ),
            }
        });
    }
}

/// Says how large rlsf's shadow arena is here, against the pool window of the others, and how
/// much of the kernel heap is in use without it.
fn print_arena() {
    let (used, total) = crate::runtime::heap::usage();
    let heap = alloc::format!("{} MiB kernel heap, {} KiB in use", total >> 20, used >> 10);
    match rlsf_allocator() {
        Some(a) => println!(
            "    (rlsf's shadow arena: {} MiB of the {heap}, against the {} MiB pool window of the others)",
            (a.pool_packs() * PACK_SIZE) >> 20,
            (SIM_PACKS * PACK_SIZE) >> 20
        ),
        None => println!("    (rlsf: the {heap} cannot hold a shadow arena of one pack)"),
    }
}

/// One stream churn, (i) or (j): its heading, its streams, and the names of its figures in the
/// JSON (average packs, most packs, average ideal packs, final density, instructions per call).
struct StreamWorkload {
    tag: &'static str,
    title: &'static str,
    figures: [&'static str; 5],
    streams: fn(u64) -> Vec<Stream>,
}

const MODULE_CHURN: StreamWorkload = StreamWorkload {
    tag: "(i)",
    title: "module-like churn: kernel-module sizes loaded and unloaded (one unload in eight a burst of 2-4) at a fixed live size",
    figures: [
        "module_churn_packs_avg",
        "module_churn_packs_max",
        "module_churn_ideal_avg",
        "module_churn_density",
        "module_churn_op",
    ],
    streams: |live| workload::module_streams(live).to_vec(),
};

const MIXED_CHURN: StreamWorkload = StreamWorkload {
    tag: "(j)",
    title: "mixed churn: modules (1/2 of the live bytes), BPF programs (7/16), trampolines and probe slots (1/16) at once",
    figures: [
        "mixed_churn_packs_avg",
        "mixed_churn_packs_max",
        "mixed_churn_ideal_avg",
        "mixed_churn_density",
        "mixed_churn_op",
    ],
    streams: |live| workload::mixed_streams(live).to_vec(),
};

/// Fills `streams` from `seed` and runs `steps` steps on `a`, counting instructions over the
/// steps only; frees everything after.
fn measure_streams<A: SlotAllocator>(
    a: &mut A,
    streams: &[Stream],
    seed: u64,
    steps: u64,
) -> Result<(ChurnReport, u64), AllocError> {
    let mut rng = Rng::new(seed);
    let mut churn = StreamChurn::new(streams);
    let result = churn.fill(a, &mut rng).and_then(|()| {
        let start = pmu::instructions();
        let report = churn.run(a, &mut rng, steps)?;
        Ok((report, u64::from(pmu::instructions().wrapping_sub(start))))
    });
    churn.free_all(a)?;
    result
}

/// A stream churn, (i) or (j): for each live size every allocator runs the same steps from the
/// same seed (the live size, as in the host test `bench::tests::stream_churn_targets`); packs are
/// sampled after every step; instructions per allocator call are counted over the steps, less the
/// same steps over [`NullSlots`] (the loop, the draws and the sampling).
fn workload_streams(config: &Config, out: &mut Vec<Figure>, w: &StreamWorkload, lives: &[u64]) {
    println!(
        "{} {}: {} steps after the fill",
        w.tag, w.title, config.stream_steps
    );
    println!(
        "    {:>8} | {:>22} | {:>9} {:>5} {:>9} | {:>8} | {:>10}",
        "live", "allocator", "packs avg", "max", "ideal avg", "density", "insns/op"
    );
    for &live_bytes in lives {
        let streams = (w.streams)(live_bytes);
        let steps = config.stream_steps;
        let overhead = measure_streams(&mut NullSlots::default(), &streams, live_bytes, steps)
            .map_or(0, |(_, insns)| insns);
        for_each_allocator!(|_which, a| {
            let name = a.name();
            match measure_streams(&mut a, &streams, live_bytes, steps) {
                Ok((report, insns)) => {
                    let per_op = insns.saturating_sub(overhead) / report.ops.max(1);
                    let (avg, ideal) = (report.average_packs_x100(), report.average_ideal_x100());
                    let density = report.last.density_permille();
                    println!(
                        "    {:>6} M | {:>22} | {:>6}.{:02} {:>5} {:>6}.{:02} | {:>6}.{}% | {:>10}",
                        live_bytes >> 20,
                        name,
                        avg / 100,
                        avg % 100,
                        report.packs_max,
                        ideal / 100,
                        ideal % 100,
                        density / 10,
                        density % 10,
                        per_op
                    );
                    let params = alloc::format!("\"live_bytes\": {live_bytes}, \"steps\": {steps}");
                    let values = [avg, report.packs_max as u64, ideal, density, per_op];
                    let units = [
                        "packs_x100",
                        "packs",
                        "packs_x100",
                        "permille",
                        "instructions",
                    ];
                    for ((workload, value), unit) in w.figures.into_iter().zip(values).zip(units) {
                        out.push(Figure {
                            workload,
                            allocator: name,
                            params: params.clone(),
                            value,
                            unit,
                        });
                    }
                }
                Err(e) => println!(
                    "    {:>6} M | {:>22} | failed: {e} (pool of {} MiB)",
                    live_bytes >> 20,
                    name,
                    (a.pool_packs() * PACK_SIZE) >> 20
                ),
            }
        });
    }
}

/// A 64 KiB RW buffer, line aligned, for the floors.
#[repr(C, align(4096))]
struct Scratch([u8; 65536]);

fn workload_text(config: &Config, out: &mut Vec<Figure>) {
    let plan = exec_pool::maintenance_plan();
    let Ok(target) = slot::alloc(65536) else {
        println!("(c) text_copy: no exec slot");
        return;
    };
    let source: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let mut scratch = Box::new(Scratch([0; 65536]));
    println!(
        "(c) text_copy and slot write on the real backend ({plan}), instructions per call, median of {} rounds of {}",
        config.rounds, config.copy_reps
    );
    println!(
        "    {:>6} | {:>10} | {:>10} | {:>10} | {:>6} | {:>6}",
        "bytes", "text_copy", "slot write", "floor", "ratio", "ratio"
    );
    for &size in config.copy_sizes {
        // The raw poke (bounded by the pack), and the slot API's write (the handle checked to be
        // a live slot of its size first, under the allocator's lock).
        let copy = median_per_op(config.rounds, config.copy_reps, || {
            for _ in 0..config.copy_reps {
                let _ = poke::text_copy(target.addr(), &source[..size]);
            }
        });
        let write = median_per_op(config.rounds, config.copy_reps, || {
            for _ in 0..config.copy_reps {
                let _ = slot::write(&target, 0, &source[..size]);
            }
        });
        let buf = scratch.0.as_mut_ptr();
        let floor = median_per_op(config.rounds, config.copy_reps, || {
            for _ in 0..config.copy_reps {
                // SAFETY: `size` <= 64 KiB fits the scratch buffer; source and buffer do not overlap.
                unsafe { core::ptr::copy_nonoverlapping(source.as_ptr(), buf, size) };
                cache::sync_code_range(plan, buf as u64, buf as u64 + size as u64);
            }
        });
        println!(
            "    {:>6} | {:>10} | {:>10} | {:>10} | {:>5.2}x | {:>5.2}x",
            size,
            copy,
            write,
            floor,
            ratio(copy, floor),
            ratio(write, floor)
        );
        for (workload, allocator, value) in [
            ("text_copy", "execmem", copy),
            ("text_copy", "floor", floor),
            ("slot_write", "execmem", write),
        ] {
            out.push(Figure {
                workload,
                allocator,
                params: alloc::format!("\"bytes\": {size}"),
                value,
                unit: "instructions",
            });
        }
    }

    let at = target.addr();
    let _ = poke::text_set(at, insn::nop(), 1);
    let branch = insn::b(at, at + 4).expect("branch to the next instruction");
    let patches = median_per_op(config.rounds, 2 * config.copy_reps, || {
        for _ in 0..config.copy_reps {
            let _ = poke::patch_insn(at, insn::nop(), branch);
            let _ = poke::patch_insn(at, branch, insn::nop());
        }
    });
    let word = scratch.0.as_mut_ptr().cast::<u32>();
    let floor = median_per_op(config.rounds, config.copy_reps, || {
        for _ in 0..config.copy_reps {
            // SAFETY: an aligned word of the scratch buffer.
            unsafe { word.write_volatile(branch) };
            cache::sync_code_range(plan, word as u64, word as u64 + 4);
        }
    });
    println!(
        "(d) patch_insn (NOP <-> B, checked, one aligned store): {patches} instructions; floor (store + maintenance) {floor}: {:.2}x",
        ratio(patches, floor)
    );
    out.push(Figure {
        workload: "patch_insn",
        allocator: "execmem",
        params: String::from("\"bytes\": 4"),
        value: patches,
        unit: "instructions",
    });
    out.push(Figure {
        workload: "patch_insn",
        allocator: "floor",
        params: String::from("\"bytes\": 4"),
        value: floor,
        unit: "instructions",
    });
    let _ = slot::free(target);
}

/// One CPU's cost of answering a publication request, measured on that CPU: `n` times an
/// [`crate::runtime::gic::SGI_SYNC`] sent to itself, taken (exception entry with the full frame),
/// answered (GIC acknowledge, ISB, the answer, end of interrupt) and returned from. Instructions
/// per answer, the send included.
fn answer_cost(n: u64) -> u64 {
    pmu::init();
    let start = pmu::instructions();
    for _ in 0..n {
        crate::runtime::gic::send_to_self(crate::runtime::gic::SGI_SYNC);
        // The interrupt is taken within a few instructions of the write reaching the GIC.
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }
    u64::from(pmu::instructions().wrapping_sub(start)) / n.max(1)
}

/// (f) The publication contract's cost: `publish` alone on the writing CPU with the others online
/// and idle, one answer on a receiving CPU, and a 4-byte slot write published each time against
/// sixteen published once (`write_all`), per write.
fn workload_publish(config: &Config, out: &mut Vec<Figure>) {
    let online = crate::runtime::smp::online_mask();
    let others = (1..64).filter(|&c| online & (1 << c) != 0).count();
    let reps = config.copy_reps;
    let publish = median_per_op(config.rounds, reps, || {
        for _ in 0..reps {
            let _ = poke::publish();
        }
    });
    let answer = (1..64)
        .find(|&c| online & (1 << c) != 0)
        .and_then(|c| crate::runtime::smp::run_on(c, answer_cost, reps as u64).ok());
    let slots: Vec<_> = (0..16).filter_map(|_| slot::alloc(64).ok()).collect();
    let code = insn::ret().to_le_bytes();
    let each = median_per_op(config.rounds, reps * slots.len(), || {
        for _ in 0..reps {
            for s in &slots {
                let _ = slot::write(s, 0, &code);
            }
        }
    });
    let writes: Vec<(&crate::manager::ExecSlot, usize, &[u8])> =
        slots.iter().map(|s| (s, 0, &code[..])).collect();
    let batched = median_per_op(config.rounds, reps * slots.len(), || {
        for _ in 0..reps {
            let _ = slot::write_all(&writes);
        }
    });
    println!(
        "(f) publication to {others} other CPUs (an SGI each; each answers with an ISB), instructions"
    );
    println!("    publish alone, on the writing CPU: {publish}");
    match answer {
        Some(answer) => println!("    one answer, on a receiving CPU: {answer}"),
        None => println!("    one answer, on a receiving CPU: no other CPU online"),
    }
    println!(
        "    4-byte slot write, published each time: {each}; {} written, published once (write_all): {batched} per write",
        slots.len()
    );
    println!(
        "    without the publication a write would cost about {} here, and every CPU would owe an ISB before each first call",
        each.saturating_sub(publish)
    );
    for (workload, allocator, params, value) in [
        (
            "publish",
            "execmem",
            alloc::format!("\"cpus\": {}", others + 1),
            publish,
        ),
        (
            "publish_answer",
            "execmem",
            alloc::format!("\"cpus\": {}", others + 1),
            answer.unwrap_or(0),
        ),
        (
            "slot_write_published",
            "execmem",
            String::from("\"bytes\": 4, \"batch\": 1"),
            each,
        ),
        (
            "slot_write_published",
            "execmem",
            alloc::format!("\"bytes\": 4, \"batch\": {}", slots.len()),
            batched,
        ),
    ] {
        out.push(Figure {
            workload,
            allocator,
            params,
            value,
            unit: "instructions",
        });
    }
    for s in slots {
        let _ = slot::free(s);
    }
}

/// Alloc+free pairs of a 64-byte slot on the kernel's manager (the real backend: BRK refill through
/// the poke, locks), `pairs` of them, on the calling CPU: instructions per pair.
fn slot_pairs(pairs: u64) -> u64 {
    pmu::init();
    let start = pmu::instructions();
    for _ in 0..pairs {
        if let Ok(slot) = slot::alloc(64) {
            let _ = slot::free(slot);
        }
    }
    u64::from(pmu::instructions().wrapping_sub(start)) / pairs.max(1)
}

/// (e) SMP: the kernel's alloc+free pair on one CPU and on every CPU at once (instructions per
/// pair on each CPU), and `patch_batch` of one instruction with the other CPUs online (each
/// stops in the rendezvous).
fn workload_smp(config: &Config, out: &mut Vec<Figure>) {
    let online = crate::runtime::smp::online_mask();
    let others: Vec<usize> = (1..64).filter(|&c| online & (1 << c) != 0).collect();
    let pairs = config.smp_pairs as u64;
    println!(
        "(e) SMP, {} CPUs online: the kernel's 64-byte alloc+free pair (real backend), instructions per pair",
        others.len() + 1
    );
    let alone = slot_pairs(pairs);
    for &c in &others {
        let _ = crate::runtime::smp::start_on(c, slot_pairs, pairs);
    }
    let here = slot_pairs(pairs);
    let mut all = alloc::vec![here];
    for &c in &others {
        all.push(crate::runtime::smp::finish(c, 600_000).unwrap_or(0));
    }
    let worst = all.iter().copied().max().unwrap_or(0);
    println!(
        "    one CPU alone: {alone}; all {} at once: {} per CPU (worst {worst}, {:.2}x alone)",
        all.len(),
        all.iter()
            .map(|v| alloc::format!("{v}"))
            .collect::<Vec<_>>()
            .join(" / "),
        ratio(worst, alone)
    );
    out.push(Figure {
        workload: "smp_slot_pair",
        allocator: "execmem",
        params: String::from("\"cpus\": 1"),
        value: alone,
        unit: "instructions",
    });
    out.push(Figure {
        workload: "smp_slot_pair",
        allocator: "execmem",
        params: alloc::format!("\"cpus\": {}", all.len()),
        value: worst,
        unit: "instructions",
    });

    let Ok(target) = slot::alloc(64) else {
        return;
    };
    let at = target.addr();
    let a = insn::movz(insn::W0, 1, 0).expect("movz");
    let b = insn::movz(insn::W0, 2, 0).expect("movz");
    let _ = poke::text_set(at, a, 1);
    let batches = median_per_op(config.rounds, 2 * config.copy_reps, || {
        for _ in 0..config.copy_reps {
            let _ = poke::patch_batch(&[(at, b)]);
            let _ = poke::patch_batch(&[(at, a)]);
        }
    });
    println!(
        "    patch_batch of one instruction, {} other CPUs stopped each time: {batches} instructions on the patching CPU",
        others.len()
    );
    out.push(Figure {
        workload: "patch_batch",
        allocator: "execmem",
        params: alloc::format!("\"cpus\": {}", others.len() + 1),
        value: batches,
        unit: "instructions",
    });
    let _ = slot::free(target);
}

/// (g) The module loader: load and unload of each test module (parse, place, link, write and
/// publish the text, seal rodata, run init; then exit and free), the link step's cost per
/// relocation (the same object with every relocation turned into R_AARCH64_NONE, subtracted), and
/// the cost per KiB of text (a module of 64 KiB of code and no relocation).
fn workload_modules(config: &Config, out: &mut Vec<Figure>) {
    use crate::module::Segment;
    use crate::module::elf::Object;
    use crate::runtime::modules;
    println!(
        "(g) module loader: instructions per load and per unload (text written through the poke and published)"
    );
    modules::set_log(false);
    // A slot kept live throughout keeps a pack mapped: otherwise each load into the empty pool
    // would map a fresh pack (2 MiB of BRK filled through the fixmap), which is the pool's cost,
    // not the loader's.
    let keep = slot::alloc(64).ok();
    for (name, file) in MODULES {
        let mut text = 0;
        let mut relocations = 0;
        let mut unload_cost = Vec::new();
        let load_cost = median_per_op(config.rounds, 1, || {
            // SAFETY: the test modules are this repository's own; none is running.
            let id = match unsafe { modules::load(name, file) } {
                Ok(id) => id,
                Err(e) => {
                    println!("    {name}: {e}");
                    return;
                }
            };
            if let Some(m) = modules::loaded().into_iter().find(|m| m.id() == id) {
                text = m.segment(Segment::Text).1;
                relocations = m.relocations();
            }
            let start = pmu::instructions();
            // SAFETY: nothing calls into the module.
            let _ = unsafe { modules::unload(id) };
            unload_cost.push(u64::from(pmu::instructions().wrapping_sub(start)));
        });
        unload_cost.sort_unstable();
        let unload = unload_cost.get(unload_cost.len() / 2).copied().unwrap_or(0);
        println!(
            "    {name:<6} text {text:>6} B, {relocations:>3} relocations: load {load_cost:>7} ({:>5} per KiB of text), unload {unload:>6}",
            load_cost * 1024 / text.max(1) as u64
        );
        out.push(Figure {
            workload: "module_load",
            allocator: "execmem",
            params: alloc::format!(
                "\"module\": \"{name}\", \"text_bytes\": {text}, \"relocations\": {relocations}"
            ),
            value: load_cost,
            unit: "instructions",
        });
        out.push(Figure {
            workload: "module_unload",
            allocator: "execmem",
            params: alloc::format!("\"module\": \"{name}\""),
            value: unload,
            unit: "instructions",
        });
    }
    modules::set_log(true);
    if let Some(keep) = keep {
        let _ = slot::free(keep);
    }
    // The link step of `relocs` alone (parse, layout, images, 37 relocations with their symbol
    // lookups), where a module would go: the pool and module data.
    let file = aligned(RELOCS);
    let bytes = as_bytes(&file, RELOCS.len());
    let plan = crate::runtime::memory::plan();
    let base = [
        plan.exec_pool.start,
        plan.module_data.start,
        plan.module_data.start + 0x1000,
    ];
    let link_of = |bytes: &[u8]| {
        median_per_op(config.rounds, 1, || {
            if let Ok(object) = Object::parse(bytes) {
                let layout = object.layout();
                if object.link(&layout, base, modules::symbol).is_err() {
                    println!("    a link step failed");
                }
            }
        })
    };
    let link = link_of(bytes);
    let bulk = aligned(MODULES[2].1);
    let bulk_link = link_of(as_bytes(&bulk, MODULES[2].1.len()));
    // One relocation applied (reloc::apply: compute, check, encode), averaged over every kind
    // the loader applies, each at an in-range place.
    let kinds: Vec<_> = crate::module::reloc::RelocKind::ALL
        .into_iter()
        .filter(|k| k.width() > 0)
        .collect();
    let reps = 50;
    let per = median_per_op(config.rounds, reps * kinds.len(), || {
        let mut place = [0u8; 8];
        for _ in 0..reps {
            for &kind in &kinds {
                // Place and target 0x40 apart, both 16-byte aligned: every kind is in range.
                let _ = core::hint::black_box(crate::module::reloc::apply(
                    kind,
                    &mut place,
                    0x1000_0000,
                    0x1000_0040,
                    0,
                ));
            }
        }
    });
    // What the registry pays per symbol name it keeps: one small heap allocation and its free
    // (the kernel heap is a buddy allocator).
    let heap = median_per_op(config.rounds, 100, || {
        for _ in 0..100 {
            core::hint::black_box(String::from(core::hint::black_box("hello_greeting_len")));
        }
    });
    println!(
        "    link step of relocs (parse, layout, 37 relocations and their symbol lookups): {link}; of bulk (64 KiB copied into its image): {bulk_link}; one relocation applied: {per} (mean over {} kinds); one symbol name on the kernel heap (alloc + free): {heap}",
        kinds.len()
    );
    out.push(Figure {
        workload: "module_link",
        allocator: "execmem",
        params: String::from("\"module\": \"relocs\", \"relocations\": 37"),
        value: link,
        unit: "instructions",
    });
    out.push(Figure {
        workload: "module_relocation",
        allocator: "execmem",
        params: alloc::format!("\"kinds\": {}", kinds.len()),
        value: per,
        unit: "instructions",
    });
}

/// `bytes` in 8-byte-aligned storage.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    as_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

fn as_bytes(words: &[u64], len: usize) -> &[u8] {
    // SAFETY: `len` is at most the words' byte length (they were made from `len` bytes).
    unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len.min(words.len() * 8)) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u8; the slice covers exactly the words.
    unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

crate::traceable! {
    /// The function the tracing benchmark traces.
    extern "C" fn bench_traced(x: u64) -> u64 {
        x.wrapping_add(1)
    }
}

/// The function the probe benchmark probes: an ordinary instruction (out of line), a branch
/// (simulated).
#[unsafe(naked)]
extern "C" fn bench_probed(x: u64) -> u64 {
    core::arch::naked_asm!("add x0, x0, #1", "b 1f", "1: ret")
}

extern "C" fn bench_tracer(_function: u64, _args: &[u64; 8], _cookie: u64) {}

fn bench_probe_handler(_regs: &mut crate::probe::decode::Regs, _cookie: u64) {}

/// (h) Tracing and probes, with every CPU online: trace (build and publish a trampoline, patch
/// the entry) and untrace (patch back, publish, wait until no CPU can be inside, free), the cost
/// of a traced call over an untraced one, and of a probe hit (breakpoint exception, handler, and
/// the out-of-line step or the simulation) over the bare instruction.
fn workload_trace_probe(config: &Config, out: &mut Vec<Figure>) {
    use crate::runtime::{probe, trace};
    let f = bench_traced as *const () as u64;
    let calls = config.copy_reps as u64 * 50;
    let per_call = |calls: u64| {
        median_per_op(config.rounds, calls as usize, || {
            let mut x = 0;
            for _ in 0..calls {
                x = core::hint::black_box(bench_traced(core::hint::black_box(x)));
            }
        })
    };
    println!(
        "(h) tracing and probes ({} other CPUs online), instructions",
        crate::runtime::smp::online_mask().count_ones() - 1
    );
    let untraced = per_call(calls);
    let mut untrace_cost = Vec::new();
    let install = median_per_op(config.rounds, 1, || {
        if trace::trace(f, bench_tracer, 0).is_err() {
            return;
        }
        let start = pmu::instructions();
        let _ = trace::untrace(f);
        untrace_cost.push(u64::from(pmu::instructions().wrapping_sub(start)));
    });
    untrace_cost.sort_unstable();
    let removal = untrace_cost
        .get(untrace_cost.len() / 2)
        .copied()
        .unwrap_or(0);
    let _ = trace::trace(f, bench_tracer, 0);
    let traced = per_call(calls);
    let _ = trace::untrace(f);
    println!(
        "    trace (trampoline written and published, entry patched, published): {install}; untrace (patched back, published, others seen outside, freed): {removal}"
    );
    println!(
        "    a call: {untraced} untraced, {traced} traced (+{} for the trampoline and an empty tracer)",
        traced.saturating_sub(untraced)
    );
    for (workload, value) in [
        ("trace_install", install),
        ("trace_remove", removal),
        ("traced_call_overhead", traced.saturating_sub(untraced)),
    ] {
        out.push(Figure {
            workload,
            allocator: "execmem",
            params: String::from("\"cpus\": 4"),
            value,
            unit: "instructions",
        });
    }
    let site = bench_probed as *const () as u64;
    let probed_calls = |calls: u64| {
        median_per_op(config.rounds, calls as usize, || {
            let mut x = 0;
            for _ in 0..calls {
                x = core::hint::black_box(bench_probed(core::hint::black_box(x)));
            }
        })
    };
    let bare = probed_calls(calls);
    for (kind, at) in [("out of line (add)", site), ("simulated (b)", site + 4)] {
        if let Err(e) = probe::add(at, bench_probe_handler, 0) {
            println!("    probe: {e}");
            continue;
        }
        let hit = probed_calls(calls).saturating_sub(bare);
        let _ = probe::remove(at);
        println!(
            "    probe hit, {kind}: +{hit} per hit (exception, table lookup, handler, resume)"
        );
        out.push(Figure {
            workload: "probe_hit_overhead",
            allocator: "execmem",
            params: alloc::format!(
                "\"kind\": \"{}\"",
                if at == site {
                    "out_of_line"
                } else {
                    "simulated"
                }
            ),
            value: hit,
            unit: "instructions",
        });
    }
}

const MODULES: [(&str, &[u8]); 3] = [
    (
        "hello",
        include_bytes!(concat!(env!("OUT_DIR"), "/modules/hello.o")),
    ),
    ("relocs", RELOCS),
    (
        "bulk",
        include_bytes!(concat!(env!("OUT_DIR"), "/modules/bulk.o")),
    ),
];
const RELOCS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules/relocs.o"));

/// Runs every workload and prints the table, then the figures as JSON between
/// `BEGIN results.json` and `END results.json` lines (`make bench` writes them to a file).
pub fn run(scale: Scale) {
    pmu::init();
    // One QEMU thread for all CPUs under -icount: no stale translation to guard against.
    exec_pool::set_store_code_twice(false);
    let config = Config::of(scale);
    let probe = pmu::instructions();
    let counting = pmu::instructions().wrapping_sub(probe) > 0;
    println!(
        "benchmark ({scale:?}): instructions retired (PMU event 0x08){}",
        if counting {
            ""
        } else {
            ": the counter reads 0 (run under -icount shift=0, as make bench does)"
        }
    );
    let mut figures = Vec::new();
    workload_pairs(&config, &mut figures);
    workload_churn(&config, &mut figures);
    workload_streams(&config, &mut figures, &MODULE_CHURN, config.module_live);
    workload_streams(&config, &mut figures, &MIXED_CHURN, config.mixed_live);
    workload_text(&config, &mut figures);
    workload_publish(&config, &mut figures);
    workload_smp(&config, &mut figures);
    workload_modules(&config, &mut figures);
    workload_trace_probe(&config, &mut figures);

    let mut json = String::from("[\n");
    for (i, f) in figures.iter().enumerate() {
        let _ = writeln!(
            json,
            "  {{\"workload\": \"{}\", \"allocator\": \"{}\", {}, \"value\": {}, \"unit\": \"{}\"}}{}",
            f.workload,
            f.allocator,
            f.params,
            f.value,
            f.unit,
            if i + 1 < figures.len() { "," } else { "" }
        );
    }
    json.push(']');
    println!("BEGIN results.json\n{json}\nEND results.json");
}
