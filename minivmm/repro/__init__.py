"""``minivmm repro``: a VM set-up sequence as one C program a kernel developer can build and run (or as a
KVM selftest), timing each ioctl as ``minivmm timing`` does, with the model's predictions in its header."""
