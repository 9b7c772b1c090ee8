"""Second moment of a layer's keys, C = E[k k^T], over a text corpus, computed once and cached on disk.

The keys k are the inputs of the FFN output projection (m = FFN width). MEMIT (Meng et al. 2023, Eq. 14) uses
C as the prior over "knowledge already stored" in that projection (`mom2` in its code: the uncentred second
moment over 100,000 Wikipedia samples); AlphaEdit (Fang et al. 2025) projects updates onto C's null space.

Accumulation: each batch's K^T K is formed in float32 (one batch: a few thousand tokens) and added into a float64
sum; padding positions are never counted. Cache: `<stats_dir>/<model_type>-layer<L>-<key>.safetensors` (tensor
"mom2", (m, m) float64) plus a `.json` with the model fingerprint (`meg.models.fingerprint`), layer, corpus hash,
token count and max length. A cached file is reused only when all of these match.

The corpus: for the reference model, the text it was trained on (`meg.refmodel.corpus.build_corpus` over the
shared data directory); without a data directory, the texts shipped in `meg/assets/*.jsonl` (CounterFact-style
prompts with true answers, paraphrases, unrelated queries). Wikipedia, MEMIT's corpus, is not available offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from meg import __version__, files
from meg.baselines.base import right_padded
from meg.models import fingerprint, same_model
from meg.surgery import capture_activations, context_length, frozen_eval

STATS_TENSOR = "mom2"
STATS_FILE = "{stem}.safetensors"
STATS_META = "{stem}.json"


def default_stats_dir() -> Path:
    """$MEG_CACHE_DIR/stats, else ~/.cache/meg-edit/stats (the pre-edit output cache's sibling)."""
    return Path(os.environ.get("MEG_CACHE_DIR") or Path.home() / ".cache" / "meg-edit") / "stats"


def asset_corpus() -> list[str]:
    """Texts shipped with the package: demo CounterFact facts (prompt + true answer), their paraphrases and
    locality prompts, the pseudo-edit pairs and the unrelated queries; de-duplicated, in file order."""
    from meg.data.defaults import default_pseudo_pairs, default_unrelated, demo_requests

    texts = []
    for r in demo_requests():
        texts += [f"{p} {r.ground_truth}." if r.ground_truth else p for p in (r.prompt, *r.paraphrases)]
        texts += list(r.unrelated)
    for pair in default_pseudo_pairs():
        texts += [pair.question, pair.paraphrase]
    texts += default_unrelated()
    return list(dict.fromkeys(texts))


def corpus_for_model(data_dir: str | Path | None = None, max_texts: int | None = None, seed: int = 0) -> list[str]:
    """The statistics corpus: the reference model's training lines when `data_dir` (the shared data directory)
    is given, else `asset_corpus()`. `max_texts` keeps a seeded random subset, in corpus order."""
    if data_dir is not None:
        from meg.refmodel.corpus import build_corpus

        texts = build_corpus(data_dir)
    else:
        texts = asset_corpus()
    if max_texts is not None and len(texts) > max_texts:
        keep = sorted(random.Random(seed).sample(range(len(texts)), max_texts))
        texts = [texts[i] for i in keep]
    return texts


def corpus_hash(texts: Sequence[str]) -> str:
    """sha256 of the texts (order matters)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


@torch.no_grad()
def accumulate_second_moments(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[int, torch.Tensor], int]:
    """E[k k^T] per layer over every non-padding token of `texts`: ({layer: (m, m) float64}, token count)."""
    max_length, device = context_length(model), next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: little padding
    sums: dict[int, torch.Tensor] = {}
    count = 0
    with frozen_eval(model), capture_activations(model, list(layers), "keys") as keys:
        for start in tqdm(range(0, len(order), batch_size), desc="key statistics", disable=not progress):
            input_ids, mask = right_padded(tokenizer, [texts[i] for i in order[start : start + batch_size]], max_length)
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            real = mask.bool().to(device)  # (B, T)
            for layer in layers:
                k = keys[layer][real].float()  # (n, m): real tokens only
                sums[layer] = sums.get(layer, 0) + (k.T @ k).to("cpu", torch.float64)  # (m, m)
            count += int(real.sum())
    if count == 0:
        raise ValueError("the statistics corpus has no tokens")
    return {layer: total / count for layer, total in sums.items()}, count


def _stem(model: nn.Module, meta: dict) -> str:
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{model.config.model_type}-layer{meta['layer']:02d}-{key}"


def _metadata(model_fingerprint: dict, layer: int, texts_hash: str, max_length: int | None) -> dict:
    return {"fingerprint": model_fingerprint, "layer": layer, "corpus_hash": texts_hash, "max_length": max_length}


def _load(stats_dir: Path, stem: str, expected: dict) -> torch.Tensor | None:
    """The cached moment when its metadata matches `expected` (fingerprints compared with `same_model`)."""
    meta_path, tensor_path = stats_dir / STATS_META.format(stem=stem), stats_dir / STATS_FILE.format(stem=stem)
    if not (meta_path.is_file() and tensor_path.is_file()):
        return None
    meta = files.read_json(meta_path)
    keys = ("layer", "corpus_hash", "max_length")
    if any(meta.get(k) != expected[k] for k in keys) or not same_model(meta["fingerprint"], expected["fingerprint"]):
        return None
    return files.load_tensors(tensor_path)[STATS_TENSOR]


def second_moments(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    layers: Sequence[int],
    texts: Sequence[str],
    stats_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """E[k k^T] (m, m) float64 for each layer, from the cache in `stats_dir` (default `default_stats_dir()`)
    when model, layer and corpus match; the missing layers are computed in one pass over `texts` and cached."""
    stats_dir = Path(stats_dir) if stats_dir is not None else default_stats_dir()
    texts_hash, model_fingerprint = corpus_hash(texts), fingerprint(model)
    expected = {layer: _metadata(model_fingerprint, layer, texts_hash, context_length(model)) for layer in layers}
    stems = {layer: _stem(model, expected[layer]) for layer in layers}
    found = {layer: _load(stats_dir, stems[layer], expected[layer]) for layer in layers}
    missing = [layer for layer, moment in found.items() if moment is None]
    if missing:
        moments, count = accumulate_second_moments(model, tokenizer, texts, missing, batch_size, progress)
        for layer, moment in moments.items():
            files.save_tensors(stats_dir / STATS_FILE.format(stem=stems[layer]), {STATS_TENSOR: moment})
            meta = {**expected[layer], "tokens": count, "texts": len(texts), "meg_version": __version__}
            files.atomic_write_json(stats_dir / STATS_META.format(stem=stems[layer]), meta)
            found[layer] = moment
    return {layer: found[layer] for layer in layers}  # type: ignore[misc]
