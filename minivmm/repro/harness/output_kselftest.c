/* Print one line of the report (every call is one whole line) as a TAP diagnostic, "# ...". */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	line[strcspn(line, "\n")] = '\0';
	ksft_print_msg("%s\n", line);
}

#define die(...) TEST_FAIL(__VA_ARGS__)
