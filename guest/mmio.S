/*
 * mmio: exercise the MMIO scratch device and the ioeventfd doorbell from 32-bit protected mode.
 *
 * Mode: protected (32-bit flat), loaded and entered at 0x1000:
 *     minivmm boot guest/mmio.bin --mode protected
 * 1. Writes a byte, a word and a dword to the scratch device (0xd0000000) and reads each back.
 * 2. Rings the doorbell (0xd0001000) three times with 4-byte writes: the kernel's ioeventfd takes
 *    them, so they never exit; then reads the doorbell, which answers with the kernel's count (3).
 * Prints (debug console, port 0xe9, with rep outsb): "mmio: scratch ok\nmmio: doorbell ok\n",
 * or "mmio: FAIL scratch\n" / "mmio: FAIL doorbell\n" where a check failed. Then halts.
 * Exits (vCPU 0): MMIO write x3, MMIO read x3, IO out port 0xe9 x17 ("mmio: scratch ok\n": KVM emulates
 *                 OUTS one iteration per exit), MMIO read x1 (doorbell), IO out port 0xe9 x18, HLT.
 *                 No exit for the three doorbell writes.
 * Every other vCPU halts at once.
 */
    .include "layout.inc"
    .code32
    .text
    .globl _start
_start:
    test    %esi, %esi
    jnz     halt
    mov     $SCRATCH, %ebx
    movb    $0x5a, (%ebx)
    movw    $0xbeef, 2(%ebx)
    movl    $0xdeadbeef, 4(%ebx)
    cmpb    $0x5a, (%ebx)
    jne     fail_scratch
    cmpw    $0xbeef, 2(%ebx)
    jne     fail_scratch
    cmpl    $0xdeadbeef, 4(%ebx)
    jne     fail_scratch
    mov     $ok_scratch, %esi
    mov     $ok_scratch_len, %ecx
    call    print

    mov     $DOORBELL, %ebx
    movl    $1, (%ebx)
    movl    $2, (%ebx)
    movl    $3, (%ebx)
    mov     (%ebx), %eax
    cmp     $3, %eax
    jne     fail_doorbell
    mov     $ok_doorbell, %esi
    mov     $ok_doorbell_len, %ecx
    call    print
halt:
    hlt
    jmp     halt

fail_scratch:
    mov     $bad_scratch, %esi
    mov     $bad_scratch_len, %ecx
    call    print
    jmp     halt
fail_doorbell:
    mov     $bad_doorbell, %esi
    mov     $bad_doorbell_len, %ecx
    call    print
    jmp     halt

/* print: write ECX bytes at ESI to the debug console with one string-I/O instruction. */
print:
    mov     $DEBUGCON, %dx
    cld
    rep outsb
    ret

ok_scratch:     .ascii "mmio: scratch ok\n"
    .set ok_scratch_len, . - ok_scratch
ok_doorbell:    .ascii "mmio: doorbell ok\n"
    .set ok_doorbell_len, . - ok_doorbell
bad_scratch:    .ascii "mmio: FAIL scratch\n"
    .set bad_scratch_len, . - bad_scratch
bad_doorbell:   .ascii "mmio: FAIL doorbell\n"
    .set bad_doorbell_len, . - bad_doorbell
