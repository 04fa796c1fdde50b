//! Stop-the-world for code changes outside the CMODX set (Linux `stop_machine` as used by
//! `aarch64_insn_patch_text`, without an OS): the patching CPU waits until every other online CPU
//! has arrived and is spinning, patches, releases them, and each executes an ISB before it returns
//! to whatever it was running, so none can execute a half-changed sequence or stale prefetched
//! instructions.
//!
//! Rounds are numbered: a participant waits for *its* round to be released, so one that is slow to
//! leave a round can never be caught by the next one resetting shared flags.
//!
//! The other CPUs enter [`participate`] from their idle loop (`runtime::smp`): the round number
//! is stored, then `SEV` wakes them from `WFE`. (Interrupting a CPU that is busy, with an SGI, is
//! the SMP issue's next step.)

use core::sync::atomic::{AtomicUsize, Ordering};

use aarch64_cpu::registers::{DAIF, Readable, Writeable};
use spin::Mutex;

/// CPUs running the kernel (CPU 0 only, until secondaries are released).
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// The round in progress (or the last one).
static ROUND: AtomicUsize = AtomicUsize::new(0);
/// CPUs that arrived and spin in the round in progress.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// The last round whose change is complete.
static RELEASED: AtomicUsize = AtomicUsize::new(0);
/// One round at a time.
static LEADER: Mutex<()> = Mutex::new(());

/// CPUs online.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Counts this CPU in: from now on every round waits for it.
pub(crate) fn cpu_online() {
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// The round in progress or the last one: an idle CPU participates when it changes.
pub(crate) fn current_round() -> usize {
    ROUND.load(Ordering::Acquire)
}

/// Runs `change` while every other online CPU waits in [`participate`]; each of them executes an
/// ISB after the change and before it resumes. This CPU runs the round with interrupts masked, so
/// nothing it does can wait on a CPU that is stopped. `change` must not take locks another CPU
/// could hold while stopped: resolve what it needs before calling.
pub fn stop_others_and_run(change: impl FnOnce()) {
    let _leader = LEADER.lock();
    let daif = DAIF.get();
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    let others = online_cpus() - 1;
    ARRIVED.store(0, Ordering::Relaxed);
    let round = ROUND.load(Ordering::Relaxed) + 1;
    ROUND.store(round, Ordering::Release);
    // Wake the others from WFE (their idle loop). A busy CPU is not interrupted yet.
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
    aarch64_cpu::asm::sev();
    while ARRIVED.load(Ordering::Acquire) < others {
        core::hint::spin_loop();
    }
    change();
    RELEASED.store(round, Ordering::Release);
    DAIF.set(daif);
}

/// What another CPU runs on the rendezvous IPI: arrive, spin until its round is released, then
/// synchronise its instruction stream with the change (Arm ARM B2.2.5 / B2.4.4: a context
/// synchronisation event after the change and before executing the modified code).
pub fn participate() {
    let round = ROUND.load(Ordering::Acquire);
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while RELEASED.load(Ordering::Acquire) < round {
        core::hint::spin_loop();
    }
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
