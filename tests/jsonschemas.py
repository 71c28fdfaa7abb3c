"""Validate a minivmm JSON document against its schema file (``minivmm/schemas/<kind>.schema.json``)
with the ``jsonschema`` library (a test-only dependency)."""

from __future__ import annotations

from typing import Any

import jsonschema
from referencing import Registry, Resource

from minivmm.schemas import SCHEMA_VERSIONS, schema


def registry() -> Registry:
    """Every schema file, under its ``$id``, so that cross-file ``$ref`` resolve."""
    resources = [(s["$id"], Resource.from_contents(s)) for s in (schema(k) for k in SCHEMA_VERSIONS)]
    return Registry().with_resources(resources)


def validate(doc: Any, kind: str | None = None) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` matches the schema of its ``kind``."""
    kind = kind or doc["kind"]
    validator = jsonschema.Draft202012Validator(schema(kind), registry=registry(),
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(doc)
