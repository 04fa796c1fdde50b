//! The code of one function-entry trampoline (Linux arm64 ftrace's per-call-site "direct call"
//! trampolines), portable: built as words for the address it will run at, then written to an
//! exec slot through the text poke.
//!
//! A traceable function starts `nop; b body` ([`crate::traceable!`]). Tracing it turns the `nop`
//! into `b trampoline`; the trampoline saves the argument registers x0–x7, x8 (the indirect
//! result register) and the frame record, calls `tracer(function, &args, cookie)`, restores
//! everything and branches to `function + 4`, where the function goes on as if never diverted.
//!
//! ```text
//!  0  mrs  x16, daif              DAIF as the caller had it
//!  1  msr  daifset, #3            IRQ and FIQ masked from here to the end
//!  2  sub  sp, sp, #224
//!  3  stp  x0, x1, [sp]           the arguments, handed to the tracer as &[u64; 8]
//!  4  stp  x2, x3, [sp, #16]
//!  5  stp  x4, x5, [sp, #32]
//!  6  stp  x6, x7, [sp, #48]
//!  7  stp  x29, x30, [sp, #64]    frame record: x30 is the traced function's return address
//!  8  stp  x8, x16, [sp, #80]
//!  9  stp  q0, q1, [sp, #96]      the SIMD and FP argument registers (the tracer may use them)
//! 10  stp  q2, q3, [sp, #128]
//! 11  stp  q4, q5, [sp, #160]
//! 12  stp  q6, q7, [sp, #192]
//! 13  add  x29, sp, #64
//! 14  ldr  x0, function           literals after the code
//! 15  add  x1, sp, #0
//! 16  ldr  x2, cookie
//! 17  ldr  x16, tracer
//! 18  blr  x16
//! 19  ldp  q0, q1, [sp, #96]      .. q6, q7
//! 23  ldp  x8, x16, [sp, #80]
//! 24  ldp  x0, x1, [sp]           .. x6, x7, then x29, x30
//! 29  add  sp, sp, #224
//! 30  msr  daif, x16              the caller's DAIF back
//! 31  b    function + 4
//! 32  .quad function, tracer, cookie
//! ```
//!
//! Why interrupts are masked: freeing a trampoline needs to know no CPU is inside it. With
//! interrupts masked from the second instruction to the last, a CPU can only be found inside it
//! (by an interrupt, at its interrupted PC) at the first two instructions or the last one; a CPU
//! busy in the tracer answers nothing until it is out. So "every CPU has been seen interrupted
//! outside the trampoline since it was unlinked" ([`crate::manager::Platform::wait_outside`])
//! means no CPU is or will be inside it. The tracer therefore runs with interrupts masked, like
//! an NMI handler: it must not wait for locks another CPU may hold.
//!
//! x16 and x17 (IP0/IP1) are free at a function's entry (AAPCS64: a veneer may use them), and the
//! tracer may clobber x9–x15 like any callee.

use crate::poke::insn::{self, CodeBuf, EncodeError};

/// Instructions of a trampoline.
const CODE_WORDS: usize = 32;

/// Bytes of a trampoline: 32 instructions and three 8-byte literals.
pub const TRAMPOLINE_BYTES: usize = CODE_WORDS * 4 + 3 * 8;

/// Bytes of stack it takes: x0–x8, x16, the frame record, q0–q7.
const FRAME: u32 = 224;

/// The tracer a trampoline calls: the traced function's address, its eight argument registers
/// as the caller set them, and the cookie given when tracing started. Runs with IRQ and FIQ
/// masked, like an NMI handler: it must not take locks, patch or publish code, or wait for other
/// CPUs in any way (a CPU that joins a stop-the-world round from such a wait is taken to be
/// outside every trampoline, which could then be freed under it).
pub type TraceFn = extern "C" fn(function: u64, args: &[u64; 8], cookie: u64);

/// Offset of the first literal: the end of the code, 8-byte aligned.
const LITERALS: u64 = CODE_WORDS as u64 * 4;

const X0: u32 = 0;
const X1: u32 = 1;
const X2: u32 = 2;
const X8: u32 = 8;
const X16: u32 = 16;
const FP: u32 = 29;
const LR: u32 = 30;
const SP: u32 = 31;

/// `mrs x<rt>, daif` (op0 3, op1 3, CRn 4, CRm 2, op2 1).
const fn mrs_daif(rt: u32) -> u32 {
    0xd53b_4220 | rt
}

/// `msr daif, x<rt>`.
const fn msr_daif(rt: u32) -> u32 {
    0xd51b_4220 | rt
}

/// `msr daifset, #imm4`.
const fn msr_daifset(imm4: u32) -> u32 {
    0xd503_40df | (imm4 & 0xf) << 8
}

/// `stp`/`ldp` of 64-bit registers, signed offset (a multiple of 8 in -512..=504).
const fn pair(load: bool, rt: u32, rt2: u32, rn: u32, offset: i32) -> u32 {
    let imm7 = ((offset / 8) as u32) & 0x7f;
    0xa900_0000 | (load as u32) << 22 | imm7 << 15 | rt2 << 10 | rn << 5 | rt
}

/// `stp`/`ldp` of 128-bit SIMD and FP registers, signed offset (a multiple of 16 in
/// -1024..=1008).
const fn pair_q(load: bool, rt: u32, rt2: u32, rn: u32, offset: i32) -> u32 {
    let imm7 = ((offset / 16) as u32) & 0x7f;
    0xad00_0000 | (load as u32) << 22 | imm7 << 15 | rt2 << 10 | rn << 5 | rt
}

/// `sub`/`add x<rd>, x<rn>, #imm12` (SP is register 31 in both places).
const fn add_sub(sub: bool, rd: u32, rn: u32, imm12: u32) -> u32 {
    0x9100_0000 | (sub as u32) << 30 | (imm12 & 0xfff) << 10 | rn << 5 | rd
}

/// `ldr x<rt>, <pc + offset>` (literal; offset a multiple of 4 within ±1 MiB).
const fn ldr_literal(rt: u32, offset: i64) -> u32 {
    0x5800_0000 | (((offset / 4) as u32) & 0x7_ffff) << 5 | rt
}

/// The trampoline for `function` (whose entry is `nop; b body`), to run at `at` (8-byte
/// aligned), calling `tracer` with `cookie`. Fails only if `function + 4` is out of one `B`'s
/// reach from the trampoline.
pub fn build(at: u64, function: u64, tracer: u64, cookie: u64) -> Result<CodeBuf, EncodeError> {
    let mut code = CodeBuf::new(at);
    let literal =
        |code: &CodeBuf, index: u64| (at + LITERALS + 8 * index) as i64 - code.here() as i64;
    code.push(mrs_daif(X16));
    code.push(msr_daifset(0b0011));
    code.push(add_sub(true, SP, SP, FRAME));
    for (i, rt) in [0u32, 2, 4, 6].into_iter().enumerate() {
        code.push(pair(false, rt, rt + 1, SP, 16 * i as i32));
    }
    code.push(pair(false, FP, LR, SP, 64));
    code.push(pair(false, X8, X16, SP, 80));
    for (i, rt) in [0u32, 2, 4, 6].into_iter().enumerate() {
        code.push(pair_q(false, rt, rt + 1, SP, 96 + 32 * i as i32));
    }
    code.push(add_sub(false, FP, SP, 64));
    code.push(ldr_literal(X0, literal(&code, 0)));
    code.push(add_sub(false, X1, SP, 0));
    code.push(ldr_literal(X2, literal(&code, 2)));
    code.push(ldr_literal(X16, literal(&code, 1)));
    code.push(insn::blr(insn::X16)?);
    for (i, rt) in [0u32, 2, 4, 6].into_iter().enumerate() {
        code.push(pair_q(true, rt, rt + 1, SP, 96 + 32 * i as i32));
    }
    code.push(pair(true, X8, X16, SP, 80));
    for (i, rt) in [0u32, 2, 4, 6].into_iter().enumerate() {
        code.push(pair(true, rt, rt + 1, SP, 16 * i as i32));
    }
    code.push(pair(true, FP, LR, SP, 64));
    code.push(add_sub(false, SP, SP, FRAME));
    code.push(msr_daif(X16));
    code.push_b(function + 4)?;
    debug_assert_eq!(code.len_bytes() as u64, LITERALS);
    for value in [function, tracer, cookie] {
        code.push(value as u32);
        code.push((value >> 32) as u32);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = 0x3c00_0040;
    const FUNCTION: u64 = 0x4008_1230;

    #[test]
    fn encodings_are_the_assemblers() {
        // From the Arm ARM encodings, checked against llvm-objdump of the same instructions.
        assert_eq!(mrs_daif(16), 0xd53b_4230); // mrs x16, daif
        assert_eq!(msr_daif(16), 0xd51b_4230); // msr daif, x16
        assert_eq!(msr_daifset(3), 0xd503_43df); // msr daifset, #3
        assert_eq!(add_sub(true, SP, SP, 96), 0xd101_83ff); // sub sp, sp, #96
        assert_eq!(add_sub(false, FP, SP, 64), 0x9101_03fd); // add x29, sp, #64
        assert_eq!(add_sub(false, X1, SP, 0), 0x9100_03e1); // add x1, sp, #0 (mov x1, sp)
        assert_eq!(pair(false, 0, 1, SP, 0), 0xa900_07e0); // stp x0, x1, [sp]
        assert_eq!(pair(false, FP, LR, SP, 64), 0xa904_7bfd); // stp x29, x30, [sp, #64]
        assert_eq!(pair(true, 0, 1, SP, 0), 0xa940_07e0); // ldp x0, x1, [sp]
        assert_eq!(pair(true, X8, X16, SP, 80), 0xa945_43e8); // ldp x8, x16, [sp, #80]
        assert_eq!(pair_q(false, 0, 1, SP, 96), 0xad03_07e0); // stp q0, q1, [sp, #96]
        assert_eq!(pair_q(true, 6, 7, SP, 192), 0xad46_1fe6); // ldp q6, q7, [sp, #192]
        assert_eq!(add_sub(true, SP, SP, 224), 0xd103_83ff); // sub sp, sp, #224
        assert_eq!(ldr_literal(X0, 8), 0x5800_0040); // ldr x0, #8
        assert_eq!(ldr_literal(X2, -4), 0x58ff_ffe2); // ldr x2, #-4
    }

    #[test]
    fn the_trampoline_saves_calls_restores_and_continues() {
        let code = build(AT, FUNCTION, 0x4009_0000, 7).unwrap();
        let words = code.words();
        assert_eq!(code.len_bytes(), TRAMPOLINE_BYTES);
        assert_eq!(words[0], mrs_daif(16));
        assert_eq!(
            words[1],
            msr_daifset(3),
            "interrupts masked from the second instruction"
        );
        assert_eq!(words[30], msr_daif(16), "and restored only before the last");
        assert_eq!(
            insn::branch_target(words[31], AT + 31 * 4),
            Some(FUNCTION + 4),
            "continues after the patched NOP"
        );
        assert_eq!(words[18], insn::blr(insn::X16).unwrap());
        // The literal loads reach function, cookie, tracer.
        let target = |i: usize| {
            let imm19 = (words[i] >> 5) & 0x7_ffff;
            let offset = ((imm19 << 13) as i32 >> 11) as i64;
            (AT + 4 * i as u64).wrapping_add(offset as u64)
        };
        let literal = |addr: u64| {
            let i = ((addr - AT) / 4) as usize;
            u64::from(words[i]) | u64::from(words[i + 1]) << 32
        };
        assert_eq!(literal(target(14)), FUNCTION);
        assert_eq!(literal(target(16)), 7);
        assert_eq!(literal(target(17)), 0x4009_0000);
        // Every store has its load, at the same offset; the frame is freed as it was taken.
        assert_eq!(words[2], add_sub(true, SP, SP, 224));
        assert_eq!(words[29], add_sub(false, SP, SP, 224));
        for (store, load) in [
            (3, 24),
            (4, 25),
            (5, 26),
            (6, 27),
            (7, 28),
            (8, 23),
            (9, 19),
            (10, 20),
            (11, 21),
            (12, 22),
        ] {
            assert_eq!(words[store] | 1 << 22, words[load], "word {store} / {load}");
        }
    }

    #[test]
    fn a_function_out_of_branch_reach_is_refused() {
        assert!(build(AT, AT + (1 << 28), 0, 0).is_err());
    }
}
