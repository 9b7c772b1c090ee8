"""Every CLI command on toy inputs: exit codes, files written, one-line errors (typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import FACTS, NEW_TARGETS, UNRELATED, tiny_config, write_edit_files
from meg.cli.main import app
from meg.encoder import EncoderConfig

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fact_gpt2, tokenizer):
    """A saved tiny model, an 8-record edit file, pseudo pairs, unrelated queries and a tiny MeG config."""
    root = write_edit_files(tmp_path_factory.mktemp("cli"), fact_gpt2, tokenizer)
    (root / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    # `meg run` builds its pseudo pairs from the data; the shipped encoder spares tuning on them (3 CPU minutes).
    (root / "run-config.json").write_text(json.dumps(tiny_config(encoder=EncoderConfig()).to_dict()))
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_edit_then_generate(workspace):
    w = workspace
    result = invoke("edit", "--model", w / "model", "--edits", w / "edits.jsonl", "--out", w / "pack",
                    "--pseudo-pairs", w / "pairs.jsonl", "--unrelated", w / "unrelated.jsonl", "--config", w / "config.json")
    assert result.exit_code == 0, result.output
    assert "8 edits" in result.output and (w / "pack" / "pack_config.json").is_file()
    result = invoke("generate", "--model", w / "model", "--pack", w / "pack", "--prompt", FACTS[0][0],
                    "--prompt", UNRELATED[0], "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.strip().splitlines()]
    assert lines[0]["routed"] and lines[0]["output"].strip().rstrip(".") == NEW_TARGETS[0]
    assert not lines[1]["routed"]


def test_edit_refuses_to_overwrite(workspace):
    w = workspace
    (w / "taken").mkdir(exist_ok=True)
    result = invoke("edit", "--model", w / "model", "--edits", w / "edits.jsonl", "--out", w / "taken")
    assert result.exit_code == 2 and "already exists" in result.output


def test_run_writes_the_report_and_resumes(workspace):
    w, out = workspace, workspace / "run"
    args = ("run", "--model", w / "model", "--data", w / "edits.jsonl", "--n", "8", "--out", out, "--config", w / "run-config.json")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf", "score"}
    assert report["metrics"]["rel_ag"] >= 75.0 and report["metrics"]["loc_ag"] == 100.0
    assert report["cases"] == 8 and "locality" in report["protocol"] and report["setup"]["n_used"] == 8
    assert set(report["wall_seconds"]) >= {"load", "pre_edit_outputs", "edit", "evaluate", "total"}
    assert "| Rel-AG |" in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {"prompt", "generated", "expected", "ag", "routed"} <= set(records[0]["reliability"])
    # A second call finds the pack and the records: nothing is edited or scored again.
    again = invoke(*args)
    assert again.exit_code == 0 and (out / "records.jsonl").read_text().count("\n") == 8
    # Changing a setting without --overwrite is refused.
    changed = invoke("run", "--model", w / "model", "--data", w / "edits.jsonl", "--n", "4", "--out", out)
    assert changed.exit_code == 2 and "holds a run with other settings" in changed.output


def test_eval_an_existing_pack(workspace):
    w = workspace
    if not (w / "pack").exists():
        test_edit_then_generate(w)
    result = invoke("eval", "--model", w / "model", "--pack", w / "pack", "--data", w / "edits.jsonl", "--out", w / "eval")
    assert result.exit_code == 0, result.output
    assert json.loads((w / "eval" / "report.json").read_text())["cases"] == 8


def test_carryover_of_an_existing_pack(workspace, tmp_path):
    w = workspace
    if not (w / "pack").exists():
        test_edit_then_generate(w)
    result = invoke("carryover", "--model", w / "model", "--pack", w / "pack", "--data", w / "edits.jsonl",
                    "--out", tmp_path, "--name", "carry")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "carry.json").read_text())["summaries"]["paraphrase"]
    assert summary["cases"] == 8 and 0 <= summary["routed_own"] <= 100 and (tmp_path / "carry.png").is_file()
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "The capital of Peru is", "target": "Lima", "paraphrases": ["Peru's capital"]}))
    result = invoke("carryover", "--model", w / "model", "--pack", w / "pack", "--data", other, "--out", tmp_path)
    assert result.exit_code == 2 and "none of its records is an edit of --pack" in result.output


def test_bad_edit_file_is_one_line(workspace, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "The capital of France is"}\n')
    result = invoke("edit", "--model", workspace / "model", "--edits", bad, "--out", tmp_path / "p")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad} record 0: missing field 'target'"


def test_env_prints_versions():
    result = invoke("env")
    assert result.exit_code == 0 and '"torch"' in result.output


def test_bench_compares_methods_and_resumes(workspace, tmp_path):
    w = workspace
    (tmp_path / "configs.json").write_text(json.dumps({"ft": {"layer": 1, "lr": 1e-2, "steps": 10}}))
    args = ("bench", "--model", w / "model", "--data", w / "edits.jsonl", "--n", "8", "--methods", "unedited,ft",
            "--configs", tmp_path / "configs.json", "--out", tmp_path / "bench", "--results", tmp_path / "results",
            "--name", "tiny")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "results" / "tiny.json").read_text())
    rows = {r["method"]: r for r in bench["results"]}
    assert set(rows) == {"unedited", "ft"} and bench["setup"]["n_used"] == 8
    assert rows["unedited"]["metrics"]["loc_ag"] == 100.0 and rows["ft"]["metrics"]["rel_ag"] > 0
    assert rows["ft"]["queries_per_second"] > 0 and rows["ft"]["peak_rss_mb"] > 0
    assert (tmp_path / "results" / "tiny.md").is_file() and (tmp_path / "results" / "tiny.png").is_file()
    conflicting = bench["setup"]["conflicting_locality"]  # locality prompts asking an edited fact, left out here:
    assert rows["unedited"]["clean_locality"] == {"loc_ag": 100.0, "loc_tf": 100.0, "prompts": 8 - conflicting}
    # A second call reads every finished method back instead of editing again.
    (tmp_path / "bench" / "ft" / "records.jsonl").unlink()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "results" / "tiny.json").read_text())["results"] == bench["results"]
    assert not (tmp_path / "bench" / "ft" / "records.jsonl").exists()
    # Another FT config: the row is evaluated afresh, its old records and result set aside, not resumed or deleted.
    (tmp_path / "configs.json").write_text(json.dumps({"ft": {"layer": 1, "lr": 1e-6, "steps": 1}}))
    changed = invoke(*args)
    assert changed.exit_code == 0, changed.output
    row = {r["method"]: r for r in json.loads((tmp_path / "results" / "tiny.json").read_text())["results"]}["ft"]
    assert row["metrics"]["rel_ag"] < rows["ft"]["metrics"]["rel_ag"] and row["stats"]["config"]["lr"] == 1e-6
    aside = list((tmp_path / "bench" / "ft").glob("superseded-*/bench_result.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["result"] == rows["ft"]


def test_records_longer_than_the_context_are_refused_before_the_model_loads(workspace, tmp_path):
    """KnowEdit's WikiData counterfact holds a 111-token prompt; the reference model reads 128 with 20 generated."""
    from meg.evaluation.runner import RunConfig, check_run

    data = tmp_path / "long.jsonl"
    rows = [{"prompt": FACTS[0][0], "target": NEW_TARGETS[0]}, {"prompt": "word " * 60 + "is", "target": "Paris"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("run", "--model", workspace / "model", "--data", data, "--n", "1", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "record 1: prompt" in result.stderr and "context of 64" in result.stderr
    kept = check_run(RunConfig(model=str(workspace / "model"), data=str(data), n=1, skip_invalid=True),
                     tmp_path / "r2", overwrite=False)
    assert [r.prompt for r in kept.requests] == [FACTS[0][0]]
