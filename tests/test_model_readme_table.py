"""kernel_model/README.md's published-figures table is the model's output, not a copy of it."""

from __future__ import annotations

import pathlib

import pytest

from devtools.model_table import current_table, published_table, replace_table
from kernel_model.published import FIGURES

README = pathlib.Path(__file__).resolve().parent.parent / "kernel_model" / "README.md"


@pytest.mark.slow
def test_readme_table_matches_the_model():
    text = README.read_text()
    assert current_table(text) == published_table(), (
        "kernel_model/README.md's table is stale: run python scripts/gen_model_readme.py")


@pytest.mark.slow
def test_a_changed_figure_makes_the_table_stale():
    text = README.read_text()
    tampered = text.replace("0.025182 s after", "0.019000 s after")
    assert tampered != text
    assert current_table(tampered) != published_table()
    assert current_table(replace_table(tampered)) == published_table()


def test_every_figure_cites_a_public_source():
    for f in FIGURES:
        assert "seed" not in f.source.lower()
        assert "Kalyazin" in f.source or "Christopherson" in f.source or "Fraser" in f.source
        assert "2025" in f.source or "2026" in f.source
