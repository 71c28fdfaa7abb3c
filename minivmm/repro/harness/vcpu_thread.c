/*
 * vCPU i in real mode at LOOP_ADDR, every segment at base 0, its kvm_run mapped, and runnable (with an
 * in-kernel local APIC a vCPU other than the boot processor would wait in KVM_RUN for an INIT and a
 * SIPI that no step sends); once running it re-enters KVM_RUN at most every period_ns (the run op's
 * period: an exit, each handled inside KVM's SRCU read section, every period).
 */
static void prepare_vcpu(struct vm *vm, int i, uint64_t period_ns)
{
	struct kvm_mp_state runnable = { .mp_state = KVM_MP_STATE_RUNNABLE };
	struct vcpu_runner *r = &vm->runner[i];
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	r->fd = vm->vcpu_fd[i];
	r->period_ns = period_ns;
	r->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	if (r->run == MAP_FAILED) {
		r->run = NULL;
		die("mmap of vCPU %d's kvm_run: %s", i, strerror(errno));
	}
	if (ioctl(r->fd, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs.base = sregs.ds.base = sregs.es.base = sregs.fs.base = sregs.gs.base = sregs.ss.base = 0;
	sregs.cs.selector = sregs.ds.selector = sregs.es.selector = 0;
	sregs.fs.selector = sregs.gs.selector = sregs.ss.selector = 0;
	if (ioctl(r->fd, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS: %s", strerror(errno));
	if (ioctl(r->fd, KVM_GET_REGS, &regs) < 0)
		die("KVM_GET_REGS: %s", strerror(errno));
	regs.rip = LOOP_ADDR;
	regs.rsp = LOOP_ADDR;
	regs.rflags = 0x2;	/* bit 1 is reserved and must be set */
	if (ioctl(r->fd, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS: %s", strerror(errno));
	if (ioctl(r->fd, KVM_SET_MP_STATE, &runnable) < 0)
		die("KVM_SET_MP_STATE: %s", strerror(errno));
}

static void *vcpu_loop(void *arg)
{
	struct vcpu_runner *r = arg;
	uint64_t t0 = now_ns();
	int ret = ioctl(r->fd, KVM_RUN, 0);
	uint64_t t1 = now_ns();

	r->first_errno = ret < 0 ? errno : 0;
	r->first_exit = r->run->exit_reason;
	r->first_port = r->run->io.port;
	r->first_direction = r->run->io.direction;
	r->first_ns = t1 - t0;
	__atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) && (ret >= 0 || errno == EINTR)) {
		uint64_t next = t1 + r->period_ns;

		while ((t1 = now_ns()) < next)
			;
		ret = ioctl(r->fd, KVM_RUN, 0);
	}
	return NULL;
}

/* Start vCPU i's thread; return its first KVM_RUN, to the first exit (which must be the loop's). */
static uint64_t first_run(struct vm *vm, int i)
{
	struct vcpu_runner *r = &vm->runner[i];
	int err = pthread_create(&r->thread, NULL, vcpu_loop, r);

	if (err)
		die("pthread_create: %s", strerror(err));
	r->started = 1;
	while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
		sleep_ns(100000);
	if (r->first_errno && r->first_errno != EINTR)
		die("vCPU %d: KVM_RUN failed: %s", i, strerror(r->first_errno));
	if (!r->first_errno && !(r->first_exit == KVM_EXIT_IO && r->first_port == 0x80 &&
				 r->first_direction == KVM_EXIT_IO_OUT))
		die("vCPU %d did not run the loop guest at %#x (first exit reason %u)", i, LOOP_ADDR, r->first_exit);
	return r->first_ns;
}
