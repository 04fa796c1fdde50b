// Boot: where the kernel runs depends on where the firmware or QEMU started it. Entered at EL2 it
// stays at EL2, as a hypervisor does (with VHE, HCR_EL2.E2H = 1, where the CPU has it: the EL2&0
// regime; else the EL2 regime of Armv8.0, as on Cortex-A72). Entered at EL1 it runs at EL1.
// Entered at EL3 it drops to EL1 (the firmware-like path). Then CPU 0 zeroes .bss, takes its stack
// and calls `kernel_entry` (Rust). Other CPUs wait in the park loop until `runtime::smp` releases
// them into its MMU trampoline.
// Entered at EL3, every CPU first does what firmware would (`el3_firmware_setup`: CNTFRQ_EL0, the
// GIC's security groups), and EL2 gets a minimal stub (VBAR_EL2), so an HVC from EL1 has somewhere
// to go: it can raise a virtual SError, which is how the tests provoke one.
//
// Register use before Rust runs (no stack yet):
//   x19 = this CPU's index (its MPIDR's place in CPU_AFFINITY; 0 for the boot CPU)
//   x20 = x0 at entry (device tree pointer, if any)
//   x21 = exception level at entry (1..3)

.equ SPSR_EL1H_DAIF_MASKED, 0x3c5      // M[3:0] = EL1h, D, A, I, F masked
.equ SCR_EL3_VALUE, 0x531              // NS | RES1[5:4] | HCE (HVC enabled) | RW (lower ELs AArch64)
.equ HCR_EL2_RW, (1 << 31)             // EL1 is AArch64; no stage 2, no traps
.equ CPTR_EL2_NO_TRAPS, 0x32ff         // RES1 bits 13:12, 9, 7:0 (Linux nVHE CPTR_EL2_RES1); TFP, TZ = 0: FP, SVE not trapped
.equ CNTHCTL_EL2_EL1_TIMER, 0x3        // EL1PCTEN | EL1PCEN: EL1 may use the physical counter/timer
.equ SCTLR_EL1_RESET, 0x30d00800       // RES1 bits; MMU, caches and alignment checks off
.equ SCTLR_EL3_RESET, 0x30c50830       // RES1 bits; MMU, caches and alignment checks off
.equ SCTLR_EL2_RESET, 0x30c50830       // the same for EL2 (without VHE), where the stub runs
.equ HCR_EL2_AMO, (1 << 5)             // physical SErrors to EL2, virtual SErrors to EL1
.equ HCR_EL2_VSE, (1 << 8)             // a virtual SError is pending
.equ ESR_EC_HVC64, 0x16
.equ CPACR_EL1_FPEN, (3 << 20)         // FP/SIMD not trapped at EL1 or EL0
.equ HCR_EL2_IMO_FMO_AMO, 0x38         // physical IRQ, FIQ and SError taken to EL2 (else masked there)
.equ HCR_EL2_E2H, (1 << 34)            // VHE: the EL2&0 regime, EL1 register layouts at EL2
.equ CPTR_EL2_VHE_FPEN, (3 << 20)      // E2H = 1 (CPACR layout): FP/SIMD not trapped
.equ CPTR_EL2_VHE_ZEN, (3 << 16)       // ... and SVE not trapped (only where SVE exists: else RES0)
.equ CNTHCTL_EL2_VHE_EL1_TIMER, 0xc03  // E2H = 1 layout: EL1PCTEN [10], EL1PCEN [11], EL0 [1:0]

.section .text.boot, "ax"
.global _start
_start:
    msr     daifset, #0xf                   // whatever the loader left: no exception before vectors
    mov     x20, x0
    bl      .Lcpu_index
    msr     tpidrro_el0, x19                // this CPU's index, for Rust (runtime::smp::this_cpu)
    mrs     x21, CurrentEL
    lsr     x21, x21, #2
    cmp     x21, #3
    b.eq    .Lfrom_el3
    cmp     x21, #2
    b.eq    .Lfrom_el2
    b       .Lat_el1

.Lfrom_el3:
    // SCTLR_EL3 resets to UNKNOWN values on hardware: MMU, caches and alignment checks off before
    // any Rust runs here, and an exception at EL3 parks the CPU instead of jumping through an
    // UNKNOWN VBAR_EL3.
    ldr     x1, =SCTLR_EL3_RESET
    msr     sctlr_el3, x1
    adrp    x1, el3_park_vectors
    add     x1, x1, :lo12:el3_park_vectors
    msr     vbar_el3, x1
    isb
    ldr     x1, =SCR_EL3_VALUE
    msr     scr_el3, x1
    msr     cptr_el3, xzr                   // TFP = 0: FP/SIMD not trapped to EL3
    // Cortex-A53/A57/A72: CPUECTLR_EL1.SMPEN must be set before caches, the MMU or broadcast
    // maintenance are used, or this core stays outside coherency (A72 TRM 4.3.67). Firmware does
    // it when it enters us at EL2 (the Pi's armstub8); entered at EL3, we do.
    mrs     x1, midr_el1
    ubfx    x2, x1, #24, #8                 // implementer
    cmp     x2, #0x41
    b.ne    1f
    ubfx    x2, x1, #4, #12                 // part number
    cmp     x2, #0xd03                      // Cortex-A53
    b.eq    2f
    cmp     x2, #0xd07                      // Cortex-A57
    b.eq    2f
    cmp     x2, #0xd08                      // Cortex-A72
    b.ne    1f
2:  mrs     x1, S3_1_C15_C2_1               // CPUECTLR_EL1
    orr     x1, x1, #(1 << 6)               // SMPEN
    msr     S3_1_C15_C2_1, x1
    isb
1:  // The firmware's part, on this CPU's boot stack (Rust, MMU off; .bss is not zeroed yet).
    cmp     x19, #{MAX_CPUS}
    b.hs    4f
    mov     x0, x19
    bl      .Lstack_top_for_cpu
    mov     sp, x0
    mov     x0, x19
    mov     x1, x20
    bl      el3_firmware_setup
4:  // EL2 registers exist only if EL2 is implemented (ID_AA64PFR0_EL1.EL2, bits [11:8]).
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #8, #4
    cbz     x1, 3f
    bl      .Lsetup_el2_for_el1
3:  adr     x1, .Lat_el1
    msr     elr_el3, x1
    mov     x1, #SPSR_EL1H_DAIF_MASKED
    msr     spsr_el3, x1
    isb
    eret

.Lfrom_el2:
    // Stay: the kernel is the hypervisor. VHE where ID_AA64MMFR1_EL1.VH (bits [11:8]) says so
    // (required where E2H is RES1); E2H is set first, because it changes the layout of SCTLR_EL2,
    // CPTR_EL2 and TCR_EL2 written after it.
    ldr     x1, =HCR_EL2_RW | HCR_EL2_IMO_FMO_AMO
    mrs     x2, id_aa64mmfr1_el1
    ubfx    x2, x2, #8, #4
    cbz     x2, 1f
    orr     x1, x1, #HCR_EL2_E2H
1:  msr     hcr_el2, x1
    isb
    cbz     x2, 2f
    ldr     x1, =SCTLR_EL1_RESET             // E2H = 1: SCTLR_EL2 has the SCTLR_EL1 layout
    bl      .Lvhe_cptr_el2
    b       3f
2:  ldr     x1, =SCTLR_EL2_RESET
    ldr     x3, =CPTR_EL2_NO_TRAPS
3:  msr     sctlr_el2, x1
    msr     cptr_el2, x3
    msr     hstr_el2, xzr
    mrs     x1, pmcr_el0                    // no debug or PMU traps (MDCR_EL2 resets UNKNOWN)
    ubfx    x1, x1, #11, #5
    msr     mdcr_el2, x1
    msr     spsel, #1
    adrp    x1, exception_vectors_el2
    add     x1, x1, :lo12:exception_vectors_el2
    msr     vbar_el2, x1
    isb
    b       .Lcommon

// x3 = CPTR_EL2 with nothing trapped, in the E2H = 1 (CPACR) layout: FPEN, and ZEN where
// ID_AA64PFR0_EL1.SVE (bits [35:32]) says SVE exists. Clobbers x4; `ret` (x30).
.Lvhe_cptr_el2:
    ldr     x3, =CPTR_EL2_VHE_FPEN
    mrs     x4, id_aa64pfr0_el1
    ubfx    x4, x4, #32, #4
    cbz     x4, 1f
    orr     x3, x3, #CPTR_EL2_VHE_ZEN
1:  ret

// The EL2 state that EL1 depends on, when the kernel was entered at EL3 and drops to EL1. Where
// HCR_EL2.E2H is RES1 (a VHE-only core) it reads back as 1 whatever is written, and SCTLR_EL2,
// CPTR_EL2 and CNTHCTL_EL2 then have their E2H = 1 layouts: the values follow what HCR_EL2 says.
// Uses x1..x4 and x30 (saved in x5); returns with `ret`, no stack.
.Lsetup_el2_for_el1:
    mov     x5, x30
    ldr     x1, =HCR_EL2_RW
    msr     hcr_el2, x1
    isb
    mrs     x2, hcr_el2
    ubfx    x2, x2, #34, #1                  // E2H as it reads back
    // The stub below runs at EL2: its MMU, caches and alignment checks off (SCTLR_EL2 resets to
    // UNKNOWN values when entered at EL3).
    ldr     x1, =SCTLR_EL2_RESET
    cbz     x2, 6f
    ldr     x1, =SCTLR_EL1_RESET
6:  msr     sctlr_el2, x1
    adrp    x1, el2_stub_vectors
    add     x1, x1, :lo12:el2_stub_vectors
    msr     vbar_el2, x1
    // No debug or PMU traps to EL2, and every PMU counter to EL1 (MDCR_EL2.HPMN = PMCR_EL0.N);
    // its reset value is UNKNOWN too.
    mrs     x1, pmcr_el0
    ubfx    x1, x1, #11, #5
    msr     mdcr_el2, x1
    // With FEAT_RAS (ID_AA64PFR0_EL1.RAS, bits [31:28]) a virtual SError's syndrome is VSESR_EL2.
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #28, #4
    cbz     x1, 5f
    msr     S3_4_C5_C2_3, xzr                // VSESR_EL2
5:
    ldr     x3, =CPTR_EL2_NO_TRAPS
    mov     x1, #CNTHCTL_EL2_EL1_TIMER
    cbz     x2, 7f
    bl      .Lvhe_cptr_el2
    ldr     x1, =CNTHCTL_EL2_VHE_EL1_TIMER
7:  msr     cptr_el2, x3
    msr     cnthctl_el2, x1
    msr     hstr_el2, xzr
    msr     cntvoff_el2, xzr
    // EL1 reads of MIDR_EL1 and MPIDR_EL1 return VPIDR_EL2 and VMPIDR_EL2, whose reset values are
    // UNKNOWN: give EL1 the real identity.
    mrs     x1, midr_el1
    msr     vpidr_el2, x1
    mrs     x1, mpidr_el1
    msr     vmpidr_el2, x1
    mov     x30, x5
    ret

.Lat_el1:
    msr     spsel, #1
    ldr     x1, =SCTLR_EL1_RESET
    msr     sctlr_el1, x1
    // FP/SIMD before any Rust: aarch64-unknown-none code uses SIMD registers (memcpy, formatting).
    mov     x1, #CPACR_EL1_FPEN
    msr     cpacr_el1, x1
    adrp    x1, exception_vectors_el1
    add     x1, x1, :lo12:exception_vectors_el1
    msr     vbar_el1, x1
    isb
.Lcommon:
    cbnz    x19, .Lpark_secondary

    // .bss is zero for Rust; the region is 16-byte aligned by the linker script.
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end_exclusive
    add     x2, x2, :lo12:__bss_end_exclusive
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:
    mov     x0, x19
    bl      .Lstack_top_for_cpu
    mov     sp, x0
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x20
    mov     x1, x21
    bl      kernel_entry
3:  wfe                                     // kernel_entry does not return
    b       3b

// Secondary CPUs wait, at the kernel's level with the MMU off, until `SECONDARY_ENTRY[cpu]` holds an entry
// address; they then take their own stack and jump there with x0 = cpu. The table lives in .data
// (not .bss) so it reads as zero before CPU 0 has zeroed .bss. The releasing CPU must write the
// entry with a cache clean to the point of coherency and then `SEV`.
.Lpark_secondary:
    cmp     x19, #{MAX_CPUS}
    b.hs    3b                              // a CPU we have no stack for stays parked for good
    adrp    x1, SECONDARY_ENTRY
    add     x1, x1, :lo12:SECONDARY_ENTRY
4:  wfe
    ldr     x3, [x1, x19, lsl #3]
    cbz     x3, 4b
    mov     x0, x19
    bl      .Lstack_top_for_cpu             // clobbers x1, x2: the entry is in x3
    mov     sp, x0
    mov     x0, x19
    br      x3

// x19 = this CPU's index: the place of its MPIDR affinity (Aff3..Aff0) in CPU_AFFINITY, from 1
// (the other CPUs, written by CPU 0 from the device tree before it starts them, or the board's
// list of CPUs its loader starts together with the boot CPU); a CPU not listed there is the boot
// CPU, index 0, and records its affinity at CPU_AFFINITY[0] (any later one gets MAX_CPUS and
// stays parked). Memory is read and written with the
// MMU off (CPU 0 cleans the table to the point of coherency). Clobbers x1..x3.
.Lcpu_index:
    mrs     x1, mpidr_el1
    ubfx    x2, x1, #32, #8                 // Aff3
    and     x1, x1, #0xffffff               // Aff2..Aff0
    orr     x1, x1, x2, lsl #32
    adrp    x2, CPU_AFFINITY
    add     x2, x2, :lo12:CPU_AFFINITY
    mov     x19, #1
1:  ldr     x3, [x2, x19, lsl #3]
    cmp     x3, x1
    b.eq    2f
    add     x19, x19, #1
    cmp     x19, #{MAX_CPUS}
    b.lo    1b
    ldr     x3, [x2]
    cmn     x3, #1                          // CPU_AFFINITY[0] all ones: no boot CPU yet
    b.ne    3f
    mov     x19, #0
    str     x1, [x2]
    ret
3:  mov     x19, #{MAX_CPUS}                // a CPU the kernel did not start: parked for good
2:  ret

// x0 = cpu -> x0 = top of that CPU's boot stack. Stacks sit above their guard page:
// [guard][stack 0][guard][stack 1]... (see linker.ld). Clobbers x1, x2.
.Lstack_top_for_cpu:
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    ldr     x2, ={STACK_SLOT}
    madd    x0, x0, x2, x2
    add     x0, x0, x1
    ret
.ltorg

// The EL2 stub: the vector table EL2 keeps while the kernel runs at EL1. Only an HVC #0 from EL1 is
// served, with x0 = the function (x0 = 0 on return, or -1 for an unknown one); every other entry,
// and any other trap to EL2, parks the CPU (returning would retry the trapped instruction forever). Functions (arch::aarch64::boot::El2Stub):
//   1: raise a virtual SError at EL1 (HCR_EL2.AMO | VSE; taken as soon as PSTATE.A is clear);
//   2: end it (clear AMO and VSE: physical SErrors go to EL1 again).
// While AMO is set a physical SError would be taken here and park the CPU; tests keep that window
// to a few instructions. x1 is preserved through TPIDR_EL2.
.section .text.vectors, "ax"
.balign 0x800
el2_stub_vectors:
    .rept 8                                 // current EL, SP_EL0 and SP_ELx: never used
    .balign 0x80
    b       .Lel2_stub_park
    .endr
    .balign 0x80                            // lower EL, AArch64, synchronous
    b       .Lel2_stub_sync
    .rept 7                                 // lower EL IRQ/FIQ/SError, and AArch32
    .balign 0x80
    b       .Lel2_stub_park
    .endr

.Lel2_stub_park:
    wfe
    b       .Lel2_stub_park

.Lel2_stub_sync:
    msr     tpidr_el2, x1
    mrs     x1, esr_el2
    tst     x1, #0xffff                     // ISS[15:0]: the HVC immediate, 0 for the stub
    b.ne    .Lel2_stub_park
    ubfx    x1, x1, #26, #6                 // EC
    cmp     x1, #ESR_EC_HVC64
    b.ne    .Lel2_stub_park
    cmp     x0, #1
    b.eq    .Lel2_stub_raise_vserror
    cmp     x0, #2
    b.eq    .Lel2_stub_end_vserror
    mov     x0, #-1
    b       .Lel2_stub_return
.Lel2_stub_raise_vserror:
    mrs     x1, hcr_el2
    orr     x1, x1, #HCR_EL2_AMO
    orr     x1, x1, #HCR_EL2_VSE
    msr     hcr_el2, x1
    mov     x0, #0
    b       .Lel2_stub_return
.Lel2_stub_end_vserror:
    mrs     x1, hcr_el2
    bic     x1, x1, #HCR_EL2_AMO
    bic     x1, x1, #HCR_EL2_VSE
    msr     hcr_el2, x1
    mov     x0, #0
.Lel2_stub_return:
    isb
    mrs     x1, tpidr_el2
    eret

// EL3 keeps no handlers: an exception there (the firmware duties run with the MMU off) parks.
.balign 0x800
el3_park_vectors:
    .rept 16
    .balign 0x80
    b       .Lel3_park
    .endr
.Lel3_park:
    wfe
    b       .Lel3_park
