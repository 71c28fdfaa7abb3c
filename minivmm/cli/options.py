"""Every option more than one command takes, defined once, and the parsers of values people type.

An option shared by commands is a typed, annotated parameter defined here (``Json``, ``Hz``, ``Platform``,
``Samples``, ``Seed``, ``Kvm``, ``Profile``, ``ReportTo``, ``Format``) with one range rule and one wording;
a command declares ``as_json: Json = False`` and gets the same flag, help and checks as every other.

The parsers raise :class:`typer.BadParameter` with a message that reads after the option's name
(``--mem: 'lots' is not a size ...``): :mod:`minivmm.cli.app` puts the name in front. A negative number
is "must be positive", whatever the option (the parser gets ``-1M`` as the value: it never becomes an
unknown option ``-1``).

Imported when the command line is built, never by a command's implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import typer

from minivmm.kvm.paths import DEFAULT_DEVICE_PATH

_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgG]i?[bB]?)?\s*$")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _refuse_negative(text: str) -> None:
    if str(text).strip().startswith("-"):
        raise typer.BadParameter(f"{str(text).strip()} must be positive")


def parse_size(text: str) -> int:
    """Bytes from ``128`` (MiB, as QEMU, kvmtool and crosvm read ``-m``), ``128M``, ``1G``, ``4096K`` or
    ``0x800`` (MiB too); binary units."""
    text = str(text)
    _refuse_negative(text)
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 16 or 16M for 16 MiB, 1G, 4096K)")
    unit = (m.group(2) or "m")[:1].lower()
    return int(m.group(1), 0) * _UNITS[unit]


def parse_address(text: str) -> int:
    """An address given in hex (``0x1000``) or decimal (``4096``)."""
    text = str(text)
    _refuse_negative(text)
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an address (examples: 0x1000, 4096)") from None


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """A parser for a whole number in [lo, hi] (decimal, or 0x hex); ``None`` leaves a side open."""
    def number(text: str) -> int:
        text = str(text)  # click passes a default through the parser too
        if lo is not None and lo >= 0:
            _refuse_negative(text)
        try:
            value = int(text.strip(), 0)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = (f"between {lo} and {hi}" if lo is not None and hi is not None
                     else f"at least {lo}" if lo is not None else f"at most {hi}")
            raise typer.BadParameter(f"{value} is out of range: it must be {bound}")
        return value
    return number


def float_range(lo: float, hi: float | None = None) -> Callable[[str], float]:
    """A parser for a number in [lo, hi] (NaN refused)."""
    def number(text: str) -> float:
        text = str(text)
        if lo >= 0:
            _refuse_negative(text)
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not value == value or value < lo or (hi is not None and value > hi):
            bound = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise typer.BadParameter(f"{text} is out of range: it must be {bound}")
        return value
    return number


def choice(values: tuple[str, ...], what: str) -> Callable[[str], str]:
    """A parser for one of ``values`` (case-insensitive), saying which ones when it refuses.

    Used for enums too, without importing the enum's module when the command line is built: the command
    converts the string with ``Enum(value)`` once it runs."""
    def one_of(text: str) -> str:
        text = str(text)
        if text.lower() in values:
            return text.lower()
        raise typer.BadParameter(f"{text!r} is not {what} ({', '.join(values)})")
    return one_of


def percentage(text: str) -> float:
    """``20%`` -> 0.2 (the one parser, :func:`minivmm.compare.gate.parse_threshold`)."""
    from minivmm.compare.gate import parse_threshold
    text = str(text)
    _refuse_negative(text)
    try:
        return parse_threshold(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def platform_name(text: str) -> str:
    """One of the kernel model's platforms (kernel_model.platforms.PLATFORMS, the one list)."""
    from kernel_model.platforms import PLATFORMS
    if str(text).lower() not in PLATFORMS:
        raise typer.BadParameter(f"unknown platform {text!r} (known: {', '.join(PLATFORMS)})")
    return str(text).lower()


# --- completion of the names a command takes ------------------------------------------------------

def complete_platforms(incomplete: str) -> list[str]:
    """Shell completion of ``--platform``."""
    from kernel_model.platforms import PLATFORMS
    return [p for p in PLATFORMS if p.startswith(incomplete)]


def complete_sequences(incomplete: str) -> list[str]:
    """Shell completion of ``--sequence``: the named sequences (a file name is the shell's to complete)."""
    from kernel_model.sequences import SEQUENCES
    return [s for s in SEQUENCES if s.startswith(incomplete)]


def complete_variants(incomplete: str) -> list[str]:
    """Shell completion of ``--variant``."""
    from kernel_model.variants import VARIANTS
    return [v for v in (*VARIANTS, "all") if v.startswith(incomplete)]


# --- the shared options ----------------------------------------------------------------------------

#: ``--json``: one JSON document instead of text (every command that reports).
Json = Annotated[bool, typer.Option(
    "--json", help="print one JSON document instead of text (its schema_version and kind first; its JSON "
                   "Schema is in minivmm/schemas/)")]

HZ_RANGE = int_range(1, 10000)


def hz_option(default: str | bool = True) -> Any:
    """``--hz``: CONFIG_HZ of the kernel the model runs, 1 to 10000; ``default`` says where it comes from
    when the parameter's default is None (True: shown as it is)."""
    return typer.Option("--hz", metavar="HZ", parser=HZ_RANGE, show_default=default,
                        help="CONFIG_HZ of the modelled kernel, 1 to 10000")


def platform_option(default: str | bool = True) -> Any:
    """``--platform``: the modelled KVM platform (vmx, svm, svm-noavic, pvm, arm64). Never ``-p``: that is
    the process ID, as in strace and perf."""
    return typer.Option("--platform", metavar="PLATFORM", parser=platform_name, show_default=default,
                        autocompletion=complete_platforms,
                        help="the modelled KVM platform: vmx, svm (AVIC), svm-noavic, pvm or arm64")


#: Where the model's HZ and platform come from when neither is given (see minivmm.host.modelled_kernel).
FROM_HOST = "this host's: its kernel config, its KVM module"
HostHz = Annotated[int | None, hz_option(FROM_HOST)]
HostPlatform = Annotated[str | None, platform_option(FROM_HOST)]

#: ``-n/--samples``: tick phases the model draws per variant. At least 10: p10 and p90 need them.
Samples = Annotated[int, typer.Option(
    "-n", "--samples", metavar="N", parser=int_range(10, 1_000_000),
    help="model samples per variant (tick phases drawn), 10 to 1000000")]

#: ``--seed``: the same seed gives the same numbers.
Seed = Annotated[int, typer.Option(
    "--seed", metavar="SEED", parser=int_range(0), help="random seed: the same seed gives the same numbers")]

#: ``--kvm``: the KVM device.
Kvm = Annotated[str, typer.Option("--kvm", metavar="PATH", help="the KVM device to open")]
DEFAULT_KVM = DEFAULT_DEVICE_PATH

#: ``--profile``: a host profile from ``timing --calibrate``.
Profile = Annotated[str | None, typer.Option(
    "--profile", metavar="FILE.json",
    help="a host profile (minivmm timing --calibrate): each timer's wake-up latency is drawn from its "
         "measured distribution instead of the fixed cost, and the CPUs tick as the profile measured (a timer "
         "then fires a tick late where the host's ticks make it); with timing --calibrate: where to write it "
         "(default $XDG_CONFIG_HOME/minivmm/host-profile.json)")]

def output_option(what: str = "the report", metavar: str = "FILE") -> Any:
    """``-o/--output``: ``what`` to a file, written whole at the end (``-``, /dev/stdout, /dev/stderr: that
    stream)."""
    return typer.Option("-o", "--output", metavar=metavar, show_default="standard output",
                        help=f"write {what} to {metavar}: checked before the work, written whole at the end, "
                             "never through a symbolic link (-, /dev/stdout and /dev/stderr name the stream)")


#: ``-o/--output`` of a command's report (every command that reports; see :func:`run_command`).
ReportTo = Annotated[str | None, output_option()]

FORMATS = ("text", "json", "openmetrics")
#: ``--format``: text, json (as --json) or openmetrics.
Format = Annotated[str | None, typer.Option(
    "--format", metavar="FORMAT", parser=choice(FORMATS, "an output format"), show_default="text",
    help="text, json (as --json) or openmetrics (Prometheus node_exporter textfile collector, needs the metrics "
         "extra: a summary per step that stalls or discriminates, the rest summed, the verdict as an info "
         "metric)")]

#: ``-s/--sequence``: a named sequence or a sequence file.
def sequence_option(default_help: str) -> Any:
    """``-s/--sequence NAME|FILE``; ``default_help`` says what the default is."""
    return typer.Option("-s", "--sequence", metavar="NAME|FILE", autocompletion=complete_sequences,
                        show_default=default_help,
                        help="a named sequence (minivmm model --list-sequences) or a sequence file (docs/model.md, "
                             "'Sequence files')")
