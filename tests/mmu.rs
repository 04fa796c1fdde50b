//! W^X enforced by the MMU, in every boot mode: stores to code, read-only data and exec packs fault;
//! executing data, heap and stack faults; the idle fixmap slot and stack guards are unmapped; packs
//! are single 2 MiB blocks; and the audit finds nothing on the live tables but does find violations
//! in tables built to contain them.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, vec, vec::Vec};
use core::ptr;

use execmem::fault::{Access, ExceptionClass, FaultReport, FaultStatus};
use execmem::mmu::{
    AddressSpace, AuditContext, BLOCK_SIZE_2M, El1And0, Granularity, NoMaintenance, PackFrame,
    Role, Rule,
};
use execmem::poke::insn;
use execmem::runtime::board;
use execmem::runtime::fault::{Resume, catch};
use execmem::runtime::memory::KernelImage;
use execmem::runtime::{self, exec_pool, memory, mmu};
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    runtime::testing::run(
        "mmu",
        tests![
            mmu_is_on_with_wxn,
            audit_is_clean_after_boot,
            store_to_text_faults,
            store_to_rodata_faults,
            exec_pack_is_one_rx_block_full_of_brk,
            store_to_exec_pack_faults,
            unmapped_pack_faults_and_frame_is_reused,
            execute_from_data_faults,
            execute_from_heap_faults,
            execute_from_stack_faults,
            idle_fixmap_slot_faults,
            stack_guard_faults,
            null_page_faults,
            audit_finds_planted_violations,
            audit_finds_a_view_out_of_step_and_a_shared_private_entry,
            audit_is_clean_at_the_end,
        ],
    );
}

fn expect_store_fault(addr: u64) -> FaultReport {
    let report = catch(Resume::Skip, || {
        // SAFETY: the store must fault; `catch` skips it. If it did not fault, the test fails below.
        unsafe { ptr::write_volatile(addr as *mut u32, 0xd4200000) };
    })
    .unwrap_or_else(|| panic!("store to {addr:#x} did not fault"));
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::DataAbort);
    assert_eq!(report.access(), Some(Access::Write));
    assert_eq!(report.far, addr);
    report
}

fn expect_fetch_fault(addr: u64) -> FaultReport {
    let report = catch(Resume::ReturnToCaller, || {
        // SAFETY: the call must fault on its first instruction fetch; `catch` returns to the caller.
        let f: extern "C" fn() = unsafe { core::mem::transmute(addr as usize) };
        f();
    })
    .unwrap_or_else(|| panic!("executing {addr:#x} did not fault"));
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::InstructionAbort);
    assert_eq!(report.far, addr);
    assert_eq!(report.elr, addr);
    report
}

/// The MMU of the level the kernel runs at is on, with SCTLR_ELx.WXN, and walks this CPU's view
/// of the tables the manager maps into and audits (TTBR0_EL1 or TTBR0_EL2): a root of its own,
/// not the kernel's.
fn mmu_is_on_with_wxn() {
    assert!(mmu::mmu_enabled());
    assert!(mmu::wxn_enabled());
    let cpu = execmem::runtime::smp::this_cpu();
    assert_eq!(Some(mmu::hardware_root()), exec_pool::cpu_view_root(cpu));
    assert_ne!(mmu::hardware_root(), mmu::root().pa);
    println!(
        "  {} regime: TTBR0_EL{} = {:#x}, WXN on",
        mmu::KernelRegime::current().name(),
        mmu::KernelRegime::current().el(),
        mmu::hardware_root()
    );
}

fn audit_is_clean_after_boot() {
    let violations = exec_pool::audit();
    for v in &violations {
        println!("  violation: {v}");
    }
    assert!(violations.is_empty());
}

fn store_to_text_faults() {
    let text = KernelImage::current().text;
    let target = text.start + 0x100;
    let report = expect_store_fault(target);
    assert!(
        matches!(report.status(), Some(FaultStatus::Permission(3))),
        "{report}"
    );
}

static RODATA_WORD: u32 = 0x1234_5678;

fn store_to_rodata_faults() {
    let addr = &RODATA_WORD as *const u32 as u64;
    assert!(KernelImage::current().rodata.contains(addr));
    let report = expect_store_fault(addr);
    assert!(
        matches!(report.status(), Some(FaultStatus::Permission(_))),
        "{report}"
    );
    assert_eq!(core::hint::black_box(RODATA_WORD), 0x1234_5678);
}

fn exec_pack_is_one_rx_block_full_of_brk() {
    let pack = memory::plan().exec_pool.start;
    exec_pool::map_pack(pack).expect("map a pack");
    let translation = mmu::translate(pack).expect("pack is mapped");
    assert_eq!(translation.level, 2, "a pack is one level-2 block");
    assert_eq!(translation.size, BLOCK_SIZE_2M);
    assert!(
        memory::plan().exec_frames.contains(translation.pa),
        "backed by an exec frame"
    );
    for offset in [0, 4, 0x1000, BLOCK_SIZE_2M - 4] {
        // SAFETY: inside the mapped pack, which is readable.
        let word = unsafe { ptr::read_volatile((pack + offset) as *const u32) };
        assert_eq!(word, insn::brk(0), "fresh packs are filled with BRK");
    }
    assert!(exec_pool::audit().is_empty());
}

fn store_to_exec_pack_faults() {
    let pack = memory::plan().exec_pool.start;
    for offset in [0, 0x40, BLOCK_SIZE_2M - 4] {
        let report = expect_store_fault(pack + offset);
        assert!(
            matches!(report.status(), Some(FaultStatus::Permission(2))),
            "{report}"
        );
    }
}

fn unmapped_pack_faults_and_frame_is_reused() {
    let pack = memory::plan().exec_pool.start;
    let pa = exec_pool::exec_pa(pack).expect("mapped by the previous case");
    exec_pool::unmap_pack(pack).expect("unmap");
    assert_eq!(exec_pool::exec_pa(pack), None);
    let report = catch(Resume::Skip, || {
        // SAFETY: the load must fault on the unmapped pack; `catch` skips it.
        unsafe { ptr::read_volatile(pack as *const u32) };
    })
    .expect("load from an unmapped pack faults");
    assert!(
        matches!(report.status(), Some(FaultStatus::Translation(2))),
        "{report}"
    );
    assert_eq!(
        exec_pool::unmap_pack(pack),
        Err(exec_pool::PoolError::NotMapped(pack))
    );
    // The frame went back to the allocator: the next pack gets it again.
    let other = pack + BLOCK_SIZE_2M;
    exec_pool::map_pack(other).expect("map");
    assert_eq!(exec_pool::exec_pa(other), Some(pa));
    assert_eq!(
        exec_pool::map_pack(other),
        Err(exec_pool::PoolError::AlreadyMapped(other))
    );
    assert_eq!(
        exec_pool::map_pack(other + 4),
        Err(exec_pool::PoolError::NotAPack(other + 4))
    );
    exec_pool::unmap_pack(other).expect("unmap");
}

static mut DATA_CODE: [u32; 2] = [0xd65f_03c0, 0xd65f_03c0];

fn execute_from_data_faults() {
    let addr = &raw const DATA_CODE as u64;
    let report = expect_fetch_fault(addr);
    assert!(
        matches!(report.status(), Some(FaultStatus::Permission(3))),
        "{report}"
    );
}

fn execute_from_heap_faults() {
    let code: Box<[u32]> = vec![insn::ret(); 4].into_boxed_slice();
    let report = expect_fetch_fault(code.as_ptr() as u64);
    assert!(
        matches!(report.status(), Some(FaultStatus::Permission(_))),
        "{report}"
    );
}

fn execute_from_stack_faults() {
    let code = [insn::ret(); 4];
    let report = expect_fetch_fault(core::hint::black_box(&code).as_ptr() as u64);
    assert!(
        matches!(report.status(), Some(FaultStatus::Permission(3))),
        "{report}"
    );
}

fn idle_fixmap_slot_faults() {
    for cpu in 0..board::CPUS {
        let slot = mmu::fixmap_poke_slot(cpu);
        let report = catch(Resume::Skip, || {
            // SAFETY: the idle slot is invalid, the load faults and is skipped.
            unsafe { ptr::read_volatile(slot as *const u64) };
        })
        .expect("idle fixmap slot must fault");
        assert!(
            matches!(report.status(), Some(FaultStatus::Translation(3))),
            "{report}"
        );
    }
    let fill = mmu::fixmap_fill_block();
    let report = catch(Resume::Skip, || {
        // SAFETY: as above, for the pack-fill block.
        unsafe { ptr::read_volatile(fill as *const u64) };
    })
    .expect("idle fill block must fault");
    println!("  caught: {report}");
}

fn stack_guard_faults() {
    let image = KernelImage::current();
    for cpu in 0..image.stack_count() {
        let guard = image.stack_guard(cpu);
        let report = expect_store_fault(guard.end() - 8);
        assert!(
            matches!(report.status(), Some(FaultStatus::Translation(3))),
            "{report}"
        );
    }
}

fn null_page_faults() {
    let report = catch(Resume::Skip, || {
        // SAFETY: the null page is never mapped; the load faults and is skipped.
        unsafe { ptr::read_volatile(core::hint::black_box(0x10usize) as *const u64) };
    })
    .expect("null page must fault");
    assert!(
        matches!(report.status(), Some(FaultStatus::Translation(_))),
        "{report}"
    );
}

/// Builds tables (not live) with a W+X mapping, a writable alias of exec frames, a pack split
/// into pages and a pack mapped writable, and checks the audit reports each.
fn audit_finds_planted_violations() {
    let pool = memory::plan().exec_pool;
    let frames = memory::plan().exec_frames;
    let mut tables = AddressSpace::<El1And0>::new().expect("tables");
    let mut map = |va: u64, pa: u64, size: u64, role: Role, granularity: Granularity| {
        tables
            .map(va, pa, size, role, granularity, &mut NoMaintenance)
            .expect("map");
    };
    let scratch = 0x10_0000_0000u64; // far from anything the pool uses
    let text = KernelImage::current().text;
    let stray = pool.start + 2 * BLOCK_SIZE_2M;
    // A writable page that will be made executable by hand below (the API cannot build one).
    map(scratch, 0x4000_0000, 0x1000, Role::Data, Granularity::Pages);
    // A writable alias of an exec frame.
    map(
        scratch + 0x20_0000,
        frames.start,
        0x1000,
        Role::Data,
        Granularity::Pages,
    );
    // A pack split into pages.
    map(
        pool.start,
        frames.start,
        0x1000,
        Role::ExecPool,
        Granularity::Pages,
    );
    // A pack mapped writable.
    map(
        pool.start + BLOCK_SIZE_2M,
        frames.start + BLOCK_SIZE_2M,
        BLOCK_SIZE_2M,
        Role::Data,
        Granularity::Block2M,
    );
    // Kernel text, executable, and a writable alias of it.
    map(
        text.start,
        text.start,
        0x1000,
        Role::Code,
        Granularity::Pages,
    );
    map(
        scratch + 0x40_0000,
        text.start,
        0x1000,
        Role::Data,
        Granularity::Pages,
    );
    // A pack block backed by memory outside the exec frames.
    map(
        stray,
        0x40_0000_0000 - BLOCK_SIZE_2M,
        BLOCK_SIZE_2M,
        Role::ExecPool,
        Granularity::Block2M,
    );
    let entry = tables.leaf_entry_ptr(scratch).expect("L3 entry");
    // SAFETY: the entry of a table we own and that no CPU walks; clear PXN (bit 53).
    unsafe {
        entry
            .as_ptr()
            .write_volatile(entry.as_ptr().read_volatile() & !(1 << 53))
    };

    let live = [
        PackFrame {
            va: pool.start,
            pa: frames.start,
        },
        PackFrame {
            va: pool.start + BLOCK_SIZE_2M,
            pa: frames.start + BLOCK_SIZE_2M,
        },
    ];
    let frame_range = frames.start..frames.end();
    let context = |wxn| AuditContext {
        wxn,
        exec_pool_va: pool.start..pool.end(),
        exec_frames_pa: core::slice::from_ref(&frame_range),
        fixmap_va: memory::plan().fixmap.start..memory::plan().fixmap.end(),
        active_poke: None,
        live_packs: &live,
    };
    let violations = tables.audit(&context(false));
    for v in &violations {
        println!("  found: {v}");
    }
    let rules: Vec<(u64, Rule)> = violations.iter().map(|v| (v.va, v.rule)).collect();
    assert!(rules.contains(&(scratch, Rule::WritableExecutable)), "W+X");
    assert!(
        rules.contains(&(scratch + 0x20_0000, Rule::WritableAliasOfExecMemory)),
        "alias"
    );
    assert!(
        rules
            .iter()
            .any(|&(va, r)| va == pool.start && r == Rule::PackNotBlock),
        "split pack"
    );
    assert!(
        rules
            .iter()
            .any(|&(va, r)| va == pool.start + BLOCK_SIZE_2M && r == Rule::PackAttributes),
        "writable pack"
    );
    // With WXN the W+X leaf is not executable, so that one rule no longer fires.
    let with_wxn = tables.audit(&context(true));
    assert!(!with_wxn.iter().any(|v| v.rule == Rule::WritableExecutable));
}

/// The views' own rules, planted in the live tables and taken back: a root entry of the last
/// CPU's view that the kernel's root does not have (an invalid but non-zero value, which no walk
/// uses), and the first CPU's private fixmap entry linked from the kernel's root (which no CPU's
/// TTBR holds once every CPU is on its view). Each is reported by the manager's audit and by
/// `fixmap_views`, and both are clean again once the entries are restored.
fn audit_finds_a_view_out_of_step_and_a_shared_private_entry() {
    let cpus = (0..64)
        .filter(|&c| exec_pool::cpu_view_root(c).is_some())
        .count();
    let last = exec_pool::cpu_view_root(cpus - 1).expect("a view per CPU");
    let first = exec_pool::cpu_view_root(0).expect("a view per CPU");
    let kernel = mmu::root().pa;
    let fixmap = memory::plan().fixmap.start;
    let index = |va: u64| (va >> 30) & 511;
    // Root tables are identity-mapped heap memory: entry `i` is at PA + 8 i.
    let entry = |root: u64, i: u64| (root + 8 * i) as *mut u64;
    let spare = 300;
    // SAFETY: root tables of the live tables; entry 300 (GiB 300) maps nothing in any root, and
    // an invalid value (bit 0 clear) is never walked; the kernel's root is in no CPU's TTBR.
    unsafe {
        assert_eq!(entry(last, spare).read_volatile(), 0);
        entry(last, spare).write_volatile(0x2);
        entry(kernel, index(fixmap)).write_volatile(entry(first, index(fixmap)).read_volatile());
    }
    let violations = exec_pool::audit();
    let views = exec_pool::fixmap_views();
    // SAFETY: as above, putting both entries back.
    unsafe {
        entry(last, spare).write_volatile(0);
        entry(kernel, index(fixmap)).write_volatile(0);
    }
    for v in &violations {
        println!("  found: {v}");
    }
    let found = |list: &[execmem::mmu::Violation], rule| list.iter().any(|v| v.rule == rule);
    assert!(found(&violations, Rule::ViewDiverges), "a view out of step");
    assert!(
        found(&violations, Rule::PrivateEntryShared),
        "a private entry shared"
    );
    assert!(found(&views.violations, Rule::ViewDiverges));
    assert!(found(&views.violations, Rule::PrivateEntryShared));
    assert!(exec_pool::audit().is_empty(), "clean once restored");
    assert!(exec_pool::fixmap_views().violations.is_empty());
}

fn audit_is_clean_at_the_end() {
    assert!(exec_pool::live_packs().is_empty());
    assert!(exec_pool::audit().is_empty());
}
