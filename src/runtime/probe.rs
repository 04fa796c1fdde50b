//! Instruction probes in the demo kernel: the library's [`Probes`] over the kernel's manager, and
//! the table its breakpoint handler reads (`on_brk`, called from `runtime::fault` for
//! `BRK #`[`PROBE_BRK`]).
//!
//! ```ignore
//! probe::add(addr, |regs, _| regs.x[0] += 1, 0)?;   // armed: BRK there, handler runs on each hit
//! probe::remove(addr)?;                             // the instruction is back
//! ```

use alloc::vec::Vec;

use spin::mutex::SpinMutex;

use crate::mmu::{El1And0, El2, El2And0};
use crate::probe::decode::Regs;
use crate::probe::{PROBE_BRK, ProbeError, ProbeHandler, ProbeTable, Probes};
use crate::runtime::exception::ExceptionFrame;
use crate::runtime::exec_pool::{Demo, MANAGER_EL1, MANAGER_EL2, MANAGER_EL2_VHE};
use crate::runtime::irq;
use crate::runtime::mmu::KernelRegime;

/// Most probes at once.
pub const MAX_PROBES: usize = 64;

static TABLE: ProbeTable<MAX_PROBES> = ProbeTable::new();

static EL1: SpinMutex<Probes<Demo<El1And0>, MAX_PROBES>, irq::Pause> =
    SpinMutex::new(Probes::new(&MANAGER_EL1, &TABLE));
static EL2: SpinMutex<Probes<Demo<El2>, MAX_PROBES>, irq::Pause> =
    SpinMutex::new(Probes::new(&MANAGER_EL2, &TABLE));
static EL2_VHE: SpinMutex<Probes<Demo<El2And0>, MAX_PROBES>, irq::Pause> =
    SpinMutex::new(Probes::new(&MANAGER_EL2_VHE, &TABLE));

macro_rules! with_probes {
    ($p:ident => $body:expr) => {
        match KernelRegime::current() {
            KernelRegime::El1 => {
                let mut guard = EL1.lock();
                let $p = &mut *guard;
                $body
            }
            KernelRegime::El2 => {
                let mut guard = EL2.lock();
                let $p = &mut *guard;
                $body
            }
            KernelRegime::El2Vhe => {
                let mut guard = EL2_VHE.lock();
                let $p = &mut *guard;
                $body
            }
        }
    };
}

/// Places and arms a probe (see [`Probes::add`]).
pub fn add(addr: u64, handler: ProbeHandler, cookie: u64) -> Result<(), ProbeError> {
    with_probes!(p => p.add(addr, handler, cookie))
}

/// Disarms and removes a probe (see [`Probes::remove`]).
pub fn remove(addr: u64) -> Result<(), ProbeError> {
    with_probes!(p => p.remove(addr))
}

/// The probed addresses.
pub fn probed() -> Vec<u64> {
    with_probes!(p => p.probed().collect())
}

/// The out-of-line slots of the live probes: (probed address, slot address, bytes).
pub fn out_of_line_slots() -> Vec<(u64, u64, usize)> {
    with_probes!(p => p
        .out_of_line_slots()
        .map(|(at, xol)| (at, xol, Probes::<Demo<El1And0>, MAX_PROBES>::XOL_BYTES))
        .collect())
}

/// Hits of the probe at `addr`.
pub fn hits(addr: u64) -> Option<u64> {
    TABLE.hits(addr)
}

/// Removed probes not yet given back, after another attempt.
pub fn reap() -> usize {
    with_probes!(p => p.reap())
}

/// The breakpoint handler for `BRK #PROBE_BRK`: runs the probe at the faulting PC and sets where
/// execution goes on. `false` if no probe is there.
pub(crate) fn on_brk(imm: u16, frame: &mut ExceptionFrame) -> bool {
    if imm != PROBE_BRK {
        return false;
    }
    let mut regs = Regs {
        x: frame.x,
        pc: frame.elr,
        pstate: frame.spsr,
    };
    // SAFETY: a simulated literal load reads what the probed instruction would have read, at
    // its literal's address in the code (readable).
    // A literal need only be 4-byte aligned, whatever its size.
    let load = |addr: u64, bytes: usize| unsafe {
        if bytes == 8 {
            core::ptr::read_unaligned(addr as *const u64)
        } else {
            u64::from(core::ptr::read_unaligned(addr as *const u32))
        }
    };
    if !TABLE.hit(&mut regs, load) {
        return false;
    }
    frame.x = regs.x;
    frame.elr = regs.pc;
    true
}
