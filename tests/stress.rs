//! Every CPU at once, in every boot mode: each allocates a BPF-sized slot, JITs a function into it
//! and queues it; each takes a slot another CPU (most likely) queued, calls it, checks the result
//! and frees it. No ISB on the calling CPU: the write's publication (every other CPU synchronised
//! before `write` returned) is what makes the code safe to call anywhere. The audit runs on CPU 0 during the run
//! and after it. Zero wrong results, zero unexpected faults, nothing left allocated.
//! `make test` runs 1,000 operations per CPU; `make stress` (feature `stress-full`) 100,000.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use execmem::bench::workload::{Rng, bpf_size};
use execmem::poke::insn::{self, CodeBuf, W0};
use execmem::runtime::{self, exec_pool, slot, smp};
use execmem::{println, tests};

execmem::entry!(main);

/// Operations per CPU.
const OPS: u64 = if cfg!(feature = "stress-full") {
    100_000
} else {
    1_000
};

fn main() {
    runtime::testing::run("stress", tests![every_cpu_at_once]);
}

/// Slots JIT'd and not yet called: (address, size, the value the function returns).
static QUEUE: spin::Mutex<VecDeque<(u64, usize, u32)>> = spin::Mutex::new(VecDeque::new());
static CALLED: AtomicU64 = AtomicU64::new(0);
static AUDITS: AtomicU64 = AtomicU64::new(0);

fn call(addr: u64) -> u32 {
    // SAFETY: only called on slots whose complete function was written and published.
    let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(addr as usize) };
    f()
}

/// Calls a queued slot written by some CPU and frees it; returns whether the result was right.
fn take_call_free(entry: (u64, usize, u32)) -> bool {
    let (addr, size, value) = entry;
    // The writer's `write` returned before it queued the slot: this CPU had synchronised by then
    // (the publication contract), so no ISB is needed here.
    let right = call(addr) == value;
    slot::free_raw(addr as *const u8, size).expect("free a slot another CPU allocated");
    CALLED.fetch_add(1, Ordering::Relaxed);
    right
}

/// One CPU's share; returns the number of wrong results.
fn churn(ops: u64) -> u64 {
    let me = execmem::runtime::smp::this_cpu() as u64;
    let mut rng = Rng::new(0x5eed + me);
    let mut wrong = 0;
    for i in 0..ops {
        let size = bpf_size(&mut rng);
        let value = ((me << 24) | (i & 0xff_ffff)) as u32;
        let slot = slot::alloc(size).expect("the pool has room for a few live slots per CPU");
        let mut code = CodeBuf::new(slot.addr());
        code.push(insn::movz(W0, value as u16, 0).expect("movz"));
        code.push(insn::movk(W0, (value >> 16) as u16, 16).expect("movk"));
        code.push(insn::ret());
        slot::write(&slot, 0, &code.as_bytes()).expect("write");
        let (ptr, size) = slot.into_raw();
        let taken = {
            let mut queue = QUEUE.lock();
            queue.push_back((ptr as u64, size, value));
            queue.pop_front()
        };
        if let Some(entry) = taken {
            wrong += u64::from(!take_call_free(entry));
        }
        if me == 0 && i % 500 == 0 {
            let violations = exec_pool::audit();
            for v in &violations {
                println!("  violation during the run: {v}");
            }
            assert!(violations.is_empty(), "audit during the run");
            AUDITS.fetch_add(1, Ordering::Relaxed);
        }
    }
    wrong
}

fn every_cpu_at_once() {
    let online = smp::online_mask();
    let others: Vec<usize> = (1..64).filter(|&c| online & (1 << c) != 0).collect();
    println!("  CPUs 0 and {others:?}, {OPS} operations each");
    for &c in &others {
        smp::start_on(c, churn, OPS).expect("post the churn");
    }
    let mut wrong = churn(OPS);
    for &c in &others {
        let theirs = smp::finish(c, 600_000).expect("the CPU finishes its share");
        println!("  CPU {c}: {theirs} wrong");
        wrong += theirs;
    }
    let left: Vec<_> = QUEUE.lock().drain(..).collect();
    for entry in left {
        wrong += u64::from(!take_call_free(entry));
    }
    let total = OPS * (1 + others.len() as u64);
    println!(
        "  {} slots JIT'd, called on some CPU and freed; {wrong} wrong; {} audits during the run",
        CALLED.load(Ordering::Relaxed),
        AUDITS.load(Ordering::Relaxed)
    );
    assert_eq!(CALLED.load(Ordering::Relaxed), total);
    assert_eq!(wrong, 0);
    assert!(exec_pool::audit().is_empty(), "audit after the run");
    let stats = slot::stats();
    assert_eq!((stats.live_slots, stats.bytes_live), (0, 0));
    assert!(stats.packs_mapped <= 1, "only the cached pack stays");
}
