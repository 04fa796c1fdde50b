// Test module `relocs`: makes the assembler emit every AArch64 relocation type the module loader
// applies, each in a function or a data word whose value says whether it was applied right.
// Included by relocs.rs through global_asm!, so this file must not contain curly braces (they
// are format placeholders there), even in comments.
//
// Every reference goes to another section or to an undefined symbol (a kernel export): a target
// in the same section would be resolved by the assembler, leaving no relocation. References to
// the local labels (.L*) become relocations against the section symbol with a non-zero addend,
// and the targets of the loads and of the address computations sit at a non-zero offset in
// their page (lo12 != 0), so a wrong addend or a wrong lo12 scaling gives a wrong value.
//
// Places and targets, by the reach of each relocation:
// - text -> text (CALL26, JUMP26, CONDBR19, TSTBR14, ADR_PREL_LO21): .text.relocs calls,
//   branches to and takes the address of .text.relocs_far; the module's text is one slot.
// - text -> data, rodata (ADRP, :lo12:, MOVW): within the +-4 GiB the kernel keeps module data
//   from module text. MOVW_UABS_G2 needs an address below 2^48, MOVW_UABS_G1 below 2^32.
// - rodata -> data (ABS64, ABS32, PREL64): any distance (ABS32 needs an address below 2^32).
// - data -> data (PREL32, PREL16): .data to .data.relocs_target, one kind of memory, a few
//   bytes apart when the loader packs a module's data sections together.
// - ABS16 and MOVW_UABS_G0 take the absolute kernel export kernel_small_value (0x1234).
//
// What a test must expect; addr(s) is the loaded address of exported symbol s, word(s) the
// value stored at s (of the width given), sext the sign extension of it to 64 bits.
//
//   function                 relocations                          returns
//   reloc_call26             CALL26 (.text.relocs_far + addend)   0xca26
//   reloc_call26_kernel      CALL26 kernel_add                    0x4042 (kernel_add(0x4000, 0x42))
//   reloc_jump26             JUMP26 (.text.relocs_far + addend)   0x1a26
//   reloc_condbr19           CONDBR19 (b.eq, taken)               0xc019 (0x0bad if not taken)
//   reloc_tstbr14            TSTBR14 (tbnz, taken)                0x7b14 (0x0bad if not taken)
//   reloc_adr                ADR_PREL_LO21                        addr(reloc_target_text)
//   reloc_adrp               ADR_PREL_PG_HI21                     addr(reloc_target_data) & !0xfff
//   reloc_adrp_nc            ADR_PREL_PG_HI21_NC                  addr(reloc_target_data) & !0xfff
//   reloc_adrp_add           ADR_PREL_PG_HI21, ADD_ABS_LO12_NC    addr(reloc_target_data)
//   reloc_ldst8              ADRP, LDST8_ABS_LO12_NC   (ldrb)     0xa8
//   reloc_ldst16             ADRP, LDST16_ABS_LO12_NC  (ldrh)     0xa516
//   reloc_ldst32             ADRP, LDST32_ABS_LO12_NC  (ldr w)    0xa532_3232
//   reloc_ldst64             ADRP, LDST64_ABS_LO12_NC  (ldr x)    0xa564_6464_6464_6464
//   reloc_ldst128            ADRP, LDST128_ABS_LO12_NC (ldr q)    0x1281_1281_1280_1280
//                              (the two halves 0x0000_0000_1280_1280 and 0x1281_1281_0000_0000,
//                              XORed; uses v0, so the FPU must be enabled)
//   reloc_movw_g3            MOVW_UABS_G3, G2_NC, G1_NC, G0_NC    addr(reloc_target_data)
//                                                                   + 0x1234_5678_0000_0000
//   reloc_movw_g2            MOVW_UABS_G2, G1_NC, G0_NC           addr(reloc_target_data)
//                                                                   + 0x0000_0abc_0000_0000
//   reloc_movw_g1            MOVW_UABS_G1, G0_NC                  addr(reloc_target_data)
//   reloc_movw_g0            MOVW_UABS_G0 kernel_small_value      0x1234
//   reloc_target_text        (the ADR target; no relocation)      0x7e47
//   (The MOVW addends put bits in the G3 and G2 fields, which are zero for a low address.)
//
//   data word (section)              relocation   width  expect
//   reloc_data_abs64 (.rodata)       ABS64        8      word == addr(reloc_target_data)
//   reloc_data_abs32 (.rodata)       ABS32        4      word == addr(reloc_target_data)
//   reloc_data_abs16 (.rodata)       ABS16        2      word == 0x1234
//   reloc_data_prel64 (.rodata)      PREL64       8      addr(reloc_data_prel64) + word
//                                                          == addr(reloc_target_data)
//   reloc_data_abs64_local (.rodata) ABS64 (.rodata.relocs_values + addend), 8:
//                                    the 8 bytes at word are 0xa564_6464_6464_6464
//   reloc_data_prel32 (.data)        PREL32       4      addr(reloc_data_prel32) + sext(word)
//                                                          == addr(reloc_target_data)
//   reloc_data_prel16 (.data)        PREL16       2      addr(reloc_data_prel16) + sext(word)
//                                                          == addr(reloc_prel16_target)
//
//   targets: reloc_target_data (.data.relocs_target, 8 bytes, 0x7a26_7a26_7a26_7a26),
//   reloc_prel16_target (.data.relocs_target, 8 bytes, 0x1616_1616_1616_1616),
//   reloc_target_text (.text.relocs_far, a function).
//
// The module has no module_init or module_exit.

// ---- Code: every function is extern "C" fn() -> u64 ----------------------------------------

    .section .text.relocs, "ax", %progbits
    .balign 4

    .globl reloc_call26
    .type reloc_call26, %function
reloc_call26:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    bl .Lcall26_target
    add x0, x0, #1
    ldp x29, x30, [sp], #16
    ret
    .size reloc_call26, . - reloc_call26

    .globl reloc_call26_kernel
    .type reloc_call26_kernel, %function
reloc_call26_kernel:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    mov x0, #0x4000
    mov x1, #0x42
    bl kernel_add
    ldp x29, x30, [sp], #16
    ret
    .size reloc_call26_kernel, . - reloc_call26_kernel

    .globl reloc_jump26
    .type reloc_jump26, %function
reloc_jump26:
    b .Ljump26_target
    .size reloc_jump26, . - reloc_jump26

    .globl reloc_condbr19
    .type reloc_condbr19, %function
reloc_condbr19:
    mov x1, #1
    cmp x1, #1
    b.eq .Lcondbr19_target
    mov x0, #0x0bad
    ret
    .size reloc_condbr19, . - reloc_condbr19

    .globl reloc_tstbr14
    .type reloc_tstbr14, %function
reloc_tstbr14:
    mov x1, #4
    tbnz x1, #2, .Ltstbr14_target
    mov x0, #0x0bad
    ret
    .size reloc_tstbr14, . - reloc_tstbr14

    .globl reloc_adr
    .type reloc_adr, %function
reloc_adr:
    adr x0, reloc_target_text
    ret
    .size reloc_adr, . - reloc_adr

    .globl reloc_adrp
    .type reloc_adrp, %function
reloc_adrp:
    adrp x0, reloc_target_data
    ret
    .size reloc_adrp, . - reloc_adrp

    .globl reloc_adrp_nc
    .type reloc_adrp_nc, %function
reloc_adrp_nc:
    adrp x0, :pg_hi21_nc:reloc_target_data
    ret
    .size reloc_adrp_nc, . - reloc_adrp_nc

    .globl reloc_adrp_add
    .type reloc_adrp_add, %function
reloc_adrp_add:
    adrp x0, reloc_target_data
    add x0, x0, #:lo12:reloc_target_data
    ret
    .size reloc_adrp_add, . - reloc_adrp_add

    .globl reloc_ldst8
    .type reloc_ldst8, %function
reloc_ldst8:
    adrp x0, .Lvalue8
    ldrb w0, [x0, #:lo12:.Lvalue8]
    ret
    .size reloc_ldst8, . - reloc_ldst8

    .globl reloc_ldst16
    .type reloc_ldst16, %function
reloc_ldst16:
    adrp x0, .Lvalue16
    ldrh w0, [x0, #:lo12:.Lvalue16]
    ret
    .size reloc_ldst16, . - reloc_ldst16

    .globl reloc_ldst32
    .type reloc_ldst32, %function
reloc_ldst32:
    adrp x0, .Lvalue32
    ldr w0, [x0, #:lo12:.Lvalue32]
    ret
    .size reloc_ldst32, . - reloc_ldst32

    .globl reloc_ldst64
    .type reloc_ldst64, %function
reloc_ldst64:
    adrp x0, .Lvalue64
    ldr x0, [x0, #:lo12:.Lvalue64]
    ret
    .size reloc_ldst64, . - reloc_ldst64

    .globl reloc_ldst128
    .type reloc_ldst128, %function
reloc_ldst128:
    adrp x0, .Lvalue128
    ldr q0, [x0, #:lo12:.Lvalue128]
    fmov x0, d0
    mov x1, v0.d[1]
    eor x0, x0, x1
    ret
    .size reloc_ldst128, . - reloc_ldst128

    .globl reloc_movw_g3
    .type reloc_movw_g3, %function
reloc_movw_g3:
    movz x0, #:abs_g3:reloc_target_data + 0x1234567800000000
    movk x0, #:abs_g2_nc:reloc_target_data + 0x1234567800000000
    movk x0, #:abs_g1_nc:reloc_target_data + 0x1234567800000000
    movk x0, #:abs_g0_nc:reloc_target_data + 0x1234567800000000
    ret
    .size reloc_movw_g3, . - reloc_movw_g3

    .globl reloc_movw_g2
    .type reloc_movw_g2, %function
reloc_movw_g2:
    movz x0, #:abs_g2:reloc_target_data + 0xabc00000000
    movk x0, #:abs_g1_nc:reloc_target_data + 0xabc00000000
    movk x0, #:abs_g0_nc:reloc_target_data + 0xabc00000000
    ret
    .size reloc_movw_g2, . - reloc_movw_g2

    .globl reloc_movw_g1
    .type reloc_movw_g1, %function
reloc_movw_g1:
    movz x0, #:abs_g1:reloc_target_data
    movk x0, #:abs_g0_nc:reloc_target_data
    ret
    .size reloc_movw_g1, . - reloc_movw_g1

    .globl reloc_movw_g0
    .type reloc_movw_g0, %function
reloc_movw_g0:
    movz x0, #:abs_g0:kernel_small_value
    ret
    .size reloc_movw_g0, . - reloc_movw_g0

// ---- The branch targets, in another text section ----------------------------------------------
// reloc_target_text first, so the local labels after it are at non-zero offsets (addends).

    .section .text.relocs_far, "ax", %progbits
    .balign 4

    .globl reloc_target_text
    .type reloc_target_text, %function
reloc_target_text:
    mov x0, #0x7e47
    ret
    .size reloc_target_text, . - reloc_target_text

.Lcall26_target:
    mov x0, #0xca25
    ret

.Ljump26_target:
    mov x0, #0x1a26
    ret

.Lcondbr19_target:
    mov x0, #0xc019
    ret

.Ltstbr14_target:
    mov x0, #0x7b14
    ret

// ---- The values the LDSTn functions load -----------------------------------------------------
// After a guard of other bytes, so every value is at a non-zero lo12 (0x10 to 0x2e from the
// section start), where a wrong lo12 or a wrong scaling of it reads a different value.

    .section .rodata.relocs_values, "a", %progbits
    .balign 16
    .quad 0xeeeeeeeeeeeeeeee, 0xeeeeeeeeeeeeeeee
.Lvalue128:
    .quad 0x0000000012801280, 0x1281128100000000
.Lvalue64:
    .quad 0xa564646464646464
.Lvalue32:
    .word 0xa5323232
.Lvalue16:
    .hword 0xa516
.Lvalue8:
    .byte 0xa8
    .byte 0xee

// ---- Data relocations in read-only data (absolute, or 64-bit relative) -----------------------

    .section .rodata, "a", %progbits
    .balign 8

    .globl reloc_data_abs64
    .type reloc_data_abs64, %object
reloc_data_abs64:
    .quad reloc_target_data
    .size reloc_data_abs64, 8

    .globl reloc_data_prel64
    .type reloc_data_prel64, %object
reloc_data_prel64:
    .quad reloc_target_data - .
    .size reloc_data_prel64, 8

    .globl reloc_data_abs64_local
    .type reloc_data_abs64_local, %object
reloc_data_abs64_local:
    .quad .Lvalue64
    .size reloc_data_abs64_local, 8

    .globl reloc_data_abs32
    .type reloc_data_abs32, %object
reloc_data_abs32:
    .word reloc_target_data
    .size reloc_data_abs32, 4

    .globl reloc_data_abs16
    .type reloc_data_abs16, %object
reloc_data_abs16:
    .hword kernel_small_value
    .size reloc_data_abs16, 2

// ---- Data relocations in writable data, to writable data (PREL32, PREL16) ----------------------

    .section .data, "aw", %progbits
    .balign 8

    .globl reloc_data_prel32
    .type reloc_data_prel32, %object
reloc_data_prel32:
    .word reloc_target_data - .
    .size reloc_data_prel32, 4

    .globl reloc_data_prel16
    .type reloc_data_prel16, %object
reloc_data_prel16:
    .hword reloc_prel16_target - .
    .size reloc_data_prel16, 2

// ---- The targets: another data section, at non-zero offsets in it ----------------------------

    .section .data.relocs_target, "aw", %progbits
    .balign 16
    .quad 0xdddddddddddddddd

    .globl reloc_prel16_target
    .type reloc_prel16_target, %object
reloc_prel16_target:
    .quad 0x1616161616161616
    .size reloc_prel16_target, 8

    .globl reloc_target_data
    .type reloc_target_data, %object
reloc_target_data:
    .quad 0x7a267a267a267a26
    .size reloc_target_data, 8
