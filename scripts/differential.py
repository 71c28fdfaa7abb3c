#!/usr/bin/env python3
"""Differential harness: random VM set-up sequences, run on this host and in the kernel model, each
grace-period step compared mode by mode (kernel_model.differential; the host side is
minivmm.timing.differential).

Each case is a random sequence (``--seed`` makes them reproducible), run ``--repeat`` times on the host
with ``minivmm timing``'s runner (jitter on), and ``--per-rep`` times per repetition in the model at the
host's HZ and platform under ``call_srcu`` (the host's kernel), each model run paired with one
repetition: where tracefs shows the CPUs' ticks, it replays the repetition's step starts at its tick
phase (so each registration arms its timer for the tick the host's did), and with a profile ticks the
model's CPUs as the case's own trace shows: they tick and stop their ticks where the host's did, and
the do_timer duty follows the kernel's rule from there (drawn with the profile's share only where the
trace shows no tick stop to follow it from), and its waiters, woken, wait for their CPU as long as the
host's caller did in the same step (sched_wakeup to sched_switch; the comparison with them drawn from
the profile instead is reported too); otherwise it takes the repetition's gaps and the
durations of the steps that wait for no grace period, at a random phase. A step agrees when every
tick mode holds the same share of runs on both sides (up to sampling noise) and, in each mode both
sides hold ten runs of, the share of host runs below the model's p10, p50 and
p90 is 10%, 50% and 90% up to the same noise (each quantile free to move by 0.2 ms). The host's odd
repetitions against its even ones, by the same rule, say how well the host agrees with itself.

With ``--vmm "CMD"`` (or ``--qemu``, a QEMU q35 machine with two vCPUs) the case is a real VMM's set-up
instead: CMD is started ``--repeat`` times under ``minivmm trace``'s tracer until every vCPU has entered
KVM_RUN, and the set-up every run shares (up to where the runs' threads race) is compared the same way,
each model run replaying one traced run.

Usage: python scripts/differential.py [--cases 20] [--repeat 100] [--seed 1] [--interleave]
       [--vmm "CMD" | --qemu] [--profile FILE.json] [--no-trace] [--json OUT.json] [--show]
Timing figures depend on the host's load: the load average is printed with the results.
Exit codes: 0 done; 2 bad arguments (a --profile that cannot be used, a --vmm that made no VM, /dev/kvm
not a KVM device); 4 /dev/kvm missing or not accessible; 6 --json could not be written; 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP), each with one line.
"""

from __future__ import annotations

import sys

try:  # every import under the handler: a Ctrl-C while they run (start-up) ends in the script's line
    import argparse
    import json
    import os
    import random
    import shlex
    import shutil
    import signal
    from typing import Any

    from kernel_model.costs import Costs
    from kernel_model.differential import StepComparison, generate, summarize
    from kernel_model.platforms import PLATFORMS
    from kernel_model.profile import ProfileError, load_profile
    from kernel_model.sequences import step_name
    from minivmm.cli.errors import ExitCode, kvm_unavailable
    from minivmm.files import FileRefused, Output, WriteFailed
    from minivmm.host import modelled_kernel, read_host_info, this_host
    from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
    from minivmm.progress import ProgressBar
    from minivmm.timing.calibrate import CalibrationError
    from minivmm.timing.differential import REPLAYED, Interrupted, ProgramError, run_case, run_program
except KeyboardInterrupt:  # Ctrl-C while the imports run: nothing is set up yet, so nothing to undo
    if __name__ != "__main__":
        raise
    print("differential.py: interrupted", file=sys.stderr)
    sys.exit(130)

#: --qemu: a q35 machine with two vCPUs and no devices, as QEMU sets one up.
QEMU = "qemu-system-x86_64 -enable-kvm -machine q35 -m 128 -smp 2 -nodefaults -nographic -display none"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--per-rep", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hz", type=int, default=None, help="default: the host's CONFIG_HZ (as minivmm timing)")
    ap.add_argument("--platform", default=None, choices=PLATFORMS,
                    help="default: the host's loaded KVM module's (as minivmm timing)")
    ap.add_argument("--profile", default=None, help="a host profile (minivmm timing --calibrate)")
    ap.add_argument("--interleave", action="store_true",
                    help="calibrate between the repetitions of each case (one calibration run after each "
                         "repetition, the CPUs' ticks traced where tracefs allows): the profile is taken "
                         "under the same load as the case")
    ap.add_argument("--no-trace", action="store_true",
                    help="do not trace the ticks (the model runs then draw their tick phases, and with "
                         "--interleave the profile has no tick environment)")
    ap.add_argument("--vmm", default=None, metavar="CMD",
                    help="compare a real VMM's set-up instead of random cases: CMD (one string, split as a shell "
                         "would) is traced --repeat times until every vCPU it creates has entered KVM_RUN")
    ap.add_argument("--qemu", action="store_true", help=f"--vmm \"{QEMU}\"")
    ap.add_argument("--json", default=None, metavar="OUT.json")
    ap.add_argument("--show", action="store_true", help="print each case's sequence")
    return ap


def vmm_argv(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str] | None:
    """--vmm's (or --qemu's) command, its program found on PATH; None for random cases. A bad one ends the
    script (ap.error)."""
    if args.qemu:
        if args.vmm is not None:
            ap.error("--qemu is a --vmm: give one of them")
        args.vmm = QEMU
    if args.vmm is None:
        return None
    if args.interleave:
        ap.error("--interleave calibrates between a case's repetitions: it does not go with --vmm")
    try:
        argv = shlex.split(args.vmm)
    except ValueError as e:
        ap.error(f"--vmm: {e}")
    path = shutil.which(argv[0]) if argv else None
    if path is None:
        ap.error(f"--vmm: {argv[0] if argv else 'an empty command'}: no such program")
    return [path, *argv[1:]]


def require_kvm(ap: argparse.ArgumentParser) -> None:
    """End the script (one line; minivmm's exit codes: 4 when /dev/kvm is missing or not accessible)
    unless /dev/kvm can be used: checked before anything runs, as a VMM traced without it would only
    say that it made no VM."""
    from minivmm.kvm.errors import KvmUnavailable
    from minivmm.kvm.system import Kvm
    try:
        Kvm(DEFAULT_DEVICE_PATH).close()
    except KvmUnavailable as e:
        refused = kvm_unavailable(e)
        ap.exit(int(refused.code), f"differential.py: cannot run here: {refused}\n")


def profile_costs(ap: argparse.ArgumentParser, path: str | None, hz: int) -> Costs | None:
    """The model's costs with the host profile at ``path`` (None: no profile); a profile that cannot be
    used (missing, not a regular file, not a profile, a value out of range) ends the script in one line."""
    if path is None:
        return None
    try:
        return load_profile(path).costs(hz=hz)
    except ProfileError as e:
        ap.error(str(e))


def print_verdict(s: dict[str, Any], pairings: list[str], own_ticks: bool) -> int:
    """Say how the model runs were paired with the host's and how many steps agree (``s``: summarize's);
    returns how many cases replayed their host timelines."""
    replayed = sum(p == REPLAYED for p in pairings)
    why_not = "; ".join(sorted(set(p for p in pairings if p != REPLAYED)))
    ticks_traced = ("; with a profile, the CPUs' ticks and tick stops as traced, the do_timer duty by the kernel's "
                    "rule (the profile's share where no tick stop shows it)")
    print("model runs: " + ("each replays its host repetition's step starts at its tick phase (tick grid traced)"
                            + (ticks_traced if own_ticks else "")
                            if replayed == len(pairings) else
                            f"the repetitions' gaps and durations at random tick phases in "
                            f"{len(pairings) - replayed} of {len(pairings)} cases ({why_not})"))
    print(f"{s['within']}/{s['steps']} steps agree mode by mode (shares of runs per tick mode, and p10/p50/p90 "
          f"within each): {s['share']:.1%}")
    if s["wakeups_replayed_steps"]:
        print(f"the model's waiters took the host caller's traced wake-up latencies (sched_wakeup to "
              f"sched_switch) in {s['wakeups_replayed_steps']} of these steps; drawing them from the profile "
              f"instead, as a prediction does: {s['drawn_wakeups_within']}/{s['wakeups_replayed_steps']}")
    if s["fixed_cost_within"] is not None:
        print(f"the model without a profile, same rule: {s['fixed_cost_within']}/{s['steps']}")
    print(f"the host's odd repetitions against its even ones, same rule: {s['host_self_within']}/{s['steps']} "
          f"({s['host_self_share']:.1%})")
    return replayed


def main() -> int:
    """Generate, run, compare, report."""
    ap = parser()
    args = ap.parse_args()
    if args.cases < 1 or args.repeat < 2 or args.per_rep < 1:
        ap.error("--cases and --per-rep must be at least 1, --repeat at least 2")
    argv = vmm_argv(ap, args)
    require_kvm(ap)
    try:  # refused now, not at the end
        out = Output(args.json, "--json", suffix=".json") if args.json else None
    except FileRefused as e:
        ap.error(str(e))
    # The host's HZ and platform by minivmm timing's rule: the cases run on this host's KVM, so a model at
    # any other kernel than the one asked for or found would compare nothing.
    kernel = modelled_kernel(args.hz, args.platform, this_host(read_host_info()))
    if kernel.hz is None or kernel.platform is None:
        ap.error("cannot read this host's CONFIG_HZ or tell its KVM platform: pass --hz and --platform")
    hz, platform = kernel.hz, kernel.platform
    costs = profile_costs(ap, args.profile, hz)
    load0 = os.getloadavg()[0]
    rng = random.Random(args.seed)
    results: list[StepComparison] = []
    ticks_seen: list[str] = []
    pairings: list[str] = []
    shared = ""
    for c in range(args.cases if argv is None else 1):
        name = f"case{c:02d}" if argv is None else os.path.basename(argv[0])
        try:
            if argv is not None:
                with ProgressBar(name, args.repeat) as bar:
                    traced = run_program(name, argv, args.repeat, hz, platform, costs, args.per_rep, args.seed,
                                         trace_ticks=not args.no_trace, on_progress=bar.update)
                res, profile, pairing = traced.case
                shared = (f"{shlex.join(argv)}: the {traced.steps_shared} steps every run's set-up shares "
                          f"(of up to {traced.steps_longest})")
                if args.show:
                    print(shared)
            else:
                text = generate(rng, name)
                if args.show:
                    print(text)
                with ProgressBar(name, args.repeat) as bar:
                    res, profile, pairing = run_case(name, text, args.repeat, hz, platform, costs, args.per_rep,
                                                     args.seed + c, interleave=args.interleave,
                                                     trace_ticks=not args.no_trace, on_progress=bar.update)
        except CalibrationError as e:
            print(f"{name}: skipped, its calibration failed: {e}", flush=True)
            continue
        except ProgramError as e:
            print(f"differential.py: --vmm: {e}", file=sys.stderr)
            return 2
        if profile is not None:
            ticks_seen.append(profile.ticks_measured_with or "not measured")
        pairings.append(pairing)
        results += res
        print(f"{name}: {sum(r.ok for r in res)}/{len(res)} grace-period steps agree mode by mode "
              f"(host with itself: {sum(r.host_vs_host.ok for r in res)}/{len(res)})", flush=True)
        for r in res:
            print(f"  step {step_name(r.step, r.label)}: model {r.model_vs_host.describe()} | host odd/even "
                  f"{r.host_vs_host.describe()}", flush=True)
    s = summarize(results)
    how = ("calibrated between the repetitions"
           + (f" (ticks: {', '.join(sorted(set(ticks_seen)))})" if ticks_seen else "")
           if args.interleave else args.profile or "none (fixed wake-up cost, a quiet host's ticks)")
    what = shared or f"{args.cases} cases"
    print(f"\nHZ={hz} ({kernel.hz_source}), {platform} ({kernel.platform_source}), {what} x "
          f"{args.repeat} repetitions, profile: {how}; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    replayed = print_verdict(s, pairings, own_ticks=costs is not None or args.interleave)
    if out is not None:
        try:
            out.write(json.dumps({**s, **kernel._asdict(), "load": load0,
                                  "cases": args.cases if argv is None else 0, "vmm": shlex.join(argv) if argv else None,
                                  "replayed_timelines": replayed, "pairing": pairings,
                                  "repeat": args.repeat, "all": [r.to_json() for r in results]}, indent=1) + "\n")
        except WriteFailed as e:  # a full disk: one line, as minivmm's own commands say it
            print(f"differential.py: {e}", file=sys.stderr)
            return int(ExitCode.WRITE_FAILED)
    return 0


#: What the one line says for each signal that ends a run.
ENDED_BY = {"SIGINT": "interrupted", "SIGTERM": "terminated", "SIGHUP": "hung up"}


#: The signals _interrupt_on took, in order (the measurement loop re-raises them as its own
#: KeyboardInterrupt, which does not say which).
_received: list[str] = []


def _interrupt_on(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does (Python's default would kill the process where it
    stands, leaving the tick tracer's tracefs instance behind and no line said)."""
    _received.append(signal.Signals(signum).name)
    raise Interrupted(_received[-1])


if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, _interrupt_on)
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:  # the tick tracer's tracefs instance is gone by now (its __exit__ ran)
        for _name in ENDED_BY:  # ending already: a second Ctrl-C (or any of them) must not cut the line short
            signal.signal(signal.Signals[_name], signal.SIG_IGN)
        ended = e if isinstance(e, Interrupted) else Interrupted(_received[0] if _received else "SIGINT")
        print(f"differential.py: {ENDED_BY[ended.signal_name]}", file=sys.stderr)
        sys.exit(ended.exit_code)
