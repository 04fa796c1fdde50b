//! The other CPUs: started at boot, brought into the kernel's address space, and then idle,
//! serving the stop-the-world rendezvous and a per-CPU mailbox (`run_on`).
//!
//! Bring-up, in two steps:
//! 1. With the MMU still off, CPU 0 sends every other CPU of the device tree to `_start`: PSCI
//!    `CPU_ON` (virt: `hvc` or `smc`, as `/psci` says) or the spin table (the Pi: the entry
//!    address written to the CPU's release address, which lies in the null page the kernel never
//!    maps, then `SEV`). Each sets up its own exception level as CPU 0 did (boot.s) and waits in
//!    boot.s's park loop on `SECONDARY_ENTRY`, with the MMU off.
//! 2. Once CPU 0's tables are live, it publishes its MAIR, TCR, TTBR0 and SCTLR bits
//!    (`SECONDARY_MMU`), cleaned to the point of coherency because the waiting CPUs read memory
//!    with their caches off, and releases each CPU into `secondary_mmu_on`: the MMU goes on in
//!    assembly (`TLBI VMALLE1` or `ALLE2`, `IC IALLU`, `DSB NSH`, `ISB` first; never the boot
//!    CPU's `DC IVAC`, which would discard CPU 0's dirty lines), then Rust.
//!
//! Each CPU's index comes from its full MPIDR affinity (`boot::CPU_AFFINITY`, filled from the
//! device tree before the others start; boot.s keeps it in TPIDRRO_EL0): [`this_cpu`].
//!
//! Online, a CPU runs with IRQs and SErrors unmasked (masked only in critical sections) and the
//! timer's event stream on, so that every `WFE` wait also wakes every few tens of microseconds and
//! sees its deadline. It answers two SGIs (`runtime::gic`): a stop-the-world round
//! (`runtime::rendezvous`) and a publication request ([`synchronise_others`]). An idle CPU waits
//! in `WFE`; whoever posts work for it (a mailbox call) stores, then `DSB` and `SEV`.

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::asm::barrier;

use crate::arch::aarch64::cpu;
use crate::cpu::{CacheType, Midr};
use crate::machine::{EnableMethod, Machine, PsciConduit, Source};
use crate::runtime::boot::{CPU_AFFINITY, MAX_CPUS, NO_CPU, SECONDARY_ENTRY, affinity};
use crate::runtime::mmu::KernelRegime;
use crate::runtime::{gic, rendezvous};
use crate::sync::publish::Publication;

/// What a secondary needs to turn its MMU on like CPU 0's: written by CPU 0, cleaned to PoC.
#[repr(C)]
struct MmuHandoff {
    mair: u64,
    tcr: u64,
    ttbr0: u64,
    sctlr_set: u64,
}

/// Read by `secondary_mmu_on` with the MMU off; in `.data` so that it has a fixed, loaded home.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
static mut SECONDARY_MMU: MmuHandoff = MmuHandoff {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    sctlr_set: 0,
};

core::arch::global_asm!(
    r#"
.section .text, "ax"
// x0 = cpu, sp = its boot stack; MMU and caches off, at the kernel's exception level.
secondary_mmu_on:
    adrp    x1, SECONDARY_MMU
    add     x1, x1, :lo12:SECONDARY_MMU
    ldp     x2, x3, [x1]                    // MAIR, TCR
    ldp     x4, x5, [x1, #16]               // TTBR0, SCTLR bits
    mrs     x6, CurrentEL
    cmp     x6, #(2 << 2)
    b.eq    2f
    msr     mair_el1, x2
    msr     tcr_el1, x3
    msr     ttbr0_el1, x4
    isb
    tlbi    vmalle1
    ic      iallu
    dsb     nsh
    isb
    mrs     x6, sctlr_el1
    orr     x6, x6, x5
    msr     sctlr_el1, x6
    isb
    b       3f
2:  msr     mair_el2, x2
    msr     tcr_el2, x3
    msr     ttbr0_el2, x4
    isb
    tlbi    alle2
    ic      iallu
    dsb     nsh
    isb
    mrs     x6, sctlr_el2
    orr     x6, x6, x5
    msr     sctlr_el2, x6
    isb
3:  bl      secondary_entry
4:  wfe
    b       4b
"#
);

unsafe extern "C" {
    fn secondary_mmu_on();
    fn _start();
}

/// This CPU's index (0 for the boot CPU): where boot.s found its MPIDR affinity in
/// `boot::CPU_AFFINITY`, kept in TPIDRRO_EL0 (nothing else uses it; one `MRS`).
#[inline]
pub fn this_cpu() -> usize {
    use aarch64_cpu::registers::{Readable, TPIDRRO_EL0};
    TPIDRRO_EL0.get() as usize
}

/// The publication requests and each CPU's answers (`crate::sync::publish`, model-checked).
static PUBLICATION: Publication<MAX_CPUS> = Publication::new();

/// How long [`synchronise_others`] waits for every CPU to answer.
pub const SYNCHRONISE_TIMEOUT_MS: u64 = 2000;

/// Publishes code to every other CPU (Linux `kick_all_cpus_sync`): called once the code is
/// written and its cache maintenance complete (after the `DSB ISH` that ends `IC IVAU`), it asks
/// every other online CPU, by [`gic::SGI_SYNC`], to execute a context synchronisation event, and
/// returns once each has: from then on any CPU may branch to the code (Arm ARM B2.4.4). A CPU
/// that has not answered after [`SYNCHRONISE_TIMEOUT_MS`] (interrupts masked that long, or hung)
/// is named in the error. Callable with interrupts masked: while it waits this CPU answers
/// requests and rounds of others itself, so two CPUs publishing at once never wait on each other.
pub fn synchronise_others() -> Result<(), usize> {
    let others = online_mask() & !(1 << this_cpu());
    if others == 0 {
        return Ok(());
    }
    let request = PUBLICATION.request();
    gic::send_to_others(gic::SGI_SYNC);
    // Idle CPUs without a GIC to interrupt them see the request when they wake.
    wake_all();
    let deadline = deadline_after_ms(SYNCHRONISE_TIMEOUT_MS);
    PUBLICATION.wait(request, others, || {
        serve_requests();
        aarch64_cpu::asm::wfe();
        !past(deadline)
    })
}

/// The publication requests this CPU has answered (for tests: every online CPU has answered the
/// request of a write once the write returns).
pub fn requests_answered(cpu: usize) -> u64 {
    PUBLICATION.answered(cpu)
}

/// Whether this CPU has a publication request to answer.
pub(crate) fn publication_pending() -> bool {
    PUBLICATION.pending(this_cpu())
}

/// This CPU's answer to [`gic::SGI_SYNC`]: `ISB`, then the answer, then an event for the waiting
/// writer.
pub(crate) fn answer_synchronise() {
    PUBLICATION.answer(this_cpu(), || barrier::isb(barrier::SY));
    wake_all();
}

/// What a CPU that waits with interrupts masked (for a lock, for answers, for a round) still
/// does for the others: answers a publication request and joins a stop-the-world round in
/// progress, so that no CPU waits for one that is waiting for it.
pub fn serve_requests() {
    if publication_pending() {
        answer_synchronise();
    }
    rendezvous::join_if_started();
}

/// One turn of waiting for a lock with interrupts masked: serve the others, then [`pause`]. Out
/// of line and cold, so that a lock's uncontended path carries none of it.
#[cold]
#[inline(never)]
pub fn relax() {
    serve_requests();
    pause();
}

/// One turn of a spin wait: `YIELD`, a hint that costs a cycle on a core and lets an emulator
/// run another virtual CPU (QEMU's round-robin mode switches on it), so that a waiter does not
/// burn the time of the CPU it waits for.
#[inline]
pub fn pause() {
    // SAFETY: a hint instruction; no memory or register effects.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// `DSB ISH; SEV`: the stores before are visible, then every CPU waiting in `WFE` wakes.
pub(crate) fn wake_all() {
    barrier::dsb(barrier::ISH);
    aarch64_cpu::asm::sev();
}

/// Bit per CPU that reached Rust and serves rounds and calls (the rendezvous waits for each).
static ONLINE: AtomicU64 = AtomicU64::new(1);
/// Each CPU's MIDR_EL1 and CTR_EL0, written as it comes online (CPU 0's at bring-up).
static IDENTITY: [[AtomicU64; 2]; MAX_CPUS] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_CPUS];

/// A call posted to one CPU.
struct Mailbox {
    state: AtomicU8,
    function: AtomicUsize,
    argument: AtomicU64,
    result: AtomicU64,
}

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const POSTING: u8 = 3;

static MAILBOXES: [Mailbox; MAX_CPUS] = [const {
    Mailbox {
        state: AtomicU8::new(IDLE),
        function: AtomicUsize::new(0),
        argument: AtomicU64::new(0),
        result: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Why a call to another CPU did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    /// That CPU is not online (no such CPU, or it never came up).
    NotOnline(usize),
    /// It did not answer in time.
    Timeout(usize),
    /// It is still running a call posted earlier.
    Busy(usize),
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotOnline(cpu) => write!(f, "CPU {cpu} is not online"),
            Self::Timeout(cpu) => write!(f, "CPU {cpu} did not answer in time"),
            Self::Busy(cpu) => write!(f, "CPU {cpu} is still running an earlier call"),
        }
    }
}

/// Step 1, with the MMU off: gives every CPU of the tree an index (`boot::CPU_AFFINITY`), then
/// sends every one but this to `_start`, where boot.s parks it. Returns the CPUs sent (a bit per
/// index).
pub fn start_secondaries(machine: &Machine) -> u64 {
    let entry = _start as *const () as u64;
    let mut sent = 0;
    for c in &machine.cpus {
        let Some(index) = assign_index(affinity(c.mpidr)) else {
            continue;
        };
        if index == 0 {
            continue;
        }
        let started = match (c.enable, machine.psci) {
            (EnableMethod::Psci, Some(PsciConduit::Hvc)) => {
                smccc::psci::cpu_on::<smccc::Hvc>(c.mpidr, entry, index as u64).is_ok()
            }
            (EnableMethod::Psci, Some(PsciConduit::Smc)) => {
                smccc::psci::cpu_on::<smccc::Smc>(c.mpidr, entry, index as u64).is_ok()
            }
            // A release word inside the device tree itself (QEMU raspi4b loads an ELF's tree at
            // address 0, over the spin table, and starts every CPU at the entry point): that CPU
            // was started with this one; writing would corrupt the tree.
            (EnableMethod::SpinTable(release), _) if inside_tree(machine, release) => true,
            (EnableMethod::SpinTable(release), _) if release != 0 => {
                let word = core::ptr::with_exposed_provenance_mut::<u64>(release as usize);
                // SAFETY: the tree's release address for that CPU (a reserved word the
                // firmware's spin loop reads); the MMU is off, so the store goes to memory. The
                // clean covers a loader that left the line cached.
                unsafe {
                    word.write_volatile(entry);
                    core::arch::asm!("dc civac, {}", in(reg) release, options(nostack));
                }
                true
            }
            _ => false,
        };
        if started {
            sent |= 1 << index;
        }
    }
    barrier::dsb(barrier::SY);
    aarch64_cpu::asm::sev();
    sent
}

/// The index of the CPU with MPIDR affinity `aff`: where `boot::CPU_AFFINITY` has it already (the
/// boot CPU at 0, CPUs the loader started with it), else the first free place, written there
/// and cleaned to the point of coherency for boot.s, which reads it with the MMU off. `None` when
/// every place is taken (the CPU is not started).
fn assign_index(aff: u64) -> Option<usize> {
    if let Some(index) = CPU_AFFINITY
        .iter()
        .position(|a| a.load(Ordering::Relaxed) == aff)
    {
        return Some(index);
    }
    let index = (1..MAX_CPUS).find(|&i| CPU_AFFINITY[i].load(Ordering::Relaxed) == NO_CPU)?;
    // Plain stores and loads only: the MMU is off (no exclusives on Device memory).
    CPU_AFFINITY[index].store(aff, Ordering::Relaxed);
    let at = &CPU_AFFINITY[index] as *const AtomicU64 as u64;
    // SAFETY: a clean and invalidate by VA of kernel data (the MMU is off: VA = PA).
    unsafe { core::arch::asm!("dc civac, {}", in(reg) at, options(nostack)) };
    Some(index)
}

fn inside_tree(machine: &Machine, address: u64) -> bool {
    match machine.source {
        Source::DeviceTree {
            address: tree,
            size,
        } => (tree..tree + size).contains(&address),
        _ => false,
    }
}

/// Step 2, MMU on: publishes this CPU's translation state and releases the parked CPUs in
/// `expected` into `secondary_mmu_on`; waits up to five seconds for them. Returns the CPUs online.
pub fn bring_online(expected: u64) -> u64 {
    record_identity(this_cpu());
    let (mair, tcr, ttbr0): (u64, u64, u64);
    // SAFETY: reading this CPU's translation registers at the level it runs at.
    unsafe {
        if KernelRegime::current().el() == 2 {
            core::arch::asm!("mrs {}, mair_el2", "mrs {}, tcr_el2", "mrs {}, ttbr0_el2",
                out(reg) mair, out(reg) tcr, out(reg) ttbr0, options(nomem, nostack));
        } else {
            core::arch::asm!("mrs {}, mair_el1", "mrs {}, tcr_el1", "mrs {}, ttbr0_el1",
                out(reg) mair, out(reg) tcr, out(reg) ttbr0, options(nomem, nostack));
        }
    }
    let handoff = &raw mut SECONDARY_MMU;
    // SAFETY: written once, before any secondary is released; they only read it.
    unsafe {
        handoff.write_volatile(MmuHandoff {
            mair,
            tcr,
            ttbr0,
            sctlr_set: crate::mmu::control::SCTLR_MMU_ON,
        })
    };
    clean_to_poc(handoff as u64, core::mem::size_of::<MmuHandoff>() as u64);
    let trampoline = secondary_mmu_on as *const () as u64;
    for (index, slot) in SECONDARY_ENTRY.iter().enumerate() {
        if expected & (1 << index) != 0 {
            slot.store(trampoline, Ordering::Release);
            clean_to_poc(slot as *const AtomicU64 as u64, 8);
        }
    }
    barrier::dsb(barrier::SY);
    aarch64_cpu::asm::sev();
    let all = expected | 1;
    let deadline = deadline_after_ms(5000);
    while ONLINE.load(Ordering::Acquire) & all != all && !past(deadline) {
        core::hint::spin_loop();
    }
    ONLINE.load(Ordering::Acquire)
}

/// CPUs online, a bit each.
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// The (MIDR, CTR) of every CPU online: what the maintenance plan is merged over.
pub fn identities() -> impl Iterator<Item = (Midr, CacheType)> {
    let online = online_mask();
    (0..MAX_CPUS)
        .filter(move |&c| online & (1 << c) != 0)
        .map(|c| {
            (
                Midr(IDENTITY[c][0].load(Ordering::Acquire)),
                CacheType::from_ctr(IDENTITY[c][1].load(Ordering::Acquire)),
            )
        })
}

fn record_identity(index: usize) {
    IDENTITY[index][0].store(cpu::midr().0, Ordering::Relaxed);
    IDENTITY[index][1].store(cpu::ctr_el0(), Ordering::Release);
}

/// `DC CVAC` over `[start, start + len)`, for memory a CPU with its caches off is about to read.
fn clean_to_poc(start: u64, len: u64) {
    let line = cpu::cache_type().d_line as u64;
    let mut at = start / line * line;
    while at < start + len {
        // SAFETY: a clean by VA of kernel data, mapped and readable.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
}

/// Each CPU's PC where its interrupt in progress was taken (0: none in progress), for
/// [`wait_outside`].
static INTERRUPTED_PC: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Records where this CPU was interrupted, for the length of `handle`.
pub(crate) fn while_interrupted_at(pc: u64, handle: impl FnOnce()) {
    let slot = &INTERRUPTED_PC[this_cpu().min(MAX_CPUS - 1)];
    let previous = slot.swap(pc, Ordering::Relaxed);
    handle();
    slot.store(previous, Ordering::Relaxed);
}

/// How long [`wait_outside`] keeps trying.
pub const WAIT_OUTSIDE_TIMEOUT_MS: u64 = 2000;

/// Returns once every other online CPU has been stopped (a rendezvous round) at a point outside
/// every range in `ranges`: interrupted at a PC outside them, or joined from a wait loop (kernel
/// code that is in no such range). Rounds are repeated until one finds every CPU outside, for
/// [`WAIT_OUTSIDE_TIMEOUT_MS`] at most; then the error names a CPU still inside (or one that
/// could not be stopped).
pub fn wait_outside(ranges: &[core::ops::Range<u64>]) -> Result<(), usize> {
    let others = online_mask() & !(1 << this_cpu());
    if others == 0 {
        return Ok(());
    }
    let deadline = deadline_after_ms(WAIT_OUTSIDE_TIMEOUT_MS);
    loop {
        let mut inside = None;
        rendezvous::stop_others_and_run(|| {
            for cpu in (0..MAX_CPUS).filter(|c| others & (1 << c) != 0) {
                let pc = INTERRUPTED_PC[cpu].load(Ordering::Relaxed);
                if ranges.iter().any(|r| r.contains(&pc)) {
                    inside = Some(cpu);
                }
            }
        })?;
        match inside {
            None => return Ok(()),
            Some(cpu) if past(deadline) => return Err(cpu),
            Some(_) => pause(),
        }
    }
}

pub(crate) fn deadline_after_ms(ms: u64) -> u64 {
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    CNTPCT_EL0.get() + cpu::timer_frequency().max(1) * ms / 1000
}

pub(crate) fn past(deadline: u64) -> bool {
    use aarch64_cpu::registers::{CNTPCT_EL0, Readable};
    CNTPCT_EL0.get() >= deadline
}

/// Rust on a secondary, MMU and caches on: say so, then serve rounds and calls forever.
#[unsafe(no_mangle)]
extern "C" fn secondary_entry(index: u64) -> ! {
    let index = index as usize;
    record_identity(index);
    cpu::enable_event_stream();
    gic::init_cpu();
    ONLINE.fetch_or(1 << index, Ordering::AcqRel);
    cpu::unmask_serror_and_irq();
    wake_all();
    loop {
        // Rounds and requests come by SGI; without a GIC they are seen here.
        serve_requests();
        let mailbox = &MAILBOXES[index];
        if mailbox.state.load(Ordering::Acquire) == POSTED {
            let function = mailbox.function.load(Ordering::Relaxed);
            let argument = mailbox.argument.load(Ordering::Relaxed);
            // Whatever code the caller wrote before posting is executed after this ISB (Arm ARM
            // B2.4.4: a context synchronisation event on the executing CPU).
            barrier::isb(barrier::SY);
            // SAFETY: `run_on` stores a `fn(u64) -> u64` here.
            let f: fn(u64) -> u64 = unsafe { core::mem::transmute(function) };
            mailbox.result.store(f(argument), Ordering::Relaxed);
            mailbox.state.store(DONE, Ordering::Release);
            wake_all();
            continue;
        }
        aarch64_cpu::asm::wfe();
    }
}

/// Runs `f(argument)` on CPU `index` and returns its result (the calling CPU waits up to ten
/// seconds: under an emulator on a loaded host a CPU can be descheduled for a while). On the calling CPU's own index it just calls `f`.
pub fn run_on(index: usize, f: fn(u64) -> u64, argument: u64) -> Result<u64, SmpError> {
    if index == this_cpu() {
        return Ok(f(argument));
    }
    start_on(index, f, argument)?;
    finish(index, 10_000)
}

/// Posts `f(argument)` to CPU `index`, which must be online and idle, and returns at once;
/// [`finish`] collects the result. For work that runs on several CPUs at the same time.
pub fn start_on(index: usize, f: fn(u64) -> u64, argument: u64) -> Result<(), SmpError> {
    if index == this_cpu() || index >= MAX_CPUS || online_mask() & (1 << index) == 0 {
        return Err(SmpError::NotOnline(index));
    }
    let mailbox = &MAILBOXES[index];
    // IDLE -> POSTING claims the mailbox: one caller at a time.
    if mailbox
        .state
        .compare_exchange(IDLE, POSTING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(SmpError::Busy(index));
    }
    mailbox
        .function
        .store(f as *const () as usize, Ordering::Relaxed);
    mailbox.argument.store(argument, Ordering::Relaxed);
    mailbox.state.store(POSTED, Ordering::Release);
    wake_all();
    Ok(())
}

/// Waits up to `timeout_ms` for the call posted to CPU `index` and returns its result.
pub fn finish(index: usize, timeout_ms: u64) -> Result<u64, SmpError> {
    if index >= MAX_CPUS {
        return Err(SmpError::NotOnline(index));
    }
    let mailbox = &MAILBOXES[index];
    let deadline = deadline_after_ms(timeout_ms);
    loop {
        match mailbox.state.load(Ordering::Acquire) {
            DONE => break,
            IDLE => return Err(SmpError::NotOnline(index)),
            _ if past(deadline) => return Err(SmpError::Timeout(index)),
            // Woken by the callee's SEV, or by the timer's event stream at the latest, so the
            // deadline is seen even if the callee never finishes.
            _ => aarch64_cpu::asm::wfe(),
        }
    }
    let result = mailbox.result.load(Ordering::Relaxed);
    mailbox.state.store(IDLE, Ordering::Release);
    Ok(result)
}
