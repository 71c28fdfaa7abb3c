/*
 * pioloop: 100000 port writes to the serial scratch register (0x3ff), then halt. The exit benchmark.
 *
 * Mode: real, loaded at 0x1000:   minivmm boot guest/pioloop.bin
 * Prints nothing. Exits (vCPU 0): IO out port 0x3ff x100000, then HLT. Other vCPUs halt at once.
 * scripts/bench_exits.py runs it under minivmm and under a C reference VMM.
 */
    .include "layout.inc"
    .code16
    .text
    .globl _start
_start:
    test    %si, %si
    jnz     halt
    mov     $100000, %ecx
    mov     $COM1 + 7, %dx
loop_:
    outb    %al, %dx
    dec     %ecx
    jnz     loop_
halt:
    hlt
    jmp     halt
