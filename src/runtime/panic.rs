//! Panic: the message and location on the console, then stop with failure (under QEMU the test
//! runner sees a failed run, not a pass).

use core::panic::PanicInfo;

use aarch64_cpu::registers::{DAIF, Writeable};

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    super::console::write_fmt_emergency(format_args!("\n*** {info}\n"));
    super::exit(false)
}
