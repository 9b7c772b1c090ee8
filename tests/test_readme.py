"""The README is a contract: its quick start runs as written, with the public API it imports."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import meg
from meg.models import reference_model_path

README = Path(__file__).resolve().parents[1] / "README.md"


def first_block(heading: str) -> str:
    """The first Python block under a README heading."""
    section = README.read_text(encoding="utf-8").split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def quick_start() -> str:
    return first_block("Quick start")


def test_the_public_api_is_what_the_readme_imports():
    imported = re.search(r"from meg import ([^\n]+)", quick_start()).group(1).split(", ")
    assert set(imported) == {"MegEditor", "EditedModel", "EditPack", "MegConfig", "EditRequest", "load_causal_lm"}
    for name in imported:
        assert name in meg.__all__ and getattr(meg, name) is not None


@pytest.mark.integration
@pytest.mark.skipif(not (reference_model_path() / "config.json").is_file(), reason="reference model not built")
def test_the_quick_start_and_the_lifelong_example_run_as_written(tmp_path, monkeypatch):
    """Default settings, one edit: the shipped encoder and verifier are used, nothing is tuned first. Then the
    lifelong block on its pack (one session, as a reader runs them): it prints what the README states."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))
    out, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(quick_start(), str(README), "exec"), scope)  # noqa: S102 (the README's own code)
    answers, described = out.getvalue().splitlines()[:2]
    assert "English" in answers.split("', '")[0]  # the edited fact, asked in other words (measured: " English.")
    assert "'routed': True" in described and "'edit': 0" in described
    assert (tmp_path / "darrieux-pack" / "pack_config.json").is_file()
    with contextlib.redirect_stdout(out):
        exec(compile(first_block("Lifelong editing"), str(README), "exec"), scope)  # noqa: S102
    stated = re.search(r"prints `(\[.*?\])`", README.read_text(encoding="utf-8").split("## Lifelong editing", 1)[1])
    assert out.getvalue().splitlines()[-1] == stated.group(1)
    assert (tmp_path / "darrieux-pack-3" / "pack_config.json").is_file()
