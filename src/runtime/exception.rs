//! Exception entry: the vector tables (vectors.s, one for EL1 and one for EL2) save an
//! [`ExceptionFrame`] and call `handle_exception`, which reads the syndrome registers of the
//! level the exception was taken to and hands a decoded [`FaultReport`] to the kernel's policy
//! (`runtime::fault`). ESR_EL2 has ESR_EL1's layout for exceptions taken from the current level.

use aarch64_cpu::registers::{ELR_EL1, ELR_EL2, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, Readable};

use super::boot::MAX_CPUS;
use crate::fault::FaultReport;

/// Stack each CPU switches to when its own stack has overflowed into its guard page.
pub const OVERFLOW_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct OverflowStacks([[u8; OVERFLOW_STACK_SIZE]; MAX_CPUS]);

/// Used only as raw stack memory by vectors.s; in .bss (RW, XN).
#[unsafe(no_mangle)]
static mut OVERFLOW_STACKS: OverflowStacks = OverflowStacks([[0; OVERFLOW_STACK_SIZE]; MAX_CPUS]);

core::arch::global_asm!(
    include_str!("vectors.s"),
    MAX_CPUS = const MAX_CPUS,
    OVERFLOW_STACK_SIZE = const OVERFLOW_STACK_SIZE,
);

/// The interrupted context, as saved by vectors.s. The handler may edit it (e.g. move `elr` past
/// an expected faulting instruction); the vector code restores everything from it.
#[repr(C)]
pub struct ExceptionFrame {
    /// General-purpose registers x0..x30.
    pub x: [u64; 31],
    /// Where execution resumes (ELR_ELx).
    pub elr: u64,
    /// Saved PSTATE (SPSR_ELx).
    pub spsr: u64,
    /// FP status register.
    pub fpsr: u64,
    /// FP control register.
    pub fpcr: u64,
    _pad: u64,
    /// SIMD/FP registers q0..q31.
    pub q: [u128; 32],
}

const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == 800);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, elr) == 248);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, q) == 288);

/// Where an exception came from and what kind it is, from the vector entry used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorKind(pub u64);

impl VectorKind {
    /// Synchronous exception or SError (the ones with a syndrome).
    pub fn has_syndrome(self) -> bool {
        matches!(self.0 % 4, 0 | 3)
    }

    /// A human name of the vector entry.
    pub fn name(self) -> &'static str {
        const TYPES: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
        TYPES[(self.0 % 4) as usize]
    }

    /// The source half of the vector entry.
    pub fn source(self) -> &'static str {
        const SOURCES: [&str; 4] = [
            "current EL, SP_EL0",
            "current EL, SP_ELx",
            "lower EL, AArch64",
            "lower EL, AArch32",
        ];
        SOURCES[((self.0 / 4) % 4) as usize]
    }
}

/// The syndrome of the exception taken to `el` (1 or 2), with `elr` as its return address.
fn syndrome(el: u64, elr: Option<u64>) -> FaultReport {
    if el == 2 {
        FaultReport {
            esr: ESR_EL2.get(),
            far: FAR_EL2.get(),
            elr: elr.unwrap_or_else(|| ELR_EL2.get()),
        }
    } else {
        FaultReport {
            esr: ESR_EL1.get(),
            far: FAR_EL1.get(),
            elr: elr.unwrap_or_else(|| ELR_EL1.get()),
        }
    }
}

/// Called by vectors.s with the vector number | the level it was taken to << 8, and the saved
/// frame.
#[unsafe(no_mangle)]
extern "C" fn handle_exception(kind_el: u64, frame: &mut ExceptionFrame) {
    let kind = VectorKind(kind_el & 0xff);
    if kind.has_syndrome() {
        let report = syndrome(kind_el >> 8, Some(frame.elr));
        crate::runtime::fault::on_exception(kind, report, frame);
    } else {
        crate::runtime::fault::on_interrupt(kind, frame);
    }
}

/// Called by vectors.s, on this CPU's overflow stack, when an exception's frame would not fit on
/// the interrupted stack (its SP is in or next to a guard page). Never returns.
#[unsafe(no_mangle)]
extern "C" fn handle_stack_overflow(kind_el: u64, sp: u64) -> ! {
    let report = syndrome(kind_el >> 8, None);
    crate::runtime::fault::on_stack_overflow(VectorKind(kind_el & 0xff), sp, report)
}
