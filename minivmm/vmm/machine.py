"""The machine: one VM with its RAM, devices, buses and vCPUs, built from a config and run to the end.

This is the only place that knows the whole picture; everything it uses is testable on its own.
Resources are released in reverse order of creation by :meth:`Machine.close` (or ``with``), whatever
happened during the run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, NamedTuple

from minivmm.devices.bus import Bus
from minivmm.devices.console import Console
from minivmm.devices.control import CONTROL_SIZE, ControlDevice, DynamicDoorbellRegion, DynamicDoorbells
from minivmm.devices.debugcon import DEBUGCON_PORT, DebugCon
from minivmm.devices.doorbell import DOORBELL_SIZE, DOORBELL_WRITE_LEN, Doorbell
from minivmm.devices.scratch import SCRATCH_SIZE, Scratch
from minivmm.devices.serial import COM1_PORT, UART_REGISTERS, Serial16550
from minivmm.kvm.errors import KvmError
from minivmm.kvm.memory import GuestMemory
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.system import Kvm
from minivmm.kvm.uapi import IoctlTracer, lib
from minivmm.kvm.vcpu import Vcpu
from minivmm.kvm.vm import IoEvent, Vm
from minivmm.vmm import boot
from minivmm.vmm.boot import Mode
from minivmm.vmm.dispatch import ExitDispatcher
from minivmm.vmm.image import check_placement
from minivmm.vmm.layout import (
    CONTROL_BASE,
    DEFAULT_LOAD_ADDR,
    DEFAULT_MEM_SIZE,
    DOORBELL_BASE,
    DYNAMIC_DOORBELL_BASE,
    DYNAMIC_DOORBELL_STRIDE,
    RAM_SLOT,
    SCRATCH_BASE,
)
from minivmm.vmm.lifecycle import StopRequest, VcpuThreads, kick_handler, stop_signals
from minivmm.vmm.outcome import RunOutcome, final_outcome
from minivmm.vmm.vcpu_loop import ExitHook, RunControl, VcpuRecord, VcpuState, run_vcpu

if TYPE_CHECKING:  # the shadow (and the kernel model under it) is imported only when a run uses it
    from minivmm.shadow.checker import ShadowChecker
    from minivmm.shadow.ftrace import FtraceResult, FtraceSession

    # The report is imported when the run is over (see minivmm.vmm.outcome for why that is free).
    from minivmm.vmm.report import MachineSnapshot, RunReport, VcpuSnapshot

#: Where Intel VMX's real-mode emulation keeps its TSS (three pages; QEMU uses the same address).
TSS_ADDR = 0xFFFBD000
#: How often the supervisor looks at the vCPUs and the clock.
POLL_INTERVAL = 0.05


class MachineConfig(NamedTuple):
    """Everything ``minivmm boot`` lets a user choose."""

    mem_size: int = DEFAULT_MEM_SIZE
    vcpus: int = 1
    mode: Mode = Mode.REAL
    load_addr: int = DEFAULT_LOAD_ADDR
    strict: bool = False
    timeout: float = 10.0
    kvm_path: str = DEFAULT_DEVICE_PATH
    #: Shadow every ioctl and exit with the kernel model (``--no-check`` turns it off).
    check: bool = True
    #: Plant a fault in the shadow (``--inject``): drop-registration, delay-registration, stale-bus.
    inject: str | None = None
    #: What the control device's ITERATIONS register tells guests (``--guest-iterations``).
    guest_iterations: int = 20000
    #: The kernel model's platform and HZ for the shadow (the host's, when known).
    model_platform: str = "pvm"
    model_hz: int = 250
    #: Record the kvm tracepoints and cross-check the run against them (``--ftrace``).
    ftrace: bool = False


class Machine:
    """A VM ready to run an image. Use as a context manager so that every resource is released."""

    def __init__(self, config: MachineConfig, image: bytes, console: Console,
                 tracer: IoctlTracer | None = None, stop: StopRequest | None = None) -> None:
        """Build the VM. ``stop``: the caller's stop request, set by signal handlers it installed (the
        CLI installs them before anything is built); without one, run() installs its own for the run."""
        check_placement(len(image), config.load_addr, config.mem_size, config.mode)
        if config.vcpus < 1:
            raise ValueError("a machine needs at least one vCPU")
        self.config = config
        self.console = console
        self.pio_bus = Bus("pio", 1 << 16)
        self.mmio_bus = Bus("mmio", 1 << 64)
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.memory: GuestMemory | None = None
        self.doorbell: Doorbell | None = None
        self.dynamic: DynamicDoorbells | None = None
        self.control: ControlDevice | None = None
        self.shadow: ShadowChecker | None = None
        self.scratch = Scratch()
        self.vcpus: list[Vcpu] = []
        self.stop = stop
        self._threads: VcpuThreads | None = None
        self._ftrace: FtraceSession | None = None
        self._ftrace_error: str | None = None
        if config.check:  # imported here, lazily, but before the clock starts: set-up times KVM, not imports
            import minivmm.shadow.checker  # noqa: F401
        self._t_start = time.monotonic_ns()
        self._t_ready = 0
        try:
            self._build(image, tracer)
        except BaseException:
            self.close()
            raise

    def _build(self, image: bytes, tracer: IoctlTracer | None) -> None:
        cfg = self.config
        self.kvm = Kvm(cfg.kvm_path, tracer)
        if cfg.check:
            # Given to the VM when it is made, so the twin sees the VM from its first ioctl.
            from minivmm.shadow.checker import Injection, ShadowChecker
            self.shadow = ShadowChecker(platform=cfg.model_platform, hz=cfg.model_hz,
                                        inject=Injection(cfg.inject) if cfg.inject else None)
        self.vm = vm = self.kvm.create_vm(observer=self.shadow)
        if self.kvm.check_extension(lib.KVM_CAP_SET_TSS_ADDR):
            vm.set_tss_addr(TSS_ADDR)
        self.memory = mem = GuestMemory(0, cfg.mem_size)
        vm.set_user_memory_region(RAM_SLOT, 0, cfg.mem_size, mem.host_addr)
        mem.write(cfg.load_addr, image)
        boot.write_system_tables(mem, cfg.mem_size, cfg.mode)

        self.pio_bus.insert(Serial16550(self.console), COM1_PORT, UART_REGISTERS)
        self.pio_bus.insert(DebugCon(self.console), DEBUGCON_PORT, 1)
        self.mmio_bus.insert(self.scratch, SCRATCH_BASE, SCRATCH_SIZE)
        shadow = self.shadow
        self.doorbell = Doorbell(shadow.note_userspace_doorbell_write if shadow else None)
        self.mmio_bus.insert(self.doorbell, DOORBELL_BASE, DOORBELL_SIZE)
        self.dynamic = DynamicDoorbells(vm, DYNAMIC_DOORBELL_BASE, DYNAMIC_DOORBELL_STRIDE,
                                        on_report=shadow.guest_report if shadow else None,
                                        on_userspace_write=shadow.note_userspace_doorbell_write if shadow else None)
        self.control = ControlDevice(self.dynamic, cfg.guest_iterations)
        self.mmio_bus.insert(self.control, CONTROL_BASE, CONTROL_SIZE)
        self.mmio_bus.insert(DynamicDoorbellRegion(self.dynamic), DYNAMIC_DOORBELL_BASE,
                             DYNAMIC_DOORBELL_STRIDE * len(self.dynamic.counters))
        if shadow is not None:
            shadow.attach_counter(self.doorbell.fd, self.doorbell.counter.total, DOORBELL_BASE)
            for slot, counter in enumerate(self.dynamic.counters):
                shadow.attach_counter(counter.fd, counter.total, self.dynamic.addr(slot))
        vm.register_ioevent(IoEvent(DOORBELL_BASE, DOORBELL_WRITE_LEN, self.doorbell.fd))

        cpuid = self.kvm.get_supported_cpuid()
        for index in range(cfg.vcpus):
            vcpu = vm.create_vcpu(index)
            boot.setup_vcpu(vcpu, cfg.mem_size, cfg.mode, cfg.load_addr, index, cpuid)
            self.vcpus.append(vcpu)
        self._t_ready = time.monotonic_ns()

    def run(self, on_exit: ExitHook | None = None) -> RunReport:
        """Run every vCPU on its own thread until all halt, one fails, the timeout passes or a signal stops it.

        Must be called from the main thread (it handles signals). Whatever happens, every vCPU thread
        has ended when this returns or raises (see :mod:`minivmm.vmm.lifecycle`).
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Machine.run() must be called from the main thread (it handles signals)")
        with ExitStack() as scope:
            stop = self.stop if self.stop is not None else scope.enter_context(stop_signals(StopRequest()))
            records = [VcpuRecord(i) for i in range(len(self.vcpus))]
            threads = self._threads = VcpuThreads(self.vcpus, records, RunControl(), self._vcpu_loop(on_exit))
            ftrace = self._start_ftrace()
            t_run = time.monotonic_ns()
            with kick_handler():  # restored only once every thread is joined
                try:
                    if self.shadow is not None:
                        self.shadow.vm_running()
                    if stop.outcome is None:
                        threads.start()
                    ended = self._supervise(records, time.monotonic() + self.config.timeout, stop)
                finally:
                    threads.stop_and_join()
            t_end = time.monotonic_ns()
            failure = threads.failure()
            if failure is not None:
                raise failure  # out of memory is the process's state, not the guest's: the CLI's exit 7
            if self.shadow is not None:
                # Reported counts are judged only if the guest halted: one stopped early had writes to report.
                halted = final_outcome(ended, [r.state for r in records], kernel_violation=False) is RunOutcome.HALTED
                self.shadow.reconcile(final=True, judge_reports=halted)
            ftrace_result = self._ftrace_check(ftrace, records)
            violated = bool((self.shadow is not None and self.shadow.violation_count)
                            or (ftrace_result is not None and ftrace_result.mismatches))
            guest_error = self.shadow is not None and bool(self.shadow.guest_error_count)
            outcome = final_outcome(ended, [r.state for r in records], kernel_violation=violated,
                                    guest_error=guest_error)
            from minivmm.vmm.report import RunTimes, build_report
            snapshot = self.snapshot(records, ftrace_result, self._ftrace_error)
            return build_report(records, outcome, snapshot, RunTimes(self._t_start, self._t_ready, t_run, t_end))

    def _vcpu_loop(self, on_exit: ExitHook | None) -> Callable[[Vcpu, VcpuRecord, RunControl], None]:
        shadow = self.shadow

        def loop(vcpu: Vcpu, record: VcpuRecord, control: RunControl) -> None:
            # One dispatcher per vCPU: its route tables are that vCPU's own (no lock on the exit path).
            dispatcher = ExitDispatcher(self.pio_bus, self.mmio_bus, strict=self.config.strict)
            run_vcpu(vcpu, dispatcher, record, control, on_exit, shadow)
        return loop

    def _start_ftrace(self) -> FtraceSession | None:
        """Arm --ftrace's trace instance (kept in ``self._ftrace`` so that close() tears it down on any path)."""
        if not self.config.ftrace:
            return None
        from minivmm.shadow.ftrace import FtraceSession, FtraceUnavailable
        try:
            self._ftrace = FtraceSession.start(os.getpid())
        except FtraceUnavailable as e:
            self._ftrace_error = str(e)
        return self._ftrace

    def snapshot(self, records: list[VcpuRecord], ftrace: FtraceResult | None = None,
                 ftrace_error: str | None = None) -> MachineSnapshot:
        """What the report shows, read once every vCPU thread has ended: the devices' counters, the
        shadow's summary, and where each vCPU that did not halt cleanly was."""
        from minivmm.vmm.report import MachineSnapshot
        where = {r.index: self._vcpu_snapshot(self.vcpus[r.index]) for r in records
                 if r.state is not VcpuState.HALTED}
        doorbell = self.doorbell
        return MachineSnapshot(
            console=self.console.text(), console_dropped=self.console.dropped,
            doorbell_kernel_writes=doorbell.kernel_count() if doorbell else 0,
            doorbell_userspace_writes=doorbell.userspace_writes if doorbell else 0,
            dynamic_doorbells=self.dynamic.counts() if self.dynamic is not None else None,
            shadow=self.shadow.summary() if self.shadow is not None else None,
            vcpus=where, ftrace=ftrace,
            ftrace_unavailable=ftrace_error if self.config.ftrace and ftrace is None else None,
            console_echo_dropped=self.console.echo_dropped)

    def _vcpu_snapshot(self, vcpu: Vcpu) -> VcpuSnapshot:
        from minivmm.vmm.report import REGISTER_NAMES, VcpuSnapshot
        try:
            regs = vcpu.get_regs()
            sregs = vcpu.get_sregs()
        except KvmError as e:
            return VcpuSnapshot(error=str(e))
        registers = {name: int(getattr(regs, name)) for name in REGISTER_NAMES}
        registers.update(cr0=int(sregs.cr0), cr3=int(sregs.cr3), cr4=int(sregs.cr4), efer=int(sregs.efer),
                         cs_base=int(sregs.cs.base), cs=int(sregs.cs.selector))
        linear = (int(sregs.cs.base) + int(regs.rip)) & 0xFFFFFFFFFFFFFFFF
        mem = self.memory
        code = None
        before = b""
        if mem is not None and mem.contains(linear, 1):
            code = mem.read(linear, min(15, mem.guest_phys_addr + mem.size - linear))
            start = max(mem.guest_phys_addr, linear - 15)
            before = mem.read(start, linear - start)
        return VcpuSnapshot(registers, linear, boot.guest_mode(sregs), code, code_before=before)

    def _ftrace_check(self, session: FtraceSession | None, records: list[VcpuRecord]) -> FtraceResult | None:
        """Stop tracing and compare the kernel's record with the VMM's exits and the doorbells (None
        without --ftrace, or when the record could not be read: ``_ftrace_error`` says why)."""
        if session is None:
            return None
        from minivmm.kvm.exits import MMIO_EXITS, PIO_EXITS
        from minivmm.shadow.ftrace import FtraceUnavailable, analyse
        self._ftrace = None
        try:
            lines = session.stop()
        except FtraceUnavailable as e:
            self._ftrace_error = str(e)
            return None
        io = sum(r.exits.get(cls, 0) for r in records for cls in PIO_EXITS)
        mmio = sum(r.exits.get(cls, 0) for r in records for cls in MMIO_EXITS)
        counts: dict[int, int] = {}
        if self.doorbell is not None:
            counts[DOORBELL_BASE] = self.doorbell.kernel_count()
        if self.dynamic is not None:
            for slot, counter in enumerate(self.dynamic.counters):
                total = counter.total()
                if total:
                    counts[self.dynamic.addr(slot)] = total
        known = {acct.addr for acct in self.shadow.doorbells.values()} if self.shadow is not None else set(counts)
        return analyse(lines, session.overruns, {"io": io, "mmio": mmio}, counts, known)

    def _supervise(self, records: list[VcpuRecord], deadline: float, stop: StopRequest) -> RunOutcome:
        """Wait until every vCPU halted, one failed, the deadline passed or a stop was requested."""
        while True:
            if stop.outcome is not None:
                return stop.outcome
            if all(r.done.is_set() for r in records):
                return RunOutcome.HALTED
            if any(r.state in (VcpuState.FAILED, VcpuState.ERROR) for r in records):
                return RunOutcome.FAILED
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return RunOutcome.TIMEOUT
            waiting = next(r for r in records if not r.done.is_set())
            # A stop signal's handler only sets a flag: it is seen here within one interval.
            waiting.done.wait(min(POLL_INTERVAL, remaining))

    def close(self) -> None:
        """Release everything: vCPU threads stopped and joined first (never unmap a ``kvm_run`` under a
        live thread), the ftrace instance removed, vCPUs and VM (so KVM drops its references), then RAM
        and eventfds."""
        if self._threads is not None:
            with kick_handler():
                self._threads.stop_and_join()
            self._threads = None
        if self._ftrace is not None:
            self._ftrace.teardown()
            self._ftrace = None
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        self.vcpus = []
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
        if self.dynamic is not None:
            self.dynamic.close()
            self.dynamic = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
