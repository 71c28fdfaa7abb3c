"""How a sequence op is written as C, for ``minivmm repro``'s stand-alone reproducer.

The call is the op's own description of what it issues (``OpSpec.ioctl``: the fd's role, the request,
the argument struct's values, printed with the field names and flag names of
:mod:`kernel_model.kvm_uapi`, which are ``<linux/kvm.h>``'s); :func:`c_call` writes it. What the call
needs first and what it leaves behind is the op's C emitter (``OpSpec.c``): given the step's
arguments, that call and the :class:`CNames` of what earlier steps made, it returns a :class:`CStep`.
The reproducer's harness (``minivmm/repro``) times the ioctl with ``clock_gettime(CLOCK_MONOTONIC)``
right beside it.

The names an emitter may use are the harness's, and these only (a test builds every op's C):

- ``vm->kvm_fd``, ``vm->vm_fd``, ``vm->vcpu_fd[i]``: the ``/dev/kvm``, VM and vCPU fds;
- ``map_memory(vm, i, size)``: a fresh anonymous mapping, kept as ``vm->mem[i]`` (returns it);
- ``load_loop_guest(where)``: copy the ``run`` op's guest loop to a host address (needs "loop_guest");
- ``open_eventfd(vm, i)``: a fresh eventfd, kept as ``vm->efd[i]`` (returns it);
- ``prepare_vcpu(vm, i, period_ns)`` and ``first_run(vm, i)``: vCPU ``i`` set up to run the loop guest,
  then started in a thread of its own; ``first_run`` returns, in ns, its first KVM_RUN until the first
  exit (needs "vcpu_thread");
- ``pause_ns(ns)``: spin for ``ns`` and return the pause as measured (needs "pause");
- ``destroy_vm(vm)``: the vCPU threads stopped and their fds closed, then the VM fd's close() timed
  beside the call, its duration returned in ns (needs "teardown");
- ``die(fmt, ...)``: one line, and the program ends; ``LOOP_ADDR``: :data:`kernel_model.ops.LOOP_ADDR`.

:class:`CNames` mirrors, at generation time, what ``minivmm.timing.host_ops.HostState`` keeps while
``minivmm timing`` runs: which mapping backs a memslot (a move keeps it), which eventfd an ioeventfd or
irqfd was given (a deassign names it again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from kernel_model.kvm_uapi import Field, flag_names

if TYPE_CHECKING:
    from kernel_model.ops import Args, CloseCall, IoctlCall

#: What identifies an ioeventfd to KVM (addr, len, datamatch, pio): a deassign must give it again.
IoeventKey = tuple[int, int, int | None, bool]


class CStep(NamedTuple):
    """One step as C: ``setup``, then the timed ``ioctl(fd, request, arg)``, then ``after``.

    With ``timed_by``, that C expression does the step and returns its own duration in ns instead (the
    ``run`` op's first KVM_RUN, timed in its vCPU's thread; the ``ioctl`` op's pause); ``fd`` and
    ``request`` then only name the step in the strace-style line."""

    #: The fd the ioctl is issued on (a C expression).
    fd: str
    #: The request, by its ``<linux/kvm.h>`` name.
    request: str
    #: The third argument of ioctl() (a C expression).
    arg: str = "0"
    #: Statements before the timed region (declarations first): they may declare the argument struct.
    setup: tuple[str, ...] = ()
    #: Statements after it; ``ret`` holds the ioctl's result.
    after: tuple[str, ...] = ()
    timed_by: str | None = None
    #: False: the ioctl is not issued at all (its strace line says so).
    issued: bool = True
    #: Harness parts the statements use beyond the core: "memory", "loop_guest", "eventfd",
    #: "vcpu_thread", "pause".
    needs: tuple[str, ...] = ()


#: An op's C emitter: the step's arguments, the call its ``ioctl`` describes, what earlier steps made.
CEmitter = Callable[["Args", "IoctlCall", "CNames"], CStep]


def c_hex(value: int) -> str:
    """An unsigned C constant: ``0xd0000050``, ``0``, with ``ULL`` where it needs more than 32 bits."""
    return (f"{value:#x}" if value else "0") + ("ULL" if value >> 32 else "")


class CNames:
    """What earlier steps made, by the index the harness keeps it under; an emitter asks for and
    records resources here as it writes its step (steps are emitted in order)."""

    def __init__(self, cap_name: Callable[[int], str | None] | None = None) -> None:
        #: How many mappings and eventfds the program needs (the harness sizes its arrays).
        self.memories = 0
        self.eventfds = 0
        #: memslot number -> (mapping index, size): a move keeps the slot's mapping, as KVM requires.
        self.slots: dict[int, tuple[int, int]] = {}
        self.ioevents: dict[IoeventKey, int] = {}
        #: Per GSI, the eventfds of the irqfds in place (a deassign detaches the latest).
        self.irqfds: dict[int, list[int]] = {}
        #: vCPU id -> index in ``vm->vcpu_fd``.
        self.vcpus: dict[int, int] = {}
        self._cap_name = cap_name

    def new_memory(self) -> int:
        """The index of a new mapping."""
        self.memories += 1
        return self.memories - 1

    def new_eventfd(self) -> int:
        """The index of a new eventfd."""
        self.eventfds += 1
        return self.eventfds - 1

    def vcpu(self, vcpu_id: int) -> int:
        """The index of vCPU ``vcpu_id``'s fd (a new one for a new id)."""
        return self.vcpus.setdefault(vcpu_id, len(self.vcpus))

    def fd(self, role: str) -> str:
        """The C expression of the fd a call's role names: ``system``, ``vm``, ``vcpuN``."""
        if role == "system":
            return "vm->kvm_fd"
        if role == "vm":
            return "vm->vm_fd"
        return f"vm->vcpu_fd[{self.vcpu(int(role.removeprefix('vcpu')))}]"

    def cap(self, number: int) -> str:
        """A capability as C: its ``KVM_CAP_*`` name where the generator knows it, else the number."""
        name = self._cap_name(number) if self._cap_name else None
        return name or str(number)


def _c_value(field: Field, value: Any, names: CNames) -> str | None:
    """A field's value as C, by its style; None for an array of structs (``[...]``: the emitter's)."""
    if field.style == "abbrev":
        return None
    if field.style == "flags":
        return flag_names(int(value), field.flags).replace("|", " | ")
    if field.style == "cap":
        return names.cap(int(value))
    if field.style == "xarray":
        return "{ " + ", ".join(c_hex(int(v)) for v in value) + " }"
    if field.style == "x":
        return c_hex(int(value))
    return str(value)


def c_call(call: IoctlCall, names: CNames, fields: Mapping[str, str] | None = None, setup: tuple[str, ...] = (),
           after: tuple[str, ...] = (), needs: tuple[str, ...] = ()) -> CStep:
    """The C of ``call``: its argument struct declared as ``arg`` with the call's values and, for fields
    the call leaves unknown (an fd, a host address), the C expressions in ``fields``; a plain argument
    as a constant. ``setup`` follows the declaration."""
    from kernel_model.ops import StructArg

    extra = fields or {}
    if isinstance(call.arg, StructArg):
        values = []
        for f in call.arg.struct.fields:
            value = extra.get(f.name)
            if value is None and call.arg.values.get(f.name) is not None:
                value = _c_value(f, call.arg.values[f.name], names)
            if value is not None:
                values.append(f"\t.{f.name} = {value},\n")
        decl = f"{call.arg.struct.ctype} arg = {{\n{''.join(values)}}};"
        return CStep(names.fd(call.role), call.request, "&arg", (decl, *setup), after, needs=needs)
    arg = "0" if call.arg is None else c_hex(call.arg) + ("UL" if 1 << 31 <= call.arg < 1 << 32 else "")
    return CStep(names.fd(call.role), call.request, arg, setup, after, needs=needs)


def c_close(call: CloseCall, names: CNames) -> CStep:
    """The C of a close() (the teardown's: the VM fd's, after every vCPU's): the harness's
    ``destroy_vm()`` does it and times it; the fd it closed names the step's strace line."""
    if call.role != "vm" or call.after != ("vcpu",):
        raise ValueError(f"the harness closes the VM fd after its vCPU fds, not {call.role} after {call.after}")
    return CStep("vm_fd_closed", "close", setup=(f"int vm_fd_closed = {names.fd(call.role)};",),
                 timed_by="destroy_vm(vm)", needs=("teardown",))


def c_ioctl(a: Args, call: IoctlCall, names: CNames) -> CStep:
    """The emitter of an op whose call needs nothing first and leaves nothing behind."""
    return c_call(call, names)
