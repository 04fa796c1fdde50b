//! VMSAv8-64 stage-1 translation table descriptors, 4 KiB granule (Arm ARM D8.3, "Translation
//! table descriptor formats").
//!
//! The bit layout is written once, as tock-registers bitfields with named values; everything else
//! goes through [`Role`] (what a mapping is for) and [`Regime`] (which translation regime the table
//! belongs to). No call site outside this file assembles attribute bits.
//!
//! The regime is a type because the same role encodes differently per regime: read-only is
//! `AP = 0b10` in EL1&0 but `AP = 0b11` in EL2 (AP\[1\] is RES1 there), and bit 54 is UXN in EL1&0
//! but XN (the only execute-never bit) in EL2, where PXN is RES0. [`LeafAttributes`] and
//! [`Descriptor`] carry their regime as a type parameter, so an EL1&0 encoding cannot be placed in
//! an EL2 table:
//!
//! ```compile_fail,E0308
//! use execmem::mmu::{Descriptor, El1And0, El2, Regime, Role};
//! let el1_attrs = El1And0::role_attributes(Role::Data);
//! // error[E0308]: expected `LeafAttributes<El2>`, found `LeafAttributes<El1And0>`
//! let _ = Descriptor::<El2>::Page { oa: 0x4000_0000, attrs: el1_attrs };
//! ```

use core::fmt;
use core::marker::PhantomData;

use tock_registers::fields::{Field, FieldValue};
use tock_registers::{LocalRegisterCopy, RegisterLongName, register_bitfields};

use super::{BLOCK_SIZE_1G, BLOCK_SIZE_2M, MapError, PA_LIMIT, PAGE_SIZE};

register_bitfields! {u64,
    /// Table descriptor, levels 0 to 2 (Arm ARM D8.3). The `*Table` bits are hierarchical
    /// limits: they remove permissions from everything the table maps (D8.4, hierarchical
    /// permissions).
    STAGE1_TABLE [
        /// Next-level table in the Non-secure PA space (ignored in Non-secure state).
        NSTable OFFSET(63) NUMBITS(1) [],
        /// APTable\[1\] removes write access, APTable\[0\] removes EL0 access, below this entry.
        APTable OFFSET(61) NUMBITS(2) [
            NoEffect = 0b00,
            NoEl0 = 0b01,
            NoWrite = 0b10,
            NoWriteNoEl0 = 0b11
        ],
        /// UXNTable in EL1&0, XNTable in EL2: execute-never below this entry.
        XNTable OFFSET(60) NUMBITS(1) [],
        /// Privileged execute-never below this entry (RES0 in EL2 without VHE).
        PXNTable OFFSET(59) NUMBITS(1) [],
        /// Physical address of the next-level table, bits \[47:12\].
        NEXT_TABLE_ADDR OFFSET(12) NUMBITS(36) [],
        TYPE OFFSET(1) NUMBITS(1) [
            Block = 0,
            Table = 1
        ],
        VALID OFFSET(0) NUMBITS(1) [
            False = 0,
            True = 1
        ]
    ],

    /// Block (levels 1, 2) and page (level 3) descriptor: the fields both regimes share.
    STAGE1_LEAF [
        /// Hint that this entry is one of 16 adjacent entries with the same attributes.
        CONTIGUOUS OFFSET(52) NUMBITS(1) [],
        /// Dirty bit modifier (hardware dirty state, FEAT_HAFDBS); never set here.
        DBM OFFSET(51) NUMBITS(1) [],
        /// Output address of a level-1 block, bits \[47:30\].
        OA_L1_BLOCK OFFSET(30) NUMBITS(18) [],
        /// Output address of a level-2 block, bits \[47:21\].
        OA_L2_BLOCK OFFSET(21) NUMBITS(27) [],
        /// Output address of a level-3 page, bits \[47:12\].
        OA_L3_PAGE OFFSET(12) NUMBITS(36) [],
        /// Access flag: with AF = 0 the first access faults (no hardware AF update is enabled).
        AF OFFSET(10) NUMBITS(1) [],
        SH OFFSET(8) NUMBITS(2) [
            NonShareable = 0b00,
            OuterShareable = 0b10,
            InnerShareable = 0b11
        ],
        NS OFFSET(5) NUMBITS(1) [],
        /// Index into MAIR_ELx; the values follow this crate's MAIR layout ([`MAIR_EL1_VALUE`]).
        ATTR_INDX OFFSET(2) NUMBITS(3) [
            DeviceNGnRE = 0,
            NormalWriteBack = 1,
            NormalNonCacheable = 2
        ],
        /// Level 1 and 2: 0 = block. Level 3: must be 1 (page); 0 is reserved and faults.
        TYPE OFFSET(1) NUMBITS(1) [
            Block = 0,
            Page = 1
        ],
        VALID OFFSET(0) NUMBITS(1) [
            False = 0,
            True = 1
        ]
    ],

    /// Leaf fields with an EL1&0-specific meaning (two VA ranges, EL0 and EL1 users).
    EL1_LEAF [
        /// Unprivileged (EL0) execute-never.
        UXN OFFSET(54) NUMBITS(1) [],
        /// Privileged (EL1) execute-never.
        PXN OFFSET(53) NUMBITS(1) [],
        /// Not global: the TLB entry is tagged with the current ASID.
        NG OFFSET(11) NUMBITS(1) [
            Global = 0,
            NotGlobal = 1
        ],
        /// AP\[2:1\]. With 0b01 EL0 may write, which makes the page PXN for EL1 (D8.4).
        AP OFFSET(6) NUMBITS(2) [
            RW_EL1 = 0b00,
            RW_EL1_EL0 = 0b01,
            RO_EL1 = 0b10,
            RO_EL1_EL0 = 0b11
        ]
    ],

    /// Leaf fields with an EL2-specific meaning (EL2 without VHE: one VA range, no EL0 user).
    EL2_LEAF [
        /// Execute-never. PXN (bit 53) is RES0 in this regime.
        XN OFFSET(54) NUMBITS(1) [],
        /// AP\[2:1\] with AP\[1\] RES1: only AP\[2\] (read-only) is a choice.
        AP OFFSET(6) NUMBITS(2) [
            RW = 0b01,
            RO = 0b11
        ]
    ]
}

/// Lower (\[11:2\]) and upper (\[63:50\]) attributes of a block or page descriptor.
const LEAF_ATTRIBUTE_MASK: u64 = 0xFFFC_0000_0000_0FFC;

fn raw_value<R: RegisterLongName>(value: FieldValue<u64, R>) -> u64 {
    value.value
}

/// The address bits `field` holds in `raw`, left in place: address fields hold the address bits
/// at their own positions.
fn address_in<R: RegisterLongName>(raw: u64, field: Field<u64, R>) -> u64 {
    raw & (field.mask << field.shift)
}

/// `address` in `field` (the bits below the field are dropped: callers check alignment first).
fn address_field<R: RegisterLongName>(field: Field<u64, R>, address: u64) -> FieldValue<u64, R> {
    field.val(address >> field.shift)
}

// ---------------------------------------------------------------------------------------------
// Memory types and MAIR
// ---------------------------------------------------------------------------------------------

/// The memory types of this crate's MAIR layout; the discriminant is the AttrIndx value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// Device-nGnRE: MMIO (no gathering, no reordering, early write acknowledgement).
    DeviceNGnRE = 0,
    /// Normal memory, inner and outer write-back, read- and write-allocate.
    NormalWriteBack = 1,
    /// Normal memory, inner and outer non-cacheable.
    NormalNonCacheable = 2,
}

impl MemoryType {
    /// Every memory type, in AttrIndx order.
    pub const ALL: [MemoryType; 3] = [
        Self::DeviceNGnRE,
        Self::NormalWriteBack,
        Self::NormalNonCacheable,
    ];

    /// The descriptor's AttrIndx for this type.
    pub const fn attr_index(self) -> u64 {
        self as u64
    }

    /// The MAIR attribute byte for this type (Arm ARM, MAIR_EL1 register description).
    pub const fn mair_attribute(self) -> u8 {
        match self {
            Self::DeviceNGnRE => 0x04,
            Self::NormalWriteBack => 0xFF,
            Self::NormalNonCacheable => 0x44,
        }
    }

    fn from_attr_index(index: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.attr_index() == index)
    }
}

/// MAIR_EL1 (and MAIR_EL2: the layout is the same) for [`MemoryType`]: index 0 Device-nGnRE
/// (0x04), index 1 Normal write-back RA/WA (0xFF), index 2 Normal non-cacheable (0x44).
pub const MAIR_EL1_VALUE: u64 = {
    let mut value = 0;
    let mut i = 0;
    while i < MemoryType::ALL.len() {
        let t = MemoryType::ALL[i];
        value |= (t.mair_attribute() as u64) << (8 * t.attr_index());
        i += 1;
    }
    value
};

/// Shareability domain of a Normal-memory mapping (ignored for Device memory, which is always
/// treated as Outer Shareable: Arm ARM B2.7, Device memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shareability {
    /// SH = 0b00.
    NonShareable,
    /// SH = 0b10.
    OuterShareable,
    /// SH = 0b11.
    InnerShareable,
    /// SH = 0b01, reserved (CONSTRAINED UNPREDICTABLE).
    Reserved,
}

// ---------------------------------------------------------------------------------------------
// Roles, permissions, regimes
// ---------------------------------------------------------------------------------------------

/// What a mapping is for. Each regime turns a role into attribute bits; callers never do.
///
/// Every role is AF = 1 (no access-flag fault on first use) and global (nG = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Kernel text: Normal WB, inner shareable, read-only, privileged-executable, unprivileged
    /// execute-never.
    Code,
    /// Read-only data: Normal WB, read-only, execute-never.
    Rodata,
    /// Read-write data: Normal WB, read-write, execute-never.
    Data,
    /// MMIO: Device-nGnRE, read-write, execute-never. SH is encoded Outer Shareable, which is what
    /// the hardware uses for Device memory whatever the bits say (Arm ARM B2.7, Device memory).
    Device,
    /// A 2 MiB exec pack: the same bits as [`Role::Code`], a distinct role so the audit and the
    /// reader can tell pack blocks from kernel text.
    ExecPool,
    /// The text-poke fixmap alias: Normal WB, read-write, execute-never. The only writable view
    /// of exec-pool memory, and only while a poke is in progress.
    PokeAlias,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Self::Code,
        Self::Rodata,
        Self::Data,
        Self::Device,
        Self::ExecPool,
        Self::PokeAlias,
    ];

    fn memory_type(self) -> MemoryType {
        match self {
            Self::Device => MemoryType::DeviceNGnRE,
            _ => MemoryType::NormalWriteBack,
        }
    }

    fn writable(self) -> bool {
        matches!(self, Self::Data | Self::Device | Self::PokeAlias)
    }

    fn privileged_exec(self) -> bool {
        matches!(self, Self::Code | Self::ExecPool)
    }

    /// The fields common to both regimes: valid-independent, type-independent attributes.
    fn common_attributes(self) -> u64 {
        let memory = match self.memory_type() {
            MemoryType::DeviceNGnRE => {
                STAGE1_LEAF::ATTR_INDX::DeviceNGnRE + STAGE1_LEAF::SH::OuterShareable
            }
            MemoryType::NormalWriteBack => {
                STAGE1_LEAF::ATTR_INDX::NormalWriteBack + STAGE1_LEAF::SH::InnerShareable
            }
            MemoryType::NormalNonCacheable => {
                STAGE1_LEAF::ATTR_INDX::NormalNonCacheable + STAGE1_LEAF::SH::InnerShareable
            }
        };
        raw_value(memory + STAGE1_LEAF::AF::SET)
    }
}

/// Effective access permissions of a mapping at the privileged level of its regime (EL1 for
/// [`El1And0`], EL2 for [`El2`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Loads are permitted.
    pub read: bool,
    /// Stores are permitted.
    pub write: bool,
    /// Instruction fetches are permitted.
    pub exec: bool,
}

impl fmt::Display for Permissions {
    /// `RW X`, `RO NX`, or `-- NX` for no access.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match (self.read, self.write) {
            (_, true) => "RW",
            (true, false) => "RO",
            (false, false) => "--",
        };
        let exec = if self.exec { "X" } else { "NX" };
        write!(f, "{access} {exec}")
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::El1And0 {}
    impl Sealed for super::El2 {}
    impl Sealed for super::El2And0 {}
}

/// A stage-1 translation regime: how roles become descriptor bits and how descriptor bits become
/// permissions. Sealed: the three implementations below are the regimes this crate runs in.
pub trait Regime:
    sealed::Sealed + Copy + Eq + fmt::Debug + Default + Send + Sync + 'static
{
    /// Name for messages.
    const NAME: &'static str;

    /// Whether the regime has a TTBR1 (upper) VA range: EL1&0 and EL2&0 do, EL2 without VHE not.
    const HAS_UPPER_RANGE: bool;

    /// The leaf attribute bits (AttrIndx, SH, AF, AP, nG, execute-never) of `role`.
    fn role_attributes(role: Role) -> LeafAttributes<Self>;

    /// Effective privileged permissions of a valid leaf with `leaf` attributes, under the table
    /// descriptors' accumulated hierarchical bits `table` (Arm ARM D8.4, hierarchical
    /// permissions) and SCTLR_ELx.WXN (D8.4: with WXN = 1 every writable mapping is
    /// execute-never).
    fn permissions(leaf: LeafAttributes<Self>, table: TableAttributes, wxn: bool) -> Permissions;

    /// The raw level-3 page descriptor mapping the 4 KiB frame at `pa` as `role`: the value the
    /// text-poke path stores into a reserved fixmap entry.
    fn page_descriptor(pa: u64, role: Role) -> Result<u64, MapError> {
        Descriptor::<Self>::Page {
            oa: pa,
            attrs: Self::role_attributes(role),
        }
        .encode()
    }

    /// The raw block descriptor mapping `level`'s block size at `pa` as `role`.
    fn block_descriptor(level: BlockLevel, pa: u64, role: Role) -> Result<u64, MapError> {
        Descriptor::<Self>::Block {
            level,
            oa: pa,
            attrs: Self::role_attributes(role),
        }
        .encode()
    }
}

/// The EL1&0 translation regime (TTBR0_EL1/TTBR1_EL1): privileged EL1, unprivileged EL0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El1And0;

/// The EL2 translation regime without VHE (HCR_EL2.E2H = 0, TTBR0_EL2 only), as on Cortex-A72.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2;

/// The EL2&0 translation regime of VHE (FEAT_VHE, HCR_EL2.E2H = 1; RES1 on some cores): the EL1&0
/// descriptor format (PXN and UXN, AP\[1\] for EL0, nG) with TTBR0_EL2 and TTBR1_EL2, as a
/// hypervisor like Linux/KVM in VHE mode runs its host kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2And0;

impl Regime for El1And0 {
    const NAME: &'static str = "EL1&0";
    const HAS_UPPER_RANGE: bool = true;

    fn role_attributes(role: Role) -> LeafAttributes<Self> {
        el1_format_attributes(role)
    }

    fn permissions(leaf: LeafAttributes<Self>, table: TableAttributes, wxn: bool) -> Permissions {
        el1_format_permissions(leaf.bits, table, wxn)
    }
}

impl Regime for El2And0 {
    const NAME: &'static str = "EL2&0";
    const HAS_UPPER_RANGE: bool = true;

    fn role_attributes(role: Role) -> LeafAttributes<Self> {
        el1_format_attributes(role)
    }

    fn permissions(leaf: LeafAttributes<Self>, table: TableAttributes, wxn: bool) -> Permissions {
        el1_format_permissions(leaf.bits, table, wxn)
    }
}

/// Leaf attributes in the two-privilege-level format of EL1&0 and EL2&0 (Arm ARM D8.3).
fn el1_format_attributes<R: Regime>(role: Role) -> LeafAttributes<R> {
    {
        let ap = if role.writable() {
            EL1_LEAF::AP::RW_EL1
        } else {
            EL1_LEAF::AP::RO_EL1
        };
        let pxn = if role.privileged_exec() {
            EL1_LEAF::PXN::CLEAR
        } else {
            EL1_LEAF::PXN::SET
        };
        let specific = ap + pxn + EL1_LEAF::UXN::SET + EL1_LEAF::NG::Global;
        LeafAttributes::from_descriptor(role.common_attributes() | raw_value(specific))
    }
}

/// Privileged permissions in the EL1&0 / EL2&0 format.
fn el1_format_permissions(leaf: u64, table: TableAttributes, wxn: bool) -> Permissions {
    {
        let bits = LocalRegisterCopy::<u64, EL1_LEAF::Register>::new(leaf);
        let ap = bits.read_as_enum(EL1_LEAF::AP);
        let leaf_writable = matches!(
            ap,
            Some(EL1_LEAF::AP::Value::RW_EL1 | EL1_LEAF::AP::Value::RW_EL1_EL0)
        );
        let leaf_el0 = matches!(
            ap,
            Some(EL1_LEAF::AP::Value::RW_EL1_EL0 | EL1_LEAF::AP::Value::RO_EL1_EL0)
        );
        let write = leaf_writable && !table.ap_table_no_write;
        let el0_writable = write && leaf_el0 && !table.ap_table_no_el0;
        // D8.4: a region writable at EL0 is always privileged execute-never, and with
        // SCTLR_EL1.WXN every writable region is execute-never.
        let implicit_xn = el0_writable || (wxn && write);
        let exec = !bits.is_set(EL1_LEAF::PXN) && !table.pxn_table && !implicit_xn;
        Permissions {
            read: true,
            write,
            exec,
        }
    }
}

impl Regime for El2 {
    const NAME: &'static str = "EL2";
    const HAS_UPPER_RANGE: bool = false;

    fn role_attributes(role: Role) -> LeafAttributes<Self> {
        let ap = if role.writable() {
            EL2_LEAF::AP::RW
        } else {
            EL2_LEAF::AP::RO
        };
        let xn = if role.privileged_exec() {
            EL2_LEAF::XN::CLEAR
        } else {
            EL2_LEAF::XN::SET
        };
        LeafAttributes::from_descriptor(role.common_attributes() | raw_value(ap + xn))
    }

    fn permissions(leaf: LeafAttributes<Self>, table: TableAttributes, wxn: bool) -> Permissions {
        let bits = LocalRegisterCopy::<u64, EL2_LEAF::Register>::new(leaf.bits);
        // AP[2] alone decides: AP[1] is RES1, so 0b00 behaves as 0b01 and 0b10 as 0b11.
        let leaf_writable = bits.read(EL2_LEAF::AP) & 0b10 == 0;
        let write = leaf_writable && !table.ap_table_no_write;
        // PXN, PXNTable and APTable[0] are RES0 in this regime: only XN and XNTable count.
        // With SCTLR_EL2.WXN every writable region is execute-never (D8.4).
        let implicit_xn = wxn && write;
        let exec = !bits.is_set(EL2_LEAF::XN) && !table.xn_table && !implicit_xn;
        Permissions {
            read: true,
            write,
            exec,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

/// The attribute bits of a block or page descriptor in regime `R`: lower attributes \[11:2\] and
/// upper attributes \[63:50\]; no valid, type or address bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LeafAttributes<R: Regime> {
    bits: u64,
    regime: PhantomData<R>,
}

impl<R: Regime> LeafAttributes<R> {
    /// The attribute bits of a raw block or page descriptor of regime `R`.
    pub const fn from_descriptor(raw: u64) -> Self {
        Self {
            bits: raw & LEAF_ATTRIBUTE_MASK,
            regime: PhantomData,
        }
    }

    /// The attribute bits, in their descriptor positions.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// The memory type AttrIndx selects in this crate's MAIR layout; `None` for an index the
    /// layout leaves unused.
    pub fn memory_type(self) -> Option<MemoryType> {
        MemoryType::from_attr_index(self.register().read(STAGE1_LEAF::ATTR_INDX))
    }

    /// The SH field.
    pub fn shareability(self) -> Shareability {
        match self.register().read_as_enum(STAGE1_LEAF::SH) {
            Some(STAGE1_LEAF::SH::Value::NonShareable) => Shareability::NonShareable,
            Some(STAGE1_LEAF::SH::Value::OuterShareable) => Shareability::OuterShareable,
            Some(STAGE1_LEAF::SH::Value::InnerShareable) => Shareability::InnerShareable,
            None => Shareability::Reserved,
        }
    }

    /// The access flag.
    pub fn access_flag(self) -> bool {
        self.register().is_set(STAGE1_LEAF::AF)
    }

    /// Whether the TLB entry is global (nG = 0). nG is only meaningful in EL1&0.
    pub fn global(self) -> bool {
        !LocalRegisterCopy::<u64, EL1_LEAF::Register>::new(self.bits).is_set(EL1_LEAF::NG)
    }

    /// The contiguous hint.
    pub fn contiguous(self) -> bool {
        self.register().is_set(STAGE1_LEAF::CONTIGUOUS)
    }

    /// The role whose encoding these bits are exactly, if any. [`Role::Code`] and
    /// [`Role::ExecPool`] share their bits; this returns `Code` for them.
    pub fn role(self) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|&role| R::role_attributes(role) == self)
    }

    /// Effective privileged permissions under the tables above (see [`Regime::permissions`]).
    pub fn permissions(self, table: TableAttributes, wxn: bool) -> Permissions {
        R::permissions(self, table, wxn)
    }

    fn register(self) -> LocalRegisterCopy<u64, STAGE1_LEAF::Register> {
        LocalRegisterCopy::new(self.bits)
    }
}

impl<R: Regime> fmt::Debug for LeafAttributes<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafAttributes")
            .field("regime", &R::NAME)
            .field("bits", &format_args!("{:#018x}", self.bits))
            .field("role", &self.role())
            .finish()
    }
}

/// The hierarchical attributes of a table descriptor (Arm ARM D8.4, hierarchical permissions).
/// Each one can only remove permissions from the mappings below, and they accumulate down the
/// walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableAttributes {
    /// PXNTable: privileged execute-never below (RES0 in EL2 without VHE).
    pub pxn_table: bool,
    /// UXNTable in EL1&0 (unprivileged execute-never), XNTable in EL2 (execute-never).
    pub xn_table: bool,
    /// APTable\[1\]: no write access below, at any level.
    pub ap_table_no_write: bool,
    /// APTable\[0\]: no EL0 access below (RES0 in EL2 without VHE).
    pub ap_table_no_el0: bool,
    /// NSTable: the tables below are in the Non-secure PA space (ignored in Non-secure state).
    pub ns_table: bool,
}

impl TableAttributes {
    /// No limit: what this crate writes in every table descriptor.
    pub const NONE: Self = Self {
        pxn_table: false,
        xn_table: false,
        ap_table_no_write: false,
        ap_table_no_el0: false,
        ns_table: false,
    };

    /// The hierarchical bits of a raw table descriptor.
    pub fn from_descriptor(raw: u64) -> Self {
        let bits = LocalRegisterCopy::<u64, STAGE1_TABLE::Register>::new(raw);
        let ap = bits.read(STAGE1_TABLE::APTable);
        Self {
            pxn_table: bits.is_set(STAGE1_TABLE::PXNTable),
            xn_table: bits.is_set(STAGE1_TABLE::XNTable),
            ap_table_no_write: ap & 0b10 != 0,
            ap_table_no_el0: ap & 0b01 != 0,
            ns_table: bits.is_set(STAGE1_TABLE::NSTable),
        }
    }

    /// The bits, in their table-descriptor positions.
    pub fn bits(self) -> u64 {
        let ap = match (self.ap_table_no_write, self.ap_table_no_el0) {
            (false, false) => STAGE1_TABLE::APTable::NoEffect,
            (false, true) => STAGE1_TABLE::APTable::NoEl0,
            (true, false) => STAGE1_TABLE::APTable::NoWrite,
            (true, true) => STAGE1_TABLE::APTable::NoWriteNoEl0,
        };
        let flag = |set: bool, field| if set { field } else { 0 };
        raw_value(ap)
            | flag(self.pxn_table, raw_value(STAGE1_TABLE::PXNTable::SET))
            | flag(self.xn_table, raw_value(STAGE1_TABLE::XNTable::SET))
            | flag(self.ns_table, raw_value(STAGE1_TABLE::NSTable::SET))
    }

    /// The limits in force below a table descriptor with `below` attributes, reached through
    /// tables with `self`: a limit set anywhere on the walk applies (D8.4).
    pub fn then(self, below: Self) -> Self {
        Self {
            pxn_table: self.pxn_table || below.pxn_table,
            xn_table: self.xn_table || below.xn_table,
            ap_table_no_write: self.ap_table_no_write || below.ap_table_no_write,
            ap_table_no_el0: self.ap_table_no_el0 || below.ap_table_no_el0,
            ns_table: self.ns_table || below.ns_table,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// The levels at which the 4 KiB granule allows block descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockLevel {
    /// 1 GiB block.
    L1,
    /// 2 MiB block.
    L2,
}

impl BlockLevel {
    /// The lookup level, 1 or 2.
    pub const fn level(self) -> u8 {
        match self {
            Self::L1 => 1,
            Self::L2 => 2,
        }
    }

    /// Bytes mapped by one block.
    pub const fn size(self) -> u64 {
        match self {
            Self::L1 => BLOCK_SIZE_1G,
            Self::L2 => BLOCK_SIZE_2M,
        }
    }

    /// The block level for a lookup level, if blocks exist there.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            _ => None,
        }
    }
}

/// A decoded stage-1 descriptor of regime `R` (Arm ARM D8.3, 4 KiB granule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor<R: Regime> {
    /// Bit 0 clear, or an encoding that faults (a block at level 0, type 0 at level 3).
    Invalid,
    /// Points to the next-level table (levels 0 to 2).
    Table {
        /// Physical address of the next-level table.
        next: u64,
        /// Hierarchical limits for everything below.
        attrs: TableAttributes,
    },
    /// Maps a 1 GiB (level 1) or 2 MiB (level 2) block.
    Block {
        /// Lookup level of the block.
        level: BlockLevel,
        /// Output (physical) address, aligned to the block size.
        oa: u64,
        /// Attributes.
        attrs: LeafAttributes<R>,
    },
    /// Maps a 4 KiB page (level 3).
    Page {
        /// Output (physical) address.
        oa: u64,
        /// Attributes.
        attrs: LeafAttributes<R>,
    },
}

impl<R: Regime> Descriptor<R> {
    /// Decodes `raw` read from a table at lookup `level` (0 to 3). Encodings the walker treats as
    /// a translation fault, and any level above 3, decode as [`Descriptor::Invalid`]. Bits this
    /// model does not carry (RES0 bits, low output-address bits of a block, the ignored bits of
    /// a table descriptor) are dropped.
    pub fn decode(raw: u64, level: u8) -> Self {
        if let Some(next) = next_table_address(raw, level) {
            return Self::Table {
                next,
                attrs: TableAttributes::from_descriptor(raw),
            };
        }
        let bits = LocalRegisterCopy::<u64, STAGE1_LEAF::Register>::new(raw);
        if !bits.is_set(STAGE1_LEAF::VALID) {
            return Self::Invalid;
        }
        let type_bit = bits.is_set(STAGE1_LEAF::TYPE);
        let attrs = LeafAttributes::from_descriptor(raw);
        match (level, type_bit) {
            (1, false) => Self::Block {
                level: BlockLevel::L1,
                oa: address_in(raw, STAGE1_LEAF::OA_L1_BLOCK),
                attrs,
            },
            (2, false) => Self::Block {
                level: BlockLevel::L2,
                oa: address_in(raw, STAGE1_LEAF::OA_L2_BLOCK),
                attrs,
            },
            (3, true) => Self::Page {
                oa: address_in(raw, STAGE1_LEAF::OA_L3_PAGE),
                attrs,
            },
            _ => Self::Invalid,
        }
    }

    /// The raw descriptor. Fails if an address is not aligned to what it maps (4 KiB for a table
    /// or page, the block size for a block) or lies beyond the 48-bit output address space.
    pub fn encode(&self) -> Result<u64, MapError> {
        match *self {
            Self::Invalid => Ok(0),
            Self::Table { next, attrs } => {
                check_output_address(next, PAGE_SIZE)?;
                let fields = STAGE1_TABLE::VALID::True
                    + STAGE1_TABLE::TYPE::Table
                    + address_field(STAGE1_TABLE::NEXT_TABLE_ADDR, next);
                Ok(raw_value(fields) | attrs.bits())
            }
            Self::Block { level, oa, attrs } => {
                check_output_address(oa, level.size())?;
                let address = match level {
                    BlockLevel::L1 => STAGE1_LEAF::OA_L1_BLOCK,
                    BlockLevel::L2 => STAGE1_LEAF::OA_L2_BLOCK,
                };
                let fields = STAGE1_LEAF::VALID::True
                    + STAGE1_LEAF::TYPE::Block
                    + address_field(address, oa);
                Ok(raw_value(fields) | attrs.bits)
            }
            Self::Page { oa, attrs } => {
                check_output_address(oa, PAGE_SIZE)?;
                let fields = STAGE1_LEAF::VALID::True
                    + STAGE1_LEAF::TYPE::Page
                    + address_field(STAGE1_LEAF::OA_L3_PAGE, oa);
                Ok(raw_value(fields) | attrs.bits)
            }
        }
    }

    /// The attributes of a block or page.
    pub fn leaf_attributes(&self) -> Option<LeafAttributes<R>> {
        match *self {
            Self::Block { attrs, .. } | Self::Page { attrs, .. } => Some(attrs),
            Self::Invalid | Self::Table { .. } => None,
        }
    }
}

/// The next-level table address of `raw` read at lookup `level`, if it is a table descriptor.
/// Table descriptors have the same format in every stage-1 regime (D8.3), so this needs none.
pub fn next_table_address(raw: u64, level: u8) -> Option<u64> {
    let bits = LocalRegisterCopy::<u64, STAGE1_TABLE::Register>::new(raw);
    let is_table = bits.matches_all(STAGE1_TABLE::VALID::True + STAGE1_TABLE::TYPE::Table);
    (is_table && level <= 2).then_some(address_in(raw, STAGE1_TABLE::NEXT_TABLE_ADDR))
}

fn check_output_address(pa: u64, align: u64) -> Result<(), MapError> {
    if !pa.is_multiple_of(align) {
        return Err(MapError::UnalignedPa { pa, align });
    }
    if pa >= PA_LIMIT {
        return Err(MapError::PaOutOfRange { pa, size: align });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every role in both regimes at every leaf level, at `pa`.
    fn round_trip<R: Regime>(pa: u64) {
        for role in Role::ALL {
            let attrs = R::role_attributes(role);
            let page = Descriptor::<R>::Page {
                oa: pa & !(PAGE_SIZE - 1),
                attrs,
            };
            let raw = page.encode().expect("aligned page");
            assert_eq!(
                Descriptor::<R>::decode(raw, 3),
                page,
                "{} {role:?}",
                R::NAME
            );
            assert_eq!(R::page_descriptor(pa & !(PAGE_SIZE - 1), role), Ok(raw));
            for level in [BlockLevel::L1, BlockLevel::L2] {
                let oa = pa & !(level.size() - 1);
                let block = Descriptor::<R>::Block { level, oa, attrs };
                let raw = block.encode().expect("aligned block");
                assert_eq!(Descriptor::<R>::decode(raw, level.level()), block);
                assert_eq!(R::block_descriptor(level, oa, role), Ok(raw));
                assert_eq!(LeafAttributes::<R>::from_descriptor(raw), attrs);
            }
        }
    }

    proptest! {
        #[test]
        fn role_descriptors_round_trip(pa in 0..PA_LIMIT) {
            round_trip::<El1And0>(pa);
            round_trip::<El2>(pa);
        }

        #[test]
        fn tables_round_trip(next in 0..PA_LIMIT >> 12, bits in 0u8..32, level in 0u8..3) {
            let attrs = TableAttributes {
                pxn_table: bits & 1 != 0,
                xn_table: bits & 2 != 0,
                ap_table_no_write: bits & 4 != 0,
                ap_table_no_el0: bits & 8 != 0,
                ns_table: bits & 16 != 0,
            };
            let table = Descriptor::<El1And0>::Table { next: next << 12, attrs };
            let raw = table.encode().expect("aligned table");
            prop_assert_eq!(Descriptor::<El1And0>::decode(raw, level), table);
        }

        /// Decoding is a projection: whatever `raw` holds, re-encoding what was decoded and
        /// decoding again gives the same descriptor.
        #[test]
        fn decode_is_stable(raw in any::<u64>(), level in 0u8..5) {
            let first = Descriptor::<El1And0>::decode(raw, level);
            let again = Descriptor::<El1And0>::decode(first.encode().expect("decoded"), level);
            prop_assert_eq!(first, again);
            let first = Descriptor::<El2>::decode(raw, level);
            let again = Descriptor::<El2>::decode(first.encode().expect("decoded"), level);
            prop_assert_eq!(first, again);
        }
    }

    #[test]
    fn mair_layout() {
        assert_eq!(MAIR_EL1_VALUE, 0x0044_FF04);
        assert_eq!(MemoryType::DeviceNGnRE.attr_index(), 0);
        assert_eq!(MemoryType::NormalWriteBack.attr_index(), 1);
        assert_eq!(MemoryType::NormalNonCacheable.attr_index(), 2);
    }

    #[test]
    fn el1_known_values() {
        let pa = 0x4020_0000;
        // Valid | page | AttrIndx 1 | SH 0b11 | AF, AP 0b10, UXN.
        let code = (1 << 54) | (1 << 10) | (0b11 << 8) | (0b10 << 6) | (1 << 2) | 0b11 | pa;
        assert_eq!(El1And0::page_descriptor(pa, Role::Code), Ok(code));
        assert_eq!(El1And0::page_descriptor(pa, Role::ExecPool), Ok(code));
        let rodata = code | (1 << 53);
        assert_eq!(El1And0::page_descriptor(pa, Role::Rodata), Ok(rodata));
        let data = (3 << 53) | (1 << 10) | (0b11 << 8) | (1 << 2) | 0b11 | pa;
        assert_eq!(El1And0::page_descriptor(pa, Role::Data), Ok(data));
        assert_eq!(El1And0::page_descriptor(pa, Role::PokeAlias), Ok(data));
        let device = (3 << 53) | (1 << 10) | (0b10 << 8) | 0b11 | 0x0900_0000;
        assert_eq!(
            El1And0::page_descriptor(0x0900_0000, Role::Device),
            Ok(device)
        );
        // An L2 block has type 0.
        assert_eq!(
            El1And0::block_descriptor(BlockLevel::L2, pa, Role::ExecPool),
            Ok(code & !0b10)
        );
    }

    /// The text poke builds its alias descriptor as the attributes of PA 0 ORed with the page's PA
    /// (made once at init): that must be the descriptor itself, in every regime, for every
    /// page-aligned PA the descriptor can hold.
    #[test]
    fn poke_alias_is_its_attributes_or_the_pa() {
        fn check<R: Regime>() {
            let attributes = R::page_descriptor(0, Role::PokeAlias).expect("PA 0");
            let mut pa = 0x1000u64;
            while pa < 1 << 48 {
                for page in [pa, (1 << 48) - pa] {
                    assert_eq!(
                        R::page_descriptor(page, Role::PokeAlias),
                        Ok(attributes | page),
                        "{page:#x}"
                    );
                }
                pa = (pa * 3 + 0x1000) & !0xfff;
            }
        }
        check::<El1And0>();
        check::<El2>();
        check::<El2And0>();
    }

    #[test]
    fn el2_encodes_its_own_bits() {
        let pa = 0x4020_0000;
        for role in Role::ALL {
            let raw = El2::page_descriptor(pa, role).expect("aligned");
            assert_eq!(raw & (1 << 53), 0, "{role:?}: PXN is RES0 in EL2");
            assert_eq!(raw & (1 << 11), 0, "{role:?}: nG is not used in EL2");
            assert_eq!((raw >> 6) & 1, 1, "{role:?}: AP[1] is RES1 in EL2");
            let ap = (raw >> 6) & 0b11;
            let xn = raw & (1 << 54) != 0;
            match role {
                Role::Code | Role::ExecPool => assert_eq!((ap, xn), (0b11, false)),
                Role::Rodata => assert_eq!((ap, xn), (0b11, true)),
                Role::Data | Role::PokeAlias | Role::Device => assert_eq!((ap, xn), (0b01, true)),
            }
        }
        let code = (1 << 10) | (0b11 << 8) | (0b11 << 6) | (1 << 2) | 0b11 | pa;
        assert_eq!(El2::page_descriptor(pa, Role::Code), Ok(code));
    }

    #[test]
    fn role_permissions_in_both_regimes() {
        fn check<R: Regime>() {
            for role in Role::ALL {
                let perms = R::role_attributes(role).permissions(TableAttributes::NONE, false);
                assert!(perms.read);
                assert_eq!(perms.write, role.writable(), "{} {role:?}", R::NAME);
                assert_eq!(perms.exec, role.privileged_exec(), "{} {role:?}", R::NAME);
                assert!(!(perms.write && perms.exec), "{} {role:?}: W^X", R::NAME);
                let attrs = R::role_attributes(role);
                assert!(attrs.access_flag() && attrs.global() && !attrs.contiguous());
                assert_eq!(attrs.memory_type(), Some(role.memory_type()));
            }
        }
        check::<El1And0>();
        check::<El2>();
        assert_eq!(
            El1And0::role_attributes(Role::ExecPool).role(),
            Some(Role::Code)
        );
        assert_eq!(
            El1And0::role_attributes(Role::Device).shareability(),
            Shareability::OuterShareable
        );
    }

    #[test]
    fn el1_el0_writable_is_privileged_execute_never() {
        // AP = 0b01, PXN = 0: EL1 still may not execute (D8.4).
        let raw = (0b01 << 6) | (1 << 10) | (1 << 2);
        let attrs = LeafAttributes::<El1And0>::from_descriptor(raw);
        let perms = attrs.permissions(TableAttributes::NONE, false);
        assert_eq!(
            perms,
            Permissions {
                read: true,
                write: true,
                exec: false
            }
        );
        // APTable[0] takes EL0 access away, so EL0 no longer writes and the implicit PXN goes.
        let no_el0 = TableAttributes {
            ap_table_no_el0: true,
            ..TableAttributes::NONE
        };
        assert!(attrs.permissions(no_el0, false).exec);
        // AP = 0b00 with PXN = 0 is RW and executable at EL1 unless WXN is set.
        let attrs = LeafAttributes::<El1And0>::from_descriptor((1 << 10) | (1 << 2));
        assert_eq!(
            attrs.permissions(TableAttributes::NONE, false).to_string(),
            "RW X"
        );
        assert_eq!(
            attrs.permissions(TableAttributes::NONE, true).to_string(),
            "RW NX"
        );
    }

    #[test]
    fn table_bits_limit_permissions() {
        let rwx1 = LeafAttributes::<El1And0>::from_descriptor(1 << 10);
        let rwx2 = LeafAttributes::<El2>::from_descriptor((0b01 << 6) | (1 << 10));
        let none = TableAttributes::NONE;
        let pxn = TableAttributes {
            pxn_table: true,
            ..none
        };
        let xn = TableAttributes {
            xn_table: true,
            ..none
        };
        let ro = TableAttributes {
            ap_table_no_write: true,
            ..none
        };
        assert!(!rwx1.permissions(pxn, false).exec);
        assert!(
            rwx1.permissions(xn, false).exec,
            "UXNTable does not limit EL1"
        );
        assert!(!rwx1.permissions(ro, false).write);
        assert!(rwx2.permissions(pxn, false).exec, "PXNTable is RES0 in EL2");
        assert!(!rwx2.permissions(xn, false).exec);
        assert!(!rwx2.permissions(ro, false).write);
        // EL2 AP[1] is RES1: AP = 0b00 is still read-write, AP = 0b10 read-only.
        let ap00 = LeafAttributes::<El2>::from_descriptor(1 << 10);
        assert!(ap00.permissions(none, false).write);
        let ap10 = LeafAttributes::<El2>::from_descriptor((0b10 << 6) | (1 << 10));
        assert!(!ap10.permissions(none, false).write);
        // Limits accumulate down the walk.
        assert_eq!(
            pxn.then(ro),
            TableAttributes {
                pxn_table: true,
                ap_table_no_write: true,
                ..none
            }
        );
        let raw = Descriptor::<El1And0>::Table {
            next: 0x1000,
            attrs: pxn.then(ro),
        }
        .encode();
        assert_eq!(raw, Ok((1 << 62) | (1 << 59) | 0x1000 | 0b11));
    }

    #[test]
    fn decode_faulting_encodings_as_invalid() {
        let block = El1And0::block_descriptor(BlockLevel::L2, 0x20_0000, Role::Data).expect("ok");
        assert_eq!(Descriptor::<El1And0>::decode(block, 0), Descriptor::Invalid);
        assert_eq!(
            Descriptor::<El1And0>::decode(block, 3),
            Descriptor::Invalid,
            "type 0 at L3"
        );
        assert_eq!(Descriptor::<El1And0>::decode(block, 4), Descriptor::Invalid);
        assert_eq!(
            Descriptor::<El1And0>::decode(block & !1, 2),
            Descriptor::Invalid
        );
    }

    #[test]
    fn encode_rejects_bad_addresses() {
        let attrs = El1And0::role_attributes(Role::Data);
        let unaligned = Descriptor::Block {
            level: BlockLevel::L2,
            oa: 0x1000,
            attrs,
        };
        assert_eq!(
            unaligned.encode(),
            Err(MapError::UnalignedPa {
                pa: 0x1000,
                align: BLOCK_SIZE_2M
            })
        );
        let high = Descriptor::Page {
            oa: PA_LIMIT,
            attrs,
        };
        assert_eq!(
            high.encode(),
            Err(MapError::PaOutOfRange {
                pa: PA_LIMIT,
                size: PAGE_SIZE
            })
        );
        assert!(El2::page_descriptor(0x123, Role::Code).is_err());
    }
}
