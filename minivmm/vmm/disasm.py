"""Disassembly of guest code with capstone, imported only when an instruction must be shown (it costs
~45 ms to import, which a plain boot should not pay)."""

from __future__ import annotations

from functools import cache
from typing import Any

from minivmm.kvm.memory import GuestMemory
from minivmm.vmm.boot import Mode, guest_mode


@cache
def _disassembler(mode: Mode) -> Any:
    import capstone  # deferred: see the module docstring

    cs_mode = {Mode.REAL: capstone.CS_MODE_16, Mode.PROTECTED: capstone.CS_MODE_32,
               Mode.LONG: capstone.CS_MODE_64}[mode]
    return capstone.Cs(capstone.CS_ARCH_X86, cs_mode)


def disassemble_one(code: bytes, address: int, mode: Mode) -> str:
    """Return ``"mnemonic operands"`` for the first instruction of ``code``, or ``(bad)`` if none decodes."""
    for insn in _disassembler(mode).disasm(code, address, 1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return "(bad)"


#: Exits KVM reports with RIP already past the instruction that caused them: it completes an OUT and
#: an MMIO write before returning to userspace (the data is in kvm_run, nothing comes back), and skips
#: HLT. An IN or an MMIO read is completed only on the next KVM_RUN, so RIP still points at it; so does
#: a string instruction (rep outsb, rep stosd ...), which the emulator resumes on the next KVM_RUN.
_ADVANCED = ("IoOut", "MmioWrite", "Hlt")
_STRING = ("outs", "ins", "stos", "movs")

_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8}
_REG_SIZES = {"al": 1, "ax": 2, "eax": 4}


def _matches(exit_kind: str, exit_: Any, mnemonic: str, op_str: str) -> bool:
    """Whether an instruction could have caused ``exit_``: the right kind, and the right access size."""
    mnemonic = mnemonic.split()[-1] if mnemonic else mnemonic  # "rep outsb" -> "outsb"
    if exit_kind == "Hlt":
        return mnemonic == "hlt"
    if exit_kind in ("IoOut", "IoIn"):
        want = "out" if exit_kind == "IoOut" else "in"
        size = int(exit_.size)
        if mnemonic in (want + "sb", want + "sw", want + "sd"):
            return {"b": 1, "w": 2, "d": 4}[mnemonic[-1]] == size
        if mnemonic != want:
            return False
        operands = [o.strip() for o in op_str.split(",")]
        reg = operands[-1] if exit_kind == "IoOut" else operands[0]
        return _REG_SIZES.get(reg) == size
    if exit_kind in ("MmioWrite", "MmioRead"):
        size = len(exit_.data) if exit_kind == "MmioWrite" else int(exit_.length)
        operands = [o.strip() for o in op_str.split(", ")]
        # Intel syntax: the destination comes first; a write has its memory operand there
        mem = [o for o in operands if "[" in o]
        if not mem or (exit_kind == "MmioWrite" and "[" not in operands[0]):
            return False
        width = mem[0].split(" ", 1)[0]
        return width not in _SIZES or _SIZES[width] == size
    return True


def exiting_instruction(mem: GuestMemory | None, regs: Any, sregs: Any, exit_: Any) -> tuple[int, str]:
    """The linear address and text of the instruction that CAUSED ``exit_`` (not the next one), read
    from guest memory around RIP; see :func:`exiting_instruction_in`."""
    linear = (int(sregs.cs.base) + int(regs.rip)) & 0xFFFFFFFFFFFFFFFF
    if mem is None or not mem.contains(linear, 1):
        return linear, f"(rip {linear:#x} is outside guest RAM)"
    start = max(mem.guest_phys_addr, linear - 15)
    before = mem.read(start, linear - start)
    at = mem.read(linear, min(15, mem.guest_phys_addr + mem.size - linear))
    return exiting_instruction_in(before, at, linear, guest_mode(sregs), exit_)


def exiting_instruction_in(before: bytes, at: bytes, linear: int, mode: Mode, exit_: Any) -> tuple[int, str]:
    """The linear address and text of the instruction that CAUSED ``exit_``, given the (up to 15) bytes
    ``before`` RIP's linear address ``linear`` and the bytes ``at`` it.

    For an OUT, an MMIO write or a HLT, KVM has already moved RIP past the instruction, so it is found
    by decoding backwards: the instruction ending exactly at RIP whose kind and access size match the
    exit, the shortest such. x86 cannot be decoded backwards in general, but requiring an exact end at
    RIP, the exit's kind and its size leaves one candidate in practice; when none matches, the
    instruction at RIP is shown marked "(after)" rather than a guess. For other exits, and for a string
    instruction the emulator has not finished, RIP still points at the instruction: that is shown.
    """
    text = disassemble_one(at, linear, mode) if at else f"(rip {linear:#x} is outside guest RAM)"
    kind = type(exit_).__name__
    if kind not in _ADVANCED or not at:
        return linear, text
    cs = _disassembler(mode)
    for insn in cs.disasm(at, linear, 1):
        if insn.mnemonic.split()[-1].startswith(_STRING) and _matches(kind, exit_, insn.mnemonic, insn.op_str):
            return linear, text  # a string instruction: not yet completed, RIP is still on it
    for length in range(1, len(before) + 1):
        start = linear - length
        for insn in cs.disasm(before[-length:], start, 1):
            if insn.size == length and _matches(kind, exit_, insn.mnemonic, insn.op_str):
                return start, f"{insn.mnemonic} {insn.op_str}".strip()
    return linear, f"{text} (after)"
