//! execmem: an executable-memory manager for bare-metal AArch64.
//!
//! Small executable slots (JIT programs, trampolines, patched code, modules) are packed into shared
//! 2 MiB packs, each mapped read-only + executable by one level-2 block descriptor, so all code of a
//! system costs one TLB entry per pack. Exec memory is never writable: code is written through a
//! short-lived per-CPU writable alias (the fixmap "text poke"), followed by the cache maintenance the
//! Arm ARM requires for self-modifying code.
//!
//! Layers (a reader knows the room from the path):
//! - portable core, unit-tested on the host: [`cpu`] (ID register decoding), [`fault`] (exception
//!   syndrome decoding), [`machine`] (the memory map and devices from the device tree, and where the
//!   kernel's regions go in it), [`mmu`] (descriptors, tables, audit), [`poke`] (instruction encoding, CMODX
//!   rules, cache-maintenance plans), [`pack`] (the slot allocator);
//! - `arch::aarch64`: system registers, TLB and cache instructions, per translation regime (every
//!   AArch64 target);
//! - `manager`: the manager on the hardware, `ExecManager<P: Platform>`, which a kernel
//!   instantiates over its own tables, frames and CPUs, at EL1 or EL2 (every AArch64 target);
//! - `runtime`: the demo kernel that hosts the manager (boot code, vectors, console, heap, panic
//!   handler, global allocator, board glue). Only with the `runtime` feature on `target_os = "none"`:
//!   a kernel that depends on execmem without it gets no symbol, lang item or link argument of it.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bench;
pub mod cpu;
pub mod fault;
pub mod layout;
pub mod machine;
pub mod mmu;
pub mod module;
pub mod pack;
pub mod poke;
pub mod probe;
pub mod sync;
pub mod trace;

#[cfg(target_arch = "aarch64")]
pub mod arch;
#[cfg(target_arch = "aarch64")]
pub mod manager;

#[cfg(all(target_os = "none", feature = "runtime"))]
pub mod runtime;
