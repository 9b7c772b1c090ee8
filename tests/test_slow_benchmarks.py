"""The benchmark tier (`pytest -m slow`, minutes each, not in CI): full-size runs on the shipped reference model
with floors taken from the committed results, so a regression in quality shows up as a failure."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meg.benchmarks.routing import route_bench
from meg.cli.main import app
from meg.data.defaults import default_pseudo_pairs, default_unrelated, demo_requests
from meg.models import reference_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (reference_model_path() / "config.json").is_file(), reason="reference model not built"),
]


def test_full_demo_meets_its_recorded_quality(tmp_path, monkeypatch):
    """`meg demo` as users run it (256 edits, empty cache); measured 2026-12-01 (500 generator steps, one thread):
    Rel-AG 99.2, Gen-AG 89.5, Loc-AG 99.2, Score 95.9, 5:00 wall, 1.9 GB peak RSS (docs/LOG.md)."""
    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "demo" / "report.json").read_text())["metrics"]
    assert metrics["rel_ag"] >= 97.0 and metrics["gen_ag"] >= 85.0 and metrics["loc_ag"] >= 97.0


def test_default_router_separates_paraphrases_from_neighbours(tmp_path):
    """The default router on the shipped 300 demo edits: the issue's targets (>= 95% / <= 2%) with slack."""
    bench = route_bench(demo_requests(), ["retrieval/default"], default_pseudo_pairs(), default_unrelated(), tmp_path,
                        progress=False)
    point = bench["variants"]["retrieval/default"]["operating_point"]
    assert point["edit_own"] >= 98.0 and point["paraphrase_own"] >= 93.0 and point["locality_routed"] <= 3.0
