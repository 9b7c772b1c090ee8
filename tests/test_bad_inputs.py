"""The bad-input corpus (issue 18): malformed files, options, paths, devices, models and packs, through the CLI
(typer's runner) and the Python API. Every case must end in a one-line error that names the culprit, exit code 2
on the CLI (the API raises a MegError / OSError subclass), and no traceback. CLI cases that need no model must
fail BEFORE one is loaded: the model loader is replaced by one that fails loudly as an internal error (exit 1).

`CASES` counts the corpus by class (docs/LOG.md, 2026-12-01, hardening). Hypothesis fuzzes the edit-file and
pack-config readers at the end (bounded: 150 examples each, no deadline).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bad_input_cases import FIXTURES, MODEL, Case, check_one_line_error, refuse_models
from meg import files
from meg.cli.main import app
from meg.errors import InputError, MegError, PackError
from meg.pack import EditPack

runner = CliRunner()

GOOD = {"prompt": "The capital of France is", "target": "Paris", "subject": "France",
        "paraphrases": ["France's capital city is"], "unrelated": ["The capital of Spain is"]}
DEEP = "[" * 50_000 + "]" * 50_000


def _line(**changes: Any) -> str:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...}) + "\n"


# name -> bytes of an input file in the workspace
FILES: dict[str, bytes] = {
    "good.jsonl": (_line() + _line(prompt="The capital of Italy is", target="Rome", subject="Italy",
                                  paraphrases=..., unrelated=...)).encode(),
    "nonutf8.jsonl": b'{"prompt": "Caf\xe9 is in", "target": "Paris"}\n',
    "nonutf8.json": b'[{"prompt": "Caf\xe9 is in", "target_new": "Paris"}]',
    "latin1-config.json": b'{"seed": "\xff"}',
    "deep.jsonl": (DEEP + "\n").encode(),
    "deep.json": DEEP.encode(),
    "deep-config.json": ('{"a": ' + DEEP + "}").encode(),
    "para-object.jsonl": _line(paraphrases={"France's capital city is": 1}).encode(),
    "para-number.jsonl": _line(paraphrases=5).encode(),
    "para-bool.jsonl": _line(paraphrases=True).encode(),
    "para-nested.jsonl": _line(paraphrases=[["nested"]]).encode(),
    "para-empty-string.jsonl": _line(paraphrases=["ok", ""]).encode(),
    "unrelated-object.jsonl": _line(unrelated={"q": "a"}).encode(),
    "unrelated-number.jsonl": _line(unrelated=3.5).encode(),
    "answers-object.jsonl": _line(unrelated_answers={"a": "b"}).encode(),
    "answers-count.jsonl": _line(unrelated_answers=["a", "b"]).encode(),
    "subject-empty.jsonl": _line(subject="").encode(),
    "subject-blank.jsonl": _line(subject="   ").encode(),
    "subject-number.jsonl": _line(subject=7).encode(),
    "subject-list.jsonl": _line(subject=["France"]).encode(),
    "typo-paraphrase.jsonl": _line(paraphrases=..., paraphrase=["x"]).encode(),
    "typo-promt.jsonl": (json.dumps({"promt": "The capital of France is", "target": "Paris"}) + "\n").encode(),
    "target-missing.jsonl": _line(target=...).encode(),
    "target-empty.jsonl": _line(target="").encode(),
    "target-number.jsonl": _line(target=42).encode(),
    "prompt-list.jsonl": _line(prompt=["The capital of France is"]).encode(),
    "prompt-surrogate.jsonl": b'{"prompt": "bad \\ud800 text", "target": "Paris"}\n',
    "case-id-object.jsonl": _line(case_id={"id": 1}).encode(),
    "record-list.jsonl": b'["The capital of France is", "Paris"]\n',
    "bad-json-line.jsonl": (_line() + '{"prompt": "x", "target": \n').encode(),
    "empty.jsonl": b"",
    "blank-lines.jsonl": b"\n\n   \n",
    "data-not-list.json": b'{"prompt": "x", "target_new": "y"}',
    "data-empty-list.json": b"[]",
    "data-record-string.json": b'["just a string"]',
    "data-unknown-kind.json": b'[{"question": "x", "answer": "y"}]',
    "counterfact-one-bad.json": json.dumps([
        {"case_id": i, "prompt": f"The capital of Land{i} is", "subject": f"Land{i}", "target_new": t,
         "ground_truth": "Paris", "rephrase_prompt": f"Land{i}'s capital is", "locality_prompt": "The capital of Spain is",
         "locality_ground_truth": "Madrid"} for i, t in enumerate(["Rome", "", "Oslo"])]).encode(),
    "config-list.json": b"[1, 2]",
    "config-string.json": b'"seed"',
    "config-unknown.json": b'{"sed": 1}',
    "config-wrong-type.json": b'{"layer": "one"}',
    "config-negative-layer.json": b'{"layer": -1}',
    "config-bad-router.json": b'{"router": "telepathy"}',
    "config-bad-json.json": b'{"seed": 1,',
    "configs-list.json": b'{"ft": [1]}',
    "configs-unknown-method.json": b'{"rome": {}}',
    "configs-unbenched-bad.json": b'{"ft": {}, "memit": {"v_lr": 0}}',
    "configs-bad-field.json": b'{"ft": {"learning_rate": 1}}',
    "configs-bad-value.json": b'{"ft": {"lr": -1}}',
    "pairs-bad.jsonl": b'{"question": "x"}\n',
    "queries-bad.jsonl": b'{"query": "x"}\n',
    "prompts-nonutf8.txt": b"caf\xe9\n",
    "a-file": b"I am a regular file\n",
}


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """The workspace: every file above, directories where files belong, a format-2 pack with a manifest, models."""
    root = tmp_path_factory.mktemp("bad")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    (root / "dir.jsonl").mkdir()
    (root / "dir.json").mkdir()
    (root / "empty-dir").mkdir()
    (root / "user-dir").mkdir()
    (root / "user-dir" / "thesis.txt").write_text("years of work\n")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "weights.bin").write_bytes(b"\0" * 16)
    (root / "bad-config-model").mkdir()
    (root / "bad-config-model" / "config.json").write_text("{broken")
    EditPack.load(FIXTURES / "pack-retrieval").save(root / "pack")  # format 2, with a manifest
    return root


@pytest.fixture()
def no_model(monkeypatch):
    refuse_models(monkeypatch)


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add(name: str, kind: str, args: str | list[str], culprit: str, **kw: Any) -> None:
        assert name not in cases, name
        cases[name] = Case(kind, args.split() if isinstance(args, str) else args, culprit, **kw)

    edit = "edit --model {model} --out {w}/out-pack --edits"
    # --- escaped exceptions: files that are not what they should be ---
    for f in ("nonutf8.jsonl", "nonutf8.json"):
        add(f"edit-{f}", "not UTF-8", f"{edit} {{w}}/{f}", "not UTF-8")
        add(f"run-{f}", "not UTF-8", f"run --model {{model}} --out {{w}}/run-x --data {{w}}/{f}", "not UTF-8")
        add(f"bench-{f}", "not UTF-8", f"bench --model {{model}} --out {{w}}/bench-x --methods unedited --data {{w}}/{f}",
            "not UTF-8")
        add(f"eval-{f}", "not UTF-8", f"eval --model {{model}} --pack {{w}}/pack --out {{w}}/eval-x --data {{w}}/{f}",
            "not UTF-8")
        add(f"route-bench-{f}", "not UTF-8", f"route-bench --out {{w}}/rb --data {{w}}/{f}", "not UTF-8")
        add(f"layers-{f}", "not UTF-8", f"layers --model {{model}} --data {{w}}/{f}", "not UTF-8")
    add("edit-config-latin1", "not UTF-8", f"{edit} {{w}}/good.jsonl --config {{w}}/latin1-config.json", "not UTF-8")
    add("run-config-latin1", "not UTF-8", "run --model {model} --out {w}/run-x --config {w}/latin1-config.json",
        "latin1-config.json")
    add("bench-configs-latin1", "not UTF-8",
        "bench --model {model} --out {w}/bench-x --methods meg --configs {w}/latin1-config.json", "not UTF-8")
    add("edit-pairs-latin1", "not UTF-8", f"{edit} {{w}}/good.jsonl --pseudo-pairs {{w}}/nonutf8.jsonl", "not UTF-8")
    add("edit-unrelated-latin1", "not UTF-8", f"{edit} {{w}}/good.jsonl --unrelated {{w}}/nonutf8.jsonl", "not UTF-8")
    add("generate-prompts-latin1", "not UTF-8",
        "generate --model {model} --pack {w}/pack --prompts-file {w}/prompts-nonutf8.txt", "not UTF-8")

    for option, command in (("--edits", edit.rsplit(" ", 1)[0]), ("--data", "run --model {model} --out {w}/run-x"),
                            ("--data", "bench --model {model} --out {w}/bench-x --methods unedited"),
                            ("--data", "eval --model {model} --pack {w}/pack --out {w}/eval-x"),
                            ("--data", "route-bench --out {w}/rb"), ("--data", "layers --model {model}"),
                            ("--data", "bench-collect --model {model}")):
        verb = command.split()[0]
        add(f"{verb}-data-dir", "directory for a file", f"{command} {option} {{w}}/dir.json", "is a directory")
        add(f"{verb}-data-missing", "directory for a file", f"{command} {option} {{w}}/nothing.jsonl",
            "no such file")
    add("edit-config-dir", "directory for a file", f"{edit} {{w}}/good.jsonl --config {{w}}/dir.json", "is a directory")
    add("run-config-dir", "directory for a file", "run --model {model} --out {w}/run-x --config {w}/dir.json",
        "is a directory")
    add("edit-pairs-dir", "directory for a file", f"{edit} {{w}}/good.jsonl --pseudo-pairs {{w}}/dir.jsonl",
        "is a directory")
    add("edit-unrelated-dir", "directory for a file", f"{edit} {{w}}/good.jsonl --unrelated {{w}}/dir.jsonl",
        "is a directory")
    add("generate-prompts-dir", "directory for a file", "generate --model {model} --pack {w}/pack --prompts-file "
        "{w}/dir.jsonl", "is a directory")
    add("generate-pack-is-file", "directory for a file", "generate --model {model} --pack {w}/a-file --prompt x",
        "a-file")
    add("eval-pack-missing", "directory for a file", "eval --model {model} --pack {w}/no-pack --out {w}/eval-x",
        "no-pack")

    for f, culprit in (("deep.jsonl", "nested too deeply"), ("deep.json", "nested too deeply")):
        add(f"edit-{f}", "deep JSON", f"{edit} {{w}}/{f}", culprit)
        add(f"run-{f}", "deep JSON", f"run --model {{model}} --out {{w}}/run-x --data {{w}}/{f}", culprit)
        add(f"route-bench-{f}", "deep JSON", f"route-bench --out {{w}}/rb --data {{w}}/{f}", culprit)
    add("edit-config-deep", "deep JSON", f"{edit} {{w}}/good.jsonl --config {{w}}/deep-config.json", "nested too deeply")
    add("bench-configs-deep", "deep JSON", "bench --model {model} --out {w}/bench-x --methods ft "
        "--configs {w}/deep-config.json", "nested too deeply")

    # --- list fields of the wrong type, empty subjects, typos: silently accepted before ---
    for f, culprit in (("para-object.jsonl", "'paraphrases' must be a list"), ("para-number.jsonl", "'paraphrases'"),
                       ("para-bool.jsonl", "'paraphrases'"), ("para-nested.jsonl", "'paraphrases'"),
                       ("para-empty-string.jsonl", "'paraphrases'"), ("unrelated-object.jsonl", "'unrelated'"),
                       ("unrelated-number.jsonl", "'unrelated'"), ("answers-object.jsonl", "'unrelated_answers'"),
                       ("answers-count.jsonl", "'unrelated_answers'")):
        kind = "list field as object/number"
        add(f"edit-{f}", kind, f"{edit} {{w}}/{f}", culprit)
        add(f"run-{f}", kind, f"run --model {{model}} --out {{w}}/run-x --data {{w}}/{f}", culprit)
    for f, culprit in (("subject-empty.jsonl", "'subject'"), ("subject-blank.jsonl", "'subject'"),
                       ("subject-number.jsonl", "'subject'"), ("subject-list.jsonl", "'subject'")):
        add(f"edit-{f}", "empty or mistyped subject", f"{edit} {{w}}/{f}", culprit)
        add(f"bench-{f}", "empty or mistyped subject",
            f"bench --model {{model}} --out {{w}}/bench-x --methods unedited --data {{w}}/{f}", culprit)
    for f, culprit in (("typo-paraphrase.jsonl", "did you mean 'paraphrases'"), ("typo-promt.jsonl", "did you mean "
                       "'prompt'"), ("target-missing.jsonl", "missing field 'target'"), ("target-empty.jsonl",
                       "'target'"), ("target-number.jsonl", "'target'"), ("prompt-list.jsonl", "'prompt'"),
                       ("prompt-surrogate.jsonl", "surrogate"), ("case-id-object.jsonl", "'case_id'"),
                       ("record-list.jsonl", "expected a JSON object"), ("bad-json-line.jsonl", "line 2"),
                       ("empty.jsonl", "no edit records"), ("blank-lines.jsonl", "no edit records")):
        add(f"edit-{f}", "bad edit record", f"{edit} {{w}}/{f}", culprit)
    for f, culprit in (("data-not-list.json", "non-empty JSON list"), ("data-empty-list.json", "non-empty JSON list"),
                       ("data-record-string.json", "record 0"), ("data-unknown-kind.json", "cannot tell the data set"),
                       ("counterfact-one-bad.json", "record 1")):
        add(f"run-{f}", "bad data file", f"run --model {{model}} --out {{w}}/run-x --data {{w}}/{f}", culprit)
        add(f"edit-{f}", "bad data file", f"{edit} {{w}}/{f}", culprit)
    add("edit-pairs-bad", "bad data file", f"{edit} {{w}}/good.jsonl --pseudo-pairs {{w}}/pairs-bad.jsonl",
        "'paraphrase'")
    add("edit-queries-bad", "bad data file", f"{edit} {{w}}/good.jsonl --unrelated {{w}}/queries-bad.jsonl", "'prompt'")

    # --- models and devices ---
    model_commands = {"edit": f"edit --out {{w}}/out-pack --edits {{w}}/good.jsonl",
                      "run": "run --out {w}/run-x", "eval": "eval --pack {w}/pack --out {w}/eval-x",
                      "bench": "bench --out {w}/bench-x --methods unedited", "generate": "generate --pack {w}/pack "
                      "--prompt hello", "layers": "layers", "bench-collect": "bench-collect", "demo": "demo --out "
                      "{w}/demo-x", "bench-infer": "bench-infer --pack {w}/pack --data {w}/good.jsonl"}
    for verb, command in model_commands.items():
        add(f"{verb}-model-empty-dir", "not a model", f"{command} --model {{w}}/empty-dir", "no config.json")
        add(f"{verb}-model-junk-dir", "not a model", f"{command} --model {{w}}/not-a-model", "no config.json")
        add(f"{verb}-model-file", "not a model", f"{command} --model {{w}}/a-file", "not a model directory")
        add(f"{verb}-model-missing", "not a model", f"{command} --model ./no/such/model", "no such directory")
        if verb != "demo":
            add(f"{verb}-device-cuda99", "unavailable device", f"{command} --model {{model}} --device cuda:99", "cuda:99")
            add(f"{verb}-device-nonsense", "unavailable device", f"{command} --model {{model}} --device warp-drive",
                "warp-drive")
    add("generate-model-bad-config", "not a model", "generate --pack {w}/pack --prompt hi --model "
        "{w}/bad-config-model", "bad-config-model", before_model=False)

    # --- numbers and choices checked at once ---
    for verb, command in (("run", "run --model {model} --out {w}/run-x"), ("eval", "eval --model {model} --pack "
                          "{w}/pack --out {w}/eval-x"), ("bench", "bench --model {model} --out {w}/bench-x --methods "
                          "unedited"), ("route-bench", "route-bench --out {w}/rb"), ("layers", "layers --model "
                          "{model}"), ("bench-collect", "bench-collect --model {model}"), ("demo", "demo --out {w}/d")):
        for n in ("-1", "0"):
            add(f"{verb}-n{n}", "--n below 1", f"{command} --n {n}", f"--n must be >= 1, got {n}")
    for verb, command in (("run", "run --model {model} --out {w}/run-x"), ("layers", "layers --model {model}"),
                          ("bench-collect", "bench-collect --model {model}")):
        add(f"{verb}-n-too-many", "--n above the records", f"{command} --n 100000", "--n 100000 is more than")
    infer = "bench-infer --model {model} --pack {w}/pack --data {w}/good.jsonl"
    for option, value, culprit in (("--caches", "hot", "--caches must be one of cold, precomputed, warm"),
                                   ("--stand-ins", "gpt5-shape", "--stand-ins must be one of"),
                                   ("--methods", "memit", "--methods must be one of meg, knn"),
                                   ("--batches", "0,16", "--batches"), ("--max-new-tokens", "0", "--max-new-tokens"),
                                   ("--prompts-per-batch", "-2", "--prompts-per-batch"), ("--name", "../x", "--name")):
        add(f"bench-infer{option}-{value}", "numbers and choices checked at once", f"{infer} {option} {value}", culprit)
    add("bench-infer-nothing-to-time", "numbers and choices checked at once", f"{infer} --no-model-rows",
        "--no-model-rows needs --stand-ins")
    add("bench-infer-pack-missing", "missing pack", "bench-infer --model {model} --pack {w}/no-pack --data "
        "{w}/good.jsonl", "no-pack")
    add("edit-layer-negative", "negative layer", f"{edit} {{w}}/good.jsonl --layer -1", "--layer must be >= 0")
    add("bench-collect-layer-negative", "negative layer", "bench-collect --model {model} --layer -2",
        "--layer must be >= 0")
    add("layers-layers-negative", "negative layer", "layers --model {model} --layers 0,-1", "--layers values must be")
    add("edit-config-negative-layer", "negative layer", f"{edit} {{w}}/good.jsonl --config "
        "{w}/config-negative-layer.json", "MegConfig.layer")
    add("run-zsre-target", "unknown choice", "run --model {model} --out {w}/run-x --zsre-target newest",
        "--zsre-target must be one of new, true")
    add("run-zsre-target-empty", "unknown choice", [*"run --model {model} --out {w}/run-x --zsre-target".split(), ""],
        "--zsre-target")
    add("run-method-unknown", "unknown choice", "run --model {model} --out {w}/run-x --method rome", "'rome'")
    add("edit-router-unknown", "unknown choice", f"{edit} {{w}}/good.jsonl --router telepathy", "telepathy")
    add("edit-template-unknown", "unknown choice", f"{edit} {{w}}/good.jsonl --template nosuchset", "nosuchset")
    add("layers-preset-unknown", "unknown choice", "layers --model {model} --preset turbo", "'turbo'")
    add("route-bench-routers-empty", "empty list", "route-bench --out {w}/rb --routers ,", "--routers")
    add("route-bench-router-unknown", "unknown choice", "route-bench --out {w}/rb --routers psychic", "psychic")
    for label, value in (("comma", ","), ("spaced-comma", " , "), ("blank", "")):
        add(f"bench-methods-empty-{label}", "empty method list",
            [*"bench --model {model} --out {w}/bench-x --methods".split(), value], "--methods must name at least one")
    add("bench-methods-unknown", "empty method list", "bench --model {model} --out {w}/bench-x --methods meg,rome",
        "'rome'")
    add("bench-methods-twice", "empty method list", "bench --model {model} --out {w}/bench-x --methods ft,ft",
        "more than once")
    add("generate-max-new-0", "invalid max_new_tokens", "generate --model {model} --pack {w}/pack --prompt hi "
        "--max-new-tokens 0", "--max-new-tokens must be >= 1")
    add("generate-max-new-neg", "invalid max_new_tokens", "generate --model {model} --pack {w}/pack --prompt hi "
        "--max-new-tokens -5", "--max-new-tokens must be >= 1")
    add("generate-no-prompt", "invalid max_new_tokens", "generate --model {model} --pack {w}/pack",
        "at least one --prompt")
    add("generate-empty-prompt", "invalid max_new_tokens", [*"generate --model {model} --pack {w}/pack --prompt".split(),
                                                            "  "], "is empty")
    add("bench-collect-batch-sizes-zero", "numbers checked at once", "bench-collect --model {model} --batch-sizes 0,8",
        "--batch-sizes values must be >= 1")
    add("bench-collect-batch-sizes-text", "numbers checked at once", "bench-collect --model {model} --batch-sizes "
        "eight", "--batch-sizes must be comma-separated integers")
    add("bench-collect-single-0", "numbers checked at once", "bench-collect --model {model} --single-edits 0",
        "--single-edits must be >= 1")
    add("layers-layers-text", "numbers checked at once", "layers --model {model} --layers one", "--layers")
    add("layers-layers-empty", "numbers checked at once", "layers --model {model} --layers ,", "--layers")
    for f, culprit in (("config-list.json", "must be a JSON object"), ("config-string.json", "must be a JSON object"),
                       ("config-unknown.json", "sed"), ("config-wrong-type.json", "MegConfig.layer"),
                       ("config-bad-router.json", "telepathy"), ("config-bad-json.json", "invalid JSON")):
        add(f"edit-{f}", "bad config", f"{edit} {{w}}/good.jsonl --config {{w}}/{f}", culprit)
        add(f"run-{f}", "bad config", f"run --model {{model}} --out {{w}}/run-x --config {{w}}/{f}", culprit)
    for f, culprit in (("configs-list.json", "FTConfig"), ("configs-unknown-method.json", "'rome'"),
                       ("configs-unbenched-bad.json", "MEMITConfig.v_lr"),
                       ("configs-bad-field.json", "learning_rate"), ("configs-bad-value.json", "FTConfig.lr")):
        add(f"bench-{f}", "bad config", f"bench --model {{model}} --out {{w}}/bench-x --methods ft --configs {{w}}/{f}",
            culprit)
    add("bench-name-path", "bad option", "bench --model {model} --out {w}/bench-x --methods ft --name ../../x",
        "--name must be a plain file name")
    add("route-bench-name-path", "bad option", "route-bench --out {w}/rb --name a/b", "--name must be a plain")
    add("cache-clear-kind", "bad option", "cache clear --kind models --yes", "models")

    # --- outputs: under a regular file, an existing file, a user's directory (refused before any work) ---
    for verb, command, option in (("edit", f"edit --model {{model}} --edits {{w}}/good.jsonl", "--out"),
                                  ("run", "run --model {model}", "--out"),
                                  ("eval", "eval --model {model} --pack {w}/pack", "--out"),
                                  ("bench", "bench --model {model} --methods unedited", "--out"),
                                  ("demo", "demo", "--out"), ("layers", "layers --model {model}", "--out"),
                                  ("bench-collect", "bench-collect --model {model}", "--out"),
                                  ("route-bench", "route-bench", "--out")):
        add(f"{verb}-out-under-file", "output under a file", f"{command} {option} {{w}}/a-file/sub", "a-file is a file")
        add(f"{verb}-out-is-file", "output under a file", f"{command} {option} {{w}}/a-file", "a-file")
    add("bench-results-under-file", "output under a file", "bench --model {model} --methods unedited --out "
        "{w}/bench-x --results {w}/a-file/r", "a-file is a file")
    add("bench-work-under-file", "output under a file", "bench --model {model} --methods unedited --out "
        "{w}/bench-x --work-dir {w}/a-file/w", "a-file is a file")
    add("edit-work-under-file", "output under a file", f"{edit} {{w}}/good.jsonl --work-dir {{w}}/a-file/w",
        "a-file is a file")
    add("edit-out-exists", "overwrite refused", f"edit --model {{model}} --edits {{w}}/good.jsonl --out {{w}}/pack",
        "already exists")
    add("edit-overwrite-user-dir", "overwrite refused", "edit --model {model} --edits {w}/good.jsonl --out "
        "{w}/user-dir --overwrite", "not an edit pack")
    add("edit-overwrite-file", "overwrite refused", "edit --model {model} --edits {w}/good.jsonl --out {w}/a-file "
        "--overwrite", "a-file")

    # --- skip-invalid: the published file's bad record is dropped with a warning and the run goes on (to the
    # model load, which this test refuses) ---
    for verb, command in (("edit", f"edit --model {{model}} --out {{w}}/out-pack --edits"),
                          ("run", "run --model {model} --out {w}/run-skip --data"),
                          ("bench", "bench --model {model} --out {w}/bench-skip --methods unedited --data"),
                          ("eval", "eval --model {model} --pack {w}/pack --out {w}/eval-skip --data")):
        add(f"{verb}-skip-invalid", "skip-invalid", f"{command} {{w}}/counterfact-one-bad.json --skip-invalid",
            "skipped 1 invalid record", extra={"reaches_model": True})
    return cases


CASES = _cases()


def _check_one_line_error(result, culprit: str, code: int = 2) -> str:
    return check_one_line_error(result, culprit, code, anywhere=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_case(name, w, no_model, monkeypatch):
    case = CASES[name]
    if case.extra.get("reaches_model"):
        import meg.evaluation.runner
        import meg.models

        def arrive(*args, **kwargs):
            raise InputError("reached the model load")

        for module in (meg.models, meg.evaluation.runner):
            monkeypatch.setattr(module, "load_causal_lm", arrive)
    elif not case.before_model:
        monkeypatch.undo()
    result = runner.invoke(app, case.argv(w))
    _check_one_line_error(result, case.culprit)
    if case.extra.get("reaches_model"):
        assert "warning: " in result.stderr and "reached the model load" in result.stderr, result.output
    assert not list(w.glob("out-pack*")) and not list(w.glob(".out-pack*")), "nothing may be written"


def test_the_user_directory_survives_every_overwrite_case(w):
    assert (w / "user-dir" / "thesis.txt").read_text() == "years of work\n"
    assert (w / "a-file").read_bytes() == FILES["a-file"]


def test_a_prompt_longer_than_the_context_is_named_at_generate_time(w):
    prompt = "The capital of France is " * 20  # about 120 tokens; the model has 64 positions
    result = runner.invoke(app, ["generate", "--model", str(MODEL), "--pack", str(w / "pack"), "--prompt", "hello",
                                 "--prompt", prompt])
    line = _check_one_line_error(result, "exceeds the model's context of 64 tokens")
    assert "prompt 1" in line


def test_an_internal_bug_is_one_line_asking_for_a_report(w, monkeypatch):
    import meg.pack

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(meg.pack, "verify", broken)
    result = runner.invoke(app, ["pack", "verify", str(w / "pack")])
    line = _check_one_line_error(result, "internal error, please report", code=1)
    assert "ZeroDivisionError" in line and "MEG_DEBUG=1" in line
    monkeypatch.setenv("MEG_DEBUG", "1")
    debug = runner.invoke(app, ["pack", "verify", str(w / "pack")])
    assert isinstance(debug.exception, ZeroDivisionError)  # the traceback is there for whoever asks


# --- damaged and lying packs, through `meg pack verify`, `meg generate` and EditPack.load ---


def _copy(w: Path, name: str, source: Path | None = None) -> Path:
    target = w / "packs" / name
    if not target.exists():
        shutil.copytree(source or w / "pack", target, symlinks=True)
    return target


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_config(pack: Path, change: Callable[[dict], Any], manifest: bool = False) -> None:
    meta = json.loads((pack / files.PACK_CONFIG).read_text())
    meta = change(meta) or meta
    (pack / files.PACK_CONFIG).write_text(json.dumps(meta))
    if manifest:
        files.write_manifest(pack)


def _without_manifest(pack: Path) -> Path:
    (pack / files.PACK_MANIFEST).unlink(missing_ok=True)
    _edit_config(pack, lambda m: m.pop("manifest", None) and None)
    return pack


def _pack_cases() -> dict[str, tuple[str, Callable[[Path], Path], str]]:
    """name -> (class, make the damaged pack from the workspace, culprit)."""
    cases: dict[str, tuple[str, Callable[[Path], Path], str]] = {}
    for name in ("pack_config.json", "edits.jsonl", "vectors.safetensors", "router.safetensors",
                 "generator.safetensors"):
        for where, at in (("head", 3), ("middle", None), ("tail", -2)):
            cases[f"flip-{name}-{where}"] = ("corrupted pack file", lambda w, n=name, a=at, k=where: (
                _flip(_copy(w, f"flip-{n}-{k}") / n, a), _copy(w, f"flip-{n}-{k}"))[1], name)
    cases["flip-manifest"] = ("corrupted pack file", lambda w: (
        _flip(_copy(w, "flip-manifest") / files.PACK_MANIFEST, 10), _copy(w, "flip-manifest"))[1], "manifest")
    cases["truncated-generator"] = ("corrupted pack file", lambda w: (
        (p := _copy(w, "trunc") / "generator.safetensors").write_bytes(p.read_bytes()[:-100]), p.parent)[1],
        "generator.safetensors")
    cases["damaged-generator-manifest-updated"] = ("damaged generator", lambda w: (
        (p := _copy(w, "dmg-gen") / "generator.safetensors").write_bytes(b"\x08" + p.read_bytes()[1:200]),
        files.write_manifest(p.parent), p.parent)[2], "generator.safetensors")
    cases["missing-file"] = ("missing or extra file", lambda w: (
        (_copy(w, "missing") / "router.safetensors").unlink(), _copy(w, "missing"))[1], "router.safetensors")
    cases["extra-file"] = ("missing or extra file", lambda w: (
        (_copy(w, "extra") / "notes.txt").write_text("hi"), _copy(w, "extra"))[1], "notes.txt")
    cases["manifest-deleted"] = ("missing or extra file", lambda w: (
        (_copy(w, "no-manifest") / files.PACK_MANIFEST).unlink(), _copy(w, "no-manifest"))[1], "manifest.json")
    cases["manifest-not-json"] = ("missing or extra file", lambda w: (
        (_copy(w, "manifest-junk") / files.PACK_MANIFEST).write_text("{"), _copy(w, "manifest-junk"))[1],
        "manifest")

    def manifest_name(label: str, name: str) -> Callable[[Path], Path]:
        def make(w: Path) -> Path:
            pack = _copy(w, f"manifest-name-{label}")
            data = json.loads((pack / files.PACK_MANIFEST).read_text())
            data["files"][name] = {"size": 3, "sha256": "0" * 64}
            (pack / files.PACK_MANIFEST).write_text(json.dumps(data))
            return pack
        return make

    for label, name in (("parent", "../outside.txt"), ("absolute", "/etc/hostname"), ("nested", "a/b"),
                        ("dotdot", "..")):
        cases[f"manifest-name-{label}"] = ("file names leaving the pack", manifest_name(label, name), repr(name))

    def symlink_without_manifest(w: Path) -> Path:
        pack = _without_manifest(_copy(w, "symlink-no-manifest"))
        outside = w / "outside-vectors.safetensors"
        shutil.copy(pack / "vectors.safetensors", outside)
        (pack / "vectors.safetensors").unlink()
        (pack / "vectors.safetensors").symlink_to(outside)
        return pack

    cases["symlink-out-no-manifest"] = ("file names leaving the pack", symlink_without_manifest,
                                        "leads outside the pack")

    def symlink_with_manifest(w: Path) -> Path:
        pack = _copy(w, "symlink-manifest")
        outside = w / "outside-router.safetensors"
        shutil.copy(pack / "router.safetensors", outside)
        (pack / "router.safetensors").unlink()
        (pack / "router.safetensors").symlink_to(outside)
        return pack

    cases["symlink-out-manifest"] = ("file names leaving the pack", symlink_with_manifest, "router.safetensors")

    def untrusted(role: str, model: str) -> Callable[[Path], Path]:
        def change(meta: dict) -> None:
            if role == "encoder":
                meta["meg"]["encoder"]["model"] = model
            else:  # the fixture's router has no verifier: give it one
                meta["meg"]["retrieval"]["verifier"] = {"model": model}

        def make(w: Path) -> Path:
            pack = _copy(w, f"untrusted-{role}-{model.replace('/', '_')}")
            _edit_config(pack, change, manifest=True)  # a well-formed pack: only the model it names is wrong
            return pack
        return make

    cases["untrusted-encoder-hub"] = ("untrusted model", untrusted("encoder", "evil/encoder"), "evil/encoder")
    cases["untrusted-encoder-path"] = ("untrusted model", untrusted("encoder", "/tmp/anything"), "/tmp/anything")
    cases["untrusted-verifier"] = ("untrusted model", untrusted("verifier", "evil/verifier"), "evil/verifier")

    # a pack config of the wrong JSON type (no manifest: the reader itself must say what is wrong)
    for label, content in (("list", "[1, 2]"), ("string", '"pack"'), ("number", "3"), ("null", "null"),
                           ("not-json", "{"), ("deep", DEEP), ("not-utf8", "\udcff")):
        def make(w: Path, label=label, content=content) -> Path:
            pack = _without_manifest(_copy(w, f"config-{label}"))
            data = content.encode("utf-8", "surrogateescape")
            (pack / files.PACK_CONFIG).write_bytes(data)
            return pack
        cases[f"config-{label}"] = ("pack config of the wrong JSON type", make, "pack_config.json")
    for label, change in (("meg-list", lambda m: m.__setitem__("meg", [])),
                          ("neuron-string", lambda m: m.__setitem__("neuron", "x")),
                          ("history-number", lambda m: m.__setitem__("history", 5)),
                          ("next-id-text", lambda m: m.__setitem__("next_id", "many")),
                          ("router-number", lambda m: m["meg"].__setitem__("router", 5)),
                          ("template-number", lambda m: m.__setitem__("template", 5)),
                          ("base-model-list", lambda m: m.__setitem__("base_model", [])),
                          ("format-version-text", lambda m: m.__setitem__("format_version", "2")),
                          ("format-other", lambda m: m.__setitem__("format", "zip")),
                          ("huge-generator", lambda m: m["meg"]["generator"].__setitem__("preset", "paper-deep")),
                          ("generator-unknown-field", lambda m: m["meg"]["generator"].__setitem__("hidden", 10**12)),
                          ("generator-list", lambda m: m["meg"].__setitem__("generator", [1])),
                          ("layer-negative", lambda m: m["meg"].__setitem__("layer", -3)),
                          ("dim-zero", lambda m: m["neuron"].__setitem__("hidden_size", 0))):
        def make(w: Path, label=label, change=change) -> Path:
            pack = _without_manifest(_copy(w, f"field-{label}"))
            _edit_config(pack, change)
            return pack
        cases[f"config-{label}"] = ("pack config of the wrong JSON type", make, "pack")
    return cases


PACK_CASES = _pack_cases()


@pytest.mark.parametrize("name", sorted(PACK_CASES))
def test_a_bad_pack_is_refused_by_load_verify_and_generate(name, w, no_model):
    kind, make, culprit = PACK_CASES[name]
    pack = make(w)
    with pytest.raises(PackError) as caught:
        EditPack.load(pack)
    message = str(caught.value)
    assert "\n" not in message and culprit in message, message
    command = ["generate", "--model", str(MODEL), "--pack", str(pack), "--prompt", "hi"]  # fails before the model
    _check_one_line_error(runner.invoke(app, command), culprit)
    if kind != "untrusted model":  # verify checks files and structure; it only notes foreign models
        _check_one_line_error(runner.invoke(app, ["pack", "verify", str(pack)]), culprit)


def test_a_pack_naming_a_foreign_model_loads_when_the_caller_trusts_it(w):
    pack = PACK_CASES["untrusted-encoder-hub"][1](w)
    assert EditPack.load(pack, trust_models=["evil/encoder"]).config.encoder.model == "evil/encoder"
    result = runner.invoke(app, ["pack", "verify", str(pack)])
    assert result.exit_code == 0 and "--trust-pack-models evil/encoder" in result.output


def test_verify_passes_a_sound_pack_and_says_when_there_is_nothing_to_check(w):
    result = runner.invoke(app, ["pack", "verify", str(w / "pack")])
    assert result.exit_code == 0 and "files match the manifest" in result.output, result.output
    legacy = runner.invoke(app, ["pack", "verify", str(FIXTURES / "pack-paper-gate")])
    assert legacy.exit_code == 0 and "no manifest" in legacy.output


# --- the Python API: the same classes raise one-line errors of the documented types ---


def _api_cases(w: Path) -> dict[str, tuple[str, Callable[[], Any], type, str]]:
    from meg.benchmarks.compare import BenchConfig
    from meg.config import MegConfig
    from meg.data import load_dataset
    from meg.diffusion.generator import WeightGenerator
    from meg.evaluation.runner import RunConfig
    from meg.methods import check_config
    from meg.models import check_device, load_causal_lm
    from meg.requests import load_edit_file, load_pseudo_pairs, request_from_dict

    cases: dict[str, tuple[str, Callable[[], Any], type, str]] = {}

    def add(name: str, kind: str, call: Callable[[], Any], error: type, culprit: str) -> None:
        cases[name] = (kind, call, error, culprit)

    base = {"prompt": "p", "target": "t"}
    for field_name, value, culprit in (("paraphrases", {"a": 1}, "'paraphrases'"), ("paraphrases", 5, "'paraphrases'"),
                                       ("unrelated", {"a": 1}, "'unrelated'"), ("unrelated", 2.5, "'unrelated'"),
                                       ("unrelated_answers", {"a": 1}, "'unrelated_answers'"),
                                       ("subject", "", "'subject'"), ("subject", " ", "'subject'"),
                                       ("subject", 3, "'subject'"), ("target", "", "'target'"),
                                       ("target", None, "'target'"), ("prompt", ["p"], "'prompt'"),
                                       ("case_id", [1], "'case_id'"), ("ground_truth", {"a": 1}, "'ground_truth'"),
                                       ("paraphrase", ["x"], "did you mean 'paraphrases'")):
        add(f"request-{field_name}-{type(value).__name__}-{value!r}"[:60], "bad edit record",
            lambda f=field_name, v=value: request_from_dict({**base, f: v}, "api record 0"), InputError, culprit)
    add("request-not-object", "bad edit record", lambda: request_from_dict(["p", "t"], "api record 0"), InputError,
        "expected a JSON object")
    for name, culprit in (("nonutf8.jsonl", "not UTF-8"), ("dir.jsonl", "is a directory"),
                          ("deep.jsonl", "nested too deeply"), ("nothing.jsonl", "no such"),
                          ("empty.jsonl", "no edit records"), ("para-object.jsonl", "'paraphrases'")):
        add(f"load_edit_file-{name}", "edit file", lambda n=name: load_edit_file(w / n), InputError, culprit)
    for name, culprit in (("nonutf8.json", "not UTF-8"), ("dir.json", "is a directory"),
                          ("deep.json", "nested too deeply"), ("data-not-list.json", "non-empty JSON list"),
                          ("counterfact-one-bad.json", "record 1")):
        add(f"load_dataset-{name}", "data file", lambda n=name: load_dataset(w / n), InputError, culprit)
    add("load_pseudo_pairs-dir", "data file", lambda: load_pseudo_pairs(w / "dir.jsonl"), InputError, "is a directory")
    add("read_user_json-deep", "deep JSON", lambda: files.read_user_json(w / "deep-config.json"), InputError,
        "nested too deeply")
    for field_name, value, culprit in (("n", 0, "RunConfig.n"), ("n", -1, "RunConfig.n"),
                                       ("zsre_target", "newest", "RunConfig.zsre_target"),
                                       ("max_new_tokens", 0, "RunConfig.max_new_tokens"),
                                       ("chunk_size", 0, "RunConfig.chunk_size"),
                                       ("method_config", [1], "RunConfig.method_config")):
        add(f"RunConfig-{field_name}-{value}", "silent acceptance", lambda f=field_name, v=value: RunConfig(**{f: v}),
            InputError, culprit)
    for methods, configs, culprit in (((), None, "at least one method"), (("meg", "meg"), None, "more than once"),
                                      (("rome",), None, "'rome'"), (("ft",), {"rome": {}}, "not a method of"),
                                      (("ft",), {"memit": {"v_lr": -1}}, "MEMITConfig.v_lr"),
                                      (("ft",), {"ft": {"lr": "fast"}}, "FTConfig.lr"),
                                      (("unedited",), {"unedited": {"x": 1}}, "takes no config"),
                                      (("meg",), {"meg": {"layer": -1}}, "MegConfig.layer")):
        add(f"BenchConfig-{methods}-{configs}", "empty method list",
            lambda m=methods, c=configs: BenchConfig(RunConfig(), m, c), InputError, culprit)
    add("check_config-memit-preset", "bad config", lambda: check_config("memit", "nonexistent"), InputError,
        "nonexistent")
    add("MegConfig-layer-negative", "negative layer", lambda: MegConfig(layer=-1), InputError, "MegConfig.layer")
    for device in ("cuda:99", "warp-drive", "meta"):
        add(f"check_device-{device}", "unavailable device", lambda d=device: check_device(d), InputError, device)
        add(f"load_causal_lm-device-{device}", "unavailable device",
            lambda d=device: load_causal_lm(str(MODEL), device=d), InputError, device)
    for name, culprit in (("empty-dir", "no config.json"), ("not-a-model", "no config.json"),
                          ("a-file", "not a model directory"), ("bad-config-model", "could not load model")):
        add(f"load_causal_lm-{name}", "not a model", lambda n=name: load_causal_lm(str(w / n)), InputError, culprit)
    add("pack-save-over-user-dir", "overwrite refused",
        lambda: EditPack.load(w / "pack").save(w / "user-dir", overwrite=True), InputError, "not an edit pack")
    add("pack-save-over-file", "overwrite refused", lambda: EditPack.load(w / "pack").save(w / "a-file", overwrite=True),
        InputError, "a-file")
    add("pack-save-under-file", "output under a file", lambda: EditPack.load(w / "pack").save(w / "a-file" / "p"),
        InputError, "a-file is a file")
    add("pack-save-exists", "overwrite refused", lambda: EditPack.load(w / "pack").save(w / "pack"), FileExistsError,
        "already exists")
    add("pack-load-untrusted-string", "untrusted model",
        lambda: EditPack.load(PACK_CASES["untrusted-verifier"][1](w), trust_models="evil/encoder"), PackError,
        "evil/verifier")

    def damaged_generator_dir(which: str) -> Callable[[], Any]:
        def call() -> Any:
            target = w / f"generator-{which}"
            if not target.exists():
                pack = EditPack.load(w / "pack")
                pack.generator.save(target)
                victim = target / ("generator.safetensors" if which == "weights" else "generator_config.json")
                victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
            return WeightGenerator.load(target)
        return call

    add("generator-weights-damaged", "damaged generator", damaged_generator_dir("weights"), InputError,
        "generator.safetensors")
    add("generator-config-damaged", "damaged generator", damaged_generator_dir("config"), InputError,
        "generator_config.json")
    return cases


API_NAMES = sorted(_api_cases(Path("/nonexistent")))


@pytest.mark.parametrize("name", API_NAMES)
def test_api_case(name, w):
    kind, call, error, culprit = _api_cases(w)[name]
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, MegError | OSError)
    assert "\n" not in message and culprit in message, message
    assert (w / "user-dir" / "thesis.txt").is_file()


def test_the_api_generate_refuses_bad_max_new_tokens_and_long_prompts(tokenizer):
    from conftest import build_model
    from meg.decoding import greedy_generate

    model = build_model("gpt2", vocab_size=len(tokenizer))  # 64 positions
    for bad in (0, -3, 1.5, True):
        with pytest.raises(InputError, match="max_new_tokens must be an integer >= 1"):
            greedy_generate(model, tokenizer, ["The capital of France is"], bad)
    with pytest.raises(InputError, match="prompt 1 .* exceeds the model's context of 64 tokens"):
        greedy_generate(model, tokenizer, ["short", "The capital of France is " * 12], 20)
    assert len(greedy_generate(model, tokenizer, ["The capital of France is"], 3)) == 1


def test_the_corpus_covers_every_class_with_at_least_150_cases():
    counts = Counter(c.kind for c in CASES.values())
    counts.update(kind for kind, *_ in PACK_CASES.values())
    counts.update(kind for kind, *_ in _api_cases(Path("/nonexistent")).values())
    total = sum(counts.values())
    print(f"\nbad-input corpus: {total} cases (+{len(PACK_CASES)} run through 3 entry points)")
    for kind, count in sorted(counts.items()):
        print(f"  {kind}: {count}")
    assert total >= 150
    for kind in ("not UTF-8", "directory for a file", "deep JSON", "list field as object/number", "not a model",
                 "unavailable device", "invalid max_new_tokens", "empty method list", "damaged generator",
                 "pack config of the wrong JSON type", "--n below 1", "negative layer", "unknown choice",
                 "empty or mistyped subject", "output under a file", "overwrite refused", "corrupted pack file",
                 "file names leaving the pack", "untrusted model", "missing or extra file", "skip-invalid"):
        assert counts[kind] >= 2, kind


# --- property tests: only InputError / PackError ever escapes the readers ---

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["prompt", "target", "subject", "paraphrases", "unrelated", "unrelated_answers", "case_id", "ground_truth",
          "target_new", "rephrase_prompt", "locality_prompt", "locality_ground_truth", "paraphrase", "id"]
RECORDS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON, max_size=7) | JSON
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(RECORDS)
def test_request_from_dict_raises_only_input_errors(data):
    try:
        request = request_from(data)
    except InputError as err:
        assert "\n" not in str(err)
        return
    assert request.prompt.strip() and request.target.strip()
    json.dumps(request.to_json(), ensure_ascii=False).encode("utf-8")  # whatever is accepted can be written


def request_from(data):
    from meg.requests import request_from_dict

    return request_from_dict(data, "fuzz record 0")


@FUZZ
@given(st.lists(RECORDS, max_size=4) | st.binary(max_size=200).map(lambda b: [b]))
def test_load_edit_file_raises_only_input_errors(tmp_path_factory, rows):
    from meg.requests import load_edit_file

    path = tmp_path_factory.mktemp("fuzz") / "edits.jsonl"
    if rows and isinstance(rows[0], bytes):
        path.write_bytes(rows[0])
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8", errors="surrogatepass")
    try:
        load_edit_file(path)
    except InputError as err:
        assert "\n" not in str(err)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON object (lists not descended)."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    return out


@pytest.fixture(scope="module")
def fuzz_pack(tmp_path_factory) -> tuple[Path, dict]:
    """A format-2 pack without a manifest (so the config reader itself is fuzzed) and its config."""
    root = tmp_path_factory.mktemp("fuzzpack")
    EditPack.load(FIXTURES / "pack-retrieval").save(root / "pack")
    _without_manifest(root / "pack")
    return root / "pack", json.loads((root / "pack" / files.PACK_CONFIG).read_text())


CONFIG_PATHS = _paths(json.loads((FIXTURES / "pack-retrieval" / "pack_config.json").read_text()))


@FUZZ
@given(st.data())
def test_pack_config_reader_raises_only_pack_errors(fuzz_pack, data):
    pack, original = fuzz_pack
    strategy = st.sampled_from(["replace", "delete", "whole", "text"])
    how = data.draw(strategy)
    meta = json.loads(json.dumps(original))
    if how == "whole":
        content = json.dumps(data.draw(JSON))
    elif how == "text":
        content = data.draw(st.text(max_size=60))
    else:
        paths = _paths(meta)[1:]
        path = data.draw(st.sampled_from(paths))
        node = meta
        for key in path[:-1]:
            node = node[key]
        if how == "delete":
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(JSON)
        content = json.dumps(meta)
    (pack / files.PACK_CONFIG).write_text(content, encoding="utf-8", errors="surrogatepass")
    try:
        EditPack.load(pack)
    except (PackError, InputError) as err:
        assert "\n" not in str(err)
    finally:
        (pack / files.PACK_CONFIG).write_text(json.dumps(original))
