/* ---- the program ---------------------------------------------------------------------------- */

static void usage(FILE *out)
{
	fprintf(out, "usage: repro [-r N] [--json] [--no-jitter] [--seed N] [--kvm PATH]\n"
		"  -r, --repeat N  repetitions, each in a fresh VM (default %d)\n"
		"  --json          the numbers as JSON (minivmm compare reads it)\n"
		"  --no-jitter     back to back, not at a random point in a jiffy (hides the spread)\n"
		"  --seed N        seed of the jitter (default 0)\n"
		"  --kvm PATH      the KVM device (default /dev/kvm)\n"
		"exit: 0 measured; %d a step failed (or the report could not be written); %d bad usage;\n"
		"      %d cannot run here (no usable KVM device)\n",
		DEFAULT_REPEAT, EXIT_STEP_FAILED, EXIT_USAGE, EXIT_NO_KVM);
}

static long number(const char *text, long min, long max)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(text, &end, 0);
	if (errno || end == text || *end || value < min || value > max) {
		fprintf(stderr, "repro: error: %s is not a number from %ld to %ld\n", text, min, max);
		exit(EXIT_USAGE);
	}
	return value;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "repeat", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' },
		{ "no-jitter", no_argument, NULL, 'J' },
		{ "seed", required_argument, NULL, 's' },
		{ "kvm", required_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *kvm_path = "/dev/kvm";
	int repeat = DEFAULT_REPEAT, json = 0, jitter = 1, kvm_fd, c;
	struct results res;
	struct host host;
	uint64_t jiffy;
	long run_size;

	while ((c = getopt_long(argc, argv, "r:h", options, NULL)) != -1) {
		switch (c) {
		case 'r': repeat = (int)number(optarg, 1, MAX_REPEAT); break;
		case 'j': json = 1; break;
		case 'J': jitter = 0; break;
		case 's': rng_state = (uint64_t)number(optarg, 0, 0x7fffffffffffffffL); break;
		case 'k': kvm_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "repro: error: unexpected argument %s\n", argv[optind]);
		return EXIT_USAGE;
	}
	kvm_fd = open(kvm_path, O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		fprintf(stderr, "repro: error: cannot run here: %s: %s\n", kvm_path, strerror(errno));
		return EXIT_NO_KVM;
	}
	if (ioctl(kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		fprintf(stderr, "repro: error: %s is not a KVM device of API version %d\n", kvm_path, KVM_API_VERSION);
		return EXIT_USAGE;
	}
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	jiffy = jiffy_ns();
	read_host(&host, jiffy);

	measure(&res, repeat, kvm_fd, (size_t)run_size, jitter ? jiffy : 0);
	if (json)
		print_json(&res, &host, jitter);
	else
		print_text(&res, &host, jitter);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "repro: error: the report could not be written: %s\n", strerror(errno));
		return EXIT_STEP_FAILED;
	}
	return 0;
}
