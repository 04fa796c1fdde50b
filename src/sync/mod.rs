//! Cross-CPU protocols, portable: the code a kernel's CPUs run to agree with each other, with
//! the hardware parts (masking interrupts, `WFE`/`SEV`, the clock) passed in. Host tests check
//! every interleaving of them with `loom` (`RUSTFLAGS="--cfg loom"`, run by `make test`).

pub mod gate;
pub mod publish;
pub mod released;
pub mod rendezvous;

#[cfg(all(test, loom))]
mod loom_tests;

/// The atomics the protocols use: `core`'s, or `loom`'s when model-checking.
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
}
