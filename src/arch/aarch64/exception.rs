//! Exception entry: the vector table (vectors.s) saves an [`ExceptionFrame`] and calls
//! [`handle_exception`], which reads the syndrome registers and hands a decoded
//! [`FaultReport`] to the kernel's policy (`kernel::fault`).

use aarch64_cpu::registers::{ESR_EL1, FAR_EL1, Readable};

use crate::fault::FaultReport;

core::arch::global_asm!(include_str!("vectors.s"));

/// The interrupted context, as saved by vectors.s. The handler may edit it (e.g. move `elr` past
/// an expected faulting instruction); the vector code restores everything from it.
#[repr(C)]
pub struct ExceptionFrame {
    /// General-purpose registers x0..x30.
    pub x: [u64; 31],
    /// Where execution resumes (ELR_EL1).
    pub elr: u64,
    /// Saved PSTATE (SPSR_EL1).
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

/// Called by vectors.s with the vector number and the saved frame.
#[unsafe(no_mangle)]
extern "C" fn handle_exception(kind: u64, frame: &mut ExceptionFrame) {
    let kind = VectorKind(kind);
    if kind.has_syndrome() {
        let report = FaultReport {
            esr: ESR_EL1.get(),
            far: FAR_EL1.get(),
            elr: frame.elr,
        };
        crate::kernel::fault::on_exception(kind, report, frame);
    } else {
        crate::kernel::fault::on_interrupt(kind, frame);
    }
}
