"""``minivmm repro``: the C reproducer of a set-up sequence (and its KVM selftest form) builds, runs as
``minivmm timing`` does, and bad input is one line with exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess

import pytest
from conftest import ROOT, quiet_host, run_cli
from jsonschemas import validate
from test_ops import QEMU_LIKE

from kernel_model.ops import OPS
from kernel_model.sequences import SEQUENCES, parse_sequence
from kernel_model.stats import is_stall, percentile, tick_modes, tick_ns
from minivmm.cli.app import main
from minivmm.repro.generate import CProgram, NoCEmitter
from minivmm.timing.pressure import LoadWindow

#: A real set-up: `minivmm trace --until first-run --save-sequence` of QEMU 7.2 (q35, 128 MiB, 2 vCPUs).
QEMU_TRACE = ROOT / "tests" / "data" / "qemu-q35.seq"
#: Every op at least once (as test_ops issues them on the host).
ALL_OPS = QEMU_LIKE + "enable_cap cap=129\nioeventfd_deassign addr=0xcf8 len=4 pio\n"
SOURCES = [*SEQUENCES, "qemu-trace", "all-ops"]


def sequence_arg(name: str, tmp_path: pathlib.Path) -> str:
    """What ``--sequence`` is given for a source of SOURCES."""
    if name == "qemu-trace":
        return str(QEMU_TRACE)
    if name == "all-ops":
        path = tmp_path / "all-ops.seq"
        path.write_text(ALL_OPS)
        return str(path)
    return name


def write_repro(tmp_path: pathlib.Path, name: str, *extra: str, model_host: bool = False) -> pathlib.Path:
    """``minivmm repro`` of source ``name`` into tmp_path; the model at HZ=250 on vmx unless ``model_host``."""
    out = tmp_path / f"{re.sub(r'[^a-z0-9]+', '-', name)}.c"
    fixed = [] if model_host else ["--hz", "250", "--platform", "vmx"]
    code = main(["repro", "--sequence", sequence_arg(name, tmp_path), "-n", "20", *fixed, "-o", str(out), *extra])
    assert code == 0
    return out


def gcc(src: pathlib.Path, out: pathlib.Path, *flags: str) -> None:
    proc = subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *flags, "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- every op writes its C ----------------------------------------------------------------------------

def test_every_op_has_a_c_emitter():
    assert [name for name, op in OPS.items() if op.c is None and op.close is None] == []


def test_a_step_whose_op_has_no_c_emitter_is_refused_naming_the_step(monkeypatch):
    monkeypatch.setitem(OPS, "irqchip", dataclasses.replace(OPS["irqchip"], c=None))
    with pytest.raises(NoCEmitter, match=r"step 2 \(KVM_CREATE_IRQCHIP\).*'irqchip'"):
        CProgram(parse_sequence("create_vm\nirqchip\nvcpu id=0", "f"))


def test_the_c_names_the_uapi_and_types_no_request_number():
    """Requests, flags and structs by their <linux/kvm.h> names; capabilities by name where the header has one."""
    seq = parse_sequence(ALL_OPS + "enable_cap cap=121 arg0=24\n", "all")
    text = CProgram(seq, lambda n: "KVM_CAP_SPLIT_IRQCHIP" if n == 121 else None).run_steps
    for name in ("KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_MEM_READONLY", "KVM_MEM_LOG_DIRTY_PAGES",
                 "KVM_IOEVENTFD_FLAG_PIO", "KVM_IOEVENTFD_FLAG_DEASSIGN", "KVM_CREATE_PIT2", "KVM_PIT_SPEAKER_DUMMY",
                 "KVM_IRQFD_FLAG_DEASSIGN", "KVM_IRQ_ROUTING_MSI", "KVM_REGISTER_COALESCED_MMIO",
                 "KVM_SET_TSS_ADDR", "struct kvm_ioeventfd", "struct kvm_enable_cap", "first_run(vm, 0)",
                 ".cap = KVM_CAP_SPLIT_IRQCHIP", ".cap = 129"):
        assert name in text, name
    assert not re.search(r"ioctl\([^,]+, 0x", text)
    # The un-modelled ioctl is not issued: it is a pause of its traced cost.
    assert "pause_ns(20000)" in text and "KVM_SET_IDENTITY_MAP_ADDR," not in text


def test_a_deassign_names_the_eventfd_its_assign_was_given_and_a_move_keeps_the_slots_memory():
    seq = parse_sequence("create_vm\nmemslot slot=0 base=0x100000 size=1M\nioeventfd addr=0x10 len=2 pio\n"
                         "ioeventfd addr=0x20 len=2 pio\nioeventfd_deassign addr=0x10 len=2 pio\n"
                         "memslot slot=0 base=0 size=1M\nvcpu id=0\nrun vcpu=0", "f")
    program = CProgram(seq)
    parts = re.split(r"\n\t/\* (\d+)\. ", program.run_steps)
    step = {int(n): body for n, body in zip(parts[1::2], parts[2::2])}
    assert ".fd = vm->efd[0]," in step[5] and "KVM_IOEVENTFD_FLAG_DEASSIGN" in step[5]
    assert "map_memory(vm, 0, 0x100000)" in step[2] and "vm->mem[0]" in step[6] and "map_memory" not in step[6]
    # The moved slot now covers the loop guest's address: it is loaded there, as the host step does.
    assert "load_loop_guest((char *)vm->mem[0] + LOOP_ADDR);" in step[6]
    assert "prepare_vcpu(vm, 0, 10000);" in step[8] and "took = first_run(vm, 0);" in step[8]
    assert program.names.memories == 1 and program.names.eventfds == 2


# --- it builds, plain and static, and as a selftest against stub headers --------------------------------

@pytest.mark.parametrize("name", SOURCES)
def test_the_program_builds_with_warnings_as_errors_and_static(tmp_path, name):
    src = write_repro(tmp_path, name)
    text = src.read_text()
    assert text.startswith("/*\n * A stand-alone reproducer") and "#include <linux/kvm.h>" in text
    assert not re.search(r'#include\s+"', text)  # libc and <linux/kvm.h> only
    gcc(src, tmp_path / "repro")
    gcc(src, tmp_path / "repro-static", "-static")


#: The parts of the KVM selftest headers the selftest form uses, with their upstream signatures
#: (tools/testing/selftests/kselftest.h, kvm/include/test_util.h, kvm/include/kvm_util.h); no kernel
#: tree is needed to check that the generated test is well-formed C against them.
STUB_HEADERS = {
    "kselftest.h": r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#define KSFT_PASS 0
#define KSFT_FAIL 1
#define KSFT_SKIP 4
static unsigned int ksft_plan, ksft_pass, ksft_fail, ksft_n;
static inline void ksft_print_header(void) { printf("TAP version 13\n"); }
static inline void ksft_set_plan(unsigned int plan) { ksft_plan = plan; printf("1..%u\n", plan); }
static inline __attribute__((format(printf, 1, 2))) void ksft_print_msg(const char *msg, ...)
{ va_list ap; va_start(ap, msg); printf("# "); vprintf(msg, ap); va_end(ap); }
static inline __attribute__((format(printf, 1, 2))) void ksft_test_result_pass(const char *msg, ...)
{ va_list ap; va_start(ap, msg); ksft_pass++; printf("ok %u ", ++ksft_n); vprintf(msg, ap); va_end(ap); }
static inline __attribute__((format(printf, 1, 2))) void ksft_test_result_fail(const char *msg, ...)
{ va_list ap; va_start(ap, msg); ksft_fail++; printf("not ok %u ", ++ksft_n); vprintf(msg, ap); va_end(ap); }
#define ksft_test_result(condition, fmt, ...) do { \
	if (!!(condition)) ksft_test_result_pass(fmt, ##__VA_ARGS__); \
	else ksft_test_result_fail(fmt, ##__VA_ARGS__); } while (0)
static inline __attribute__((noreturn)) void ksft_exit_skip(const char *msg, ...)
{ printf("ok # SKIP %s", msg); exit(KSFT_SKIP); }
#define ksft_finished() exit(ksft_plan == ksft_pass && !ksft_fail ? KSFT_PASS : KSFT_FAIL)
""",
    "test_util.h": r"""
#include <stdbool.h>
#include <stdlib.h>
#include "kselftest.h"
#define TEST_ASSERT(e, fmt, ...) do { \
	if (!(e)) { ksft_print_msg(fmt "\n", ##__VA_ARGS__); exit(KSFT_FAIL); } } while (0)
#define TEST_FAIL(fmt, ...) do { TEST_ASSERT(false, fmt, ##__VA_ARGS__); __builtin_unreachable(); } while (0)
static inline int atoi_positive(const char *name, const char *num_str)
{ int n = atoi(num_str); TEST_ASSERT(n > 0, "%s must be positive", name); return n; }
""",
    "kvm_util.h": r"""
#include <fcntl.h>
#include <linux/kvm.h>
#include "test_util.h"
static inline int open_kvm_dev_path_or_exit(void)
{ int fd = open("/dev/kvm", O_RDWR); if (fd < 0) ksft_exit_skip("/dev/kvm not available\n"); return fd; }
""",
}


def write_stub_headers(directory: pathlib.Path) -> None:
    for name, text in STUB_HEADERS.items():
        (directory / name).write_text(f"#pragma once\n{text}")


@pytest.mark.parametrize("name", SOURCES)
def test_the_kselftest_is_well_formed_c_against_the_selftest_headers_stubbed(tmp_path, name):
    src = write_repro(tmp_path, name, "--kselftest")
    text = src.read_text()
    assert text.startswith("// SPDX-License-Identifier: GPL-2.0-only\n")
    assert '#include "kvm_util.h"' in text and "ksft_finished();" in text
    write_stub_headers(tmp_path)
    gcc(src, tmp_path / "selftest", f"-I{tmp_path}")


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minivmm: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("text,fragment", [
    ("create_vm\nkeep_vm\n", "nothing to time"),  # without keep_vm, the teardown's close is timed
    ("create_vm\nioctl name=KVM_CHECK_EXTENSION cost=1us\nkeep_vm\n", "nothing to time"),
    ("create_vm\nvcpu id=0\nirqchip\n", "refused by the kernel"),
    ("create_vm\nbogus\n", "unknown step 'bogus'"),
])
def test_a_sequence_that_cannot_be_reproduced_is_one_line_and_exit_2(tmp_path, capsys, text, fragment):
    path = tmp_path / "s.seq"
    path.write_text(text)
    out = tmp_path / "r.c"
    assert main(["repro", "-s", str(path), "--hz", "250", "--platform", "pvm", "-o", str(out)]) == 2
    assert fragment in one_line_error(capsys)
    assert not out.exists()


def test_an_unknown_sequence_and_a_run_without_a_guest_are_one_line(tmp_path, capsys):
    assert main(["repro", "-s", "no-such-sequence", "--hz", "250", "--platform", "pvm"]) == 2
    assert "no-such-sequence" in one_line_error(capsys)
    path = tmp_path / "run.seq"
    path.write_text("create_vm\nmemslot slot=0 base=0 size=1M\nvcpu id=0\nrun vcpu=0\n")
    assert main(["repro", "-s", str(path), "--hz", "250", "--platform", "arm64"]) == 2
    assert "step 4 (KVM_RUN, vcpu 0 (first entry)) needs a guest" in one_line_error(capsys)


def test_an_output_that_must_not_or_cannot_be_written_is_refused_and_nothing_is_written(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.c")
    (tmp_path / "dir.c").mkdir()
    (tmp_path / "target.c").write_text("mine\n")
    (tmp_path / "link.c").symlink_to(tmp_path / "target.c")
    before = sorted(os.listdir(tmp_path))
    for out, fragment in (("fifo.c", "not a regular file"), ("dir.c", "is a directory"),
                          ("link.c", "symbolic link"), ("repro.txt", "must end in .c"),
                          ("missing/repro.c", "does not exist")):
        assert main(["repro", "-s", "registrations-first", "--hz", "250", "--platform", "pvm", "-o",
                     str(tmp_path / out)]) == 2
        assert fragment in one_line_error(capsys), out
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "target.c").read_text() == "mine\n"


def test_the_header_says_what_it_reproduces_where_and_what_each_variant_predicts(tmp_path):
    text = write_repro(tmp_path, "qemu-trace").read_text()
    header = text.split("*/", 1)[0]
    assert "the KVM set-up of: qemu-system-x86_64 -enable-kvm -machine q35" in header
    assert f"Linux {os.uname().release}" in header and "HZ=250 (--hz)" in header
    for variant in ("sync", "call_srcu", "created_vcpus", "call_srcu_expedited"):
        cell = r"\d+\.\d+ [mu]s"
        assert re.search(rf"^ \*     {variant} +{cell} \[{cell} - {cell}\]$", header, re.M), variant
    # The QEMU set-up's read-only BIOS memslot waits for the coalesced-MMIO zone's grace period.
    assert re.search(r"^ \*   step \d+, KVM_SET_USER_MEMORY_REGION, slot 1$", header, re.M)


def test_the_header_names_the_host_a_sequence_file_was_recorded_on(tmp_path, capsys):
    path = tmp_path / "t.seq"
    path.write_text("# the KVM set-up of: vmm --fast\nhost hz=100 platform=vmx\ncreate_vm\nirqchip\n")
    assert main(["repro", "-s", str(path), "--hz", "250", "--platform", "pvm"]) == 0
    header = capsys.readouterr().out.split("*/", 1)[0]
    assert " *   the KVM set-up of: vmm --fast\n *   (recorded on a host at HZ=100, KVM platform vmx)\n" in header


def test_the_generated_program_says_so_without_a_kvm_device(tmp_path):
    """A missing device is "cannot run here" (4, as a KVM selftest's skip); a file that is not a KVM
    device is bad usage (2)."""
    exe = tmp_path / "repro"
    gcc(write_repro(tmp_path, "registrations-first"), exe)
    proc = subprocess.run([str(exe), "--kvm", str(tmp_path / "none")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4 and proc.stderr.startswith("repro: error: cannot run here") and not proc.stdout
    (tmp_path / "plain").write_text("")
    proc = subprocess.run([str(exe), "--kvm", str(tmp_path / "plain")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is not a KVM device" in proc.stderr
    proc = subprocess.run([str(exe), "-r", "0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not a number from 1" in proc.stderr


# --- on this host: it runs, and agrees with minivmm timing ---------------------------------------------------

def run_program(exe: pathlib.Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.kvm
def test_every_op_runs_from_c_and_its_json_is_what_compare_reads(tmp_path):
    exe = tmp_path / "all-ops"
    gcc(write_repro(tmp_path, "all-ops", model_host=True), exe)
    seq = parse_sequence(ALL_OPS, "all-ops")
    text = run_program(exe, "-r", "3").stdout
    strace = [line for line in text.splitlines() if re.match(r"(ioctl|close)\(\d+, ", line) or
              re.match(r"close\(\d+\) = ", line)]
    assert len(strace) == len(seq.steps) and strace[-1].startswith("close(")  # the teardown
    assert all(re.search(r"\) = \d+ <\d+\.\d{6}>", line) for line in strace)
    assert sum("(not issued: paused for its traced cost)" in line for line in strace) == 1
    doc = json.loads(run_program(exe, "-r", "3", "--json").stdout)
    validate(doc, "repro")
    assert [s["label"] for s in doc["steps"]] == [s.label for s in seq.steps]
    assert all(len(s["samples_ns"]) == 3 and min(s["samples_ns"]) > 0 for s in doc["steps"])
    assert doc["host"]["kernel"] == os.uname().release
    (tmp_path / "a.json").write_text(json.dumps(doc))
    proc = run_cli("compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert proc.returncode == 0 and "3 repetitions" in proc.stdout, proc.stderr


@pytest.mark.kvm
def test_the_kselftest_runs_and_reports_tap(tmp_path):
    src = write_repro(tmp_path, "registrations-first", "--kselftest", model_host=True)
    write_stub_headers(tmp_path)
    gcc(src, tmp_path / "selftest", f"-I{tmp_path}")
    proc = subprocess.run([str(tmp_path / "selftest"), "-r", "5"], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    plan = int(next(x for x in lines if x.startswith("1..")).removeprefix("1.."))
    results = [x for x in lines if re.match(r"(not )?ok \d+ ", x)]
    assert len(results) == plan and results[0].startswith("ok 1 ")
    assert any(x.startswith("# KVM_SET_USER_MEMORY_REGION, slot 0 ") for x in lines)
    assert proc.returncode == (0 if all(x.startswith("ok") for x in results) else 1)


def shares_agree(x: float, y: float, nx: int, ny: int) -> bool:
    """Two shares of samples agree: within 0.1, or within three standard errors of their difference where
    the repetitions a test can afford make 0.1 tighter than sampling allows."""
    pooled = (x * nx + y * ny) / (nx + ny)
    return abs(x - y) <= max(0.1, 3 * (pooled * (1 - pooled) * (1 / nx + 1 / ny)) ** 0.5)


def agreement(timing: list[int], repro: list[int], tick: int, origin: float) -> tuple[bool, str]:
    """Whether two measurements of one step agree: their tick-mode shares agree, and so does their share
    of stalls (which the modes alone would not catch: a program whose stall vanished has its samples in
    mode 0, below the origin); or else p10/p50/p90 within 10%."""
    a, b = tick_modes(timing, tick, origin), tick_modes(repro, tick, origin)
    n, m = len(timing), len(repro)
    pairs = [(a.share(k), b.share(k)) for k in range(max(len(a.shares), len(b.shares)))]
    pairs.append((sum(map(is_stall, timing)) / n, sum(map(is_stall, repro)) / m))
    quantiles = [(percentile(timing, p), percentile(repro, p)) for p in (10, 50, 90)]
    ok = all(shares_agree(x, y, n, m) for x, y in pairs) or all(abs(x - y) <= 0.1 * x for x, y in quantiles)
    return ok, (f"mode shares {[round(x, 3) for x in a.shares]} vs {[round(x, 3) for x in b.shares]}, stalls "
                f"{pairs[-1][0]:.2f} vs {pairs[-1][1]:.2f}; p10/p50/p90 "
                + ", ".join(f"{x / 1e6:.2f}/{y / 1e6:.2f} ms" for x, y in quantiles))


#: Per source: batches and repetitions per batch (each side). A share of a tick mode is the figure that
#: needs samples: at 250 each, three standard errors of a difference of shares near 0.2 are 0.11.
AGREEMENT_RUNS = {"registrations-first": (25, 10), "arm64-order": (25, 10), "late-registration": (20, 10),
                  "firecracker": (10, 10), "deregistrations-running": (4, 5), "qemu-trace": (12, 10),
                  "churn": (15, 10)}


#: `minivmm timing`'s measurement (``measure()``) in a process of its own, as the command runs it: a
#: batch of N repetitions with seed S for each "N S HZ" line read, answered with one line of JSON (per
#: repetition, each step's duration in ns).
TIMING_BATCHES = """
import json, sys
from kernel_model.sequences import load_sequence
from minivmm.timing.runner import measure
seq = load_sequence(sys.argv[1])
for line in sys.stdin:
    size, seed, hz = map(int, line.split())
    reps, _ = measure(seq, size, jitter=True, hz=hz, seed=seed)
    print(json.dumps([rep.durations_ns for rep in reps]), flush=True)
"""


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.parametrize("name", [*SEQUENCES, "qemu-trace"])
def test_the_stalled_steps_agree_with_minivmm_timing(tmp_path, name):
    """The same sequence measured by `minivmm timing --sequence` (its measurement, in a process of its
    own) and by the C program, in alternating batches so that both see the same load on this host. The
    stalled steps are those where some kernel variant waits for a grace period (the model's, as the
    header lists them) and either side measures a stall; each agrees (see ``agreement``), from the
    tick-mode origin the model gives (its call_srcu minimum where it predicts the stall there). Steps the
    model gives no stall (a 1-jiffy hiccup a loaded host adds to an ioctl now and then, the more often the
    busier it is) are no grace period's wait and are left out."""
    import sys

    exe = tmp_path / "repro"
    gcc(write_repro(tmp_path, name, model_host=True), exe)
    seq = parse_sequence(QEMU_TRACE.read_text(), "q") if name == "qemu-trace" else SEQUENCES[name]
    batches, size = AGREEMENT_RUNS[name]
    timing: list[list[int]] = [[] for _ in seq.steps]
    repro: list[list[int]] = [[] for _ in seq.steps]
    window = LoadWindow.start()
    child = subprocess.Popen([sys.executable, "-c", TIMING_BATCHES, sequence_arg(name, tmp_path)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        for batch in range(batches):
            doc = json.loads(run_program(exe, "-r", str(size), "--json", "--seed", str(batch)).stdout)
            for samples, step in zip(repro, doc["steps"]):
                samples += step["samples_ns"]
            child.stdin.write(f"{size} {batch} {doc['host']['hz']}\n")
            child.stdin.flush()
            for durations in json.loads(child.stdout.readline()):
                for samples, d in zip(timing, durations):
                    samples.append(d)
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    load = window.end()
    quiet = quiet_host(load)  # the programs take turns: one task of the test's runs at a time
    tick = tick_ns(doc["host"]["hz"])
    for i, (step, r) in enumerate(zip(seq.steps, doc["steps"])):
        predicted = r["predicted"]
        if not any(is_stall(q["p50_us"] * 1000) for q in predicted.values()):
            continue
        if not (is_stall(percentile(timing[i], 50)) or is_stall(percentile(repro[i], 50))):
            continue
        model = predicted["call_srcu"]
        origin = model["min_us"] * 1000 if is_stall(model["p50_us"] * 1000) else min(min(timing[i]), min(repro[i]))
        ok, detail = agreement(timing[i], repro[i], tick, origin)
        if not ok and not quiet:
            # On a busy host each program's own overhead between ioctls decides how many stalls slip a
            # tick, and the two programs' overheads differ: the shares of the modes are a quiet host's
            # claim. Busy, both must still see this step stall, their medians at most a tick apart (a
            # slip of one tick more on one side), give or take a tenth.
            a, b = percentile(timing[i], 50), percentile(repro[i], 50)
            ok = is_stall(a) and is_stall(b) and abs(a - b) <= 1.1 * tick
            detail += f" ({load.describe()}: medians compared)"
        assert ok, f"step {i + 1} {step.label}: {detail}"
        if quiet and model["p90_us"] - model["p10_us"] >= tick / 2000 and is_stall(percentile(repro[i], 50)):
            # The model spreads this stall over the tick phase: so must the program's jitter (a quiet
            # host's claim too: busy, where each run's steps end moves with the load, not the jitter).
            spread = percentile(repro[i], 90) - percentile(repro[i], 10)
            assert spread >= 0.4 * tick, f"step {i + 1} {step.label}: p10-p90 only {spread / 1e6:.2f} ms"


@pytest.mark.kvm
def test_the_program_keeps_every_gap_as_written(tmp_path):
    """Pauses as `minivmm timing` makes them: never shorter than written, and exact but for the host
    taking the CPU away now and then (so the shortest of the repetitions is within 50 us)."""
    path = tmp_path / "gaps.seq"
    path.write_text("create_vm\nirqchip\ngap 250us\nioeventfd addr=0xd0000000 len=4\nsleep 1ms\n"
                    "vcpu id=0\ngap 3ms\nmemslot slot=0 base=0 size=1M\nrun vcpu=0\n")
    seq = parse_sequence(path.read_text(), "gaps")
    exe = tmp_path / "gaps"
    gcc(write_repro(tmp_path, str(path)), exe)
    doc = json.loads(run_program(exe, "-r", "20", "--json").stdout)
    for step, r in zip(seq.steps, doc["steps"]):
        assert min(r["gaps_ns"]) >= step.gap_ns and min(r["gaps_ns"]) <= step.gap_ns + 50_000, (step.label, r)


def test_the_readme_shows_what_repro_writes(tmp_path, capsys):
    """docs/repro.md's excerpt of the file for registrations-first is what the command writes (at the HZ and
    platform the page's machine has); the paragraph naming that machine aside."""
    text = (ROOT / "docs" / "repro.md").read_text()
    sample = text.split("$ minivmm repro --sequence registrations-first -o repro.c\n", 1)[1].split("```", 1)[0]
    assert main(["repro", "--sequence", "registrations-first", "--hz", "250", "--platform", "pvm"]) == 0
    written = capsys.readouterr().out.splitlines()
    lines = sample.splitlines()
    start = lines.index(" * Generated by minivmm 0.1.0 (minivmm repro --sequence registrations-first) on Linux")
    end = lines.index(" *", start)
    shown = [x for x in lines[:start] + lines[end:] if x != "..."]
    assert len(shown) > 30
    for line in shown:
        assert line in written, line
    block = lines[lines.index("\t/* 9. memslot slot=0 base=0 size=128M: KVM_SET_USER_MEMORY_REGION, slot 0 */"):]
    at = written.index(block[0])
    assert written[at:at + len(block)] == block


def test_compare_reads_a_reproducers_document_as_a_timing_one_and_the_harness_ships():
    from minivmm.compare.documents import DocumentError, parse_timing
    from minivmm.schemas import stamp
    doc = stamp("repro", {"sequence": "s", "repetitions": 1, "host": {"kernel": "k", "hz": 250, "platform": "pvm"},
                          "steps": [{"op": "create_vm", "label": "KVM_CREATE_VM", "samples_ns": [5]}]})
    assert parse_timing(doc, "r.json").steps[0].samples_ns == [5]
    with pytest.raises(DocumentError, match="'boot' document"):
        parse_timing({**doc, "kind": "boot"}, "b.json")
    assert '"minivmm.repro" = ["harness/*.c"]' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.kvm
def test_the_readme_shows_what_the_program_prints(tmp_path):
    """docs/repro.md's run of the program has the lines a real run prints, the numbers (and whatever this
    host stalls on) aside."""
    text = (ROOT / "docs" / "repro.md").read_text()
    sample = text.split("$ gcc -O2 -Wall -o repro repro.c && ./repro\n", 1)[1].split("```", 1)[0].splitlines()
    exe = tmp_path / "repro"
    gcc(write_repro(tmp_path, "registrations-first", model_host=True), exe)

    def shape(line: str) -> str:
        line = line.split("  <- ")[0]  # a stall mark: where this host stalls, this time
        return " ".join(re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\d+\.\d+ [mu]s", "T", line)).split())

    real = {shape(line) for line in run_program(exe, "-r", "5").stdout.splitlines()}
    shown = [x for x in sample if x != "..." and not x.startswith(("host: ", "(a stall"))]
    assert len(shown) > 10
    for line in shown:
        assert shape(line) in real, line
