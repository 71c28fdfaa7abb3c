/* A fresh eventfd, kept as vm->efd[i] (closed with the repetition). */
static int open_eventfd(struct vm *vm, int i)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	if (fd < 0)
		die("eventfd: %s", strerror(errno));
	vm->efd[i] = fd;
	return fd;
}
