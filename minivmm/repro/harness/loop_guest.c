/* The run op's guest, at LOOP_ADDR in real mode: mov dx, 0x80; out dx, al; jmp $-3 (an exit per loop). */
static void load_loop_guest(void *where)
{
	static const unsigned char loop_guest[] = { LOOP_GUEST_BYTES };

	memcpy(where, loop_guest, sizeof(loop_guest));
}
