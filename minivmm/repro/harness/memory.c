/* Guest memory: an anonymous private mapping, kept as vm->mem[i] (unmapped after the VM is closed). */
static void *map_memory(struct vm *vm, int i, size_t size)
{
	void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (mem == MAP_FAILED)
		die("mmap of %zu bytes of guest memory: %s", size, strerror(errno));
	vm->mem[i] = mem;
	vm->mem_size[i] = size;
	return mem;
}
