/*
 * Multiboot (v1) header and entry point of the tiny test guest.
 * QEMU's -kernel loader finds the header in the first 8 KiB of the ELF
 * file and enters _start in 32-bit protected mode, flat segments,
 * paging off, interrupts off.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000000     /* no module alignment, no memory info */

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    cli
    cld
    mov $stack_top, %esp
    /* Clear .bss (the stack lives there too; nothing is on it yet). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    call tiny_main
1:  hlt
    jmp 1b

    .section .bss
    .balign 16
stack_bottom:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
