/* ---- where it runs: kernel, HZ (from the tick itself) and the KVM platform (from /sys/module) ---- */

struct host {
	struct utsname uts;
	const char *kernel;
	const char *machine;
	int hz;
	const char *hz_source;
	const char *platform;
	const char *platform_source;
	char platform_why[64];
};

static int is_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

/* AVIC is on unless kvm_amd's avic parameter reads N or 0 (unreadable: on, the 6.18 default). */
static int svm_avic_enabled(void)
{
	char value[8] = "";
	int fd = open(SVM_AVIC_PARAM, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 1;
	if (read(fd, value, sizeof(value) - 1) < 0)
		value[0] = '\0';
	close(fd);
	return !(value[0] == 'N' || value[0] == '0');
}

static void read_host(struct host *h, uint64_t jiffy)
{
	static const char *const backends[][2] = { KVM_BACKENDS };
	char path[64];
	unsigned int i;

	uname(&h->uts);
	h->kernel = h->uts.release;
	h->machine = h->uts.machine;
	h->hz = (int)((1000000000ULL + jiffy / 2) / jiffy);
	h->hz_source = "clock_getres(CLOCK_MONOTONIC_COARSE)";
	h->platform = GENERATED_FOR_PLATFORM;
	h->platform_source = "no KVM module found: as generated";
	for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
		snprintf(path, sizeof(path), "/sys/module/%s", backends[i][0]);
		if (!is_dir(path))
			continue;
		h->platform = backends[i][1];
		if (!strcmp(h->platform, "svm") && !svm_avic_enabled())
			h->platform = "svm-noavic";
		snprintf(h->platform_why, sizeof(h->platform_why), "%s loaded", backends[i][0]);
		h->platform_source = h->platform_why;
		return;
	}
	if ((!strcmp(h->machine, "aarch64") || !strcmp(h->machine, "arm64")) && is_dir("/sys/module/kvm")) {
		h->platform = "arm64";
		h->platform_source = "kvm loaded on arm64";
	}
}
