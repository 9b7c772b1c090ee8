"""The paper's metrics on hand-built cases with known answers."""

from __future__ import annotations

import pytest

from conftest import FACTS
from meg.decoding import teacher_forced_accuracy
from meg.evaluation.metrics import MetricTable, ag_pass, aggregate, harmonic_mean, locality_target
from meg.prompts import encode_answers, join_answer


@pytest.mark.parametrize(
    "generated, expected, ok",
    [
        (" Paris.", "Paris", True),
        ("paris", "Paris", True),
        ("  PARIS  ", "paris.", True),
        (" Paris. It is", "Paris", False),  # the model must stop: no truncation beyond the trailing dot
        (" Paris..", "Paris", False),  # only ONE trailing dot is dropped
        ("", "Paris", False),
        ("", "", True),
    ],
)
def test_ag_exact_match(generated, expected, ok):
    assert ag_pass(generated, expected) is ok


def test_harmonic_mean_and_zero():
    assert harmonic_mean([100.0, 50.0]) == pytest.approx(200 / 3)
    assert harmonic_mean([100.0, 0.0, 90.0]) == 0.0
    assert harmonic_mean([]) == 0.0


def test_locality_target_keeps_case_drops_one_dot():
    assert locality_target(" BBC Radio.\n") == "BBC Radio"
    assert locality_target(" U.S.A.") == "U.S.A"


def test_aggregate_and_score():
    records = [
        {"reliability": {"ag": True, "tf": 1.0}, "generality": {"ag": False, "tf": 0.5}, "locality": {"ag": True, "tf": 1.0}},
        {"reliability": {"ag": True, "tf": 0.5}, "generality": {"ag": True, "tf": 1.0}, "locality": None},
    ]
    table = aggregate(records)
    assert table.to_dict() == {
        "rel_ag": 100.0, "gen_ag": 50.0, "loc_ag": 100.0, "rel_tf": 75.0, "gen_tf": 75.0, "loc_tf": 100.0,
        "score": pytest.approx(harmonic_mean([100, 50, 100, 75, 75, 100])),
    }
    assert MetricTable(100, 0, 100, 100, 100, 100).score == 0.0


def test_join_answer_does_not_double_spaces():
    assert join_answer("Q: x\nA:", "Paris") == "Q: x\nA: Paris"
    assert join_answer("The capital is ", "Paris") == "The capital is Paris"


def test_target_tokens_are_what_the_target_adds(tokenizer):
    batch = encode_answers(tokenizer, ["The capital of France is"], ["Paris"], suffix=True)
    ids = batch.input_ids[0].tolist()
    target = [t for t, m in zip(ids, batch.target_mask[0].tolist()) if m]
    assert tokenizer.decode(target) == " Paris"
    answer = [t for t, m in zip(ids, batch.answer_mask[0].tolist()) if m]
    assert tokenizer.decode(answer) == " Paris.<|endoftext|>"


def test_teacher_forced_accuracy_on_known_and_unknown_answers(fact_gpt2, tokenizer):
    prompts = [p for p, _ in FACTS[:3]]
    known = teacher_forced_accuracy(fact_gpt2, tokenizer, prompts, [t for _, t in FACTS[:3]])
    assert known == [1.0, 1.0, 1.0]
    # A two-token target whose first token the model gets right and second wrong scores 0.5.
    partial = teacher_forced_accuracy(fact_gpt2, tokenizer, [FACTS[0][0]], ["Paris Japanese"])
    assert partial == [0.5]
