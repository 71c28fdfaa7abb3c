"""The figures published on the mailing list about 7d9a0273c459, and Firecracker's published microVM
creation rate, as data (one place for them: docs, tests and ``minivmm timing`` read them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


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


#: Nikita Kalyazin, "Re: [PATCH v4 4/4] KVM: Avoid synchronize_srcu() in kvm_io_bus_register_dev()",
#: Feb 13 2026, https://lkml.kernel.org/r/a84ddba8-12da-489a-9dd1-ccdf7451a1ba@amazon.com (x86, HZ=100).
NIKITA_FEB13 = ('Nikita Kalyazin, "Re: [PATCH v4 4/4] KVM: Avoid synchronize_srcu() in '
                'kvm_io_bus_register_dev()", Feb 13 2026, '
                'https://lkml.kernel.org/r/a84ddba8-12da-489a-9dd1-ccdf7451a1ba@amazon.com')
#: Nikita Kalyazin's follow-up on arm64, same thread, Feb 16 2026, Message-ID
#: <dcbd7a58-c961-4510-ae48-ef7fd4f4d75c@amazon.com>. It does not state the arm64 kernel's HZ.
NIKITA_FEB16 = ('Nikita Kalyazin, "Re: [PATCH v4 4/4] KVM: Avoid synchronize_srcu() in '
                'kvm_io_bus_register_dev()", Feb 16 2026, '
                'https://lore.kernel.org/all/dcbd7a58-c961-4510-ae48-ef7fd4f4d75c@amazon.com '
                '(arm64; HZ not stated)')

FIGURES: tuple[PublishedFigure, ...] = (
    PublishedFigure("KVM_CREATE_VCPU, 0", "stalled", 100, "x86", 0.000137, 0.025182,
                    NIKITA_FEB13 + ", strace -T"),
    PublishedFigure("KVM_CREATE_VCPU, 0", "stalled", 1000, "x86", None, 0.001,
                    NIKITA_FEB13 + ": 'in the order of 1 ms' at HZ=1000"),
    PublishedFigure("KVM_CREATE_VCPU, 1", "next_vcpu", 100, "x86", 0.000046, 0.000031, NIKITA_FEB13),
    PublishedFigure("KVM_SET_USER_MEMORY_REGION", "stalled", None, "arm64", 0.000016, 0.021021,
                    NIKITA_FEB16 + ", strace -T"),
    PublishedFigure("kvm_io_bus_register_dev", "registration", None, "any", None, 0.000006,
                    NIKITA_FEB13 + ": 'at most 16 us, but most commonly ~6 us'"),
)


def figures_for(kind: str, hz: int | None = None) -> list[PublishedFigure]:
    """The published figures for a step kind, those at ``hz`` first."""
    found = [f for f in FIGURES if f.kind == kind]
    return sorted(found, key=lambda f: (f.hz != hz, f.hz or 0))


class CreationRate(NamedTuple):
    """A published rate of VMs created on one host: per host core per second, with the example given."""

    per_core_per_s: float
    example: str
    conditions: str
    source: str

    def for_cores(self, cores: int) -> float:
        """The rate this figure gives a host with ``cores`` cores."""
        return self.per_core_per_s * cores


#: Firecracker's design document (docs/design.md, "Features"; in the repository since "docs: add design
#: document", Oct 2018). Its SPECIFICATION.md states start-up time and overhead, not a creation rate.
FIRECRACKER_CREATION_RATE = CreationRate(
    5.0, "180 microVMs per second on a host with 36 physical cores",
    "a microVM with a minimal Linux kernel, one vCPU and 128 MiB of RAM, created and booted",
    "Firecracker, docs/design.md, Features: \"Firecracker supports a steady mutation rate of 5 microVMs per "
    "host core per second\", https://github.com/firecracker-microvm/firecracker/blob/main/docs/design.md")
