"""The JSON documents ``minivmm`` prints with ``--json``, their version and their JSON Schema files.

Every document is a JSON object whose first two keys are ``schema_version`` (an integer, raised when a
field is renamed, removed or changes meaning; adding a field does not raise it) and ``kind`` (which
command made it: ``boot``, ``info``, ``model``, ``timing``, ``compare``, ``trace``, ``repro``; ``churn`` is
``timing --churn``, ``calibration`` is ``timing --calibrate``). Durations carry their
unit in the field name (``_ns``, ``_us``, ``_ms``, ``_s``). ``<kind>.schema.json`` in this package
describes each kind (JSON Schema draft 2020-12); the tests validate every output against it.

A reader of a document (``minivmm compare``, the gate) checks ``kind`` and ``schema_version`` first and
refuses a version newer than :data:`SCHEMA_VERSIONS` knows, rather than misreading renamed fields.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: The current version of each kind of document. A command's output carries exactly this version.
#: Version 2 of model, timing, compare and trace: ``step`` is the step's number, from 1
#: (:func:`kernel_model.sequences.step_number`), no longer its 0-based position. Version 3 of timing and
#: trace: the verdict from likelihoods replaces the mean log ratio ``fit``, and ``host.load_average``;
#: compare version 3: each step's change is of its trimmed mean (``delta_us``), by a permutation test.
SCHEMA_VERSIONS: dict[str, int] = {
    "boot": 1,
    "info": 1,
    "model": 2,
    "timing": 3,
    "compare": 3,
    "trace": 3,
    "repro": 1,
    "churn": 1,
    "calibration": 1,
}

#: The oldest version of a kind that readers still take, where it is older than the current one: a
#: timing document of version 1 differs only in how ``step`` counts, which comparison does not read,
#: so baselines recorded before keep working.
OLDEST_READABLE: dict[str, int] = {"timing": 1}


def stamp(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as a versioned document: ``schema_version`` and ``kind`` first, then its own keys.

    Raises KeyError for a kind this module does not know (a new command adds its kind here and its
    schema file beside this module)."""
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSIONS[kind], "kind": kind}
    doc.update((k, v) for k, v in payload.items() if k not in doc)
    return doc


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``kind`` (read from ``<kind>.schema.json`` in this package)."""
    if kind not in SCHEMA_VERSIONS:
        raise KeyError(f"unknown document kind {kind!r}")
    text = resources.files(__name__).joinpath(f"{kind}.schema.json").read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result
