//! Publication of new code to every CPU (Linux `kick_all_cpus_sync` after `flush_icache_range`):
//! the writing CPU, once its cache maintenance has completed, asks every other CPU to execute a
//! context synchronisation event and waits until each has answered. An answer is only given after
//! the CPU has read the request and then synchronised, so when the writer sees it, every
//! instruction that CPU fetches from then on is fetched after the new code was complete (Arm ARM
//! B2.4.4: "a context synchronization event on the PE that will execute the modified code").
//!
//! Requests are numbered (a generation); each CPU records the newest one it answered. One answer
//! covers every request up to it, so writers on several CPUs at once never wait for answers meant
//! for each other, and an answer given from an interrupt and one given from a wait loop on the
//! same CPU can race harmlessly (the record only grows).

use super::atomic::{AtomicU64, Ordering};

/// The requests and each CPU's answer, for up to `N` CPUs (at most 64).
pub struct Publication<const N: usize> {
    /// The newest request.
    requested: AtomicU64,
    /// The newest request each CPU answered.
    answered: [AtomicU64; N],
}

impl<const N: usize> Publication<N> {
    const CHECK: () = assert!(N >= 1 && N <= 64, "one bit per CPU in a u64 mask");

    /// No request yet.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::CHECK;
        Self {
            requested: AtomicU64::new(0),
            answered: [const { AtomicU64::new(0) }; N],
        }
    }

    /// No request yet.
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::CHECK;
        Self {
            requested: AtomicU64::new(0),
            answered: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A new request, by a CPU whose code writes and cache maintenance have completed (the
    /// `DSB ISH` after `IC IVAU`): returns its number, to wait for with [`Self::wait`]. The
    /// release orders everything this CPU did before it ahead of every answer to it.
    pub fn request(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether `cpu` has a request it has not answered.
    pub fn pending(&self, cpu: usize) -> bool {
        cpu < N
            && self.requested.load(Ordering::Acquire) > self.answered[cpu].load(Ordering::Relaxed)
    }

    /// `cpu` answers every request made so far: reads the newest, runs `synchronise` (its
    /// context synchronisation event: `ISB`), then records it. Returns the request answered.
    pub fn answer(&self, cpu: usize, synchronise: impl FnOnce()) -> u64 {
        let newest = self.requested.load(Ordering::Acquire);
        synchronise();
        if let Some(answered) = self.answered.get(cpu) {
            answered.fetch_max(newest, Ordering::Release);
        }
        newest
    }

    /// The newest request `cpu` has answered.
    pub fn answered(&self, cpu: usize) -> u64 {
        self.answered
            .get(cpu)
            .map_or(0, |answered| answered.load(Ordering::Acquire))
    }

    /// The CPUs of `cpus` (a bit each) that have not answered request `request` yet.
    pub fn missing(&self, request: u64, cpus: u64) -> u64 {
        (0..N)
            .filter(|&cpu| cpus & (1 << cpu) != 0)
            .filter(|&cpu| self.answered[cpu].load(Ordering::Acquire) < request)
            .fold(0, |mask, cpu| mask | 1 << cpu)
    }

    /// Waits until every CPU of `others` has answered `request`. `keep_waiting` is polled
    /// between checks (the CPU's pause, its own answers to others, a deadline); when it returns
    /// false the wait ends with the first CPU that has not answered.
    pub fn wait(
        &self,
        request: u64,
        others: u64,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<(), usize> {
        loop {
            let missing = self.missing(request, others);
            if missing == 0 {
                return Ok(());
            }
            if !keep_waiting() {
                return Err(missing.trailing_zeros() as usize);
            }
        }
    }
}

impl<const N: usize> Default for Publication<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_missing_until_answered_and_one_answer_covers_earlier_requests() {
        let p = Publication::<4>::new();
        let first = p.request();
        let second = p.request();
        assert_eq!(p.missing(first, 0b1110), 0b1110);
        assert!(p.pending(1));
        let mut synced = false;
        assert_eq!(p.answer(1, || synced = true), second);
        assert!(synced);
        assert!(!p.pending(1));
        assert_eq!(p.missing(first, 0b1110), 0b1100);
        assert_eq!(p.missing(second, 0b0010), 0);
        // A CPU outside the table answers nothing and is never "pending".
        assert!(!p.pending(9));
        assert_eq!(p.answered(9), 0);
    }

    #[test]
    fn a_wait_that_gives_up_names_the_first_cpu_missing() {
        let p = Publication::<4>::new();
        let request = p.request();
        p.answer(2, || {});
        assert_eq!(p.wait(request, 0b1100, || false), Err(3));
        assert_eq!(p.wait(request, 0b0100, || false), Ok(()));
    }
}
