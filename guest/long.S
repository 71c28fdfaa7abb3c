/*
 * long: the mmio checks again, from 64-bit long mode, plus an 8-byte scratch access.
 *
 * Mode: long (64-bit; the VMM identity-maps 4 GiB with 2 MiB pages), loaded and entered at 0x1000:
 *     minivmm boot guest/long.bin --mode long
 * 1. Writes a byte, a word, a dword and a qword to the scratch device (0xd0000000), reads each back.
 * 2. Rings the doorbell (0xd0001000) three times (in-kernel, no exit), reads the count back (3).
 * Prints (debug console): "long: scratch ok\nlong: doorbell ok\n", or "long: FAIL ..." lines.
 * Exits (vCPU 0): MMIO write x4, MMIO read x4, IO out port 0xe9 x17 (one per byte: KVM emulates OUTS
 *                 one iteration per exit), MMIO read x1 (doorbell), IO out port 0xe9 x18, HLT.
 * Every other vCPU halts at once.
 */
    .include "layout.inc"
    .code64
    .text
    .globl _start
_start:
    test    %rsi, %rsi
    jnz     halt
    mov     $SCRATCH, %ebx              /* zero-extends: a 32-bit absolute would sign-extend */
    movb    $0x5a, (%rbx)
    movw    $0xbeef, 2(%rbx)
    movl    $0xdeadbeef, 4(%rbx)
    movabs  $0x0123456789abcdef, %rax
    mov     %rax, 8(%rbx)
    cmpb    $0x5a, (%rbx)
    jne     fail_scratch
    cmpw    $0xbeef, 2(%rbx)
    jne     fail_scratch
    cmpl    $0xdeadbeef, 4(%rbx)
    jne     fail_scratch
    movabs  $0x0123456789abcdef, %rax
    cmp     8(%rbx), %rax
    jne     fail_scratch
    lea     ok_scratch(%rip), %rsi
    mov     $ok_scratch_len, %ecx
    call    print

    mov     $DOORBELL, %ebx
    movl    $1, (%rbx)
    movl    $2, (%rbx)
    movl    $3, (%rbx)
    mov     (%rbx), %eax
    cmp     $3, %eax
    jne     fail_doorbell
    lea     ok_doorbell(%rip), %rsi
    mov     $ok_doorbell_len, %ecx
    call    print
halt:
    hlt
    jmp     halt

fail_scratch:
    lea     bad_scratch(%rip), %rsi
    mov     $bad_scratch_len, %ecx
    call    print
    jmp     halt
fail_doorbell:
    lea     bad_doorbell(%rip), %rsi
    mov     $bad_doorbell_len, %ecx
    call    print
    jmp     halt

print:
    mov     $DEBUGCON, %dx
    cld
    rep outsb
    ret

ok_scratch:     .ascii "long: scratch ok\n"
    .set ok_scratch_len, . - ok_scratch
ok_doorbell:    .ascii "long: doorbell ok\n"
    .set ok_doorbell_len, . - ok_doorbell
bad_scratch:    .ascii "long: FAIL scratch\n"
    .set bad_scratch_len, . - bad_scratch
bad_doorbell:   .ascii "long: FAIL doorbell\n"
    .set bad_doorbell_len, . - bad_doorbell
