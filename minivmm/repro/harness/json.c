/* ---- --json: the steps in the shape of `minivmm timing --json`'s, which `minivmm compare` reads ---- */

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_quantiles(const char *key, const double q[5])
{
	printf("\"%s\": {\"min_us\": %.3f, \"p10_us\": %.3f, \"p50_us\": %.3f, \"p90_us\": %.3f, \"max_us\": %.3f}",
	       key, q[0], q[1], q[2], q[3], q[4]);
}

static void print_json(const struct results *res, const struct host *host, int jitter)
{
	uint64_t *scratch = malloc(sizeof(*scratch) * res->repeat);
	char line[1024];
	int i, r, v, rep;

	if (!scratch)
		die("out of memory");
	printf("{\"schema_version\": %d, \"kind\": \"repro\", \"sequence\": ", SCHEMA_VERSION);
	json_string(SEQUENCE_NAME);
	printf(", \"repetitions\": %d,\n \"generated\": {\"minivmm\": ", res->repeat);
	json_string(MINIVMM_VERSION);
	printf(", \"kernel\": ");
	json_string(GENERATED_ON_KERNEL);
	printf(", \"hz\": %d, \"platform\": ", GENERATED_FOR_HZ);
	json_string(GENERATED_FOR_PLATFORM);
	printf("},\n \"host\": {\"kernel\": ");
	json_string(host->kernel);
	printf(", \"machine\": ");
	json_string(host->machine);
	printf(", \"hz\": %d, \"hz_source\": ", host->hz);
	json_string(host->hz_source);
	printf(", \"platform\": ");
	json_string(host->platform);
	printf(", \"platform_source\": ");
	json_string(host->platform_source);
	printf(", \"jitter\": %s},\n \"strace_example\": [", jitter ? "true" : "false");
	rep = median_repetition(res);
	for (i = 0; i < N_STEPS; i++) {
		strace_line(res, rep, i, line, sizeof(line));
		printf(i ? ",\n  " : "\n  ");
		json_string(line);
	}
	printf("],\n \"steps\": [");
	for (i = 0; i < N_STEPS; i++) {
		struct quantiles q = step_quantiles(res, i, scratch);
		double measured[5] = { q.min, q.p10, q.p50, q.p90, q.max };

		column(res, res->gap_ns, i, scratch);
		printf("%s\n  {\"step\": %d, \"op\": ", i ? "," : "", i + 1);	/* numbered from 1, as minivmm's */
		json_string(steps[i].op);
		printf(", \"label\": ");
		json_string(steps[i].label);
		printf(", \"gap_ns\": %llu, \"samples_ns\": [",
		       (unsigned long long)percentile_sorted(scratch, res->repeat, 50));
		for (r = 0; r < res->repeat; r++)
			printf("%s%llu", r ? ", " : "", (unsigned long long)res->took_ns[(size_t)r * N_STEPS + i]);
		printf("],\n   \"gaps_ns\": [");
		for (r = 0; r < res->repeat; r++)
			printf("%s%llu", r ? ", " : "", (unsigned long long)res->gap_ns[(size_t)r * N_STEPS + i]);
		printf("],\n   ");
		json_quantiles("measured", measured);
		printf(",\n   \"predicted\": {");
		for (v = 0; v < N_VARIANTS; v++) {
			printf(v ? ", " : "");
			json_quantiles(variants[v], predicted_us[i][v]);
		}
		printf("}, \"stalled\": %s}", steps[i].stalled ? "true" : "false");
	}
	printf("]}\n");
	free(scratch);
}
