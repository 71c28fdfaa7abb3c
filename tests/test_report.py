"""The run report built and rendered from plain data: records and a snapshot made by hand (no KVM)."""

from __future__ import annotations

import io
import json

from minivmm.devices.control import DynamicDoorbellCounts
from minivmm.kvm.exits import HLT, IoOut, Shutdown
from minivmm.shadow.ftrace import FtraceResult
from minivmm.vmm.boot import Mode
from minivmm.vmm.report import REGISTER_NAMES, MachineSnapshot, RunOutcome, RunTimes, VcpuSnapshot, build_report, render
from minivmm.vmm.vcpu_loop import VcpuRecord, VcpuState

TIMES = RunTimes(start=0, ready=2_000_000, run=3_000_000, end=13_000_000)


def records() -> list[VcpuRecord]:
    halted = VcpuRecord(0, VcpuState.HALTED, {IoOut: 3, type(HLT): 1}, last_exit=HLT,
                        entered_ns=100, first_exit_ns=600)
    failed = VcpuRecord(1, VcpuState.FAILED, {IoOut: 1, Shutdown: 1}, last_exit=Shutdown(),
                        entered_ns=100, first_exit_ns=400)
    return [halted, failed]


def snapshot(**kw) -> MachineSnapshot:
    regs = {name: i for i, name in enumerate(REGISTER_NAMES)} | {"rip": 0x1000}
    where = VcpuSnapshot(regs, 0x1000, Mode.REAL, bytes.fromhex("f4"))
    base = dict(console="hi\n", console_dropped=0, doorbell_kernel_writes=4, doorbell_userspace_writes=0,
                dynamic_doorbells=None, shadow=None, vcpus={1: where})
    return MachineSnapshot(**(base | kw))


def test_build_report_totals_exits_and_says_where_the_failed_vcpu_was():
    report = build_report(records(), RunOutcome.FAILED, snapshot(), TIMES)
    assert report.exits == {"io_out": 4, "hlt": 1, "shutdown": 1}
    assert report.vcpus[0].registers == {} and report.vcpus[0].rip is None
    failed = report.vcpus[1]
    assert failed.state == "failed" and failed.last_exit == "SHUTDOWN"
    assert failed.rip == 0x1000 and failed.instruction == "hlt"
    assert report.setup_ms == 2.0 and report.run_ms == 10.0 and report.first_exit_ms == 0.0003


def test_rip_outside_ram_and_unreadable_registers():
    outside = VcpuSnapshot({"rip": 0xFFFF0}, 0xFFFF0, Mode.REAL, None)
    report = build_report(records(), RunOutcome.FAILED, snapshot(vcpus={1: outside}), TIMES)
    assert report.vcpus[1].instruction == "(rip 0xffff0 is outside guest RAM)"
    report = build_report(records(), RunOutcome.FAILED, snapshot(vcpus={1: VcpuSnapshot(error="EBADF")}), TIMES)
    assert report.vcpus[1].error == "registers unavailable: EBADF" and report.vcpus[1].rip is None


def test_render_and_json_of_the_optional_sections():
    dyn = DynamicDoorbellCounts(2, 1, 10, 7, 3)
    ft = FtraceResult(5, 0, {"KVM_EXIT_IO": 4}, {"io": 4, "mmio": 0}, {0xD0001000: 7}, {0xD0001000: 7}, [])
    report = build_report(records(), RunOutcome.FAILED, snapshot(dynamic_doorbells=dyn, ftrace=ft), TIMES)
    out = io.StringIO()
    render(report, out, 1)
    text = out.getvalue()
    assert text.startswith("--- minivmm: the guest failed (exit code 1) ---\n")
    assert ("control    2 doorbell registrations, 1 deregistrations; guest wrote 10: 7 in the kernel, "
            "3 in userspace") in text
    assert "ftrace     5 kvm events: the kernel recorded 4 IO and 0 MMIO exits" in text
    assert "shadow     off (--no-check)" in text and "at rip 0x1000: hlt" in text
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["extra"]["dynamic_doorbells"]["kernel_counted"] == 7
    assert doc["extra"]["ftrace"]["in_kernel_writes"] == {"0xd0001000": 7}
    assert doc["outcome"] == "failed" and doc["halted"] is False


def test_ftrace_unavailable_is_reported_and_absent_without_ftrace():
    report = build_report(records(), RunOutcome.HALTED, snapshot(ftrace_unavailable="not root"), TIMES)
    assert report.extra["ftrace"] == {"unavailable": "not root"}
    out = io.StringIO()
    render(report, out, 0)
    assert "ftrace     not available: not root" in out.getvalue()
    assert "ftrace" not in build_report(records(), RunOutcome.HALTED, snapshot(), TIMES).extra
