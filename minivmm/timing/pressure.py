"""How busy the host's CPUs were while a measurement ran, from the kernel's pressure stall information
(PSI, ``/proc/pressure/cpu``, Linux 4.20+ with CONFIG_PSI).

The "some" line's ``total`` counts the microseconds during which at least one runnable task waited for
a CPU. Its growth over a measurement, as a share of the measurement's wall time, says how contended
the CPUs were: near 0 on a quiet host, tens of percent when other work competes. It matters here
because a grace period ends in a kworker that must get a CPU: on a contended host the tick-bound
stall stretches (this project's machine, with other test suites running, measured the first memslot's
stall 3 ms longer at 60-90% pressure), so a comparison or a gate decision made then says more about the
load than about the kernel. Every report (``timing``, ``trace``, ``compare``) states the pressure and the
load average of its run (:class:`Load`), and warns in one line above :data:`BUSY_PRESSURE_PCT`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

PSI_CPU = "/proc/pressure/cpu"


def _some_field(path: str, name: str) -> str | None:
    """Field ``name`` of the "some" line of the PSI file ``path``; None where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^some .*\b{name}=([\d.]+)", text, re.M)
    return m.group(1) if m else None


def read_some_total_us(path: str = PSI_CPU) -> int | None:
    """The "some" stall total (µs) of ``path``, or None where PSI is not available or not readable."""
    value = _some_field(path, "total")
    return int(value) if value is not None else None


def recent_pressure_pct(path: str = PSI_CPU) -> float | None:
    """The "some" line's ``avg10``: the share (0-100) of the last ten seconds in which a runnable task
    waited for a CPU; None where PSI is not available."""
    value = _some_field(path, "avg10")
    return float(value) if value is not None else None


def runnable_tasks(path: str = "/proc/loadavg") -> int | None:
    """How many tasks are runnable at this instant, the reader included (``/proc/loadavg``'s fourth
    field); None where unreadable."""
    try:
        with open(path) as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def busy_now(path: str = PSI_CPU) -> bool:
    """Whether some task waited for a CPU more than :data:`BUSY_PRESSURE_PCT` of the last ten seconds."""
    pct = recent_pressure_pct(path)
    return pct is not None and pct > BUSY_PRESSURE_PCT


@dataclass
class PressureWindow:
    """Started before a measurement; :meth:`percent` at its end gives the CPU pressure over it."""

    start_total_us: int | None
    start_ns: int
    path: str = PSI_CPU

    @classmethod
    def start(cls, path: str = PSI_CPU) -> PressureWindow:
        """Begin the window now."""
        return cls(read_some_total_us(path), time.monotonic_ns(), path)

    def percent(self) -> float | None:
        """The share (0-100) of the window's wall time in which some task waited for a CPU; None if
        PSI is unavailable."""
        return self.lap()[0]

    def lap(self) -> tuple[float | None, PressureWindow]:
        """:meth:`percent` now, and the window that begins where this one ends (one read of PSI), for
        a look at the pressure again and again."""
        end = read_some_total_us(self.path)
        now = time.monotonic_ns()
        elapsed_us = (now - self.start_ns) / 1000
        following = PressureWindow(end, now, self.path)
        if self.start_total_us is None or end is None or elapsed_us <= 0:
            return None, following
        return round(min(100.0, max(0.0, (end - self.start_total_us) / elapsed_us * 100)), 1), following


#: CPU pressure (percent of a run's wall time some task waited for a CPU) above which a run was made
#: on a busy host: every report warns, and the gate calls the measurement unusable. Quiet hosts stay
#: in single digits; at 20% a grace period's kworker already waits for a CPU now and then.
BUSY_PRESSURE_PCT = 20.0


@dataclass(frozen=True)
class Load:
    """How busy the host was during a run: CPU pressure (PSI "some", % of the run's wall time; None
    without PSI) and the load average (1, 5, 15 minutes) at its end (None where unreadable)."""

    cpu_pressure_pct: float | None
    load_average: tuple[float, float, float] | None

    @property
    def busy(self) -> bool:
        """Over :data:`BUSY_PRESSURE_PCT`; without PSI, a 1-minute load average above the CPU count."""
        if self.cpu_pressure_pct is not None:
            return self.cpu_pressure_pct > BUSY_PRESSURE_PCT
        if self.load_average is not None:
            return self.load_average[0] > (os.cpu_count() or 1)
        return False

    def describe(self, missing: str = "not measured (no /proc/pressure/cpu)") -> str:
        """``CPU pressure 13.2% (PSI some, over the run), load average 2.31 2.05 1.10 on 2 CPUs``;
        ``missing`` says why there is no pressure when there is none."""
        parts = []
        if self.cpu_pressure_pct is not None:
            parts.append(f"CPU pressure {self.cpu_pressure_pct:g}% (PSI some, over the run)")
        else:
            parts.append(f"CPU pressure {missing}")
        if self.load_average is not None:
            parts.append("load average " + " ".join(f"{x:.2f}" for x in self.load_average)
                         + f" on {os.cpu_count() or 1} CPUs")
        return ", ".join(parts)

    def warning(self) -> str | None:
        """One line when the host was busy (:attr:`busy`), else None."""
        if not self.busy:
            return None
        if self.cpu_pressure_pct is not None:
            why = f"CPU pressure {self.cpu_pressure_pct:g}% over the run, above {BUSY_PRESSURE_PCT:g}%"
        else:
            assert self.load_average is not None  # busy without PSI means a load average was read
            why = f"load average {self.load_average[0]:.2f} above {os.cpu_count() or 1} CPUs"
        return (f"the host was busy ({why}): grace periods end late under load, so the stalls and the "
                "verdict may reflect the load rather than the kernel")

    def to_json(self) -> dict[str, object]:
        """``{"cpu_pressure_pct": ..., "load_average": [...]}``."""
        return {"cpu_pressure_pct": self.cpu_pressure_pct,
                "load_average": list(self.load_average) if self.load_average is not None else None}


def load_average() -> tuple[float, float, float] | None:
    """``os.getloadavg()``, or None where it cannot be read."""
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return None
    return (round(a, 2), round(b, 2), round(c, 2))


@dataclass
class LoadWindow:
    """Started before a run; :meth:`end` gives its :class:`Load`."""

    pressure: PressureWindow

    @classmethod
    def start(cls, path: str = PSI_CPU) -> LoadWindow:
        """Begin measuring now."""
        return cls(PressureWindow.start(path))

    def end(self) -> Load:
        """The load over the run until now."""
        return Load(self.pressure.percent(), load_average())
