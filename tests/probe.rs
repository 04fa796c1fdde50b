//! Instruction probes on the hardware, in every boot mode: a probe on each kind of PC-relative
//! instruction (simulated) and on an ordinary one (out of line) gives the same results as the
//! unprobed code and runs its handler once per execution; probes that cannot be stepped out of
//! line are refused; and probes armed and disarmed 40 times while three other CPUs run the probed
//! code lose no execution and leave nothing behind.

#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use execmem::probe::ProbeError;
use execmem::probe::decode::{Refusal, Regs};
use execmem::runtime::{self, exec_pool, poke, probe, slot, smp};
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    runtime::testing::run(
        "probe",
        tests![
            every_pc_relative_kind_behaves_as_in_place,
            probes_that_cannot_step_out_of_line_are_refused,
            bad_requests_are_refused_with_nothing_changed,
            probes_armed_and_disarmed_while_other_cpus_run_the_code,
            audit_is_clean_at_the_end,
        ],
    );
}

/// Defines `extern "C" fn $name(x: u64) -> u64` from assembly.
macro_rules! asm_fn {
    ($name:ident, $($line:literal),* $(,)?) => {
        #[unsafe(naked)]
        extern "C" fn $name(x: u64) -> u64 {
            core::arch::naked_asm!($($line),*)
        }
    };
}

asm_fn!(f_b, "b 1f", "mov x0, #0", "ret", "1: add x0, x0, #1", "ret");
asm_fn!(
    f_bl,
    "mov x9, x30",
    "bl 1f",
    "add x0, x0, #100",
    "ret x9",
    "1: add x0, x0, #1",
    "ret"
);
asm_fn!(
    f_bcond,
    "cmp x0, #5",
    "b.eq 1f",
    "mov x0, #0",
    "ret",
    "1: mov x0, #7",
    "ret"
);
asm_fn!(
    f_cbz,
    "cbz x0, 1f",
    "mov x0, #2",
    "ret",
    "1: mov x0, #3",
    "ret"
);
asm_fn!(
    f_cbnz,
    "cbnz w0, 1f",
    "mov x0, #2",
    "ret",
    "1: mov x0, #3",
    "ret"
);
asm_fn!(
    f_tbz,
    "tbz x0, #3, 1f",
    "mov x0, #4",
    "ret",
    "1: mov x0, #5",
    "ret"
);
asm_fn!(
    f_tbnz,
    "tbnz x0, #40, 1f",
    "mov x0, #4",
    "ret",
    "1: mov x0, #5",
    "ret"
);
asm_fn!(f_adr, "adr x0, 1f", "ret", "1: nop");
asm_fn!(f_adrp, "adrp x0, 1f", "ret", "1: nop");
asm_fn!(
    f_ldr_x,
    "ldr x0, 1f",
    "ret",
    ".balign 8",
    "1: .quad 0x1122334455667788"
);
asm_fn!(
    f_ldr_w,
    "ldr w0, 1f",
    "ret",
    ".balign 4",
    "1: .word 0x80000001"
);
asm_fn!(
    f_ldrsw,
    "ldrsw x0, 1f",
    "ret",
    ".balign 4",
    "1: .word 0x80000001"
);
asm_fn!(
    f_blr,
    "mov x9, x30",
    "adr x10, 1f",
    "blr x10",
    "ret x9",
    "1: add x0, x0, #9",
    "ret"
);
asm_fn!(
    f_br,
    "adr x10, 1f",
    "br x10",
    "mov x0, #0",
    "1: add x0, x0, #2",
    "ret"
);
asm_fn!(f_add, "add x0, x0, #42", "ret");
asm_fn!(f_ldxr, "ldxr x1, [x0]", "mov x0, x1", "ret");
asm_fn!(f_svc, "svc #0", "ret");
asm_fn!(
    f_llsc,
    "1: ldxr x1, [x0]",
    "add x1, x1, #1",
    "stxr w2, x1, [x0]",
    "cbnz w2, 1b",
    "mov x0, x1",
    "ret"
);
asm_fn!(f_mrs, "mrs x0, daif", "ret");

fn addr(f: extern "C" fn(u64) -> u64) -> u64 {
    f as *const () as u64
}

static HITS: AtomicU64 = AtomicU64::new(0);
static WRONG_PC: AtomicU64 = AtomicU64::new(0);
static EXPECTED_PC: AtomicU64 = AtomicU64::new(0);

fn count(regs: &mut Regs, _cookie: u64) {
    HITS.fetch_add(1, Ordering::Relaxed);
    if regs.pc != EXPECTED_PC.load(Ordering::Relaxed) {
        WRONG_PC.fetch_add(1, Ordering::Relaxed);
    }
}

fn every_pc_relative_kind_behaves_as_in_place() {
    let before = slot::stats().live_slots;
    // (name, function, offset of the probed instruction, inputs).
    let cases: &[(&str, extern "C" fn(u64) -> u64, u64, &[u64])] = &[
        ("b", f_b, 0, &[0, 41]),
        ("bl", f_bl, 4, &[0, 5]),
        ("b.cond", f_bcond, 4, &[5, 4]),
        ("cbz", f_cbz, 0, &[0, 1]),
        ("cbnz", f_cbnz, 0, &[0, 1 << 32, 1]),
        ("tbz", f_tbz, 0, &[8, 7]),
        ("tbnz", f_tbnz, 0, &[1 << 40, 1]),
        ("adr", f_adr, 0, &[0]),
        ("adrp", f_adrp, 0, &[0]),
        ("ldr x (literal)", f_ldr_x, 0, &[0]),
        ("ldr w (literal)", f_ldr_w, 0, &[0]),
        ("ldrsw (literal)", f_ldrsw, 0, &[0]),
        ("blr", f_blr, 8, &[3]),
        ("br", f_br, 4, &[3]),
        ("add (out of line)", f_add, 0, &[0, 1]),
    ];
    for &(name, f, offset, inputs) in cases {
        let site = addr(f) + offset;
        let original = poke::read_insn(site).unwrap();
        let unprobed: alloc::vec::Vec<u64> = inputs.iter().map(|&x| f(x)).collect();
        probe::add(site, count, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_audit_clean();
        assert_eq!(
            poke::read_insn(site).unwrap(),
            execmem::poke::insn::brk(execmem::probe::PROBE_BRK)
        );
        EXPECTED_PC.store(site, Ordering::Relaxed);
        let hits = HITS.load(Ordering::Relaxed);
        let probed: alloc::vec::Vec<u64> = inputs.iter().map(|&x| f(x)).collect();
        assert_eq!(probed, unprobed, "{name}: probed results differ");
        assert_eq!(
            HITS.load(Ordering::Relaxed) - hits,
            inputs.len() as u64,
            "{name}: one hit per run"
        );
        assert_eq!(probe::hits(site), Some(inputs.len() as u64));
        probe::remove(site).unwrap();
        assert_audit_clean();
        assert_eq!(poke::read_insn(site).unwrap(), original, "{name}: restored");
        assert_eq!(
            inputs.iter().map(|&x| f(x)).collect::<alloc::vec::Vec<_>>(),
            unprobed
        );
        println!(
            "  {name:<18} {original:#010x} at {site:#x}: {:?} -> {unprobed:x?}",
            inputs
        );
    }
    assert_eq!(
        WRONG_PC.load(Ordering::Relaxed),
        0,
        "the handler saw the probed address"
    );
    assert_eq!(probe::reap(), 0);
    assert_eq!(
        slot::stats().live_slots,
        before,
        "out-of-line slots given back"
    );
}

fn probes_that_cannot_step_out_of_line_are_refused() {
    let before = slot::stats().live_slots;
    for (f, offset, why) in [
        (f_ldxr as extern "C" fn(u64) -> u64, 0, Refusal::Exclusive),
        (f_svc, 0, Refusal::ExceptionGenerating),
        (f_llsc, 4, Refusal::InsideExclusive),
        (f_mrs, 0, Refusal::SystemRegister),
    ] {
        let site = addr(f) + offset;
        let original = poke::read_insn(site).unwrap();
        let error = probe::add(site, count, 0).unwrap_err();
        println!("  {error}");
        assert!(
            matches!(error, ProbeError::Refused { why: w, .. } if w == why),
            "{error:?}"
        );
        assert_eq!(poke::read_insn(site).unwrap(), original, "nothing written");
    }
    // After the store-exclusive, outside the pair: allowed.
    let after = addr(f_llsc) + 16;
    probe::add(after, count, 0).expect("mov after the pair");
    probe::remove(after).unwrap();
    assert_eq!(probe::reap(), 0);
    assert_eq!(slot::stats().live_slots, before);
    assert!(probe::probed().is_empty());
}

fn bad_requests_are_refused_with_nothing_changed() {
    let site = addr(f_add);
    assert_eq!(probe::remove(site), Err(ProbeError::NotProbed(site)));
    probe::add(site, count, 0).unwrap();
    assert_eq!(
        probe::add(site, count, 1),
        Err(ProbeError::AlreadyProbed(site))
    );
    probe::remove(site).unwrap();
    let data = alloc::boxed::Box::new(0u32);
    let at = &*data as *const u32 as u64;
    assert!(
        matches!(probe::add(at, count, 0), Err(ProbeError::Poke(_))),
        "data is not code"
    );
    assert!(probe::add(site + 2, count, 0).is_err(), "misaligned");
    assert_eq!(f_add(1), 43);
    assert_eq!(probe::reap(), 0);
}

static STOP: AtomicBool = AtomicBool::new(false);
static RUNS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn run_until_stopped(cpu: u64) -> u64 {
    let mut wrong = 0;
    let mut x = cpu;
    while !STOP.load(Ordering::Relaxed) {
        if f_add(x) != x + 42 || f_b(x) != x + 1 {
            wrong += 1;
        }
        RUNS[cpu as usize].fetch_add(1, Ordering::Relaxed);
        x = x.wrapping_add(1) & 0xffff;
    }
    wrong
}

fn total_runs() -> u64 {
    RUNS.iter().map(|r| r.load(Ordering::Relaxed)).sum()
}

fn wait_for_runs(more: u64) {
    let target = total_runs() + more;
    while total_runs() < target {
        core::hint::spin_loop();
    }
}

fn probes_armed_and_disarmed_while_other_cpus_run_the_code() {
    let others: alloc::vec::Vec<usize> = (1..4)
        .filter(|&c| smp::online_mask() & (1 << c) != 0)
        .collect();
    let before = slot::stats().live_slots;
    STOP.store(false, Ordering::Relaxed);
    for &c in &others {
        smp::start_on(c, run_until_stopped, c as u64).expect("post");
    }
    wait_for_runs(100);
    let (add_site, b_site) = (addr(f_add), addr(f_b));
    let mut hits = 0;
    for round in 0..40 {
        // f_add's ADD is not a CMODX pair with BRK (stop-the-world); f_b's B is (patch_insn).
        probe::add(add_site, noop, 0).unwrap_or_else(|e| panic!("round {round}: {e}"));
        probe::add(b_site, noop, 0).unwrap();
        wait_for_runs(50);
        hits += probe::hits(add_site).unwrap_or(0) + probe::hits(b_site).unwrap_or(0);
        probe::remove(add_site).unwrap();
        probe::remove(b_site).unwrap();
        wait_for_runs(20);
    }
    STOP.store(true, Ordering::Relaxed);
    let mut wrong = 0;
    for &c in &others {
        wrong += smp::finish(c, 20_000).expect("the loop ends");
    }
    println!(
        "  {} runs on {} CPUs over 40 arm/disarm rounds, {hits} probe hits, {wrong} wrong results",
        total_runs(),
        others.len()
    );
    assert_eq!(wrong, 0);
    assert!(hits >= 40 * 50, "the probes were hit while armed");
    assert_eq!(probe::reap(), 0);
    assert_eq!(slot::stats().live_slots, before);
}

fn noop(_regs: &mut Regs, _cookie: u64) {}

fn assert_audit_clean() {
    let violations = exec_pool::audit();
    for v in &violations {
        println!("  violation: {v}");
    }
    assert!(
        violations.is_empty(),
        "{} audit violations",
        violations.len()
    );
}

fn audit_is_clean_at_the_end() {
    assert!(probe::probed().is_empty());
    assert_audit_clean();
}
