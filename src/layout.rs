//! Physical and virtual memory regions: how a board describes its memory map and how the kernel
//! reports it. Portable, so the checks run on the host.

use core::fmt::{self, Write};

use arrayvec::ArrayVec;

/// One named, contiguous range of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// What lives there, for reports.
    pub name: &'static str,
    /// First address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Region {
    /// A region of `size` bytes at `start`.
    pub const fn new(name: &'static str, start: u64, size: u64) -> Self {
        Self { name, start, size }
    }

    /// A region from `start` up to, not including, `end` (empty if `end <= start`).
    pub const fn from_bounds(name: &'static str, start: u64, end: u64) -> Self {
        Self {
            name,
            start,
            size: end.saturating_sub(start),
        }
    }

    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.start + self.size
    }

    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end()
    }

    /// Whether the two regions share at least one address.
    pub const fn overlaps(&self, other: &Region) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// The parts of `bases` that none of `holes` covers, in the order of `bases`; `None` if they are more
/// than `N` pieces. No allocation: the boot path uses it before the heap exists.
pub fn subtract<const N: usize>(bases: &[Region], holes: &[Region]) -> Option<ArrayVec<Region, N>> {
    let mut parts: ArrayVec<Region, N> = ArrayVec::new();
    parts.try_extend_from_slice(bases).ok()?;
    for hole in holes {
        let mut next: ArrayVec<Region, N> = ArrayVec::new();
        for part in &parts {
            if !part.overlaps(hole) {
                next.try_push(*part).ok()?;
                continue;
            }
            let below = Region::from_bounds(part.name, part.start, hole.start);
            let above = Region::from_bounds(part.name, hole.end(), part.end());
            for piece in [below, above] {
                if piece.size > 0 {
                    next.try_push(piece).ok()?;
                }
            }
        }
        parts = next;
    }
    Some(parts)
}

/// Reach of one `B`/`BL` (imm26 words): -128 MiB ..= 128 MiB - 4.
pub const BRANCH_REACH: i64 = 128 << 20;

/// Whether a single `BL` from any instruction in `from` reaches any instruction in `to`
/// (Arm ARM C6.2.34: offset = imm26 * 4, from -2^27 to 2^27 - 4).
pub fn branch_reaches(from: &Region, to: &Region) -> bool {
    if from.size < 4 || to.size < 4 {
        return false;
    }
    let farthest_forward = (to.end() - 4) as i64 - from.start as i64;
    let farthest_backward = to.start as i64 - (from.end() - 4) as i64;
    farthest_forward <= BRANCH_REACH - 4 && farthest_backward >= -BRANCH_REACH
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#012x}..{:#012x} {:>9} {}",
            self.start,
            self.end(),
            Size(self.size),
            self.name
        )
    }
}

/// A byte count printed with a binary unit (`4 KiB`, `2 MiB`, `1.5 GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    /// Honours width and alignment (`{:>9}`), so tables line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        let mut text = TextBuf::default();
        let written = match UNITS.iter().find(|(_, scale)| self.0 >= *scale) {
            Some(&(unit, scale)) => {
                let (whole, tenths) = (self.0 / scale, (self.0 % scale) * 10 / scale);
                if tenths == 0 {
                    write!(text, "{whole} {unit}")
                } else {
                    write!(text, "{whole}.{tenths} {unit}")
                }
            }
            None => write!(text, "{} B", self.0),
        };
        written?;
        f.pad(text.as_str())
    }
}

/// A few bytes of text on the stack, for padding formatted numbers without allocating.
#[derive(Default)]
struct TextBuf {
    bytes: [u8; 32],
    len: usize,
}

impl TextBuf {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl fmt::Write for TextBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn overlap_and_containment() {
        let a = Region::new("a", 0x1000, 0x1000);
        let b = Region::new("b", 0x1fff, 1);
        let c = Region::new("c", 0x2000, 0x10);
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!(a.contains(0x1fff) && !a.contains(0x2000));
        assert_eq!(Region::from_bounds("e", 5, 3).size, 0);
    }

    #[test]
    fn subtract_leaves_what_no_hole_covers() {
        let ram = Region::new("RAM", 0x1000, 0x9000);
        let holes = [
            Region::new("h1", 0x2000, 0x1000),
            Region::new("h2", 0x8000, 0x4000),
        ];
        let parts: alloc::vec::Vec<(u64, u64)> = subtract::<4>(&[ram], &holes)
            .expect("3 pieces fit in 4")
            .iter()
            .map(|r| (r.start, r.end()))
            .collect();
        assert_eq!(parts, [(0x1000, 0x2000), (0x3000, 0x8000)]);
        let all = Region::new("all", 0, 0x10_0000);
        assert!(subtract::<4>(&[ram], &[all]).expect("fits").is_empty());
        assert_eq!(subtract::<4>(&[ram], &[]).expect("fits").as_slice(), [ram]);
        // Two holes inside one base make three pieces: more than N = 2 is reported, not lost.
        let inner = [
            Region::new("a", 0x2000, 0x10),
            Region::new("b", 0x4000, 0x10),
        ];
        assert!(subtract::<2>(&[ram], &inner).is_none());
    }

    #[test]
    fn branch_reach_is_checked_both_ways() {
        let text = Region::new("text", 0x4020_0000, 0x10_0000);
        let near = Region::new("pool", 0x3c00_0000, 0x400_0000);
        assert!(branch_reaches(&text, &near) && branch_reaches(&near, &text));
        // Exactly at the limit: the last instruction of `to` is 128 MiB - 4 after `from`.
        let a = Region::new("a", 0, 4);
        let b = Region::new("b", (128 << 20) - 4, 4);
        assert!(branch_reaches(&a, &b));
        assert!(branch_reaches(&b, &a));
        let c = Region::new("c", 128 << 20, 4);
        assert!(!branch_reaches(&a, &c));
        assert!(
            branch_reaches(&c, &a),
            "backwards the reach is a full 128 MiB"
        );
    }

    #[test]
    fn sizes_print_with_units() {
        assert_eq!(format!("{}", Size(4096)), "4 KiB");
        assert_eq!(format!("{}", Size(3 << 29)), "1.5 GiB");
        assert_eq!(format!("{}", Size(100)), "100 B");
        assert_eq!(
            format!("{}", Region::new("RAM", 0x4000_0000, 512 << 20)),
            "0x0040000000..0x0060000000   512 MiB RAM"
        );
    }
}
