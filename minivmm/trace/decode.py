"""Naming and decoding KVM ioctls seen in another process: request names, fd roles, arguments.

Request and capability names come from the tables compiled from this host's ``<linux/kvm.h>``
(:func:`minivmm.kvm.uapi.ioctl_name`, the one way a request is named); argument structs are read
from the tracee's memory with process_vm_readv into cffi structs whose layout the compiler gave, and
printed by the one formatter of each struct (:mod:`kernel_model.kvm_uapi`), as the model and
minivmm's own wrappers print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernel_model import kvm_uapi
from kernel_model.kvm_uapi import UapiStruct
from minivmm.kvm.uapi import cap_name, ffi, request_number
from minivmm.trace.syscalls import TraceOSError, read_memory


def _req(name: str) -> int:
    number = request_number(name)
    return -1 if number is None else number


KVM_CREATE_VM = _req("KVM_CREATE_VM")
KVM_CREATE_VCPU = _req("KVM_CREATE_VCPU")
KVM_RUN = _req("KVM_RUN")
KVM_SET_USER_MEMORY_REGION = _req("KVM_SET_USER_MEMORY_REGION")
KVM_IOEVENTFD = _req("KVM_IOEVENTFD")
KVM_CREATE_IRQCHIP = _req("KVM_CREATE_IRQCHIP")
KVM_REGISTER_COALESCED_MMIO = _req("KVM_REGISTER_COALESCED_MMIO")
KVM_CHECK_EXTENSION = _req("KVM_CHECK_EXTENSION")


@dataclass
class Decoded:
    """An argument: ``text`` as printed, ``fields`` for JSON and the sequence conversion."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)


#: The argument struct of each decoded request that takes a pointer (kernel_model.kvm_uapi says which,
#: and how each is printed).
STRUCTS: dict[int, UapiStruct] = {_req(name): struct for name, struct in kvm_uapi.REQUEST_STRUCTS.items()
                                  if request_number(name) is not None}

#: Marks an argument struct that could not be read (a bad pointer: the kernel will answer EFAULT).
UNREADABLE = b""


def struct_size(struct: UapiStruct) -> int:
    """Bytes of ``struct``'s argument as this host's compiler lays it out (what :func:`capture` reads)."""
    return int(ffi.sizeof(struct.ctype))


def capture(pid: int, request: int, arg: int) -> bytes | None:
    """At the tracee's stop: copy the argument struct out of its memory (None if the request has none).

    Only the bytes are taken here, while the tracee waits; :func:`decode_raw` formats them later, so
    the stop is as short as it can be."""
    struct = STRUCTS.get(request)
    if struct is None:
        return None
    try:
        return read_memory(pid, arg, struct_size(struct))
    except TraceOSError:
        return UNREADABLE


def decode_raw(request: int, arg: int, raw: bytes | None) -> Decoded:
    """Decode ``arg`` of ``request`` from the struct bytes :func:`capture` took."""
    if raw == UNREADABLE:
        return Decoded(f"{arg:#x}", {"unreadable": True})
    return _decode(raw or b"", request, arg)


def _struct(raw: bytes, ctype: str) -> Any:
    return ffi.cast(f"{ctype} *", ffi.from_buffer(raw))


def _field_value(value: Any) -> Any:
    """A struct field as plain Python: an int, or a list of ints for an array (KVM_ENABLE_CAP's args)."""
    return value if isinstance(value, int) else [int(v) for v in value]


def _decode(raw: bytes, request: int, arg: int) -> Decoded:
    if request in (KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_CREATE_IRQCHIP, KVM_RUN):
        key = {KVM_CREATE_VM: "type", KVM_CREATE_VCPU: "id"}.get(request, "arg")
        return Decoded(str(arg), {key: arg})
    if request == KVM_CHECK_EXTENSION:
        return Decoded(cap_name(arg), {"cap": arg, "cap_name": cap_name(arg)})
    struct = STRUCTS.get(request)
    if struct is not None:
        c = _struct(raw, struct.ctype)
        values = {f.name: _field_value(getattr(c, f.name)) for f in struct.fields if f.style != "abbrev"}
        fields = struct.decoded_fields(values)
        if "cap" in values:
            fields["cap_name"] = cap_name(values["cap"])
        return Decoded(struct.format(values, cap_name), fields)
    # Everything else by name: an _IO request's argument is a value, the others' a pointer.
    return Decoded(f"{arg:#x}", {})
