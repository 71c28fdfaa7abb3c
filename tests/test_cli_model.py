"""``minivmm model`` as a user meets it."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli


def test_model_default_prints_strace_lines_and_a_side_by_side_table():
    proc = run_cli("model", "--samples", "200")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# variant call_srcu" in out
    lines = re.findall(r"^ioctl\(vm, KVM_CREATE_VCPU, 0\) = 0 <(\d+\.\d{6})>$", out, re.M)
    assert len(lines) == 4                     # one per variant
    assert float(lines[1]) > 0.009              # call_srcu stalls at HZ=100 on vmx
    assert all(float(x) < 0.001 for i, x in enumerate(lines) if i != 1)
    assert "p50 [p10 - p90]" in out


def test_model_json():
    proc = run_cli("model", "--json", "--variant", "call_srcu", "--hz", "1000", "--samples", "300",
                   "--sequence", "registrations-first", "--platform", "pvm")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    steps = data["variants"]["call_srcu"]["steps"]
    memslot = next(s for s in steps if s["op"] == "memslot")
    assert 900 < memslot["p50_us"] < 2100 and {"p10_us", "p50_us", "p90_us"} <= memslot.keys()


def test_model_sequence_file(tmp_path):
    f = tmp_path / "mine.seq"
    f.write_text("create_vm\nioeventfd addr=0xd0000000 len=4\nmemslot slot=0 base=0 size=1M\n")
    proc = run_cli("model", "-s", str(f), "-v", "sync", "-n", "10")
    assert proc.returncode == 0 and "KVM_SET_USER_MEMORY_REGION" in proc.stdout


def test_model_errors_are_one_line():
    for args, fragment in ((["-v", "nope"], "not a kernel variant"), (["--platform", "ppc"], "unknown platform"),
                           (["-s", "missing.seq"], "neither a named sequence"), (["--hz", "0"], "--hz")):
        proc = run_cli("model", *args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr


def test_model_bad_sequence_file_names_the_line(tmp_path):
    f = tmp_path / "bad.seq"
    f.write_text("create_vm\nvcpu\n")
    proc = run_cli("model", "-s", str(f))
    assert proc.returncode == 2 and "bad.seq:2: vcpu needs id" in proc.stderr


REFUSED = [
    ("create_vm\nvcpu id=0\nirqchip\n", "step 3", "vCPUs already exist", "EINVAL"),
    ("create_vm\nioeventfd addr=0xd0000000 len=3\n", "step 2", "bad length 3", "EINVAL"),
    ("create_vm\nioeventfd addr=0xd0000000 len=4\nioeventfd addr=0xd0000000 len=4\n", "step 3", "collides",
     "EEXIST"),
    ("create_vm\nioeventfd_deassign addr=0xd0000000 len=4\n", "step 2", "nothing at 0xd0000000", "ENOENT"),
    # what model used to accept and timing refused: one validation for both now
    ("create_vm\nrun vcpu=0\n", "step 2", "has not been created", "EBADF"),
    ("create_vm\nmemslot slot=0 base=0 size=1000\n", "step 2", "multiples of the page size", "EINVAL"),
    ("create_vm\nmemslot slot=0 base=0 size=1M\nmemslot slot=1 base=0x80000 size=1M\n", "step 3", "overlaps",
     "EEXIST"),
    ("create_vm\nvcpu id=0 id=1\n", "refused.seq:2", "id given twice", ""),
]


@pytest.mark.parametrize("text,step,reason,errno_name", REFUSED)
def test_a_step_the_kernel_refuses_is_one_line_naming_the_step(tmp_path, text, step, reason, errno_name):
    f = tmp_path / "refused.seq"
    f.write_text(text)
    for command in (["model", "-n", "10"], ["timing", "-r", "1", "--platform", "pvm", "--hz", "250"]):
        proc = run_cli(*command, "-s", str(f))
        assert proc.returncode == 2, (command, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minivmm: error: "), lines
        for fragment in (step, reason, errno_name):
            assert fragment in lines[0]


def test_list_sequences_names_each_with_its_description():
    from kernel_model.sequences import SEQUENCES
    proc = run_cli("model", "--list-sequences")
    assert proc.returncode == 0, proc.stderr
    names = [line for line in proc.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == list(SEQUENCES)


def _normal(seq):
    """Steps with unset options (None, False) dropped: a named sequence may omit what a file defaults."""
    return [(s.op, {k: v for k, v in s.args.items() if v is not None and v is not False}, s.gap_ns)
            for s in seq.steps]


def test_show_sequence_prints_the_file_format_which_loads_back_to_the_same_steps(tmp_path):
    from kernel_model.sequences import SEQUENCES, parse_sequence
    for name, seq in SEQUENCES.items():
        proc = run_cli("model", "--show-sequence", name)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"# {name}: ")
        assert _normal(parse_sequence(proc.stdout, name)) == _normal(seq), name
    # and it runs as a sequence file
    f = tmp_path / "mine.seq"
    f.write_text(run_cli("model", "--show-sequence", "registrations-first").stdout)
    proc = run_cli("model", "-s", str(f), "-v", "call_srcu", "-n", "20", "--platform", "pvm", "--hz", "250")
    assert proc.returncode == 0, proc.stderr
    assert "KVM_SET_USER_MEMORY_REGION" in proc.stdout


def test_show_sequence_of_an_unknown_name_is_one_line():
    proc = run_cli("model", "--show-sequence", "nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "neither a named sequence" in proc.stderr


@pytest.mark.parametrize("case,fragment", [
    ("/dev/zero", "not a regular file"),
    ("fifo", "not a regular file"),
    ("big", "the limit is"),
    ("secret", ":1: not a step"),
])
def test_sequence_files_that_cannot_be_read_are_one_line_at_the_cli(tmp_path, case, fragment):
    """The loader's refusals (the ops helper's bounded read) reach the user as one line and exit 2, from
    both commands, without hanging on a FIFO, reading /dev/zero forever or quoting a file's content."""
    import os
    if case == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif case == "big":
        path = tmp_path / "big.seq"
        with open(path, "wb") as f:
            f.truncate(64 << 20)
    elif case == "secret":
        path = tmp_path / "shadow"
        path.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    else:
        path = case
    for command in (["model"], ["timing", "-r", "1", "--platform", "pvm", "--hz", "250"]):
        proc = run_cli(*command, "-s", str(path), timeout=30)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minivmm: error: ") and fragment in lines[0], lines
        assert "Traceback" not in proc.stderr and "SECRETHASH" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("text,bound", [
    ("create_vm\nsleep 3601s\nmemslot slot=0 base=0 size=2M\n", "its pauses add up to more than 3600 s"),
    ("create_vm\n" + "".join(f"vcpu id={i}\n" for i in range(1025)), "more than 1024 vCPUs"),
])
def test_a_sequence_past_the_models_bounds_is_one_line_and_exit_2(tmp_path, text, bound):
    f = tmp_path / "big.seq"
    f.write_text(text)
    for command in (("model",), ("timing", "-r", "1")):  # timing refuses it before opening /dev/kvm
        proc = run_cli(*command, "-s", str(f))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("minivmm: error:") and bound in proc.stderr


def test_the_step_bound_is_checked_before_any_work():
    from kernel_model.sequences import MAX_STEPS, Sequence, SequenceError, Step, check_bounds
    steps = (Step("create_vm"),) + tuple(Step("ioeventfd", {"addr": 16 * i, "len": 4}) for i in range(MAX_STEPS))
    with pytest.raises(SequenceError, match=f"the model takes at most {MAX_STEPS}"):
        check_bounds(Sequence("big", "", steps))
