/*
 * mmioloop: 50000 rounds of an MMIO write to the scratch device and a read back, then halt. The MMIO
 * exit benchmark (scripts/bench_exits.py), beside pioloop's port I/O.
 *
 * Mode: protected (32-bit flat), loaded and entered at 0x1000:
 *     minivmm boot guest/mmioloop.bin --mode protected
 * Prints nothing. Exits (vCPU 0): MMIO write 0xd0000000 len 4 and MMIO read 0xd0000000 len 4, each
 * x50000, alternating, then HLT. Other vCPUs halt at once.
 */
    .include "layout.inc"
    .code32
    .text
    .globl _start
_start:
    test    %esi, %esi
    jnz     halt
    mov     $50000, %ecx
    mov     $SCRATCH, %ebx
loop_:
    mov     %ecx, (%ebx)
    mov     (%ebx), %eax
    dec     %ecx
    jnz     loop_
halt:
    hlt
    jmp     halt
