//! The metadata of one live pack: where its slots and free runs are, kept beside the pack because
//! the pack itself is never writable.
//!
//! A pack is tiled by runs of chunks: live slots and free runs, never two free runs side by side.
//! Three arrays describe them, 72 KiB in all (3.5% of the pack), allocated when the pack is mapped
//! and dropped when it is released:
//!
//! - `edges` (8 KiB): two bitmaps, one bit per chunk, set on the first (`START`) and on the last
//!   (`END`) chunk of every live slot. A free of address `a` is valid only if `a`'s chunk has its
//!   start bit; whether the neighbour after a slot is free is one start bit, the neighbour before
//!   one end bit.
//! - `shadow` (32 KiB): one byte per chunk, the out-of-band header that an in-band allocator would
//!   write into the block itself. Only run boundaries carry meaning:
//!   - live slot, first chunk: the requested size minus one, in 7 bits (`WIDE` clear) or, for slots
//!     over 128 bytes (three chunks or more), in 21 bits over its first three bytes (`WIDE` set);
//!   - listed free run (`MIN_RUN` = 8 chunks or more): its length minus one as a header (7 low bits
//!     in the first byte, `TINY` clear, the high bits in the second), the same as a footer mirrored
//!     in the last two bytes, and the free-list links `next` and `prev` in bytes 2..6;
//!   - tiny free run (one to seven chunks): `TINY | length` in its first and last byte.
//! - `tiny` (32 KiB): tiny runs are too short to hold list links, so each tiny length has a bitmap
//!   of the chunks where a tiny run of that length starts, summarised twice (which words, which
//!   groups of words) so that finding, adding and removing one is O(1). They matter: half of BPF
//!   programs are under 500 bytes (eight chunks), and the holes they leave are tiny runs.
//!
//! Free lists are doubly linked per size class ([`super::class`]) so a neighbour that merges into a
//! freed slot is unlinked in O(1). The list heads are per pack; the pool-wide [`RunIndex`] is told
//! whenever a class of this pack (a list or a tiny bitmap) becomes empty or not.
//!
//! Indices into the arrays are masked to their power-of-two sizes, so the compiler drops bounds
//! checks: every index is in range by construction.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::CHUNKS_PER_PACK;
use super::class::{CLASS_SLOTS, MIN_RUN, RunIndex, class_of, in_class};

/// Words of a one-bit-per-chunk bitmap.
const WORDS: usize = CHUNKS_PER_PACK as usize / 64;

/// The two bitmaps of `edges`.
const START: usize = 0;
const END: usize = WORDS;

/// Bitmaps of tiny runs, one per length in `1..MIN_RUN`, indexed by `length - 1` and rounded up to
/// a power of two (the eighth is unused) so the index is a mask, not a division by seven.
const TINY_LENGTHS: usize = (MIN_RUN as usize - 1).next_power_of_two();

/// End of a free list.
const NIL: u16 = u16::MAX;

/// Shadow flag on the boundary bytes of a tiny free run.
const TINY: u32 = 0x80;

/// Shadow flag on the first byte of a slot whose size does not fit in 7 bits.
const WIDE: u32 = 0x80;

/// Byte offsets of the free-list links inside a listed run.
const NEXT: usize = 2;
const PREV: usize = 4;

#[inline]
const fn at(chunk: u32) -> usize {
    chunk as usize & (CHUNKS_PER_PACK as usize - 1)
}

/// Bytes of `shadow`: one per chunk, plus padding so that the few bytes after a masked index
/// (`at(chunk) + k`, `k < SHADOW_PAD`) need neither a second mask nor a bounds check. The padding
/// is never read as a chunk's byte: every multi-byte field lies inside its run.
const SHADOW_PAD: usize = 8;
const SHADOW_LEN: usize = CHUNKS_PER_PACK as usize + SHADOW_PAD;

/// A boxed array of `N` zeroes built on the heap, or `None` if the heap cannot hold it (never built
/// on the stack: these arrays are larger than a small kernel stack).
fn zeroed<T: Copy + Default, const N: usize>() -> Option<Box<[T; N]>> {
    let mut elements = Vec::new();
    elements.try_reserve_exact(N).ok()?;
    elements.resize(N, T::default());
    elements.into_boxed_slice().try_into().ok()
}

/// Where the tiny free runs of each length start: a bitmap per length over the chunks, a summary
/// of its non-zero words, and a summary of that.
struct TinyRuns {
    /// Bit `c` of bitmap `k`: a tiny run of `k + 1` chunks starts at chunk `c`.
    starts: Box<[u64; TINY_LENGTHS * WORDS]>,
    /// Bit `w` of `words[k]`: word `w` of bitmap `k` is not zero.
    words: [[u64; WORDS / 64]; TINY_LENGTHS],
    /// Bit `g` of `groups[k]`: `words[k][g]` is not zero.
    groups: [u8; TINY_LENGTHS],
}

impl TinyRuns {
    fn try_new() -> Option<Self> {
        Some(Self {
            starts: zeroed()?,
            words: [[0; WORDS / 64]; TINY_LENGTHS],
            groups: [0; TINY_LENGTHS],
        })
    }

    /// The bitmap of runs of `len` chunks (1..=7).
    #[inline]
    fn bitmap(len: u32) -> usize {
        (len as usize).wrapping_sub(1) % TINY_LENGTHS
    }

    #[inline(always)]
    fn is_empty(&self, len: u32) -> bool {
        self.groups[Self::bitmap(len)] == 0
    }

    #[inline(always)]
    fn insert(&mut self, len: u32, start: u32) {
        let (k, chunk) = (Self::bitmap(len), at(start));
        let word = chunk / 64;
        self.starts[(k * WORDS + word) % (TINY_LENGTHS * WORDS)] |= 1 << (chunk % 64);
        self.words[k][word / 64] |= 1 << (word % 64);
        self.groups[k] |= 1 << (word / 64);
    }

    #[inline(always)]
    fn remove(&mut self, len: u32, start: u32) {
        let (k, chunk) = (Self::bitmap(len), at(start));
        let word = chunk / 64;
        let bits = &mut self.starts[(k * WORDS + word) % (TINY_LENGTHS * WORDS)];
        *bits &= !(1 << (chunk % 64));
        if *bits == 0 {
            let words = &mut self.words[k][word / 64];
            *words &= !(1 << (word % 64));
            if *words == 0 {
                self.groups[k] &= !(1 << (word / 64));
            }
        }
    }

    /// The lowest chunk where a tiny run of `len` chunks starts.
    #[inline(always)]
    fn first(&self, len: u32) -> Option<u32> {
        let k = Self::bitmap(len);
        let groups = self.groups[k];
        if groups == 0 {
            return None;
        }
        let group = groups.trailing_zeros() as usize % (WORDS / 64);
        let word = group * 64 + self.words[k][group].trailing_zeros() as usize;
        let bits = self.starts[(k * WORDS + word) % (TINY_LENGTHS * WORDS)];
        Some((word * 64 + bits.trailing_zeros() as usize) as u32)
    }

    #[cfg(any(test, feature = "check-invariants"))]
    fn contains(&self, len: u32, start: u32) -> bool {
        let chunk = at(start);
        self.starts[Self::bitmap(len) * WORDS + chunk / 64] & (1 << (chunk % 64)) != 0
    }

    #[cfg(any(test, feature = "check-invariants"))]
    fn count(&self) -> u32 {
        self.starts.iter().map(|w| w.count_ones()).sum()
    }
}

/// A run of chunks found by walking a pack in address order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: u32,
    pub len: u32,
    /// The requested size of the live slot, or `None` for a free run.
    pub slot_size: Option<u32>,
}

pub(crate) struct PackMeta {
    /// First run of each class's free list (classes of listed runs only).
    heads: [u16; CLASS_SLOTS],
    used_chunks: u32,
    edges: Box<[u64; 2 * WORDS]>,
    shadow: Box<[u8; SHADOW_LEN]>,
    tiny: TinyRuns,
}

impl PackMeta {
    /// Metadata for a pack with no runs yet; the caller adds the whole-pack free run. `None` if
    /// the heap is exhausted.
    pub(crate) fn try_new() -> Option<Self> {
        Some(Self {
            heads: [NIL; CLASS_SLOTS],
            used_chunks: 0,
            edges: zeroed()?,
            shadow: zeroed()?,
            tiny: TinyRuns::try_new()?,
        })
    }

    pub(crate) fn used_chunks(&self) -> u32 {
        self.used_chunks
    }

    /// A free run of class `class`, which this pack has: its first chunk and its length.
    #[inline]
    pub(crate) fn run_of_class(&self, class: usize) -> Option<(u32, u32)> {
        let len = class as u32 + 1;
        if len < MIN_RUN {
            return Some((self.tiny.first(len)?, len));
        }
        let start = self.heads[class % CLASS_SLOTS];
        if start == NIL {
            return None;
        }
        let start = u32::from(start);
        Some((start, self.free_len_from_start(start)))
    }

    // ---- edge bitmaps ----

    #[inline]
    fn edge(&self, map: usize, chunk: u32) -> bool {
        let chunk = at(chunk);
        self.edges[(map + chunk / 64) % (2 * WORDS)] & (1 << (chunk % 64)) != 0
    }

    #[inline]
    fn flip_edge(&mut self, map: usize, chunk: u32) {
        let chunk = at(chunk);
        self.edges[(map + chunk / 64) % (2 * WORDS)] ^= 1 << (chunk % 64);
    }

    /// Highest chunk at or below `chunk` with its bit set in `map`.
    fn last_edge_at_or_below(&self, map: usize, chunk: u32) -> Option<u32> {
        let chunk = at(chunk);
        let mut word = chunk / 64;
        let mut bits = self.edges[map + word] & (u64::MAX >> (63 - chunk % 64));
        loop {
            if bits != 0 {
                return Some((word * 64 + 63 - bits.leading_zeros() as usize) as u32);
            }
            word = word.checked_sub(1)?;
            bits = self.edges[map + word];
        }
    }

    // ---- shadow bytes ----

    #[inline]
    fn byte(&self, chunk: u32) -> u32 {
        u32::from(self.shadow[at(chunk)])
    }

    #[inline]
    fn set_byte(&mut self, chunk: u32, value: u32) {
        self.shadow[at(chunk)] = value as u8;
    }

    /// The link at byte offset `offset` (`NEXT` or `PREV`) of the listed run at `start`.
    #[inline(always)]
    fn link_at(&self, start: u32, offset: usize) -> u16 {
        let i = at(start) + offset;
        u16::from_le_bytes([self.shadow[i], self.shadow[i + 1]])
    }

    #[inline(always)]
    fn set_link_at(&mut self, start: u32, offset: usize, link: u16) {
        let i = at(start) + offset;
        let [low, high] = link.to_le_bytes();
        self.shadow[i] = low;
        self.shadow[i + 1] = high;
    }

    /// Length of the free run whose first chunk is `start`.
    #[inline]
    pub(crate) fn free_len_from_start(&self, start: u32) -> u32 {
        let i = at(start);
        let first = u32::from(self.shadow[i]);
        if first & TINY != 0 {
            first & !TINY
        } else {
            (first | u32::from(self.shadow[i + 1]) << 7) + 1
        }
    }

    /// Length of the free run whose last chunk is `end`.
    #[inline]
    fn free_len_from_end(&self, end: u32) -> u32 {
        let last = self.byte(end);
        if last & TINY != 0 {
            last & !TINY
        } else {
            // A listed run ends at chunk 7 or later, so `end - 1` does not wrap.
            (last | u32::from(self.shadow[at(end.wrapping_sub(1))]) << 7) + 1
        }
    }

    /// Header and footer of a listed run (`len >= MIN_RUN`).
    #[inline(always)]
    fn write_len(&mut self, start: u32, len: u32) {
        let stored = len - 1;
        let (low, high) = ((stored & 0x7f) as u8, (stored >> 7) as u8);
        let i = at(start);
        self.shadow[i] = low;
        self.shadow[i + 1] = high;
        // The footer: the high bits in the last chunk but one, the low bits in the last one
        // (`len >= 8`, so `start + len - 2` is in the run).
        let j = at(start + len - 2);
        self.shadow[j] = high;
        self.shadow[j + 1] = low;
    }

    // ---- the free-run index: lists, tiny bitmaps ----

    /// Lists the free run `[start, start + len)` (`len >= MIN_RUN`) at the head of its class.
    #[inline(always)]
    fn link(&mut self, index: &mut RunIndex, pack: usize, start: u32, len: u32) {
        self.write_len(start, len);
        let class = class_of(len) % CLASS_SLOTS;
        let next = self.heads[class];
        self.set_link_at(start, NEXT, next);
        self.set_link_at(start, PREV, NIL);
        if next == NIL {
            index.add(class, pack);
        } else {
            self.set_link_at(u32::from(next), PREV, start as u16);
        }
        self.heads[class] = start as u16;
    }

    /// Takes the listed run at `start`, of class `class`, off its list.
    #[inline(always)]
    fn unlink(&mut self, index: &mut RunIndex, pack: usize, start: u32, class: usize) {
        let next = self.link_at(start, NEXT);
        let prev = self.link_at(start, PREV);
        if prev == NIL {
            self.heads[class % CLASS_SLOTS] = next;
            if next == NIL {
                index.remove(class, pack);
            }
        } else {
            self.set_link_at(u32::from(prev), NEXT, next);
        }
        if next != NIL {
            self.set_link_at(u32::from(next), PREV, prev);
        }
    }

    /// Records `[start, start + len)` as a free run (`len` may be 0: nothing to record).
    #[inline(always)]
    pub(crate) fn add_free(&mut self, index: &mut RunIndex, pack: usize, start: u32, len: u32) {
        if len >= MIN_RUN {
            self.link(index, pack, start, len);
        } else if len > 0 {
            self.set_byte(start, TINY | len);
            self.set_byte(start + len - 1, TINY | len);
            if self.tiny.is_empty(len) {
                index.add(class_of(len), pack);
            }
            self.tiny.insert(len, start);
        }
    }

    /// Forgets the free run `[start, start + len)`, about to be used or merged.
    #[inline]
    pub(crate) fn remove_free(&mut self, index: &mut RunIndex, pack: usize, start: u32, len: u32) {
        self.remove_free_of_class(index, pack, start, len, class_of(len));
    }

    /// [`PackMeta::remove_free`] for a caller that knows the run's class.
    #[inline(always)]
    fn remove_free_of_class(
        &mut self,
        index: &mut RunIndex,
        pack: usize,
        start: u32,
        len: u32,
        class: usize,
    ) {
        if len >= MIN_RUN {
            self.unlink(index, pack, start, class);
        } else {
            self.tiny.remove(len, start);
            if self.tiny.is_empty(len) {
                index.remove(class, pack);
            }
        }
    }

    // ---- slots ----

    /// Takes `n` chunks aligned to `align` chunks out of the free run `[run, run + len)` of class
    /// `class`, and returns the first chunk of the slot. `from_end` places the slot at the end of
    /// the run, so the rest keeps its start and, most of the time, its list and class: then only
    /// its length is rewritten. Otherwise the slot goes at the start.
    ///
    /// The caller guarantees the slot fits: `len >= n + align - 1`, or the run is a whole pack.
    #[inline(always)]
    pub(crate) fn carve(
        &mut self,
        index: &mut RunIndex,
        pack: usize,
        (run, len, class): (u32, u32, usize),
        (n, align): (u32, u32),
        from_end: bool,
    ) -> u32 {
        let run_end = run + len;
        let slot = if from_end {
            (run_end - n) & !(align - 1)
        } else {
            (run + align - 1) & !(align - 1)
        };
        debug_assert!(slot >= run && slot + n <= run_end);
        let front = slot - run;
        if len >= MIN_RUN && in_class(front, class) {
            self.write_len(run, front);
        } else {
            self.remove_free_of_class(index, pack, run, len, class);
            self.add_free(index, pack, run, front);
        }
        self.add_free(index, pack, slot + n, run_end - (slot + n));
        slot
    }

    /// Marks `[slot, slot + n)` as a live slot of `size` bytes.
    #[inline]
    pub(crate) fn mark_used(&mut self, slot: u32, n: u32, size: u32) {
        self.flip_edge(START, slot);
        self.flip_edge(END, slot + n - 1);
        let stored = size - 1;
        let i = at(slot);
        if stored < WIDE {
            self.shadow[i] = stored as u8;
        } else {
            // Three chunks or more: the three bytes are the slot's own.
            self.shadow[i] = (WIDE | (stored & 0x7f)) as u8;
            self.shadow[i + 1] = (stored >> 7) as u8;
            self.shadow[i + 2] = (stored >> 15) as u8;
        }
        self.used_chunks += n;
    }

    /// The requested size of the live slot starting at `chunk`, or `None` if no slot starts there.
    #[inline]
    pub(crate) fn slot_size(&self, chunk: u32) -> Option<u32> {
        if !self.edge(START, chunk) {
            return None;
        }
        let i = at(chunk);
        let first = u32::from(self.shadow[i]);
        let stored = if first & WIDE == 0 {
            first
        } else {
            (first & 0x7f)
                | u32::from(self.shadow[i + 1]) << 7
                | u32::from(self.shadow[i + 2]) << 15
        };
        Some(stored + 1)
    }

    /// The first chunk of the live slot that covers `chunk`, if one does.
    pub(crate) fn slot_covering(&self, chunk: u32) -> Option<u32> {
        let start = self.last_edge_at_or_below(START, chunk)?;
        let end_below = chunk
            .checked_sub(1)
            .and_then(|below| self.last_edge_at_or_below(END, below));
        match end_below {
            Some(end) if end >= start => None,
            _ => Some(start),
        }
    }

    /// Frees the live slot `[slot, slot + n)` (checked by the caller) and merges it with free
    /// neighbours. A listed run before it that stays in its class grows in place, which is the
    /// common case for small slots, carved from the end of that run.
    #[inline(always)]
    pub(crate) fn release(&mut self, index: &mut RunIndex, pack: usize, slot: u32, n: u32) {
        self.flip_edge(START, slot);
        self.flip_edge(END, slot + n - 1);
        self.used_chunks -= n;

        let mut len = n;
        let next = slot + n;
        if next < CHUNKS_PER_PACK && !self.edge(START, next) {
            let next_len = self.free_len_from_start(next);
            self.remove_free(index, pack, next, next_len);
            len += next_len;
        }
        let mut start = slot;
        if slot > 0 && !self.edge(END, slot - 1) {
            let prev_len = self.free_len_from_end(slot - 1);
            start = slot - prev_len;
            len += prev_len;
            if prev_len >= MIN_RUN && in_class(len, class_of(prev_len)) {
                self.write_len(start, len);
                return;
            }
            self.remove_free(index, pack, start, prev_len);
        }
        self.add_free(index, pack, start, len);
    }

    /// The runs of the pack in address order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        let mut next = 0;
        core::iter::from_fn(move || {
            if next >= CHUNKS_PER_PACK {
                return None;
            }
            let start = next;
            let (len, slot_size) = match self.slot_size(start) {
                Some(size) => (size.div_ceil(super::CHUNK_SIZE as u32), Some(size)),
                None => (self.free_len_from_start(start), None),
            };
            // A zero length would mean corrupt metadata; end the walk rather than spin.
            if len == 0 {
                next = CHUNKS_PER_PACK;
                return None;
            }
            next = start + len;
            Some(Run {
                start,
                len,
                slot_size,
            })
        })
    }

    /// Checks every structural invariant against a walk of the runs; panics with the first
    /// violation. For tests.
    #[cfg(any(test, feature = "check-invariants"))]
    pub(crate) fn check(&self, index: &RunIndex, pack: usize) {
        use super::class::CLASSES;
        use alloc::collections::BTreeSet;

        let mut listed = BTreeSet::new();
        let mut tiny = 0;
        let mut end = 0;
        let mut previous_free = false;
        let (mut used, mut slots) = (0, 0);
        for run in self.runs() {
            assert_eq!(run.start, end, "pack {pack}: runs must tile the pack");
            end = run.start + run.len;
            assert!(
                end <= CHUNKS_PER_PACK,
                "pack {pack}: run {run:?} overruns the pack"
            );
            match run.slot_size {
                Some(_) => {
                    assert!(
                        self.edge(END, end - 1),
                        "pack {pack}: {run:?} has no end bit"
                    );
                    used += run.len;
                    slots += 1;
                    previous_free = false;
                }
                None => {
                    assert!(
                        !previous_free,
                        "pack {pack}: adjacent free runs at {}",
                        run.start
                    );
                    assert_eq!(
                        self.free_len_from_end(end - 1),
                        run.len,
                        "pack {pack}: footer"
                    );
                    if run.len >= MIN_RUN {
                        listed.insert(run.start);
                    } else {
                        assert!(
                            self.tiny.contains(run.len, run.start),
                            "pack {pack}: {run:?}"
                        );
                        tiny += 1;
                    }
                    previous_free = true;
                }
            }
        }
        assert_eq!(
            end, CHUNKS_PER_PACK,
            "pack {pack}: runs must cover the pack"
        );
        assert_eq!(used, self.used_chunks, "pack {pack}: used chunks");
        assert_eq!(self.tiny.count(), tiny, "pack {pack}: stray tiny runs");
        let ones = |map: usize| {
            self.edges[map..map + WORDS]
                .iter()
                .map(|w| w.count_ones())
                .sum::<u32>()
        };
        assert_eq!(ones(START), slots, "pack {pack}: stray start bits");
        assert_eq!(ones(END), slots, "pack {pack}: stray end bits");

        let mut on_lists = BTreeSet::new();
        for class in 0..CLASS_SLOTS {
            let len = class as u32 + 1;
            let has = if len < MIN_RUN {
                !self.tiny.is_empty(len)
            } else {
                self.heads[class] != NIL
            };
            assert_eq!(
                has,
                index.packs_with(class) & (1 << pack) != 0,
                "pack {pack}: class {class}"
            );
            assert!(
                class < CLASSES || !has,
                "pack {pack}: class {class} out of range"
            );
            let mut prev = NIL;
            let mut cursor = if len < MIN_RUN {
                NIL
            } else {
                self.heads[class]
            };
            while cursor != NIL {
                let start = u32::from(cursor);
                assert_eq!(
                    class_of(self.free_len_from_start(start)),
                    class,
                    "pack {pack}: class"
                );
                assert_eq!(self.link_at(start, PREV), prev, "pack {pack}: prev link");
                assert!(
                    on_lists.insert(start),
                    "pack {pack}: run {start} listed twice"
                );
                prev = cursor;
                cursor = self.link_at(start, NEXT);
            }
        }
        assert_eq!(
            on_lists, listed,
            "pack {pack}: listed runs differ from the walk"
        );
    }
}
