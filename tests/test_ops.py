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
