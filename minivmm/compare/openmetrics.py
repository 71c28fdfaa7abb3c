"""Fleet export: timing and trace figures in the OpenMetrics text format, for Prometheus node_exporter's
textfile collector (``--collector.textfile.directory``). minivmm runs no server: a cron job or a
systemd timer writes the file, the collector the fleet already runs serves it.

Generated with ``prometheus_client`` (the optional ``metrics`` extra: ``pip install
'minivmm[metrics]'``), the Prometheus way:

- one family per measured quantity: ``minivmm_timing_step_duration_seconds`` is a summary whose
  ``quantile`` label says which (0 the minimum, 0.1, 0.5, 0.9, 1 the maximum), with ``_count`` (the
  repetitions) and ``_sum``; a trace, one sample per step, gives gauges;
- labels say what was measured (sequence or traced program, step, op, ioctl, kernel release,
  CONFIG_HZ, platform), never the result: the verdict is an info metric of its own,
  ``minivmm_timing_verdict_info{variant="call_srcu"} 1``, so a new verdict does not start new series;
- a series per step only for the steps that stall (median 1 ms or more) or that tell the kernel
  variants apart (the verdict's discriminating steps); the others are summed into one
  (``..._other_steps_duration_seconds``), with their number beside it: a traced QEMU has 230 set-up
  steps, most of them ioctls the model does not model;
- exact values: every duration is an integer of nanoseconds over 1e9 (a quantile between two samples
  rounded to the nanosecond, the clock's resolution), written as the shortest decimal that reads back
  as it (``1.061e-06``, not ``1.0609999999999999e-06``).

Every label value goes through :func:`minivmm.safetext.safe` (a traced program's name may hold
anything): no control character reaches the file, and it is valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kernel_model.stats import is_stall, median, percentile_sorted
from minivmm.safetext import safe

#: The summary quantiles: the minimum, p10, p50, p90 and the maximum.
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed; the message says how to install it."""


def check_available() -> None:
    """Raise :class:`MetricsUnavailable` unless ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsUnavailable("--format openmetrics needs prometheus_client: pip install 'minivmm[metrics]'") \
            from None


def label(value: object) -> str:
    """A label value: printable, valid UTF-8 (:func:`minivmm.safetext.safe`)."""
    return safe(value)


def seconds(ns: float) -> float:
    """Nanoseconds as seconds: an integer (or half-integer) of ns over 1e9 is the closest double to the
    exact decimal, so its shortest repr is that decimal."""
    return ns / 1e9


def host_labels(host: Mapping[str, Any]) -> dict[str, str]:
    """The labels every series of one run shares: kernel release, CONFIG_HZ and platform."""
    return {"kernel": label(host.get("kernel") or "unknown"), "hz": label(host.get("hz") or "unknown"),
            "platform": label(host.get("platform") or "unknown")}


class _Families:
    """Builds prometheus_client metric families with one set of shared labels."""

    def __init__(self, prefix: str, common: dict[str, str]) -> None:
        from prometheus_client.core import Metric
        self.metric = Metric
        self.prefix = prefix
        self.common = common
        self.families: list[Any] = []

    def summary(self, name: str, doc: str, series: Iterable[tuple[dict[str, str], list[int]]]) -> None:
        """A summary of durations (ns samples per series): quantiles, count and sum, in seconds."""
        full = f"{self.prefix}_{name}_seconds"
        m = self.metric(full, doc, "summary", unit="seconds")
        for labels, samples_ns in series:
            labels = {**self.common, **labels}
            ordered = sorted(samples_ns)
            for q in QUANTILES:
                at_ns = round(percentile_sorted(ordered, q * 100))  # to the clock's nanosecond: exact
                m.add_sample(full, {**labels, "quantile": f"{q:g}"}, seconds(at_ns))
            m.add_sample(f"{full}_count", labels, float(len(ordered)))
            m.add_sample(f"{full}_sum", labels, seconds(sum(ordered)))
        self.families.append(m)

    def gauge(self, name: str, doc: str, series: Iterable[tuple[dict[str, str], float]], unit: str = "") -> None:
        """A gauge family."""
        full = f"{self.prefix}_{name}" + (f"_{unit}" if unit else "")
        m = self.metric(full, doc, "gauge", unit=unit)
        for labels, value in series:
            m.add_sample(full, {**self.common, **labels}, float(value))
        self.families.append(m)

    def info(self, name: str, doc: str, values: dict[str, str]) -> None:
        """An info metric: ``<prefix>_<name>_info{...} 1``."""
        full = f"{self.prefix}_{name}"
        m = self.metric(full, doc, "info")
        m.add_sample(f"{full}_info", {**self.common, **{k: label(v) for k, v in values.items()}}, 1.0)
        self.families.append(m)

    def verdict(self, verdict: Mapping[str, Any] | None, what: str) -> None:
        """The verdict as an info metric and the posterior per variant as a gauge."""
        if not verdict:
            return
        self.info("verdict", f"The kernel variant the host behaves like ({what}); variant none when none "
                  "matches well", {"variant": verdict.get("variant") or "none"})
        posterior = verdict.get("posterior")
        if isinstance(posterior, dict):
            self.gauge("verdict_posterior", f"Posterior of each kernel variant under a uniform prior ({what})",
                       (({"variant": label(v)}, p) for v, p in posterior.items()))

    def load(self, host: Mapping[str, Any], what: str) -> None:
        """The CPU pressure and the load average the run was measured under, where known."""
        pressure = host.get("cpu_pressure_pct")
        if isinstance(pressure, (int, float)):
            self.gauge("cpu_pressure", f"Share of the run's wall time some task waited for a CPU, PSI ({what})",
                       [({}, pressure / 100)], unit="ratio")
        load = host.get("load_average")
        if isinstance(load, list) and load:
            self.gauge("load_average_1m", f"1-minute load average at the end of the run ({what})", [({}, load[0])])


def shown_steps(steps: list[Mapping[str, Any]], verdict: Mapping[str, Any] | None,
                duration_ns: Any) -> list[int]:
    """The positions of the steps that get a series of their own: those that stall (median 1 ms or
    more) and those the verdict found discriminating (by step number, as documents give it)."""
    discriminating = {d["step"] for d in (verdict or {}).get("discriminating_steps", []) if isinstance(d, dict)}
    return [i for i, st in enumerate(steps) if st.get("step") in discriminating or is_stall(duration_ns(st))]


def render(families: list[Any]) -> str:
    """The families as OpenMetrics text (``# EOF`` last), by prometheus_client."""
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    class Collector:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    text: bytes = generate_latest(registry)  # type: ignore[no-untyped-call]
    return text.decode("utf-8")


def timing_families(doc: Mapping[str, Any]) -> list[Any]:
    """The families of a ``minivmm timing --json`` document (see the module docstring)."""
    f = _Families("minivmm_timing", {"sequence": label(doc["sequence"]), **host_labels(doc["host"])})
    steps = doc["steps"]
    verdict = doc.get("verdict")
    shown = shown_steps(steps, verdict, lambda st: median(st["samples_ns"]))
    f.summary("step_duration", "Duration of a set-up step's ioctl over the repetitions (minivmm timing): the "
              "steps that stall or tell the kernel variants apart",
              (({"step": str(steps[i]["step"]), "op": label(steps[i]["op"]), "ioctl": label(steps[i]["label"])},
                steps[i]["samples_ns"]) for i in shown))
    others = [st for i, st in enumerate(steps) if i not in shown]
    if others:
        per_repetition = [sum(vals) for vals in zip(*(st["samples_ns"] for st in others))]
        f.summary("other_steps_duration", "The other set-up steps' ioctls summed, per repetition (minivmm "
                  "timing)", [({}, per_repetition)])
    f.gauge("other_steps", "How many steps other_steps_duration sums (minivmm timing)", [({}, len(others))])
    f.verdict(verdict, "minivmm timing")
    f.load(doc["host"], "minivmm timing")
    gate = doc.get("gate")
    if gate is not None:  # timing --baseline
        f.gauge("gate_regressed", "1 when a step regressed significantly against the baseline (minivmm timing "
                "--baseline)", [({}, 1.0 if gate["outcome"] == "regressed" else 0.0)])
        f.info("gate", "The regression gate's outcome: pass, regressed or unusable (minivmm timing --baseline)",
               {"outcome": gate["outcome"]})
    return f.families


def timing_openmetrics(doc: Mapping[str, Any]) -> str:
    """``minivmm timing --format openmetrics``: :func:`timing_families` rendered."""
    return render(timing_families(doc))


def trace_families(doc: Mapping[str, Any]) -> list[Any]:
    """The families of a ``minivmm trace --json`` document: one traced run, so gauges, one value per
    step. Without an explanation (HZ or platform unknown) only the ioctl count and the load."""
    host = doc.get("host") or {}
    ex = doc.get("explanation") or None
    argv = doc.get("command") or ["unknown"]
    program = str(argv[0]).rsplit("/", 1)[-1] or "unknown"
    labels = host_labels({**host, **({"hz": ex.get("hz"), "platform": ex.get("platform")} if ex else {})})
    f = _Families("minivmm_trace", {"program": label(program), **labels})
    count = doc.get("ioctl_count", len(doc.get("ioctls") or []))  # a streamed document gives the count
    f.gauge("ioctls", "KVM ioctls the traced program issued (minivmm trace)", [({}, count)])
    f.load(host, "minivmm trace")
    if ex is None:
        return f.families
    steps = ex.get("steps", [])

    def ns(st: Mapping[str, Any]) -> int:
        return round(float(st["measured_us"]) * 1000)  # microseconds of integer nanoseconds: exact
    verdict = ex.get("verdict")
    shown = shown_steps(steps, verdict, ns)
    f.gauge("step_duration", "Duration of a set-up step's ioctl in one traced run (minivmm trace): the steps "
            "that stall or tell the kernel variants apart",
            (({"step": str(steps[i]["step"]), "op": label(steps[i]["op"]), "ioctl": label(steps[i]["label"])},
              seconds(ns(steps[i]))) for i in shown), unit="seconds")
    others = [st for i, st in enumerate(steps) if i not in shown]
    f.gauge("other_steps_duration", "The other set-up steps' ioctls summed, one traced run (minivmm trace)",
            [({}, seconds(sum(ns(st) for st in others)))], unit="seconds")
    f.gauge("other_steps", "How many steps other_steps_duration sums (minivmm trace)", [({}, len(others))])
    setup_ns = round(float(ex["setup"]["measured_us"]) * 1000)
    f.gauge("setup_duration", "KVM_CREATE_VM to the end of the last set-up step, one traced run (minivmm trace)",
            [({}, seconds(setup_ns))], unit="seconds")
    f.verdict(verdict, "minivmm trace")
    return f.families


def trace_openmetrics(doc: Mapping[str, Any]) -> str:
    """``minivmm trace --format openmetrics``: :func:`trace_families` rendered."""
    return render(trace_families(doc))
