/*
 * mmiowalk: reads ever-new MMIO addresses, 8 bytes apart from 0x20000000 (above RAM, no memslot and no
 * device there): every read exits, each at an address no exit used before. A guest can drive the
 * VMM's per-address state this way; the shadow's memory must stay flat however far it walks.
 *
 * Mode: long (the VMM identity-maps 4 GiB), loaded and entered at 0x1000:
 *     minivmm boot guest/mmiowalk.bin --mode long --guest-iterations 1000000 --timeout 60
 * ITERATIONS (from the control device, --guest-iterations) reads, then it prints and halts; with
 * --guest-iterations 0x10000000 or more it walks into the MMIO window, so keep it below (the default,
 * 20000, and anything up to ten million stay below 0x25000000).
 * Prints (debug console): "mmiowalk: ok\n".
 * Exits (vCPU 0): MMIO read (ITERATIONS), MMIO read (one per walked address, ITERATIONS of them), IO
 *                 out port 0xe9 x13, HLT. Every other vCPU halts at once.
 */
    .include "layout.inc"
    .code64
    .set    WALK, 0x20000000
    .text
    .globl _start
_start:
    test    %rsi, %rsi
    jnz     halt
    mov     $CONTROL, %ebp              /* zero-extends */
    mov     8(%rbp), %ecx               /* ITERATIONS */
    mov     $WALK, %ebx
1:  mov     (%rbx), %eax                /* the issue's walker: mov (%rbx),%eax; add $8,%rbx; jmp 1b */
    add     $8, %rbx
    dec     %rcx
    jnz     1b
    lea     ok(%rip), %rsi
    mov     $ok_len, %ecx
    mov     $DEBUGCON, %dx
    cld
    rep outsb
halt:
    hlt
    jmp     halt

ok:     .ascii "mmiowalk: ok\n"
    .set ok_len, . - ok
