//! Host tests of the baselines (the Linux one behaves like Linux) and of the workloads over all
//! three allocators, including the space target of the core allocator.

use std::eprintln;
use std::vec::Vec;

use super::bpf_prog_pack::{self, BpfProgPack, CHUNK_COUNT};
use super::buddy::BuddySlots;
use super::workload::{self, Pairs, Rng};
use super::*;
use crate::pack::{PackAllocator, SimBackend};

const BASE: u64 = 0xffff_8000_c000_0000;
const PACK: u64 = PACK_SIZE as u64;

fn linux(n_packs: usize) -> BpfProgPack<SimBackend> {
    BpfProgPack::new(SimBackend::new(), BASE, n_packs)
}

#[test]
fn linux_first_fit_takes_the_lowest_hole_that_fits() {
    let mut a = linux(4);
    let x = a.alloc(64).expect("room");
    let y = a.alloc(128).expect("room");
    let z = a.alloc(64).expect("room");
    assert_eq!((x, y, z), (BASE, BASE + 64, BASE + 192));
    a.free(y, 128).expect("live");
    assert_eq!(
        a.alloc(256).expect("room"),
        BASE + 256,
        "hole too small: after z"
    );
    assert_eq!(a.alloc(64).expect("room"), BASE + 64, "first fit: the hole");
    assert_eq!(
        a.alloc(64).expect("room"),
        BASE + 128,
        "then the rest of the hole"
    );
}

#[test]
fn linux_walks_packs_in_creation_order() {
    let mut a = linux(4);
    let big = a.alloc(PACK_SIZE - 64).expect("room");
    let second = a.alloc(128).expect("room");
    assert_eq!(
        (big, second),
        (BASE, BASE + PACK),
        "no room in pack 0: new pack at the tail"
    );
    // A 64-byte slot still fits at the end of pack 0, which comes first in the list.
    assert_eq!(a.alloc(64).expect("room"), BASE + PACK - 64);
    assert_eq!(a.alloc(64).expect("room"), BASE + PACK + 128);
    assert_eq!(a.pack_addresses().collect::<Vec<_>>(), [BASE, BASE + PACK]);
    // Free finds the pack by walking the list.
    a.free(second, 128).expect("live");
    assert_eq!(a.alloc(100).expect("room"), BASE + PACK);
}

#[test]
fn linux_releases_a_pack_only_when_empty_and_keeps_none() {
    let mut a = linux(4);
    let x = a.alloc(1000).expect("room");
    let y = a.alloc(1000).expect("room");
    a.free(x, 1000).expect("live");
    assert_eq!(a.backend().mapped_packs(), 1, "not empty yet");
    a.free(y, 1000).expect("live");
    assert_eq!(
        a.backend().mapped_packs(),
        0,
        "empty: released at once, no cache"
    );
    assert_eq!(
        a.backend().counts().fill_bytes,
        2000,
        "frees refill the requested size"
    );
    // Alloc/free at the boundary maps and unmaps every time.
    for _ in 0..3 {
        let x = a.alloc(64).expect("room");
        a.free(x, 64).expect("live");
    }
    assert_eq!(a.backend().counts().map_calls, 4);
    assert_eq!(a.backend().counts().unmap_calls, 4);
}

#[test]
fn linux_large_requests_get_their_own_mapping() {
    let mut a = linux(8);
    let small = a.alloc(64).expect("room");
    let large = a.alloc(PACK_SIZE + 1).expect("room");
    assert_eq!(large, BASE + PACK);
    assert_eq!(a.stats().packs_mapped, 3);
    assert!(
        a.pack_addresses().all(|pack| pack != large),
        "not on the pack list"
    );
    a.free(large, PACK_SIZE + 1).expect("live");
    assert_eq!(a.stats().packs_mapped, 1);
    a.free(small, 64).expect("live");
    assert_eq!(a.stats(), BenchStats::default());
}

#[test]
fn linux_bitmap_search_matches_a_plain_scan() {
    let mut rng = Rng::new(7);
    for _ in 0..300 {
        let mut map = [0u64; 8];
        let density = rng.below(100);
        for bit in 0..512 {
            if rng.below(100) < density {
                map[bit / 64] |= 1 << (bit % 64);
            }
        }
        let nr = 1 + rng.below(80) as usize;
        let naive =
            (0..=512 - nr).find(|&i| (i..i + nr).all(|b| map[b / 64] & (1 << (b % 64)) == 0));
        let found = bpf_prog_pack::bitmap_find_next_zero_area(&map, 512, 0, nr, 0);
        match naive {
            Some(index) => assert_eq!(found, index),
            None => assert!(found > 512 - nr, "no area: a value past the end"),
        }
        let mut copy = map;
        let start = rng.below(400) as usize;
        let len = 1 + rng.below(112) as usize;
        bpf_prog_pack::bitmap_set(&mut copy, start, len);
        assert!((start..start + len).all(|b| copy[b / 64] & (1 << (b % 64)) != 0));
        bpf_prog_pack::bitmap_clear(&mut copy, start, len);
        assert!((start..start + len).all(|b| copy[b / 64] & (1 << (b % 64)) == 0));
        let outside = |m: &[u64; 8]| {
            (0..512)
                .filter(|&b| b < start || b >= start + len)
                .map(|b| m[b / 64] >> (b % 64) & 1)
                .sum::<u64>()
        };
        assert_eq!(outside(&copy), outside(&map));
    }
    assert_eq!(
        bpf_prog_pack::find_next_bit(&[0; 512], CHUNK_COUNT, 0),
        CHUNK_COUNT
    );
}

#[test]
fn buddy_rounds_to_powers_of_two_and_maps_lazily() {
    let mut a = BuddySlots::new(SimBackend::new(), BASE, 8);
    let x = a.alloc(65 * 64).expect("room"); // 65 chunks: a 128-chunk block
    let y = a.alloc(64).expect("room");
    assert_eq!(x % (128 * 64), 0, "aligned to its block");
    assert_eq!(a.stats().packs_mapped, 1);
    assert_eq!(
        a.free(y, 65),
        Err(AllocError::WrongSize {
            addr: y,
            recorded: 64,
            given: 65
        })
    );
    a.free(y, 64).expect("live");
    assert_eq!(a.free(y, 64), Err(AllocError::DoubleFree { addr: y }));
    let large = a.alloc(3 * PACK_SIZE).expect("room"); // a 4-pack block
    assert_eq!(large % (4 * PACK), 0);
    assert_eq!(a.stats().packs_mapped, 5);
    a.free(large, 3 * PACK_SIZE).expect("live");
    a.free(x, 65 * 64).expect("live");
    assert_eq!(a.stats(), BenchStats::default());
    assert_eq!(a.backend().mapped_packs(), 0);
}

/// Live/reserved after churn with the BPF mix. The core allocator must keep 90% when the live
/// programs fill most of the pool (100 MiB of the 128 MiB window); smaller live sets are reported.
/// The one empty pack kept mapped counts as reserved, which weighs more the fewer packs are in use.
#[test]
fn density_after_churn_with_the_bpf_mix() {
    fn report<A: SlotAllocator>(a: &mut A, seed: u64, live: u64) -> u64 {
        let stats = match workload::density_after_churn(a, seed, live, 5) {
            Ok(stats) => stats,
            Err(error) => {
                eprintln!(
                    "{:>24}, {:>3} MiB live, seed {seed}: {error}",
                    a.name(),
                    live >> 20
                );
                return 0;
            }
        };
        let density = stats.density_permille();
        eprintln!(
            "{:>24}, {:>3} MiB live, seed {seed}: {:>2} packs, density {}.{}%",
            a.name(),
            live >> 20,
            stats.packs_mapped,
            density / 10,
            density % 10
        );
        density
    }
    for seed in 1..=3 {
        let mut core = PackAllocator::new(SimBackend::new(), BASE, 64).expect("pool");
        let density = report(&mut core, seed, 100 << 20);
        assert!(density >= 900, "core density below 90%: {density}");
        core.check_invariants();
        assert_eq!(core.stats().bytes_live, 0);
    }
    for live in [32 << 20, 100 << 20] {
        report(
            &mut PackAllocator::new(SimBackend::new(), BASE, 64).expect("pool"),
            4,
            live,
        );
        report(&mut linux(64), 4, live);
        report(&mut BuddySlots::new(SimBackend::new(), BASE, 64), 4, live);
    }
}

/// The measured loop runs over every allocator, at 1 and 64 packs, and leaves them consistent.
#[test]
fn pairs_run_over_every_allocator() {
    fn run<A: SlotAllocator>(mut a: A, packs: usize) -> A {
        let mut rng = Rng::new(42);
        let mut live = workload::fill(&mut a, &mut rng, packs, 50).expect("fill");
        let before = a.stats();
        assert!(
            before.packs_mapped >= packs.min(before.packs_mapped).max(1),
            "{}",
            a.name()
        );
        let pairs = Pairs::new(&mut rng, 2000, live.slots.len());
        pairs.run(&mut a, &mut live).expect("pairs");
        live.free_all(&mut a).expect("drain");
        assert_eq!(a.stats().bytes_live, 0, "{}", a.name());
        a
    }
    for packs in [1, 64] {
        let core = run(
            PackAllocator::new(NullBackend, BASE, 64).expect("pool"),
            packs,
        );
        core.check_invariants();
        run(BpfProgPack::new(NullBackend, BASE, 64), packs);
        run(BuddySlots::new(NullBackend, BASE, 64), packs);
        run(NullSlots::default(), packs);
    }
}
