/* ---- the test ------------------------------------------------------------------------------- */

int main(int argc, char *argv[])
{
	int repeat = DEFAULT_REPEAT, kvm_fd, i, c;
	uint64_t *scratch, jiffy;
	struct results res;
	struct host host;
	char cell[32];
	long run_size;

	while ((c = getopt(argc, argv, "r:h")) != -1) {
		switch (c) {
		case 'r':
			repeat = atoi_positive("Repetitions", optarg);
			break;
		default:
			printf("usage: %s [-r repetitions] (default %d, each in a fresh VM)\n", argv[0], DEFAULT_REPEAT);
			exit(KSFT_SKIP);
		}
	}

	ksft_print_header();
	ksft_set_plan(1 + N_VARIANT_STALLS);
	kvm_fd = open_kvm_dev_path_or_exit();
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	TEST_ASSERT(run_size > 0, "KVM_GET_VCPU_MMAP_SIZE failed: %s", strerror(errno));
	jiffy = jiffy_ns();
	read_host(&host, jiffy);

	scratch = calloc((size_t)repeat, sizeof(*scratch));
	TEST_ASSERT(scratch, "out of memory");
	measure(&res, repeat, kvm_fd, (size_t)run_size, jiffy);
	print_text(&res, &host, 1);
	ksft_test_result_pass("%d set-up steps in %d fresh VMs\n", N_STEPS, repeat);

	/* Where a fixed kernel waits for no grace period, a stall is the regression. */
	for (i = 0; i < N_STEPS; i++) {
		struct quantiles q;

		if (!steps[i].variant_stall)
			continue;
		q = step_quantiles(&res, i, scratch);
		ksft_test_result(q.p50 * 1000 < STALL_NS, "step %d (%s) waits for no grace period: p50 %s\n", i + 1,
				 steps[i].label, fmt_us(q.p50, cell, sizeof(cell)));
	}
	close(kvm_fd);
	ksft_finished();
}
