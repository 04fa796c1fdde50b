//! The boot report `make run` prints: where we entered, which CPU, its caches, the memory map.

use crate::arch::aarch64::cpu;
use crate::board;
use crate::kernel::{boot_info, heap, memory};
use crate::layout::Region;
use crate::println;

/// Prints the boot report.
pub fn print_boot_report() {
    let boot = boot_info();
    println!(
        "execmem {} on {} ({})",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        board::DESCRIPTION
    );
    println!(
        "  entered at EL{}, running at EL{}",
        boot.entry_el,
        cpu::current_el()
    );
    let midr = cpu::midr();
    println!(
        "  cpu: {midr} (MIDR_EL1 {:#010x}), cpu {} of up to {}",
        midr.0,
        cpu::cpu_id(),
        board::CPUS
    );
    println!("  caches: {}", cpu::cache_type());
    println!("memory map:");
    print_region(board::RAM);
    let image = memory::KernelImage::current();
    for region in [
        image.text,
        image.rodata,
        image.data,
        memory::bss(),
        image.stacks,
    ] {
        print_region(region);
    }
    let heap = memory::heap_region();
    let (used, total) = heap::usage();
    println!("  {heap}  ({used} of {total} bytes in use)");
    for device in board::DEVICES {
        print_region(*device);
    }
}

fn print_region(region: Region) {
    println!("  {region}");
}
