//! The console: the board's PL011 behind a lock, and the `print!` / `println!` macros.

use core::fmt::{self, Write};

use spin::mutex::SpinMutex;

use super::pl011::Pl011;
use crate::layout::Region;
use crate::runtime::board;

// SAFETY: the board names the address of its console PL011, and only this static drives it. `init`
// moves it to the UART the device tree names.
static CONSOLE: SpinMutex<Pl011, crate::runtime::irq::Pause> =
    SpinMutex::new(unsafe { Pl011::new(board::UART.start as usize) });

/// Runs `f` on the UART: under its lock once locks work, directly before (see
/// [`super::locks_ready`]: with the MMU off a spin lock may never be acquired on real hardware).
fn with_uart<T>(f: impl FnOnce(&mut Pl011) -> T) -> T {
    if super::locks_ready() {
        // Interrupts masked while held: a handler on this CPU that prints does not wait for its
        // own CPU.
        crate::runtime::irq::without_interrupts(|| f(&mut CONSOLE.lock()))
    } else {
        // SAFETY: before locks are ready only CPU 0 runs, with interrupts masked; no reference
        // outlives this call.
        f(unsafe { &mut *CONSOLE.as_mut_ptr() })
    }
}

/// Sets up the console on the PL011 at `uart` (the device tree's, else the board's): pins, baud rate.
pub fn init(uart: Region) {
    board::init_console_pins();
    with_uart(|console| {
        if uart.start != board::UART.start {
            // SAFETY: `uart` is the PL011 the device tree names as the console (or the board's);
            // only this static drives it.
            *console = unsafe { Pl011::new(uart.start as usize) };
        }
        console.init(board::UART_CLOCK_HZ)
    });
}

/// Writes formatted text to the console (what `print!` expands to).
pub fn write_fmt(args: fmt::Arguments<'_>) {
    // Printing cannot fail on a polled UART; an error from a Display impl only cuts that text.
    let _ = with_uart(|uart| uart.write_fmt(args));
}

/// Writes from an exception or panic path, which may have interrupted a holder of the lock on
/// this CPU: the lock is broken rather than waited for (a deadlock would hide the report).
pub fn write_fmt_emergency(args: fmt::Arguments<'_>) {
    if super::locks_ready() && CONSOLE.is_locked() {
        // SAFETY: only called on the way to a report, with interrupts masked. The interrupted
        // holder never resumes in the middle of a UART write except after an expected fault,
        // whose handler does not print; a torn line is the worst outcome.
        unsafe { CONSOLE.force_unlock() };
    }
    write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::runtime::console::write_fmt(format_args!($($arg)*)));
}

/// Prints to the console, with a newline.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::runtime::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))));
}
