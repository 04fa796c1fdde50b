//! The execmem demo kernel (`make run`): boots, prints the boot report, and exits.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use execmem::kernel::report;

    fn main() {
        report::print_boot_report();
    }

    execmem::entry!(main);
}

/// On the host this binary only points at the real thing.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "execmem is a bare-metal kernel: run it with `make run` (QEMU) or `make image` (SD card)."
    );
}
