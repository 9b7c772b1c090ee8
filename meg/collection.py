"""Weight collection (paper stage 3): train one neuron per edit so the model answers the edit's target.

Paper semantics, batched: every edit starts from ONE shared seeded initial vector; only the neuron trains, with
plain SGD on `prompt + " " + target + "." + EOS` and the loss on the answer tokens; a row stops once its loss has
stayed under `loss_threshold` for `patience` steps; an edit succeeds when greedy decoding reproduces the target.
Rows of a batch never interact (each has its own neuron and its own loss term), so a batch gives the same
vectors as collecting each edit alone. Finished chunks are written to `cache_dir` and skipped on a rerun.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from meg import files
from meg.architectures import resolve
from meg.decoding import MAX_NEW_TOKENS, greedy_generate
from meg.distributed import ranks
from meg.errors import InputError
from meg.models import fingerprint
from meg.prompts import (
    AnswerBatch,
    LossTokens,
    PromptTemplate,
    answers_match,
    encode_answers,
)
from meg.requests import EditRequest
from meg.settings import Rules, Settings, setting
from meg.surgery import NeuronSpec, context_length, frozen_eval, logits_at, mount_neuron


@dataclass(frozen=True)
class CollectionConfig(Settings):
    """How one neuron is trained per edit. Defaults: the paper's Phi-2 setting (SGD lr 0.01, 80 steps)."""

    lr: float = setting(0.01, "SGD learning rate (paper: Phi-2 0.01, GPT-J 0.07, Llama-3 0.02)")
    steps: int = setting(80, "maximum SGD steps per edit")
    schedule: Literal["constant", "cosine"] = setting("constant", "cosine: lr * (1 + cos(pi * step / steps)) / 2")
    loss_threshold: float = setting(0.0, "a row stops once its loss < threshold for `patience` steps; 0 disables")
    patience: int = setting(1, "steps below loss_threshold before a row stops")
    # Ours (not in the paper): a small model needs a large step on w_out but a small one on the input side, or the
    # neuron's pre-activation collapses (docs/LOG.md, 2026-11-26).
    input_lr_scale: float = setting(1.0, "learning-rate multiplier for w_in and the bias (ours; paper 1)")
    init_bias: float | None = setting(None, "initial bias of the neuron; null: drawn like nn.Linear's (paper)")
    loss_tokens: LossTokens = setting("answer", "answer: target + '.' + EOS (research code); target: target only")
    batch_size: int = setting(32, "edits per forward/backward (rows never interact)")
    batch_tokens: int | None = setting(None, "memory cap: a batch's rows train in consecutive sub-batches of at most "
                                             "this many tokens (rows x padded length), each trimmed to its own "
                                             "length; rows never interact, so the vectors are the same; null = no cap")
    seed: int = setting(0, "seed of the shared initial vector")
    # Ours (not in the paper): a row can stall from the shared start (loss stuck near its initial value while the
    # same relation's other rows succeed) and succeed from another one (docs/LOG.md, 2026-12-02, session 20).
    retries: int = setting(0, "rows that fail are trained again from the start of seed + 1, ..., seed + retries; "
                              "a row keeps its first success (paper: 0)")
    # Ours (not in the paper): SGD at the small model's large step moves w_out fast and the input side slowly
    # (input_lr_scale), which answers of a few tokens need; a long answer whose tokens repeat (a WikiData timestamp
    # "0850-01-01T00:00:00Z") needs the neuron to fire differently at positions the base model reads alike, and SGD
    # stalls there (docs/LOG.md, 2026-12-03, session 21). Adam scales each coordinate's step by its own gradient.
    optimizer: Literal["sgd", "adam"] = setting("sgd", "sgd (paper) or adam (ours: per-coordinate steps, "
                                                       "betas 0.9 / 0.999, each row its own moments)")
    # Ours: the slow setting only where the fast one failed, so a data set's cost per edit grows by its failures.
    fallback: str | None = setting(None, "name of a collection preset that rows still failing after the retries "
                                         "are trained again with (from its own start; steps added); null: none")

    def rules(self) -> Rules:
        return {"lr": (self.lr > 0, "> 0"), "steps": (self.steps >= 1, ">= 1"), "retries": (self.retries >= 0, ">= 0"),
                "loss_threshold": (self.loss_threshold >= 0, ">= 0"), "patience": (self.patience >= 1, ">= 1"),
                "input_lr_scale": (self.input_lr_scale > 0, "> 0"), "batch_size": (self.batch_size >= 1, ">= 1"),
                "batch_tokens": (self.batch_tokens is None or self.batch_tokens >= 1, ">= 1 or null"),
                "fallback": self._fallback_rule()}

    def _fallback_rule(self) -> tuple[bool, str]:
        if self.fallback is None:  # (the presets below are built with none)
            return True, "null"
        names = [name for name, config in PRESETS.items() if config.fallback is None]
        return self.fallback in names, f"null or a preset without a fallback of its own: {', '.join(names)}"


# Named settings. "paper-*" are the research code's stage-3 configs; "small-gpt2" is ours, measured on the
# 7M-parameter reference model (docs/LOG.md). The architecture table picks one per model family.
PRESETS: dict[str, CollectionConfig] = {
    "paper-phi2": CollectionConfig(lr=0.01, steps=80),
    "paper-gptj": CollectionConfig(lr=0.07, steps=500, schedule="cosine", loss_threshold=0.2, patience=10),
    "paper-llama3": CollectionConfig(lr=0.02, steps=50),
    # batch 128: 1.67x the edits/s of the full-logit loss at batch 32, against 1.45x at 32 and 1.18x at 256 (more
    # padding), same success (docs/results/collection-speed.md, 256 counterfact-val edits, one thread).
    # batch_tokens 4,096 leaves CounterFact's batches whole (16-32 tokens x 128) and splits KnowEdit WikiData
    # counterfact's (48-119 tokens) in two or more: its first 128 edits peaked at 2.3 GB instead of 3.6 GB, in 208 s
    # instead of 270 s (less padding), same successes, vectors within 2e-6 (docs/LOG.md, 2026-12-02, session 19).
    "small-gpt2": CollectionConfig(lr=10.0, steps=80, input_lr_scale=0.01, init_bias=1.0, loss_threshold=0.05,
                                   batch_size=128, batch_tokens=4096),
    # For the rows small-gpt2 cannot collect: long answers whose tokens repeat (WikiData timestamps). Adam with the
    # same step on both sides; 600 steps (docs/results/collection-reference-2-recent-timestamps.md).
    "long-answers": CollectionConfig(optimizer="adam", lr=0.05, steps=600, input_lr_scale=1.0, init_bias=1.0,
                                     loss_threshold=0.05, batch_size=128, batch_tokens=4096),
}


def preset(name: str) -> CollectionConfig:
    """A named collection setting (see PRESETS)."""
    if name not in PRESETS:
        raise InputError(f"unknown collection preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_for(model: nn.Module, name: str | None = None) -> CollectionConfig:
    """`name`'s preset, or (None) the one the architecture table assigns to the model's family."""
    return preset(name or resolve(model.config.model_type).collection_preset)


@dataclass
class CollectionResult:
    """Per edit: the trained vector (N, D), greedy success (N,), final loss (N,), steps taken (N,), prediction."""

    vectors: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    predictions: list[str]

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 0.0

    @staticmethod
    def concat(parts: Sequence[CollectionResult]) -> CollectionResult:
        return CollectionResult(
            torch.cat([p.vectors for p in parts]),
            torch.cat([p.success for p in parts]),
            torch.cat([p.loss for p in parts]),
            torch.cat([p.steps for p in parts]),
            [x for p in parts for x in p.predictions],
        )


def initial_vector(spec: NeuronSpec, config: CollectionConfig) -> torch.Tensor:
    """The shared seeded start (D,) for every edit."""
    gen = torch.Generator().manual_seed(config.seed)
    d = spec.hidden_size

    def uniform(n: int, bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    w_in, bias, w_out = uniform(d, d**-0.5), uniform(1, d**-0.5), uniform(d, (4 * d) ** -0.5)
    if config.init_bias is not None:
        bias = torch.full((1,), config.init_bias, dtype=torch.float64)
    return spec.join(w_in[None], bias, w_out[None])[0].float()


def _row_losses(model: nn.Module, batch: AnswerBatch, tokens: LossTokens) -> torch.Tensor:
    """Mean cross-entropy over each row's loss tokens -> (B,). The output projection runs only where a loss token
    is predicted (`logits_at`): the full (B, T, V) logits cost about a third of the reference model's forward."""
    mask = batch.loss_mask(tokens)  # (B, T)
    where = torch.zeros_like(mask)
    where[:, :-1] = mask[:, 1:]  # token t+1 is predicted at position t
    logits = logits_at(model, batch.input_ids, batch.attention_mask, where)  # (K, V), rows in row-major order
    nll = nn.functional.cross_entropy(logits.float(), batch.input_ids[:, 1:][mask[:, 1:]], reduction="none")  # (K,)
    rows = where.nonzero()[:, 0]
    return torch.zeros(len(mask), dtype=nll.dtype, device=nll.device).index_add(0, rows, nll) / where.sum(1)


def _lr_at(config: CollectionConfig, step: int) -> float:
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
    return config.lr


class _Adam:
    """Adam over the rows of a (B, D) weight matrix: each row its own moments, so rows never interact. Every row
    still training has taken the same number of steps (rows only ever leave)."""

    def __init__(self, weights: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m, self.v, self.betas, self.eps = torch.zeros_like(weights), torch.zeros_like(weights), betas, eps

    def step(self, live: torch.Tensor, grad: torch.Tensor, step: int) -> torch.Tensor:
        """The update of the `live` rows at 0-based `step`, from their gradient (L, D)."""
        b1, b2 = self.betas
        self.m[live] = b1 * self.m[live] + (1 - b1) * grad
        self.v[live] = b2 * self.v[live] + (1 - b2) * grad.square()
        m_hat, v_hat = self.m[live] / (1 - b1 ** (step + 1)), self.v[live] / (1 - b2 ** (step + 1))
        return m_hat / (v_hat.sqrt() + self.eps)


def _train_rows(model: nn.Module, spec: NeuronSpec, batch: AnswerBatch, config: CollectionConfig) -> tuple:
    """SGD (or Adam, `config.optimizer`) on one batch of edits, every row its own neuron. -> vectors (B, D),
    loss (B,), steps (B,)."""
    rows = batch.input_ids.shape[0]
    weights = initial_vector(spec, config).to(batch.input_ids.device).repeat(rows, 1)  # (B, D)
    scale = torch.ones(spec.dim, device=weights.device)
    scale[: spec.dim - spec.hidden_size] = config.input_lr_scale  # w_in and bias come before w_out
    live = torch.arange(rows, device=weights.device)  # rows still training
    adam = _Adam(weights) if config.optimizer == "adam" else None
    losses = torch.full((rows,), float("nan"))
    steps, below = torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long)
    for step in range(config.steps):
        leaf = weights[live].clone().requires_grad_(True)  # (L, D)
        sub = AnswerBatch(*(getattr(batch, f)[live] for f in ("input_ids", "attention_mask", "target_mask", "answer_mask")))
        with mount_neuron(model, spec, leaf):
            row_loss = _row_losses(model, sub, config.loss_tokens)  # (L,)
            # Summing keeps each row's gradient equal to its own loss's gradient (rows share no weights).
            (grad,) = torch.autograd.grad(row_loss.sum(), leaf)
        direction = grad if adam is None else adam.step(live, grad, step)
        weights[live] = (leaf - _lr_at(config, step) * direction * scale).detach()
        cpu_live = live.cpu()
        losses[cpu_live] = row_loss.detach().float().cpu()
        steps[cpu_live] += 1
        below[cpu_live] = torch.where(losses[cpu_live] < config.loss_threshold, below[cpu_live] + 1, 0)
        live = live[(below[cpu_live] < config.patience).to(live.device)]
        if live.numel() == 0:
            break
    return weights, losses, steps


def _sub_batches(batch: AnswerBatch, tokens: int | None) -> list[AnswerBatch]:
    """`batch` as consecutive row slices of at most `tokens` (rows x padded length) each, every slice cut to its
    own longest row (right padding); [batch] when it fits or there is no cap."""
    rows, width = batch.input_ids.shape
    if tokens is None or rows * width <= tokens:
        return [batch]
    step = max(1, tokens // width)
    parts = []
    for start in range(0, rows, step):
        rows_here = slice(start, start + step)
        length = int(batch.attention_mask[rows_here].sum(dim=1).max())
        parts.append(AnswerBatch(*(getattr(batch, f)[rows_here, :length] for f in AnswerBatch.__dataclass_fields__)))
    return parts


def _attempt(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: NeuronSpec, batch: AnswerBatch,
             texts: list[str], targets: list[str], config: CollectionConfig) -> CollectionResult:
    """Train every row of `batch` from `config`'s start, then check each by greedy decoding."""
    parts = [_train_rows(model, spec, part, config) for part in _sub_batches(batch, config.batch_tokens)]
    weights, losses, steps = (torch.cat(values) for values in zip(*parts))
    predictions = greedy_generate(model, tokenizer, texts, MAX_NEW_TOKENS, spec, weights, len(texts))
    success = torch.tensor([answers_match(p, t) for p, t in zip(predictions, targets)], dtype=torch.bool)
    return CollectionResult(weights.detach().float().cpu(), success, losses, steps, predictions)


def _collect_chunk(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: NeuronSpec, texts: list[str], targets: list[str],
    names: list[str], config: CollectionConfig,
) -> CollectionResult:
    """Every row from the shared start, then each failed row again from the next seeds' starts (`retries`), then
    with the `fallback` preset; `steps` counts every attempt's steps."""
    device = next(model.parameters()).device
    batch = encode_answers(tokenizer, texts, targets, max_length=context_length(model), names=names).to(device)
    result = _attempt(model, tokenizer, spec, batch, texts, targets, config)
    later = [replace(config, seed=config.seed + k) for k in range(1, config.retries + 1)]
    for attempt in later + ([preset(config.fallback)] if config.fallback is not None else []):
        failed = (~result.success).nonzero()[:, 0]
        if failed.numel() == 0:
            break
        rows = failed.to(device)
        subset = AnswerBatch(*(getattr(batch, f)[rows] for f in AnswerBatch.__dataclass_fields__))
        again = _attempt(model, tokenizer, spec, subset, [texts[i] for i in failed], [targets[i] for i in failed],
                         attempt)
        result.steps[failed] += again.steps
        _keep_successes(result, failed, again)
    return result


def _keep_successes(result: CollectionResult, failed: torch.Tensor, again: CollectionResult) -> None:
    """Rows `failed` of `result` that `again` (trained on those rows alone) collected take its vectors."""
    for name in ("vectors", "success", "loss"):
        getattr(result, name)[failed[again.success]] = getattr(again, name)[again.success]
    for j, i in enumerate(failed.tolist()):
        if again.success[j]:
            result.predictions[i] = again.predictions[j]


def job_key(model: nn.Module, spec: NeuronSpec, config: CollectionConfig, template: PromptTemplate) -> str:
    """What every chunk of a collection job shares: the base model (its fingerprint), the neuron's place, the
    settings and the template. A chunk's cache key adds its own edits (`_ChunkCache.key`)."""
    settings = {k: v for k, v in config.to_dict().items() if k != "batch_tokens"}  # memory only: same vectors
    for name, before in (("retries", 0), ("optimizer", "sgd"), ("fallback", None)):  # before the option: same job
        if settings[name] == before:
            del settings[name]
    if config.fallback is not None:  # the preset by its settings, not its name (a preset's values can change)
        settings["fallback"] = preset(config.fallback).to_dict()
    return files.digest(fingerprint(model), asdict(spec), settings, template.text)


class _ChunkCache:
    """Finished chunks on disk, one safetensors file per chunk, named by a key of the job and the chunk's own
    (prompt, target) rows: a rerun reuses every finished chunk, and so does another job whose chunks hold the same
    edits in the same order (the first 1,024 edits of a data set are the first chunks of its first 2,048)."""

    def __init__(self, directory: Path, job: str):
        self.directory, self.job = directory, job

    def path(self, texts: list[str], targets: list[str]) -> Path:
        return self.directory / files.COLLECTION_CHUNK.format(key=files.digest(self.job, texts, targets))

    def load(self, path: Path) -> CollectionResult | None:
        if not path.exists():
            return None
        t = files.load_tensors(path)
        predictions = json.loads(files.load_metadata(path)["predictions"])
        return CollectionResult(t["vectors"], t["success"], t["loss"], t["steps"], predictions)

    def save(self, path: Path, result: CollectionResult) -> None:
        tensors = {"vectors": result.vectors, "success": result.success, "loss": result.loss, "steps": result.steps}
        files.save_tensors(path, tensors, metadata={"predictions": json.dumps(result.predictions)})


def collect_weights(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: NeuronSpec,
    requests: Sequence[EditRequest],
    config: CollectionConfig = CollectionConfig(),
    template: PromptTemplate = PromptTemplate(),
    work: str | Path | None = None,
    progress: bool = True,
) -> CollectionResult:
    """Collect one neuron vector per edit request (paper stage 3), `config.batch_size` edits at a time.

    With a work directory `work`, each finished chunk is saved in `work/collection/` under a key of the job and its
    edits and reused whenever the same chunk comes again, so an interrupted run resumes where it stopped. The model
    is left unchanged (hooks removed, mode restored). Under `accelerate launch`, chunk i is collected by rank
    i mod K (each rank caches its own chunks) and every rank returns all of them in edit order: the vectors equal a
    one-process run's, since a chunk's rows never interact with other chunks.
    """
    if not requests:
        raise InputError("no edit requests to collect")
    texts = [template.format(r.prompt) for r in requests]
    targets = [r.target for r in requests]
    names = [f"edit {r.case_id if r.case_id is not None else i} ({r.prompt[:40]!r})" for i, r in enumerate(requests)]
    cache = _ChunkCache(Path(work) / files.COLLECTION_DIR, job_key(model, spec, config, template)) if work else None
    group = ranks()
    starts = range(0, len(requests), config.batch_size)
    mine = {i: slice(starts[i], starts[i] + config.batch_size) for i in group.mine(len(starts))}
    bar = tqdm(total=len(requests), desc="collect neurons", unit="edit", disable=not progress or not group.main)
    parts: dict[int, CollectionResult] = {}
    done = succeeded = 0
    with frozen_eval(model):
        for index, rows in mine.items():
            parts[index] = _cached_chunk(cache, model, tokenizer, spec, texts[rows], targets[rows], names[rows], config)
            done, succeeded = done + len(parts[index].success), succeeded + int(parts[index].success.sum())
            bar.update(len(parts[index].predictions) * group.world)  # the other ranks keep the same pace
            bar.set_postfix(success=f"{succeeded / done:.1%}")
    bar.close()
    return CollectionResult.concat(group.gather(parts, len(starts)))


def _cached_chunk(cache: _ChunkCache | None, model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: NeuronSpec,
                  texts: list[str], targets: list[str], names: list[str], config: CollectionConfig) -> CollectionResult:
    """One chunk, from the cache when it was collected before, else collected (and cached)."""
    path = cache.path(texts, targets) if cache else None
    part = cache.load(path) if cache else None
    if part is None:
        part = _collect_chunk(model, tokenizer, spec, texts, targets, names, config)
        if cache:
            cache.save(path, part)
    return part
