//! Loadable modules in the demo kernel: the library's [`Modules`] registry over the kernel's exec
//! manager ([`ExecModules`]) and the plan's module-data region ([`DataPages`]), with the kernel's
//! export table.
//!
//! ```ignore
//! let id = modules::load("hello", HELLO_O)?;   // linked, published, module_init run
//! let add = modules::symbol("hello_add").unwrap();
//! modules::unload(id)?;                        // module_exit run, everything freed
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::FrameAllocator;
use spin::mutex::SpinMutex as Mutex;

use crate::mmu::{El1And0, El2, El2And0, Role};
use crate::module::{
    ExecModules, Export, LoadError, Module, ModuleId, ModuleMemory, Modules, SpaceError,
    UnloadError,
};
use crate::runtime::exec_pool::{Demo, MANAGER_EL1, MANAGER_EL2, MANAGER_EL2_VHE};
use crate::runtime::mmu::{self, KernelRegime};
use crate::runtime::{irq, memory};

const PAGE: u64 = 4096;

/// The plan's module-data region in 4 KiB frames, each identity-mapped only while a module holds
/// it: RW + XN, or RO + XN once sealed. Nothing else maps these frames.
pub struct DataPages {
    frames: FrameAllocator<16>,
    in_use: usize,
}

impl DataPages {
    fn new() -> Self {
        let region = memory::plan().module_data;
        let mut frames = FrameAllocator::new();
        frames.add_frame(
            (region.start / PAGE) as usize,
            (region.end() / PAGE) as usize,
        );
        Self { frames, in_use: 0 }
    }

    /// Frames held by modules.
    pub fn frames_in_use(&self) -> usize {
        self.in_use
    }
}

impl ModuleMemory for DataPages {
    fn alloc(&mut self, size: usize) -> Option<u64> {
        let pages = size / PAGE as usize;
        let frame = self.frames.alloc(pages)?;
        let addr = frame as u64 * PAGE;
        if mmu::map_module_data(addr, size as u64, Role::Data).is_err() {
            self.frames.dealloc(frame, pages);
            return None;
        }
        // SAFETY: just mapped RW at its identity address, `size` bytes, and ours alone.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size) };
        self.in_use += pages;
        Some(addr)
    }

    fn make_read_only(&mut self, addr: u64, size: usize) -> Result<(), SpaceError> {
        // Break-before-make is not required for a permission change alone, but the tables only
        // write invalid entries (never a live one): unmap (broadcast TLBI), then map read-only.
        mmu::unmap_module_data(addr, size as u64)
            .and_then(|()| mmu::map_module_data(addr, size as u64, Role::Rodata))
            .map_err(|_| SpaceError::Failed("module rodata could not be remapped read-only"))
    }

    fn free(&mut self, addr: u64, size: usize) {
        // Mapped by `alloc` (and perhaps remapped read-only): the unmap cannot fail.
        let _ = mmu::unmap_module_data(addr, size as u64);
        self.frames
            .dealloc((addr / PAGE) as usize, size / PAGE as usize);
        self.in_use -= size / PAGE as usize;
    }
}

/// The registry of the running regime.
enum Registry {
    El1(Modules<ExecModules<Demo<El1And0>, DataPages>>),
    El2(Modules<ExecModules<Demo<El2>, DataPages>>),
    El2Vhe(Modules<ExecModules<Demo<El2And0>, DataPages>>),
}

static REGISTRY: Mutex<Option<Registry>, irq::Pause> = Mutex::new(None);

macro_rules! with_registry {
    ($r:ident => $body:expr) => {{
        let mut guard = REGISTRY.lock();
        let registry = guard.get_or_insert_with(new_registry);
        match registry {
            Registry::El1($r) => $body,
            Registry::El2($r) => $body,
            Registry::El2Vhe($r) => $body,
        }
    }};
}

fn new_registry() -> Registry {
    let exports = exports();
    match KernelRegime::current() {
        KernelRegime::El1 => Registry::El1(Modules::new(
            ExecModules::new(&MANAGER_EL1, DataPages::new()),
            &exports,
        )),
        KernelRegime::El2 => Registry::El2(Modules::new(
            ExecModules::new(&MANAGER_EL2, DataPages::new()),
            &exports,
        )),
        KernelRegime::El2Vhe => Registry::El2Vhe(Modules::new(
            ExecModules::new(&MANAGER_EL2_VHE, DataPages::new()),
            &exports,
        )),
    }
}

/// Events the modules reported through `kernel_event`, in order.
static EVENTS: Mutex<Vec<u64>, irq::Pause> = Mutex::new(Vec::new());

/// Whether `kernel_log` prints (the benchmark turns it off, so it counts the loader, not the
/// console).
static LOG: AtomicBool = AtomicBool::new(true);

/// Turns module log lines on or off.
pub fn set_log(on: bool) {
    LOG.store(on, Ordering::Relaxed);
}

extern "C" fn kernel_log(ptr: *const u8, len: usize) {
    if !LOG.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: the module passes a byte string it owns, `len` bytes at `ptr` (the export's
    // contract, as for any kernel function a module calls).
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    crate::println!("  [module] {}", String::from_utf8_lossy(bytes));
}

extern "C" fn kernel_event(code: u64) {
    irq::without_interrupts(|| EVENTS.lock().push(code));
}

extern "C" fn kernel_add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

// The C memory functions modules' compilers call. The kernel's own (compiler_builtins) are
// weak symbols whose address a static kernel can only take through a GOT, so modules get these.

extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the C contract of memcpy: `n` bytes readable at `src`, writable at `dst`, apart.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
    dst
}

extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the C contract of memmove: `n` bytes readable at `src`, writable at `dst`.
    unsafe { core::ptr::copy(src, dst, n) };
    dst
}

extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the C contract of memset: `n` bytes writable at `dst`.
    unsafe { core::ptr::write_bytes(dst, c as u8, n) };
    dst
}

extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the C contract of memcmp: `n` bytes readable at `a` and at `b`.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, n),
            core::slice::from_raw_parts(b, n),
        )
    };
    a.iter()
        .zip(b)
        .find(|(x, y)| x != y)
        .map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

/// The value of the absolute export `kernel_small_value` (fits `MOVW_UABS_G0` and `ABS16`).
pub const SMALL_VALUE: u64 = 0x1234;

/// What the kernel exports to modules (Linux `EXPORT_SYMBOL`).
pub fn exports() -> Vec<Export> {
    let function = |name, f: *const ()| Export {
        name,
        addr: f as u64,
    };
    alloc::vec![
        function("kernel_log", kernel_log as *const ()),
        function("kernel_event", kernel_event as *const ()),
        function("kernel_add", kernel_add as *const ()),
        function("memcpy", memcpy as *const ()),
        function("memmove", memmove as *const ()),
        function("memset", memset as *const ()),
        function("memcmp", memcmp as *const ()),
        Export {
            name: "kernel_small_value",
            addr: SMALL_VALUE,
        },
    ]
}

/// Loads a module (see [`Modules::load`]).
///
/// # Safety
/// The module is trusted kernel code: its init runs now.
pub unsafe fn load(name: &str, file: &[u8]) -> Result<ModuleId, LoadError> {
    // SAFETY: forwarded to the caller.
    with_registry!(r => unsafe { r.load(name, file) })
}

/// Unloads a module (see [`Modules::unload`]).
///
/// # Safety
/// No CPU runs its code or holds pointers into it any more.
pub unsafe fn unload(id: ModuleId) -> Result<(), UnloadError> {
    // SAFETY: forwarded to the caller.
    with_registry!(r => unsafe { r.unload(id) })
}

/// A kernel or module export's address.
pub fn symbol(name: &str) -> Option<u64> {
    with_registry!(r => r.symbol(name))
}

/// The loaded modules, in load order.
pub fn loaded() -> Vec<Module> {
    with_registry!(r => r.iter().cloned().collect())
}

/// Bytes held by loaded modules per segment kind ([`crate::module::Segment::index`]).
pub fn live_bytes() -> [usize; 3] {
    with_registry!(r => r.space().live_bytes())
}

/// Free 4 KiB frames of module data.
pub fn free_data_pages() -> usize {
    let region = memory::plan().module_data;
    let total = (region.size / PAGE) as usize;
    with_registry!(r => total - r.space().memory().frames_in_use())
}

/// Takes the events reported so far.
pub fn take_events() -> Vec<u64> {
    irq::without_interrupts(|| core::mem::take(&mut *EVENTS.lock()))
}
