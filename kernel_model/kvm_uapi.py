"""The argument structs of the KVM ioctls that sequence ops issue, and the one way each is printed.

Printed as strace prints a struct (strace's src/kvm.c decodes ``KVM_SET_USER_MEMORY_REGION`` this way,
and the others here follow the same conventions): ``{field=value, ...}`` in the C struct's field order,
addresses in hex (``0`` for zero, as C's ``%#x``), sizes and numbers in decimal, flags by their
``<linux/kvm.h>`` names joined with ``|`` (``0`` for none, unknown bits in hex), arrays of structs
abbreviated to ``[...]``. A value the printer does not know (the model has no fds or host addresses)
is left out, and the struct ends with ``...``.

The model's strace text (:mod:`kernel_model.ops`), minivmm's ioctl wrappers (``minivmm/kvm/vm.py``)
and the tracer's decoder (``minivmm/trace/decode.py``) all print through :meth:`UapiStruct.format`
with plain field values. The field names, their order and the flag bits here are <linux/kvm.h>'s,
written down because the model runs without the compiled header; a test checks them against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

# The bits the model kernel reads are defined with it (kernel_model.kvm_host, imported by every VM
# without this module's tables); here they get their names.
from kernel_model.kvm_host import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY

#: How a field's value is printed: u: unsigned decimal; d: signed decimal (an fd); x: hex; flags: by
#: name; cap: a capability (by name when the printer has a name table); xarray: a list of hex numbers;
#: abbrev: an array of structs, always printed ``[...]`` (its value is never needed).
FieldStyle = Literal["u", "d", "x", "flags", "cap", "xarray", "abbrev"]


class Flag(NamedTuple):
    """One flag bit: its value, its name in <linux/kvm.h>, and ``key``, the boolean it becomes in
    decoded fields and op arguments (None: not exposed as a boolean)."""

    bit: int
    name: str
    key: str | None


class Field(NamedTuple):
    """One field of a struct, in the struct's order."""

    name: str
    style: FieldStyle
    #: For ``flags``: the bits with names.
    flags: tuple[Flag, ...] = ()
    #: The flag that gives the field its meaning (``datamatch`` only counts with
    #: KVM_IOEVENTFD_FLAG_DATAMATCH): without it the decoded value is None.
    only_with: str | None = None


def hex_value(value: int) -> str:
    """A number in hex as strace prints it (C's ``%#x``): ``0x1f``, and ``0`` for zero."""
    return f"{value:#x}" if value else "0"


def flag_names(value: int, flags: tuple[Flag, ...]) -> str:
    """``KVM_MEM_LOG_DIRTY_PAGES|KVM_MEM_READONLY``; ``0`` for none; bits without a name in hex."""
    parts = [f.name for f in flags if value & f.bit]
    rest = value & ~sum(f.bit for f in flags)
    if rest:
        parts.append(hex_value(rest))
    return "|".join(parts) or "0"


class UapiStruct(NamedTuple):
    """An ioctl argument struct of <linux/kvm.h>: its C name and the fields printed."""

    ctype: str
    fields: tuple[Field, ...]

    def flag(self, name: str) -> Flag:
        """The flag bit called ``name`` (KeyError if the struct has none)."""
        for f in self.fields:
            for flag in f.flags:
                if flag.name == name:
                    return flag
        raise KeyError(name)

    def has(self, values: Mapping[str, Any], name: str) -> bool:
        """Whether the flag called ``name`` is set in ``values`` (the field holding it)."""
        flag = self.flag(name)
        holder = next(f for f in self.fields if flag in f.flags)
        return bool(int(values.get(holder.name) or 0) & flag.bit)

    def format(self, values: Mapping[str, Any], cap_name: Callable[[int], str] = str) -> str:
        """The struct as strace prints it (see the module docstring). A field absent from ``values``
        (or None) is left out and the struct ends with ``...``; ``cap_name`` names a capability."""
        parts: list[str] = []
        missing = False
        for f in self.fields:
            value = values.get(f.name)
            if f.style == "abbrev":
                parts.append(f"{f.name}=[...]")
                continue
            if value is None:
                missing = True
                continue
            if f.style == "x":
                text = hex_value(value)
            elif f.style == "flags":
                text = flag_names(value, f.flags)
            elif f.style == "cap":
                text = cap_name(value)
            elif f.style == "xarray":
                text = "[" + ", ".join(hex_value(v) for v in value) + "]"
            else:
                text = str(value)
            parts.append(f"{f.name}={text}")
        if missing:
            parts.append("...")
        return "{" + ", ".join(parts) + "}"

    def decoded_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The fields as a trace reports them (``--json``): every field's value (as given), a field
        whose flag is clear as None, and each flag bit with a ``key`` as a boolean (``readonly``)."""
        out = dict(values)
        for f in self.fields:
            for flag in f.flags:
                on = bool(int(values.get(f.name) or 0) & flag.bit)
                if flag.key is not None:
                    out[flag.key] = on
                for other in self.fields:
                    if other.only_with == flag.name and not on:
                        out[other.name] = None
        return out


KVM_MEM_FLAGS = (Flag(KVM_MEM_LOG_DIRTY_PAGES, "KVM_MEM_LOG_DIRTY_PAGES", "log_dirty"),
                 Flag(KVM_MEM_READONLY, "KVM_MEM_READONLY", "readonly"), Flag(1 << 2, "KVM_MEM_GUEST_MEMFD", None))
KVM_IOEVENTFD_FLAGS = (Flag(1 << 0, "KVM_IOEVENTFD_FLAG_DATAMATCH", None),
                       Flag(1 << 1, "KVM_IOEVENTFD_FLAG_PIO", "pio"),
                       Flag(1 << 2, "KVM_IOEVENTFD_FLAG_DEASSIGN", "deassign"))
KVM_IRQFD_FLAGS = (Flag(1 << 0, "KVM_IRQFD_FLAG_DEASSIGN", "deassign"),
                   Flag(1 << 1, "KVM_IRQFD_FLAG_RESAMPLE", "resample"))
KVM_PIT_FLAGS = (Flag(1 << 0, "KVM_PIT_SPEAKER_DUMMY", "speaker_dummy"),)

_REGION = (Field("slot", "u"), Field("flags", "flags", KVM_MEM_FLAGS), Field("guest_phys_addr", "x"),
           Field("memory_size", "u"), Field("userspace_addr", "x"))
USER_MEMORY_REGION = UapiStruct("struct kvm_userspace_memory_region", _REGION)
USER_MEMORY_REGION2 = UapiStruct("struct kvm_userspace_memory_region2",
                                 (*_REGION, Field("guest_memfd_offset", "x"), Field("guest_memfd", "u")))
IOEVENTFD = UapiStruct("struct kvm_ioeventfd", (
    Field("datamatch", "x", only_with="KVM_IOEVENTFD_FLAG_DATAMATCH"), Field("addr", "x"), Field("len", "u"),
    Field("fd", "d"), Field("flags", "flags", KVM_IOEVENTFD_FLAGS)))
IRQFD = UapiStruct("struct kvm_irqfd", (
    Field("fd", "d"), Field("gsi", "u"), Field("flags", "flags", KVM_IRQFD_FLAGS),
    Field("resamplefd", "d", only_with="KVM_IRQFD_FLAG_RESAMPLE")))
COALESCED_MMIO_ZONE = UapiStruct("struct kvm_coalesced_mmio_zone",
                                 (Field("addr", "x"), Field("size", "u"), Field("pio", "u")))
IRQ_ROUTING = UapiStruct("struct kvm_irq_routing", (Field("nr", "u"), Field("flags", "u"), Field("entries", "abbrev")))
ENABLE_CAP = UapiStruct("struct kvm_enable_cap", (Field("cap", "cap"), Field("flags", "u"), Field("args", "xarray")))
PIT_CONFIG = UapiStruct("struct kvm_pit_config", (Field("flags", "flags", KVM_PIT_FLAGS),))

#: The argument struct of each request that takes one, by the request's name.
REQUEST_STRUCTS: dict[str, UapiStruct] = {
    "KVM_SET_USER_MEMORY_REGION": USER_MEMORY_REGION,
    "KVM_SET_USER_MEMORY_REGION2": USER_MEMORY_REGION2,
    "KVM_IOEVENTFD": IOEVENTFD,
    "KVM_IRQFD": IRQFD,
    "KVM_REGISTER_COALESCED_MMIO": COALESCED_MMIO_ZONE,
    "KVM_SET_GSI_ROUTING": IRQ_ROUTING,
    "KVM_ENABLE_CAP": ENABLE_CAP,
    "KVM_CREATE_PIT2": PIT_CONFIG,
}
