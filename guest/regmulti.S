/*
 * regmulti: vCPU 0 registers and unregisters doorbells (slots 0-3 in turn) while every other vCPU
 * hammers those doorbells; ITERATIONS rounds each (read from the control device).
 *
 * Mode: protected, 2 or more vCPUs:
 *     minivmm boot guest/regmulti.bin --mode protected --vcpus 3 --guest-iterations 1000 --timeout 60
 * (each of vCPU 0's deregistrations waits for the grace period its registration started, (1, 2]
 * jiffies on a call_srcu kernel: ~8 ms a round at HZ=250, so keep the rounds to a few thousand).
 * A hammering vCPU's write is completed in the kernel or exits, depending on whether the slot is
 * registered at that moment: both are allowed, and the shadow judges every exit against the bus
 * versions around its KVM_RUN. Each hammering vCPU reports its writes per slot (every 256 rounds and
 * at the end), so the eventfd counts can be reconciled: in the kernel + in userspace = written.
 * Prints (debug console, vCPU 0 only): "regmulti: ok\n", or "regmulti: FAIL\n".
 */
    .include "layout.inc"
    .code32
    .text
    .globl _start
_start:
    /* Every vCPU enters with RSP = 0x1000: give each its own 4 KiB stack (at 0x80000 + 4 KiB * index)
     * before anything uses the stack, or the hammering vCPUs' calls and pushes race on one stack. */
    mov     %esi, %eax
    inc     %eax
    shl     $12, %eax
    add     $0x80000, %eax
    mov     %eax, %esp
    mov     $CONTROL, %ebp
    mov     8(%ebp), %edi               /* ITERATIONS */
    test    %esi, %esi
    jnz     hammer

    /* vCPU 0: the registrar. */
    xor     %ebx, %ebx
reg_round:
    mov     %ebx, %ecx
    and     $3, %ecx
    shl     $16, %ecx
    mov     %ecx, %eax
    or      $0x01000000, %eax
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax
    test    %eax, %eax
    jnz     fail
    mov     $200, %eax                  /* leave it registered for a moment */
1:  dec     %eax
    jnz     1b
    mov     %ecx, %eax
    or      $0x02000000, %eax
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax
    test    %eax, %eax
    jnz     fail
    inc     %ebx
    cmp     %edi, %ebx
    jb      reg_round
    mov     $ok, %esi
    mov     $ok_len, %ecx
    jmp     print_halt
fail:
    mov     $bad, %esi
    mov     $bad_len, %ecx
print_halt:
    mov     $DEBUGCON, %dx
    cld
    rep outsb
halt:
    hlt
    jmp     halt

    /* Other vCPUs: hammer slot (round & 3); one write per round; report every 256 rounds. */
hammer:
    xor     %ebx, %ebx
h_round:
    mov     %ebx, %edx
    and     $3, %edx
    shl     $12, %edx
    add     $DYN, %edx
    movl    %ebx, (%edx)
    inc     %ebx
    test    $0xff, %ebx
    jnz     1f
    call    report64                    /* 256 rounds: 64 writes on each of the 4 slots */
1:  cmp     %edi, %ebx
    jb      h_round
    mov     %ebx, %eax                  /* the last partial block: (rounds & 255) / 4 per slot, */
    and     $0xff, %eax                 /* rounded per slot below */
    jz      halt
    xor     %ecx, %ecx
2:  mov     %eax, %edx                  /* writes on slot ecx in the partial block: */
    sub     %ecx, %edx                  /* ceil((n - slot) / 4) when n > slot */
    jle     3f
    add     $3, %edx
    shr     $2, %edx
    push    %eax
    mov     %ecx, %eax
    shl     $16, %eax
    or      %edx, %eax
    or      $0x03000000, %eax
    mov     %eax, (%ebp)
    pop     %eax
3:  inc     %ecx
    cmp     $4, %ecx
    jb      2b
    jmp     halt

report64:                               /* report 64 writes on each slot */
    push    %ecx
    xor     %ecx, %ecx
4:  mov     %ecx, %eax
    shl     $16, %eax
    or      $0x03000040, %eax
    mov     %eax, (%ebp)
    inc     %ecx
    cmp     $4, %ecx
    jb      4b
    pop     %ecx
    ret

ok:     .ascii "regmulti: ok\n"
    .set ok_len, . - ok
bad:    .ascii "regmulti: FAIL\n"
    .set bad_len, . - bad
