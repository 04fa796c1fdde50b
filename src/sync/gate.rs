//! A gate many CPUs pass at once and one CPU closes (a big-reader lock, as Linux's
//! `percpu_rw_semaphore` without its counter): the text poke is *inside* while it uses the
//! physical pages it looked up in the exec pool's pack table, and a CPU that unmaps a pack (or
//! audits the tables) *closes* the gate first, which returns once no CPU is inside and keeps new
//! ones out until it opens again.
//!
//! Each CPU has a flag of its own, in a cache line of its own, so passing the gate writes no
//! line another CPU writes (a reader-writer lock's shared count is a read-modify-write of one
//! line by every CPU, two for every poke).
//!
//! The protocol:
//! - entering, a CPU sets its flag, then (a full fence) reads `closed`; if it is set, the CPU
//!   clears its flag, waits until `closed` is clear, and tries again (or, with
//!   [`Gate::try_enter`], gives up);
//! - closing (closers are serialised by the caller's lock) sets `closed`, then (a full fence)
//!   waits until every CPU's flag is clear;
//! - leaving clears the CPU's flag, opening clears `closed`, both with Release.
//!
//! The two fences order each side's store before its load (the store-buffering pattern): of an
//! entering CPU and a closer, at least one sees the other's store, so no CPU is inside while the
//! closer believes none is. Leaving with Release makes what the CPU did inside happen before what
//! the closer does once it saw the flag clear; opening with Release makes what the closer did
//! happen before what a CPU does inside after its next entry. A CPU's own entries must not nest
//! (its caller masks interrupts while inside). The model check (`loom_tests.rs`) explores every
//! interleaving of two CPUs using a pack and one unmapping it.

use super::atomic::{AtomicBool, Ordering, fence};

/// One CPU's flag, alone in its cache line.
#[repr(align(64))]
struct Flag(AtomicBool);

/// The gate, for CPUs `0..N`.
pub struct Gate<const N: usize> {
    closed: AtomicBool,
    inside: [Flag; N],
}

impl<const N: usize> Gate<N> {
    /// Open, no CPU inside.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            closed: AtomicBool::new(false),
            inside: [const { Flag(AtomicBool::new(false)) }; N],
        }
    }

    /// Open, no CPU inside.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            closed: AtomicBool::new(false),
            inside: core::array::from_fn(|_| Flag(AtomicBool::new(false))),
        }
    }

    /// CPU `cpu` (below `N`, not inside) enters if the gate is open, and returns whether it did;
    /// if it is closed, the CPU is not inside (its flag is cleared again) and nothing waits. The
    /// text poke's fast path: a closed gate sends it to the path that waits
    /// ([`Self::enter`]), so the fast path calls nothing.
    #[inline]
    pub fn try_enter(&self, cpu: usize) -> bool {
        let flag = &self.inside[cpu].0;
        flag.store(true, Ordering::Relaxed);
        // Orders the flag's store before the load of `closed` (the closer's fence orders its
        // store of `closed` before its loads of the flags).
        fence(Ordering::SeqCst);
        // Acquire: what the last closer did before opening happens before this entry.
        if !self.closed.load(Ordering::Acquire) {
            return true;
        }
        flag.store(false, Ordering::Release);
        false
    }

    /// CPU `cpu` (below `N`, not inside) enters, calling `wait` in each turn of waiting while
    /// the gate is closed (it is not inside then), after `backed_out` (it cleared its flag, which
    /// the closer may be waiting for: a waiter that sleeps needs a wake-up; the kernel's poll).
    #[inline]
    pub fn enter(&self, cpu: usize, mut wait: impl FnMut(), mut backed_out: impl FnMut()) {
        while !self.try_enter(cpu) {
            backed_out();
            while self.closed.load(Ordering::Relaxed) {
                wait();
            }
        }
    }

    /// CPU `cpu` leaves: what it did inside happens before what a closer does after it saw it
    /// gone.
    #[inline]
    pub fn leave(&self, cpu: usize) {
        self.inside[cpu].0.store(false, Ordering::Release);
    }

    /// Closes the gate and returns once no CPU is inside, calling `wait` in each turn of
    /// waiting; no CPU enters until [`Self::open`]. The caller holds the lock that serialises
    /// closers, and is not inside itself.
    pub fn close(&self, mut wait: impl FnMut()) {
        self.closed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        for flag in &self.inside {
            // Acquire: what the CPU did inside happens before what the closer does now.
            while flag.0.load(Ordering::Acquire) {
                wait();
            }
        }
    }

    /// Opens the gate closed by [`Self::close`].
    pub fn open(&self) {
        self.closed.store(false, Ordering::Release);
    }
}

impl<const N: usize> Default for Gate<N> {
    fn default() -> Self {
        Self::new()
    }
}
