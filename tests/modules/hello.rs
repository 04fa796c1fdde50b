//! Test module `hello`: an init and an exit that report to the kernel, a call into a kernel
//! export, and one item in each kind of module data (.bss, .data, .rodata reached through a
//! pointer that needs a relocation).
//!
//! Built by build.rs into `$OUT_DIR/modules/hello.o` (an ELF ET_REL object, never linked).
//! Nothing here can panic: no core symbol is referenced, only the kernel's exports below.

#![no_std]

unsafe extern "C" {
    fn kernel_log(ptr: *const u8, len: usize);
    fn kernel_event(code: u64);
    fn kernel_add(a: u64, b: u64) -> u64;
}

/// Incremented by `hello_count`; zero-initialised, so in .bss.
static mut COUNT: u64 = 0;

/// Read by `hello_data`; mutable and initialised, so in .data.
static mut DATA: u64 = 0x1111_2222_3333_4444;

/// A pointer to bytes elsewhere in the module: the slice's address is an ABS64 relocation in
/// the section that holds `GREETING`.
static GREETING: &[u8] = b"greetings from hello";

const INIT_MESSAGE: &[u8] = b"hello: init";

#[unsafe(no_mangle)]
pub extern "C" fn module_init() -> i32 {
    // SAFETY: kernel exports; `kernel_log` reads `len` bytes at `ptr`, a static string.
    unsafe {
        kernel_event(1);
        kernel_log(INIT_MESSAGE.as_ptr(), INIT_MESSAGE.len());
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn module_exit() {
    // SAFETY: a kernel export.
    unsafe { kernel_event(2) }
}

/// `kernel_add(a, b) + 1`: a CALL26 to the kernel.
#[unsafe(no_mangle)]
pub extern "C" fn hello_add(a: u64, b: u64) -> u64 {
    // SAFETY: a kernel export.
    unsafe { kernel_add(a, b) }.wrapping_add(1)
}

/// The counter after incrementing it: 1, 2, 3, … from load (the loader zeroes .bss).
#[unsafe(no_mangle)]
pub extern "C" fn hello_count() -> u64 {
    let count = &raw mut COUNT;
    // SAFETY: the module's own static; the kernel calls a module from one CPU at a time.
    unsafe {
        let next = count.read().wrapping_add(1);
        count.write(next);
        next
    }
}

/// 0x1111_2222_3333_4444, read from .data at run time.
#[unsafe(no_mangle)]
pub extern "C" fn hello_data() -> u64 {
    // SAFETY: the module's own static. Volatile, so the compiler cannot fold the load (nothing
    // in the module writes DATA) and the static stays in .data.
    unsafe { (&raw const DATA).read_volatile() }
}

/// The greeting's length (20), through the relocated slice pointer.
#[unsafe(no_mangle)]
pub extern "C" fn hello_greeting_len() -> usize {
    greeting().len()
}

/// The greeting's first byte (`b'g'`), through the relocated slice pointer.
#[unsafe(no_mangle)]
pub extern "C" fn hello_greeting_first() -> u8 {
    greeting().first().copied().unwrap_or(0)
}

/// The slice as stored in the module: a volatile read keeps the compiler from folding the
/// pointer and length into the code, so the relocated word is what is used.
fn greeting() -> &'static [u8] {
    // SAFETY: a valid, initialised static of this type.
    unsafe { (&raw const GREETING).read_volatile() }
}
