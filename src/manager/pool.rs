//! The exec pool: 2 MiB frames from the kernel, and packs mapped as one RX level-2 block each in
//! the pool window. This is the backend the slot allocator runs on, and the record the text poke
//! reads to find the physical page behind an exec address.
//!
//! A fresh pack is filled with BRK before it becomes executable, through the fixmap's fill block
//! (a writable 2 MiB alias of a frame that is not yet mapped executable anywhere), then cleaned to
//! the point of unification, mapped RX, and stale instruction-cache lines for its addresses are
//! dropped. It stays one block until it is unmapped with break-before-make; it is never split.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{Config, ExecManager, MAX_PACKS, PackFrames, Platform};
use crate::arch::aarch64::{cache, mmu as hw, mmu::BroadcastTlb, mmu::LocalTlb};
use crate::layout::Region;
use crate::mmu::{
    AuditContext, BLOCK_SIZE_2M, Granularity, MapError, PackFrame, Role, Rule, Violation,
    audit_root, root_entry, walk_root_entry,
};
use crate::poke::insn;

/// Errors of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// No free 2 MiB frame is left.
    OutOfFrames,
    /// The frame the kernel gave is not 2 MiB aligned; it was given back.
    BadFrame(u64),
    /// The VA is not a pack address inside the pool window.
    NotAPack(u64),
    /// The pack is already mapped.
    AlreadyMapped(u64),
    /// The pack is not mapped.
    NotMapped(u64),
    /// The pack belongs to the slot allocator (it was not mapped with `map_pack`): unmapping it
    /// would pull exec memory from under live slots.
    OwnedByAllocator(u64),
    /// The manager is not set up.
    Uninitialised,
    /// The translation tables refused.
    Map(MapError),
    /// This CPU has not entered its view of the tables ([`ExecManager::enter_cpu_view`]), where
    /// its fill block is.
    NoCpuView {
        /// The CPU.
        cpu: usize,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("no free 2 MiB frame for a pack"),
            Self::BadFrame(pa) => write!(f, "frame {pa:#x} is not 2 MiB aligned"),
            Self::NotAPack(va) => write!(f, "{va:#x} is not a pack address in the exec pool"),
            Self::AlreadyMapped(va) => write!(f, "pack {va:#x} is already mapped"),
            Self::NotMapped(va) => write!(f, "pack {va:#x} is not mapped"),
            Self::OwnedByAllocator(va) => {
                write!(
                    f,
                    "pack {va:#x} belongs to the slot allocator, not to map_pack"
                )
            }
            Self::Uninitialised => f.write_str("the exec manager is not set up"),
            Self::Map(e) => write!(f, "translation tables: {e}"),
            Self::NoCpuView { cpu } => {
                write!(f, "CPU {cpu} has not entered its view of the tables")
            }
        }
    }
}

/// What [`ExecManager::fixmap_views`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixmapViews {
    /// The writable aliases live at that moment, each in its own CPU's view.
    pub aliases: Vec<LiveAlias>,
    /// What breaks the views' privacy (empty when every CPU sees only its own fixmap).
    pub violations: Vec<Violation>,
}

/// A poke slot or fill block mapped in one CPU's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlias {
    /// The CPU whose view maps it.
    pub cpu: usize,
    /// Its VA (the poke slot, or the fill block).
    pub va: u64,
    /// The page or frame it is an alias of.
    pub pa: u64,
}

/// Frames and which packs are the public `map_pack`'s (the frame behind each pack is in the
/// manager's [`PackTable`], which pokes read without this lock).
pub(super) struct Pool<F> {
    frames: F,
    /// The packs mapped with the public `map_pack` (outside the allocator), one bit each.
    direct: u64,
    /// The pool's VA window.
    window: Region,
}

impl<F: PackFrames> Pool<F> {
    pub(super) fn new(frames: F, window: Region) -> Self {
        Self {
            frames,
            direct: 0,
            window,
        }
    }

    fn index(&self, va: u64) -> Result<usize, PoolError> {
        if !self.window.contains(va) || !va.is_multiple_of(BLOCK_SIZE_2M) {
            return Err(PoolError::NotAPack(va));
        }
        Ok(((va - self.window.start) / BLOCK_SIZE_2M) as usize)
    }
}

/// The frame behind each pack of the pool window, by pack index: `pa | MAPPED`, or 0 for a pack
/// that is not mapped. Pokes read it inside the poke gate ([`crate::sync::gate`]), without the
/// pool's lock: an entry is set (Release) once its pack is mapped, and cleared only by an unmap
/// that holds the pool's lock and has closed the gate, so no poke is inside while its pack goes.
pub(super) struct PackTable {
    packs: [AtomicU64; MAX_PACKS],
}

/// Bit 0 of a [`PackTable`] entry: mapped (a frame is 2 MiB aligned, so its PA leaves it free).
const MAPPED: u64 = 1;

impl PackTable {
    pub(super) const fn new() -> Self {
        Self {
            packs: [const { AtomicU64::new(0) }; MAX_PACKS],
        }
    }

    /// The frame behind pack `index`, if mapped.
    pub(super) fn frame(&self, index: usize) -> Option<u64> {
        let entry = self.packs[index % MAX_PACKS].load(Ordering::Acquire);
        (entry & MAPPED != 0).then_some(entry & !MAPPED)
    }

    /// The physical address behind `offset` bytes into the pool window, if its pack is mapped
    /// (`size`: the window's). The poke's lookup: one compare, one load.
    #[inline]
    pub(super) fn pa(&self, offset: u64, size: u64) -> Option<u64> {
        if offset >= size {
            return None;
        }
        // Below MAX_PACKS: the window holds at most that many packs (checked at init).
        let entry =
            self.packs[(offset / BLOCK_SIZE_2M) as usize % MAX_PACKS].load(Ordering::Acquire);
        (entry & MAPPED != 0).then_some((entry & !MAPPED) + offset % BLOCK_SIZE_2M)
    }

    /// Pack `index` is mapped to the frame at `pa` (the pool's lock held).
    fn set(&self, index: usize, pa: u64) {
        self.packs[index % MAX_PACKS].store(pa | MAPPED, Ordering::Release);
    }

    /// Pack `index` is no longer mapped (the pool's lock held, the poke gate closed).
    fn clear(&self, index: usize) {
        self.packs[index % MAX_PACKS].store(0, Ordering::Relaxed);
    }
}

/// The 2 MiB block of the fixmap window a fresh pack is filled through.
pub(crate) fn fill_block(config: &Config) -> u64 {
    config.fixmap.start + BLOCK_SIZE_2M
}

/// The poke gate closed (by a CPU that holds the pool's lock), opened again when dropped.
pub(super) struct Closed<'a>(&'a crate::sync::gate::Gate<{ super::MAX_CPUS }>);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl<P: Platform> ExecManager<P> {
    /// Maps the pack at `va`: a fresh frame, filled with BRK, mapped RO + executable as one L2
    /// block. The slot allocator maps its packs this way; called directly, it maps a whole pack
    /// outside the allocator (for tools and tests), which the allocator then finds taken.
    pub fn map_pack(&self, va: u64) -> Result<(), PoolError> {
        self.map_pack_for(va, true)
    }

    /// Unmaps the pack at `va` (break-before-make: invalid entry, broadcast TLBI) and gives its
    /// frame back. Only for packs mapped with [`ExecManager::map_pack`]: the allocator's own packs
    /// are refused ([`PoolError::OwnedByAllocator`]).
    pub fn unmap_pack(&self, va: u64) -> Result<(), PoolError> {
        self.unmap_pack_for(va, true)
    }

    /// Maps a pack, for the allocator (`direct` false) or for [`ExecManager::map_pack`].
    pub(super) fn map_pack_for(&self, va: u64, direct: bool) -> Result<(), PoolError> {
        let config = self.config.get().ok_or(PoolError::Uninitialised)?;
        let mut guard = self.pool.write();
        let pool = guard.as_mut().ok_or(PoolError::Uninitialised)?;
        let index = pool.index(va)?;
        if self.packs.frame(index).is_some() {
            return Err(PoolError::AlreadyMapped(va));
        }
        let pa = pool.frames.alloc_frame().ok_or(PoolError::OutOfFrames)?;
        if !pa.is_multiple_of(BLOCK_SIZE_2M) {
            pool.frames.free_frame(pa);
            return Err(PoolError::BadFrame(pa));
        }
        if let Err(e) = self.fill_and_map(config, va, pa) {
            pool.frames.free_frame(pa);
            return Err(e);
        }
        self.packs.set(index, pa);
        if direct {
            pool.direct |= 1 << index;
        }
        Ok(())
    }

    /// Unmaps a pack mapped for the allocator (`direct` false) or with `map_pack`; refuses a pack
    /// of the other kind.
    pub(super) fn unmap_pack_for(&self, va: u64, direct: bool) -> Result<(), PoolError> {
        let mut guard = self.pool.write();
        let pool = guard.as_mut().ok_or(PoolError::Uninitialised)?;
        let index = pool.index(va)?;
        let pa = self.packs.frame(index).ok_or(PoolError::NotMapped(va))?;
        if (pool.direct & (1 << index) != 0) != direct {
            return Err(PoolError::OwnedByAllocator(va));
        }
        // No poke is inside while the pack goes: each looked its page up in the table.
        let closed = self.close_poke_gate();
        self.with_tables(|t| t.unmap(va, BLOCK_SIZE_2M, &mut BroadcastTlb::new()))?
            .map_err(PoolError::Map)?;
        self.packs.clear(index);
        drop(closed);
        pool.direct &= !(1 << index);
        pool.frames.free_frame(pa);
        Ok(())
    }

    /// Closes the poke gate (the caller holds the pool's lock, which serialises closers): returns
    /// once no CPU is inside a poke, and keeps new pokes out until the guard is dropped.
    pub(super) fn close_poke_gate(&self) -> Closed<'_> {
        self.gate.close(P::relax);
        Closed(&self.gate)
    }

    /// The mapped packs and their frames.
    pub(super) fn pack_frames(&self) -> Vec<PackFrame> {
        let Some(config) = self.config.get() else {
            return Vec::new();
        };
        (0..MAX_PACKS)
            .filter_map(|i| {
                self.packs.frame(i).map(|pa| PackFrame {
                    va: config.pool.start + i as u64 * BLOCK_SIZE_2M,
                    pa,
                })
            })
            .collect()
    }

    fn with_tables<T>(
        &self,
        f: impl FnOnce(&mut crate::mmu::AddressSpace<P::Regime, P::Tables>) -> T,
    ) -> Result<T, PoolError> {
        let mut guard = self.tables.lock();
        let tables = guard.as_mut().ok_or(PoolError::Uninitialised)?;
        Ok(f(tables))
    }

    /// Fills the frame at `pa` with BRK through this CPU's fill block (in its own view, so no
    /// other CPU can write the frame meanwhile, and the unmap is a local invalidation), then maps
    /// it RX at `va` in the shared tables. Interrupts are masked throughout (the tables lock).
    fn fill_and_map(&self, config: &Config, va: u64, pa: u64) -> Result<(), PoolError> {
        let fill = fill_block(config);
        let plan = &config.maintenance;
        let mut guard = self.tables.lock();
        let t = guard.as_mut().ok_or(PoolError::Uninitialised)?;
        let cpu = P::cpu_index();
        if !self.cpu_entered_view(cpu) {
            return Err(PoolError::NoCpuView { cpu });
        }
        let view = *t
            .private_roots()
            .get(cpu)
            .ok_or(PoolError::NoCpuView { cpu })?;
        let mut local = LocalTlb::<P::Regime>::new();
        t.in_private_root(view, fill, BLOCK_SIZE_2M, |t| {
            t.map(
                fill,
                pa,
                BLOCK_SIZE_2M,
                Role::PokeAlias,
                Granularity::Block2M,
                &mut local,
            )
        })
        .map_err(PoolError::Map)?;
        {
            let brk = u64::from(insn::brk(0)) | (u64::from(insn::brk(0)) << 32);
            let words = fill as *mut u64;
            for i in 0..(BLOCK_SIZE_2M / 8) as usize {
                // SAFETY: `fill` is mapped RW to this frame (2 MiB) just above; nothing else maps
                // it (a fresh frame from the kernel).
                unsafe { words.add(i).write_volatile(brk) };
            }
            // Clean the BRKs to the point of unification before the frame can be fetched from.
            cache::clean_data_range(plan, fill, fill + BLOCK_SIZE_2M);
        }
        t.in_private_root(view, fill, BLOCK_SIZE_2M, |t| {
            t.unmap(fill, BLOCK_SIZE_2M, &mut local)
        })
        .map_err(PoolError::Map)?;
        t.map(
            va,
            pa,
            BLOCK_SIZE_2M,
            Role::ExecPool,
            Granularity::Block2M,
            &mut BroadcastTlb::<P::Regime>::new(),
        )
        .map_err(PoolError::Map)?;
        drop(guard);
        // The frame may have been executable at another VA before (a freed pack): drop any
        // I-cache lines that still hold its old code.
        cache::invalidate_icache_all();
        Ok(())
    }

    /// The physical address behind exec address `va`, from the pool's own records (a snapshot).
    pub fn exec_pa(&self, va: u64) -> Option<u64> {
        self.pack_pa(va)
    }

    /// The fixmap as every CPU's view holds it now, read without stopping any poke (for a check
    /// made while other CPUs poke): each live alias, by the CPU whose view maps it, and every
    /// violation of the views' privacy: the kernel's root reaching a view's tables, two views
    /// sharing theirs, a root entry that differs ([`Rule::ViewDiverges`]), or a valid entry under
    /// a view's own root entry other than its poke slot and fill block.
    pub fn fixmap_views(&self) -> FixmapViews {
        let mut out = FixmapViews::default();
        let Some(config) = self.config.get() else {
            return out;
        };
        let tables = self.tables.lock();
        let Some(tables) = tables.as_ref() else {
            return out;
        };
        let fixmap = config.fixmap.start;
        let level = tables.root().range.start_level();
        let shared = |raw, rule| Violation {
            va: fixmap,
            level,
            raw,
            permissions: None,
            rule,
        };
        // SAFETY: the kernel's live root (the `init` contract), never freed; one entry read.
        let kernel = unsafe { root_entry(tables.root(), tables.memory(), fixmap) };
        let mut seen = Vec::new();
        if kernel != 0 {
            seen.push(kernel);
            out.violations
                .push(shared(kernel, Rule::PrivateEntryShared));
        }
        let wxn = hw::wxn_enabled::<P::Regime>();
        for (cpu, &view) in tables.private_roots().iter().enumerate() {
            let root = tables.private_table_root(view);
            for index in tables.diverging_root_entries(view) {
                out.violations.push(Violation {
                    va: root.range.root_entry_va(index),
                    ..shared(0, Rule::ViewDiverges)
                });
            }
            // SAFETY: the kernel's live root or a view of it: never freed; entries read once each.
            let own = unsafe { root_entry(root, tables.memory(), fixmap) };
            if own != 0 && seen.contains(&own) {
                out.violations.push(shared(own, Rule::PrivateEntryShared));
            }
            seen.push(own);
            let fill = fill_block(config);
            let visit = |leaf: &crate::mmu::Leaf<P::Regime>| {
                let poke = leaf.va == fixmap && leaf.level == 3;
                let filling = leaf.va == fill && leaf.level == 2;
                let permissions = leaf.permissions(wxn);
                if (poke || filling) && !permissions.exec {
                    out.aliases.push(LiveAlias {
                        cpu,
                        va: leaf.va,
                        pa: leaf.pa,
                    });
                } else {
                    out.violations.push(Violation {
                        va: leaf.va,
                        level: leaf.level,
                        raw: leaf.raw,
                        permissions: Some(permissions),
                        rule: Rule::FixmapLiveWhenIdle,
                    });
                }
            };
            // SAFETY: the kernel's live root or a view of it: never freed; entries read once each.
            unsafe { walk_root_entry::<P::Regime>(root, tables.memory(), fixmap, visit) };
        }
        out
    }

    /// Audits the live tables against the W^X and exec-pool rules, in every CPU's view: the whole
    /// of the kernel's tables from the root given to `init`, and each CPU's view from its own
    /// root (with this regime's SCTLR_ELx.WXN). `active_poke` names the fixmap slot of a poke in
    /// progress on this CPU, if the caller is inside one: it is allowed in this CPU's view only.
    ///
    /// Beyond the rules of [`audit_root`]: every view's root entries equal the kernel's but the
    /// fixmap's ([`Rule::ViewDiverges`]), and the fixmap's entry is each view's own, reachable from
    /// no other root ([`Rule::PrivateEntryShared`]), so no CPU can see another CPU's alias.
    /// Violations in the shared tables are reported once (from the kernel's root), those under a
    /// view's own entry once per view.
    pub fn audit_with(&self, active_poke: Option<u64>) -> Vec<Violation> {
        let Some(config) = self.config.get() else {
            return Vec::new();
        };
        // The pool's lock keeps maps and unmaps out, and serialises closing the poke gate.
        let records = self.pool.write();
        let Some(pool) = records.as_ref() else {
            return Vec::new();
        };
        // The poke gate closed: every poke in flight on any CPU (inside it while its alias
        // exists) is done, and no new one starts before the walk ends: no CPU's poke alias is
        // valid while the tables are walked, so one is never mistaken for a leftover.
        let _closed = self.close_poke_gate();
        let live = self.pack_frames();
        let fixmap = config.fixmap.start..config.fixmap.end();
        let mut context = AuditContext {
            wxn: hw::wxn_enabled::<P::Regime>(),
            exec_pool_va: config.pool.start..config.pool.end(),
            exec_frames_pa: pool.frames.exclusive_ranges(),
            fixmap_va: fixmap.clone(),
            active_poke: None,
            live_packs: &live,
        };
        let tables = self.tables.lock();
        let Some(tables) = tables.as_ref() else {
            return Vec::new();
        };
        let me = P::cpu_index();
        let mut violations =
            // SAFETY: the kernel's live root or a view of it: never freed; entries read once each.
            unsafe { audit_root::<P::Regime>(tables.root(), tables.memory(), &context) };
        // SAFETY: the kernel's live root or a view of it: never freed; entries read once each.
        let own_entry = |root| unsafe { root_entry(root, tables.memory(), fixmap.start) };
        let level = tables.root().range.start_level();
        let mut seen = Vec::new();
        let kernel_entry = own_entry(tables.root());
        if kernel_entry != 0 {
            seen.push(kernel_entry);
            violations.push(Violation {
                va: fixmap.start,
                level,
                raw: kernel_entry,
                permissions: None,
                rule: Rule::PrivateEntryShared,
            });
        }
        for (cpu, &view) in tables.private_roots().iter().enumerate() {
            let root = tables.private_table_root(view);
            for index in tables.diverging_root_entries(view) {
                let va = root.range.root_entry_va(index);
                violations.push(Violation {
                    va,
                    level,
                    // SAFETY: a view of the kernel's root, never freed; one entry read.
                    raw: unsafe { root_entry(root, tables.memory(), va) },
                    permissions: None,
                    rule: Rule::ViewDiverges,
                });
            }
            let entry = own_entry(root);
            if entry != 0 && seen.contains(&entry) {
                violations.push(Violation {
                    va: fixmap.start,
                    level,
                    raw: entry,
                    permissions: None,
                    rule: Rule::PrivateEntryShared,
                });
            }
            seen.push(entry);
            context.active_poke = if cpu == me { active_poke } else { None };
            // SAFETY: the kernel's live root or a view of it: never freed; entries read once each.
            let mine = unsafe { audit_root::<P::Regime>(root, tables.memory(), &context) };
            // Each view's own entry only: the rest is the kernel root's, audited once above.
            violations.extend(mine.into_iter().filter(|v| fixmap.contains(&v.va)));
        }
        violations
    }
}
