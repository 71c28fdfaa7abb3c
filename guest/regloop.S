/*
 * regloop: one vCPU registers doorbells through the control device, rings each at once, unregisters
 * them, rings each once more, and reports its writes. A round covers the 16 slots; there are
 * ITERATIONS / 16 rounds (ITERATIONS is read from the control device: that many registrations).
 *
 * Mode: protected, loaded at 0x1000:   minivmm boot guest/regloop.bin --mode protected --timeout 60
 * This is the ordering guarantee of Keir Fraser's "[PATCH v2 3/4] KVM: Implement barriers before
 * accessing kvm->buses[] on SRCU read paths" (Jul 16 2025) made observable: the four writes right
 * after an acknowledged registration must be completed in the kernel (no exit); the write after an
 * acknowledged deregistration must exit. The shadow checks both, and reconciles the eventfd counts
 * with the reports (4 in the kernel + 1 in userspace = 5 per slot and round).
 * Why slots in batches: on a kernel that frees the old bus with call_srcu(), a deregistration's
 * synchronize_srcu_expedited() right after a registration waits for the grace period that
 * registration started, (1, 2] jiffies. Batching pays that once per round, not once per registration.
 * Prints (debug console): "regloop: ok\n", or "regloop: FAIL\n" if a command was refused.
 * Exits per slot and round: MMIO write (register), MMIO read (ack), MMIO write (unregister), MMIO read
 *                           (ack), MMIO write (the doorbell, now unregistered), MMIO write (report).
 */
    .include "layout.inc"
    .code32
    .text
    .globl _start
_start:
    test    %esi, %esi
    jnz     halt
    mov     $CONTROL, %ebp
    mov     8(%ebp), %edi               /* ITERATIONS: registrations wanted */
    shr     $4, %edi                    /* rounds of 16 */
    jnz     1f
    inc     %edi
1:  xor     %ebx, %ebx                  /* round */
round:
    xor     %ecx, %ecx                  /* slot */
reg_slot:
    mov     %ecx, %eax
    shl     $16, %eax
    or      $0x01000000, %eax           /* op 1: register */
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax               /* the acknowledgement */
    test    %eax, %eax
    jnz     fail
    mov     %ecx, %edx
    shl     $12, %edx
    add     $DYN, %edx                  /* the slot's doorbell */
    movl    $1, (%edx)                  /* four writes the kernel must complete */
    movl    $2, (%edx)
    movl    $3, (%edx)
    movl    $4, (%edx)
    inc     %ecx
    cmp     $SLOTS, %ecx
    jb      reg_slot
    xor     %ecx, %ecx
unreg_slot:
    mov     %ecx, %eax
    shl     $16, %eax
    or      $0x02000000, %eax           /* op 2: unregister */
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax
    test    %eax, %eax
    jnz     fail
    mov     %ecx, %edx
    shl     $12, %edx
    add     $DYN, %edx
    movl    $5, (%edx)                  /* must exit now */
    mov     %ecx, %eax
    shl     $16, %eax
    or      $0x03000005, %eax           /* op 3: report 5 writes on this slot */
    mov     %eax, (%ebp)
    inc     %ecx
    cmp     $SLOTS, %ecx
    jb      unreg_slot
    inc     %ebx
    cmp     %edi, %ebx
    jb      round
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

ok:     .ascii "regloop: ok\n"
    .set ok_len, . - ok
bad:    .ascii "regloop: FAIL\n"
    .set bad_len, . - bad
