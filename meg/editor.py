"""`MegEditor`: the paper's four offline stages, turning edit requests into an `EditPack`.

    1. encoder    tune the query encoder's last layer with InfoNCE on pseudo-edit pairs (not the edits)
    2. router     fit the router on the edit embeddings; calibrate it on unrelated queries
    3. collect    train one neuron per edit (batched, resumable)
    4. generator  train the diffusion model: query embedding -> collected neuron vector

With a `work_dir`, the collection chunks and the finished encoder and generator are kept there, so an
interrupted `fit` resumes without redoing them; a second process on the same work directory waits for the first
and then reuses what it finished (`files.work_lock`). Without one, the stages are cached in the user cache
(`files.stages_dir()`: $MEG_CACHE_DIR/stages, else ~/.cache/meg-edit/stages), shared by every fit, each entry keyed
by its inputs (the collection's by the base model's fingerprint too) and written atomically. Every stage has a
progress bar and its wall time is logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg import files, lifelong
from meg.collection import CollectionResult, collect_weights, preset_for
from meg.config import MegConfig
from meg.diffusion.generator import GeneratorConfig, WeightGenerator
from meg.diffusion.train import criterion_reached, holds, trained_generator
from meg.distributed import ranks
from meg.encoder import QueryEncoder, tuned_encoder
from meg.errors import InputError, PackError
from meg.models import fingerprint, same_model
from meg.pack import EditPack, history_entry
from meg.prompts import PromptTemplate, answers_match
from meg.pseudo_edits import split_pairs
from meg.requests import EditRequest, NegativePair, PseudoPair, deduplicate
from meg.routing import RoutingData, embed_known, fitted_router, router_class, router_parts
from meg.surgery import neuron_spec

log = logging.getLogger("meg")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # generator training: None = plain float32


def _disjoint(requests: Sequence[EditRequest], pairs: Sequence[PseudoPair], unrelated: Sequence[str]):
    """Drop pseudo pairs and unrelated queries that repeat an edit's prompt or paraphrase: calibration must not
    see the edits (paper: pseudo edits are NOT in the edit set)."""
    taken = {r.prompt.strip() for r in requests} | {p.strip() for r in requests for p in r.paraphrases}
    kept_pairs = [p for p in pairs if p.question.strip() not in taken and p.paraphrase.strip() not in taken]
    kept_unrelated = [q for q in unrelated if q.strip() not in taken]
    return kept_pairs, kept_unrelated


def _routing_inputs(config: MegConfig, requests: Sequence[EditRequest], pseudo_pairs: Sequence[PseudoPair] | None,
                    unrelated: Sequence[str] | None, calibration_pairs: Sequence[PseudoPair] | None):
    """(pairs the encoder tunes on, calibration pairs, unrelated queries, pseudo pairs given), the second and third
    disjoint from the edits; None = the shipped sets."""
    from meg.data.defaults import (
        default_calibration_pairs,
        default_pseudo_pairs,
        default_unrelated,
    )

    pairs = default_pseudo_pairs() if pseudo_pairs is None else pseudo_pairs
    tune_pairs, held_out = split_pairs(pairs, seed=config.seed)
    extra = default_calibration_pairs() if calibration_pairs is None else calibration_pairs
    calibration, unrelated = _disjoint(requests, [*held_out, *extra],
                                       default_unrelated() if unrelated is None else unrelated)
    return tune_pairs, calibration, unrelated, len(pairs)


def _rows(old: torch.Tensor, fresh: torch.Tensor | None, source: Sequence[int]) -> torch.Tensor:
    """Row i is old[source[i]], or (source[i] < 0) the next row of `fresh`, in order."""
    order, k = [], len(old)
    for row in source:
        order.append(row if row >= 0 else k)
        k += row < 0
    both = old if fresh is None else torch.cat([old, fresh.to(old.device, old.dtype)])
    return both[torch.tensor(order, dtype=torch.long, device=old.device)]


def _merged(old: CollectionResult, fresh: CollectionResult | None, source: Sequence[int]) -> CollectionResult:
    """`old`'s rows carried over and `fresh`'s collected ones, in the order of `source` (see `_rows`)."""
    predictions = iter(fresh.predictions if fresh else [])
    return CollectionResult(*(_rows(getattr(old, f), getattr(fresh, f) if fresh else None, source)
                              for f in ("vectors", "success", "loss", "steps")),
                            [old.predictions[row] if row >= 0 else next(predictions) for row in source])


def _training_summary(training: dict | None) -> dict[str, Any]:
    """The few numbers of a generator training worth keeping in a pack's history."""
    if not training:
        return {}
    if "skipped" in training:
        return {"generator_skipped": training["skipped"]}
    if "resumed_from" in training:
        return {"generator_resumed_from": training["resumed_from"]}
    return {"generator_steps": training["steps"], "generator_stop": training["stop_reason"],
            "generator_criterion": training["best_criterion"], "generator_seconds": training["wall_seconds"]}


def _in_work_dir(method: Callable) -> Callable:
    """Run an editor method in its work directory: a given `work_dir` is locked for the call (a second process on
    it waits, then reuses the stages the first finished); None means the user cache's shared stages directory."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["work_dir"] is None:
            bound.arguments["work_dir"] = files.stages_dir()
            files.clean_stale(bound.arguments["work_dir"])  # only temporaries whose writer is dead
            return method(*bound.args, **bound.kwargs)
        with files.work_lock(bound.arguments["work_dir"]):
            return method(*bound.args, **bound.kwargs)

    return wrapper


class MegEditor:
    """Fit MeG on a base model: `MegEditor(model, tokenizer, config).fit(requests, pseudo_pairs, unrelated)`."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: MegConfig | None = None,
                 template: PromptTemplate | None = None, model_name: str = "", device: str | torch.device | None = None,
                 precision: str = "float32"):
        """`precision`: "bfloat16" trains the generator under bf16 autocast (load the base model in bf16 too, and
        collection runs in it); the collected vectors and the generator's weights stay float32."""
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.model, self.tokenizer, self.autocast = model, tokenizer, PRECISIONS[precision]
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

    @_in_work_dir
    def fit(
        self,
        requests: Sequence[EditRequest],
        pseudo_pairs: Sequence[PseudoPair] | None = None,
        unrelated: Sequence[str] | None = None,
        work_dir: str | Path | None = None,
        progress: bool = True,
        calibration_pairs: Sequence[PseudoPair] | None = None,
        negative_pairs: Sequence[NegativePair] | None = None,
    ) -> EditPack:
        """Run the four stages. `pseudo_pairs` / `unrelated` default to the shipped public sets; `negative_pairs`
        (same-subject, other-relation question pairs) train the default router's verifier, None = the shipped
        ones (benchmarks on KnowEdit's wiki files give `meg.data.defaults.held_out_negatives`).

        The encoder (and the default router's verifier) are tuned on the pseudo pairs minus a held-out split,
        whatever the edits are, so the shipped tuned layers serve every edit set under the default settings; pairs
        that repeat an edit are left out of calibration only. The router is calibrated on the held-out pairs plus
        `calibration_pairs` (pairs used for nothing else; None = the shipped 3,000, [] = none): a few hundred
        held-out pairs put the threshold at 98% of them a point of recall too high or too low by chance
        (docs/LOG.md, 2026-11-30).
        """
        requests, replaced = deduplicate(list(requests))
        if not requests:
            raise InputError("no edit requests given")
        if replaced:
            log.warning("%d duplicate prompts: the later edit wins (%s)", len(replaced), "; ".join(replaced[:3]))
        config, work = self.resolved_config(), Path(work_dir) if work_dir else None
        tune_pairs, calibration, unrelated, pair_count = _routing_inputs(config, requests, pseudo_pairs, unrelated,
                                                                         calibration_pairs)
        group = ranks()
        with self._stage("encoder"), group.main_first():  # rank 0 tunes (or finds) it, the others read its cache
            encoder, tuning = tuned_encoder(config.encoder, tune_pairs, work, self.device, progress and group.main)
        with self._stage("embed"):
            edit_emb = encoder.encode([r.prompt for r in requests], progress=progress and group.main)  # (N, C)
            unrelated_emb = encoder.encode(list(unrelated), progress=progress and group.main)  # (M, C)
        with self._stage("router"):
            data = RoutingData([r.prompt for r in requests], edit_emb, [r.subject for r in requests], list(unrelated),
                               unrelated_emb, calibration, tune_pairs, encoder.encode, work, negative_pairs)
            router_fitted, router_state = _on_main(
                lambda: fitted_router(config.router, config.router_config(), data, progress=progress))
        spec = neuron_spec(self.model, config.layer)
        with self._stage("collect"):
            collection = collect_weights(self.model, self.tokenizer, spec, requests, config.collection, self.template,
                                         work, progress)
        generator, generator_log = self._generator(config, requests, collection, edit_emb, unrelated_emb, encoder,
                                                   work, progress)
        requested = config.weights
        config, generator = _weight_source(config, generator, generator_log, collection)
        return EditPack(
            config=config, base_model=self.model_name, base_fingerprint=fingerprint(self.model), neuron=spec,
            template=self.template, requests=requests, ids=list(range(len(requests))), collection=collection,
            edit_embeddings=edit_emb, encoder_state=encoder.tuned_state() if config.encoder.tune else None,
            router_fitted=router_fitted, router_state=router_state, generator=generator,
            history=[history_entry("fit", len(requests), weights=requested)],
            query_embeddings=dict(zip(unrelated, unrelated_emb)),
            log={"stage_seconds": dict(self.seconds), "replaced_duplicates": replaced, "encoder_tuning": tuning,
                 "generator_training": generator_log, "pseudo_pairs": pair_count,
                 "calibration_pairs": len(calibration), "unrelated_queries": len(unrelated),
                 "collection_success_rate": collection.success_rate},
        )

    # --- lifelong editing: meg/lifelong.py works out what changes, these recompute only that ---

    def add(self, pack: EditPack, requests: Sequence[EditRequest], pseudo_pairs: Sequence[PseudoPair] | None = None,
            unrelated: Sequence[str] | None = None, work_dir: str | Path | None = None, progress: bool = True,
            calibration_pairs: Sequence[PseudoPair] | None = None) -> EditPack:
        """A new pack with `requests` added; `pack` (and its directory) are left as they are.

        An edit whose prompt the pack already holds replaces that edit, keeping its id (the later edit wins, as
        within one edit file). An added edit that the pack's router sends to an earlier edit with another target
        (same subject and relation, by the router's own judgement) is kept and reported as a possible conflict.
        Both are logged and recorded in the new pack's history. `pseudo_pairs`, `unrelated` and
        `calibration_pairs` are the router's calibration inputs, as for `fit` (give the ones the pack was fitted
        with; None = the shipped sets); the pack's encoder and verifier are reused, never retrained.
        """
        change = lifelong.plan_add(pack.requests, pack.ids, pack.next_id, requests)
        return self._update(pack, change, pseudo_pairs, unrelated, work_dir, progress, calibration_pairs)

    def replace(self, pack: EditPack, requests: Sequence[EditRequest], pseudo_pairs: Sequence[PseudoPair] | None = None,
                unrelated: Sequence[str] | None = None, work_dir: str | Path | None = None, progress: bool = True,
                calibration_pairs: Sequence[PseudoPair] | None = None) -> EditPack:
        """`add` for edits that must all be in the pack already (a new target for an edited prompt)."""
        change = lifelong.plan_add(pack.requests, pack.ids, pack.next_id, requests, operation="replace")
        return self._update(pack, change, pseudo_pairs, unrelated, work_dir, progress, calibration_pairs)

    def remove(self, pack: EditPack, edits: Sequence[int | str], pseudo_pairs: Sequence[PseudoPair] | None = None,
               unrelated: Sequence[str] | None = None, work_dir: str | Path | None = None, progress: bool = True,
               calibration_pairs: Sequence[PseudoPair] | None = None) -> EditPack:
        """A new pack without the edits named by id (int) or prompt (str). Nothing is collected or trained: the
        router is re-fitted without them, so their prompts reach the base model untouched (unless another edit
        matches them), and the generator is kept (the removed edits' conditions are never routed to again)."""
        change = lifelong.plan_remove(pack.requests, pack.ids, pack.next_id, edits)
        return self._update(pack, change, pseudo_pairs, unrelated, work_dir, progress, calibration_pairs)

    @_in_work_dir
    def _update(self, pack: EditPack, change: lifelong.Change, pseudo_pairs, unrelated, work_dir, progress: bool,
                calibration_pairs) -> EditPack:
        """The pack after `change`: embed, route, collect and train only what the change needs (meg/lifelong.py)."""
        self._check_change(pack, change)
        self.seconds = {}
        config, work = pack.config, Path(work_dir) if work_dir else None
        tune_pairs, calibration, unrelated, _ = _routing_inputs(config, change.requests, pseudo_pairs, unrelated,
                                                                calibration_pairs)
        encoder = QueryEncoder.from_config(config.encoder, device=self.device)
        if pack.encoder_state is not None:
            encoder.load_tuned_state(pack.encoder_state)
        with self._stage("embed"):
            fresh = [change.requests[i].prompt for i, row in enumerate(change.embedding_from) if row < 0]
            fresh_emb = encoder.encode(fresh, progress=progress).to(pack.edit_embeddings.dtype) if fresh else None
            edit_emb = _rows(pack.edit_embeddings, fresh_emb, change.embedding_from)  # (N, C)
            unrelated_emb = embed_known(list(unrelated), pack.query_embeddings,  # (M, C): new queries only
                                        functools.partial(encoder.encode, progress=progress))
        with self._stage("router"):
            previous = router_class(config.router).from_state(config.router_config(), pack.router_fitted,
                                                              pack.router_state, pack.edit_embeddings, pack.requests,
                                                              encoder.encode)
            data = RoutingData([r.prompt for r in change.requests], edit_emb, [r.subject for r in change.requests],
                               list(unrelated), unrelated_emb, calibration, tune_pairs, encoder.encode, work)
            conflicts, (router_fitted, router_state) = _on_main(lambda: (
                self._conflicts(previous, pack, change, edit_emb),
                router_parts(previous.refit(data, progress=progress))))
        with self._stage("collect"):
            rows = change.recollect
            collected = collect_weights(self.model, self.tokenizer, pack.neuron, [change.requests[i] for i in rows],
                                        config.collection, pack.template, work, progress) if rows else None
            collection = _merged(pack.collection, collected, change.vector_from)
        mode, generator, generator_log = self._updated_generator(pack, change, collection, edit_emb, unrelated_emb,
                                                                 encoder, work, progress)
        if mode in ("fine-tune", "retrain") and pack.weights_requested == "auto":  # as a fit resolves it
            config, generator = _weight_source(replace(config, weights="auto"), generator, generator_log, collection)
        entry = history_entry(change.operation, change.count, **change.report(), conflicts=conflicts,
                              generator=mode, weights=config.weights, stage_seconds=dict(self.seconds),
                              **({"collected": int(collected.success.sum()), "collection_rows": len(rows)}
                                 if collected else {}), **_training_summary(generator_log))
        return EditPack(
            config=config, base_model=pack.base_model, base_fingerprint=pack.base_fingerprint, neuron=pack.neuron,
            template=pack.template, requests=change.requests, ids=change.ids, collection=collection,
            edit_embeddings=edit_emb, encoder_state=pack.encoder_state, router_fitted=router_fitted,
            router_state=router_state, generator=generator, next_id=change.next_id,
            history=[*pack.history, entry], log=dict(pack.log), query_embeddings=dict(zip(unrelated, unrelated_emb)),
        )

    def _check_change(self, pack: EditPack, change: lifelong.Change) -> None:
        """Refuse another base model; say which edits the change replaces (the later edit wins)."""
        if not same_model(fingerprint(self.model), pack.base_fingerprint):
            raise PackError(f"this pack was made for base model {pack.base_model!r}; the editor's model has a "
                            "different architecture or weights")
        if change.duplicates:
            log.warning("%d duplicate prompts: the later edit wins (%s)", len(change.duplicates),
                        "; ".join(change.duplicates[:3]))
        if change.replaced:
            log.warning("%d edits replace earlier edits of the same prompt (ids %s)", len(change.replaced),
                        ", ".join(map(str, change.replaced[:10])))

    def _updated_generator(self, pack: EditPack, change: lifelong.Change, collection: CollectionResult, edit_emb,
                           unrelated_emb, encoder, work: Path | None, progress: bool):
        """(what was done, the generator, its training log): `lifelong.generator_plan`'s choice, fine-tuning with
        the changed edits as the focus of every batch."""
        config = pack.config
        mode, training = lifelong.generator_plan(change, config.generator if config.weights == "generated" else None,
                                                 int(pack.collection.success.sum()))
        if mode not in ("fine-tune", "retrain"):
            return mode, pack.generator, None
        tune = mode == "fine-tune"
        generator, training_log = self._generator(config, change.requests, collection, edit_emb, unrelated_emb,
                                                  encoder, work, progress, training, pack.generator if tune else None,
                                                  change.recollect if tune else None)
        return mode, generator, training_log

    @staticmethod
    def _conflicts(previous, pack: EditPack, change: lifelong.Change, edit_emb: torch.Tensor) -> list[dict]:
        """Added edits the pack's router (before the change) sends to an earlier, kept edit with another target:
        the router's notion of "the same subject and relation" is the one inference uses (for the default router:
        the prompt names the earlier edit's subject and the verifier and cosine score it as the same question)."""
        row_of = {i: row for row, i in enumerate(change.ids)}
        rows = [row_of[i] for i in change.added]
        if not rows:
            return []
        routes = previous.route([change.requests[r].prompt for r in rows], edit_emb[rows])
        found = []
        for k, row in enumerate(rows):
            old = int(routes.edit[k])
            if not bool(routes.routed[k]) or old < 0 or pack.ids[old] not in row_of:
                continue
            new, earlier = change.requests[row], change.requests[row_of[pack.ids[old]]]
            if lifelong.same_fact(new, earlier) and not answers_match(new.target, earlier.target):
                found.append(lifelong.conflict(change.ids[row], new, pack.ids[old], earlier))
        if found:
            log.warning("%d added edits may conflict with earlier edits of the same fact (both kept): %s", len(found),
                        "; ".join(f"{c['prompt']!r} -> {c['target']!r} vs {c['earlier_prompt']!r} -> "
                                  f"{c['earlier_target']!r}" for c in found[:3]))
        return found

    def _generator(self, config: MegConfig, requests, collection: CollectionResult, edit_emb, unrelated_emb, encoder,
                   work: Path | None, progress: bool, training: GeneratorConfig | None = None,
                   init: WeightGenerator | None = None,
                   focus: Sequence[int] | None = None) -> tuple[WeightGenerator | None, Any]:
        """Train the generator on every successful edit, or every edit (`generator_vectors`; `training`: another
        schedule than the pack's; `init`: fine-tune these weights, with half of every batch from the edits of rows
        `focus` and the rest a replay of the others)."""
        if config.weights == "retrieved":
            return None, None
        with self._stage("generator"):
            conds, vectors, edits = self._generator_pairs(config, requests, collection, edit_emb, encoder)
            if len(vectors) == 0:
                raise InputError("no edit was collected successfully, so there is nothing to train the generator on")
            zero = unrelated_emb.to(self.device) if config.data_augmentation and len(unrelated_emb) else None
            rows = torch.isin(edits, torch.as_tensor(list(focus or []), dtype=torch.long)).nonzero().flatten()
            if focus is not None and len(rows) == 0:  # no new edit was collected: nothing new to learn
                return init, {"skipped": "no new edit was collected successfully"}
            return trained_generator(training or config.generator, vectors.to(self.device), conds.to(self.device),
                                     zero, work, progress, init=init, focus=rows if focus is not None else None,
                                     autocast=self.autocast)

    @staticmethod
    def _generator_pairs(config: MegConfig, requests, collection: CollectionResult, edit_emb,
                         encoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(conditions (K, C), vectors (K, D), the edit row of each (K,)) from successful edits (every edit with
        `generator_vectors="all"`): the edit prompt and, when the generator is conditioned on the query, any
        paraphrases the user supplied with the edit (benchmark harnesses strip test paraphrases)."""
        ok = _learned(config, collection).nonzero().flatten().tolist()
        conds, vectors, edits = [edit_emb[ok]], [collection.vectors[ok]], list(ok)
        if config.condition == "query":
            rows = [(i, p) for i in ok for p in requests[i].paraphrases]
            if rows:
                conds.append(encoder.encode([p for _, p in rows]))
                vectors.append(collection.vectors[[i for i, _ in rows]])
                edits += [i for i, _ in rows]
        return torch.cat(conds), torch.cat(vectors), torch.tensor(edits, dtype=torch.long)


def _on_main(compute: Callable[[], Any]) -> Any:
    """`compute()` on rank 0 alone (the router: it reads and writes the work directory's caches), its result sent to
    every rank; in one process, just `compute()`."""
    group = ranks()
    return group.broadcast(compute() if group.main else None)


def _learned(config: MegConfig, collection: CollectionResult) -> torch.Tensor:
    """(N,) bool: the edits whose collected vectors the generator learns (`MegConfig.generator_vectors`)."""
    return collection.success if config.generator_vectors == "successful" else torch.ones_like(collection.success)


def _weight_source(config: MegConfig, generator, training: dict | None, collection: CollectionResult):
    """`weights="auto"` resolved after training: the generator when it reproduces the collected vectors
    (meg.diffusion.train.holds), else the collected vectors themselves; the pack's config records which."""
    collected = int(_learned(config, collection).sum())
    if config.weights == "retrieved" or holds(training or {}, config.generator):
        return (replace(config, weights="generated") if config.weights == "auto" else config), generator
    if config.weights == "generated":
        log.warning("the generator does not reproduce the %d collected vectors (criterion %.3f after %d steps, "
                    "threshold %.3f): edits may not take; raise GeneratorConfig.max_steps or the preset, or use "
                    "weights='auto' or 'retrieved'", collected, criterion_reached(training, config.generator),
                    training["steps"], config.generator.stop_threshold)
        return config, generator
    log.warning("weights='auto': the generator does not reproduce the %d collected vectors (criterion %.3f after %d "
                "steps, threshold %.3f), so the pack answers with the collected vectors (weights='retrieved')",
                collected, criterion_reached(training, config.generator), training["steps"],
                config.generator.stop_threshold)
    return replace(config, weights="retrieved"), None
