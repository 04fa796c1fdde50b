//! Text poke, in every boot mode (and on several CPU models): JIT code written through the fixmap
//! alias runs; overwritten code runs anew; code across a page boundary works; small copies write
//! the same through the fast path and the general one; a live NOP→B patch
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
            small_copies_write_the_same_on_either_path,
            patch_nop_to_b_redirects_a_function,
            patch_batch_changes_any_instruction,
            text_set_brk_traps_when_called,
            direct_store_to_the_pack_still_faults,
            alias_is_gone_and_audit_clean_after_pokes,
            bad_inputs_are_refused_with_memory_unchanged,
            live_patch_while_other_cpus_call,
            batch_patch_while_other_cpus_call,
            batch_patch_interrupts_a_busy_cpu,
            rendezvous_names_a_cpu_that_never_arrives,
            writes_are_published_to_every_cpu,
            no_cpu_sees_another_cpus_alias,
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

/// A copy of whole instructions within one cache line takes the fast path, anything else the
/// general one: both write exactly the bytes asked for, with one alias mapping, and refuse alike.
fn small_copies_write_the_same_on_either_path() {
    let base = pack() + 0xc000;
    let line = exec_pool::maintenance_plan().min_line() as u64;
    // 0x2000 bytes of a known pattern, as instructions: a copy changes only its own bytes.
    let pattern: Vec<u8> = (0..0x2000u32).map(|i| (i * 13 + 5) as u8).collect();
    // An aligned source buffer, so that offsets from it give aligned and misaligned sources.
    #[repr(align(64))]
    struct Src([u8; 1024]);
    let src = Src(core::array::from_fn(|i| 0xa0 ^ (i * 7) as u8));
    let read = |at: u64, len: usize| -> Vec<u8> {
        // SAFETY: reads of the mapped pack (exec memory is readable).
        (0..len as u64)
            .map(|i| unsafe { ptr::read_volatile((at + i) as *const u8) })
            .collect()
    };
    // (what, offset into the base, source offset, length): fast, then each way out of it.
    let cases: [(&str, u64, usize, usize); 7] = [
        ("one instruction (fast path)", 0x40, 0, 4),
        ("a line of instructions (fast path)", 0x80, 0, line as usize),
        ("the source misaligned", 0x100, 1, 8),
        ("the destination misaligned", 0x142, 0, 8),
        ("a length of 6", 0x180, 0, 6),
        ("across a line boundary", 0x200 + line - 4, 0, 8),
        ("a line and one instruction", 0x300, 0, line as usize + 4),
    ];
    for (what, offset, from, len) in cases {
        poke::text_copy(base, &pattern).expect("the pattern");
        let at = base + offset;
        let maps = poke::alias_maps();
        poke::text_copy(at, &src.0[from..from + len]).expect(what);
        assert_eq!(poke::alias_maps() - maps, 1, "{what}: one alias mapping");
        let mut expected = pattern.clone();
        expected[offset as usize..offset as usize + len].copy_from_slice(&src.0[from..from + len]);
        assert_eq!(
            read(base, pattern.len()),
            expected,
            "{what}: exactly these bytes"
        );
    }
    // Refusals with a source the fast path would take: nothing written, no alias mapped.
    poke::text_copy(base, &pattern).expect("the pattern");
    let maps = poke::alias_maps();
    let slot = ExecRegion::slot(base + 0x40, base + 0x48);
    let past = poke::text_copy_within(slot, base + 0x44, &src.0[..8]);
    assert!(matches!(past, Err(PokeError::PastEnd { .. })), "{past:?}");
    let before = poke::text_copy_within(slot, base + 0x3c, &src.0[..4]);
    assert!(
        matches!(before, Err(PokeError::NotExecMemory { .. })),
        "{before:?}"
    );
    let empty = poke::text_copy_within(slot, base + 0x40, &[]);
    assert!(matches!(empty, Err(PokeError::EmptySource)), "{empty:?}");
    let unmapped = poke::text_copy(pack() + BLOCK_SIZE_2M, &src.0[..4]);
    assert!(
        matches!(unmapped, Err(PokeError::NotExecMemory { .. })),
        "{unmapped:?}"
    );
    assert_eq!(poke::alias_maps(), maps, "no alias for a refused copy");
    assert_eq!(read(base, pattern.len()), pattern, "memory unchanged");
    // And at the slot's very end, the fast path writes.
    poke::text_copy_within(slot, base + 0x44, &src.0[..4]).expect("the slot's last word");
    assert_eq!(read(base + 0x44, 4), src.0[..4]);
    let code = return_const(base + 0x40, 9);
    write(&code);
    assert_eq!(call(code.base()), 9, "code written by the fast path runs");
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
    // QEMU builds store live code twice (the general path); with that off, as on hardware,
    // `patch_insn` takes its fast path. Both, with one alias mapping per store.
    let twice = exec_pool::store_code_twice();
    for (stores, second) in [(if twice { 2 } else { 1 }, twice), (1, false)] {
        exec_pool::set_store_code_twice(second);
        let maps = poke::alias_maps();
        poke::patch_insn(at, insn::nop(), branch).expect("NOP -> B is CMODX-safe");
        assert_eq!(call(at), 2, "the function now takes the branch");
        assert_eq!(poke::alias_maps() - maps, stores, "stored twice: {second}");
        let wrong = poke::patch_insn(at, insn::nop(), insn::brk(0));
        assert!(matches!(wrong, Err(PokeError::OldMismatch { found, .. }) if found == branch));
        poke::patch_insn(at, branch, insn::nop()).expect("B -> NOP");
        assert_eq!(call(at), 1);
    }
    exec_pool::set_store_code_twice(twice);
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
    // Under QEMU the demo stores live code changes twice (`Platform::store_code_twice`).
    let stores = if exec_pool::store_code_twice() { 2 } else { 1 };
    assert_eq!(
        poke::alias_maps() - maps_before,
        2 * stores,
        "one alias mapping per instruction and store"
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
    // In every CPU's view, read from its tables, and in this CPU's hardware.
    let views = exec_pool::fixmap_views();
    assert!(
        views.violations.is_empty() && views.aliases.is_empty(),
        "{views:?}"
    );
    for cpu in 0..board::CPUS {
        let slot = mmu::fixmap_poke_slot(cpu);
        assert!(mmu::translate(slot).is_none(), "fixmap slot {cpu} invalid");
        assert!(mmu::hardware_translate_write(slot).is_none());
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
        .filter(|&c| online & (1 << c) != 0 && c != execmem::runtime::smp::this_cpu())
        .collect()
}

static STOP_CALLING: AtomicBool = AtomicBool::new(false);
/// Per CPU: calls that returned the first target's value, the second's, anything else.
static SEEN: [[AtomicU64; 3]; 4] = [const { [const { AtomicU64::new(0) }; 3] }; 4];
/// The two values the function under patch returns, one per version.
static VALUES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Calls the function at `addr` until told to stop, counting what it returns (no ISB before the
/// calls: the patcher's publication is what makes each CPU see a change).
fn call_until_stopped(addr: u64) -> u64 {
    let me = execmem::runtime::smp::this_cpu() % 4;
    let values = VALUES.each_ref().map(|v| v.load(Ordering::Acquire));
    let mut calls = 0;
    while !STOP_CALLING.load(Ordering::Acquire) {
        let value = u64::from(call(addr));
        let slot = values.iter().position(|&v| v == value).unwrap_or(2);
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

/// Starts `call_until_stopped(addr)` on every CPU of `others` (the function returns `values[0]`
/// or `values[1]`) and waits until each has made a call.
fn start_callers(others: &[usize], addr: u64, values: [u32; 2]) {
    for (v, value) in VALUES.iter().zip(values) {
        v.store(u64::from(value), Ordering::Release);
    }
    for row in &SEEN {
        for counter in row {
            counter.store(0, Ordering::Relaxed);
        }
    }
    STOP_CALLING.store(false, Ordering::Release);
    for &c in others {
        runtime::smp::start_on(c, call_until_stopped, addr).expect("post the loop");
    }
    assert!(
        wait_for(|| others.iter().all(|&c| seen(c, 0) > 0)),
        "the calling CPUs did not start"
    );
}

/// Times QEMU kept running a translation of the old code after the store (see
/// `check_change_seen`).
static QEMU_RESTORES: AtomicU64 = AtomicU64::new(0);
/// More than this many (of 400 changes) and the test fails: a store that never reaches the
/// callers fails every change, QEMU's stale translation a few (up to 3 seen in one run).
const MAX_QEMU_RESTORES: u64 = 20;

/// After a change to `version` that was published: every caller makes calls on it, and runs
/// the other version at most once more (the call it was in when its CPU synchronised). Returns
/// the most stale calls seen on one CPU.
///
/// QEMU 10.0 (TCG, one thread per CPU) sometimes keeps executing its translation of the old
/// instruction after the store, on every CPU, though memory holds the new one and each CPU took
/// the publication's interrupt (seen at the first patch after the callers start, in about one
/// run in ten); storing the same instruction again drops it. `restore` does that; it is counted,
/// printed, and allowed at most [`MAX_QEMU_RESTORES`] times per test.
fn check_change_seen(others: &[usize], version: usize, restore: &dyn Fn()) -> u64 {
    let stale_before: Vec<u64> = others.iter().map(|&c| seen(c, 1 - version)).collect();
    let new_before: Vec<u64> = others.iter().map(|&c| seen(c, version)).collect();
    let followed = |new_before: &[u64]| {
        wait_for(|| {
            others
                .iter()
                .zip(new_before)
                .all(|(&c, &before)| seen(c, version) > before + 2)
        })
    };
    if !followed(&new_before) {
        for ((&c, &old), &new) in others.iter().zip(&stale_before).zip(&new_before) {
            println!(
                "  CPU {c}: old version {old} -> {}, new version {new} -> {}: QEMU kept the old \
                 translation; storing the new code again",
                seen(c, 1 - version),
                seen(c, version),
            );
        }
        let restores = QEMU_RESTORES.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(
            restores <= MAX_QEMU_RESTORES,
            "the callers did not follow a published change {restores} times"
        );
        restore();
        let again: Vec<u64> = others.iter().map(|&c| seen(c, version)).collect();
        assert!(
            followed(&again),
            "a caller did not run the new version (version {version}), even stored again"
        );
        // The stale calls before the second store are QEMU's; count from it.
        return 0;
    }
    let mut most = 0;
    for (&c, &before) in others.iter().zip(&stale_before) {
        let stale = seen(c, 1 - version) - before;
        assert!(
            stale <= 1,
            "CPU {c} ran the old version {stale} times after the change was published"
        );
        most = most.max(stale);
    }
    most
}

/// Stops the callers and checks that every call ran one of the two versions.
fn stop_callers(others: &[usize]) -> [u64; 2] {
    STOP_CALLING.store(true, Ordering::Release);
    let mut runs = [0; 2];
    for &c in others {
        let calls = runtime::smp::finish(c, 20_000).expect("the loop ends");
        let [first, second, other] = [0, 1, 2].map(|i| seen(c, i));
        println!("  CPU {c}: {calls} calls: {first} + {second} of the two versions, {other} other");
        assert_eq!(other, 0, "CPU {c} ran something else");
        assert_eq!(first + second, calls);
        runs[0] += first;
        runs[1] += second;
    }
    runs
}

/// CPUs 1.. call a traced function in a loop while this CPU turns its first instruction from NOP
/// into B (to the tracer) and back with `patch_insn`, 200 times, publishing each change: every
/// call runs the traced function or the tracer, never anything else (a CMODX pair, one aligned
/// store: B2.2.5 lets a CPU see the old or the new instruction, never a mix, a BRK or a fault),
/// and once the change is published each caller runs the old version at most once more.
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
    start_callers(&others, traced, [1, 1000]);
    let branch = insn::b(traced, tracer).expect("in range");
    let mut stale = 0;
    let again = |word: u32| {
        move || {
            poke::patch_insn(traced, word, word).expect("the same again");
            poke::publish().expect("every CPU synchronises");
        }
    };
    QEMU_RESTORES.store(0, Ordering::Relaxed);
    for _ in 0..200 {
        poke::patch_insn(traced, insn::nop(), branch).expect("NOP -> B");
        poke::publish().expect("every CPU synchronises");
        stale = stale.max(check_change_seen(&others, 1, &again(branch)));
        poke::patch_insn(traced, branch, insn::nop()).expect("B -> NOP");
        poke::publish().expect("every CPU synchronises");
        stale = stale.max(check_change_seen(&others, 0, &again(insn::nop())));
    }
    let [traced_runs, tracer_runs] = stop_callers(&others);
    println!(
        "  {traced_runs} traced, {tracer_runs} tracer runs; at most {stale} stale call per CPU \
         after a publication; QEMU stale translations stored again: {}",
        QEMU_RESTORES.load(Ordering::Relaxed)
    );
    assert_eq!(poke::read_insn(traced), Ok(insn::nop()));
}

/// CPUs 1.. call a two-instruction function in a loop while this CPU swaps both instructions
/// with `patch_batch` (not a CMODX pair: the others are stopped by SGI while busy), 100 times:
/// every call returns one of the two versions' values (2 or 20), never a half-changed sequence
/// (11), a BRK or a fault, and after each batch every caller runs the new version.
fn batch_patch_while_other_cpus_call() {
    let others = other_cpus();
    if others.is_empty() {
        println!("  one CPU online: nothing to race with");
        return;
    }
    let at = pack() + 0xa000;
    let version = |n: u16| {
        [
            insn::movz(W0, n, 0).expect("movz"),
            insn::add_imm(W0, W0, n, false).expect("add"),
        ]
    };
    let mut code = CodeBuf::new(at);
    for i in version(1) {
        code.push(i);
    }
    code.push(insn::ret());
    write(&code);
    start_callers(&others, at, [2, 20]);
    QEMU_RESTORES.store(0, Ordering::Relaxed);
    for round in 0..100 {
        let to = if round % 2 == 0 { 10 } else { 1 };
        let [first, second] = version(to);
        let patch = move || {
            poke::patch_batch(&[(at, first), (at + 4, second)]).expect("the others stop by SGI")
        };
        patch();
        check_change_seen(&others, usize::from(to == 10), &patch);
    }
    let [twos, twenties] = stop_callers(&others);
    println!(
        "  {twos} calls returned 2, {twenties} returned 20, none anything else; QEMU stale \
         translations stored again: {}",
        QEMU_RESTORES.load(Ordering::Relaxed)
    );
    assert!(twos > 0 && twenties > 0);
}

static BUSY_STARTED: AtomicBool = AtomicBool::new(false);

/// Spins for about `ms` milliseconds, away from the idle loop, interrupts unmasked (an SGI
/// reaches it).
fn busy_for_ms(ms: u64) -> u64 {
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    BUSY_STARTED.store(true, Ordering::Release);
    let end = CNTPCT_EL0.get() + cpu::timer_frequency() * ms / 1000;
    while CNTPCT_EL0.get() < end {
        core::hint::spin_loop();
    }
    ms
}

/// Spins for about `ms` milliseconds with interrupts masked: a CPU that cannot be reached.
fn busy_masked_for_ms(ms: u64) -> u64 {
    runtime::irq::without_interrupts(|| busy_for_ms(ms))
}

/// The CPUs online other than this one, and the first of them (to keep busy); `None`, said,
/// when this is the only CPU online.
fn others_and_one_to_be_busy() -> Option<(Vec<usize>, usize)> {
    let others = other_cpus();
    let Some(&busy) = others.first() else {
        println!("  one CPU online: no CPU to be busy");
        return None;
    };
    Some((others, busy))
}

/// Posts `f(ms)` to `cpu` and waits until it runs.
fn make_busy(cpu: usize, f: fn(u64) -> u64, ms: u64) {
    BUSY_STARTED.store(false, Ordering::Release);
    runtime::smp::start_on(cpu, f, ms).expect("post");
    assert!(
        wait_for(|| BUSY_STARTED.load(Ordering::Acquire)),
        "CPU {cpu} did not start"
    );
}

/// A busy CPU (interrupts unmasked) is stopped by the rendezvous SGI: the batch runs while it is
/// busy, and its work goes on afterwards.
fn batch_patch_interrupts_a_busy_cpu() {
    let Some((_, busy)) = others_and_one_to_be_busy() else {
        return;
    };
    let at = pack() + 0x9000;
    write(&return_const(at, 5));
    make_busy(busy, busy_for_ms, 3000);
    let new = insn::movz(W0, 6, 0).expect("movz");
    poke::patch_batch(&[(at, new)]).expect("the busy CPU is interrupted into the round");
    assert_eq!(call(at), 6);
    assert_eq!(
        runtime::smp::finish(busy, 10_000),
        Ok(3000),
        "its work went on"
    );
}

/// A CPU that never arrives (busy with interrupts masked past the rendezvous timeout) makes the
/// batch fail with its name, nothing written, the other CPUs let go; once it is back the same
/// batch runs and every CPU runs the new code.
fn rendezvous_names_a_cpu_that_never_arrives() {
    let Some((others, busy)) = others_and_one_to_be_busy() else {
        return;
    };
    let at = pack() + 0x9000;
    write(&return_const(at, 5));
    let new = insn::movz(W0, 6, 0).expect("movz");
    make_busy(
        busy,
        busy_masked_for_ms,
        runtime::rendezvous::ARRIVAL_TIMEOUT_MS + 2000,
    );
    let refused = poke::patch_batch(&[(at, new)]);
    println!("  with CPU {busy} busy, interrupts masked: {refused:?}");
    assert_eq!(refused, Err(PokeError::CpuNotStopped { cpu: busy }));
    assert_eq!(call(at), 5, "nothing was written");
    assert!(runtime::smp::finish(busy, 10_000).is_ok());
    poke::patch_batch(&[(at, new)]).expect("every CPU reachable: the batch runs");
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

/// The publication contract: when a write returns, every other online CPU has answered its
/// request (executed an ISB after the code was complete), busy CPUs included; one that cannot be
/// reached makes the write return `NotSynchronised` naming it, with the code written.
fn writes_are_published_to_every_cpu() {
    let others = other_cpus();
    if others.is_empty() {
        println!("  one CPU online: nobody to publish to");
        return;
    }
    let answered = || -> Vec<u64> {
        others
            .iter()
            .map(|&c| runtime::smp::requests_answered(c))
            .collect()
    };
    let at = pack() + 0xb000;
    let publish = |value: u16| poke::text_copy(at, &return_const(at, value).as_bytes());
    // Idle CPUs.
    let before = answered();
    publish(7).expect("write");
    let after = answered();
    for ((&c, b), a) in others.iter().zip(&before).zip(&after) {
        assert!(
            a > b,
            "CPU {c} did not answer the write's publication ({b} -> {a})"
        );
    }
    // One busy CPU, interrupts unmasked: reached by SGI.
    let busy = others[0];
    make_busy(busy, busy_for_ms, 2000);
    let before = runtime::smp::requests_answered(busy);
    publish(8).expect("write");
    assert!(
        runtime::smp::requests_answered(busy) > before,
        "the busy CPU answered"
    );
    assert!(runtime::smp::finish(busy, 10_000).is_ok());
    fn call_it(addr: u64) -> u64 {
        u64::from(call(addr))
    }
    assert_eq!(runtime::smp::run_on(busy, call_it, at), Ok(8));
    // One CPU unreachable: the code is written, the error names it.
    make_busy(
        busy,
        busy_masked_for_ms,
        runtime::smp::SYNCHRONISE_TIMEOUT_MS + 1000,
    );
    let result = publish(9);
    println!("  with CPU {busy} unreachable: {result:?}");
    assert_eq!(result, Err(PokeError::NotSynchronised { cpu: busy }));
    assert_eq!(call(at), 9, "the code is written");
    assert!(runtime::smp::finish(busy, 10_000).is_ok());
    assert_eq!(runtime::smp::run_on(busy, call_it, at), Ok(9));
}

static STOP_POKING: AtomicBool = AtomicBool::new(false);

/// Writes 64 KiB (sixteen pages, each through this CPU's poke slot) at the 64 KiB of the test pack
/// that belong to this CPU, until told to stop; returns the writes made.
fn poke_until_stopped(cpu: u64) -> u64 {
    let at = pack() + 0x10_0000 + cpu * 0x1_0000;
    let brk = insn::brk(0).to_le_bytes();
    let code: Vec<u8> = core::iter::repeat_n(brk, 0x4000).flatten().collect();
    let mut writes = 0;
    while !STOP_POKING.load(Ordering::Acquire) {
        poke::text_copy(at, &code).expect("a poke of this CPU's range");
        writes += 1;
    }
    writes
}

/// While CPUs 1.. write through their poke slots in a loop, this CPU reads every CPU's view of
/// the fixmap (2,000 times or more): each alias it finds live is in the view of a CPU that is poking (never
/// in this CPU's, which is not), onto the test pack's frame; no view reaches another's tables
/// and the kernel's root reaches none (`fixmap_views` reports no violation); and at every sample
/// this CPU's own hardware cannot translate a write to the slot VA (`AT S1E1W` / `S1E2W`), while
/// the same VA is writable in other CPUs' views. The issue's check of "no foreign alias in any
/// CPU's view during a poke on another CPU".
fn no_cpu_sees_another_cpus_alias() {
    let others = other_cpus();
    if others.is_empty() {
        println!("  one CPU online: no other CPU pokes");
        return;
    }
    let me = runtime::smp::this_cpu();
    let slot = mmu::fixmap_poke_slot(me);
    let frame = exec_pool::exec_pa(pack()).expect("the test pack is mapped");
    STOP_POKING.store(false, Ordering::Release);
    for &c in &others {
        runtime::smp::start_on(c, poke_until_stopped, c as u64).expect("start a poking CPU");
    }
    let mut live = [0u64; 64];
    let mut samples = 0u64;
    // At least 2,000 samples, then until 50 live aliases were seen or 10 s passed (with the
    // maintenance of every line and a publication per write, the alias lives a small part of
    // each write on cores without IDC/DIC).
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    let deadline = CNTPCT_EL0.get() + cpu::timer_frequency() * 10;
    while samples < 2000 || (live.iter().sum::<u64>() < 50 && CNTPCT_EL0.get() < deadline) {
        samples += 1;
        if let Some(pa) = mmu::hardware_translate_write(slot) {
            let views = exec_pool::fixmap_views();
            panic!(
                "this CPU could store through the slot VA (to {pa:#x}; TTBR {:#x}, view {:#x?}; {:#x?})",
                mmu::hardware_root(),
                exec_pool::cpu_view_root(me),
                views
            );
        }
        let views = exec_pool::fixmap_views();
        for v in &views.violations {
            println!("  violation: {v}");
        }
        assert!(views.violations.is_empty());
        for alias in &views.aliases {
            assert_ne!(
                alias.cpu, me,
                "an alias in the view of a CPU that is not poking"
            );
            assert!(others.contains(&alias.cpu));
            assert_eq!(alias.va, slot);
            assert!((frame..frame + BLOCK_SIZE_2M).contains(&alias.pa));
            live[alias.cpu] += 1;
        }
    }
    STOP_POKING.store(true, Ordering::Release);
    for &c in &others {
        let writes = runtime::smp::finish(c, 20_000).expect("the poking loop ends");
        println!(
            "  CPU {c}: {writes} writes of 64 KiB; its alias seen live in its own view in {} of {samples} samples",
            live[c]
        );
        assert!(writes > 0);
    }
    // How often a sample lands inside another CPU's poke depends on how the host schedules the
    // CPUs' threads (under load, rarely: each write waits for this CPU's answer to its
    // publication, which it gives between samples); the checks above hold at every sample.
    if live.iter().sum::<u64>() == 0 {
        println!("  (no sample landed inside another CPU's poke in this run)");
    }
    assert!(exec_pool::audit().is_empty());
}
