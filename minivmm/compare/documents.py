"""Reading ``minivmm timing --json`` documents back, with one clear line for every way a file can be wrong.

A comparison or a gate decision is only as good as the files it reads, so the reader checks what it
uses: that the file exists and is a regular file, is not empty or cut short, is JSON, is a ``timing``
document of a schema version this minivmm knows, and that every step has its raw samples. The checks
are the subset of ``minivmm/schemas/timing.schema.json`` that comparison depends on (the full schema is
checked by the tests, with the ``jsonschema`` library, which is not a run-time dependency).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kernel_model.sequences import step_name
from minivmm.safetext import safe
from minivmm.schemas import OLDEST_READABLE, SCHEMA_VERSIONS

#: The bounds of what a timing document may say: HZ as ``--hz`` takes it, repetitions as ``--repeat``
#: does, and a sample of at most 1000 s (a set-up ioctl that took longer is not a measurement).
MAX_HZ = 10_000
MAX_REPETITIONS = 100_000
MAX_SAMPLE_NS = 1000 * 10**9
#: Longer strings are not labels, kernel releases or platforms: refused rather than printed.
MAX_STRING = 4096


class DocumentError(ValueError):
    """A file that cannot be used as a timing document; the message is one line naming the file."""


@dataclass(frozen=True)
class StepSamples:
    """One step of a timing document: its position in the document's steps (0-based), op, label and raw
    samples (ns)."""

    index: int
    op: str
    label: str
    samples_ns: list[int]

    @property
    def name(self) -> str:
        """``#9 KVM_SET_USER_MEMORY_REGION, slot 0``: labels repeat (a register and its deassign), the
        step's number (:func:`kernel_model.sequences.step_number`) makes the name unique."""
        return step_name(self.index, self.label)


@dataclass(frozen=True)
class TimingDocument:
    """The parts of a timing document that comparison uses, plus the whole document."""

    path: str
    sequence: str
    repetitions: int
    kernel: str
    hz: int
    platform: str
    steps: list[StepSamples]
    data: dict[str, Any]
    cpu_pressure_pct: float | None = None
    load_average: tuple[float, float, float] | None = None

    @property
    def shape(self) -> list[tuple[str, str]]:
        """The sequence's steps as (op, label): two documents are comparable when these are equal."""
        return [(s.op, s.label) for s in self.steps]


def read_json(path: str, what: str = "file") -> Any:
    """Read one JSON file through the one file reader (:func:`minivmm.files.read_json`: a non-empty
    regular file of at most :data:`minivmm.files.DOCUMENT_MAX` bytes, nested at most a few levels, a
    document cut short named as such), raising :class:`DocumentError` with one line for every failure."""
    from minivmm.files import DOCUMENT_MAX, FileRefused
    from minivmm.files import read_json as read_json_file

    try:
        return read_json_file(path, what, DOCUMENT_MAX)
    except FileRefused as e:
        raise DocumentError(str(e)) from None


#: The kinds of document whose steps have the timing shape: ``minivmm timing --json``, and the --json
#: of a program ``minivmm repro`` wrote (the same steps, measured by the C reproducer).
TIMING_SHAPED = ("timing", "repro")


def check_version(data: Any, path: str, kind: str, what: str = "file",
                  also: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check that ``data`` is a document of ``kind`` (or of a kind in ``also``) whose schema version this
    minivmm reads."""
    if not isinstance(data, dict):
        raise DocumentError(f"{what} {safe(path)}: is JSON but not a minivmm document (a {type(data).__name__}, "
                            "not an object)")
    version = data.get("schema_version")
    doc_kind = data.get("kind")
    if version is None or doc_kind is None:
        raise DocumentError(f"{what} {safe(path)}: has no schema_version/kind: not the output of "
                            f"`minivmm {kind} --json` (or from a minivmm before schema version 1)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DocumentError(f"{what} {safe(path)}: schema_version {version!r} is not a positive integer")
    if doc_kind != kind and doc_kind not in also:
        raise DocumentError(f"{what} {safe(path)}: is a {doc_kind!r} document, not {kind!r} "
                            f"(made by `minivmm {safe(str(doc_kind))} --json`?)")
    kind = doc_kind
    known = SCHEMA_VERSIONS[kind]
    if version > known:
        raise DocumentError(f"{what} {safe(path)}: {kind} schema_version {version} is newer than this minivmm "
                            f"reads ({known}); upgrade minivmm to compare it")
    if version < OLDEST_READABLE.get(kind, known):
        raise DocumentError(f"{what} {safe(path)}: {kind} schema_version {version} is older than this minivmm "
                            f"reads ({known}); re-record it")
    return data


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], path: str, where: str,
           what: str) -> Any:
    """``obj[key]``, which must exist with one of ``types`` (booleans are not numbers here)."""
    if key not in obj:
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: {where}{key} is missing")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        value = None
    if not isinstance(value, types):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: {where}{key} should be "
                            f"{names}, is {json.dumps(obj[key])[:40]}")
    return value


def check_strings(data: Any, path: str, what: str = "file") -> None:
    """Refuse a document holding a string (a key or a value, anywhere) with a control character or a
    lone surrogate, or longer than :data:`MAX_STRING`: what a document says is printed, and such a
    string would act on the terminal (ESC, OSC, BEL, CR) or not encode as UTF-8. The walk is an
    explicit stack (no recursion, whatever the nesting)."""
    from minivmm.safetext import is_safe

    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, f"{where}.{safe(k)[:40]} (key)" if where else f"{safe(k)[:40]} (key)"))
                stack.append((v, f"{where}.{safe(k)[:40]}" if where else safe(k)[:40]))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise DocumentError(f"{what} {safe(path)}: the string at {where or 'the top'} is {len(value)} "
                                    f"characters long (at most {MAX_STRING}): refused")
            if not is_safe(value):
                raise DocumentError(f"{what} {safe(path)}: the string at {where or 'the top'} holds a control "
                                    f"character or a lone surrogate ({safe(value)[:40]}): refused")


def _bounded_int(obj: dict[str, Any], key: str, lo: int, hi: int, path: str, where: str, what: str) -> int:
    value: int = _field(obj, key, int, path, where, what)
    if not lo <= value <= hi:
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: {where}{key} is "
                            f"{str(value)[:24]}, out of range ({lo} to {hi})")
    return value


def parse_timing(data: Any, path: str, what: str = "file") -> TimingDocument:
    """Check a decoded timing document (or a reproducer's, whose steps have the same shape) and extract
    what comparison uses: every string printable (:func:`check_strings`), every number it uses in range."""
    doc = check_version(data, path, "timing", what, also=TIMING_SHAPED)
    check_strings(doc, path, what)
    sequence = _field(doc, "sequence", str, path, "", what)
    repetitions = _bounded_int(doc, "repetitions", 1, MAX_REPETITIONS, path, "", what)
    host = _field(doc, "host", dict, path, "", what)
    kernel = _field(host, "kernel", str, path, "host.", what)
    hz = _bounded_int(host, "hz", 1, MAX_HZ, path, "host.", what)
    platform = _field(host, "platform", str, path, "host.", what)
    pressure = host.get("cpu_pressure_pct")
    if pressure is not None and (isinstance(pressure, bool) or not isinstance(pressure, (int, float))
                                 or not 0 <= pressure <= 100):
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: host.cpu_pressure_pct should be "
                            f"a percentage, is {json.dumps(pressure)[:40]}")
    load = host.get("load_average")
    if load is not None and (not isinstance(load, (list, tuple)) or len(load) != 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1e6 for x in load)):
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: host.load_average should be "
                            f"three load averages, is {json.dumps(load)[:40]}")
    raw_steps = _field(doc, "steps", list, path, "", what)
    if not raw_steps:
        raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: no steps")
    steps = []
    for i, s in enumerate(raw_steps):
        where = f"steps[{i}]."
        if not isinstance(s, dict):
            raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: steps[{i}] is not an object")
        op = _field(s, "op", str, path, where, what)
        label = _field(s, "label", str, path, where, what)
        samples = _field(s, "samples_ns", list, path, where, what)
        if not samples:
            raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: {where}samples_ns is empty")
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_SAMPLE_NS for x in samples):
            raise DocumentError(f"{what} {safe(path)}: does not match the timing schema: {where}samples_ns must "
                                f"hold integers from 0 to {MAX_SAMPLE_NS} (nanoseconds)")
        steps.append(StepSamples(i, op, label, samples))
    return TimingDocument(path, sequence, repetitions, kernel, hz, platform, steps, doc,
                          None if pressure is None else float(pressure),
                          None if load is None else (float(load[0]), float(load[1]), float(load[2])))


def load_timing(path: str, what: str = "file") -> TimingDocument:
    """Read and check a ``minivmm timing --json`` file (see :class:`DocumentError` for the failures)."""
    return parse_timing(read_json(path, what), path, what)
