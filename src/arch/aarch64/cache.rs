//! Cache maintenance that makes written instructions visible to instruction fetch (Arm ARM B2.4.4,
//! "Concurrent modification and execution of instructions" and the self-modifying-code sequence):
//!
//! 1. `DC CVAU` (or `DC CIVAC` on Cortex-A53) for every data-cache line of the range;
//! 2. `DSB ISH`, so the cleans complete before any invalidation;
//! 3. `IC IVAU` for every instruction-cache line of the range;
//! 4. `DSB ISH`, so the invalidations complete on every CPU;
//! 5. `ISB`, so this CPU fetches anew (other CPUs need their own context synchronisation).
//!
//! CTR_EL0.IDC = 1 removes steps 1–2 but keeps a `DSB ISHST` (the stores must still be visible
//! before the fetch); CTR_EL0.DIC = 1 removes steps 3–4 but keeps the `ISB`. Which steps run, and the
//! line sizes (the smallest over all CPUs), come from the portable [`MaintenancePlan`].
//!
//! One pass over the whole written range, never one per instruction. The pass is a single
//! non-inlined function, so a test can find it in the release image (`sync_code_range` in its
//! symbol name) and check the order of the instructions. It exports no symbol of its own: a
//! kernel that embeds execmem gets no unmangled name from it.

use core::arch::asm;

use crate::poke::cache::{Clean, MaintenancePlan};

/// Runs the maintenance `plan` prescribes over the exec addresses `[start, end)`.
///
/// The addresses are the executable VAs (RO + X): `DC CVAU`, `DC CIVAC` and `IC IVAU` need only
/// read permission, and the data cache is physically indexed, so cleaning through the exec VA
/// reaches the lines written through the text-poke alias.
#[inline(never)]
pub fn sync_code_range(plan: &MaintenancePlan, start: u64, end: u64) {
    if start >= end {
        return;
    }
    match plan.clean {
        Clean::Skip => {
            // SAFETY: a barrier only.
            unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        }
        Clean::Cvau => {
            for line in plan.dcache_lines(start, end) {
                // SAFETY: cleans one line to the point of unification by VA; `line` is in a
                // readable mapping (the caller's exec range), so it cannot fault.
                unsafe {
                    asm!("dc cvau, {line}", line = in(reg) line, options(nostack, preserves_flags))
                };
            }
            // SAFETY: a barrier only.
            unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
        }
        Clean::Civac => {
            for line in plan.dcache_lines(start, end) {
                // SAFETY: clean + invalidate of one line by VA to the point of coherency (the
                // Cortex-A53 errata workaround); needs only read permission; no data is lost.
                unsafe {
                    asm!("dc civac, {line}", line = in(reg) line, options(nostack, preserves_flags))
                };
            }
            // SAFETY: a barrier only.
            unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
        }
    }
    if plan.invalidate_icache {
        for line in plan.icache_lines(start, end) {
            // SAFETY: invalidates one instruction-cache line by VA to the point of unification, on
            // every CPU of the inner shareable domain; it changes no data.
            unsafe {
                asm!("ic ivau, {line}", line = in(reg) line, options(nostack, preserves_flags))
            };
        }
        // SAFETY: a barrier only.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    }
    // SAFETY: a context synchronisation event only.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// [`sync_code_range`] for bytes that lie in one line of both caches
/// ([`MaintenancePlan::within_one_line`]: one instruction, or a small copy), by any address
/// `addr` of them: the same B2.4.4 sequence with one line on each side and no loop, which is
/// most of what a one-instruction poke costs otherwise (the line arithmetic of the generic pass).
/// `DC CVAU` (`DC CIVAC` on Cortex-A53) and `IC IVAU` act on the line that holds `addr`, which
/// need not be aligned. Not inlined, like the range pass, so a test can check its order in the
/// image (`sync_code_line` in its symbol name).
#[inline(never)]
pub fn sync_code_line(plan: &MaintenancePlan, addr: u64) {
    sync_code_line_inline(plan, addr);
}

/// [`sync_code_line`], inlined into its caller: for a path that must call nothing (the fast path
/// of `patch_insn`, whose image `check-poke-asm` reads for the same sequence).
#[inline(always)]
pub fn sync_code_line_inline(plan: &MaintenancePlan, addr: u64) {
    match plan.clean {
        // SAFETY: a barrier only (IDC = 1: the stores need only be complete).
        Clean::Skip => unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) },
        // SAFETY: cleans the line holding `addr` to the point of unification, then waits for it
        // in the inner shareable domain; `addr` is in a readable mapping (the caller's exec
        // range), so it cannot fault.
        Clean::Cvau => unsafe {
            asm!("dc cvau, {addr}", "dsb ish", addr = in(reg) addr, options(nostack, preserves_flags))
        },
        // SAFETY: as above, clean + invalidate to the point of coherency (the Cortex-A53 errata
        // workaround); needs only read permission; no data is lost.
        Clean::Civac => unsafe {
            asm!("dc civac, {addr}", "dsb ish", addr = in(reg) addr, options(nostack, preserves_flags))
        },
    }
    if plan.invalidate_icache {
        // SAFETY: invalidates the instruction-cache line holding `addr` to the point of
        // unification on every CPU of the inner shareable domain, waits for it, and refetches
        // on this CPU; it changes no data.
        unsafe {
            asm!("ic ivau, {addr}", "dsb ish", "isb", addr = in(reg) addr, options(nostack, preserves_flags))
        };
    } else {
        // SAFETY: a context synchronisation event only (DIC = 1).
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }
}

/// Either pass, whichever `[start, end)` needs: [`sync_code_line`] for bytes in one line,
/// [`sync_code_range`] otherwise.
#[inline]
pub fn sync_code(plan: &MaintenancePlan, start: u64, end: u64) {
    if plan.within_one_line(start, end) {
        sync_code_line(plan, start);
    } else {
        sync_code_range(plan, start, end);
    }
}

/// Cleans the data-cache lines of `[start, end)` to the point of unification (`DC CVAU`, or
/// `DC CIVAC` on Cortex-A53), then `DSB ISH`; with CTR_EL0.IDC = 1 only the `DSB ISHST`. Used after
/// filling a fresh pack through its writable alias, before the frame is mapped executable.
pub fn clean_data_range(plan: &MaintenancePlan, start: u64, end: u64) {
    let clean_only = MaintenancePlan {
        invalidate_icache: false,
        ..*plan
    };
    // The pass minus the I-side steps; its final ISB is harmless.
    sync_code_range(&clean_only, start, end);
}

/// Invalidates every instruction cache of the inner shareable domain (`IC IALLUIS; DSB ISH; ISB`):
/// one instruction where a per-line pass over a whole 2 MiB pack would take 32768.
pub fn invalidate_icache_all() {
    // SAFETY: invalidates instruction caches only; no data changes. The ISB refetches.
    unsafe {
        asm!(
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}
