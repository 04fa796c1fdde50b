//! Benchmark baselines for the exec slot allocator, and the workloads that compare them.
//!
//! Four allocators behind one small interface, [`SlotAllocator`], driven by the same workloads
//! ([`workload`]) over the same [`PackBackend`]:
//!
//! - the core allocator, [`crate::pack::PackAllocator`];
//! - [`bpf_prog_pack::BpfProgPack`], a re-implementation of Linux's `bpf_prog_pack` (first fit over
//!   a list of packs with `bitmap_find_next_zero_area`), the design the core replaces;
//! - [`buddy::BuddySlots`], the `buddy_system_allocator` crate used directly as the slot allocator;
//! - `tlsf::TlsfSlots`, the `rlsf` crate (TLSF, headers in band) over a writable shadow arena (built
//!   with the runtime, which hosts the benchmark, and for the host tests).
//!
//! Everything here is portable: the host tests check behaviour and space (live/reserved bytes);
//! the kernel runs the same workloads under QEMU to count instructions, with [`NullBackend`] (or
//! its own backend with a no-op fill) so that only the allocator's work is counted, and with
//! [`NullSlots`] to measure what the workload loop itself costs.

pub mod bpf_prog_pack;
pub mod buddy;
#[cfg(any(test, all(target_os = "none", feature = "runtime")))]
pub mod tlsf;
pub mod workload;

use crate::pack::magazine::{CpuMagazines, MagazineLock, Magazines, SlotFill};
use crate::pack::{AllocError, BackendError, PACK_SIZE, PackAllocator, PackBackend};

/// Space figures common to the allocators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchStats {
    /// Packs mapped.
    pub packs_mapped: usize,
    /// Bytes of the mapped packs.
    pub bytes_reserved: u64,
    /// Sum of the requested sizes of live slots.
    pub bytes_live: u64,
}

impl BenchStats {
    /// Live bytes per thousand reserved bytes (1000 when nothing is reserved).
    pub fn density_permille(&self) -> u64 {
        (self.bytes_live * 1000)
            .checked_div(self.bytes_reserved)
            .unwrap_or(1000)
    }
}

/// What a benchmark needs from a slot allocator: raw allocation and free, and space figures.
pub trait SlotAllocator {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Allocates `size` bytes of exec memory and returns the address.
    fn alloc(&mut self, size: usize) -> Result<u64, AllocError>;
    /// Frees the slot at `addr`, allocated with `size` bytes.
    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError>;
    /// Space figures now.
    fn stats(&self) -> BenchStats;
    /// Packs mapped now: what [`SlotAllocator::stats`] says, for a workload that samples it after
    /// every step (overridden where `stats` does more work than this needs).
    fn packs_mapped(&self) -> usize {
        self.stats().packs_mapped
    }
    /// Packs the allocator can use: its pool window, or for a baseline over a shadow arena the
    /// arena's packs (a workload that needs more has no figure for it).
    fn pool_packs(&self) -> usize;
}

impl<B: PackBackend> SlotAllocator for PackAllocator<B> {
    fn name(&self) -> &'static str {
        "execmem pack"
    }

    #[inline]
    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        self.alloc_raw(size)
    }

    #[inline]
    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        self.free_raw(addr, size)
    }

    #[inline]
    fn packs_mapped(&self) -> usize {
        PackAllocator::packs_mapped(self)
    }

    fn pool_packs(&self) -> usize {
        self.pool_size() / PACK_SIZE
    }

    fn stats(&self) -> BenchStats {
        let stats = PackAllocator::stats(self);
        BenchStats {
            packs_mapped: stats.packs_mapped,
            bytes_reserved: stats.bytes_reserved,
            bytes_live: stats.bytes_live,
        }
    }
}

/// The magazine layer ([`crate::pack::magazine`]) as a slot allocator, every call from CPU 0: what
/// the manager runs (its per-CPU magazines in front of the shared allocator), with the caller's
/// locks and BRK fill. Slots resting in magazines count as reserved, not live.
impl<B, S, L, F> SlotAllocator for Magazines<B, S, L, F>
where
    B: PackBackend,
    S: MagazineLock<PackAllocator<B>>,
    L: MagazineLock<CpuMagazines>,
    F: SlotFill,
{
    fn name(&self) -> &'static str {
        "execmem magazines"
    }

    #[inline]
    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        self.alloc_raw(0, size)
    }

    #[inline]
    fn free(&mut self, addr: u64, size: usize) -> Result<(), AllocError> {
        self.free_raw(0, addr, size)
    }

    fn packs_mapped(&self) -> usize {
        self.shared().packs_mapped()
    }

    fn pool_packs(&self) -> usize {
        self.shared().pool_size() / PACK_SIZE
    }

    fn stats(&self) -> BenchStats {
        let stats = Magazines::stats(self).pool;
        BenchStats {
            packs_mapped: stats.packs_mapped,
            bytes_reserved: stats.bytes_reserved,
            bytes_live: stats.bytes_live,
        }
    }
}

/// A BRK fill that does nothing and never fails, for the magazine layer over [`NullBackend`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NullFill;

impl SlotFill for NullFill {
    fn fill_brk(&self, _va: u64, _len: usize) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A backend that does nothing and never fails: instruction counts then cover only the allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullBackend;

impl PackBackend for NullBackend {
    fn map_packs(&mut self, _va: u64, _count: usize) -> Result<(), BackendError> {
        Ok(())
    }

    fn unmap_packs(&mut self, _va: u64, _count: usize) {}

    fn fill_brk(&mut self, _va: u64, _len: usize) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A slot "allocator" that only counts: hands out increasing addresses and accepts every free.
/// Running a workload over it measures the workload loop, to subtract from the others.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSlots {
    next: u64,
    bytes_live: u64,
}

impl SlotAllocator for NullSlots {
    fn name(&self) -> &'static str {
        "null (loop overhead)"
    }

    #[inline(never)]
    fn alloc(&mut self, size: usize) -> Result<u64, AllocError> {
        let addr = self.next;
        self.next = self.next.wrapping_add(size.next_multiple_of(64) as u64);
        self.bytes_live += size as u64;
        Ok(addr)
    }

    #[inline(never)]
    fn free(&mut self, _addr: u64, size: usize) -> Result<(), AllocError> {
        self.bytes_live -= size as u64;
        Ok(())
    }

    fn pool_packs(&self) -> usize {
        crate::pack::MAX_PACKS
    }

    fn stats(&self) -> BenchStats {
        let reserved = self.bytes_live.next_multiple_of(PACK_SIZE as u64);
        BenchStats {
            packs_mapped: (reserved / PACK_SIZE as u64) as usize,
            bytes_reserved: reserved,
            bytes_live: self.bytes_live,
        }
    }
}

#[cfg(test)]
mod tests;
