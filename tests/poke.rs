//! Text poke, in every boot mode (and on several CPU models): JIT code written through the fixmap
//! alias runs; overwritten code runs anew; code across a page boundary works; a live NOP→B patch
//! redirects a function; BRK fill traps; direct stores still fault; the alias is gone after every
//! poke; every bad input is refused with memory unchanged; and the cache-maintenance plan matches
//! what CTR_EL0 and MIDR_EL1 say.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use execmem::arch::aarch64::cpu;
use execmem::fault::ExceptionClass;
use execmem::mmu::BLOCK_SIZE_2M;
use execmem::poke::cache::Clean;
use execmem::poke::insn::{self, CodeBuf, W0, X0};
use execmem::poke::{ExecRegion, PokeError};
use execmem::runtime::board;
use execmem::runtime::fault::{Resume, catch};
use execmem::runtime::{self, exec_pool, memory, mmu, poke};
use execmem::{println, tests};

execmem::entry!(main);

/// The pack these tests write into: the first of the pool window.
fn pack() -> u64 {
    memory::plan().exec_pool.start
}

fn main() {
    exec_pool::map_pack(pack()).expect("map a pack for the poke tests");
    runtime::testing::run(
        "poke",
        tests![
            maintenance_plan_matches_the_cpu,
            jit_a_function_and_call_it,
            overwrite_and_call_again,
            code_across_a_page_boundary,
            patch_nop_to_b_redirects_a_function,
            patch_batch_changes_any_instruction,
            text_set_brk_traps_when_called,
            direct_store_to_the_pack_still_faults,
            alias_is_gone_and_audit_clean_after_pokes,
            bad_inputs_are_refused_with_memory_unchanged,
            live_patch_while_other_cpus_call,
            batch_patch_refused_while_a_cpu_is_busy,
        ],
    );
    exec_pool::unmap_pack(pack()).expect("unmap");
}

/// Calls the code at `addr` as `extern "C" fn() -> u32`.
fn call(addr: u64) -> u32 {
    // SAFETY: the tests only call addresses where they wrote a complete function ending in RET.
    let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(addr as usize) };
    f()
}

/// `movz w0, #value; ret` at `at`.
fn return_const(at: u64, value: u16) -> CodeBuf {
    let mut code = CodeBuf::new(at);
    code.push(insn::movz(W0, value, 0).expect("movz"));
    code.push(insn::ret());
    code
}

fn write(code: &CodeBuf) {
    poke::text_copy(code.base(), &code.as_bytes()).expect("text_copy");
}

fn maintenance_plan_matches_the_cpu() {
    let plan = exec_pool::maintenance_plan();
    let cache = cpu::cache_type();
    let midr = cpu::midr();
    println!("  {midr}, CTR_EL0 {:#010x}: {cache}", cpu::ctr_el0());
    println!("  plan: {plan}");
    assert_eq!(plan.d_line, cache.d_line);
    assert_eq!(plan.i_line, cache.i_line);
    let expected_clean = if cache.idc {
        Clean::Skip
    } else if midr.needs_clean_invalidate_for_code() {
        Clean::Civac
    } else {
        Clean::Cvau
    };
    assert_eq!(plan.clean, expected_clean);
    assert_eq!(plan.invalidate_icache, !cache.dic);
    // Cortex-A76/A55/A510: every broadcast TLBI is issued twice (CVE-2025-10263).
    assert_eq!(plan.repeat_tlbi, midr.needs_repeat_tlbi());
}

fn jit_a_function_and_call_it() {
    let code = return_const(pack() + 0x100, 42);
    write(&code);
    assert_eq!(call(code.base()), 42);
}

fn overwrite_and_call_again() {
    let at = pack() + 0x100;
    write(&return_const(at, 42));
    assert_eq!(call(at), 42);
    write(&return_const(at, 7));
    assert_eq!(call(at), 7, "the new code runs, not a stale copy");
    // A longer function over the same place: x0 = 0x1234_5678_9abc + 1.
    let mut code = CodeBuf::new(at);
    code.load_imm64(X0, 0x1234_5678_9abc).expect("imm");
    code.push(insn::add_imm(X0, X0, 1, false).expect("add"));
    code.push(insn::ret());
    write(&code);
    // SAFETY: a complete function returning u64 in x0.
    let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(at as usize) };
    assert_eq!(f(), 0x1234_5678_9abd);
}

fn code_across_a_page_boundary() {
    // Starts 12 bytes before a 4 KiB boundary: three instructions in one page, the rest in the next.
    let at = pack() + 0x2000 - 12;
    let mut code = CodeBuf::new(at);
    code.push(insn::movz(W0, 1, 0).expect("movz"));
    for _ in 0..5 {
        code.push(insn::add_imm(W0, W0, 10, false).expect("add"));
    }
    code.push(insn::ret());
    let maps_before = poke::alias_maps();
    write(&code);
    assert_eq!(
        poke::alias_maps() - maps_before,
        2,
        "one alias mapping per page touched"
    );
    assert_eq!(call(at), 51);
}

fn patch_nop_to_b_redirects_a_function() {
    // nop; movz w0,#1; ret; movz w0,#2; ret — then the NOP becomes `b` to the second movz.
    let at = pack() + 0x3000;
    let mut code = CodeBuf::new(at);
    code.push(insn::nop());
    code.push(insn::movz(W0, 1, 0).expect("movz"));
    code.push(insn::ret());
    let target = code.here();
    code.push(insn::movz(W0, 2, 0).expect("movz"));
    code.push(insn::ret());
    write(&code);
    assert_eq!(call(at), 1);
    let branch = insn::b(at, target).expect("b");
    poke::patch_insn(at, insn::nop(), branch).expect("NOP -> B is CMODX-safe");
    assert_eq!(call(at), 2, "the function now takes the branch");
    poke::patch_insn(at, branch, insn::nop()).expect("B -> NOP");
    assert_eq!(call(at), 1);
}

fn patch_batch_changes_any_instruction() {
    let at = pack() + 0x4000;
    write(&return_const(at, 5));
    assert_eq!(call(at), 5);
    // MOVZ -> MOVZ is not a CMODX pair: patch_insn refuses, the batch path does it.
    let new = insn::movz(W0, 9, 0).expect("movz");
    assert!(matches!(
        poke::patch_insn(at, insn::movz(W0, 5, 0).unwrap(), new),
        Err(PokeError::NotCmodxSafe { .. })
    ));
    poke::patch_batch(&[(at, new)]).expect("batch");
    assert_eq!(call(at), 9);

    // Several instructions of one function at once: w0 = 1 + 2 becomes w0 = 100 + 20.
    let f = pack() + 0x4100;
    let mut code = CodeBuf::new(f);
    code.push(insn::movz(W0, 1, 0).expect("movz"));
    code.push(insn::add_imm(W0, W0, 2, false).expect("add"));
    code.push(insn::ret());
    write(&code);
    assert_eq!(call(f), 3);
    let maps_before = poke::alias_maps();
    poke::patch_batch(&[
        (f + 4, insn::add_imm(W0, W0, 20, false).expect("add")),
        (f, insn::movz(W0, 100, 0).expect("movz")),
    ])
    .expect("batch of two");
    assert_eq!(
        poke::alias_maps() - maps_before,
        2,
        "one alias mapping per instruction"
    );
    assert_eq!(call(f), 120);
}

fn text_set_brk_traps_when_called() {
    let at = pack() + 0x5000;
    write(&return_const(at, 3));
    poke::text_set(at, insn::brk(0x7), 2).expect("text_set");
    let report = catch(Resume::ReturnToCaller, || {
        call(at);
    })
    .expect("calling BRK-filled code traps");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::Brk);
    assert_eq!(report.immediate(), Some(0x7));
    assert_eq!(report.elr, at);
}

fn direct_store_to_the_pack_still_faults() {
    let at = pack() + 0x100;
    let report = catch(Resume::Skip, || {
        // SAFETY: must fault: exec memory is never writable.
        unsafe { ptr::write_volatile(at as *mut u32, insn::nop()) };
    })
    .expect("direct store faults");
    assert_eq!(report.class(), ExceptionClass::DataAbort);
}

fn alias_is_gone_and_audit_clean_after_pokes() {
    for cpu in 0..board::CPUS {
        let slot = mmu::fixmap_poke_slot(cpu);
        assert!(mmu::translate(slot).is_none(), "fixmap slot {cpu} invalid");
    }
    let violations = exec_pool::audit();
    for v in &violations {
        println!("  violation: {v}");
    }
    assert!(violations.is_empty());
}

/// What was attempted, its result, and whether the error is the expected one.
type RefusalCase = (&'static str, Result<(), PokeError>, fn(&PokeError) -> bool);

fn bad_inputs_are_refused_with_memory_unchanged() {
    let at = pack() + 0x6000;
    write(&return_const(at, 11));
    let snapshot = |from: u64| -> Vec<u32> {
        // SAFETY: reads of the mapped pack.
        (0..8)
            .map(|i| unsafe { ptr::read_volatile((from + 4 * i) as *const u32) })
            .collect()
    };
    let before = snapshot(at);
    let unmapped_pack = pack() + BLOCK_SIZE_2M;
    let outside = memory::plan().exec_pool.start - 0x1000;
    let nop = insn::nop();
    let movz = insn::movz(W0, 11, 0).expect("movz");

    let cases: [RefusalCase; 9] = [
        (
            "copy outside the pool",
            poke::text_copy(outside, &[0; 4]),
            |e| matches!(e, PokeError::NotExecMemory { .. }),
        ),
        (
            "copy to an unmapped pack",
            poke::text_copy(unmapped_pack, &[0; 4]),
            |e| matches!(e, PokeError::NotExecMemory { .. }),
        ),
        (
            "copy past the pack end",
            poke::text_copy(pack() + BLOCK_SIZE_2M - 4, &[0; 8]),
            |e| matches!(e, PokeError::PastEnd { .. }),
        ),
        ("empty source", poke::text_copy(at, &[]), |e| {
            matches!(e, PokeError::EmptySource)
        }),
        (
            "misaligned patch",
            poke::patch_insn(at + 2, movz, nop),
            |e| matches!(e, PokeError::Misaligned { .. }),
        ),
        (
            "expected old mismatch",
            poke::patch_insn(at, nop, insn::brk(0)),
            |e| matches!(e, PokeError::OldMismatch { .. }),
        ),
        ("non-CMODX pair", poke::patch_insn(at, movz, nop), |e| {
            matches!(e, PokeError::NotCmodxSafe { .. })
        }),
        ("misaligned text_set", poke::text_set(at + 1, nop, 1), |e| {
            matches!(e, PokeError::Misaligned { .. })
        }),
        (
            "copy past the slot end",
            poke::text_copy_within(ExecRegion::slot(at, at + 8), at + 4, &[0; 8]),
            |e| matches!(e, PokeError::PastEnd { .. }),
        ),
    ];
    for (what, result, expected) in cases {
        let error = result.expect_err(what);
        println!("  {what}: {error}");
        assert!(expected(&error), "{what}: wrong error {error:?}");
    }
    let batch = poke::patch_batch(&[(at, nop), (outside, nop)]);
    assert!(
        matches!(batch, Err(PokeError::NotExecMemory { .. })),
        "a batch with one bad address writes nothing"
    );
    assert_eq!(snapshot(at), before, "memory unchanged by refused pokes");
    assert_eq!(call(at), 11);
}

/// The CPUs online other than this one.
fn other_cpus() -> Vec<usize> {
    let online = runtime::smp::online_mask();
    (0..64)
        .filter(|&c| online & (1 << c) != 0 && c != cpu::cpu_id())
        .collect()
}

static STOP_CALLING: AtomicBool = AtomicBool::new(false);
/// Per CPU: calls that returned the traced function's value, the tracer's, anything else.
static SEEN: [[AtomicU64; 3]; 4] = [const { [const { AtomicU64::new(0) }; 3] }; 4];

/// Calls the function at `addr` until told to stop, counting what it returns. Each call follows
/// an ISB: B2.2.5 lets a CPU see the old or the new instruction of a CMODX pair, but only a
/// context synchronisation event makes the new one certain to be seen (without it QEMU keeps
/// running the old one for seconds); that event is what the publication contract asks of the
/// executing CPU.
fn call_until_stopped(addr: u64) -> u64 {
    let me = cpu::cpu_id() % 4;
    let mut calls = 0;
    while !STOP_CALLING.load(Ordering::Acquire) {
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        let slot = match call(addr) {
            1 => 0,
            1000 => 1,
            _ => 2,
        };
        SEEN[me][slot].fetch_add(1, Ordering::Relaxed);
        calls += 1;
    }
    calls
}

/// Waits (up to 20 s of the counter: under an emulator on a loaded host the other CPUs' threads
/// may not run for a while) until `done` holds; false if it never did.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    let end = CNTPCT_EL0.get() + cpu::timer_frequency() * 20;
    while !done() {
        if CNTPCT_EL0.get() >= end {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn seen(c: usize, what: usize) -> u64 {
    SEEN[c % 4][what].load(Ordering::Relaxed)
}

/// CPUs 1.. call a traced function in a loop (an ISB before each call) while this CPU turns its
/// first instruction from NOP into B (to the tracer) and back with `patch_insn`, 200 times: every
/// call runs the traced function or the tracer, never anything else (a CMODX pair, one aligned
/// store: B2.2.5 lets a CPU see the old or the new instruction, never a mix, a BRK or a fault).
/// When each CPU sees each change is not asserted: it is only certain after that CPU's context
/// synchronisation event following the patcher's maintenance, and QEMU's threads may not run for
/// a while on a loaded host; the counts are printed.
fn live_patch_while_other_cpus_call() {
    let others = other_cpus();
    if others.is_empty() {
        println!("  one CPU online: nothing to race with");
        return;
    }
    let traced = pack() + 0x8000;
    let tracer = pack() + 0x8100;
    let mut code = CodeBuf::new(traced);
    code.push(insn::nop());
    code.push(insn::movz(W0, 1, 0).expect("movz"));
    code.push(insn::ret());
    write(&code);
    write(&return_const(tracer, 1000));
    STOP_CALLING.store(false, Ordering::Release);
    for &c in &others {
        runtime::smp::start_on(c, call_until_stopped, traced).expect("post the loop");
    }
    // Every caller running before the first patch.
    assert!(
        wait_for(|| others.iter().all(|&c| seen(c, 0) > 0)),
        "the calling CPUs did not start"
    );
    let branch = insn::b(traced, tracer).expect("in range");
    let calls_so_far = || others.iter().map(|&c| seen(c, 0) + seen(c, 1)).sum::<u64>();
    for _ in 0..200 {
        poke::patch_insn(traced, insn::nop(), branch).expect("NOP -> B");
        let before = calls_so_far();
        // Let the callers make some calls on each version.
        wait_for(|| calls_so_far() > before + 50);
        poke::patch_insn(traced, branch, insn::nop()).expect("B -> NOP");
        let before = calls_so_far();
        wait_for(|| calls_so_far() > before + 50);
    }
    STOP_CALLING.store(true, Ordering::Release);
    let mut tracer_seen = 0;
    for &c in &others {
        let calls = runtime::smp::finish(c, 20_000).expect("the loop ends");
        let [traced_runs, tracer_runs, other] = [0, 1, 2].map(|i| seen(c, i));
        println!(
            "  CPU {c}: {calls} calls: {traced_runs} traced, {tracer_runs} tracer, {other} other"
        );
        assert_eq!(other, 0, "CPU {c} ran something else");
        assert_eq!(traced_runs + tracer_runs, calls);
        tracer_seen += tracer_runs;
    }
    println!("  the patched branch was run {tracer_seen} times on the other CPUs");
    assert_eq!(poke::read_insn(traced), Ok(insn::nop()));
}

static BUSY_STARTED: AtomicBool = AtomicBool::new(false);

/// Spins for about `ms` milliseconds, away from the idle loop (so it cannot join a rendezvous).
fn busy_for_ms(ms: u64) -> u64 {
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    BUSY_STARTED.store(true, Ordering::Release);
    let end = CNTPCT_EL0.get() + cpu::timer_frequency() * ms / 1000;
    while CNTPCT_EL0.get() < end {
        core::hint::spin_loop();
    }
    ms
}

/// A batch patch needs every other CPU stopped: with one of them busy (not in its idle loop) the
/// rendezvous gives up after its timeout, names that CPU and writes nothing; once it is idle
/// again the same batch goes through.
fn batch_patch_refused_while_a_cpu_is_busy() {
    let others = other_cpus();
    let Some(&busy) = others.first() else {
        println!("  one CPU online: no CPU to be busy");
        return;
    };
    let at = pack() + 0x9000;
    write(&return_const(at, 5));
    let new = insn::movz(W0, 6, 0).expect("movz");
    BUSY_STARTED.store(false, Ordering::Release);
    runtime::smp::start_on(busy, busy_for_ms, 4000).expect("post");
    // Busy for real: out of its idle loop (a round posted before it picks up the call is joined).
    assert!(
        wait_for(|| BUSY_STARTED.load(Ordering::Acquire)),
        "CPU {busy} did not start"
    );
    let refused = poke::patch_batch(&[(at, new)]);
    println!("  with CPU {busy} busy: {refused:?}");
    assert_eq!(refused, Err(PokeError::CpuNotStopped { cpu: busy }));
    assert_eq!(call(at), 5, "nothing was written");
    assert_eq!(runtime::smp::finish(busy, 10_000), Ok(4000));
    poke::patch_batch(&[(at, new)]).expect("every CPU idle: the batch runs");
    assert_eq!(call(at), 6);
    for &c in &others {
        fn call_it(addr: u64) -> u64 {
            u64::from(call(addr))
        }
        assert_eq!(
            runtime::smp::run_on(c, call_it, at),
            Ok(6),
            "CPU {c} runs the new code"
        );
    }
}
