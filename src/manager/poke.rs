//! Text poke: the only way code gets into exec memory.
//!
//! Exec packs are mapped RO + X and never writable. To write, this CPU maps the physical page
//! behind the destination (found in the pool's own records) at its poke slot as RW +
//! execute-never, with interrupts masked, stores, and unmaps it again — page by page for ranges
//! that cross pages. The slot is in this CPU's own view of the tables (`super`'s "one view of the
//! tables per CPU"), so no other CPU can walk it and the unmap is a local invalidation
//! (`TLBI VAALE1` / `VALE2`, `DSB NSH`). Then one cache-maintenance pass over the whole range
//! makes the new code visible to instruction fetch (see `arch::aarch64::cache`).
//!
//! What keeps the physical page the one behind the exec address until the poke is done: the poke
//! is inside the poke gate on its CPU ([`crate::sync::gate`], a per-CPU flag and a fence, with
//! interrupts masked) from before it looks the page up in the pack table until after its
//! maintenance, and an unmap (or an audit) closes the gate, waiting for every poke inside,
//! before the pack goes. A batch patch also holds the patch lock, inside the gate.
//!
//! The two most common pokes have a fast path that calls nothing (no stack frame, no register
//! kept across a call): `patch_insn` of an aligned CMODX pair, and a copy of whole instructions
//! within one cache line. Each enters the gate only if it is open
//! ([`crate::sync::gate::Gate::try_enter`]), stores, and runs the one-line maintenance pass
//! inlined; everything else (refusals, a closed gate, longer copies) takes the general path out
//! of line, having written nothing.

use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use super::{ExecManager, Platform};
use crate::arch::aarch64::{cache, mmu::LocalTlb};
use crate::layout::Region;
use crate::mmu::{BLOCK_SIZE_2M, PAGE_SIZE, TlbMaintenance};
use crate::poke::{self, ExecRegion, INSN_BYTES, MaintenancePlan, PokeError};

impl<P: Platform> ExecManager<P> {
    /// How many 4 KiB alias mappings all pokes so far have made (the sum of every CPU's count).
    pub fn alias_maps(&self) -> usize {
        self.per_cpu
            .iter()
            .map(|c| c.alias_maps.load(Ordering::Relaxed))
            .sum()
    }

    /// The fixmap VA of the block a fresh pack is filled through (`None` before `init`).
    pub fn fill_block(&self) -> Option<u64> {
        self.config.get().map(super::pool::fill_block)
    }

    /// The fixmap VA of CPU `cpu`'s poke slot (for the audit of a poke in progress): the same VA
    /// on every CPU, each mapping it in its own view only.
    pub fn poke_slot(&self, cpu: usize) -> Option<u64> {
        let cpus = self.hot.cpus.load(Ordering::Acquire);
        (cpu < cpus).then(|| self.hot.fixmap.load(Ordering::Relaxed))
    }

    /// Opens the kernel's own text to [`ExecManager::patch_insn`], [`ExecManager::patch_batch`]
    /// and [`ExecManager::read_insn`] (Linux ftrace and kprobes patch kernel text through the same
    /// fixmap poke, `patch_map`): each patch maps the physical page behind the instruction at this
    /// CPU's poke slot, as for exec memory. `text` is the code's VA range (4 KiB aligned) and
    /// `pa` the physical address of its first byte. Copies (`write`, `text_copy`, `text_set`)
    /// stay limited to the exec pool. Once only.
    ///
    /// # Safety
    /// `text` is mapped read-only + executable to `pa..pa + text.size` (normal memory) for as long
    /// as the manager is used, nothing else writes it, and it does not overlap the pool.
    pub unsafe fn allow_kernel_text_patching(
        &self,
        text: Region,
        pa: u64,
    ) -> Result<(), PokeError> {
        let page = PAGE_SIZE;
        let bad = PokeError::NotExecMemory { addr: text.start };
        if text.size == 0
            || !text.start.is_multiple_of(page)
            || !text.size.is_multiple_of(page)
            || !pa.is_multiple_of(page)
            || text.start.checked_add(text.size).is_none()
            || pa.checked_add(text.size).is_none_or(|end| end > 1 << 48)
        {
            return Err(bad);
        }
        let pool =
            self.hot.pool_start.load(Ordering::Relaxed)..self.hot.pool_end.load(Ordering::Relaxed);
        if text.start < pool.end && pool.start < text.end() {
            return Err(bad);
        }
        // Written once, before any patch can look (a second call is refused): PA and end first,
        // the start last (Release), so a reader that sees the start sees the rest.
        if self.hot.text_end.load(Ordering::Acquire) != 0 {
            return Err(bad);
        }
        self.hot.text_pa.store(pa, Ordering::Relaxed);
        self.hot.text_end.store(text.end(), Ordering::Release);
        self.hot.text_start.store(text.start, Ordering::Release);
        Ok(())
    }

    /// The PA behind exec address `va`, if its pack is mapped (from the pack table: inside the
    /// poke gate, or with the pool's lock, the pack stays mapped while it is used).
    #[inline]
    pub(super) fn pack_pa(&self, va: u64) -> Option<u64> {
        let start = self.hot.pool_start.load(Ordering::Relaxed);
        let size = self.hot.pool_end.load(Ordering::Relaxed) - start;
        self.packs.pa(va.wrapping_sub(start), size)
    }

    /// The PA behind `va` for a patch: in a mapped pack, or in the kernel text opened to
    /// patching.
    #[inline]
    fn patch_pa(&self, va: u64) -> Option<u64> {
        self.pack_pa(va).or_else(|| {
            let start = self.hot.text_start.load(Ordering::Acquire);
            let end = self.hot.text_end.load(Ordering::Acquire);
            (start != 0 && (start..end).contains(&va))
                .then(|| self.hot.text_pa.load(Ordering::Relaxed) + (va - start))
        })
    }

    /// The instruction at `addr` (aligned, in a mapped pack or the patchable kernel text).
    /// The caller holds the pool's lock (or is inside the poke gate).
    fn read_patchable(&self, addr: u64) -> Result<u32, PokeError> {
        poke::check_insn_aligned(addr)?;
        self.patch_pa(addr)
            .ok_or(PokeError::NotExecMemory { addr })?;
        // SAFETY: `addr` is aligned and inside a mapped pack (which cannot be unmapped while the
        // caller holds the pool's lock) or the kernel text opened to patching: RO + X, readable.
        Ok(unsafe { ptr::read_volatile(addr as *const u32) })
    }

    /// The pack position of the pool window holding `dst` (address arithmetic only; whether it
    /// is mapped is checked once, inside the poke gate, by the write itself).
    fn pack_of(&self, dst: u64) -> Result<ExecRegion, PokeError> {
        let pool_start = self.hot.pool_start.load(Ordering::Relaxed);
        let pool_end = self.hot.pool_end.load(Ordering::Relaxed);
        if !(pool_start..pool_end).contains(&dst) {
            return Err(PokeError::NotExecMemory { addr: dst });
        }
        let start = dst - (dst - pool_start) % BLOCK_SIZE_2M;
        Ok(ExecRegion::pack(start, start + BLOCK_SIZE_2M))
    }

    /// Copies `src` to exec address `dst` (Linux `text_poke_copy`) and publishes it: when this
    /// returns, any CPU may branch to the new code ([`ExecManager::publish`]). The range must lie
    /// in one mapped pack.
    pub fn text_copy(&self, dst: u64, src: &[u8]) -> Result<(), PokeError> {
        self.text_copy_within(self.pack_of(dst)?, dst, src)
    }

    /// Copies `src` to `dst`, which must stay inside `region` (a slot or a pack), and publishes
    /// it.
    pub fn text_copy_within(
        &self,
        region: ExecRegion,
        dst: u64,
        src: &[u8],
    ) -> Result<(), PokeError> {
        self.copy_unpublished(region, dst, src)?;
        self.publish()
    }

    /// The copy of [`ExecManager::text_copy_within`], without the publication (the caller
    /// publishes once for several).
    pub(super) fn copy_unpublished(
        &self,
        region: ExecRegion,
        dst: u64,
        src: &[u8],
    ) -> Result<(), PokeError> {
        if let Some(done) = self.copy_words_in_one_line(region, dst, src) {
            return done;
        }
        self.copy_general(region, dst, src)
    }

    /// [`ExecManager::copy_unpublished`] for what its fast path does not take: checked against
    /// the region (and refused), then through [`ExecManager::write_through_alias`]. Out of line,
    /// so that the refusals and the `memcpy` call give the fast path no stack frame.
    #[inline(never)]
    fn copy_general(&self, region: ExecRegion, dst: u64, src: &[u8]) -> Result<(), PokeError> {
        poke::check_range(dst, src.len(), region)?;
        self.write_through_alias(dst, src.len(), |alias, offset, len| {
            // SAFETY: `alias` is this CPU's RW mapping of the page behind dst + offset, `len`
            // bytes fit in it (the writer cuts at page boundaries), and `src` is ordinary memory.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr().add(offset), alias, len) };
        })
    }

    /// The fast path of [`ExecManager::copy_unpublished`], which calls nothing: whole
    /// instructions (`dst`, `src` and its length 4-byte aligned, not empty) inside `region` and
    /// within one line of both caches, through an open gate, copied a word at a time (no `memcpy`
    /// call) and made visible by the one-line pass, inlined. `None`, with nothing written, for
    /// anything else: the general path ([`ExecManager::copy_general`]) checks, refuses or writes.
    #[inline(always)]
    fn copy_words_in_one_line(
        &self,
        region: ExecRegion,
        dst: u64,
        src: &[u8],
    ) -> Option<Result<(), PokeError>> {
        // `check_range`'s conditions, as one test that fails to the general path (which words
        // the refusal).
        let end = dst.checked_add(src.len() as u64)?;
        if src.is_empty() || dst < region.start || end > region.end {
            return None;
        }
        // Lines are powers of two: the bytes share one when their ends differ only below it
        // ([`MaintenancePlan::within_one_line`]). Stored with the rest of `hot` before
        // `config`: zero, and so never one line, until then. First of the rest, as what sends
        // every longer copy to the general path.
        if dst ^ (end - 1) >= self.hot.min_line.load(Ordering::Relaxed) {
            return None;
        }
        let words = INSN_BYTES as u64;
        if !(dst | src.as_ptr() as u64 | src.len() as u64).is_multiple_of(words) {
            return None;
        }
        let inside = self.try_enter_poke()?;
        let plan = self.plan_inside(&inside);
        let Some(pa) = self.pack_pa(dst) else {
            return Some(Err(PokeError::NotExecMemory { addr: dst }));
        };
        self.store_in_page(&inside, pa, |page| {
            let alias = (page + dst % PAGE_SIZE) as *mut u32;
            let from = src.as_ptr().cast::<u32>();
            for i in 0..src.len() / INSN_BYTES {
                // SAFETY: `alias` maps `dst`'s page RW for this CPU alone and the line holding
                // `[dst, end)` lies in that page; both sides are 4-byte aligned (checked above),
                // and `src` is ordinary memory of `src.len()` bytes. Volatile: stores into the
                // alias are not merged into a `memcpy` call.
                unsafe { alias.add(i).write_volatile(from.add(i).read()) };
            }
        });
        complete_alias_stores();
        cache::sync_code_line_inline(plan, dst);
        Some(Ok(()))
    }

    /// Writes `count` copies of the instruction `insn` from `dst` (Linux `aarch64_insn_set`),
    /// e.g. BRK, and publishes them.
    pub fn text_set(&self, dst: u64, insn: u32, count: usize) -> Result<(), PokeError> {
        self.text_set_within(self.pack_of(dst)?, dst, insn, count)
    }

    /// [`ExecManager::text_set`] limited to `region`.
    pub fn text_set_within(
        &self,
        region: ExecRegion,
        dst: u64,
        insn: u32,
        count: usize,
    ) -> Result<(), PokeError> {
        self.set_unpublished(region, dst, insn, count)?;
        self.publish()
    }

    /// The stores of [`ExecManager::text_set_within`], without the publication: the BRK refill
    /// of a freed slot (published by the next write of the range, before anyone may call it).
    pub(super) fn set_unpublished(
        &self,
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
        self.write_through_alias(dst, len, |alias, _, len| {
            let words = alias.cast::<u32>();
            for i in 0..len / INSN_BYTES {
                // SAFETY: 4-byte aligned (dst is aligned and chunks split at page boundaries) and
                // inside the alias page.
                unsafe { words.add(i).write_volatile(insn) };
            }
        })
    }

    /// Publishes what this CPU wrote to exec memory to every other CPU
    /// ([`super::Platform::synchronise_others`], Linux `kick_all_cpus_sync`): each executes a
    /// context synchronisation event, and from the return any CPU may branch to the code. Every
    /// write ([`ExecManager::write`], [`ExecManager::text_copy`], [`ExecManager::text_set`])
    /// ends with it; call it directly after [`ExecManager::patch_insn`] to know that no CPU runs
    /// the old instruction any more, or before reusing memory that a freed slot's callers may
    /// still be in.
    pub fn publish(&self) -> Result<(), PokeError> {
        P::synchronise_others().map_err(|e| PokeError::NotSynchronised { cpu: e.cpu })
    }

    /// Reads the instruction at exec address `addr` (exec memory is readable), or in the kernel
    /// text opened to patching.
    pub fn read_insn(&self, addr: u64) -> Result<u32, PokeError> {
        let _records = self.pool.read();
        self.read_patchable(addr)
    }

    /// Replaces one instruction in code that may be running on other CPUs: a single aligned
    /// 32-bit store, allowed only when both the old and the new instruction are in the CMODX set
    /// (Arm ARM B2.2.5), so every CPU executes either the old or the new one. `expected_old`
    /// must match what is there. Any other change needs [`ExecManager::patch_batch`].
    ///
    /// Not published (as Linux's `aarch64_insn_patch_text_nosync`): another CPU runs the new
    /// instruction from its next context synchronisation event at the latest;
    /// [`ExecManager::publish`] makes that every CPU's present.
    pub fn patch_insn(&self, addr: u64, expected_old: u32, new: u32) -> Result<(), PokeError> {
        // The fast path, which calls nothing (no frame to save, no register to keep across a
        // call): an aligned CMODX pair, stored once, through an open gate. Anything else, and a
        // gate found closed, takes the general path, which checks, waits and refuses; nothing is
        // written before either decides.
        if addr.is_multiple_of(INSN_BYTES as u64)
            && poke::is_cmodx(expected_old)
            && poke::is_cmodx(new)
            && !P::store_code_twice()
            && let Some(inside) = self.try_enter_poke()
        {
            return self.exchange_insn(&inside, addr, expected_old, new);
        }
        self.patch_insn_general(addr, expected_old, new)
    }

    /// [`ExecManager::patch_insn`] for what its fast path does not take: a misaligned address or
    /// a pair outside the CMODX set (refused), a platform that stores code twice, a CPU without
    /// a poke slot (refused), or a poke gate that is closed (it waits).
    #[cold]
    #[inline(never)]
    fn patch_insn_general(&self, addr: u64, expected_old: u32, new: u32) -> Result<(), PokeError> {
        poke::check_insn_aligned(addr)?;
        // Inside the poke gate the page's frame is not unmapped and reused, and interrupts are
        // masked.
        let inside = self.enter_poke()?;
        self.patch_pa(addr)
            .ok_or(PokeError::NotExecMemory { addr })?;
        if !(poke::is_cmodx(expected_old) && poke::is_cmodx(new)) {
            // Refused either way; the comparison's answer first, as when both are CMODX.
            // SAFETY: `addr` is aligned and inside a mapped pack (which cannot be unmapped while
            // this CPU is inside the gate) or the kernel text opened to patching: RO + X,
            // readable.
            let found = unsafe { ptr::read_volatile(addr as *const u32) };
            poke::check_old(addr, expected_old, found)?;
            return poke::check_pair(found, new);
        }
        self.exchange_insn(&inside, addr, expected_old, new)?;
        if P::store_code_twice() {
            // The same word again, unless another patch changed it since (which stored it).
            let _ = self.exchange_insn(&inside, addr, new, new);
        }
        Ok(())
    }

    /// The store of [`ExecManager::patch_insn`] (`addr` aligned, both instructions CMODX,
    /// checked by the caller): `expected` exchanged for `new` in one step, then the one-line
    /// maintenance pass, inlined.
    #[inline(always)]
    fn exchange_insn(
        &self,
        inside: &Inside<'_, P>,
        addr: u64,
        expected: u32,
        new: u32,
    ) -> Result<(), PokeError> {
        let pa = self
            .patch_pa(addr)
            .ok_or(PokeError::NotExecMemory { addr })?;
        let plan = self.plan_inside(inside);
        // Compare and store are one single-copy-atomic 32-bit exchange through the alias
        // (LDXR/STXR on the word's physical address, Normal inner-shareable memory: the global
        // exclusive monitor of Arm ARM B2.9), so against every other patcher of the word on any
        // CPU the read, the compare and the write are one step, as Linux's `text_mutex` makes
        // them; the store is the CMODX single aligned 32-bit write (B2.2.5). A batch patch stops
        // this CPU only outside a patch (its interrupts are masked throughout).
        let swapped = self.store_in_page(inside, pa, |page| {
            // SAFETY: `page` maps the page of `pa` RW for this CPU alone, and `addr`'s offset in
            // its page is that of `pa`: an aligned word of normal memory.
            let word = unsafe { &*((page + addr % PAGE_SIZE) as *const AtomicU32) };
            word.compare_exchange(expected, new, Ordering::Relaxed, Ordering::Relaxed)
        });
        if let Err(found) = swapped {
            return Err(PokeError::OldMismatch {
                addr,
                expected,
                found,
            });
        }
        complete_alias_stores();
        // An aligned instruction lies in one line of both caches. Inlined: the pass is the same
        // B2.4.4 sequence as `cache::sync_code_line`'s (`check-poke-asm` reads it in
        // `patch_insn` too), without a call.
        cache::sync_code_line_inline(plan, addr);
        Ok(())
    }

    /// Arbitrary instruction changes, made while every other CPU waits
    /// ([`Platform::stop_others_and_run`]) and then executes an ISB (Linux's `stop_machine`
    /// pattern for `aarch64_insn_patch_text`). Every address is checked first; on any error
    /// nothing is written. All stores are made first, then one cache-maintenance pass per run
    /// of neighbouring instructions.
    pub fn patch_batch(&self, patches: &[(u64, u32)]) -> Result<(), PokeError> {
        // Every lookup and lock before the others stop: a stopped CPU may hold anything else.
        let inside = self.enter_poke()?;
        let _patching = self.patch_lock.lock_masked(inside.masked());
        for &(addr, _) in patches {
            poke::check_insn_aligned(addr)?;
            self.patch_pa(addr)
                .ok_or(PokeError::NotExecMemory { addr })?;
        }
        let plan = self.plan_inside(&inside);
        // The written instructions, sorted, as ranges that merge neighbours less than a page
        // apart: one maintenance pass per range, not per instruction.
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
        let passes = if P::store_code_twice() { 2 } else { 1 };
        let mut refused = None;
        P::stop_others_and_run(&mut || {
            // `change` runs on this CPU, whose slot `inside` holds: anywhere else it is refused.
            if P::cpu_index() != inside.alias.cpu {
                refused = Some(PokeError::NoPokeSlot {
                    cpu: P::cpu_index(),
                });
                return;
            }
            for _ in 0..passes {
                for &(addr, new) in patches {
                    let Some(pa) = self.patch_pa(addr) else {
                        // Checked above inside the same gate; never reached.
                        continue;
                    };
                    self.store_in_page(&inside, pa, |page| {
                        // SAFETY: one aligned 32-bit store into the alias page of `addr`; the
                        // others are stopped.
                        unsafe { ((page + addr % PAGE_SIZE) as *mut u32).write_volatile(new) };
                    });
                }
                complete_alias_stores();
                for &(start, end) in &ranges {
                    cache::sync_code(plan, start, end);
                }
            }
        })
        .map_err(|stopped| PokeError::CpuNotStopped { cpu: stopped.cpu })?;
        refused.map_or(Ok(()), Err)
    }

    /// Enters the poke gate on this CPU, interrupts masked, with this CPU's poke alias, or
    /// [`PokeError::NoPokeSlot`] for a CPU with none (an index at or above
    /// [`super::Config::cpus`], or a CPU that has not entered its view), before anything is
    /// written. Until the guard is dropped the CPU read here is the one the poke runs on, and no
    /// pack it finds mapped is unmapped.
    #[inline]
    fn enter_poke(&self) -> Result<Inside<'_, P>, PokeError> {
        let saved = P::mask_interrupts();
        let cpu = P::cpu_index();
        let entry = self.slot_entry(cpu);
        if entry.is_null() {
            P::restore_interrupts(saved);
            return Err(PokeError::NoPokeSlot { cpu });
        }
        // A non-null entry means `cpu` < MAX_CPUS, the gate's size.
        self.gate.enter(cpu, P::relax, || {});
        Ok(self.inside(cpu, entry, saved))
    }

    /// [`Self::enter_poke`] without waiting or refusing: `None` (interrupts as they were, not
    /// inside) if this CPU has no poke slot or the gate is closed, for the caller's general path
    /// to wait or refuse.
    #[inline(always)]
    fn try_enter_poke(&self) -> Option<Inside<'_, P>> {
        let saved = P::mask_interrupts();
        let cpu = P::cpu_index();
        let entry = self.slot_entry(cpu);
        // A non-null entry means `cpu` < MAX_CPUS, the gate's size.
        if !entry.is_null() && self.gate.try_enter(cpu) {
            return Some(self.inside(cpu, entry, saved));
        }
        P::restore_interrupts(saved);
        None
    }

    /// The level-3 entry of CPU `cpu`'s poke slot in its own view, or null (no such CPU, or it
    /// has not entered its view).
    #[inline(always)]
    fn slot_entry(&self, cpu: usize) -> *mut u64 {
        self.per_cpu
            .get(cpu)
            .map_or(ptr::null_mut(), |c| c.entry.load(Ordering::Acquire))
    }

    /// The guard of CPU `cpu`, just entered with slot entry `entry` and `saved` interrupts.
    #[inline(always)]
    fn inside(&self, cpu: usize, entry: *mut u64, saved: u64) -> Inside<'_, P> {
        // Both were stored before `config`, whose Release the entry's store follows
        // (`switch_to_view`); the Acquire of the entry makes them visible.
        let alias = Alias {
            cpu,
            va: self.hot.fixmap.load(Ordering::Relaxed),
            entry,
            attributes: self.hot.alias_attributes.load(Ordering::Relaxed),
        };
        Inside {
            manager: self,
            alias,
            saved,
        }
    }

    /// Stores `len` bytes from exec address `dst` (checked against its region by the caller)
    /// through this CPU's alias, then makes them visible to instruction fetch: `write` gets the
    /// alias pointer, the offset into the range and the bytes in this page. Refused unless every
    /// pack the range touches is mapped and this CPU has a poke slot; then nothing is written.
    ///
    /// A range within one page (most writes: one instruction, a small program) has its PA looked
    /// up once, for the check and the mapping both, one alias mapping and no loop; one within one
    /// cache line gets the one-line pass ([`cache::sync_code_line`]).
    fn write_through_alias(
        &self,
        dst: u64,
        len: usize,
        mut write: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), PokeError> {
        let inside = self.enter_poke()?;
        let plan = self.plan_inside(&inside);
        let end = dst + len as u64;
        if dst / PAGE_SIZE == (end - 1) / PAGE_SIZE {
            let pa = self
                .pack_pa(dst)
                .ok_or(PokeError::NotExecMemory { addr: dst })?;
            self.store_in_page(&inside, pa, |page| {
                write((page + dst % PAGE_SIZE) as *mut u8, 0, len);
            });
        } else {
            self.check_mapped(dst, len)?;
            let mut offset = 0;
            while offset < len {
                let at = dst + offset as u64;
                let in_page = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(len - offset);
                let Some(pa) = self.pack_pa(at) else {
                    // Checked above inside the same gate; never reached.
                    break;
                };
                self.store_in_page(&inside, pa, |page| {
                    write((page + at % PAGE_SIZE) as *mut u8, offset, in_page);
                });
                offset += in_page;
            }
        }
        complete_alias_stores();
        cache::sync_code(plan, dst, end);
        Ok(())
    }

    /// Refuses `[dst, dst + len)` (already checked against its region, so it does not wrap)
    /// unless every pack it touches is mapped (the caller is inside the poke gate): a region the
    /// caller built may span packs (a large slot) or reach past the pool, and nothing is written
    /// unless all of it is exec memory.
    fn check_mapped(&self, dst: u64, len: usize) -> Result<(), PokeError> {
        let end = dst.saturating_add(len as u64);
        let mut at = dst;
        while at < end {
            self.pack_pa(at)
                .ok_or(PokeError::NotExecMemory { addr: at })?;
            // The next pack (the pool window is 2 MiB aligned).
            at = (at | (BLOCK_SIZE_2M - 1)).saturating_add(1);
        }
        Ok(())
    }

    /// Maps the page holding physical address `pa` at this CPU's poke slot (RW, execute-never,
    /// in its own view only), lets `store` write through it (given the slot's VA, the start of
    /// the page), and unmaps it with the local invalidation, `DSB NSHST; TLBI VAALE1` (or
    /// `VALE2`)`; DSB NSH; ISB` (Arm ARM D8.16: with TTBR.CnP = 0 no other PE holds this view's
    /// entries, so no broadcast is needed). No cache maintenance: the caller makes one pass over
    /// everything it wrote, after [`complete_alias_stores`].
    ///
    /// `inside`: no frame behind the range can be unmapped and reused meanwhile, and interrupts
    /// are masked from before the map until after the unmap, so nothing else runs on this CPU
    /// and sees the alias, and a preemption never leaves it behind.
    #[inline(always)]
    fn store_in_page<R>(&self, inside: &Inside<'_, P>, pa: u64, store: impl FnOnce(u64) -> R) -> R {
        let alias = inside.alias;
        // The slot is in this CPU's own view: its TLB alone can hold the alias.
        let mut tlb = LocalTlb::<P::Regime>::new();
        // SAFETY: `alias.entry` is this CPU's reserved, invalid fixmap L3 entry in its own view
        // (made at init, never freed); only this CPU writes it, with interrupts masked. The
        // descriptor is the poke alias's attributes with the page's PA (a frame of the pool or
        // the patchable text: page-aligned memory below 2^48, checked when taken).
        unsafe {
            alias
                .entry
                .write_volatile(alias.attributes | (pa & !(PAGE_SIZE - 1)))
        };
        tlb.publish();
        let stored = store(alias.va);
        // SAFETY: as above; the alias is removed before interrupts are unmasked.
        unsafe { alias.entry.write_volatile(0) };
        // Local: no other CPU walks this view (and CnP = 0), so no other TLB holds the alias.
        tlb.invalidate_va(alias.va, 3);
        // Only this CPU writes its count, with interrupts masked: no read-modify-write needed.
        let maps = &self.per_cpu[alias.cpu].alias_maps;
        maps.store(maps.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        stored
    }

    /// The maintenance plan, for a poke inside the gate: `config` is set by then (a CPU's entry
    /// is stored only after `config`, and [`Self::enter_poke`] read it with Acquire).
    #[inline]
    fn plan_inside(&self, _inside: &Inside<'_, P>) -> &MaintenancePlan {
        // SAFETY: `switch_to_view` stores the entry `enter_poke` found (Release) only after
        // `self.config.get()` returned `Some`; `Once` is never reset.
        unsafe { &self.config.get_unchecked().maintenance }
    }
}

/// Inside the poke gate on this CPU with interrupts masked ([`ExecManager::enter_poke`]):
/// leaves and restores them when dropped.
struct Inside<'a, P: Platform> {
    manager: &'a ExecManager<P>,
    alias: Alias,
    saved: u64,
}

impl<P: Platform> Inside<'_, P> {
    /// Interrupts stay masked while this guard is held.
    fn masked(&self) -> super::lock::Masked<'_> {
        super::lock::Masked::new()
    }
}

impl<P: Platform> Drop for Inside<'_, P> {
    fn drop(&mut self) {
        self.manager.gate.leave(self.alias.cpu);
        P::restore_interrupts(self.saved);
    }
}

/// This CPU's poke slot for one poke: its VA (the same on every CPU), its level-3 entry in this
/// CPU's own view, and the alias descriptor without its output address.
#[derive(Clone, Copy)]
struct Alias {
    cpu: usize,
    va: u64,
    entry: *mut u64,
    attributes: u64,
}

/// After the last alias of a write is torn down: the local teardown's `DSB NSH` completes the
/// stores for this CPU only; before the maintenance by the exec VA (another VA of the same
/// memory, B2.4.4) they are completed to the inner shareable domain, as a broadcast teardown's
/// `DSB ISH` would.
#[inline(always)]
fn complete_alias_stores() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
}
