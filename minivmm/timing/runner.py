"""Run a :class:`kernel_model.sequences.Sequence` on real KVM and time each step's ioctl.

Each step is exactly one ioctl, timed by the C wrapper around the system call (see
``minivmm.kvm.uapi.IoctlTracer``); everything a step needs (a guest memory mapping, an eventfd) is
made before its ioctl, outside the timed region, by the op's host step (``minivmm.timing.host_ops``).
The ``run`` step starts a vCPU thread on a tiny real-mode loop guest (an ``out`` to port 0x80 and a
jump), so the vCPU keeps taking exits, each handled inside KVM's SRCU read section; its time is from
the first KVM_RUN to the first exit.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel_model.sequences import Sequence, validate
from kernel_model.sim import SLEEP_ABOVE_NS, SPIN_LAST_NS
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.system import Kvm
from minivmm.kvm.uapi import IoctlRecord, IoctlTracer, ioctl_val, lib
from minivmm.timing.host_ops import HostState, SequenceUnrunnable, host_step
from minivmm.vmm.vcpu_loop import KICK_SIGNAL

__all__ = ["SLEEP_ABOVE_NS", "SPIN_LAST_NS", "MeasurementInterrupted", "Repetition", "SequenceRunner",
           "SequenceUnrunnable", "check_runnable",
           "measure"]


@dataclass
class Repetition:
    """One run of the sequence in a fresh VM."""

    durations_ns: list[int]
    gaps_ns: list[int]
    records: list[IoctlRecord | None]
    #: When the last step ended (monotonic ns), before what was left of the VM was freed.
    steps_end_ns: int = 0
    #: When the repetition began (monotonic ns): the first gap is counted from here.
    origin_ns: int = 0
    #: Each step's start (the end of its gap), in ns from ``origin_ns``: the repetition's timeline,
    #: which the differential harness replays in the model.
    starts_ns: list[int] = field(default_factory=list)
    #: Each step's end (when its ioctl had returned), in ns from ``origin_ns``: with ``starts_ns``, the
    #: stretches in which the caller's traced wake-ups were its steps' (the gaps have their own: a sleep).
    ends_ns: list[int] = field(default_factory=list)


class MeasurementInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`measure`: carries the repetitions finished so far, for a partial report."""

    def __init__(self, reps: list[Repetition], overhead: dict[str, float]) -> None:
        super().__init__()
        self.reps = reps
        self.overhead = overhead


#: The pause rule (a gap longer than SLEEP_ABOVE_NS is slept but for its last SPIN_LAST_NS, which are
#: spun) is the model's (kernel_model.sim), which puts the caller's CPU idle and busy the same way;
#: ``minivmm repro``'s C harness pauses by it too.


def _wait_until(t_ns: int) -> None:
    """Honour a step's gap: sleep most of it, spin the last stretch (sleep is too coarse alone)."""
    remaining = t_ns - time.monotonic_ns()
    if remaining > SLEEP_ABOVE_NS:
        time.sleep((remaining - SPIN_LAST_NS) / 1e9)
    while time.monotonic_ns() < t_ns:
        pass


def check_runnable(seq: Sequence, platform: str) -> None:
    """Refuse, before any VM exists, a sequence that real KVM could not run as written: the one
    validation ``minivmm model`` uses too (kernel_model.sequences.validate); SequenceError says why."""
    validate(seq, platform)


class SequenceRunner:
    """Issues a sequence on one ``/dev/kvm``; each :meth:`run_once` uses a fresh VM and frees it."""

    def __init__(self, seq: Sequence, kvm_path: str = DEFAULT_DEVICE_PATH, platform: str | None = None) -> None:
        if platform is not None:
            check_runnable(seq, platform)
        self.seq = seq
        self.tracer = IoctlTracer()
        self.kvm = Kvm(kvm_path, self.tracer)

    def close(self) -> None:
        """Close /dev/kvm."""
        self.kvm.close()

    def timer_overhead_ns(self, n: int = 2000) -> dict[str, float]:
        """The timed wrapper around a trivial ioctl (KVM_CHECK_EXTENSION): what any timing includes."""
        tracer = IoctlTracer()
        fd, req = self.kvm.fd, lib.KVM_CHECK_EXTENSION
        for _ in range(n):
            ioctl_val(fd, req, lib.KVM_CAP_USER_MEMORY, tracer)
        samples = sorted(rec.elapsed_ns for rec in tracer.records)
        return {"min_ns": samples[0], "p50_ns": statistics.median(samples), "p90_ns": samples[int(n * 0.9)]}

    def run_once(self) -> Repetition:
        """Run every step in a fresh VM; return the per-step durations and the gaps before them."""
        tracer = self.tracer
        tracer.records.clear()
        durations: list[int] = []
        gaps: list[int] = []
        records: list[IoctlRecord | None] = []
        starts: list[int] = []
        ends: list[int] = []
        state = HostState(self.kvm)
        last_end = origin = time.monotonic_ns()
        try:
            for step in self.seq.steps:
                issue = host_step(step.op)(state, step.full_args)
                _wait_until(last_end + step.gap_ns)
                start = time.monotonic_ns()
                gaps.append(start - last_end)
                starts.append(start - origin)
                before = len(tracer.records)
                own = issue()
                end = time.monotonic_ns()
                ends.append(end - origin)
                rec = tracer.records[before] if own is None and len(tracer.records) > before else None
                records.append(rec)
                durations.append(own if own is not None else rec.elapsed_ns if rec else end - start)
                last_end = time.monotonic_ns()
        finally:
            state.close()
        return Repetition(durations, gaps, records, last_end, origin, starts, ends)


def measure(seq: Sequence, repeat: int, jitter: bool, hz: int, kvm_path: str = DEFAULT_DEVICE_PATH,
            on_progress: Callable[[int], None] | None = None, seed: int | None = None,
            platform: str | None = None) -> tuple[list[Repetition], dict[str, float]]:
    """Run ``seq`` ``repeat`` times; with ``jitter`` each repetition starts at a random point within a
    jiffy (a random sleep of up to 1/HZ first), so the tick phase is sampled rather than locked.
    With ``platform``, the sequence is validated first (SequenceError)."""
    rng = random.Random(seed)
    runner = SequenceRunner(seq, kvm_path, platform)
    old = signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    try:
        overhead = runner.timer_overhead_ns()
        reps: list[Repetition] = []
        try:
            for i in range(repeat):
                if jitter:
                    time.sleep(rng.random() / hz)
                reps.append(runner.run_once())
                if on_progress:
                    on_progress(i + 1)
        except KeyboardInterrupt:
            raise MeasurementInterrupted(reps, overhead) from None
        return reps, overhead
    finally:
        signal.signal(KICK_SIGNAL, old)
        runner.close()
