"""How busy the host's CPUs were while a measurement ran, from the kernel's pressure stall information
(PSI, ``/proc/pressure/cpu``, Linux 4.20+ with CONFIG_PSI).

The "some" line's ``total`` counts the microseconds during which at least one runnable task waited for
a CPU. Its growth over a measurement, as a share of the measurement's wall time, says how contended
the CPUs were: near 0 on a quiet host, tens of percent when other work competes. It matters here
because a grace period ends in a kworker that must get a CPU: on a contended host the tick-bound
stall stretches (this project's machine, with other test suites running, measured the first memslot's
stall 3 ms longer at 60-90% pressure), so a comparison or a gate decision made then says more about the
load than about the kernel.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

PSI_CPU = "/proc/pressure/cpu"


def read_some_total_us(path: str = PSI_CPU) -> int | None:
    """The "some" stall total (µs) of ``path``, or None where PSI is not available or not readable."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"^some .*\btotal=(\d+)", text, re.M)
    return int(m.group(1)) if m else None


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
        end = read_some_total_us(self.path)
        elapsed_us = (time.monotonic_ns() - self.start_ns) / 1000
        if self.start_total_us is None or end is None or elapsed_us <= 0:
            return None
        return round(min(100.0, max(0.0, (end - self.start_total_us) / elapsed_us * 100)), 1)
