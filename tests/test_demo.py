"""`meg demo` end to end on the shipped reference model, shortened (16 edits, short training)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meg.cli.main import app
from meg.models import reference_model_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (reference_model_path() / "config.json").is_file(), reason="reference model not built"),
]


def test_quick_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["demo", "--quick", "--n", "16", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["cases"] == 16 and report["setup"]["model"] == "reference"
    assert report["metrics"]["loc_ag"] >= 90.0  # unrelated prompts stay on the unedited model
    assert "| edit | query |" in result.stdout and "| Rel-AG |" in result.stdout
