"""The exit registry: every table that switches over exit kinds covers every kind (no KVM needed)."""

from __future__ import annotations

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


#: What each kind does to a run when no device claims it, written out by hand (not read from the
#: dispatcher's own table, which would make the check a tautology). Bus exits go on in the default,
#: non-strict mode and fail the vCPU in strict mode.
EXPECTED_VERDICTS: dict[type, tuple[Verdict, Verdict]] = {
    IoOut: (Verdict.CONTINUE, Verdict.FAILED), IoIn: (Verdict.CONTINUE, Verdict.FAILED),
    MmioWrite: (Verdict.CONTINUE, Verdict.FAILED), MmioRead: (Verdict.CONTINUE, Verdict.FAILED),
    Hlt: (Verdict.HALTED, Verdict.HALTED), Shutdown: (Verdict.FAILED, Verdict.FAILED),
    FailEntry: (Verdict.FAILED, Verdict.FAILED), InternalError: (Verdict.FAILED, Verdict.FAILED),
    SystemEvent: (Verdict.FAILED, Verdict.FAILED), Interrupted: (Verdict.INTERRUPTED, Verdict.INTERRUPTED),
    Unsupported: (Verdict.FAILED, Verdict.FAILED),
}


def test_the_registry_lists_every_exit_class_of_the_module():
    # Every exit value class defined in minivmm.kvm.exits is in the registry, and nothing else is: a
    # class added to the module but forgotten in the VcpuExit union fails here.
    import inspect

    import minivmm.kvm.exits as exits_module
    defined = {cls for _, cls in inspect.getmembers(exits_module, inspect.isclass)
               if cls.__module__ == exits_module.__name__ and hasattr(cls, "describe") and cls is not Completer}
    assert defined == set(EXIT_TYPES)
    assert set(EXAMPLES) == set(EXIT_TYPES), "add an example of the new exit kind to EXAMPLES"
    assert set(EXPECTED_VERDICTS) == set(EXIT_TYPES), "say what the new exit kind does to a run"


def test_every_kind_has_a_unique_summary_name():
    assert len(set(EXIT_KINDS.values())) == len(EXIT_TYPES)
    assert exit_kind(MmioWrite) == "mmio_write" and exit_kind(FailEntry) == "fail_entry"
    assert exit_kind(IoIn) == "io_in" and exit_kind(Hlt) == "hlt"


@pytest.mark.parametrize("cls", EXIT_TYPES, ids=lambda c: c.__name__)
def test_every_kind_is_described(cls):
    text = describe_exit(EXAMPLES[cls])
    assert text and "\n" not in text


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize("cls", EXIT_TYPES, ids=lambda c: c.__name__)
def test_every_kind_is_dispatched_to_its_expected_verdict(cls, strict):
    dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64), strict=strict)
    stats = DispatchStats()
    verdict = dispatcher.handle(EXAMPLES[cls], Completer(), stats)
    assert verdict is EXPECTED_VERDICTS[cls][strict]


def test_a_value_that_is_not_an_exit_is_refused():
    dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64))
    with pytest.raises(TypeError, match="not a VM exit"):
        dispatcher.handle(("io_out", 0x80), Completer(), DispatchStats())  # type: ignore[arg-type]


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
