"""What each command imports: never pydantic (typer >= 0.29 would bring it, ~0.13 s of every run), never
rich unless a progress bar is drawn, and a command's implementation only when that command runs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

A = str(ROOT / "tests" / "data" / "timing-a.json")
B = str(ROOT / "tests" / "data" / "timing-b.json")
KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)

#: Runs the command line in-process, then writes the names of every module it imported to a file.
CHILD = """
import json, os, sys
from minivmm.cli.app import main
try:
    code = main(sys.argv[1:])
finally:
    with open(os.environ["MODULES_OUT"], "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(code)
"""

#: A --help and a cheap real run of every command (the kvm ones are skipped without /dev/kvm).
RUNS = {
    "--help": ["--help"],
    "boot --help": ["boot", "--help"],
    "boot": ["boot", "guest/hello.bin"],
    "timing --help": ["timing", "--help"],
    "timing": ["timing", "-r", "2", "-n", "10"],
    "trace --help": ["trace", "--help"],
    "trace": ["trace", "--no-explain", "--", "true"],
    "model --help": ["model", "--help"],
    "model": ["model", "-n", "10"],
    "compare --help": ["compare", "--help"],
    "compare": ["compare", A, B],
    "info --help": ["info", "--help"],
    "info": ["info"],
}
NEEDS_KVM = {"boot", "timing"}


def imported_by(argv: list[str], tmp_path) -> set[str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "MODULES_OUT": str(out)})
    assert "Traceback" not in proc.stderr, proc.stderr
    return set(json.loads(out.read_text()))


def test_typer_is_a_version_without_pydantic():
    major, minor = (int(x) for x in importlib.metadata.version("typer").split(".")[:2])
    assert (major, minor) < (0, 29)


@pytest.mark.parametrize("name", list(RUNS))
def test_no_command_imports_pydantic_or_rich_on_a_pipe(name, tmp_path):
    if name in NEEDS_KVM and not KVM:
        pytest.skip("needs /dev/kvm")
    modules = imported_by(RUNS[name], tmp_path)
    assert "typer" in modules  # the check below would be empty otherwise
    assert not {m for m in modules if m.split(".")[0] in ("pydantic", "pydantic_core")}
    assert not {m for m in modules if m.split(".")[0] == "rich"}  # stderr is a pipe here: no bar, no rich


@pytest.mark.parametrize("name", ["--help", "boot --help", "timing --help", "trace --help", "compare --help"])
def test_help_imports_no_command_implementation(name, tmp_path):
    modules = imported_by(RUNS[name], tmp_path)
    # (minivmm.vmm.layout, the guest memory layout's constants, gives boot's defaults: it is data)
    implementations = ("minivmm.vmm.machine", "minivmm.vmm.vcpu_loop", "minivmm.kvm.vm", "minivmm.timing.",
                       "minivmm.trace.", "minivmm.compare.ab", "kernel_model.sequences", "kernel_model.predict",
                       "minivmm.host")
    assert not {m for m in modules if m.startswith(implementations)}, name


def test_a_run_of_one_command_builds_that_command_only(tmp_path):
    modules = imported_by(RUNS["model"], tmp_path)
    assert {m for m in modules if m.startswith("minivmm.cli.") and m.endswith("_cmd")} == {"minivmm.cli.model_cmd"}


def test_rich_is_imported_only_when_a_bar_is_drawn():
    """On a terminal the bar is drawn with rich; into a pipe, rich is not even imported (the test above)."""
    import io

    from minivmm.progress import ProgressBar, Working

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    out = Terminal()
    with ProgressBar("timing x", 4, out) as bar:
        for done in range(5):
            bar.update(done)
    assert "timing x" in out.getvalue() and "4/4" in out.getvalue()
    pipe = io.StringIO()
    with ProgressBar("timing x", 4, pipe) as bar, Working("explaining", pipe):
        bar.update(4)
    assert pipe.getvalue() == ""
