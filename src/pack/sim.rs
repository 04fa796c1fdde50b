//! A simulated [`PackBackend`]: no memory, only a record of what a real backend would have done,
//! so the allocator can be tested on the host and misuse of the backend shows up as a count.

use alloc::collections::BTreeSet;

use super::{BackendError, PACK_SIZE, PackBackend};

/// What the simulated backend was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounts {
    /// Successful `map_packs` calls.
    pub map_calls: u64,
    /// Packs mapped by them.
    pub packs_mapped: u64,
    /// `map_packs` calls refused (frames exhausted or address already mapped).
    pub map_failures: u64,
    /// `unmap_packs` calls.
    pub unmap_calls: u64,
    /// `fill_brk` calls and the bytes they covered.
    pub fills: u64,
    /// Bytes refilled with BRK.
    pub fill_bytes: u64,
    /// Calls that a real backend could not have honoured: mapping a mapped pack, unmapping or
    /// filling memory that is not mapped, or a misaligned pack address. Always 0 for a correct
    /// allocator.
    pub violations: u64,
}

/// A backend that records mapped packs (by address) and can run out of physical frames.
#[derive(Debug, Default)]
pub struct SimBackend {
    mapped: BTreeSet<u64>,
    frame_limit: Option<usize>,
    refill_fails: bool,
    counts: SimCounts,
}

impl SimBackend {
    /// A backend with unlimited 2 MiB frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that holds at most `frames` packs mapped at once: mapping beyond that fails with
    /// [`BackendError::OutOfFrames`], as a kernel out of 2 MiB physical blocks would.
    pub fn with_frame_limit(frames: usize) -> Self {
        Self {
            frame_limit: Some(frames),
            ..Self::default()
        }
    }

    /// Changes the frame limit (`None`: unlimited); packs already mapped stay mapped.
    pub fn set_frame_limit(&mut self, frames: Option<usize>) {
        self.frame_limit = frames;
    }

    /// Makes every BRK refill fail (as a text poke from a CPU without a poke slot would).
    pub fn set_refill_failure(&mut self, fail: bool) {
        self.refill_fails = fail;
    }

    /// What the backend was asked to do so far.
    pub fn counts(&self) -> SimCounts {
        self.counts
    }

    /// Number of packs mapped now.
    pub fn mapped_packs(&self) -> usize {
        self.mapped.len()
    }

    /// Whether the pack at `va` is mapped.
    pub fn is_mapped(&self, va: u64) -> bool {
        self.mapped.contains(&va)
    }

    /// Whether every byte of `[va, va + len)` lies in mapped packs.
    pub fn covers(&self, va: u64, len: usize) -> bool {
        let Some(end) = va.checked_add(len as u64) else {
            return false;
        };
        let first = va - va % PACK_SIZE as u64;
        (first..end)
            .step_by(PACK_SIZE)
            .all(|pack| self.mapped.contains(&pack))
    }

    /// Addresses of the mapped packs, ascending.
    pub fn mapped(&self) -> impl Iterator<Item = u64> + '_ {
        self.mapped.iter().copied()
    }

    fn packs(va: u64, count: usize) -> impl Iterator<Item = u64> {
        (0..count as u64).map(move |i| va + i * PACK_SIZE as u64)
    }
}

impl PackBackend for SimBackend {
    fn map_packs(&mut self, va: u64, count: usize) -> Result<(), BackendError> {
        if !va.is_multiple_of(PACK_SIZE as u64)
            || Self::packs(va, count).any(|p| self.mapped.contains(&p))
        {
            self.counts.violations += 1;
            self.counts.map_failures += 1;
            return Err(BackendError::AlreadyMapped);
        }
        if self
            .frame_limit
            .is_some_and(|limit| self.mapped.len() + count > limit)
        {
            self.counts.map_failures += 1;
            return Err(BackendError::OutOfFrames);
        }
        self.mapped.extend(Self::packs(va, count));
        self.counts.map_calls += 1;
        self.counts.packs_mapped += count as u64;
        Ok(())
    }

    fn unmap_packs(&mut self, va: u64, count: usize) {
        self.counts.unmap_calls += 1;
        for pack in Self::packs(va, count) {
            if !self.mapped.remove(&pack) {
                self.counts.violations += 1;
            }
        }
    }

    fn fill_brk(&mut self, va: u64, len: usize) -> Result<(), BackendError> {
        if self.refill_fails {
            return Err(BackendError::Refill);
        }
        self.counts.fills += 1;
        self.counts.fill_bytes += len as u64;
        if !self.covers(va, len) {
            self.counts.violations += 1;
        }
        Ok(())
    }
}
