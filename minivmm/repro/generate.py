"""Write a sequence as one self-contained C program (libc and ``<linux/kvm.h>`` only) or KVM selftest.

The program is assembled from the harness parts in ``minivmm/repro/harness/`` (the clock, the pauses,
one VM per repetition, the report) and, for every step, the C its op's definition writes
(``OpSpec.c``, see :mod:`kernel_model.csource`). What the harness and ``minivmm timing`` share is
taken from where ``timing`` keeps it: the pause rule (``minivmm.timing.runner``), the loop guest
(``minivmm.timing.host_ops``), the stall threshold (``kernel_model.stats``), the KVM modules by
platform (``minivmm.host``) and the exit codes (``minivmm.cli.errors``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from importlib import resources

from kernel_model.csource import CNames, CStep
from kernel_model.ops import LOOP_ADDR
from kernel_model.platforms import Arch, get_platform
from kernel_model.sequences import Sequence, Step, format_step, step_number
from kernel_model.variants import VARIANTS
from minivmm.durations import fmt_us
from minivmm.repro.origin import Origin
from minivmm.repro.prediction import ModelSummary

#: Harness parts a step may need beyond the core, in the order they are written.
PARTS = ("memory", "loop_guest", "eventfd", "vcpu_thread", "pause", "teardown")

#: The most repetitions the program takes (as ``minivmm timing --repeat``).
MAX_REPEAT = 100_000


class ReproError(ValueError):
    """A sequence that cannot be written as a reproducer; the message, one line, says why."""


class NoCEmitter(ReproError):
    """A step whose op has no C emitter (``OpSpec.c``); the message names the step."""


def _part(name: str) -> str:
    return resources.files("minivmm.repro").joinpath(f"harness/{name}.c").read_text(encoding="utf-8")


def c_string(text: str) -> str:
    """``text`` as a C string literal (quotes, backslashes, trigraph question marks and control
    characters escaped; anything beyond ASCII as octal bytes of its UTF-8)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def comment_text(text: str) -> str:
    """``text`` made safe inside a C comment (no ``*/``, printable ASCII only)."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text).replace("*/", "* /")


def _indent(lines: list[str], depth: int) -> list[str]:
    """Each line of ``lines`` (which may hold newlines) indented by ``depth`` tabs; empty lines stay empty."""
    out = []
    for line in lines:
        for part in line.split("\n"):
            out.append("\t" * depth + part if part else "")
    return out


def step_c(i: int, step: Step, names: CNames) -> tuple[CStep, list[str]]:
    """Step ``i`` (0-based) as C statements inside ``run_steps()``: what its op writes, then the pause
    before it, the ioctl between two clock reads, and what is kept."""
    try:
        cs = step.spec.c_step(step.full_args, names)
    except LookupError as e:
        raise NoCEmitter(f"step {step_number(i)} ({step.label}): {e}") from None
    body = list(cs.setup)
    if body:
        body.append("")
    body.append(f"wait_until(last_end + {step.gap_ns});")
    body.append("t0 = now_ns();")
    if cs.timed_by is None:
        body += [f"ret = ioctl({cs.fd}, {cs.request}, {cs.arg});",
                 "t1 = now_ns();",
                 f"record(res, rep, {i}, {cs.fd}, ret, t0 - last_end, t1 - t0);"]
    else:
        body += [f"took = {cs.timed_by};", f"record(res, rep, {i}, {cs.fd}, 0, t0 - last_end, took);"]
    body += [*cs.after, "last_end = now_ns();"]
    head = f"/* {step_number(i)}. {comment_text(format_step(step))}: {comment_text(step.label)} */"
    if cs.setup:
        return cs, _indent([head, "{"], 1) + _indent(body, 2) + _indent(["}"], 1)
    return cs, _indent([head, *body], 1)


def run_steps_c(seq: Sequence, names: CNames) -> tuple[str, list[CStep]]:
    """``run_steps()``: every step of one repetition in a fresh VM; and each step's CStep."""
    csteps: list[CStep] = []
    code: list[str] = []
    for i, step in enumerate(seq.steps):
        cs, block = step_c(i, step, names)
        csteps.append(cs)
        code += ["", *block] if code else block
    clocks = ["t0"] + (["t1"] if any(cs.timed_by is None for cs in csteps) else []) \
        + (["took"] if any(cs.timed_by for cs in csteps) else [])
    lines = ["/* ---- the sequence: one repetition, in the VM new_vm() made ---- */", "",
             "static void run_steps(struct vm *vm, struct results *res, int rep)", "{",
             f"\tuint64_t last_end = now_ns(), {', '.join(clocks)};", "\tlong ret;", "", *code, "}"]
    return "\n".join(lines) + "\n", csteps


def _header(seq: Sequence, origin: Origin, model: ModelSummary, repeat: int, kselftest: bool) -> str:
    """The comment that makes the file a report on its own: what it reproduces, where it was made,
    what each kernel variant predicts for the stalled steps, how to build and run it."""
    def wrap(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(comment_text(text), 96, initial_indent=indent, subsequent_indent=indent) or [""]

    kind = "KVM selftest" if kselftest else "stand-alone reproducer"
    lines = wrap(f"A {kind} of the VM set-up sequence {seq.name!r}: its {len(seq.steps)} steps in a fresh VM "
                 f"per repetition ({repeat} by default), each repetition started at a random point in a "
                 "jiffy, each step after its gap and each ioctl timed with clock_gettime(CLOCK_MONOTONIC) "
                 "right beside the system call.")
    lines.append("")
    lines += [x for line in origin.source for x in wrap(line, "  ")]
    lines.append("")
    lines += wrap(f"Generated by minivmm {origin.minivmm_version} ({origin.command}) on Linux {origin.kernel} "
                  f"{origin.machine}, HZ={origin.hz} ({origin.hz_source}), KVM platform {origin.platform} "
                  f"({origin.platform_source}).")
    lines.append("")
    stalled = model.stalled_steps()
    if stalled:
        lines += wrap(f"What the kernel model predicts for the stalled steps at HZ={model.hz} on {model.platform}, "
                      f"p50 [p10 - p90] over {model.samples} tick phases, with the steps' gaps as written:")
        width = max(len(v) for v in model.variants) + 2
        for i in stalled:
            lines.append("")
            lines.append(f"  step {step_number(i)}, {comment_text(seq.steps[i].label)}")
            for v, q in model.quantiles[i].items():
                lines.append(f"    {v:<{width}}{fmt_us(q['p50'])} [{fmt_us(q['p10'])} - {fmt_us(q['p90'])}]")
        lines += ["", "The kernel variants:"]
        for v in model.variants:
            text = f"{v:<{width}}{VARIANTS[v].source}: {VARIANTS[v].description}"
            lines += textwrap.wrap(comment_text(text), 96, initial_indent="  ",
                                   subsequent_indent="  " + " " * width)
    else:
        lines += wrap(f"The kernel model predicts no stall (1 ms or more) in any step at HZ={model.hz} on "
                      f"{model.platform}, under any kernel variant.")
    lines.append("")
    if kselftest:
        lines += wrap("To carry it upstream: copy it to tools/testing/selftests/kvm/ and add its name to the x86 "
                      "test list of that directory's Makefile. It prints the same report as TAP diagnostics; "
                      "test 1 is the whole set-up, then one test per step where some kernel variants stall and "
                      "others do not, which fails when the step stalls (a median of 1 ms or more). Without "
                      "/dev/kvm it exits with KSFT_SKIP. Run: ./NAME [-r repetitions]")
    else:
        lines += wrap("Build: gcc -O2 -Wall -o repro repro.c (add -static to carry the binary to "
                      "another host). Run as a user who can open /dev/kvm: ./repro [-r N] [--json] [--no-jitter] "
                      "[--seed N] [--kvm PATH]. It prints one repetition in strace -T form, then "
                      "min/p10/p50/p90/max per step; --json prints the same numbers as the steps of "
                      "`minivmm timing --json`, which `minivmm compare` reads. Exit status: 0 measured, 1 a "
                      "step failed (or the report could not be written), 2 bad usage, 4 no usable /dev/kvm.")
    text = "\n".join(f" * {x}".rstrip() for x in lines)
    spdx = "// SPDX-License-Identifier: GPL-2.0-only\n" if kselftest else ""
    return f"{spdx}/*\n{text}\n */\n"


def _constants(seq: Sequence, origin: Origin, model: ModelSummary, names: CNames, repeat: int,
               needs: set[str]) -> str:
    from kernel_model.stats import STALL_NS
    from minivmm.cli.errors import ExitCode
    from minivmm.host import BACKENDS, SVM_AVIC_PARAM
    from minivmm.schemas import SCHEMA_VERSIONS
    from minivmm.timing.host_ops import LOOP_GUEST
    from minivmm.timing.runner import SLEEP_ABOVE_NS, SPIN_LAST_NS

    label_width = max(len("measured"), *(len(s.label) for s in seq.steps)) + 2
    defines = [
        ("SEQUENCE_NAME", c_string(seq.name)),
        ("N_STEPS", str(len(seq.steps))),
        ("N_VCPUS", str(max(len(names.vcpus), 1))),
        ("N_MEMORIES", str(max(names.memories, 1))),
        ("N_EVENTFDS", str(max(names.eventfds, 1))),
        ("N_VARIANTS", str(len(model.variants))),
        ("N_VARIANT_STALLS", str(sum(model.variant_stall(i) for i in range(len(seq.steps))))),
        ("LABEL_WIDTH", str(label_width)),
        ("DEFAULT_REPEAT", str(repeat)),
        ("MAX_REPEAT", str(MAX_REPEAT)),
        ("STALL_NS", f"{STALL_NS}ULL"),
        ("SLEEP_ABOVE_NS", f"{SLEEP_ABOVE_NS}ULL"),
        ("SPIN_LAST_NS", f"{SPIN_LAST_NS}ULL"),
        ("KVM_BACKENDS", ", ".join(f"{{ {c_string(m)}, {c_string(p)} }}" for m, p in BACKENDS.items())),
        ("SVM_AVIC_PARAM", c_string(SVM_AVIC_PARAM)),
        ("GENERATED_FOR_HZ", str(model.hz)),
        ("GENERATED_FOR_PLATFORM", c_string(model.platform)),
        ("GENERATED_ON_KERNEL", c_string(origin.kernel)),
        ("MINIVMM_VERSION", c_string(origin.minivmm_version)),
        ("SCHEMA_VERSION", str(SCHEMA_VERSIONS["repro"])),
        ("EXIT_STEP_FAILED", str(int(ExitCode.GUEST_FAILED))),
        ("EXIT_USAGE", str(int(ExitCode.BAD_INPUT))),
        ("EXIT_NO_KVM", str(int(ExitCode.KVM_UNAVAILABLE))),
    ]
    if needs & {"loop_guest", "vcpu_thread"}:
        defines += [("LOOP_ADDR", f"{LOOP_ADDR:#x}"),
                    ("LOOP_GUEST_BYTES", ", ".join(f"{b:#04x}" for b in LOOP_GUEST))]
    width = max(len(n) for n, _ in defines) + 1
    lines = ["/* ---- the sequence's sizes and the facts the harness shares with minivmm (generated) ---- */", ""]
    lines += [f"#define {n:<{width}}{v}" for n, v in defines]
    return "\n".join(lines) + "\n"


def _tables(seq: Sequence, csteps: list[CStep], model: ModelSummary, kselftest: bool) -> str:
    stalled = model.call_srcu_stall()
    lines = ["/* ---- the steps, as minivmm names them (generated) ---- */", "",
             "static const struct step_info steps[N_STEPS] = {"]
    for i, (step, cs) in enumerate(zip(seq.steps, csteps)):
        # The teardown is a close(): its request is "close" and it has no argument (report.c prints it so).
        call = step.spec.ioctl(step.full_args) if step.spec.ioctl is not None else None
        request, arg = (call.request, call.arg_text()) if call is not None else (cs.request, "")
        fields = [c_string(step.op), c_string(step.label), c_string(request), c_string(arg),
                  str(int(cs.issued)),
                  str(int(i == stalled)), str(int(model.variant_stall(i)))]
        lines.append(f"\t{{ {', '.join(fields)} }},")
    lines.append("};")
    if not kselftest:  # the predictions go into --json only
        lines += ["", "static const char *const variants[N_VARIANTS] = { "
                  + ", ".join(c_string(v) for v in model.variants) + " };", "",
                  "/* Per step and variant: the model's min, p10, p50, p90, max (us) at GENERATED_FOR_HZ. */",
                  "static const double predicted_us[N_STEPS][N_VARIANTS][5] = {"]
        for q in model.quantiles:
            cells = ", ".join("{ " + ", ".join(f"{x[k]:.3f}" for k in ("min", "p10", "p50", "p90", "max")) + " }"
                              for x in q.values())
            lines.append(f"\t{{ {cells} }},")
        lines.append("};")
    return "\n".join(lines) + "\n"


class NothingToTime(ReproError):
    """A sequence none of whose steps after create_vm issues an ioctl (the message names the sequence)."""


class CProgram:
    """A sequence written as C for ``platform``: every step's CStep and ``run_steps()``, ready to be put
    in a file. ReproError says why it cannot be: a step whose op has no C emitter (NoCEmitter), no ioctl
    to time after KVM_CREATE_VM (NothingToTime), a ``run`` where the built-in guest cannot run."""

    def __init__(self, seq: Sequence, cap_name: Callable[[int], str | None] | None = None,
                 platform: str = "vmx") -> None:
        self.seq = seq
        self.names = CNames(cap_name)
        self.run_steps, self.csteps = run_steps_c(seq, self.names)
        if not any(cs.issued for cs in self.csteps[1:]):
            raise NothingToTime(f"sequence {seq.name}: nothing to time: no step after create_vm issues an ioctl")
        self.needs = {n for cs in self.csteps for n in cs.needs}
        guest = next((i for i, cs in enumerate(self.csteps) if "vcpu_thread" in cs.needs), None)
        if guest is not None and get_platform(platform).arch is not Arch.X86:
            raise ReproError(f"sequence {seq.name}: step {step_number(guest)} ({seq.steps[guest].label}) needs a "
                             f"guest, and the built-in one is x86 real-mode code: there is none for {platform}")

    def text(self, origin: Origin, model: ModelSummary, repeat: int = 100, kselftest: bool = False) -> str:
        """The whole C file: the header, the harness parts the steps need, the steps, the report."""
        if not 1 <= repeat <= MAX_REPEAT:
            raise ValueError(f"repeat must be 1 to {MAX_REPEAT}")
        seq, mode = self.seq, "_kselftest" if kselftest else ""
        parts = [_header(seq, origin, model, repeat, kselftest), _part(f"includes{mode}"),
                 _constants(seq, origin, model, self.names, repeat, self.needs), _part(f"output{mode}"),
                 _part("core"), _tables(seq, self.csteps, model, kselftest),
                 *(_part(p) for p in PARTS if p in self.needs), _part("host"), self.run_steps, _part("report")]
        if not kselftest:
            parts.append(_part("json"))
        parts.append(_part(f"main{mode}"))
        return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def kvm_cap_name(number: int) -> str | None:
    """The ``KVM_CAP_*`` name this host's ``<linux/kvm.h>`` gives capability ``number``, if any."""
    from minivmm.kvm.uapi import lib
    names = [n for n in dir(lib) if n.startswith("KVM_CAP_") and getattr(lib, n) == number]
    return names[0] if len(names) == 1 else None
