//! A small hypervisor-style kernel that embeds execmem as a library, the way a user's own kernel
//! does: its own entry code (it stays at EL2), its own translation tables (48-bit VA, built by hand
//! below), its own frame allocator, heap and panic handler. execmem is a dependency without the
//! `runtime` feature: it brings no entry point, vectors, allocator or link arguments.
//!
//! It JITs functions into exec slots, calls them, patches one live (NOP -> B, as ftrace does),
//! frees them, and runs the audit: clean, then with a writable alias of a pack's frame planted in
//! its own tables (the audit must report it), then clean again once it is removed.
//!
//! Run: `cargo run --release` in this folder (QEMU virt, `virtualization=on`, Cortex-A72).

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

use core::fmt::Write;
use core::ops::Range;
use core::ptr::addr_of_mut;

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ELR_EL2, ESR_EL2, FAR_EL2, ID_AA64MMFR0_EL1, MAIR_EL2, Readable, SCTLR_EL2, TCR_EL2, TTBR0_EL2,
    Writeable,
};
use buddy_system_allocator::LockedHeap;
use execmem::arch::aarch64::cpu;
use execmem::layout::Region;
use execmem::manager::{Config, ExecManager, NotStopped, NotSynchronised, PackFrames, Platform};
use execmem::mmu::{
    El2, LinearMap, MAIR_EL1_VALUE, PageTable, Rule, TableAccess, TableMemory, TableRoot, VaRange,
};
use execmem::poke::cache::MaintenancePlan;
use execmem::poke::insn::{self, CodeBuf, W0};
use qemu_exit::QEMUExit;

// ---------------------------------------------------------------------------------------------
// Entry: stay at EL2, FP/SIMD on, a stack, .bss zeroed, vectors, then Rust.
// ---------------------------------------------------------------------------------------------

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    2f                          // this kernel is a hypervisor: EL2 or nothing
    mrs     x1, mpidr_el1
    tst     x1, #0xff
    b.ne    2f                          // one CPU
    ldr     x1, =(1 << 31) | 0x38       // HCR_EL2.RW (EL1 would be AArch64), IMO/FMO/AMO:
    msr     hcr_el2, x1                 // interrupts and SErrors are taken here, at EL2
    isb
    mrs     x1, hcr_el2
    tbnz    x1, #34, 2f                 // E2H RES1 (a VHE-only core): these tables are for E2H = 0
    ldr     x1, =0x30c50830             // SCTLR_EL2 RES1, MMU and caches off
    msr     sctlr_el2, x1
    ldr     x1, =0x32ff                 // CPTR_EL2 RES1, TFP = 0: FP/SIMD not trapped
    msr     cptr_el2, x1
    adrp    x1, hyp_vectors
    add     x1, x1, :lo12:hyp_vectors
    msr     vbar_el2, x1
    isb
    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       1b
3:  bl      hyp_main
2:  wfe
    b       2b

.balign 0x800
hyp_vectors:
    .set kind, 0
    .rept 16
    .balign 0x80
    mov     x0, #kind
    b       hyp_exception
    .set kind, kind + 1
    .endr
"#
);

/// Every exception is unexpected here: report it and fail the run.
#[unsafe(no_mangle)]
extern "C" fn hyp_exception(kind: u64) -> ! {
    let _ = writeln!(
        Uart,
        "hypervisor: unexpected exception {kind}: ESR_EL2 {:#x} ELR_EL2 {:#x} FAR_EL2 {:#x}",
        ESR_EL2.get(),
        ELR_EL2.get(),
        FAR_EL2.get()
    );
    exit(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Uart, "hypervisor: {info}");
    exit(false)
}

fn exit(success: bool) -> ! {
    let semihosting = qemu_exit::AArch64::new();
    if success {
        semihosting.exit_success()
    } else {
        semihosting.exit_failure()
    }
}

/// QEMU virt's PL011: QEMU needs no set-up to print.
struct Uart;

const UART_DR: *mut u32 = 0x0900_0000 as *mut u32;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            // SAFETY: the PL011 data register, identity-mapped as device memory (or the MMU is
            // off); a store sends one byte.
            unsafe { UART_DR.write_volatile(u32::from(byte)) };
        }
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => { let _ = writeln!(Uart, $($arg)*); };
}

// ---------------------------------------------------------------------------------------------
// The kernel's own memory: tables, heap, table frames, pack frames.
// ---------------------------------------------------------------------------------------------

/// Descriptor bits of the EL2 regime (no VHE), written by hand: this kernel knows its own format.
mod desc {
    pub const VALID: u64 = 1;
    pub const TABLE: u64 = 1 << 1; // also "page" at level 3
    pub const NORMAL: u64 = 1 << 2; // AttrIndx 1 = Normal write-back in execmem's MAIR layout
    pub const DEVICE: u64 = 0; // AttrIndx 0 = Device-nGnRE
    pub const RW: u64 = 0b01 << 6; // AP[2:1] = 01 (AP[1] is RES1 at EL2)
    pub const RO: u64 = 0b11 << 6;
    pub const INNER: u64 = 0b11 << 8;
    pub const AF: u64 = 1 << 10;
    pub const XN: u64 = 1 << 54;
    pub const DATA: u64 = VALID | NORMAL | RW | INNER | AF | XN;
    pub const CODE: u64 = VALID | NORMAL | RO | INNER | AF;
    pub const RODATA: u64 = VALID | NORMAL | RO | INNER | AF | XN;
    pub const MMIO: u64 = VALID | DEVICE | RW | AF | XN;
}

const M2: u64 = 2 << 20;
const K4: u64 = 4096;
/// The exec pool window: 64 MiB just below RAM, within one BL of this kernel's text.
const POOL: Region = Region::new("exec pool", 0x3c00_0000, 64 << 20);
/// The fixmap window for the manager's poke slot and fill block: under a level-0 entry of its own
/// (512 GiB up), which this kernel leaves invalid and the manager makes private to each CPU's
/// view of the tables.
const FIXMAP: Region = Region::new("fixmap", 0x80_0000_0000, 4 << 20);
/// Physical frames for packs: 16 MiB that the identity map leaves out (no writable alias).
const PACK_FRAMES: Range<u64> = 0x5000_0000..0x5100_0000;
/// Memory for the few tables the manager adds (4 KiB each).
const TABLE_FRAMES: Range<u64> = 0x4080_0000..0x4082_0000;
/// The heap.
const HEAP: Range<u64> = 0x4100_0000..0x4180_0000;
/// A VA this kernel leaves unmapped, where the test plants a writable alias.
const PLANT_VA: u64 = 0x7000_0000;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut L0: Table = Table([0; 512]);
static mut L1: Table = Table([0; 512]);
static mut L2_LOW: Table = Table([0; 512]); // 0 .. 1 GiB: devices, pool
static mut L2_RAM: Table = Table([0; 512]); // 1 .. 2 GiB: RAM
static mut L3_IMAGE: Table = Table([0; 512]); // the 2 MiB holding this image

#[global_allocator]
static ALLOCATOR: LockedHeap<32> = LockedHeap::empty();

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
}

fn addr(symbol: *const u8) -> u64 {
    symbol as u64
}

/// Builds the identity map (48-bit VA, walk from level 0) and turns the EL2 MMU on with
/// `SCTLR_EL2.WXN`. The pool and fixmap windows and the pack frames stay unmapped.
///
/// # Safety
/// Once, at boot, with the MMU off.
unsafe fn build_tables_and_enable_mmu() -> u64 {
    // SAFETY: boot, one CPU, MMU off: nothing else touches the tables.
    let (l0, l1, low, ram, l3) = unsafe {
        (
            &mut *addr_of_mut!(L0),
            &mut *addr_of_mut!(L1),
            &mut *addr_of_mut!(L2_LOW),
            &mut *addr_of_mut!(L2_RAM),
            &mut *addr_of_mut!(L3_IMAGE),
        )
    };
    let pa = |t: &Table| t as *const Table as u64;
    l0.0[0] = pa(l1) | desc::VALID | desc::TABLE;
    l1.0[0] = pa(low) | desc::VALID | desc::TABLE;
    l1.0[1] = pa(ram) | desc::VALID | desc::TABLE;
    // Devices: GIC (0x0800_0000) and UART (0x0900_0000), one 2 MiB block each.
    for device in [0x0800_0000u64, 0x0900_0000] {
        low.0[(device / M2) as usize] = device | desc::MMIO;
    }
    // RAM 0x4000_0000 .. the pack frames: 2 MiB blocks, RW + XN; the image's 2 MiB by pages.
    let image = addr(&raw const __image_start) & !(M2 - 1);
    let (text_end, rodata_end) = (addr(&raw const __text_end), addr(&raw const __rodata_end));
    for block in (0x4000_0000..PACK_FRAMES.start).step_by(M2 as usize) {
        let index = ((block - 0x4000_0000) / M2) as usize;
        ram.0[index] = if block == image {
            pa(l3) | desc::VALID | desc::TABLE
        } else {
            block | desc::DATA
        };
    }
    for (i, entry) in l3.0.iter_mut().enumerate() {
        let page = image + i as u64 * K4;
        let attrs = if page < addr(&raw const __image_start) {
            desc::DATA
        } else if page < text_end {
            desc::CODE
        } else if page < rodata_end {
            desc::RODATA
        } else {
            desc::DATA
        };
        *entry = page | attrs | desc::TABLE;
    }
    // Everything written so far (.bss, the tables, the stack) went to memory with the caches off;
    // a loader's stale lines for it must not be hit once they are on (the boot protocol only
    // promises the image is cleaned). Invalidate, never clean: the memory holds the truth.
    let line = cpu::cache_type().d_line as u64;
    let mut at = image;
    while at < addr(&raw const __image_end) {
        // SAFETY: a data-cache invalidate by VA of this image's own memory; with the MMU off the
        // stores above are already in memory.
        unsafe { core::arch::asm!("dc ivac, {}", in(reg) at) };
        at += line;
    }
    barrier::dsb(barrier::SY);

    MAIR_EL2.set(MAIR_EL1_VALUE); // execmem's descriptors use its attribute indices
    let pa_range = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101);
    // T0SZ 16 (48 bits), IRGN0/ORGN0 write-back, SH0 inner, TG0 4 KiB, PS, RES1 bits 31 and 23.
    TCR_EL2.set(
        16 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (pa_range << 16) | (1 << 31) | (1 << 23),
    );
    TTBR0_EL2.set(pa(l0));
    barrier::isb(barrier::SY);
    // SAFETY: drops this CPU's EL2 TLB entries and I-cache before the first translation.
    unsafe { core::arch::asm!("tlbi alle2", "ic iallu", "dsb nsh", "isb") };
    // M, C, SA, I, WXN.
    SCTLR_EL2.set(SCTLR_EL2.get() | 1 | (1 << 2) | (1 << 3) | (1 << 12) | (1 << 19));
    barrier::isb(barrier::SY);
    pa(l0)
}

/// Table frames for the manager: identity-mapped RAM, handed out 4 KiB at a time.
struct TableFrames {
    next: u64,
    free: [u64; 8],
    freed: usize,
}

impl TableAccess for TableFrames {
    fn table_va(&self, pa: u64) -> *mut PageTable {
        LinearMap::IDENTITY.table_va(pa)
    }
}

// SAFETY: each frame is a 4 KiB-aligned 4 KiB of TABLE_FRAMES, identity-mapped RW, given out once
// until it comes back.
unsafe impl TableMemory for TableFrames {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.freed > 0 {
            self.freed -= 1;
            return Some(self.free[self.freed]);
        }
        let pa = self.next;
        (pa < TABLE_FRAMES.end).then(|| {
            self.next += K4;
            pa
        })
    }

    unsafe fn free_table(&mut self, pa: u64) {
        if self.freed < self.free.len() {
            self.free[self.freed] = pa;
            self.freed += 1;
        }
    }
}

/// Pack frames: 2 MiB frames of PACK_FRAMES, one bit each.
struct Frames {
    used: u64,
}

impl PackFrames for Frames {
    fn alloc_frame(&mut self) -> Option<u64> {
        let count = ((PACK_FRAMES.end - PACK_FRAMES.start) / M2) as u32;
        let free = (!self.used).trailing_zeros();
        (free < count).then(|| {
            self.used |= 1 << free;
            PACK_FRAMES.start + u64::from(free) * M2
        })
    }

    fn free_frame(&mut self, pa: u64) {
        self.used &= !(1 << ((pa - PACK_FRAMES.start) / M2));
    }

    fn exclusive_ranges(&self) -> &[Range<u64>] {
        core::slice::from_ref(&PACK_FRAMES)
    }
}

/// This kernel, as execmem sees it.
struct Hypervisor;

impl Platform for Hypervisor {
    type Regime = El2;
    type Tables = TableFrames;
    type Frames = Frames;

    fn cpu_index() -> usize {
        0 // one CPU online
    }

    fn stop_others_and_run(change: &mut dyn FnMut()) -> Result<(), NotStopped> {
        change(); // no other CPU to stop
        Ok(())
    }

    fn synchronise_others() -> Result<(), NotSynchronised> {
        Ok(()) // no other CPU to publish to
    }
}

static EXEC: ExecManager<Hypervisor> = ExecManager::new();

// ---------------------------------------------------------------------------------------------
// The demonstration.
// ---------------------------------------------------------------------------------------------

extern "C" fn triple(x: u32) -> u32 {
    x * 3
}

fn call(addr: u64) -> u32 {
    // SAFETY: only called on slots where a complete function was just written.
    let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(addr as usize) };
    f()
}

fn check(what: &str, ok: bool) {
    say!("  {} {what}", if ok { "ok:  " } else { "FAIL:" });
    if !ok {
        exit(false);
    }
}

#[unsafe(no_mangle)]
extern "C" fn hyp_main() -> ! {
    say!(
        "hypervisor: at EL{}, execmem as a library (no runtime feature)",
        cpu::current_el()
    );
    // SAFETY: once, at boot, MMU off.
    let root = unsafe { build_tables_and_enable_mmu() };
    // SAFETY: HEAP is identity-mapped RW RAM that nothing else uses.
    unsafe {
        ALLOCATOR
            .lock()
            .init(HEAP.start as usize, (HEAP.end - HEAP.start) as usize)
    };
    say!("hypervisor: own tables at {root:#x} (TTBR0_EL2, 48-bit VA), MMU on with WXN");

    let config = Config {
        pool: POOL,
        fixmap: FIXMAP,
        cpus: 1,
        maintenance: MaintenancePlan::new(cpu::cache_type(), cpu::midr()),
    };
    let tables = TableFrames {
        next: TABLE_FRAMES.start,
        free: [0; 8],
        freed: 0,
    };
    // SAFETY: `root` is the live TTBR0_EL2 root; its tables are statics and TABLE_FRAMES, never
    // freed; this kernel maps nothing in POOL or FIXMAP.
    let init = unsafe {
        EXEC.init(
            config,
            TableRoot {
                pa: root,
                range: VaRange::LOWER_48,
            },
            tables,
            Frames { used: 0 },
        )
    };
    if let Err(e) = init {
        say!("hypervisor: execmem init: {e}");
        exit(false);
    }
    // Each CPU (here one) onto its own view of the tables, where its poke slot is.
    // SAFETY: this CPU runs on `root`, which the view copies but for the fixmap's entry.
    if let Err(e) = unsafe { EXEC.enter_cpu_view() } {
        say!("hypervisor: entering this CPU's view: {e}");
        exit(false);
    }
    say!(
        "hypervisor: this CPU walks its own view of the tables ({:#x}), the fixmap's L0 entry its own",
        EXEC.cpu_view_root(0).map_or(0, |r| r.pa)
    );
    say!("hypervisor: exec pool {POOL}, fixmap {FIXMAP}, pack frames {PACK_FRAMES:#x?}");

    // JIT: a constant, a tail call into this kernel's text (one B from the pool), a traced
    // function and its tracer.
    let answer = EXEC.alloc(8).expect("slot");
    let mut code = CodeBuf::new(answer.addr());
    code.push(insn::movz(W0, 42, 0).expect("movz"));
    code.push(insn::ret());
    EXEC.write(&answer, 0, &code.as_bytes()).expect("write");

    let tail = EXEC.alloc(8).expect("slot");
    let mut code = CodeBuf::new(tail.addr());
    code.push(insn::movz(W0, 14, 0).expect("movz"));
    code.push_b(triple as extern "C" fn(u32) -> u32 as usize as u64)
        .expect("kernel text within one branch");
    EXEC.write(&tail, 0, &code.as_bytes()).expect("write");

    let traced = EXEC.alloc(12).expect("slot");
    let mut code = CodeBuf::new(traced.addr());
    code.push(insn::nop());
    code.push(insn::movz(W0, 1, 0).expect("movz"));
    code.push(insn::ret());
    EXEC.write(&traced, 0, &code.as_bytes()).expect("write");

    let tracer = EXEC.alloc(8).expect("slot");
    let mut code = CodeBuf::new(tracer.addr());
    code.push(insn::movz(W0, 1000, 0).expect("movz"));
    code.push(insn::ret());
    EXEC.write(&tracer, 0, &code.as_bytes()).expect("write");

    for pack in EXEC.mapped_packs() {
        say!(
            "hypervisor: JIT into 4 slots of pack {:#x} (frame {:#x})",
            pack.va,
            pack.pa
        );
    }
    check("answer() = 42", call(answer.addr()) == 42);
    check("tail call: triple(14) = 42", call(tail.addr()) == 42);
    check("traced() = 1", call(traced.addr()) == 1);
    let branch = insn::b(traced.addr(), tracer.addr()).expect("in range");
    EXEC.patch_insn(traced.addr(), insn::nop(), branch)
        .expect("CMODX patch");
    check(
        "patched live (NOP -> B): traced() = 1000",
        call(traced.addr()) == 1000,
    );
    EXEC.patch_insn(traced.addr(), branch, insn::nop())
        .expect("unpatch");
    check("unpatched: traced() = 1", call(traced.addr()) == 1);
    check(
        "a write past the slot is refused",
        EXEC.write(&answer, 4, &[0; 8]).is_err()
            && EXEC.write(&answer, usize::MAX, &[0; 4]).is_err(),
    );
    check(
        "slot_at finds the slot of an address inside it",
        EXEC.slot_at(traced.addr() + 4).map(|s| s.addr) == Some(traced.addr()),
    );

    let audit = EXEC.audit();
    for v in &audit {
        say!("  found: {v}");
    }
    check(
        "audit of this kernel's tables: 0 violations",
        audit.is_empty(),
    );

    // Plant a writable alias of the pack's frame in this kernel's own tables.
    let pack = EXEC.mapped_packs()[0];
    let index = ((PLANT_VA - 0x4000_0000) / M2) as usize;
    // SAFETY: an invalid entry of this kernel's own live L2 table, at a VA nothing uses; a new
    // entry into an invalid slot needs only DSB + ISB.
    unsafe { (*addr_of_mut!(L2_RAM)).0[index] = pack.pa | desc::DATA };
    barrier::dsb(barrier::ISHST);
    barrier::isb(barrier::SY);
    let audit = EXEC.audit();
    for v in &audit {
        say!("  found: {v}");
    }
    check(
        "planted RW alias of an exec frame is reported",
        audit.len() == 1
            && audit[0].va == PLANT_VA
            && audit[0].rule == Rule::WritableAliasOfExecMemory,
    );
    // SAFETY: removing our own planted entry: write invalid, then the EL2 broadcast invalidation.
    unsafe {
        (*addr_of_mut!(L2_RAM)).0[index] = 0;
        core::arch::asm!("dsb ishst", "tlbi vae2is, {}", "dsb ish", "isb", in(reg) PLANT_VA >> 12);
    }
    check("removed: audit clean again", EXEC.audit().is_empty());

    for slot in [answer, tail, traced, tracer] {
        EXEC.free(slot).expect("free");
    }
    let stats = EXEC.stats();
    check("all freed", stats.live_slots == 0 && stats.bytes_live == 0);
    check(
        "trim releases the cached pack",
        EXEC.trim() == Ok(true) && EXEC.mapped_packs().is_empty(),
    );
    check("audit after freeing: clean", EXEC.audit().is_empty());
    say!(
        "hypervisor: {} poke alias mappings, all removed; done",
        EXEC.alias_maps()
    );
    exit(true)
}
