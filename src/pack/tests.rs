//! Unit tests of the allocator: each error case leaves the state unchanged, and the placement,
//! caching and release rules hold.

use alloc::string::String;
use alloc::vec::Vec;

use super::meta::Run;
use super::*;

const BASE: u64 = 0xffff_8000_4000_0000;
const PACK: u64 = PACK_SIZE as u64;

fn pool(n_packs: usize) -> PackAllocator<SimBackend> {
    PackAllocator::new(SimBackend::new(), BASE, n_packs).expect("valid pool")
}

/// Everything observable about the allocator, to compare before and after a refused call.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    stats: Stats,
    runs: Vec<(usize, Vec<Run>)>,
    map: String,
    backend_mapped: Vec<u64>,
    cached: Option<usize>,
}

pub(super) fn snapshot(alloc: &PackAllocator<SimBackend>) -> Snapshot {
    let mut map = String::new();
    alloc.render_pack_map(&mut map).expect("render to a String");
    let runs = (0..MAX_PACKS)
        .filter_map(|p| {
            alloc.packs[p]
                .as_ref()
                .map(|meta| (p, meta.runs().collect()))
        })
        .collect();
    Snapshot {
        stats: alloc.stats(),
        runs,
        map,
        backend_mapped: alloc.backend().mapped().collect(),
        cached: alloc.cached,
    }
}

/// Runs `op`, which must fail with `expected`, and checks that nothing changed.
fn refused<T: core::fmt::Debug>(
    alloc: &mut PackAllocator<SimBackend>,
    expected: AllocError,
    op: impl FnOnce(&mut PackAllocator<SimBackend>) -> Result<T, AllocError>,
) {
    let before = snapshot(alloc);
    let fills = alloc.backend().counts().fills;
    assert_eq!(op(alloc).expect_err("must be refused"), expected);
    assert_eq!(
        snapshot(alloc),
        before,
        "state changed by a refused call ({expected})"
    );
    assert_eq!(
        alloc.backend().counts().fills,
        fills,
        "refused call refilled memory"
    );
    alloc.check_invariants();
}

fn pack_of(addr: u64) -> usize {
    ((addr - BASE) / PACK) as usize
}

#[test]
fn pool_construction_is_checked() {
    let new = |base, n| PackAllocator::new(SimBackend::new(), base, n).map(|_| ());
    assert_eq!(
        new(BASE + 4096, 4),
        Err(PoolError::BaseMisaligned { base: BASE + 4096 })
    );
    assert_eq!(new(BASE, 0), Err(PoolError::BadPackCount { n_packs: 0 }));
    assert_eq!(new(BASE, 65), Err(PoolError::BadPackCount { n_packs: 65 }));
    assert_eq!(new(u64::MAX - PACK + 1, 2), Err(PoolError::AddressOverflow));
    assert_eq!(new(BASE, 64), Ok(()));
}

#[test]
fn first_allocation_maps_one_pack() {
    let mut alloc = pool(4);
    let slot = alloc.alloc(100).expect("room");
    assert_eq!(slot.size(), 100);
    assert_eq!(slot.addr() % CHUNK_SIZE as u64, 0);
    assert!(alloc.contains(slot.addr()) && alloc.backend().covers(slot.addr(), 100));
    let stats = alloc.stats();
    assert_eq!((stats.packs_mapped, stats.bytes_reserved), (1, PACK));
    assert_eq!(
        (stats.bytes_live, stats.chunk_bytes_live, stats.live_slots),
        (100, 128, 1)
    );
    assert_eq!(alloc.backend().counts().map_calls, 1);
    alloc.free(slot).expect("live slot");
    assert_eq!(
        alloc.backend().counts().fill_bytes,
        128,
        "freed chunks refilled with BRK"
    );
    assert_eq!(alloc.stats().bytes_live, 0);
    alloc.check_invariants();
}

#[test]
fn bad_sizes_and_alignments_are_refused() {
    let mut alloc = pool(2);
    let _keep = alloc.alloc(200).expect("room");
    refused(&mut alloc, AllocError::ZeroSize, |a| a.alloc(0));
    refused(&mut alloc, AllocError::ZeroSize, |a| a.alloc_raw(0));
    let pool_bytes = 2 * PACK_SIZE;
    refused(
        &mut alloc,
        AllocError::TooLarge {
            size: pool_bytes + 1,
            pool: pool_bytes,
        },
        |a| a.alloc(pool_bytes + 1),
    );
    refused(
        &mut alloc,
        AllocError::TooLarge {
            size: usize::MAX,
            pool: pool_bytes,
        },
        |a| a.alloc(usize::MAX),
    );
    for align in [0, 3, 96, 8192, 1 << 40] {
        refused(&mut alloc, AllocError::BadAlignment { align }, |a| {
            a.alloc_aligned(64, align)
        });
    }
}

#[test]
fn exhaustion_is_refused() {
    // A one-pack pool with a slot in it cannot take a whole pack more.
    let mut alloc = pool(1);
    let _small = alloc.alloc(64).expect("room");
    refused(
        &mut alloc,
        AllocError::PoolExhausted { size: PACK_SIZE },
        |a| a.alloc(PACK_SIZE),
    );
    let big = alloc.alloc(PACK_SIZE - 64).expect("rest of the pack");
    refused(&mut alloc, AllocError::PoolExhausted { size: 1 }, |a| {
        a.alloc(1)
    });
    let pool_bytes = PACK_SIZE;
    refused(
        &mut alloc,
        AllocError::TooLarge {
            size: 3 << 20,
            pool: pool_bytes,
        },
        |a| a.alloc(3 << 20),
    );
    alloc.free(big).expect("live");

    // A two-pack pool with one slot pack in use has no room for a two-pack slot.
    let mut alloc = pool(2);
    let _small = alloc.alloc(64).expect("room");
    refused(
        &mut alloc,
        AllocError::PoolExhausted { size: 3 << 20 },
        |a| a.alloc(3 << 20),
    );

    // The backend running out of frames.
    let mut alloc = PackAllocator::new(SimBackend::with_frame_limit(1), BASE, 4).expect("pool");
    let _full = alloc.alloc(PACK_SIZE).expect("first frame");
    refused(
        &mut alloc,
        AllocError::MapFailed(BackendError::OutOfFrames),
        |a| a.alloc(64),
    );
    refused(
        &mut alloc,
        AllocError::MapFailed(BackendError::OutOfFrames),
        |a| a.alloc(5 << 20),
    );
}

#[test]
fn failed_large_mapping_is_undone() {
    // Pack 1 is the cached empty pack; a large slot over packs 0..3 would map 0 and 2..3 around it.
    let mut alloc = pool(4);
    let a = alloc.alloc(PACK_SIZE).expect("pack 0");
    let b = alloc.alloc(PACK_SIZE).expect("pack 1");
    assert_eq!((pack_of(a.addr()), pack_of(b.addr())), (0, 1));
    alloc.free(a).expect("live");
    alloc.free(b).expect("live");
    assert_eq!(alloc.stats().packs_mapped, 1, "one empty pack kept");
    alloc.backend_mut().set_frame_limit(Some(3));
    refused(
        &mut alloc,
        AllocError::MapFailed(BackendError::OutOfFrames),
        |a| a.alloc(7 << 20),
    );
    assert_eq!(alloc.backend().counts().violations, 0);
    alloc.backend_mut().set_frame_limit(None);
    let large = alloc
        .alloc(7 << 20)
        .expect("whole pool, adopting the cached pack");
    assert_eq!(large.addr(), BASE);
    assert_eq!(alloc.stats().cached_packs, 0);
    assert_eq!(alloc.stats().packs_mapped, 4);
    alloc.check_invariants();
}

#[test]
fn bad_frees_are_refused() {
    let mut alloc = pool(8);
    let slot = alloc.alloc(300).expect("room"); // 5 chunks
    let addr = slot.addr();
    let _other = alloc.alloc(1000).expect("room");
    let large = alloc.alloc(5 << 20).expect("room");
    let large_addr = large.addr();

    refused(
        &mut alloc,
        AllocError::OutsidePool { addr: BASE - 64 },
        |a| a.free_raw(BASE - 64, 300),
    );
    let end = BASE + 8 * PACK;
    refused(&mut alloc, AllocError::OutsidePool { addr: end }, |a| {
        a.free_raw(end, 300)
    });
    refused(&mut alloc, AllocError::OutsidePool { addr: 0 }, |a| {
        a.free_raw(0, 300)
    });
    refused(&mut alloc, AllocError::Misaligned { addr: addr + 4 }, |a| {
        a.free_raw(addr + 4, 296)
    });
    refused(
        &mut alloc,
        AllocError::InteriorPointer {
            addr: addr + 128,
            slot: addr,
        },
        |a| a.free_raw(addr + 128, 172),
    );
    refused(
        &mut alloc,
        AllocError::WrongSize {
            addr,
            recorded: 300,
            given: 301,
        },
        |a| a.free_raw(addr, 301),
    );
    refused(
        &mut alloc,
        AllocError::WrongSize {
            addr,
            recorded: 300,
            given: 299,
        },
        |a| a.free(Slot::from_raw(addr, 299)),
    );
    // A chunk that is free, in a mapped pack: never allocated.
    let free_chunk = BASE + (pack_of(addr) as u64) * PACK;
    refused(
        &mut alloc,
        AllocError::DoubleFree { addr: free_chunk },
        |a| a.free_raw(free_chunk, 64),
    );
    // An unmapped pack.
    let unmapped = BASE + PACK;
    assert!(!alloc.backend().is_mapped(unmapped));
    refused(&mut alloc, AllocError::DoubleFree { addr: unmapped }, |a| {
        a.free_raw(unmapped, 64)
    });
    // Large slots: interior, wrong size.
    refused(
        &mut alloc,
        AllocError::InteriorPointer {
            addr: large_addr + PACK,
            slot: large_addr,
        },
        |a| a.free_raw(large_addr + PACK, 64),
    );
    refused(
        &mut alloc,
        AllocError::InteriorPointer {
            addr: large_addr + 64,
            slot: large_addr,
        },
        |a| a.free_raw(large_addr + 64, 64),
    );
    refused(
        &mut alloc,
        AllocError::WrongSize {
            addr: large_addr,
            recorded: 5 << 20,
            given: 4 << 20,
        },
        |a| a.free_raw(large_addr, 4 << 20),
    );

    // Double frees, of a small and of a large slot.
    alloc.free(slot).expect("live");
    refused(&mut alloc, AllocError::DoubleFree { addr }, |a| {
        a.free_raw(addr, 300)
    });
    alloc.free(large).expect("live");
    refused(
        &mut alloc,
        AllocError::DoubleFree { addr: large_addr },
        |a| a.free_raw(large_addr, 5 << 20),
    );
}

#[test]
fn errors_have_messages() {
    let errors = [
        AllocError::Uninitialised,
        AllocError::ZeroSize,
        AllocError::TooLarge { size: 1, pool: 0 },
        AllocError::BadAlignment { align: 3 },
        AllocError::PoolExhausted { size: 1 },
        AllocError::MapFailed(BackendError::OutOfFrames),
        AllocError::RefillFailed(BackendError::Refill),
        AllocError::MetadataExhausted,
        AllocError::OutsidePool { addr: 1 },
        AllocError::Misaligned { addr: 1 },
        AllocError::InteriorPointer { addr: 1, slot: 0 },
        AllocError::DoubleFree { addr: 1 },
        AllocError::WrongSize {
            addr: 0,
            recorded: 1,
            given: 2,
        },
    ];
    for error in errors {
        assert!(alloc::format!("{error}").len() > 10, "{error:?}");
    }
    assert!(alloc::format!("{}", PoolError::AddressOverflow).contains("wraps"));
}

#[test]
fn one_empty_pack_stays_mapped() {
    let mut alloc = pool(4);
    let slot = alloc.alloc(64).expect("room");
    alloc.free(slot).expect("live");
    assert_eq!(alloc.stats().packs_mapped, 1, "the empty pack is cached");
    assert_eq!(alloc.stats().cached_packs, 1);
    assert_eq!(alloc.backend().counts().unmap_calls, 0);
    // Alloc/free at the boundary reuses it without mapping.
    for _ in 0..10 {
        let slot = alloc.alloc(64).expect("room");
        alloc.free(slot).expect("live");
    }
    assert_eq!(alloc.backend().counts().map_calls, 1);

    // Two packs in use, both emptied: one is released, one cached.
    let a = alloc.alloc(PACK_SIZE).expect("pack");
    let b = alloc.alloc(PACK_SIZE).expect("pack");
    assert_eq!(alloc.stats().packs_mapped, 2);
    alloc.free(a).expect("live");
    assert_eq!(alloc.stats().packs_mapped, 2, "first empty pack cached");
    alloc.free(b).expect("live");
    assert_eq!(alloc.stats().packs_mapped, 1, "second empty pack released");
    assert_eq!(alloc.backend().counts().unmap_calls, 1);
    assert_eq!(alloc.backend().mapped_packs(), 1);
    alloc.check_invariants();
}

#[test]
fn large_slots_take_whole_packs_from_the_top() {
    let mut alloc = pool(8);
    let small = alloc.alloc(64).expect("room");
    assert_eq!(pack_of(small.addr()), 0, "slot packs from the bottom");
    let large = alloc.alloc((2 << 20) + 1).expect("room");
    assert_eq!(pack_of(large.addr()), 6, "large slots from the top");
    assert!(alloc.backend().covers(large.addr(), large.size()));
    let stats = alloc.stats();
    assert_eq!((stats.packs_mapped, stats.large_packs), (3, 2));
    assert_eq!(stats.bytes_live, 64 + (2 << 20) + 1);
    let mut map = String::new();
    alloc.render_pack_map(&mut map).expect("render");
    assert_eq!(map.lines().count(), 3);
    alloc.free(large).expect("live");
    assert_eq!(
        alloc.stats().packs_mapped,
        1,
        "large packs unmapped, not cached"
    );
    assert_eq!(
        alloc.backend().counts().fills,
        0,
        "unmapped, so not refilled"
    );
    let whole = alloc.alloc(7 * PACK_SIZE).expect("the rest of the pool");
    assert_eq!(pack_of(whole.addr()), 1);
    alloc.free(whole).expect("live");
    alloc.free(small).expect("live");
    alloc.check_invariants();
}

#[test]
fn small_slots_fill_from_the_end_and_large_from_the_start() {
    let mut alloc = pool(1);
    let small = alloc.alloc(100).expect("room");
    let large = alloc.alloc(10_000).expect("room");
    assert_eq!(small.addr(), BASE + PACK - 128);
    assert_eq!(large.addr(), BASE);
    let next_small = alloc.alloc(64).expect("room");
    assert_eq!(next_small.addr(), BASE + PACK - 192);
    alloc.check_invariants();
}

#[test]
fn a_hole_is_reused_by_a_slot_of_its_size() {
    let mut alloc = pool(1);
    let mut slots: Vec<Slot> = (0..6).map(|_| alloc.alloc(640).expect("room")).collect();
    let hole = slots.remove(2);
    let hole_addr = hole.addr();
    alloc.free(hole).expect("live");
    let again = alloc.alloc(600).expect("room");
    assert_eq!(again.addr(), hole_addr, "exact fit");
    alloc.check_invariants();
}

#[test]
fn a_run_in_the_class_below_is_used_before_an_empty_pack() {
    // 32767 chunks are free, in the class below the one that guarantees a fit.
    let mut alloc = pool(2);
    let _last_chunk = alloc.alloc(64).expect("room");
    let rest = alloc.alloc(PACK_SIZE - 64).expect("rest of the pack");
    assert_eq!(pack_of(rest.addr()), 0);
    assert_eq!(alloc.stats().packs_mapped, 1);
}

#[test]
fn best_fit_over_the_pool_then_the_lowest_pack() {
    let mut alloc = pool(4);
    // Pack 0: free 512 KiB at the start, a slot, a free 32 KiB run at the end.
    let p0_head = alloc.alloc(512 << 10).expect("room");
    let _p0 = alloc
        .alloc(PACK_SIZE - (512 << 10) - (32 << 10))
        .expect("room");
    alloc.free(p0_head).expect("live");
    // Pack 1: one slot and a 48 KiB run at the end.
    let p1 = alloc.alloc(PACK_SIZE - (48 << 10)).expect("room");
    assert_eq!(pack_of(p1.addr()), 1);
    // 40 KiB: the 48 KiB run of pack 1 is the best fit, but pack 1 is the highest slot pack
    // (draining): over 4 KiB the lowest pack with room, pack 0, takes it.
    let best = alloc.alloc(40 << 10).expect("room");
    assert_eq!(pack_of(best.addr()), 0);
    assert!(best.addr() < BASE + (512 << 10), "in pack 0's 512 KiB run");
    // 2 KiB: the pool-wide best fit is pack 0's 32 KiB run, the smallest, in a pack that is not
    // draining.
    let small = alloc.alloc(2048).expect("room");
    assert_eq!(pack_of(small.addr()), 0);
    alloc.free(small).expect("live");
    // 9000 bytes: the 32 KiB run of pack 0 is the best fit.
    let next = alloc.alloc(9000).expect("room");
    assert_eq!(pack_of(next.addr()), 0);
    assert!(next.addr() >= BASE + PACK - (32 << 10));
    alloc.check_invariants();
}

#[test]
fn a_small_slot_whose_best_fit_is_in_a_draining_pack_goes_to_the_lowest_pack_with_room() {
    let mut alloc = pool(4);
    // Pack 0: a 64 KiB run at the end. Pack 1: a 4 KiB run at the end, the best fit of 1 KiB.
    let _p0 = alloc.alloc(PACK_SIZE - (64 << 10)).expect("room");
    let p1 = alloc.alloc(PACK_SIZE - 4096).expect("room");
    assert_eq!(pack_of(p1.addr()), 1);
    // Pack 1 is the highest slot pack and not the lowest: draining, so pack 0 takes the slot.
    let small = alloc.alloc(1024).expect("room");
    assert_eq!(pack_of(small.addr()), 0);
    alloc.check_invariants();
    // With pack 1 gone, pack 0 is the only slot pack, which never drains: best fit again.
    alloc.free(p1).expect("live");
    alloc.trim();
    assert_eq!(alloc.stats().packs_mapped, 1);
    let again = alloc.alloc(1024).expect("room");
    assert_eq!(pack_of(again.addr()), 0);
    assert_eq!(
        again.addr(),
        small.addr() - 1024,
        "cut from the end of the same run"
    );
    alloc.check_invariants();
}

#[test]
fn a_freed_large_slot_is_reused_by_one_of_the_same_size() {
    // Sizes from 4 KiB up share classes with other lengths; the hole of a freed slot still fits.
    let mut alloc = pool(1);
    let slots: Vec<Slot> = (0..8)
        .map(|i| alloc.alloc(5000 + i * 1000).expect("room"))
        .collect();
    let mut slots = slots;
    let hole = slots.remove(3);
    let (addr, size) = hole.into_raw();
    alloc.free_raw(addr, size).expect("live");
    assert_eq!(alloc.alloc(size).expect("room").addr(), addr);
    alloc.check_invariants();
}

#[test]
fn freed_neighbours_merge_and_tiny_runs_are_reused() {
    let mut alloc = pool(1);
    let a = alloc.alloc(64 * 20).expect("room");
    let b = alloc.alloc(64 * 3).expect("room"); // a 3-chunk tiny run when freed alone
    let c = alloc.alloc(64 * 20).expect("room");
    let b_addr = b.addr();
    alloc.free(b).expect("live");
    let stats = alloc.pack_stats(0).expect("slot pack");
    assert_eq!(stats.tiny_run_bytes, 3 * 64);
    // Best fit: a 2-chunk slot goes into the tiny run, a 1-chunk one into what is left of it.
    let d = alloc.alloc(100).expect("room");
    assert_eq!(d.addr(), b_addr + 64, "carved from the end of the tiny run");
    let e = alloc.alloc(10).expect("room");
    assert_eq!(e.addr(), b_addr);
    alloc.free(d).expect("live");
    alloc.free(e).expect("live");
    alloc.free(a).expect("live");
    alloc.free(c).expect("live");
    let stats = alloc.pack_stats(0).expect("slot pack");
    assert_eq!(
        (
            stats.tiny_run_bytes,
            stats.largest_free_run,
            stats.used_bytes
        ),
        (0, PACK, 0)
    );
    alloc.check_invariants();
}

#[test]
fn aligned_slots_are_aligned() {
    let mut alloc = pool(2);
    let mut slots = Vec::new();
    for (i, align) in [64, 128, 256, 512, 1024, 2048, 4096]
        .into_iter()
        .cycle()
        .take(60)
        .enumerate()
    {
        let size = 50 + i * 97;
        let slot = alloc.alloc_aligned(size, align).expect("room");
        assert_eq!(slot.addr() % align as u64, 0, "align {align}");
        slots.push(slot);
        alloc.check_invariants();
    }
    // Alignment below a chunk is a chunk.
    let tiny = alloc.alloc_aligned(8, 16).expect("room");
    assert_eq!(tiny.addr() % 64, 0);
    slots.push(tiny);
    for slot in slots {
        alloc.free(slot).expect("live");
        alloc.check_invariants();
    }
    assert_eq!(alloc.stats().packs_mapped, 1);
}

#[test]
fn whole_pack_slot_with_page_alignment() {
    let mut alloc = pool(1);
    let slot = alloc
        .alloc_aligned(PACK_SIZE, MAX_ALIGN)
        .expect("empty pack");
    assert_eq!(slot.addr(), BASE);
    alloc.free(slot).expect("live");
    alloc.check_invariants();
}

#[test]
fn pack_map_shows_occupancy() {
    let mut alloc = pool(2);
    let _full = alloc.alloc(32 * 1024).expect("room"); // one full cell at the start
    let _few = alloc.alloc(64 * 20).expect("room"); // 20 of the 512 chunks of the last cell
    let mut map = String::new();
    alloc.render_pack_map(&mut map).expect("render");
    let line = map.lines().next().expect("one pack");
    let cells: String = line
        .chars()
        .skip_while(|&c| c != '|')
        .skip(1)
        .take(64)
        .collect();
    assert_eq!(cells.chars().next(), Some('#'));
    assert_eq!(cells.chars().nth(1), Some(' '));
    assert_eq!(cells.chars().last(), Some('.'));
    assert!(line.starts_with(" 0 0xffff800040000000 |"), "{line}");
    assert!(line.ends_with("|   1% "), "{line}");
}

#[test]
fn metadata_stays_small() {
    // Two edge bitmaps, one shadow byte per chunk, eight tiny-run bitmaps, list heads and summaries.
    let arrays = 2 * (CHUNKS_PER_PACK as usize / 8) + CHUNKS_PER_PACK as usize + 8 * 4096;
    assert_eq!(arrays, 72 * 1024);
    assert!(core::mem::size_of::<PackMeta>() < 1100);
}

#[test]
fn a_large_request_releases_the_cached_pack_when_frames_run_out() {
    // Two frames; the cached empty pack holds one at the bottom of the pool, and the run of two
    // packs is taken from the top: without the retry the 3 MiB request fails.
    let mut alloc = PackAllocator::new(SimBackend::with_frame_limit(2), BASE, 8).expect("pool");
    let small = alloc.alloc(64).expect("room");
    alloc.free(small).expect("live");
    assert_eq!(alloc.stats().cached_packs, 1);
    let large = alloc
        .alloc(3 << 20)
        .expect("the cached pack's frame is reused");
    assert_eq!(alloc.stats().cached_packs, 0);
    assert_eq!(alloc.backend().mapped_packs(), 2);
    assert_eq!(alloc.backend().counts().violations, 0);
    alloc.check_invariants();
    // With nothing cached to give back, running out is still an error that changes nothing.
    refused(
        &mut alloc,
        AllocError::MapFailed(BackendError::OutOfFrames),
        |a| a.alloc(64),
    );
    alloc.free(large).expect("live");
    alloc.check_invariants();
}

#[test]
fn trim_releases_only_the_cached_pack() {
    let mut alloc = pool(4);
    assert!(!alloc.trim(), "nothing cached yet");
    // The first pack nearly full, so that the second is cached when it empties.
    let live = alloc.alloc(PACK_SIZE - 1000).expect("room");
    let other = alloc.alloc(PACK_SIZE).expect("a whole pack");
    alloc.free(other).expect("live");
    assert_eq!(alloc.stats().packs_mapped, 2);
    assert!(alloc.trim());
    assert_eq!(alloc.stats().packs_mapped, 1);
    assert_eq!(alloc.stats().cached_packs, 0);
    assert!(!alloc.trim());
    assert_eq!(
        alloc.mapped_packs().collect::<Vec<_>>(),
        [pack_of_va(&live)]
    );
    assert!(alloc.backend().is_mapped(pack_of_va(&live)));
    alloc.free(live).expect("still live");
    alloc.check_invariants();
}

fn pack_of_va(slot: &Slot) -> u64 {
    slot.addr() - slot.addr() % PACK
}

#[test]
fn slot_at_finds_the_slot_covering_an_address() {
    let mut alloc = pool(8);
    let a = alloc.alloc(100).expect("room"); // two chunks
    let b = alloc.alloc(64).expect("room");
    let large = alloc.alloc(PACK_SIZE + 1).expect("two packs");
    let before = snapshot(&alloc);
    let info = |slot: &Slot| SlotInfo {
        addr: slot.addr(),
        size: slot.size(),
    };
    assert_eq!(alloc.slot_at(a.addr()), Some(info(&a)));
    assert_eq!(
        alloc.slot_at(a.addr() + 127),
        Some(info(&a)),
        "last byte of its chunks"
    );
    assert_eq!(alloc.slot_at(b.addr() + 8), Some(info(&b)));
    assert_eq!(alloc.slot_at(large.addr()), Some(info(&large)));
    assert_eq!(
        alloc.slot_at(large.addr() + PACK + 5),
        Some(info(&large)),
        "its second pack"
    );
    // Free chunks, unmapped packs, outside the pool: nothing.
    let free_chunk = a.addr().min(b.addr()) - 64;
    assert_eq!(alloc.slot_at(free_chunk), None);
    assert_eq!(alloc.slot_at(BASE + 5 * PACK), None);
    assert_eq!(alloc.slot_at(BASE - 1), None);
    assert_eq!(alloc.slot_at(BASE + 8 * PACK), None);
    assert_eq!(alloc.slot_at(u64::MAX), None);
    assert_eq!(snapshot(&alloc), before, "a lookup changes nothing");
    let packs: Vec<u64> = alloc.mapped_packs().collect();
    assert_eq!(packs, [BASE, BASE + 6 * PACK, BASE + 7 * PACK]);
    assert_eq!(packs, alloc.backend().mapped().collect::<Vec<_>>());
    for slot in [a, b, large] {
        alloc.free(slot).expect("live");
    }
    alloc.check_invariants();
}

#[test]
fn a_cached_pack_between_used_ones_is_released_for_a_large_request() {
    // Packs 0 and 2 in use, 1 cached: no run of two includes it, so it is released to free its
    // frame, and cached again when that is still not enough.
    let setup = |frames| {
        let mut alloc =
            PackAllocator::new(SimBackend::with_frame_limit(frames), BASE, 5).expect("pool");
        let a = alloc.alloc(PACK_SIZE).expect("pack 0");
        let b = alloc.alloc(PACK_SIZE).expect("pack 1");
        let c = alloc.alloc(PACK_SIZE).expect("pack 2");
        alloc.free(b).expect("live");
        assert_eq!(alloc.stats().cached_packs, 1);
        (alloc, a, c)
    };
    let (mut alloc, _a, _c) = setup(3);
    refused(
        &mut alloc,
        AllocError::MapFailed(BackendError::OutOfFrames),
        |a| a.alloc(3 << 20),
    );
    assert_eq!(alloc.stats().cached_packs, 1, "cached again");
    assert_eq!(alloc.backend().counts().violations, 0);

    let (mut alloc, _a, _c) = setup(4);
    let large = alloc
        .alloc(3 << 20)
        .expect("two frames once the cached one is released");
    assert_eq!(pack_of(large.addr()), 3);
    assert_eq!(alloc.stats().cached_packs, 0);
    assert_eq!(alloc.backend().mapped_packs(), 4);
    alloc.check_invariants();
}

#[test]
fn a_free_whose_refill_fails_is_refused() {
    let mut alloc = pool(4);
    let small = alloc.alloc(100).expect("room");
    let large = alloc.alloc(PACK_SIZE + 64).expect("room");
    alloc.backend_mut().set_refill_failure(true);
    let (addr, size) = (small.addr(), small.size());
    refused(
        &mut alloc,
        AllocError::RefillFailed(BackendError::Refill),
        |a| a.free_raw(addr, size),
    );
    alloc.backend_mut().set_refill_failure(false);
    alloc.free(small).expect("refills now");
    alloc
        .free(large)
        .expect("large slots are unmapped, not refilled");
    alloc.check_invariants();
    assert_eq!(
        alloc::format!("{}", AllocError::RefillFailed(BackendError::Refill)),
        "exec slot not freed: freed code could not be refilled with BRK"
    );
}
