//! The benchmark kernel (`make bench`): boots, then runs `runtime::bench` at full scale under
//! QEMU `-icount shift=0`, where the PMU's instruction count is exact.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod bench {
    fn main() {
        execmem::runtime::bench::run(execmem::runtime::bench::Scale::Full);
    }

    // A heap that holds rlsf's shadow arena of the whole pool window, where the RAM is there.
    execmem::entry!(main, heap = execmem::runtime::bench::HEAP);
}

/// On the host this binary only points at the real thing.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the execmem benchmark is a bare-metal kernel: run it with `make bench`.");
}
