"""The differential harness's host side: a case's repetitions on real KVM (jitter on), with a host
profile taken under the same load, and their comparison with the model (``kernel_model.differential``).

Interleaved calibration: after each repetition, one calibration run (``minivmm.timing.calibrate``), so
the profile describes the load the repetitions ran under; with tracefs the CPUs' ticks are traced over
the whole case and the profile carries the tick environment they showed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable

from kernel_model.costs import Costs
from kernel_model.differential import StepComparison, compare_step, model_paired, waits_for_gp
from kernel_model.profile import HostProfile
from kernel_model.sequences import Sequence, parse_sequence
from kernel_model.sim import NSEC_PER_SEC
from minivmm.timing.calibrate import CalibrationRun, make_profile, measure_ticks, run_calibration
from minivmm.timing.runner import Repetition, SequenceRunner, measure
from minivmm.timing.ticktrace import TickTracer
from minivmm.vmm.vcpu_loop import KICK_SIGNAL


def measure_interleaved(seq: Sequence, repeat: int, hz: int, platform: str, seed: int,
                        kvm_path: str = "/dev/kvm", trace_ticks: bool = True,
                        on_progress: Callable[[int], None] | None = None) -> tuple[list[Repetition], HostProfile]:
    """``repeat`` repetitions of ``seq`` (jitter on), each followed by one calibration run; returns them
    and the profile of the calibration runs (with the traced tick environment where tracefs can be
    used, ``trace_ticks``)."""
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
                cal += run_calibration(1, hz, kvm_path, seed=seed * 100_003 + i)
                tracer.poll()
                if on_progress:
                    on_progress(i + 1)
    finally:
        signal.signal(KICK_SIGNAL, old)
        runner.close()
    ticks = measure_ticks(cal, tracer.record, threading.get_native_id(), os.cpu_count() or 1, tracer.why_not)
    return reps, make_profile(cal, hz, platform, os.uname().release, ticks)


def run_case(name: str, text: str, repeat: int, hz: int, platform: str, costs: Costs | None, per_rep: int,
             seed: int, kvm_path: str = "/dev/kvm", interleave: bool = False, trace_ticks: bool = True,
             on_progress: Callable[[int], None] | None = None) -> tuple[list[StepComparison], HostProfile | None]:
    """Run one case on the host and in the model and compare its grace-period steps mode by mode. With
    ``interleave`` the host profile is calibrated between the repetitions (:func:`measure_interleaved`)
    and used instead of ``costs``; it is returned too."""
    seq = parse_sequence(text, name)
    profile = None
    if interleave:
        reps, profile = measure_interleaved(seq, repeat, hz, platform, seed, kvm_path, trace_ticks, on_progress)
        costs = profile.costs()
    else:
        reps, _ = measure(seq, repeat, True, hz, kvm_path, seed=seed, on_progress=on_progress)
    gaps = [r.gaps_ns for r in reps]
    held = [r.durations_ns for r in reps]
    model = model_paired(seq, gaps, hz, platform, costs, per_rep, seed, held)
    fixed = None if costs is None else model_paired(seq, gaps, hz, platform, None, per_rep, seed, held)
    tick = NSEC_PER_SEC // hz
    return [compare_step(name, i, seq.steps[i].label, [r.durations_ns[i] for r in reps], model[i], tick,
                         fixed[i] if fixed else None)
            for i in waits_for_gp(seq, platform)], profile
