"""Inference cost of an edit pack: edited/base time ratios on query streams, and where the edited time goes.

Protocol (issue 19): the same prompts are answered by the base model (plain greedy decoding, no pack) and by the
EditedModel, timed alternately in one process (base first on even repetitions, edited first on odd ones), so a
ratio compares two runs under the same load; absolute seconds are not comparable across machines. Streams: `mix`
(half edit paraphrases, half unrelated prompts, interleaved), `unrelated` and `paraphrases`. A `cold` cell clears
the edited model's caches before every timed call; a `warm` one answers the same prompts once untimed first.

The component profile wraps the edited model's parts for the duration of a cell and charges each second to one
component, exclusively (time inside a nested wrapped call is charged to the inner one): `encoder` (the query
encoder called outside the router), `router extras` (encoder calls made by the router: focused and
subject-masked texts), `verifier`, `router` (the rest of routing: subject index, similarities, thresholds),
`sampling` (the generator's DDIM loop), `decode` (greedy decoding with the neuron mounted), `other`.

Stand-ins: models of the sizes users run, with random weights (timing does not depend on trained weights), whose
pack is the reference pack's routing (encoder, verifier, edit embeddings: model-independent) with neuron vectors
of the stand-in's length and an untrained generator of the config the pack would choose for that length.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg import edited_model as edited_module
from meg.collection import CollectionResult
from meg.decoding import MAX_NEW_TOKENS, greedy_generate
from meg.diffusion.generator import WeightGenerator
from meg.edited_model import EditedModel
from meg.errors import InputError
from meg.models import fingerprint
from meg.pack import EditPack
from meg.results import markdown_table, write_results
from meg.surgery import neuron_spec

STREAMS = ("mix", "unrelated", "paraphrases")
COMPONENTS = ("encoder", "router extras", "verifier", "router", "sampling", "decode", "other")

# Stand-in shapes (random weights). GPT-2 medium: d = 1024, 24 layers, vocabulary 50,257. Llama-shaped ~1.2B:
# Llama 3.2 1B's d = 2048, 16 layers, FFN 8192, grouped-query attention 32/8 heads, vocabulary 128,256.
STAND_INS: dict[str, dict[str, Any]] = {
    "gpt2-medium-shape": {"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 50257,
                          "n_positions": 1024},
    "llama-1b-shape": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                       "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                       "max_position_embeddings": 2048, "tie_word_embeddings": True},
}


@dataclass(frozen=True)
class Cell:
    """One timed row: model, method (meg / knn), stream, batch size, cache state, and what was measured."""

    model: str
    method: str
    stream: str
    batch: int
    cache: str
    prompts: int
    base_seconds: float
    edited_seconds: float
    routed: float  # share of the stream's prompts the router routed
    profile: dict[str, float]  # seconds per component of the edited calls

    @property
    def ratio(self) -> float:
        return self.edited_seconds / self.base_seconds


def query_streams(paraphrases: Sequence[str], unrelated: Sequence[str], size: int,
                  seed: int = 0) -> dict[str, list[str]]:
    """`size` prompts per stream: paraphrases and unrelated prompts drawn without replacement (seeded), and the
    mix alternating them."""
    rng = random.Random(seed)
    para = rng.sample(list(paraphrases), min(size, len(paraphrases)))
    other = rng.sample(list(unrelated), min(size, len(unrelated)))
    half = size // 2
    mix = [p for pair in zip(para[:half], other[half : half + half]) for p in pair]
    return {"mix": mix, "unrelated": other[:size], "paraphrases": para[:size]}


class Profiler:
    """Exclusive seconds per component while `attached` to an EditedModel (see module docstring)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def _wrap(self, fn: Callable, name: str | Callable[[], str]) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name() if callable(name) else name
            self._stack.append(label)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._stack.pop()
                self.seconds[label] += elapsed
                if self._stack:  # charged to this component, not to the one that called it
                    self.seconds[self._stack[-1]] -= elapsed

        return timed

    def _encoder_label(self) -> str:
        return "router extras" if "router" in self._stack else "encoder"

    @contextmanager
    def attached(self, edited: EditedModel) -> Iterator[None]:
        # greedy_generate is patched where EditedModel looks it up; the router keeps its own reference to the
        # encoder's `encode`, patched on the router too
        targets = [(edited.encoder, "encode", self._encoder_label), (edited.router, "route", "router"),
                   (edited_module, "greedy_generate", "decode")]
        if hasattr(edited.router, "route_texts"):  # routing that encodes its own texts (one pass)
            targets.append((edited.router, "route_texts", "router"))
        if "encode" in vars(edited.router):
            targets.append((edited.router, "encode", self._encoder_label))
        verifier = getattr(edited.router, "verifier", None)
        if verifier is not None:
            targets.append((verifier, "score", "verifier"))
        if edited.generator is not None:
            targets.append((edited.generator, "sample", "sampling"))
        with ExitStack() as stack:
            for owner, attr, label in targets:
                stack.enter_context(_patched(owner, attr, self._wrap(getattr(owner, attr), label)))
            yield

    def total(self, seconds: float) -> dict[str, float]:
        """Per component, with `other` = the edited calls' wall time not spent in any wrapped part."""
        out = {c: max(self.seconds.get(c, 0.0), 0.0) for c in COMPONENTS if c != "other"}
        out["other"] = max(seconds - sum(out.values()), 0.0)
        return out


@contextmanager
def _patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    had = attr in vars(owner)
    old = vars(owner).get(attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, attr, old)
        else:
            delattr(owner, attr)


def _batches(prompts: Sequence[str], size: int) -> list[list[str]]:
    return [list(prompts[k : k + size]) for k in range(0, len(prompts), size)]


def time_cell(edited: EditedModel, prompts: Sequence[str], batch: int, cache: str,
              max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[float, float, float, dict[str, float]]:
    """(base seconds, edited seconds, routed share, edited profile) over `prompts` in batches of `batch`."""
    model, tokenizer, texts = edited.model, edited.tokenizer, edited._texts
    edited.clear_cache()
    if cache == "precomputed" and hasattr(edited, "precompute"):  # the edits these prompts reach (a big DiT on a
        edited.precompute([d["edit"] for d in edited.describe(list(prompts)) if d["routed"]])  # CPU: not all)
    if cache == "warm":
        for chunk in _batches(prompts, batch):
            edited.generate(chunk, max_new_tokens)
    routed = sum(row["routed"] for row in edited.describe(list(prompts))) / max(len(prompts), 1)
    profiler, base_s, edited_s = Profiler(), 0.0, 0.0
    for k, chunk in enumerate(_batches(prompts, batch)):
        order = ("base", "edited") if k % 2 == 0 else ("edited", "base")
        for which in order:
            if which == "base":
                start = time.perf_counter()
                greedy_generate(model, tokenizer, texts(chunk), max_new_tokens, batch_size=batch)
                base_s += time.perf_counter() - start
            else:
                if cache == "cold":
                    edited.clear_cache()
                elif cache == "precomputed":  # every edit's vector ready, nothing known about the queries
                    edited.clear_cache(edit_vectors=False)
                with profiler.attached(edited):
                    start = time.perf_counter()
                    edited.generate(chunk, max_new_tokens)
                    edited_s += time.perf_counter() - start
    return base_s, edited_s, routed, profiler.total(edited_s)


def measure(name: str, edited_by_method: dict[str, EditedModel], streams: dict[str, list[str]],
            batches: Sequence[int], caches: Sequence[str], prompts_at: Callable[[int], int],
            max_new_tokens: int = MAX_NEW_TOKENS, log: Callable[[str], None] = print) -> list[Cell]:
    """Every (method, stream, batch, cache) cell for one model; `prompts_at(batch)` prompts per cell."""
    cells = []
    for method, edited in edited_by_method.items():
        for stream in STREAMS:
            for batch in batches:
                for cache in caches:
                    prompts = streams[stream][: prompts_at(batch)]
                    base_s, edited_s, routed, profile = time_cell(edited, prompts, batch, cache, max_new_tokens)
                    cell = Cell(name, method, stream, batch, cache, len(prompts), base_s, edited_s, routed, profile)
                    log(f"{name} {method} {stream} batch {batch} {cache}: ratio {cell.ratio:.3f} "
                        f"(routed {routed:.0%}, {len(prompts)} prompts)")
                    cells.append(cell)
    return cells


NOTES = [
    "Stand-ins have random weights: they never stop early, so every row decodes max_new_tokens tokens; they use the "
    "reference model's tokenizer (prompt lengths in tokens differ a little from their real tokenizers').",
    "Stand-in packs are the reference pack's edits and routing with random neuron vectors of the stand-in's length "
    "and an untrained generator of the config chosen for that length: timing does not depend on trained weights, "
    "and no collection can succeed on random weights.",
]


def pack_queries(pack: EditPack, records: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(paraphrases of the pack's edits, prompts of the data's other facts): the data's records matched to the
    pack's edits by case id; 'other' = records not edited whose subject is no edited subject."""
    edited_ids = {r.case_id for r in pack.requests if r.case_id is not None}
    subjects = {r.subject.lower() for r in pack.requests if r.subject}
    paraphrases = [p for r in records if r.case_id in edited_ids for p in r.paraphrases]
    others = [r.prompt for r in records if r.case_id not in edited_ids and (r.subject or "").lower() not in subjects]
    if not paraphrases or not others:
        raise InputError(f"the data has {len(paraphrases)} paraphrases of the pack's edits and {len(others)} other "
                         "facts' prompts; --data must be the file the pack's edits came from (matched by case id), "
                         "with paraphrases and more records than the pack")
    return paraphrases, others


def describe_setup(model: str, pack: EditPack, shapes: Sequence[str], device: str) -> str:
    generator = pack.config.generator
    return (f"Model {model} with a {len(pack)}-edit pack (layer {pack.neuron.layer}, D = {pack.neuron.dim}, weights "
            f"{pack.config.weights}, condition {pack.config.condition}, generator "
            f"{generator.preset if generator else None} at {generator.sampling_steps if generator else '-'} steps); "
            f"stand-ins: {', '.join(shapes) or 'none'}; device {device}, {torch.get_num_threads()} torch thread(s).")


# --- packs and stand-ins ---


def knn_pack(pack: EditPack) -> EditPack:
    """The same pack answering with the matched edit's collected vector (the routing-only floor)."""
    return replace(pack, config=replace(pack.config, weights="retrieved"))


def stand_in_model(shape: str, seed: int = 0) -> nn.Module:
    """A random-weight causal LM of one of `STAND_INS`' shapes (float32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(STAND_INS[shape])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def stand_in_pack(pack: EditPack, model: nn.Module, seed: int = 0) -> EditPack:
    """`pack`'s edits and routing on `model`: random neuron vectors of the model's length (scaled like the
    reference pack's) and an untrained generator of the config chosen for that length (see module docstring)."""
    spec = neuron_spec(model, None)
    gen = torch.Generator().manual_seed(seed)
    scale = float(pack.collection.vectors.std())
    vectors = torch.randn(len(pack), spec.dim, generator=gen) * scale
    collection = CollectionResult(vectors, pack.collection.success.clone(), pack.collection.loss.clone(),
                                  pack.collection.steps.clone(), list(pack.collection.predictions))
    generator_config = replace(pack.config, generator=None).generator_for(spec.dim)  # what a fit would choose
    generator = WeightGenerator(generator_config, spec.dim, pack.edit_embeddings.shape[1]).eval()
    config = replace(pack.config, layer=spec.layer, generator=generator_config)
    return replace(pack, config=config, neuron=spec, base_fingerprint=fingerprint(model), collection=collection,
                   generator=generator)


def edited_models(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pack: EditPack, batch: int,
                  methods: Sequence[str] = ("meg", "knn")) -> dict[str, EditedModel]:
    packs = {"meg": pack, "knn": knn_pack(pack)}
    return {m: EditedModel(model, tokenizer, packs[m], check_base=False, batch_size=batch) for m in methods}


# --- results ---


def summary_rows(cells: Sequence[Cell]) -> list[list[Any]]:
    return [[c.model, c.method, c.stream, c.batch, c.cache, c.prompts, f"{c.routed:.0%}", c.ratio] for c in cells]


def profile_rows(cells: Sequence[Cell]) -> list[list[Any]]:
    rows = []
    for c in cells:
        if c.method != "meg" or c.cache == "warm" or c.stream != "mix":
            continue
        total = sum(c.profile.values()) or 1.0
        rows.append([c.model, c.batch, c.cache, *(f"{c.profile[k] / total:.0%}" for k in COMPONENTS)])
    return rows


def write_inference(out: str | Path, name: str, cells: Sequence[Cell], setup: dict[str, Any]) -> dict[str, Path]:
    """JSON (every cell), markdown (ratios, component shares) and a bar plot of the ratios at the largest batch
    (mixed and unrelated streams, cold and precomputed)."""
    table = markdown_table(["model", "method", "stream", "batch", "cache", "prompts", "routed", "edited/base"],
                           summary_rows(cells))
    profile = markdown_table(["model", "batch", "cache", *COMPONENTS], profile_rows(cells))
    notes = "".join(f"- {n}\n" for n in setup.get("notes", []))
    markdown = (f"# Inference cost: edited/base time ratios\n\nCommand: `{setup['command']}`\n\n{setup['description']}"
                f"\n\n{notes}\n## Ratios (base and edited timed alternately in one process)\n\n{table}\n"
                f"## Where the edited time goes (meg, mixed stream; share of edited seconds)\n\n{profile}")
    data = {"setup": setup, "cells": [{**asdict(c), "ratio": c.ratio} for c in cells]}
    return write_results(out, name, data, markdown, lambda ax: _plot(ax, cells))


def _plot(ax: Any, cells: Sequence[Cell]) -> None:
    biggest = max(c.batch for c in cells)
    chosen = [c for c in cells if c.cache != "warm" and c.stream != "paraphrases" and c.batch == biggest]
    labels = [f"{c.model} {c.method} {c.stream} b{c.batch} {c.cache}" for c in chosen]
    ax.barh(range(len(chosen)), [c.ratio for c in chosen], color=["C0" if c.method == "meg" else "C1" for c in chosen])
    ax.set_yticks(range(len(chosen)), labels, fontsize=6)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(1.10, color="r", lw=0.8, ls="--")
    ax.set_xlabel("edited / base time")
    ax.invert_yaxis()

