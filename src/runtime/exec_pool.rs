//! The exec pool on the hardware: physical 2 MiB frames, and packs mapped as one RX level-2 block
//! each in the pool's VA window. This is the backend the slot allocator runs on, and the record the
//! text poke reads to find the physical page behind an exec address.
//!
//! A fresh pack is filled with BRK before it becomes executable, through the fixmap's fill block (a
//! writable 2 MiB alias of a frame that is not yet mapped executable anywhere), then cleaned to the
//! point of unification, mapped RX, and stale instruction-cache lines for its addresses are dropped.
//! It stays one block until it is unmapped with break-before-make; it is never split.

use alloc::vec::Vec;
use core::fmt;

use buddy_system_allocator::FrameAllocator;
use spin::RwLock;

use crate::arch::aarch64::{cache, mmu as hw, mmu::BroadcastTlb};
use crate::layout::Region;
use crate::mmu::{
    AuditContext, BLOCK_SIZE_2M, El1And0, Granularity, MapError, PackFrame, Role, TableRoot,
    Violation, audit_root,
};
use crate::poke::cache::MaintenancePlan;
use crate::poke::insn;
use crate::runtime::memory;
use crate::runtime::mmu::{fixmap_fill_block, with_tables};

/// Packs the pool window can hold (the placed window is checked against this at boot).
pub const MAX_PACKS: usize = 64;

/// Errors of the pool backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// No free 2 MiB frame is left.
    OutOfFrames,
    /// The VA is not a pack address inside the pool window.
    NotAPack(u64),
    /// The pack is already mapped.
    AlreadyMapped(u64),
    /// The pack is not mapped.
    NotMapped(u64),
    /// The translation tables refused.
    Map(MapError),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("no free 2 MiB frame for a pack"),
            Self::NotAPack(va) => write!(f, "{va:#x} is not a pack address in the exec pool"),
            Self::AlreadyMapped(va) => write!(f, "pack {va:#x} is already mapped"),
            Self::NotMapped(va) => write!(f, "pack {va:#x} is not mapped"),
            Self::Map(e) => write!(f, "translation tables: {e}"),
        }
    }
}

/// Frames and the pack → frame records.
pub struct Pool {
    /// Free frames, in units of 2 MiB (frame number = PA >> 21).
    frames: FrameAllocator<8>,
    /// The frame behind each pack of the window, by pack index.
    packs: [Option<u64>; MAX_PACKS],
    /// The pool's VA window (a copy of the memory plan's, at hand on the poke path).
    window: Region,
}

static POOL: RwLock<Option<Pool>> = RwLock::new(None);

/// The maintenance plan for code written to exec memory (set at boot from this CPU's CTR_EL0 and
/// MIDR; the SMP issue merges every CPU's).
static PLAN: spin::Once<MaintenancePlan> = spin::Once::new();

/// The cache-maintenance plan in force.
pub fn maintenance_plan() -> &'static MaintenancePlan {
    PLAN.call_once(|| {
        MaintenancePlan::new(
            crate::arch::aarch64::cpu::cache_type(),
            crate::arch::aarch64::cpu::midr(),
        )
    })
}

/// Gives the placed exec frames to the pool. Called once at boot, after the MMU is on.
pub fn init() {
    let frames = memory::plan().exec_frames;
    let mut allocator = FrameAllocator::new();
    allocator.add_frame((frames.start >> 21) as usize, (frames.end() >> 21) as usize);
    *POOL.write() = Some(Pool {
        frames: allocator,
        packs: [None; MAX_PACKS],
        window: memory::plan().exec_pool,
    });
    maintenance_plan();
}

fn pack_index(va: u64) -> Result<usize, PoolError> {
    let pool = memory::plan().exec_pool;
    if !pool.contains(va) || !va.is_multiple_of(BLOCK_SIZE_2M) {
        return Err(PoolError::NotAPack(va));
    }
    Ok(((va - pool.start) / BLOCK_SIZE_2M) as usize)
}

/// Maps the pack at `va`: a fresh frame, filled with BRK, mapped RO + executable as one L2 block.
pub fn map_pack(va: u64) -> Result<(), PoolError> {
    let index = pack_index(va)?;
    let mut guard = POOL.write();
    let pool = guard.as_mut().expect("exec_pool::init runs at boot");
    if pool.packs[index].is_some() {
        return Err(PoolError::AlreadyMapped(va));
    }
    let frame = pool.frames.alloc(1).ok_or(PoolError::OutOfFrames)?;
    let pa = (frame as u64) << 21;
    if let Err(e) = fill_and_map(va, pa) {
        pool.frames.dealloc(frame, 1);
        return Err(e);
    }
    pool.packs[index] = Some(pa);
    Ok(())
}

/// Unmaps the pack at `va` (break-before-make: invalid entry, broadcast TLBI) and frees its frame.
pub fn unmap_pack(va: u64) -> Result<(), PoolError> {
    let index = pack_index(va)?;
    let mut guard = POOL.write();
    let pool = guard.as_mut().expect("exec_pool::init runs at boot");
    let pa = pool.packs[index].ok_or(PoolError::NotMapped(va))?;
    with_tables(|t| t.unmap(va, BLOCK_SIZE_2M, &mut BroadcastTlb::new()))
        .map_err(PoolError::Map)?;
    pool.packs[index] = None;
    pool.frames.dealloc((pa >> 21) as usize, 1);
    Ok(())
}

/// Fills the frame at `pa` with BRK through the fill block, then maps it RX at `va`.
fn fill_and_map(va: u64, pa: u64) -> Result<(), PoolError> {
    let fill = fixmap_fill_block();
    with_tables(|t| {
        t.map(
            fill,
            pa,
            BLOCK_SIZE_2M,
            Role::PokeAlias,
            Granularity::Block2M,
            &mut BroadcastTlb::new(),
        )?;
        let brk = u64::from(insn::brk(0)) | (u64::from(insn::brk(0)) << 32);
        let words = fill as *mut u64;
        for i in 0..(BLOCK_SIZE_2M / 8) as usize {
            // SAFETY: `fill` is mapped RW to this frame (2 MiB) just above; nothing else maps it.
            unsafe { words.add(i).write_volatile(brk) };
        }
        // Clean the BRKs to the point of unification before the frame can be fetched from.
        let plan = maintenance_plan();
        cache::clean_data_range(plan, fill, fill + BLOCK_SIZE_2M);
        t.unmap(fill, BLOCK_SIZE_2M, &mut BroadcastTlb::new())?;
        t.map(
            va,
            pa,
            BLOCK_SIZE_2M,
            Role::ExecPool,
            Granularity::Block2M,
            &mut BroadcastTlb::new(),
        )
    })
    .map_err(PoolError::Map)?;
    // The frame may have been executable at another VA before (a freed pack): drop any I-cache
    // lines that still hold its old code.
    cache::invalidate_icache_all();
    Ok(())
}

/// The pool's records, read-locked: while a `Records` lives no pack can be unmapped or its frame
/// reused, so a physical address looked up through it stays the one behind the exec address.
pub struct Records(spin::RwLockReadGuard<'static, Option<Pool>>);

impl Records {
    /// The physical address behind exec address `va`, if its pack is mapped.
    pub fn exec_pa(&self, va: u64) -> Option<u64> {
        let pool = self.0.as_ref()?;
        if !pool.window.contains(va) {
            return None;
        }
        let offset = va - pool.window.start;
        let base = pool.packs[(offset / BLOCK_SIZE_2M) as usize]?;
        Some(base + offset % BLOCK_SIZE_2M)
    }
}

/// Locks the records for reading (see [`Records`]).
pub fn records() -> Records {
    Records(POOL.read())
}

/// The physical address behind exec address `va`, from the pool's own records (a snapshot: use
/// [`records`] to keep it valid while writing).
pub fn exec_pa(va: u64) -> Option<u64> {
    records().exec_pa(va)
}

/// The VAs of the packs that are mapped.
pub fn live_packs() -> Vec<u64> {
    let guard = POOL.read();
    let Some(pool) = guard.as_ref() else {
        return Vec::new();
    };
    let base = memory::plan().exec_pool.start;
    (0..MAX_PACKS)
        .filter(|&i| pool.packs[i].is_some())
        .map(|i| base + i as u64 * BLOCK_SIZE_2M)
        .collect()
}

/// The mapped packs with their frames, as the pool records them.
pub fn pack_frames() -> Vec<PackFrame> {
    let guard = POOL.read();
    let Some(pool) = guard.as_ref() else {
        return Vec::new();
    };
    let base = pool.window.start;
    (0..MAX_PACKS)
        .filter_map(|i| {
            pool.packs[i].map(|pa| PackFrame {
                va: base + i as u64 * BLOCK_SIZE_2M,
                pa,
            })
        })
        .collect()
}

/// Audits the live translation tables (from TTBR0_EL1, what the hardware walks) against the W^X
/// and exec-pool rules. `active_poke` names the fixmap slot of a poke in progress, if the caller is
/// inside one.
pub fn audit_with(active_poke: Option<u64>) -> Vec<Violation> {
    let live = pack_frames();
    let fixmap = memory::plan().fixmap;
    let frames = memory::plan().exec_frames;
    let frames = frames.start..frames.end();
    let context = AuditContext {
        wxn: hw::wxn_enabled::<El1And0>(),
        exec_pool_va: memory::plan().exec_pool.start..memory::plan().exec_pool.end(),
        exec_frames_pa: core::slice::from_ref(&frames),
        fixmap_va: fixmap.start..fixmap.end(),
        active_poke,
        live_packs: &live,
    };
    // SAFETY: TTBR0_EL1 holds the root of the kernel tables, which are identity-mapped in the heap
    // and only change under `with_tables`; the audit only reads them.
    with_tables(|t| unsafe {
        audit_root::<El1And0>(
            TableRoot {
                pa: hw::ttbr0::<El1And0>(),
                range: t.va_range(),
            },
            t.memory(),
            &context,
        )
    })
}

/// Audits the live tables with no poke in progress.
pub fn audit() -> Vec<Violation> {
    audit_with(None)
}
