//! Test module `user`: depends on module `hello` (imports two of its exports), so the kernel
//! must load hello first and refuse to unload it while user is loaded.
//!
//! Built by build.rs into `$OUT_DIR/modules/user.o`. No core symbol is referenced.

#![no_std]

unsafe extern "C" {
    fn kernel_event(code: u64);
    fn hello_add(a: u64, b: u64) -> u64;
    fn hello_count() -> u64;
}

#[unsafe(no_mangle)]
pub extern "C" fn module_init() -> i32 {
    // SAFETY: a kernel export.
    unsafe { kernel_event(3) };
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn module_exit() {
    // SAFETY: a kernel export.
    unsafe { kernel_event(4) }
}

/// `hello_add(x, 10)`, i.e. x + 11 (a tail call: JUMP26 to hello).
#[unsafe(no_mangle)]
pub extern "C" fn user_calls_hello(x: u64) -> u64 {
    // SAFETY: hello's export.
    unsafe { hello_add(x, 10) }
}

/// Calls `hello_count` twice and returns the second result (CALL26, then a JUMP26 tail call).
#[unsafe(no_mangle)]
pub extern "C" fn user_count_twice() -> u64 {
    // SAFETY: hello's export.
    unsafe {
        hello_count();
        hello_count()
    }
}
