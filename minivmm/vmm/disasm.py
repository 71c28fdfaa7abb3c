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


def instruction_at(mem: GuestMemory | None, regs: Any, sregs: Any) -> tuple[int, str]:
    """The linear address of RIP (CS base + RIP) and the instruction there, disassembled in the vCPU's
    current mode; a note instead of an instruction when RIP is outside guest RAM."""
    linear = (int(sregs.cs.base) + int(regs.rip)) & 0xFFFFFFFFFFFFFFFF
    if mem is None or not mem.contains(linear, 1):
        return linear, f"(rip {linear:#x} is outside guest RAM)"
    code = mem.read(linear, min(15, mem.guest_phys_addr + mem.size - linear))
    return linear, disassemble_one(code, linear, guest_mode(sregs))
