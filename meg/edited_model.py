"""`EditedModel`: a base model plus an edit pack, answering batches where every row gets its own neuron.

Inference (paper, stage 5): encode the raw query -> route it -> for routed rows, generate the neuron vector with
the diffusion model (or, with `weights="retrieved"`, take the matched edit's collected vector) -> mount one
neuron per row -> decode. Unrouted rows carry the zero neuron, an exact no-op. The base model is never
modified; `disabled()` turns every row into the zero neuron (peft's `disable_adapter` idea).

A query's vector depends only on the query: its starting noise is seeded from the pack seed and the query text
(or, with `vectors_per="edit"`, the matched edit's id, so that each edit's vector is sampled once), so a prompt
gets the same weights whatever batch it is in (to float rounding: a batched matrix product is not bit-stable across
batch sizes; the same queries in the same order give bit-identical answers), and routes and vectors are cached.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.decoding import MAX_NEW_TOKENS, greedy_generate, teacher_forced_accuracy
from meg.encoder import QueryEncoder
from meg.errors import PackError
from meg.models import fingerprint, same_model
from meg.pack import EditPack
from meg.routing import Routes, router_class

_CACHE_SIZE = 20_000


class EditedModel:
    """Generate and score with an edit pack applied (see module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pack: EditPack,
                 check_base: bool = True, batch_size: int = 64, sampling_steps: int | None = None):
        if check_base and not same_model(fingerprint(model), pack.base_fingerprint):
            raise PackError(f"this pack was made for base model {pack.base_model!r}; the given model has a different "
                            "architecture or weights (pass check_base=False only if you know they match)")
        self.model, self.tokenizer, self.pack, self.batch_size = model, tokenizer, pack, batch_size
        self.device = next(model.parameters()).device
        self.encoder = QueryEncoder.from_config(pack.config.encoder, device=self.device)
        if pack.encoder_state is not None:
            self.encoder.load_tuned_state(pack.encoder_state)
        self.router = router_class(pack.router_name).from_state(
            pack.config.router_config(), pack.router_fitted, pack.router_state, pack.edit_embeddings, pack.requests,
            self.encoder.encode)
        self.generator = pack.generator.to(self.device).eval() if pack.generator is not None else None
        self.steps = sampling_steps  # None: the generator's own `sampling_steps`
        self._enabled = True
        self._cache: OrderedDict[str, tuple[dict[str, Any], torch.Tensor]] = OrderedDict()
        self._edit_cache: dict[int, torch.Tensor] = {}  # edit index -> generated vector (vectors_per="edit")

    # --- routing and weights ---

    def route(self, prompts: Sequence[str]) -> Routes:
        """Route raw queries (no template): (B,) routed / matched edit / router score."""
        embeddings = self.encoder.encode(list(prompts))  # (B, C)
        return self.router.route(list(prompts), embeddings)

    def _noise(self, keys: Sequence[int]) -> torch.Tensor:
        """Starting noise (B, D): row i seeded by the pack seed and key i (a prompt's CRC or an edit's id)."""
        rows = []
        for key in keys:
            seed = (self.pack.config.seed * 1_000_003 + key) % (2**63)
            gen = torch.Generator().manual_seed(seed)
            rows.append(torch.randn(self.pack.neuron.dim, generator=gen))
        return torch.stack(rows).to(self.device)

    def _per_edit(self) -> bool:
        config = self.pack.config
        return config.weights == "generated" and config.condition == "matched-edit" and config.vectors_per == "edit"

    def _vectors(self, prompts: list[str], routes: Routes, table: dict[str, torch.Tensor]) -> torch.Tensor:
        """Neuron vectors for routed rows (R, D); `table` holds the query embeddings routing computed."""
        edits = routes.edit.clamp_min(0).cpu()
        if self.pack.config.weights == "retrieved":
            return self.pack.collection.vectors[edits].to(self.device)
        if self._per_edit():
            return self._edit_vectors(edits)
        if self.pack.config.condition == "matched-edit":
            cond = self.pack.edit_embeddings[edits]
        else:  # routing encoded every whole query (`whole` in `_plan`)
            cond = torch.stack([table[p] for p in prompts])
        keys = [zlib.crc32(p.encode()) for p in prompts]
        return self.generator.sample(cond.to(self.device), steps=self.steps, noise=self._noise(keys))

    def _edit_vectors(self, edits: torch.Tensor) -> torch.Tensor:
        """(R, D) generated vectors of these edits (`vectors_per="edit"`): each sampled once, from the matched
        edit's embedding and noise seeded by its stable id, then looked up."""
        todo = sorted({int(e) for e in edits} - set(self._edit_cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            noise = self._noise([self.pack.ids[e] for e in chunk])
            cond = self.pack.edit_embeddings[chunk].to(self.device)
            sampled = self.generator.sample(cond, steps=self.steps, noise=noise).cpu()
            self._edit_cache.update(zip(chunk, sampled))
        if not len(edits):
            return torch.zeros(0, self.pack.neuron.dim)
        return torch.stack([self._edit_cache[int(e)] for e in edits])

    def precompute(self, edits: Sequence[int] | None = None) -> None:
        """Sample the vectors of these edits (indices; default all) now, with `vectors_per="edit"`, so that no
        query about them waits for sampling (a server at start)."""
        if self._per_edit():
            chosen = torch.arange(len(self.pack)) if edits is None else torch.as_tensor(list(edits), dtype=torch.long)
            self._edit_vectors(chosen)

    def _plan(self, prompts: list[str]) -> list[tuple[dict[str, Any], torch.Tensor]]:
        """(route description, vector) per prompt: cached ones reused, the rest routed and computed together.

        Routing encodes only what it needs (RetrievalRouter.route_texts). The answer is built before the least
        recently used entries are dropped, so a batch larger than the cache, or one mixing old and new prompts,
        never asks for an entry it just evicted.
        """
        unique = list(dict.fromkeys(prompts))
        missing = [p for p in unique if p not in self._cache]
        if missing:
            whole = self.pack.config.weights == "generated" and self.pack.config.condition == "query"
            routes, table = self.router.route_texts(missing, self.encoder.encode, whole)
            vectors = torch.zeros(len(missing), self.pack.neuron.dim)
            rows = routes.routed.nonzero().flatten()
            if len(rows):
                vectors[rows] = self._vectors([missing[i] for i in rows], routes.select(rows), table).cpu()
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (self._describe_row(routes, i), vectors[i])
        for prompt in unique:
            self._cache.move_to_end(prompt)
        answer = {p: self._cache[p] for p in unique}
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return [answer[p] for p in prompts]

    def _describe_row(self, routes: Routes, i: int) -> dict[str, Any]:
        row = routes.row(i)
        row[self.router.score_name] = row.pop("score")
        return row

    def neuron_weights(self, prompts: Sequence[str]) -> torch.Tensor:
        """The neuron vector of every row (B, D); zeros for unrouted rows or when disabled."""
        prompts = list(prompts)
        if not self._enabled:
            return torch.zeros(len(prompts), self.pack.neuron.dim)
        return torch.stack([vector for _, vector in self._plan(prompts)])

    def clear_cache(self, edit_vectors: bool = True) -> None:
        """Forget cached routes and vectors (they are recomputed on demand); with `edit_vectors=False` keep the
        per-edit generated vectors (`vectors_per="edit"`), which no query changes."""
        self._cache.clear()
        if edit_vectors:
            self._edit_cache.clear()

    def describe(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """Per row: routed, matched edit index, and the router's score (the gate's entropy; the retrieval router's
        blended similarity, or the bound that decided the row when the verifier was not needed)."""
        prompts = list(prompts)
        return [dict(row) for row, _ in self._plan(prompts)]

    def stats(self) -> dict[str, Any]:
        """Pack facts for reports: edits, collection success, router and calibration, stage wall times."""
        pack = self.pack
        return {"edits": len(pack), "collected": int(pack.collection.success.sum()), "layer": pack.neuron.layer,
                "router": {"name": pack.router_name, **pack.router_fitted}, "config": pack.config.to_dict(),
                "log": pack.log}

    # --- decoding ---

    def _texts(self, prompts: Sequence[str]) -> list[str]:
        return [self.pack.template.format(p) for p in prompts]

    def _weights_or_none(self, prompts: Sequence[str]) -> torch.Tensor | None:
        weights = self.neuron_weights(prompts)
        return weights if bool(weights.ne(0).any()) else None  # nothing routed: skip mounting entirely

    def generate(self, prompts: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy continuations of the templated prompts, each row with its own neuron."""
        weights = self._weights_or_none(prompts)
        return greedy_generate(self.model, self.tokenizer, self._texts(prompts), max_new_tokens,
                               self.pack.neuron, weights, self.batch_size)

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """Teacher-forced token accuracy of each target after its templated prompt (paper's TF metric)."""
        weights = self._weights_or_none(prompts)
        return teacher_forced_accuracy(self.model, self.tokenizer, self._texts(prompts), targets,
                                       self.pack.neuron, weights, self.batch_size)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside the block every row runs with the zero neuron, i.e. the unedited base model."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    @classmethod
    def from_pretrained(cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pack_dir: str,
                        trust_models: bool | Sequence[str] = (), **kwargs) -> EditedModel:
        """Load a pack directory (checked; see EditPack.load for `trust_models`) and apply it to `model`."""
        return cls(model, tokenizer, EditPack.load(pack_dir, trust_models=trust_models), **kwargs)
