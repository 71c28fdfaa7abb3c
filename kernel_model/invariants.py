"""The invariants the model checks on every step, each reported as a named violation.

Like the kernel's lockdep assertions, these are checked where the state changes (a bus freed, a reader
looking up a bus, a teardown), not by a sweep afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple


class ViolationKind(str, enum.Enum):
    """The rules; the value is the name reports use."""

    #: A bus was freed while a reader that obtained it was still inside its SRCU read section.
    USE_AFTER_FREE = "use-after-free"
    #: A reader that began after a registration returned did not see that registration's bus (the
    #: ordering guarantee discussed by Keir Fraser and Sean Christopherson, Jun 24 - Jul 7 2025, "KVM:
    #: Avoid synchronize_srcu() in kvm_io_bus_register_dev()", and Keir Fraser's "[PATCH v2 3/4] KVM:
    #: Implement barriers before accessing kvm->buses[] on SRCU read paths", Jul 16 2025).
    #: The model is sequentially consistent, so this rule checks the *order of steps* (publish before
    #: the ioctl returns, a section that begins later looks the bus up again), not memory ordering: a
    #: kernel with smp_mb__after_srcu_read_lock() and one without it behave identically here.
    STALE_BUS = "stale-bus"
    #: A bus pointer was used outside the read section it was obtained in (what kvm_get_bus() must
    #: not hand out: a "long-term reference").
    LONG_TERM_REFERENCE = "long-term-reference"
    #: cleanup_srcu_struct() found callbacks still queued: the kernel WARNs and leaks (the syzkaller
    #: report in Sean Christopherson's review, ``variants.SRCU_BARRIER_REVIEW``).
    TEARDOWN_WITHOUT_BARRIER = "teardown-without-barrier"
    #: An SRCU callback ran after its srcu_struct was cleaned up (a use-after-free of kvm->srcu).
    CALLBACK_AFTER_CLEANUP = "callback-after-cleanup"


class Violation(NamedTuple):
    """One broken rule, with when and the facts that show it."""

    kind: ViolationKind
    time_ns: int
    message: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"kind": self.kind.value, "time_ns": self.time_ns, "message": self.message,
                "details": self.details}


class InvariantChecker:
    """Collects violations. ``strict`` raises at the first one instead (for tests that want a trace)."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.violations: list[Violation] = []
        self.checks = 0

    def check(self, ok: bool, kind: ViolationKind, time_ns: int, message: str | Callable[[], str],
              **details: Any) -> None:
        """Count one check; record (or raise) a violation when ``ok`` is false. ``message`` may be a
        function that makes it, called only then (checks on hot paths pass almost always)."""
        self.checks += 1
        if ok:
            return
        if callable(message):
            message = message()
        v = Violation(kind, time_ns, message, details)
        self.violations.append(v)
        if self.strict:
            raise AssertionError(f"{kind.value}: {message}")

    def of(self, kind: ViolationKind) -> list[Violation]:
        """The violations of one kind."""
        return [v for v in self.violations if v.kind is kind]
