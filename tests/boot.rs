//! Boot foundation, in every boot mode: we reach Rust at EL2 when entered at EL2 (the kernel is
//! the hypervisor) and at EL1 otherwise, the console works, the heap works, and faults are
//! reported decoded.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, collections::BTreeMap, format, vec::Vec};
use core::ptr;

use aarch64_cpu::registers::{DAIF, Readable};
use arm_gic::IntId;
use arm_gic::gicv2::GicV2;
use execmem::arch::aarch64::cpu;
use execmem::fault::{Access, ExceptionClass, FaultStatus};
use execmem::layout::Region;
use execmem::machine::Gic;
use execmem::machine::Source;
use execmem::runtime::board;
use execmem::runtime::boot::{El2Stub, el2_stub_call, el2_stub_present};
use execmem::runtime::{
    self,
    fault::{Resume, catch},
    memory,
};
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    runtime::testing::run(
        "boot",
        tests![
            runs_at_the_expected_level,
            entry_level_is_plausible,
            console_prints,
            fp_simd_is_enabled,
            heap_allocates_and_frees,
            data_abort_is_decoded,
            undefined_instruction_is_decoded,
            brk_is_decoded,
            memory_map_comes_from_the_device_tree,
            placed_regions_lie_in_free_ram,
            serror_and_irq_are_unmasked,
            serror_is_taken_and_decoded,
            timer_frequency_is_set,
            gic_interrupts_are_usable_by_the_kernel,
            every_cpu_comes_online,
        ],
    );
}

fn runs_at_the_expected_level() {
    let entry = runtime::boot_info().entry_el;
    let expected = if entry == 2 { 2 } else { 1 };
    assert_eq!(cpu::current_el(), expected, "entered at EL{entry}");
    let regime = runtime::mmu::KernelRegime::current();
    assert_eq!(regime.el(), expected);
    println!(
        "  entered at EL{entry}, running at EL{expected} ({} regime)",
        regime.name()
    );
}

fn entry_level_is_plausible() {
    let el = runtime::boot_info().entry_el;
    assert!((1..=3).contains(&el), "entry EL{el}");
    println!("  entered at EL{el}");
}

fn console_prints() {
    println!("  console: {} {:#x} {:?}", "text", 0xc0de_u32, [1, 2, 3]);
}

fn fp_simd_is_enabled() {
    // Real floating point at run time (black_box stops constant folding).
    let x = core::hint::black_box(1.5f64);
    assert_eq!(x * 2.0 + 0.25, 3.25);
}

fn heap_allocates_and_frees() {
    let mut v: Vec<u64> = (0..10_000).collect();
    v.retain(|x| x % 3 == 0);
    assert_eq!(v.len(), 3334);
    let big = Box::new([0xa5u8; 64 * 1024]);
    assert!(big.iter().all(|b| *b == 0xa5));
    let mut map = BTreeMap::new();
    for i in 0..1000u32 {
        map.insert(i.wrapping_mul(2_654_435_761), i);
    }
    assert_eq!(map.len(), 1000);
    let (used_before, _) = runtime::heap::usage();
    drop((v, big, map));
    let (used_after, total) = runtime::heap::usage();
    assert!(used_after < used_before && total > 0);
}

fn data_abort_is_decoded() {
    // An address no mapping or device covers on either board.
    let bad = 0x7f_0000_0000 as *mut u64;
    let report = catch(Resume::Skip, || {
        // SAFETY: the store is expected to fault; `catch` skips it.
        unsafe { ptr::write_volatile(bad, 0x1234) };
    })
    .expect("store to an unmapped address must fault");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::DataAbort);
    assert_eq!(report.access(), Some(Access::Write));
    assert!(
        matches!(report.status(), Some(FaultStatus::Translation(_))),
        "{report}"
    );
    assert_eq!(report.far, bad as u64);
}

fn undefined_instruction_is_decoded() {
    let report = catch(Resume::Skip, || {
        // SAFETY: UDF raises an undefined-instruction exception that `catch` skips.
        unsafe { core::arch::asm!("udf #0x2a") };
    })
    .expect("udf must trap");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::Unknown);
}

fn brk_is_decoded() {
    let report = catch(Resume::Skip, || {
        // SAFETY: BRK raises a breakpoint exception that `catch` skips.
        unsafe { core::arch::asm!("brk #0x3e8") };
    })
    .expect("brk must trap");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::Brk);
    assert_eq!(report.immediate(), Some(0x3e8));
}

/// Every boot mode of both boards has a device tree (QEMU virt's own; board/rpi4/board.dts for
/// raspi4b): the map must come from it, not from the static fallback.
fn memory_map_comes_from_the_device_tree() {
    let machine = memory::machine();
    let Source::DeviceTree { address, size } = machine.source else {
        panic!("the memory map came from the static fallback: the loader's tree was not found");
    };
    println!(
        "  tree at {address:#x} ({size} bytes): {} MiB of RAM, {} CPUs",
        machine.ram_size() >> 20,
        machine.cpus.len()
    );
    assert!(machine.ram_size() >= 128 << 20);
    assert!(!machine.cpus.is_empty());
    assert!(machine.uart.is_some() && machine.gic.is_some());
    let tree = Region::new("tree", address, size);
    assert!(
        machine
            .reserved
            .contains(&Region::new("device tree", address, size)),
        "the tree itself is kept"
    );
    assert!(!tree.overlaps(&memory::KernelImage::current().all()));
}

/// The heap and the exec frames are RAM the tree describes, apart from each other, the image and
/// everything reserved; the pool is within one BL of the text (what the boot check enforces).
fn placed_regions_lie_in_free_ram() {
    let (machine, plan) = (memory::machine(), memory::plan());
    let in_ram = |r: &Region| {
        machine
            .ram
            .iter()
            .any(|b| b.start <= r.start && r.end() <= b.end())
    };
    let image = memory::KernelImage::current().all();
    for region in [plan.heap, plan.exec_frames] {
        assert!(in_ram(&region), "{region} outside RAM");
        assert!(!region.overlaps(&image), "{region} overlaps the kernel");
        for reserved in &machine.reserved {
            assert!(!region.overlaps(reserved), "{region} overlaps {reserved}");
        }
    }
    assert!(!plan.heap.overlaps(&plan.exec_frames));
    let text = memory::KernelImage::current().text;
    assert!(execmem::layout::branch_reaches(&plan.exec_pool, &text));
    assert!(execmem::layout::branch_reaches(&text, &plan.exec_pool));
}

/// Once the vectors are in place SErrors and IRQs are not masked (they would stay pending).
fn serror_and_irq_are_unmasked() {
    assert!(DAIF.matches_all(DAIF::A::Unmasked), "SError masked");
    assert!(DAIF.matches_all(DAIF::I::Unmasked), "IRQ masked");
}

/// An SError is taken and decoded like any other exception. QEMU raises none by itself; with EL2
/// below us the stub makes a virtual one pending (HCR_EL2.VSE). Entered at EL1 there is no EL2 to
/// ask (virt-el1), and running at EL2 there is no stub (the kernel is EL2), which the case says.
fn serror_is_taken_and_decoded() {
    if !el2_stub_present(runtime::boot_info().entry_el) {
        println!(
            "  running at EL{} with no EL2 stub below: no virtual SError to provoke",
            cpu::current_el()
        );
        return;
    }
    let report = catch(Resume::Continue, || {
        // SAFETY: the stub is present; the SError it raises is expected by `catch` and taken right
        // after the HVC returns (PSTATE.A is clear), before `EndVirtualSError` below.
        let raised = unsafe { el2_stub_call(El2Stub::RaiseVirtualSError) };
        assert_eq!(raised, 0);
        // SAFETY: a context synchronisation point; the pending SError is taken by now.
        unsafe { core::arch::asm!("isb") };
    });
    // SAFETY: the stub is present; this ends what RaiseVirtualSError began.
    assert_eq!(unsafe { el2_stub_call(El2Stub::EndVirtualSError) }, 0);
    let report = report.expect("the virtual SError must be taken at EL1");
    println!("  caught: {report}");
    assert_eq!(report.class(), ExceptionClass::SError);
    assert!(format!("{report}").starts_with("SError: "), "{report}");
    // And nothing is pending any more.
    // SAFETY: an ISB, which nothing can fault on.
    assert!(catch(Resume::Continue, || unsafe { core::arch::asm!("isb") }).is_none());
}

/// CNTFRQ_EL0 says how fast the counter runs. Entered at EL3 the kernel set it as firmware would:
/// the device tree's `clock-frequency`, else the board's constant; otherwise the firmware (QEMU) did.
fn timer_frequency_is_set() {
    let hz = cpu::timer_frequency();
    println!("  CNTFRQ_EL0 = {hz} Hz");
    if runtime::boot_info().entry_el == 3 {
        let expected = memory::machine().timer_hz.unwrap_or(board::TIMER_HZ);
        assert_eq!(hz, u64::from(expected));
    } else {
        assert_ne!(hz, 0);
    }
}

/// The kernel (non-secure EL1) can enable an interrupt at the distributor: it is in Group 1. Left in
/// Group 0, which a GIC-400 with the Security Extensions resets to, the write would be ignored
/// (arm-gic reads the enable back and reports it). QEMU's GICs here have no Security Extensions
/// (printed), so in QEMU this passes whoever set the groups; on a Pi entered at EL3 it needs
/// `runtime::firmware`.
fn gic_interrupts_are_usable_by_the_kernel() {
    let Some(Gic::V2 {
        distributor,
        cpu_interface,
    }) = memory::machine().gic
    else {
        panic!("both boards have a GICv2");
    };
    // SAFETY: the distributor and CPU interface are mapped as Device memory; no other code drives
    // the GIC yet. Only the non-secure EL1 physical timer's PPI is touched, and it is turned off
    // again; the timer itself is not running, so it cannot fire.
    let mut gic = unsafe { GicV2::new(distributor.start as *mut _, cpu_interface.start as *mut _) };
    println!(
        "  GICD_TYPER.SecurityExtn = {}",
        gic.typer().has_security_extension()
    );
    let timer = IntId::ppi(14);
    gic.enable_interrupt(timer, true)
        .expect("PPI 14 (INTID 30) must be in Group 1, enabled by the kernel");
    gic.enable_interrupt(timer, false).expect("disable");
}

/// Every CPU of the device tree (up to the kernel's stacks) came online at the kernel's level, in
/// its address space, and runs what it is sent: each answers with its own MPIDR, exception level
/// and translation root, and its index is the place of its full MPIDR affinity in the index table.
fn every_cpu_comes_online() {
    let expected = memory::machine().cpus.len().min(board::CPUS);
    let online = runtime::smp::online_mask();
    println!(
        "  {} of {expected} CPUs online (mask {online:#x})",
        online.count_ones()
    );
    assert_eq!(online.count_ones() as usize, expected);
    /// Its index (bits 6:0), whether the index table names its own MPIDR affinity (bit 7), its
    /// exception level and its translation root.
    fn identity(_: u64) -> u64 {
        use core::sync::atomic::Ordering;
        let index = runtime::smp::this_cpu();
        let listed = runtime::boot::CPU_AFFINITY
            .get(index)
            .is_some_and(|a| a.load(Ordering::Relaxed) == cpu::mpidr_affinity());
        let root = runtime::mmu::hardware_root();
        (index as u64 & 0x7f)
            | (u64::from(listed) << 7)
            | (u64::from(cpu::current_el()) << 8)
            | (root << 16)
    }
    let here = identity(0);
    for index in 0..expected {
        let answer = runtime::smp::run_on(index, identity, 0).expect("the CPU answers");
        assert_eq!(answer & 0x7f, index as u64, "CPU {index} runs it");
        assert!(
            answer & 0x80 != 0,
            "CPU {index}'s index comes from its own MPIDR affinity"
        );
        assert_eq!(answer >> 8 & 0xff, here >> 8 & 0xff, "same level as CPU 0");
        // Each CPU walks its own view of the tables (its poke slot is private to it).
        let view = runtime::exec_pool::cpu_view_root(index).expect("a view per CPU");
        assert_eq!(answer >> 16, view, "CPU {index} runs on its own view");
        assert!(
            (0..index).all(|other| runtime::exec_pool::cpu_view_root(other) != Some(view)),
            "CPU {index}'s view is no other CPU's"
        );
    }
    assert_eq!(
        runtime::smp::run_on(board::CPUS, identity, 0),
        Err(runtime::smp::SmpError::NotOnline(board::CPUS))
    );
}
