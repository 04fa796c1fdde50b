//! Stop-the-world for code changes outside the CMODX set (Linux `stop_machine` as used by
//! `aarch64_insn_patch_text`): the leader waits until every other online CPU has arrived and
//! waits, runs the change, releases them, and each executes an ISB before it returns to what it
//! was running, so none can execute a half-changed sequence or stale prefetched instructions.
//!
//! Rounds are numbered. `arrived` holds the round being gathered in its upper 32 bits and a bit
//! per CPU that arrived for it below, so a CPU that comes late, for a round that was given up,
//! cannot be counted in the next one; a participant waits for *its* round to be released, so one
//! that is slow to leave a round is never caught by the next one resetting shared state.

use super::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The shared state of the rendezvous rounds.
pub struct Rendezvous {
    /// The round in progress (or the last one).
    round: AtomicUsize,
    /// The round being gathered (upper 32 bits) and the CPUs that arrived for it.
    arrived: AtomicU64,
    /// The last round whose change is complete (or that was given up).
    released: AtomicUsize,
}

fn round_tag(round: usize) -> u64 {
    (round as u64 & 0xffff_ffff) << 32
}

const CPU_BITS: u64 = 0xffff_ffff;

impl Rendezvous {
    /// No round yet.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            round: AtomicUsize::new(0),
            arrived: AtomicU64::new(0),
            released: AtomicUsize::new(0),
        }
    }

    /// No round yet.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            round: AtomicUsize::new(0),
            arrived: AtomicU64::new(0),
            released: AtomicUsize::new(0),
        }
    }

    /// The round in progress or the last one: a waiting CPU participates when it changes.
    pub fn current_round(&self) -> usize {
        self.round.load(Ordering::Acquire)
    }

    /// Whether a round has started and is not released yet (a CPU waiting elsewhere then joins).
    pub fn in_progress(&self) -> bool {
        self.released.load(Ordering::Acquire) < self.round.load(Ordering::Acquire)
    }

    /// Leads one round (callers serialise rounds): gathers every CPU in `others` (a bit each, at
    /// most 32), runs `change`, releases them. `wake` tells the others a round started or ended
    /// (`DSB; SEV`); `keep_waiting` is polled while they arrive and gives up the round when it
    /// returns false (a deadline): then `change` does not run, the CPUs that arrived are let go,
    /// and the error is the first CPU missing.
    pub fn lead(
        &self,
        others: u64,
        change: impl FnOnce(),
        mut keep_waiting: impl FnMut() -> bool,
        wake: impl Fn(),
    ) -> Result<(), usize> {
        let others = others & CPU_BITS;
        let round = self.round.load(Ordering::Relaxed) + 1;
        self.arrived.store(round_tag(round), Ordering::Relaxed);
        self.round.store(round, Ordering::Release);
        wake();
        let result = loop {
            let arrived = self.arrived.load(Ordering::Acquire) & CPU_BITS;
            if arrived & others == others {
                change();
                break Ok(());
            }
            if !keep_waiting() {
                break Err((others & !arrived).trailing_zeros() as usize);
            }
        };
        self.released.store(round, Ordering::Release);
        wake();
        result
    }

    /// A CPU's part when it sees a new round: arrive, wait (`wait` is the CPU's pause: `WFE`)
    /// until the round is released, and return; the caller then executes its ISB. A round that
    /// is already over, or was given up, is not joined. `wake` announces the arrival.
    pub fn participate(&self, cpu: usize, wait: impl Fn(), wake: impl Fn()) {
        let round = self.round.load(Ordering::Acquire);
        let bit = 1u64 << (cpu as u64 & 31);
        let mut seen = self.arrived.load(Ordering::Acquire);
        let joined = loop {
            if seen & !CPU_BITS != round_tag(round)
                || self.released.load(Ordering::Acquire) >= round
            {
                break false;
            }
            match self.arrived.compare_exchange(
                seen,
                seen | bit,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break true,
                Err(now) => seen = now,
            }
        };
        if joined {
            wake();
            while self.released.load(Ordering::Acquire) < round {
                wait();
            }
        }
    }
}

impl Default for Rendezvous {
    fn default() -> Self {
        Self::new()
    }
}
