"""The differential harness's host side: a case's repetitions on real KVM (jitter on), with a host
profile taken under the same load, and their comparison with the model (``kernel_model.differential``).

Interleaved calibration: after each repetition, one calibration run (``minivmm.timing.calibrate``), so
the profile describes the load the repetitions ran under; with tracefs the CPUs' ticks are traced over
the whole case and the profile carries the tick environment they showed.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from kernel_model.costs import Costs
from kernel_model.differential import HostTimeline, StepComparison, compare_step, model_paired, waits_for_gp
from kernel_model.profile import HostProfile
from kernel_model.sequences import Sequence, parse_sequence
from kernel_model.sim import NSEC_PER_SEC
from minivmm.timing.calibrate import CalibrationRun, make_profile, measure_ticks, run_calibration
from minivmm.timing.runner import Repetition, SequenceRunner, measure
from minivmm.timing.ticktrace import TickRecord, TickTracer, grace_period_fates
from minivmm.vmm.vcpu_loop import KICK_SIGNAL


def host_timelines(reps: list[Repetition], record: TickRecord | None, hz: int,
                   tid: int | None = None) -> list[HostTimeline] | None:
    """Each repetition's tick phase and step starts on the host's tick grid, taken from the traced tick
    handlers (``record``), and the CPU thread ``tid`` (the one that ran the repetitions) armed each
    repetition's first grace-period timer on; None without a trace (the model then draws its phases)."""
    if record is None:
        return None
    tick = NSEC_PER_SEC // hz
    if record.tick_ns != tick:
        raise ValueError(f"the tick trace is at {NSEC_PER_SEC // record.tick_ns} Hz, not {hz}")
    offset = record.grid_offset()
    fates = grace_period_fates(record, tid, os.cpu_count() or 1) if tid is not None else []
    times = [f.armed_ns for f in fates]
    out = []
    for r in reps:
        i = bisect.bisect_left(times, r.origin_ns)
        end = r.origin_ns + (r.starts_ns[-1] if r.starts_ns else 0)
        cpu = fates[i].cpu if i < len(fates) and times[i] <= end else None
        out.append(HostTimeline(((r.origin_ns - offset) % tick) / tick, list(r.starts_ns), cpu))
    return out


def measure_traced(seq: Sequence, repeat: int, hz: int, seed: int, kvm_path: str = "/dev/kvm",
                   trace_ticks: bool = True, on_progress: Callable[[int], None] | None = None
                   ) -> tuple[list[Repetition], TickRecord | None, str]:
    """``repeat`` repetitions of ``seq`` (jitter on) with the CPUs' ticks traced where tracefs can be
    used (``trace_ticks``): the repetitions, the trace (None if not traced) and why not."""
    tracer = TickTracer(NSEC_PER_SEC // hz)
    if not trace_ticks:
        tracer.why_not = "not asked to"

    def progress(i: int) -> None:
        tracer.poll()  # keep the kernel's buffers from filling on a long case
        if on_progress:
            on_progress(i)

    with tracer if trace_ticks else contextlib.nullcontext():
        reps, _ = measure(seq, repeat, True, hz, kvm_path, seed=seed, on_progress=progress)
    return reps, tracer.record, tracer.why_not


def measure_interleaved(seq: Sequence, repeat: int, hz: int, platform: str, seed: int,
                        kvm_path: str = "/dev/kvm", trace_ticks: bool = True,
                        on_progress: Callable[[int], None] | None = None
                        ) -> tuple[list[Repetition], HostProfile, TickRecord | None]:
    """``repeat`` repetitions of ``seq`` (jitter on), each followed by one calibration run; returns them,
    the profile of the calibration runs (with the traced tick environment where tracefs can be used,
    ``trace_ticks``) and the tick trace (None if not traced)."""
    rng = random.Random(seed)
    runner = SequenceRunner(seq, kvm_path)
    old = signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    reps: list[Repetition] = []
    cal: list[CalibrationRun] = []
    tracer = TickTracer(NSEC_PER_SEC // hz)
    if not trace_ticks:
        tracer.why_not = "not asked to"
    try:
        with tracer if trace_ticks else contextlib.nullcontext():
            for i in range(repeat):
                time.sleep(rng.random() / hz)
                reps.append(runner.run_once())
                cal += run_calibration(1, hz, kvm_path, seed=seed * 100_003 + i, first=i)
                tracer.poll()
                if on_progress:
                    on_progress(i + 1)
    finally:
        signal.signal(KICK_SIGNAL, old)
        runner.close()
    ticks = measure_ticks(cal, tracer.record, threading.get_native_id(), os.cpu_count() or 1, tracer.why_not)
    return reps, make_profile(cal, hz, platform, os.uname().release, ticks), tracer.record


class CaseResult(NamedTuple):
    """One case compared: its grace-period steps, the profile calibrated between its repetitions (None
    unless interleaved), and how the model runs were paired with the host's repetitions."""

    steps: list[StepComparison]
    profile: HostProfile | None
    #: "timeline": each model run replays its repetition's step starts at its tick phase (the tick grid
    #: was traced); otherwise why not, the runs then taking the measured gaps and a random phase.
    pairing: str


#: CaseResult.pairing when the model runs replay the host's timelines.
REPLAYED = "timeline"


def run_case(name: str, text: str, repeat: int, hz: int, platform: str, costs: Costs | None, per_rep: int,
             seed: int, kvm_path: str = "/dev/kvm", interleave: bool = False, trace_ticks: bool = True,
             on_progress: Callable[[int], None] | None = None) -> CaseResult:
    """Run one case on the host and in the model and compare its grace-period steps mode by mode. With
    ``interleave`` the host profile is calibrated between the repetitions (:func:`measure_interleaved`)
    and used instead of ``costs``. With the ticks traced (``trace_ticks``, where tracefs can be used)
    each model run replays its host repetition's timeline (:func:`host_timelines`)."""
    seq = parse_sequence(text, name)
    profile = None
    if interleave:
        reps, profile, record = measure_interleaved(seq, repeat, hz, platform, seed, kvm_path, trace_ticks,
                                                    on_progress)
        costs = profile.costs()
        why_not = "the ticks were not traced"
    else:
        reps, record, why_not = measure_traced(seq, repeat, hz, seed, kvm_path, trace_ticks, on_progress)
    gaps = [r.gaps_ns for r in reps]
    held = [r.durations_ns for r in reps]
    lines = host_timelines(reps, record, hz, threading.get_native_id())
    model = model_paired(seq, gaps, hz, platform, costs, per_rep, seed, held, lines)
    fixed = None if costs is None else model_paired(seq, gaps, hz, platform, None, per_rep, seed, held, lines)
    tick = NSEC_PER_SEC // hz
    steps = [compare_step(name, i, seq.steps[i].label, [r.durations_ns[i] for r in reps], model[i], tick,
                          fixed[i] if fixed else None)
             for i in waits_for_gp(seq, platform)]
    return CaseResult(steps, profile, REPLAYED if lines is not None else why_not)
