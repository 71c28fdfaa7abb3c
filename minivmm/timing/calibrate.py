"""``minivmm timing --calibrate``: measure this host's timer-to-waiter latency and make a host profile.

One calibration run is the smallest sequence that waits for a timer: in a fresh VM, one KVM_IOEVENTFD
(its kvm_io_bus_register_dev() calls call_srcu(): a normal grace period starts and process_srcu is
armed one jiffy out, which calc_index() rounds to the second tick) and at once a
KVM_SET_USER_MEMORY_REGION (its synchronize_srcu_expedited() waits for that timer). Each run starts at
a random point in a jiffy. The registration's time ``t_reg`` fixes the tick the timer fires on:
``tick(jiffy(t_reg) + 2)``; the memslot ioctl returns at ``t_end``. ``t_end - fire tick`` is everything
after the tick: the timer softirq, the kworker getting a CPU, the grace-period steps, the callback
work, the wake-up. Subtracting the steps the model already counts (its chain with a zero timer latency)
leaves the timer latency the profile records.

Before that, right after KVM_CREATE_VM, a memslot on the new VM's idle srcu_struct: its expedited
grace period needs no timer; its duration beyond the model's (the kworker and the waiter getting a
CPU) is the wake-up latency of a wait no timer ended, the profile's second distribution, with how long
the caller ran before it (from its sleep to the memslot: KVM_CREATE_VM, mostly), which a waiter's
chance of being switched in only at the next tick grows with. It is taken
where most such waits of a set-up are (a VM's KVM_CREATE_IRQCHIP, its first memslots, a deassign with
nothing pending): with no grace period's callbacks still queued ahead of it. Taken right after a
timer-ended grace period instead, it waited behind that grace period's callbacks on the boot CPU, and
under load its tail ran to milliseconds that a VM's first waits do not show.

Every other run spins CALLER_RUN_NS between the first registration and its memslot: on a busy host a
caller that worked a few hundred µs before it slept is often switched in only at the next tick, behind
the busy task its wake-up does not preempt, where one that slept at once is not. The difference in the
share of memslots a whole tick late between the two kinds of run is the profile's
``waiter_tick_wait``; the latency distribution is taken from the runs that did not spin.

Right after the first timer-ended memslot returns, a second registration and a third memslot: the
same timer wait, armed after a grace period woke the caller, as a VMM's registration after a
deregistration or a memslot change is. Each run sleeps its random part of a jiffy before
KVM_CREATE_VM.

How the CPUs ticked. Any of these timers can fire a tick after its bucket (``kernel_model.tick``
says when). Where tracefs can be used, the calibration traces the CPUs' tick handlers, their tick
stops and the timers themselves (``minivmm.timing.ticktrace``): the profile then records the
measured :class:`kernel_model.tick.TickEnvironment` (how often the other CPU ticked and for how long,
whether the caller's CPU kept its tick through a wait, whose handler ran first, which CPU the caller
was on), and a timer that fired a tick late has that tick taken out of its latency (the model makes
the slip itself). Without tracefs the profile says the ticks were not measured, and the model's host
is a quiet one (no slip; a late timer's whole delay stays in the latency distribution).

The tick grid is not known to user space; it is found from the runs themselves: with the true grid,
no run's memslot returns before its timer's tick, and a grid shifted either way puts the runs that
registered next to a tick boundary a whole jiffy off (a negative latency). The grid offset is the
middle of the widest range of offsets with no negative latency.

A registration issued a few µs before a boundary can arm its timer after it: it then fires a tick
later than ``t_reg`` implies, on time. Counted from ``t_reg`` alone such runs read as a whole tick late
(on this project's host, 4 of the 5 "late" first memslots of 1,000 runs were registrations issued
21-24 µs before a boundary). Each registration's return is recorded too, and a run whose arming could
lie in either jiffy (within the grid's uncertainty) is counted from the later tick when the wait ended
after it (:func:`resolved_latency`).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from kernel_model.costs import Costs
from kernel_model.kvm_main import KvmModel
from kernel_model.platforms import get_platform
from kernel_model.profile import HostProfile, quantile_points
from kernel_model.sim import NSEC_PER_SEC, SWITCHED_IN_LATE_NS, Sim
from kernel_model.tick import LEAD_BINS_NS, TickEnvironment
from kernel_model.variants import get_variant
from minivmm.timing.ticktrace import TickRecord, TickTracer, TimerFate, tick_environment, timer_fates

#: Offsets tried when searching for the tick grid (ns).
GRID_STEP_NS = 2_000
MEMSLOT_SIZE = 2 << 20


class CalibrationError(RuntimeError):
    """The runs do not determine a tick grid (too few runs, or the host is not behaving as a timer rule)."""


@dataclass
class CalibrationRun:
    """One run: when the registration was issued and when the memslot ioctl returned (CLOCK_MONOTONIC)."""

    t_reg_ns: int
    t_end_ns: int
    #: The VM's first memslot's duration (an expedited grace period on an idle srcu_struct); 0 if not taken.
    idle_sync_ns: int = 0
    #: The second registration (right after the first memslot) and the third memslot's return; 0 if
    #: not taken.
    t_reg2_ns: int = 0
    t_end2_ns: int = 0
    #: When each registration ioctl returned (0: not recorded, taken as its start). Its timer was armed
    #: somewhere in between: a registration issued a few µs before a tick boundary may arm after it.
    t_reg_end_ns: int = 0
    t_reg2_end_ns: int = 0
    #: How long the run spun between the first registration's return and the memslot (0: not at all).
    spun_ns: int = 0
    #: How long the caller ran between its sleep and the idle memslot's call (KVM_CREATE_VM, mostly;
    #: 0: not recorded): a wake-up's chance of waiting for the next tick grows with it.
    idle_ran_ns: int = 0


#: Every other calibration run spins this long between its registration and its memslot: a caller that
#: worked a few hundred µs before its wait is, on a busy host, switched in only at the next tick more
#: often than one that slept at once (traced with two busy loops, scripts/trace_wakeups.py: 10-20% of
#: them against 0-7%).
CALLER_RUN_NS = 300_000


def spins(index: int) -> bool:
    """Whether calibration run ``index`` spins CALLER_RUN_NS before its memslot (every other one)."""
    return index % 2 == 1


def _zero_latency_model(hz: int, platform: str, costs: Costs | None) -> tuple[Sim, KvmModel]:
    base = costs or Costs()
    sim = Sim(hz, 0.5, base._replace(timer_latency=0, timer_latency_samples=(), wakeup_latency_samples=(),
                                     cpus=TickEnvironment()))
    return sim, KvmModel(sim, get_variant("call_srcu"), get_platform(platform))


def model_chain_ns(hz: int, platform: str, costs: Costs | None = None) -> int:
    """What the model counts after the timer's tick with a zero timer latency: the grace-period steps,
    the callback work and the wake-up, from the tick to the memslot ioctl's return."""
    sim, kvm = _zero_latency_model(hz, platform, costs)
    j0 = sim.jiffies
    kvm.ioeventfd(0xD0000050, 4, 0)
    kvm.set_user_memory_region(0, 0, MEMSLOT_SIZE)
    return sim.now - sim.tick_time(j0 + 2)


def model_idle_sync_ns(hz: int, platform: str, costs: Costs | None = None) -> int:
    """The model's duration of the VM's first memslot (an expedited grace period on an idle
    srcu_struct)."""
    sim, kvm = _zero_latency_model(hz, platform, costs)
    t0 = sim.now
    kvm.set_user_memory_region(1, 0x100000000, MEMSLOT_SIZE)
    return sim.now - t0


def _after_fire(t_end: int, armed_jiffy: int, tick_ns: int, offset: int) -> int:
    """How long after the tick its timer fires on (the second after the jiffy it was armed in, on the
    grid) a wait ended."""
    return t_end - ((armed_jiffy + 2) * tick_ns + offset)


def _latency(t_reg: int, t_end: int, tick_ns: int, offset: int) -> int:
    """:func:`_after_fire` for a timer armed in the jiffy of ``t_reg``."""
    return _after_fire(t_end, (t_reg - offset) // tick_ns, tick_ns, offset)


def _latencies(runs: list[CalibrationRun], tick_ns: int, offset: int) -> list[int]:
    return [_latency(r.t_reg_ns, r.t_end_ns, tick_ns, offset) for r in runs]


#: Runs allowed to disagree with the grid (see estimate_tick_grid): at most this share, or one run.
LATE_JIFFIES_SHARE = 0.03


def _negatives(runs: list[CalibrationRun], tick: int, offset: int) -> int:
    return sum(lat < 0 for lat in _latencies(runs, tick, offset))


class TickGrid(NamedTuple):
    """Where the ticks fall in CLOCK_MONOTONIC: at ``offset`` + k/HZ, known to within ``uncertainty_ns``."""

    offset: int
    uncertainty_ns: int


def estimate_tick_offset(runs: list[CalibrationRun], hz: int) -> int:
    """The tick grid's offset in CLOCK_MONOTONIC (0 <= offset < 1/HZ): :func:`estimate_tick_grid`'s."""
    return estimate_tick_grid(runs, hz).offset


def estimate_tick_grid(runs: list[CalibrationRun], hz: int) -> TickGrid:
    """The tick grid in CLOCK_MONOTONIC, from the runs (module docstring); its uncertainty is half the
    range of offsets that fit equally well.

    A few runs may return "before" their timer's tick on the true grid: when the tick interrupt that
    advances ``jiffies`` arrives late (a virtual machine's ticks can), a registration just after a
    boundary still reads the old jiffy and its timer fires a tick earlier. Up to LATE_JIFFIES_SHARE of
    the runs (or one) may do so; the grid is the middle of the widest range of offsets with the
    fewest such runs.
    """
    tick = NSEC_PER_SEC // hz
    counts = [_negatives(runs, tick, o) for o in range(0, tick, GRID_STEP_NS)]
    fewest = min(counts)
    if fewest > max(1, int(LATE_JIFFIES_SHARE * len(runs))):
        raise CalibrationError(f"no tick grid fits the runs ({fewest} of {len(runs)} memslots returned before "
                               "any timer could have fired: is the host's HZ right?)")
    good = [c == fewest for c in counts]
    n = len(good)
    best_len, best_start = 0, 0
    for start in range(n):  # widest circular run of good offsets
        if good[start] and not good[start - 1] or all(good):
            length = 0
            while length < n and good[(start + length) % n]:
                length += 1
            if length > best_len:
                best_len, best_start = length, start
            if all(good):
                break
    if best_len * GRID_STEP_NS > tick // 4:
        raise CalibrationError(f"the runs leave the tick grid undetermined within {best_len * GRID_STEP_NS} ns; "
                               "use more runs")
    return TickGrid(int((best_start + best_len / 2) * GRID_STEP_NS) % tick, best_len * GRID_STEP_NS // 2)


def resolved_latency(t_reg: int, t_reg_end: int, t_end: int, tick_ns: int, grid: TickGrid) -> int | None:
    """How long after its timer's tick a wait ended, when the tick the timer was armed in is ambiguous.

    The timer was armed between ``t_reg`` and ``t_reg_end`` (0: same as ``t_reg``), and the grid is known
    to ``grid.uncertainty_ns``: a registration that close to a boundary may have armed in either jiffy.
    Of the candidate fire ticks, the latest one the wait ended after is taken, so that a timer armed just
    past a boundary is not counted a whole tick late (it was not late: it was armed a jiffy later than
    ``t_reg`` says). Without such a tick (the tick interrupt itself came late, see
    :func:`estimate_tick_grid`), the tick before the earliest candidate. None if even that is after
    ``t_end``."""
    first = (t_reg - grid.uncertainty_ns - grid.offset) // tick_ns
    last = (max(t_reg, t_reg_end) + grid.uncertainty_ns - grid.offset) // tick_ns
    for jiffy in range(last, first - 2, -1):
        lat = _after_fire(t_end, jiffy, tick_ns, grid.offset)
        if lat >= 0:
            return lat
    return None


def timer_latencies(runs: list[CalibrationRun], hz: int, chain_ns: int, grid: TickGrid | None = None,
                    late_ticks: list[int] | None = None) -> list[int]:
    """Per run, the latency beyond the model's fixed chain (>= 0), each from the tick its timer fired on
    (:func:`resolved_latency`). ``grid``: the tick grid, if already estimated. ``late_ticks``: per run,
    the ticks its timer was traced firing after its bucket, which the model makes itself and so are
    not latency."""
    if grid is None:
        grid = estimate_tick_grid(runs, hz)
    return [max(0, lat) for r, lat in beyond_chain(runs, hz, chain_ns, grid, late_ticks) if not r.spun_ns]


def beyond_chain(runs: list[CalibrationRun], hz: int, chain_ns: int, grid: TickGrid,
                 late_ticks: list[int] | None = None) -> list[tuple[CalibrationRun, int]]:
    """Each run whose first wait is resolved (:func:`resolved_latency`) with what it took beyond the
    model's fixed chain, from the tick its timer fired on (its traced slip, ``late_ticks``, taken out:
    the model makes that itself); may be negative."""
    tick = NSEC_PER_SEC // hz
    out = []
    for i, r in enumerate(runs):
        lat = resolved_latency(r.t_reg_ns, r.t_reg_end_ns, r.t_end_ns, tick, grid)
        if lat is not None:
            slip = late_ticks[i] if late_ticks is not None else 0
            out.append((r, lat - slip * tick - chain_ns))
    return out


def waiter_tick_wait(runs: list[CalibrationRun], hz: int, chain_ns: int, grid: TickGrid,
                     late_ticks: list[int] | None = None) -> tuple[int, float] | None:
    """How much more often a waiter that spun before its wait ended a whole tick late (its latency beyond
    the chain over half a tick, its timer's own slip taken out) than one that did not: (the spin, the
    extra share), for ``Costs.waiter_tick_wait``; None without runs of both kinds."""
    tick = NSEC_PER_SEC // hz
    late: dict[bool, list[bool]] = {False: [], True: []}
    for r, lat in beyond_chain(runs, hz, chain_ns, grid, late_ticks):
        late[bool(r.spun_ns)].append(lat > tick // 2)
    if not late[False] or not late[True]:
        return None
    spun = max(r.spun_ns for r in runs)
    extra = sum(late[True]) / len(late[True]) - sum(late[False]) / len(late[False])
    return spun, round(max(0.0, extra), 4)


def late_shares(runs: list[CalibrationRun], hz: int, grid: TickGrid | None = None) -> tuple[float, float]:
    """The shares of first and of second registrations whose memslot returned more than half a tick
    after their timer's bucket, as user space sees them (a tick slip, or a late wake-up). The first
    counts only the runs that did not spin before that memslot (:func:`spins`): a caller that ran for
    a while is switched in late more often, which ``waiter_tick_wait`` says apart."""
    tick = NSEC_PER_SEC // hz
    if grid is None:
        grid = estimate_tick_grid(runs, hz)

    def share(waits: list[tuple[int, int, int]]) -> float:
        lats = [lat for w in waits if (lat := resolved_latency(*w, tick, grid)) is not None]
        return sum(lat > tick // 2 for lat in lats) / len(lats) if lats else 0.0

    return (share([(r.t_reg_ns, r.t_reg_end_ns, r.t_end_ns) for r in runs if not r.spun_ns]),
            share([(r.t_reg2_ns, r.t_reg2_end_ns, r.t_end2_ns) for r in runs if r.t_reg2_ns]))


def run_calibration(repeat: int, hz: int, kvm_path: str = "/dev/kvm", seed: int | None = None,
                    on_progress: Callable[[int], None] | None = None, first: int = 0) -> list[CalibrationRun]:
    """``repeat`` runs on real KVM (see the module docstring), each in a fresh VM, by this thread
    (which the tick trace follows); every other one spins before its first memslot (:func:`spins`;
    ``first`` is the index of the first run, for a caller that makes one run at a time)."""
    from minivmm.kvm.memory import GuestMemory
    from minivmm.kvm.system import Kvm
    from minivmm.kvm.uapi import lib
    from minivmm.kvm.vm import IoEvent

    rng = random.Random(seed)
    runs = []
    with Kvm(kvm_path) as kvm:
        for i in range(repeat):
            # Everything a run opens is closed whatever interrupts it (a ^C during the sleep too).
            with contextlib.ExitStack() as stack:
                mem = stack.enter_context(GuestMemory(0, MEMSLOT_SIZE))
                mem2 = stack.enter_context(GuestMemory(0x100000000, MEMSLOT_SIZE))
                mem3 = stack.enter_context(GuestMemory(0x200000000, MEMSLOT_SIZE))
                efd = lib.eventfd(0, lib.EFD_CLOEXEC | lib.EFD_NONBLOCK)
                stack.callback(os.close, efd)
                time.sleep(rng.random() / hz)
                t_awake = time.monotonic_ns()
                vm = stack.enter_context(kvm.create_vm())
                t_idle = time.monotonic_ns()
                vm.set_user_memory_region(1, 0x100000000, MEMSLOT_SIZE, mem2.host_addr)
                idle_sync = time.monotonic_ns() - t_idle
                t_reg = time.monotonic_ns()
                vm.register_ioevent(IoEvent(0xD0000050, 4, efd, 0, False))
                t_reg_end = time.monotonic_ns()
                spun = CALLER_RUN_NS if spins(first + i) else 0
                while time.monotonic_ns() < t_reg_end + spun:
                    pass
                vm.set_user_memory_region(0, 0, MEMSLOT_SIZE, mem.host_addr)
                t_end = time.monotonic_ns()
                vm.register_ioevent(IoEvent(0xD0000060, 4, efd, 0, False))
                t_reg2_end = time.monotonic_ns()
                vm.set_user_memory_region(2, 0x200000000, MEMSLOT_SIZE, mem3.host_addr)
                t_end2 = time.monotonic_ns()
                runs.append(CalibrationRun(t_reg, t_end, idle_sync, t_end, t_end2, t_reg_end, t_reg2_end, spun,
                                           t_idle - t_awake))
            if on_progress:
                on_progress(i + 1)
    return runs


@dataclass(frozen=True)
class TickMeasurement:
    """What the tick trace of a calibration found: the environment, each run's two timers' fates, and
    why there is none (tracefs not usable here) when ``env`` is None."""

    env: TickEnvironment | None
    first: list[TimerFate | None]
    second: list[TimerFate | None]
    why_not: str = ""


def measure_ticks(runs: list[CalibrationRun], record: TickRecord | None, tid: int, nr_cpus: int,
                  why_not: str = "") -> TickMeasurement:
    """The tick environment and each run's timers' fates from the trace ``record`` of these runs (made by
    thread ``tid``); an empty measurement saying ``why_not`` without one."""
    if record is None:
        return TickMeasurement(None, [None] * len(runs), [None] * len(runs), why_not or "not traced")
    fates = timer_fates(record, tid, nr_cpus)
    armed = [f.armed_ns for f in fates]

    def fate_in(start: int, end: int) -> TimerFate | None:
        i = bisect.bisect_left(armed, start)
        return fates[i] if i < len(fates) and armed[i] <= max(start, end) else None

    first = [fate_in(r.t_reg_ns, r.t_reg_end_ns) for r in runs]
    second = [fate_in(r.t_reg2_ns, r.t_reg2_end_ns) if r.t_reg2_ns else None for r in runs]
    pairs = [(f, (r.t_reg_end_ns, r.t_end_ns)) for f, r in zip(first, runs) if f is not None]
    pairs += [(f, (r.t_reg2_end_ns, r.t_end2_ns)) for f, r in zip(second, runs) if f is not None]
    if not pairs:
        return TickMeasurement(None, first, second, "no calibration timer was traced")
    env = tick_environment(record, [f for f, _ in pairs], nr_cpus, [w for _, w in pairs])
    return TickMeasurement(env, first, second)


def make_profile(runs: list[CalibrationRun], hz: int, platform: str, kernel: str,
                 ticks: TickMeasurement | None = None) -> HostProfile:
    """The host profile of these runs, with the measured tick environment when the ticks were traced."""
    grid = estimate_tick_grid(runs, hz)  # a search over the whole jiffy: once for both uses
    late = None
    if ticks is not None and ticks.env is not None:
        late = [f.late_ticks or 0 if f is not None else 0 for f in ticks.first]
    chain = model_chain_ns(hz, platform)
    lat = timer_latencies(runs, hz, chain, grid, late)
    waiter = waiter_tick_wait(runs, hz, chain, grid, late)
    idle = model_idle_sync_ns(hz, platform)
    wake = [max(0, r.idle_sync_ns - idle) for r in runs if r.idle_sync_ns]
    ran = sorted(r.idle_ran_ns for r in runs if r.idle_sync_ns and r.idle_ran_ns)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    env, how = (ticks.env, "tracefs") if ticks is not None and ticks.env is not None else (TickEnvironment(), "")
    return HostProfile(hz, platform, kernel, now, (load[0], load[1], load[2]), len(runs),
                       tuple(quantile_points(lat)), tuple(quantile_points(wake)) if wake else (), env, how,
                       fixed_cost_scatter(runs), waiter, ran[len(ran) // 2] if ran else 0)


class Calibration(NamedTuple):
    """A calibration's runs, what the tick trace found, and the profile made of them."""

    runs: list[CalibrationRun]
    ticks: TickMeasurement
    profile: HostProfile


def calibrate(repeat: int, hz: int, platform: str, kernel: str, kvm_path: str = "/dev/kvm",
              seed: int | None = None, on_progress: Callable[[int], None] | None = None,
              trace_ticks: bool = True) -> Calibration:
    """``repeat`` calibration runs, their ticks traced where tracefs can be used (``trace_ticks``), and
    the profile of them."""
    tracer = TickTracer(NSEC_PER_SEC // hz)
    if not trace_ticks:
        tracer.why_not = "not asked to"

    def progress(done: int) -> None:
        tracer.poll()
        if on_progress:
            on_progress(done)

    with tracer if trace_ticks else contextlib.nullcontext():
        runs = run_calibration(repeat, hz, kvm_path, seed, progress)
    ticks = measure_ticks(runs, tracer.record, threading.get_native_id(), os.cpu_count() or 1, tracer.why_not)
    return Calibration(runs, ticks, make_profile(runs, hz, platform, kernel, ticks))


def model_late_shares(env: TickEnvironment, hz: int, platform: str, runs: int = 2000, seed: int = 0,
                      cpus: list[int] | None = None) -> tuple[float, float]:
    """The shares of the calibration's first and second timers the model makes fire a tick late with
    the tick environment ``env`` (``runs`` model runs of the calibration's steps), the caller's CPU in
    model run ``i`` being ``cpus[i % len(cpus)]`` (the traced runs' CPUs) or, without ``cpus``, drawn."""
    rng = random.Random(seed)
    late = [0, 0]
    for i in range(runs):
        sim = Sim(hz, rng.random(), Costs(cpus=env), rng, cpus[i % len(cpus)] if cpus else None)
        kvm = KvmModel(sim, get_variant("call_srcu"), get_platform(platform))
        kvm.set_user_memory_region(1, 0x100000000, MEMSLOT_SIZE)
        for k, addr in enumerate((0xD0000050, 0xD0000060)):
            before = sim.ticks.slips
            kvm.ioeventfd(addr, 4, 0)
            kvm.set_user_memory_region(2 * k, (2 * k) << 32, MEMSLOT_SIZE)
            late[k] += sim.ticks.slips > before
    return late[0] / runs, late[1] / runs


def describe(profile: HostProfile, runs: list[CalibrationRun], ticks: TickMeasurement) -> str:
    """What ``timing --calibrate`` prints about a new profile (after its path), ending in a newline."""
    q = profile.timer_latency_ns
    n = len(q) - 1
    first, second = late_shares(runs, profile.hz)
    lines = [f"{len(runs)} runs at HZ={profile.hz} on {profile.platform}, load average {profile.loadavg[0]:.2f}; "
             f"timer-to-waiter latency beyond the model's fixed steps: p50 {q[n // 2] / 1000:.0f} us, "
             f"p90 {q[n * 9 // 10] / 1000:.0f} us, p99 {q[n * 99 // 100] / 1000:.0f} us, max {q[n] / 1000:.0f} us",
             f"memslots more than half a tick late: {first:.1%} after the first registration (the runs that "
             f"did not spin before it), {second:.1%} after the second"]
    idle = profile.wakeup_latency_ns  # the idle memslots' latencies beyond the model's fixed steps
    if idle and profile.wakeup_latency_run_ns:
        late_idle = sum(d > SWITCHED_IN_LATE_NS for d in idle) / len(idle)
        lines.append(f"the VM's first memslot (a wait no timer ended) over {SWITCHED_IN_LATE_NS // 1000} us late "
                     f"(its caller switched in behind another task): {late_idle:.1%}, "
                     f"its caller having run {profile.wakeup_latency_run_ns / 1000:.0f} us before it (median)")
    if profile.waiter_tick_wait is not None:
        spun, extra = profile.waiter_tick_wait
        lines.append(f"a caller that spun {spun / 1000:.0f} us before its wait was switched in a tick late "
                     f"{extra:.1%} more often (every other run spun)")
    env = ticks.env
    if env is None:
        lines.append(f"the CPUs' ticks were not measured ({ticks.why_not}): the model takes the host as quiet "
                     "(no timer slips a tick)")
    else:
        traced = [[f for f in fates if f is not None and f.late_ticks is not None]
                  for fates in (ticks.first, ticks.second)]
        slipped = [[f for f in fates if f.late_ticks] for fates in traced]
        allowed = sum(f.rule_allows_slip for fates in slipped for f in fates)
        raced = sum(f.other_ran_first for fates in slipped for f in fates)
        model = model_late_shares(env, profile.hz, profile.platform,
                                  cpus=[f.cpu for f in ticks.first if f is not None and f.cpu < env.nr_cpus])
        lines.append(f"ticks (tracefs): the other CPU ticked at {env.other_tick_share:.0%} of the ticks (stayed "
                     f"ticking {env.other_tick_persist:.0%}), the caller's CPU kept its tick through "
                     f"{env.caller_keeps_tick:.0%} of the waits and ran its handler first at "
                     f"{env.caller_tick_first:.0%} of the ticks both ran ({env.caller_first_persist:.0%} again at "
                     f"the next), was the boot CPU in {env.caller_on_boot_cpu:.0%} of the runs")
        if sum(v is not None for v in env.other_holds_duty_by_cpu) > 1:
            def pct(v: float | None) -> str:
                return "-" if v is None else f"{v:.0%}"
            lines.append("per CPU the caller was on: handler first "
                         + " / ".join(pct(v) for v in env.caller_tick_first_by_cpu)
                         + ", another CPU held the duty where a slip was allowed "
                         + " / ".join(pct(v) for v in env.other_holds_duty_by_cpu))
        if env.slips_by_lead:
            lines.append(race_line(env))
        lines.append(f"timers a tick late (traced): {len(slipped[0])} of {len(traced[0])} first, {len(slipped[1])} of "
                     f"{len(traced[1])} second ({allowed} of them where kernel_model.tick's rule allows a slip, "
                     f"{raced} after another CPU's handler: {env.other_first_slips:.0%} of such timers); "
                     f"the model with these ticks: {model[0]:.1%} first, {model[1]:.1%} second")
    return "\n".join(lines) + "\n"


def race_line(env: TickEnvironment) -> str:
    """One line of TickEnvironment.slips_by_lead: per CPU, the share of timers that slipped per bin of
    their CPU's handler lead (where no tick stop named the duty's holder)."""
    edges = [f"{e / 1000:g}" for e in LEAD_BINS_NS]
    names = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    rows = ["CPU {}: {}".format(cpu, ", ".join(f"{n} {'-' if v is None else f'{v:.0%}'}" for n, v in zip(names, row)))
            for cpu, row in enumerate(env.slips_by_lead)]
    return ("where no tick stop said who held the duty, timers that slipped by their CPU's handler lead (us) over "
            "the other's: " + "; ".join(rows))


def fixed_cost_scatter(runs: list[CalibrationRun]) -> tuple[float, int] | None:
    """This host's scatter around a fixed cost, for the verdict's noise model: Student's t fitted to
    ln(duration / median) of each run's two registrations (KVM_IOEVENTFD, whose cost does not depend
    on the tick phase), each against the median of its own kind. None with too few runs to fit."""
    import math
    import statistics

    from minivmm.timing.noise import fit_t

    residuals = []
    for kind in ((r.t_reg_ns, r.t_reg_end_ns) for r in runs), ((r.t_reg2_ns, r.t_reg2_end_ns) for r in runs):
        durations = [end - start for start, end in kind if start and end > start]
        if durations:
            mid = statistics.median(durations)
            residuals += [math.log(d / mid) for d in durations]
    if len(residuals) < 10:
        return None
    t = fit_t(residuals, center=False)
    return (t.scale, t.df)
