#!/usr/bin/env python3
"""Soak: run the shadow's hostile cases over and over, each for a while, in fresh VMs, and report.

    python3 scripts/soak.py [--minutes 10] [--cases regrace,liar,mmiowalk,regloop,regmulti]
                            [--rss-bound-mib 5] [--ftrace]

The cases (the shadow's hostile reproducers, and regmulti):

    regrace   guest/regrace.bin, 3 vCPUs: registrations race with reports (a false violation, exit 3,
              is what the old shadow made of it); must halt clean
    liar      a guest that reports 5 writes it never made: must end as a guest error (exit 5), never
              as a kernel violation
    mmiowalk  guest/mmiowalk.bin: reads ever-new MMIO addresses; must halt clean with flat memory
    regloop   guest/regloop.bin: registers and unregisters doorbells in a loop; likewise
    regmulti  guest/regmulti.bin, 3 vCPUs: one vCPU registers while two hammer the doorbells

Each case runs for --minutes, one run after another, each run in a fresh Machine in this process, with
resident memory sampled every 50 ms on another thread. Per case it counts runs, tracebacks (an
exception out of a run, or a vCPU loop that ended in an error), false violations (the kernel "broke a
rule": with a correct kernel, always the shadow's fault), other wrong outcomes, and the growth of
file descriptors and of peak RSS over the first run's (after that warm-up, a run must not leave
anything behind nor reach higher). Prints one line per run and a table at the end.

Exit status: 0 when every case was clean and within the bound, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from minivmm.devices.console import Console
from minivmm.vmm.boot import Mode
from minivmm.vmm.machine import Machine, MachineConfig
from minivmm.vmm.outcome import RunOutcome
from minivmm.vmm.report import RunReport

GUEST = pathlib.Path(__file__).resolve().parent.parent / "guest"
#: movl $0x03000005, 0xd0002000 ("I wrote doorbell slot 0 five times"); hlt   (protected mode)
LIAR = bytes.fromhex("c705002000d005000003f4")


@dataclass(frozen=True)
class Case:
    """One soak case: what to boot and what a correct run looks like."""

    name: str
    image: Callable[[], bytes]
    config: dict[str, object]
    outcome: RunOutcome
    console: str | None

    def check(self, report: RunReport) -> str | None:
        """None if the run ended as it must, else what was wrong."""
        if report.outcome is not self.outcome:
            return f"outcome {report.outcome.value}, expected {self.outcome.value}"
        if self.console is not None and report.console != self.console:
            return f"console {report.console!r}, expected {self.console!r}"
        return None


def guest(name: str) -> Callable[[], bytes]:
    """A reader of guest/NAME.bin."""
    return lambda: (GUEST / f"{name}.bin").read_bytes()


CASES = {c.name: c for c in (
    Case("regrace", guest("regrace"), {"mode": Mode.PROTECTED, "vcpus": 3, "guest_iterations": 600},
         RunOutcome.HALTED, "regrace: ok\n" * 3),
    Case("liar", lambda: LIAR, {"mode": Mode.PROTECTED}, RunOutcome.GUEST_ERROR, ""),
    Case("mmiowalk", guest("mmiowalk"), {"mode": Mode.LONG, "guest_iterations": 200_000},
         RunOutcome.HALTED, "mmiowalk: ok\n"),
    Case("regloop", guest("regloop"), {"mode": Mode.PROTECTED, "guest_iterations": 8000},
         RunOutcome.HALTED, "regloop: ok\n"),
    Case("regmulti", guest("regmulti"), {"mode": Mode.PROTECTED, "vcpus": 3, "guest_iterations": 1000},
         RunOutcome.HALTED, "regmulti: ok\n"),
)}


@dataclass
class Tally:
    """What one case did over the soak."""

    runs: int = 0
    tracebacks: int = 0
    false_violations: int = 0
    wrong_outcomes: int = 0
    exits_checked: int = 0
    first_problem: str | None = None
    rss_first_kib: int | None = None
    rss_peak_kib: int = 0
    fds_first: int | None = None
    fds_max: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, what: str) -> None:
        """Remember a failure (the first few in full)."""
        if len(self.problems) < 5:
            self.problems.append(what)

    @property
    def rss_growth_kib(self) -> int:
        """How far the peak RSS of later runs rose above the first run's."""
        return self.rss_peak_kib - (self.rss_first_kib or self.rss_peak_kib)

    @property
    def clean(self) -> bool:
        """No traceback, false violation or wrong outcome."""
        return not (self.tracebacks or self.false_violations or self.wrong_outcomes)


def rss_kib() -> int:
    """This process's resident set, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def run_once(case: Case, ftrace: bool) -> tuple[RunReport | None, str | None, int]:
    """Boot the case once; return (report or None, the traceback if one escaped, the peak RSS in KiB)."""
    peak = [rss_kib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cfg = MachineConfig(timeout=120, ftrace=ftrace, **case.config)  # type: ignore[arg-type]
        with Machine(cfg, case.image(), Console()) as machine:
            report = machine.run()
        return report, None, max(peak[0], rss_kib())
    except Exception:
        return None, traceback.format_exc(), max(peak[0], rss_kib())
    finally:
        done.set()
        sampler.join()


def soak_case(case: Case, seconds: float, ftrace: bool) -> Tally:
    """Run one case again and again for ``seconds``."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or tally.runs == 0:
        report, tb, peak = run_once(case, ftrace)
        tally.runs += 1
        fds = len(os.listdir("/proc/self/fd"))
        if tally.rss_first_kib is None:
            tally.rss_first_kib, tally.fds_first = peak, fds
        tally.rss_peak_kib = max(tally.rss_peak_kib, peak)
        tally.fds_max = max(tally.fds_max, fds)
        status = "ok"
        if tb is not None:
            tally.tracebacks += 1
            tally.problem(f"run {tally.runs}: traceback:\n{tb}")
            status = "TRACEBACK"
        else:
            assert report is not None
            errors = [v for v in report.vcpus if v.state == "error"]
            sh = report.shadow
            if errors:
                tally.tracebacks += len(errors)
                tally.problem(f"run {tally.runs}: vcpu{errors[0].index} error: {errors[0].error}")
                status = "VCPU ERROR"
            if sh is not None:
                tally.exits_checked += sh.exits_checked
                if sh.violations:
                    tally.false_violations += sh.violations
                    tally.problem(f"run {tally.runs}: {sh.violations} violation(s): "
                                  + "; ".join(f"{v.rule.value}: {v.message}" for v in sh.first_violations))
                    status = "FALSE VIOLATION"
            wrong = case.check(report)
            if wrong is not None:
                tally.wrong_outcomes += 1
                tally.problem(f"run {tally.runs}: {wrong}")
                status = status if status != "ok" else "WRONG OUTCOME"
        print(f"{case.name:9} run {tally.runs:4}  {status:15} peak rss {peak / 1024:6.1f} MiB  fds {fds}",
              flush=True)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="per case (default 10)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--rss-bound-mib", type=float, default=5.0,
                        help="largest allowed growth of a run's peak RSS over the first run's (default 5)")
    parser.add_argument("--ftrace", action="store_true", help="cross-check every run with the kvm tracepoints")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        parser.error(f"unknown case(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(CASES)}")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    tallies = {name: soak_case(CASES[name], args.minutes * 60, args.ftrace) for name in names}
    ok = True
    print(f"\n{'case':9} {'runs':>5} {'tracebacks':>10} {'false viol.':>11} {'wrong':>6} {'exits checked':>14} "
          f"{'RSS growth':>11} {'fd growth':>9}")
    for name, t in tallies.items():
        grew = t.rss_growth_kib > args.rss_bound_mib * 1024 or t.fds_max != t.fds_first
        ok = ok and t.clean and not grew
        print(f"{name:9} {t.runs:5} {t.tracebacks:10} {t.false_violations:11} {t.wrong_outcomes:6} "
              f"{t.exits_checked:14} {t.rss_growth_kib / 1024:8.2f} MiB {t.fds_max - (t.fds_first or 0):9}"
              + ("" if t.clean and not grew else "  FAILED"))
        for p in t.problems:
            print(f"    {p}", file=sys.stderr)
    print("soak clean" if ok else "soak FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
