"""The VMM's own threads never hang their starter: a vCPU loop that runs out of memory, or a thread whose
bootstrap fails before its target runs, ends with its ``finished`` event set and its error kept for the
main thread (which turns a MemoryError into the one-line exit 7)."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from minivmm.threads import DaemonThread
from minivmm.vmm.lifecycle import VcpuThreads, kick_handler
from minivmm.vmm.vcpu_loop import RunControl, VcpuRecord


def test_a_thread_that_returns_is_finished_without_error():
    seen = []
    t = DaemonThread(seen.append, (1,), name="t")
    t.start()
    assert t.join(5) and t.error is None and seen == [1] and not t.is_alive()


def test_a_target_that_raises_keeps_its_exception_for_the_starter():
    def boom() -> None:
        raise MemoryError("no room")
    t = DaemonThread(boom, name="t")
    t.start()
    assert t.join(5) and isinstance(t.error, MemoryError)


def test_a_bootstrap_that_fails_before_the_target_runs_still_finishes_the_thread(monkeypatch):
    # What CPython does when the new thread cannot even call its function: report it as unraisable,
    # naming the function. Here the report is made by hand, for a thread that was never started.
    from minivmm import threads
    t = DaemonThread(lambda: None, name="t")
    threads._watch_unraisable()
    passed_on = []
    monkeypatch.setattr(threads, "_previous_hook", passed_on.append)
    sys.unraisablehook(SimpleNamespace(object=t._bootstrap, exc_value=MemoryError(), exc_type=MemoryError,
                                       exc_traceback=None, err_msg=None))
    assert t.finished.is_set() and isinstance(t.error, MemoryError) and passed_on == []
    other = SimpleNamespace(object=print, exc_value=ValueError(), exc_type=ValueError, exc_traceback=None,
                            err_msg=None)
    sys.unraisablehook(other)
    assert passed_on == [other]  # anything else goes to the hook that was there before


def test_a_vcpu_loop_out_of_memory_is_raised_on_the_main_thread_not_waited_for():
    records = [VcpuRecord(0), VcpuRecord(1)]

    def loop(vcpu: object, record: VcpuRecord, control: RunControl) -> None:
        if record.index == 1:
            raise MemoryError  # before run_vcpu could set anything in its record
        while not control.stopping:
            record.done.wait(0.001)
        record.done.set()

    vcpus = [SimpleNamespace(immediate_exit=False), SimpleNamespace(immediate_exit=False)]
    threads = VcpuThreads(vcpus, records, RunControl(), loop)  # type: ignore[arg-type]
    threads.start()
    assert records[1].done.wait(5)
    finished = threading.Event()
    stopper = threading.Thread(target=lambda: (threads.stop_and_join(), finished.set()), daemon=True)
    with kick_handler():  # the kick is SIGUSR1: unhandled, it would end the test process
        stopper.start()
        assert finished.wait(10), "stop_and_join waited for a thread that had already died"
    assert isinstance(threads.failure(), MemoryError)


def test_threads_that_would_not_fit_under_rlimit_as_are_refused_before_any_starts():
    from minivmm.threads import THREAD_HEADROOM, THREAD_STACK, reserve_address_space
    per_thread = THREAD_STACK + THREAD_HEADROOM
    reserve_address_space(8, limit=100 * per_thread, in_use=92 * per_thread)  # fits exactly
    with pytest.raises(MemoryError, match="8 thread"):
        reserve_address_space(8, limit=100 * per_thread, in_use=92 * per_thread + 1)
    import resource
    reserve_address_space(10_000, limit=resource.RLIM_INFINITY)  # no limit, no refusal
