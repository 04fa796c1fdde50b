//! Masking this CPU's interrupts around a critical section (the runtime's own locks: heap,
//! console, GIC driver), as the manager's locks do through `Platform::mask_interrupts`.

use aarch64_cpu::registers::{DAIF, Readable, Writeable};

/// Runs `f` with D, A, I and F masked on this CPU, then restores what was there.
#[inline]
pub fn without_interrupts<T>(f: impl FnOnce() -> T) -> T {
    let saved = DAIF.get();
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    let result = f();
    DAIF.set(saved);
    result
}

/// The runtime's spin locks relax with `YIELD` ([`crate::runtime::smp::pause`]).
pub struct Pause;

impl spin::RelaxStrategy for Pause {
    #[inline]
    fn relax() {
        crate::runtime::smp::pause();
    }
}
