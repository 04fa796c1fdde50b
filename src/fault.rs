//! Decoding of synchronous exceptions and SErrors into one readable line.
//!
//! The exception vectors (`arch::aarch64::exception`) capture ESR_EL1, FAR_EL1 and ELR_EL1; this module
//! turns them into a [`FaultReport`] such as
//! `data abort: permission fault, level 2, on write to 0x40200000 at pc 0x40201234`.
//! It is portable so that the decoding is unit-tested on the host (Arm ARM D23.2 "ESR_ELx").

use core::fmt;

/// The exception class, ESR_ELx.EC (bits \[31:26\]), for the classes this kernel can meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    /// EC 0x00: unknown reason, in practice an undefined or unallocated instruction.
    Unknown,
    /// EC 0x01: trapped WFI or WFE.
    WfiWfe,
    /// EC 0x07: access to SIMD or floating point trapped (CPACR_EL1.FPEN).
    FpAccess,
    /// EC 0x0E: illegal execution state (bad SPSR on exception return).
    IllegalState,
    /// EC 0x15: SVC from AArch64.
    Svc,
    /// EC 0x16: HVC from AArch64.
    Hvc,
    /// EC 0x17: SMC from AArch64.
    Smc,
    /// EC 0x18: trapped MSR, MRS or system instruction.
    SysReg,
    /// EC 0x20 / 0x21: instruction abort (from a lower or the same exception level).
    InstructionAbort,
    /// EC 0x22: misaligned PC.
    PcAlignment,
    /// EC 0x24 / 0x25: data abort (from a lower or the same exception level).
    DataAbort,
    /// EC 0x26: misaligned SP.
    SpAlignment,
    /// EC 0x2F: SError interrupt.
    SError,
    /// EC 0x30 / 0x31: hardware breakpoint.
    Breakpoint,
    /// EC 0x32 / 0x33: software step.
    SoftwareStep,
    /// EC 0x34 / 0x35: watchpoint.
    Watchpoint,
    /// EC 0x3C: BRK instruction.
    Brk,
    /// Any other class, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    /// Decodes the EC field of an ESR value.
    pub const fn from_esr(esr: u64) -> Self {
        match ((esr >> 26) & 0x3f) as u8 {
            0x00 => Self::Unknown,
            0x01 => Self::WfiWfe,
            0x07 => Self::FpAccess,
            0x0e => Self::IllegalState,
            0x15 => Self::Svc,
            0x16 => Self::Hvc,
            0x17 => Self::Smc,
            0x18 => Self::SysReg,
            0x20 | 0x21 => Self::InstructionAbort,
            0x22 => Self::PcAlignment,
            0x24 | 0x25 => Self::DataAbort,
            0x26 => Self::SpAlignment,
            0x2f => Self::SError,
            0x30 | 0x31 => Self::Breakpoint,
            0x32 | 0x33 => Self::SoftwareStep,
            0x34 | 0x35 => Self::Watchpoint,
            0x3c => Self::Brk,
            other => Self::Other(other),
        }
    }

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "undefined instruction",
            Self::WfiWfe => "trapped WFI/WFE",
            Self::FpAccess => "trapped FP/SIMD access",
            Self::IllegalState => "illegal execution state",
            Self::Svc => "svc",
            Self::Hvc => "hvc",
            Self::Smc => "smc",
            Self::SysReg => "trapped system register access",
            Self::InstructionAbort => "instruction abort",
            Self::PcAlignment => "PC alignment fault",
            Self::DataAbort => "data abort",
            Self::SpAlignment => "SP alignment fault",
            Self::SError => "SError",
            Self::Breakpoint => "breakpoint",
            Self::SoftwareStep => "software step",
            Self::Watchpoint => "watchpoint",
            Self::Brk => "brk",
            Self::Other(_) => "exception",
        }
    }
}

/// The fault status code of an instruction or data abort (ISS.xFSC, bits \[5:0\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    /// Address size fault at the given level.
    AddressSize(u8),
    /// Translation fault (invalid descriptor) at the given level.
    Translation(u8),
    /// Access flag fault at the given level.
    AccessFlag(u8),
    /// Permission fault at the given level.
    Permission(u8),
    /// Synchronous external abort, not on a table walk.
    SyncExternal,
    /// Alignment fault.
    Alignment,
    /// TLB conflict abort: two TLB entries for one address (a broken break-before-make).
    TlbConflict,
    /// Any other code, raw.
    Other(u8),
}

impl FaultStatus {
    /// Decodes a 6-bit DFSC/IFSC value.
    pub const fn from_fsc(fsc: u8) -> Self {
        let level = fsc & 0b11;
        match fsc & 0x3f {
            0b00_0000..=0b00_0011 => Self::AddressSize(level),
            0b00_0100..=0b00_0111 => Self::Translation(level),
            0b00_1000..=0b00_1011 => Self::AccessFlag(level),
            0b00_1100..=0b00_1111 => Self::Permission(level),
            0b01_0000 => Self::SyncExternal,
            0b10_0001 => Self::Alignment,
            0b11_0000 => Self::TlbConflict,
            other => Self::Other(other),
        }
    }

    /// The translation level the fault was found at, where the code carries one.
    pub const fn level(self) -> Option<u8> {
        match self {
            Self::AddressSize(l)
            | Self::Translation(l)
            | Self::AccessFlag(l)
            | Self::Permission(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressSize(l) => write!(f, "address size fault, level {l}"),
            Self::Translation(l) => write!(f, "translation fault, level {l}"),
            Self::AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            Self::Permission(l) => write!(f, "permission fault, level {l}"),
            Self::SyncExternal => f.write_str("synchronous external abort"),
            Self::Alignment => f.write_str("alignment fault"),
            Self::TlbConflict => f.write_str("TLB conflict abort"),
            Self::Other(code) => write!(f, "fault status {code:#04x}"),
        }
    }
}

/// What the faulting access was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A load (data abort, WnR = 0).
    Read,
    /// A store (data abort, WnR = 1).
    Write,
    /// An instruction fetch (instruction abort).
    Execute,
}

/// What an SError's syndrome says (Arm ARM D24.2.40, ESR_ELx ISS encoding for an SError
/// interrupt). Without FEAT_RAS the ISS is 0 or implementation defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SErrorSyndrome {
    /// ISS.IDS = 1: an implementation-defined syndrome (ISS bits \[23:0\]).
    ImplementationDefined(u32),
    /// The architected syndrome.
    Architected {
        /// ISS.AET \[12:10\]: how bad the error is, where DFSC says "asynchronous SError".
        severity: Option<&'static str>,
        /// ISS.DFSC \[5:0\]: 0x00 uncategorized, 0x11 asynchronous SError interrupt.
        dfsc: u8,
        /// ISS.EA \[9\]: external abort type (implementation defined).
        external_abort_type: bool,
    },
}

impl SErrorSyndrome {
    /// Decodes the ISS of an SError's ESR.
    pub const fn from_esr(esr: u64) -> Self {
        let iss = (esr & 0x01ff_ffff) as u32;
        if iss & (1 << 24) != 0 {
            return Self::ImplementationDefined(iss & 0x00ff_ffff);
        }
        let dfsc = (iss & 0x3f) as u8;
        let severity = if dfsc == 0x11 {
            match (iss >> 10) & 0b111 {
                0b000 => Some("uncontainable"),
                0b001 => Some("unrecoverable"),
                0b010 => Some("restartable"),
                0b011 => Some("recoverable"),
                0b110 => Some("corrected"),
                _ => None,
            }
        } else {
            None
        };
        Self::Architected {
            severity,
            dfsc,
            external_abort_type: iss & (1 << 9) != 0,
        }
    }
}

impl fmt::Display for SErrorSyndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ImplementationDefined(iss) => {
                write!(f, "implementation-defined syndrome {iss:#08x}")
            }
            Self::Architected {
                severity,
                dfsc,
                external_abort_type,
            } => {
                match dfsc {
                    0x00 => f.write_str("uncategorized")?,
                    0x11 => f.write_str("asynchronous SError interrupt")?,
                    other => write!(f, "DFSC {other:#04x}")?,
                }
                if let Some(severity) = severity {
                    write!(f, ", {severity}")?;
                }
                if external_abort_type {
                    f.write_str(", EA")?;
                }
                Ok(())
            }
        }
    }
}

/// One synchronous exception or SError, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReport {
    /// ESR_EL1 as read.
    pub esr: u64,
    /// FAR_EL1 as read (meaningful for aborts, alignment faults and watchpoints).
    pub far: u64,
    /// ELR_EL1: the address of the faulting (or, for SVC/HVC/SMC, the following) instruction.
    pub elr: u64,
}

impl FaultReport {
    /// The exception class.
    pub const fn class(&self) -> ExceptionClass {
        ExceptionClass::from_esr(self.esr)
    }

    /// For aborts: the fault status.
    pub const fn status(&self) -> Option<FaultStatus> {
        match self.class() {
            ExceptionClass::InstructionAbort | ExceptionClass::DataAbort => {
                Some(FaultStatus::from_fsc((self.esr & 0x3f) as u8))
            }
            _ => None,
        }
    }

    /// For aborts: whether the access was a read, a write or a fetch.
    pub const fn access(&self) -> Option<Access> {
        match self.class() {
            ExceptionClass::InstructionAbort => Some(Access::Execute),
            // ISS.WnR, bit 6. Cache maintenance (ISS.CM, bit 8) reports WnR = 1 too; it is a write
            // as far as permissions go.
            ExceptionClass::DataAbort if self.esr & (1 << 6) != 0 => Some(Access::Write),
            ExceptionClass::DataAbort => Some(Access::Read),
            _ => None,
        }
    }

    /// Whether FAR holds the faulting address (ISS.FnV, bit 10, clear for aborts).
    pub const fn far_valid(&self) -> bool {
        match self.class() {
            ExceptionClass::InstructionAbort | ExceptionClass::DataAbort => {
                self.esr & (1 << 10) == 0
            }
            ExceptionClass::PcAlignment | ExceptionClass::Watchpoint => true,
            _ => false,
        }
    }

    /// For an SError: its syndrome.
    pub const fn serror(&self) -> Option<SErrorSyndrome> {
        match self.class() {
            ExceptionClass::SError => Some(SErrorSyndrome::from_esr(self.esr)),
            _ => None,
        }
    }

    /// For BRK, SVC, HVC and SMC: the 16-bit immediate (ISS bits \[15:0\]).
    pub const fn immediate(&self) -> Option<u16> {
        match self.class() {
            ExceptionClass::Brk
            | ExceptionClass::Svc
            | ExceptionClass::Hvc
            | ExceptionClass::Smc => Some(self.esr as u16),
            _ => None,
        }
    }
}

impl fmt::Display for FaultReport {
    /// One line: class, then for aborts the status, level, access and address, then the PC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = self.class();
        f.write_str(class.name())?;
        if let Some(imm) = self.immediate() {
            write!(f, " #{imm:#x}")?;
        }
        if let (Some(status), Some(access)) = (self.status(), self.access()) {
            let verb = match access {
                Access::Read => "read from",
                Access::Write => "write to",
                Access::Execute => "execute of",
            };
            write!(f, ": {status}, on {verb} ")?;
            if self.far_valid() {
                write!(f, "{:#x}", self.far)?;
            } else {
                f.write_str("an unknown address")?;
            }
        } else if let Some(syndrome) = self.serror() {
            // Asynchronous: the PC is where the CPU was when it took it, not what caused it.
            return write!(
                f,
                ": {syndrome}, taken at pc {:#x} (esr {:#010x})",
                self.elr, self.esr
            );
        } else if let ExceptionClass::Other(ec) = class {
            write!(f, " class {ec:#04x}")?;
        }
        write!(f, " at pc {:#x} (esr {:#010x})", self.elr, self.esr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn report(esr: u64, far: u64, elr: u64) -> FaultReport {
        FaultReport { esr, far, elr }
    }

    #[test]
    fn permission_fault_on_write_same_el() {
        // EC 0x25 (data abort, same EL), IL, WnR, DFSC 0b001110 (permission, level 2).
        let esr = (0x25 << 26) | (1 << 25) | (1 << 6) | 0b00_1110;
        let r = report(esr, 0x4020_0000, 0x4020_1234);
        assert_eq!(r.class(), ExceptionClass::DataAbort);
        assert_eq!(r.status(), Some(FaultStatus::Permission(2)));
        assert_eq!(r.access(), Some(Access::Write));
        assert_eq!(
            format!("{r}"),
            "data abort: permission fault, level 2, on write to 0x40200000 at pc 0x40201234 (esr 0x9600004e)"
        );
    }

    #[test]
    fn translation_fault_on_fetch() {
        let esr = (0x21 << 26) | (1 << 25) | 0b00_0111;
        let r = report(esr, 0x1000, 0x1000);
        assert_eq!(r.class(), ExceptionClass::InstructionAbort);
        assert_eq!(r.status(), Some(FaultStatus::Translation(3)));
        assert_eq!(r.access(), Some(Access::Execute));
        assert!(
            format!("{r}")
                .starts_with("instruction abort: translation fault, level 3, on execute of 0x1000")
        );
    }

    #[test]
    fn read_with_invalid_far() {
        let esr = (0x25 << 26) | (1 << 10) | 0b00_0101;
        let r = report(esr, 0xdead, 0x10);
        assert_eq!(r.access(), Some(Access::Read));
        assert!(format!("{r}").contains("on read from an unknown address"));
    }

    #[test]
    fn brk_carries_its_immediate() {
        let esr = (0x3c << 26) | (1 << 25) | 0x3e8;
        let r = report(esr, 0, 0x3c00_0000);
        assert_eq!(r.class(), ExceptionClass::Brk);
        assert_eq!(r.immediate(), Some(0x3e8));
        assert!(format!("{r}").starts_with("brk #0x3e8 at pc 0x3c000000"));
    }

    #[test]
    fn undefined_instruction() {
        let r = report(1 << 25, 0, 0x4020_0000);
        assert_eq!(r.class(), ExceptionClass::Unknown);
        assert!(format!("{r}").starts_with("undefined instruction at pc 0x40200000"));
    }

    #[test]
    fn serror_syndromes_are_decoded() {
        // No syndrome (a CPU without FEAT_RAS, or a virtual SError with VSESR_EL2 = 0).
        let r = report(0x2f << 26 | 1 << 25, 0, 0x4020_0040);
        assert_eq!(
            format!("{r}"),
            "SError: uncategorized, taken at pc 0x40200040 (esr 0xbe000000)"
        );
        // RAS: asynchronous SError, AET = recoverable (0b011), EA set.
        let esr = 0x2f << 26 | 1 << 25 | 0b011 << 10 | 1 << 9 | 0x11;
        assert_eq!(
            report(esr, 0, 0x10).serror(),
            Some(SErrorSyndrome::Architected {
                severity: Some("recoverable"),
                dfsc: 0x11,
                external_abort_type: true
            })
        );
        assert!(format!("{}", report(esr, 0, 0x10)).starts_with(
            "SError: asynchronous SError interrupt, recoverable, EA, taken at pc 0x10"
        ));
        // IDS: implementation defined.
        let r = report(0x2f << 26 | 1 << 25 | 1 << 24 | 0x1234, 0, 0);
        assert_eq!(
            r.serror(),
            Some(SErrorSyndrome::ImplementationDefined(0x1234))
        );
        assert!(format!("{r}").contains("implementation-defined syndrome 0x001234"));
        assert_eq!(report(0x25 << 26, 0, 0).serror(), None);
    }

    #[test]
    fn every_fault_status_level() {
        for level in 0..4u8 {
            assert_eq!(FaultStatus::from_fsc(0b1100 | level).level(), Some(level));
            assert_eq!(
                FaultStatus::from_fsc(0b0100 | level),
                FaultStatus::Translation(level)
            );
        }
        assert_eq!(FaultStatus::from_fsc(0b11_0000), FaultStatus::TlbConflict);
        assert_eq!(FaultStatus::from_fsc(0b10_0001), FaultStatus::Alignment);
        assert_eq!(FaultStatus::from_fsc(0b11_1111), FaultStatus::Other(0x3f));
    }

    #[test]
    fn unlisted_class_is_kept_raw() {
        let r = report(0x3f << 26, 0, 0);
        assert_eq!(r.class(), ExceptionClass::Other(0x3f));
        assert!(format!("{r}").starts_with("exception class 0x3f"));
    }
}
