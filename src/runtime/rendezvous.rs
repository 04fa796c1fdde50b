//! Stop-the-world for code changes outside the CMODX set (Linux `stop_machine` as used by
//! `aarch64_insn_patch_text`, without an OS): the patching CPU waits until every other online CPU
//! has arrived and is waiting, patches, releases them, and each executes an ISB before it returns
//! to whatever it was running, so none can execute a half-changed sequence or stale prefetched
//! instructions. The protocol is `crate::sync::rendezvous` (model-checked on the host); this is
//! the kernel's hardware around it.
//!
//! The others are reached by [`gic::SGI_STOP`], so a CPU busy with interrupts unmasked joins from
//! the interrupt; an idle CPU, and one waiting with interrupts masked (for a lock, for answers),
//! joins from its wait loop (`smp::serve_requests`). A CPU busy with interrupts masked for longer
//! than [`ARRIVAL_TIMEOUT_MS`] makes the round fail with its name.

use aarch64_cpu::asm::barrier;
use spin::Mutex;

use crate::runtime::irq::without_interrupts;
use crate::runtime::{gic, smp};
use crate::sync::rendezvous::Rendezvous;

/// The rounds.
static ROUNDS: Rendezvous = Rendezvous::new();
/// One round at a time.
static LEADER: Mutex<()> = Mutex::new(());

/// How long a round waits for the other CPUs before it is given up.
pub const ARRIVAL_TIMEOUT_MS: u64 = 2000;

/// Runs `change` while every other online CPU waits in [`participate`]; each of them executes an
/// ISB after the change and before it resumes. This CPU runs the round with interrupts masked, so
/// nothing it does can wait on a CPU that is stopped. `change` must not take locks another CPU
/// could hold while stopped: resolve what it needs before calling.
///
/// A CPU that has not arrived after [`ARRIVAL_TIMEOUT_MS`] (busy with interrupts masked, or
/// hung) makes the round fail: `change` is not run, the CPUs that did arrive are let go, and the
/// error names the first CPU missing.
pub fn stop_others_and_run(change: impl FnOnce()) -> Result<(), usize> {
    without_interrupts(|| lead(change))
}

fn lead(change: impl FnOnce()) -> Result<(), usize> {
    // Another CPU leading a round waits for this one: join it while waiting to lead.
    let leader = loop {
        if let Some(leader) = LEADER.try_lock() {
            break leader;
        }
        smp::serve_requests();
        smp::pause();
    };
    // Every CPU online (`runtime::smp`) but this one: a CPU counts as online once it serves rounds.
    let others = smp::online_mask() & !(1 << smp::this_cpu());
    let deadline = smp::deadline_after_ms(ARRIVAL_TIMEOUT_MS);
    let mut interrupted = false;
    let result = ROUNDS.lead(
        others,
        change,
        || {
            // The first poll, once the round is published: interrupt the busy CPUs.
            if !interrupted {
                gic::send_to_others(gic::SGI_STOP);
                interrupted = true;
            }
            // A publication request from a CPU that is about to arrive is answered meanwhile.
            if smp::publication_pending() {
                smp::answer_synchronise();
            }
            // Woken by an arrival's SEV, or by the event stream at the latest.
            aarch64_cpu::asm::wfe();
            !smp::past(deadline)
        },
        smp::wake_all,
    );
    drop(leader);
    result
}

/// What another CPU runs when a round starts (from [`gic::SGI_STOP`] or a wait loop): arrive,
/// wait until the round is released, then synchronise its instruction stream with the change (Arm
/// ARM B2.2.5 / B2.4.4: a context synchronisation event after the change and before executing the
/// modified code). A round that is already over, or was given up, is not joined.
pub fn participate() {
    // While it waits (interrupts masked), a publication request is still answered: the CPU
    // that made it may not be in the round yet.
    let wait = || {
        if smp::publication_pending() {
            smp::answer_synchronise();
        }
        aarch64_cpu::asm::wfe();
    };
    ROUNDS.participate(smp::this_cpu(), wait, smp::wake_all);
    barrier::isb(barrier::SY);
}

/// Joins the round in progress, if there is one (never called by its leader, which waits in
/// [`stop_others_and_run`] and answers only publication requests there).
pub(crate) fn join_if_started() {
    if ROUNDS.in_progress() {
        participate();
    }
}
