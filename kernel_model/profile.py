"""Host profiles: the measured latency between a timer firing and the waiter running, and how the
host's CPUs tick, per host.

``minivmm timing --calibrate`` measures it (see ``minivmm.timing.calibrate``) and saves a profile;
``minivmm model --profile FILE`` and ``minivmm timing --profile FILE`` (and ``trace``) give it to the
model, whose waiters woken by a timer then draw their latency from it (``Costs.timer_latency_samples``)
instead of the timers' fixed ``Costs.timer_latency``, and whose ticks follow the measured CPUs (``Costs.cpus``, see
``kernel_model.tick``). Without a profile nothing is random: fixed latencies, a quiet host.

The file is JSON::

    {"format": "minivmm-host-profile", "version": 3, "hz": 250, "platform": "pvm", "kernel": "6.18.0",
     "created": "2026-11-22T05:30:00Z", "loadavg": [1.2, 1.0, 0.8], "calibration_runs": 300,
     "timer_latency_ns": [41000, 43000, ...],    # the sorted latencies (up to 2001), >= 2 values
     "wakeup_latency_ns": [0, 0, ..., 3900000],   # the same for a wait no timer ended (optional)
     "ticks": {"nr_cpus": 2,                      # how the CPUs ticked (kernel_model.tick.TickEnvironment)
               "caller_on_boot_cpu": 0.5, "caller_keeps_tick": 0.4, "other_tick_share": 0.3,
               "other_tick_persist": 0.8, "caller_tick_first": 0.5,
               "other_holds_duty": 0.3, "other_first_slips": 0.02,
               "caller_tick_first_by_cpu": [0.2, 0.8],   # per CPU the caller is on (null: not measured)
               "slips_by_lead": [[0.05, 0.3, ...], [0.0, ...]],  # per CPU, per bin of its handler's
                                                  # lead, the share of timers that slipped (optional)
               "measured_with": "tracefs"},       # or "" (not measured: no tracefs; a quiet host)
     "fixed_cost_scatter": {"scale": 0.12, "df": 3},  # Student's t of ln(duration / its median) of the
                                                  # calibration's fixed-cost ioctls: this host's scatter
                                                  # around a fixed cost (optional; minivmm.timing.noise)
     "waiter_tick_wait": {"run_ns": 300000, "share": 0.12},  # how much more often a waiter that spun
                                                  # that long before its wait was switched in only at the
                                                  # next tick (optional; Costs.waiter_tick_wait)
     "wakeup_latency_run_ns": 262000}             # how long the caller ran before the waits of
                                                  # wakeup_latency_ns (optional; Costs.wakeup_latency_run_ns)

The default path is ``$XDG_CONFIG_HOME/minivmm/host-profile.json`` (``~/.config/...``): where
``--calibrate`` writes unless ``--profile FILE`` says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kernel_model.costs import Costs
from kernel_model.tick import TickEnvironment

FORMAT = "minivmm-host-profile"
#: 3: the CPUs' ticks (``ticks``) replace version 2's single share of slipped timers, which held only
#: for the one timer it was measured on; a version-2 profile is refused with a request to calibrate
#: again. (Version 1 kept 201 quantiles, which drawn as points over-weigh its slowest run.)
VERSION = 3
#: Why each older version cannot be used.
_OUTDATED = {1: "201 quantiles that over-weight its slowest run",
             2: "one tick-slip share instead of the CPUs' ticks"}
#: How many points of the measured distribution a profile keeps at most. A calibration of up to this
#: many runs is kept whole (its empirical distribution); a larger one is thinned to this many quantiles.
#: Keeping it whole matters for the tail: a 201-point table made the one slow run out of 400 the top
#: point, which the model then drew 1 time in 200, twice as often as the host ran it.
QUANTILES = 2001


class ProfileError(ValueError):
    """A profile file is missing, unreadable or not a host profile; the message says which."""


def default_path() -> str:
    """``$XDG_CONFIG_HOME/minivmm/host-profile.json``, or under ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "minivmm", "host-profile.json")


def quantile_points(samples: list[int], n: int = QUANTILES) -> list[int]:
    """The samples, sorted, if there are at most ``n``; else ``n`` quantiles of them at the middles of
    ``n`` equal shares of the mass ((k + 0.5) / n), by linear interpolation. Either way each point stands
    for the same share, which is how the model draws them (``Sim.draw``). Thinning loses what is rarer
    than one point's share (a run slower than all others in 10,000 is not kept by 2,001 points)."""
    s = sorted(samples)
    if not s:
        raise ValueError("no samples")
    if len(s) <= n:
        return s
    out = []
    for k in range(n):
        x = min(max((k + 0.5) / n * len(s) - 0.5, 0.0), len(s) - 1.0)
        i = int(x)
        j = min(i + 1, len(s) - 1)
        out.append(int(s[i] + (s[j] - s[i]) * (x - i)))
    return out


@dataclass(frozen=True)
class HostProfile:
    """One host's measured timer-to-waiter latency distribution and the conditions it was taken in."""

    hz: int
    platform: str
    kernel: str
    created: str
    loadavg: tuple[float, float, float]
    calibration_runs: int
    timer_latency_ns: tuple[int, ...]
    wakeup_latency_ns: tuple[int, ...] = ()
    #: How the host's CPUs ticked during the calibration (``Costs.cpus``).
    ticks: TickEnvironment = TickEnvironment()
    #: How ``ticks`` was measured: "tracefs" (the tick handlers traced), or "" (not measured: the
    #: defaults, a quiet host).
    ticks_measured_with: str = ""
    #: The scatter of this host's fixed-cost ioctls around their own medians, as Student's t on
    #: ln(duration / median): (scale, degrees of freedom); None in a profile made without it. The
    #: verdict's noise model takes it (``minivmm.timing.noise``).
    fixed_cost_scatter: tuple[float, int] | None = None
    #: (spin ns, extra share): how much more often a waiter that worked that long before its wait was
    #: switched in only at the next tick (``Costs.waiter_tick_wait``); None in a profile made without.
    waiter_tick_wait: tuple[int, float] | None = None
    #: How long the calibration's caller ran before the waits ``wakeup_latency_ns`` come from (the
    #: median; ``Costs.wakeup_latency_run_ns``); 0 in a profile made without.
    wakeup_latency_run_ns: int = 0

    def costs(self, base: Costs | None = None, hz: int | None = None) -> Costs:
        """``base`` (default ``Costs()``) with this profile's latency distribution.

        At another ``hz`` than the calibration's, whole calibration jiffies in a sample are rescaled to
        the new jiffy (``k * T_cal + r`` becomes ``k * T_hz + r``): on a loaded host part of the
        latency is quantized to the scheduler tick (a woken kworker that does not preempt the running
        task gets the CPU at the next tick), and that part follows HZ. This is an assumption, said
        wherever a profile is used at another HZ.
        """
        def rescale(samples: tuple[int, ...]) -> tuple[int, ...]:
            if hz is None or hz == self.hz:
                return samples
            t_cal, t_new = 1_000_000_000 // self.hz, 1_000_000_000 // hz
            return tuple(sorted((x // t_cal) * t_new + x % t_cal for x in samples))
        return (base or Costs())._replace(timer_latency_samples=rescale(self.timer_latency_ns),
                                   wakeup_latency_samples=rescale(self.wakeup_latency_ns),
                                   wakeup_latency_run_ns=self.wakeup_latency_run_ns,
                                   cpus=self.ticks, waiter_tick_wait=self.waiter_tick_wait or (0, 0.0))

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {"format": FORMAT, "version": VERSION, "hz": self.hz, "platform": self.platform,
                "kernel": self.kernel, "created": self.created, "loadavg": list(self.loadavg),
                "calibration_runs": self.calibration_runs, "timer_latency_ns": list(self.timer_latency_ns),
                "wakeup_latency_ns": list(self.wakeup_latency_ns),
                "ticks": {**self.ticks._asdict(), "measured_with": self.ticks_measured_with},
                **({"fixed_cost_scatter": {"scale": self.fixed_cost_scatter[0], "df": self.fixed_cost_scatter[1]}}
                   if self.fixed_cost_scatter else {}),
                **({"waiter_tick_wait": {"run_ns": self.waiter_tick_wait[0], "share": self.waiter_tick_wait[1]}}
                   if self.waiter_tick_wait else {}),
                **({"wakeup_latency_run_ns": self.wakeup_latency_run_ns} if self.wakeup_latency_run_ns else {})}

    @classmethod
    def from_json(cls, data: Any, where: str = "profile") -> HostProfile:
        """Validate and build; ProfileError names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProfileError(f"{where}: not a minivmm host profile (no \"format\": \"{FORMAT}\")")
        if data.get("version") in _OUTDATED:
            raise ProfileError(f"{where} was made by an older minivmm (format version {data['version']}, "
                               f"{_OUTDATED[data['version']]}): make it again with minivmm timing --calibrate")
        if data.get("version") != VERSION:
            raise ProfileError(f"{where}: profile version {data.get('version')!r} is not {VERSION}")
        def latencies(key: str, required: bool) -> list[int]:
            lat = data.get(key, None if required else [])
            if lat == [] and not required:
                return []
            if (not isinstance(lat, list) or len(lat) < 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10**10 for x in lat)
                    or lat != sorted(lat)):
                raise ProfileError(f"{where}: {key} must be a sorted list of at least 2 non-negative "
                                   "integers (ns)")
            return lat
        lat = latencies("timer_latency_ns", True)
        wake = latencies("wakeup_latency_ns", False)
        hz, runs = data.get("hz"), data.get("calibration_runs")
        if not isinstance(hz, int) or not 0 < hz <= 10000 or not isinstance(runs, int):
            raise ProfileError(f"{where}: hz must be 1..10000 and calibration_runs an integer")
        load = data.get("loadavg", [0.0, 0.0, 0.0])
        if not isinstance(load, list) or len(load) != 3 or not all(isinstance(x, (int, float)) for x in load):
            raise ProfileError(f"{where}: loadavg must be three numbers")
        ticks, measured = _ticks(data.get("ticks", {}), where)
        scatter = data.get("fixed_cost_scatter")
        if scatter is not None:
            scale, df = (scatter.get("scale"), scatter.get("df")) if isinstance(scatter, dict) else (None, None)
            if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 10
                    or isinstance(df, bool) or not isinstance(df, int) or not 1 <= df <= 1000):
                raise ProfileError(f"{where}: fixed_cost_scatter must hold a scale (0 to 10) and df (1 to 1000)")
        waiter = data.get("waiter_tick_wait")
        if waiter is not None:
            run_ns, share = (waiter.get("run_ns"), waiter.get("share")) if isinstance(waiter, dict) else (None, None)
            if (isinstance(run_ns, bool) or not isinstance(run_ns, int) or not 0 < run_ns <= 10**9
                    or isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1):
                raise ProfileError(f"{where}: waiter_tick_wait must hold run_ns (1 ns to 1 s) and share (0 to 1)")
        wake_run = data.get("wakeup_latency_run_ns", 0)
        if isinstance(wake_run, bool) or not isinstance(wake_run, int) or not 0 <= wake_run <= 10**9:
            raise ProfileError(f"{where}: wakeup_latency_run_ns must be an integer from 0 to 1 s (ns)")
        return cls(hz, str(data.get("platform", "")), str(data.get("kernel", "")), str(data.get("created", "")),
                   (float(load[0]), float(load[1]), float(load[2])), runs, tuple(lat), tuple(wake), ticks, measured,
                   None if scatter is None else (float(scatter["scale"]), int(scatter["df"])),
                   None if waiter is None else (int(waiter["run_ns"]), float(waiter["share"])), wake_run)


def _ticks(data: Any, where: str) -> tuple[TickEnvironment, str]:
    """The profile's ``ticks`` object; ProfileError naming what is wrong."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: ticks must be an object")
    measured = data.get("measured_with", "")
    fields = {k: v for k, v in data.items() if k != "measured_with"}
    unknown = set(fields) - set(TickEnvironment._fields)
    if unknown or not isinstance(measured, str):
        raise ProfileError(f"{where}: ticks has unknown fields ({', '.join(sorted(unknown)) or 'measured_with'})")
    nr = fields.get("nr_cpus", 2)
    if isinstance(nr, bool) or not isinstance(nr, int):
        raise ProfileError(f"{where}: ticks.nr_cpus must be an integer")
    for name in ("caller_tick_first_by_cpu", "other_holds_duty_by_cpu"):  # JSON arrays, per CPU
        if name in fields:
            if not isinstance(fields[name], (list, tuple)):
                raise ProfileError(f"{where}: ticks.{name} must be an array")
            fields[name] = tuple(fields[name])
    if "slips_by_lead" in fields:  # per CPU, an array of shares per lead bin
        rows = fields["slips_by_lead"]
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in rows):
            raise ProfileError(f"{where}: ticks.slips_by_lead must be an array of arrays")
        fields["slips_by_lead"] = tuple(tuple(r) for r in rows)
    env = TickEnvironment(**fields)
    try:
        env.check()
    except (ValueError, TypeError) as e:
        raise ProfileError(f"{where}: ticks.{e}") from None
    return env, measured


def _read_json(path: str) -> Any:
    """The JSON in ``path``, read by the one file reader (:func:`minivmm.files.read_json`: a regular
    file of at most :data:`minivmm.files.PROFILE_MAX` bytes, nested at most a few levels); ProfileError
    (one line) if it cannot be read or parsed."""
    from minivmm.files import PROFILE_MAX, FileRefused, read_json

    try:
        return read_json(path, "profile", PROFILE_MAX)
    except FileRefused as e:
        hint = " (make one with minivmm timing --calibrate)" if e.missing else ""
        raise ProfileError(f"{e}{hint}") from None


def is_profile_file(path: str) -> bool:
    """Whether ``path`` holds a minivmm host profile of any version (``--calibrate`` may replace
    one of ours, an outdated one included, and nothing else)."""
    try:
        data = _read_json(path)
    except ProfileError:
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_profile(path: str) -> HostProfile:
    """Read a profile file; ProfileError (one line) if it cannot be used."""
    return HostProfile.from_json(_read_json(path), f"profile {path!r}")
