//! Function-entry tracing on the hardware, in every boot mode: a traced kernel function calls the
//! tracer with its arguments and still returns its result; bad requests are refused with nothing
//! changed; 256 traced functions share packs; and tracing is armed and disarmed 40 times while
//! three other CPUs call the function in a loop, with no call lost or doubled, every call traced
//! while armed, none after, and every trampoline freed.

#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use execmem::poke::PokeError;
use execmem::runtime::{self, exec_pool, poke, slot, smp, trace};
use execmem::trace::{TRAMPOLINE_BYTES, TraceError};
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    runtime::testing::run(
        "trace",
        tests![
            a_traced_function_calls_the_tracer_with_its_arguments,
            bad_requests_are_refused_with_nothing_changed,
            hundreds_of_traced_functions_share_packs,
            tracing_while_other_cpus_call,
            audit_is_clean_at_the_end,
        ],
    );
}

execmem::traceable! {
    /// Eight arguments: all of them reach the tracer and the body.
    extern "C" fn traced_sum(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
        a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h
    }
}

static LAST: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];
static TRACED_CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" fn record(function: u64, args: &[u64; 8], cookie: u64) {
    LAST[0].store(function, Ordering::Relaxed);
    for (slot, &arg) in LAST[1..9].iter().zip(args) {
        slot.store(arg, Ordering::Relaxed);
    }
    LAST[9].store(cookie, Ordering::Relaxed);
    TRACED_CALLS.fetch_add(1, Ordering::Relaxed);
}

fn addr(f: *const ()) -> u64 {
    f as u64
}

fn live_slots() -> u64 {
    slot::stats().live_slots
}

fn a_traced_function_calls_the_tracer_with_its_arguments() {
    let f = addr(traced_sum as *const ());
    let before = live_slots();
    assert_eq!(traced_sum(1, 2, 3, 4, 5, 6, 7, 8), 204);
    trace::trace(f, record, 0xc0ffee).expect("traced_sum is traceable");
    assert_audit_clean();
    let t = trace::traced();
    assert_eq!(t.len(), 1);
    println!(
        "  traced {f:#x} -> trampoline {:#x} ({TRAMPOLINE_BYTES} B)",
        t[0].trampoline
    );
    let calls = TRACED_CALLS.load(Ordering::Relaxed);
    assert_eq!(
        traced_sum(1, 2, 3, 4, 5, 6, 7, 8),
        204,
        "the result is the function's"
    );
    assert_eq!(TRACED_CALLS.load(Ordering::Relaxed), calls + 1);
    assert_eq!(LAST[0].load(Ordering::Relaxed), f);
    let args: alloc::vec::Vec<u64> = LAST[1..9]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    assert_eq!(args, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(LAST[9].load(Ordering::Relaxed), 0xc0ffee);
    assert_eq!(traced_sum(8, 7, 6, 5, 4, 3, 2, 1), 120);
    assert_eq!(LAST[1].load(Ordering::Relaxed), 8);
    trace::untrace(f).expect("untrace");
    assert_audit_clean();
    assert_eq!(trace::reap(), 0, "the trampoline is freed");
    assert_eq!(live_slots(), before);
    let calls = TRACED_CALLS.load(Ordering::Relaxed);
    assert_eq!(traced_sum(1, 1, 1, 1, 1, 1, 1, 1), 36);
    assert_eq!(
        TRACED_CALLS.load(Ordering::Relaxed),
        calls,
        "untraced: no tracer call"
    );
    assert_eq!(poke::read_insn(f).ok(), Some(execmem::poke::insn::nop()));
}

extern "C" fn plain(x: u64) -> u64 {
    x + 1
}

fn bad_requests_are_refused_with_nothing_changed() {
    let before = live_slots();
    let f = addr(traced_sum as *const ());
    let p = addr(plain as *const ());
    assert!(
        matches!(
            trace::trace(p, record, 0),
            Err(TraceError::NotTraceable { .. })
        ),
        "an ordinary function has no patch site"
    );
    assert_eq!(trace::untrace(f), Err(TraceError::NotTraced(f)));
    let heap = alloc::boxed::Box::new([0u32; 4]);
    let h = heap.as_ptr() as u64;
    assert_eq!(
        trace::trace(h, record, 0),
        Err(TraceError::Poke(PokeError::NotExecMemory { addr: h })),
        "data is not code"
    );
    trace::trace(f, record, 1).unwrap();
    assert_eq!(
        trace::trace(f, record, 2),
        Err(TraceError::AlreadyTraced(f))
    );
    assert_eq!(trace::traced()[0].cookie, 1, "the first trace stands");
    trace::untrace(f).unwrap();
    assert_eq!(plain(1), 2);
    assert_eq!(live_slots(), before);
}

macro_rules! many {
    ($($name:ident)*) => {
        $(execmem::traceable! { extern "C" fn $name(x: u64) -> u64 { x.wrapping_mul(3) } })*
        const MANY: &[extern "C" fn(u64) -> u64] = &[$($name),*];
    };
}
many!(t000 t001 t002 t003 t004 t005 t006 t007 t008 t009 t010 t011 t012 t013 t014 t015 t016 t017 t018 t019 t020 t021 t022 t023 t024 t025 t026 t027 t028 t029 t030 t031 t032 t033 t034 t035 t036 t037 t038 t039 t040 t041 t042 t043 t044 t045 t046 t047 t048 t049 t050 t051 t052 t053 t054 t055 t056 t057 t058 t059 t060 t061 t062 t063 t064 t065 t066 t067 t068 t069 t070 t071 t072 t073 t074 t075 t076 t077 t078 t079 t080 t081 t082 t083 t084 t085 t086 t087 t088 t089 t090 t091 t092 t093 t094 t095 t096 t097 t098 t099 t100 t101 t102 t103 t104 t105 t106 t107 t108 t109 t110 t111 t112 t113 t114 t115 t116 t117 t118 t119 t120 t121 t122 t123 t124 t125 t126 t127 t128 t129 t130 t131 t132 t133 t134 t135 t136 t137 t138 t139 t140 t141 t142 t143 t144 t145 t146 t147 t148 t149 t150 t151 t152 t153 t154 t155 t156 t157 t158 t159 t160 t161 t162 t163 t164 t165 t166 t167 t168 t169 t170 t171 t172 t173 t174 t175 t176 t177 t178 t179 t180 t181 t182 t183 t184 t185 t186 t187 t188 t189 t190 t191 t192 t193 t194 t195 t196 t197 t198 t199 t200 t201 t202 t203 t204 t205 t206 t207 t208 t209 t210 t211 t212 t213 t214 t215 t216 t217 t218 t219 t220 t221 t222 t223 t224 t225 t226 t227 t228 t229 t230 t231 t232 t233 t234 t235 t236 t237 t238 t239 t240 t241 t242 t243 t244 t245 t246 t247 t248 t249 t250 t251 t252 t253 t254 t255);

fn hundreds_of_traced_functions_share_packs() {
    let before = slot::stats();
    for f in MANY {
        trace::trace(addr(*f as *const ()), record, 0).expect("trace");
    }
    let after = slot::stats();
    let traced = trace::traced();
    let packs: alloc::collections::BTreeSet<u64> =
        traced.iter().map(|t| t.trampoline >> 21).collect();
    println!(
        "  {} trampolines, {} B each: {} more bytes live, in {} pack(s)",
        traced.len(),
        TRAMPOLINE_BYTES,
        after.bytes_live - before.bytes_live,
        packs.len()
    );
    assert_eq!(traced.len(), 256);
    assert_audit_clean();
    assert!(
        packs.len() <= 2,
        "256 trampolines share packs, not a page each"
    );
    let calls = TRACED_CALLS.load(Ordering::Relaxed);
    for (i, f) in MANY.iter().enumerate() {
        assert_eq!(f(i as u64), 3 * i as u64);
    }
    assert_eq!(TRACED_CALLS.load(Ordering::Relaxed), calls + 256);
    for f in MANY {
        trace::untrace(addr(*f as *const ())).expect("untrace");
    }
    assert_eq!(trace::reap(), 0);
    assert_eq!(slot::stats().live_slots, before.live_slots);
}

execmem::traceable! {
    /// What the other CPUs call: counts itself.
    extern "C" fn traced_work(x: u64) -> u64 {
        BODY_RUNS.fetch_add(1, Ordering::Relaxed);
        x ^ 0x5a5a
    }
}

static BODY_RUNS: AtomicU64 = AtomicU64::new(0);
static WORK_TRACED: AtomicU64 = AtomicU64::new(0);
static CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn count_work(_function: u64, _args: &[u64; 8], _cookie: u64) {
    WORK_TRACED.fetch_add(1, Ordering::Release);
}

/// On another CPU: calls `traced_work` until told to stop; returns the wrong results.
fn call_until_stopped(cpu: u64) -> u64 {
    let mut wrong = 0;
    let mut x = cpu;
    while !STOP.load(Ordering::Relaxed) {
        if traced_work(x) != x ^ 0x5a5a {
            wrong += 1;
        }
        // Release: a CPU that sees this call completed sees its tracer call too.
        CALLS[cpu as usize].fetch_add(1, Ordering::Release);
        x = x.wrapping_add(1);
    }
    wrong
}

/// Calls completed on the other CPUs. Acquire: the loads after it are not made before it.
fn total_calls() -> u64 {
    CALLS.iter().map(|c| c.load(Ordering::Acquire)).sum()
}

/// Tracer calls of `traced_work` so far. Acquire, as [`total_calls`].
fn work_traced() -> u64 {
    WORK_TRACED.load(Ordering::Acquire)
}

fn wait_for_calls(more: u64) {
    let target = total_calls() + more;
    while total_calls() < target {
        core::hint::spin_loop();
    }
}

fn tracing_while_other_cpus_call() {
    let others: alloc::vec::Vec<usize> = (1..4)
        .filter(|&c| smp::online_mask() & (1 << c) != 0)
        .collect();
    assert!(!others.is_empty(), "other CPUs are online");
    let f = addr(traced_work as *const ());
    let before = live_slots();
    STOP.store(false, Ordering::Relaxed);
    let body_before = BODY_RUNS.load(Ordering::Relaxed);
    for &c in &others {
        smp::start_on(c, call_until_stopped, c as u64).expect("post the loop");
    }
    wait_for_calls(100);
    let in_flight = others.len() as u64;
    let (mut armed_calls, mut armed_traced) = (0, 0);
    for round in 0..40 {
        trace::trace(f, count_work, round).expect("trace");
        // The tracer counts are read between two reads of the completed calls at each end, so
        // that the other CPUs may run any number of calls between the reads (this CPU's vCPU
        // thread can be preempted there) and the bounds still hold: every call that completed
        // within the inner window was traced within the tracer window, but for the calls in
        // flight when it opened; and every traced call completed within the outer window, but
        // for those in flight when it closed.
        let (c0_outer, t0, c0_inner) = (total_calls(), work_traced(), total_calls());
        wait_for_calls(60);
        let (c1_inner, t1, c1_outer) = (total_calls(), work_traced(), total_calls());
        trace::untrace(f).expect("untrace");
        let (dc, dt) = (c1_inner - c0_inner, t1 - t0);
        let dc_outer = c1_outer - c0_outer;
        assert!(
            dt + in_flight >= dc && dt <= dc_outer + in_flight,
            "round {round}: {dc} to {dc_outer} calls completed while armed, {dt} traced"
        );
        armed_calls += dc;
        armed_traced += dt;
        // Disarmed, published and the trampoline freed: no tracer call any more.
        let t2 = work_traced();
        wait_for_calls(30);
        assert_eq!(work_traced(), t2, "round {round}: traced after untrace");
    }
    STOP.store(true, Ordering::Relaxed);
    let mut wrong = 0;
    for &c in &others {
        wrong += smp::finish(c, 20_000).expect("the loop ends");
    }
    let calls = total_calls();
    let runs = BODY_RUNS.load(Ordering::Relaxed) - body_before;
    println!(
        "  {calls} calls on {} CPUs over 40 arm/disarm rounds: {armed_calls} while armed, {armed_traced} traced; body ran {runs} times; {wrong} wrong results",
        others.len()
    );
    assert_eq!(wrong, 0);
    assert_eq!(runs, calls, "no call lost or doubled");
    assert_eq!(trace::reap(), 0, "every trampoline freed");
    assert_eq!(live_slots(), before);
}

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
    assert!(trace::traced().is_empty());
    assert_audit_clean();
}
