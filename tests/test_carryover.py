"""`meg carryover`: an edit's collected neuron on rephrasings of its question (the oracle of Generality)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FACTS, NEW_TARGETS, PARAPHRASES, SUBJECTS
from meg.benchmarks.carryover import (
    FIRING, KINDS, OVERLAP, Rephrasing, firing_bucket, measure, rephrasings, subject_overlap, summarize, write_carryover,
)
from meg.collection import CollectionConfig, collect_weights
from meg.data.knowedit import subject_aliases
from meg.decoding import last_token_pre_activations
from meg.errors import InputError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.surgery import neuron_spec

CONFIG = CollectionConfig(lr=3.0, steps=100, input_lr_scale=0.01, init_bias=1.0, batch_size=8)
EDITS = [EditRequest(p, t, subject=s, paraphrases=[para], case_id=str(i))
         for i, ((p, _), t, s, para) in enumerate(zip(FACTS[:8], NEW_TARGETS, SUBJECTS, PARAPHRASES))]


def test_rephrasings_pair_each_edit_with_its_paraphrases_and_aliases():
    data = [*EDITS[:2], EditRequest(EDITS[2].prompt, "another target", paraphrases=["replaced later"])]
    aliases = {EDITS[1].prompt: [("The mother tongue of D. Darrieux is", "Japanese")], "not an edit": [("x", "y")]}
    cases = rephrasings(EDITS, data, aliases)
    assert cases == [Rephrasing(0, PARAPHRASES[0], NEW_TARGETS[0], KINDS[0]),
                     Rephrasing(1, PARAPHRASES[1], NEW_TARGETS[1], KINDS[0]),
                     Rephrasing(1, "The mother tongue of D. Darrieux is", "Japanese", KINDS[1])]


def test_subject_overlap_and_firing_buckets():
    assert subject_overlap("Danielle Darrieux", "Danielle Darrieux's mother tongue is") == OVERLAP[0]
    assert subject_overlap("Danielle Darrieux", "D. Darrieux speaks") == OVERLAP[1]
    assert subject_overlap("Danielle Darrieux", "The actress speaks") == OVERLAP[2]
    assert subject_overlap(None, "anything") == OVERLAP[2]
    labels = [label for _, label in FIRING]
    assert [firing_bucket(x, 2.0) for x in (3.0, 2.0, 1.5, 0.5, 0.0, -1.0)] == [labels[0], labels[0], labels[1],
                                                                                labels[2], labels[3], labels[3]]
    assert firing_bucket(1.0, 0.0) == labels[0] and firing_bucket(-1.0, -2.0) == labels[3]


def test_subject_aliases_are_read_from_knowedit_portability(tmp_path):
    record = {"subject": "Goursez Vreizh", "prompt": "The country of Goursez Vreizh is", "target_new": "Franche-Comte",
              "locality": {}, "portability": {"Subject_Aliasing": [
                  {"prompt": "The country of Gorsedd of Brittany is", "ground_truth": [["Franche-Comte", "FC"]]},
                  {"prompt": "An alias without an answer", "ground_truth": []}]}}
    later = {**record, "portability": {"Subject_Aliasing": [{"prompt": "later alias", "ground_truth": "Paris"}]}}
    path = tmp_path / "wiki.json"
    path.write_text(json.dumps([record, {**record, "prompt": "no aliases", "portability": {}}]))
    assert subject_aliases(path) == {record["prompt"]: [("The country of Gorsedd of Brittany is", "Franche-Comte")]}
    path.write_text(json.dumps([record, later]))  # the same prompt edited twice: the later record's aliases
    assert subject_aliases(path) == {record["prompt"]: [("later alias", "Paris")]}
    path.write_text(json.dumps([{**record, "portability": {"Subject_Aliasing": ["not an object"]}}]))
    with pytest.raises(InputError, match=r"wiki.json record 0: field 'portability.Subject_Aliasing' must be a list"):
        subject_aliases(path)


def test_pre_activation_is_linear_in_the_key_and_independent_of_the_batch(fact_gpt2, tokenizer):
    spec = neuron_spec(fact_gpt2, 1)
    weights = torch.randn(3, spec.dim, generator=torch.Generator().manual_seed(0))
    texts = [FACTS[0][0], FACTS[1][0], "Hi"]  # different lengths: the batch is padded
    together = last_token_pre_activations(fact_gpt2, tokenizer, texts, spec, weights)
    alone = [last_token_pre_activations(fact_gpt2, tokenizer, [t], spec, weights[i : i + 1])[0]
             for i, t in enumerate(texts)]
    assert together == pytest.approx(alone, abs=1e-4)
    w_in, bias, _ = spec.split(weights)
    doubled = spec.join(2 * w_in, 2 * bias, torch.zeros_like(w_in))  # w_out plays no part
    assert last_token_pre_activations(fact_gpt2, tokenizer, texts, spec, doubled) == pytest.approx(
        [2 * x for x in together], abs=1e-4)


@pytest.mark.integration
def test_the_oracle_on_paraphrases_of_collected_edits(fact_gpt2, tokenizer, tmp_path):
    template, spec = PromptTemplate(), neuron_spec(fact_gpt2, 1)
    result = collect_weights(fact_gpt2, tokenizer, spec, EDITS, CONFIG, template, progress=False)
    cases = rephrasings(EDITS, EDITS)
    records = measure(fact_gpt2, tokenizer, spec, template, result.vectors, EDITS, cases)
    assert [r["text"] for r in records] == PARAPHRASES[:8] and "pack_ag" not in records[0]
    # the neuron on the edit prompt answers the new target exactly where collection succeeded
    assert [r["prompt_ag"] for r in records] == result.success.tolist()
    zeros = measure(fact_gpt2, tokenizer, spec, template, torch.zeros_like(result.vectors), EDITS, cases)
    # the no-op neuron: the oracle is the unedited model, and nothing fires
    assert [r["oracle_ag"] for r in zeros] == [r["base_ag"] for r in records] and all(r["fire"] == 0 for r in zeros)
    summary = summarize(records)[KINDS[0]]
    failures = summary["failures"]
    assert summary["cases"] == 8 and summary["collected"] == sum(result.success.tolist())
    assert failures["oracle_failures"] == sum(not r["oracle_ag"] for r in records) == failures["not_collected"] \
        + failures["collected_fires_below_half"] + failures["collected_fires_at_least_half"]
    for key in ("by_length", "by_overlap", "by_firing"):
        assert sum(g["cases"] for g in summary[key].values()) == 8
    paths = write_carryover(tmp_path, "carry", records, {"command": "meg carryover", "description": "t"})
    data = json.loads(paths["json"].read_text())
    assert len(data["cases"]) == 8 and data["summaries"][KINDS[0]]["oracle_ag"] == summary["oracle_ag"]
    assert "## Why the oracle fails" in paths["md"].read_text() and paths["png"].is_file()
