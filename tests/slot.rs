//! The slot allocator on the hardware backend, in every boot mode: 1,000 slots with the size mix of
//! real BPF programs, each with its own JIT'd function, all called and checked; half freed at random
//! and reallocated; freed slots trap; a large (> 2 MiB) slot; exhaustion; every bad input refused;
//! freed small slots resting in the freeing CPU's magazine, BRK-filled, and reused there; and the
//! audit clean throughout.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use execmem::bench::workload::{Rng, bpf_size};
use execmem::fault::ExceptionClass;
use execmem::pack::AllocError;
use execmem::poke::PokeError;
use execmem::poke::insn::{self, CodeBuf, W0};
use execmem::runtime::fault::{Resume, catch};
use execmem::runtime::slot::{self, ExecSlot};
use execmem::runtime::{self, exec_pool, memory};
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    runtime::testing::run(
        "slot",
        tests![
            bad_requests_are_refused,
            thousand_bpf_sized_programs,
            freed_slot_traps_on_brk,
            large_slot_spans_packs,
            bad_frees_are_refused_with_nothing_changed,
            exhaustion_is_an_error_and_the_kernel_continues,
            bad_writes_and_lookups_change_nothing,
            trim_releases_the_cached_pack,
            freed_small_slots_rest_in_the_freeing_cpus_magazine,
            code_written_on_one_cpu_runs_on_every_cpu,
            audit_is_clean_at_the_end,
        ],
    );
}

/// `movz w0, #value; ret` at the start of the slot.
fn install(slot: &ExecSlot, value: u16) {
    let mut code = CodeBuf::new(slot.addr());
    code.push(insn::movz(W0, value, 0).expect("movz"));
    code.push(insn::ret());
    slot::write(slot, 0, &code.as_bytes()).expect("write the program");
}

fn call(addr: u64) -> u32 {
    // SAFETY: called only on slots where `install` wrote a complete function.
    let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(addr as usize) };
    f()
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

fn bad_requests_are_refused() {
    assert_eq!(slot::alloc(0), Err(AllocError::ZeroSize));
    assert!(matches!(
        slot::alloc(usize::MAX),
        Err(AllocError::TooLarge { .. })
    ));
    assert!(matches!(
        slot::alloc(memory::plan().exec_pool.size as usize + 1),
        Err(AllocError::TooLarge { .. })
    ));
    assert!(matches!(
        slot::alloc_aligned(64, 3),
        Err(AllocError::BadAlignment { .. })
    ));
    assert!(matches!(
        slot::alloc_aligned(64, 8192),
        Err(AllocError::BadAlignment { .. })
    ));
    assert_eq!(
        slot::stats().allocations,
        0,
        "refused requests change nothing"
    );
}

fn thousand_bpf_sized_programs() {
    let mut rng = Rng::new(1000);
    let mut live: Vec<(ExecSlot, u16)> = Vec::new();
    for i in 0..1000u16 {
        let size = bpf_size(&mut rng);
        let slot = slot::alloc(size).unwrap_or_else(|e| panic!("alloc #{i} of {size} B: {e}"));
        assert_eq!(slot.addr() % 64, 0);
        install(&slot, i);
        live.push((slot, i));
    }
    for (slot, value) in &live {
        assert_eq!(call(slot.addr()), u32::from(*value), "{slot}");
    }
    let stats = slot::stats();
    println!("  1000 programs: {stats:?}");
    assert_audit_clean();

    // Free half at random, then allocate 500 new ones, and check every live program again.
    for _ in 0..500 {
        let victim = rng.below(live.len() as u64) as usize;
        let (slot, _) = live.swap_remove(victim);
        slot::free(slot).expect("free");
    }
    for i in 1000..1500u16 {
        let slot = slot::alloc(bpf_size(&mut rng)).expect("realloc");
        install(&slot, i);
        live.push((slot, i));
    }
    for (slot, value) in &live {
        assert_eq!(call(slot.addr()), u32::from(*value), "{slot}");
    }
    let mut map = alloc::string::String::new();
    slot::render_pack_map(&mut map).expect("render");
    println!("  pack map after churn:\n{map}");
    assert_audit_clean();
    for (slot, _) in live {
        slot::free(slot).expect("free");
    }
    assert_eq!(slot::stats().bytes_live, 0);
    assert_audit_clean();
}

fn freed_slot_traps_on_brk() {
    let slot = slot::alloc(128).expect("alloc");
    install(&slot, 77);
    let addr = slot.addr();
    assert_eq!(call(addr), 77);
    slot::free(slot).expect("free");
    let report = catch(Resume::ReturnToCaller, || {
        call(addr);
    })
    .expect("a stale call into a freed slot traps");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::Brk);
    assert_eq!(report.elr, addr);
}

fn large_slot_spans_packs() {
    let size = 5 * 1024 * 1024 + 123;
    let slot = slot::alloc(size).expect("large alloc");
    install(&slot, 500);
    let mut tail = CodeBuf::new(slot.addr() + size as u64 - 8 - (size as u64 % 4));
    tail.push(insn::movz(W0, 501, 0).expect("movz"));
    tail.push(insn::ret());
    slot::write(
        &slot,
        (tail.base() - slot.addr()) as usize,
        &tail.as_bytes(),
    )
    .expect("write at the end");
    assert_eq!(call(slot.addr()), 500);
    assert_eq!(call(tail.base()), 501);
    assert!(
        slot::write(&slot, size - 4, &[0; 8]).is_err(),
        "writes may not leave the slot"
    );
    let packs = exec_pool::live_packs();
    assert!(
        packs.len() >= 3,
        "a 5 MiB slot maps at least three packs: {packs:x?}"
    );
    assert_audit_clean();
    slot::free(slot).expect("free large");
    assert_audit_clean();
}

fn bad_frees_are_refused_with_nothing_changed() {
    let slot = slot::alloc(1000).expect("alloc");
    install(&slot, 9);
    let (ptr, size) = slot.into_raw();
    let addr = ptr as u64;
    let before = slot::stats();
    let outside = (memory::plan().exec_pool.start - 64) as *const u8;
    assert!(matches!(
        slot::free_raw(outside, 64),
        Err(AllocError::OutsidePool { .. })
    ));
    assert!(matches!(
        slot::free_raw((addr + 64) as *const u8, size),
        Err(AllocError::InteriorPointer { .. })
    ));
    assert!(matches!(
        slot::free_raw((addr + 4) as *const u8, size),
        Err(AllocError::Misaligned { .. })
    ));
    assert!(matches!(
        slot::free_raw(ptr, size + 1),
        Err(AllocError::WrongSize {
            recorded: 1000,
            given: 1001,
            ..
        })
    ));
    assert_eq!(slot::stats(), before, "refused frees change nothing");
    assert_eq!(call(addr), 9, "the slot still holds its program");
    slot::free(ExecSlot::from_raw(ptr, size)).expect("the right pair frees");
    assert!(matches!(
        slot::free_raw(ptr, size),
        Err(AllocError::DoubleFree { .. })
    ));
    let raw = slot::alloc_raw(200).expect("alloc_raw");
    slot::free_raw(raw, 200).expect("free_raw");
}

fn exhaustion_is_an_error_and_the_kernel_continues() {
    let mut held = Vec::new();
    let error = loop {
        match slot::alloc(2 * 1024 * 1024) {
            Ok(slot) => held.push(slot),
            Err(e) => break e,
        }
        assert!(held.len() <= 64, "the pool has at most 64 packs");
    };
    println!("  after {} whole-pack slots: {error}", held.len());
    assert!(
        matches!(
            error,
            AllocError::PoolExhausted { .. } | AllocError::MapFailed(_)
        ),
        "{error:?}"
    );
    assert!(!held.is_empty());
    assert_audit_clean();
    for slot in held {
        slot::free(slot).expect("free");
    }
    let slot = slot::alloc(64).expect("allocation works again");
    slot::free(slot).expect("free");
}

/// A write at an offset that wraps the address space, a handle rebuilt with a wrong size, a freed
/// handle: typed errors, nothing written. `slot_at` finds the slot of an interior address and
/// nothing elsewhere. The allocator's own packs cannot be unmapped from outside it.
fn bad_writes_and_lookups_change_nothing() {
    let slot = slot::alloc(256).expect("alloc");
    install(&slot, 77);
    assert!(matches!(
        slot::write(&slot, usize::MAX, &[0; 4]),
        Err(PokeError::OffsetOutside { .. })
    ));
    assert!(matches!(
        slot::write(&slot, 256, &[0; 4]),
        Err(PokeError::OffsetOutside { .. })
    ));
    let forged = ExecSlot::from_raw(slot.as_ptr(), usize::MAX);
    assert!(matches!(
        slot::write(&forged, 0, &[0; 4]),
        Err(PokeError::NotALiveSlot { .. })
    ));
    let _ = forged.into_raw();
    assert_eq!(call(slot.addr()), 77, "nothing was written");
    let info = slot::slot_at(slot.addr() + 100).expect("inside the slot");
    assert_eq!((info.addr, info.size), (slot.addr(), 256));
    assert_eq!(slot::slot_at(memory::plan().exec_pool.start - 4), None);
    let pack = slot.addr() - slot.addr() % (2 << 20);
    assert_eq!(
        exec_pool::unmap_pack(pack),
        Err(exec_pool::PoolError::OwnedByAllocator(pack))
    );
    assert_eq!(call(slot.addr()), 77, "the pack is still mapped");
    let (ptr, size) = slot.into_raw();
    slot::free_raw(ptr, size).expect("free");
    let freed = ExecSlot::from_raw(ptr, size);
    assert!(matches!(
        slot::write(&freed, 0, &[0; 4]),
        Err(PokeError::NotALiveSlot { .. })
    ));
    let _ = freed.into_raw();
    assert_eq!(slot::slot_at(ptr as u64), None);
    assert_audit_clean();
}

/// A freed small slot rests in this CPU's magazine, its pack mapped; `trim` returns it to the
/// pool, which caches the emptied pack, then releases that pack; the next allocation maps a pack
/// again.
fn trim_releases_the_cached_pack() {
    // Nothing resting from the tests before, no pack cached.
    slot::trim().expect("trim");
    assert_eq!(slot::stats().packs_mapped, 0);
    let slot = slot::alloc(64).expect("alloc");
    let addr = slot.addr();
    slot::free(slot).expect("free");
    let resting = slot::magazine_stats();
    assert_eq!((resting.resting_slots, resting.resting_bytes), (1, 64));
    assert_eq!((resting.pool.live_slots, resting.pool.bytes_live), (0, 0));
    assert_eq!(
        resting.pool.packs_mapped, 1,
        "the resting slot keeps its pack"
    );
    assert_eq!(slot::slot_at(addr), None, "a resting slot is free");
    assert_eq!(slot::trim(), Ok(true));
    assert_eq!(slot::magazine_stats().resting_slots, 0);
    assert_eq!(slot::stats().packs_mapped, 0);
    assert!(exec_pool::live_packs().is_empty());
    assert_eq!(slot::trim(), Ok(false));
    let slot = slot::alloc(64).expect("maps a pack again");
    install(&slot, 5);
    assert_eq!(call(slot.addr()), 5);
    slot::free(slot).expect("free");
    assert_audit_clean();
}

/// Code written by one CPU runs on every other (each executes an ISB before it calls, as the
/// mailbox does): slots JIT'd on CPU 0 called everywhere, and a slot JIT'd on another CPU called
/// on CPU 0 and the rest. The plan the pokes use was merged over every CPU.
/// Every instruction of `len` bytes at `addr` is BRK (exec memory is readable).
fn all_brk(addr: u64, len: usize) -> bool {
    (0..len / 4).all(|i| {
        // SAFETY: inside a slot of a mapped pack (RO + X, readable), 4-byte aligned.
        let word = unsafe { core::ptr::read_volatile((addr as *const u32).add(i)) };
        word == insn::brk(0)
    })
}

/// A freed small slot is BRK-filled and rests in the magazine of the CPU that freed it (free to
/// its users, reserved in the figures), and that CPU's next allocation of its class gets it back;
/// another CPU's does not. Draining returns every resting slot to the pool.
fn freed_small_slots_rest_in_the_freeing_cpus_magazine() {
    slot::trim().expect("trim");
    let slot = slot::alloc(256).expect("alloc");
    install(&slot, 31);
    let addr = slot.addr();
    assert_eq!(call(addr), 31);
    slot::free(slot).expect("free");
    let stats = slot::magazine_stats();
    assert_eq!((stats.resting_slots, stats.resting_bytes), (1, 256));
    assert_eq!(stats.pool.bytes_live, 0);
    assert_eq!(
        stats.pool.chunk_bytes_live + stats.resting_bytes,
        stats.shared.chunk_bytes_live,
        "resting slots are the shared allocator's live ones"
    );
    assert!(all_brk(addr, 256), "BRK-filled before it rests");
    assert_eq!(slot::slot_at(addr), None);
    assert!(matches!(
        slot::free_raw(addr as *const u8, 256),
        Err(AllocError::DoubleFree { .. })
    ));
    // 200 bytes is the same class (four chunks): the resting slot, BRK-filled.
    let again = slot::alloc(200).expect("alloc");
    assert_eq!(again.addr(), addr, "reused from this CPU's magazine");
    assert!(all_brk(addr, 256));
    assert_eq!(slot::magazine_stats().resting_slots, 0);
    assert_eq!(slot::stats().bytes_live, 200);
    install(&again, 32);
    assert_eq!(call(addr), 32);

    let online = runtime::smp::online_mask();
    let last = 63 - online.leading_zeros() as usize;
    if last > 0 {
        // Freed on the last CPU: it rests there, so CPU 0 gets another slot and the last CPU
        // this one.
        fn free_200(addr: u64) -> u64 {
            slot::free_raw(addr as *const u8, 200).map_or(1, |()| 0)
        }
        fn free_256(addr: u64) -> u64 {
            slot::free_raw(addr as *const u8, 256).map_or(1, |()| 0)
        }
        fn alloc_here(size: u64) -> u64 {
            slot::alloc_raw(size as usize).map_or(0, |ptr| ptr as u64)
        }
        let (ptr, _) = again.into_raw();
        assert_eq!(runtime::smp::run_on(last, free_200, ptr as u64), Ok(0));
        let here = slot::alloc(256).expect("alloc");
        assert_ne!(here.addr(), addr, "resting in another CPU's magazine");
        assert_eq!(runtime::smp::run_on(last, alloc_here, 256), Ok(addr));
        slot::free(here).expect("free");
        assert_eq!(runtime::smp::run_on(last, free_256, addr), Ok(0));
    } else {
        slot::free(again).expect("free");
    }
    let resting = slot::magazine_stats().resting_slots;
    assert!(resting >= 1);
    assert_eq!(slot::drain_magazines(), Ok(resting as usize));
    let stats = slot::magazine_stats();
    assert_eq!((stats.resting_slots, stats.shared.live_slots), (0, 0));
    assert_audit_clean();
}

fn code_written_on_one_cpu_runs_on_every_cpu() {
    let online = runtime::smp::online_mask();
    let cpus: Vec<usize> = (0..64).filter(|c| online & (1 << c) != 0).collect();
    println!("  CPUs online: {cpus:?}");
    let mut slots = Vec::new();
    for value in 0..32u16 {
        let slot = slot::alloc(64).expect("alloc");
        install(&slot, 1000 + value);
        slots.push(slot);
    }
    fn call_on(addr: u64) -> u64 {
        u64::from(call(addr))
    }
    for &c in &cpus {
        for (value, slot) in slots.iter().enumerate() {
            assert_eq!(
                runtime::smp::run_on(c, call_on, slot.addr()),
                Ok(1000 + value as u64),
                "slot {value} on CPU {c}"
            );
        }
    }
    // A slot JIT'd on the last CPU (allocation, write and pokes there), called everywhere.
    fn jit_here(value: u64) -> u64 {
        let slot = slot::alloc(64).expect("alloc on this CPU");
        install(&slot, value as u16);
        let (ptr, _) = slot.into_raw();
        ptr as u64
    }
    let last = *cpus.last().expect("CPU 0 at least");
    let addr = runtime::smp::run_on(last, jit_here, 4242).expect("runs");
    for &c in &cpus {
        assert_eq!(
            runtime::smp::run_on(c, call_on, addr),
            Ok(4242),
            "on CPU {c}"
        );
    }
    slot::free_raw(addr as *const u8, 64).expect("free");
    for slot in slots {
        slot::free(slot).expect("free");
    }
    assert_audit_clean();
}

fn audit_is_clean_at_the_end() {
    assert_eq!(slot::stats().bytes_live, 0);
    assert!(
        exec_pool::live_packs().len() <= 1,
        "only the cached empty pack stays mapped"
    );
    assert_audit_clean();
}
