"""The sequence a user names (``--sequence NAME|FILE``), for ``model`` and ``timing`` alike: loaded, and
refused as one line before any work when the modelled kernel would refuse one of its steps.

The kernel model answers an ioctl it must refuse the way the kernel does (``KvmIoctlError`` with the
kernel's errno: an irqchip after vCPUs, an ioeventfd of length 3, a duplicate ioeventfd, a deassign of
nothing). Both commands run the steps through the model once up front, so such a sequence is bad
input (exit 2) named by its step, never a traceback half-way through a measurement.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING

from minivmm.cli.errors import CliError

if TYPE_CHECKING:
    from kernel_model.sequences import Sequence


def load(name_or_path: str) -> Sequence:
    """The named sequence or sequence file; ``CliError`` (exit 2) with the loader's one-line reason."""
    from kernel_model.sequences import load_sequence

    try:
        return load_sequence(name_or_path)
    except ValueError as e:  # SequenceError: the message names the file and line
        raise CliError(str(e)) from None


def refuse_what_the_kernel_refuses(seq: Sequence, platform: str = "vmx") -> None:
    """Run ``seq`` once through the kernel model; a step the modelled kernel refuses is a ``CliError``
    naming the step (1-based, as a sequence file counts its steps), the ioctl and the errno."""
    import random

    from kernel_model.kvm import KvmIoctlError, KvmModel
    from kernel_model.platforms import get_platform
    from kernel_model.predict import run_step
    from kernel_model.sim import Sim
    from kernel_model.variants import get_variant

    sim = Sim(100, 0.5, None)
    kvm = KvmModel(sim, get_variant("sync"), get_platform(platform), None)
    rng = random.Random(0)
    try:
        for i, step in enumerate(seq.steps, 1):
            sim.run_until(sim.now + step.gap_ns)
            try:
                run_step(kvm, step, rng)
            except KvmIoctlError as e:
                name = _errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "error"
                raise CliError(f"sequence {seq.name}: step {i} ({step.label}) is refused by the kernel: "
                               f"{e.strerror} ({name})") from None
            except KeyError as e:
                raise CliError(f"sequence {seq.name}: step {i} ({step.label}) refers to something that "
                               f"does not exist: {e}") from None
    finally:
        if kvm.vcpu_readers:
            kvm.stop_vcpus()
