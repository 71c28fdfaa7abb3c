#!/usr/bin/env python3
"""Soak the VMM's lifecycle: signals at random moments, stalled and departing stdout readers.

    python3 scripts/soak_signals.py [--minutes 10] [--cases signal,double,stalled,head] [--ftrace]

Each case runs ``minivmm boot`` as a separate process, over and over, for --minutes:

    signal   a guest looping ``out %al,$0x80; jmp 1b`` on 1-64 vCPUs, one SIGINT or SIGTERM at a random
             moment (0-0.6 s after the process handles signals: during the build, the vCPUs' start or
             the run); must exit 130 / 143 as the signal says
    double   the same with a second signal 0-30 ms after the first: the first one decides (either, when
             both were pending before the VMM's watcher thread could run: the kernel cannot tell)
    stalled  a guest flooding port 0xE9 with stdout on a pipe nobody reads, --timeout 1: must exit 1
             within --timeout plus the summary's 2 s
    head     ``minivmm boot guest/hello.bin | head -c 5``: must print "Hello" and exit 0, quietly

Every run must also leave no traceback on stderr and die by no signal (SIGSEGV above all). With
--ftrace the signal cases add ``--ftrace`` and also check that no trace instance of the run is left.
Prints one line per failing run and a table at the end. Exit status: 0 when every run was right.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT_LOOP = bytes.fromhex("e680ebfc")            # out 0x80, al; jmp back
FLOOD = bytes.fromhex("bae900b041eeebfd")      # mov dx, 0xe9; mov al, 'A'; out dx, al; jmp back
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
CASES = ("signal", "double", "stalled", "head")


def handles_signals(pid: int) -> bool:
    """Whether the process has taken over SIGTERM (blocked in its main thread, taken by a watcher)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except FileNotFoundError:
        pass
    return False


def trace_instances(pid: int) -> list[str]:
    """Trace instances named after ``pid`` in any mounted tracefs."""
    with open("/proc/mounts") as f:
        roots = [line.split()[1] for line in f if line.split()[2:3] == ["tracefs"]]
    found = []
    for root in roots:
        try:
            found += [i for i in os.listdir(os.path.join(root, "instances")) if i.startswith(f"minivmm-{pid}-")]
        except OSError:
            pass
    return found


def signal_run(image: str, rng: random.Random, double: bool, ftrace: bool) -> str | None:
    """One signalled run; None when it ended right, else what went wrong."""
    vcpus = rng.choice((1, 8, 32, 64))
    first, second = rng.choice(tuple(CODES)), rng.choice(tuple(CODES))
    cmd = [sys.executable, "-m", "minivmm", "boot", image, "--vcpus", str(vcpus), "--timeout", "60"]
    cmd += ["--ftrace"] if ftrace else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not handles_signals(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                return "never took over its signals"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(first)
        if double:
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(second)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    case = f"vcpus={vcpus} first={signal.Signals(first).name}"
    # Two signals both pending before the watcher thread runs arrived at once as far as the kernel
    # tells (it hands them out lowest-numbered first): either code is right then.
    expected = {CODES[first], CODES[second]} if double else {CODES[first]}
    if proc.returncode not in expected:
        return f"{case}: exit {proc.returncode}, expected {sorted(expected)}; {err.strip()[-300:]}"
    if "Traceback" in err:
        return f"{case}: traceback on stderr: {err.strip()[-300:]}"
    if ftrace and trace_instances(proc.pid):
        return f"{case}: trace instance left behind: {trace_instances(proc.pid)}"
    return None


def stalled_run(image: str) -> str | None:
    """A flooding guest, stdout on a pipe nobody reads, --timeout 1."""
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "minivmm", "boot", image, "--timeout", "1"],
                                stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        os.close(w)
        w = -1
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return "still running 30 s after --timeout 1"
        elapsed = time.monotonic() - t0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if proc.returncode != 1 or "Traceback" in err:
        return f"exit {proc.returncode}: {err.strip()[-300:]}"
    if elapsed > 8:
        return f"took {elapsed:.1f} s for --timeout 1"
    return None


def head_run() -> str | None:
    """``minivmm boot guest/hello.bin | head -c 5``."""
    proc = subprocess.run(f"{sys.executable} -m minivmm boot guest/hello.bin | head -c 5; "
                          "echo \" status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    if proc.stdout != "Hello status=0\n" or proc.stderr:
        return f"stdout {proc.stdout!r}, stderr {proc.stderr.strip()[-300:]!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run each case (default 10)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--ftrace", action="store_true", help="add --ftrace to the signal cases (root)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    if not names or any(n not in CASES for n in names):
        parser.error(f"known cases: {', '.join(CASES)}")
    rng = random.Random(args.seed)
    runs: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        loop, flood = os.path.join(tmp, "outloop.bin"), os.path.join(tmp, "flood.bin")
        pathlib.Path(loop).write_bytes(OUT_LOOP)
        pathlib.Path(flood).write_bytes(FLOOD)
        for name in names:
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                if name in ("signal", "double"):
                    problem = signal_run(loop, rng, name == "double", args.ftrace)
                elif name == "stalled":
                    problem = stalled_run(flood)
                else:
                    problem = head_run()
                runs[name] += 1
                if problem is not None:
                    bad[name] += 1
                    print(f"{name} run {runs[name]}: {problem}", flush=True)
    print(f"{'case':<10} {'runs':>6} {'wrong':>6}")
    for name in names:
        print(f"{name:<10} {runs[name]:>6} {bad[name]:>6}")
    return 0 if not sum(bad.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
