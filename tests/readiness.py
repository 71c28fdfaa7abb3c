"""Waiting for a process to be ready, by polling what it shows in /proc, never by a fixed sleep.

A signal test must send its signal once the process can take it (its handlers are installed, its vCPUs
run, its program started), however busy the host is: a fixed sleep is either too short on a loaded CI
host or wastes seconds on an idle one. Each helper here polls until a condition holds and fails the test
with a message naming what never happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

#: How long a process may take to get ready before the test fails (generous: CI hosts can be busy).
READY_TIMEOUT = 60.0
POLL = 0.005


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None,
               timeout: float = READY_TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does (or ``proc`` ends first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(POLL)


def _status_mask(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1], 16)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def takes(pid: int, sig: int) -> bool:
    """Whether the process's main thread has taken charge of ``sig``: it blocks it (minivmm's watcher
    thread then takes it with sigwaitinfo) or catches it with a handler."""
    bit = 1 << (sig - 1)
    return bool((_status_mask(pid, "SigBlk") | _status_mask(pid, "SigCgt")) & bit)


def ignores(pid: int, sig: int) -> bool:
    """Whether the process ignores ``sig`` (SIG_IGN)."""
    return bool(_status_mask(pid, "SigIgn") & (1 << (sig - 1)))


def fd_links(pid: int) -> list[str]:
    """What each of the process's file descriptors refers to (empty once it has ended)."""
    links = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return []
    for name in names:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass  # closed meanwhile
    return links


def has_fd(pid: int, fragment: str) -> bool:
    """Whether one of the process's descriptors names ``fragment`` (e.g. ``kvm-vcpu``)."""
    return any(fragment in link for link in fd_links(pid))


def children(pid: int) -> list[int]:
    """The process's children (of every thread)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def wait_running_vcpus(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Wait until ``minivmm boot`` takes ``sig`` and has a vCPU: the moment a stop signal tests its run."""
    wait_until(lambda: takes(proc.pid, sig) and has_fd(proc.pid, "kvm-vcpu"),
               f"{signal.Signals(sig).name} taken and a vCPU created", proc)


def wait_vms_closed(proc: subprocess.Popen[str], count: int = 1) -> None:
    """Wait until the process has closed ``count`` VMs (a VM's descriptor seen, then gone): for
    ``timing``, at least that many repetitions are done."""
    seen = {"open": False, "closed": 0}

    def closed_enough() -> bool:
        is_open = has_fd(proc.pid, "kvm-vm")
        if seen["open"] and not is_open:
            seen["closed"] += 1
        seen["open"] = is_open
        return seen["closed"] >= count

    wait_until(closed_enough, f"{count} VM(s) created and closed", proc)


def in_single_threaded_child(body: Callable[[], None], timeout: float = READY_TIMEOUT) -> None:
    """Run ``body`` in a forked child, where it is the only thread, and fail with its error if it fails.

    A test that sends a process-directed signal to itself relies on every thread blocking it, as
    minivmm's threads do (they start after the mask is set). The test runner may have threads of its own
    (pytest-xdist's worker has one) that block nothing, and the kernel may deliver the signal to one of
    them, whose default action ends the runner. A forked child has only the forking thread."""
    import traceback
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report any failure through the pipe, never return into the runner
        code = 0
        try:
            os.close(read_end)
            body()
        except BaseException:  # noqa: BLE001 - everything is reported to the parent
            os.write(write_end, traceback.format_exc().encode(errors="replace"))
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            raise AssertionError(f"the forked test did not end within {timeout:.0f} s")
        time.sleep(POLL)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"in the forked child (status {os.waitstatus_to_exitcode(status)}):\n{report}")
