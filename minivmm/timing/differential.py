"""The differential harness's host side: a case's repetitions on real KVM (jitter on), with a host
profile taken under the same load, and their comparison with the model (``kernel_model.differential``);
or a real VMM's set-up (QEMU, say), traced run after run with ``minivmm trace``'s tracer
(:func:`trace_program`), compared the same way.

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
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import NamedTuple

from kernel_model.costs import Costs
from kernel_model.differential import HostTimeline, StepComparison, compare_step, model_paired, waits_for_gp
from kernel_model.profile import HostProfile
from kernel_model.sequences import Sequence, Step, parse_sequence
from kernel_model.sim import NSEC_PER_SEC
from kernel_model.tick import TickEnvironment, TracedTicks
from minivmm.timing.calibrate import CalibrationRun, make_profile, measure_ticks, run_calibration
from minivmm.timing.runner import Repetition, SequenceRunner, measure
from minivmm.timing.ticktrace import TickRecord, TickTracer, TimerFate, grace_period_fates, tick_environment
from minivmm.vmm.vcpu_loop import KICK_SIGNAL


def host_timelines(reps: list[Repetition], record: TickRecord | None, hz: int,
                   fates: list[TimerFate] | None = None, caller: int | None = None) -> list[HostTimeline] | None:
    """Each repetition's tick phase and step starts on the host's tick grid, taken from the traced tick
    handlers (``record``), the CPUs' traced ticks and tick stops, the CPU the repetition's first
    grace-period timer was armed on (``fates``:
    the grace-period timers of the threads that ran the repetitions, :func:`grace_period_fates`), and
    per step how long each wake-up of the thread that ran them (``caller``, where its wake-ups were
    traced) waited for its CPU; None without a trace (the model then draws its phases)."""
    if record is None:
        return None
    tick = NSEC_PER_SEC // hz
    if record.tick_ns != tick:
        raise ValueError(f"the tick trace is at {NSEC_PER_SEC // record.tick_ns} Hz, not {hz}")
    offset = record.grid_offset()
    fates = fates or []
    times = [f.armed_ns for f in fates]
    out = []
    for r in reps:
        i = bisect.bisect_left(times, r.origin_ns)
        end = r.origin_ns + (r.starts_ns[-1] if r.starts_ns else 0)
        cpu = fates[i].cpu if i < len(fates) and times[i] <= end else None
        traced = TracedTicks(record.ticks, record.stops, tick, offset, (r.origin_ns - offset) // tick)
        wakeups = None
        if caller is not None and len(r.ends_ns) == len(r.starts_ns):
            per_step = [record.wake_latencies(caller, r.origin_ns + a, r.origin_ns + b)
                        for a, b in zip(r.starts_ns, r.ends_ns)]
            wakeups = None if any(w is None for w in per_step) else [w or () for w in per_step]
        out.append(HostTimeline(((r.origin_ns - offset) % tick) / tick, list(r.starts_ns), cpu, traced, wakeups))
    return out


def measure_traced(seq: Sequence, repeat: int, hz: int, seed: int, kvm_path: str = "/dev/kvm",
                   trace_ticks: bool = True, on_progress: Callable[[int], None] | None = None
                   ) -> tuple[list[Repetition], TickRecord | None, str]:
    """``repeat`` repetitions of ``seq`` (jitter on) with the CPUs' ticks traced where tracefs can be
    used (``trace_ticks``): the repetitions, the trace (None if not traced) and why not."""
    tracer = TickTracer(NSEC_PER_SEC // hz, callers=[threading.get_native_id()])
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
    tracer = TickTracer(NSEC_PER_SEC // hz, callers=[threading.get_native_id()])
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
    return compare_case(name, seq, reps, record, why_not, hz, platform, costs, per_rep, seed,
                        [threading.get_native_id()], profile)


def compare_case(name: str, seq: Sequence, reps: list[Repetition], record: TickRecord | None, why_not: str,
                 hz: int, platform: str, costs: Costs | None, per_rep: int, seed: int, tids: Collection[int],
                 profile: HostProfile | None = None) -> CaseResult:
    """The model paired with the repetitions of ``seq`` the host ran (threads ``tids``; their ticks in
    ``record``, or None and ``why_not``), with and without ``costs``, and every grace-period step
    compared mode by mode. With a trace and a profile that measured the ticks, the model's tick
    environment is the case's own (:func:`case_environment`)."""
    gaps = [r.gaps_ns for r in reps]
    held = [r.durations_ns for r in reps]
    fates = grace_period_fates(record, tids, os.cpu_count() or 1) if record is not None else []
    callers = set(tids)
    lines = host_timelines(reps, record, hz, fates, callers.pop() if len(callers) == 1 else None)
    if costs is not None and record is not None and costs.cpus != TickEnvironment():
        costs = costs._replace(cpus=case_environment(record, fates, costs.cpus))
    model = model_paired(seq, gaps, hz, platform, costs, per_rep, seed, held, lines)
    fixed = None if costs is None else model_paired(seq, gaps, hz, platform, None, per_rep, seed, held, lines)
    # The model as a prediction would run it, its waiters' wake-ups drawn from the profile: how well the
    # model's scheduler stands in for the host's (only when the host's were replayed above).
    replayed = costs is not None and lines is not None and all(line.wakeups_ns is not None for line in lines)
    drawn = (model_paired(seq, gaps, hz, platform, costs, per_rep, seed, held, lines, replay_wakeups=False)
             if replayed else None)
    tick = NSEC_PER_SEC // hz
    steps = [compare_step(name, i, seq.steps[i].label, [r.durations_ns[i] for r in reps], model[i], tick,
                          fixed[i] if fixed else None, drawn[i] if drawn else None)
             for i in waits_for_gp(seq, platform)]
    return CaseResult(steps, profile, REPLAYED if lines is not None else why_not)


def case_environment(record: TickRecord, fates: list[TimerFate], measured: TickEnvironment) -> TickEnvironment:
    """The tick environment the model replays a traced case with: what the case's own trace shows (how
    often and how lastingly the other CPUs ticked at its grace-period timers' ticks, the handlers' order,
    whether the caller's CPU kept its tick, which CPU it ran on), as the replay takes each repetition's
    tick phase from it; and from ``measured`` (the profile) what only slipped timers tell, the duty's
    shares and the handlers' race (by how much a lead), which the case's own slips would answer for the
    model. ``fates``: the case's grace-period timers (:func:`grace_period_fates`); ``measured`` as it
    is when there are none.

    The load moves within minutes and a VMM brings its own (QEMU's threads and minivmm trace's tracer
    kept the other CPU ticking at 61-73% of a traced set-up's buckets, where the calibration just before
    saw 16-41%): the tick shares of a profile taken at another time are the wrong ones."""
    if not fates:
        return measured
    offset = record.grid_offset()
    waits = [(f.armed_ns, offset + (f.bucket_tick + 1) * record.tick_ns) for f in fates]
    own = tick_environment(record, fates, measured.nr_cpus, waits)
    return own._replace(other_holds_duty=measured.other_holds_duty,
                        other_holds_duty_by_cpu=measured.other_holds_duty_by_cpu,
                        other_first_slips=measured.other_first_slips, slips_by_lead=measured.slips_by_lead)


class Interrupted(KeyboardInterrupt):
    """A harness run ended by a signal (SIGINT, SIGTERM or SIGHUP): ``signal_name`` says which, for
    the exit code (128 + its number)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + int(signal.Signals[self.signal_name])


class ProgramError(ValueError):
    """A traced program gave nothing to compare (it made no VM, or its runs share no set-up): one line."""


class TracedRun(NamedTuple):
    """One traced run of a VMM: its main VM's set-up as a sequence (``minivmm trace``'s), what was
    measured as a :class:`Repetition` (durations, gaps, and the timeline from its KVM_CREATE_VM on, in
    CLOCK_MONOTONIC like the tick trace), and the threads that issued the set-up's ioctls."""

    sequence: Sequence
    repetition: Repetition
    tids: frozenset[int]


def trace_program(argv: list[str], repeat: int, hz: int, trace_ticks: bool = True, timeout_s: float = 60.0,
                  on_progress: Callable[[int], None] | None = None
                  ) -> tuple[list[TracedRun], TickRecord | None, str]:
    """Start ``argv`` (a VMM; ``argv[0]`` a path) ``repeat`` times under ``minivmm trace``'s tracer until
    every vCPU has entered KVM_RUN (then it is ended), its output sent to /dev/null, with the CPUs' ticks
    traced over all the runs where tracefs can be used (``trace_ticks``): the runs, the tick trace (None
    if not traced) and why not. ProgramError if a run made no VM or timed out; Interrupted if the
    tracer was interrupted or terminated (it ends its program first)."""
    from minivmm.trace.explain import build_sequence
    from minivmm.trace.tracer import StopReason, Tracer

    tracer = TickTracer(NSEC_PER_SEC // hz)
    if not trace_ticks:
        tracer.why_not = "not asked to"
    runs: list[TracedRun] = []
    with tracer if trace_ticks else contextlib.nullcontext():
        for i in range(repeat):
            result = Tracer(argv[0], argv, until_first_run=True, timeout_s=timeout_s, discard_output=True).run()
            if result.interrupted_by is not None:
                raise Interrupted(result.interrupted_by)  # the tracer took it (ending its program): so do we
            if result.stop_reason is StopReason.TIMEOUT:
                raise ProgramError(f"run {i + 1}: its vCPUs had not all entered KVM_RUN after {timeout_s:g} s")
            try:
                ex = build_sequence(result)
            except ValueError as e:
                raise ProgramError(f"run {i + 1}: {e}") from None
            events = [result.events[k] for k in ex.step_events]
            origin = events[0].enter_ns
            rep = Repetition(list(ex.measured_ns), list(ex.gaps_ns), [None] * len(events), origin_ns=origin,
                             starts_ns=[e.enter_ns - origin for e in events])
            runs.append(TracedRun(ex.sequence, rep, frozenset(e.tid for e in events)))
            tracer.poll()
            if on_progress:
                on_progress(i + 1)
    return runs, tracer.record, tracer.why_not


def step_key(step: Step) -> tuple[str, tuple[tuple[str, object], ...]]:
    """What must match for two traced runs' steps to be the same step: the op and its arguments, but an
    unmodelled ioctl's measured cost."""
    return step.op, tuple(sorted((k, v) for k, v in step.args.items() if not (step.op == "ioctl" and k == "cost")))


def common_setup(runs: list[TracedRun]) -> int:
    """How many steps every run's set-up begins with alike (a VMM's set-up is the same run after run up to
    where its threads race: QEMU's guest firmware, say, may move memslots before the last vCPU runs)."""
    if not runs:
        return 0
    ref = [step_key(s) for s in runs[0].sequence.steps]
    n = len(ref)
    for run in runs[1:]:
        keys = run.sequence.steps
        same = 0
        while same < min(n, len(keys)) and step_key(keys[same]) == ref[same]:
            same += 1
        n = same
    return n


class ProgramResult(NamedTuple):
    """A traced program compared: the comparison, and how many of its steps it covers (the set-up every
    run shares) out of the longest run's."""

    case: CaseResult
    steps_shared: int
    steps_longest: int


def run_program(name: str, argv: list[str], repeat: int, hz: int, platform: str, costs: Costs | None,
                per_rep: int, seed: int, trace_ticks: bool = True,
                on_progress: Callable[[int], None] | None = None) -> ProgramResult:
    """Trace ``argv``'s set-up ``repeat`` times (:func:`trace_program`) and compare the set-up all runs
    share with the model, mode by mode, as a random case is (:func:`compare_case`)."""
    runs, record, why_not = trace_program(argv, repeat, hz, trace_ticks, on_progress=on_progress)
    n = common_setup(runs)
    if n < 2:
        raise ProgramError(f"the {len(runs)} runs share no set-up (they differ from step {n + 1} on)")
    seq = replace(runs[0].sequence, steps=runs[0].sequence.steps[:n])
    reps = [Repetition(r.repetition.durations_ns[:n], r.repetition.gaps_ns[:n], [None] * n,
                       origin_ns=r.repetition.origin_ns, starts_ns=r.repetition.starts_ns[:n]) for r in runs]
    tids = frozenset().union(*(r.tids for r in runs))
    case = compare_case(name, seq, reps, record, why_not, hz, platform, costs, per_rep, seed, tids)
    return ProgramResult(case, n, max(len(r.sequence.steps) for r in runs))
