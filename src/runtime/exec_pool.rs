//! The demo kernel's instance of the manager: [`crate::manager::ExecManager`] over this kernel's
//! own pieces — the kernel tables (identity-mapped heap) in the regime it runs in, the exec frames
//! the memory plan set apart, CPU numbers from MPIDR_EL1, and the rendezvous for stop-the-world
//! patches. This is one implementation of the [`Platform`] traits, as any kernel that embeds
//! execmem writes its own; nothing in the manager calls into the runtime.
//!
//! The same image runs at EL1 or at EL2 (whichever boot.s stayed at), so there is one manager per
//! regime, and the functions here use the one of the running regime ([`KernelRegime`]).

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ops::Range;

use buddy_system_allocator::FrameAllocator;

use crate::arch::aarch64::cpu;
use crate::manager::{Config, ExecManager, NotStopped, NotSynchronised, PackFrames, Platform};
use crate::mmu::control::RegimeControl;
use crate::mmu::{El1And0, El2, El2And0, HeapTables, PackFrame, Violation};
use crate::poke::cache::MaintenancePlan;
use crate::runtime::mmu::KernelRegime;
use crate::runtime::{board, memory, mmu, rendezvous};

pub use crate::manager::{MAX_PACKS, PoolError};

/// The demo kernel as a [`Platform`], in regime `R`.
pub struct Demo<R>(PhantomData<R>);

impl<R: RegimeControl> Platform for Demo<R> {
    type Regime = R;
    type Tables = HeapTables;
    type Frames = ExecFrames;

    fn cpu_index() -> usize {
        crate::runtime::smp::this_cpu()
    }

    fn synchronise_others() -> Result<(), NotSynchronised> {
        crate::runtime::smp::synchronise_others().map_err(|cpu| NotSynchronised { cpu })
    }

    fn relax() {
        crate::runtime::smp::relax();
    }

    fn store_code_twice() -> bool {
        STORE_CODE_TWICE.load(core::sync::atomic::Ordering::Relaxed)
    }

    fn wait_outside(ranges: &[Range<u64>]) -> Result<(), NotSynchronised> {
        crate::runtime::smp::wait_outside(ranges).map_err(|cpu| NotSynchronised { cpu })
    }

    fn stop_others_and_run(change: &mut dyn FnMut()) -> Result<(), NotStopped> {
        rendezvous::stop_others_and_run(change).map_err(|cpu| NotStopped { cpu })
    }
}

/// Whether live code changes are stored twice ([`Platform::store_code_twice`]): in QEMU builds,
/// for TCG's stale translations when its CPUs run in threads of their own. The benchmark turns
/// it off: under `-icount` QEMU runs the CPUs one at a time in one thread, where the race cannot
/// happen, and the figures are the manager's.
static STORE_CODE_TWICE: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(cfg!(feature = "qemu"));

/// Whether live code changes are stored twice.
pub fn store_code_twice() -> bool {
    STORE_CODE_TWICE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Turns the second store of live code changes off (or on again).
pub fn set_store_code_twice(on: bool) {
    STORE_CODE_TWICE.store(on, core::sync::atomic::Ordering::Relaxed);
}

/// The exec frames of the memory plan, in units of 2 MiB: mapped nowhere but as packs.
pub struct ExecFrames {
    frames: FrameAllocator<8>,
    range: Range<u64>,
}

impl PackFrames for ExecFrames {
    fn alloc_frame(&mut self) -> Option<u64> {
        self.frames.alloc(1).map(|frame| (frame as u64) << 21)
    }

    fn free_frame(&mut self, pa: u64) {
        self.frames.dealloc((pa >> 21) as usize, 1);
    }

    fn exclusive_ranges(&self) -> &[Range<u64>] {
        core::slice::from_ref(&self.range)
    }
}

pub(crate) static MANAGER_EL1: ExecManager<Demo<El1And0>> = ExecManager::new();
pub(crate) static MANAGER_EL2: ExecManager<Demo<El2>> = ExecManager::new();
pub(crate) static MANAGER_EL2_VHE: ExecManager<Demo<El2And0>> = ExecManager::new();

/// Runs `$body` with `$m` bound to the manager of the running regime.
macro_rules! with_manager {
    ($m:ident => $body:expr) => {
        match $crate::runtime::mmu::KernelRegime::current() {
            $crate::runtime::mmu::KernelRegime::El1 => {
                let $m = &$crate::runtime::exec_pool::MANAGER_EL1;
                $body
            }
            $crate::runtime::mmu::KernelRegime::El2 => {
                let $m = &$crate::runtime::exec_pool::MANAGER_EL2;
                $body
            }
            $crate::runtime::mmu::KernelRegime::El2Vhe => {
                let $m = &$crate::runtime::exec_pool::MANAGER_EL2_VHE;
                $body
            }
        }
    };
}
pub(crate) use with_manager;

/// Sets the manager up over the live kernel tables. Called once at boot, after the MMU is on.
pub fn init() {
    let plan = memory::plan();
    let mut frames = FrameAllocator::new();
    frames.add_frame(
        (plan.exec_frames.start >> 21) as usize,
        (plan.exec_frames.end() >> 21) as usize,
    );
    let frames = ExecFrames {
        frames,
        range: plan.exec_frames.start..plan.exec_frames.end(),
    };
    let config = Config {
        pool: plan.exec_pool,
        fixmap: plan.fixmap,
        cpus: board::CPUS,
        // Over every CPU online: the smallest lines, the errata of any (Arm ARM B2.4.4 wants the
        // maintenance to reach every CPU that may run the code).
        maintenance: MaintenancePlan::for_cpus(crate::runtime::smp::identities())
            .unwrap_or_else(|| MaintenancePlan::new(cpu::cache_type(), cpu::midr())),
    };
    let root = mmu::root();
    // SAFETY: `root` is the live kernel root in TTBR0_ELx of the running regime, on every CPU;
    // identity-mapped heap tables that are never freed; the boot plan leaves the pool and fixmap
    // windows unmapped and the runtime maps nothing there afterwards; this runs once, on CPU 0.
    let result = with_manager!(m => unsafe { m.init(config, root, HeapTables::IDENTITY, frames) });
    if let Err(e) = result {
        panic!("exec manager ({}): {e}", KernelRegime::current().name());
    }
    // Every CPU onto its own view of the tables, where its poke slot and fill block are: this one
    // here, the others (online and waiting in their mailbox loop) through `run_on`.
    let online = crate::runtime::smp::online_mask();
    for cpu in (0..crate::runtime::boot::MAX_CPUS).filter(|c| online & (1 << c) != 0) {
        match crate::runtime::smp::run_on(cpu, enter_cpu_view, 0) {
            Ok(0) => {}
            Ok(_) => panic!("CPU {cpu} could not enter its view of the tables"),
            Err(e) => panic!("CPU {cpu} did not switch to its view of the tables: {e:?}"),
        }
    }
    // ftrace and kprobes patch the kernel's own code: its text is identity-mapped.
    let text = memory::KernelImage::current().text;
    // SAFETY: the boot map maps the kernel text RO + X at its physical address, for good, and
    // nothing writes it; the pool window lies elsewhere (check_exec_layout).
    let opened = with_manager!(m => unsafe { m.allow_kernel_text_patching(text, text.start) });
    if let Err(e) = opened {
        panic!("kernel text {text} cannot be opened to patching: {e}");
    }
}

/// Switches the calling CPU to its view of the tables (0 on success), through `smp::run_on`.
fn enter_cpu_view(_: u64) -> u64 {
    // SAFETY: this CPU runs on the kernel root given to `init`, in the running regime; its view
    // maps everything else as that root does.
    let entered = with_manager!(m => unsafe { m.enter_cpu_view() });
    u64::from(entered.is_err())
}

/// Maps the pack at `va` outside the slot allocator (the demo's JIT pack, tests).
pub fn map_pack(va: u64) -> Result<(), PoolError> {
    with_manager!(m => m.map_pack(va))
}

/// Unmaps a pack mapped with [`map_pack`] and frees its frame.
pub fn unmap_pack(va: u64) -> Result<(), PoolError> {
    with_manager!(m => m.unmap_pack(va))
}

/// The physical address behind exec address `va`, from the pool's own records.
pub fn exec_pa(va: u64) -> Option<u64> {
    with_manager!(m => m.exec_pa(va))
}

/// The VAs of the packs that are mapped.
pub fn live_packs() -> Vec<u64> {
    pack_frames().iter().map(|p| p.va).collect()
}

/// The mapped packs with their frames, as the pool records them.
pub fn pack_frames() -> Vec<PackFrame> {
    with_manager!(m => m.mapped_packs())
}

/// The cache-maintenance plan in force.
pub fn maintenance_plan() -> &'static MaintenancePlan {
    with_manager!(m => m.maintenance_plan()).expect("exec_pool::init runs at boot")
}

/// Audits the live translation tables (from TTBR0_ELx, what the hardware walks) against the W^X
/// and exec-pool rules. `active_poke` names the fixmap slot of a poke in progress, if the caller is
/// inside one.
pub fn audit_with(active_poke: Option<u64>) -> Vec<Violation> {
    with_manager!(m => m.audit_with(active_poke))
}

/// The root of CPU `cpu`'s view of the tables (its TTBR0_ELx once it entered it at boot).
pub fn cpu_view_root(cpu: usize) -> Option<u64> {
    with_manager!(m => m.cpu_view_root(cpu)).map(|root| root.pa)
}

/// The fixmap in every CPU's view now, read while other CPUs may be poking.
pub fn fixmap_views() -> crate::manager::FixmapViews {
    with_manager!(m => m.fixmap_views())
}

/// Audits the live tables with no poke in progress.
pub fn audit() -> Vec<Violation> {
    audit_with(None)
}
