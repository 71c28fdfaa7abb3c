/*
 * regrace: every vCPU registers its own doorbell slot (slot = vCPU index), ITERATIONS rounds of:
 * register the slot through the control device, write the doorbell (completed in the kernel), write
 * the partner vCPU's doorbell once (slot = index ^ 1: completed in the kernel or exits, depending on
 * whether the partner's slot is registered at that moment), unregister, write again (exits), and
 * report the writes on both slots. With 3 or more vCPUs a report (each one a reconciliation of every
 * doorbell's eventfd count) often runs while the partner's registration has returned in the kernel
 * but is not yet mirrored, and a partner's write was completed on it: the shadow must never count a
 * completion on a registration the kernel may already have as unaccounted.
 *
 * Mode: protected, 1 to 16 vCPUs:
 *     minivmm boot guest/regrace.bin --mode protected --vcpus 3 --guest-iterations 600 --timeout 60
 * (each deregistration waits for the grace period of the registration before it: a few ms a round).
 * Each vCPU checks every acknowledgement; the last vCPU to finish is not known, so every vCPU prints:
 * "regrace: ok\n" per vCPU (N lines for N vCPUs), or "regrace: FAIL\n" if a command was refused.
 * A spinlock in guest memory keeps the lines whole: KVM may split one vCPU's `rep outsb` into several
 * exits, and another vCPU's bytes would otherwise land between them.
 * Exits per vCPU and round: MMIO write + read (register, ack), MMIO write + read (unregister, ack),
 * MMIO write (the doorbell, now unregistered), the partner's doorbell (an MMIO write or none), two MMIO
 * writes (reports).
 */
    .include "layout.inc"
    .code32
    .text
    .globl _start
_start:
    mov     $CONTROL, %ebp
    mov     8(%ebp), %edi               /* ITERATIONS */
    mov     %esi, %ecx                  /* slot = vCPU index */
    and     $15, %ecx
    mov     %ecx, %edx
    shl     $12, %edx
    add     $DYN, %edx                  /* the slot's doorbell */
    mov     %edx, %esi
    xor     $0x1000, %esi               /* the partner's doorbell (slot ^ 1) */
    shl     $16, %ecx                   /* the slot field of a command */
    xor     %ebx, %ebx
round:
    mov     %ecx, %eax
    or      $0x01000000, %eax           /* op 1: register */
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax               /* the acknowledgement */
    test    %eax, %eax
    jnz     fail
    movl    $1, (%edx)                  /* registered and acknowledged: completed in the kernel */
    movl    $3, (%esi)                  /* the partner's doorbell: in the kernel or exits */
    mov     %ecx, %eax
    or      $0x02000000, %eax           /* op 2: unregister */
    mov     %eax, (%ebp)
    mov     4(%ebp), %eax
    test    %eax, %eax
    jnz     fail
    movl    $2, (%edx)                  /* unregistered and acknowledged: exits */
    mov     %ecx, %eax
    or      $0x03000002, %eax           /* op 3: report 2 writes on this slot */
    mov     %eax, (%ebp)
    mov     %ecx, %eax
    xor     $0x00010000, %eax           /* the partner's slot */
    or      $0x03000001, %eax           /* op 3: report 1 write on it */
    mov     %eax, (%ebp)
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
    mov     $1, %eax
print_lock_spin:
    xchg    %eax, print_lock            /* (locked) take the print lock: 0 came back if it was free */
    test    %eax, %eax
    jz      print_locked
    pause
    jmp     print_lock_spin
print_locked:
    mov     $DEBUGCON, %dx
    cld
    rep outsb
    movl    $0, print_lock
halt:
    hlt
    jmp     halt

ok:     .ascii "regrace: ok\n"
    .set ok_len, . - ok
bad:    .ascii "regrace: FAIL\n"
    .set bad_len, . - bad
    .balign 4
print_lock: .long 0                     /* in RAM with the code: the image is loaded writable */
