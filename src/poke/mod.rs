//! Text poke: writing code into exec memory that is never writable.
//!
//! Exec packs are mapped read-only + executable for their whole life. Code reaches them through a
//! short-lived writable alias, one fixmap page per CPU, in this order (the aarch64 layer executes it;
//! this module holds the portable decisions and checks):
//!
//! 1. **Find the page.** The physical address of the destination comes from the exec pool's own
//!    records (pack base PA + offset), never from a page-table walk or an `AT` instruction: the pool
//!    is the authority on what is live, so an address it does not own is refused
//!    ([`PokeError::NotExecMemory`]) before anything is mapped. [`check_insn_aligned`] and
//!    [`check_range`] refuse misaligned or overlong writes at the same point.
//! 2. **Map the alias.** With IRQs masked (so nothing else on this CPU uses or sees the slot), write
//!    this CPU's fixmap entry: the page's PA, Normal write-back, read-write, PXN + UXN — writable,
//!    never executable, so W^X holds even for the alias (and SCTLR_ELx.WXN agrees). The entry is in
//!    this CPU's own view of the tables (the manager gives each CPU a root of its own, sharing all
//!    but the fixmap's root entry): no other CPU can walk it, so no other CPU can store through it.
//! 3. **Store.** Copy the words. A live patch ([`cmodx::check_pair`]) is one aligned 32-bit store:
//!    the Arm ARM (B2.2.5) defines concurrent execution only for a single-copy-atomic word write.
//! 4. **Unmap.** Write the entry invalid, `DSB NSHST`, `TLBI VAALE1` (`TLBI VALE2` at EL2) for the
//!    alias, `DSB NSH`, `ISB`: a local invalidation, because only this CPU's TLB can hold the alias
//!    (TTBR.CnP = 0: TLB entries are private to the PE that walked them, Arm ARM D8.16). On cores
//!    where a TLBI can complete before earlier writes are observed (Cortex-A76 #1286807, A55
//!    #2441007, A510 #2441009) the `TLBI; DSB` pair is issued twice, as Linux does for every TLBI.
//!    Steps 2–4 repeat page by page for a range that crosses pages (IRQs stay masked for the whole
//!    write, and the CPU and its slot are read once, under the mask); after the last page one
//!    `DSB ISH` completes every store to the inner shareable domain before the maintenance, which
//!    cleans by the exec VA, another VA of the same memory (with the broadcast TLBI of Linux's
//!    fixmap, its `DSB ISH` does this).
//! 5. **Make it visible, once.** One cache-maintenance pass over the whole written range, by exec VA,
//!    as the [`MaintenancePlan`] decides (Arm ARM B2.4.4): `DC CVAU` per D-cache line, `DSB ISH`,
//!    `IC IVAU` per I-cache line, `DSB ISH`, `ISB`. `DC CIVAC` on Cortex-A53; steps dropped when
//!    CTR_EL0.IDC/DIC allow it; bytes within one line of both caches (one instruction) get one of
//!    each and no loop. Never one pass per instruction: the barriers dominate, and a
//!    per-instruction loop is what made Linux's BPF `test_tag` take minutes instead of seconds.
//!
//! `IC IVAU` reaches every CPU of the inner shareable domain, but each CPU that will run the new code
//! still needs a context synchronisation event of its own (an `ISB` in an IPI handler, or an exception
//! return) before it is guaranteed to fetch it. For a CMODX-safe patch ([`cmodx`]) a CPU sees the
//! old or the new instruction until then; for anything else, stop the other CPUs (the batch path).
//!
//! - [`insn`]: a small A64 emitter, so tests and the demo write real instructions;
//! - [`cmodx`]: the B2.2.5 rules for patching code that may be running;
//! - [`cache`]: the B2.4.4 maintenance plan.

pub mod cache;
pub mod cmodx;
pub mod insn;

use core::fmt;

pub use cache::{Barrier, Clean, Lines, MaintenancePlan};
pub use cmodx::{CmodxInsn, check_pair, is_cmodx};
pub use insn::INSN_BYTES;

/// What an exec region passed to [`check_range`] is: the write must stay inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// One allocated slot: a program or trampoline writes only its own slot.
    Slot,
    /// A whole 2 MiB pack: for pool-internal writes such as filling freed space with BRK.
    Pack,
}

/// A live exec region `[start, end)` as the exec pool records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecRegion {
    /// Slot or pack.
    pub kind: RegionKind,
    /// First byte (exec VA).
    pub start: u64,
    /// One past the last byte (exec VA).
    pub end: u64,
}

impl ExecRegion {
    /// A slot covering `[start, end)`.
    pub const fn slot(start: u64, end: u64) -> Self {
        Self {
            kind: RegionKind::Slot,
            start,
            end,
        }
    }

    /// A pack covering `[start, end)`.
    pub const fn pack(start: u64, end: u64) -> Self {
        Self {
            kind: RegionKind::Pack,
            start,
            end,
        }
    }

    /// Whether `addr` is inside the region.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

impl fmt::Display for ExecRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RegionKind::Slot => "slot",
            RegionKind::Pack => "pack",
        };
        write!(f, "{kind} [{:#x}, {:#x})", self.start, self.end)
    }
}

/// Why a write into exec memory was refused. Every check runs before the alias is mapped, so a
/// refused poke has changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PokeError {
    /// The destination is not inside a live exec mapping (no pack or slot of the pool holds it).
    NotExecMemory {
        /// The destination address.
        addr: u64,
    },
    /// The write starts inside its slot or pack but runs past its end.
    PastEnd {
        /// The destination address.
        dst: u64,
        /// Bytes to write.
        len: usize,
        /// The region it must stay in.
        region: ExecRegion,
    },
    /// An instruction address is not 4-byte aligned.
    Misaligned {
        /// The address.
        addr: u64,
    },
    /// The word at the destination is not the one the caller expected to replace, so the patch
    /// would be based on stale knowledge.
    OldMismatch {
        /// The destination address.
        addr: u64,
        /// The word the caller expected.
        expected: u32,
        /// The word found.
        found: u32,
    },
    /// The old and new instruction are not both in the CMODX set (Arm ARM B2.2.5): replacing one
    /// while another CPU may execute it is unpredictable.
    NotCmodxSafe {
        /// The instruction being replaced.
        old: u32,
        /// The replacement.
        new: u32,
    },
    /// Nothing to write.
    EmptySource,
    /// The handle is not a live slot of this size (freed, or rebuilt with a wrong pointer/size).
    NotALiveSlot {
        /// Its address.
        addr: u64,
        /// Its size.
        size: usize,
    },
    /// A batch patch needs every other CPU stopped, and this one did not stop in time: nothing
    /// was written.
    CpuNotStopped {
        /// The CPU that did not stop.
        cpu: usize,
    },
    /// The code is written, but this CPU did not answer the publication in time (interrupts
    /// masked that long, or hung): it may run what was there before until it next synchronises.
    NotSynchronised {
        /// The CPU that did not answer.
        cpu: usize,
    },
    /// This CPU has no poke slot: its index is not below the manager's CPU count.
    NoPokeSlot {
        /// The index the platform gave.
        cpu: usize,
    },
    /// An offset into a slot is past the slot's end (or so large the address would wrap).
    OffsetOutside {
        /// The offset given.
        offset: usize,
        /// The region it is relative to.
        region: ExecRegion,
    },
}

impl fmt::Display for PokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotExecMemory { addr } => {
                write!(
                    f,
                    "{addr:#x} is not inside a live exec mapping (no pack or slot holds it)"
                )
            }
            Self::PastEnd { dst, len, region } => write!(
                f,
                "writing {len} B at {dst:#x} runs past the end of its {region} (ends at {:#x})",
                dst.saturating_add(len as u64)
            ),
            Self::Misaligned { addr } => write!(
                f,
                "instruction address {addr:#x} is not 4-byte aligned (A64 instructions are aligned \
                 32-bit words)"
            ),
            Self::OldMismatch {
                addr,
                expected,
                found,
            } => write!(
                f,
                "at {addr:#x}: expected {expected:#010x} ({}) but found {found:#010x} ({}); not \
                 patching",
                insn::mnemonic(expected),
                insn::mnemonic(found)
            ),
            Self::NotCmodxSafe { old, new } => write!(
                f,
                "cannot replace {old:#010x} ({}) with {new:#010x} ({}) while it may be running: \
                 Arm ARM B2.2.5 allows it only when both are B, BL, BRK, HVC, ISB, NOP, SMC or \
                 SVC; use the batch (stop-the-world) path",
                insn::mnemonic(old),
                insn::mnemonic(new)
            ),
            Self::EmptySource => f.write_str("nothing to write: the source is empty"),
            Self::NotALiveSlot { addr, size } => {
                write!(f, "{addr:#x}+{size} is not a live exec slot of that size")
            }
            Self::CpuNotStopped { cpu } => write!(
                f,
                "CPU {cpu} did not stop for the batch patch; nothing was written"
            ),
            Self::NotSynchronised { cpu } => write!(
                f,
                "the code is written, but CPU {cpu} did not synchronise in time and may still \
                 run what was there before"
            ),
            Self::NoPokeSlot { cpu } => {
                write!(
                    f,
                    "CPU {cpu} has no text-poke slot (more CPUs than configured)"
                )
            }
            Self::OffsetOutside { offset, region } => write!(
                f,
                "offset {offset:#x} is outside its {region} ({} B)",
                region.end - region.start
            ),
        }
    }
}

impl core::error::Error for PokeError {}

/// The address `offset` bytes into `region`, refused if it is not inside the region (checked, so
/// a huge offset is an error, not an overflow).
pub const fn offset_in(region: ExecRegion, offset: usize) -> Result<u64, PokeError> {
    let at = region.start.checked_add(offset as u64);
    match at {
        Some(at) if at < region.end => Ok(at),
        _ => Err(PokeError::OffsetOutside { offset, region }),
    }
}

/// Refuses an instruction address that is not 4-byte aligned: instruction fetch is word-aligned,
/// and a CMODX patch must be a single aligned 32-bit store (Arm ARM B2.2.5).
pub const fn check_insn_aligned(addr: u64) -> Result<(), PokeError> {
    if addr.is_multiple_of(INSN_BYTES as u64) {
        Ok(())
    } else {
        Err(PokeError::Misaligned { addr })
    }
}

/// Refuses a write of `len` bytes at `dst` unless it is non-empty and lies wholly inside `region`
/// (the slot or pack the exec pool says holds `dst`). Checked in this order: empty, start outside
/// the region, end past the region. Alignment is [`check_insn_aligned`]'s job.
pub const fn check_range(dst: u64, len: usize, region: ExecRegion) -> Result<(), PokeError> {
    if len == 0 {
        return Err(PokeError::EmptySource);
    }
    if !region.contains(dst) {
        return Err(PokeError::NotExecMemory { addr: dst });
    }
    match dst.checked_add(len as u64) {
        Some(end) if end <= region.end => Ok(()),
        _ => Err(PokeError::PastEnd { dst, len, region }),
    }
}

/// Refuses a patch when the word read at `addr` is not the `expected` one.
pub const fn check_old(addr: u64, expected: u32, found: u32) -> Result<(), PokeError> {
    if expected == found {
        Ok(())
    } else {
        Err(PokeError::OldMismatch {
            addr,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    const SLOT: ExecRegion = ExecRegion::slot(0x4020_0100, 0x4020_0200);
    const PACK: ExecRegion = ExecRegion::pack(0x4020_0000, 0x4040_0000);

    #[test]
    fn alignment() {
        assert_eq!(check_insn_aligned(0x4020_0104), Ok(()));
        for addr in [0x4020_0101, 0x4020_0102, 0x4020_0103] {
            assert_eq!(
                check_insn_aligned(addr),
                Err(PokeError::Misaligned { addr })
            );
        }
    }

    #[test]
    fn range_inside_a_slot() {
        assert_eq!(check_range(0x4020_0100, 0x100, SLOT), Ok(()));
        assert_eq!(check_range(0x4020_01fc, 4, SLOT), Ok(()));
        assert_eq!(check_range(0x4020_0000, 0x20_0000, PACK), Ok(()));
    }

    #[test]
    fn range_refusals_in_order() {
        assert_eq!(check_range(0x9999, 0, SLOT), Err(PokeError::EmptySource));
        assert_eq!(
            check_range(0x4020_00fc, 8, SLOT),
            Err(PokeError::NotExecMemory { addr: 0x4020_00fc })
        );
        assert_eq!(
            check_range(0x4020_0200, 4, SLOT),
            Err(PokeError::NotExecMemory { addr: 0x4020_0200 }),
            "end is exclusive"
        );
        assert_eq!(
            check_range(0x4020_01fc, 8, SLOT),
            Err(PokeError::PastEnd {
                dst: 0x4020_01fc,
                len: 8,
                region: SLOT
            })
        );
        let top = ExecRegion::pack(u64::MAX - 0xfff, u64::MAX);
        assert!(matches!(
            check_range(u64::MAX - 4, usize::MAX, top),
            Err(PokeError::PastEnd { .. })
        ));
        let inverted = ExecRegion::slot(0x2000, 0x1000);
        assert!(matches!(
            check_range(0x1800, 4, inverted),
            Err(PokeError::NotExecMemory { .. })
        ));
    }

    #[test]
    fn old_word_check() {
        let nop = insn::nop();
        assert_eq!(check_old(0x4020_0100, nop, nop), Ok(()));
        let err = check_old(0x4020_0100, nop, insn::brk(0)).unwrap_err();
        assert_eq!(
            err,
            PokeError::OldMismatch {
                addr: 0x4020_0100,
                expected: nop,
                found: insn::brk(0)
            }
        );
        assert_eq!(
            format!("{err}"),
            "at 0x40200100: expected 0xd503201f (NOP) but found 0xd4200000 (BRK); not patching"
        );
    }

    #[test]
    fn messages() {
        let msg = |e: PokeError| -> String { format!("{e}") };
        assert_eq!(
            msg(PokeError::NotExecMemory { addr: 0x1000 }),
            "0x1000 is not inside a live exec mapping (no pack or slot holds it)"
        );
        assert_eq!(
            msg(PokeError::PastEnd {
                dst: 0x4020_01fc,
                len: 8,
                region: SLOT
            }),
            "writing 8 B at 0x402001fc runs past the end of its slot [0x40200100, 0x40200200) \
             (ends at 0x40200204)"
        );
        assert!(msg(PokeError::Misaligned { addr: 0x4020_0102 }).contains("0x40200102"));
        assert_eq!(
            msg(PokeError::EmptySource),
            "nothing to write: the source is empty"
        );
        let e = PokeError::NotCmodxSafe {
            old: insn::ret(),
            new: insn::nop(),
        };
        assert!(msg(e).contains("batch (stop-the-world) path"));
    }

    #[test]
    fn offsets_into_a_region_are_checked() {
        assert_eq!(offset_in(SLOT, 0), Ok(0x4020_0100));
        assert_eq!(offset_in(SLOT, 0xfc), Ok(0x4020_01fc));
        assert_eq!(
            offset_in(SLOT, 0x100),
            Err(PokeError::OffsetOutside {
                offset: 0x100,
                region: SLOT
            })
        );
        // Would wrap the address space: an error, not an overflow panic.
        assert_eq!(
            offset_in(SLOT, usize::MAX),
            Err(PokeError::OffsetOutside {
                offset: usize::MAX,
                region: SLOT
            })
        );
        assert_eq!(
            format!(
                "{}",
                PokeError::OffsetOutside {
                    offset: 0x100,
                    region: SLOT
                }
            ),
            "offset 0x100 is outside its slot [0x40200100, 0x40200200) (256 B)"
        );
    }

    #[test]
    fn region_display() {
        assert_eq!(format!("{PACK}"), "pack [0x40200000, 0x40400000)");
    }
}
