"""One spec per sequence op: every op has its model side and its host side, and one validation serves
``minivmm model`` and ``minivmm timing`` alike."""

from __future__ import annotations

import re

import pytest

from kernel_model.ops import OPS
from kernel_model.sequences import SEQUENCES, SequenceError, Step, parse_sequence, validate


def test_every_op_has_a_host_step():
    from minivmm.timing.host_ops import HOST_OPS
    assert set(HOST_OPS) == set(OPS)


def test_every_op_has_a_label_and_an_strace_form_for_its_minimal_arguments():
    for op in OPS.values():
        minimal = {a.name: (0x1000 if a.kind in ("int", "size") else 10_000 if a.kind == "time" else "KVM_X")
                   for a in op.args if a.required}
        step = Step(op.name, minimal)
        assert step.label
        assert step.strace(0.001).startswith("ioctl(")


def test_a_repeated_argument_is_an_error():
    with pytest.raises(SequenceError, match=r"f:2: id given twice"):
        parse_sequence("create_vm\nvcpu id=0 id=1", "f")


@pytest.mark.parametrize("text,fragment", [
    ("create_vm\nrun vcpu=0", r"KVM_RUN, vcpu 0 .*has not been created"),
    ("create_vm\nmemslot slot=0 base=0 size=1000", "page size"),
    ("create_vm\nmemslot slot=0 base=0 size=1M\nmemslot slot=1 base=512K size=1M", "overlaps slot 0"),
    ("create_vm\nioeventfd_deassign addr=0x10 len=4", "ENOENT"),
    ("create_vm\nioeventfd addr=0x10 len=4\nioeventfd addr=0x10 len=4", "EEXIST"),
    ("create_vm\nioeventfd addr=0x10 len=3", "EINVAL"),
    ("create_vm\nvcpu id=0\nvcpu id=0", "EEXIST"),
    ("create_vm\nvcpu id=0\nirqchip", "EINVAL"),
    ("create_vm\nmemslot slot=0 base=0x100000 size=1M\nvcpu id=0\nrun vcpu=0", "covering 0x1000"),
])
def test_validation_refuses_what_the_kernel_or_the_runner_would(text, fragment):
    seq = parse_sequence(text, "f")
    with pytest.raises(SequenceError) as e:
        validate(seq, "vmx")
    message = str(e.value)
    assert "\n" not in message
    assert re.search(fragment, message), message


def test_every_named_sequence_validates_on_every_platform_it_was_written_for():
    for seq in SEQUENCES.values():
        validate(seq, "vmx")
        validate(seq, "pvm")


def test_the_timing_runner_refuses_through_the_same_validation():
    from minivmm.timing.runner import check_runnable
    seq = parse_sequence("create_vm\nioeventfd_deassign addr=0x10 len=4", "f")
    with pytest.raises(SequenceError, match="ENOENT"):
        check_runnable(seq, "pvm")


# --- reading sequence files: bounded, regular files only, content never echoed ----------------------

def _load_error(path: str) -> str:
    from kernel_model.sequences import load_sequence
    with pytest.raises(SequenceError) as e:
        load_sequence(path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_dev_zero_is_refused_without_reading_it():
    assert "not a regular file" in _load_error("/dev/zero")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _load_error(str(fifo))


def test_a_directory_is_refused(tmp_path):
    assert "not a regular file" in _load_error(str(tmp_path))


def test_a_64_mb_file_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.seq"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: nothing is written, and nothing must be read
    assert "limit" in _load_error(str(big))


def test_a_file_that_is_not_a_sequence_is_not_quoted_back(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$s3cr3tsalt$hashhashhash:19000:0:99999:7:::\n")
    message = _load_error(str(secret))
    assert "s3cr3t" not in message and "hashhash" not in message and "19000" not in message
    assert ":1:" in message


def test_binary_content_is_refused_without_quoting_it(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"\xff\xfesecret")
    message = _load_error(str(blob))
    assert "UTF-8" in message and "secret" not in message


def test_a_missing_file_names_the_named_sequences(tmp_path):
    assert "neither a named sequence" in _load_error(str(tmp_path / "nope"))


@pytest.mark.parametrize("text", ["create_vm\nvcpu id=0 id=1", "create_vm\nioeventfd_deassign addr=0x10 len=4",
                                  "create_vm\nrun vcpu=0"])
def test_model_and_timing_refuse_a_bad_sequence_file_with_one_line(tmp_path, capsys, text):
    from minivmm.cli.app import main
    path = tmp_path / "bad.seq"
    path.write_text(text)
    for argv in (["model", "--sequence", str(path), "-n", "5"],
                 ["timing", "--sequence", str(path), "--hz", "250", "--platform", "pvm", "-r", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err, err
