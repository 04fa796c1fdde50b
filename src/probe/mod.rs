//! Instruction probes (Linux kprobes): a breakpoint on any kernel instruction, a handler that
//! sees the registers, and execution that goes on as if the instruction ran in place.
//!
//! - Arming replaces the instruction with `BRK #0x004` ([`PROBE_BRK`], Linux's
//!   `KPROBES_BRK_IMM`): with [`crate::manager::ExecManager::patch_insn`] when the original and
//!   `BRK` are a CMODX pair (Arm ARM B2.2.5: both in the set of B, BL, NOP, BRK, SVC, HVC, SMC,
//!   ISB), with the stop-the-world [`crate::manager::ExecManager::patch_batch`] otherwise; then
//!   the change is published. Disarming is the same, back.
//! - The breakpoint handler ([`ProbeTable::hit`], called by the kernel's exception vector) runs
//!   the probe's handler with the registers, then either simulates the instruction (PC-relative
//!   ones: [`decode`]) or resumes at its out-of-line copy: the instruction in a small exec slot,
//!   followed by `B` back to the next one.
//! - Instructions that cannot run out of line (exclusives, exception generation and return) are
//!   refused.
//! - A removed probe's table entry and out-of-line slot are given back only once no CPU can be
//!   in the handler or the slot ([`crate::manager::Platform::wait_outside`]): the breakpoint
//!   handler runs with interrupts masked, so a CPU seen interrupted outside the slot is out of
//!   both.
//!
//! [`decode`] and [`ProbeTable`] are portable (the handler's logic is tested on the host); the
//! registry, [`Probes`], runs on an [`crate::manager::ExecManager`].

pub mod decode;

#[cfg(target_arch = "aarch64")]
mod registry;
#[cfg(target_arch = "aarch64")]
pub use registry::{ProbeError, Probes};

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use decode::{Decoded, Regs};

/// The `BRK` immediate of an armed probe.
pub const PROBE_BRK: u16 = 0x004;

/// A probe's handler: the registers at the probed instruction (before it runs; `pc` is its
/// address) and the probe's cookie. It may change registers; if it changes `pc`, execution goes
/// on there and the probed instruction is skipped. It runs with interrupts masked, in the
/// breakpoint exception, like an NMI handler: it must not take locks, patch or publish code, or
/// wait for other CPUs in any way (a CPU that joins a stop-the-world round from such a wait is
/// taken to be outside every out-of-line slot).
pub type ProbeHandler = fn(regs: &mut Regs, cookie: u64);

/// One probe, as the breakpoint handler reads it.
struct Entry {
    /// The probed address; 0: free.
    addr: AtomicU64,
    /// The out-of-line copy (0: simulated).
    xol: AtomicU64,
    insn: AtomicU32,
    handler: AtomicUsize,
    cookie: AtomicU64,
    hits: AtomicU64,
}

/// The probes the breakpoint handler knows, without a lock (it runs on any CPU, with interrupts
/// masked, perhaps while the registry's lock is held for an arming that waits for that CPU). An
/// entry is filled while free and then published by its address (Release); the handler finds it
/// by address (Acquire).
pub struct ProbeTable<const N: usize> {
    entries: [Entry; N],
}

impl<const N: usize> Default for ProbeTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ProbeTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: [const {
                Entry {
                    addr: AtomicU64::new(0),
                    xol: AtomicU64::new(0),
                    insn: AtomicU32::new(0),
                    handler: AtomicUsize::new(0),
                    cookie: AtomicU64::new(0),
                    hits: AtomicU64::new(0),
                }
            }; N],
        }
    }

    /// Fills a free entry for `addr` and publishes it; `None` if the table is full. Called by
    /// one writer at a time (the registry, under its lock), before the probe is armed.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn insert(
        &self,
        addr: u64,
        insn: u32,
        xol: u64,
        handler: ProbeHandler,
        cookie: u64,
    ) -> Option<usize> {
        let index = self
            .entries
            .iter()
            .position(|e| e.addr.load(Ordering::Relaxed) == 0)?;
        let e = &self.entries[index];
        e.xol.store(xol, Ordering::Relaxed);
        e.insn.store(insn, Ordering::Relaxed);
        e.handler.store(handler as usize, Ordering::Relaxed);
        e.cookie.store(cookie, Ordering::Relaxed);
        e.hits.store(0, Ordering::Relaxed);
        e.addr.store(addr, Ordering::Release);
        Some(index)
    }

    /// Frees entry `index` (the probe is disarmed and no CPU can be in its handler).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn clear(&self, index: usize) {
        self.entries[index].addr.store(0, Ordering::Release);
    }

    /// Times the probe at `addr` was hit.
    pub fn hits(&self, addr: u64) -> Option<u64> {
        self.find(addr).map(|e| e.hits.load(Ordering::Relaxed))
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        if addr == 0 {
            return None;
        }
        self.entries
            .iter()
            .find(|e| e.addr.load(Ordering::Acquire) == addr)
    }

    /// The breakpoint handler: if a probe is at `regs.pc`, runs its handler with `regs`, then
    /// sets `regs.pc` to where execution goes on (the simulated instruction's next PC, or its
    /// out-of-line copy) and returns `true`; `false` if no probe is there (another `BRK`).
    /// `load(addr, bytes)` reads memory for simulated literal loads.
    pub fn hit(&self, regs: &mut Regs, load: impl Fn(u64, usize) -> u64) -> bool {
        let Some(entry) = self.find(regs.pc) else {
            return false;
        };
        entry.hits.fetch_add(1, Ordering::Relaxed);
        let handler = entry.handler.load(Ordering::Relaxed);
        let insn = entry.insn.load(Ordering::Relaxed);
        let xol = entry.xol.load(Ordering::Relaxed);
        let cookie = entry.cookie.load(Ordering::Relaxed);
        let at = regs.pc;
        if handler != 0 {
            // SAFETY: stored by `insert` from a `ProbeHandler`, the only writer of the field.
            let handler: ProbeHandler = unsafe { core::mem::transmute(handler) };
            handler(regs, cookie);
        }
        if regs.pc != at {
            // The handler redirected execution: the probed instruction is skipped.
            return true;
        }
        match decode::decode(insn, at) {
            Decoded::Simulate(sim) => decode::simulate(sim, regs, load),
            // Refused instructions are never inserted.
            Decoded::OutOfLine | Decoded::Refused(_) => regs.pc = xol,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bump(regs: &mut Regs, cookie: u64) {
        regs.x[0] += cookie;
    }

    #[test]
    fn a_hit_runs_the_handler_then_simulates_or_goes_out_of_line() {
        let table = ProbeTable::<4>::new();
        let none = |_, _| 0;
        let mut regs = Regs {
            pc: 0x1000,
            ..Regs::default()
        };
        assert!(!table.hit(&mut regs, none), "no probe: another BRK");
        // add x0, x0, x1 at 0x1000, out of line at 0x9000.
        table.insert(0x1000, 0x8b01_0000, 0x9000, bump, 5).unwrap();
        // b +0x40 at 0x2000: simulated.
        table.insert(0x2000, 0x1400_0010, 0, bump, 1).unwrap();
        assert!(table.hit(&mut regs, none));
        assert_eq!((regs.x[0], regs.pc), (5, 0x9000));
        regs.pc = 0x2000;
        assert!(table.hit(&mut regs, none));
        assert_eq!((regs.x[0], regs.pc), (6, 0x2040));
        assert_eq!(table.hits(0x1000), Some(1));
        let index = table
            .entries
            .iter()
            .position(|e| e.addr.load(Ordering::Relaxed) == 0x1000)
            .unwrap();
        table.clear(index);
        regs.pc = 0x1000;
        assert!(!table.hit(&mut regs, none));
        table.insert(0x3000, 0xd503_201f, 0x9100, bump, 0).unwrap();
        table.insert(0x4000, 0xd503_201f, 0x9200, bump, 0).unwrap();
        table.insert(0x5000, 0xd503_201f, 0x9300, bump, 0).unwrap();
        assert_eq!(
            table.insert(0x6000, 0xd503_201f, 0x9400, bump, 0),
            None,
            "full"
        );
    }
}
