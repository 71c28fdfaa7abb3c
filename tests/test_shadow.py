"""The shadow: guests run clean with every exit checked; each injected fault is caught; the check
never flags what the kernel may do; the per-exit rule on synthetic exits (no KVM needed)."""

from __future__ import annotations

import pytest

from minivmm.cli.errors import outcome_exit_code
from minivmm.kvm.exits import IoOut, MmioRead, MmioWrite
from minivmm.kvm.vm import IoEvent
from minivmm.shadow.checker import Injection, Rule, ShadowChecker
from minivmm.vmm.boot import Mode
from minivmm.vmm.report import RunOutcome

DOORBELL = 0xD0010000


class FakeCounter:
    def __init__(self) -> None:
        self.value = 0

    def total(self) -> int:
        return self.value


def shadow_with_doorbell(inject=None):
    shadow = ShadowChecker(inject=inject)
    counter = FakeCounter()
    shadow.attach_counter(99, counter.total, DOORBELL)
    return shadow, counter, IoEvent(DOORBELL, 4, 99)


def test_an_exit_claimed_in_every_version_of_the_window_is_a_violation():
    shadow, _, ev = shadow_with_doorbell()
    shadow.ioeventfd_assigned(ev)
    v = shadow.version
    shadow.check_exit(0, MmioWrite(DOORBELL, b"\1\0\0\0"), v, v)
    assert shadow.violation_count == 1 and shadow.violations[0].rule is Rule.EXIT_CLAIMED


def test_an_exit_is_allowed_if_some_version_in_the_window_does_not_claim_it():
    shadow, _, ev = shadow_with_doorbell()
    before = shadow.version
    shadow.ioeventfd_assigned(ev)          # registered while the vCPU was in KVM_RUN
    shadow.check_exit(0, MmioWrite(DOORBELL, b"\1\0\0\0"), before, shadow.version)
    shadow.ioeventfd_deassigning(ev)       # removed early: the exit may come from the new bus
    after = shadow.version
    shadow.check_exit(0, MmioWrite(DOORBELL, b"\1\0\0\0"), after, after)
    assert shadow.violation_count == 0 and shadow.exits_checked == 2


def test_reads_wrong_lengths_and_other_addresses_are_never_claimed_by_an_ioeventfd():
    shadow, _, ev = shadow_with_doorbell()
    shadow.ioeventfd_assigned(ev)
    v = shadow.version
    for exit_ in (MmioRead(DOORBELL, 4), MmioWrite(DOORBELL, b"\1\0"), MmioWrite(DOORBELL + 4, b"\0" * 4),
                  IoOut(0x3F8, 1, 1, b"x")):
        shadow.check_exit(0, exit_, v, v)
    assert shadow.violation_count == 0


def test_in_kernel_irqchip_devices_claim_reads_too():
    shadow = ShadowChecker(platform="pvm")
    shadow.irqchip_created()
    v = shadow.version
    from minivmm.kvm.exits import IoIn
    shadow.check_exit(1, IoIn(0x20, 1, 1), v, v)
    assert shadow.violation_count == 1


def test_reconciliation_accounts_for_mirrored_registrations_only():
    shadow, counter, ev = shadow_with_doorbell()
    shadow.ioeventfd_assigned(ev)
    counter.value = 4
    shadow.guest_report(99, 4)
    assert shadow.violation_count == 0 and shadow.completions_reconciled == 4
    shadow.ioeventfd_deassigning(ev)
    shadow.note_userspace_doorbell_write(99)
    shadow.guest_report(99, 1)
    counter.value = 5   # the kernel counted a write while nothing was registered
    shadow.reconcile(final=True)
    assert {v.rule for v in shadow.violations} == {Rule.UNACCOUNTED_COMPLETION, Rule.WRITES_DO_NOT_ADD_UP}


@pytest.mark.parametrize("inject,rule", [
    (Injection.DROP_REGISTRATION, Rule.UNACCOUNTED_COMPLETION),
    (Injection.DELAY_REGISTRATION, Rule.UNACCOUNTED_COMPLETION),
])
def test_registration_faults_are_caught_by_reconciliation(inject, rule):
    shadow, counter, ev = shadow_with_doorbell(inject)
    shadow.vm_running()
    shadow.ioeventfd_assigned(ev)
    counter.value = 4
    shadow.guest_report(99, 4)
    assert shadow.violations and shadow.violations[0].rule is rule


def test_stale_bus_fault_is_caught_by_the_exit_check():
    shadow, _, ev = shadow_with_doorbell(Injection.STALE_BUS)
    shadow.ioeventfd_assigned(ev)
    shadow.ioeventfd_deassigning(ev)
    v = shadow.version
    shadow.check_exit(0, MmioWrite(DOORBELL, b"\5\0\0\0"), v, v)
    assert shadow.violations[0].rule is Rule.EXIT_CLAIMED


# --- on real KVM --------------------------------------------------------------------------------

@pytest.mark.kvm
def test_regloop_runs_clean_with_every_exit_checked(boot, guest_image):
    report, _ = boot(guest_image("regloop"), mode=Mode.PROTECTED, guest_iterations=320, timeout=60)
    assert report.outcome is RunOutcome.HALTED, report.extra
    assert report.console == "regloop: ok\n"
    sh = report.extra["shadow"]
    assert sh["violations"] == 0
    assert sh["exits_checked"] == sum(report.exits.get(k, 0) for k in ("mmio_read", "mmio_write", "io_out", "io_in"))
    dyn = report.extra["dynamic_doorbells"]
    assert dyn["registrations"] == dyn["unregistrations"] == 320
    assert (dyn["guest_reported_writes"], dyn["kernel_counted"], dyn["userspace_writes"]) == (1600, 1280, 320)
    assert sh["in_kernel_completions_reconciled"] == 1280


@pytest.mark.kvm
def test_regmulti_runs_clean_on_three_vcpus(boot, guest_image):
    report, _ = boot(guest_image("regmulti"), mode=Mode.PROTECTED, vcpus=3, guest_iterations=300, timeout=60)
    assert report.outcome is RunOutcome.HALTED, report.extra["shadow"]["first_violations"]
    assert report.console == "regmulti: ok\n"
    dyn = report.extra["dynamic_doorbells"]
    assert dyn["guest_reported_writes"] == 2 * 300
    assert dyn["kernel_counted"] + dyn["userspace_writes"] == dyn["guest_reported_writes"]
    assert report.extra["shadow"]["exits_checked"] > 600


@pytest.mark.kvm
@pytest.mark.parametrize("inject", list(Injection))
def test_every_injected_fault_is_caught_on_real_kvm(boot, guest_image, inject):
    report, _ = boot(guest_image("regloop"), mode=Mode.PROTECTED, guest_iterations=32, inject=inject.value)
    assert report.outcome is RunOutcome.VIOLATION and outcome_exit_code(report.outcome) == 3
    assert report.extra["shadow"]["violations"] >= 1


@pytest.mark.kvm
def test_no_check_turns_the_shadow_off(boot, guest_image):
    report, _ = boot(guest_image("mmio"), mode=Mode.PROTECTED, check=False)
    assert report.outcome is RunOutcome.HALTED and report.extra["shadow"] == {"enabled": False}
