"""A second, independent bad-input corpus (issue 18): the classes of tests/test_bad_inputs.py with other inputs,
other commands and other option combinations (lifelong `edit --pack`, `pack show/diff/verify`, `cache`, run
directories, busy work directories, overlong prompts) and the Python API (EditRequest, MegConfig.from_dict,
EditPack.load, neuron_spec, MegEditor.remove, EditedModel.generate).

Every CLI case must end in ONE line `error: ...` naming the culprit, exit code 2, no traceback; unless marked
otherwise it must fail before a model is loaded (the loader is replaced by one that fails as an internal error).
Every API case must raise a one-line MegError / OSError naming the culprit.
"""

from __future__ import annotations

import fcntl
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bad_input_cases import FIXTURES, MODEL, Case, check_one_line_error, refuse_models
from meg import files
from meg.cli.main import app
from meg.errors import InputError, MegError, PackError
from meg.pack import EditPack

runner = CliRunner()

LONG = "The capital of France is " * 20  # about 120 tokens: longer than the model's 64 positions
DEEP_OBJECT = '{"a": ' * 30_000 + "1" + "}" * 30_000
FACT = {"prompt": "The capital of Spain is", "target": "Madrid", "subject": "Spain"}
IN_PACK = "The capital of France is"  # the first edit of the fixture pack


def _row(**changes: Any) -> str:
    return json.dumps({**FACT, **changes}) + "\n"


def _cf(**changes: Any) -> bytes:
    record = {"case_id": 0, "prompt": "The capital of Spain is", "subject": "Spain", "target_new": "Madrid",
              "ground_truth": "Paris", "rephrase_prompt": "Spain's capital is", "locality_prompt": "The capital of Peru is",
              "locality_ground_truth": "Lima", **changes}
    return json.dumps([record]).encode()


FILES: dict[str, bytes] = {
    "ok.jsonl": _row().encode(),
    "utf16.jsonl": _row().encode("utf-16"),
    "utf16.txt": "hello there\n".encode("utf-16"),
    "latin1.txt": b"Se\xf1or\n",
    "blank.txt": b"\n  \n\t\n",
    "deep-object.jsonl": (DEEP_OBJECT + "\n").encode(),
    "deep-object.json": DEEP_OBJECT.encode(),
    "para-dict.jsonl": _row(paraphrases={"Spain's capital is": "yes"}).encode(),
    "para-int.jsonl": _row(paraphrases=0).encode(),
    "unrelated-null-item.jsonl": _row(unrelated=["ok", None]).encode(),
    "subject-tab.jsonl": _row(subject="\t").encode(),
    "subject-object.jsonl": _row(subject={"name": "Spain"}).encode(),
    "target-blank.jsonl": _row(target=" \n ").encode(),
    "prompt-null.jsonl": _row(prompt=None).encode(),
    "gt-list.jsonl": _row(ground_truth=["Paris"]).encode(),
    "case-id-bool.jsonl": _row(case_id=True).encode(),
    "typo-subjcet.jsonl": (json.dumps({"prompt": "p", "target": "t", "subjcet": "x"}) + "\n").encode(),
    "number-line.jsonl": b"42\n",
    "long-prompt.jsonl": _row(prompt=LONG).encode(),
    "cf-rephrase-object.json": _cf(rephrase_prompt={"a": 1}),
    "cf-target-number.json": _cf(target_new=7),
    "cf-subject-empty.json": _cf(subject=""),
    "data-null.json": b"null",
    "data-number.json": b"12",
    "remove-unknown-id.jsonl": b"999\n",
    "remove-negative-id.jsonl": b"-1\n",
    "remove-float.jsonl": b"1.5\n",
    "remove-bool.jsonl": b"true\n",
    "remove-null.jsonl": b"null\n",
    "remove-list.jsonl": b"[0]\n",
    "remove-blank-prompt.jsonl": b'"   "\n',
    "remove-object-without-key.jsonl": b'{"edit": 1}\n',
    "remove-unknown-prompt.jsonl": b'"Nobody ever asked this"\n',
    "remove-all.jsonl": "".join(f"{i}\n" for i in range(8)).encode(),
    "remove-empty.jsonl": b"",
    "remove-nonutf8.jsonl": b'"Se\xf1or"\n',
    "replace-unknown.jsonl": _row().encode(),
    "replace-long-target.jsonl": _row(prompt=IN_PACK, target=LONG.strip()).encode(),
    "add-long.jsonl": _row(prompt=LONG).encode(),
    "add-para-dict.jsonl": _row(paraphrases={"x": "y"}).encode(),
    "add-subject-empty.jsonl": _row(subject="").encode(),
    "config-null.json": b"null",
    "config-number.json": b"3",
    "config-nested-unknown.json": b'{"encoder": {"epochz": 1}}',
    "config-encoder-list.json": b'{"encoder": [1]}',
    "config-seed-float.json": b'{"seed": 1.5}',
    "config-seed-negative.json": b'{"seed": -1}',
    "config-weights.json": b'{"weights": "borrowed"}',
    "config-condition.json": b'{"condition": "mood"}',
    "config-collection-preset.json": b'{"collection": "huge"}',
    "config-generator-preset.json": b'{"generator": "enormous"}',
    "config-layer-bool.json": b'{"layer": true}',
    "config-da-string.json": b'{"data_augmentation": "yes"}',
    "config-gate-zero.json": b'{"gate": {"max_epochs": 0}}',
    "config-encoder-epochs.json": b'{"encoder": {"epochs": -2}}',
    "configs-string.json": b'"ft"',
    "configs-meg-router.json": b'{"meg": {"router": "oracle"}}',
    "configs-ft-null.json": b'{"ft": {"lr": null}}',
    "pairs-subject-empty.jsonl": b'{"question": "q", "paraphrase": "p", "subject": ""}\n',
    "pairs-list-row.jsonl": b'["q", "p"]\n',
    "queries-number.jsonl": b'{"prompt": 5}\n',
    "a-file": b"not a directory\n",
}


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad2")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    for name in ("dir.jsonl", "dir.txt", "empty-dir", "busy-work", "busy-run"):
        (root / name).mkdir()
    (root / "user-dir").mkdir()
    (root / "user-dir" / "records.jsonl").write_text("my own notes\n")  # a name a run directory also uses
    (root / "user-dir2").mkdir()
    (root / "user-dir2" / "report.json").write_text('{"mine": true}\n')
    EditPack.load(FIXTURES / "pack-retrieval").save(root / "pack")
    (root / "pack-bad-config").mkdir()
    for f in (root / "pack").iterdir():
        (root / "pack-bad-config" / f.name).write_bytes(f.read_bytes())
    (root / "pack-bad-config" / files.PACK_CONFIG).write_text("[]")
    return root


@pytest.fixture()
def no_model(monkeypatch):
    refuse_models(monkeypatch)


@pytest.fixture()
def busy(w):
    """Another process holds the two busy directories (an flock on a separate open file, as a second process
    would); waiting is off, so a command on them must refuse at once."""
    handles = []
    for name in ("busy-work", "busy-run"):
        handle = open(w / name / files.WORK_LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held until the test ends)
        handle.write("process 4242 on elsewhere\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handles.append(handle)
    yield
    for handle in handles:
        handle.close()


A, B, C, D, E, F = ("a: escaped exception", "b: silent acceptance", "c: fail-late", "d: pack trusted too much",
                    "e: overwrite deleting user data", "f: two processes on one work dir")


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add(name: str, kind: str, args: str | list[str], culprit: str, **kw: Any) -> None:
        assert name not in cases, name
        cases[name] = Case(kind, args.split() if isinstance(args, str) else args, culprit, **kw)

    edit = "edit --model {model} --out {w}/new-pack --edits"
    lifelong = "edit --model {model} --out {w}/new-pack --pack {w}/pack"
    ev = "eval --model {model} --pack {w}/pack --out {w}/ev"
    gen = "generate --model {model} --pack {w}/pack"

    # (a) exceptions that could escape: other encodings, directories, deep objects, wrong JSON types
    add("edit-utf16", A, f"{edit} {{w}}/utf16.jsonl", "not UTF-8")
    add("eval-utf16", A, f"{ev} --data {{w}}/utf16.jsonl", "not UTF-8")
    add("generate-prompts-utf16", A, f"{gen} --prompts-file {{w}}/utf16.txt", "not UTF-8")
    add("generate-prompts-latin1", A, f"{gen} --prompts-file {{w}}/latin1.txt", "not UTF-8")
    add("lifelong-add-utf16", A, f"{lifelong} --add {{w}}/utf16.jsonl", "not UTF-8")
    add("lifelong-remove-nonutf8", A, f"{lifelong} --remove {{w}}/remove-nonutf8.jsonl", "not UTF-8")
    add("lifelong-add-dir", A, f"{lifelong} --add {{w}}/dir.jsonl", "is a directory")
    add("lifelong-remove-dir", A, f"{lifelong} --remove {{w}}/dir.jsonl", "is a directory")
    add("lifelong-replace-missing", A, f"{lifelong} --replace {{w}}/none.jsonl", "no such file")
    add("generate-prompts-missing", A, f"{gen} --prompts-file {{w}}/none.txt", "no such file")
    add("bench-configs-dir", A, "bench --model {model} --out {w}/b --methods ft --configs {w}/dir.jsonl",
        "is a directory")
    add("edit-deep-object", A, f"{edit} {{w}}/deep-object.jsonl", "nested too deeply")
    add("eval-deep-object", A, f"{ev} --data {{w}}/deep-object.json", "nested too deeply")
    add("bench-deep-object", A, "bench --model {model} --out {w}/b --methods unedited --data {w}/deep-object.json",
        "nested too deeply")
    add("lifelong-remove-deep", A, f"{lifelong} --remove {{w}}/deep-object.jsonl", "nested too deeply")
    add("run-data-null", A, "run --model {model} --out {w}/r --data {w}/data-null.json", "non-empty JSON list")
    add("eval-data-number", A, f"{ev} --data {{w}}/data-number.json", "non-empty JSON list")
    add("edit-number-line", A, f"{edit} {{w}}/number-line.jsonl", "expected a JSON object")
    add("edit-config-null", A, f"{edit} {{w}}/ok.jsonl --config {{w}}/config-null.json", "must be a JSON object")
    add("run-config-number", A, "run --model {model} --out {w}/r --config {w}/config-number.json",
        "must be a JSON object")
    add("bench-configs-string", A, "bench --model {model} --out {w}/b --methods ft --configs {w}/configs-string.json",
        "configs-string.json")
    add("edit-pairs-list-row", A, f"{edit} {{w}}/ok.jsonl --pseudo-pairs {{w}}/pairs-list-row.jsonl", "'question'")
    add("edit-queries-number", A, f"{edit} {{w}}/ok.jsonl --unrelated {{w}}/queries-number.jsonl", "'prompt'")
    add("pack-show-missing", A, "pack show {w}/no-such-pack", "no-such-pack")
    add("pack-show-file", A, "pack show {w}/a-file", "a-file")
    add("pack-show-empty-dir", A, "pack show {w}/empty-dir", "not an edit pack")
    add("pack-show-config-list", A, "pack show {w}/pack-bad-config", "pack_config.json")
    add("pack-diff-second-missing", A, "pack diff {w}/pack {w}/no-such-pack", "no-such-pack")
    add("pack-diff-first-file", A, "pack diff {w}/a-file {w}/pack", "a-file")
    add("pack-verify-empty-dir", A, "pack verify {w}/empty-dir", "empty-dir")
    add("pack-verify-user-dir", A, "pack verify {w}/user-dir", "user-dir")
    add("generate-pack-empty-dir", A, "generate --model {model} --pack {w}/empty-dir --prompt hi", "not an edit pack")
    add("eval-pack-file", A, "eval --model {model} --pack {w}/a-file --out {w}/ev", "a-file")
    add("lifelong-pack-missing", A, "edit --out {w}/new-pack --pack {w}/no-such-pack --remove {w}/remove-all.jsonl",
        "no-such-pack")
    add("generate-device-meta", A, f"{gen} --prompt hi --device meta", "meta")
    add("eval-device-cuda7", A, f"{ev} --device cuda:7", "cuda:7")
    add("lifelong-device-bogus", A, f"{lifelong} --remove {{w}}/remove-unknown-id.jsonl --device tpu:9", "tpu:9")
    add("generate-model-empty-name", A, ["generate", "--pack", "{w}/pack", "--prompt", "hi", "--model", ""],
        "empty name")
    add("lifelong-model-file", A, "edit --out {w}/new-pack --pack {w}/pack --remove {w}/remove-all.jsonl --model "
        "{w}/a-file",
        "not a model directory")
    add("generate-prompt-blank-file", A, f"{gen} --prompts-file {{w}}/blank.txt", "at least one --prompt")
    add("generate-prompt-empty-string", A, [*gen.split(), "--prompt", "ok", "--prompt", ""], "--prompt number 2")

    # (b) silent acceptance: counts, layers, choices, list fields, subjects
    for f, culprit in (("para-dict.jsonl", "'paraphrases'"), ("para-int.jsonl", "'paraphrases'"),
                       ("unrelated-null-item.jsonl", "'unrelated'"), ("subject-tab.jsonl", "'subject'"),
                       ("subject-object.jsonl", "'subject'"), ("target-blank.jsonl", "'target'"),
                       ("prompt-null.jsonl", "'prompt'"), ("gt-list.jsonl", "'ground_truth'"),
                       ("case-id-bool.jsonl", "'case_id'"), ("typo-subjcet.jsonl", "did you mean 'subject'")):
        add(f"edit-{f}", B, f"{edit} {{w}}/{f}", culprit)
    add("eval-para-dict", B, f"{ev} --data {{w}}/para-dict.jsonl", "'paraphrases'")
    add("lifelong-add-para-dict", B, f"{lifelong} --add {{w}}/add-para-dict.jsonl", "'paraphrases'")
    add("lifelong-add-subject-empty", B, f"{lifelong} --add {{w}}/add-subject-empty.jsonl", "'subject'")
    for f, culprit in (("cf-rephrase-object.json", "record 0"), ("cf-target-number.json", "record 0"),
                       ("cf-subject-empty.json", "record 0")):
        add(f"run-{f}", B, f"run --model {{model}} --out {{w}}/r --data {{w}}/{f}", culprit)
    add("edit-pairs-subject-empty", B, f"{edit} {{w}}/ok.jsonl --pseudo-pairs {{w}}/pairs-subject-empty.jsonl",
        "'subject'")
    for f, culprit in (("remove-float.jsonl", "record 0"), ("remove-bool.jsonl", "record 0"),
                       ("remove-null.jsonl", "record 0"), ("remove-list.jsonl", "record 0"),
                       ("remove-blank-prompt.jsonl", "record 0"), ("remove-object-without-key.jsonl", "record 0"),
                       ("remove-empty.jsonl", "no edits named")):
        add(f"lifelong-{f}", B, f"{lifelong} --remove {{w}}/{f}", culprit)
    for f, culprit in (("config-nested-unknown.json", "epochz"), ("config-encoder-list.json", "MegConfig.encoder"),
                       ("config-seed-float.json", "MegConfig.seed"), ("config-seed-negative.json", "MegConfig.seed"),
                       ("config-weights.json", "borrowed"), ("config-condition.json", "mood"),
                       ("config-collection-preset.json", "huge"), ("config-generator-preset.json", "enormous"),
                       ("config-layer-bool.json", "MegConfig.layer"), ("config-da-string.json", "data_augmentation"),
                       ("config-gate-zero.json", "GateConfig.max_epochs"),
                       ("config-encoder-epochs.json", "EncoderConfig.epochs")):
        add(f"edit-{f}", B, f"{edit} {{w}}/ok.jsonl --config {{w}}/{f}", culprit)
    add("bench-configs-meg-router", B, "bench --model {model} --out {w}/b --methods meg --configs "
        "{w}/configs-meg-router.json", "oracle")
    add("bench-configs-ft-null", B, "bench --model {model} --out {w}/b --methods ft --configs "
        "{w}/configs-ft-null.json", "FTConfig.lr")
    add("eval-n-zero", B, f"{ev} --n 0", "--n must be >= 1")
    add("eval-n-negative", B, f"{ev} --n -7", "--n must be >= 1")
    add("bench-n-negative", B, "bench --model {model} --out {w}/b --methods unedited --n -2", "--n must be >= 1")
    add("bench-collect-single-negative", B, "bench-collect --model {model} --single-edits -4", "--single-edits")
    add("bench-collect-batch-negative", B, "bench-collect --model {model} --batch-sizes 4,-8", "--batch-sizes")
    add("bench-collect-batch-empty", B, ["bench-collect", "--model", "{model}", "--batch-sizes", ""], "--batch-sizes")
    add("layers-layers-float", B, "layers --model {model} --layers 1.5", "--layers")
    add("layers-layer-out-of-range", C, "layers --model {model} --layers 0,9", "layer 9")
    add("bench-collect-layer-out-of-range", C, "bench-collect --model {model} --layer 7", "layer 7")
    add("edit-layer-out-of-range", C, f"{edit} {{w}}/ok.jsonl --layer 5", "layer 5")
    add("edit-layer-very-negative", B, f"{edit} {{w}}/ok.jsonl --layer -100", "--layer must be >= 0")
    add("bench-methods-case", B, "bench --model {model} --out {w}/b --methods MEG", "'MEG'")
    add("run-method-empty", B, ["run", "--model", "{model}", "--out", "{w}/r", "--method", ""], "method")
    add("edit-router-empty", B, [*edit.split(), "{w}/ok.jsonl", "--router", ""], "MegConfig.router")
    add("layers-preset-empty", B, ["layers", "--model", "{model}", "--preset", ""], "preset")
    add("route-bench-routers-mixed", B, "route-bench --out {w}/rb --routers retrieval/tuned,oracle", "oracle")
    add("bench-name-dotdot", B, "bench --model {model} --out {w}/b --methods unedited --name ..", "--name")
    add("route-bench-name-blank", B, ["route-bench", "--out", "{w}/rb", "--name", " "], "--name")
    add("cache-clear-kind-empty", B, ["cache", "clear", "--yes", "--kind", ""], "--kind")
    add("cache-clear-kind-mixed", B, "cache clear --yes --kind stages,models,bogus", "bogus")
    add("run-zsre-target-case", B, "run --model {model} --out {w}/r --zsre-target NEW", "--zsre-target")

    # (c) fail-late: things checkable at once that were refused only after a model load or a stage
    add("edit-long-prompt", C, f"{edit} {{w}}/long-prompt.jsonl", "context of 64 tokens")
    add("generate-long-prompt", C, [*gen.split(), "--prompt", LONG], "context of 64 tokens")
    add("generate-max-new-64", C, f"{gen} --prompt hi --max-new-tokens 64", "context of 64 tokens")
    add("generate-max-new-huge", C, f"{gen} --prompt hi --max-new-tokens 100000", "context of 64 tokens")
    add("lifelong-add-long", C, f"{lifelong} --add {{w}}/add-long.jsonl", "context of 64 tokens")
    add("lifelong-replace-long-target", C, f"{lifelong} --replace {{w}}/replace-long-target.jsonl",
        "longer than the model's context (64)")
    add("lifelong-remove-unknown-id", C, f"{lifelong} --remove {{w}}/remove-unknown-id.jsonl", "id 999")
    add("lifelong-remove-negative-id", C, f"{lifelong} --remove {{w}}/remove-negative-id.jsonl", "id -1")
    add("lifelong-remove-unknown-prompt", C, f"{lifelong} --remove {{w}}/remove-unknown-prompt.jsonl",
        "Nobody ever asked")
    add("lifelong-remove-all", C, f"{lifelong} --remove {{w}}/remove-all.jsonl", "remove all 8 edits")
    add("lifelong-replace-unknown", C, f"{lifelong} --replace {{w}}/replace-unknown.jsonl", "no edit with prompt")
    add("lifelong-two-changes", C, f"{lifelong} --add {{w}}/ok.jsonl --remove {{w}}/remove-all.jsonl",
        "exactly one of")
    add("lifelong-fit-option", C, f"{lifelong} --add {{w}}/ok.jsonl --router paper-gate", "--router")
    add("lifelong-out-under-file", C, "edit --out {w}/a-file/p --pack {w}/pack --add {w}/ok.jsonl",
        "a-file is a file")
    add("lifelong-work-under-file", C, f"{lifelong} --add {{w}}/ok.jsonl --work-dir {{w}}/a-file/w",
        "a-file is a file")
    add("edit-add-without-pack", C, f"{edit} {{w}}/ok.jsonl --add {{w}}/ok.jsonl", "--add")
    add("eval-out-under-file", C, "eval --model {model} --pack {w}/pack --out {w}/a-file/x/y", "a-file is a file")
    add("layers-out-under-file", C, "layers --model {model} --out {w}/a-file/deeper", "a-file is a file")

    # (d) packs trusted too much: the pack is data, a bad one never gets as far as the model
    add("lifelong-pack-bad-config", D, "edit --out {w}/new-pack --pack {w}/pack-bad-config --add {w}/ok.jsonl",
        "pack_config.json")
    add("eval-pack-bad-config", D, "eval --model {model} --pack {w}/pack-bad-config --out {w}/ev", "pack_config.json")
    add("generate-pack-user-dir", D, "generate --model {model} --pack {w}/user-dir --prompt hi", "not an edit pack")

    # (e) overwrite must never delete a user's data
    add("run-overwrite-user-dir", E, "run --model {model} --out {w}/user-dir --overwrite", "user-dir")
    add("eval-overwrite-user-dir", E, "eval --model {model} --pack {w}/pack --out {w}/user-dir2 --overwrite",
        "user-dir2")
    add("bench-overwrite-user-dir", E, "bench --model {model} --methods unedited --out {w}/user-dir --overwrite",
        "user-dir")
    add("demo-user-dir", E, "demo --model {model} --out {w}/user-dir2", "user-dir2")
    add("lifelong-out-is-own-pack", E, "edit --out {w}/pack --pack {w}/pack --add {w}/ok.jsonl", "already exists")
    add("lifelong-overwrite-user-dir", E, "edit --out {w}/user-dir --overwrite --pack {w}/pack --add {w}/ok.jsonl",
        "not an edit pack")

    # (f) two processes on one work directory (waiting off: MEG_LOCK_TIMEOUT=0)
    add("edit-busy-work-dir", F, f"{edit} {{w}}/ok.jsonl --work-dir {{w}}/busy-work", "in use by process 4242")
    add("lifelong-busy-work-dir", F, f"{lifelong} --add {{w}}/ok.jsonl --work-dir {{w}}/busy-work",
        "in use by process 4242")
    # data that fits the tiny model's 64-token context (the demo's paraphrases do not: checked before the lock)
    add("run-busy-out", F, "run --model {model} --data {w}/ok.jsonl --n 1 --out {w}/busy-run", "in use by process 4242")
    add("bench-busy-work-dir", F, "bench --model {model} --data {w}/ok.jsonl --n 1 --methods unedited --out {w}/b2 "
        "--work-dir {w}/busy-work",
        "in use by process 4242")
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_case(name, w, no_model, busy, monkeypatch):
    case = CASES[name]
    monkeypatch.setenv("MEG_LOCK_TIMEOUT", "0")
    result = runner.invoke(app, case.argv(w))
    check_one_line_error(result, case.culprit)
    assert not (w / "new-pack").exists(), "nothing may be written"


def test_user_data_survives_every_case(w):
    assert (w / "user-dir" / "records.jsonl").read_text() == "my own notes\n"
    assert (w / "user-dir2" / "report.json").read_text() == '{"mine": true}\n'
    assert (w / "a-file").read_bytes() == FILES["a-file"]
    assert sorted(p.name for p in (w / "user-dir").iterdir()) == ["records.jsonl"]


# --- the Python API ---


@pytest.fixture(scope="module")
def loaded(w):
    from meg.models import load_causal_lm

    lm, tokenizer = load_causal_lm(str(MODEL))
    return lm, tokenizer, EditPack.load(w / "pack")


def _api_cases() -> dict[str, tuple[str, Callable[..., Any], type, str]]:
    from meg.benchmarks.compare import BenchConfig
    from meg.config import MegConfig
    from meg.evaluation.runner import RunConfig
    from meg.lifelong import read_removals
    from meg.requests import EditRequest, load_edit_file, load_pseudo_pairs, load_queries

    cases: dict[str, tuple[str, Callable[..., Any], type, str]] = {}

    def add(name: str, kind: str, call: Callable[..., Any], error: type, culprit: str) -> None:
        assert name not in cases, name
        cases[name] = (kind, call, error, culprit)

    for label, kwargs, culprit in (("subject-empty", {"subject": ""}, "'subject'"),
                                   ("prompt-blank", {"prompt": "  "}, "'prompt'"),
                                   ("target-number", {"target": 3}, "'target'"),
                                   ("paraphrases-string", {"paraphrases": "one"}, "'paraphrases'"),
                                   ("paraphrases-set", {"paraphrases": {"a"}}, "'paraphrases'"),
                                   ("unrelated-number-item", {"unrelated": [1]}, "'unrelated'"),
                                   ("answers-without-unrelated", {"unrelated_answers": ["a"]}, "'unrelated_answers'"),
                                   ("case-id-int", {"case_id": 5}, "'case_id'"),
                                   ("ground-truth-list", {"ground_truth": ["x"]}, "'ground_truth'")):
        add(f"EditRequest-{label}", B, lambda w, k=kwargs: EditRequest(**{"prompt": "p", "target": "t", **k}),
            InputError, culprit)
    for label, data, culprit in (("none", None, "expected a JSON object"), ("list", [], "expected a JSON object"),
                                 ("layer-negative", {"layer": -2}, "MegConfig.layer"),
                                 ("seed-negative", {"seed": -5}, "MegConfig.seed"),
                                 ("encoder-epochs", {"encoder": {"epochs": 0}}, "EncoderConfig.epochs"),
                                 ("encoder-typo", {"encoder": {"epoch": 1}}, "epoch"),
                                 ("router-none", {"router": None}, "MegConfig.router"),
                                 ("collection-preset", {"collection": {"preset_name": "nope"}}, "nope"),
                                 ("generator-extra", {"generator": {"preset_name": "small-gpt2", "bogus": 1}}, "bogus"),
                                 ("layer-float", {"layer": 1.0}, "MegConfig.layer"),
                                 ("weights-list", {"weights": ["generated"]}, "MegConfig.weights")):
        add(f"MegConfig.from_dict-{label}", B, lambda w, d=data: MegConfig.from_dict(d), InputError, culprit)
    add("RunConfig-seed-text", B, lambda w: RunConfig(seed="x"), InputError, "RunConfig.seed")
    add("RunConfig-n-bool", B, lambda w: RunConfig(n=True), InputError, "RunConfig.n")
    add("BenchConfig-methods-string", B, lambda w: BenchConfig(RunConfig(), "meg", None), InputError, "methods")
    add("EditPack.load-file", A, lambda w: EditPack.load(w / "a-file"), PackError, "a-file")
    add("EditPack.load-empty-dir", A, lambda w: EditPack.load(w / "empty-dir"), PackError, "not an edit pack")
    add("EditPack.load-missing", A, lambda w: EditPack.load(w / "gone"), PackError, "no such pack directory")
    add("EditPack.load-config-list", A, lambda w: EditPack.load(w / "pack-bad-config"), PackError, "pack_config.json")
    add("load_edit_file-utf16", A, lambda w: load_edit_file(w / "utf16.jsonl"), InputError, "not UTF-8")
    add("load_edit_file-deep-object", A, lambda w: load_edit_file(w / "deep-object.jsonl"), InputError,
        "nested too deeply")
    add("load_pseudo_pairs-list-row", A, lambda w: load_pseudo_pairs(w / "pairs-list-row.jsonl"), InputError,
        "'question'")
    add("load_queries-number", A, lambda w: load_queries(w / "queries-number.jsonl"), InputError, "'prompt'")
    add("read_removals-float", B, lambda w: read_removals(w / "remove-float.jsonl"), InputError, "record 0")
    add("read_removals-dir", A, lambda w: read_removals(w / "dir.jsonl"), InputError, "is a directory")
    add("read_user_json-utf16", A, lambda w: files.read_user_json(w / "utf16.jsonl"), InputError, "not UTF-8")

    def model_case(name: str, kind: str, call: Callable[..., Any], culprit: str) -> None:
        add(name, kind, call, InputError, culprit)
        MODEL_CASES.add(name)

    from meg.surgery import neuron_spec

    model_case("neuron_spec-layer-minus-1", B, lambda w, m: neuron_spec(m[0], -1), "layer -1")
    model_case("neuron_spec-layer-too-big", B, lambda w, m: neuron_spec(m[0], 2), "valid: 0..1")
    model_case("neuron_spec-layer-float", B, lambda w, m: neuron_spec(m[0], 1.0), "layer")
    model_case("neuron_spec-layer-bool", B, lambda w, m: neuron_spec(m[0], True), "layer")
    model_case("MegEditor.remove-unknown-id", C, lambda w, m: _editor(m).remove(m[2], [12345]), "id 12345")
    model_case("MegEditor.remove-all", C, lambda w, m: _editor(m).remove(m[2], list(m[2].ids)), "remove all")
    model_case("MegEditor.remove-float", B, lambda w, m: _editor(m).remove(m[2], [1.5]), "1.5")
    model_case("MegEditor.replace-unknown", C, lambda w, m: _editor(m).replace(
        m[2], [EditRequest("Never in the pack", "x")]), "no edit with prompt")
    model_case("EditedModel.generate-max-new-0", B, lambda w, m: _edited(m).generate(["hi"], 0), "max_new_tokens")
    model_case("EditedModel.generate-max-new-neg", B, lambda w, m: _edited(m).generate(["hi"], -4), "max_new_tokens")
    model_case("EditedModel.generate-max-new-text", B, lambda w, m: _edited(m).generate(["hi"], "5"), "max_new_tokens")
    model_case("EditedModel.generate-long-prompt", C, lambda w, m: _edited(m).generate(["hi", LONG], 5),
               "context of 64 tokens")
    return cases


def _editor(m):
    from meg.editor import MegEditor

    return MegEditor(m[0], m[1], m[2].config, m[2].template, model_name=str(MODEL))


def _edited(m):
    from meg.edited_model import EditedModel

    return EditedModel(m[0], m[1], m[2])


MODEL_CASES: set[str] = set()  # API cases that also take (model, tokenizer, pack)
API = _api_cases()


@pytest.mark.parametrize("name", sorted(API))
def test_api_case(name, w, request, monkeypatch):
    import meg.editor

    _, call, error, culprit = API[name]

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran before the input was checked")

    for stage in ("tuned_encoder", "collect_weights"):
        if hasattr(meg.editor, stage):
            monkeypatch.setattr(meg.editor, stage, no_stage)
    args = (w, request.getfixturevalue("loaded")) if name in MODEL_CASES else (w,)
    with pytest.raises(error) as caught:
        call(*args)
    message = str(caught.value)
    assert isinstance(caught.value, MegError | OSError)
    assert "\n" not in message and culprit in message, message


def test_the_second_corpus_counts_at_least_80_cases_over_every_class():
    counts = Counter(c.kind for c in CASES.values())
    counts.update(kind for kind, *_ in API.values())
    print(f"\nindependent bad-input corpus: {sum(counts.values())} cases")
    for kind, count in sorted(counts.items()):
        print(f"  {kind}: {count}")
    assert sum(counts.values()) >= 80
    assert all(counts[k] >= 2 for k in (A, B, C, D, E, F)), counts
