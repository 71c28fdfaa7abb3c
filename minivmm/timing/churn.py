"""``minivmm timing --churn``: VMs created, set up and destroyed back to back, on one thread and on N
threads at once, and how many such cycles a second the host completes.

Each cycle is one run of the sequence in a fresh VM by ``minivmm timing``'s runner (every step timed
beside its system call, the teardown's close() included), with no pause between cycles: a serverless
host or a test farm creating short-lived VMs as fast as it can. With N threads each thread has its own
``/dev/kvm`` fd and its own VMs; the system calls release the GIL, so the threads wait in the kernel in
parallel, while their Python between the calls takes turns.

Thread ownership: each worker thread owns its runner and its list of cycles; the main thread only
starts them together, waits for them and reads the lists once they have ended.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from kernel_model.sequences import Sequence
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.timing.runner import Repetition, SequenceRunner
from minivmm.vmm.vcpu_loop import KICK_SIGNAL


@dataclass
class Cycle:
    """One VM's life on one thread: its repetition (each step's duration and the gap before it; when
    its last step ended), and when the cycle began and ended (monotonic ns): it ends once the runner
    has freed what the VM's steps needed (guest memory, eventfds)."""

    rep: Repetition
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        """From the start of the cycle (the runner getting KVM_CREATE_VM ready) to the last step's end."""
        return self.rep.steps_end_ns - self.start_ns


@dataclass
class ChurnRun:
    """The cycles of ``threads`` threads, each doing ``len(cycles[t])`` cycles back to back."""

    threads: int
    cycles: list[list[Cycle]] = field(default_factory=list)
    #: Wall time from the moment every thread was released to the end of the last one.
    wall_ns: int = 0
    #: The process's CPU time (user + system) over the same interval.
    cpu_ns: int = 0

    @property
    def count(self) -> int:
        """Cycles completed by all threads together."""
        return sum(len(c) for c in self.cycles)

    @property
    def rate(self) -> float:
        """Cycles per second, every thread together."""
        return self.count / (self.wall_ns / 1e9) if self.wall_ns > 0 else 0.0

    @property
    def cpu_per_cycle_ns(self) -> float:
        """The process's CPU time per cycle (user and system; the kernel's VM work is in it)."""
        return self.cpu_ns / self.count if self.count else 0.0

    def all_cycles(self) -> list[Cycle]:
        """Every cycle of every thread."""
        return [c for per_thread in self.cycles for c in per_thread]

    def between_ns(self) -> list[int]:
        """Per thread and cycle after its first: from the last step of one cycle to the start of the
        next (the runner freeing the VM's memory and eventfds, and getting the next cycle ready)."""
        return [b.start_ns - a.rep.steps_end_ns
                for per_thread in self.cycles for a, b in zip(per_thread, per_thread[1:])]


class ChurnFailed(RuntimeError):
    """A worker thread's cycle failed; carries what it raised (a KvmError, say) as its cause."""


def _cpu_ns() -> int:
    t = os.times()
    return int((t.user + t.system) * 1e9)


def churn(seq: Sequence, cycles_per_thread: int, threads: int, kvm_path: str = DEFAULT_DEVICE_PATH) -> ChurnRun:
    """Run ``cycles_per_thread`` cycles of ``seq`` on each of ``threads`` threads started together.

    Ctrl-C (KeyboardInterrupt in the main thread; or ``timing``'s SIGTERM, a SystemExit) tells the
    workers to stop after their current cycle, waits for them, and is raised again."""
    if threads < 1 or cycles_per_thread < 1:
        raise ValueError("churn needs at least one thread and one cycle")
    run = ChurnRun(threads, [[] for _ in range(threads)])
    runners = [SequenceRunner(seq, kvm_path) for _ in range(threads)]
    go = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(runner: SequenceRunner, out: list[Cycle]) -> None:
        go.wait()
        try:
            for _ in range(cycles_per_thread):
                if stop.is_set():
                    return
                start = time.monotonic_ns()
                rep = runner.run_once()
                out.append(Cycle(rep, start, time.monotonic_ns()))
        except BaseException as e:  # reported by the main thread, which owns the outcome
            errors.append(e)
            stop.set()

    workers = [threading.Thread(target=work, args=(r, out), name=f"churn-{i}", daemon=True)
               for i, (r, out) in enumerate(zip(runners, run.cycles))]
    old = signal.signal(KICK_SIGNAL, lambda signum, frame: None)  # a `run` step's vCPU is stopped with it
    try:
        for w in workers:
            w.start()
        cpu0, t0 = _cpu_ns(), time.monotonic_ns()
        go.set()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.1)
        except BaseException:  # Ctrl-C, or SIGTERM's SystemExit: the workers end their cycle first
            stop.set()
            for w in workers:
                w.join()
            raise
        run.wall_ns, run.cpu_ns = time.monotonic_ns() - t0, _cpu_ns() - cpu0
    finally:
        signal.signal(KICK_SIGNAL, old)
        for r in runners:
            r.close()
    if errors:
        raise ChurnFailed(str(errors[0])) from errors[0]
    return run
