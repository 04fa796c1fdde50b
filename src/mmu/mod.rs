//! Stage-1 translation tables for the exec-memory manager: descriptors, tables, audit.
//!
//! Portable code: no system registers and no barriers here. The TLB and barrier instructions are
//! behind [`TlbMaintenance`], implemented by the kernel (`arch::aarch64`) and, for the host
//! tests, by [`RecordingMaintenance`].
//!
//! # Design
//!
//! - **2 MiB blocks for exec packs.** Each exec pack is one level-2 block descriptor, mapped
//!   read-only + executable ([`Role::ExecPool`]): all code in a pack costs one TLB entry, and the
//!   block's attributes are a single 64-bit word that the audit can check.
//! - **Never split a live block.** Changing a live block into a table of pages (or any change of
//!   output address or size) requires break-before-make (Arm ARM D8.14): write invalid, TLBI,
//!   then write the new entry, with a window in which the range faults. Splitting without it
//!   needs FEAT_BBM level 2 and can still raise TLB-conflict aborts. So [`AddressSpace::map`] and
//!   [`AddressSpace::unmap`] refuse with [`MapError::WouldSplitBlock`] instead, and the only
//!   sequence that replaces a live leaf, [`AddressSpace::replace_block_2m`], is break-before-make.
//! - **W^X.** No [`Role`] is both writable and executable, and the tables are only written with
//!   role attributes, so no call site can build a W+X mapping. [`audit`] then checks what the
//!   hardware would actually walk, including the hierarchical table bits (D8.4) and WXN.
//! - **Fixmap text poke.** Exec memory is written through a single 4 KiB writable alias in a
//!   reserved fixmap window ([`Role::PokeAlias`]): [`AddressSpace::reserve_pages`] creates its
//!   level-3 table once, and the poke path sets and clears the entry through
//!   [`AddressSpace::leaf_entry_ptr`] with a TLBI after each clear. Outside a poke the window is
//!   empty, and the audit reports any slot left valid.
//!
//! Addresses: a [`VaRange`] of 31 to 48 bits in the TTBR0 or TTBR1 half (the demo kernel's is 39
//! bits of TTBR0, [`T0SZ`] = 25, starting at level 1), 48-bit output addresses; tables are reached
//! through the kernel's map of table memory ([`TableAccess`]: identity in the demo kernel, a
//! linear map at an offset in a higher-half kernel).

pub mod audit;
pub mod control;
pub mod descriptor;
pub mod table;

use core::fmt;

pub use audit::{AuditContext, PackFrame, Rule, Violation, audit_root};
pub use descriptor::{
    BlockLevel, Descriptor, El1And0, El2, El2And0, LeafAttributes, MAIR_EL1_VALUE, MemoryType,
    Permissions, Regime, Role, Shareability, TableAttributes,
};
pub use table::{
    AddressSpace, Granularity, HeapTables, Leaf, LinearMap, NoMaintenance, PageTable, PrivateRoot,
    RecordingMaintenance, T0SZ, TableAccess, TableMemory, TableRoot, TlbEvent, TlbMaintenance,
    Translation, VA_BITS, VA_LIMIT, VaRange, root_entry, translate_root, walk_root,
    walk_root_entry,
};

/// Size of a translation granule and of a level-3 page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a level-2 block: one exec pack.
pub const BLOCK_SIZE_2M: u64 = 2 << 20;
/// Size of a level-1 block.
pub const BLOCK_SIZE_1G: u64 = 1 << 30;
/// Output (physical) address bits of a descriptor: \[47:12\].
pub const PA_BITS: u64 = 48;
/// One past the highest physical address a descriptor can hold.
pub const PA_LIMIT: u64 = 1 << PA_BITS;

/// Why a table operation was refused. Every refusal leaves the mappings as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The size is zero.
    ZeroSize,
    /// The virtual address is not a multiple of `align`.
    UnalignedVa {
        /// The address given.
        va: u64,
        /// The alignment required.
        align: u64,
    },
    /// The physical address is not a multiple of `align`.
    UnalignedPa {
        /// The address given.
        pa: u64,
        /// The alignment required.
        align: u64,
    },
    /// The size is not a multiple of `align`.
    UnalignedSize {
        /// The size given.
        size: u64,
        /// The alignment required.
        align: u64,
    },
    /// `va..va + size` leaves the address space's [`VaRange`].
    VaOutOfRange {
        /// Start of the range.
        va: u64,
        /// Its size.
        size: u64,
    },
    /// `pa..pa + size` leaves the 48-bit output address space.
    PaOutOfRange {
        /// Start of the range.
        pa: u64,
        /// Its size.
        size: u64,
    },
    /// A target entry is already valid: mapping over a live entry is never done.
    AlreadyMapped {
        /// First virtual address found mapped.
        va: u64,
    },
    /// The operation would split (or partly remove) a live block, which needs break-before-make
    /// (Arm ARM D8.14).
    WouldSplitBlock {
        /// The virtual address inside the block.
        va: u64,
    },
    /// A 2 MiB block would replace a live level-3 table, which needs break-before-make and
    /// freeing a table the walker may have cached (Arm ARM D8.14).
    WouldReplaceTable {
        /// The 2 MiB-aligned virtual address of the table's range.
        va: u64,
    },
    /// Nothing is mapped there.
    NotMapped {
        /// First virtual address found unmapped.
        va: u64,
    },
    /// The allocator could not provide a translation table.
    OutOfMemory,
    /// An upper (TTBR1) VA range was asked for in a regime that has only TTBR0 (EL2 without VHE).
    NoUpperRange,
    /// The VA is under the root entry that each CPU's view has to itself
    /// ([`AddressSpace::add_private_root`]): the shared tables may not map there, a view may not
    /// map outside it, and its entry is not rewritten as a shared one.
    PrivateToEachView {
        /// The address.
        va: u64,
    },
    /// The allocator returned a table at an address a descriptor cannot hold (at or above
    /// [`PA_LIMIT`]); it was given back.
    TableNotAddressable {
        /// The table's address.
        pa: u64,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSize => write!(f, "size is zero"),
            Self::UnalignedVa { va, align } => write!(f, "VA {va:#x} not aligned to {align:#x}"),
            Self::UnalignedPa { pa, align } => write!(f, "PA {pa:#x} not aligned to {align:#x}"),
            Self::UnalignedSize { size, align } => {
                write!(f, "size {size:#x} not a multiple of {align:#x}")
            }
            Self::VaOutOfRange { va, size } => {
                write!(f, "VA range {va:#x}+{size:#x} outside the address space")
            }
            Self::PaOutOfRange { pa, size } => {
                write!(
                    f,
                    "PA range {pa:#x}+{size:#x} beyond the {PA_BITS}-bit PA space"
                )
            }
            Self::AlreadyMapped { va } => write!(f, "VA {va:#x} is already mapped"),
            Self::WouldSplitBlock { va } => {
                write!(
                    f,
                    "VA {va:#x} is inside a live block (splitting needs break-before-make)"
                )
            }
            Self::WouldReplaceTable { va } => {
                write!(
                    f,
                    "VA {va:#x} is covered by a live page table, not a 2 MiB block"
                )
            }
            Self::NotMapped { va } => write!(f, "VA {va:#x} is not mapped"),
            Self::OutOfMemory => write!(f, "out of memory for a translation table"),
            Self::NoUpperRange => write!(f, "this translation regime has no upper (TTBR1) range"),
            Self::PrivateToEachView { va } => {
                write!(
                    f,
                    "VA {va:#x} is under the root entry private to each CPU's view"
                )
            }
            Self::TableNotAddressable { pa } => {
                write!(f, "table at {pa:#x} is beyond the {PA_BITS}-bit PA space")
            }
        }
    }
}

impl core::error::Error for MapError {}
