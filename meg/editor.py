"""`MegEditor`: the paper's four offline stages, turning edit requests into an `EditPack`.

    1. encoder    tune the query encoder's last layer with InfoNCE on pseudo-edit pairs (not the edits)
    2. router     fit the router on the edit embeddings; calibrate it on unrelated queries
    3. collect    train one neuron per edit (batched, resumable)
    4. generator  train the diffusion model: query embedding -> collected neuron vector

With a `work_dir`, the collection chunks and the finished encoder and generator are kept there, so an
interrupted `fit` resumes without redoing them. Every stage has a progress bar and its wall time is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.collection import CollectionResult, collect_weights, preset_for
from meg.config import MegConfig
from meg.diffusion.generator import WeightGenerator
from meg.diffusion.train import trained_generator
from meg.encoder import tuned_encoder
from meg.errors import InputError
from meg.models import fingerprint
from meg.pack import EditPack, history_entry
from meg.prompts import PromptTemplate
from meg.pseudo_edits import split_pairs
from meg.requests import EditRequest, PseudoPair, deduplicate
from meg.routing import RoutingData, router_class
from meg.surgery import neuron_spec

log = logging.getLogger("meg")


def _disjoint(requests: Sequence[EditRequest], pairs: Sequence[PseudoPair], unrelated: Sequence[str]):
    """Drop pseudo pairs and unrelated queries that repeat an edit's prompt or paraphrase: calibration must not
    see the edits (paper: pseudo edits are NOT in the edit set)."""
    taken = {r.prompt.strip() for r in requests} | {p.strip() for r in requests for p in r.paraphrases}
    kept_pairs = [p for p in pairs if p.question.strip() not in taken and p.paraphrase.strip() not in taken]
    kept_unrelated = [q for q in unrelated if q.strip() not in taken]
    return kept_pairs, kept_unrelated


class MegEditor:
    """Fit MeG on a base model: `MegEditor(model, tokenizer, config).fit(requests, pseudo_pairs, unrelated)`."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: MegConfig | None = None,
                 template: PromptTemplate | None = None, model_name: str = "", device: str | torch.device | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or MegConfig()
        self.template = template or PromptTemplate()
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.device = device or next(model.parameters()).device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)

    def resolved_config(self) -> MegConfig:
        """The config with this model's layer, collection preset and generator filled in (what the pack stores)."""
        spec = neuron_spec(self.model, self.config.layer)
        return self.config.resolved(spec.layer, self.config.collection or preset_for(self.model), spec.dim)

    def fit(
        self,
        requests: Sequence[EditRequest],
        pseudo_pairs: Sequence[PseudoPair] | None = None,
        unrelated: Sequence[str] | None = None,
        work_dir: str | Path | None = None,
        progress: bool = True,
        calibration_pairs: Sequence[PseudoPair] | None = None,
    ) -> EditPack:
        """Run the four stages. `pseudo_pairs` / `unrelated` default to the shipped public sets.

        The encoder (and the default router's verifier) are tuned on the pseudo pairs minus a held-out split,
        whatever the edits are, so the shipped tuned layers serve every edit set under the default settings; pairs
        that repeat an edit are left out of calibration only. The router is calibrated on the held-out pairs plus
        `calibration_pairs` (pairs used for nothing else; None = the shipped 3,000, [] = none): a few hundred
        held-out pairs put the threshold at 98% of them a point of recall too high or too low by chance
        (docs/LOG.md, 2026-11-30).
        """
        from meg.data.defaults import (
            default_calibration_pairs,
            default_pseudo_pairs,
            default_unrelated,
        )

        requests, replaced = deduplicate(list(requests))
        if not requests:
            raise InputError("no edit requests given")
        if replaced:
            log.warning("%d duplicate prompts: the later edit wins (%s)", len(replaced), "; ".join(replaced[:3]))
        config, work = self.resolved_config(), Path(work_dir) if work_dir else None
        tune_pairs, held_out = split_pairs(default_pseudo_pairs() if pseudo_pairs is None else pseudo_pairs,
                                           seed=config.seed)
        extra = default_calibration_pairs() if calibration_pairs is None else calibration_pairs
        calibration, unrelated = _disjoint(requests, [*held_out, *extra],
                                           default_unrelated() if unrelated is None else unrelated)
        with self._stage("encoder"):
            encoder, tuning = tuned_encoder(config.encoder, tune_pairs, work, self.device, progress)
        with self._stage("embed"):
            edit_emb = encoder.encode([r.prompt for r in requests], progress=progress)  # (N, C)
            unrelated_emb = encoder.encode(list(unrelated), progress=progress)  # (M, C)
        with self._stage("router"):
            data = RoutingData([r.prompt for r in requests], edit_emb, [r.subject for r in requests], list(unrelated),
                               unrelated_emb, calibration, tune_pairs, encoder.encode, work)
            router = router_class(config.router).fit(data, config.router_config(), progress=progress)
        spec = neuron_spec(self.model, config.layer)
        with self._stage("collect"):
            collection = collect_weights(self.model, self.tokenizer, spec, requests, config.collection, self.template,
                                         work, progress)
        generator, generator_log = self._generator(config, requests, collection, edit_emb, unrelated_emb, encoder,
                                                   work, progress)
        return EditPack(
            config=config, base_model=self.model_name, base_fingerprint=fingerprint(self.model), neuron=spec,
            template=self.template, requests=requests, ids=list(range(len(requests))), collection=collection,
            edit_embeddings=edit_emb, encoder_state=encoder.tuned_state() if config.encoder.tune else None,
            router_fitted=router.fitted(), router_state=router.state_dict(), generator=generator,
            history=[history_entry("fit", len(requests))],
            log={"stage_seconds": self.seconds, "replaced_duplicates": replaced, "encoder_tuning": tuning,
                 "generator_training": generator_log, "pseudo_pairs": len(tune_pairs) + len(held_out),
                 "calibration_pairs": len(calibration), "unrelated_queries": len(unrelated),
                 "collection_success_rate": collection.success_rate},
        )

    def _generator(self, config: MegConfig, requests, collection: CollectionResult, edit_emb, unrelated_emb, encoder,
                   work: Path | None, progress: bool) -> tuple[WeightGenerator | None, Any]:
        if config.weights == "retrieved":
            return None, None
        with self._stage("generator"):
            conds, vectors = self._generator_pairs(config, requests, collection, edit_emb, encoder)
            if len(vectors) == 0:
                raise InputError("no edit was collected successfully, so there is nothing to train the generator on")
            zero = unrelated_emb.to(self.device) if config.data_augmentation and len(unrelated_emb) else None
            return trained_generator(config.generator, vectors.to(self.device), conds.to(self.device), zero, work,
                                     progress)

    @staticmethod
    def _generator_pairs(config: MegConfig, requests, collection: CollectionResult, edit_emb,
                         encoder) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditions (K, C), vectors (K, D)) from successful edits: the edit prompt and, when the generator is
        conditioned on the query, any paraphrases the user supplied with the edit (benchmark harnesses strip test
        paraphrases)."""
        ok = collection.success.nonzero().flatten().tolist()
        conds, vectors = [edit_emb[ok]], [collection.vectors[ok]]
        if config.condition == "query":
            rows = [(i, p) for i in ok for p in requests[i].paraphrases]
            if rows:
                conds.append(encoder.encode([p for _, p in rows]))
                vectors.append(collection.vectors[[i for i, _ in rows]])
        return torch.cat(conds), torch.cat(vectors)
