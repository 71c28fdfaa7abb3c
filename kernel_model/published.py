"""The figures published in the seed threads, as data (one place for them: docs, tests and
``minivmm timing`` read them from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedFigure:
    """One published measurement."""

    what: str            # which ioctl, in the report's terms
    kind: str            # the step kind it corresponds to (see ``step_kind``)
    hz: int | None
    platform: str
    before_s: float | None  # before 7d9a0273c459 (sync)
    after_s: float | None   # with 7d9a0273c459 (call_srcu)
    source: str


FIGURES: tuple[PublishedFigure, ...] = (
    PublishedFigure("KVM_CREATE_VCPU, 0", "stalled", 100, "x86", 0.000137, 0.025182,
                    "seed 001, Nikita Kalyazin, strace -T"),
    PublishedFigure("KVM_CREATE_VCPU, 0", "stalled", 1000, "x86", None, 0.001,
                    "seed 001: 'in the order of 1 ms' at HZ=1000"),
    PublishedFigure("KVM_CREATE_VCPU, 1", "next_vcpu", 100, "x86", 0.000046, 0.000031, "seed 001"),
    PublishedFigure("KVM_SET_USER_MEMORY_REGION", "stalled", 100, "arm64", 0.000016, 0.021021,
                    "seed 003 thread, Nikita Kalyazin (arm64)"),
    PublishedFigure("kvm_io_bus_register_dev", "registration", None, "any", None, 0.000006,
                    "seed 001: 'at most 16 us, but most commonly ~6 us'"),
)


def figures_for(kind: str, hz: int | None = None) -> list[PublishedFigure]:
    """The published figures for a step kind, those at ``hz`` first."""
    found = [f for f in FIGURES if f.kind == kind]
    return sorted(found, key=lambda f: (f.hz != hz, f.hz or 0))
