//! Function-entry tracing in the demo kernel: the library's [`Tracing`] over the kernel's manager
//! in the regime it runs in.
//!
//! ```ignore
//! execmem::traceable! { extern "C" fn work(x: u64) -> u64 { x + 1 } }
//! trace::trace(work as usize as u64, my_tracer, 0)?;   // every call now reaches my_tracer
//! trace::untrace(work as usize as u64)?;               // trampoline freed once no CPU is in it
//! ```

use alloc::vec::Vec;

use spin::mutex::SpinMutex;

use crate::mmu::{El1And0, El2, El2And0};
use crate::runtime::exec_pool::{Demo, MANAGER_EL1, MANAGER_EL2, MANAGER_EL2_VHE};
use crate::runtime::irq;
use crate::runtime::mmu::KernelRegime;
use crate::trace::{TraceError, TraceFn, Traced, Tracing};

static EL1: SpinMutex<Tracing<Demo<El1And0>>, irq::Pause> =
    SpinMutex::new(Tracing::new(&MANAGER_EL1));
static EL2: SpinMutex<Tracing<Demo<El2>>, irq::Pause> = SpinMutex::new(Tracing::new(&MANAGER_EL2));
static EL2_VHE: SpinMutex<Tracing<Demo<El2And0>>, irq::Pause> =
    SpinMutex::new(Tracing::new(&MANAGER_EL2_VHE));

macro_rules! with_tracing {
    ($t:ident => $body:expr) => {
        match KernelRegime::current() {
            KernelRegime::El1 => {
                let mut guard = EL1.lock();
                let $t = &mut *guard;
                $body
            }
            KernelRegime::El2 => {
                let mut guard = EL2.lock();
                let $t = &mut *guard;
                $body
            }
            KernelRegime::El2Vhe => {
                let mut guard = EL2_VHE.lock();
                let $t = &mut *guard;
                $body
            }
        }
    };
}

/// Starts tracing `function` (see [`Tracing::trace`]).
pub fn trace(function: u64, tracer: TraceFn, cookie: u64) -> Result<(), TraceError> {
    with_tracing!(t => t.trace(function, tracer, cookie))
}

/// Stops tracing `function` (see [`Tracing::untrace`]).
pub fn untrace(function: u64) -> Result<(), TraceError> {
    with_tracing!(t => t.untrace(function))
}

/// The traced functions.
pub fn traced() -> Vec<Traced> {
    with_tracing!(t => t.traced().to_vec())
}

/// Trampolines unlinked and not yet freed, after another attempt to free them.
pub fn reap() -> usize {
    with_tracing!(t => t.reap())
}
