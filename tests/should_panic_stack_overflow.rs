//! A stack overflow must be reported, not turn into a cascade of faults: recursion runs the boot
//! stack into its guard page; the exception entry sees the frame would not fit, switches to the
//! overflow stack and reports, and the run ends with failure. The runner expects exactly that.

#![no_std]
#![no_main]

use execmem::println;

execmem::entry!(main);

fn main() {
    println!("expect failure: *** stack overflow: synchronous exception (current EL, SP_ELx)");
    println!("recursing until the stack runs into its guard page");
    let depth = recurse(0);
    println!("returned from depth {depth}: the guard page did not stop the recursion");
}

/// About 1 KiB of stack per level; not a tail call.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    core::hint::black_box(&mut frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(frame[0])
}
