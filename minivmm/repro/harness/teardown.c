/*
 * The teardown step: the vCPUs stopped and their fds closed, then close() of the VM fd, the last
 * reference, so that kvm_destroy_vm() runs inside it; timed right beside the call. Returns its ns.
 */
static uint64_t destroy_vm(struct vm *vm)
{
	uint64_t t0, t1;
	int ret;

	close_vcpus(vm);
	t0 = now_ns();
	ret = close(vm->vm_fd);
	t1 = now_ns();
	vm->vm_fd = -1;
	if (ret)
		die("close of the VM fd failed: %s", strerror(errno));
	return t1 - t0;
}
