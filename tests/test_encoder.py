"""Invariants of the query encoder (meg.encoder): bundled MiniLM offline, last-layer-only InfoNCE tuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from meg.encoder import EncoderConfig, QueryEncoder, TuningLog
from meg.pseudo_edits import tuning_set
from meg.errors import InputError, PackError, UnsupportedModelError
from meg.files import load_tensors, save_tensors
from meg.requests import PseudoPair

PAIRS = [
    PseudoPair("The mother tongue of Danielle Darrieux is", "Danielle Darrieux's mother tongue is"),
    PseudoPair("The capital of France is", "France's capital city is"),
    PseudoPair("The capital of France is", "The capital city of France is"),  # repeated question
    PseudoPair("Toko Yasuda plays the", "Toko Yasuda is incredible at"),
    PseudoPair("BBC One, by", "BBC One is my favorite product out of everything owned by"),
    PseudoPair("The official language of Japan is", "In Japan, the official language is"),
    PseudoPair("Apple A5 was created by", "Apple A5 is a product of"),
    PseudoPair("Michel Rocard is a native speaker of", "The native language of Michel Rocard is"),
    PseudoPair("Honus Wagner plays the position of", "Honus Wagner's position on the field is"),
    PseudoPair("Autonomous University of Madrid is located in", "The Autonomous University of Madrid is situated in"),
    PseudoPair("Monell Chemical Senses Center is headquartered in", "The headquarters of Monell Chemical Senses are in"),
    PseudoPair("Kryvyi Rih belongs to the continent of", "Kryvyi Rih is a city on the continent of"),
    PseudoPair("Percy Snow, the", "Percy Snow plays as a"),
]
TEXTS = ["The capital of France is", "Who wrote Hamlet?", "Percy Snow, the", "a"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """This CPU is shared with other jobs: with 2 threads, OpenMP spin-waiting makes small ops ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base() -> QueryEncoder:
    """The bundled all-MiniLM-L6-v2, untuned. Tests must not modify it (use `fresh`)."""
    return QueryEncoder.from_config(EncoderConfig(epochs=6, batch_size=6, lr=1e-3, temperature=1.0, hard_negatives=0))


@pytest.fixture(scope="module")
def tuned(base) -> tuple[QueryEncoder, TuningLog]:
    encoder = copy.deepcopy(base)
    return encoder, encoder.tune(PAIRS, progress=False)


def test_bundled_minilm_embeds_unit_vectors_deterministically(base):
    emb = base.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 384) == (len(TEXTS), base.embedding_dim)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.equal(emb, base.encode(TEXTS))
    assert base.encode([]).shape == (0, 384)


def test_encode_agrees_with_sentence_transformers(base):
    reference = base._st.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(base.encode(TEXTS), reference.float().cpu(), atol=1e-5)


def test_tuning_trains_only_the_last_layer_and_lowers_the_loss(base, tuned):
    encoder, log = tuned
    before, after = base._st.state_dict(), encoder._st.state_dict()
    last = {k for k in before if ".encoder.layer.5." in k}  # MiniLM has 6 layers
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == last and len(last) == len(encoder.tuned_state())
    assert log.final_loss < log.initial_loss
    assert log.steps > 0 and len(log.epoch_losses) == 6
    assert TuningLog.from_dict(json.loads(json.dumps(log.to_dict()))) == log


def test_cached_frozen_layers_reproduce_the_full_forward(tuned):
    encoder, _ = tuned
    texts = tuning_set(PAIRS).texts
    with torch.no_grad():
        cache = encoder._cache_frozen(texts, progress=False)
        cached = encoder._embed_cached(cache, torch.arange(len(texts)))
    assert torch.allclose(cached, encoder.encode(texts), atol=1e-5)


def test_repeated_question_is_not_its_own_negative(base):
    with pytest.raises(InputError, match="at least 2 distinct questions"):
        tuning_set(PAIRS[1:3])  # one question, two paraphrases: no negative at all
    data = tuning_set(PAIRS[:3])
    questions, paraphrases, texts = data.questions, data.paraphrases, data.texts
    with torch.no_grad():
        cache = base._cache_frozen(texts, progress=False)
        loss = base._batch_loss(cache, questions, paraphrases, data.hard)
        emb = base._embed_cached(cache, torch.arange(len(texts)))
    keys = emb[[0, 2]]  # the two distinct questions, each once
    logits = emb[paraphrases] @ keys.T / base.config.temperature
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])), atol=1e-6)


def test_tuned_state_round_trips_through_safetensors(base, tuned, tmp_path):
    encoder, _ = tuned
    state = encoder.tuned_state()
    assert state and all(k.startswith(("attention.", "intermediate.", "output.")) for k in state)
    save_tensors(tmp_path / "encoder_layer.safetensors", state)
    fresh = copy.deepcopy(base)
    fresh.load_tuned_state(load_tensors(tmp_path / "encoder_layer.safetensors"))
    assert torch.equal(fresh.encode(TEXTS), encoder.encode(TEXTS))
    assert not torch.equal(base.encode(TEXTS), encoder.encode(TEXTS))


def test_load_tuned_state_rejects_another_layout(base):
    state = base.tuned_state()
    state.pop(next(iter(state)))
    with pytest.raises(PackError, match="missing"):
        copy.deepcopy(base).load_tuned_state(state)


@pytest.mark.parametrize("model", ["no-such-org/no-such-encoder", "/no/such/encoder/dir"])
def test_unknown_model_is_a_one_line_error(model):
    with pytest.raises(InputError) as err:
        QueryEncoder.from_config(EncoderConfig(model=model))
    assert model in str(err.value) and "\n" not in str(err.value)


def test_unknown_architecture_is_a_one_line_error(base):
    encoder = copy.deepcopy(base)
    encoder._auto_model().config.model_type = "mystery"
    with pytest.raises(UnsupportedModelError) as err:
        encoder.tune(PAIRS, progress=False)
    assert "ENCODER_LAYERS" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "field, value", [("lr", 0.0), ("temperature", -1.0), ("epochs", 0), ("batch_size", 1), ("model", ""), ("tune", 1)]
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(InputError) as err:
        EncoderConfig(**{field: value})
    assert f"EncoderConfig.{field} must be" in str(err.value) and "\n" not in str(err.value)


def test_config_round_trips_and_rejects_unknown_fields():
    config = EncoderConfig(model="some/path", epochs=3, temperature=0.05)
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="unknown EncoderConfig fields"):
        EncoderConfig.from_dict({"modle": "minilm"})


def test_hard_negatives_are_extra_keys(base):
    pairs = [
        PseudoPair("The mother tongue of Ana Silva is", "Ana Silva's first language is", "Ana Silva"),
        PseudoPair("Hans Weber plays the", "Hans Weber is a player of the", "Hans Weber"),
    ]
    data = tuning_set(pairs, hard_negatives=2, seed=0)
    negatives = [data.texts[i] for i in data.hard.flatten().tolist() if i >= 0]
    assert "The mother tongue of Hans Weber is" in negatives and "Ana Silva plays the" in negatives
    with torch.no_grad():
        cache = base._cache_frozen(data.texts, progress=False)
        loss = base._batch_loss(cache, data.questions, data.paraphrases, data.hard)
        emb = base._embed_cached(cache, torch.arange(len(data.texts)))
    hard = data.hard[data.hard >= 0].unique()
    keys = emb[torch.cat([data.questions, hard[~torch.isin(hard, data.questions)]])]
    logits = emb[data.paraphrases] @ keys.T / base.config.temperature
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])), atol=1e-6)
