//! AArch64: boot assembly, exception vectors, system-register access.

pub mod boot;
pub mod cpu;
pub mod exception;
