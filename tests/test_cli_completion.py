"""Shell completion, as bash asks for it: through COMP_WORDS/COMP_CWORD and _MINIVMM_COMPLETE=complete_bash
(the protocol typer and click document), and end to end through the script --show-completion prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from kernel_model.platforms import PLATFORMS
from kernel_model.sequences import SEQUENCES
from kernel_model.variants import VARIANTS


def complete(words: str) -> list[str]:
    """What minivmm offers for the last word of ``words`` (a trailing space: a new, empty word)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**os.environ, "_MINIVMM_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    proc = subprocess.run([sys.executable, "-m", "minivmm"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.splitlines()


def test_commands_complete():
    assert complete("minivmm t") == ["timing", "trace"]
    assert complete("minivmm ") == ["boot", "timing", "trace", "model", "compare", "repro", "info"]


def test_sequence_names_complete_for_model_timing_and_repro():
    assert complete("minivmm model --sequence ") == list(SEQUENCES)
    assert complete("minivmm timing -s reg") == [s for s in SEQUENCES if s.startswith("reg")]
    assert complete("minivmm repro -s reg") == [s for s in SEQUENCES if s.startswith("reg")]


def test_platforms_complete():
    assert complete("minivmm timing --platform ") == list(PLATFORMS)
    assert complete("minivmm model --platform svm") == [p for p in PLATFORMS if p.startswith("svm")]
    assert complete("minivmm repro --platform ") == list(PLATFORMS)


def test_variants_complete():
    assert complete("minivmm model --variant call_srcu") == [v for v in VARIANTS if v.startswith("call_srcu")]
    assert "all" in complete("minivmm model -v ")


def test_options_complete():
    assert {"--mode", "--mem"} <= set(complete("minivmm boot --m"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_script_completes_in_bash():
    """The script ``--install-completion`` installs, sourced into bash, filling COMPREPLY."""
    bindir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bindir, "minivmm")):
        pytest.skip("the minivmm console script is not installed beside this interpreter")
    script = ('source <(minivmm --show-completion); COMP_WORDS=(minivmm timing --platform ""); COMP_CWORD=3; '
              '_minivmm_completion minivmm; printf "%s\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == list(PLATFORMS)
