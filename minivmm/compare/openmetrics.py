"""Fleet export: timing figures in the OpenMetrics text format, for Prometheus node_exporter's textfile
collector (``--collector.textfile.directory``). minivmm runs no server: a cron job or a systemd timer
writes the file, the collector the fleet already runs serves it.

The output is valid OpenMetrics (``# EOF`` last) and valid Prometheus text exposition (the ``# UNIT``
and ``# EOF`` lines are comments there), which is what the textfile collector reads. Families are
named after what they measure, not after a step: ``minivmm_timing_step_p50_seconds`` holds one gauge
per step (label ``step``), so one query covers every sequence and every host; the labels carry the
sequence, the step's number (from 1: ``kernel_model.sequences.step_number``), op and ioctl, the kernel
release, CONFIG_HZ, the platform and the verdict (the kernel variant the host behaves like, or
``none``).

:func:`render` and :class:`Family` are generic; :func:`trace_openmetrics` does the same for a
``minivmm trace --json`` document (one traced run: one value per step, no quantiles).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernel_model.stats import percentile

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass
class Family:
    """One metric family: a name, its help text, its type and unit, and its samples (labels, value)."""

    name: str
    help: str
    type: str = "gauge"
    unit: str = ""
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.unit and not self.name.endswith("_" + self.unit):
            raise ValueError(f"OpenMetrics wants a family with unit {self.unit!r} to end in _{self.unit}")


def escape(value: str) -> str:
    """A label value as the text formats quote it (backslash, double quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def render(families: list[Family]) -> str:
    """The families as OpenMetrics text, ending with ``# EOF``."""
    lines = []
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name!r} twice")
        seen.add(fam.name)
        lines.append(f"# HELP {fam.name} {_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        if fam.unit:
            lines.append(f"# UNIT {fam.name} {fam.unit}")
        for labels, value in fam.samples:
            bad = [k for k in labels if not _LABEL.fullmatch(k) or k.startswith("__")]
            if bad:
                raise ValueError(f"invalid label name {bad[0]!r}")
            body = ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{fam.name}{{{body}}} {_value(value)}" if body else f"{fam.name} {_value(value)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def host_labels(host: Mapping[str, Any]) -> dict[str, str]:
    """The labels every family of one run shares: kernel release, CONFIG_HZ and platform."""
    return {"kernel": str(host.get("kernel") or "unknown"), "hz": str(host.get("hz") or "unknown"),
            "platform": str(host.get("platform") or "unknown")}


def timing_families(doc: Mapping[str, Any]) -> list[Family]:
    """The families of a ``minivmm timing --json`` document: p10, p50 and p90 of each step (seconds, from
    the raw samples) and the number of repetitions."""
    verdict = doc.get("verdict", {}).get("variant") or "none"
    common = {"sequence": str(doc["sequence"]), **host_labels(doc["host"]), "verdict": str(verdict)}
    quantile_families = {q: Family(f"minivmm_timing_step_p{q}_seconds",
                                   f"p{q} of the step's ioctl duration over the repetitions (minivmm timing)",
                                   unit="seconds") for q in (10, 50, 90)}
    for step in doc["steps"]:
        labels = {**common, "step": str(step["step"]), "op": str(step["op"]), "ioctl": str(step["label"])}
        for q, fam in quantile_families.items():
            fam.samples.append((labels, percentile(step["samples_ns"], q) / 1e9))
    reps = Family("minivmm_timing_repetitions", "Repetitions of the sequence behind the quantiles (minivmm timing)")
    reps.samples.append((common, float(doc["repetitions"])))
    families = [*quantile_families.values(), reps]
    gate = doc.get("gate")
    if gate is not None:  # timing --baseline: 1 when a step regressed, labelled with the outcome
        fam = Family("minivmm_timing_gate_regressed",
                     "1 when a step regressed significantly against the baseline (minivmm timing --baseline)")
        regressed = 1.0 if gate["outcome"] == "regressed" else 0.0
        fam.samples.append(({**common, "outcome": str(gate["outcome"])}, regressed))
        families.append(fam)
    return families


def timing_openmetrics(doc: Mapping[str, Any]) -> str:
    """``minivmm timing --format openmetrics``: :func:`timing_families` rendered."""
    return render(timing_families(doc))


def trace_families(doc: Mapping[str, Any]) -> list[Family]:
    """The families of a ``minivmm trace --json`` document: the traced program's set-up ioctls, each
    step's measured duration (one trace is one sample: no quantiles), the whole set-up, and the number
    of KVM ioctls seen. Labels: the traced program, kernel, HZ, platform, verdict, and per step its
    number, op and ioctl. Without an explanation (HZ or platform unknown) only the ioctl count is given."""
    host = doc.get("host") or {}
    ex = doc.get("explanation") or None
    argv = doc.get("command") or ["unknown"]
    program = str(argv[0]).rsplit("/", 1)[-1] or "unknown"
    labels = host_labels({**host, **({"hz": ex.get("hz"), "platform": ex.get("platform")} if ex else {})})
    verdict = ((ex or {}).get("verdict") or {}).get("variant") or "none"
    common = {"program": program, **labels, "verdict": str(verdict)}
    ioctls = Family("minivmm_trace_ioctls", "KVM ioctls the traced program issued (minivmm trace)")
    count = doc.get("ioctl_count", len(doc.get("ioctls") or []))
    ioctls.samples.append((common, float(count)))
    if ex is None:
        return [ioctls]
    steps = Family("minivmm_trace_step_seconds", "Duration of each set-up step's ioctl in one traced run "
                   "(minivmm trace)", unit="seconds")
    for st in ex.get("steps", []):
        steps.samples.append(({**common, "step": str(st["step"]), "op": str(st["op"]), "ioctl": str(st["label"])},
                              float(st["measured_us"]) / 1e6))
    setup = Family("minivmm_trace_setup_seconds", "KVM_CREATE_VM to the end of the last set-up step, one traced "
                   "run (minivmm trace)", unit="seconds")
    setup.samples.append((common, float(ex["setup"]["measured_us"]) / 1e6))
    return [steps, setup, ioctls]


def trace_openmetrics(doc: Mapping[str, Any]) -> str:
    """``minivmm trace --format openmetrics``: :func:`trace_families` rendered."""
    return render(trace_families(doc))
