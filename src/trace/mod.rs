//! Function-entry tracing with per-call-site trampolines (Linux arm64 ftrace with
//! `CALL_OPS`/direct calls): a traceable function starts with a NOP that tracing turns into a
//! branch to a trampoline of its own, in an exec slot, which calls the tracer with the function
//! and its arguments and then continues into the function.
//!
//! - Functions are made traceable with [`traceable!`](crate::traceable): a naked entry of two
//!   instructions, `nop; b body` (stable Rust has no `-Zpatchable-function-entry`).
//! - Arming and disarming are one `patch_insn` each: NOP and B are a CMODX pair (Arm ARM
//!   B2.2.5), so other CPUs may be calling the function meanwhile; each change is published, so
//!   when [`Tracing::trace`] returns every call is traced and when [`Tracing::untrace`] returns
//!   none newly enters the trampoline.
//! - A trampoline is freed only once no CPU can be inside it
//!   ([`crate::manager::Platform::wait_outside`]); until then it is kept, and
//!   [`Tracing::reap`] tries again.
//! - Trampolines are 152 bytes (three 64-byte chunks): hundreds of traced functions share a few 64-byte-chunked packs
//!   with every other user of exec memory.
//!
//! The trampoline's code is portable ([`trampoline`]); the registry runs on an
//! [`crate::manager::ExecManager`] (AArch64).

pub mod trampoline;

#[cfg(target_arch = "aarch64")]
mod sites;
#[cfg(target_arch = "aarch64")]
pub use sites::{TraceError, Traced, Tracing};

pub use trampoline::{TRAMPOLINE_BYTES, TraceFn};

/// Defines an `extern "C"` function that can be traced: its entry is `nop; b body`, the NOP being
/// the patch site [`Tracing::trace`] turns into a branch to a trampoline (AArch64 only).
///
/// ```ignore
/// execmem::traceable! {
///     /// Adds.
///     pub extern "C" fn traced_add(a: u64, b: u64) -> u64 {
///         a.wrapping_add(b)
///     }
/// }
/// ```
///
/// The body is an ordinary function in a module of the same name (`traced_add::body`), reached by
/// the entry's `B`: one branch more per call, predicted, when not traced.
#[macro_export]
macro_rules! traceable {
    ($(#[$meta:meta])* $vis:vis extern "C" fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[unsafe(naked)]
        $vis extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            ::core::arch::naked_asm!(
                "nop",
                "b {body}",
                body = sym $name::body,
            )
        }

        #[doc(hidden)]
        #[allow(non_snake_case)]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// The traceable function's body.
            pub extern "C" fn body($($arg: $ty),*) $(-> $ret)? $body
        }
    };
}
