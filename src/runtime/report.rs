//! The boot report `make run` prints: where we entered, which CPU, its caches, the memory map.

use crate::arch::aarch64::cpu;
use crate::runtime::board;
use alloc::string::String;
use alloc::vec::Vec;

use crate::layout::{Region, Size};
use crate::machine::{EnableMethod, Gic, PsciConduit};
use crate::println;
use crate::runtime::{boot_info, heap, memory};

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
        "  entered at EL{}, running at EL{} (the {} translation regime)",
        boot.entry_el,
        cpu::current_el(),
        crate::runtime::mmu::KernelRegime::current().name()
    );
    if cpu::current_el() == 2 {
        println!(
            "  VHE: {}, HCR_EL2.E2H {}",
            if cpu::has_vhe() { "yes" } else { "no" },
            if cpu::e2h_is_res1() {
                "RES1"
            } else {
                "may be 0"
            }
        );
    }
    let midr = cpu::midr();
    println!(
        "  cpu: {midr} (MIDR_EL1 {:#010x}), cpu {} (MPIDR affinity {:#x}) of up to {}",
        midr.0,
        crate::runtime::smp::this_cpu(),
        cpu::mpidr_affinity(),
        board::CPUS
    );
    println!("  caches: {}", cpu::cache_type());
    let machine = memory::machine();
    let plan = memory::plan();
    println!("memory map from the {}:", machine.source);
    for bank in &machine.ram {
        println!("  {bank}");
    }
    println!(
        "  RAM: {} in {} bank(s)",
        Size(machine.ram_size()),
        machine.ram.len()
    );
    for reserved in &machine.reserved {
        println!("  {reserved}  (left alone)");
    }
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
    let (used, total) = heap::usage();
    println!("  {}  ({used} of {total} bytes in use)", plan.heap);
    print_region(plan.exec_pool);
    print_region(plan.exec_frames);
    print_region(plan.fixmap);
    for device in memory::devices(machine) {
        print_region(device);
    }
    let mpidrs: Vec<String> = machine
        .cpus
        .iter()
        .map(|c| alloc::format!("{:#x}", c.mpidr))
        .collect();
    println!(
        "  cpus: {} in the map (MPIDR {}), enable method {}; the kernel runs up to {}, {} online",
        machine.cpus.len(),
        mpidrs.join(", "),
        match machine
            .cpus
            .get(1)
            .or(machine.cpus.first())
            .map(|c| c.enable)
        {
            Some(EnableMethod::Psci) => "PSCI",
            Some(EnableMethod::SpinTable(_)) => "spin table",
            _ => "none named",
        },
        board::CPUS,
        crate::runtime::smp::online_mask().count_ones()
    );
    println!(
        "  gic: {}, psci: {}, timer: {} Hz ({})",
        match machine.gic {
            Some(Gic::V2 { .. }) => "GICv2",
            Some(Gic::V3 { .. }) => "GICv3",
            None => "none",
        },
        match machine.psci {
            Some(PsciConduit::Hvc) => "hvc",
            Some(PsciConduit::Smc) => "smc",
            None => "none",
        },
        cpu::timer_frequency(),
        match machine.timer_hz {
            Some(hz) if u64::from(hz) == cpu::timer_frequency() => "CNTFRQ_EL0, as the tree says",
            Some(_) => "CNTFRQ_EL0; the tree says otherwise",
            None => "CNTFRQ_EL0",
        }
    );
}

fn print_region(region: Region) {
    println!("  {region}");
}
