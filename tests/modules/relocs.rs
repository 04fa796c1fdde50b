//! Test module `relocs`: every relocation type the loader applies, written in assembly so each
//! one is emitted exactly where intended. relocs.s lists each function and data word, the
//! relocation it exercises and the value a test must expect.
//!
//! Built by build.rs into `$OUT_DIR/modules/relocs.o`.

#![no_std]

core::arch::global_asm!(include_str!("relocs.s"));
