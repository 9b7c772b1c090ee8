"""reference-2: resumable training (a stopped and resumed run equals an uninterrupted one), corpus2, the name."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import FACTS

from meg.data.counterfact import parse_counterfact
from meg.errors import InputError
from meg.models import REFERENCE_MODELS, reference_model_path, resolve_model_id
from meg.refmodel.corpus2 import (
    Corpus2Config,
    Relations,
    Statement,
    TemplateMatcher,
    build_corpus2,
    extra_prompts,
    merge_statements,
    single_template_lines,
)
from meg.refmodel.train import RECIPES, Checkpointing, ReferenceTrainConfig, build_model, prepare, train_loop
from meg.training_state import training_meta

REPO = Path(__file__).parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
LINES = [f"{prompt} {answer}." for prompt, answer in FACTS] * 3


def _tiny() -> ReferenceTrainConfig:
    """A model of a few thousand parameters, 3 epochs of 6 batches: seconds, several epochs and mid-epoch stops."""
    return ReferenceTrainConfig(n_embd=16, n_layer=2, n_head=2, vocab_size=300, epochs=3, batch_tokens=128,
                                warmup_steps=2, threads=1, monitor_facts=0)  # fmt: skip


def _run(config: ReferenceTrainConfig, prepared, checkpoint: Checkpointing | None):
    torch.manual_seed(config.seed)
    model = build_model(config, prepared.tokenizer)
    losses = train_loop(model, prepared.sequences, config, prepared.tokenizer.pad_token_id, checkpoint=checkpoint)
    return model, losses


@pytest.fixture(scope="module")
def tiny():
    config = _tiny()
    prepared = prepare(config, lines=LINES)
    model, losses = _run(config, prepared, None)
    return config, prepared, model.state_dict(), losses


@pytest.fixture
def steps_taken(monkeypatch):
    """Counts optimisation steps, so a test can tell a resumed run from one that started over."""
    from meg.refmodel import train

    taken = []
    step = train._step
    monkeypatch.setattr(train, "_step", lambda *args: taken.append(1) or step(*args))
    return taken


@pytest.mark.parametrize("stops", [[5], [6], [2, 9, 13]])  # mid-epoch, at an epoch's end, several sittings
def test_stopped_and_resumed_training_equals_uninterrupted(tiny, tmp_path, stops, steps_taken):
    config, prepared, expected, expected_losses = tiny
    total = training_steps(config, prepared)
    assert total > max(stops)
    path = tmp_path / "state.safetensors"
    for before, stop in zip([0, *stops], stops):
        steps_taken.clear()
        _, losses = _run(config, prepared, Checkpointing(path, every_seconds=1e9, stop_after_steps=stop))
        assert losses is None and training_meta(path)["progress"]["step"] == stop
        assert len(steps_taken) == stop - before  # continued, not started over
    steps_taken.clear()
    model, losses = _run(config, prepared, Checkpointing(path, every_seconds=1e9))
    assert len(steps_taken) == total - stops[-1]
    assert losses == expected_losses
    state = model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert training_meta(path)["progress"]["finished"]
    # a rerun of a finished run trains nothing and gives the same weights and losses
    steps_taken.clear()
    again, losses = _run(config, prepared, Checkpointing(path, every_seconds=1e9))
    assert not steps_taken
    assert losses == expected_losses and all(torch.equal(again.state_dict()[k], expected[k]) for k in expected)


def training_steps(config: ReferenceTrainConfig, prepared) -> int:
    from meg.refmodel.train import length_batches

    lengths = [len(s) for s in prepared.sequences]
    return config.epochs * len(length_batches(lengths, config.batch_tokens, torch.Generator().manual_seed(0)))


def test_checkpoints_every_few_seconds_resume_too(tiny, tmp_path, steps_taken):
    """Time-based saves (every step here) leave a state a rerun continues from."""
    config, prepared, expected, expected_losses = tiny
    path = tmp_path / "state.safetensors"
    _run(config, prepared, Checkpointing(path, every_seconds=0.0, stop_after_steps=7))
    steps_taken.clear()
    model, losses = _run(config, prepared, Checkpointing(path, every_seconds=0.0))
    assert len(steps_taken) == training_steps(config, prepared) - 7
    assert losses == expected_losses and all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)


def test_train_reference_model_resumes_from_work_dir(tmp_path, steps_taken):
    from meg.data.facts import Fact
    from meg.refmodel.corpus import EvalFacts
    from meg.refmodel.train import train_reference_model

    config = replace(_tiny(), epochs=2)
    facts = EvalFacts({"counterfact_prompt": [Fact(p, a) for p, a in FACTS[:4]]})
    first = train_reference_model(config, None, tmp_path / "a", lines=LINES, eval_facts=facts, work_dir=tmp_path / "w",
                                  recipe="reference-2")  # fmt: skip
    assert len(list((tmp_path / "w").glob("reference-training-*.safetensors"))) == 1
    steps_taken.clear()
    again = train_reference_model(config, None, tmp_path / "b", lines=LINES, eval_facts=facts, work_dir=tmp_path / "w")
    assert again["epoch_losses"] == first["epoch_losses"] and not steps_taken  # loaded, not retrained
    assert first["recipe"] == "reference-2" and "recipe" not in again
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("# meg-edit reference model")  # no corpus2 in the config: the first card


def test_template_matcher_prefers_the_most_specific_template():
    matcher = TemplateMatcher(["{} is in", "{} is located in", "{}, in"])
    assert matcher.match("Paris is located in") == ("{} is located in", "Paris")
    assert matcher.match("Lyon, in") == ("{}, in", "Lyon")
    assert matcher.match("nothing here") == (None, None)


def test_extra_prompts_prefer_templates_seen_with_the_answer():
    relations = Relations()
    for t, answer in [("{} speaks", "French"), ("The mother tongue of {} is", "French"),
                      ("{} was born in", "Paris"), ("{} writes in", "French")]:  # fmt: skip
        relations.answers[t][answer] += 1
        relations.union("{} speaks", t)
    statement = Statement("Danielle Darrieux", "French", "r", "counterfact", ["Danielle Darrieux speaks"], ["{} speaks"])
    pool = sorted(relations.answers)
    prompts = extra_prompts(statement, pool, relations, 2, random.Random(0), 0.3)
    assert sorted(prompts) == ["Danielle Darrieux writes in", "The mother tongue of Danielle Darrieux is"]
    # more lines than templates: the rest repeat the templates and the own wordings (new contexts)
    prompts = extra_prompts(statement, pool, relations, 6, random.Random(0), 0.3)
    assert prompts[2:4] == ["Danielle Darrieux was born in", "Danielle Darrieux speaks"] and prompts[4:] == prompts[:2]


def test_merge_statements_joins_the_same_fact():
    a = Statement("X", "1", "r", "counterfact", ["X is"], ["{} is"])
    b = Statement("X", "1", "r", "counterfact", ["X was", "X is"], ["{} was"])
    c = Statement(None, "1", None, "zsre", ["Who?"])
    merged = merge_statements([a, b, c, Statement(None, "1", None, "zsre", ["Who?"])])
    assert len(merged) == 3 and merged[0].wordings == ["X is", "X was"] and merged[0].templates == ["{} is", "{} was"]


def test_corpus2_config_checks():
    with pytest.raises(InputError, match="extra_wordings"):
        Corpus2Config(extra_wordings=-1)
    with pytest.raises(InputError, match="context_weights"):
        Corpus2Config(context_weights=(0.0, 0.0))
    assert RECIPES["reference-2"].corpus2 is not None and RECIPES["reference"].corpus2 is None
    assert ReferenceTrainConfig(corpus2={"extra_wordings": 1}).corpus2 == Corpus2Config(extra_wordings=1)


def test_reference_2_name(monkeypatch, tmp_path):
    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path))
    assert "reference-2" in REFERENCE_MODELS and resolve_model_id("gpt2") == "gpt2"
    shipped = REPO / "meg" / "assets" / "reference-2"
    if not (shipped / "config.json").is_file():
        assert reference_model_path("reference-2") == shipped  # nowhere yet: where the recipe writes
        (tmp_path / "reference-2").mkdir()
        (tmp_path / "reference-2" / "config.json").write_text("{}")
        assert reference_model_path("reference-2") == tmp_path / "reference-2"  # trained into the user cache
    else:  # shipped (docs/results/step1-reference-2.md measures it): found first, and it loads by name
        from meg.models import load_causal_lm

        assert reference_model_path("reference-2") == shipped
        model, tokenizer = load_causal_lm("reference-2")
        assert model.config.n_layer == 10 and len(tokenizer) == model.config.vocab_size == 8192
    assert reference_model_path() == REPO / "meg" / "assets" / "reference-model"
    with pytest.raises(InputError, match="unknown reference model"):
        reference_model_path("reference-3")


@needs_shared
def test_corpus2_subset_holds_true_facts_in_several_wordings():
    config = Corpus2Config(counterfact_subset=60)
    corpus = build_corpus2(SHARED, config)
    assert corpus.lines == build_corpus2(SHARED, config).lines  # deterministic
    assert set(single_template_lines(SHARED, 60)) <= set(corpus.lines)  # the data's own wordings, alone
    assert "The mother tongue of Danielle Darrieux is French." in corpus.lines
    requests = [r for r, _ in parse_counterfact(SHARED / "counterfact" / "counterfact-edit.json")[:60]]
    new = {(r.subject, r.target) for r in requests if r.target != r.ground_truth}
    assert not any((s.subject, s.answer) in new for s in corpus.statements)  # never a counterfactual target
    darrieux = [line for line in corpus.lines if "Danielle Darrieux" in line and line.endswith(" French.")]
    assert len(darrieux) >= 1 + config.extra_wordings  # its own wording and others of its relation
    assert any(not line.startswith("Danielle Darrieux") and not line.startswith("The mother tongue") for line in darrieux)


@needs_shared
def test_full_corpus2_keeps_the_benchmark_wordings():
    corpus = build_corpus2(SHARED, Corpus2Config(extra_wordings=0))
    lines = set(corpus.lines)
    assert "Q: Answer the following question in less than 5 words. What is the product made by UniFirst?\nA: uniform." in lines
    assert not any("nq question:" in line for line in lines)
    stats = corpus.stats()
    assert stats["facts_by_kind"]["zsre"] > 2000 and stats["relations"] > 30
