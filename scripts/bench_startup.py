#!/usr/bin/env python3
"""Start-up cost of the ``minivmm`` command, against the interpreter's own and typer's: the targets are a
whole ``minivmm boot guest/hello.bin`` (shadow on) within 1.6x ``python -c "import typer"`` and
``minivmm --help`` within 2x, measured in the same run (the ratios to ``python -c pass`` are shown too).

Runs each command as a whole process, alternating between them round by round so that a machine's
load drifts over all of them alike, and reports medians (and p10/p90). Then runs each once under
``python -X importtime`` and says where the import time goes, by package and by module; and runs the
boot once more, instrumented, to say where the rest goes: building dataclasses (``@dataclass`` compiles
its methods with ``exec`` at import), the command's phases, and the kernel's share (closing the VM fd:
``kvm_destroy_vm()``).

    python scripts/bench_startup.py                 # 15 rounds, the default commands
    python scripts/bench_startup.py --rounds 30 --top 15

The interpreter is the one running this script (a venv's python includes the venv's site start-up,
e.g. the editable install's path hook, in every row alike). This is a benchmark, not a test: figures
depend on the machine and its load; report them with both.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The children run as a user's command would: with bytecode caching. PYTHONDONTWRITEBYTECODE (set in
#: some CI and sandbox environments) would make every run recompile every minivmm module (~50 ms).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

#: name -> argv after the interpreter. "python -c pass" is the floor every row is divided by; the targets
#: are ratios to "python -c import typer" (the command line's framework, imported by every command).
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -c import typer": ["-c", "import typer"],
    "minivmm --help": ["-m", "minivmm", "--help"],
    "minivmm boot guest/hello.bin": ["-m", "minivmm", "boot", "guest/hello.bin"],
    "minivmm boot guest/hello.bin --no-check": ["-m", "minivmm", "boot", "guest/hello.bin", "--no-check"],
    "minivmm model --help": ["-m", "minivmm", "model", "--help"],
    "minivmm model": ["-m", "minivmm", "model"],
}
#: The rows with a target, and the target: times the "python -c import typer" row of the same run.
TARGETS = {"minivmm boot guest/hello.bin": 1.6, "minivmm --help": 2.0}
#: The row the targets are ratios to.
TARGET_BASE = "python -c import typer"


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one whole process (fork, exec, interpreter start, the
    command, exit), seconds. CPU time is what a loaded machine distorts least: it is reported beside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=CHILD_ENV)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"bench_startup: {' '.join(argv)} exited {proc.returncode}: "
                 f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return elapsed, cpu


def measure(rounds: int, names: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``rounds`` rounds; in each, every command once, the order rotated each round. (wall, cpu)."""
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm the page cache and the bytecode caches first
        run_once(COMMANDS[name])
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            w, c = run_once(COMMANDS[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def importtime(argv: list[str]) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, depth) per import, from ``python -X importtime``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((name.strip(), int(self_us), int(cum_us), depth))
    return rows


def package_of(module: str) -> str:
    """minivmm.kvm.exits -> minivmm.kvm; kernel_model.srcutree -> kernel_model; json.decoder -> (stdlib) json."""
    parts = module.split(".")
    if parts[0] == "minivmm":
        return ".".join(parts[:2])
    if parts[0] in ("kernel_model", "capstone", "cffi", "_cffi_backend", "typer", "shellingham") or \
            module.startswith("__editable__"):
        return parts[0] if not module.startswith("__editable__") else "editable-install path hook"
    return f"(stdlib and others) {parts[0]}"


#: Run in a child (fresh imports): the boot command, with clocks around what the import profile cannot
#: see. The patches only time; they change nothing the command does.
PHASES_CHILD = r"""
import contextlib, dataclasses, io, json, sys, time
t0 = time.perf_counter()
spent = {"dataclass decoration": 0.0, "VM fd close (kernel: kvm_destroy_vm)": 0.0}
_process_class = dataclasses._process_class
def timed_process_class(*a, **k):
    t = time.perf_counter()
    try:
        return _process_class(*a, **k)
    finally:
        spent["dataclass decoration"] += time.perf_counter() - t
dataclasses._process_class = timed_process_class
from minivmm.cli.app import main
from minivmm.kvm import vm as vm_mod
_close = vm_mod.Vm.close
def timed_close(self):
    t = time.perf_counter()
    try:
        return _close(self)
    finally:
        spent["VM fd close (kernel: kvm_destroy_vm)"] += time.perf_counter() - t
vm_mod.Vm.close = timed_close
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
spent["whole command, from the interpreter's first line"] = time.perf_counter() - t0
print(json.dumps({k: v * 1e3 for k, v in spent.items()}), file=sys.stderr)
"""


def boot_phases(argv: list[str]) -> dict[str, float]:
    """ms per phase of one instrumented boot (see PHASES_CHILD)."""
    proc = subprocess.run([sys.executable, "-c", PHASES_CHILD, *argv], cwd=ROOT, env=CHILD_ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    import json
    return dict(json.loads(proc.stderr.strip().splitlines()[-1]))


def main() -> int:
    """Measure, print the table and the import breakdown; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds (medians of this many; >= 10)")
    ap.add_argument("--top", type=int, default=12, help="modules to list by self import time")
    ap.add_argument("--commands", nargs="*", choices=list(COMMANDS), default=list(COMMANDS),
                    help="which rows to measure (python -c pass is always measured)")
    args = ap.parse_args()
    if not os.path.exists("/dev/kvm"):
        print("note: /dev/kvm is missing; the boot rows will fail", file=sys.stderr)
    names = ["python -c pass", TARGET_BASE] + [n for n in args.commands if n not in ("python -c pass", TARGET_BASE)]
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        print("note: PYTHONDONTWRITEBYTECODE is set here; the commands run without it (with .pyc caches), "
              "as a user's would")
    load = os.getloadavg()
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]}); {os.cpu_count()} CPUs; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    times, cpu = measure(args.rounds, names)
    floor = statistics.median(times["python -c pass"])
    cpu_floor = statistics.median(cpu["python -c pass"])
    base = statistics.median(times[TARGET_BASE])
    print(f"\n{args.rounds} alternating rounds, whole processes: wall time (the target's measure), and CPU "
          "time (user + system, median) beside it\n")
    print(f"{'command':<42}{'p10 ms':>9}{'p50 ms':>9}{'p90 ms':>9}{'x pass':>9}{'x typer':>9}{'CPU ms':>9}"
          f"{'x pass':>9}  target (wall, x typer)")
    missed = []
    for name in names:
        xs = times[name]
        p50 = statistics.median(xs)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:g}x: {'met' if p50 / base <= target else 'MISSED'}"
            if p50 / base > target:
                missed.append(name)
        c50 = statistics.median(cpu[name])
        print(f"{name:<42}{quantile(xs, 0.1) * 1e3:>9.1f}{p50 * 1e3:>9.1f}{quantile(xs, 0.9) * 1e3:>9.1f}"
              f"{p50 / floor:>9.2f}{p50 / base:>9.2f}{c50 * 1e3:>9.1f}{c50 / cpu_floor:>9.2f}  {verdict}")
    end_load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if max(load[0], end_load) > cpus / 2:
        print(f"\nthe machine was busy (load average {load[0]:.2f} at the start, {end_load:.2f} at the end, on "
              f"{cpus} CPUs): every row is slowed, the floor too, and ratios are less reliable than on a quiet "
              "machine")
    else:
        print(f"\nload average {end_load:.2f} at the end")

    for name in ("minivmm boot guest/hello.bin", "minivmm --help"):
        if name not in names:
            continue
        rows = importtime(COMMANDS[name])
        floor_rows = {r[0] for r in importtime(COMMANDS["python -c pass"])}
        extra = [r for r in rows if r[0] not in floor_rows]
        total = sum(r[1] for r in extra)
        print(f"\nwhere the import time of `{name}` goes beyond `python -c pass`'s own imports "
              f"(-X importtime, one run): {total / 1e3:.1f} ms in {len(extra)} modules")
        by_package: dict[str, int] = defaultdict(int)
        for module, self_us, _, _ in extra:
            by_package[package_of(module)] += self_us
        for package, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {us / 1e3:7.1f} ms  {package}")
        print("  slowest modules (self time):")
        for module, self_us, cum_us, _ in sorted(extra, key=lambda r: -r[1])[:args.top]:
            print(f"  {self_us / 1e3:7.1f} ms  {module} (with its imports {cum_us / 1e3:.1f} ms)")
    if "minivmm boot guest/hello.bin" in names:
        phases = [boot_phases(COMMANDS["minivmm boot guest/hello.bin"][2:]) for _ in range(5)]
        print("\nbeyond imports, in `minivmm boot guest/hello.bin` (instrumented, median of 5 runs):")
        for key in phases[0]:
            print(f"  {statistics.median(p[key] for p in phases):7.1f} ms  {key}")
        print("  (the close waits in srcu_barrier() for the grace period the doorbell's ioeventfd registration "
              "started with call_srcu(), kernel commit 7d9a0273c459, when the run ends within it)")
    if shutil.which("minivmm") is None:
        print("\n(note: the minivmm console script is not on PATH; rows use python -m minivmm)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
