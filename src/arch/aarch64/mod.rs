//! AArch64: boot assembly, exception vectors, system-register access.

pub mod boot;
pub mod cache;
pub mod cpu;
pub mod exception;
pub mod mmu;
pub mod pmu;
