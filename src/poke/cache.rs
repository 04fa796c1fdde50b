//! The cache maintenance that makes freshly written code visible to instruction fetch, decided once
//! for the whole system.
//!
//! Arm ARM B2.4.4 ("Concurrent modification and execution of instructions" / self-modifying code):
//! after the stores, clean the data cache to the point of unification (`DC CVAU`) for every D-cache
//! line of the range, `DSB ISH`, invalidate the instruction cache to the point of unification
//! (`IC IVAU`) for every I-cache line of the range, `DSB ISH`, then `ISB` on the CPU that will execute
//! the code (other CPUs need their own context synchronisation event). CTR_EL0 can make steps
//! unnecessary:
//! - IDC = 1: data and instruction sides are coherent at the PoU without a clean; a `DSB ISHST` is
//!   still needed so the stores complete before the I-side is touched (Linux `caches_clean_inval_pou`).
//! - DIC = 1: no instruction-cache invalidation is needed; the `ISB` is still needed.
//!
//! Cortex-A53 errata 819472, 826319, 827319 and 824069 make `DC CVAU` insufficient; Linux upgrades it
//! to `DC CIVAC` (`ARM64_WORKAROUND_CLEAN_CACHE`), and so does [`MaintenancePlan`].
//!
//! The line sizes are the smallest over all CPUs ([`CacheType::common`]): a loop stepping by a line
//! larger than some CPU's skips lines on that CPU (big.LITTLE parts report different sizes). One pass
//! over the whole written range, never one per instruction. The arch layer executes the plan; this
//! module only decides it, so it is tested on the host.

use core::fmt;

use crate::cpu::{CacheType, Midr};

/// Smallest cache line the architecture can report: CTR_EL0's line fields are log2 of a number of
/// 4-byte words, so every line is `4 << n` bytes.
const MIN_LINE: usize = 4;

/// How the data side is cleaned to the point of unification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Clean {
    /// CTR_EL0.IDC = 1 on every CPU: no clean; a `DSB ISHST` still orders the stores.
    Skip,
    /// `DC CVAU` per D-cache line, then `DSB ISH`.
    Cvau,
    /// `DC CIVAC` per D-cache line, then `DSB ISH`: the Cortex-A53 errata workaround.
    Civac,
}

/// The barrier that ends the data-side step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Barrier {
    /// `DSB ISHST`: waits for stores only (enough when nothing was cleaned).
    DsbIshSt,
    /// `DSB ISH`: waits for the cache maintenance to complete in the inner shareable domain.
    DsbIsh,
}

impl fmt::Display for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DsbIshSt => "DSB ISHST",
            Self::DsbIsh => "DSB ISH",
        })
    }
}

/// What to execute after writing code, valid on every CPU of the system.
///
/// The sequence is always: [`clean`](Self::clean)'s instruction for each of
/// [`dcache_lines`](Self::dcache_lines), then [`after_clean`](Self::after_clean); if
/// [`invalidate_icache`](Self::invalidate_icache), `IC IVAU` for each of
/// [`icache_lines`](Self::icache_lines), then `DSB ISH`; finally `ISB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaintenancePlan {
    /// The data-side step.
    pub clean: Clean,
    /// Whether `IC IVAU` per I-cache line (then `DSB ISH`) is needed: false when DIC = 1 on every
    /// CPU, and then only the final `ISB` remains.
    pub invalidate_icache: bool,
    /// D-cache line in bytes: the step of the clean loop. A value the architecture cannot report (not
    /// a power of two of at least 4) is stepped as 4.
    pub d_line: usize,
    /// I-cache line in bytes: the step of the invalidate loop, with the same fallback.
    pub i_line: usize,
    /// Whether broadcast TLB invalidations are issued twice (`TLBI; DSB; TLBI; DSB`): true if any
    /// CPU has the repeat-TLBI erratum ([`Midr::needs_repeat_tlbi`]). It matters most for the
    /// teardown of the writable text-poke alias, so the manager applies it to every one.
    pub repeat_tlbi: bool,
}

/// A line size that is safe to step by: the reported one if it is one the architecture can report,
/// otherwise the smallest possible line (stepping by it cannot skip a line, it only repeats work).
const fn sane_line(line: usize) -> usize {
    if line >= MIN_LINE && line.is_power_of_two() {
        line
    } else {
        MIN_LINE
    }
}

impl MaintenancePlan {
    /// The plan for a system of one CPU, or of identical CPUs.
    pub const fn new(cache: CacheType, midr: Midr) -> Self {
        Self::decide(
            cache,
            midr.needs_clean_invalidate_for_code(),
            midr.needs_repeat_tlbi(),
        )
    }

    /// The plan valid on every CPU of `cpus` (their MIDR_EL1 and CTR_EL0): smallest lines, a step
    /// skipped only if every CPU allows it, `DC CIVAC` if any CPU is a Cortex-A53. `None` for no CPUs.
    pub fn for_cpus<I>(cpus: I) -> Option<Self>
    where
        I: IntoIterator<Item = (Midr, CacheType)>,
    {
        let mut cpus = cpus.into_iter();
        let (midr, first) = cpus.next()?;
        let (cache, civac, repeat) = cpus.fold(
            (
                first,
                midr.needs_clean_invalidate_for_code(),
                midr.needs_repeat_tlbi(),
            ),
            |(cache, civac, repeat), (midr, other)| {
                (
                    cache.common(other),
                    civac || midr.needs_clean_invalidate_for_code(),
                    repeat || midr.needs_repeat_tlbi(),
                )
            },
        );
        Some(Self::decide(cache, civac, repeat))
    }

    const fn decide(cache: CacheType, civac: bool, repeat_tlbi: bool) -> Self {
        let clean = if cache.idc {
            Clean::Skip
        } else if civac {
            Clean::Civac
        } else {
            Clean::Cvau
        };
        Self {
            clean,
            invalidate_icache: !cache.dic,
            d_line: sane_line(cache.d_line),
            i_line: sane_line(cache.i_line),
            repeat_tlbi,
        }
    }

    /// The smaller of the two line sizes, in bytes (each with the fallback of [`Self::d_line`]).
    pub const fn min_line(&self) -> usize {
        let (d, i) = (sane_line(self.d_line), sane_line(self.i_line));
        if d < i { d } else { i }
    }

    /// Whether the bytes `[start, end)` are non-empty and lie in one line of both caches: then the
    /// pass is one clean and one invalidate, by any address of the range (the Arm ARM's `DC CVAU`,
    /// `DC CIVAC` and `IC IVAU` are "by VA": each acts on the line that holds the address, which
    /// need not be aligned). An aligned instruction always is: every line is a power of two of at
    /// least 4 bytes.
    pub const fn within_one_line(&self, start: u64, end: u64) -> bool {
        // Lines are powers of two: two addresses share a line when they differ only below it.
        start < end && (start ^ (end - 1)) < self.min_line() as u64
    }

    /// The barrier after the data-side step: `DSB ISH` after a clean, `DSB ISHST` when it is skipped.
    pub const fn after_clean(&self) -> Barrier {
        match self.clean {
            Clean::Skip => Barrier::DsbIshSt,
            Clean::Cvau | Clean::Civac => Barrier::DsbIsh,
        }
    }

    /// The addresses to clean for the bytes `[start, end)`: one per D-cache line the range touches,
    /// the first being `start` rounded down to the line. Empty when the clean is skipped (IDC = 1)
    /// or the range is empty. Either VA of the written page works (the data cache is physically
    /// tagged); the exec VA is the one that stays mapped.
    pub fn dcache_lines(&self, start: u64, end: u64) -> Lines {
        match self.clean {
            Clean::Skip => Lines::EMPTY,
            Clean::Cvau | Clean::Civac => Lines::covering(start, end, self.d_line),
        }
    }

    /// The addresses to invalidate for the bytes `[start, end)` (the exec VA: the instruction
    /// cache may be virtually indexed): one per I-cache line the range touches. Empty when DIC = 1
    /// or the range is empty.
    pub fn icache_lines(&self, start: u64, end: u64) -> Lines {
        if self.invalidate_icache {
            Lines::covering(start, end, self.i_line)
        } else {
            Lines::EMPTY
        }
    }
}

impl fmt::Display for MaintenancePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d_line = sane_line(self.d_line);
        match self.clean {
            Clean::Skip => write!(
                f,
                "D: no clean (CTR_EL0.IDC=1), then {}",
                self.after_clean()
            )?,
            Clean::Cvau => write!(
                f,
                "D: DC CVAU every {d_line} B, then {}",
                self.after_clean()
            )?,
            Clean::Civac => write!(
                f,
                "D: DC CIVAC every {d_line} B (Cortex-A53 errata 819472/826319/827319/824069), \
                 then {}",
                self.after_clean()
            )?,
        }
        if self.invalidate_icache {
            write!(
                f,
                "; I: IC IVAU every {} B, then DSB ISH; ISB",
                sane_line(self.i_line)
            )
        } else {
            f.write_str("; I: no invalidate (CTR_EL0.DIC=1); ISB")
        }?;
        if self.repeat_tlbi {
            f.write_str("; TLBI repeated (erratum 1286807/2441007/2441009)")?;
        }
        Ok(())
    }
}

/// Line-aligned addresses covering a byte range: the first is the range start rounded down to the
/// line, then one per line up to the last line the range touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines {
    next: u64,
    remaining: u64,
    step: u64,
}

impl Lines {
    const EMPTY: Self = Self {
        next: 0,
        remaining: 0,
        step: MIN_LINE as u64,
    };

    /// The lines of `line` bytes touched by the bytes `[start, end)`.
    fn covering(start: u64, end: u64, line: usize) -> Self {
        if start >= end {
            return Self::EMPTY;
        }
        let step = sane_line(line) as u64;
        let last_byte = end - 1;
        Self {
            next: start & !(step - 1),
            remaining: last_byte / step - start / step + 1,
            step,
        }
    }
}

impl Iterator for Lines {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.remaining == 0 {
            return None;
        }
        let addr = self.next;
        self.remaining -= 1;
        self.next = self.next.wrapping_add(self.step);
        Some(addr)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, usize::try_from(self.remaining).ok())
    }
}

impl ExactSizeIterator for Lines {}

impl core::iter::FusedIterator for Lines {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// QEMU cortex-a72 (Raspberry Pi 4): 64 B lines, IDC = DIC = 0.
    const A72_CTR: u64 = 0x8444_c004;
    const A72: Midr = Midr(0x410f_d083);
    const A53: Midr = Midr(0x410f_d034);
    const A64FX: Midr = Midr(0x461f_0010);

    fn ctr(idc: bool, dic: bool) -> CacheType {
        CacheType {
            i_line: 64,
            d_line: 64,
            idc,
            dic,
        }
    }

    fn a72() -> MaintenancePlan {
        MaintenancePlan::new(CacheType::from_ctr(A72_CTR), A72)
    }

    #[test]
    fn cortex_a72_cleans_and_invalidates() {
        let plan = a72();
        assert_eq!(plan.clean, Clean::Cvau);
        assert!(plan.invalidate_icache);
        assert_eq!((plan.d_line, plan.i_line), (64, 64));
        assert_eq!(plan.after_clean(), Barrier::DsbIsh);
        assert_eq!(
            format!("{plan}"),
            "D: DC CVAU every 64 B, then DSB ISH; I: IC IVAU every 64 B, then DSB ISH; ISB"
        );
    }

    #[test]
    fn aligned_range_lines() {
        let plan = a72();
        let lines: Vec<u64> = plan.dcache_lines(0x4020_0000, 0x4020_0000 + 256).collect();
        assert_eq!(lines, [0x4020_0000, 0x4020_0040, 0x4020_0080, 0x4020_00c0]);
        assert_eq!(plan.icache_lines(0x4020_0000, 0x4020_0000 + 256).len(), 4);
    }

    #[test]
    fn range_starting_and_ending_mid_line() {
        let plan = a72();
        // 0x..0038..0x..0088: touches lines 0x00, 0x40 and 0x80.
        let lines: Vec<u64> = plan.dcache_lines(0x4020_0038, 0x4020_0038 + 0x50).collect();
        assert_eq!(lines, [0x4020_0000, 0x4020_0040, 0x4020_0080]);
        // Ends exactly on a line boundary: 0x3c..0x80 touches 0x00 and 0x40, not 0x80.
        assert_eq!(plan.dcache_lines(0x4020_003c, 0x4020_003c + 0x44).len(), 2);
        // One byte past: touches 0x80 too.
        assert_eq!(plan.dcache_lines(0x4020_003c, 0x4020_003c + 0x45).len(), 3);
    }

    #[test]
    fn four_byte_ranges() {
        let plan = a72();
        // One instruction: one line, wherever it is in the line.
        for offset in [0u64, 4, 0x3c] {
            let lines: Vec<u64> = plan
                .icache_lines(0x4020_1000 + offset, 0x4020_1000 + offset + 4)
                .collect();
            assert_eq!(lines, [0x4020_1000]);
        }
        assert_eq!(plan.dcache_lines(0x4020_1000, 0x4020_1000).len(), 0);
        assert_eq!(
            plan.icache_lines(0x4020_1004, 0x4020_1000).len(),
            0,
            "end before start"
        );
    }

    #[test]
    fn range_crossing_a_page() {
        let plan = a72();
        let lines: Vec<u64> = plan.dcache_lines(0x4020_0ff8, 0x4020_0ff8 + 16).collect();
        assert_eq!(lines, [0x4020_0fc0, 0x4020_1000]);
        // A whole 4 KiB page plus the 8 bytes on either side: 64 + 2 lines.
        assert_eq!(
            plan.dcache_lines(0x4020_0ff8, 0x4020_0ff8 + 4096 + 16)
                .len(),
            66
        );
    }

    #[test]
    fn one_line_ranges() {
        let plan = a72();
        assert_eq!(plan.min_line(), 64);
        assert!(plan.within_one_line(0x4020_1000, 0x4020_1004));
        assert!(plan.within_one_line(0x4020_103c, 0x4020_1040));
        assert!(plan.within_one_line(0x4020_1000, 0x4020_1040));
        assert!(
            !plan.within_one_line(0x4020_103c, 0x4020_1044),
            "crosses a line"
        );
        assert!(
            !plan.within_one_line(0x4020_0ffc, 0x4020_1004),
            "crosses a page"
        );
        assert!(!plan.within_one_line(0x4020_1000, 0x4020_1000), "empty");
        assert!(
            !plan.within_one_line(0x4020_1004, 0x4020_1000),
            "end before start"
        );
        // The smaller line decides: 32-byte I-lines beside 64-byte D-lines.
        let mixed = MaintenancePlan { i_line: 32, ..plan };
        assert_eq!(mixed.min_line(), 32);
        assert!(!mixed.within_one_line(0x4020_101c, 0x4020_1024));
        assert!(mixed.within_one_line(0x4020_1020, 0x4020_1040));
        // A nonsense line falls back to 4 bytes: one aligned word is still one line.
        let odd = MaintenancePlan { d_line: 0, ..plan };
        assert_eq!(odd.min_line(), 4);
        assert!(odd.within_one_line(0x1000, 0x1004));
        assert!(!odd.within_one_line(0x1000, 0x1008));
    }

    proptest! {
        #[test]
        fn one_line_exactly_when_the_pass_touches_one_line(
            start in 0u64..(1 << 48),
            len in 0u64..600,
            d_log2 in 0u32..7,
            i_log2 in 0u32..7,
        ) {
            let cache = CacheType {
                i_line: 4 << i_log2,
                d_line: 4 << d_log2,
                idc: false,
                dic: false,
            };
            let plan = MaintenancePlan::new(cache, A72);
            let end = start + len;
            let one = plan.dcache_lines(start, end).len() == 1
                && plan.icache_lines(start, end).len() == 1;
            prop_assert_eq!(plan.within_one_line(start, end), one);
        }
    }

    #[test]
    fn a64fx_256_byte_lines() {
        // A64FX (Fujitsu): 256-byte I and D lines.
        let plan = MaintenancePlan::new(CacheType::from_ctr(0x8006_0006), A64FX);
        assert_eq!((plan.d_line, plan.i_line), (256, 256));
        let lines: Vec<u64> = plan.dcache_lines(0x4020_00f0, 0x4020_00f0 + 0x20).collect();
        assert_eq!(lines, [0x4020_0000, 0x4020_0100]);
        assert_eq!(plan.icache_lines(0x4020_0000, 0x4020_0000 + 4096).len(), 16);
        assert!(format!("{plan}").contains("every 256 B"));
    }

    #[test]
    fn every_idc_dic_combination() {
        let cases = [
            (
                false,
                false,
                Clean::Cvau,
                true,
                "D: DC CVAU every 64 B, then DSB ISH; I: IC IVAU every 64 B, then DSB ISH; ISB",
            ),
            (
                true,
                false,
                Clean::Skip,
                true,
                "D: no clean (CTR_EL0.IDC=1), then DSB ISHST; I: IC IVAU every 64 B, then DSB \
                 ISH; ISB",
            ),
            (
                false,
                true,
                Clean::Cvau,
                false,
                "D: DC CVAU every 64 B, then DSB ISH; I: no invalidate (CTR_EL0.DIC=1); ISB",
            ),
            (
                true,
                true,
                Clean::Skip,
                false,
                "D: no clean (CTR_EL0.IDC=1), then DSB ISHST; I: no invalidate (CTR_EL0.DIC=1); \
                 ISB",
            ),
        ];
        for (idc, dic, clean, invalidate, text) in cases {
            let plan = MaintenancePlan::new(ctr(idc, dic), A72);
            assert_eq!(plan.clean, clean, "IDC={idc} DIC={dic}");
            assert_eq!(plan.invalidate_icache, invalidate, "IDC={idc} DIC={dic}");
            assert_eq!(format!("{plan}"), text);
            let barrier = if idc {
                Barrier::DsbIshSt
            } else {
                Barrier::DsbIsh
            };
            assert_eq!(plan.after_clean(), barrier);
            assert_eq!(
                plan.dcache_lines(0x1000, 0x1000 + 128).len(),
                if idc { 0 } else { 2 }
            );
            assert_eq!(
                plan.icache_lines(0x1000, 0x1000 + 128).len(),
                if dic { 0 } else { 2 }
            );
        }
    }

    #[test]
    fn cortex_a53_uses_civac() {
        let plan = MaintenancePlan::new(CacheType::from_ctr(0x8444_c004), A53);
        assert_eq!(plan.clean, Clean::Civac);
        assert_eq!(plan.after_clean(), Barrier::DsbIsh);
        assert!(format!("{plan}").starts_with("D: DC CIVAC every 64 B (Cortex-A53 errata"));
        // IDC = 1 would make the clean unnecessary on any core, errata or not.
        assert_eq!(
            MaintenancePlan::new(ctr(true, false), A53).clean,
            Clean::Skip
        );
    }

    #[test]
    fn system_plan_takes_the_common_view() {
        // A big.LITTLE pair: the big core has 128 B D-lines and IDC/DIC; the little one is an A53.
        let big = (
            A72,
            CacheType {
                i_line: 64,
                d_line: 128,
                idc: true,
                dic: true,
            },
        );
        let little = (
            A53,
            CacheType {
                i_line: 32,
                d_line: 64,
                idc: false,
                dic: false,
            },
        );
        let plan = MaintenancePlan::for_cpus([big, little]).unwrap();
        assert_eq!(plan.clean, Clean::Civac);
        assert!(plan.invalidate_icache);
        assert_eq!((plan.d_line, plan.i_line), (64, 32));
        assert_eq!(plan, MaintenancePlan::new(big.1.common(little.1), A53));
        assert_eq!(MaintenancePlan::for_cpus([]), None);
        assert_eq!(
            MaintenancePlan::for_cpus([big]),
            Some(MaintenancePlan::new(big.1, A72))
        );
        assert!(
            !plan.repeat_tlbi,
            "neither A72 nor A53 has the repeat-TLBI erratum"
        );
    }

    #[test]
    fn repeat_tlbi_if_any_cpu_needs_it() {
        let cache = CacheType {
            i_line: 64,
            d_line: 64,
            idc: false,
            dic: false,
        };
        // Cortex-A55 (0xd05) beside a Cortex-A76 (0xd0b), a Cortex-A510 (0xd46), an A72.
        let a55 = Midr(0x410f_d050);
        let a76 = Midr(0x414f_d0b0);
        let a510 = Midr(0x410f_d460);
        for midr in [a55, a76, a510] {
            assert!(midr.needs_repeat_tlbi(), "{midr}");
            assert!(MaintenancePlan::new(cache, midr).repeat_tlbi);
        }
        assert!(!A72.needs_repeat_tlbi());
        let mixed = MaintenancePlan::for_cpus([(A72, cache), (a55, cache)]).unwrap();
        assert!(mixed.repeat_tlbi);
        assert!(format!("{mixed}").ends_with("TLBI repeated (erratum 1286807/2441007/2441009)"));
        assert!(!MaintenancePlan::new(cache, A72).repeat_tlbi);
    }

    #[test]
    fn nonsense_line_sizes_fall_back_to_the_smallest_line() {
        let odd = CacheType {
            i_line: 0,
            d_line: 48,
            idc: false,
            dic: false,
        };
        let plan = MaintenancePlan::new(odd, A72);
        assert_eq!((plan.d_line, plan.i_line), (4, 4));
        assert_eq!(plan.dcache_lines(0x1002, 0x1002 + 8).len(), 3);
        // A hand-built plan with a zero line must not loop forever or divide by zero.
        let plan = MaintenancePlan {
            clean: Clean::Cvau,
            invalidate_icache: true,
            d_line: 0,
            i_line: 0,
            repeat_tlbi: false,
        };
        assert_eq!(plan.icache_lines(0x1000, 0x1010).len(), 4);
        assert!(format!("{plan}").contains("every 4 B"));
    }

    #[test]
    fn top_of_address_space_does_not_wrap() {
        let plan = a72();
        let lines: Vec<u64> = plan.dcache_lines(u64::MAX - 0x7b, u64::MAX).collect();
        assert_eq!(lines, [u64::MAX - 0x7f, u64::MAX - 0x3f]);
    }

    proptest! {
        #[test]
        fn lines_cover_exactly_the_touched_lines(
            start in 0u64..(1 << 48),
            len in 1u64..20_000,
            log2_words in 0u32..7,
        ) {
            let line = 4usize << log2_words;
            let cache = CacheType { i_line: line, d_line: line, idc: false, dic: false };
            let plan = MaintenancePlan::new(cache, A72);
            let end = start + len;
            let lines: Vec<u64> = plan.dcache_lines(start, end).collect();
            let step = line as u64;
            prop_assert_eq!(lines.len(), plan.dcache_lines(start, end).len());
            prop_assert_eq!(lines[0], start - start % step);
            prop_assert!(lines.windows(2).all(|w| w[1] == w[0] + step));
            // The last line holds the last byte; no line starts at or after the end.
            let last = *lines.last().unwrap();
            prop_assert!(last < end && end - 1 < last + step);
            prop_assert_eq!(plan.icache_lines(start, end).collect::<Vec<_>>(), lines);
        }
    }
}
