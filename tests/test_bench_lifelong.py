"""`meg bench-lifelong` on a tiny GPT-2: rounds of edits per method, every edit so far evaluated, resumable."""

from __future__ import annotations

import itertools
import json
import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import FACTS, tiny_config, write_edit_files
from meg import files
from meg.baselines import alphaedit, ft, memit
from meg.benchmarks import lifelong
from meg.benchmarks.lifelong import METHODS, LifelongConfig, bench_lifelong, write_lifelong
from meg.cli.main import app
from meg.editor import MegEditor
from meg.errors import InputError
from meg.evaluation.runner import RunConfig
from meg.models import fingerprint, same_model
from meg.pack import EditPack

pytestmark = pytest.mark.integration
runner = CliRunner()
ROUNDS, PER_ROUND = 3, 4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fact_gpt2, tokenizer):
    """A saved tiny model, a 16-record edit file, pseudo pairs, unrelated queries and tiny method configs."""
    root = write_edit_files(tmp_path_factory.mktemp("lifelong"), fact_gpt2, tokenizer, edits=len(FACTS))
    # Layer 0 only: a delta after the final block cannot reach the prompt's last token from the subject's.
    located = {"layers": [0], "clamp_norm_factor": 4.0, "mom2_n_texts": 1500, "stats_dir": str(root / "stats")}
    configs = {"meg": tiny_config(weights="retrieved").to_dict(),  # no generator: the bookkeeping in seconds
               "ft": {"layer": 1, "lr": 1e-2, "steps": 10, "loss_tokens": "answer"},
               "memit": {**located, "mom2_update_weight": 15000.0}, "alphaedit": {**located, "l2": 1.0}}
    (root / "configs.json").write_text(json.dumps(configs))
    return root


def _config(w, methods=METHODS) -> LifelongConfig:
    run = RunConfig(model=str(w / "model"), data=str(w / "edits.jsonl"), pseudo_pairs=str(w / "pairs.jsonl"),
                    unrelated=str(w / "unrelated.jsonl"))
    configs = json.loads((w / "configs.json").read_text())
    return LifelongConfig(run, ROUNDS, PER_ROUND, tuple(methods),
                          {k: v for k, v in configs.items() if k in {lifelong.configured_as(m) for m in methods}})


def _bench(w, work, **kwargs):
    # No shipped calibration pairs: encoding 3,000 of them is most of a tiny fit's time.
    return bench_lifelong(_config(w), work, calibration_pairs=[], progress=False, log=lambda line: None, **kwargs)


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory):
    """The whole bench once, with every summary it reported after a row."""
    work, summaries = tmp_path_factory.mktemp("work") / "bench", []
    return work, _bench(workspace, work, on_row=summaries.append), summaries


def _records(work, method, k) -> list[dict]:
    return [json.loads(x) for x in (work / method / f"round-{k}" / files.RUN_RECORDS).read_text().splitlines()]


def test_every_round_is_evaluated_on_every_edit_so_far(finished):
    work, bench, summaries = finished
    rows = {(r["method"], r["round"]): r for r in bench["rows"]}
    sequential = [(m, k) for m in ("meg", "ft", "memit", "alphaedit") for k in range(1, ROUNDS + 1)]
    assert set(rows) == {*sequential, ("meg-batch", ROUNDS)}
    assert len(summaries) == len(rows) and summaries[-1]["rows"] == bench["rows"]  # reported as each row finished
    for method, k in sequential:
        row = rows[method, k]
        assert row["edits"] == k * PER_ROUND and row["edit_seconds"] >= 0 and row["edit_cpu_seconds"] >= 0
        assert [r["index"] for r in _records(work, method, k)] == list(range(k * PER_ROUND))
        assert set(row["metrics"]) == {"rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf", "score"}
        assert set(row["round1"]) == set(row["metrics"]) == set(row["latest"])  # retention, the round's own edits
    for method in ("meg", "ft", "memit", "alphaedit"):
        assert rows[method, 1]["round1"] == rows[method, 1]["metrics"] == rows[method, 1]["latest"]
    assert len(_records(work, "meg-batch", 1)) == ROUNDS * PER_ROUND
    # meg holds its edits across rounds: the round-1 edits still answered after the last add.
    assert rows["meg", ROUNDS]["round1"]["rel_ag"] >= 75.0 and rows["meg", ROUNDS]["metrics"]["loc_ag"] >= 75.0


def test_meg_adds_to_the_previous_pack_and_is_compared_with_one_batch(finished):
    work, bench, _ = finished
    pack = EditPack.load(work / "meg" / f"round-{ROUNDS}" / "pack", trust_models=True)
    assert [h["operation"] for h in pack.history] == ["fit", "add", "add"] and pack.ids == list(range(12))
    batch = EditPack.load(work / "meg-batch" / "round-1" / "pack", trust_models=True)
    assert [h["operation"] for h in batch.history] == ["fit"] and batch.requests == pack.requests
    rows = {(r["method"], r["round"]): r for r in bench["rows"]}
    assert rows["meg", 2]["stats"]["operation"] == "add" and rows["meg", 1]["stats"]["operation"] == "fit"
    timing = bench["add_vs_batch"]
    assert (timing["added"], timing["pack_before"], timing["batch_edits"]) == (PER_ROUND, 8, 12)
    assert timing["add_seconds"] == rows["meg", ROUNDS]["edit_seconds"]
    assert timing["batch_seconds"] == rows["meg-batch", ROUNDS]["edit_seconds"]
    assert timing["add_cpu_seconds"] == rows["meg", ROUNDS]["edit_cpu_seconds"] and timing["cpu_ratio"] > 0


def test_baselines_edit_the_previous_rounds_model(finished, workspace, fact_gpt2, tokenizer):
    work, _, _ = finished
    base = fact_gpt2.state_dict()
    for method in ("ft", "memit", "alphaedit"):
        first, second = (files.load_tensors(work / method / f"round-{k}" / "weights.safetensors") for k in (1, 2))
        assert first and set(first) <= set(second)  # the weights changed so far, each round on top of the last
        assert any(not torch.equal(second[k], first[k]) for k in first)
        assert all(not torch.equal(second[k], base[k]) for k in second)
    # AlphaEdit's solve sees every earlier round's keys: their moments only grow.
    moments = [files.load_tensors(work / "alphaedit" / f"round-{k}" / "keys.safetensors") for k in (1, 2, 3)]
    assert set(moments[0]) == {"layer0"}
    for earlier, later in itertools.pairwise(moments):
        assert all(torch.trace(later[k]) > torch.trace(earlier[k]) for k in earlier)


def test_memit_and_alphaedit_solve_with_the_base_models_statistics(workspace, tmp_path, fact_gpt2, monkeypatch):
    seen = []
    statistics = memit.key_statistics
    monkeypatch.setattr(memit, "key_statistics", lambda model, *a, **k: seen.append(fingerprint(model)) or
                        statistics(model, *a, **k))
    bench_lifelong(_config(workspace, ("memit", "alphaedit")), tmp_path / "work", progress=False,
                   log=lambda line: None)
    assert len(seen) == 2 and all(same_model(f, fingerprint(fact_gpt2)) for f in seen)  # once per method


def test_results_files_name_the_command(finished, tmp_path):
    _, bench, _ = finished
    paths = write_lifelong(tmp_path, "lifelong-tiny", bench, "meg bench-lifelong --rounds 3")
    saved = json.loads(paths["json"].read_text())
    assert saved["command"] == "meg bench-lifelong --rounds 3" and saved["rows"] == bench["rows"]
    text = paths["md"].read_text()
    assert "Command: `meg bench-lifelong --rounds 3`" in text
    for part in ("## Score over every edit so far", "## Round-1 retention", "## Edit seconds per round",
                 "## Every row", "## Adding vs one batch", "| meg-batch |"):
        assert part in text
    assert paths["png"].stat().st_size > 0


def _refuse(*names):
    def fail(*args, **kwargs):
        raise AssertionError(f"{names} called on a finished round")
    return fail


def test_a_rerun_reads_finished_rounds_back(finished, workspace, tmp_path, monkeypatch):
    work, bench, _ = finished
    copy = tmp_path / "bench"
    shutil.copytree(work, copy)
    for owner, name in ((MegEditor, "fit"), (MegEditor, "add"), (ft, "apply_ft"), (memit, "apply_memit"),
                        (alphaedit, "edit_alphaedit"), (lifelong, "evaluate")):
        monkeypatch.setattr(owner, name, _refuse(name))
    assert _bench(workspace, copy)["rows"] == bench["rows"]


def test_round1_in_force_leaves_out_the_edits_a_later_edit_re_edits():
    """CounterFact's first 10,000 records edit some prompts twice ("Saint Petersburg is a twin city of" -> Lisbon in
    round 1, -> Tokyo in round 4); the later edit wins, so retention counts only the round-1 edits still in force."""
    from types import SimpleNamespace

    from meg.requests import EditRequest

    requests = [EditRequest(p, "x") for p in ("a is", "b is", "c is", "d is", " b is", "e is")]
    rounds = SimpleNamespace(requests=requests, per_round=2, cohort=2)
    records = [{"index": i, "reliability": {"ag": i != 1, "tf": 1.0}} for i in range(6)]
    first = lifelong.Rounds.in_force(rounds, records, 1)
    assert first["edits"] == 2 and first["rel_ag"] == 50.0  # round 1 alone: both in force
    later = lifelong.Rounds.in_force(rounds, records, 3)
    assert later["edits"] == 1 and later["rel_ag"] == 100.0  # "b is" re-edited in round 3


def test_a_row_saved_without_round1_in_force_gets_it_from_its_records(finished, workspace, tmp_path):
    work, _, _ = finished
    copy = tmp_path / "bench"
    shutil.copytree(work, copy)
    path = copy / "meg" / f"round-{ROUNDS}" / "row.json"
    saved = json.loads(path.read_text())
    del saved["row"]["round1_in_force"]  # as rows were saved before 2026-12-02 (session 19)
    path.write_text(json.dumps(saved))
    again = {(r["method"], r["round"]): r for r in _bench(workspace, copy)["rows"]}
    kept = again["meg", ROUNDS]["round1_in_force"]
    assert kept == {"edits": PER_ROUND, **again["meg", ROUNDS]["round1"]}  # no prompt edited twice here
    assert json.loads(path.read_text())["row"]["round1_in_force"] == kept


def test_a_rerun_continues_from_the_last_finished_round(finished, workspace, tmp_path, monkeypatch):
    work, bench, _ = finished
    copy = tmp_path / "bench"
    shutil.copytree(work, copy)
    shutil.rmtree(copy / "alphaedit" / f"round-{ROUNDS}")  # interrupted while editing the last round
    (copy / "meg" / f"round-{ROUNDS}" / "row.json").unlink()  # interrupted while evaluating it
    calls = []
    for owner, name in ((MegEditor, "fit"), (MegEditor, "add"), (ft, "apply_ft"), (memit, "apply_memit")):
        monkeypatch.setattr(owner, name, _refuse(name))
    edit, evaluate = alphaedit.edit_alphaedit, lifelong.evaluate
    monkeypatch.setattr(alphaedit, "edit_alphaedit", lambda *a, **k: calls.append(("edit", a[5] is not None)) or
                        edit(*a, **k))
    monkeypatch.setattr(lifelong, "evaluate", lambda lm, requests, *a, **k: calls.append(("evaluate", len(requests)))
                        or evaluate(lm, requests, *a, **k))
    again = _bench(workspace, copy)
    # AlphaEdit edits its last round once, from round 2's saved model and key moments; both rounds are evaluated.
    assert sorted(calls) == [("edit", True), ("evaluate", 12), ("evaluate", 12)]
    old = {(r["method"], r["round"]): r for r in bench["rows"]}
    new = {(r["method"], r["round"]): r for r in again["rows"]}
    assert set(old) == set(new)
    assert all(new[k] == old[k] for k in old if k not in {("alphaedit", ROUNDS), ("meg", ROUNDS)})
    assert new["meg", ROUNDS]["metrics"] == old["meg", ROUNDS]["metrics"]  # the same pack, read back


def test_the_cli_writes_the_results_files(workspace, tmp_path, monkeypatch):
    w = workspace
    args = [str(a) for a in ("bench-lifelong", "--model", w / "model", "--data", w / "edits.jsonl", "--rounds", "2",
                             "--per-round", "3", "--methods", "ft", "--configs", tmp_path / "configs.json", "--out",
                             tmp_path / "results", "--work-dir", tmp_path / "work")]
    (tmp_path / "configs.json").write_text(json.dumps({"ft": {"layer": 1, "lr": 1e-2, "steps": 5}}))
    monkeypatch.setattr(sys, "argv", ["meg", *args])  # what the command line records
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results" / "lifelong-edits-2x3.json").read_text())
    assert saved["command"] == "meg " + " ".join(args) and [r["edits"] for r in saved["rows"]] == [3, 6]
    assert (tmp_path / "results" / "lifelong-edits-2x3.png").is_file()
    text = (tmp_path / "results" / "lifelong-edits-2x3.md").read_text()
    assert f"Command: `{saved['command']}`" in text and "| ft |" in text


@pytest.mark.parametrize(("options", "message"), [
    (["--rounds", "0"], "error: --rounds must be >= 1, got 0"),
    (["--per-round", "-2"], "error: --per-round must be >= 1, got -2"),
    (["--rounds", "5", "--per-round", "4"],
     "error: --rounds 5 x --per-round 4 = 20 edits, more than the 16 records of edits"),
    (["--methods", "meg,knn"],
     "error: --methods: 'knn' is not a method of bench-lifelong; choose from meg, meg-batch, ft, memit, alphaedit"),
    (["--methods", "ft,ft"], "error: --methods: ft given more than once"),
])
def test_bad_options_are_one_line_before_the_model_loads(workspace, tmp_path, monkeypatch, options, message):
    from meg.evaluation import runner as runner_module

    monkeypatch.setattr(runner_module, "load_causal_lm", _refuse("load_causal_lm"))
    args = ["bench-lifelong", "--model", workspace / "model", "--data", workspace / "edits.jsonl",
            "--rounds", "2", "--per-round", "2", "--out", tmp_path / "results", "--work-dir", tmp_path / "work",
            *options]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "results").exists()


def test_the_library_refuses_bad_counts():
    run = RunConfig()
    with pytest.raises(InputError, match=r"^--rounds must be an integer >= 1, got 0$"):
        LifelongConfig(run, rounds=0)
    with pytest.raises(InputError, match=r"^configs given for 'rome', not a method of bench-lifelong"):
        LifelongConfig(run, methods=("meg",), method_configs={"rome": {}})
    LifelongConfig(run, methods=("meg",), method_configs={"memit": {}})  # one file may configure every method


def test_a_run_of_some_methods_keeps_the_results_files_rows_of_the_others(finished, workspace, tmp_path, monkeypatch):
    """Methods run apart meet in one file: rerunning ft alone into a file that holds every method's rows keeps the
    others' rows (with the command that measured them) and does not measure them again."""
    work, bench, _ = finished
    write_lifelong(tmp_path, "all", bench, "meg bench-lifelong --methods all")
    earlier = json.loads((tmp_path / "all.json").read_text())
    copy = tmp_path / "bench"
    shutil.copytree(work, copy)
    for owner, name in ((MegEditor, "fit"), (MegEditor, "add"), (memit, "apply_memit"),
                        (alphaedit, "edit_alphaedit")):
        monkeypatch.setattr(owner, name, _refuse(name))
    again = bench_lifelong(_config(workspace, ("ft",)), copy, calibration_pairs=[], progress=False,
                           log=lambda line: None, earlier=earlier)
    strip = [{k: v for k, v in r.items() if k != "command"} for r in again["rows"]]
    assert strip == bench["rows"] and again["setup"]["methods"] == list(METHODS)  # every row, in METHODS order
    assert {r["method"] for r in again["rows"] if "command" not in r} == {"ft"}  # measured (read back) now
    assert {r["command"] for r in again["rows"] if r["method"] != "ft"} == {"meg bench-lifelong --methods all"}
    assert again["setup"]["method_configs"] == bench["setup"]["method_configs"]
    assert again["add_vs_batch"] == bench["add_vs_batch"]
    text = write_lifelong(tmp_path, "merged", again, "meg bench-lifelong --methods ft")["md"].read_text()
    assert ("Rows of meg, meg-batch, memit, alphaedit kept from an earlier run of the same measurement: "
            "`meg bench-lifelong --methods all`") in text


@pytest.mark.parametrize("change", [{"seed": 1}, {"per_round": 5}, {"data": "other"}, {"max_new_tokens": 3}])
def test_rows_of_another_measurement_are_not_kept(finished, change):
    _, bench, _ = finished
    earlier = {**bench, "command": "meg bench-lifelong"}
    setup = {**bench["setup"], "methods": ["ft"], "threads": 7}  # thread counts change timing only
    assert {r["method"] for r in lifelong.kept_rows(earlier, setup)} == {"meg", "meg-batch", "memit", "alphaedit"}
    assert lifelong.kept_rows(earlier, {**setup, **change}) == []
    assert lifelong.kept_rows(None, setup) == [] and lifelong.kept_rows({"rows": []}, setup) == []


def test_a_kept_row_needs_the_config_a_method_run_now_shares():
    """meg-batch takes meg's config: run meg now with another config and the file's meg-batch row is not kept."""
    row = {"method": "meg-batch", "round": 3}
    earlier = {"setup": {"seed": 0, "methods": ["meg", "meg-batch"], "method_configs": {"meg": {"a": 1}}},
               "rows": [row], "command": "c"}
    assert lifelong.kept_rows(earlier, {"seed": 0, "methods": ["meg"], "method_configs": {"meg": {"a": 1}}}) == [
        {**row, "command": "c"}]
    assert lifelong.kept_rows(earlier, {"seed": 0, "methods": ["meg"], "method_configs": {"meg": {"a": 2}}}) == []
