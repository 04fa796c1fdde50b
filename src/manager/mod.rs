//! The exec-memory manager on the hardware, for any kernel: exec pool, slot allocator, text poke
//! and audit, as one type, [`ExecManager`], that a kernel instantiates over what it owns.
//!
//! The kernel brings its boot code, its page tables, its frame allocator and its panic handler;
//! it tells the manager about them through [`Platform`]:
//! - the translation regime its tables are in ([`Platform::Regime`]: EL1&0, EL2, or EL2&0 with
//!   VHE), which fixes the descriptor bits, the TLBI and `AT` forms and the system registers;
//! - memory for the few translation tables the manager adds below the kernel's root, and how the
//!   kernel reaches a table by its physical address ([`Platform::Tables`], a [`TableMemory`]);
//! - 2 MiB frames for packs ([`Platform::Frames`], a [`PackFrames`]);
//! - this CPU's index, interrupt masking, and a way to stop the other CPUs for a patch that is not
//!   CMODX-safe.
//!
//! ```ignore
//! static EXEC: ExecManager<Hypervisor> = ExecManager::new();
//!
//! // At boot, once the kernel's tables are live (TTBR0_EL2) and the pool and fixmap windows are
//! // left unmapped for the manager:
//! unsafe { EXEC.init(config, TableRoot { pa: ttbr0, range: VaRange::LOWER_48 }, tables, frames) }?;
//! let slot = EXEC.alloc(code.len())?;          // 64-byte aligned, RX, filled with BRK
//! EXEC.write(&slot, 0, &code)?;                // through this CPU's text-poke alias
//! let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(slot.as_ptr()) };
//! f();
//! EXEC.free(slot)?;                            // refilled with BRK, kept in this CPU's magazine
//! assert!(EXEC.audit().is_empty());            // W^X over the whole of the kernel's tables
//! ```
//!
//! Exec memory is mapped read-only + executable, one 2 MiB block per pack, and never writable.
//! Code goes in through a 4 KiB writable alias that exists only in the poking CPU's own view of
//! the tables, mapped with interrupts masked and removed with a local TLB invalidation, followed
//! by the cache maintenance of Arm ARM B2.4.4.
//!
//! # One view of the tables per CPU
//!
//! At init the manager gives every CPU a root table of its own
//! ([`AddressSpace::add_private_root`]): a copy of the kernel's root, sharing every table below
//! it, except the root entry that covers the fixmap window, which leads to that CPU's private
//! tables (its poke slot and its pack-fill block). Each CPU switches to its view once, with
//! [`ExecManager::enter_cpu_view`]. Then:
//! - no other CPU can store through a CPU's alias: no other CPU's walk reaches its tables, and
//!   TTBR_ELx.CnP = 0 keeps TLB entries private to the CPU that walked them (Arm ARM D8.16);
//! - removing the alias needs `TLBI VAALE1` / `VALE2` and `DSB NSH` on this CPU alone, never a
//!   broadcast invalidation that every CPU must complete;
//! - a change below the root reaches every view by construction (the tables are the same
//!   memory), with the usual break-before-make; a change of a root entry must be made in every
//!   root, which [`ExecManager::set_root_entry`] does (the kernel makes no other root-entry
//!   change once the views exist).
//!
//! Linux x86 gets the same with a private `poking_mm`; arm64 Linux uses one global fixmap slot
//! under a lock. An ASID-private mapping would not do here: at EL2 without VHE there are no ASIDs,
//! and a non-global entry in shared tables is still walked (and cached) by every CPU.
//!
//! After [`ExecManager::init`] the manager writes only leaf entries inside its two windows and in
//! the views' own tables: every table it needs is created at init, so it never races with the
//! kernel's own changes to other parts of the tables.

pub(crate) mod lock;
mod poke;
mod pool;

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{DAIF, Readable, Writeable};
use spin::Once;

use lock::{IrqMutex, IrqRwLock};

use crate::sync::gate::Gate;
use crate::sync::released::{Queue, ReleaseQueue};

use crate::arch::aarch64::mmu::BroadcastTlb;
use crate::layout::Region;
use crate::mmu::control::RegimeControl;
use crate::mmu::{
    AddressSpace, BLOCK_SIZE_2M, MapError, PAGE_SIZE, PackFrame, Role, TableMemory, TableRoot,
    Violation,
};
use crate::pack::magazine::{CpuMagazines, MagazineError, MagazineStats, Magazines, SlotFill};
use crate::pack::{
    AllocError, BackendError, PACK_SIZE, PackAllocator, PackBackend, Slot, SlotInfo, Stats,
};
use crate::poke::cache::MaintenancePlan;
use crate::poke::{ExecRegion, PokeError};

use pool::Pool;
pub use pool::{FixmapViews, LiveAlias, PoolError};

/// Most CPUs one manager serves: one view of the tables each.
pub const MAX_CPUS: usize = 64;

/// Most packs of one pool (the allocator's limit).
pub const MAX_PACKS: usize = crate::pack::MAX_PACKS;

/// 2 MiB physical frames for packs, from the kernel's frame allocator.
pub trait PackFrames {
    /// A 2 MiB-aligned 2 MiB frame of normal memory that nothing maps and nothing else will use
    /// until it is given back, or `None` when there is none.
    fn alloc_frame(&mut self) -> Option<u64>;

    /// Gives back a frame from [`PackFrames::alloc_frame`], no longer mapped anywhere.
    fn free_frame(&mut self, pa: u64);

    /// Physical ranges reserved for packs only, if the kernel has such a region: the audit then
    /// also reports any writable mapping of them, mapped as a pack or not. Empty by default
    /// (frames from a general allocator: the audit checks the frames of the live packs).
    fn exclusive_ranges(&self) -> &[Range<u64>] {
        &[]
    }
}

/// What the manager needs from the kernel that runs it.
pub trait Platform: Sized + 'static {
    /// The translation regime of the kernel's tables, and of the code that runs the manager.
    type Regime: RegimeControl;
    /// Table frames for the tables the manager adds at init, and the kernel's map of them.
    type Tables: TableMemory + Send;
    /// 2 MiB frames for packs.
    type Frames: PackFrames + Send;

    /// This CPU's index, below [`Config::cpus`]. The poke path reads it once per write, with
    /// interrupts masked from before that read until the last alias of the write is gone, so the
    /// write runs on the CPU it read (a kernel migrates work only when it can preempt it) and
    /// uses that CPU's own slot; a CPU with no slot is refused before anything is written.
    /// Allocation and free read it once, unmasked, to pick the CPU's magazines: a call that moves
    /// to another CPU meanwhile uses the first CPU's, under their lock (correct, only not local).
    fn cpu_index() -> usize;

    /// Runs `change` while every other CPU that may execute exec memory waits, and makes each of
    /// them execute a context synchronisation event (an ISB) after it and before it runs
    /// anything else (Linux `stop_machine` for `aarch64_insn_patch_text`). A kernel with one CPU
    /// online just calls `change`. If a CPU cannot be stopped (it does not answer in time),
    /// `change` is not run and the error names that CPU: the patch is refused, nothing written.
    fn stop_others_and_run(change: &mut dyn FnMut()) -> Result<(), NotStopped>;

    /// Publishes new code to every other CPU that may execute exec memory (Linux
    /// `kick_all_cpus_sync`): makes each of them execute a context synchronisation event (an
    /// ISB, or taking an interrupt) after this call began, and returns once each has. The
    /// manager calls it after a write's cache maintenance is complete and with none of its locks
    /// held; from its return any CPU may branch to the code (Arm ARM B2.4.4). A kernel with one
    /// CPU online returns `Ok(())`. It may be called with interrupts masked, so while it waits it
    /// must answer the other CPUs' requests itself. A CPU that does not answer in time is named
    /// in the error: the code is written, and that CPU may run what was there before until it
    /// next synchronises.
    fn synchronise_others() -> Result<(), NotSynchronised>;

    /// Returns once every other CPU that may execute exec memory has been seen, since this call
    /// began, at a point outside every range in `ranges` (code no CPU can newly enter: an
    /// unlinked trampoline), so that none is or will be executing there and the memory may be
    /// reused (Linux `synchronize_rcu_tasks` before freeing an ftrace trampoline). Code in such a
    /// range runs with interrupts masked but for its first two and last instructions
    /// ([`crate::trace`]), so "seen" means: interrupted at a PC outside the ranges. A kernel with
    /// one CPU online returns `Ok(())`. The default cannot tell, and says so: the caller keeps
    /// the memory.
    fn wait_outside(ranges: &[Range<u64>]) -> Result<(), NotSynchronised> {
        let _ = ranges;
        Err(NotSynchronised { cpu: usize::MAX })
    }

    /// Whether live code changes ([`ExecManager::patch_insn`], [`ExecManager::patch_batch`])
    /// store each instruction a second time, after the first store and its maintenance. No
    /// hardware needs it. QEMU's TCG does (10.0, one host thread per CPU): it drops the
    /// translations of a page before a store to it lands, so a CPU that translates the page in
    /// between keeps the old instruction in a new translation, on every CPU, until the page is
    /// written again. The second store of the same bytes drops that translation, and every
    /// translation made after it reads the new instruction. The default is `false`.
    fn store_code_twice() -> bool {
        false
    }

    /// What a CPU does in each turn of waiting for one of the manager's locks, which it takes
    /// with interrupts masked. A kernel whose other CPUs may wait for this one (a stop-the-world
    /// round, [`Platform::synchronise_others`]) serves their requests here, or a CPU waiting for
    /// a lock held by a stopped CPU never arrives. The default is a spin-loop hint.
    fn relax() {
        core::hint::spin_loop();
    }

    /// Masks every interrupt on this CPU and returns what to restore: while a CPU's writable
    /// alias exists nothing else may run on it. The default saves DAIF and masks D, A, I and F.
    fn mask_interrupts() -> u64 {
        let saved = DAIF.get();
        DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
        saved
    }

    /// Restores what [`Platform::mask_interrupts`] returned.
    fn restore_interrupts(saved: u64) {
        DAIF.set(saved);
    }
}

/// A CPU that did not answer [`Platform::synchronise_others`] in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotSynchronised {
    /// Its index.
    pub cpu: usize,
}

/// A CPU that [`Platform::stop_others_and_run`] could not stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotStopped {
    /// Its index.
    pub cpu: usize,
}

/// Where the manager's two VA windows are, and what the CPUs need.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The exec pool: 2 MiB aligned, up to [`MAX_PACKS`] packs, unmapped (the kernel maps
    /// nothing there). Within ±128 MiB of the kernel's text, code in slots reaches it with one
    /// `BL`.
    pub pool: Region,
    /// The fixmap window: 2 MiB aligned and at least 4 MiB, inside the span of one root entry
    /// (1 GiB for a root at level 1, 512 GiB at level 0) that the kernel leaves invalid: that
    /// entry is private to each CPU's view. Its first page is the CPU's poke slot (the same VA on
    /// every CPU, each mapping its own page), its second 2 MiB the block a fresh pack is filled
    /// through.
    pub fixmap: Region,
    /// CPUs that may poke (1 to [`MAX_CPUS`]).
    pub cpus: usize,
    /// The cache and TLB maintenance for code written to exec memory: from every CPU's CTR_EL0
    /// and MIDR ([`MaintenancePlan::for_cpus`]: the smallest lines, the errata of any core,
    /// including the repeated TLBI, which `init` turns on for every broadcast invalidation).
    pub maintenance: MaintenancePlan,
}

/// Why [`ExecManager::init`] refused. The manager is not set up and owns nothing; the kernel's
/// tables are as they were, except that a window whose preparation succeeded before a later one
/// failed may have gained tables below it, all of whose entries are invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// `init` already ran.
    AlreadyInitialised,
    /// A window is not 2 MiB aligned in start and size, or is empty.
    NotBlockAligned(Region),
    /// The pool has more than [`MAX_PACKS`] packs.
    PoolTooLarge(Region),
    /// The fixmap window is smaller than two 2 MiB blocks.
    FixmapTooSmall(Region),
    /// The CPU count is 0 or above [`MAX_CPUS`].
    BadCpuCount(usize),
    /// The two windows overlap.
    Overlap(Region, Region),
    /// A window is outside the VA range of the root.
    OutsideVaRange(Region),
    /// The fixmap window crosses the span of one root entry (it must lie under one entry, the
    /// CPUs' private one).
    FixmapCrossesRootEntry(Region),
    /// The pool lies under the fixmap's root entry, which is private to each CPU's view: the
    /// pool's tables must be shared.
    SameRootEntry(Region, Region),
    /// The tables refused (a window is mapped already, or no memory for a table).
    Map(Region, MapError),
    /// The heap could not hold the CPUs' magazines.
    Magazines(MagazineError),
    /// MAIR_ELx does not give the attribute index of the manager's descriptors the memory type
    /// they mean (index 1: Normal write-back, 0xff; see [`crate::mmu::MAIR_EL1_VALUE`]).
    MairMismatch {
        /// MAIR_ELx as found.
        found: u64,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInitialised => f.write_str("the exec manager is already set up"),
            Self::NotBlockAligned(r) => write!(f, "{} is not 2 MiB aligned: {r}", r.name),
            Self::PoolTooLarge(r) => write!(f, "exec pool has more than {MAX_PACKS} packs: {r}"),
            Self::FixmapTooSmall(r) => write!(f, "fixmap window under 4 MiB: {r}"),
            Self::BadCpuCount(n) => write!(f, "{n} CPUs: must be 1 to {MAX_CPUS}"),
            Self::Overlap(a, b) => write!(f, "{} overlaps {}: {a} / {b}", a.name, b.name),
            Self::OutsideVaRange(r) => write!(f, "{} is outside the tables' VA range: {r}", r.name),
            Self::FixmapCrossesRootEntry(r) => {
                write!(f, "{} is not under one root table entry: {r}", r.name)
            }
            Self::SameRootEntry(a, b) => {
                write!(
                    f,
                    "{} is under the root table entry of {}: {a} / {b}",
                    a.name, b.name
                )
            }
            Self::Map(r, e) => write!(f, "cannot prepare {}: {e}", r.name),
            Self::Magazines(e) => write!(f, "cannot set up the per-CPU magazines: {e}"),
            Self::MairMismatch { found } => write!(
                f,
                "MAIR_ELx {found:#x}: attribute index 1 must be Normal write-back (0xff), as the \
                 exec pack and poke descriptors use it"
            ),
        }
    }
}

impl core::error::Error for InitError {}

/// An executable slot: owns `size` bytes of exec memory at `addr` until it is given to
/// [`ExecManager::free`]. Dropping it without `free` leaks the slot (like a raw pointer);
/// [`ExecSlot::into_raw`] and [`ExecSlot::from_raw`] convert for C-style callers.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an exec slot is freed with ExecManager::free"]
pub struct ExecSlot {
    slot: Slot,
}

impl ExecSlot {
    /// First byte (64-byte aligned, or as requested).
    pub fn addr(&self) -> u64 {
        self.slot.addr()
    }

    /// The size asked for.
    pub fn size(&self) -> usize {
        self.slot.size()
    }

    /// The slot as a code pointer (cast it to a function pointer to call the code).
    pub fn as_ptr(&self) -> *const u8 {
        self.slot.addr() as *const u8
    }

    /// The slot as a poke region: writes through it may not leave the slot.
    pub fn region(&self) -> ExecRegion {
        ExecRegion::slot(self.slot.addr(), self.slot.end())
    }

    /// Gives up the handle: pointer and size for [`ExecManager::free_raw`] or
    /// [`ExecSlot::from_raw`].
    pub fn into_raw(self) -> (*const u8, usize) {
        (self.as_ptr(), self.size())
    }

    /// Rebuilds a handle from [`ExecSlot::into_raw`]. Nothing is checked here;
    /// [`ExecManager::free`] checks the pointer and size against the allocator's record, so a
    /// wrong pair is refused there.
    pub fn from_raw(ptr: *const u8, size: usize) -> Self {
        Self {
            slot: Slot::from_raw(ptr as u64, size),
        }
    }
}

impl fmt::Display for ExecSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec slot {:#x}+{}", self.addr(), self.size())
    }
}

/// The manager. Lives in a `static` (or anything `'static`): [`ExecManager::new`] is `const`,
/// [`ExecManager::init`] sets it up once at boot, and every other call is `&self` and safe from
/// any CPU. Before `init`, allocations fail with [`AllocError::Uninitialised`] and pokes with
/// [`PokeError::NotExecMemory`].
pub struct ExecManager<P: Platform> {
    config: Once<Config>,
    /// What every poke reads, as plain atomics (set at init, before `config`): the pool window,
    /// the fixmap's first slot, the CPU count. Zero before init: no address is in the pool.
    hot: Hot,
    /// The kernel's tables, adopted: the manager maps packs and the fill block through them.
    tables: IrqMutex<P, Option<KernelSpace<P>>>,
    /// Frames and which packs are the public `map_pack`'s; its write lock serialises maps,
    /// unmaps and audits (and closing the poke gate).
    pool: IrqRwLock<P, Option<Pool<P::Frames>>>,
    /// The frame behind each pack, read by pokes without a lock.
    packs: pool::PackTable,
    /// Every poke is inside it on its CPU while it uses a frame it found in `packs`; an unmap or
    /// an audit closes it ([`crate::sync::gate`]).
    gate: Gate<MAX_CPUS>,
    /// What each CPU's pokes use, by CPU index.
    per_cpu: [PerCpu; MAX_CPUS],
    /// Packs the allocator released, unmapped once its lock is dropped.
    released: ReleaseQueue<IrqMutex<P, Queue<MAX_PACKS>>>,
    /// Set after a pack is queued in `released`, cleared by whoever then drains it: a call that
    /// finds it clear (every fast-path one) skips the queue's lock.
    released_pending: AtomicBool,
    /// Serialises batch patches of live code (Linux `text_mutex`; a [`ExecManager::patch_insn`]
    /// is one atomic exchange and needs none). Taken only inside the poke gate, whose guard
    /// masks interrupts.
    patch_lock: IrqMutex<P, ()>,
    /// The slot allocator behind the per-CPU magazines.
    allocator: Once<Slots<P>>,
}

/// The slot allocator as the manager runs it: each CPU's magazines of small slots, under a lock
/// of its own, in front of the shared [`PackAllocator`] (see [`crate::pack::magazine`]). Both
/// locks mask interrupts: an interrupt handler may allocate and free.
type Slots<P> = Magazines<
    Backend<P>,
    IrqMutex<P, PackAllocator<Backend<P>>>,
    IrqMutex<P, CpuMagazines>,
    BrkFill<P>,
>;

impl<P: Platform> Default for ExecManager<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Platform> ExecManager<P> {
    /// A manager that is not set up yet.
    pub const fn new() -> Self {
        Self {
            config: Once::new(),
            hot: Hot {
                pool_start: AtomicU64::new(0),
                pool_end: AtomicU64::new(0),
                fixmap: AtomicU64::new(0),
                cpus: AtomicUsize::new(0),
                text_start: AtomicU64::new(0),
                text_end: AtomicU64::new(0),
                text_pa: AtomicU64::new(0),
                alias_attributes: AtomicU64::new(0),
                min_line: AtomicU64::new(0),
            },
            tables: IrqMutex::new(None),
            pool: IrqRwLock::new(None),
            packs: pool::PackTable::new(),
            gate: Gate::new(),
            per_cpu: [const { PerCpu::new() }; MAX_CPUS],
            released: ReleaseQueue::new(IrqMutex::new(Queue::new())),
            released_pending: AtomicBool::new(false),
            patch_lock: IrqMutex::new(()),
            allocator: Once::new(),
        }
    }

    /// Sets the manager up over the kernel's live tables at `root`: checks the windows, creates
    /// (invalid) the table entries it will use — the pool's level-2 entries, the fill block's,
    /// one level-3 entry per CPU's poke slot — with tables from `tables`, and takes `frames`.
    ///
    /// # Safety
    ///
    /// - `root` is the root of the tables of regime `P::Regime` that every CPU running the
    ///   manager uses (TTBR0_ELx or TTBR1_ELx), reachable through `tables`, and they and every
    ///   table below them stay allocated for as long as the manager is used.
    /// - The kernel maps nothing in `config.pool` and `config.fixmap`, ever, and does not change
    ///   the table entries above them, so the manager's writes there race with no one.
    /// - Interrupts may be on, but this runs on one CPU at a time (it is a boot-time call).
    pub unsafe fn init(
        &'static self,
        config: Config,
        root: TableRoot,
        tables: P::Tables,
        frames: P::Frames,
    ) -> Result<(), InitError> {
        if self.config.is_completed() {
            return Err(InitError::AlreadyInitialised);
        }
        check_config(&config, root)?;
        let mair = crate::arch::aarch64::mmu::mair::<P::Regime>();
        let normal = crate::mmu::MemoryType::NormalWriteBack;
        if (mair >> (8 * normal.attr_index())) & 0xff != u64::from(normal.mair_attribute()) {
            return Err(InitError::MairMismatch { found: mair });
        }
        // SAFETY: the caller's contract: a live root of this regime, reachable through `tables`,
        // whose windows nobody else writes.
        let mut space = unsafe { AddressSpace::adopt(root.pa, root.range, tables) }
            .map_err(|e| InitError::Map(config.pool, e))?;
        let packs = (config.pool.size / PACK_SIZE as u64) as usize;
        let allocator = PackAllocator::new(Backend { manager: self }, config.pool.start, packs)
            .map_err(|_| InitError::PoolTooLarge(config.pool))?;
        let slots = Magazines::new(allocator, BrkFill { manager: self }, config.cpus)
            .map_err(InitError::Magazines)?;
        // The alias descriptor of a page at PA 0: a poke ORs the page's PA in.
        let alias_attributes =
            <P::Regime as crate::mmu::Regime>::page_descriptor(0, Role::PokeAlias)
                .map_err(|e| InitError::Map(config.fixmap, e))?;
        if config.maintenance.repeat_tlbi {
            crate::arch::aarch64::mmu::repeat_tlbi();
        }
        let mut tlb = BroadcastTlb::<P::Regime>::new();
        let fill = pool::fill_block(&config);
        let slot = config.fixmap.start;
        space
            .reserve_blocks_2m(config.pool.start, config.pool.size, &mut tlb)
            .map_err(|e| InitError::Map(config.pool, e))?;
        // One view per CPU, each with its poke slot's level-3 table and its fill block's level-2
        // entry under its own root entry. No CPU walks a view yet: no maintenance needed beyond
        // the publication before a CPU enters it.
        let mut entries = [core::ptr::null_mut(); MAX_CPUS];
        for entry in entries.iter_mut().take(config.cpus) {
            let fixmap = config.fixmap;
            let view = space
                .add_private_root(fixmap.start)
                .map_err(|e| InitError::Map(fixmap, e))?;
            let found = space
                .in_private_root(view, fixmap.start, fixmap.size, |t| {
                    t.reserve_pages(slot, PAGE_SIZE, &mut tlb)?;
                    t.reserve_blocks_2m(fill, BLOCK_SIZE_2M, &mut tlb)?;
                    t.leaf_entry_ptr(slot)
                        .ok_or(MapError::NotMapped { va: slot })
                })
                .map_err(|e| InitError::Map(fixmap, e))?;
            *entry = found.as_ptr();
        }
        for (cpu, entry) in self.per_cpu.iter().zip(entries) {
            cpu.staged_entry.store(entry, Ordering::Release);
        }
        // Nothing is stored until every step that can fail has succeeded.
        *self.tables.lock() = Some(space);
        *self.pool.write() = Some(Pool::new(frames, config.pool));
        self.allocator.call_once(|| slots);
        self.hot
            .pool_start
            .store(config.pool.start, Ordering::Relaxed);
        self.hot
            .pool_end
            .store(config.pool.end(), Ordering::Relaxed);
        self.hot
            .fixmap
            .store(config.fixmap.start, Ordering::Relaxed);
        self.hot
            .alias_attributes
            .store(alias_attributes, Ordering::Relaxed);
        self.hot
            .min_line
            .store(config.maintenance.min_line() as u64, Ordering::Relaxed);
        // Release: whoever sees the CPU count sees the rest (and the slot entries above).
        self.hot.cpus.store(config.cpus, Ordering::Release);
        self.config.call_once(|| config);
        Ok(())
    }

    /// The configuration, once set up.
    pub fn config(&self) -> Option<&Config> {
        self.config.get()
    }

    /// Switches this CPU to its own view of the tables (see the module documentation), once,
    /// after [`ExecManager::init`]: its TTBR_ELx (the half the root was given for) then holds the
    /// view's root, and from then on it may poke. A CPU that has not entered its view is refused
    /// by every write ([`PokeError::NoPokeSlot`]) and cannot map a fresh pack. Entering again is
    /// harmless.
    ///
    /// # Safety
    ///
    /// This CPU runs on the root given to `init` (or already on its view) in the regime
    /// `P::Regime`, at its exception level: the view maps everything else exactly as that root
    /// does, so the switch changes no translation the running code uses.
    pub unsafe fn enter_cpu_view(&self) -> Result<(), PokeError> {
        let saved = P::mask_interrupts();
        let cpu = P::cpu_index();
        let entered = self.switch_to_view(cpu);
        P::restore_interrupts(saved);
        entered.map_err(|()| PokeError::NoPokeSlot { cpu })
    }

    /// [`ExecManager::enter_cpu_view`] with interrupts masked, on CPU `cpu`.
    fn switch_to_view(&self, cpu: usize) -> Result<(), ()> {
        // Set up completely (`config` is stored last, Release): a poke that sees the entry below
        // sees the fixmap VA and the alias attributes too.
        self.config.get().ok_or(())?;
        let staged = self.per_cpu.get(cpu).map_or(core::ptr::null_mut(), |c| {
            c.staged_entry.load(Ordering::Acquire)
        });
        if staged.is_null() {
            return Err(());
        }
        let root = {
            let tables = self.tables.lock();
            let space = tables.as_ref().ok_or(())?;
            let view = *space.private_roots().get(cpu).ok_or(())?;
            space.private_table_root(view)
        };
        // SAFETY: the caller's contract: the view maps everything as the kernel's root does (it
        // is a copy of it, kept in step by `set_root_entry`), but for its own fixmap entry,
        // which nothing but this CPU's pokes uses.
        unsafe { crate::arch::aarch64::mmu::switch_root::<P::Regime>(root.range, root.pa) };
        self.per_cpu[cpu].entry.store(staged, Ordering::Release);
        Ok(())
    }

    /// The root table of CPU `cpu`'s view (what its TTBR holds once it entered the view).
    pub fn cpu_view_root(&self, cpu: usize) -> Option<TableRoot> {
        let tables = self.tables.lock();
        let space = tables.as_ref()?;
        let view = *space.private_roots().get(cpu)?;
        Some(space.private_table_root(view))
    }

    /// Whether CPU `cpu` has entered its view.
    pub fn cpu_entered_view(&self, cpu: usize) -> bool {
        self.per_cpu
            .get(cpu)
            .is_some_and(|c| !c.entry.load(Ordering::Acquire).is_null())
    }

    /// Rewrites the kernel's root entry covering `va` in its root and in every CPU's view, with
    /// break-before-make and a broadcast invalidation if a valid entry is replaced
    /// ([`AddressSpace::set_root_entry`]). Once the views exist, this is how the kernel changes
    /// its top-level entries; a change below them needs nothing from the manager.
    ///
    /// # Safety
    ///
    /// As for [`AddressSpace::set_root_entry`]; and `va` is outside the pool's and fixmap's root
    /// entries (refused) and any range the kernel still uses through the old entry.
    pub unsafe fn set_root_entry(&self, va: u64, raw: u64) -> Result<(), MapError> {
        let pool =
            self.hot.pool_start.load(Ordering::Relaxed)..self.hot.pool_end.load(Ordering::Relaxed);
        let mut tables = self.tables.lock();
        let space = tables.as_mut().ok_or(MapError::NotMapped { va })?;
        // Any root entry the pool's tables hang from (a pool may cross a root entry's end).
        let (first, size) = space
            .root_entry_span(va)
            .ok_or(MapError::VaOutOfRange { va, size: 1 })?;
        if pool.start < first.saturating_add(size) && first < pool.end {
            return Err(MapError::AlreadyMapped { va });
        }
        // SAFETY: the caller's contract.
        unsafe { space.set_root_entry(va, raw, &mut BroadcastTlb::<P::Regime>::new()) }
    }

    fn allocator(&self) -> Result<&Slots<P>, AllocError> {
        self.allocator.get().ok_or(AllocError::Uninitialised)
    }

    /// Allocates `size` bytes of exec memory, 64-byte aligned, filled with BRK (Linux
    /// `vmalloc_exec`). Up to 4 KiB, from this CPU's magazine when it has a slot of the size's
    /// class (no shared lock, no poke: the slot was BRK-filled when it was freed).
    pub fn alloc(&self, size: usize) -> Result<ExecSlot, AllocError> {
        let slot = self.allocator()?.alloc(P::cpu_index(), size);
        self.unmap_released_packs();
        slot.map(|slot| ExecSlot { slot })
    }

    /// Allocates with a power-of-two alignment up to 4 KiB (e.g. page-aligned module text).
    pub fn alloc_aligned(&self, size: usize, align: usize) -> Result<ExecSlot, AllocError> {
        let slot = self.allocator()?.alloc_aligned(P::cpu_index(), size, align);
        self.unmap_released_packs();
        slot.map(|slot| ExecSlot { slot })
    }

    /// Frees a slot: refilled with BRK (a stale call traps), then, up to 4 KiB, kept in this
    /// CPU's magazine for the next allocation of its class, else (or when the magazine is full)
    /// its chunks released, an empty pack unmapped (one is kept cached). On error the slot is
    /// unchanged and still allocated.
    pub fn free(&self, slot: ExecSlot) -> Result<(), AllocError> {
        let result = self.allocator()?.free(P::cpu_index(), slot.slot);
        self.unmap_released_packs();
        result
    }

    /// C-style allocation: the address, or an error.
    pub fn alloc_raw(&self, size: usize) -> Result<*const u8, AllocError> {
        let addr = self.allocator()?.alloc_raw(P::cpu_index(), size);
        self.unmap_released_packs();
        addr.map(|addr| addr as *const u8)
    }

    /// C-style free (Linux `vfree_exec(ptr, size)`); `size` must be the size the slot was
    /// allocated with.
    pub fn free_raw(&self, ptr: *const u8, size: usize) -> Result<(), AllocError> {
        let result = self.allocator()?.free_raw(P::cpu_index(), ptr as u64, size);
        self.unmap_released_packs();
        result
    }

    /// Gives back what is held in reserve: every CPU's magazines return their slots to the
    /// shared allocator, and the cached empty pack, if any, is released with its frame. Returns
    /// whether a pack was released by the last step (packs the returned slots emptied are
    /// released as any emptied pack is).
    pub fn trim(&self) -> Result<bool, AllocError> {
        let trimmed = self.allocator()?.trim();
        self.unmap_released_packs();
        Ok(trimmed)
    }

    /// Returns every CPU's magazines to the shared allocator (what [`ExecManager::trim`] does
    /// first; an allocation the pool cannot serve does it too, then retries). Returns the number
    /// of slots returned.
    pub fn drain_magazines(&self) -> Result<usize, AllocError> {
        let returned = self.allocator()?.drain();
        self.unmap_released_packs();
        Ok(returned)
    }

    /// The live slot that covers `addr` (for fault reports and tools); frees nothing. A slot
    /// resting in a magazine is free.
    pub fn slot_at(&self, addr: u64) -> Option<SlotInfo> {
        self.allocator().ok()?.slot_at(addr)
    }

    /// Allocator statistics as the users see them (zero before `init`): live slots and bytes
    /// are theirs; slots resting in magazines count as reserved only
    /// ([`ExecManager::magazine_stats`] has both views).
    pub fn stats(&self) -> Stats {
        self.magazine_stats().pool
    }

    /// The figures with the magazines counted: the users' view, the shared allocator's (in
    /// which resting slots are live), the resting slots and bytes, refills and flushes.
    pub fn magazine_stats(&self) -> MagazineStats {
        self.allocator().map(Magazines::stats).unwrap_or_default()
    }

    /// Writes the pack map (one line per mapped pack, one character per 32 KiB). Slots resting
    /// in magazines show as used: they are the shared allocator's live slots.
    pub fn render_pack_map(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match self.allocator() {
            Ok(allocator) => allocator.shared().render_pack_map(out),
            Err(_) => Ok(()),
        }
    }

    /// Checks the allocator's and the magazines' invariants; panics with the first one violated
    /// (for tests).
    #[cfg(any(test, feature = "check-invariants"))]
    pub fn check_invariants(&self) {
        if let Ok(allocator) = self.allocator() {
            allocator.check_invariants();
        }
    }

    /// Writes `code` at `offset` into `slot` through the text poke and publishes it: when this
    /// returns, any CPU may branch to it (the publication contract: [`ExecManager::publish`]).
    /// Refuses a handle that is not a live slot of exactly its size (one rebuilt by
    /// [`ExecSlot::from_raw`] with a wrong pair), and anything that would run past the slot (an
    /// offset too large for the address space included).
    pub fn write(&self, slot: &ExecSlot, offset: usize, code: &[u8]) -> Result<(), PokeError> {
        self.write_all(&[(slot, offset, code)])
    }

    /// Several writes, published once (a module's sections, a batch of programs): every write is
    /// checked as [`ExecManager::write`] checks it before any is made, so a refusal writes
    /// nothing; then all are made, then one publication covers them.
    pub fn write_all(&self, writes: &[(&ExecSlot, usize, &[u8])]) -> Result<(), PokeError> {
        for &(slot, offset, code) in writes {
            self.check_write(slot, offset, code)?;
        }
        for &(slot, offset, code) in writes {
            let region = slot.region();
            let dst = crate::poke::offset_in(region, offset)?;
            self.copy_unpublished(region, dst, code)?;
        }
        self.publish()
    }

    /// Refuses what [`ExecManager::write`] refuses, writing nothing.
    fn check_write(&self, slot: &ExecSlot, offset: usize, code: &[u8]) -> Result<(), PokeError> {
        let live = SlotInfo {
            addr: slot.addr(),
            size: slot.size(),
        };
        if self.slot_at(slot.addr()) != Some(live) {
            return Err(PokeError::NotALiveSlot {
                addr: live.addr,
                size: live.size,
            });
        }
        let region = slot.region();
        let dst = crate::poke::offset_in(region, offset)?;
        crate::poke::check_range(dst, code.len(), region)
    }

    /// The mapped packs with their frames, as the pool records them.
    pub fn mapped_packs(&self) -> alloc::vec::Vec<PackFrame> {
        let _records = self.pool.read();
        self.pack_frames()
    }

    /// Audits the live tables (the hardware's root for this regime) against the W^X and
    /// exec-pool rules, with no poke in progress.
    pub fn audit(&self) -> alloc::vec::Vec<Violation> {
        self.audit_with(None)
    }

    /// The cache-maintenance plan in force (`None` before `init`).
    pub fn maintenance_plan(&self) -> Option<&MaintenancePlan> {
        self.config.get().map(|c| &c.maintenance)
    }

    /// Unmaps the packs the allocator released. Called without the allocator's lock (after a
    /// free), and with it before mapping (so a released pack is gone before its VA is used again).
    fn unmap_released_packs(&self) {
        // A pack is queued, then the flag set; whoever clears it drains after, so every queued
        // pack is drained by its releaser or by a later caller. Only this post-call drain may
        // skip: the one before mapping (`Backend::map_packs`) must wait for a drain in progress.
        if self.released_pending.swap(false, Ordering::Acquire) {
            self.drain_released_packs();
        }
    }

    /// Unmaps every queued pack, waiting for a drain in progress on another CPU.
    fn drain_released_packs(&self) {
        // The queue's protocol (`crate::sync::released`, model-checked): its lock is held until
        // every pack taken is unmapped.
        self.released.drain(|va| {
            // The allocator released exactly this pack; it is mapped until now.
            let _ = self.unmap_pack_for(va, false);
        });
    }
}

/// The kernel's tables, as the manager adopted them.
type KernelSpace<P> = AddressSpace<<P as Platform>::Regime, <P as Platform>::Tables>;

/// The hot copy of the configuration.
struct Hot {
    pool_start: AtomicU64,
    pool_end: AtomicU64,
    fixmap: AtomicU64,
    cpus: AtomicUsize,
    /// The kernel text [`ExecManager::allow_kernel_text_patching`] opened to `patch_insn` and
    /// `patch_batch`: its VA range and the PA of its start (0, 0: none).
    text_start: AtomicU64,
    text_end: AtomicU64,
    text_pa: AtomicU64,
    /// The poke alias's level-3 descriptor without its output address (RW, execute-never, Normal
    /// write-back: [`Role::PokeAlias`] in this regime), made once at init: a poke ORs in the
    /// page's PA ([`crate::mmu::Regime::page_descriptor`] of a page-aligned PA below 2^48 is
    /// exactly that, host-tested).
    alias_attributes: AtomicU64,
    /// The smallest cache line of the maintenance plan in bytes
    /// ([`MaintenancePlan::min_line`], computed once): the fast path of a small copy tests
    /// whether its bytes share one line without the plan's line arithmetic.
    min_line: AtomicU64,
}

/// One CPU's poke state, a cache line of its own: only that CPU writes it after init, so the
/// count it keeps needs no atomic read-modify-write and shares no line with another CPU's.
#[repr(align(64))]
struct PerCpu {
    /// The level-3 entry of this CPU's poke slot, in its own view (stable: tables are never
    /// freed); null until the CPU entered its view ([`ExecManager::enter_cpu_view`]).
    entry: AtomicPtr<u64>,
    /// The same entry, made at init, waiting for the CPU to enter its view.
    staged_entry: AtomicPtr<u64>,
    /// 4 KiB alias mappings this CPU made, for reports and tests: written by this CPU alone, with
    /// interrupts masked (a relaxed load and store, no read-modify-write).
    alias_maps: AtomicUsize,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            entry: AtomicPtr::new(core::ptr::null_mut()),
            staged_entry: AtomicPtr::new(core::ptr::null_mut()),
            alias_maps: AtomicUsize::new(0),
        }
    }
}

/// Checks the windows against each other, the limits and the root's VA range.
fn check_config(config: &Config, root: TableRoot) -> Result<(), InitError> {
    let (pool, fixmap) = (config.pool, config.fixmap);
    for region in [pool, fixmap] {
        if region.size == 0
            || !region.start.is_multiple_of(BLOCK_SIZE_2M)
            || !region.size.is_multiple_of(BLOCK_SIZE_2M)
        {
            return Err(InitError::NotBlockAligned(region));
        }
        if !root.range.contains_range(region.start, region.size) {
            return Err(InitError::OutsideVaRange(region));
        }
    }
    if pool.size / BLOCK_SIZE_2M > MAX_PACKS as u64 {
        return Err(InitError::PoolTooLarge(pool));
    }
    if fixmap.size < 2 * BLOCK_SIZE_2M {
        return Err(InitError::FixmapTooSmall(fixmap));
    }
    if config.cpus == 0 || config.cpus > MAX_CPUS {
        return Err(InitError::BadCpuCount(config.cpus));
    }
    if pool.overlaps(&fixmap) {
        return Err(InitError::Overlap(pool, fixmap));
    }
    let span = root.range.root_entry_size();
    if fixmap.start / span != (fixmap.end() - 1) / span {
        return Err(InitError::FixmapCrossesRootEntry(fixmap));
    }
    if pool.start / span <= fixmap.start / span && fixmap.start / span <= (pool.end() - 1) / span {
        return Err(InitError::SameRootEntry(pool, fixmap));
    }
    Ok(())
}

/// The allocator's backend: packs from the manager's pool, BRK refills through its text poke.
struct Backend<P: Platform> {
    manager: &'static ExecManager<P>,
}

impl<P: Platform> PackBackend for Backend<P> {
    fn map_packs(&mut self, va: u64, count: usize) -> Result<(), BackendError> {
        let manager = self.manager;
        // Every released pack is gone before a VA is mapped again: the full drain, which waits
        // for one in progress elsewhere.
        manager.drain_released_packs();
        for i in 0..count {
            let pack = va + (i * PACK_SIZE) as u64;
            if let Err(e) = manager.map_pack_for(pack, false) {
                // Undo the packs mapped so far: a failed request changes nothing.
                for j in 0..i {
                    let _ = manager.unmap_pack_for(va + (j * PACK_SIZE) as u64, false);
                }
                return Err(match e {
                    pool::PoolError::OutOfFrames => BackendError::OutOfFrames,
                    pool::PoolError::AlreadyMapped(_) => BackendError::AlreadyMapped,
                    _ => BackendError::PageTable,
                });
            }
        }
        Ok(())
    }

    /// Queued: the caller unmaps after dropping the allocator's lock.
    fn unmap_packs(&mut self, va: u64, count: usize) {
        for i in 0..count {
            // A pack is released once before it is unmapped: the queue never overflows (a pack
            // that did not fit would only stay mapped, BRK-filled, RX).
            let _ = self.manager.released.push(va + (i * PACK_SIZE) as u64);
        }
        self.manager.released_pending.store(true, Ordering::Release);
    }

    fn fill_brk(&mut self, va: u64, len: usize) -> Result<(), BackendError> {
        self.manager.fill_brk(va, len)
    }
}

/// The magazines' BRK fill of a freed slot: the same text poke as the shared allocator's.
struct BrkFill<P: Platform> {
    manager: &'static ExecManager<P>,
}

impl<P: Platform> SlotFill for BrkFill<P> {
    #[inline]
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError> {
        self.manager.fill_brk(va, len)
    }
}

impl<P: Platform> ExecManager<P> {
    /// Fills `[va, va + len)` with BRK through this CPU's poke, unpublished: the allocator and
    /// the magazines pass whole chunks of a slot they own, inside a mapped pack, and the slot's
    /// next user publishes what it writes there ([`ExecManager::write`]).
    fn fill_brk(&self, va: u64, len: usize) -> Result<(), BackendError> {
        let brk = crate::poke::insn::brk(0);
        let region = ExecRegion::slot(va, va + len as u64);
        self.set_unpublished(region, va, brk, len / crate::poke::insn::INSN_BYTES)
            .map_err(|_| BackendError::Refill)
    }
}
