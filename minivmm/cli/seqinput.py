"""The sequence a user names (``--sequence NAME|FILE``), for ``model`` and ``timing`` alike: loaded, and
refused as one line before any work when the modelled kernel would refuse one of its steps.

The kernel model answers an ioctl it must refuse the way the kernel does (``KvmIoctlError`` with the
kernel's errno: an irqchip after vCPUs, an ioeventfd of length 3, a duplicate ioeventfd, a deassign of
nothing). Both commands run the steps through the model once up front, so such a sequence is bad
input (exit 2) named by its step, never a traceback half-way through a measurement.
"""

from __future__ import annotations

import errno as _errno
from minivmm.cli.errors import CliError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name

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


def _fmt_time(ns: int) -> str:
    """A duration in the file format's units, exact: 10us, 1ms, 1500ns."""
    for unit, scale in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)):
        if ns and ns % scale == 0:
            return f"{ns // scale}{unit}"
    return f"{ns}ns"


def _fmt_size(n: int) -> str:
    """A size in the file format's units, exact: 128M, 4K, 0x1234."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n) if n < 4096 else f"{n:#x}"


def to_file_text(seq: Sequence) -> str:
    """``seq`` in the sequence file format, so that loading the text gives the same steps back
    (``minivmm model --show-sequence NAME > mine.seq`` is a starting point for a sequence of one's own)."""
    from kernel_model.sequences import DEFAULT_GAP_NS, DEFAULT_PERIOD_NS, DEFAULT_SECTION_NS

    import textwrap

    lines = textwrap.wrap(f"{seq.name}: {seq.description}", 78, initial_indent="# ", subsequent_indent="# ")
    gap = DEFAULT_GAP_NS
    for step in seq.steps:
        if step.gap_ns != gap:
            gap = step.gap_ns
            lines.append(f"gap {_fmt_time(gap)}")
        a = step.args
        words = [step.op]
        if step.op == "memslot":
            words += [f"slot={a['slot']}", f"base={a['base']:#x}" if a["base"] else "base=0",
                      f"size={_fmt_size(a['size'])}"]
        elif step.op in ("ioeventfd", "ioeventfd_deassign"):
            words += [f"addr={a['addr']:#x}", f"len={a['len']}"]
            if a.get("datamatch") is not None:
                words.append(f"datamatch={a['datamatch']}")
            if a.get("pio"):
                words.append("pio")
        elif step.op == "vcpu":
            words.append(f"id={a['id']}")
        elif step.op == "run":
            words.append(f"vcpu={a['vcpu']}")
            if a.get("section", DEFAULT_SECTION_NS) != DEFAULT_SECTION_NS:
                words.append(f"section={_fmt_time(a['section'])}")
            if a.get("period", DEFAULT_PERIOD_NS) != DEFAULT_PERIOD_NS:
                words.append(f"period={_fmt_time(a['period'])}")
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"
