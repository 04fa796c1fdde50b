//! What happens on an exception: an expected fault (registered by a test or a probe with
//! [`catch`]) is recorded and execution resumes; anything else is reported in one decoded line plus
//! a register dump, and the kernel stops with failure.

use core::sync::atomic::{AtomicU8, Ordering, compiler_fence};

use spin::Mutex;

use crate::fault::{ExceptionClass, FaultReport};
use crate::runtime::boot::MAX_CPUS;
use crate::runtime::console::write_fmt_emergency;
use crate::runtime::exception::{ExceptionFrame, VectorKind};

/// Where execution continues after an expected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// At the instruction after the faulting one (a load, store, or undefined instruction).
    Skip,
    /// At the return address in x30: for a fault on the first instruction of a called function
    /// (an instruction abort on a call into non-executable memory, or a BRK at a function's entry).
    ReturnToCaller,
    /// Where the interrupted code was: for an expected SError (asynchronous, so nothing is
    /// skipped). Only an SError is caught with this; with the others an SError is unexpected.
    Continue,
}

const DISARMED: u8 = 0;

/// Each CPU's resume policy for the one fault it expects, or `DISARMED`.
static ARMED: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(DISARMED) }; MAX_CPUS];
/// Each CPU's caught fault.
static CAUGHT: [Mutex<Option<FaultReport>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

/// This CPU's place in [`ARMED`] and [`CAUGHT`] (a CPU outside the table shares the last one).
fn slot() -> usize {
    crate::runtime::smp::this_cpu().min(MAX_CPUS - 1)
}

impl Resume {
    const fn encode(self) -> u8 {
        match self {
            Self::Skip => 1,
            Self::ReturnToCaller => 2,
            Self::Continue => 3,
        }
    }
}

/// Runs `f` on this CPU, expecting it may raise one synchronous exception (with [`Resume::Skip`] or
/// [`Resume::ReturnToCaller`]) or one SError (with [`Resume::Continue`]); returns the decoded report
/// of that exception, or `None` if `f` ran without one. Any other exception is unexpected.
pub fn catch(resume: Resume, f: impl FnOnce()) -> Option<FaultReport> {
    let cpu = slot();
    *CAUGHT[cpu].lock() = None;
    ARMED[cpu].store(resume.encode(), Ordering::SeqCst);
    compiler_fence(Ordering::SeqCst);
    f();
    compiler_fence(Ordering::SeqCst);
    ARMED[cpu].store(DISARMED, Ordering::SeqCst);
    CAUGHT[cpu].lock().take()
}

/// Synchronous exceptions and SErrors (called by the arch layer).
pub(crate) fn on_exception(kind: VectorKind, report: FaultReport, frame: &mut ExceptionFrame) {
    // An armed instruction probe: its handler runs and execution goes on past the instruction.
    if report.class() == ExceptionClass::Brk
        && report
            .immediate()
            .is_some_and(|imm| super::probe::on_brk(imm, frame))
    {
        return;
    }
    // A load and a store, not a swap: this also runs before the MMU is on, where an atomic
    // read-modify-write may never complete (see `runtime::locks_ready`).
    let cpu = slot();
    let armed = ARMED[cpu].load(Ordering::SeqCst);
    ARMED[cpu].store(DISARMED, Ordering::SeqCst);
    let serror = report.class() == ExceptionClass::SError;
    let expected = armed != DISARMED
        && kind.source() == "current EL, SP_ELx"
        && serror == (armed == Resume::Continue.encode());
    if expected {
        *CAUGHT[cpu].lock() = Some(report);
        if armed == Resume::Skip.encode() {
            frame.elr += 4;
        } else if armed == Resume::ReturnToCaller.encode() {
            frame.elr = frame.x[30];
        }
        // Continue: asynchronous, ELR is already where the interrupted code goes on.
        return;
    }
    write_fmt_emergency(format_args!(
        "\n*** unexpected {} exception ({}): {report}\n",
        kind.name(),
        kind.source()
    ));
    dump(frame);
    super::exit(false);
}

/// A stack overflow caught at exception entry: the interrupted SP (`sp`) was so low that the
/// exception frame would not fit above the guard page. Reports where, then stops with failure.
pub(crate) fn on_stack_overflow(kind: VectorKind, sp: u64, report: FaultReport) -> ! {
    let image = super::memory::KernelImage::current();
    let whose = (0..image.stack_count()).find(|&cpu| {
        let guard = image.stack_guard(cpu);
        sp >= guard.start && sp < image.stack(cpu).start + 4096
    });
    write_fmt_emergency(format_args!(
        "\n*** stack overflow: {} exception ({}) with sp {sp:#x}",
        kind.name(),
        kind.source()
    ));
    match whose {
        Some(cpu) => write_fmt_emergency(format_args!(
            ", at the guard page below CPU {cpu}'s boot stack\n"
        )),
        None => write_fmt_emergency(format_args!(", where no exception frame can be written\n")),
    }
    write_fmt_emergency(format_args!("    the exception was: {report}\n"));
    super::exit(false)
}

/// IRQ: the SGIs the CPUs send each other (`runtime::gic`). Any other interrupt, and any FIQ (none
/// is enabled), is a bug.
pub(crate) fn on_interrupt(kind: VectorKind, frame: &mut ExceptionFrame) {
    let unexpected = if kind.name() == "IRQ" {
        let mut handled = Ok(());
        super::smp::while_interrupted_at(frame.elr, || handled = super::gic::handle());
        match handled {
            Ok(()) => return,
            Err(id) => id,
        }
    } else {
        0
    };
    write_fmt_emergency(format_args!(
        "\n*** unexpected {} ({}, interrupt {unexpected}) at pc {:#x}\n",
        kind.name(),
        kind.source(),
        frame.elr
    ));
    dump(frame);
    super::exit(false);
}

fn dump(frame: &ExceptionFrame) {
    for (row, regs) in frame.x.chunks(4).enumerate() {
        for (col, value) in regs.iter().enumerate() {
            let n = row * 4 + col;
            write_fmt_emergency(format_args!("  x{n:<2} {value:#018x}"));
        }
        write_fmt_emergency(format_args!("\n"));
    }
    let sp = frame as *const ExceptionFrame as u64 + core::mem::size_of::<ExceptionFrame>() as u64;
    write_fmt_emergency(format_args!(
        "  sp  {sp:#018x}  elr {:#018x}  spsr {:#010x}\n",
        frame.elr, frame.spsr
    ));
}
