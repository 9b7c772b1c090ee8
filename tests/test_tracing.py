"""Causal tracing: the invariants of a trace (meg/benchmarks/tracing.py); its two hooks are tested with the other
surgery internals."""

from __future__ import annotations

import json

import pytest

from conftest import FACTS, SUBJECTS
from meg.benchmarks.tracing import POSITIONS, TraceConfig, TracedFact, causal_trace, encode_fact, load_facts, report
from meg.errors import InputError

KNOWN = [TracedFact(prompt, subject, answer) for (prompt, answer), subject in zip(FACTS, SUBJECTS)]


def test_fact_positions_are_the_subject_tokens_and_the_prompt_end(tokenizer):
    fact = TracedFact("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "French")
    encoded = encode_fact(tokenizer, fact)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())
    first, last = encoded.positions["subject_first"], encoded.positions["subject_last"]
    assert tokenizer.decode(encoded.input_ids[first : last + 1]).strip() == "Danielle Darrieux"
    assert encoded.positions["prompt_last"] == len(tokens) - 1
    assert tokenizer.decode([encoded.answer_id]).strip() == tokenizer.decode(tokenizer(" French")["input_ids"][:1]).strip()
    assert encode_fact(tokenizer, TracedFact("The capital of France is", "Spain", "Paris")) is None


def test_a_trace_meets_its_invariants_on_a_model_that_knows_the_facts(fact_gpt2, tokenizer):
    result = causal_trace(fact_gpt2, tokenizer, KNOWN, TraceConfig(samples=3))
    assert result["known"] == len(KNOWN)  # fact_gpt2 answers every fact
    assert result["mean_corrupted"] < result["mean_clean"]  # noise on the subject hurts recall
    last = fact_gpt2.config.n_layer - 1
    for trace in result["traces"]:
        # Restoring the last block's output at the prompt's end restores the clean next-token distribution.
        assert trace["restored"]["prompt_last"][last] == pytest.approx(trace["clean"], abs=1e-5)
        # A subject token restored after the last block cannot reach the prediction at the prompt's end.
        if trace["restored"]["subject_last"]:
            assert trace["restored"]["subject_last"][last] == pytest.approx(trace["corrupted"], abs=1e-5)
    assert result["aie"]["prompt_last"][last] == pytest.approx(result["mean_clean"] - result["mean_corrupted"], abs=1e-5)
    again = causal_trace(fact_gpt2, tokenizer, KNOWN, TraceConfig(samples=3))
    assert again["aie"] == result["aie"]  # seeded


def test_report_writes_json_markdown_and_plot(fact_gpt2, tokenizer, tmp_path):
    result = {"model": "tiny", **causal_trace(fact_gpt2, tokenizer, KNOWN[:4], TraceConfig(samples=2))}
    paths = report(result, "trace", "python scripts/causal_trace.py ...", tmp_path)
    assert json.loads(paths["json"].read_text())["aie"].keys() == set(POSITIONS)
    assert "| layer | subject_first | subject_last | prompt_last |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0


def test_facts_load_from_known_1000_and_counterfact_layouts(tmp_path):
    known = [{"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica",
              "prompt": "Vinson Massif is located in the continent of"}]  # fmt: skip
    (tmp_path / "known.json").write_text(json.dumps(known))
    assert load_facts(tmp_path / "known.json") == [TracedFact(known[0]["prompt"], "Vinson Massif", "Antarctica")]
    counterfact = [{"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
                    "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux speaks",
                    "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"}]  # fmt: skip
    (tmp_path / "cf.json").write_text(json.dumps(counterfact))
    assert load_facts(tmp_path / "cf.json") == [TracedFact(counterfact[0]["prompt"], "Danielle Darrieux", "French")]


def test_bad_trace_settings_and_unknown_facts_are_one_line(tiny_gpt2, tokenizer):
    with pytest.raises(InputError, match="samples must be >= 1"):
        TraceConfig(samples=0)
    with pytest.raises(InputError, match="noise_scale must be > 0"):
        TraceConfig(noise_scale=0)
    with pytest.raises(InputError, match="no fact has its subject in its prompt"):
        causal_trace(tiny_gpt2, tokenizer, [TracedFact("The capital of France is", "Spain", "Paris")])
    with pytest.raises(InputError, match="the model knows none of the 16 usable facts"):
        causal_trace(tiny_gpt2, tokenizer, KNOWN)
