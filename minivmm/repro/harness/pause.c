/* A step that is not issued (an ioctl the sequence carries as its traced cost): spin that long. */
static uint64_t pause_ns(uint64_t ns)
{
	uint64_t t0 = now_ns();

	while (now_ns() - t0 < ns)
		;
	return now_ns() - t0;
}
