//! Test module `bulk`: 64 KiB of text and no relocation, for the loader's cost per KiB of text
//! (`make bench`) and a module whose text spans sixteen pages. `bulk_entry` runs through all of
//! it: 16,382 NOPs, then returns 0xb01c, so a page the loader did not write traps on its BRK fill.

#![no_std]

core::arch::global_asm!(
    ".section .text.bulk, \"ax\", %progbits",
    ".balign 4",
    ".globl bulk_entry",
    ".type bulk_entry, %function",
    "bulk_entry:",
    ".rept 16382",
    "nop",
    ".endr",
    "movz x0, #0xb01c",
    "ret",
    ".size bulk_entry, . - bulk_entry",
);
