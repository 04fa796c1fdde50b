//! Translation tables with a 4 KiB granule for a VA range of 31 to 48 bits, in the lower (TTBR0)
//! or upper (TTBR1) half ([`VaRange`]: 39 bits start the walk at level 1, 48 bits at level 0), and
//! the operations that are safe to perform on live tables.
//!
//! # Conventions
//!
//! - **Tables are reached through the kernel's own map.** A table descriptor holds a physical
//!   address; [`TableAccess`] turns it into a pointer (identity, or a linear map at an offset, as
//!   a higher-half kernel has), and [`TableMemory`] provides the frames. [`HeapTables`] takes them
//!   from the global allocator (the demo kernel and the host tests).
//! - **Tables are never freed while the [`AddressSpace`] lives.** A walker (or a walk cache) may
//!   still hold a table that was unlinked; freeing it safely would need a TLBI covering the walk
//!   cache first. Empty tables stay linked after [`AddressSpace::unmap`]; all tables are freed
//!   by `Drop`.
//! - **One store per entry.** Every entry is written with a single aligned 64-bit volatile store,
//!   so the walker (which may be using the tables concurrently) sees the old or the new
//!   descriptor, never a mix (single-copy atomicity of aligned 64-bit accesses, Arm ARM B2.2.1).
//! - **Dry run first.** Every operation checks the whole range before writing anything; a refusal
//!   leaves every entry, and the set of tables, as it was.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use super::descriptor::{
    BlockLevel, Descriptor, LeafAttributes, Permissions, Regime, Role, TableAttributes,
    next_table_address,
};
use super::{BLOCK_SIZE_2M, MapError, PA_LIMIT, PAGE_SIZE};

/// Bits of virtual address of the demo kernel's space ([`VaRange::LOWER_39`]).
pub const VA_BITS: u64 = 39;
/// TCR_ELx.T0SZ for [`VA_BITS`]: with 25, the 4 KiB-granule walk starts at level 1.
pub const T0SZ: u64 = 64 - VA_BITS;
/// One past the highest virtual address of [`VaRange::LOWER_39`].
pub const VA_LIMIT: u64 = 1 << VA_BITS;

const ENTRIES: usize = 512;
const LEAF_LEVEL: u8 = 3;

/// VA bit where the index for `level` (0 to 3) starts.
const fn index_shift(level: u8) -> u64 {
    12 + 9 * (LEAF_LEVEL - level) as u64
}

/// Bytes mapped by one entry of a table at `level` (0 to 3).
const fn entry_size(level: u8) -> u64 {
    1 << index_shift(level)
}

const fn entry_index(va: u64, level: u8) -> usize {
    ((va >> index_shift(level)) as usize) % ENTRIES
}

/// The virtual addresses one set of tables translates: `bits` of VA (TCR_ELx.TnSZ = 64 - bits) in
/// the lower half (TTBR0_ELx: `0 .. 2^bits`) or the upper half (TTBR1_ELx, EL1&0 and EL2&0 only:
/// `2^64 - 2^bits .. 2^64`). With 4 KiB pages the walk starts at level 0 above 39 bits, else at
/// level 1 (Arm ARM D8.2, "translation table walk": the initial lookup level from TnSZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaRange {
    bits: u8,
    upper: bool,
}

impl VaRange {
    /// 39-bit TTBR0 range (T0SZ = 25, walk from level 1): the demo kernel's.
    pub const LOWER_39: Self = Self {
        bits: 39,
        upper: false,
    };
    /// 48-bit TTBR0 range (T0SZ = 16, walk from level 0).
    pub const LOWER_48: Self = Self {
        bits: 48,
        upper: false,
    };
    /// 39-bit TTBR1 range: `0xffff_ff80_0000_0000 ..`.
    pub const UPPER_39: Self = Self {
        bits: 39,
        upper: true,
    };
    /// 48-bit TTBR1 range: `0xffff_0000_0000_0000 ..` (a higher-half kernel's).
    pub const UPPER_48: Self = Self {
        bits: 48,
        upper: true,
    };

    /// The TTBR0 range of `bits` (31 to 48; fewer bits would start the walk at level 2).
    pub const fn lower(bits: u8) -> Option<Self> {
        Self::new(bits, false)
    }

    /// The TTBR1 range of `bits` (31 to 48).
    pub const fn upper(bits: u8) -> Option<Self> {
        Self::new(bits, true)
    }

    const fn new(bits: u8, upper: bool) -> Option<Self> {
        if bits >= 31 && bits <= 48 {
            Some(Self { bits, upper })
        } else {
            None
        }
    }

    /// Bits of VA.
    pub const fn bits(self) -> u8 {
        self.bits
    }

    /// Whether this is the TTBR1 (upper) range.
    pub const fn is_upper(self) -> bool {
        self.upper
    }

    /// TCR_ELx.T0SZ or T1SZ for this range.
    pub const fn tcr_size_offset(self) -> u64 {
        64 - self.bits as u64
    }

    /// The level the walk starts at.
    pub const fn start_level(self) -> u8 {
        if self.bits > 39 { 0 } else { 1 }
    }

    /// Bytes one root-table entry spans: 512 GiB for a walk from level 0, 1 GiB from level 1.
    pub const fn root_entry_size(self) -> u64 {
        entry_size(self.start_level())
    }

    /// The first VA of the span of root entry `index`.
    pub const fn root_entry_va(self, index: usize) -> u64 {
        self.first()
            .wrapping_add((index as u64) << index_shift(self.start_level()))
    }

    /// The first VA of the range.
    pub const fn first(self) -> u64 {
        if self.upper { !0 << self.bits } else { 0 }
    }

    /// Bytes the range spans.
    pub const fn size(self) -> u64 {
        1 << self.bits
    }

    /// Whether `va .. va + size` lies inside the range (`size` may be 0).
    pub const fn contains_range(self, va: u64, size: u64) -> bool {
        let first = self.first() as u128;
        let end = first + self.size() as u128;
        let (va, size) = (va as u128, size as u128);
        va >= first && va + size <= end
    }

    /// Whether `va` lies inside the range.
    pub const fn contains(self, va: u64) -> bool {
        self.contains_range(va, 1)
    }

    /// Entries of the root table that the range uses (512, fewer below 39 or 48 bits).
    const fn root_entries(self) -> usize {
        1 << (self.bits as u64 - index_shift(self.start_level()))
    }

    /// The index of `va` in its table at `level`.
    const fn index(self, va: u64, level: u8) -> usize {
        if level == self.start_level() {
            ((va >> index_shift(level)) as usize) & (self.root_entries() - 1)
        } else {
            entry_index(va, level)
        }
    }
}

/// One set of live tables: the root's physical address and the VA range it translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoot {
    /// Physical address of the root table (the TTBR_ELx base address).
    pub pa: u64,
    /// What it translates.
    pub range: VaRange,
}

/// A root table of one CPU's view of an [`AddressSpace`] ([`AddressSpace::add_private_root`]):
/// every root entry is the main root's but one, the view's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateRoot {
    pa: u64,
    index: usize,
    first: u64,
}

impl PrivateRoot {
    /// Physical address of the view's root table (its TTBR base address).
    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// The first VA of the root entry that is the view's own.
    pub fn own_span_start(&self) -> u64 {
        self.first
    }
}

/// How the running code reaches a translation table from its physical address (what a table
/// descriptor holds): the kernel's own mapping of its table memory.
pub trait TableAccess {
    /// The address, in the running VA space, of the 4 KiB table at physical `pa`.
    fn table_va(&self, pa: u64) -> *mut PageTable;
}

/// A linear map of table memory: VA = PA + `offset` (wrapping, so a higher-half linear map at
/// `0xffff_8000_0000_0000` is an offset too). [`LinearMap::IDENTITY`] is VA = PA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinearMap {
    /// VA - PA.
    pub offset: u64,
}

impl LinearMap {
    /// VA = PA (the demo kernel: its heap is identity mapped).
    pub const IDENTITY: Self = Self { offset: 0 };

    /// The physical address of a table at `va` in this map.
    pub fn pa_of(self, va: *const PageTable) -> u64 {
        (va.expose_provenance() as u64).wrapping_sub(self.offset)
    }
}

impl TableAccess for LinearMap {
    fn table_va(&self, pa: u64) -> *mut PageTable {
        ptr::with_exposed_provenance_mut(pa.wrapping_add(self.offset) as usize)
    }
}

/// Frames for translation tables, provided by the kernel that owns the address space.
///
/// # Safety
///
/// [`TableMemory::alloc_table`] returns the physical address of a 4 KiB-aligned 4 KiB frame that
/// nothing else uses until it is given to [`TableMemory::free_table`], readable and writable at
/// [`TableAccess::table_va`] for as long as it is allocated. (It need not be zeroed: the address
/// space zeroes every table before linking it.)
pub unsafe trait TableMemory: TableAccess {
    /// A table frame, or `None` when there is none.
    fn alloc_table(&mut self) -> Option<u64>;

    /// Gives back a frame from [`TableMemory::alloc_table`].
    ///
    /// # Safety
    ///
    /// `pa` came from `alloc_table` of this memory, is not freed yet, and no walker can reach
    /// it (it was never linked, or the tables it was linked into are no longer live).
    unsafe fn free_table(&mut self, pa: u64);
}

/// Table frames from the global allocator, reached through a [`LinearMap`] of the heap: identity in
/// the demo kernel; any offset where the heap is mapped elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapTables {
    map: LinearMap,
}

impl HeapTables {
    /// Identity-mapped heap.
    pub const IDENTITY: Self = Self {
        map: LinearMap::IDENTITY,
    };

    /// A heap whose VA is its PA + `map.offset`.
    pub const fn with_map(map: LinearMap) -> Self {
        Self { map }
    }
}

impl TableAccess for HeapTables {
    fn table_va(&self, pa: u64) -> *mut PageTable {
        self.map.table_va(pa)
    }
}

// SAFETY: every table is its own `PageTable`-layout (4 KiB, 4 KiB-aligned) heap block, owned by the
// caller until freed; `table_va` undoes `pa_of` of the same map.
unsafe impl TableMemory for HeapTables {
    fn alloc_table(&mut self) -> Option<u64> {
        // SAFETY: the layout has a non-zero size.
        let table = NonNull::new(unsafe { alloc_zeroed(PageTable::LAYOUT) }.cast::<PageTable>())?;
        Some(self.map.pa_of(table.as_ptr()))
    }

    unsafe fn free_table(&mut self, pa: u64) {
        // SAFETY: the caller passes a block `alloc_table` returned, with this layout.
        unsafe { dealloc(self.map.table_va(pa).cast(), PageTable::LAYOUT) };
    }
}

/// One 4 KiB translation table: 512 descriptors.
#[repr(C, align(4096))]
pub struct PageTable([u64; ENTRIES]);

impl PageTable {
    /// Descriptors per table.
    pub const ENTRIES: usize = ENTRIES;
    const LAYOUT: Layout = Layout::new::<PageTable>();
}

/// Handle to a table reached by its physical address.
///
/// Invariant: `base` points to a [`PageTable`] that stays allocated while the handle is used.
#[derive(Clone, Copy)]
struct Table {
    base: *mut u64,
}

impl Table {
    /// # Safety
    ///
    /// `pa` is the physical address of a [`PageTable`], reached through `access`, that stays
    /// allocated, and is not accessed through references, while the handle is used.
    unsafe fn at(access: &impl TableAccess, pa: u64) -> Self {
        Self {
            base: access.table_va(pa).cast(),
        }
    }

    fn entry(self, index: usize) -> *mut u64 {
        // SAFETY: the index is below ENTRIES, so the result stays inside the table (invariant).
        unsafe { self.base.add(index % ENTRIES) }
    }

    fn read(self, index: usize) -> u64 {
        // SAFETY: an aligned entry of a live table (invariant); volatile because the walker and
        // the poke path (through `leaf_entry_ptr`) are other observers of this memory.
        unsafe { self.entry(index).read_volatile() }
    }

    fn write(self, index: usize, value: u64) {
        // SAFETY: an aligned entry of a live table (invariant). One 64-bit volatile store: the
        // compiler may not split, merge or elide it, so the walker sees old or new (B2.2.1).
        unsafe { self.entry(index).write_volatile(value) }
    }
}

/// Where the walk for one VA stops: the first entry that is not a table descriptor.
#[derive(Clone, Copy)]
struct Found<R: Regime> {
    level: u8,
    table: Table,
    index: usize,
    descriptor: Descriptor<R>,
    raw: u64,
}

/// # Safety
///
/// `root.pa` is a live root table reached through `access`, and so is every table reachable from
/// it, for the call; `va` is inside `root.range`.
unsafe fn find<R: Regime>(root: TableRoot, access: &impl TableAccess, va: u64) -> Found<R> {
    // SAFETY: the caller's contract.
    let mut table = unsafe { Table::at(access, root.pa) };
    let mut level = root.range.start_level();
    loop {
        let index = root.range.index(va, level);
        let raw = table.read(index);
        match Descriptor::<R>::decode(raw, level) {
            Descriptor::Table { next, .. } if level < LEAF_LEVEL => {
                // SAFETY: reachable from the root: the caller's contract.
                table = unsafe { Table::at(access, next) };
                level += 1;
            }
            descriptor => {
                return Found {
                    level,
                    table,
                    index,
                    descriptor,
                    raw,
                };
            }
        }
    }
}

/// The entry for `va` in the table at `level`, if the walk reaches that level.
///
/// # Safety
///
/// As for [`find`].
unsafe fn locate(
    root: TableRoot,
    access: &impl TableAccess,
    va: u64,
    level: u8,
) -> Option<(Table, usize)> {
    let start = root.range.start_level();
    if !root.range.contains(va) || !(start..=LEAF_LEVEL).contains(&level) {
        return None;
    }
    // SAFETY: the caller's contract.
    let mut table = unsafe { Table::at(access, root.pa) };
    for current in start..level {
        let next = next_table_address(table.read(root.range.index(va, current)), current)?;
        // SAFETY: reachable from the root: the caller's contract.
        table = unsafe { Table::at(access, next) };
    }
    Some((table, root.range.index(va, level)))
}

// ---------------------------------------------------------------------------------------------
// TLB maintenance
// ---------------------------------------------------------------------------------------------

/// The barriers and TLB invalidation a table change of regime `R` needs; the kernel implements it
/// with the instructions, tests with [`RecordingMaintenance`].
///
/// The regime is a type parameter so that tables and maintenance cannot be mixed up: `TLBI VAAE1IS`
/// does not remove EL2 entries, so EL1 maintenance on EL2 tables would leave a torn-down writable
/// alias cached. An [`AddressSpace<R>`] only accepts a `TlbMaintenance<R>`: maintenance made for
/// one regime (as `arch::aarch64::mmu::BroadcastTlb<El1And0>` is) does not compile on another's
/// tables.
///
/// ```compile_fail,E0277
/// use execmem::mmu::{AddressSpace, El1And0, El2, Granularity, Role, TlbMaintenance};
///
/// /// EL1&0 maintenance (the TLBI VAAE1IS kind).
/// struct El1Tlb;
/// impl TlbMaintenance<El1And0> for El1Tlb {
///     fn invalidate_va(&mut self, _va: u64, _level: u8) {}
///     fn invalidate_all(&mut self) {}
///     fn publish(&mut self) {}
/// }
///
/// let mut el2_tables = AddressSpace::<El2>::new().unwrap();
/// // error[E0277]: the trait bound `El1Tlb: TlbMaintenance<El2>` is not satisfied
/// el2_tables.map(0x4000_0000, 0x4000_0000, 4096, Role::Data, Granularity::Pages, &mut El1Tlb);
/// ```
///
/// The same call with maintenance of the tables' own regime compiles:
///
/// ```
/// use execmem::mmu::{AddressSpace, El2, Granularity, Role, TlbMaintenance};
///
/// struct El2Tlb;
/// impl TlbMaintenance<El2> for El2Tlb {
///     fn invalidate_va(&mut self, _va: u64, _level: u8) {}
///     fn invalidate_all(&mut self) {}
///     fn publish(&mut self) {}
/// }
///
/// let mut el2_tables = AddressSpace::<El2>::new().unwrap();
/// el2_tables
///     .map(0x4000_0000, 0x4000_0000, 4096, Role::Data, Granularity::Pages, &mut El2Tlb)
///     .unwrap();
/// ```
pub trait TlbMaintenance<R: Regime> {
    /// Called after a valid entry for `va` at `level` was written invalid, before anything else
    /// is written there. Kernel: `DSB ISHST; TLBI VAE1IS, va >> 12; DSB ISH` (`TLBI VAE2IS` in
    /// EL2): the store must be visible to the walkers before the broadcast invalidation, and the
    /// invalidation complete on every CPU before the entry is reused (break-before-make, D8.14).
    fn invalidate_va(&mut self, va: u64, level: u8);

    /// Called after a valid root entry was written invalid ([`AddressSpace::set_root_entry`]):
    /// it spans more than an invalidation by VA reaches, so every entry of the regime goes.
    /// Kernel: `DSB ISHST; TLBI VMALLE1IS` (`TLBI ALLE2IS` in EL2); `DSB ISH`.
    fn invalidate_all(&mut self);

    /// Called after entries were written into previously invalid slots (invalid entries are never
    /// cached in a TLB, so no invalidation is needed), and before fresh tables are linked.
    /// Kernel: `DSB ISHST; ISB`, so the new entries are visible to the walker before the next
    /// access that may use them.
    fn publish(&mut self);
}

/// No maintenance at all: only for tables that no CPU walks yet (before the MMU is on, or before
/// TTBR points to them). Using it on live tables leaves stale TLB entries behind.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMaintenance;

impl<R: Regime> TlbMaintenance<R> for NoMaintenance {
    fn invalidate_va(&mut self, _va: u64, _level: u8) {}
    fn invalidate_all(&mut self) {}
    fn publish(&mut self) {}
}

/// One call on a [`TlbMaintenance`], as recorded by [`RecordingMaintenance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbEvent {
    /// `invalidate_va(va, level)`; `entry` is the raw entry for `va` at `level` at the moment of
    /// the call, if the recorder observes a table and the walk reaches that level.
    InvalidateVa {
        /// The virtual address.
        va: u64,
        /// Its level.
        level: u8,
        /// The entry as the walker would see it during the invalidation.
        entry: Option<u64>,
    },
    /// `invalidate_all()`.
    InvalidateAll,
    /// `publish()`.
    Publish,
}

/// Records every maintenance call, for host tests that check the order of a sequence (for
/// example that the entry is already invalid when its TLBI is issued).
#[derive(Debug, Default)]
pub struct RecordingMaintenance {
    /// The calls, in order.
    pub events: Vec<TlbEvent>,
    observed: Option<(TableRoot, LinearMap)>,
}

impl RecordingMaintenance {
    /// A recorder that records calls only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder that also reads, at each `invalidate_va`, the entry being invalidated in the
    /// tables under `root`, reached through `map`.
    ///
    /// # Safety
    ///
    /// `root.pa` is a live root table, and so is every table reachable from it, as long as
    /// the recorder is used (for example [`AddressSpace::root`] of a space that outlives it).
    pub unsafe fn observing(root: TableRoot, map: LinearMap) -> Self {
        Self {
            events: Vec::new(),
            observed: Some((root, map)),
        }
    }
}

impl<R: Regime> TlbMaintenance<R> for RecordingMaintenance {
    fn invalidate_va(&mut self, va: u64, level: u8) {
        let entry = self.observed.and_then(|(root, map)| {
            // SAFETY: the contract of `observing`.
            let slot = unsafe { locate(root, &map, va, level) };
            slot.map(|(table, index)| table.read(index))
        });
        self.events
            .push(TlbEvent::InvalidateVa { va, level, entry });
    }

    fn invalidate_all(&mut self) {
        self.events.push(TlbEvent::InvalidateAll);
    }

    fn publish(&mut self) {
        self.events.push(TlbEvent::Publish);
    }
}

// ---------------------------------------------------------------------------------------------
// Walking
// ---------------------------------------------------------------------------------------------

/// Where one VA translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the VA.
    pub pa: u64,
    /// Level of the leaf descriptor.
    pub level: u8,
    /// Bytes mapped by the leaf.
    pub size: u64,
    /// The raw leaf descriptor.
    pub raw: u64,
}

/// One valid leaf (block or page) found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf<R: Regime> {
    /// First virtual address mapped.
    pub va: u64,
    /// First physical address mapped.
    pub pa: u64,
    /// Bytes mapped.
    pub size: u64,
    /// Lookup level of the leaf (1 or 2 for a block, 3 for a page).
    pub level: u8,
    /// The raw leaf descriptor.
    pub raw: u64,
    /// Its attributes.
    pub attrs: LeafAttributes<R>,
    /// The limits of the table descriptors above it, accumulated (D8.4, hierarchical
    /// permissions).
    pub table: TableAttributes,
}

impl<R: Regime> Leaf<R> {
    /// Effective privileged permissions: leaf bits, table limits and SCTLR_ELx.WXN together.
    pub fn permissions(&self, wxn: bool) -> Permissions {
        self.attrs.permissions(self.table, wxn)
    }
}

/// Calls `visit` for every valid leaf reachable from `root`, in VA order, with the table limits
/// accumulated down the walk.
///
/// # Safety
///
/// `root.pa` is the physical address of a readable root [`PageTable`] reached through `access`,
/// every table descriptor reachable from it points to a readable [`PageTable`], and none of them
/// is freed during the call. (Concurrent writes of single entries, as the hardware also
/// tolerates, are fine: each entry is read once, with one 64-bit load.)
pub unsafe fn walk_root<R: Regime>(
    root: TableRoot,
    access: &impl TableAccess,
    mut visit: impl FnMut(&Leaf<R>),
) {
    // SAFETY: the caller's contract.
    let table = unsafe { Table::at(access, root.pa) };
    let at = Position {
        level: root.range.start_level(),
        base_va: root.range.first(),
        entries: root.range.root_entries(),
    };
    // SAFETY: the caller's contract covers every table reachable from the root.
    unsafe { walk_table(access, table, at, TableAttributes::NONE, &mut visit) }
}

/// [`walk_root`] limited to the root entry covering `va`: the leaves under it, in VA order (a
/// CPU view's own entry, [`AddressSpace::add_private_root`]).
///
/// # Safety
///
/// As for [`walk_root`].
pub unsafe fn walk_root_entry<R: Regime>(
    root: TableRoot,
    access: &impl TableAccess,
    va: u64,
    mut visit: impl FnMut(&Leaf<R>),
) {
    if !root.range.contains(va) {
        return;
    }
    let level = root.range.start_level();
    let size = entry_size(level);
    // SAFETY: the caller's contract.
    let table = unsafe { Table::at(access, root.pa) };
    let index = root.range.index(va, level);
    // A one-entry "table" at the entry's own address: the walk then visits only it.
    let one = Table {
        base: table.entry(index),
    };
    let at = Position {
        level,
        base_va: va & !(size - 1),
        entries: 1,
    };
    // SAFETY: the caller's contract covers every table reachable from the root.
    unsafe { walk_table(access, one, at, TableAttributes::NONE, &mut visit) }
}

/// The raw root entry covering `va` (0 outside the range).
///
/// # Safety
///
/// As for [`walk_root`].
pub unsafe fn root_entry(root: TableRoot, access: &impl TableAccess, va: u64) -> u64 {
    if !root.range.contains(va) {
        return 0;
    }
    // SAFETY: the caller's contract.
    let table = unsafe { Table::at(access, root.pa) };
    table.read(root.range.index(va, root.range.start_level()))
}

/// Where a table sits in a walk: its level, the first VA it maps, the entries it uses (fewer than
/// 512 only in a root of a range below 39 or 48 bits).
#[derive(Clone, Copy)]
struct Position {
    level: u8,
    base_va: u64,
    entries: usize,
}

/// # Safety
///
/// As for [`walk_root`], for `table` and the tables below it.
unsafe fn walk_table<R: Regime>(
    access: &impl TableAccess,
    table: Table,
    at: Position,
    above: TableAttributes,
    visit: &mut impl FnMut(&Leaf<R>),
) {
    let Position {
        level,
        base_va,
        entries,
    } = at;
    for index in 0..entries {
        let raw = table.read(index);
        let va = base_va.wrapping_add(index as u64 * entry_size(level));
        let (pa, size) = match Descriptor::<R>::decode(raw, level) {
            Descriptor::Invalid => continue,
            Descriptor::Table { next, attrs } => {
                // SAFETY: reachable from the root: the caller's contract. `decode` returns a
                // table only below level 3, so the recursion ends at the leaf level.
                unsafe {
                    let below = Position {
                        level: level + 1,
                        base_va: va,
                        entries: ENTRIES,
                    };
                    walk_table(
                        access,
                        Table::at(access, next),
                        below,
                        above.then(attrs),
                        visit,
                    )
                };
                continue;
            }
            Descriptor::Block {
                level: block, oa, ..
            } => (oa, block.size()),
            Descriptor::Page { oa, .. } => (oa, PAGE_SIZE),
        };
        let attrs = LeafAttributes::from_descriptor(raw);
        visit(&Leaf {
            va,
            pa,
            size,
            level,
            raw,
            attrs,
            table: above,
        });
    }
}

/// The translation of `va` by the tables under `root_pa`, or `None` if it faults.
///
/// # Safety
///
/// As for [`walk_root`].
pub unsafe fn translate_root<R: Regime>(
    root: TableRoot,
    access: &impl TableAccess,
    va: u64,
) -> Option<Translation> {
    if !root.range.contains(va) {
        return None;
    }
    // SAFETY: the caller's contract.
    let found = unsafe { find::<R>(root, access, va) };
    let (oa, size) = match found.descriptor {
        Descriptor::Block { level, oa, .. } => (oa, level.size()),
        Descriptor::Page { oa, .. } => (oa, PAGE_SIZE),
        Descriptor::Invalid | Descriptor::Table { .. } => return None,
    };
    Some(Translation {
        pa: oa + (va & (size - 1)),
        level: found.level,
        size,
        raw: found.raw,
    })
}

// ---------------------------------------------------------------------------------------------
// Address space
// ---------------------------------------------------------------------------------------------

/// Leaf size choice for [`AddressSpace::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// 2 MiB blocks wherever VA, PA and the remaining size are 2 MiB aligned and no level-3
    /// table already covers the 2 MiB; 4 KiB pages elsewhere.
    Auto,
    /// 4 KiB pages only.
    Pages,
    /// 2 MiB blocks only; VA, PA and size must be 2 MiB aligned (exec packs).
    Block2M,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LeafSize {
    Block2M,
    Page,
}

impl LeafSize {
    fn bytes(self) -> u64 {
        match self {
            Self::Block2M => BLOCK_SIZE_2M,
            Self::Page => PAGE_SIZE,
        }
    }

    fn level(self) -> u8 {
        match self {
            Self::Block2M => 2,
            Self::Page => LEAF_LEVEL,
        }
    }
}

/// The leaf `map` writes at `va`, given what the walk finds there, or why it may not.
///
/// The dry run and the writing pass decide alike: the writing pass only adds tables below slots
/// the dry run saw invalid, and a chunk that finds a table its own call created is never 2 MiB
/// aligned (the earlier chunk in the same 2 MiB started lower), so it is a page either way.
fn choose_leaf<R: Regime>(
    found: &Found<R>,
    va: u64,
    pa: u64,
    remaining: u64,
    granularity: Granularity,
) -> Result<LeafSize, MapError> {
    let wants_block = match granularity {
        Granularity::Block2M => true,
        Granularity::Pages => false,
        Granularity::Auto => {
            found.level < LEAF_LEVEL
                && va.is_multiple_of(BLOCK_SIZE_2M)
                && pa.is_multiple_of(BLOCK_SIZE_2M)
                && remaining >= BLOCK_SIZE_2M
        }
    };
    let leaf = if wants_block {
        LeafSize::Block2M
    } else {
        LeafSize::Page
    };
    match (found.level, found.descriptor) {
        // No table below this slot yet: anything fits.
        (level, Descriptor::Invalid) if level < LEAF_LEVEL => Ok(leaf),
        // A level-3 table covers the 2 MiB: a block would replace a live table (D8.14).
        (LEAF_LEVEL, _) if wants_block => Err(MapError::WouldReplaceTable { va }),
        (LEAF_LEVEL, Descriptor::Invalid) => Ok(leaf),
        (LEAF_LEVEL, _) => Err(MapError::AlreadyMapped { va }),
        (2, Descriptor::Block { .. }) if wants_block => Err(MapError::AlreadyMapped { va }),
        // Pages inside a live 2 MiB block, anything inside a live 1 GiB block.
        _ => Err(MapError::WouldSplitBlock { va }),
    }
}

/// Counts the tables a pass over increasing VAs must create, each once.
#[derive(Default)]
struct NewTables {
    count: usize,
    /// For each level 1 to 3, the VA (shifted) of the last table counted at that level.
    last: [Option<u64>; 4],
}

impl NewTables {
    /// Notes what the walk found at `va` for a leaf at `leaf_level`: a table for every level from
    /// below the invalid entry found down to the leaf's.
    fn note<R: Regime>(&mut self, found: &Found<R>, va: u64, leaf_level: u8) {
        if found.descriptor != Descriptor::Invalid || found.level >= leaf_level {
            return;
        }
        for above in found.level..leaf_level {
            // The new table at level `above + 1` covers one entry of level `above`.
            let key = va >> index_shift(above);
            let last = &mut self.last[usize::from(above + 1)];
            if *last != Some(key) {
                *last = Some(key);
                self.count += 1;
            }
        }
    }
}

/// A refusal unless `va..va + size` is a non-empty, `align`-aligned range inside `range`.
fn check_va_range(range: VaRange, va: u64, size: u64, align: u64) -> Result<(), MapError> {
    if size == 0 {
        return Err(MapError::ZeroSize);
    }
    if !va.is_multiple_of(align) {
        return Err(MapError::UnalignedVa { va, align });
    }
    if !size.is_multiple_of(align) {
        return Err(MapError::UnalignedSize { size, align });
    }
    if range.contains_range(va, size) {
        Ok(())
    } else {
        Err(MapError::VaOutOfRange { va, size })
    }
}

/// A refusal unless `pa..pa + size` is `align`-aligned and below [`PA_LIMIT`].
fn check_pa_range(pa: u64, size: u64, align: u64) -> Result<(), MapError> {
    if !pa.is_multiple_of(align) {
        return Err(MapError::UnalignedPa { pa, align });
    }
    match pa.checked_add(size) {
        Some(end) if end <= PA_LIMIT => Ok(()),
        _ => Err(MapError::PaOutOfRange { pa, size }),
    }
}

/// The size of the leaf found at `va` if `va..end` covers all of it.
fn whole_leaf<R: Regime>(found: &Found<R>, va: u64, end: u64) -> Result<u64, MapError> {
    let size = match found.descriptor {
        Descriptor::Block { level, .. } => level.size(),
        Descriptor::Page { .. } => PAGE_SIZE,
        Descriptor::Invalid | Descriptor::Table { .. } => return Err(MapError::NotMapped { va }),
    };
    if !va.is_multiple_of(size) || end - va < size {
        return Err(MapError::WouldSplitBlock { va });
    }
    Ok(size)
}

/// The translation tables of one regime `R` over one [`VaRange`], in table frames from `M`.
///
/// Every method that writes entries follows the live-table rules: it never writes over a valid
/// entry except in break-before-make ([`AddressSpace::replace_block_2m`]), never splits a live
/// block, and reports each change to a [`TlbMaintenance<R>`].
///
/// Either the space owns all its tables ([`AddressSpace::new_in`]; they are freed on drop), or it
/// was given a kernel's live root ([`AddressSpace::adopt`]) and adds tables below it, which stay
/// linked when it is dropped.
///
/// Invariant: the root and every table a table descriptor reachable from it points to are
/// readable through `memory` and not freed while `self` lives; the tables this value allocated
/// are listed in `tables` and freed only by `Drop` (and only when it owns the root). This is
/// what makes the walks in `&self` methods sound.
pub struct AddressSpace<R: Regime, M: TableMemory = HeapTables> {
    root: TableRoot,
    memory: M,
    tables: Vec<u64>,
    owns_root: bool,
    /// Roots that share this root's entries but one ([`AddressSpace::add_private_root`]).
    views: Vec<PrivateRoot>,
    /// While [`AddressSpace::in_private_root`] runs: the main root, swapped out of `root`.
    main_root: Option<u64>,
    regime: PhantomData<R>,
    /// Tests: how many more tables the allocator will provide.
    #[cfg(test)]
    allocation_budget: Option<usize>,
}

// SAFETY: the tables are memory owned by this value (like a `Box`), or lent to it by the adopt
// contract, so moving it to another thread moves that use; nothing in it is tied to a thread.
unsafe impl<R: Regime, M: TableMemory + Send> Send for AddressSpace<R, M> {}

// SAFETY: `&self` methods only read the tables; every write needs `&mut self` (or an explicit
// unsafe store through `leaf_entry_ptr`, whose contract covers races).
unsafe impl<R: Regime, M: TableMemory + Sync> Sync for AddressSpace<R, M> {}

impl<R: Regime> AddressSpace<R> {
    /// An empty 39-bit TTBR0 space ([`VaRange::LOWER_39`]) with tables from the identity-mapped
    /// global allocator: the demo kernel's.
    pub fn new() -> Result<Self, MapError> {
        Self::new_in(HeapTables::IDENTITY, VaRange::LOWER_39)
    }
}

impl<R: Regime, M: TableMemory> AddressSpace<R, M> {
    /// An empty address space over `range`: one zeroed root table from `memory`.
    ///
    /// Refused: an upper range for a regime without TTBR1 ([`MapError::NoUpperRange`]); no
    /// table ([`MapError::OutOfMemory`]) or one beyond 48 bits.
    pub fn new_in(memory: M, range: VaRange) -> Result<Self, MapError> {
        if range.is_upper() && !R::HAS_UPPER_RANGE {
            return Err(MapError::NoUpperRange);
        }
        let mut tables = Vec::new();
        tables.try_reserve(16).map_err(|_| MapError::OutOfMemory)?;
        let mut space = Self {
            root: TableRoot { pa: 0, range },
            memory,
            tables,
            owns_root: true,
            views: Vec::new(),
            main_root: None,
            regime: PhantomData,
            #[cfg(test)]
            allocation_budget: None,
        };
        let root = space.allocate_table()?;
        space.tables.push(root);
        space.root.pa = root;
        Ok(space)
    }

    /// The kernel's own live tables at `root_pa`, to map into (the exec pool and fixmap windows)
    /// with new tables from `memory`. Nothing is freed on drop: the tables added stay linked.
    ///
    /// # Safety
    ///
    /// `root_pa` is a root table of `range` reached through `memory`; it and every table
    /// reachable from it stay allocated while the space lives (and, for the tables it adds,
    /// while the tables are live); nobody else writes the entries this space maps or unmaps
    /// meanwhile (the kernel leaves the windows it gives the manager alone).
    pub unsafe fn adopt(root_pa: u64, range: VaRange, memory: M) -> Result<Self, MapError> {
        if range.is_upper() && !R::HAS_UPPER_RANGE {
            return Err(MapError::NoUpperRange);
        }
        if !root_pa.is_multiple_of(PAGE_SIZE) || root_pa >= PA_LIMIT {
            return Err(MapError::TableNotAddressable { pa: root_pa });
        }
        let mut tables = Vec::new();
        tables.try_reserve(16).map_err(|_| MapError::OutOfMemory)?;
        Ok(Self {
            root: TableRoot { pa: root_pa, range },
            memory,
            tables,
            owns_root: false,
            views: Vec::new(),
            main_root: None,
            regime: PhantomData,
            #[cfg(test)]
            allocation_budget: None,
        })
    }

    /// The root table and its range: the value for TTBR0_ELx or TTBR1_ELx (with TnSZ =
    /// [`VaRange::tcr_size_offset`]).
    ///
    /// Whoever installs it in a TTBR must keep this address space alive (it frees its tables on
    /// drop) until the TTBR points elsewhere and the TLBs are invalidated.
    pub fn root(&self) -> TableRoot {
        self.root
    }

    /// Physical address of the root table.
    pub fn root_pa(&self) -> u64 {
        self.root.pa
    }

    /// The VA range the space translates.
    pub fn va_range(&self) -> VaRange {
        self.root.range
    }

    /// The table memory (also how its tables are reached).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Number of translation tables this space allocated (the root included if it owns it).
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    /// Maps `va..va + size` to `pa..pa + size` as `role`, with leaves chosen by `granularity`.
    ///
    /// Only invalid entries are written (never a live one), so the only maintenance needed is
    /// `publish`: once after fresh tables are zeroed and before they are linked (so the walker
    /// cannot reach a table whose zeroing it does not see yet), and once at the end.
    ///
    /// Refused, with nothing changed: zero size; VA, PA or size not 4 KiB aligned (2 MiB for
    /// [`Granularity::Block2M`]); VA outside the space's [`VaRange`]; PA beyond 48 bits; any target entry
    /// already valid ([`MapError::AlreadyMapped`]); a page inside a live block
    /// ([`MapError::WouldSplitBlock`]); a 2 MiB block over a live level-3 table
    /// ([`MapError::WouldReplaceTable`]); not enough memory for the new tables
    /// ([`MapError::OutOfMemory`]: all tables are allocated before the first write, and given
    /// back if one of them cannot be).
    pub fn map(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        role: Role,
        granularity: Granularity,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        let align = match granularity {
            Granularity::Block2M => BLOCK_SIZE_2M,
            Granularity::Auto | Granularity::Pages => PAGE_SIZE,
        };
        check_va_range(self.root.range, va, size, align)?;
        check_pa_range(pa, size, align)?;
        self.check_shared(va, size)?;

        let mut new_tables = NewTables::default();
        let mut offset = 0;
        while offset < size {
            let found = self.find(va + offset);
            let leaf = choose_leaf(&found, va + offset, pa + offset, size - offset, granularity)?;
            new_tables.note(&found, va + offset, leaf.level());
            offset += leaf.bytes();
        }

        let mut pool = self.allocate_tables(new_tables.count)?;
        if !pool.is_empty() {
            maintenance.publish();
        }
        let attrs = R::role_attributes(role);
        let written = self.write_leaves(va, pa, size, granularity, attrs, &mut pool);
        self.free_tables(pool);
        maintenance.publish();
        written
    }

    /// The writing pass of `map`, after a successful dry run.
    fn write_leaves(
        &mut self,
        va: u64,
        pa: u64,
        size: u64,
        granularity: Granularity,
        attrs: LeafAttributes<R>,
        pool: &mut Vec<u64>,
    ) -> Result<(), MapError> {
        let mut offset = 0;
        while offset < size {
            let (at, oa) = (va + offset, pa + offset);
            let found = self.find(at);
            let leaf = choose_leaf(&found, at, oa, size - offset, granularity)?;
            let found = self.descend_creating(at, leaf.level(), pool)?;
            let descriptor = match leaf {
                LeafSize::Block2M => Descriptor::Block {
                    level: BlockLevel::L2,
                    oa,
                    attrs,
                },
                LeafSize::Page => Descriptor::Page { oa, attrs },
            };
            found.table.write(found.index, descriptor.encode()?);
            offset += leaf.bytes();
        }
        Ok(())
    }

    /// Removes the mappings of `va..va + size`: each leaf is written invalid, then
    /// `invalidate_va` is called for it. The table stays (see the module doc).
    ///
    /// Refused, with nothing changed: zero size, unaligned or out-of-range VA; any page of the
    /// range not mapped ([`MapError::NotMapped`]); a block only partly inside the range
    /// ([`MapError::WouldSplitBlock`]: removing part of a live block is splitting it).
    pub fn unmap(
        &mut self,
        va: u64,
        size: u64,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        check_va_range(self.root.range, va, size, PAGE_SIZE)?;
        let end = va + size;
        let mut at = va;
        while at < end {
            at += whole_leaf(&self.find(at), at, end)?;
        }
        let mut at = va;
        while at < end {
            let found = self.find(at);
            let leaf_size = whole_leaf(&found, at, end)?;
            found.table.write(found.index, 0);
            maintenance.invalidate_va(at, found.level);
            at += leaf_size;
        }
        Ok(())
    }

    /// Points the live 2 MiB block at `va` to `new_pa`, as `role`, by break-before-make (Arm ARM
    /// D8.14): the output address of a live entry may not change in place, because two TLB
    /// entries for one VA with different outputs are a TLB conflict. So: write the entry
    /// invalid, `invalidate_va` (DSB ISHST, broadcast TLBI, DSB ISH: no CPU can still use the
    /// old block), write the new block, `publish`. Accesses to the block fault in between.
    ///
    /// Refused, with nothing changed: `va` or `new_pa` not 2 MiB aligned or out of range;
    /// nothing mapped at `va` ([`MapError::NotMapped`]); pages there
    /// ([`MapError::WouldReplaceTable`]); a 1 GiB block there ([`MapError::WouldSplitBlock`]).
    pub fn replace_block_2m(
        &mut self,
        va: u64,
        new_pa: u64,
        role: Role,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        check_va_range(self.root.range, va, BLOCK_SIZE_2M, BLOCK_SIZE_2M)?;
        check_pa_range(new_pa, BLOCK_SIZE_2M, BLOCK_SIZE_2M)?;
        let new = R::block_descriptor(BlockLevel::L2, new_pa, role)?;
        let found = self.find(va);
        match (found.level, found.descriptor) {
            (2, Descriptor::Block { .. }) => {}
            (LEAF_LEVEL, _) => return Err(MapError::WouldReplaceTable { va }),
            (_, Descriptor::Block { .. }) => return Err(MapError::WouldSplitBlock { va }),
            _ => return Err(MapError::NotMapped { va }),
        }
        found.table.write(found.index, 0);
        maintenance.invalidate_va(va, 2);
        found.table.write(found.index, new);
        maintenance.publish();
        Ok(())
    }

    /// Creates the level-3 tables for `va..va + size`, leaving their entries invalid: the fixmap
    /// window, whose entries the poke path then sets and clears through
    /// [`AddressSpace::leaf_entry_ptr`]. Already existing tables are kept.
    ///
    /// Refused, with nothing changed: zero size, unaligned or out-of-range VA; a page of the
    /// range mapped ([`MapError::AlreadyMapped`]); a block over the range
    /// ([`MapError::WouldSplitBlock`]); no memory ([`MapError::OutOfMemory`]).
    pub fn reserve_pages(
        &mut self,
        va: u64,
        size: u64,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        self.reserve_tables(va, size, LEAF_LEVEL, maintenance)
    }

    /// Creates the tables down to level 2 over `va..va + size` (2 MiB aligned), leaving the
    /// level-2 entries invalid: the exec pool window, so that mapping a pack later writes one
    /// entry and never allocates or links a table (which, in a kernel's shared tables, would race
    /// with the kernel's own table changes). Already existing tables are kept.
    ///
    /// Refused, with nothing changed: zero size, unaligned or out-of-range VA; a 2 MiB block
    /// there ([`MapError::AlreadyMapped`]); a level-3 table there
    /// ([`MapError::WouldReplaceTable`]); a 1 GiB block over it ([`MapError::WouldSplitBlock`]);
    /// no memory ([`MapError::OutOfMemory`]).
    pub fn reserve_blocks_2m(
        &mut self,
        va: u64,
        size: u64,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        self.reserve_tables(va, size, 2, maintenance)
    }

    /// The tables down to `level` (2 or 3) over `va..va + size`, entries at `level` left invalid:
    /// [`AddressSpace::reserve_pages`] and [`AddressSpace::reserve_blocks_2m`].
    fn reserve_tables(
        &mut self,
        va: u64,
        size: u64,
        level: u8,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        let step = entry_size(level);
        check_va_range(self.root.range, va, size, step)?;
        self.check_shared(va, size)?;
        let mut new_tables = NewTables::default();
        for at in (va..va + size).step_by(step as usize) {
            let found = self.find(at);
            match (found.level, found.descriptor) {
                (l, Descriptor::Invalid) if l == level => {}
                (l, _) if l == level => return Err(MapError::AlreadyMapped { va: at }),
                // A level-3 table where a 2 MiB entry is wanted.
                (l, _) if l > level => return Err(MapError::WouldReplaceTable { va: at }),
                (_, Descriptor::Invalid) => new_tables.note(&found, at, level),
                _ => return Err(MapError::WouldSplitBlock { va: at }),
            }
        }
        if new_tables.count == 0 {
            return Ok(());
        }
        let mut pool = self.allocate_tables(new_tables.count)?;
        maintenance.publish();
        let mut linked = Ok(());
        // One walk per 2 MiB the range touches creates the tables down to `level` (the level-3
        // table of those 2 MiB, or the level-2 table holding its entry), each once.
        let first = va & !(BLOCK_SIZE_2M - 1);
        for region in (first..va + size).step_by(BLOCK_SIZE_2M as usize) {
            linked = self
                .descend_creating(region.max(va), level, &mut pool)
                .map(|_| ());
            if linked.is_err() {
                break;
            }
        }
        self.free_tables(pool);
        maintenance.publish();
        linked
    }

    /// The level-3 entry for `va`, if a level-3 table covers it (after
    /// [`AddressSpace::reserve_pages`] or a page mapping). Its address is stable for the life of
    /// the address space: the hot poke path keeps it.
    ///
    /// Writing through it is `unsafe` and the writer's responsibility: one aligned 64-bit
    /// volatile store, of 0 or of [`Regime::page_descriptor`] for this regime `R`; after a
    /// valid value was replaced, `invalidate_va(va, 3)` before the slot is reused or the old
    /// frame is trusted unaliased; after a new value, `publish`; no `&mut self` method of this
    /// address space may run on the same entry at the same time.
    pub fn leaf_entry_ptr(&self, va: u64) -> Option<NonNull<u64>> {
        if !self.root.range.contains(va) {
            return None;
        }
        let found = self.find(va);
        if found.level == LEAF_LEVEL {
            NonNull::new(found.table.entry(found.index))
        } else {
            None
        }
    }

    /// The raw level-3 descriptor mapping `pa` as `role` in this regime: the value to store at
    /// [`AddressSpace::leaf_entry_ptr`]. Same as [`Regime::page_descriptor`].
    pub fn page_descriptor(pa: u64, role: Role) -> Result<u64, MapError> {
        R::page_descriptor(pa, role)
    }

    /// Where `va` translates to, or `None` if it faults.
    pub fn translate(&self, va: u64) -> Option<Translation> {
        // SAFETY: the root and every table reachable from it belong to `self` (type invariant).
        unsafe { translate_root::<R>(self.root, &self.memory, va) }
    }

    /// Calls `visit` for every valid leaf, in VA order (see [`walk_root`]).
    pub fn for_each_leaf(&self, visit: impl FnMut(&Leaf<R>)) {
        // SAFETY: the root and every table reachable from it belong to `self` (type invariant).
        unsafe { walk_root::<R>(self.root, &self.memory, visit) }
    }

    fn find(&self, va: u64) -> Found<R> {
        // SAFETY: the root and every table reachable from it belong to `self` (type invariant);
        // every caller checked `va` against the range.
        unsafe { find::<R>(self.root, &self.memory, va) }
    }

    /// Walks to the entry for `va` at `level`, linking tables from `pool` into the invalid
    /// slots on the way (previously invalid slots: no TLB maintenance needed).
    fn descend_creating(
        &mut self,
        va: u64,
        level: u8,
        pool: &mut Vec<u64>,
    ) -> Result<Found<R>, MapError> {
        let mut found = self.find(va);
        while found.level < level {
            if found.descriptor != Descriptor::Invalid {
                // A leaf above: the dry run excluded it; never overwrite a live entry.
                return Err(MapError::WouldSplitBlock { va });
            }
            let table = pool.pop().ok_or(MapError::OutOfMemory)?;
            let link = Descriptor::<R>::Table {
                next: table,
                attrs: TableAttributes::NONE,
            };
            let raw = match link.encode() {
                Ok(raw) => raw,
                Err(error) => {
                    pool.push(table);
                    return Err(error);
                }
            };
            if found.level == self.root.range.start_level() && self.main_root.is_none() {
                if self.views.iter().any(|view| view.index == found.index) {
                    // Each view's own entry: not linked from the main root, ever.
                    pool.push(table);
                    return Err(MapError::PrivateToEachView { va });
                }
                // A new root entry reaches every view too (they share all the others), before
                // the main root's: a walk from any root then finds the same table.
                for view in &self.views {
                    // SAFETY: a root table this space allocated and keeps (type invariant).
                    unsafe { Table::at(&self.memory, view.pa) }.write(found.index, raw);
                }
            }
            // Capacity was reserved with the pool: this push does not allocate.
            self.tables.push(table);
            found.table.write(found.index, raw);
            found = self.find(va);
        }
        Ok(found)
    }

    /// `count` zeroed tables, all or none; room for them in `self.tables` is reserved too.
    fn allocate_tables(&mut self, count: usize) -> Result<Vec<u64>, MapError> {
        let mut pool = Vec::new();
        pool.try_reserve_exact(count)
            .map_err(|_| MapError::OutOfMemory)?;
        self.tables
            .try_reserve(count)
            .map_err(|_| MapError::OutOfMemory)?;
        for _ in 0..count {
            match self.allocate_table() {
                Ok(table) => pool.push(table),
                Err(error) => {
                    self.free_tables(pool);
                    return Err(error);
                }
            }
        }
        Ok(pool)
    }

    /// One zeroed table frame from the memory, checked to be addressable by a descriptor.
    fn allocate_table(&mut self) -> Result<u64, MapError> {
        #[cfg(test)]
        if let Some(budget) = self.allocation_budget.as_mut() {
            *budget = budget.checked_sub(1).ok_or(MapError::OutOfMemory)?;
        }
        let pa = self.memory.alloc_table().ok_or(MapError::OutOfMemory)?;
        if pa >= PA_LIMIT || !pa.is_multiple_of(PAGE_SIZE) {
            // SAFETY: allocated just above and never linked.
            unsafe { self.memory.free_table(pa) };
            return Err(MapError::TableNotAddressable { pa });
        }
        let table = self.memory.table_va(pa);
        // SAFETY: the TableMemory contract: a 4 KiB frame ours alone, writable at `table`. It is
        // not linked yet, so no walker reads it.
        unsafe { table.write_bytes(0, 1) };
        Ok(pa)
    }

    /// Gives back tables that were never linked.
    fn free_tables(&mut self, pool: Vec<u64>) {
        for table in pool {
            // SAFETY: allocated by `allocate_table`, never linked (so no walker can reach it) and
            // not in `self.tables`.
            unsafe { self.memory.free_table(table) };
        }
    }

    /// The VA span `(first, size)` of the root entry that covers `va` (1 GiB for a root at level
    /// 1, 512 GiB at level 0), or `None` outside the range.
    pub fn root_entry_span(&self, va: u64) -> Option<(u64, u64)> {
        if !self.root.range.contains(va) {
            return None;
        }
        let size = self.root.range.root_entry_size();
        Some((va & !(size - 1), size))
    }

    /// Adds a root of its own for one CPU: a copy of this root, sharing every table below it,
    /// except that the root entry covering `va` is the view's own (invalid until tables are
    /// created under it with [`AddressSpace::in_private_root`]). Mappings made under that entry
    /// exist only in this view, so only a CPU whose TTBR holds it can walk them, and removing
    /// one needs only that CPU's TLB invalidation (Arm ARM D8.16: a TLB holds only what its own
    /// walks fetched; TTBR_ELx.CnP = 0 keeps entries private to the PE).
    ///
    /// From then on a root entry this space links (a new table, at [`AddressSpace::map`] or
    /// [`AddressSpace::reserve_pages`]) is linked in every view as well, and the entry covering
    /// `va` can no longer be linked in the main root ([`MapError::PrivateToEachView`]).
    ///
    /// Refused, with nothing changed: `va` outside the range; the main root's entry there valid
    /// ([`MapError::AlreadyMapped`]: the span must be unmapped in the shared tables); a view of
    /// another span exists (all views are private in the same entry); no memory.
    pub fn add_private_root(&mut self, va: u64) -> Result<PrivateRoot, MapError> {
        if self.main_root.is_some() {
            return Err(MapError::PrivateToEachView { va });
        }
        let (first, _) = self
            .root_entry_span(va)
            .ok_or(MapError::VaOutOfRange { va, size: 1 })?;
        let index = self.root.range.index(va, self.root.range.start_level());
        if self.views.first().is_some_and(|view| view.index != index) {
            return Err(MapError::PrivateToEachView { va });
        }
        // SAFETY: the root is live and readable (type invariant).
        let main = unsafe { Table::at(&self.memory, self.root.pa) };
        if main.read(index) != 0 {
            return Err(MapError::AlreadyMapped { va: first });
        }
        self.views
            .try_reserve(1)
            .map_err(|_| MapError::OutOfMemory)?;
        let mut pool = self.allocate_tables(1)?;
        let Some(pa) = pool.pop() else {
            return Err(MapError::OutOfMemory);
        };
        // SAFETY: allocated and zeroed just above, not linked anywhere yet.
        let copy = unsafe { Table::at(&self.memory, pa) };
        for i in (0..self.root.range.root_entries()).filter(|&i| i != index) {
            copy.write(i, main.read(i));
        }
        // Capacity was reserved by `allocate_tables`.
        self.tables.push(pa);
        let view = PrivateRoot { pa, index, first };
        self.views.push(view);
        Ok(view)
    }

    /// The views made by [`AddressSpace::add_private_root`], in order.
    pub fn private_roots(&self) -> &[PrivateRoot] {
        &self.views
    }

    /// Runs `f` on the tables as `view` walks them, for `va..va + size` inside the view's own
    /// span: [`AddressSpace::map`], [`AddressSpace::unmap`], [`AddressSpace::reserve_pages`],
    /// [`AddressSpace::leaf_entry_ptr`] and the rest then act on the view's private tables.
    /// Maintenance is the caller's choice: a view's own entries may be invalidated on its CPU
    /// alone.
    ///
    /// Refused: a view of another space, or a range that leaves the view's span (which would
    /// write the shared tables through one view only).
    pub fn in_private_root<T>(
        &mut self,
        view: PrivateRoot,
        va: u64,
        size: u64,
        f: impl FnOnce(&mut Self) -> Result<T, MapError>,
    ) -> Result<T, MapError> {
        let span = entry_size(self.root.range.start_level());
        let inside = va >= view.first
            && size <= span
            && va - view.first <= span - size
            && self.views.contains(&view);
        if !inside || self.main_root.is_some() {
            return Err(MapError::PrivateToEachView { va });
        }
        self.main_root = Some(self.root.pa);
        self.root.pa = view.pa;
        let result = f(self);
        self.root.pa = self.main_root.take().unwrap_or(self.root.pa);
        result
    }

    /// The root table as `view` sees it: the TTBR value for the CPU that owns the view.
    pub fn private_table_root(&self, view: PrivateRoot) -> TableRoot {
        TableRoot {
            pa: view.pa,
            range: self.root.range,
        }
    }

    /// The root entries where `view` differs from the main root, its own entry left out: none,
    /// unless something wrote one root and not the other (the audit reports each).
    pub fn diverging_root_entries(&self, view: PrivateRoot) -> Vec<usize> {
        let main_pa = self.main_root.unwrap_or(self.root.pa);
        // SAFETY: both roots are live tables of this space (type invariant).
        let (main, copy) = unsafe {
            (
                Table::at(&self.memory, main_pa),
                Table::at(&self.memory, view.pa),
            )
        };
        (0..self.root.range.root_entries())
            .filter(|&i| i != view.index && main.read(i) != copy.read(i))
            .collect()
    }

    /// Rewrites the root entry covering `va` in the main root and in every view (a kernel that
    /// changes its top level after the views exist goes through here, so the change reaches
    /// every root). Writing over a valid entry is break-before-make (Arm ARM D8.14): invalid in
    /// every root, then [`TlbMaintenance::invalidate_all`] (a root entry spans more than any TLBI
    /// by VA reaches), then the new value everywhere and [`TlbMaintenance::publish`].
    ///
    /// Refused: outside the range; the views' own entry ([`MapError::PrivateToEachView`]).
    ///
    /// # Safety
    ///
    /// `raw` is an invalid entry, a table descriptor to a table that stays allocated while any
    /// root is live, or a block descriptor (level 1) the kernel stands behind; the tables that
    /// the old entry reached are the caller's to free once this returns.
    pub unsafe fn set_root_entry(
        &mut self,
        va: u64,
        raw: u64,
        maintenance: &mut impl TlbMaintenance<R>,
    ) -> Result<(), MapError> {
        if !self.root.range.contains(va) || self.main_root.is_some() {
            return Err(MapError::VaOutOfRange { va, size: 1 });
        }
        let index = self.root.range.index(va, self.root.range.start_level());
        if self.views.iter().any(|view| view.index == index) {
            return Err(MapError::PrivateToEachView { va });
        }
        // SAFETY: the roots are live tables of this space (type invariant).
        let roots: Vec<Table> = core::iter::once(self.root.pa)
            .chain(self.views.iter().map(|view| view.pa))
            .map(|pa| unsafe { Table::at(&self.memory, pa) })
            .collect();
        if roots[0].read(index) != 0 {
            for root in &roots {
                root.write(index, 0);
            }
            maintenance.invalidate_all();
        }
        for root in roots.iter().rev() {
            root.write(index, raw);
        }
        maintenance.publish();
        Ok(())
    }

    /// Refuses a main-root operation on `va..va + size` that touches the views' own entry.
    fn check_shared(&self, va: u64, size: u64) -> Result<(), MapError> {
        let Some(view) = self.views.first() else {
            return Ok(());
        };
        if self.main_root.is_some() {
            return Ok(());
        }
        let span = entry_size(self.root.range.start_level());
        let end = va.saturating_add(size);
        if va < view.first.saturating_add(span) && view.first < end {
            return Err(MapError::PrivateToEachView { va });
        }
        Ok(())
    }

    /// Tests: the entry for `va` at `level`, to plant raw descriptors the API refuses to build.
    #[cfg(test)]
    pub(crate) fn entry_for_test(&mut self, va: u64, level: u8) -> Option<*mut u64> {
        // SAFETY: the root and every table reachable from it belong to `self` (type invariant).
        let slot = unsafe { locate(self.root, &self.memory, va, level) };
        slot.map(|(table, index)| table.entry(index))
    }

    /// Tests: make the allocator fail after `tables` more tables.
    #[cfg(test)]
    pub(crate) fn set_allocation_budget(&mut self, tables: usize) {
        self.allocation_budget = Some(tables);
    }
}

impl<R: Regime, M: TableMemory> Drop for AddressSpace<R, M> {
    /// Frees every table of a space that owns its root. The tables must no longer be live:
    /// whoever installed [`AddressSpace::root_pa`] in a TTBR switches away and invalidates the
    /// TLBs first. An adopted space frees nothing: its tables are linked into the kernel's.
    fn drop(&mut self) {
        if !self.owns_root {
            return;
        }
        for table in core::mem::take(&mut self.tables) {
            // SAFETY: allocated by `allocate_table`; each is listed once and freed only here,
            // and the whole space is no longer live (the contract above).
            unsafe { self.memory.free_table(table) };
        }
    }
}

impl<R: Regime, M: TableMemory> fmt::Debug for AddressSpace<R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("regime", &R::NAME)
            .field("root_pa", &format_args!("{:#x}", self.root_pa()))
            .field("va_bits", &self.root.range.bits())
            .field("upper", &self.root.range.is_upper())
            .field("tables", &self.tables.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::{El1And0, El2, El2And0};
    use Granularity::{Auto, Block2M, Pages};
    use MapError::*;
    use Role::{Code, Data, ExecPool, PokeAlias, Rodata};
    use alloc::vec;
    use proptest::prelude::*;

    const M2: u64 = BLOCK_SIZE_2M;
    const K4: u64 = PAGE_SIZE;

    fn space() -> AddressSpace<El1And0> {
        AddressSpace::new().expect("root table")
    }

    fn leaves<R: Regime>(space: &AddressSpace<R>) -> Vec<Leaf<R>> {
        let mut out = Vec::new();
        space.for_each_leaf(|leaf| out.push(*leaf));
        out
    }

    /// An invalidation that saw the entry already invalid.
    fn invalidated(va: u64, level: u8) -> TlbEvent {
        TlbEvent::InvalidateVa {
            va,
            level,
            entry: Some(0),
        }
    }

    #[test]
    fn constants() {
        assert_eq!(T0SZ, 25);
        assert_eq!(VA_LIMIT, 512 << 30);
        assert_eq!(core::mem::size_of::<PageTable>(), 4096);
        assert_eq!(core::mem::align_of::<PageTable>(), 4096);
        assert_eq!(entry_index(0x4000_0000, 1), 1);
        assert_eq!(entry_index(0x4060_3000, 2), 3);
        assert_eq!(entry_index(0x4060_3000, 3), 3);
    }

    #[test]
    fn new_space_is_empty() {
        let space = space();
        assert_eq!(space.root_pa() % K4, 0);
        assert!(space.root_pa() < PA_LIMIT);
        assert_eq!(space.table_count(), 1);
        assert_eq!(space.translate(0), None);
        assert!(leaves(&space).is_empty());
    }

    #[test]
    fn auto_uses_blocks_where_aligned() {
        let mut space = space();
        let m = &mut RecordingMaintenance::new();
        let (va, pa) = (0x3FFF_F000, 0x7FFF_F000);
        space.map(va, pa, M2 + 2 * K4, Data, Auto, m).expect("map");
        let found: Vec<_> = leaves(&space).iter().map(|l| (l.va, l.level)).collect();
        assert_eq!(
            found,
            vec![(0x3FFF_F000, 3), (0x4000_0000, 2), (0x4020_0000, 3)]
        );
        let t = space.translate(0x4012_3456).expect("mapped");
        assert_eq!((t.pa, t.level, t.size), (0x8012_3456, 2, M2));
        // Two fresh level-2 tables and two level-3 tables: one publish before linking them, one
        // after the leaves; no invalidation for previously invalid slots.
        assert_eq!(space.table_count(), 5);
        assert_eq!(m.events, vec![TlbEvent::Publish, TlbEvent::Publish]);
        // VA and PA in a different 2 MiB phase: pages only.
        space.map(0x1000_0000, K4, M2, Data, Auto, m).expect("map");
        assert_eq!(space.translate(0x1000_0000).map(|t| t.level), Some(3));
    }

    #[test]
    fn argument_errors_change_nothing() {
        let mut space = space();
        let m = &mut NoMaintenance;
        assert_eq!(space.map(0, 0, 0, Data, Auto, m), Err(ZeroSize));
        let align = M2;
        assert_eq!(
            space.map(K4, 0, M2, ExecPool, Block2M, m),
            Err(UnalignedVa { va: K4, align })
        );
        assert_eq!(
            space.map(0, K4, M2, ExecPool, Block2M, m),
            Err(UnalignedPa { pa: K4, align })
        );
        let size = K4;
        assert_eq!(
            space.map(0, 0, K4, ExecPool, Block2M, m),
            Err(UnalignedSize { size, align })
        );
        let (va, align) = (0x10, K4);
        assert_eq!(
            space.map(va, 0, K4, Data, Pages, m),
            Err(UnalignedVa { va, align })
        );
        let (va, size) = (VA_LIMIT - K4, 2 * K4);
        assert_eq!(
            space.map(va, 0, size, Data, Auto, m),
            Err(VaOutOfRange { va, size })
        );
        let va = u64::MAX - 0xFFF;
        assert_eq!(
            space.map(va, 0, size, Data, Auto, m),
            Err(VaOutOfRange { va, size })
        );
        let pa = PA_LIMIT - K4;
        assert_eq!(
            space.map(0, pa, size, Data, Auto, m),
            Err(PaOutOfRange { pa, size })
        );
        assert_eq!(space.table_count(), 1);
        assert!(leaves(&space).is_empty());
    }

    #[test]
    fn never_maps_over_a_live_entry() {
        let mut space = space();
        let m = &mut NoMaintenance;
        space
            .map(0x20_5000, 0x9000, K4, Rodata, Pages, m)
            .expect("map");
        let before = leaves(&space);
        let tables = space.table_count();
        // The dry run finds the conflict at the last page: the first pages are not written, and
        // the level-3 table the range would need next door is not created.
        let va = 0x20_5000;
        assert_eq!(
            space.map(0x1F_0000, K4, 0x16000, Data, Auto, m),
            Err(AlreadyMapped { va })
        );
        assert_eq!(leaves(&space), before);
        assert_eq!(space.table_count(), tables);
        // A 2 MiB block over the level-3 table that holds that page.
        let va = 0x20_0000;
        assert_eq!(
            space.map(va, 0, M2, ExecPool, Block2M, m),
            Err(WouldReplaceTable { va })
        );
        // Auto falls back to pages under an existing level-3 table, and still finds the page.
        let conflict = AlreadyMapped { va: 0x20_5000 };
        assert_eq!(space.map(va, 0, M2, Data, Auto, m), Err(conflict));
        // A block over a block.
        let va = 0x40_0000;
        space.map(va, 0, M2, ExecPool, Block2M, m).expect("map");
        assert_eq!(
            space.map(va, 0, M2, ExecPool, Block2M, m),
            Err(AlreadyMapped { va })
        );
    }

    #[test]
    fn never_splits_a_live_block() {
        let mut space = space();
        let m = &mut NoMaintenance;
        space
            .map(0x40_0000, 0x20_0000, M2, ExecPool, Block2M, m)
            .expect("map");
        let before = leaves(&space);
        let va = 0x40_0000;
        assert_eq!(
            space.map(0x3F_F000, 0, 2 * K4, Data, Pages, m),
            Err(WouldSplitBlock { va })
        );
        assert_eq!(space.unmap(va, M2 / 2, m), Err(WouldSplitBlock { va }));
        let va = 0x50_0000;
        assert_eq!(space.unmap(va, M2 / 2, m), Err(WouldSplitBlock { va }));
        let va = 0x41_0000;
        assert_eq!(space.reserve_pages(va, K4, m), Err(WouldSplitBlock { va }));
        assert_eq!(leaves(&space), before);
    }

    #[test]
    fn unmap_invalidates_each_leaf_after_clearing_it() {
        let mut space = space();
        let (va, size) = (0x3F_F000, M2 + K4);
        space
            .map(va, va, size, Data, Auto, &mut NoMaintenance)
            .expect("map");
        // SAFETY: the space outlives the recorder.
        let m = &mut unsafe { RecordingMaintenance::observing(space.root(), LinearMap::IDENTITY) };
        space.unmap(va, size, m).expect("unmap");
        assert_eq!(
            m.events,
            vec![invalidated(va, 3), invalidated(0x40_0000, 2)]
        );
        assert!(leaves(&space).is_empty());
        assert_eq!(space.unmap(va, K4, m), Err(NotMapped { va }));
        // Remapping reuses the tables that stayed.
        let tables = space.table_count();
        space.map(va, 0, K4, Data, Pages, m).expect("map");
        assert_eq!(space.table_count(), tables);
    }

    #[test]
    fn unmap_with_a_hole_changes_nothing() {
        let mut space = space();
        let m = &mut RecordingMaintenance::new();
        space.map(0x1000, 0x1000, K4, Data, Pages, m).expect("map");
        space.map(0x3000, 0x3000, K4, Data, Pages, m).expect("map");
        m.events.clear();
        assert_eq!(
            space.unmap(0x1000, 3 * K4, m),
            Err(NotMapped { va: 0x2000 })
        );
        assert_eq!(leaves(&space).len(), 2);
        assert!(m.events.is_empty());
    }

    #[test]
    fn replace_block_is_break_before_make() {
        let mut space = space();
        let va = 0x4000_0000;
        space
            .map(va, 0x20_0000, M2, ExecPool, Block2M, &mut NoMaintenance)
            .expect("map");
        // SAFETY: the space outlives the recorder.
        let m = &mut unsafe { RecordingMaintenance::observing(space.root(), LinearMap::IDENTITY) };
        space
            .replace_block_2m(va, 0x60_0000, ExecPool, m)
            .expect("replace");
        // The walker saw the entry invalid while the TLBI ran; the new entry came after.
        assert_eq!(m.events, vec![invalidated(va, 2), TlbEvent::Publish]);
        let t = space.translate(va + 0x1234).expect("mapped");
        assert_eq!((t.pa, t.level), (0x60_1234, 2));
        assert_eq!(
            Ok(t.raw),
            El1And0::block_descriptor(BlockLevel::L2, 0x60_0000, ExecPool)
        );

        m.events.clear();
        let (pa, align) = (K4, M2);
        assert_eq!(
            space.replace_block_2m(va, pa, ExecPool, m),
            Err(UnalignedPa { pa, align })
        );
        let unmapped = va + M2;
        let refused = space.replace_block_2m(unmapped, 0, ExecPool, m);
        assert_eq!(refused, Err(NotMapped { va: unmapped }));
        space.map(0, 0, K4, Data, Pages, m).expect("map");
        m.events.clear();
        assert_eq!(
            space.replace_block_2m(0, 0, ExecPool, m),
            Err(WouldReplaceTable { va: 0 })
        );
        assert!(m.events.is_empty());
    }

    #[test]
    fn reserved_fixmap_entries_are_stable_and_invalid() {
        let mut space = space();
        let window = 0x7F_FFE0_0000 - 4 * K4; // straddles a 2 MiB boundary
        let m = &mut RecordingMaintenance::new();
        space.reserve_pages(window, 8 * K4, m).expect("reserve");
        assert_eq!(m.events, vec![TlbEvent::Publish, TlbEvent::Publish]);
        assert!(leaves(&space).is_empty());
        let slots: Vec<_> = (0..8)
            .map(|i| space.leaf_entry_ptr(window + i * K4))
            .collect();
        assert!(slots.iter().all(Option::is_some));
        // Reserving again is a no-op; the entries stay where they are.
        let tables = space.table_count();
        space.reserve_pages(window, 8 * K4, m).expect("reserve");
        assert_eq!(space.table_count(), tables);
        assert_eq!(space.leaf_entry_ptr(window), slots[0]);
        assert_eq!(space.leaf_entry_ptr(0x1000), None);

        // The poke path stores a page descriptor directly.
        let slot = space.leaf_entry_ptr(window + K4).expect("reserved");
        let raw = AddressSpace::<El1And0>::page_descriptor(0x4000_3000, PokeAlias).expect("ok");
        // SAFETY: a reserved entry of a live space, no other access to it now.
        unsafe { slot.as_ptr().write_volatile(raw) };
        let t = space.translate(window + K4 + 8).expect("poked");
        assert_eq!((t.pa, t.level, t.raw), (0x4000_3008, 3, raw));
        let va = window + K4;
        assert_eq!(
            space.reserve_pages(window, 8 * K4, m),
            Err(AlreadyMapped { va })
        );
        // SAFETY: as above.
        unsafe { slot.as_ptr().write_volatile(0) };
        assert_eq!(space.translate(window + K4), None);
    }

    #[test]
    fn out_of_memory_changes_nothing() {
        let mut space = space();
        // A page at 0x1000 needs a level-2 and a level-3 table; the second allocation fails.
        space.set_allocation_budget(1);
        assert_eq!(
            space.map(0x1000, 0, K4, Data, Pages, &mut NoMaintenance),
            Err(OutOfMemory)
        );
        assert_eq!(space.table_count(), 1);
        space.set_allocation_budget(1);
        assert_eq!(
            space.reserve_pages(0x1000, K4, &mut NoMaintenance),
            Err(OutOfMemory)
        );
        assert_eq!(space.table_count(), 1);
        assert!(leaves(&space).is_empty());
        // One table is enough for a 2 MiB block.
        space.set_allocation_budget(1);
        space
            .map(0, 0, M2, Data, Auto, &mut NoMaintenance)
            .expect("map");
        assert_eq!(space.table_count(), 2);
    }

    #[test]
    fn walker_accumulates_table_limits() {
        let mut space = space();
        space
            .map(0x20_0000, 0, K4, Data, Pages, &mut NoMaintenance)
            .expect("map");
        let pxn = TableAttributes {
            pxn_table: true,
            ..TableAttributes::NONE
        };
        let no_write = TableAttributes {
            ap_table_no_write: true,
            ..TableAttributes::NONE
        };
        for (level, attrs) in [(1, pxn), (2, no_write)] {
            let entry = space
                .entry_for_test(0x20_0000, level)
                .expect("table descriptor");
            // SAFETY: an entry of a live table of this space.
            unsafe { entry.write_volatile(entry.read_volatile() | attrs.bits()) };
        }
        let all = leaves(&space);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].table, pxn.then(no_write));
        let read_only = Permissions {
            read: true,
            write: false,
            exec: false,
        };
        assert_eq!(all[0].permissions(false), read_only);
    }

    #[test]
    fn va_ranges() {
        assert_eq!(VaRange::LOWER_39.start_level(), 1);
        assert_eq!(VaRange::LOWER_48.start_level(), 0);
        assert_eq!(VaRange::lower(40).map(VaRange::start_level), Some(0));
        assert_eq!(VaRange::lower(30), None);
        assert_eq!(VaRange::upper(49), None);
        assert_eq!(VaRange::LOWER_39.root_entries(), 512);
        assert_eq!(VaRange::lower(36).map(VaRange::root_entries), Some(64));
        assert_eq!(VaRange::lower(42).map(VaRange::root_entries), Some(8));
        assert_eq!(VaRange::UPPER_48.first(), 0xffff_0000_0000_0000);
        assert_eq!(VaRange::UPPER_39.first(), 0xffff_ff80_0000_0000);
        assert!(VaRange::UPPER_48.contains_range(u64::MAX - K4 + 1, K4));
        assert!(!VaRange::UPPER_48.contains_range(u64::MAX - K4 + 1, 2 * K4));
        assert!(!VaRange::UPPER_48.contains(0x7fff_ffff_f000));
        assert!(VaRange::LOWER_48.contains_range(0, 1 << 48));
        assert!(!VaRange::LOWER_48.contains_range(1, 1 << 48));
        assert_eq!(VaRange::LOWER_39.tcr_size_offset(), T0SZ);
        // The root index of a short upper range keeps only the bits the root translates.
        let upper36 = VaRange::upper(36).expect("valid");
        assert_eq!(upper36.index(upper36.first(), 1), 0);
        assert_eq!(upper36.index(u64::MAX, 1), 63);
    }

    #[test]
    fn reserved_blocks_take_packs_without_new_tables() {
        let mut space =
            AddressSpace::<El2>::new_in(HeapTables::IDENTITY, VaRange::LOWER_48).expect("root");
        let m = &mut RecordingMaintenance::new();
        space
            .reserve_blocks_2m(0x4000_0000, 4 * M2, m)
            .expect("reserve");
        // L1 and L2 below the L0 root; nothing mapped.
        assert_eq!(space.table_count(), 3);
        assert!(leaves(&space).is_empty());
        space
            .reserve_blocks_2m(0x4000_0000, 4 * M2, m)
            .expect("again: nothing to do");
        assert_eq!(space.table_count(), 3);
        space.set_allocation_budget(0);
        space
            .map(0x4020_0000, 0x8000_0000, M2, ExecPool, Block2M, m)
            .expect("no table needed");
        assert_eq!(
            space.reserve_blocks_2m(0x4020_0000, M2, m),
            Err(AlreadyMapped { va: 0x4020_0000 })
        );
        assert_eq!(
            space.reserve_blocks_2m(0x4000_1000, M2, m),
            Err(UnalignedVa {
                va: 0x4000_1000,
                align: M2
            })
        );
        space
            .reserve_pages(0x4060_0000, K4, &mut NoMaintenance)
            .expect_err("no budget");
        space.set_allocation_budget(1);
        space
            .reserve_pages(0x4060_0000, K4, m)
            .expect("an L3 table");
        assert_eq!(
            space.reserve_blocks_2m(0x4060_0000, M2, m),
            Err(WouldReplaceTable { va: 0x4060_0000 })
        );
        space.set_allocation_budget(1);
        assert_eq!(
            space.reserve_blocks_2m(0x80_0000_0000, M2, m),
            Err(OutOfMemory),
            "a new L2 table is refused with nothing linked"
        );
        assert!(space.leaf_entry_ptr(0x80_0000_0000).is_none());
        assert_eq!(space.table_count(), 4);
    }

    #[test]
    fn a_48_bit_space_walks_from_level_0() {
        let mut space =
            AddressSpace::<El1And0>::new_in(HeapTables::IDENTITY, VaRange::LOWER_48).expect("root");
        let m = &mut RecordingMaintenance::new();
        let high = 0x7f12_3440_0000; // beyond 39 bits
        space
            .map(high, 0x8000_0000, M2 + K4, Code, Auto, m)
            .expect("map");
        // Root (L0), then L1, L2, L3 below it.
        assert_eq!(space.table_count(), 4);
        let t = space.translate(high + 0x1234).expect("mapped");
        assert_eq!((t.pa, t.level), (0x8000_1234, 2));
        assert_eq!(space.translate(high + M2).map(|t| t.level), Some(3));
        let found: Vec<_> = leaves(&space).iter().map(|l| (l.va, l.level)).collect();
        assert_eq!(found, vec![(high, 2), (high + M2, 3)]);
        // The same low VA that a 39-bit space maps is separate from it here.
        space
            .map(0x4000_0000, 0x4000_0000, K4, Data, Pages, m)
            .expect("map");
        assert_eq!(space.table_count(), 7);
        assert_eq!(
            space.map(1 << 48, 0, K4, Data, Pages, m),
            Err(VaOutOfRange {
                va: 1 << 48,
                size: K4
            })
        );
        space.unmap(high, M2, m).expect("unmap");
        assert_eq!(space.translate(high), None);
        // A walk with a 39-bit view of a 48-bit root would read the wrong level: the range is part
        // of the root, not a constant.
        let root = space.root();
        // SAFETY: the root of a live space that outlives the call.
        let seen = unsafe { translate_root::<El1And0>(root, &LinearMap::IDENTITY, 0x4000_0000) };
        assert_eq!(seen.map(|t| t.pa), Some(0x4000_0000));
    }

    #[test]
    fn an_upper_range_maps_a_higher_half() {
        let mut space =
            AddressSpace::<El1And0>::new_in(HeapTables::IDENTITY, VaRange::UPPER_48).expect("root");
        let m = &mut NoMaintenance;
        let text = 0xffff_8000_0020_0000;
        space
            .map(text, 0x4020_0000, M2, Code, Block2M, m)
            .expect("map");
        space
            .map(u64::MAX - K4 + 1, 0x5000_0000, K4, Data, Pages, m)
            .expect("top page");
        assert_eq!(space.translate(text + 8).map(|t| t.pa), Some(0x4020_0008));
        assert_eq!(space.translate(u64::MAX).map(|t| t.pa), Some(0x5000_0fff));
        let found: Vec<_> = leaves(&space).iter().map(|l| l.va).collect();
        assert_eq!(found, vec![text, u64::MAX - K4 + 1]);
        assert_eq!(
            space.map(0x4000_0000, 0x4000_0000, K4, Data, Pages, m),
            Err(VaOutOfRange {
                va: 0x4000_0000,
                size: K4
            })
        );
        // A 36-bit upper range: a 64-entry root.
        let upper36 = VaRange::upper(36).expect("valid");
        let mut small =
            AddressSpace::<El2And0>::new_in(HeapTables::IDENTITY, upper36).expect("root");
        small
            .map(upper36.first(), 0, K4, Data, Pages, m)
            .expect("first page");
        small
            .map(u64::MAX - M2 + 1, M2, M2, Data, Block2M, m)
            .expect("last block");
        let found: Vec<_> = leaves(&small).iter().map(|l| (l.va, l.pa)).collect();
        assert_eq!(found, vec![(upper36.first(), 0), (u64::MAX - M2 + 1, M2)]);
        // EL2 without VHE has no TTBR1.
        assert_eq!(
            AddressSpace::<El2>::new_in(HeapTables::IDENTITY, VaRange::UPPER_48).map(|_| ()),
            Err(NoUpperRange)
        );
    }

    #[test]
    fn tables_reached_through_an_offset_linear_map() {
        // "Physical" addresses 256 MiB below the pointers: every descriptor must hold the PA and
        // every walk must add the offset back, or this test reads the wrong memory.
        let map = LinearMap {
            offset: 0x1000_0000,
        };
        let mut space = AddressSpace::<El2>::new_in(HeapTables::with_map(map), VaRange::LOWER_48)
            .expect("root");
        let m = &mut NoMaintenance;
        space
            .map(0x4000_0000, 0x4000_0000, M2 + K4, Data, Auto, m)
            .expect("map");
        space
            .reserve_pages(0x6000_0000, 4 * K4, m)
            .expect("reserve");
        let root = space.root_pa();
        assert_eq!(
            map.table_va(root).expose_provenance() as u64,
            root + map.offset
        );
        // The root's first entry links the level-1 table by its PA, not its pointer.
        // SAFETY: the root is a live table of `space`, read only.
        let link = unsafe { (*map.table_va(root)).0[0] };
        let next = next_table_address(link, 0).expect("a table");
        assert!(space.tables.contains(&next));
        assert_eq!(space.translate(0x4020_0000).map(|t| t.level), Some(3));
        assert!(space.leaf_entry_ptr(0x6000_3000).is_some());
        // A walk through the wrong map (identity) would read 256 MiB off; through the right one
        // it sees the same leaves as the space.
        let mut walked = Vec::new();
        // SAFETY: the root of a live space that outlives the call.
        unsafe { walk_root::<El2>(space.root(), &map, |leaf| walked.push(*leaf)) };
        assert_eq!(walked, leaves(&space));
    }

    #[test]
    fn an_adopted_root_is_mapped_into_and_not_freed() {
        let mut kernel =
            AddressSpace::<El1And0>::new_in(HeapTables::IDENTITY, VaRange::LOWER_48).expect("root");
        let m = &mut NoMaintenance;
        kernel
            .map(0x4000_0000, 0x4000_0000, M2, Code, Block2M, m)
            .expect("text");
        {
            // SAFETY: `kernel` owns the root and outlives `manager`; `manager` only maps a window
            // the kernel leaves alone.
            let mut manager = unsafe {
                AddressSpace::<El1And0>::adopt(
                    kernel.root_pa(),
                    VaRange::LOWER_48,
                    HeapTables::IDENTITY,
                )
            }
            .expect("adopt");
            assert_eq!(manager.table_count(), 0);
            manager
                .map(0x4800_0000, 0x9000_0000, M2, ExecPool, Block2M, m)
                .expect("pack");
            manager.reserve_pages(0x4a00_0000, K4, m).expect("fixmap");
            assert_eq!(manager.table_count(), 1);
            assert_eq!(
                manager.map(0x4000_0000, 0, M2, Data, Block2M, m),
                Err(AlreadyMapped { va: 0x4000_0000 })
            );
        }
        // Dropped, and what it added is still there (linked into the kernel's tables).
        assert_eq!(
            kernel.translate(0x4800_0000).map(|t| t.pa),
            Some(0x9000_0000)
        );
        assert!(kernel.leaf_entry_ptr(0x4a00_0000).is_some());
        // SAFETY: as above.
        let misaligned = unsafe {
            AddressSpace::<El1And0>::adopt(
                kernel.root_pa() + 8,
                VaRange::LOWER_48,
                HeapTables::IDENTITY,
            )
        };
        assert!(matches!(misaligned, Err(TableNotAddressable { .. })));
    }

    #[test]
    fn el2_tables_hold_el2_encodings() {
        let mut space = AddressSpace::<El2>::new().expect("root");
        let va = 0x4000_0000;
        space
            .map(va, va, M2, Code, Auto, &mut NoMaintenance)
            .expect("map");
        let t = space.translate(va).expect("mapped");
        assert_eq!((t.raw >> 6) & 0b11, 0b11, "EL2 read-only is AP = 0b11");
        assert_eq!(t.raw & (3 << 53), 0, "EL2 executable: XN clear, PXN RES0");
        let read_exec = Permissions {
            read: true,
            write: false,
            exec: true,
        };
        assert_eq!(leaves(&space)[0].permissions(false), read_exec);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            page: u64,
            pages: u64,
            frame: u64,
            granularity: Granularity,
        },
        Unmap {
            page: u64,
            pages: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        // A 16 MiB window (4096 pages) across a 1 GiB boundary; starts and sizes are often whole
        // 2 MiB blocks, so blocks, splits and whole-leaf unmaps all occur.
        let page = || prop_oneof![(0u64..8).prop_map(|block| block * 512), 0u64..4096];
        let pages = || prop_oneof![(1u64..3).prop_map(|blocks| blocks * 512), 1u64..600];
        let granularity = prop_oneof![Just(Auto), Just(Pages), Just(Block2M)];
        let map =
            (page(), pages(), page(), granularity).prop_map(|(page, pages, frame, granularity)| {
                Op::Map {
                    page,
                    pages,
                    frame,
                    granularity,
                }
            });
        let unmap = (page(), pages()).prop_map(|(page, pages)| Op::Unmap { page, pages });
        prop_oneof![3 => map, 1 => unmap]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a model: a refused operation changes no leaf, adds no table and asks for no
        /// maintenance; an accepted one maps (or unmaps) exactly its range, with whole leaves.
        #[test]
        fn operations_are_all_or_nothing(ops in proptest::collection::vec(op(), 1..24)) {
            let base = (1 << 30) - 4 * M2;
            let mut space = space();
            for op in ops {
                let before = leaves(&space);
                let tables = space.table_count();
                let m = &mut RecordingMaintenance::new();
                let (va, size, result) = match op {
                    Op::Map { page, pages, frame, granularity } => {
                        let (va, pa, size) = (base + page * K4, frame * K4, pages * K4);
                        let result = space.map(va, pa, size, Data, granularity, m);
                        (va, size, result.map(|()| Some(pa)))
                    }
                    Op::Unmap { page, pages } => {
                        let (va, size) = (base + page * K4, pages * K4);
                        (va, size, space.unmap(va, size, m).map(|()| None))
                    }
                };
                match result {
                    Err(_) => {
                        prop_assert_eq!(leaves(&space), before);
                        prop_assert_eq!(space.table_count(), tables);
                        prop_assert!(m.events.is_empty());
                    }
                    Ok(mapped) => {
                        for at in (va..va + size).step_by(K4 as usize) {
                            let expected = mapped.map(|pa| pa + (at - va));
                            prop_assert_eq!(space.translate(at).map(|t| t.pa), expected);
                        }
                        for leaf in leaves(&space) {
                            prop_assert_eq!(leaf.va % leaf.size, 0);
                            prop_assert_eq!(leaf.pa % leaf.size, 0);
                        }
                    }
                }
            }
        }
    }

    // --- per-CPU views (add_private_root) ---

    const G1: u64 = 1 << 30;
    const FIXMAP: u64 = 511 * G1;

    /// A kernel-like space: a page of code, the pool's level-2 entries, two CPU views of the
    /// fixmap's GiB, each with its poke slot's level-3 table.
    fn space_with_views() -> (AddressSpace<El1And0>, Vec<PrivateRoot>) {
        let mut space = space();
        let m = &mut NoMaintenance;
        space
            .map(0x4000_0000, 0x4000_0000, K4, Code, Pages, m)
            .unwrap();
        space.reserve_blocks_2m(0x3c00_0000, 4 * M2, m).unwrap();
        let views: Vec<PrivateRoot> = (0..2)
            .map(|_| {
                let view = space.add_private_root(FIXMAP).unwrap();
                space
                    .in_private_root(view, FIXMAP, 4 * M2, |t| {
                        t.reserve_pages(FIXMAP, K4, m)?;
                        t.reserve_blocks_2m(FIXMAP + M2, M2, m)
                    })
                    .unwrap();
                view
            })
            .collect();
        (space, views)
    }

    fn view_leaves(space: &AddressSpace<El1And0>, view: PrivateRoot) -> Vec<Leaf<El1And0>> {
        let mut out = Vec::new();
        // SAFETY: the view's root belongs to `space`.
        unsafe {
            walk_root(space.private_table_root(view), space.memory(), |l| {
                out.push(*l)
            })
        };
        out
    }

    #[test]
    fn a_view_shares_everything_but_its_own_entry() {
        let (mut space, views) = space_with_views();
        let m = &mut NoMaintenance;
        assert_ne!(views[0].pa(), views[1].pa());
        for &view in &views {
            assert!(space.diverging_root_entries(view).is_empty());
            assert_eq!(view_leaves(&space, view), leaves(&space));
        }
        // A page mapped in one view's fixmap is in that view only.
        let pa = 0x5000_0000;
        space
            .in_private_root(views[0], FIXMAP, K4, |t| {
                t.map(FIXMAP, pa, K4, PokeAlias, Pages, m)
            })
            .unwrap();
        let mine = view_leaves(&space, views[0]);
        assert_eq!(mine.len(), leaves(&space).len() + 1);
        assert!(mine.iter().any(|l| l.va == FIXMAP && l.pa == pa));
        assert!(!view_leaves(&space, views[1]).iter().any(|l| l.va == FIXMAP));
        assert!(
            space.translate(FIXMAP).is_none(),
            "not in the kernel's root"
        );
        // SAFETY: the roots belong to `space`.
        let (own0, own1, main) = unsafe {
            (
                root_entry(space.private_table_root(views[0]), space.memory(), FIXMAP),
                root_entry(space.private_table_root(views[1]), space.memory(), FIXMAP),
                root_entry(space.root(), space.memory(), FIXMAP),
            )
        };
        assert!(own0 != 0 && own1 != 0 && own0 != own1 && main == 0);
        // walk_root_entry sees the view's own leaves only.
        let mut own = Vec::new();
        // SAFETY: as above.
        unsafe {
            walk_root_entry::<El1And0>(
                space.private_table_root(views[0]),
                space.memory(),
                FIXMAP,
                |l| own.push(l.va),
            )
        };
        assert_eq!(own, vec![FIXMAP]);
        // Its leaf entry is the view's, not the kernel's.
        let entry = space
            .in_private_root(views[1], FIXMAP, K4, |t| {
                t.leaf_entry_ptr(FIXMAP).ok_or(NotMapped { va: FIXMAP })
            })
            .unwrap();
        assert_eq!(space.leaf_entry_ptr(FIXMAP), None);
        // SAFETY: a live, invalid level-3 entry of view 1.
        assert_eq!(unsafe { entry.as_ptr().read() }, 0);
    }

    #[test]
    fn a_new_root_entry_reaches_every_view() {
        let (mut space, views) = space_with_views();
        let m = &mut NoMaintenance;
        // A GiB the kernel had not used: a new level-1 entry, linked in every root.
        space.map(5 * G1, 0x9000_0000, K4, Data, Pages, m).unwrap();
        for &view in &views {
            assert!(space.diverging_root_entries(view).is_empty());
            assert!(view_leaves(&space, view).iter().any(|l| l.va == 5 * G1));
        }
    }

    #[test]
    fn the_private_entry_is_refused_to_the_shared_tables_and_views_stay_inside_it() {
        let (mut space, views) = space_with_views();
        let m = &mut NoMaintenance;
        let before = leaves(&space);
        let tables = space.table_count();
        let va = FIXMAP + 4 * M2;
        assert_eq!(
            space.map(va, 0x9000_0000, K4, Data, Pages, m),
            Err(PrivateToEachView { va })
        );
        assert_eq!(
            space.reserve_pages(va, K4, m),
            Err(PrivateToEachView { va })
        );
        // A view may not write the shared tables, nor reach outside its entry.
        assert_eq!(
            space.in_private_root(views[0], 0x4000_0000, K4, |_| Ok(())),
            Err(PrivateToEachView { va: 0x4000_0000 })
        );
        assert_eq!(
            space.in_private_root(views[0], FIXMAP, 2 * G1, |_| Ok(())),
            Err(PrivateToEachView { va: FIXMAP })
        );
        // Only one private entry: a view of another GiB is refused, as is a GiB mapped already.
        assert_eq!(
            space.add_private_root(3 * G1),
            Err(PrivateToEachView { va: 3 * G1 })
        );
        let mut other = self::space();
        other
            .map(0x4000_0000, 0x4000_0000, K4, Code, Pages, m)
            .unwrap();
        assert_eq!(
            other.add_private_root(0x4000_0000),
            Err(AlreadyMapped { va: G1 })
        );
        // A view of another space is refused.
        let foreign = other.add_private_root(FIXMAP).unwrap();
        assert_eq!(
            space.in_private_root(foreign, FIXMAP, K4, |_| Ok(())),
            Err(PrivateToEachView { va: FIXMAP })
        );
        assert_eq!(leaves(&space), before);
        assert_eq!(space.table_count(), tables);
    }

    #[test]
    fn set_root_entry_is_break_before_make_in_every_root() {
        let (mut space, views) = space_with_views();
        let at = 0x4000_0000;
        // SAFETY: the root belongs to `space`.
        let linked = unsafe { root_entry(space.root(), space.memory(), at) };
        let mut recorder = RecordingMaintenance::new();
        // SAFETY: (test) the entry is put back as it was, so every table stays reachable.
        unsafe { space.set_root_entry(at, linked, &mut recorder) }.unwrap();
        assert_eq!(
            recorder.events,
            vec![TlbEvent::InvalidateAll, TlbEvent::Publish]
        );
        for &view in &views {
            assert!(space.diverging_root_entries(view).is_empty());
        }
        // Into an invalid entry: no invalidation.
        let mut recorder = RecordingMaintenance::new();
        // SAFETY: (test) an invalid entry written over an invalid one.
        unsafe { space.set_root_entry(7 * G1, 0, &mut recorder) }.unwrap();
        assert_eq!(recorder.events, vec![TlbEvent::Publish]);
        // Refused: the views' own entry, and outside the range.
        // SAFETY: (test) refused before anything is written.
        unsafe {
            assert_eq!(
                space.set_root_entry(FIXMAP, 0, &mut NoMaintenance),
                Err(PrivateToEachView { va: FIXMAP })
            );
            assert!(
                space
                    .set_root_entry(1 << 40, 0, &mut NoMaintenance)
                    .is_err()
            );
        }
        // A root written behind the space's back is found.
        // SAFETY: (test) view 1's root table, owned by `space`; one entry made to differ.
        unsafe {
            let root = Table::at(space.memory(), views[1].pa());
            root.write(9, 0x1234_5003);
            assert_eq!(space.diverging_root_entries(views[1]), vec![9]);
            root.write(9, 0);
        }
        assert!(space.diverging_root_entries(views[1]).is_empty());
    }
}
