//! Text poke on the hardware: the only way code gets into exec memory.
//!
//! Exec packs are mapped RO + X and never writable. To write, this CPU maps the physical page
//! behind the destination (found in the exec pool's own records) at its fixmap slot as RW + PXN +
//! UXN, with interrupts masked, stores, and unmaps it again with a broadcast TLB invalidation — page
//! by page for ranges that cross pages. Then one cache-maintenance pass over the whole range makes
//! the new code visible to instruction fetch (see `arch::aarch64::cache`).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{DAIF, Readable, Writeable};
use spin::Mutex;

use crate::arch::aarch64::{cache, cpu, mmu::BroadcastTlb};
use crate::mmu::{AddressSpace, El1And0, PAGE_SIZE, Role, TlbMaintenance};
use crate::poke::{self, ExecRegion, INSN_BYTES, PokeError};
use crate::runtime::board;
use crate::runtime::{exec_pool, memory, mmu};

/// The level-3 entry of each CPU's poke slot (stable: reserved at boot, tables are never freed).
static SLOT_ENTRIES: [AtomicPtr<u64>; board::CPUS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; board::CPUS];

/// The VA of each CPU's poke slot, and the exec pool window (start, end): copies of the memory
/// plan's, read with plain loads on every poke.
static SLOT_VAS: [AtomicU64; board::CPUS] = [const { AtomicU64::new(0) }; board::CPUS];
static POOL_WINDOW: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Pokes done (pages mapped through the alias), for reports and tests.
static ALIAS_MAPS: AtomicUsize = AtomicUsize::new(0);

/// Serialises patches of live code, so the old instruction a patch checked is still there when it
/// writes (Linux `text_mutex`). Plain copies into slots need no such lock: each writer owns its slot
/// and each CPU has its own alias slot.
static PATCH_LOCK: Mutex<()> = Mutex::new(());

/// Finds the fixmap entries. Runs at boot, after the MMU is on.
pub fn init() {
    let pool = memory::plan().exec_pool;
    POOL_WINDOW[0].store(pool.start, Ordering::Relaxed);
    POOL_WINDOW[1].store(pool.end(), Ordering::Relaxed);
    for (cpu, entry) in SLOT_ENTRIES.iter().enumerate() {
        let slot = mmu::fixmap_poke_slot(cpu);
        SLOT_VAS[cpu].store(slot, Ordering::Relaxed);
        let found = mmu::with_tables(|t| t.leaf_entry_ptr(slot));
        entry.store(
            found.map_or(ptr::null_mut(), |p| p.as_ptr()),
            Ordering::Release,
        );
    }
}

/// How many 4 KiB alias mappings all pokes so far have made.
pub fn alias_maps() -> usize {
    ALIAS_MAPS.load(Ordering::Relaxed)
}

/// The pack position of the pool window holding `dst` (address arithmetic only; whether it is
/// mapped is checked once, under the pool's records lock, by the write itself).
fn pack_of(dst: u64) -> Result<ExecRegion, PokeError> {
    let (start, end) = (
        POOL_WINDOW[0].load(Ordering::Relaxed),
        POOL_WINDOW[1].load(Ordering::Relaxed),
    );
    if !(start..end).contains(&dst) {
        return Err(PokeError::NotExecMemory { addr: dst });
    }
    let start = dst - (dst - start) % crate::mmu::BLOCK_SIZE_2M;
    Ok(ExecRegion::pack(start, start + crate::mmu::BLOCK_SIZE_2M))
}

/// The instruction at `addr`, which must be aligned and in a pack the held `records` show mapped.
fn read_mapped(records: &exec_pool::Records, addr: u64) -> Result<u32, PokeError> {
    poke::check_insn_aligned(addr)?;
    records
        .exec_pa(addr)
        .ok_or(PokeError::NotExecMemory { addr })?;
    // SAFETY: `addr` is aligned and inside a mapped pack (RO + X, readable), which cannot be
    // unmapped while `records` is held.
    Ok(unsafe { ptr::read_volatile(addr as *const u32) })
}

/// Copies `src` to exec address `dst` (Linux `text_poke_copy`). The range must lie in one mapped
/// pack.
pub fn text_copy(dst: u64, src: &[u8]) -> Result<(), PokeError> {
    text_copy_within(pack_of(dst)?, dst, src)
}

/// Copies `src` to `dst`, which must stay inside `region` (a slot or a pack).
pub fn text_copy_within(region: ExecRegion, dst: u64, src: &[u8]) -> Result<(), PokeError> {
    poke::check_range(dst, src.len(), region)?;
    let records = exec_pool::records();
    records
        .exec_pa(dst)
        .ok_or(PokeError::NotExecMemory { addr: dst })?;
    write_through_alias(&records, dst, src.len(), |alias, offset, len| {
        // SAFETY: `alias` is this CPU's RW mapping of the page behind dst + offset, `len` bytes fit
        // in it (write_through_alias cuts at page boundaries), and `src` is ordinary memory.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr().add(offset), alias, len) };
    });
    Ok(())
}

/// Writes `count` copies of the instruction `insn` from `dst` (Linux `aarch64_insn_set`), e.g. BRK.
pub fn text_set(dst: u64, insn: u32, count: usize) -> Result<(), PokeError> {
    text_set_within(pack_of(dst)?, dst, insn, count)
}

/// [`text_set`] limited to `region`.
pub fn text_set_within(
    region: ExecRegion,
    dst: u64,
    insn: u32,
    count: usize,
) -> Result<(), PokeError> {
    poke::check_insn_aligned(dst)?;
    let len = count.checked_mul(INSN_BYTES).ok_or(PokeError::PastEnd {
        dst,
        len: usize::MAX,
        region,
    })?;
    poke::check_range(dst, len, region)?;
    let records = exec_pool::records();
    records
        .exec_pa(dst)
        .ok_or(PokeError::NotExecMemory { addr: dst })?;
    write_through_alias(&records, dst, len, |alias, _, len| {
        let words = alias.cast::<u32>();
        for i in 0..len / INSN_BYTES {
            // SAFETY: 4-byte aligned (dst is aligned and chunks split at page boundaries) and inside
            // the alias page.
            unsafe { words.add(i).write_volatile(insn) };
        }
    });
    Ok(())
}

/// Reads the instruction at exec address `addr` (exec memory is readable).
pub fn read_insn(addr: u64) -> Result<u32, PokeError> {
    read_mapped(&exec_pool::records(), addr)
}

/// Replaces one instruction in code that may be running on other CPUs: a single aligned 32-bit
/// store, allowed only when both the old and the new instruction are in the CMODX set (Arm ARM
/// B2.2.5), so every CPU executes either the old or the new one. `expected_old` must match what is
/// there. Any other change needs [`patch_batch`].
pub fn patch_insn(addr: u64, expected_old: u32, new: u32) -> Result<(), PokeError> {
    let _patching = PATCH_LOCK.lock();
    let records = exec_pool::records();
    let found = read_mapped(&records, addr)?;
    poke::check_old(addr, expected_old, found)?;
    poke::check_pair(found, new)?;
    write_through_alias(&records, addr, INSN_BYTES, |alias, _, _| {
        // SAFETY: one aligned 32-bit store into the alias page (the CMODX single-copy-atomic write).
        unsafe { alias.cast::<u32>().write_volatile(new) };
    });
    Ok(())
}

/// Arbitrary instruction changes, made while every other online CPU waits in a rendezvous and
/// then executes an ISB (Linux's `stop_machine` pattern for `aarch64_insn_patch_text`). Every
/// address is checked first; on any error nothing is written. All stores are made first, then one
/// cache-maintenance pass per run of neighbouring instructions.
pub fn patch_batch(patches: &[(u64, u32)]) -> Result<(), PokeError> {
    let _patching = PATCH_LOCK.lock();
    // Every lookup and lock before the others stop: a stopped CPU may hold anything else.
    let records = exec_pool::records();
    for &(addr, _) in patches {
        poke::check_insn_aligned(addr)?;
        records
            .exec_pa(addr)
            .ok_or(PokeError::NotExecMemory { addr })?;
    }
    // The written instructions, sorted, as ranges that merge neighbours less than a page apart:
    // one maintenance pass per range, not per instruction.
    let mut ranges: alloc::vec::Vec<(u64, u64)> = patches
        .iter()
        .map(|&(a, _)| (a, a + INSN_BYTES as u64))
        .collect();
    ranges.sort_unstable();
    ranges.dedup_by(|next, merged| {
        if next.0 < merged.1 + PAGE_SIZE {
            merged.1 = merged.1.max(next.1);
            true
        } else {
            false
        }
    });
    let plan = exec_pool::maintenance_plan();
    super::rendezvous::stop_others_and_run(|| {
        for &(addr, new) in patches {
            store_through_alias(&records, addr, INSN_BYTES, |alias, _, _| {
                // SAFETY: one aligned 32-bit store into the alias page; the others are stopped.
                unsafe { alias.cast::<u32>().write_volatile(new) };
            });
        }
        for &(start, end) in &ranges {
            cache::sync_code_range(plan, start, end);
        }
    });
    Ok(())
}

/// [`store_through_alias`], then one cache-maintenance pass over the whole range.
fn write_through_alias(
    records: &exec_pool::Records,
    dst: u64,
    len: usize,
    write: impl FnMut(*mut u8, usize, usize),
) {
    store_through_alias(records, dst, len, write);
    cache::sync_code_range(exec_pool::maintenance_plan(), dst, dst + len as u64);
}

/// Maps each page of `[dst, dst + len)` at this CPU's fixmap slot in turn, lets `write` store
/// through it (alias pointer, offset into the range, bytes in this page) and unmaps it. No cache
/// maintenance: the caller makes one pass over everything it wrote. The caller has checked the
/// range and holds the pool's `records`, so no frame behind it can be freed and reused meanwhile.
fn store_through_alias(
    records: &exec_pool::Records,
    dst: u64,
    len: usize,
    mut write: impl FnMut(*mut u8, usize, usize),
) {
    let cpu = cpu::cpu_id();
    let entry = SLOT_ENTRIES[cpu].load(Ordering::Acquire);
    assert!(!entry.is_null(), "poke::init runs at boot");
    // Stored before the entry (Release), so visible after the Acquire above.
    let slot = SLOT_VAS[cpu].load(Ordering::Relaxed);
    let mut tlb = BroadcastTlb::<El1And0>::new();

    let mut offset = 0;
    while offset < len {
        let at = dst + offset as u64;
        let in_page = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(len - offset);
        let pa = records.exec_pa(at).expect("checked by the caller") & !(PAGE_SIZE - 1);
        let alias = AddressSpace::<El1And0>::page_descriptor(pa, Role::PokeAlias)
            .expect("exec frames are page-aligned RAM");

        // Interrupts stay masked while the writable alias exists: nothing else runs on this CPU
        // and sees it, and the alias is never left behind by a preemption.
        let daif = DAIF.get();
        DAIF.write(DAIF::I::Masked + DAIF::F::Masked + DAIF::A::Masked + DAIF::D::Masked);
        // SAFETY: `entry` is this CPU's reserved, invalid fixmap L3 entry; only this CPU writes it.
        unsafe { entry.write_volatile(alias) };
        tlb.publish();
        write((slot + at % PAGE_SIZE) as *mut u8, offset, in_page);
        // SAFETY: as above; the alias is removed before interrupts are unmasked.
        unsafe { entry.write_volatile(0) };
        tlb.invalidate_va(slot, 3);
        DAIF.set(daif);
        ALIAS_MAPS.fetch_add(1, Ordering::Relaxed);

        offset += in_page;
    }
}
