//! The probes of one kernel: placing, arming, disarming, and giving back what a removed probe
//! held once no CPU can be using it.

use alloc::vec::Vec;
use core::fmt;

use super::decode::{self, Decoded, Refusal};
use super::{PROBE_BRK, ProbeHandler, ProbeTable};
use crate::manager::{ExecManager, ExecSlot, Platform};
use crate::pack::AllocError;
use crate::poke::{PokeError, cmodx, insn};

/// Why a probe was not placed or removed. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The instruction cannot be probed.
    Refused {
        /// Its address.
        addr: u64,
        /// The instruction.
        insn: u32,
        /// Why.
        why: Refusal,
    },
    /// A probe is there already.
    AlreadyProbed(u64),
    /// No probe is there.
    NotProbed(u64),
    /// The table has no free entry.
    TableFull,
    /// No exec memory for the out-of-line copy.
    Alloc(AllocError),
    /// The out-of-line copy is out of one branch's reach of the instruction after the probe.
    OutOfReach(u64),
    /// Reading, copying or patching failed.
    Poke(PokeError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { addr, insn, why } => {
                write!(f, "{insn:#010x} at {addr:#x} cannot be probed: {why}")
            }
            Self::AlreadyProbed(addr) => write!(f, "{addr:#x} is probed already"),
            Self::NotProbed(addr) => write!(f, "no probe at {addr:#x}"),
            Self::TableFull => f.write_str("the probe table is full"),
            Self::Alloc(e) => write!(f, "no out-of-line slot: {e}"),
            Self::OutOfReach(addr) => {
                write!(f, "the out-of-line slot cannot branch back to {addr:#x}")
            }
            Self::Poke(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ProbeError {}

impl From<PokeError> for ProbeError {
    fn from(e: PokeError) -> Self {
        Self::Poke(e)
    }
}

/// Bytes of an out-of-line copy: the instruction and the branch back.
const XOL_BYTES: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Probe {
    addr: u64,
    insn: u32,
    /// The out-of-line slot (0: the instruction is simulated).
    xol: u64,
    entry: usize,
}

/// The probes of a kernel over its exec manager and the breakpoint handler's table. Not locked:
/// a kernel keeps it behind its own lock (the breakpoint handler reads only the table).
pub struct Probes<P: Platform, const N: usize> {
    exec: &'static ExecManager<P>,
    table: &'static ProbeTable<N>,
    live: Vec<Probe>,
    retired: Vec<Probe>,
}

impl<P: Platform, const N: usize> Probes<P, N> {
    /// No probe, over `exec` and the `table` the kernel's breakpoint handler reads.
    pub const fn new(exec: &'static ExecManager<P>, table: &'static ProbeTable<N>) -> Self {
        Self {
            exec,
            table,
            live: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// The probed addresses.
    pub fn probed(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().map(|p| p.addr)
    }

    /// The out-of-line slots of the live probes: (probed address, slot address); simulated
    /// instructions have none.
    pub fn out_of_line_slots(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.live
            .iter()
            .filter(|p| p.xol != 0)
            .map(|p| (p.addr, p.xol))
    }

    /// Bytes of one out-of-line slot.
    pub const XOL_BYTES: usize = XOL_BYTES;

    /// Removed probes whose entry and slot are not given back yet.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Places a probe on the instruction at `addr` (exec memory, or kernel text opened with
    /// [`ExecManager::allow_kernel_text_patching`]) and arms it: from the return, every CPU that
    /// executes it runs `handler(regs, cookie)` first.
    pub fn add(&mut self, addr: u64, handler: ProbeHandler, cookie: u64) -> Result<(), ProbeError> {
        if self
            .live
            .iter()
            .chain(&self.retired)
            .any(|p| p.addr == addr)
        {
            return Err(ProbeError::AlreadyProbed(addr));
        }
        let original = self.exec.read_insn(addr)?;
        if self.inside_exclusive(addr) {
            return Err(ProbeError::Refused {
                addr,
                insn: original,
                why: Refusal::InsideExclusive,
            });
        }
        let xol = match decode::decode(original, addr) {
            Decoded::Refused(why) => {
                return Err(ProbeError::Refused {
                    addr,
                    insn: original,
                    why,
                });
            }
            Decoded::Simulate(_) => None,
            Decoded::OutOfLine => Some(self.out_of_line(addr, original)?),
        };
        let xol_addr = xol.as_ref().map_or(0, |s| s.addr());
        let give_back = |exec: &ExecManager<P>, xol: Option<ExecSlot>| {
            if let Some(slot) = xol {
                // Never reachable: no CPU can be in it.
                let _ = exec.free(slot);
            }
        };
        let Some(entry) = self.table.insert(addr, original, xol_addr, handler, cookie) else {
            give_back(self.exec, xol);
            return Err(ProbeError::TableFull);
        };
        if let Err(e) = self.patch(addr, original, insn::brk(PROBE_BRK)) {
            self.table.clear(entry);
            give_back(self.exec, xol);
            return Err(e);
        }
        if let Some(slot) = xol {
            let _ = slot.into_raw();
        }
        self.live.push(Probe {
            addr,
            insn: original,
            xol: xol_addr,
            entry,
        });
        self.exec.publish()?;
        Ok(())
    }

    /// Whether `addr` may lie between an exclusive load and its store (Linux
    /// `is_probed_address_atomic`): looking back up to 16 instructions, an exclusive load comes
    /// before any store-exclusive.
    fn inside_exclusive(&self, addr: u64) -> bool {
        for back in 1..=16u64 {
            let Some(at) = addr.checked_sub(4 * back) else {
                return false;
            };
            match self.exec.read_insn(at) {
                Ok(insn) if decode::is_exclusive_store(insn) => return false,
                Ok(insn) if decode::is_exclusive_load(insn) => return true,
                Ok(_) => {}
                // The start of what may be patched: nothing before it.
                Err(_) => return false,
            }
        }
        false
    }

    /// The out-of-line copy: the instruction, then `B addr + 4`, written and published.
    fn out_of_line(&self, addr: u64, original: u32) -> Result<ExecSlot, ProbeError> {
        let slot = self.exec.alloc(XOL_BYTES).map_err(ProbeError::Alloc)?;
        let back = insn::b(slot.addr() + 4, addr + 4);
        let written = match back {
            Ok(back) => {
                let mut code = [0u8; XOL_BYTES];
                code[..4].copy_from_slice(&original.to_le_bytes());
                code[4..].copy_from_slice(&back.to_le_bytes());
                self.exec.write(&slot, 0, &code).map_err(ProbeError::Poke)
            }
            Err(_) => Err(ProbeError::OutOfReach(addr)),
        };
        match written {
            Ok(()) => Ok(slot),
            Err(e) => {
                let _ = self.exec.free(slot);
                Err(e)
            }
        }
    }

    /// Replaces `old` with `new` at `addr`: one CMODX store if the pair allows it, else with
    /// every other CPU stopped.
    fn patch(&self, addr: u64, old: u32, new: u32) -> Result<(), ProbeError> {
        if cmodx::check_pair(old, new).is_ok() {
            self.exec.patch_insn(addr, old, new)?;
        } else {
            crate::poke::check_old(addr, old, self.exec.read_insn(addr)?)?;
            self.exec.patch_batch(&[(addr, new)])?;
        }
        Ok(())
    }

    /// Hits of the probe at `addr`.
    pub fn hits(&self, addr: u64) -> Option<u64> {
        self.table.hits(addr)
    }

    /// Disarms and removes the probe at `addr`: the instruction is back when this returns, on
    /// every CPU; its table entry and out-of-line slot are given back once no CPU can be using
    /// them ([`Probes::reap`]).
    pub fn remove(&mut self, addr: u64) -> Result<(), ProbeError> {
        let at = self
            .live
            .iter()
            .position(|p| p.addr == addr)
            .ok_or(ProbeError::NotProbed(addr))?;
        let probe = self.live[at];
        self.patch(addr, insn::brk(PROBE_BRK), probe.insn)?;
        self.live.remove(at);
        self.retired.push(probe);
        self.exec.publish()?;
        self.reap();
        Ok(())
    }

    /// Gives back the entries and slots of removed probes once every other CPU has been seen
    /// outside their out-of-line slots (and so outside the breakpoint handler, which runs with
    /// interrupts masked); returns how many are still kept.
    pub fn reap(&mut self) -> usize {
        if self.retired.is_empty() {
            return 0;
        }
        let ranges: Vec<_> = self
            .retired
            .iter()
            .filter(|p| p.xol != 0)
            .map(|p| p.xol..p.xol + XOL_BYTES as u64)
            .collect();
        if P::wait_outside(&ranges).is_ok() {
            for probe in self.retired.drain(..) {
                self.table.clear(probe.entry);
                if probe.xol != 0 {
                    let _ = self
                        .exec
                        .free(ExecSlot::from_raw(probe.xol as *const u8, XOL_BYTES));
                }
            }
        }
        self.retired.len()
    }
}
