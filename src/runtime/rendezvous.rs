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

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTPCT_EL0, DAIF, Readable, Writeable};
use spin::Mutex;

use crate::arch::aarch64::cpu;

/// The round in progress (or the last one).
static ROUND: AtomicUsize = AtomicUsize::new(0);
/// The round being gathered in the upper 32 bits, and a bit per CPU that arrived for it below: a
/// CPU that comes late, for a round that was given up, cannot be counted in the next one.
static ARRIVED: AtomicU64 = AtomicU64::new(0);
/// The last round whose change is complete (or that was given up).
static RELEASED: AtomicUsize = AtomicUsize::new(0);
/// One round at a time.
static LEADER: Mutex<()> = Mutex::new(());

/// How long a round waits for the other CPUs before it is given up.
pub const ARRIVAL_TIMEOUT_MS: u64 = 2000;

/// The round in progress or the last one: an idle CPU participates when it changes.
pub(crate) fn current_round() -> usize {
    ROUND.load(Ordering::Acquire)
}

fn round_tag(round: usize) -> u64 {
    (round as u64 & 0xffff_ffff) << 32
}

/// Runs `change` while every other online CPU waits in [`participate`]; each of them executes an
/// ISB after the change and before it resumes. This CPU runs the round with interrupts masked, so
/// nothing it does can wait on a CPU that is stopped. `change` must not take locks another CPU
/// could hold while stopped: resolve what it needs before calling.
///
/// A CPU that has not arrived after [`ARRIVAL_TIMEOUT_MS`] (busy with interrupts masked, or
/// hung) makes the round fail: `change` is not run, the CPUs that did arrive are let go, and the
/// error names the first CPU missing.
pub fn stop_others_and_run(change: impl FnOnce()) -> Result<(), usize> {
    let _leader = LEADER.lock();
    let daif = DAIF.get();
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    // Every CPU online (`runtime::smp`) but this one: a CPU counts as online once it serves rounds.
    let others = crate::runtime::smp::online_mask() & !(1 << cpu::cpu_id());
    let round = ROUND.load(Ordering::Relaxed) + 1;
    ARRIVED.store(round_tag(round), Ordering::Relaxed);
    ROUND.store(round, Ordering::Release);
    // Wake the others from WFE (their idle loop). A busy CPU is not interrupted yet.
    barrier::dsb(barrier::ISH);
    aarch64_cpu::asm::sev();
    let ticks = cpu::timer_frequency().max(1) * ARRIVAL_TIMEOUT_MS / 1000;
    let deadline = CNTPCT_EL0.get() + ticks;
    let result = loop {
        let arrived = ARRIVED.load(Ordering::Acquire) & 0xffff_ffff;
        if arrived & others == others {
            change();
            break Ok(());
        }
        if CNTPCT_EL0.get() >= deadline {
            break Err((others & !arrived).trailing_zeros() as usize);
        }
        // A spin, not WFE: with no event (a CPU that never arrives) WFE could sleep past the
        // deadline, since the timer's event stream is not turned on.
        core::hint::spin_loop();
    };
    RELEASED.store(round, Ordering::Release);
    barrier::dsb(barrier::ISH);
    aarch64_cpu::asm::sev();
    DAIF.set(daif);
    result
}

/// What another CPU runs when a round starts (from its idle loop): arrive, wait until the round is
/// released, then synchronise its instruction stream with the change (Arm ARM B2.2.5 / B2.4.4: a
/// context synchronisation event after the change and before executing the modified code). A
/// round that is already over, or was given up, is not joined.
pub fn participate() {
    let round = ROUND.load(Ordering::Acquire);
    let bit = 1u64 << cpu::cpu_id();
    let mut seen = ARRIVED.load(Ordering::Acquire);
    let joined = loop {
        if seen & !0xffff_ffff != round_tag(round) || RELEASED.load(Ordering::Acquire) >= round {
            break false;
        }
        match ARRIVED.compare_exchange_weak(seen, seen | bit, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                barrier::dsb(barrier::ISH);
                aarch64_cpu::asm::sev();
                break true;
            }
            Err(now) => seen = now,
        }
    };
    if joined {
        while RELEASED.load(Ordering::Acquire) < round {
            aarch64_cpu::asm::wfe();
        }
    }
    barrier::isb(barrier::SY);
}
