"""What the shadow found, as plain typed data: the rules, each finding, and the summary of a run.

Cheap to import (no kernel model): the run report holds a :class:`ShadowSummary` and turns it into JSON
only at the edge (``to_json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from minivmm.shadow.rules import Rule

if TYPE_CHECKING:
    from kernel_model.invariants import Violation


@dataclass(frozen=True)
class ShadowViolation:
    """One broken rule, with what shows it."""

    rule: Rule
    vcpu: int | None
    exit: str
    addr: int
    versions: tuple[int, int]
    message: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["rule"] = self.rule.value
        return d



@dataclass(frozen=True)
class ShadowSummary:
    """The shadow's part of a run report."""

    #: The fault ``--inject`` planted, if any.
    inject: str | None
    #: Whether it ever acted (None without one): False means the run did not test the checker.
    inject_exercised: bool | None
    #: Bus (PIO and MMIO) exits the check saw; of those, how many it could not judge.
    exits_checked: int
    exits_not_judged: int
    registrations_mirrored: int
    deregistrations_mirrored: int
    in_kernel_completions_reconciled: int
    reconciliations: int
    #: Bus versions published over the run, and how many were still held at its end (the rest pruned).
    bus_versions: int
    bus_versions_kept: int
    #: The kernel's broken rules: how many, and the first few.
    violations: int
    first_violations: tuple[ShadowViolation, ...]
    #: The guest's broken rules (its own reports): how many, and the first few.
    guest_errors: int
    first_guest_errors: tuple[ShadowViolation, ...]
    #: The kernel model's own invariant checks on the twin (the first few).
    model_invariant_violations: tuple[Violation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``minivmm boot --json``'s ``shadow`` section)."""
        return {"enabled": True, "inject": self.inject, "inject_exercised": self.inject_exercised,
                "exits_checked": self.exits_checked,
                "exits_not_judged": self.exits_not_judged,
                "registrations_mirrored": self.registrations_mirrored,
                "deregistrations_mirrored": self.deregistrations_mirrored,
                "in_kernel_completions_reconciled": self.in_kernel_completions_reconciled,
                "reconciliations": self.reconciliations, "bus_versions": self.bus_versions,
                "bus_versions_kept": self.bus_versions_kept, "violations": self.violations,
                "first_violations": [v.to_json() for v in self.first_violations],
                "guest_errors": self.guest_errors,
                "first_guest_errors": [v.to_json() for v in self.first_guest_errors],
                "model_invariant_violations": [v.to_json() for v in self.model_invariant_violations]}
