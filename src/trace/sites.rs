//! The traced call sites of one kernel: arming, disarming, and freeing trampolines once no CPU
//! can be in them.

use alloc::vec::Vec;
use core::fmt;

use super::trampoline::{self, TRAMPOLINE_BYTES, TraceFn};
use crate::manager::{ExecManager, ExecSlot, Platform};
use crate::pack::AllocError;
use crate::poke::PokeError;
use crate::poke::insn;

/// Why a function was not traced or untraced. Nothing was changed, except where the variant says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// The function does not start `nop; b body` ([`crate::traceable!`]): the two words found.
    NotTraceable {
        /// The function.
        function: u64,
        /// Its first two instructions.
        found: [u32; 2],
    },
    /// It is traced already.
    AlreadyTraced(u64),
    /// It is not traced.
    NotTraced(u64),
    /// No exec memory for its trampoline.
    Alloc(AllocError),
    /// The trampoline is out of one branch's reach of the function.
    OutOfReach(u64),
    /// Reading or patching the function, or writing the trampoline, failed.
    Poke(PokeError),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTraceable { function, found } => write!(
                f,
                "{function:#x} is not traceable: it starts {:#010x} {:#010x}, not nop; b",
                found[0], found[1]
            ),
            Self::AlreadyTraced(function) => write!(f, "{function:#x} is traced already"),
            Self::NotTraced(function) => write!(f, "{function:#x} is not traced"),
            Self::Alloc(e) => write!(f, "no trampoline: {e}"),
            Self::OutOfReach(function) => {
                write!(f, "the trampoline is out of branch reach of {function:#x}")
            }
            Self::Poke(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for TraceError {}

impl From<PokeError> for TraceError {
    fn from(e: PokeError) -> Self {
        Self::Poke(e)
    }
}

/// A traced function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traced {
    /// The function.
    pub function: u64,
    /// Its trampoline's first byte.
    pub trampoline: u64,
    /// The cookie its tracer gets.
    pub cookie: u64,
}

/// The traced functions of a kernel, over its exec manager. Not locked: a kernel keeps it behind
/// its own lock.
pub struct Tracing<P: Platform> {
    exec: &'static ExecManager<P>,
    sites: Vec<Traced>,
    /// Trampolines unlinked whose memory a CPU may still be executing.
    retired: Vec<u64>,
}

impl<P: Platform> Tracing<P> {
    /// Nothing traced, over `exec`.
    pub const fn new(exec: &'static ExecManager<P>) -> Self {
        Self {
            exec,
            sites: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// The traced functions.
    pub fn traced(&self) -> &[Traced] {
        &self.sites
    }

    /// Trampolines unlinked but not yet freed (a CPU may have been inside).
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Starts tracing `function` (a [`crate::traceable!`] function, in exec memory or in kernel
    /// text opened with [`ExecManager::allow_kernel_text_patching`]): builds its trampoline in a
    /// new slot, then turns the entry NOP into a branch to it and publishes the change. From the
    /// return, every call on every CPU calls `tracer(function, args, cookie)` first.
    pub fn trace(&mut self, function: u64, tracer: TraceFn, cookie: u64) -> Result<(), TraceError> {
        if self.sites.iter().any(|s| s.function == function) {
            return Err(TraceError::AlreadyTraced(function));
        }
        let found = [
            self.exec.read_insn(function)?,
            self.exec.read_insn(function + 4)?,
        ];
        // The second word is a `B` (opcode 0b000101 in bits 31..26), not a `BL`.
        if found[0] != insn::nop() || found[1] >> 26 != 0b00_0101 {
            return Err(TraceError::NotTraceable { function, found });
        }
        let slot = self
            .exec
            .alloc(TRAMPOLINE_BYTES)
            .map_err(TraceError::Alloc)?;
        match self.arm(&slot, function, tracer, cookie) {
            Ok(()) => {
                let trampoline = slot.into_raw().0 as u64;
                self.sites.push(Traced {
                    function,
                    trampoline,
                    cookie,
                });
                // Published: every CPU now branches to the trampoline (a failure names a CPU
                // that may still run the untraced entry until it next synchronises).
                self.exec.publish()?;
                Ok(())
            }
            Err(e) => {
                // Never linked: no CPU can be in it.
                let _ = self.exec.free(slot);
                Err(e)
            }
        }
    }

    fn arm(
        &self,
        slot: &ExecSlot,
        function: u64,
        tracer: TraceFn,
        cookie: u64,
    ) -> Result<(), TraceError> {
        let code = trampoline::build(slot.addr(), function, tracer as usize as u64, cookie)
            .map_err(|_| TraceError::OutOfReach(function))?;
        let branch =
            insn::b(function, slot.addr()).map_err(|_| TraceError::OutOfReach(function))?;
        self.exec.write(slot, 0, &code.as_bytes())?;
        self.exec.patch_insn(function, insn::nop(), branch)?;
        Ok(())
    }

    /// Stops tracing `function`: the branch becomes the NOP again and the change is published,
    /// so no call enters the trampoline any more; the trampoline is freed once no CPU can be
    /// inside it ([`Tracing::reap`]).
    pub fn untrace(&mut self, function: u64) -> Result<(), TraceError> {
        let at = self
            .sites
            .iter()
            .position(|s| s.function == function)
            .ok_or(TraceError::NotTraced(function))?;
        let site = self.sites[at];
        let branch =
            insn::b(function, site.trampoline).map_err(|_| TraceError::OutOfReach(function))?;
        self.exec.patch_insn(function, branch, insn::nop())?;
        self.sites.remove(at);
        self.retired.push(site.trampoline);
        self.exec.publish()?;
        self.reap();
        Ok(())
    }

    /// Frees the retired trampolines if every other CPU has been seen outside them; returns how
    /// many are still kept.
    pub fn reap(&mut self) -> usize {
        if self.retired.is_empty() {
            return 0;
        }
        let ranges: Vec<_> = self
            .retired
            .iter()
            .map(|&t| t..t + TRAMPOLINE_BYTES as u64)
            .collect();
        if P::wait_outside(&ranges).is_ok() {
            for trampoline in self.retired.drain(..) {
                // Our own record of a live slot: free cannot refuse it.
                let _ = self.exec.free(ExecSlot::from_raw(
                    trampoline as *const u8,
                    TRAMPOLINE_BYTES,
                ));
            }
        }
        self.retired.len()
    }
}
