//! The kernel's address space, built once at boot from the memory map (`runtime::memory`: the device
//! tree's, placed by `machine::plan`) and the linked image,
//! then switched on with `SCTLR_ELx.WXN` set, in the regime the kernel runs in ([`KernelRegime`]:
//! EL1&0 at EL1, EL2 or EL2&0 at EL2).
//!
//! ```text
//!  VA (identity for everything but the exec pool and the fixmap)
//!  ┌──────────────────────┐
//!  │ fixmap window        │ top GiB, one level-1 entry that each CPU's view has to itself:
//!  │                      │ its 4 KiB text-poke slot (invalid unless that CPU is poking) and
//!  │                      │ its pack-fill block (invalid unless it fills a fresh pack)
//!  ├──────────────────────┤
//!  │ devices              │ Device-nGnRE, RW, XN
//!  ├──────────────────────┤
//!  │ exec pool window     │ 2 MiB packs, each one L2 block, RO + executable (never writable)
//!  ├──────────────────────┤   ▲ within one BL (±128 MiB) of kernel .text, both ways
//!  │ kernel .text         │ RO + X
//!  │ kernel .rodata       │ RO, XN
//!  │ kernel .data/.bss    │ RW, XN
//!  │ guard | stack (×4)   │ guard unmapped; stack RW, XN
//!  │ heap                 │ RW, XN (2 MiB blocks)
//!  │ module data          │ 4 KiB pages, mapped while a module holds them: RW, XN or RO, XN
//!  │ rest of RAM          │ RW, XN — except the exec frames, which are mapped nowhere, and
//!  │                      │ reserved memory and the device tree, which are left alone
//!  └──────────────────────┘
//! ```

use alloc::vec::Vec;
use core::fmt;

use spin::{Mutex, Once};

use crate::arch::aarch64::{cpu, mmu as hw};
use crate::layout::{self, Region, Size};
use crate::machine::Machine;
use crate::machine::plan::MemoryPlan;
use crate::mmu::control::RegimeControl;
use crate::mmu::{AddressSpace, El1And0, Granularity, MapError, NoMaintenance, Role};
use crate::mmu::{El2, El2And0, Leaf, Regime, TableRoot, Translation};
use crate::runtime::board;
use crate::runtime::memory::{self, KernelImage};

/// The translation regime the kernel runs in, from where boot.s left it: EL1 (EL1&0), or EL2
/// without VHE (EL2) or with it (HCR_EL2.E2H = 1: EL2&0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRegime {
    /// EL1&0 (TTBR0_EL1, `TLBI VAAE1IS`).
    El1,
    /// EL2 without VHE (TTBR0_EL2, `TLBI VAE2IS`).
    El2,
    /// EL2&0 with VHE.
    El2Vhe,
}

impl KernelRegime {
    /// The regime of the code running now.
    pub fn current() -> Self {
        if cpu::current_el() == 1 {
            return Self::El1;
        }
        use aarch64_cpu::registers::{HCR_EL2, Readable};
        if HCR_EL2.get() & (1 << 34) != 0 {
            Self::El2Vhe
        } else {
            Self::El2
        }
    }

    /// The regime's name (`EL1&0`, `EL2`, `EL2&0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::El1 => El1And0::NAME,
            Self::El2 => El2::NAME,
            Self::El2Vhe => El2And0::NAME,
        }
    }

    /// The exception level the kernel runs at.
    pub fn el(self) -> u8 {
        match self {
            Self::El1 => 1,
            Self::El2 | Self::El2Vhe => 2,
        }
    }
}

/// The live kernel tables, in the kernel's regime.
enum KernelTables {
    El1(AddressSpace<El1And0>),
    El2(AddressSpace<El2>),
    El2Vhe(AddressSpace<El2And0>),
}

/// The live kernel tables. Changes go through the regime's [`hw::BroadcastTlb`].
static TABLES: Mutex<Option<KernelTables>> = Mutex::new(None);

/// Runs `$body` with `$t` bound to the live tables of whichever regime they are in.
macro_rules! on_tables {
    ($t:ident => $body:expr) => {{
        let mut guard = TABLES.lock();
        match guard
            .as_mut()
            .expect("runtime::mmu::init runs before anything maps")
        {
            KernelTables::El1($t) => $body,
            KernelTables::El2($t) => $body,
            KernelTables::El2Vhe($t) => $body,
        }
    }};
}

/// What boot mapped, in order, for the layout report.
static PLAN: Once<Vec<Mapping>> = Once::new();

/// One region of the boot-time map and the role it is mapped with.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    /// The addresses (VA = PA).
    pub region: Region,
    /// Its attributes.
    pub role: Role,
}

/// Why the address space could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A region the layout requires to be 2 MiB aligned is not.
    NotBlockAligned(Region),
    /// The exec pool is not within one `BL` of the kernel text, both ways.
    OutOfBranchReach {
        /// The pool window.
        pool: Region,
        /// The kernel text.
        text: Region,
    },
    /// Two regions that must be disjoint overlap.
    Overlap(Region, Region),
    /// The pool has more packs than the allocator tracks.
    PoolTooLarge(Region),
    /// The fixmap window has no room for the poke slot's 2 MiB plus the fill block.
    FixmapTooSmall(Region),
    /// A region is not inside RAM.
    OutsideRam(Region),
    /// The tables refused a mapping.
    Map(Region, MapError),
    /// The CPU cannot run this translation regime.
    Cpu(&'static str),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBlockAligned(r) => write!(f, "{} is not 2 MiB aligned: {r}", r.name),
            Self::OutOfBranchReach { pool, text } => {
                write!(
                    f,
                    "exec pool {pool} is not within one BL (±128 MiB) of {text}"
                )
            }
            Self::Overlap(a, b) => write!(f, "{} overlaps {}: {a} / {b}", a.name, b.name),
            Self::PoolTooLarge(r) => write!(f, "exec pool has more than 64 packs: {r}"),
            Self::FixmapTooSmall(r) => write!(f, "fixmap window too small: {r}"),
            Self::OutsideRam(r) => write!(f, "{} is not inside RAM: {r}", r.name),
            Self::Map(r, e) => write!(f, "cannot map {r}: {e}"),
            Self::Cpu(why) => f.write_str(why),
        }
    }
}

/// The poke slot of `cpu` in the fixmap window: the same VA for every CPU, each mapping it in its
/// own view of the tables only.
pub fn fixmap_poke_slot(cpu: usize) -> u64 {
    crate::runtime::exec_pool::with_manager!(m => m.poke_slot(cpu))
        .expect("exec_pool::init runs at boot, for every CPU of the board")
}

/// The 2 MiB block of the fixmap window used to fill a fresh pack before it is mapped executable.
pub fn fixmap_fill_block() -> u64 {
    crate::runtime::exec_pool::with_manager!(m => m.fill_block())
        .expect("exec_pool::init runs at boot")
}

/// Checks the placed exec layout against the linked kernel: alignment, branch reach, no overlap.
/// The placement guarantees all of it; this is the boot-time check that the two agree.
pub fn check_exec_layout(image: &KernelImage, plan: &MemoryPlan) -> Result<(), LayoutError> {
    let pool = plan.exec_pool;
    let frames = plan.exec_frames;
    let fixmap = plan.fixmap;
    for region in [pool, frames, fixmap, plan.heap] {
        if !region.start.is_multiple_of(crate::mmu::BLOCK_SIZE_2M)
            || !region.size.is_multiple_of(crate::mmu::BLOCK_SIZE_2M)
        {
            return Err(LayoutError::NotBlockAligned(region));
        }
    }
    if pool.size / crate::mmu::BLOCK_SIZE_2M > crate::manager::MAX_PACKS as u64 {
        return Err(LayoutError::PoolTooLarge(pool));
    }
    if fixmap.size < 2 * crate::mmu::BLOCK_SIZE_2M {
        return Err(LayoutError::FixmapTooSmall(fixmap));
    }
    if !(layout::branch_reaches(&pool, &image.text) && layout::branch_reaches(&image.text, &pool)) {
        return Err(LayoutError::OutOfBranchReach {
            pool,
            text: image.text,
        });
    }
    let fixed = [image.all(), plan.heap, plan.module_data, pool, fixmap];
    for (i, a) in fixed.iter().enumerate() {
        for b in &fixed[i + 1..] {
            if a.overlaps(b) {
                return Err(LayoutError::Overlap(*a, *b));
            }
        }
        // The pool window may lie over the frames' physical range (rpi4): VA and PA are apart.
        if a.overlaps(&frames) && *a != pool {
            return Err(LayoutError::Overlap(*a, frames));
        }
    }
    if let Some(ram) = plan.free_ram.iter().find(|r| r.overlaps(&frames)) {
        return Err(LayoutError::Overlap(*ram, frames));
    }
    Ok(())
}

/// The boot-time map: every region, its role, and how it is cut into descriptors.
fn boot_plan(
    image: &KernelImage,
    machine: &Machine,
    placed: &MemoryPlan,
) -> Vec<(Region, Role, Granularity)> {
    let mut plan = alloc::vec![
        (image.text, Role::Code, Granularity::Pages),
        (image.rodata, Role::Rodata, Granularity::Pages),
        (image.data, Role::Data, Granularity::Pages),
    ];
    for cpu in 0..image.stack_count() {
        let mut stack = image.stack(cpu);
        stack.name = "boot stack";
        plan.push((stack, Role::Data, Granularity::Pages));
    }
    plan.push((placed.heap, Role::Data, Granularity::Auto));
    // The rest of RAM: the placement left out the exec frames (no writable identity alias), the
    // pool and fixmap windows, reserved memory and the null page.
    for part in &placed.free_ram {
        plan.push((*part, Role::Data, Granularity::Auto));
    }
    for device in memory::devices(machine) {
        let page = crate::mmu::PAGE_SIZE;
        let start = device.start / page * page;
        let end = device.end().next_multiple_of(page);
        plan.push((
            Region::from_bounds(device.name, start, end),
            Role::Device,
            Granularity::Pages,
        ));
    }
    plan
}

/// Builds the kernel tables and turns the MMU on, in the regime the kernel runs in. Runs once, on
/// CPU 0, with the MMU off, with a plan that passed [`check_exec_layout`] (`memory::discover`
/// checks it).
pub fn init(machine: &Machine, placed: &MemoryPlan) -> Result<(), LayoutError> {
    let image = KernelImage::current();
    let plan = boot_plan(&image, machine, placed);
    let tables = match KernelRegime::current() {
        KernelRegime::El1 => KernelTables::El1(build_and_enable(&image, placed, &plan)?),
        KernelRegime::El2 => KernelTables::El2(build_and_enable(&image, placed, &plan)?),
        KernelRegime::El2Vhe => KernelTables::El2Vhe(build_and_enable(&image, placed, &plan)?),
    };
    // Memory is Normal cacheable now: exclusives work.
    super::set_locks_ready();
    *TABLES.lock() = Some(tables);
    PLAN.call_once(|| {
        plan.iter()
            .map(|&(region, role, _)| Mapping { region, role })
            .collect()
    });
    Ok(())
}

/// The boot map in regime `R`'s tables, then the MMU of `R` on.
fn build_and_enable<R: RegimeControl>(
    image: &KernelImage,
    placed: &MemoryPlan,
    plan: &[(Region, Role, Granularity)],
) -> Result<AddressSpace<R>, LayoutError> {
    let mut tables = AddressSpace::<R>::new().map_err(|e| LayoutError::Map(placed.heap, e))?;
    // The tables are not live yet: no TLB maintenance is needed while building them.
    let mut not_live = NoMaintenance;
    // Module data is mapped page by page later: its level-3 tables now, so those changes write
    // leaves only and never link a table into tables the manager walks too.
    let module_data = placed.module_data;
    tables
        .reserve_pages(module_data.start, module_data.size, &mut not_live)
        .map_err(|e| LayoutError::Map(module_data, e))?;
    for &(region, role, granularity) in plan {
        tables
            .map(
                region.start,
                region.start,
                region.size,
                role,
                granularity,
                &mut not_live,
            )
            .map_err(|e| LayoutError::Map(region, e))?;
    }
    let written = [
        image.text.start..image.all().end(),
        placed.heap.start..placed.heap.end(),
    ];
    // SAFETY: the plan identity-maps the whole kernel image (this code, its data, every boot
    // stack), the heap holding the tables, and the console UART; later changes are made by the
    // manager with this regime's BroadcastTlb. The MMU is still off: this is the one call.
    // `written` covers everything stored to since reset (.data/.bss, stacks, heap).
    unsafe { hw::enable::<R>(tables.root(), cpu::midr(), &written) }.map_err(LayoutError::Cpu)?;
    Ok(tables)
}

/// Maps `size` bytes of module data at `pa` (inside the plan's module-data region) at the same
/// VA as `role` ([`Role::Data`] or [`Role::Rodata`]), in 4 KiB pages. Only invalid entries are
/// written, in tables created at boot.
pub fn map_module_data(pa: u64, size: u64, role: Role) -> Result<(), MapError> {
    let region = memory::plan().module_data;
    if !matches!(role, Role::Data | Role::Rodata)
        || pa < region.start
        || pa.checked_add(size).is_none_or(|end| end > region.end())
    {
        return Err(MapError::VaOutOfRange { va: pa, size });
    }
    on_tables!(t => t.map(pa, pa, size, role, Granularity::Pages, &mut hw::BroadcastTlb::new()))
}

/// Removes module-data pages mapped with [`map_module_data`], with a broadcast TLB invalidation of
/// each: once this returns no CPU can reach them.
pub fn unmap_module_data(pa: u64, size: u64) -> Result<(), MapError> {
    let region = memory::plan().module_data;
    if pa < region.start || pa.checked_add(size).is_none_or(|end| end > region.end()) {
        return Err(MapError::VaOutOfRange { va: pa, size });
    }
    on_tables!(t => t.unmap(pa, size, &mut hw::BroadcastTlb::new()))
}

/// The root of the live kernel tables and its VA range.
pub fn root() -> TableRoot {
    on_tables!(t => t.root())
}

/// Where `va` translates to in the live kernel tables, or `None` if it faults.
pub fn translate(va: u64) -> Option<Translation> {
    on_tables!(t => t.translate(va))
}

/// The root table the hardware walks on this CPU (TTBR0_ELx of the kernel's level): the CPU's
/// own view of the kernel tables, once the manager is set up.
pub fn hardware_root() -> u64 {
    match KernelRegime::current() {
        KernelRegime::El1 => hw::ttbr0::<El1And0>(),
        KernelRegime::El2 => hw::ttbr0::<El2>(),
        KernelRegime::El2Vhe => hw::ttbr0::<El2And0>(),
    }
}

/// What this CPU's hardware makes of a privileged write to `va` now (`AT S1E1W` or `AT S1E2W`):
/// the physical address, or `None` if the write would fault. Walks this CPU's own view.
pub fn hardware_translate_write(va: u64) -> Option<u64> {
    match KernelRegime::current() {
        KernelRegime::El1 => hw::translate_write::<El1And0>(va),
        KernelRegime::El2 => hw::translate_write::<El2>(va),
        KernelRegime::El2Vhe => hw::translate_write::<El2And0>(va),
    }
}

/// Whether the MMU of the kernel's regime is on.
pub fn mmu_enabled() -> bool {
    match KernelRegime::current() {
        KernelRegime::El1 => hw::is_enabled::<El1And0>(),
        KernelRegime::El2 => hw::is_enabled::<El2>(),
        KernelRegime::El2Vhe => hw::is_enabled::<El2And0>(),
    }
}

/// Whether SCTLR_ELx.WXN is set in the kernel's regime.
pub fn wxn_enabled() -> bool {
    match KernelRegime::current() {
        KernelRegime::El1 => hw::wxn_enabled::<El1And0>(),
        KernelRegime::El2 => hw::wxn_enabled::<El2>(),
        KernelRegime::El2Vhe => hw::wxn_enabled::<El2And0>(),
    }
}

/// What boot mapped, with roles (empty before `init`).
pub fn boot_mappings() -> &'static [Mapping] {
    PLAN.get().map_or(&[], Vec::as_slice)
}

/// One run of the live tables: consecutive leaves with the same role and granule, contiguous in
/// VA and PA.
#[derive(Clone, Copy, Debug)]
pub struct LiveRun {
    /// First VA.
    pub va: u64,
    /// First PA.
    pub pa: u64,
    /// Bytes.
    pub size: u64,
    /// Leaf size (4 KiB page, 2 MiB block).
    pub leaf_size: u64,
    /// The role whose attributes the leaves have exactly, if any.
    pub role: Option<Role>,
    /// Effective permissions (table limits and WXN applied).
    pub permissions: crate::mmu::Permissions,
    /// The region it belongs to (boot plan or manager window).
    pub name: &'static str,
}

/// The live kernel tables as this CPU walks them (its view, from TTBR0_ELx), coalesced into runs.
pub fn live_runs() -> Vec<LiveRun> {
    let wxn = wxn_enabled();
    let root = TableRoot {
        pa: hardware_root(),
        range: root().range,
    };
    on_tables!(t => runs_of(t, root, wxn))
}

/// The leaves under `root` (the hardware's, walked through the tables' memory), coalesced into
/// runs.
fn runs_of<R: Regime>(tables: &AddressSpace<R>, root: TableRoot, wxn: bool) -> Vec<LiveRun> {
    let mut runs: Vec<LiveRun> = Vec::new();
    let visit = |leaf: &Leaf<R>| {
        let name = name_of(leaf.va);
        // Code and ExecPool have the same bits; the window tells them apart.
        let role = if memory::plan().exec_pool.contains(leaf.va) {
            Some(Role::ExecPool)
        } else {
            leaf.attrs.role()
        };
        let run = LiveRun {
            va: leaf.va,
            pa: leaf.pa,
            size: leaf.size,
            leaf_size: leaf.size,
            role,
            permissions: leaf.permissions(wxn),
            name,
        };
        match runs.last_mut() {
            Some(last)
                if last.va + last.size == run.va
                    && last.pa + last.size == run.pa
                    && last.leaf_size == run.leaf_size
                    && last.role == run.role
                    && last.permissions == run.permissions
                    && core::ptr::eq(last.name, run.name) =>
            {
                last.size += run.size;
            }
            _ => runs.push(run),
        }
    };
    // SAFETY: the hardware's root is the root of the kernel tables (called with their lock
    // held); they are identity-mapped and never freed while live.
    unsafe { crate::mmu::walk_root::<R>(root, tables.memory(), visit) };
    runs
}

/// What the boot plan or the manager's windows call the region holding `va`.
fn name_of(va: u64) -> &'static str {
    if memory::plan().exec_pool.contains(va) {
        return "exec pack";
    }
    if memory::plan().fixmap.contains(va) {
        return "fixmap";
    }
    boot_mappings()
        .iter()
        .find(|m| m.region.contains(va))
        .map_or("?", |m| m.region.name)
}

/// Prints the address space as the hardware walks it (the live tables, coalesced), then the
/// windows and holes that have no mapping.
pub fn print_layout() {
    crate::println!(
        "address space, from the live tables ({} regime, TTBR0_EL{} {:#x}, SCTLR_EL{}.WXN = {}):",
        KernelRegime::current().name(),
        KernelRegime::current().el(),
        hardware_root(),
        KernelRegime::current().el(),
        u8::from(wxn_enabled())
    );
    for run in live_runs() {
        let pa = if run.pa == run.va {
            alloc::string::String::from("= VA")
        } else {
            alloc::format!("PA {:#x}", run.pa)
        };
        crate::println!(
            "  {:#012x}..{:#012x} {:>9}  {:<6} {:<9} {} x {:<6} {}",
            run.va,
            run.va + run.size,
            Size(run.size),
            alloc::format!("{}", run.permissions),
            run.role.map_or("?", role_name),
            run.size / run.leaf_size,
            alloc::format!("{}", Size(run.leaf_size)),
            alloc::format!("{} ({pa})", run.name),
        );
    }
    crate::println!("unmapped on purpose:");
    let image = KernelImage::current();
    for cpu in 0..image.stack_count() {
        let guard = image.stack_guard(cpu);
        crate::println!(
            "  {:#012x}..{:#012x} {:>9}  stack guard, CPU {cpu}",
            guard.start,
            guard.end(),
            Size(guard.size)
        );
    }
    let fixmap = memory::plan().fixmap;
    crate::println!(
        "  {:#012x}..{:#012x} {:>9}  fixmap: each CPU's poke slot + pack-fill block, in its own view of the tables ({} views), valid only during that CPU's poke or fill",
        fixmap.start,
        fixmap.end(),
        Size(fixmap.size),
        board::CPUS
    );
    let pool = memory::plan().exec_pool;
    crate::println!(
        "  {:#012x}..{:#012x} {:>9}  exec pool: {} packs of 2 MiB, each mapped RO + X by one L2 block while in use",
        pool.start,
        pool.end(),
        Size(pool.size),
        pool.size >> 21
    );
    let frames = memory::plan().exec_frames;
    crate::println!(
        "  {:#012x}..{:#012x} {:>9}  exec frames (PA): no identity mapping; reachable only through pack blocks",
        frames.start,
        frames.end(),
        Size(frames.size)
    );
    let modules = memory::plan().module_data;
    crate::println!(
        "  {:#012x}..{:#012x} {:>9}  module data: pages mapped while a module holds them (RW + XN, rodata RO + XN)",
        modules.start,
        modules.end(),
        Size(modules.size)
    );
}

/// Short attribute text for a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Code => "code",
        Role::Rodata => "rodata",
        Role::Data => "data",
        Role::Device => "device",
        Role::ExecPool => "exec-pool",
        Role::PokeAlias => "poke",
    }
}
