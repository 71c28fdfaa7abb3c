"""The gate's exit codes cannot lie: 1 means only "a step regressed". A hostile document (numbers out of
range, lone surrogates, control characters, deep nesting) is one line and exit 2; a bug is one line
and 125; the decision survives a reader that has gone; nothing untrusted reaches the terminal raw."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_compare import A, B, planted, recorded, write

from minivmm.cli.app import main

TERMINAL_CONTROLS = ("\x1b", "\x07", "\r", "\x9b")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_clean_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivmm: error: "), err
    assert not any(c in err for c in TERMINAL_CONTROLS), repr(err)
    return lines[0]


def with_raw(doc: dict, where: list, raw: str) -> str:
    """``doc`` as JSON text with the value at ``where`` (a key path) replaced by the raw JSON ``raw``:
    how a number json.dumps cannot write (10^400, NaN) gets into a file."""
    marker = "@@RAW@@"
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = marker
    return json.dumps(doc).replace(json.dumps(marker), raw)


HOSTILE = {
    "hz of 10^400": (["host", "hz"], "1" + "0" * 400, "out of range"),
    "hz of 1e400": (["host", "hz"], "1e400", "out of range"),
    "hz of 20000": (["host", "hz"], "20000", "out of range"),
    "a sample of 10^400 ns": (["steps", 8, "samples_ns", 0], "1" + "0" * 400, "out of range"),
    "a sample of 1e400 ns": (["steps", 8, "samples_ns", 0], "1e400", "out of range"),
    "a sample of 10^15 ns": (["steps", 8, "samples_ns", 0], "1" + "0" * 15, "samples_ns must hold integers"),
    "NaN pressure": (["host", "cpu_pressure_pct"], "NaN", "not a number JSON allows"),
    "Infinity repetitions": (["repetitions"], "Infinity", "not a number JSON allows"),
    "a lone surrogate in a label": (["steps", 8, "label"], '"slot \\ud800"', "lone surrogate"),
    "an OSC title in the kernel": (["host", "kernel"], '"\\u001b]0;pwned\\u0007"', "control character"),
    "a CR in the platform": (["host", "platform"], '"pvm\\rvmx"', "control character"),
    "a C1 CSI in the sequence": (["sequence"], '"registrations-first\\u009b2J"', "control character"),
    "nesting 1000 deep": (["host", "srcutree_params"], "[" * 1000 + "]" * 1000, "nested more than"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_current_or_baseline_is_one_line_and_exit_2(capsys, tmp_path, name):
    where, raw, fragment = HOSTILE[name]
    bad = tmp_path / "bad.json"
    bad.write_text(with_raw(recorded(B), where, raw))
    for args in (("compare", "--gate", str(A), str(bad)), ("compare", "--gate", str(bad), str(A)),
                 ("compare", str(A), str(bad)),
                 ("timing", "--baseline", str(bad), "--hz", "250", "--platform", "pvm", "-r", "1",
                  "--kvm", str(tmp_path / "no-kvm"))):
        code, out, err = cli(capsys, *args)
        assert code == 2 and out == "", (name, args, code, err)
        assert fragment in one_clean_line(err), (name, err)


def test_a_file_name_with_escape_sequences_is_printed_escaped(capsys, tmp_path):
    evil = tmp_path / "run\x1b]0;pwned\x07.json"
    evil.write_text(json.dumps(recorded(B)))
    code, out, err = cli(capsys, "compare", "--gate", str(A), str(evil))
    assert code == 0 and err == ""
    assert not any(c in out for c in TERMINAL_CONTROLS) and "\\x1b]0;pwned\\x07" in out


def test_a_bug_under_the_gate_is_one_line_and_125_never_a_traceback_and_1(capsys, tmp_path, monkeypatch):
    import minivmm.compare.gate as gate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")
    monkeypatch.setattr(gate, "decide", broken)
    code, out, err = cli(capsys, "compare", "--gate", str(A), str(B))
    assert code == 125 and "internal error: ZeroDivisionError" in one_clean_line(err)


def test_the_decision_is_the_exit_status_when_the_reader_has_gone(tmp_path):
    """``compare --gate A slow.json | head`` with head gone before the first line: still 1."""
    slow = write(tmp_path, "slow.json", planted())
    for extra in ((), ("--json",)):
        p = subprocess.Popen([sys.executable, "-m", "minivmm", "compare", "--gate", *extra, str(A), slow],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # the reader goes away before anything is written
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 1, err
        assert "Traceback" not in err
    assert subprocess.run([sys.executable, "-m", "minivmm", "compare", "--gate", str(A), str(B)],
                          stdout=subprocess.DEVNULL, cwd=ROOT, timeout=120).returncode == 0


# --- fuzz: hostile values anywhere in a document ------------------------------------------------------

NUMBERS = st.sampled_from(["1" + "0" * 400, "-1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
                           "1" + "0" * 25, "123456789012345678901"])
STRINGS = st.sampled_from(['"\\ud800"', '"\\udfff tail"', '"\\u001b[2J"', '"\\u001b]0;t\\u0007"', '"a\\rb"',
                           '"\\u0000"', '"\\u009b"', '"\\u007f"', json.dumps("x" * 5000)])
NESTING = st.integers(min_value=65, max_value=3000).map(lambda n: "[" * n + "]" * n)
HOSTILE_VALUES = st.one_of(NUMBERS, STRINGS, NESTING)


def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path in ``doc`` (the places a hostile value can go)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):  # the first few items of each list stand for the rest
            out += _paths(v, prefix + (i,))
    return out


BASE_DOC = recorded(B)
PATHS = _paths(BASE_DOC)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), raw=HOSTILE_VALUES, as_baseline=st.booleans(), gate=st.booleans())
def test_fuzzed_documents_never_traceback_and_never_exit_1(capsys, tmp_path, where, raw, as_baseline, gate):
    bad = tmp_path / "fuzzed.json"
    bad.write_text(with_raw(json.loads(json.dumps(BASE_DOC)), list(where), raw))
    files = [str(bad), str(A)] if as_baseline else [str(A), str(bad)]
    code, out, err = cli(capsys, "compare", *(["--gate"] if gate else []), *files)
    assert code != 1 and "Traceback" not in err
    if code == 2:
        one_clean_line(err)
    else:  # the hostile value sat where nothing is read (a verdict's text, say): still nothing raw printed
        assert code in (0, 125) and not any(c in out + err for c in TERMINAL_CONTROLS)
    code, _, err = cli(capsys, "timing", "--baseline", str(bad), "--hz", "250", "--platform", "pvm", "-r", "1",
                       "--kvm", os.path.join(str(tmp_path), "no-kvm"))
    assert code in (2, 125) and "Traceback" not in err
    one_clean_line(err)
