//! The interrupt controller, for what the kernel's CPUs ask of each other: two software-generated
//! interrupts (SGIs) through the GICv2 (`arm-gic`) that both boards have.
//!
//! - [`SGI_STOP`]: a stop-the-world round has started (`runtime::rendezvous`); the CPU joins it
//!   from the interrupt, busy or not.
//! - [`SGI_SYNC`]: code was written; the CPU executes a context synchronisation event and says so
//!   (`runtime::smp::synchronise_others`, Linux's `kick_all_cpus_sync`).
//!
//! Both go to every CPU but the sender (the target-list filter "all but self"), so the GIC's own
//! CPU-interface numbering never has to be learnt. The kernel runs non-secure: on a GIC with the
//! Security Extensions (the Pi's GIC-400) firmware, QEMU's loader or `runtime::firmware` has put
//! every interrupt in Group 1, and bit 0 of the non-secure GICD_CTLR and GICC_CTLR views enables
//! it; on one without (QEMU virt) everything is in Group 0, enabled by the same bit 0 (GIC v2
//! Architecture Specification 4.3.1, 4.4.1).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use arm_gic::IntId;
use arm_gic::gicv2::registers::Gicc;
use arm_gic::gicv2::{GicV2, SgiTarget, SgiTargetListFilter};
use safe_mmio::{UniqueMmioPointer, field};
use spin::{Mutex, Once};

use crate::machine::Gic;
use crate::runtime::irq::without_interrupts;
use crate::runtime::{rendezvous, smp};

/// A stop-the-world round started: join it.
pub const SGI_STOP: IntId = IntId::sgi(0);
/// Code was written: synchronise and answer.
pub const SGI_SYNC: IntId = IntId::sgi(1);

/// GICC_IAR's interrupt ID field (bits [9:0]; [12:10] name the CPU that sent an SGI).
const IAR_ID: u32 = 0x3ff;
/// The ID GICC_IAR reads when nothing is pending (1020..1023 are special; 1023 is spurious).
const SPURIOUS: u32 = 1023;
const FIRST_SPECIAL: u32 = 1020;

/// The driver, for the distributor: set-up and sending. Taken with interrupts masked (a CPU that
/// sends from a wait loop must not be interrupted into sending again).
static GIC: Once<Mutex<GicV2<'static>>> = Once::new();
/// GICC's address: each CPU reaches its own (banked) CPU interface there.
static GICC: AtomicU64 = AtomicU64::new(0);

/// Sets the distributor up (on CPU 0, MMU on, the GIC mapped as a device) and this CPU's
/// interface. Without a GICv2 in the machine nothing is set up and no SGI is ever sent: the other
/// CPUs are then reached only from their idle loops.
pub fn init(gic: Option<Gic>) {
    let Some(Gic::V2 {
        distributor,
        cpu_interface,
    }) = gic
    else {
        return;
    };
    GICC.store(cpu_interface.start, Ordering::Release);
    GIC.call_once(|| {
        // SAFETY: the machine's GICv2 distributor and CPU interface, mapped as Device memory by
        // the kernel tables (runtime::memory maps the GIC's regions); this is the only driver
        // instance, and the per-CPU interface accesses in `handle` touch only GICC_IAR and
        // GICC_EOIR of the CPU they run on, with interrupts masked.
        let mut gic =
            unsafe { GicV2::new(distributor.start as *mut _, cpu_interface.start as *mut _) };
        // Bit 0 of the distributor's control register: the group the kernel's interrupts are in
        // (see the module comment); `GicV2::setup` would write the Secure view's bits instead.
        gic.enable_group0(true);
        Mutex::new(gic)
    });
    init_cpu();
}

/// This CPU's interface: enabled, every priority let through, the two SGIs enabled (they are on a
/// GIC-400 whatever is written; the banked enable bits are set for any other GICv2).
pub fn init_cpu() {
    let Some(gic) = GIC.get() else {
        return;
    };
    without_interrupts(|| {
        let mut gic = gic.lock();
        for sgi in [SGI_STOP, SGI_SYNC] {
            // A GIC that refuses to enable an SGI leaves this CPU reachable only when idle.
            let _ = gic.enable_interrupt(sgi, true);
        }
        gic.set_priority_mask(0xff);
    });
    let mut gicc = this_cpu_interface();
    field!(gicc, ctlr).write(1);
}

/// Sends `sgi` to every CPU but this one. Returns whether there is a GIC to send it through.
pub fn send_to_others(sgi: IntId) -> bool {
    let Some(gic) = GIC.get() else {
        return false;
    };
    // The stores the SGI announces are visible before it is (GIC v2 Architecture Specification
    // 3.2.5 leaves the ordering of a GICD_SGIR write against normal memory to a barrier).
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
    without_interrupts(|| {
        gic.lock().send_sgi(
            sgi,
            SgiTarget::List {
                target_list_filter: SgiTargetListFilter::ForwardOthersOnly,
                target_list: 0,
            },
        )
    });
    true
}

/// Sends `sgi` to this CPU only (the benchmark's measure of one answer).
pub(crate) fn send_to_self(sgi: IntId) -> bool {
    let Some(gic) = GIC.get() else {
        return false;
    };
    without_interrupts(|| {
        gic.lock().send_sgi(
            sgi,
            SgiTarget::List {
                target_list_filter: SgiTargetListFilter::ForwardSelfOnly,
                target_list: 0,
            },
        )
    });
    true
}

/// Handles every pending interrupt (from the IRQ vector, interrupts masked). An interrupt that is
/// not the kernel's is acknowledged and ended too, and its ID returned for the caller to report.
pub fn handle() -> Result<(), u32> {
    if GIC.get().is_none() {
        return Err(SPURIOUS);
    }
    let mut gicc = this_cpu_interface();
    let mut unexpected = Ok(());
    loop {
        let iar = field!(gicc, iar).read();
        let id = iar & IAR_ID;
        if id >= FIRST_SPECIAL {
            break;
        }
        match id {
            id if id == u32::from(SGI_STOP) => rendezvous::participate(),
            id if id == u32::from(SGI_SYNC) => smp::answer_synchronise(),
            id => unexpected = Err(id),
        }
        // The whole IAR value back, CPU ID included (GIC v2 Architecture Specification 4.4.5).
        field!(gicc, eoir).write(iar);
    }
    unexpected
}

/// This CPU's GICC (banked: the same address reaches each CPU's own interface).
fn this_cpu_interface() -> UniqueMmioPointer<'static, Gicc> {
    let gicc = GICC.load(Ordering::Acquire) as *mut Gicc;
    // SAFETY: the machine's GICC, mapped as a device; only called after `init` stored it, with
    // interrupts masked or at set-up, so nothing else on this CPU uses its interface meanwhile.
    unsafe { UniqueMmioPointer::new(NonNull::new(gicc).expect("GIC set up")) }
}
