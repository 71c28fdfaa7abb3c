/*
 * The harness: a fresh VM per repetition, each started at a random point in a jiffy, every step
 * after its gap, and each ioctl timed with CLOCK_MONOTONIC read right beside the system call.
 */

struct step_info {
	const char *op;		/* the sequence op (minivmm's sequence file format) */
	const char *label;	/* how minivmm's reports name the step */
	const char *request;	/* the ioctl, as <linux/kvm.h> names it */
	const char *strace_arg;	/* its argument, as the strace -T line shows it */
	int issued;		/* 0: not issued; paused for its traced cost instead */
	int stalled;		/* the step the model says call_srcu stalls (as minivmm timing marks it) */
	int variant_stall;	/* some kernel variants stall here and others do not */
};

/*
 * A vCPU running the loop guest in a thread of its own. The thread owns the vCPU's KVM_RUN from
 * first_run() on; it publishes its first KVM_RUN (first_ns, then done) with a release store, and
 * stops at the next exit once stop is set (the guest exits on every loop, so that is at once).
 */
struct vcpu_runner {
	int fd;
	struct kvm_run *run;
	uint64_t period_ns;
	pthread_t thread;
	int started;
	int stop;
	int done;
	uint64_t first_ns;
	int first_errno;
	unsigned int first_exit;
	unsigned int first_port;
	unsigned int first_direction;
};

/* One repetition's VM and what its steps made; the main thread owns all of it. */
struct vm {
	int kvm_fd;
	int vm_fd;
	int vcpu_fd[N_VCPUS];
	struct vcpu_runner runner[N_VCPUS];
	size_t run_size;
	void *mem[N_MEMORIES];
	size_t mem_size[N_MEMORIES];
	int efd[N_EVENTFDS];
};

/* Per repetition and step: the duration, the gap before it, and what the strace line shows. */
struct results {
	int repeat;
	uint64_t *took_ns;
	uint64_t *gap_ns;
	int *fd;
	long *ret;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000ULL, .tv_nsec = ns % 1000000000ULL };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* A step's gap, exact: sleep most of it, spin the last stretch (a sleep alone wakes up late). */
static void wait_until(uint64_t t)
{
	uint64_t now = now_ns();

	if (t > now && t - now > SLEEP_ABOVE_NS)
		sleep_ns(t - now - SPIN_LAST_NS);
	while (now_ns() < t)
		;
}

/* The jitter's random numbers (splitmix64): one stream per --seed, the same on every host. */
static uint64_t rng_state;

static uint64_t random_below(uint64_t n)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return n ? (z ^ (z >> 31)) % n : 0;
}

/* One jiffy, in ns: the coarse clock ticks with the scheduler tick (its resolution is TICK_NSEC). */
static uint64_t jiffy_ns(void)
{
	struct timespec res;

	if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) || res.tv_sec || !res.tv_nsec)
		die("clock_getres(CLOCK_MONOTONIC_COARSE) gives no tick length");
	return (uint64_t)res.tv_nsec;
}

static void new_vm(struct vm *vm, int kvm_fd, size_t run_size)
{
	int i;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = kvm_fd;
	vm->vm_fd = -1;
	vm->run_size = run_size;
	for (i = 0; i < N_VCPUS; i++)
		vm->vcpu_fd[i] = -1;
	for (i = 0; i < N_EVENTFDS; i++)
		vm->efd[i] = -1;
}

/* Stop the vCPU threads, unmap their kvm_run and close the vCPU fds (each holds a reference to the VM). */
static void close_vcpus(struct vm *vm)
{
	int i;

	for (i = 0; i < N_VCPUS; i++) {
		struct vcpu_runner *r = &vm->runner[i];

		if (r->started) {
			__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
			pthread_join(r->thread, NULL);
			r->started = 0;
		}
		if (r->run) {
			munmap(r->run, vm->run_size);
			r->run = NULL;
		}
		if (vm->vcpu_fd[i] >= 0) {
			close(vm->vcpu_fd[i]);
			vm->vcpu_fd[i] = -1;
		}
	}
}

/* Stop the vCPU threads, close the vCPUs and the VM, unmap guest memory, close the eventfds. */
static void close_vm(struct vm *vm)
{
	int i;

	close_vcpus(vm);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	for (i = 0; i < N_MEMORIES; i++)
		if (vm->mem[i])
			munmap(vm->mem[i], vm->mem_size[i]);
	for (i = 0; i < N_EVENTFDS; i++)
		if (vm->efd[i] >= 0)
			close(vm->efd[i]);
}

static const struct step_info steps[N_STEPS];

/* Keep step i of repetition rep; a refused ioctl ends the program, naming the step. */
static void record(struct results *res, int rep, int i, int fd, long ret, uint64_t gap, uint64_t took)
{
	size_t k = (size_t)rep * N_STEPS + i;

	if (ret < 0)
		die("step %d (%s): %s failed: %s", i + 1, steps[i].label, steps[i].request, strerror(errno));
	res->took_ns[k] = took;
	res->gap_ns[k] = gap;
	res->fd[k] = fd;
	res->ret[k] = ret;
}
