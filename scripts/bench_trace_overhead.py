#!/usr/bin/env python3
"""What tracing costs the traced program and the rest of the host: ``minivmm trace`` (with the kernel
clock, and with ``--clock ptrace``: no syscall tracepoints, a second stop per KVM ioctl instead) beside
``strace -f -T -e trace=ioctl`` and beside no tracer at all, in one run (a benchmark, not a test: figures
vary by host and load; the load average is printed with them).

The program (scripts/trace_overhead_prog.c, built here with ``gcc -static``) times its own calls with
clock_gettime, so the cost a tracer adds is what the program sees, stops included:

* per KVM ioctl, two shapes: a VM set-up shaped like QEMU's (system-fd probes, a VM, a memslot, irqchip,
  PIT, ioeventfds, two vCPUs with QEMU's get/set rounds: 126 ioctls; per position the median over the
  repetitions, summed, per ioctl) and a tight loop of KVM_CHECK_EXTENSION on the system fd;
* a non-KVM system call (getppid) in the traced program;
* the same call in another process, run while each tracer traces a program that waits (the kernel
  clock's syscall tracepoints are switched on for every task while a trace runs);
* with -p PID (attached to the running program, both tools stop every system call twice): the
  KVM_CHECK_EXTENSION loop and getppid;
* getppid under a seccomp filter of the tracer's shape with no tracer and no tracepoint (the program
  installs it itself): the floor under any tracer built on a seccomp filter.

Conditions are interleaved round by round (bare, minivmm trace, strace, ...) so that a change in the
host's load falls on all of them. The loops' figure is the fastest batch's (a batch is only ever slowed
by the host's other work), and for the KVM_CHECK_EXTENSION loop also the median batch's (a stop's cost
moves with where the two processes' wake-ups land, batch to batch); the set-up's is the median per
position. Goals (from the tracer's design):
per KVM ioctl at most strace's; a non-KVM system call within 10% of bare, in the traced program and in
another process.

Usage: scripts/bench_trace_overhead.py [--rounds 5] [--setups 20] [--checks 20000] [--getpids 200000]
       [--batches 5] [--no-attach] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

from minivmm.cli.errors import ExitCode
from minivmm.files import FileRefused, Output, WriteFailed

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "scripts" / "trace_overhead_prog.c"

Samples = dict[str, list[list[int]]]  # kind -> batches ("setup": per-call ns; others: [n, ns])


def parse(out: str) -> Samples:
    """The program's lines, by kind."""
    got: Samples = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("setup", "check", "getpid"):
            got.setdefault(words[0], []).append([int(w) for w in words[1:]])
    return got


def tracers(tmp: str) -> dict[str, Callable[[list[str]], list[str]]]:
    """Each condition: how to run a program under it (bare, minivmm trace, strace)."""
    report = os.path.join(tmp, "report.txt")
    out = {"bare": lambda argv: argv,
           "minivmm trace": lambda argv: [sys.executable, "-m", "minivmm", "trace", "--no-explain", "-o", report,
                                          "--", *argv],
           "--clock ptrace": lambda argv: [sys.executable, "-m", "minivmm", "trace", "--no-explain", "-o", report,
                                           "--clock", "ptrace", "--", *argv]}
    if shutil.which("strace"):
        out["strace -f -T"] = lambda argv: ["strace", "-f", "-T", "-e", "trace=ioctl", "-o",
                                            os.path.join(tmp, "strace.txt"), *argv]
    return out


def run(cmd: list[str]) -> Samples:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return parse(proc.stdout)


def other_process(prog: str, wrap: Callable[[list[str]], list[str]], n: int, batches: int) -> Samples:
    """getppid in a second, untraced process while ``wrap`` traces a program that waits."""
    holder = subprocess.Popen(wrap([prog, "hold"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        if not ready or holder.stdout.readline().strip() != "ready":
            raise SystemExit("the holding program did not start")
        return run([prog, "getpid", str(n), str(batches)])
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def attached(prog: str, tmp: str, tracer: str, args: list[str]) -> Samples:
    """The program's loops while ``tracer`` (``minivmm`` or ``strace``) is attached to it with -p."""
    holder = subprocess.Popen([prog, "go", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        raise SystemExit("the program did not start")
    if tracer == "minivmm":
        cmd = [sys.executable, "-m", "minivmm", "trace", "--no-explain", "-o", os.path.join(tmp, "attached.txt"),
               "-p", str(holder.pid)]
        ready = "attached to pid"
    else:
        cmd = ["strace", "-f", "-T", "-e", "trace=ioctl", "-o", os.path.join(tmp, "attached.strace"),
               "-p", str(holder.pid)]
        ready = "attached"
    t = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert t.stderr is not None
    try:
        while ready not in (line := t.stderr.readline()):
            if not line:
                raise SystemExit(f"{tracer} did not attach")
        holder.stdin.write("x")
        holder.stdin.flush()
        out = holder.stdout.read()
        holder.wait(timeout=600)
        t.wait(timeout=60)
    finally:
        for p in (holder, t):
            if p.poll() is None:
                p.kill()
                p.wait()
    return parse(out)


def per_call_ns(batches: list[list[int]]) -> float:
    """ns per call in the fastest batch ([n, ns] each): on a shared host a batch is only ever slowed
    (preempted, its CPU's caches taken), so the fastest is the closest to the call's own cost."""
    return min(ns / n for n, ns in batches)


def median_call_ns(batches: list[list[int]]) -> float:
    """ns per call in the median batch: with a tracer's stops in the loop, where the two processes'
    wake-ups land (one CPU or two, a halted CPU or a running one) decides a batch's cost more than the
    host's other work, and it changes from batch to batch; the median is what a run can expect."""
    return statistics.median(ns / n for n, ns in batches)


def setup_per_ioctl_ns(batches: list[list[int]]) -> float:
    """Per position, the median over the repetitions; summed; per ioctl."""
    width = min(len(b) for b in batches)
    return sum(statistics.median(b[i] for b in batches) for i in range(width)) / width


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def print_figures(conditions: list[str], figures: dict[str, dict[str, float]], attach_rows: dict[str, Samples]) -> None:
    """The table: each condition's cost against the bare run's, and the -p PID rows (added to ``figures``)."""
    bare = figures["bare"]
    head = f"{'':34}" + "".join(f" {n:>17}" for n in conditions)
    print(head)
    rows = [("KVM ioctl, QEMU-like set-up", "setup_ns_per_ioctl", "added"),
            ("KVM_CHECK_EXTENSION loop", "check_ns", "added"),
            ("  the same, median batch", "check_median_ns", "added"),
            ("getppid in the traced program", "getpid_traced_ns", "ratio"),
            ("getppid in another process", "getpid_other_ns", "ratio")]
    for label, key, how in rows:
        cells = []
        for name in conditions:
            v = figures[name][key]
            if name == "bare":
                cells.append(f"{v / 1000:.2f} us" if v >= 1000 else f"{v:.0f} ns")
            elif how == "added":
                cells.append(f"+{(v - bare[key]) / 1000:.1f} us")
            else:
                cells.append(f"{v:.0f} ns ({(v / bare[key] - 1) * 100:+.0f}%)")
        print(f"{label:34}" + "".join(f" {c:>17}" for c in cells))
    if attach_rows:
        print("\nattached to the running program (-p PID: every system call stops at entry and exit)")
        print(f"{'':34}" + "".join(f"{n + ' -p':>18}" for n in attach_rows))
        for label, kind, key in (("KVM_CHECK_EXTENSION loop", "check", "check_ns"),
                                 ("getppid", "getpid", "getpid_traced_ns")):
            cells = []
            for name, samples in attach_rows.items():
                v = per_call_ns(samples[kind])
                figures.setdefault(f"{name} -p", {})[key] = v
                cells.append(f"+{(v - bare[key]) / 1000:.1f} us")
            print(f"{label:34}" + "".join(f"{c:>18}" for c in cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--setups", type=int, default=20, help="set-up repetitions per program run")
    ap.add_argument("--checks", type=int, default=20000, help="KVM_CHECK_EXTENSION calls per batch")
    ap.add_argument("--getpids", type=int, default=200000, help="getppid calls per batch")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--no-attach", action="store_true", help="leave out the -p PID rows")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    try:  # refused now, not after the run
        out = Output(args.json, "--json", suffix=".json") if args.json else None
    except FileRefused as e:
        ap.error(str(e))
    if shutil.which("gcc") is None:
        print("gcc is needed", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-trace-overhead-")
    prog = os.path.join(tmp, "prog")
    subprocess.run(["gcc", "-static", "-O2", "-o", prog, str(SRC)], check=True)
    conditions = tracers(tmp)
    argv = [prog, "setup", str(args.setups), "check", str(args.checks), str(args.batches),
            "getpid", str(args.getpids), str(args.batches)]
    traced: dict[str, Samples] = {c: {} for c in conditions}
    other: dict[str, Samples] = {c: {} for c in conditions}
    filter_only: list[list[int]] = []
    load_before = load()
    for r in range(args.rounds):
        for name, wrap in conditions.items():
            for kind, batches in run(wrap(argv)).items():
                traced[name].setdefault(kind, []).extend(batches)
            for kind, batches in other_process(prog, wrap, args.getpids, args.batches).items():
                other[name].setdefault(kind, []).extend(batches)
        filter_only += run([prog, "seccomp", "getpid", str(args.getpids), str(args.batches)])["getpid"]
        print(f"round {r + 1}/{args.rounds} done (load average {load()})", file=sys.stderr)
    attach_rows: dict[str, Samples] = {}
    if not args.no_attach:
        loops = ["check", str(args.checks), str(args.batches), "getpid", str(args.getpids // 10), str(args.batches)]
        for name in ["minivmm", "strace"] if shutil.which("strace") else ["minivmm"]:
            for _ in range(args.rounds):
                for kind, batches in attached(prog, tmp, name, loops).items():
                    attach_rows.setdefault(name, {}).setdefault(kind, []).extend(batches)
    load_after = load()

    figures: dict[str, dict[str, float]] = {}
    for name in conditions:
        figures[name] = {"setup_ns_per_ioctl": setup_per_ioctl_ns(traced[name]["setup"]),
                         "check_ns": per_call_ns(traced[name]["check"]),
                         "check_median_ns": median_call_ns(traced[name]["check"]),
                         "getpid_traced_ns": per_call_ns(traced[name]["getpid"]),
                         "getpid_other_ns": per_call_ns(other[name]["getpid"])}
    print(f"load average {load_before} before, {load_after} after; {os.cpu_count()} CPUs; kernel {os.uname().release}")
    print(f"{args.rounds} rounds; per round each condition runs: {' '.join(argv[1:])}; and getppid "
          f"{args.getpids} x {args.batches} in another process while it traces a waiting program\n")
    print_figures(list(conditions), figures, attach_rows)
    # The floor under any tracer that stops KVM ioctls with a seccomp filter: the filter alone.
    figures["seccomp filter alone"] = {"getpid_traced_ns": per_call_ns(filter_only)}
    alone = figures["seccomp filter alone"]["getpid_traced_ns"]
    bare_getpid = figures["bare"]["getpid_traced_ns"]
    print(f"\ngetppid under a seccomp filter of minivmm trace's shape, no tracer and no tracepoint: {alone:.0f} ns "
          f"({(alone / bare_getpid - 1) * 100:+.0f}% of bare)")
    shutil.rmtree(tmp, ignore_errors=True)
    if out is not None:
        try:
            out.write(json.dumps({"load_before": load_before, "load_after": load_after, "argv": argv[1:],
                                  "rounds": args.rounds, "figures_ns": figures,
                                  "check_batches": {n: traced[n]["check"] for n in conditions}}, indent=2) + "\n")
        except WriteFailed as e:  # a full disk: one line, as minivmm's own commands say it
            print(f"bench_trace_overhead.py: {e}", file=sys.stderr)
            return int(ExitCode.WRITE_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
