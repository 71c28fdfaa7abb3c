/* ---- the measurement: every repetition in a fresh VM ------------------------------------------ */

/* repeat repetitions; with jiffy (its length in ns), each starts at a random point in a jiffy. */
static void measure(struct results *res, int repeat, int kvm_fd, size_t run_size, uint64_t jiffy)
{
	struct vm vm;
	int r;

	res->repeat = repeat;
	res->took_ns = calloc((size_t)repeat * N_STEPS, sizeof(*res->took_ns));
	res->gap_ns = calloc((size_t)repeat * N_STEPS, sizeof(*res->gap_ns));
	res->fd = calloc((size_t)repeat * N_STEPS, sizeof(*res->fd));
	res->ret = calloc((size_t)repeat * N_STEPS, sizeof(*res->ret));
	if (!res->took_ns || !res->gap_ns || !res->fd || !res->ret)
		die("out of memory for %d repetitions", repeat);
	for (r = 0; r < repeat; r++) {
		if (jiffy)
			sleep_ns(random_below(jiffy));
		new_vm(&vm, kvm_fd, run_size);
		run_steps(&vm, res, r);
		close_vm(&vm);
	}
}

/* ---- the numbers: min/p10/p50/p90/max per step, as minivmm reports them ---------------------- */

struct quantiles {
	double min, p10, p50, p90, max;	/* microseconds */
};

static int compare_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Linear interpolation between the closest ranks (numpy's default; kernel_model/stats.py). */
static double percentile_sorted(const uint64_t *s, int n, double p)
{
	double k = (n - 1) * p / 100;
	int lo = (int)k;
	int hi = lo + 1 < n ? lo + 1 : n - 1;

	return (double)s[lo] + ((double)s[hi] - (double)s[lo]) * (k - lo);
}

/* Step i's values over the repetitions (took_ns or gap_ns), sorted into out. */
static void column(const struct results *res, const uint64_t *values, int i, uint64_t *out)
{
	int r;

	for (r = 0; r < res->repeat; r++)
		out[r] = values[(size_t)r * N_STEPS + i];
	qsort(out, res->repeat, sizeof(*out), compare_u64);
}

static struct quantiles step_quantiles(const struct results *res, int i, uint64_t *scratch)
{
	int n = res->repeat;
	struct quantiles q;

	column(res, res->took_ns, i, scratch);
	q.min = scratch[0] / 1000.0;
	q.p10 = percentile_sorted(scratch, n, 10) / 1000;
	q.p50 = percentile_sorted(scratch, n, 50) / 1000;
	q.p90 = percentile_sorted(scratch, n, 90) / 1000;
	q.max = scratch[n - 1] / 1000.0;
	return q;
}

/* A duration for people: microseconds below a millisecond, milliseconds above. */
static const char *fmt_us(double us, char *buf, size_t size)
{
	if (us >= 1000)
		snprintf(buf, size, "%.2f ms", us / 1000);
	else
		snprintf(buf, size, "%.1f us", us);
	return buf;
}

/* The repetition whose stalled step (or first step) took the median time: the one shown strace-style. */
static int median_repetition(const struct results *res)
{
	int i, r, step = 0;
	uint64_t *sorted = malloc(sizeof(*sorted) * res->repeat);
	uint64_t median;

	if (!sorted)
		die("out of memory");
	for (i = 0; i < N_STEPS; i++)
		if (steps[i].stalled)
			step = i;
	column(res, res->took_ns, step, sorted);
	median = sorted[res->repeat / 2];
	free(sorted);
	for (r = 0; r < res->repeat; r++)
		if (res->took_ns[(size_t)r * N_STEPS + step] == median)
			return r;
	return 0;
}

static void strace_line(const struct results *res, int rep, int i, char *buf, size_t size)
{
	size_t k = (size_t)rep * N_STEPS + i;

	if (!strcmp(steps[i].request, "close"))	/* the teardown: a close(), not an ioctl */
		snprintf(buf, size, "close(%d) = %ld <%.6f>", res->fd[k], res->ret[k], res->took_ns[k] / 1e9);
	else
		snprintf(buf, size, "ioctl(%d, %s, %s) = %ld <%.6f>%s", res->fd[k], steps[i].request,
			 steps[i].strace_arg, res->ret[k], res->took_ns[k] / 1e9,
			 steps[i].issued ? "" : "  (not issued: paused for its traced cost)");
}

static void print_text(const struct results *res, const struct host *host, int jitter)
{
	uint64_t *scratch = malloc(sizeof(*scratch) * res->repeat);
	char line[1024], cells[5][32];
	int i, rep, any_stall = 0;

	if (!scratch)
		die("out of memory");
	say("minivmm repro: sequence %s, %d repetitions %s\n", SEQUENCE_NAME, res->repeat,
	    jitter ? "with jitter (tick phase sampled)" :
		     "back to back (--no-jitter: locked to the tick, the spread is hidden)");
	say("host: kernel %s, %s, HZ=%d (%s), platform %s (%s)\n", host->kernel, host->machine, host->hz,
	    host->hz_source, host->platform, host->platform_source);
	say("\n");
	say("one repetition, strace -T style (the median one for the stalled step):\n");
	rep = median_repetition(res);
	for (i = 0; i < N_STEPS; i++) {
		strace_line(res, rep, i, line, sizeof(line));
		say("%s\n", line);
	}
	say("\n");
	say("%-*s%11s%11s%11s%11s%11s\n", LABEL_WIDTH, "measured", "min", "p10", "p50", "p90", "max");
	for (i = 0; i < N_STEPS; i++) {
		struct quantiles q = step_quantiles(res, i, scratch);
		int stall = q.p50 * 1000 >= STALL_NS;

		any_stall |= stall;
		say("%-*s%11s%11s%11s%11s%11s%s\n", LABEL_WIDTH, steps[i].label, fmt_us(q.min, cells[0], 32),
		    fmt_us(q.p10, cells[1], 32), fmt_us(q.p50, cells[2], 32), fmt_us(q.p90, cells[3], 32),
		    fmt_us(q.max, cells[4], 32), stall ? "  <- stall" :
		    steps[i].stalled ? "  <- call_srcu would stall here; no stall measured" : "");
	}
	if (any_stall)
		say("(a stall: a step whose median is %g ms or more, a grace-period wait)\n", STALL_NS / 1e6);
	free(scratch);
}
