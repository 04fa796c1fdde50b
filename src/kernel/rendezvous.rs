//! Stop-the-world for code changes outside the CMODX set (Linux `stop_machine` as used by
//! `aarch64_insn_patch_text`, without an OS): the patching CPU waits until every other online CPU
//! has arrived and is spinning, patches, releases them, and each executes an ISB before it returns
//! to whatever it was running, so none can execute a half-changed sequence or stale prefetched
//! instructions.
//!
//! Only CPU 0 is online until the SMP work brings the others up; they will enter
//! [`participate`] from the IPI that [`stop_others_and_run`] sends.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spin::Mutex;

/// CPUs running the kernel (CPU 0 only, until secondaries are released).
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// CPUs that arrived and spin in the current rendezvous.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// Set by the patching CPU when the change is complete.
static RELEASED: AtomicBool = AtomicBool::new(false);
/// One rendezvous at a time.
static LEADER: Mutex<()> = Mutex::new(());

/// CPUs online.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Runs `change` while every other online CPU waits in [`participate`]; each of them executes an
/// ISB after the change and before it resumes.
pub fn stop_others_and_run(change: impl FnOnce()) {
    let _leader = LEADER.lock();
    let others = online_cpus() - 1;
    RELEASED.store(false, Ordering::Release);
    // (SMP: send the rendezvous IPI to the other online CPUs here.)
    while ARRIVED.load(Ordering::Acquire) < others {
        core::hint::spin_loop();
    }
    change();
    ARRIVED.store(0, Ordering::Relaxed);
    RELEASED.store(true, Ordering::Release);
}

/// What another CPU runs on the rendezvous IPI: arrive, spin until released, then synchronise its
/// instruction stream with the change (Arm ARM B2.2.5: a context synchronisation event after the
/// change and before executing the modified code).
pub fn participate() {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while !RELEASED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
