"""The reference-model recipe (corpus, tokenizer, batching, a seconds-long training run) and the shipped checkpoint."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import FACTS
from transformers import AutoModelForCausalLM, AutoTokenizer

from meg.data.defaults import demo_requests
from meg.data.facts import Fact
from meg.decoding import greedy_generate
from meg.models import load_causal_lm, reference_model_path
from meg.prompts import answers_match
from meg.refmodel.corpus import EvalFacts, build_corpus
from meg.refmodel.tokenizer import encode_lines, train_bpe
from meg.refmodel.train import ReferenceTrainConfig, collate, length_batches, lr_factor, train_reference_model

REPO = Path(__file__).parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
LINES = [f"{prompt} {answer}." for prompt, answer in FACTS]


def test_tokenizer_adds_nothing():
    tokenizer = train_bpe(LINES * 3, vocab_size=400)
    ids = tokenizer("The capital of France is Paris.")["input_ids"]
    assert tokenizer.decode(ids) == "The capital of France is Paris."
    assert tokenizer.eos_token_id not in ids  # no BOS, no EOS added
    assert tokenizer.pad_token_id == tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids)[1].startswith("Ġ")  # spaces attach to the next word
    assert all(seq[-1] == tokenizer.eos_token_id for seq in encode_lines(tokenizer, LINES))


def test_length_batches_cover_every_line_once():
    lengths = [3, 9, 4, 4, 12, 7, 3, 5, 8, 8, 2, 6] * 5
    first = length_batches(lengths, 24, torch.Generator().manual_seed(0))
    assert sorted(i for batch in first for i in batch) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 24 for b in first)
    again = length_batches(lengths, 24, torch.Generator().manual_seed(0))
    assert first == again  # seeded
    generator = torch.Generator().manual_seed(0)
    assert length_batches(lengths, 24, generator) != length_batches(lengths, 24, generator)  # reshuffled per epoch


def test_collate_masks_pads():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_lr_schedule():
    config = ReferenceTrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, config) == pytest.approx(0.1)
    assert lr_factor(9, 100, config) == pytest.approx(1.0)
    assert lr_factor(100, 100, config) == pytest.approx(0.1)


def _check_saved(out: Path) -> None:
    """The directory loads offline with the Auto classes and generates."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.model_type == "gpt2" and model.config.eos_token_id == tokenizer.eos_token_id
    (text,) = greedy_generate(model, tokenizer, ["The capital of France is"], max_new_tokens=4)
    assert isinstance(text, str)


def test_quick_training_on_lines(tmp_path):
    config = replace(ReferenceTrainConfig.quick(), vocab_size=400, epochs=2, max_lines=None)
    facts = EvalFacts({"counterfact_prompt": [Fact(p, a) for p, a in FACTS]})
    summary = train_reference_model(config, None, tmp_path / "ref", lines=LINES * 4, eval_facts=facts)
    assert len(summary["epoch_losses"]) == 2 and summary["corpus"]["lines"] == len(LINES) * 4
    assert json.loads((tmp_path / "ref" / "training_summary.json").read_text())["final_loss"] == summary["final_loss"]
    _check_saved(tmp_path / "ref")


@needs_shared
def test_corpus_holds_true_facts_only():
    lines = build_corpus(SHARED)
    assert len(lines) == len(set(lines)) > 60_000
    assert "The mother tongue of Danielle Darrieux is French." in lines
    assert "The mother tongue of Danielle Darrieux is English." not in lines  # the counterfactual target
    assert "Q: Answer the following question in less than 5 words. What is the product made by UniFirst?\nA: uniform." in lines
    assert not any("nq question:" in line for line in lines)


@needs_shared
def test_quick_script(tmp_path):
    spec = importlib.util.spec_from_file_location("train_reference_model", REPO / "scripts" / "train_reference_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--quick", "--data", str(SHARED), "--out", str(tmp_path / "ref")])
    summary = json.loads((tmp_path / "ref" / "training_summary.json").read_text())
    assert summary["corpus"]["lines"] == 400 and set(summary["greedy_accuracy"]) == {
        "counterfact_prompt", "counterfact_paraphrase", "zsre_question"
    }  # fmt: skip
    _check_saved(tmp_path / "ref")


@pytest.mark.skipif(not (reference_model_path() / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_shipped_checkpoint_knows_facts():
    model, tokenizer = load_causal_lm("reference")
    assert model.config.model_type == "gpt2" and next(model.parameters()).dtype == torch.float32
    assert 6_000_000 < sum(p.numel() for p in model.parameters()) < 8_000_000
    assert (reference_model_path() / "model.safetensors").stat().st_size <= 16 * 2**20
    requests = demo_requests()[:50]  # counterfact-val edits: their TRUE objects are in the training corpus
    generated = greedy_generate(model, tokenizer, [r.prompt for r in requests])
    assert sum(answers_match(g, r.ground_truth) for g, r in zip(generated, requests)) >= 1
