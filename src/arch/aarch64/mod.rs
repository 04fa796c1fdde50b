//! AArch64: system registers, TLB and cache instructions. No entry code and no vectors: those
//! belong to whatever kernel runs the manager (the demo's are in `runtime`).

pub mod cache;
pub mod cpu;
pub mod mmu;
pub mod pmu;
