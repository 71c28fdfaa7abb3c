"""The vCPU run loop's state machine, driven by a fake vCPU that yields scripted exits (no KVM needed).

As Firecracker tests its vCPU state machine: every way out of RUNNING (HALTED, FAILED, ERROR,
INTERRUPTED), the stray-signal branch (EINTR while no stop was asked: go on), a stop requested
between two exits, and the supervisor's kick-and-join (stop_vcpu_threads, VcpuThreads).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable

import pytest

from minivmm.devices.bus import Bus
from minivmm.kvm.errors import KvmError
from minivmm.kvm.exits import HLT, INTERRUPTED, IoIn, IoOut, MmioWrite, Shutdown, VcpuExit
from minivmm.vmm.dispatch import ExitDispatcher
from minivmm.vmm.lifecycle import VcpuThreads, kick_handler
from minivmm.vmm.vcpu_loop import RunControl, VcpuRecord, VcpuState, run_vcpu, stop_vcpu_threads

Step = VcpuExit | BaseException | Callable[[], VcpuExit]


class FakeVcpu:
    """Returns (or raises) each scripted step from run(); records what the loop did to it."""

    def __init__(self, script: list[Step], vcpu_id: int = 0) -> None:
        self.id = vcpu_id
        self.script = list(script)
        self.runs = 0
        self.immediate_exit = False
        self.immediate_exit_seen: list[bool] = []
        self.io_in: list[bytes] = []

    def run(self) -> VcpuExit:
        self.runs += 1
        self.immediate_exit_seen.append(self.immediate_exit)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step() if callable(step) else step

    def complete_io_in(self, data: bytes) -> None:
        self.io_in.append(data)

    def complete_mmio_read(self, data: bytes) -> None:
        pass


class Recorder:
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.writes: list[bytes] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        if self.fail:
            raise ValueError("device bug")
        self.writes.append(data)


def drive(script: list[Step], *, control: RunControl | None = None, strict: bool = False,
          device: Recorder | None = None, vcpu: FakeVcpu | None = None,
          **kw: object) -> tuple[VcpuRecord, FakeVcpu]:
    pio = Bus("pio", 1 << 16)
    pio.insert(device or Recorder(), 0x80, 1)
    vcpu = vcpu or FakeVcpu(script)
    record = VcpuRecord(0)
    run_vcpu(vcpu, ExitDispatcher(pio, Bus("mmio", 1 << 64), strict=strict), record,  # type: ignore[arg-type]
             control or RunControl(), **kw)  # type: ignore[arg-type]
    assert record.done.is_set() and record.finished_ns is not None
    return record, vcpu


OUT = IoOut(0x80, 1, 1, b"\x01")


def test_exits_then_hlt_is_halted_and_every_exit_is_counted():
    device = Recorder()
    record, vcpu = drive([OUT, OUT, IoIn(0x80, 1, 1), HLT], device=device)
    assert record.state is VcpuState.HALTED and vcpu.runs == 4
    assert record.exits == {IoOut: 2, IoIn: 1, type(HLT): 1} and record.last_exit is HLT
    assert device.writes == [b"\x01", b"\x01"] and vcpu.io_in == [b"\x00"]
    assert record.entered_ns is not None and record.first_exit_ns is not None and record.error is None


def test_shutdown_fails_the_vcpu():
    record, _ = drive([OUT, Shutdown()])
    assert record.state is VcpuState.FAILED and record.last_exit == Shutdown()


def test_strict_unclaimed_access_fails_and_lax_counts():
    record, _ = drive([MmioWrite(0xE0000000, b"\x01"), HLT])
    assert record.state is VcpuState.HALTED and record.stats.unclaimed == 1
    record, _ = drive([MmioWrite(0xE0000000, b"\x01"), HLT], strict=True)
    assert record.state is VcpuState.FAILED


def test_an_ioctl_error_ends_in_error_with_its_message():
    record, _ = drive([OUT, KvmError("KVM_RUN", errno.EFAULT)])
    assert record.state is VcpuState.ERROR and "KVM_RUN" in (record.error or "")
    assert record.last_exit == OUT  # the last exit decoded before the failure


def test_a_device_bug_ends_this_vcpu_with_a_report_not_the_vmm():
    record, _ = drive([OUT, HLT], device=Recorder(fail=True))
    assert record.state is VcpuState.ERROR and record.error == "ValueError: device bug"


def test_a_stray_signal_is_not_a_stop():
    # EINTR while no stop was asked for (a signal meant for someone else): clear immediate_exit, go on.
    vcpu = FakeVcpu([])

    def kicked() -> VcpuExit:
        vcpu.immediate_exit = True  # a kick that set immediate_exit, though nobody asked to stop
        return INTERRUPTED
    vcpu.script = [OUT, kicked, OUT, HLT]
    record, _ = drive([], vcpu=vcpu)
    assert record.state is VcpuState.HALTED and vcpu.runs == 4
    assert record.exits[type(INTERRUPTED)] == 1
    assert vcpu.immediate_exit_seen == [False, False, False, False]  # cleared before the next KVM_RUN


def test_interrupted_after_a_stop_was_asked_ends_interrupted():
    control = RunControl(stopping=True)
    record, vcpu = drive([INTERRUPTED, HLT], control=control)
    assert record.state is VcpuState.INTERRUPTED and vcpu.runs == 1


def test_a_stop_requested_between_two_exits_is_seen_before_the_next_kvm_run():
    control = RunControl()

    def out_then_stop() -> VcpuExit:
        control.stopping = True  # the supervisor asks while this exit is being handled
        return OUT
    record, vcpu = drive([OUT, out_then_stop, HLT], control=control)
    assert record.state is VcpuState.INTERRUPTED and vcpu.runs == 2 and record.exits == {IoOut: 2}


def test_the_checker_sees_each_exit_with_the_versions_around_its_kvm_run():
    seen: list[tuple[int, VcpuExit, int, int]] = []

    class Checker:
        version = 0

        def check_exit(self, vcpu_id: int, exit_: VcpuExit, v_entry: int, v_exit: int) -> None:
            seen.append((vcpu_id, exit_, v_entry, v_exit))

        def vcpu_done(self, vcpu_id: int) -> None:
            done.append(vcpu_id)

    done: list[int] = []
    checker = Checker()

    def bump() -> VcpuExit:
        checker.version += 1  # the bus changed while the vCPU was in KVM_RUN
        return OUT
    hooked: list[VcpuExit] = []
    record, _ = drive([OUT, bump, HLT], checker=checker, on_exit=lambda vcpu, e: hooked.append(e))
    assert record.state is VcpuState.HALTED
    assert seen == [(0, OUT, 0, 0), (0, OUT, 0, 1), (0, HLT, 1, 1)]
    assert hooked == [OUT, OUT, HLT]
    assert done == [0]  # told once, when the loop ended, so the shadow can prune versions it no longer needs


class BlockingVcpu(FakeVcpu):
    """Sits "in KVM_RUN" until kicked: the kick's EINTR or immediate_exit ends each run."""

    def __init__(self, vcpu_id: int) -> None:
        super().__init__([], vcpu_id)
        self.entered = threading.Event()

    def run(self) -> VcpuExit:
        self.runs += 1
        self.entered.set()
        while not self.immediate_exit:
            time.sleep(0.001)
        return INTERRUPTED


def test_stop_vcpu_threads_kicks_every_loop_out_and_joins():
    vcpus = [BlockingVcpu(i) for i in range(4)]
    records = [VcpuRecord(i) for i in range(4)]
    control = RunControl()
    dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64))
    threads = [threading.Thread(target=run_vcpu, args=(v, dispatcher, r, control), daemon=True)
               for v, r in zip(vcpus, records)]
    with kick_handler():
        for t in threads:
            t.start()
        for v in vcpus:
            assert v.entered.wait(5)
        control.stopping = True
        stop_vcpu_threads(vcpus, threads, [r.done for r in records])  # type: ignore[arg-type]
    assert not any(t.is_alive() for t in threads)
    assert all(r.state is VcpuState.INTERRUPTED for r in records)


@pytest.mark.parametrize("start", [True, False])
def test_vcpu_threads_stop_only_what_was_started(start):
    vcpus = [BlockingVcpu(i) for i in range(3)]
    records = [VcpuRecord(i) for i in range(3)]
    dispatcher = ExitDispatcher(Bus("pio", 1 << 16), Bus("mmio", 1 << 64))

    def loop(vcpu, record, control):
        run_vcpu(vcpu, dispatcher, record, control)
    threads = VcpuThreads(vcpus, records, RunControl(), loop)  # type: ignore[arg-type]
    with kick_handler():
        if start:
            threads.start()
        threads.stop_and_join()
        threads.stop_and_join()  # twice: harmless
    assert not threads.alive()
    expected = VcpuState.INTERRUPTED if start else VcpuState.CREATED
    assert [r.state for r in records] == [expected] * 3
