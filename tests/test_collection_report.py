"""`meg collect-report`: where collection fails, by answer length, familiarity and relation, per variant."""

from __future__ import annotations

import json
import math

import pytest

from conftest import FACTS, NEW_TARGETS, SUBJECTS
from meg.benchmarks.collection_report import (
    FAMILIARITY, Variant, edit_facts, measure_variant, relation_of, summarize, write_collection_report,
)
from meg.collection import CollectionConfig
from meg.decoding import answer_log_probs
from meg.errors import InputError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest

CONFIG = CollectionConfig(lr=3.0, steps=100, input_lr_scale=0.01, init_bias=1.0, batch_size=8)
REQUESTS = [EditRequest(p, t, subject=s, case_id=str(i))
            for i, ((p, _), t, s) in enumerate(zip(FACTS[:8], NEW_TARGETS, SUBJECTS))]


def test_variants_parse_and_bad_ones_are_named():
    assert Variant.parse("preset") == Variant("preset")
    v = Variant.parse("steps=240,input_lr_scale=0.1,layer=1,schedule=cosine")
    assert v.changes == {"steps": 240, "input_lr_scale": 0.1, "schedule": "cosine"} and v.layer == 1
    assert v.config(CONFIG).steps == 240 and CONFIG.steps == 100
    for text, message in (("stepz=3", "not a collection setting"), ("steps", "not FIELD=VALUE"),
                          ("layer=-1", "layer must be an integer >= 0")):
        with pytest.raises(InputError, match=message):
            Variant.parse(text)
    with pytest.raises(InputError, match="steps must be >= 1"):
        Variant.parse("steps=0").config(CONFIG)


def test_relation_is_the_prompt_without_its_subject():
    assert relation_of(EditRequest("The capital of France is", "Rome", subject="France")) == "The capital of {} is"
    assert relation_of(EditRequest("The capital of France is", "Rome")) == "(no subject)"


def test_answer_log_probs_rank_the_known_answer_above_a_new_one(fact_gpt2, tokenizer):
    """The tiny model was trained on FACTS: their true answers are far more probable than the new targets."""
    prompts = [p for p, _ in FACTS[:8]]
    known = answer_log_probs(fact_gpt2, tokenizer, prompts, [t for _, t in FACTS[:8]])
    new = answer_log_probs(fact_gpt2, tokenizer, prompts, NEW_TARGETS[:8])
    assert all(k <= 0 for k in known) and sum(known) > sum(new)


@pytest.mark.integration
def test_report_groups_cover_every_edit_and_files_are_written(fact_gpt2, tokenizer, tmp_path):
    template = PromptTemplate()
    facts = edit_facts(fact_gpt2, tokenizer, REQUESTS, template)
    assert all(f["tokens"] >= 1 and f["familiarity"] in {b[1] for b in FAMILIARITY} for f in facts)
    runs = [measure_variant(fact_gpt2, tokenizer, REQUESTS, template, CONFIG, Variant.parse(v), None)
            for v in ("preset", "steps=1,layer=0")]
    summaries = [summarize(facts, run) for run in runs]
    for s in summaries:
        assert s["overall"]["edits"] == len(REQUESTS)
        for key in ("by_length", "by_familiarity"):
            assert sum(g["edits"] for g in s[key].values()) == len(REQUESTS)
    assert summaries[0]["overall"]["success"] > summaries[1]["overall"]["success"]  # 1 step cannot write a fact
    assert runs[1]["layer"] == 0 and max(runs[1]["steps"]) == 1
    failed = summaries[1]["failure_loss"]
    assert failed["n"] == len(REQUESTS) - sum(runs[1]["success"]) and failed["p10"] <= failed["median"] <= failed["p90"]
    paths = write_collection_report(tmp_path, "report", runs, facts, {"command": "meg collect-report", "description": "t"})
    data = json.loads(paths["json"].read_text())
    assert [s["variant"] for s in data["summaries"]] == ["preset", "steps=1,layer=0"] and len(data["edits"]) == 8
    assert "## Success % by answer length" in paths["md"].read_text() and paths["png"].is_file()
    assert not math.isnan(data["summaries"][0]["seconds_per_edit"])
