"""Reading ``minivmm timing --json`` documents back, with one clear line for every way a file can be wrong.

A comparison or a gate decision is only as good as the files it reads, so the reader checks what it
uses: that the file exists and is a regular file, is not empty or cut short, is JSON, is a ``timing``
document of a schema version this minivmm knows, and that every step has its raw samples. The checks
are the subset of ``minivmm/schemas/timing.schema.json`` that comparison depends on (the full schema is
checked by the tests, with the ``jsonschema`` library, which is not a run-time dependency).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from minivmm.schemas import SCHEMA_VERSIONS

#: Larger than any timing document (100 000 repetitions of a 20-step sequence is ~30 MB); a bigger
#: file is not one of ours, and reading it whole would only waste memory.
MAX_BYTES = 256 * 1024 * 1024


class DocumentError(ValueError):
    """A file that cannot be used as a timing document; the message is one line naming the file."""


@dataclass(frozen=True)
class StepSamples:
    """One step of a timing document: its index, op, label and raw samples (ns)."""

    index: int
    op: str
    label: str
    samples_ns: list[int]

    @property
    def name(self) -> str:
        """``#8 KVM_SET_USER_MEMORY_REGION, slot 0``: labels repeat (a register and its deassign), the
        index makes the step unique."""
        return f"#{self.index} {self.label}"


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

    @property
    def shape(self) -> list[tuple[str, str]]:
        """The sequence's steps as (op, label): two documents are comparable when these are equal."""
        return [(s.op, s.label) for s in self.steps]


def read_json(path: str, what: str = "file") -> Any:
    """Read one JSON file, raising :class:`DocumentError` with one line for every failure."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DocumentError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise DocumentError(f"{what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DocumentError(f"{what} {path}: is a directory, not a JSON file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or a device could block or never end; a timing document is always a regular file.
        raise DocumentError(f"{what} {path}: not a regular file")
    if st.st_size > MAX_BYTES:
        raise DocumentError(f"{what} {path}: {st.st_size} bytes is too large for a minivmm JSON document")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise DocumentError(f"{what} {path}: {e.strerror}") from None
    if not raw.strip():
        raise DocumentError(f"{what} {path}: is empty (was the run that wrote it interrupted?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError(f"{what} {path}: is not JSON (not UTF-8 text)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise DocumentError(f"{what} {path}: is truncated (the JSON ends after {len(raw)} bytes, "
                                "mid-document: was the run that wrote it interrupted?)") from None
        raise DocumentError(f"{what} {path}: is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DocumentError(f"{what} {path}: is not JSON this reader accepts (nested too deeply)") from None


def check_version(data: Any, path: str, kind: str, what: str = "file") -> dict[str, Any]:
    """Check that ``data`` is a document of ``kind`` whose schema version this minivmm reads."""
    if not isinstance(data, dict):
        raise DocumentError(f"{what} {path}: is JSON but not a minivmm document (a {type(data).__name__}, "
                            "not an object)")
    version = data.get("schema_version")
    doc_kind = data.get("kind")
    if version is None or doc_kind is None:
        raise DocumentError(f"{what} {path}: has no schema_version/kind: not the output of "
                            f"`minivmm {kind} --json` (or from a minivmm before schema version 1)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DocumentError(f"{what} {path}: schema_version {version!r} is not a positive integer")
    if doc_kind != kind:
        raise DocumentError(f"{what} {path}: is a {doc_kind!r} document, not {kind!r} "
                            f"(made by `minivmm {doc_kind} --json`?)")
    known = SCHEMA_VERSIONS[kind]
    if version > known:
        raise DocumentError(f"{what} {path}: {kind} schema_version {version} is newer than this minivmm "
                            f"reads ({known}); upgrade minivmm to compare it")
    if version < known:
        raise DocumentError(f"{what} {path}: {kind} schema_version {version} is older than this minivmm "
                            f"reads ({known}); re-record it")
    return data


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], path: str, where: str,
           what: str) -> Any:
    """``obj[key]``, which must exist with one of ``types`` (booleans are not numbers here)."""
    if key not in obj:
        raise DocumentError(f"{what} {path}: does not match the timing schema: {where}{key} is missing")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        value = None
    if not isinstance(value, types):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DocumentError(f"{what} {path}: does not match the timing schema: {where}{key} should be "
                            f"{names}, is {json.dumps(obj[key])[:40]}")
    return value


def parse_timing(data: Any, path: str, what: str = "file") -> TimingDocument:
    """Check a decoded timing document and extract what comparison uses."""
    doc = check_version(data, path, "timing", what)
    sequence = _field(doc, "sequence", str, path, "", what)
    repetitions = _field(doc, "repetitions", int, path, "", what)
    host = _field(doc, "host", dict, path, "", what)
    kernel = _field(host, "kernel", str, path, "host.", what)
    hz = _field(host, "hz", int, path, "host.", what)
    platform = _field(host, "platform", str, path, "host.", what)
    if hz < 1:
        raise DocumentError(f"{what} {path}: does not match the timing schema: host.hz is {hz}, not a tick rate")
    pressure = host.get("cpu_pressure_pct")
    if pressure is not None and (isinstance(pressure, bool) or not isinstance(pressure, (int, float))
                                 or not 0 <= pressure <= 100):
        raise DocumentError(f"{what} {path}: does not match the timing schema: host.cpu_pressure_pct should be "
                            f"a percentage, is {json.dumps(pressure)[:40]}")
    raw_steps = _field(doc, "steps", list, path, "", what)
    if not raw_steps:
        raise DocumentError(f"{what} {path}: does not match the timing schema: no steps")
    steps = []
    for i, s in enumerate(raw_steps):
        where = f"steps[{i}]."
        if not isinstance(s, dict):
            raise DocumentError(f"{what} {path}: does not match the timing schema: steps[{i}] is not an object")
        op = _field(s, "op", str, path, where, what)
        label = _field(s, "label", str, path, where, what)
        samples = _field(s, "samples_ns", list, path, where, what)
        if not samples:
            raise DocumentError(f"{what} {path}: does not match the timing schema: {where}samples_ns is empty")
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in samples):
            raise DocumentError(f"{what} {path}: does not match the timing schema: {where}samples_ns must "
                                "hold non-negative integers (nanoseconds)")
        steps.append(StepSamples(i, op, label, samples))
    return TimingDocument(path, sequence, repetitions, kernel, hz, platform, steps, doc,
                          None if pressure is None else float(pressure))


def load_timing(path: str, what: str = "file") -> TimingDocument:
    """Read and check a ``minivmm timing --json`` file (see :class:`DocumentError` for the failures)."""
    return parse_timing(read_json(path, what), path, what)
