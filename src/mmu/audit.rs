//! Audit of live translation tables: the W^X guarantee and the exec-pool layout, checked on what
//! the hardware walks rather than on what the allocator believes it mapped.
//!
//! The audit starts from a root table's physical address (the value in TTBR0), visits every
//! valid leaf with the limits of the table descriptors above it (Arm ARM D8.4, hierarchical
//! permissions), computes the effective privileged permissions (including SCTLR_ELx.WXN, D8.4)
//! and reports every rule broken, one [`Violation`] per leaf and rule.
//!
//! It assumes the hierarchical permissions are in force, i.e. TCR_ELx.HPD = 0: with FEAT_HPDS
//! and HPD = 1 the hardware ignores APTable, PXNTable and (U)XNTable, and a W+X leaf hidden
//! under a table limit would be missed. The kernel must leave HPD clear.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::descriptor::{Permissions, Regime, Role};
use super::table::{AddressSpace, Leaf, TableAccess, TableMemory, TableRoot, walk_root};

/// What the audit needs to know about the exec-memory layout.
#[derive(Clone, Debug, Default)]
pub struct AuditContext<'a> {
    /// SCTLR_ELx.WXN as it is set: with WXN, a writable mapping is never executable (D8.4).
    pub wxn: bool,
    /// The VA window of the exec pool: only 2 MiB pack blocks may be mapped there.
    pub exec_pool_va: Range<u64>,
    /// Physical ranges that only exec packs may map (the demo kernel's exec frames): no writable
    /// view of them may exist, mapped as a pack or not, except the active poke slot, and every
    /// pack block must lie inside one. Empty when pack frames come from a general frame
    /// allocator: then only the frames of live packs are checked.
    pub exec_frames_pa: &'a [Range<u64>],
    /// The fixmap window of text-poke slots: empty when no poke is in progress.
    pub fixmap_va: Range<u64>,
    /// The fixmap VA of the slot of the poke in progress, if any.
    pub active_poke: Option<u64>,
    /// The packs the pool has mapped, with the frame it recorded for each: each must be one
    /// level-2 block onto exactly that frame, and no other block may be in the pool window.
    pub live_packs: &'a [PackFrame],
}

/// A mapped pack and the 2 MiB frame behind it, as the pool records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackFrame {
    /// The pack's VA in the pool window.
    pub va: u64,
    /// The frame's physical address.
    pub pa: u64,
}

/// A rule of the W^X and exec-pool invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A mapping is writable and executable at the privileged level.
    WritableExecutable,
    /// A writable mapping overlaps exec-pool frames, or the physical memory of any executable
    /// mapping (kernel text included), and is not the active poke slot.
    WritableAliasOfExecMemory,
    /// A descriptor that is writable and executable, kept from executing only by SCTLR.WXN: it
    /// would become a W+X mapping the moment WXN is cleared, so it is reported too.
    WritableExecutableBehindWxn,
    /// A pack block that is not onto the frame the pool records for that pack (a stale block,
    /// one the pool has no record of, or one outside the exec frames).
    PackFrameMismatch,
    /// A mapping in the exec-pool window is not a level-2 block, or a live pack is not mapped by
    /// one level-2 block.
    PackNotBlock,
    /// A pack block's attributes are not exactly those of [`Role::ExecPool`], or the tables
    /// above it take execute permission away.
    PackAttributes,
    /// A fixmap slot is valid while it is not the active poke slot.
    FixmapLiveWhenIdle,
    /// A root entry of a CPU's view differs from the kernel's root (a change to the shared top
    /// level that did not reach every root).
    ViewDiverges,
    /// A CPU's private root entry (the fixmap's) is reachable from another root: the kernel's, or
    /// another CPU's view, which could then see or store through that CPU's alias.
    PrivateEntryShared,
}

impl Rule {
    /// What the rule forbids, in a few words.
    pub const fn description(self) -> &'static str {
        match self {
            Self::WritableExecutable => "writable and executable",
            Self::WritableAliasOfExecMemory => "writable alias of executable memory",
            Self::WritableExecutableBehindWxn => {
                "writable and executable descriptor (only WXN stops it)"
            }
            Self::PackFrameMismatch => "exec pack block not on the frame the pool records",
            Self::PackNotBlock => "exec pack not mapped by one 2 MiB block",
            Self::PackAttributes => "exec pack attributes differ from ExecPool",
            Self::FixmapLiveWhenIdle => "fixmap slot valid outside a poke",
            Self::ViewDiverges => "CPU view's root entry differs from the kernel's",
            Self::PrivateEntryShared => "CPU's private root entry reachable from another root",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// One rule broken by one leaf (or one live pack with no block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// First VA of the leaf, or the live pack's VA.
    pub va: u64,
    /// Lookup level of the leaf (2 for a live pack with nothing mapped).
    pub level: u8,
    /// The raw leaf descriptor (0 if nothing is mapped).
    pub raw: u64,
    /// Effective privileged permissions of the leaf; `None` if nothing is mapped.
    pub permissions: Option<Permissions>,
    /// The rule broken.
    pub rule: Rule,
}

impl fmt::Display for Violation {
    /// One line: `0x3c000000 L2 block RW X: writable and executable`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} L{} ", self.va, self.level)?;
        match self.permissions {
            None => write!(f, "unmapped")?,
            Some(permissions) => {
                let kind = if self.level == 3 { "page" } else { "block" };
                write!(f, "{kind} {permissions}")?;
            }
        }
        write!(f, ": {}", self.rule)
    }
}

/// Audits the tables under `root` of regime `R`, reached through `access`, and returns every
/// violation, in VA order (the live-pack checks last).
///
/// # Safety
///
/// As for [`walk_root`]: `root.pa` is the physical address of a readable root table reached
/// through `access`, every table descriptor reachable from it points to a readable 4 KiB table,
/// and none of them is freed during the call.
pub unsafe fn audit_root<R: Regime>(
    root: TableRoot,
    access: &impl TableAccess,
    context: &AuditContext<'_>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    // For each live pack, the leaf that maps its first byte, if any.
    let mut pack_leaves: Vec<Option<Leaf<R>>> = Vec::new();
    pack_leaves.resize(context.live_packs.len(), None);
    // Physical ranges of executable leaves, and writable leaves, for the alias rule below.
    let mut exec_pa: Vec<(u64, Range<u64>)> = Vec::new();
    let mut writable: Vec<Leaf<R>> = Vec::new();
    let visit = |leaf: &Leaf<R>| {
        check_leaf(leaf, context, &mut violations);
        let permissions = leaf.permissions(context.wxn);
        if permissions.exec {
            exec_pa.push((leaf.va, leaf.pa..leaf.pa + leaf.size));
        }
        if permissions.write && !is_active_poke(leaf, context) {
            writable.push(*leaf);
        }
        for (slot, pack) in pack_leaves.iter_mut().zip(context.live_packs) {
            if (leaf.va..leaf.va + leaf.size).contains(&pack.va) {
                *slot = Some(*leaf);
            }
        }
    };
    // SAFETY: the caller's contract is that of `walk_root`.
    unsafe { walk_root::<R>(root, access, visit) };

    // A writable view of memory that is executable elsewhere (the exec frames are covered per leaf
    // above, mapped or not; this catches e.g. a writable alias of kernel text).
    // (A W+X leaf overlapping only itself is reported as W+X already.)
    for leaf in &writable {
        let pa_range = leaf.pa..leaf.pa + leaf.size;
        let aliases = exec_pa
            .iter()
            .any(|(va, exec)| *va != leaf.va && overlaps(exec, &pa_range));
        let reported = violations
            .iter()
            .any(|v| v.va == leaf.va && v.rule == Rule::WritableAliasOfExecMemory);
        if aliases && !reported {
            violations.push(Violation {
                va: leaf.va,
                level: leaf.level,
                raw: leaf.raw,
                permissions: Some(leaf.permissions(context.wxn)),
                rule: Rule::WritableAliasOfExecMemory,
            });
        }
    }

    for (pack, leaf) in context.live_packs.iter().map(|p| p.va).zip(pack_leaves) {
        let violation = match leaf {
            Some(leaf) if leaf.level == 2 && leaf.va == pack => continue,
            Some(leaf) => Violation {
                va: pack,
                level: leaf.level,
                raw: leaf.raw,
                permissions: Some(leaf.permissions(context.wxn)),
                rule: Rule::PackNotBlock,
            },
            None => Violation {
                va: pack,
                level: 2,
                raw: 0,
                permissions: None,
                rule: Rule::PackNotBlock,
            },
        };
        // A page at the pack's VA inside the window was reported by the walk already.
        if !violations.contains(&violation) {
            violations.push(violation);
        }
    }
    violations
}

impl<R: Regime, M: TableMemory> AddressSpace<R, M> {
    /// Audits this address space (see [`audit_root`]).
    pub fn audit(&self, context: &AuditContext<'_>) -> Vec<Violation> {
        // SAFETY: the root and every table reachable from it are owned by `self` and freed only
        // when it is dropped (the `AddressSpace` invariant).
        unsafe { audit_root::<R>(self.root(), self.memory(), context) }
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

/// The per-leaf rules.
fn check_leaf<R: Regime>(leaf: &Leaf<R>, context: &AuditContext<'_>, out: &mut Vec<Violation>) {
    let permissions = leaf.permissions(context.wxn);
    let mut report = |rule| {
        out.push(Violation {
            va: leaf.va,
            level: leaf.level,
            raw: leaf.raw,
            permissions: Some(permissions),
            rule,
        });
    };
    let va_range = leaf.va..leaf.va + leaf.size;
    let pa_range = leaf.pa..leaf.pa + leaf.size;
    let is_active_poke = is_active_poke(leaf, context);

    if permissions.write && permissions.exec {
        report(Rule::WritableExecutable);
    } else if context.wxn {
        let without_wxn = leaf.permissions(false);
        if without_wxn.write && without_wxn.exec {
            report(Rule::WritableExecutableBehindWxn);
        }
    }
    let in_exec_frames = context
        .exec_frames_pa
        .iter()
        .any(|frames| overlaps(&pa_range, frames));
    if permissions.write && in_exec_frames && !is_active_poke {
        report(Rule::WritableAliasOfExecMemory);
    }
    if overlaps(&va_range, &context.exec_pool_va) {
        if leaf.level != 2 {
            report(Rule::PackNotBlock);
        } else if !is_exec_pack(leaf) {
            report(Rule::PackAttributes);
        } else {
            let recorded = context.live_packs.iter().find(|p| p.va == leaf.va);
            let inside_frames = context.exec_frames_pa.is_empty()
                || context
                    .exec_frames_pa
                    .iter()
                    .any(|f| f.start <= pa_range.start && pa_range.end <= f.end);
            if recorded.map(|p| p.pa) != Some(leaf.pa) || !inside_frames {
                report(Rule::PackFrameMismatch);
            }
        }
    }
    if overlaps(&va_range, &context.fixmap_va) && !is_active_poke {
        report(Rule::FixmapLiveWhenIdle);
    }
}

/// The fixmap slot of the poke in progress.
fn is_active_poke<R: Regime>(leaf: &Leaf<R>, context: &AuditContext<'_>) -> bool {
    context.active_poke == Some(leaf.va) && leaf.level == 3 && context.fixmap_va.contains(&leaf.va)
}

/// Exactly the [`Role::ExecPool`] bits, and executable read-only once the table limits apply.
fn is_exec_pack<R: Regime>(leaf: &Leaf<R>) -> bool {
    let read_exec = Permissions {
        read: true,
        write: false,
        exec: true,
    };
    leaf.attrs == R::role_attributes(Role::ExecPool) && leaf.permissions(false) == read_exec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::{BLOCK_SIZE_2M, El1And0, El2, Granularity, NoMaintenance, TableAttributes};
    use Granularity::{Auto, Block2M, Pages};
    use Role::{Code, Data, Device, ExecPool, PokeAlias, Rodata};
    use Rule::*;

    const M2: u64 = BLOCK_SIZE_2M;
    const K4: u64 = crate::mmu::PAGE_SIZE;
    const POOL_VA: u64 = 0x3c00_0000;
    const FRAMES_PA: u64 = 0x4800_0000;
    const FIXMAP_VA: u64 = 0x3F_FFE0_0000;
    const PACKS: [u64; 2] = [POOL_VA, POOL_VA + M2];
    const NONE: TableAttributes = TableAttributes::NONE;

    const FRAMES: Range<u64> = FRAMES_PA..FRAMES_PA + 8 * M2;
    /// PACKS, on the first two exec frames.
    const LIVE: [PackFrame; 2] = [
        PackFrame {
            va: PACKS[0],
            pa: FRAMES_PA,
        },
        PackFrame {
            va: PACKS[1],
            pa: FRAMES_PA + M2,
        },
    ];

    /// The records of packs at `vas`, each on the frame at the same offset in the exec frames.
    fn packs(vas: &[u64]) -> Vec<PackFrame> {
        vas.iter()
            .map(|&va| PackFrame {
                va,
                pa: FRAMES_PA.wrapping_add(va.wrapping_sub(POOL_VA)),
            })
            .collect()
    }

    /// Exec pool of 8 packs, fixmap window of 8 slots, WXN clear, no poke.
    fn context(live_packs: &[PackFrame]) -> AuditContext<'_> {
        AuditContext {
            wxn: false,
            exec_pool_va: POOL_VA..POOL_VA + 8 * M2,
            exec_frames_pa: core::slice::from_ref(&FRAMES),
            fixmap_va: FIXMAP_VA..FIXMAP_VA + 8 * K4,
            active_poke: None,
            live_packs,
        }
    }

    /// Maps with no maintenance (the tables are not live).
    fn map<R: Regime>(space: &mut AddressSpace<R>, va: u64, pa: u64, size: u64, role: Role) {
        let granularity = if role == ExecPool { Block2M } else { Auto };
        space
            .map(va, pa, size, role, granularity, &mut NoMaintenance)
            .expect("map");
    }

    /// A kernel-like space: text, rodata, data, MMIO, two packs, a reserved fixmap window.
    fn clean<R: Regime>() -> AddressSpace<R> {
        let mut space = AddressSpace::<R>::new().expect("root");
        map(&mut space, 0x4008_0000, 0x4008_0000, 0x10000, Code);
        map(&mut space, 0x4009_0000, 0x4009_0000, 0x8000, Rodata);
        map(&mut space, 0x4020_0000, 0x4020_0000, 3 * M2, Data);
        map(&mut space, 0x0900_0000, 0x0900_0000, K4, Device);
        map(&mut space, PACKS[0], FRAMES_PA, M2, ExecPool);
        map(&mut space, PACKS[1], FRAMES_PA + M2, M2, ExecPool);
        space
            .reserve_pages(FIXMAP_VA, 8 * K4, &mut NoMaintenance)
            .expect("fixmap");
        space
    }

    fn rules(violations: &[Violation]) -> Vec<(u64, Rule)> {
        violations.iter().map(|v| (v.va, v.rule)).collect()
    }

    /// Sets table-descriptor limits on the entry for `va` at `level`.
    fn limit<R: Regime>(space: &mut AddressSpace<R>, va: u64, level: u8, attrs: TableAttributes) {
        patch(space, va, level, |raw| raw | attrs.bits());
    }

    /// Rewrites the entry for `va` at `level`: the raw bits the API refuses to build.
    fn patch<R: Regime>(space: &mut AddressSpace<R>, va: u64, level: u8, f: impl Fn(u64) -> u64) {
        let entry = space.entry_for_test(va, level).expect("entry");
        // SAFETY: an entry of a live table of this space, which nothing else accesses now.
        unsafe { entry.write_volatile(f(entry.read_volatile())) };
    }

    #[test]
    fn clean_space_reports_nothing() {
        assert_eq!(clean::<El1And0>().audit(&context(&LIVE)), vec![]);
        let wxn = AuditContext {
            wxn: true,
            ..context(&LIVE)
        };
        assert_eq!(clean::<El2>().audit(&wxn), vec![]);
    }

    #[test]
    fn active_poke_slot_is_the_one_allowed_alias() {
        let space = clean::<El1And0>();
        let slot = space.leaf_entry_ptr(FIXMAP_VA).expect("reserved");
        let raw = El1And0::page_descriptor(FRAMES_PA + 0x3000, PokeAlias).expect("ok");
        // SAFETY: a reserved fixmap entry of a live space, written once, as the poke path does.
        unsafe { slot.as_ptr().write_volatile(raw) };
        let poking = AuditContext {
            active_poke: Some(FIXMAP_VA),
            ..context(&LIVE)
        };
        assert_eq!(space.audit(&poking), vec![]);
        // The same slot with no poke in progress: left valid, and a writable alias of a pack.
        let idle = rules(&space.audit(&context(&LIVE)));
        assert_eq!(
            idle,
            vec![
                (FIXMAP_VA, WritableAliasOfExecMemory),
                (FIXMAP_VA, FixmapLiveWhenIdle)
            ]
        );
        // Another slot named as the active one does not cover this one.
        let other = AuditContext {
            active_poke: Some(FIXMAP_VA + K4),
            ..context(&LIVE)
        };
        assert_eq!(space.audit(&other).len(), 2);
    }

    #[test]
    fn writable_executable_unless_wxn() {
        let mut space = clean::<El1And0>();
        let va = POOL_VA - 2 * M2;
        map(&mut space, va, 0x1_0000_0000, M2, Data);
        // Clear PXN: EL1 may now execute a writable block.
        patch(&mut space, va, 2, |raw| raw & !(1 << 53));
        let violations = space.audit(&context(&LIVE));
        assert_eq!(rules(&violations), vec![(va, WritableExecutable)]);
        assert_eq!(
            violations[0].to_string(),
            "0x3bc00000 L2 block RW X: writable and executable"
        );
        // SCTLR.WXN makes every writable mapping execute-never: no longer W+X, but the descriptor
        // still is, and would be the moment WXN is cleared.
        assert_eq!(
            rules(&space.audit(&AuditContext {
                wxn: true,
                ..context(&LIVE)
            })),
            vec![(va, WritableExecutableBehindWxn)]
        );
        // UXNTable only limits EL0: still reported.
        limit(
            &mut space,
            va,
            1,
            TableAttributes {
                xn_table: true,
                ..NONE
            },
        );
        assert_eq!(
            rules(&space.audit(&context(&LIVE))),
            vec![(va, WritableExecutable)]
        );
    }

    #[test]
    fn table_limits_remove_the_violation() {
        let no_exec = TableAttributes {
            pxn_table: true,
            ..NONE
        };
        let no_write = TableAttributes {
            ap_table_no_write: true,
            ..NONE
        };
        for (level, attrs) in [(1, no_exec), (2, no_exec), (1, no_write), (2, no_write)] {
            let mut space = AddressSpace::<El1And0>::new().expect("root");
            let va = 0x1000_0000;
            map(&mut space, va, 0x1000, K4, Data);
            patch(&mut space, va, 3, |raw| raw & !(1 << 53));
            assert_eq!(
                rules(&space.audit(&context(&[]))),
                vec![(va, WritableExecutable)]
            );
            limit(&mut space, va, level, attrs);
            assert_eq!(space.audit(&context(&[])), vec![], "L{level} {attrs:?}");
        }
    }

    #[test]
    fn el2_uses_xn_and_xn_table() {
        let mut space = AddressSpace::<El2>::new().expect("root");
        let va = 0x1000_0000;
        map(&mut space, va, 0x1000, K4, Data);
        patch(&mut space, va, 3, |raw| raw & !(1 << 54));
        assert_eq!(
            rules(&space.audit(&context(&[]))),
            vec![(va, WritableExecutable)]
        );
        // PXNTable is RES0 in EL2 and changes nothing; XNTable removes execution.
        limit(
            &mut space,
            va,
            1,
            TableAttributes {
                pxn_table: true,
                ..NONE
            },
        );
        assert_eq!(space.audit(&context(&[])).len(), 1);
        limit(
            &mut space,
            va,
            1,
            TableAttributes {
                xn_table: true,
                ..NONE
            },
        );
        assert_eq!(space.audit(&context(&[])), vec![]);
    }

    #[test]
    fn writable_alias_of_pool_frames() {
        let mut space = clean::<El1And0>();
        let va = 0x4100_0000;
        map(&mut space, va, FRAMES_PA + 0x1000, K4, Data);
        let violations = space.audit(&context(&LIVE));
        assert_eq!(rules(&violations), vec![(va, WritableAliasOfExecMemory)]);
        let line = "0x41000000 L3 page RW NX: writable alias of executable memory";
        assert_eq!(violations[0].to_string(), line);
        // A read-only alias is no W^X problem.
        space.unmap(va, K4, &mut NoMaintenance).expect("unmap");
        map(&mut space, va, FRAMES_PA + 0x1000, K4, Rodata);
        assert_eq!(space.audit(&context(&LIVE)), vec![]);
    }

    #[test]
    fn writable_alias_of_kernel_text() {
        let mut space = clean::<El1And0>();
        // A writable view of the code page at 0x4008_0000, outside any exec-pool range.
        let va = 0x5000_0000;
        map(&mut space, va, 0x4008_0000, K4, Data);
        assert_eq!(
            rules(&space.audit(&context(&LIVE))),
            vec![(va, WritableAliasOfExecMemory)]
        );
        // Read-only, it is harmless.
        space.unmap(va, K4, &mut NoMaintenance).expect("unmap");
        map(&mut space, va, 0x4008_0000, K4, Rodata);
        assert_eq!(space.audit(&context(&LIVE)), vec![]);
    }

    #[test]
    fn pack_backed_by_memory_outside_the_frames() {
        let mut space = clean::<El1And0>();
        let va = POOL_VA + 2 * M2;
        map(&mut space, va, 0x1_0000_0000, M2, ExecPool);
        assert_eq!(
            rules(&space.audit(&context(&LIVE))),
            vec![(va, PackFrameMismatch)]
        );
    }

    #[test]
    fn pack_block_on_another_frame_than_recorded() {
        // The pool records PACKS[1] on the frame at FRAMES_PA + 3 MiB blocks; the block points
        // to FRAMES_PA + 1: inside the exec frames, but not the pack's frame.
        let space = clean::<El1And0>();
        let records = [
            PackFrame {
                va: PACKS[0],
                pa: FRAMES_PA,
            },
            PackFrame {
                va: PACKS[1],
                pa: FRAMES_PA + 3 * M2,
            },
        ];
        assert_eq!(
            rules(&space.audit(&context(&records))),
            vec![(PACKS[1], PackFrameMismatch)]
        );
        // Frames from a general allocator (no exec-frame range): the record alone decides.
        let general = AuditContext {
            exec_frames_pa: &[],
            ..context(&records)
        };
        assert_eq!(
            rules(&space.audit(&general)),
            vec![(PACKS[1], PackFrameMismatch)]
        );
        let general = AuditContext {
            exec_frames_pa: &[],
            ..context(&LIVE)
        };
        assert_eq!(space.audit(&general), vec![]);
        // A pack block the pool has no record of at all (a released pack left mapped).
        assert_eq!(
            rules(&space.audit(&context(&packs(&PACKS[..1])))),
            vec![(PACKS[1], PackFrameMismatch)]
        );
    }

    #[test]
    fn pack_split_into_pages() {
        let mut space = clean::<El1And0>();
        let pack = POOL_VA + 2 * M2;
        let pages = Granularity::Pages;
        let m = &mut NoMaintenance;
        space
            .map(pack, FRAMES_PA + 2 * M2, M2, ExecPool, pages, m)
            .expect("map");
        let violations = space.audit(&context(&packs(&[PACKS[0], PACKS[1], pack])));
        // Every page once; the live-pack check adds nothing for the page at the pack's VA.
        assert_eq!(violations.len(), 512);
        assert!(
            violations
                .iter()
                .all(|v| v.rule == PackNotBlock && v.level == 3)
        );
        let line = "0x3c400000 L3 page RO X: exec pack not mapped by one 2 MiB block";
        assert_eq!(violations[0].to_string(), line);
    }

    #[test]
    fn live_pack_not_mapped() {
        let missing = POOL_VA + 4 * M2;
        let violations = clean::<El1And0>().audit(&context(&packs(&[PACKS[0], PACKS[1], missing])));
        assert_eq!(rules(&violations), vec![(missing, PackNotBlock)]);
        let line = "0x3c800000 L2 unmapped: exec pack not mapped by one 2 MiB block";
        assert_eq!(violations[0].to_string(), line);
    }

    #[test]
    fn live_pack_outside_the_window_mapped_by_pages() {
        let mut space = clean::<El1And0>();
        let pack = POOL_VA - M2;
        space
            .map(
                pack,
                FRAMES_PA + 5 * M2,
                M2,
                Code,
                Pages,
                &mut NoMaintenance,
            )
            .expect("map");
        let violations = space.audit(&context(&packs(&[PACKS[0], PACKS[1], pack])));
        assert_eq!(rules(&violations), vec![(pack, PackNotBlock)]);
    }

    #[test]
    fn pack_with_wrong_attributes() {
        let mut space = clean::<El1And0>();
        let (writable, pxn) = (POOL_VA + 2 * M2, POOL_VA + 3 * M2);
        space
            .map(
                writable,
                FRAMES_PA + 2 * M2,
                M2,
                Data,
                Block2M,
                &mut NoMaintenance,
            )
            .expect("map");
        space
            .map(
                pxn,
                FRAMES_PA + 3 * M2,
                M2,
                Rodata,
                Block2M,
                &mut NoMaintenance,
            )
            .expect("map");
        let found = rules(&space.audit(&context(&LIVE)));
        let expected = [
            (writable, WritableAliasOfExecMemory),
            (writable, PackAttributes),
            (pxn, PackAttributes),
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn pack_made_non_executable_by_a_table() {
        let mut space = clean::<El1And0>();
        limit(
            &mut space,
            POOL_VA,
            1,
            TableAttributes {
                pxn_table: true,
                ..NONE
            },
        );
        let found = rules(&space.audit(&context(&LIVE)));
        assert!(found.contains(&(PACKS[0], PackAttributes)));
        assert!(found.contains(&(PACKS[1], PackAttributes)));
    }

    #[test]
    fn audit_root_sees_what_the_space_sees() {
        let mut space = clean::<El1And0>();
        patch(&mut space, PACKS[1], 2, |raw| raw & !(1 << 7)); // AP[2] clear: a writable pack
        // SAFETY: the root of a live space that outlives the call.
        let from_root = unsafe {
            audit_root::<El1And0>(
                space.root(),
                &crate::mmu::LinearMap::IDENTITY,
                &context(&LIVE),
            )
        };
        assert_eq!(from_root, space.audit(&context(&LIVE)));
        let expected = [
            (PACKS[1], WritableExecutable),
            (PACKS[1], WritableAliasOfExecMemory),
            (PACKS[1], PackAttributes),
        ];
        assert_eq!(rules(&from_root), expected);
    }
}
