"""Console output never blocks a vCPU: a stalled reader, a reader that leaves (``| head``)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from readiness import wait_running_vcpus

from minivmm.devices.console import Console, ConsoleWriter

#: mov dx, 0xe9; mov al, 'A'; out dx, al; jmp back: floods the debug console forever (real mode)
FLOOD = bytes.fromhex("bae900b041eeebfd")


def test_writer_drops_and_counts_when_the_reader_stalls():
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        try:
            while True:  # fill the pipe: the reader is stalled from the start
                os.write(w, bytes(4096))
        except BlockingIOError:
            pass
        os.set_blocking(w, True)
        writer = ConsoleWriter(w, backlog=1000)
        console = Console(writer)
        t0 = time.monotonic()
        for _ in range(2000):  # 200 KB: more than the pipe and the backlog hold
            console.put(b"x" * 100)
        assert time.monotonic() - t0 < 2, "put() blocked on a reader that does not read"
        assert console.echo_dropped > 0 and len(console.output) == 200_000
        assert writer.close(0.2) is False  # still blocked in write(): abandoned, not waited for
    finally:
        os.close(r)


def test_writer_stops_quietly_on_epipe():
    r, w = os.pipe()
    writer = ConsoleWriter(w)
    os.close(r)
    writer.write(b"hello")
    deadline = time.monotonic() + 5
    while not writer.broken and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.broken
    writer.write(b"more")  # discarded, no error
    assert writer.close(1) is False
    os.close(w)


def test_echo_to_a_plain_stream_is_unchanged():
    out = io.BytesIO()
    c = Console(out)
    c.put(b"hi\n")
    assert out.getvalue() == b"hi\n" and c.echo_dropped == 0


@pytest.mark.kvm
@pytest.mark.parametrize("stop", ["timeout", "sigterm"])
@pytest.mark.slow
def test_a_stalled_stdout_reader_does_not_defeat_timeout_or_sigterm(tmp_path, stop):
    image = tmp_path / "flood.bin"
    image.write_bytes(FLOOD)
    r, w = os.pipe()  # nobody ever reads r
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "minivmm", "boot", str(image), "--timeout",
                                 "3" if stop == "timeout" else "60"],
                                stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        os.close(w)
        w = -1
        if stop == "sigterm":
            wait_running_vcpus(proc)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert proc.returncode == (1 if stop == "timeout" else 143), err
    assert "Traceback" not in err
    # --timeout 3 (or SIGTERM at 2 s), plus start-up and the 2 s the summary waits for the reader.
    assert elapsed < 12, elapsed


@pytest.mark.kvm
def test_head_reads_five_bytes_and_the_vmm_exits_quietly():
    proc = subprocess.run(f"{sys.executable} -m minivmm boot guest/hello.bin | head -c 5; "
                          "echo \" status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout == "Hello status=0\n", proc
    assert proc.stderr == ""


@pytest.mark.kvm
def test_no_stdout_at_all_is_not_a_crash():
    proc = subprocess.run(f"{sys.executable} -m minivmm boot guest/hello.bin >&-", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
