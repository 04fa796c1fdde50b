//! Boot foundation, in every boot mode: we reach Rust at EL1 whatever the entry level, the console
//! works, the heap works, and faults are reported decoded.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, collections::BTreeMap, vec::Vec};
use core::ptr;

use execmem::arch::aarch64::cpu;
use execmem::fault::{Access, ExceptionClass, FaultStatus};
use execmem::kernel::{
    self,
    fault::{Resume, catch},
    memory,
};
use execmem::layout::Region;
use execmem::machine::Source;
use execmem::{println, tests};

execmem::entry!(main);

fn main() {
    kernel::testing::run(
        "boot",
        tests![
            runs_at_el1,
            entry_level_is_plausible,
            console_prints,
            fp_simd_is_enabled,
            heap_allocates_and_frees,
            data_abort_is_decoded,
            undefined_instruction_is_decoded,
            brk_is_decoded,
            memory_map_comes_from_the_device_tree,
            placed_regions_lie_in_free_ram,
        ],
    );
}

fn runs_at_el1() {
    assert_eq!(cpu::current_el(), 1);
}

fn entry_level_is_plausible() {
    let el = kernel::boot_info().entry_el;
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
    let (used_before, _) = kernel::heap::usage();
    drop((v, big, map));
    let (used_after, total) = kernel::heap::usage();
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
