// Exception vector tables (Arm ARM D1.3.1): 16 entries of 0x80 bytes, each table 2 KiB aligned;
// one for a kernel running at EL1 (VBAR_EL1) and one for EL2 (VBAR_EL2: the kernel entered at EL2
// stays there, as a hypervisor does), the same code over each level's registers.
// Every entry saves the full register state, FP/SIMD included (a handler that resumes the
// interrupted code, e.g. after an expected fault in a test, must not clobber its live registers),
// and calls `handle_exception(kind | el << 8, &mut frame)`. `kind` = 4 * source + type, where
// source is 0 current EL with SP_EL0, 1 current EL with SP_ELx, 2 lower EL AArch64, 3 lower EL
// AArch32, and type is 0 synchronous, 1 IRQ, 2 FIQ, 3 SError. The handler may change
// ELR/SPSR/registers in the frame; they are restored from it.
//
// Frame layout (must match `ExceptionFrame` in exception.rs): x0..x30 at 0, elr at 248, spsr at 256,
// fpsr at 264, fpcr at 272, q0..q31 at 288. Size 800 (16-byte aligned).

.equ FRAME_SIZE, 800
.equ FRAME_Q, 288

// Before anything is pushed, `AT S1E1W` (`AT S1E2W` at EL2) checks that the frame's lowest byte
// is writable: if the stack pointer has run into a guard page (a stack overflow), pushing the frame
// would fault again, and again, each time further down. Then the entry switches to this CPU's
// overflow stack instead and reports. x0 is parked in TPIDR_ELx (unused otherwise) during the
// check; PAR_EL1 is clobbered.
.macro VECTOR el, kind
.balign 0x80
    msr     tpidr_el\el, x0
    sub     x0, sp, #FRAME_SIZE
    at      s1e\el\()w, x0
    isb
    mrs     x0, par_el1
    tbnz    x0, #0, 1f                      // PAR_EL1.F: the frame would not be writable
    mrs     x0, tpidr_el\el
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #(\kind | (\el << 8))
    b       exception_save_and_handle_el\el
1:  mov     x0, #(\kind | (\el << 8))
    b       exception_stack_overflow
.endm

.macro EXCEPTION_VECTORS el
.section .text.vectors, "ax"
.balign 0x800
.global exception_vectors_el\el
exception_vectors_el\el:
    VECTOR \el, 0
    VECTOR \el, 1
    VECTOR \el, 2
    VECTOR \el, 3
    VECTOR \el, 4
    VECTOR \el, 5
    VECTOR \el, 6
    VECTOR \el, 7
    VECTOR \el, 8
    VECTOR \el, 9
    VECTOR \el, 10
    VECTOR \el, 11
    VECTOR \el, 12
    VECTOR \el, 13
    VECTOR \el, 14
    VECTOR \el, 15

exception_save_and_handle_el\el:
    SAVE_AND_HANDLE \el
.endm

// Stack overflow: x0 = vector kind | el << 8, the interrupted SP still in SP. Never returns.
.section .text.vectors, "ax"
exception_stack_overflow:
    mov     x1, sp                          // x1 = the overflowing SP
    mrs     x2, tpidrro_el0                 // this CPU's index (boot.s)
    cmp     x2, #{MAX_CPUS}
    b.lo    2f
    mov     x2, #0                          // an unknown CPU shares CPU 0's overflow stack
2:  adrp    x3, OVERFLOW_STACKS
    add     x3, x3, :lo12:OVERFLOW_STACKS
    mov     x4, #{OVERFLOW_STACK_SIZE}
    madd    x5, x2, x4, x4                  // (cpu + 1) * size
    add     x3, x3, x5                      // the top of this CPU's overflow stack
    mov     sp, x3
    bl      handle_stack_overflow
3:  wfe
    b       3b

// The frame: x0 and x1 are saved by the entry, x0 = kind | el << 8. Restores everything and
// returns from the exception at level `el`.
.macro SAVE_AND_HANDLE el
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el\el
    stp     x30, x2, [sp, #240]
    mrs     x2, spsr_el\el
    mrs     x3, fpsr
    stp     x2, x3, [sp, #256]
    mrs     x2, fpcr
    str     x2, [sp, #272]
    add     x2, sp, #FRAME_Q
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]

    mov     x1, sp
    bl      handle_exception

    add     x2, sp, #FRAME_Q
    ldp     q0, q1, [x2, #0]
    ldp     q2, q3, [x2, #32]
    ldp     q4, q5, [x2, #64]
    ldp     q6, q7, [x2, #96]
    ldp     q8, q9, [x2, #128]
    ldp     q10, q11, [x2, #160]
    ldp     q12, q13, [x2, #192]
    ldp     q14, q15, [x2, #224]
    ldp     q16, q17, [x2, #256]
    ldp     q18, q19, [x2, #288]
    ldp     q20, q21, [x2, #320]
    ldp     q22, q23, [x2, #352]
    ldp     q24, q25, [x2, #384]
    ldp     q26, q27, [x2, #416]
    ldp     q28, q29, [x2, #448]
    ldp     q30, q31, [x2, #480]
    ldr     x2, [sp, #272]
    msr     fpcr, x2
    ldp     x2, x3, [sp, #256]
    msr     spsr_el\el, x2
    msr     fpsr, x3
    ldp     x30, x2, [sp, #240]
    msr     elr_el\el, x2
    ldp     x28, x29, [sp, #224]
    ldp     x26, x27, [sp, #208]
    ldp     x24, x25, [sp, #192]
    ldp     x22, x23, [sp, #176]
    ldp     x20, x21, [sp, #160]
    ldp     x18, x19, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #FRAME_SIZE
    eret
.endm

EXCEPTION_VECTORS 1
EXCEPTION_VECTORS 2
