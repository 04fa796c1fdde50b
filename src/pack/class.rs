//! Size classes of free chunk runs, and the pool-wide index that says which packs have a free run
//! of each class.
//!
//! The classes are those of TLSF (Masmano et al., "TLSF: a new dynamic memory allocator for
//! real-time systems", 2004) counted in 64-byte chunks: exact below [`LINEAR_LIMIT`] chunks (4 KiB,
//! where most BPF programs fall, so a hole there is reused by a program of exactly its size), then
//! sixteen sub-classes per power of two, so a run is never more than 6.25% longer than the shortest
//! run of its class (eight sub-classes measured 2% worse live/reserved bytes in the benchmark).
//! Runs of at least [`MIN_RUN`] chunks are kept on free lists, shorter ("tiny") runs in bitmaps
//! (see [`super::meta`]); both have classes here.

use super::{CHUNKS_PER_PACK, MAX_PACKS};

/// Shortest free run that is kept on a free list. A listed run stores its length twice and two list
/// links in the shadow bytes of its own chunks (one byte per chunk), which takes eight chunks.
/// Shorter runs are "tiny".
pub(crate) const MIN_RUN: u32 = 8;

/// Runs shorter than this many chunks have a class of their own length.
pub(crate) const LINEAR_LIMIT: u32 = 64;

/// log2 of the number of sub-classes per power of two above [`LINEAR_LIMIT`].
const SUB_BITS: u32 = 4;

/// Classes of the linear part: one per length in `1..LINEAR_LIMIT`.
const LINEAR_CLASSES: u32 = LINEAR_LIMIT - 1;

/// Number of classes: the linear ones, sixteen per power of two from 2^6 to 2^14, and one for a
/// whole pack (2^15 chunks).
pub(crate) const CLASSES: usize = class_of(CHUNKS_PER_PACK) + 1;

/// Size of per-class arrays: a power of two, so a class index is masked rather than bounds-checked
/// (a remainder by 208 would cost a multiplication on every access).
pub(crate) const CLASS_SLOTS: usize = CLASSES.next_power_of_two();

/// Words of a class bitmap.
const CLASS_WORDS: usize = CLASS_SLOTS / 64;

/// Shortest run of each class (`u16::MAX` past the last class), so "is a run of `len` chunks still
/// in class `c`" is one load and two comparisons.
static CLASS_MIN: [u16; CLASS_SLOTS + 1] = {
    let mut table = [u16::MAX; CLASS_SLOTS + 1];
    let mut len = CHUNKS_PER_PACK;
    while len > 0 {
        table[class_of(len)] = len as u16;
        len -= 1;
    }
    table
};

/// Whether a run of `len` chunks is of class `class`.
#[inline]
pub(crate) fn in_class(len: u32, class: usize) -> bool {
    let class = class % CLASS_SLOTS;
    len >= u32::from(CLASS_MIN[class]) && len < u32::from(CLASS_MIN[class + 1])
}

/// The class of a free run of `len` chunks (`1 <= len <= CHUNKS_PER_PACK`); a run of `len < 64`
/// chunks has class `len - 1`.
pub(crate) const fn class_of(len: u32) -> usize {
    if len < LINEAR_LIMIT {
        return (len - 1) as usize;
    }
    let log2 = 31 - len.leading_zeros();
    let sub = (len >> (log2 - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR_CLASSES + ((log2 - LINEAR_LIMIT.trailing_zeros()) << SUB_BITS) + sub) as usize
}

/// The smallest class all of whose runs are at least `len` chunks long (`1 <= len <=
/// CHUNKS_PER_PACK`).
#[inline]
pub(crate) fn class_at_least(len: u32) -> usize {
    if len < LINEAR_LIMIT {
        return (len as usize).saturating_sub(1);
    }
    let class = class_of(len);
    // Above the class's shortest run: the next class starts above `len`.
    class + usize::from(len > u32::from(CLASS_MIN[class % CLASS_SLOTS]))
}

/// The shortest run of class `class`.
#[cfg(test)]
pub(crate) fn class_min_len(class: usize) -> u32 {
    u32::from(CLASS_MIN[class])
}

/// A set of classes, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClassSet([u64; CLASS_WORDS]);

impl ClassSet {
    #[inline]
    pub(crate) fn insert(&mut self, class: usize) {
        let class = class % CLASS_SLOTS;
        self.0[class / 64] |= 1 << (class % 64);
    }

    #[inline]
    pub(crate) fn remove(&mut self, class: usize) {
        let class = class % CLASS_SLOTS;
        self.0[class / 64] &= !(1 << (class % 64));
    }

    #[inline]
    pub(crate) fn contains(&self, class: usize) -> bool {
        let class = class % CLASS_SLOTS;
        self.0[class / 64] & (1 << (class % 64)) != 0
    }

    /// The smallest class in the set that is at least `class`.
    #[inline]
    pub(crate) fn first_at_least(&self, class: usize) -> Option<usize> {
        let mut word = class / 64;
        let mut bits = *self.0.get(word)? & (u64::MAX << (class % 64));
        while bits == 0 {
            word += 1;
            bits = *self.0.get(word)?;
        }
        Some(word * 64 + bits.trailing_zeros() as usize)
    }
}

/// Which packs have a free run of which class, over the whole pool.
///
/// `packs[c]` has bit `p` set while pack `p` has a free run of class `c`, and `classes` holds the
/// classes whose mask is not zero. "The smallest class at least `c` that some pack has" is then a
/// find-first-set over at most four words, and the packs that have it one more load: no walk over
/// packs or free lists. `by_pack[p]` is the same relation seen from pack `p`, the classes it has
/// runs of, so that "the best-fitting run of this pack" is one find-first-set too (the first fit
/// by pack walks the packs, not the classes).
pub(crate) struct RunIndex {
    classes: ClassSet,
    packs: [u64; CLASS_SLOTS],
    by_pack: [ClassSet; MAX_PACKS],
}

impl RunIndex {
    pub(crate) const fn new() -> Self {
        Self {
            classes: ClassSet([0; CLASS_WORDS]),
            packs: [0; CLASS_SLOTS],
            by_pack: [ClassSet([0; CLASS_WORDS]); MAX_PACKS],
        }
    }

    /// Pack `pack` now has a run of class `class`, and had none.
    #[inline]
    pub(crate) fn add(&mut self, class: usize, pack: usize) {
        let class = class % CLASS_SLOTS;
        if self.packs[class] == 0 {
            self.classes.insert(class);
        }
        self.packs[class] |= 1 << (pack % MAX_PACKS);
        self.by_pack[pack % MAX_PACKS].insert(class);
    }

    /// Pack `pack` no longer has a run of class `class`.
    #[inline]
    pub(crate) fn remove(&mut self, class: usize, pack: usize) {
        let class = class % CLASS_SLOTS;
        self.packs[class] &= !(1 << (pack % MAX_PACKS));
        if self.packs[class] == 0 {
            self.classes.remove(class);
        }
        self.by_pack[pack % MAX_PACKS].remove(class);
    }

    /// The classes pack `pack` has a run of.
    #[inline]
    pub(crate) fn classes_of(&self, pack: usize) -> &ClassSet {
        &self.by_pack[pack % MAX_PACKS]
    }

    /// The packs with a run of class `class`, one bit per pack.
    #[inline]
    pub(crate) fn packs_with(&self, class: usize) -> u64 {
        self.packs[class % CLASS_SLOTS]
    }

    /// The smallest class at least `class` that some pack has a run of.
    #[inline]
    pub(crate) fn first_at_least(&self, class: usize) -> Option<usize> {
        self.classes.first_at_least(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_partition_lengths_in_order() {
        let mut previous = 0;
        for len in 1..=CHUNKS_PER_PACK {
            let class = class_of(len);
            assert!(class == previous || class == previous + 1, "len {len}");
            assert!(class_min_len(class) <= len, "len {len} class {class}");
            assert!(
                class < 64 || class_min_len(class) * 17 / 16 >= len,
                "class {class} too wide"
            );
            if class + 1 < CLASSES {
                assert!(len < class_min_len(class + 1), "len {len}");
            }
            previous = class;
        }
        assert_eq!(class_of(CHUNKS_PER_PACK), CLASSES - 1);
        assert_eq!(CLASSES, 208);
    }

    #[test]
    fn class_at_least_only_holds_runs_that_fit() {
        for len in 1..=CHUNKS_PER_PACK {
            let class = class_at_least(len);
            assert!(class < CLASSES && class_min_len(class) >= len, "len {len}");
            // ... and it is the smallest such class.
            if class > 0 {
                assert!(class_min_len(class - 1) < len, "len {len}");
            }
            assert!(in_class(len, class_of(len)) && !in_class(len, class_of(len) + 1));
        }
        assert_eq!(class_at_least(CHUNKS_PER_PACK - 1), CLASSES - 1);
    }

    #[test]
    fn index_finds_smallest_class_and_its_packs() {
        let mut index = RunIndex::new();
        assert_eq!(index.first_at_least(0), None);
        index.add(70, 3);
        index.add(CLASSES - 1, 5);
        index.add(70, 9);
        index.add(2, 1);
        assert_eq!(index.first_at_least(0), Some(2));
        assert_eq!(index.first_at_least(3), Some(70));
        assert_eq!(index.first_at_least(71), Some(CLASSES - 1));
        assert_eq!(index.first_at_least(CLASSES), None);
        assert_eq!(index.packs_with(70), (1 << 3) | (1 << 9));
        index.remove(70, 3);
        assert_eq!(index.first_at_least(3), Some(70));
        index.remove(70, 9);
        assert_eq!(index.first_at_least(3), Some(CLASSES - 1));
    }
}
