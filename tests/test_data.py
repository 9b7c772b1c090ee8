"""Data loaders: the shared data files (skipped without ../shared/data), malformed records, shipped assets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meg.data import Dataset, Fact, detect_kind, load_dataset, template_for
from meg.data.counterfact import load_counterfact, true_facts_counterfact
from meg.data.defaults import default_calibration_pairs, default_pseudo_pairs, default_unrelated, demo_requests
from meg.data.knowedit import load_knowedit, true_facts_knowedit
from meg.data.templates import TEMPLATES
from meg.data.zsre import load_zsre, true_facts_zsre
from meg.errors import InputError
from meg.requests import EditRequest, request_from_dict

SHARED = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")

FLAT = {
    "case_id": 7, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
    "target_new": "English", "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
    "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French",
}  # fmt: skip
ROME = {
    "case_id": 0,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                          "target_new": {"str": "English"}, "target_true": {"str": "French"}},
    "paraphrase_prompts": ["Danielle Darrieux's mother tongue is", "Danielle Darrieux speaks"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of"],
}  # fmt: skip
MEND = {
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft", "answers": ["uniform"], "pred": "uniform",
    "loc": "nq question: john goodman's character in the big lebowski", "loc_ans": "Walter Sobchak", "cond": "",
}  # fmt: skip
KNOWEDIT_ZSRE = {
    "subject": "Epaspidoceras", "prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae",
    "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
    "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]}]},
    "portability": {},
}  # fmt: skip
KNOWEDIT_WIKI = {
    "subject": "Ingrīda Amantova", "prompt": "The gender of Ingrīda Amantova is", "target_new": "female",
    "portability": {},
    "locality": {"Relation_Specificity": [{"prompt": "The place of birth of Ingrīda Amantova is", "ground_truth": [["Cēsis"]]},
                                          {"prompt": "The spouse of Ingrīda Amantova is", "ground_truth": [[]]}]},
}  # fmt: skip


def write(tmp_path: Path, name: str, records) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


# --- formats, on tiny files -----------------------------------------------------------------------------------


def test_flat_counterfact(tmp_path):
    path = write(tmp_path, "cf.json", [FLAT])
    (request,) = load_counterfact(path)
    assert request == EditRequest(FLAT["prompt"], "English", "Danielle Darrieux", (FLAT["rephrase_prompt"],),
                                  (FLAT["locality_prompt"],), "French", "7", ("French",))  # fmt: skip
    assert request.for_editing().unrelated_answers == ()
    assert true_facts_counterfact(path) == [
        Fact(FLAT["prompt"], "French"), Fact(FLAT["rephrase_prompt"], "French"), Fact(FLAT["locality_prompt"], "French")
    ]


def test_rome_counterfact(tmp_path):
    path = write(tmp_path, "rome.json", [ROME])
    (request,) = load_counterfact(path)
    assert request.prompt == "The mother tongue of Danielle Darrieux is"
    assert (request.target, request.ground_truth, request.case_id) == ("English", "French", "0")
    assert request.paraphrases == tuple(ROME["paraphrase_prompts"])
    assert request.unrelated == tuple(ROME["neighborhood_prompts"])
    assert request.unrelated_answers == ("French",) * len(ROME["neighborhood_prompts"])  # ROME: same true object
    assert {f.answer for f in true_facts_counterfact(path)} == {"French"}
    assert len(true_facts_counterfact(path)) == 4
    assert detect_kind(path) == "counterfact"


def test_mend_zsre(tmp_path):
    path = write(tmp_path, "mend.json", [MEND])
    (request,) = load_zsre(path)
    assert (request.prompt, request.target, request.ground_truth) == (MEND["src"], "unmanned aircraft", "uniform")
    assert request.paraphrases == (MEND["rephrase"],)
    assert request.unrelated == ("john goodman's character in the big lebowski",)
    assert request.unrelated_answers == ("Walter Sobchak",)
    facts = true_facts_zsre(path)
    assert facts[-1] == Fact("john goodman's character in the big lebowski", "Walter Sobchak", "zsre")
    assert facts[0].line() == f"Q: Answer the following question in less than 5 words. {MEND['src']}\nA: uniform."


def test_knowedit_zsre(tmp_path):
    path = write(tmp_path, "ke.json", [KNOWEDIT_ZSRE])
    data = load_dataset(path)
    assert (data.kind, data.template) == ("zsre", TEMPLATES["zsre"])
    (request,) = data.requests
    assert (request.target, request.ground_truth) == ("Noctuidae", "Aspidoceratidae")
    assert request.unrelated == ("The taxon rank of Epaspidoceras is",)
    assert request.unrelated_answers == ("genus",)
    assert true_facts_zsre(path)[-1] == Fact("The taxon rank of Epaspidoceras is", "genus", "knowedit")


def test_knowedit_wiki_nested_and_empty_answers(tmp_path):
    path = write(tmp_path, "wiki.json", [KNOWEDIT_WIKI])
    assert detect_kind(path) == "knowedit"
    (request,) = load_knowedit(path)
    assert request.ground_truth is None and request.paraphrases == () and len(request.unrelated) == 2
    assert request.unrelated_answers == ("Cēsis", "")  # "" = unknown
    # the empty locality answer leaves a usable unrelated prompt but no fact
    assert true_facts_knowedit(path) == [Fact("The place of birth of Ingrīda Amantova is", "Cēsis", "knowedit")]


def test_unrelated_answers_must_align_with_the_unrelated_queries():
    record = {"prompt": "The capital of France is", "target": "Lyon", "unrelated": ["A", "B"],
              "unrelated_answers": ["x"]}  # fmt: skip
    with pytest.raises(InputError, match="^edits.jsonl record 4: field 'unrelated_answers' must be a list of strings"):
        request_from_dict(record, "edits.jsonl record 4")
    assert request_from_dict({**record, "unrelated_answers": ["x", ""]}, "r").to_json()["unrelated_answers"] == ["x", ""]


def test_wikibio_refused(tmp_path):
    path = write(tmp_path, "wikibio.json", [{"text": "A passage.", "labels": "More.", "concept": "x", "locality": {}}])
    with pytest.raises(InputError, match="WikiBio.*not supported"):
        load_dataset(path)
    with pytest.raises(InputError, match="WikiBio"):
        load_knowedit(path)


def test_jsonl_and_unknown(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps({"prompt": "The capital of France is", "target": "Rome"}) + "\n")
    data = load_dataset(path)
    assert isinstance(data, Dataset) and data.kind == "jsonl" and data.requests[0].target == "Rome"
    with pytest.raises(InputError, match="cannot tell the data set"):
        load_dataset(write(tmp_path, "other.json", [{"question": "q"}]))
    with pytest.raises(InputError, match="one of"):
        load_dataset(path, kind="wiki")  # type: ignore[arg-type]


def test_template_for():
    assert template_for("zsre").format("Who?") == "Q: Answer the following question in less than 5 words. Who?\nA:"
    assert template_for("jsonl", "zsre") == TEMPLATES["zsre"]
    assert template_for("counterfact", "Fact: {prompt}").format("x") == "Fact: x"
    with pytest.raises(InputError, match="valid names: counterfact, zsre"):
        template_for("wiki")


# --- malformed records: one line naming file, record index and field ------------------------------------------


@pytest.mark.parametrize(
    ("name", "records", "field"),
    [
        ("cf-missing.json", [FLAT, {k: v for k, v in FLAT.items() if k != "target_new"}], "target_new"),
        ("cf-empty.json", [FLAT, {**FLAT, "target_new": "  "}], "target_new"),
        ("cf-type.json", [FLAT, {**FLAT, "prompt": 17}], "prompt"),
        ("cf-paraphrase.json", [FLAT, {**FLAT, "rephrase_prompt": [1]}], "rephrase_prompt"),
        ("rome-target.json", [ROME, {**ROME, "requested_rewrite": {**ROME["requested_rewrite"], "target_new": {}}}],
         "requested_rewrite.target_new.str"),
        ("mend-answers.json", [MEND, {**MEND, "answers": "uniform"}], "answers"),
        ("mend-alt.json", [MEND, {**MEND, "alt": ""}], "alt"),
        ("ke-locality.json", [KNOWEDIT_ZSRE, {**KNOWEDIT_ZSRE, "locality": {"Relation_Specificity": [{"prompt": 3}]}}],
         "locality.Relation_Specificity.prompt"),
        ("ke-truth.json", [KNOWEDIT_ZSRE, {**KNOWEDIT_ZSRE, "ground_truth": [{"a": 1}]}], "ground_truth"),
    ],
)  # fmt: skip
def test_malformed_record_one_line(tmp_path, name, records, field):
    path = write(tmp_path, name, records)
    with pytest.raises(InputError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name} record 1: field {field!r}"), message


def test_skip_invalid_warns_and_drops(tmp_path):
    path = write(tmp_path, "cf.json", [FLAT, {**FLAT, "target_new": ""}, FLAT])
    with pytest.warns(UserWarning, match="skipped 1 invalid record"):
        data = load_dataset(path, skip_invalid=True)
    assert len(data) == 2


def test_not_a_list(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"prompt": "x"}')
    with pytest.raises(InputError, match="bad.json: expected a non-empty JSON list"):
        load_counterfact(path)
    path.write_text("[{")
    with pytest.raises(InputError, match="bad.json: invalid JSON"):
        load_counterfact(path)


# --- the shared data files --------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("counterfact/counterfact-edit.json", "counterfact", 10_000),
        ("counterfact/counterfact-train.json", "counterfact", 10_000),
        ("counterfact/counterfact-val.json", "counterfact", 1_919),
        ("zsre/knowedit_zsre_test_all.json", "zsre", 1_304),
        ("knowedit/benchmark_wiki_counterfact_train_cf.json", "knowedit", 1_428),
        ("knowedit/benchmark_wiki_recent_recent_train.json", "knowedit", 570),
    ],
)
def test_shared_files(name, kind, count):
    data = load_dataset(SHARED / name)
    assert (data.kind, len(data)) == (kind, count)
    assert data.template == TEMPLATES[kind]
    assert all(r.prompt and r.target and r.case_id is not None for r in data.requests)
    if kind != "knowedit":
        assert all(r.ground_truth and len(r.paraphrases) == 1 and r.unrelated for r in data.requests)


@needs_shared
def test_shared_counterfact_fields():
    first = load_dataset(SHARED / "counterfact/counterfact-edit.json").requests[0]
    assert first == EditRequest(
        "The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux",
        ("Where Danielle Darrieux is from, people speak the language of",), ("Michel Rocard is a native speaker of",),
        "French", "0", ("French",),
    )  # fmt: skip
    assert len(true_facts_counterfact(SHARED / "counterfact/counterfact-val.json")) == 3 * 1_919


@needs_shared
def test_shared_mend_zsre():
    path = SHARED / "zsre/zsre_mend_train-1k.json"
    # two published records have an empty new answer: strict loading names the first, skip_invalid drops both
    with pytest.raises(InputError, match=r"^zsre_mend_train-1k.json record 534: field 'alt'"):
        load_dataset(path)
    with pytest.warns(UserWarning, match="skipped 2 invalid"):
        data = load_dataset(path, skip_invalid=True)
    assert (data.kind, len(data)) == ("zsre", 998)
    assert not any(u.startswith("nq question") for r in data.requests for u in r.unrelated)
    facts = true_facts_zsre(path)  # true facts do not need the new answer: all 1,000 records count
    assert len(facts) == 3_000 and {f.template for f in facts} == {"zsre"}


@needs_shared
def test_shared_knowedit_facts():
    facts = true_facts_zsre(SHARED / "zsre/knowedit_zsre_test_all.json")
    assert len(facts) == 1_304 * 4 and {f.template for f in facts} == {"zsre", "knowedit"}
    wiki = true_facts_knowedit(SHARED / "knowedit/benchmark_wiki_recent_recent_train.json")
    assert wiki and all(isinstance(f.answer, str) and f.answer for f in wiki)


@needs_shared
def test_shared_wikibio_refused():
    with pytest.raises(InputError, match="not supported"):
        load_dataset(SHARED / "knowedit/benchmark_WikiBio_wikibio-test-all.json")


# --- shipped assets -----------------------------------------------------------------------------------------------


def test_assets_load():
    pairs, unrelated, demo = default_pseudo_pairs(), default_unrelated(), demo_requests()
    assert 2_500 <= len(pairs) <= 3_500 and 1_500 <= len(unrelated) <= 2_500 and len(demo) == 300
    assert len({p.question for p in pairs}) == len(pairs)
    calibration = default_calibration_pairs()  # for calibration only: never a pair the encoder was tuned on
    assert len(calibration) == 3_000 and all(p.subject for p in calibration)
    texts = lambda ps: {q for p in ps for q in (p.question, p.paraphrase)}  # noqa: E731
    assert not texts(calibration) & texts(pairs)
    assert all(r.ground_truth and r.paraphrases and r.unrelated for r in demo)


@needs_shared
def test_assets_disjoint_from_benchmarks():
    def key(text: str) -> str:
        return " ".join(text.lower().split())

    benchmark = set()
    for name in ("counterfact/counterfact-edit.json", "counterfact/counterfact-val.json", "zsre/knowedit_zsre_test_all.json"):
        for r in load_dataset(SHARED / name).requests:
            benchmark.update(key(q) for q in (r.prompt, *r.paraphrases, *r.unrelated))
    pairs = default_pseudo_pairs() + default_calibration_pairs()
    shipped = {key(q) for p in pairs for q in (p.question, p.paraphrase)}
    shipped |= {key(q) for q in default_unrelated()}
    assert not shipped & benchmark
    val = load_dataset(SHARED / "counterfact/counterfact-val.json").requests[:300]
    assert demo_requests() == val


def test_sample_with_subject_draws_seeded_indices_of_prompts_naming_their_subject():
    from meg.data import sample_with_subject
    from meg.requests import EditRequest

    requests = [EditRequest(f"Where is {s} based?", "Oslo", subject=s) for s in ("Acme", "Bolt", "Crux", "Dyne")]
    requests += [EditRequest("Where is it based?", "Oslo", subject="Acme"), EditRequest("Where is Acme?", "Oslo")]
    drawn = sample_with_subject(requests, 3, seed=7)
    assert drawn == sample_with_subject(requests, 3, seed=7) and len(set(drawn)) == 3 and set(drawn) <= {0, 1, 2, 3}
    assert sorted(sample_with_subject(requests, 10, seed=0)) == [0, 1, 2, 3]  # all usable ones when fewer than n


def test_split_folds_cuts_consecutive_records_into_near_equal_folds(tmp_path):
    """scripts/split_folds.py: the cross-fitted KnowEdit benchmarks' folds (docs/results/routing-*-fold-*)."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "split_folds.py"
    spec = importlib.util.spec_from_file_location("split_folds", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.folds(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    data = tmp_path / "records.json"
    data.write_text(json.dumps([{"prompt": f"p{i}"} for i in range(5)]))
    subprocess.run([sys.executable, str(script), "--data", str(data), "--folds", "2", "--out", str(tmp_path / "f")],
                   check=True, capture_output=True)
    parts = [json.loads((tmp_path / "f" / f"records-fold-{x}.json").read_text()) for x in "ab"]
    assert [len(p) for p in parts] == [3, 2] and parts[0] + parts[1] == json.loads(data.read_text())
