//! Reading a [`Machine`] from a flattened device tree, with `dtoolkit`: it validates the whole
//! blob before anything is read (so a malformed tree is an error here, never a panic later), needs
//! no allocator (the tree is read before the heap exists), and is the Google embedded crates'
//! device-tree reader (Apache-2.0 OR MIT, like this crate).
//!
//! dtoolkit holds property names to the specification's 31 characters (2.2.4.1), which real trees
//! exceed: the Raspberry Pi firmware's bcm2711 trees have `arm,cpu-registers-not-fw-configured` (35).
//! Such a tree is read from a copy in which those properties are replaced by `FDT_NOP` tokens
//! (offsets unchanged; the kernel reads none of them), and dtoolkit then validates the copy whole.
//! The copy also serves a tree at physical address 0 (QEMU raspi4b with an ELF kernel), which Rust
//! cannot reference in place.
//!
//! What is read (Devicetree Specification v0.4, chapters 3 and 5): the memory nodes, the
//! memreserve block, `/reserved-memory`, `/cpus`, `/psci`, the generic timer, the console PL011
//! (`/chosen/stdout-path`) and the GIC. Device addresses are translated through every parent bus's
//! `ranges` (the Raspberry Pi's peripherals sit on a VideoCore bus at 0x7e00_0000).

use core::fmt;

use arrayvec::ArrayVec;
use dtoolkit::error::{FdtErrorKind, FdtParseError};
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};

use super::{Cpu, EnableMethod, Gic, MAX_RAM_BANKS, Machine, PsciConduit, Source};
use crate::layout::Region;

/// The first word of every flattened device tree.
pub const MAGIC: u32 = 0xd00d_feed;
/// Bytes of the header that say what the blob is and how long.
pub const HEADER_PREFIX: usize = 8;
/// Largest tree accepted: what the loaders here use (QEMU pads its tree to 1 MiB) with room to spare.
pub const MAX_SIZE: u32 = 2 << 20;
/// Deepest node searched for devices (root = 0; the Pi's are at depth 2, under /soc).
const MAX_DEPTH: usize = 4;
/// Every range read must end within the 48-bit physical address space (the descriptors' limit), so
/// nothing computed from it can wrap.
pub const PA_LIMIT: u64 = 1 << 48;

/// `start..start + size` as a region, if it ends within [`PA_LIMIT`].
fn checked_region(name: &'static str, start: u64, size: u64) -> Result<Region, DtbError> {
    match start.checked_add(size) {
        Some(end) if end <= PA_LIMIT => Ok(Region::new(name, start, size)),
        _ => Err(DtbError::OutOfRange {
            node: name,
            start,
            size,
        }),
    }
}

/// Why a device tree could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The blob does not start with the FDT magic.
    BadMagic(u32),
    /// The header's `totalsize` is more than the bytes there are, or implausibly large.
    Truncated {
        /// `totalsize` from the header.
        size: u64,
        /// The bytes available.
        available: u64,
    },
    /// The structure is malformed (bad token, offset, string, version...).
    Malformed(FdtParseError),
    /// No memory node with a non-empty `reg`.
    NoMemory,
    /// A property the kernel needs has the wrong shape.
    BadProperty {
        /// The node.
        node: &'static str,
        /// The property.
        property: &'static str,
    },
    /// More entries of a kind than the kernel records.
    TooMany(&'static str),
    /// An address range that wraps or goes past the 48-bit physical address space.
    OutOfRange {
        /// The node.
        node: &'static str,
        /// Its start.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// The tree lies over the kernel image (the loader put it where the kernel runs).
    OverlapsKernel {
        /// The image.
        image: Region,
    },
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(magic) => write!(f, "bad magic {magic:#010x} (want {MAGIC:#010x})"),
            Self::Truncated { size, available } => write!(
                f,
                "truncated: the header says {size} bytes, {available} are there"
            ),
            Self::Malformed(e) => write!(f, "malformed: {e}"),
            Self::NoMemory => f.write_str("no memory node with a non-empty reg"),
            Self::BadProperty { node, property } => {
                write!(f, "property {property} of {node} is malformed")
            }
            Self::TooMany(what) => write!(f, "more {what} than the kernel records"),
            Self::OutOfRange { node, start, size } => write!(
                f,
                "{node} range {start:#x} + {size:#x} goes past the 48-bit physical address space"
            ),
            Self::OverlapsKernel { image } => write!(f, "it lies over the kernel image {image}"),
        }
    }
}

/// The blob's `totalsize`, from the first [`HEADER_PREFIX`] bytes: for a loader that has only a
/// pointer and must know how much to read before the tree can be checked.
pub fn total_size(prefix: [u8; HEADER_PREFIX]) -> Result<u32, DtbError> {
    let magic = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if magic != MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let size = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if !(40..=MAX_SIZE).contains(&size) {
        return Err(DtbError::Truncated {
            size: size.into(),
            available: MAX_SIZE.into(),
        });
    }
    Ok(size)
}

/// Reads the machine from the tree in `blob`, which the loader placed at physical `address`.
/// `scratch` holds a copy of the tree if it has property names dtoolkit refuses (see the module
/// documentation); a tree that needs one and does not fit is refused with dtoolkit's error.
pub fn read(blob: &[u8], address: u64, scratch: &mut [u8]) -> Result<Machine, DtbError> {
    let blob = whole(blob)?;
    match Fdt::new(blob) {
        Ok(fdt) => read_fdt(fdt, address, blob.len()),
        Err(e) if e.kind == FdtErrorKind::InvalidPropertyName => {
            let copy = scratch
                .get_mut(..blob.len())
                .ok_or(DtbError::Malformed(e))?;
            copy.copy_from_slice(blob);
            read_copy(copy, address)
        }
        Err(e) => Err(DtbError::Malformed(e)),
    }
}

/// Reads the machine from a copy of the loader's tree (placed at physical `address`) that the
/// caller owns, so over-long property names are filtered in place.
pub fn read_copy(copy: &mut [u8], address: u64) -> Result<Machine, DtbError> {
    let size = whole(copy)?.len();
    let copy = &mut copy[..size];
    let refused = match Fdt::new(copy) {
        Ok(fdt) => return read_fdt(fdt, address, size),
        Err(e) if e.kind == FdtErrorKind::InvalidPropertyName => e,
        Err(e) => return Err(DtbError::Malformed(e)),
    };
    let filtered = drop_long_property_names(copy).and_then(|end| copy.get(..end));
    let filtered = filtered.ok_or(DtbError::Malformed(refused))?;
    read_fdt(
        Fdt::new(filtered).map_err(DtbError::Malformed)?,
        address,
        size,
    )
}

/// `blob` cut to the header's `totalsize`, after checking the magic and that it is all there.
fn whole(blob: &[u8]) -> Result<&[u8], DtbError> {
    let prefix: [u8; HEADER_PREFIX] = blob
        .get(..HEADER_PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or(DtbError::Truncated {
            size: HEADER_PREFIX as u64,
            available: blob.len() as u64,
        })?;
    let size = total_size(prefix)? as usize;
    blob.get(..size).ok_or(DtbError::Truncated {
        size: size as u64,
        available: blob.len() as u64,
    })
}

/// The longest property name dtoolkit accepts (Devicetree Specification 2.2.4.1).
const MAX_PROPERTY_NAME: usize = 31;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

/// Replaces every property of `tree` whose name is longer than dtoolkit accepts with `FDT_NOP`
/// tokens, and sets the header's `totalsize` to the end of the content; returns that length. Only a
/// filter: it stops at anything it does not understand and leaves the verdict to dtoolkit.
fn drop_long_property_names(tree: &mut [u8]) -> Option<usize> {
    let off_struct = be32(tree, 8)? as usize;
    let off_strings = be32(tree, 12)? as usize;
    let size_strings = be32(tree, 32)? as usize;
    let size_struct = be32(tree, 36)? as usize;
    let struct_end = off_struct.checked_add(size_struct)?;
    let strings_end = off_strings.checked_add(size_strings)?;
    let end = struct_end.max(strings_end);
    let strings = tree.get(off_strings..strings_end)?;
    let mut long: ArrayVec<(usize, usize), 64> = ArrayVec::new();
    let mut at = off_struct;
    while at < struct_end {
        match be32(tree, at)? {
            FDT_BEGIN_NODE => {
                let name_len = tree.get(at + 4..)?.iter().position(|&b| b == 0)?;
                at = (at + 4 + name_len + 1).next_multiple_of(4);
            }
            FDT_END_NODE | FDT_NOP => at += 4,
            FDT_PROP => {
                let len = be32(tree, at + 4)? as usize;
                let name_off = be32(tree, at + 8)? as usize;
                let name_len = strings.get(name_off..)?.iter().position(|&b| b == 0)?;
                let next = (at + 12).checked_add(len)?.next_multiple_of(4);
                if name_len > MAX_PROPERTY_NAME {
                    long.try_push((at, next)).ok()?;
                }
                at = next;
            }
            _ => break, // FDT_END, or something dtoolkit will report
        }
    }
    for (start, next) in long {
        for word in tree.get_mut(start..next)?.chunks_exact_mut(4) {
            word.copy_from_slice(&FDT_NOP.to_be_bytes());
        }
    }
    tree.get_mut(4..8)?
        .copy_from_slice(&u32::try_from(end).ok()?.to_be_bytes());
    Some(end)
}

fn read_fdt(fdt: Fdt<'_>, address: u64, size: usize) -> Result<Machine, DtbError> {
    let mut machine = Machine {
        source: Source::DeviceTree {
            address,
            size: size as u64,
        },
        ram: ArrayVec::new(),
        reserved: ArrayVec::new(),
        cpus: ArrayVec::new(),
        uart: None,
        gic: None,
        psci: None,
        timer_hz: None,
    };
    read_memory(fdt, &mut machine)?;
    read_cpus(fdt, &mut machine)?;
    machine.psci = fdt
        .find_node("/psci")
        .and_then(|psci| string(&psci, "method"))
        .and_then(|method| match method {
            "hvc" => Some(PsciConduit::Hvc),
            "smc" => Some(PsciConduit::Smc),
            _ => None,
        });
    machine.uart = stdout_uart(fdt)?;
    let mut path = ArrayVec::new();
    walk(fdt.root(), &mut path, &mut |node, buses| {
        if machine.uart.is_none() && is_compatible(node, &["arm,pl011"]) && is_enabled(node) {
            machine.uart = first_reg(node, buses, "PL011 UART")?;
        }
        if machine.gic.is_none() {
            machine.gic = gic(node, buses)?;
        }
        if machine.timer_hz.is_none() && is_compatible(node, &["arm,armv8-timer"]) {
            // 0 says nothing about the counter: as if it were not there.
            machine.timer_hz =
                u32_property(node, "timer", "clock-frequency")?.filter(|&hz| hz != 0);
        }
        Ok(())
    })?;
    Ok(machine)
}

fn push<T, const N: usize>(
    list: &mut ArrayVec<T, N>,
    item: T,
    what: &'static str,
) -> Result<(), DtbError> {
    list.try_push(item).map_err(|_| DtbError::TooMany(what))
}

fn read_memory(fdt: Fdt<'_>, machine: &mut Machine) -> Result<(), DtbError> {
    for node in fdt.root().children() {
        let is_memory = string(&node, "device_type") == Some("memory")
            || node.name_without_address() == "memory";
        if !is_memory || !is_enabled(node) {
            continue;
        }
        for (start, size) in regs(node, "memory", "reg")? {
            if size > 0 {
                push(
                    &mut machine.ram,
                    checked_region("RAM", start, size)?,
                    "RAM banks",
                )?;
            }
        }
    }
    if machine.ram.is_empty() {
        return Err(DtbError::NoMemory);
    }
    for reservation in fdt.memory_reservations() {
        if reservation.size() > 0 {
            let region = checked_region("memreserve", reservation.address(), reservation.size())?;
            push(&mut machine.reserved, region, "reserved ranges")?;
        }
    }
    if let Some(reserved) = fdt.find_node("/reserved-memory") {
        for child in reserved.children() {
            // A child without `reg` asks the OS to allocate a pool (Linux CMA): nothing is fixed.
            for (start, size) in regs(child, "reserved-memory", "reg")? {
                if size > 0 {
                    let region = checked_region("reserved-memory", start, size)?;
                    push(&mut machine.reserved, region, "reserved ranges")?;
                }
            }
        }
    }
    if let Source::DeviceTree { address, size } = machine.source {
        let tree = checked_region("device tree", address, size)?;
        push(&mut machine.reserved, tree, "reserved ranges")?;
    }
    Ok(())
}

fn read_cpus(fdt: Fdt<'_>, machine: &mut Machine) -> Result<(), DtbError> {
    let Some(cpus) = fdt.find_node("/cpus") else {
        return Ok(());
    };
    for node in cpus.children() {
        if node.name_without_address() != "cpu" || string(&node, "status") == Some("fail") {
            continue;
        }
        let mpidr = node
            .reg()
            .ok()
            .flatten()
            .and_then(|mut reg| reg.next())
            .and_then(|reg| reg.address::<u64>().ok())
            .ok_or(DtbError::BadProperty {
                node: "cpu",
                property: "reg",
            })?;
        let enable = match string(&node, "enable-method") {
            Some("psci") => EnableMethod::Psci,
            Some("spin-table") => {
                let release = node
                    .property("cpu-release-addr")
                    .and_then(|p| p.value_as::<u64>().ok())
                    .ok_or(DtbError::BadProperty {
                        node: "cpu",
                        property: "cpu-release-addr",
                    })?;
                EnableMethod::SpinTable(release)
            }
            _ => EnableMethod::Unknown,
        };
        if let EnableMethod::SpinTable(release) = enable {
            // The release word is written to start the CPU: its page is not ours (the Pi
            // firmware's memreserve covers it already).
            let page = checked_region("spin table", release & !0xfff, 0x1000)?;
            if !machine
                .reserved
                .iter()
                .any(|r| r.start <= page.start && page.end() <= r.end())
            {
                push(&mut machine.reserved, page, "reserved ranges")?;
            }
        }
        push(&mut machine.cpus, Cpu { mpidr, enable }, "CPUs")?;
    }
    Ok(())
}

/// The parent buses of a node, outermost first: each one's `ranges` moves its children's
/// addresses into its parent's space.
type Buses<'a> = ArrayVec<FdtNode<'a>, MAX_DEPTH>;

fn walk<'a>(
    node: FdtNode<'a>,
    buses: &mut Buses<'a>,
    visit: &mut impl FnMut(FdtNode<'a>, &Buses<'a>) -> Result<(), DtbError>,
) -> Result<(), DtbError> {
    for child in node.children() {
        visit(child, buses)?;
        if buses.len() + 1 < MAX_DEPTH && child.property("ranges").is_some() {
            buses.push(child);
            let result = walk(child, buses, visit);
            buses.pop();
            result?;
        }
    }
    Ok(())
}

/// Moves a bus address up through `buses` (innermost last) to a CPU physical address; `None` if
/// some bus does not map it.
fn translate(mut address: u64, buses: &Buses<'_>) -> Result<Option<u64>, DtbError> {
    for bus in buses.iter().rev() {
        let bad = DtbError::BadProperty {
            node: "bus",
            property: "ranges",
        };
        let ranges = bus.ranges().map_err(|_| bad.clone())?;
        let Some(ranges) = ranges else {
            return Ok(None);
        };
        let mut ranges = ranges.peekable();
        if ranges.peek().is_none() {
            continue; // `ranges;`: the same addresses on both sides
        }
        let mut moved = None;
        for range in ranges {
            let (Ok(child), Ok(parent), Ok(length)) = (
                range.child_bus_address::<u64>(),
                range.parent_bus_address::<u64>(),
                range.length::<u64>(),
            ) else {
                return Err(bad);
            };
            if address >= child && address - child < length {
                let up = parent
                    .checked_add(address - child)
                    .ok_or(DtbError::OutOfRange {
                        node: "bus",
                        start: parent,
                        size: length,
                    })?;
                moved = Some(up);
                break;
            }
        }
        match moved {
            Some(up) => address = up,
            None => return Ok(None),
        }
    }
    Ok(Some(address))
}

/// A node's `reg` entries as (address, size), untranslated.
fn regs<'a>(
    node: FdtNode<'a>,
    what: &'static str,
    property: &'static str,
) -> Result<ArrayVec<(u64, u64), MAX_RAM_BANKS>, DtbError> {
    let bad = DtbError::BadProperty {
        node: what,
        property,
    };
    let mut out = ArrayVec::new();
    let Some(reg) = node.reg().map_err(|_| bad.clone())? else {
        return Ok(out);
    };
    for entry in reg {
        let (Ok(address), Ok(size)) = (entry.address::<u64>(), entry.size::<u64>()) else {
            return Err(bad);
        };
        out.try_push((address, size))
            .map_err(|_| DtbError::TooMany(what))?;
    }
    Ok(out)
}

/// The `index`th `reg` entry of a device, translated to a CPU physical address.
fn nth_reg(
    node: FdtNode<'_>,
    buses: &Buses<'_>,
    index: usize,
    name: &'static str,
) -> Result<Option<Region>, DtbError> {
    let Some(&(bus_address, size)) = regs(node, name, "reg")?.get(index) else {
        return Ok(None);
    };
    translate(bus_address, buses)?
        .map(|start| checked_region(name, start, size))
        .transpose()
}

fn first_reg(
    node: FdtNode<'_>,
    buses: &Buses<'_>,
    name: &'static str,
) -> Result<Option<Region>, DtbError> {
    nth_reg(node, buses, 0, name)
}

fn gic(node: FdtNode<'_>, buses: &Buses<'_>) -> Result<Option<Gic>, DtbError> {
    const V2: &[&str] = &[
        "arm,gic-400",
        "arm,cortex-a15-gic",
        "arm,cortex-a9-gic",
        "arm,cortex-a7-gic",
    ];
    if !is_enabled(node) {
        return Ok(None);
    }
    if is_compatible(node, V2) {
        let distributor = nth_reg(node, buses, 0, "GICv2 GICD")?;
        let cpu_interface = nth_reg(node, buses, 1, "GICv2 GICC")?;
        return Ok(distributor.zip(cpu_interface).map(|(d, mut c)| {
            // GICC_DIR is at offset 0x1000: the CPU interface is two pages even where a tree
            // states one.
            c.size = c.size.max(0x2000);
            Gic::V2 {
                distributor: d,
                cpu_interface: c,
            }
        }));
    }
    if is_compatible(node, &["arm,gic-v3"]) {
        let distributor = nth_reg(node, buses, 0, "GICv3 GICD")?;
        let redistributors = nth_reg(node, buses, 1, "GICv3 GICR")?;
        return Ok(distributor
            .zip(redistributors)
            .map(|(distributor, redistributors)| Gic::V3 {
                distributor,
                redistributors,
            }));
    }
    Ok(None)
}

/// The PL011 that `/chosen/stdout-path` names (a path or an alias, options after `:` dropped).
fn stdout_uart(fdt: Fdt<'_>) -> Result<Option<Region>, DtbError> {
    let Some(path) = fdt
        .find_node("/chosen")
        .and_then(|chosen| string(&chosen, "stdout-path"))
    else {
        return Ok(None);
    };
    let path = path.split(':').next().unwrap_or(path);
    let path = if path.starts_with('/') {
        path
    } else {
        match fdt
            .find_node("/aliases")
            .and_then(|aliases| string(&aliases, path))
        {
            Some(target) => target,
            None => return Ok(None),
        }
    };
    // The node's buses: every ancestor below the root.
    let mut buses = Buses::new();
    let mut node = fdt.root();
    let mut components = path.split('/').filter(|c| !c.is_empty()).peekable();
    while let Some(component) = components.next() {
        let Some(child) = node.child(component) else {
            return Ok(None);
        };
        if components.peek().is_some() {
            buses
                .try_push(child)
                .map_err(|_| DtbError::TooMany("bus levels"))?;
        }
        node = child;
    }
    if !is_compatible(node, &["arm,pl011"]) || !is_enabled(node) {
        return Ok(None);
    }
    first_reg(node, &buses, "PL011 UART")
}

fn string<'a>(node: &FdtNode<'a>, name: &str) -> Option<&'a str> {
    node.property(name)?.value_as::<&'a str>().ok()
}

fn u32_property(
    node: FdtNode<'_>,
    what: &'static str,
    property: &'static str,
) -> Result<Option<u32>, DtbError> {
    node.property(property)
        .map(|p| {
            p.value_as::<u32>().map_err(|_| DtbError::BadProperty {
                node: what,
                property,
            })
        })
        .transpose()
}

fn is_compatible(node: FdtNode<'_>, any_of: &[&str]) -> bool {
    node.compatible()
        .is_some_and(|mut list| list.any(|c| any_of.contains(&c)))
}

fn is_enabled(node: FdtNode<'_>) -> bool {
    matches!(string(&node, "status"), None | Some("okay" | "ok"))
}
