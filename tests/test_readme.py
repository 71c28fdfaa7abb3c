"""The README's two commands are the ones CI runs, word for word."""

from __future__ import annotations

import re

from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", quick, re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert "minivmm boot guest/hello.bin" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        assert command in ci_lines


def test_the_readme_boot_sample_is_what_boot_prints():
    """The sample in 'What a boot looks like' stays current: the same lines as a real run, timings aside."""
    import pytest
    from conftest import KVM_SKIP_REASON, run_cli
    if KVM_SKIP_REASON:
        pytest.skip(f"needs /dev/kvm: {KVM_SKIP_REASON}")
    text = (ROOT / "README.md").read_text()
    sample = text.split("$ minivmm boot guest/hello.bin\n", 1)[1].split("```", 1)[0].splitlines()
    proc = run_cli("boot", "guest/hello.bin")
    assert proc.returncode == 0, proc.stderr
    real = proc.stdout.splitlines()
    assert len(sample) == len(real)
    for ours, theirs in zip(sample, real):
        if ours.startswith("timings"):
            assert theirs.startswith("timings    set-up ")
        else:
            assert ours == theirs


def test_the_readme_exit_code_table_is_the_exit_code_enum():
    """README's "Exit codes" table and ``minivmm --help`` both say what ``ExitCode`` says, row for row."""
    from conftest import run_cli

    from minivmm.cli.errors import ExitCode
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes\n", 1)[1].strip().split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    assert [(int(code), " ".join(meaning.split())) for code, meaning in rows] == \
        [(int(c), c.description) for c in ExitCode]
    help_text = " ".join(run_cli("--help").stdout.split())
    for code in ExitCode:
        assert f"{int(code)} {code.description}" in help_text
