"""The exit registry: every table that switches over exit kinds covers every kind (no KVM needed)."""

from __future__ import annotations

from typing import get_args

import pytest

from minivmm.devices.bus import Bus
from minivmm.kvm.exits import (
    EXIT_KINDS,
    EXIT_TYPES,
    MMIO_EXITS,
    PIO_EXITS,
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unsupported,
    VcpuExit,
    describe_exit,
    exit_kind,
)
from minivmm.vmm.dispatch import FIXED_VERDICTS, DispatchStats, ExitDispatcher, Verdict

#: One example value of each kind, built by hand.
EXAMPLES: dict[type, VcpuExit] = {
    IoOut: IoOut(0x80, 1, 1, b"\x00"), IoIn: IoIn(0x80, 1, 1), MmioWrite: MmioWrite(0x1000, b"\x01"),
    MmioRead: MmioRead(0x1000, 4), Hlt: Hlt(), Shutdown: Shutdown(), FailEntry: FailEntry(0x21, 0),
    InternalError: InternalError(1, (2,)), SystemEvent: SystemEvent(1, ()), Interrupted: Interrupted(),
    Unsupported: Unsupported(9999),
}


class Completer:
    def complete_io_in(self, data: bytes) -> None:
        pass

    def complete_mmio_read(self, data: bytes) -> None:
        pass


def test_the_registry_is_the_union():
    assert EXIT_TYPES == get_args(VcpuExit)
    assert set(EXAMPLES) == set(EXIT_TYPES), "add an example of the new exit kind to EXAMPLES"


def test_every_kind_has_a_unique_summary_name():
    assert set(EXIT_KINDS) == set(EXIT_TYPES)
    assert len(set(EXIT_KINDS.values())) == len(EXIT_TYPES)
    assert exit_kind(MmioWrite) == "mmio_write" and exit_kind(FailEntry) == "fail_entry"


@pytest.mark.parametrize("cls", EXIT_TYPES, ids=lambda c: c.__name__)
def test_every_kind_is_described(cls):
    text = describe_exit(EXAMPLES[cls])
    assert text and "\n" not in text


@pytest.mark.parametrize("cls", EXIT_TYPES, ids=lambda c: c.__name__)
def test_every_kind_is_dispatched(cls):
    dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64))
    assert dispatcher.handled_types() == frozenset(EXIT_TYPES)
    verdict = dispatcher.handle(EXAMPLES[cls], Completer(), DispatchStats())
    assert verdict is FIXED_VERDICTS.get(cls, Verdict.CONTINUE)


def test_fixed_verdicts_and_bus_routes_partition_the_kinds():
    routed = set(PIO_EXITS) | set(MMIO_EXITS)
    assert routed.isdisjoint(FIXED_VERDICTS)
    assert routed | set(FIXED_VERDICTS) == set(EXIT_TYPES)


def test_every_run_outcome_maps_to_a_documented_exit_code():
    from minivmm.cli.errors import ExitCode, outcome_exit_code
    from minivmm.vmm.report import RunOutcome
    codes = {outcome: outcome_exit_code(outcome) for outcome in RunOutcome}
    assert all(isinstance(c, ExitCode) for c in codes.values())
    assert codes[RunOutcome.HALTED] == 0 and codes[RunOutcome.VIOLATION] == 3
    assert codes[RunOutcome.GUEST_ERROR] == 5 and codes[RunOutcome.TERMINATED] == 143
    # Exit 3 means only "the kernel broke a rule": one outcome, the violation.
    assert [o for o, c in codes.items() if c == ExitCode.VIOLATION] == [RunOutcome.VIOLATION]


def test_every_exit_reason_is_named_as_the_header_names_it():
    # The header reuses reason numbers for payload values (KVM_EXIT_HYPERV_HCALL is 2, as KVM_EXIT_IO):
    # each reason the run loop can see must still be printed under its own name.
    from minivmm.kvm.exits import ExitReason, exit_reason_name
    from minivmm.kvm.uapi import lib
    for name in ("KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_HLT", "KVM_EXIT_HYPERCALL", "KVM_EXIT_EXCEPTION",
                 "KVM_EXIT_SHUTDOWN", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT"):
        assert exit_reason_name(getattr(lib, name)) == name
    assert len({int(r) for r in ExitReason}) == len(ExitReason)  # no reason is an alias of another
