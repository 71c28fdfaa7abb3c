"""The documentation says what the code does: its links lead somewhere, its samples are real output,
and every option, named sequence and command is documented where a user looks for it."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, run_cli

from kernel_model.sequences import SEQUENCES

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "kernel_model" / "README.md",
         *sorted(DOCS.rglob("*.md"))]

#: The page that documents each command (shared options are on docs/command-line.md).
COMMAND_PAGES = {"boot": "boot.md", "timing": "timing.md", "trace": "trace.md", "model": "model.md",
                 "compare": "compare.md", "repro": "repro.md", "info": "command-line.md"}
#: Pages that document some of a command's options besides its own: the shadow's (boot's --inject,
#: --guest-iterations), host profiles (--calibrate, --profile), the gate (timing --baseline).
MORE_PAGES = {"boot": ["shadow.md", "guests.md"], "timing": ["profiles.md", "compare.md"], "model": ["profiles.md"]}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading"


def test_every_command_has_its_page_and_the_readme_names_it():
    top = run_cli("--help").stdout
    commands = set(re.findall(r"^  ([a-z]+) ", top.split("Commands:", 1)[1], re.M))
    assert commands == set(COMMAND_PAGES), commands
    readme = (ROOT / "README.md").read_text()
    for command, page in COMMAND_PAGES.items():
        assert (DOCS / page).exists() and f"minivmm {command}" in readme, command


@pytest.mark.parametrize("command", sorted(COMMAND_PAGES))
def test_every_option_of_a_command_is_on_its_page_or_the_shared_page(command):
    options_part = run_cli(command, "--help").stdout.split("Options:", 1)[1]
    help_text = re.split(r"Exit status|Exit codes:", options_part)[0]  # exit-code tables name other commands' options
    options = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][\w-]*)", help_text, re.M)) - {"--help"}
    pages = [COMMAND_PAGES[command], "command-line.md", *MORE_PAGES.get(command, [])]
    documented = "".join((DOCS / page).read_text() for page in pages)
    missing = sorted(o for o in options if o not in documented)
    assert not missing, f"minivmm {command}: {missing} documented nowhere a user looks"


def test_every_named_sequence_is_documented():
    page = (DOCS / "model.md").read_text()
    assert [name for name in SEQUENCES if f"`{name}`" not in page] == []


def test_a_show_sequence_sample_is_what_the_command_prints():
    for page in DOCS.rglob("*.md"):
        for name, shown in re.findall(r"\$ minivmm model --show-sequence (\S+)\n(.*?)```", page.read_text(), re.S):
            assert run_cli("model", "--show-sequence", name).stdout == shown, (page.name, name)


def test_model_samples_are_what_the_command_prints():
    # A sample of `minivmm model` (deterministic: the model's seed is fixed) shows some of its lines,
    # "..." standing for the rest; each line shown must begin a line the command prints now.
    samples = re.findall(r"```text\n\$ minivmm (model [^\n]*)\n(.*?)```", (DOCS / "model.md").read_text(), re.S)
    assert samples, "docs/model.md has no `minivmm model` sample"
    for command, shown in samples:
        if "--show-sequence" in command:
            continue  # checked whole above
        printed = run_cli(*command.split()).stdout.splitlines()
        for line in shown.splitlines():
            head = line.removesuffix("...").rstrip()
            if head:
                assert any(out.startswith(head) for out in printed), (command, line)


def test_the_readme_s_first_runs_use_options_that_exist():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("A few first runs:", 1)[1].split("```", 2)[1]
    for line in block.splitlines():
        m = re.match(r"minivmm (\w+)(.*?)(?:#|$)", line)
        if not m:
            continue
        help_text = run_cli(m.group(1), "--help").stdout
        for option in re.findall(r"(?<!\S)(--[a-z][\w-]*|-[a-zA-Z])(?=[\s=]|$)", m.group(2).split(" -- ")[0]):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), (line, option)
