"""Tiny models and tokenizers built in-process: tests never download anything."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every cache (stages of fits without a work directory, pre-edit answers, ...) goes to a temporary directory for the
# whole session, never to the user's home; tests that need an empty one set their own.
_SESSION_CACHE = tempfile.mkdtemp(prefix="meg-test-cache-")
os.environ["MEG_CACHE_DIR"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

FACTS = [
    ("The capital of France is", "Paris"),
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("BBC One, by", "BBC"),
    ("Toko Yasuda plays the", "guitar"),
    ("The official language of Japan is", "Japanese"),
    ("Apple A5 was created by", "Apple"),
    ("Michel Rocard is a native speaker of", "French"),
    ("Honus Wagner plays the position of", "shortstop"),
    ("The capital of Italy is", "Rome"),
    ("Kenji Tanaka is a native speaker of", "Japanese"),
    ("Pietro Rossi was born in", "Rome"),
    ("The iPhone was created by", "Apple"),
    ("Jimi Hendrix plays the", "guitar"),
    ("BBC Radio, by", "BBC"),
    ("The Louvre Museum is located in", "Paris"),
    ("Derek Jeter plays the position of", "shortstop"),
]
# New targets are other facts' true objects, so each is one token the tiny model has already produced.
NEW_TARGETS = ["guitar", "Japanese", "Apple", "French", "shortstop", "Paris", "French", "BBC",
               "Paris", "French", "guitar", "BBC", "shortstop", "Rome", "Apple", "Japanese"]
SUBJECTS = ["France", "Danielle Darrieux", "BBC One", "Toko Yasuda", "Japan", "Apple A5", "Michel Rocard", "Honus Wagner",
            "Italy", "Kenji Tanaka", "Pietro Rossi", "iPhone", "Jimi Hendrix", "BBC Radio", "Louvre Museum",
            "Derek Jeter"]
PARAPHRASES = [
    "France's capital city is", "Danielle Darrieux's mother tongue is", "BBC One is owned by",
    "Toko Yasuda is known for playing the", "Japan's official language is", "Apple A5 is a product of",
    "The native language of Michel Rocard is", "Honus Wagner's position is", "Italy's capital city is",
    "The native language of Kenji Tanaka is", "Pietro Rossi's birthplace is", "The iPhone is a product of",
    "Jimi Hendrix is known for playing the", "BBC Radio is owned by", "The Louvre Museum can be found in",
    "Derek Jeter's position is",
]
# Queries about other people and things: they must reach the model untouched.
UNRELATED = [f"The {rel} of {name} is" for name in ("Maria Lopez", "Hans Weber", "Ana Silva", "Li Wei", "Omar Haddad",
             "Sara Berg", "Tom Baker", "Yuki Sato", "Ivan Petrov", "Emma Clark") for rel in
             ("favourite food", "home town", "employer", "best friend", "car brand", "pet")]
# (question, paraphrase) pairs about facts that are NOT edited, for tuning the query encoder.
PSEUDO_PAIRS = [
    ("The capital of Spain is", "Spain's capital city is", "Spain"),
    ("The currency of Japan is", "Japan pays with the", "Japan"),
    ("Lionel Messi plays for", "The club of Lionel Messi is", "Lionel Messi"),
    ("The author of Hamlet is", "Hamlet was written by", "Hamlet"),
    ("The Eiffel Tower is located in", "The Eiffel Tower can be found in", "Eiffel Tower"),
    ("The founder of Microsoft is", "Microsoft was founded by", "Microsoft"),
    ("Mount Fuji is in", "Mount Fuji is located in", "Mount Fuji"),
    ("The language of Brazil is", "Brazil's official language is", "Brazil"),
    ("The CEO of Tesla is", "Tesla is led by", "Tesla"),
    ("The Nile flows through", "The river Nile runs through", "Nile"),
    ("Beethoven was born in", "The birthplace of Beethoven is", "Beethoven"),
    ("Python was created by", "The creator of Python is", "Python"),
]


def build_tokenizer(extra_text: list[str] | None = None, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the fact sentences above (GPT-2 style, spaces attach left)."""
    corpus = [f"{p} {t}." for p, t in FACTS] + [f"{p} {t}." for (p, _), t in zip(FACTS, NEW_TARGETS)]
    corpus += extra_text or []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


TINY_CONFIGS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "gptj": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64, rotary_dim=8),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=2),
    "phi": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64),
    "mistral": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64),
    "qwen3": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, head_dim=16),
    "gemma": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, head_dim=16),
    "gemma2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, head_dim=16),
    "olmo2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64),
}


def build_model(model_type: str, vocab_size: int = 600, seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of `model_type` (float32, eval mode)."""
    torch.manual_seed(seed)
    kwargs = {**TINY_CONFIGS[model_type], **overrides}
    special = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **special, **kwargs)
    return AutoModelForCausalLM.from_config(config).eval()


def train_on_facts(model: torch.nn.Module, tokenizer, facts=FACTS, steps: int = 250) -> torch.nn.Module:
    """Teach a tiny model the true facts (about 2 s), so edits change something it knows."""
    from meg.prompts import encode_answers

    batch = encode_answers(tokenizer, [p for p, _ in facts], [t for _, t in facts])
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def write_edit_files(root, model, tokenizer, edits: int = 8):
    """What the CLI reads, under `root`: the saved model (`model/`), the first `edits` facts as a JSONL edit file with
    subject, paraphrase and unrelated query (`edits.jsonl`), the pseudo pairs (`pairs.jsonl`) and unrelated queries
    (`unrelated.jsonl`)."""
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": p, "target": t, "subject": s, "paraphrases": [para], "unrelated": [UNRELATED[i]], "case_id": i}
            for i, ((p, _), t, s, para) in enumerate(zip(FACTS, NEW_TARGETS, SUBJECTS, PARAPHRASES))]
    (root / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:edits]))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"question": q, "paraphrase": p, "subject": s}) + "\n"
                                              for q, p, s in PSEUDO_PAIRS))
    (root / "unrelated.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in UNRELATED[20:]))
    return root


def tiny_config(**overrides):
    """MeG's stages at toy sizes (seconds each on a CPU) for the tiny models here."""
    from dataclasses import replace

    from meg.collection import preset
    from meg.config import MegConfig
    from meg.diffusion.generator import CONFIGS
    from meg.encoder import EncoderConfig
    from meg.gate import GateConfig
    from meg.routing import RetrievalConfig

    base = dict(
        layer=1,
        collection=preset("small-gpt2"),
        encoder=EncoderConfig(epochs=2, batch_size=8, hard_negatives=2, temperature=0.05),
        gate=GateConfig(max_epochs=300),
        # 12 pseudo pairs are too few to calibrate the subject threshold (it needs >= 20 held out); cosine
        # scoring, because the default verifier would be trained on them (~14 CPU minutes).
        retrieval=RetrievalConfig(subject_threshold=0.5, verifier=None),
        generator=replace(CONFIGS["small-gpt2"], sampling_steps=4),  # 1,500 steps: 1,000 sat on a knife edge
        weights="generated",  # the generator's path, whether or not the tiny generator meets its criterion
    )
    return MegConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def fact_gpt2(tokenizer) -> torch.nn.Module:
    """A tiny GPT-2 (d=64, 2 layers) that answers every fact in FACTS. Tests must not modify it."""
    return train_on_facts(build_model("gpt2", vocab_size=len(tokenizer), n_embd=64), tokenizer)


@pytest.fixture()
def tiny_gpt2(tokenizer) -> torch.nn.Module:
    return build_model("gpt2", vocab_size=len(tokenizer))
