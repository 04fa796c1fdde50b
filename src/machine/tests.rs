//! The device-tree reading and the placement on the trees QEMU hands the kernel, and on broken ones.

use super::dtb::{self, DtbError};
use super::plan::{self, MemoryPlan, Needs, PlanError};
use super::{Cpu, EnableMethod, Gic, Machine, PsciConduit, Source};
use crate::layout::{self, Region};

const MIB: u64 = 1 << 20;
const NEEDS: Needs = Needs::STANDARD;

/// A kernel image as linked for virt (text first, then data and stacks).
const VIRT_IMAGE: Region = Region::new("kernel", 0x4020_0000, 0x1c_0000);
const VIRT_TEXT: Region = Region::new("kernel .text", 0x4020_0000, 0xa_0000);
/// The same for the Pi (loaded at 0x8_0000).
const RPI4_IMAGE: Region = Region::new("kernel", 0x8_0000, 0x1c_0000);
const RPI4_TEXT: Region = Region::new("kernel .text", 0x8_0000, 0xa_0000);

const VIRT_512M: &[u8] = include_bytes!("testdata/qemu-virt-512M.dtb");
const VIRT_EL2_4G: &[u8] = include_bytes!("testdata/qemu-virt-el2-4G-smp4.dtb");
const VIRT_GICV3_128M: &[u8] = include_bytes!("testdata/qemu-virt-gicv3-128M-smp2.dtb");
const RASPI4B: &[u8] = include_bytes!("testdata/qemu-raspi4b.dtb");

/// Reads a tree with room for the copy that over-long property names need.
fn read(blob: &[u8], address: u64) -> Result<Machine, DtbError> {
    let mut scratch = alloc::vec![0; 64 << 10];
    dtb::read(blob, address, &mut scratch)
}

fn devices(machine: &Machine) -> alloc::vec::Vec<Region> {
    let mut devices: alloc::vec::Vec<Region> = machine.uart.into_iter().collect();
    if let Some(gic) = machine.gic {
        devices.extend(gic.regions());
    }
    devices
}

fn place(machine: &Machine, image: Region, text: Region) -> Result<MemoryPlan, PlanError> {
    plan::place(machine, image, text, &devices(machine), &NEEDS)
}

/// What every plan must hold, whatever the machine.
fn assert_sound(machine: &Machine, image: Region, text: Region, plan: &MemoryPlan) {
    let in_ram = |r: &Region| {
        machine
            .ram
            .iter()
            .any(|b| b.start <= r.start && r.end() <= b.end())
    };
    assert!(in_ram(&plan.heap), "heap {} in RAM", plan.heap);
    assert!(
        in_ram(&plan.module_data) && plan.module_data.size == NEEDS.module_data,
        "module data {} in RAM",
        plan.module_data
    );
    assert!(plan.module_data.start.is_multiple_of(2 * MIB));
    assert!(
        in_ram(&plan.exec_frames),
        "frames {} in RAM",
        plan.exec_frames
    );
    for piece in &plan.free_ram {
        assert!(in_ram(piece), "{piece} in RAM");
    }
    assert!(layout::branch_reaches(&plan.exec_pool, &text));
    assert!(layout::branch_reaches(&text, &plan.exec_pool));
    assert!(
        plan.heap.start.is_multiple_of(2 * MIB) && plan.exec_pool.start.is_multiple_of(2 * MIB)
    );
    assert!(
        plan.exec_frames.start.is_multiple_of(2 * MIB) && plan.fixmap.start.is_multiple_of(2 * MIB)
    );
    assert!(
        plan.exec_frames.size >= NEEDS.min_frames && plan.exec_frames.size <= plan.exec_pool.size
    );
    assert!(
        plan.exec_pool.start >= 2 * MIB,
        "the null page stays unmapped"
    );
    // Nothing the kernel uses overlaps anything else, and nothing overlaps what is reserved.
    let mut used = alloc::vec![image, plan.heap, plan.module_data, plan.exec_frames];
    used.extend(plan.free_ram.iter().copied());
    for (i, a) in used.iter().enumerate() {
        for b in &used[i + 1..] {
            assert!(!a.overlaps(b), "{a} overlaps {b}");
        }
        for r in &machine.reserved {
            assert!(!a.overlaps(r), "{a} overlaps reserved {r}");
        }
    }
    for d in devices(machine) {
        for placed in [image, plan.heap, plan.module_data, plan.exec_frames]
            .iter()
            .chain(&plan.free_ram)
        {
            assert!(!placed.overlaps(&d), "{placed} over device {d}");
        }
    }
    let windows = [plan.exec_pool, plan.fixmap];
    for w in windows {
        for other in [image, plan.heap, plan.module_data]
            .iter()
            .chain(&plan.free_ram)
            .chain(&machine.reserved)
        {
            assert!(!w.overlaps(other), "{w} overlaps {other}");
        }
        for d in devices(machine) {
            assert!(!w.overlaps(&d), "{w} shadows device {d}");
        }
    }
    // The frames have no identity mapping but the pool's own blocks, where the two coincide.
    if plan.exec_frames != plan.exec_pool {
        assert!(!plan.free_ram.iter().any(|r| r.overlaps(&plan.exec_frames)));
    }
}

#[test]
fn qemu_virt_tree_gives_ram_cpus_and_devices() {
    let m = read(VIRT_512M, 0x4000_0000).expect("QEMU's tree reads");
    assert_eq!(
        m.ram.as_slice(),
        [Region::new("RAM", 0x4000_0000, 512 * MIB)]
    );
    assert_eq!(
        m.source,
        Source::DeviceTree {
            address: 0x4000_0000,
            size: VIRT_512M.len() as u64
        }
    );
    assert_eq!(
        m.reserved.as_slice(),
        [Region::new(
            "device tree",
            0x4000_0000,
            VIRT_512M.len() as u64
        )]
    );
    // QEMU names an enable-method only with more than one CPU.
    assert_eq!(
        m.cpus.as_slice(),
        [Cpu {
            mpidr: 0,
            enable: EnableMethod::Unknown
        }]
    );
    assert_eq!(m.uart, Some(Region::new("PL011 UART", 0x0900_0000, 0x1000)));
    assert_eq!(
        m.gic,
        Some(Gic::V2 {
            distributor: Region::new("GICv2 GICD", 0x0800_0000, 0x1_0000),
            cpu_interface: Region::new("GICv2 GICC", 0x0801_0000, 0x1_0000),
        })
    );
    assert_eq!(m.psci, Some(PsciConduit::Hvc));
    assert_eq!(m.timer_hz, None);
}

#[test]
fn qemu_virt_plan_matches_the_layout_the_board_had() {
    let m = read(VIRT_512M, 0x4000_0000).unwrap();
    let p = place(&m, VIRT_IMAGE, VIRT_TEXT).expect("fits");
    assert_sound(&m, VIRT_IMAGE, VIRT_TEXT, &p);
    // Below RAM: no memory is given up for the windows.
    assert_eq!(
        p.exec_pool,
        Region::new("exec pool (VA)", 0x3c00_0000, 64 * MIB)
    );
    // The fixmap in a GiB of its own (each CPU's view has its own level-1 entry there): the top one.
    assert_eq!(
        p.fixmap,
        Region::new("fixmap (VA)", 0x7f_c000_0000, 4 * MIB)
    );
    assert_eq!(
        p.exec_frames,
        Region::new("exec frames (PA)", 0x5c00_0000, 64 * MIB)
    );
    assert_eq!(p.heap.start, 0x4040_0000);
    assert_eq!(
        p.module_data,
        Region::new("module data", 0x4240_0000, 4 * MIB)
    );
    // Everything else is ordinary RAM: all but the tree (two pages), the image, heap, module data
    // and frames.
    let mapped: u64 = p.free_ram.iter().map(|r| r.size).sum();
    assert_eq!(
        mapped,
        512 * MIB - 0x2000 - VIRT_IMAGE.size - 32 * MIB - 4 * MIB - 64 * MIB
    );
}

#[test]
fn qemu_virt_el2_4g_has_four_cpus_smc_and_frames_at_the_top() {
    let m = read(VIRT_EL2_4G, 0x4000_0000).unwrap();
    assert_eq!(m.ram_size(), 4 << 30);
    assert_eq!(m.psci, Some(PsciConduit::Smc));
    let mpidrs: alloc::vec::Vec<u64> = m.cpus.iter().map(|c| c.mpidr).collect();
    assert_eq!(mpidrs, [0, 1, 2, 3]);
    let p = place(&m, VIRT_IMAGE, VIRT_TEXT).unwrap();
    assert_sound(&m, VIRT_IMAGE, VIRT_TEXT, &p);
    assert_eq!(p.exec_frames.end(), 0x1_4000_0000);
}

#[test]
fn qemu_virt_gicv3_128m() {
    let m = read(VIRT_GICV3_128M, 0x4000_0000).unwrap();
    assert_eq!(m.ram_size(), 128 * MIB);
    assert_eq!(m.cpus.len(), 2);
    assert_eq!(
        m.gic,
        Some(Gic::V3 {
            distributor: Region::new("GICv3 GICD", 0x0800_0000, 0x1_0000),
            redistributors: Region::new("GICv3 GICR", 0x080a_0000, 0xf6_0000),
        })
    );
    let p = place(&m, VIRT_IMAGE, VIRT_TEXT).unwrap();
    assert_sound(&m, VIRT_IMAGE, VIRT_TEXT, &p);
}

#[test]
fn raspi4b_tree_translates_soc_addresses_and_reads_the_spin_table() {
    let m = read(RASPI4B, 0x0800_0000).expect("reads");
    assert_eq!(m.ram.as_slice(), [Region::new("RAM", 0, 960 * MIB)]);
    assert_eq!(m.reserved[0], Region::new("memreserve", 0, 0x1000));
    let releases: alloc::vec::Vec<EnableMethod> = m.cpus.iter().map(|c| c.enable).collect();
    assert_eq!(
        releases,
        [0xd8, 0xe0, 0xe8, 0xf0].map(EnableMethod::SpinTable)
    );
    // Through /soc's ranges: VideoCore bus 0x7e20_1000 is ARM 0xfe20_1000.
    assert_eq!(m.uart, Some(Region::new("PL011 UART", 0xfe20_1000, 0x200)));
    assert_eq!(
        m.gic,
        Some(Gic::V2 {
            distributor: Region::new("GICv2 GICD", 0xff84_1000, 0x1000),
            cpu_interface: Region::new("GICv2 GICC", 0xff84_2000, 0x2000),
        })
    );
    assert_eq!(m.timer_hz, Some(54_000_000));
    assert_eq!(m.psci, None);
}

#[test]
fn long_property_names_are_read_past_not_refused() {
    // The Pi's timer node has `arm,cpu-registers-not-fw-configured` (35 characters), as the
    // firmware's bcm2711 trees do: dtoolkit alone refuses the tree.
    let direct = dtoolkit::fdt::Fdt::new(RASPI4B)
        .map(|_| ())
        .map_err(|e| e.kind);
    assert_eq!(
        direct,
        Err(dtoolkit::error::FdtErrorKind::InvalidPropertyName)
    );
    let m = read(RASPI4B, 0x0800_0000).expect("read from the filtered copy");
    assert_eq!(
        m.timer_hz,
        Some(54_000_000),
        "the timer node's other properties are still read"
    );
    // Without room for the copy: dtoolkit's own error, not a guess.
    let mut small = [0u8; 512];
    assert!(matches!(
        dtb::read(RASPI4B, 0x0800_0000, &mut small),
        Err(DtbError::Malformed(_))
    ));
    // A copy the caller owns is filtered in place.
    let mut copy = RASPI4B.to_vec();
    assert_eq!(dtb::read_copy(&mut copy, 0), read(RASPI4B, 0));
    // A tree without long names needs no copy at all.
    assert!(dtb::read(VIRT_512M, 0x4000_0000, &mut []).is_ok());
}

#[test]
fn raspi4b_plan_puts_the_pool_over_free_ram_near_the_kernel() {
    let m = read(RASPI4B, 0x0800_0000).unwrap();
    let p = place(&m, RPI4_IMAGE, RPI4_TEXT).unwrap();
    assert_sound(&m, RPI4_IMAGE, RPI4_TEXT, &p);
    // RAM starts at 0: every VA within one BL is RAM, so the pool takes RAM and its frames are it.
    assert_eq!(p.exec_frames.start, p.exec_pool.start);
    assert!(
        !p.exec_pool
            .overlaps(&Region::new("dtb", 0x0800_0000, RASPI4B.len() as u64))
    );
}

#[test]
fn reserved_memory_and_memreserve_are_left_alone() {
    let blob = include_bytes!("testdata/reserved-beside-kernel.dtb");
    let m = read(blob, 0x4800_0000).unwrap();
    assert!(
        m.reserved
            .contains(&Region::new("memreserve", 0x4f00_0000, MIB))
    );
    assert!(
        m.reserved
            .contains(&Region::new("reserved-memory", 0x4060_0000, 2 * MIB))
    );
    let p = place(&m, VIRT_IMAGE, VIRT_TEXT).unwrap();
    assert_sound(&m, VIRT_IMAGE, VIRT_TEXT, &p);
}

#[test]
fn reserved_memory_over_the_kernel_is_refused() {
    let blob = include_bytes!("testdata/reserved-over-kernel.dtb");
    let m = read(blob, 0x4800_0000).unwrap();
    // The CMA pool has no reg: nothing fixed to reserve.
    assert_eq!(
        m.reserved.len(),
        3,
        "memreserve, firmware@40300000, the tree: {:?}",
        m.reserved
    );
    assert_eq!(
        place(&m, VIRT_IMAGE, VIRT_TEXT),
        Err(PlanError::ImageOverlapsReserved {
            image: VIRT_IMAGE,
            reserved: Region::new("reserved-memory", 0x4030_0000, MIB),
        })
    );
}

#[test]
fn a_tree_without_memory_is_refused() {
    let blob = include_bytes!("testdata/no-memory.dtb");
    assert_eq!(read(blob, 0x4000_0000), Err(DtbError::NoMemory));
}

#[test]
fn too_little_ram_for_the_manager_is_refused() {
    let blob = include_bytes!("testdata/tiny-ram.dtb");
    let m = read(blob, 0x4000_0000).unwrap();
    assert_eq!(
        place(&m, VIRT_IMAGE, VIRT_TEXT),
        Err(PlanError::NoRoomForHeap { need: 32 * MIB })
    );
}

#[test]
fn an_image_outside_ram_is_refused() {
    let m = read(VIRT_512M, 0x4000_0000).unwrap();
    let image = Region::new("kernel", 0x8000_0000, 0x10_0000);
    let text = Region::new("text", 0x8000_0000, 0x8_0000);
    assert_eq!(
        place(&m, image, text),
        Err(PlanError::ImageOutsideRam(image))
    );
}

#[test]
fn bad_magic_and_truncation_are_typed_errors() {
    let mut blob = VIRT_512M.to_vec();
    blob[0] = 0;
    assert_eq!(read(&blob, 0), Err(DtbError::BadMagic(0x000d_feed)));
    let cut = &VIRT_512M[..VIRT_512M.len() - 100];
    assert_eq!(
        read(cut, 0),
        Err(DtbError::Truncated {
            size: VIRT_512M.len() as u64,
            available: cut.len() as u64
        })
    );
    assert!(matches!(
        read(&VIRT_512M[..5], 0),
        Err(DtbError::Truncated { .. })
    ));
    // A corrupt structure block: the first token is no longer FDT_BEGIN_NODE.
    let mut blob = VIRT_512M.to_vec();
    let off_struct = u32::from_be_bytes(blob[8..12].try_into().unwrap()) as usize;
    blob[off_struct + 3] = 0x7;
    assert!(
        matches!(read(&blob, 0), Err(DtbError::Malformed(_))),
        "{:?}",
        read(&blob, 0)
    );
}

/// Every prefix of a real tree, its header saying so, and many single-byte corruptions: an error or
/// a machine, never a panic.
#[test]
fn cut_or_corrupted_trees_never_panic() {
    for len in 0..RASPI4B.len() {
        let mut blob = RASPI4B[..len].to_vec();
        if len >= 8 {
            blob[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        }
        let _ = read(&blob, 0);
    }
    for len in 0..RASPI4B.len() {
        let _ = read(&RASPI4B[..len], 0);
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let source = if seed & 1 == 0 { VIRT_512M } else { RASPI4B };
        let mut blob = source.to_vec();
        let at = (seed as usize >> 8) % blob.len();
        blob[at] = seed as u8;
        if let Ok(m) = read(&blob, 0x4000_0000) {
            let _ = place(&m, VIRT_IMAGE, VIRT_TEXT);
        }
    }
}

#[test]
fn ranges_that_wrap_or_leave_the_address_space_are_refused() {
    let wrapping = include_bytes!("testdata/wrapping-ram.dtb");
    assert_eq!(
        read(wrapping, 0x0800_0000),
        Err(DtbError::OutOfRange {
            node: "RAM",
            start: 0xffff_ffff_ffe0_0001,
            size: 0x1f_fffe
        })
    );
    let huge = include_bytes!("testdata/huge-reservation.dtb");
    assert!(matches!(
        read(huge, 0x4000_0000),
        Err(DtbError::OutOfRange {
            node: "reserved-memory",
            ..
        })
    ));
    // The placement checks what it is given too, whoever built the machine.
    let mut m = read(RASPI4B, 0x0800_0000).unwrap();
    let bad = Region::new("RAM", 0xffff_ffff_ffe0_0001, 0x1f_fffe);
    m.ram.insert(0, bad);
    assert_eq!(
        place(&m, RPI4_IMAGE, RPI4_TEXT),
        Err(PlanError::OutOfRange(bad))
    );
}

#[test]
fn spin_table_release_words_are_reserved_and_a_zero_timer_is_ignored() {
    let blob = include_bytes!("testdata/spin-table-zero-timer.dtb");
    let m = read(blob, 0x4800_0000).unwrap();
    assert_eq!(m.timer_hz, None, "clock-frequency = <0> says nothing");
    // Both release words share one page: reserved once.
    let pages: alloc::vec::Vec<&Region> = m
        .reserved
        .iter()
        .filter(|r| r.name == "spin table")
        .collect();
    assert_eq!(pages, [&Region::new("spin table", 0x4f00_0000, 0x1000)]);
    let p = place(&m, VIRT_IMAGE, VIRT_TEXT).unwrap();
    assert_sound(&m, VIRT_IMAGE, VIRT_TEXT, &p);
}

#[test]
fn nothing_is_placed_over_a_device_inside_a_ram_bank() {
    let m = read(VIRT_512M, 0x4000_0000).unwrap();
    // MMIO that a (badly described) RAM bank covers, right where the heap would go.
    let mmio = Region::new("odd device", 0x4040_0000, 0x1000);
    let mut all = devices(&m);
    all.push(mmio);
    let p = plan::place(&m, VIRT_IMAGE, VIRT_TEXT, &all, &NEEDS).unwrap();
    assert!(!p.heap.overlaps(&mmio), "heap {}", p.heap);
    assert!(!p.free_ram.iter().any(|r| r.overlaps(&mmio)));
}
