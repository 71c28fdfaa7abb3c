"""One repetition of a timed sequence as ``strace -T`` lines, the way ``minivmm trace`` shows a traced
VMM: each fd by its role (``system``, ``vm``, ``vcpuN``), and a step that was replayed rather than
issued shown as what it was.

A sequence saved by ``minivmm trace --save-sequence`` carries the ioctls the model does not model as
``ioctl name=... cost=...`` steps. ``minivmm timing`` cannot issue those (their arguments are not in
the file): it pauses for the traced cost instead, so the steps after keep their timing. Printing such a
pause as ``ioctl(vm, KVM_SET_CPUID2, ...) = 0`` would claim a call that never happened.
"""

from __future__ import annotations

from kernel_model.sequences import Sequence
from minivmm.kvm.uapi import IoctlRecord
from minivmm.timing.runner import Repetition


def fd_roles(records: list[IoctlRecord | None]) -> dict[int, str]:
    """fd -> role from one repetition's records: the fd KVM_CREATE_VM was issued on (``system``), the fd
    it returned (``vm``), each KVM_CREATE_VCPU's (``vcpuN``)."""
    roles: dict[int, str] = {}
    for rec in records:
        if rec is None or rec.ret < 0:
            continue
        if rec.name == "KVM_CREATE_VM":
            roles.setdefault(rec.fd, "system")
            roles[rec.ret] = "vm"
        elif rec.name == "KVM_CREATE_VCPU":
            roles[rec.ret] = f"vcpu{rec.arg}"
    return roles


def strace_line(rec: IoctlRecord, roles: dict[int, str]) -> str:
    """``ioctl(vm, KVM_CREATE_VCPU, 0) = 12 <0.000070>``: strace -T's form with the fd's role."""
    result = str(rec.ret) if rec.ret >= 0 else f"-1 {rec.errno}"
    return f"ioctl({roles.get(rec.fd, rec.fd)}, {rec.name}, {rec.arg}) = {result} <{rec.elapsed_ns / 1e9:.6f}>"


def repetition_lines(seq: Sequence, rep: Repetition) -> list[str]:
    """Every step of ``rep``: an issued ioctl as strace prints it, a replayed one as the pause it was."""
    roles = fd_roles(rep.records)
    lines = []
    for step, rec, d in zip(seq.steps, rep.records, rep.durations_ns):
        if rec is not None:
            lines.append(strace_line(rec, roles))
        elif step.op == "ioctl":
            lines.append(f"pause <{d / 1e9:.6f}> (not issued: {step.args['name']}, replayed as a pause of its "
                         f"traced cost <{step.args['cost'] / 1e9:.6f}>)")
        else:
            lines.append(step.strace(d / 1e9))
    return lines
