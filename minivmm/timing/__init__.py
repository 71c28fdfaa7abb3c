"""``minivmm timing``: time a VM set-up sequence's ioctls on the host kernel, compare them with the
published report and with the kernel model's variants, and say which variant the host behaves like.

- :mod:`minivmm.timing.runner`: issues a sequence's steps as real ioctls, one fresh VM per repetition.
- :mod:`minivmm.timing.compare`: the model's predictions for the host, goodness of fit, the verdict.
- :mod:`minivmm.timing.report`: text and JSON output; :mod:`minivmm.timing.plot`: the optional PNG.
"""
