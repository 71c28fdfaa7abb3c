/*
 * hello: print a greeting through the serial port (COM1 at 0x3f8), then halt.
 *
 * Mode: real (16-bit, CS base 0), loaded and entered at 0x1000:
 *     minivmm boot guest/hello.bin
 * Prints: "Hello from a minivmm guest!\n"
 * Exits (vCPU 0), for each of the 28 bytes: IO in  port 0x3fd (LSR: transmitter empty?),
 *                                           IO out port 0x3f8 (THR: the byte);
 *        then one HLT. Every other vCPU (RSI != 0) halts at once: one HLT.
 */
    .include "layout.inc"
    .code16
    .text
    .globl _start
_start:
    test    %si, %si            /* the VMM puts the vCPU index in RSI */
    jnz     halt
    mov     $msg, %bx
next_byte:
    movb    (%bx), %cl          /* DS base is 0 */
    test    %cl, %cl
    jz      halt
    mov     $COM1 + 5, %dx      /* LSR */
wait_thre:
    inb     %dx, %al
    test    $0x20, %al          /* THRE: the holding register is empty */
    jz      wait_thre
    mov     $COM1, %dx         /* THR */
    mov     %cl, %al
    outb    %al, %dx
    inc     %bx
    jmp     next_byte
halt:
    hlt
    jmp     halt

msg:
    .asciz  "Hello from a minivmm guest!\n"
