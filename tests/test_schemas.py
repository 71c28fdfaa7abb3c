"""Every ``--json`` document carries ``schema_version`` and ``kind`` and validates against its schema file."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from conftest import ROOT, run_cli
from jsonschemas import validate

from minivmm.schemas import SCHEMA_VERSIONS, schema, stamp

DATA = ROOT / "tests" / "data"


@pytest.mark.parametrize("kind", sorted(SCHEMA_VERSIONS))
def test_every_schema_file_is_a_valid_schema_of_its_version(kind):
    s = schema(kind)
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["properties"]["schema_version"] == {"const": SCHEMA_VERSIONS[kind]}
    assert s["properties"]["kind"] == {"const": kind}


def test_stamp_puts_version_and_kind_first_and_knows_its_kinds():
    doc = stamp("info", {"kernel": "x", "kind": "ignored"})
    assert list(doc)[:2] == ["schema_version", "kind"] and doc["kind"] == "info"
    with pytest.raises(KeyError):
        stamp("nope", {})


def test_the_schema_package_data_is_declared_for_installs():
    assert '"minivmm.schemas" = ["*.schema.json"]' in (ROOT / "pyproject.toml").read_text()


def test_model_json_validates_and_a_unitless_field_does_not():
    proc = run_cli("model", "--json", "-n", "20", "--hz", "250", "--platform", "pvm")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate(doc, "model")
    bad = copy.deepcopy(doc)
    step = next(iter(bad["variants"].values()))["steps"][0]
    step["p50"] = step.pop("p50_us")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_model_explain_json_numbers_steps_from_1():
    proc = run_cli("model", "--json", "--explain", "-s", "registrations-first", "-v", "call_srcu", "-n", "20",
                   "--hz", "250", "--platform", "pvm")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate(doc, "model")
    steps = doc["variants"]["call_srcu"]["explanation"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    memslot = steps[8]
    assert memslot["label"] == "KVM_SET_USER_MEMORY_REGION, slot 0" and memslot["started_by_step"] == 2
    assert "started by step #2 KVM_CREATE_IRQCHIP" in memslot["text"]


def test_info_json_validates():
    proc = run_cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout), "info")


def test_recorded_timing_documents_validate_and_a_future_version_does_not():
    for path in sorted(DATA.glob("timing-*.json")):
        doc = json.loads(path.read_text())
        validate(doc, "timing")
    doc["schema_version"] += 1
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


@pytest.mark.kvm
def test_boot_json_validates():
    proc = run_cli("boot", "guest/mmio.bin", "--mode", "protected", "--json")
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout), "boot")


@pytest.mark.kvm
def test_timing_json_validates_with_raw_samples_in_ns():
    proc = run_cli("timing", "-s", "registrations-first", "-r", "3", "-n", "20", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate(doc, "timing")
    assert all(len(s["samples_ns"]) == 3 and all(isinstance(x, int) for x in s["samples_ns"]) for s in doc["steps"])


def test_the_boot_schema_knows_every_run_outcome():
    from minivmm.vmm.report import RunOutcome
    assert set(schema("boot")["properties"]["outcome"]["enum"]) == {o.value for o in RunOutcome}


def test_the_timing_schema_knows_every_platform():
    from kernel_model.platforms import PLATFORMS
    assert set(schema("timing")["properties"]["host"]["properties"]["platform"]["enum"]) == set(PLATFORMS)
