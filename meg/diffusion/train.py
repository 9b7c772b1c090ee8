"""Training the weight generator (paper stage 4): AdamW on the v-prediction MSE until the paper's criterion.

Criterion (paper): every `eval_every` steps, generate vectors for a fixed subset of training queries with the
sampler used at inference (DDIM, `sampling_steps`) and compare them with the collected vectors:

    e_i = ||generated_i - collected_i||_2  (original weight space)        stop when mean(e) + std(e) < threshold

It is measured in the original weight space, as the research code does (samples x 0.01 vs the raw vectors):
that is the space the neuron acts in, and it makes runs with "scale" and "standardize" comparable. The paper's
0.5 is an absolute number tuned for 5k-8k-dimensional vectors of 2.7B-8B models; `stop_metric="relative_l2"`
divides each e_i by ||collected_i||_2 for models whose vectors have another norm. Both are logged either way.

"+DA" (paper): with `zero_conds` (embeddings of unrelated queries), each batch also holds (zero_cond, all-zero
vector) pairs, `ZERO_FRACTION` of the batch (the research code adds as many such pairs as edits: 0.5).
The best evaluated weights are kept and returned (the paper keeps its top 3).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from meg import __version__, files
from meg.diffusion.generator import GeneratorConfig, WeightGenerator
from meg.distributed import ranks
from meg.errors import InputError
from meg.training_state import load_training_state, save_training_state

logger = logging.getLogger("meg")

ZERO_FRACTION = 0.5  # +DA: share of (unrelated query, zero vector) pairs in each batch (research code: 0.5)
EVAL_SIZE = 64  # training vectors in the fixed subset the stop criterion is measured on
LOG_EVERY = 50  # loss curve: mean loss over windows of this many steps
# Fine-tuning with a focus (a lifelong add: the new edits): the share of every batch, and of the evaluation subset,
# drawn from the focus rows; the rest replays the other pairs, so the generator learns the new vectors without
# forgetting the old ones (docs/LOG.md, 2026-12-01, lifelong editing).
FOCUS_FRACTION = 0.5


@dataclass
class TrainingLog:
    """What happened in one training run; `to_dict` / `save` give JSON."""

    steps: int = 0
    loss_steps: list[int] = field(default_factory=list)  # last step of each loss window
    losses: list[float] = field(default_factory=list)  # mean loss over each window of LOG_EVERY steps
    evals: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation, see `evaluate`
    best_step: int | None = None
    best_criterion: float | None = None
    wall_seconds: float = 0.0
    stop_reason: str = ""  # "criterion" or "max_steps"
    resumed_from_step: int = 0  # > 0: continued from a training state saved at that step
    config: dict[str, Any] = field(default_factory=dict)
    meg_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingLog:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        files.atomic_write_json(path, self.to_dict())


@dataclass
class _Data:
    """Training pairs on one device: collected vectors (N, D), their conditions (N, C), +DA conditions (M, C)."""

    vectors: torch.Tensor
    conds: torch.Tensor
    zero_conds: torch.Tensor | None
    focus: torch.Tensor | None = None  # (F,) rows (CPU) given FOCUS_FRACTION of every batch, or None: all alike

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(focus rows, the other rows) as CPU index tensors."""
        inside = torch.zeros(self.vectors.shape[0], dtype=torch.bool)
        inside[self.focus] = True
        return inside.nonzero().flatten(), (~inside).nonzero().flatten()


def _check_inputs(vectors: torch.Tensor, conds: torch.Tensor, zero_conds: torch.Tensor | None) -> None:
    if vectors.ndim != 2 or conds.ndim != 2 or vectors.shape[0] != conds.shape[0] or vectors.shape[0] == 0:
        raise InputError(
            f"vectors (N, D) and conds (N, C) must be 2-D with the same N >= 1, got {tuple(vectors.shape)} "
            f"and {tuple(conds.shape)}"
        )
    if zero_conds is not None and (zero_conds.ndim != 2 or zero_conds.shape[1] != conds.shape[1]):
        raise InputError(f"zero_conds must have shape (M, {conds.shape[1]}), got {tuple(zero_conds.shape)}")
    if not (torch.isfinite(vectors).all() and torch.isfinite(conds).all()):
        raise InputError("vectors and conds must be finite (found NaN or inf)")


def _pairs_per_batch(data: _Data, config: GeneratorConfig) -> tuple[int, int]:
    """(collected pairs, +DA zero pairs) in every batch (see `_batches`)."""
    n, f = data.vectors.shape[0], ZERO_FRACTION
    use_zero = data.zero_conds is not None and data.zero_conds.shape[0] > 0 and f > 0
    per_batch = min(n, max(1, round(config.batch_size * (1 - f))) if use_zero else config.batch_size)
    return per_batch, (round(per_batch * f / (1 - f)) if use_zero else 0)


def effective_lr(data: _Data, config: GeneratorConfig) -> float:
    """`config.lr` is meant for full batches; with fewer collected vectors than a batch, every step averages
    fewer pairs and its gradient is noisier, so the rate is scaled by sqrt(actual / full batch). Measured on the
    tests' 8-edit CLI run: unscaled 5e-3 ended at relative L2 ~2 and reproduced 4 of 8 edits; scaled (8.8e-4),
    8 of 8."""
    per_batch, n_zero = _pairs_per_batch(data, config)
    return config.lr * min(1.0, math.sqrt((per_batch + n_zero) / config.batch_size))


def _batches(data: _Data, config: GeneratorConfig, generator: torch.Generator):
    """Endless (x0 (B, D), cond (B, C)) batches: seeded epoch permutations of the collected pairs, plus
    +DA zero pairs drawn with replacement so that they make up ZERO_FRACTION of each batch.

    B = batch_size when there are enough collected vectors; with fewer, every step takes all N of them (and
    the matching number of zero pairs). With a focus, see `_focused_batches`."""
    if data.focus is not None:
        yield from _focused_batches(data, config, generator)
        return
    n, device = data.vectors.shape[0], data.vectors.device
    per_batch, n_zero = _pairs_per_batch(data, config)
    while True:
        order = torch.randperm(n, generator=generator, device="cpu").to(device)  # (N,)
        for start in range(0, n - per_batch + 1, per_batch):  # full batches only: every step has the same size
            yield _pairs(data, order[start : start + per_batch], n_zero, generator)


def _pairs(data: _Data, idx: torch.Tensor, n_zero: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors, conditions) of rows `idx`, plus `n_zero` (zero vector, random unrelated query) pairs (+DA)."""
    x0, cond = data.vectors[idx], data.conds[idx]  # (b, D), (b, C)
    if n_zero:
        zi = torch.randint(0, data.zero_conds.shape[0], (n_zero,), generator=generator).to(idx.device)
        x0 = torch.cat([x0, x0.new_zeros(n_zero, x0.shape[1])])  # (b + z, D)
        cond = torch.cat([cond, data.zero_conds[zi]])  # (b + z, C)
    return x0, cond


def _chunks(rows: torch.Tensor, size: int, generator: torch.Generator):
    """Endless index chunks of `size` from `rows` (CPU), a seeded permutation per pass, full chunks only."""
    while True:
        order = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(rows) - size + 1, size):
            yield order[start : start + size]


def _focused_batches(data: _Data, config: GeneratorConfig, generator: torch.Generator):
    """Like `_batches`, but FOCUS_FRACTION of each batch's collected pairs (or every focus row, if fewer) come
    from the focus rows and the rest from the others, each stream in its own seeded epochs."""
    device = data.vectors.device
    per_batch, n_zero = _pairs_per_batch(data, config)
    focus, rest = data.split()
    n_focus = per_batch if not len(rest) else min(len(focus), max(1, round(per_batch * FOCUS_FRACTION)))
    n_rest = min(len(rest), per_batch - n_focus)
    streams = [_chunks(focus, n_focus, generator)] + ([_chunks(rest, n_rest, generator)] if n_rest else [])
    while True:
        yield _pairs(data, torch.cat([next(s) for s in streams]).to(device), n_zero, generator)


def evaluate(
    model: WeightGenerator,
    vectors: torch.Tensor,
    conds: torch.Tensor,
    steps: int,
    seed: int,
    zero_conds: torch.Tensor | None = None,
) -> dict[str, float]:
    """The paper's criterion on (vectors (n, D), conds (n, C)), sampled with `steps` DDIM steps from seeded noise.

    Returns l2_mean, l2_std, criterion (= l2_mean + l2_std), relative_l2 (mean of ||g - x|| / ||x||),
    relative_criterion (its mean + std) and, for +DA, zero_l2 (mean ||g|| for zero-condition queries).
    """
    gen = torch.Generator(device=vectors.device).manual_seed(seed)
    generated = model.sample(conds, steps=steps, generator=gen)  # (n, D)
    err = (generated - vectors).norm(dim=1)  # (n,)
    rel = err / vectors.norm(dim=1).clamp_min(1e-12)  # (n,)
    out = {
        "l2_mean": err.mean().item(),
        "l2_std": _std(err),
        "relative_l2": rel.mean().item(),
        "relative_std": _std(rel),
    }
    out["criterion"] = out["l2_mean"] + out["l2_std"]
    out["relative_criterion"] = out["relative_l2"] + out["relative_std"]
    if zero_conds is not None and zero_conds.shape[0] > 0:
        out["zero_l2"] = model.sample(zero_conds, steps=steps, generator=gen).norm(dim=1).mean().item()
    return out


def lr_factor(config: GeneratorConfig, step: int) -> float:
    """Learning-rate multiplier after `step` optimiser steps: 1 ("constant"), or a linear warm-up over
    `warmup_steps` then a cosine decay to 0 at `max_steps` ("cosine")."""
    if config.lr_schedule == "constant":
        return 1.0
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _std(x: torch.Tensor) -> float:
    return x.std().item() if x.numel() > 1 else 0.0  # unbiased, as torch's .std() in the research code


def _eval_subset(data: _Data, config: GeneratorConfig) -> _Data:
    """A fixed, seeded subset of EVAL_SIZE training pairs (and of the zero conditions)."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    if data.focus is None:
        idx = torch.randperm(data.vectors.shape[0], generator=gen)[:EVAL_SIZE]
    else:  # FOCUS_FRACTION of the subset from the focus rows, so the stop criterion watches what is being learned
        focus, rest = data.split()
        k = min(len(focus), max(EVAL_SIZE - len(rest), round(EVAL_SIZE * FOCUS_FRACTION)))
        idx = torch.cat([focus[torch.randperm(len(focus), generator=gen)[:k]],
                         rest[torch.randperm(len(rest), generator=gen)[: EVAL_SIZE - k]]])
    idx = idx.to(data.vectors.device)
    zero = None
    if data.zero_conds is not None and data.zero_conds.shape[0] > 0:
        zidx = torch.randperm(data.zero_conds.shape[0], generator=gen)[:EVAL_SIZE]
        zero = data.zero_conds[zidx.to(data.zero_conds.device)]
    return _Data(data.vectors[idx], data.conds[idx], zero)


class _Objective(torch.nn.Module):
    """The generator's training loss as a module's forward, for DistributedDataParallel to wrap: DDP all-reduces the
    gradients of what its forward computed."""

    def __init__(self, generator: WeightGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x0: torch.Tensor, cond: torch.Tensor, rng: torch.Generator, share: tuple[int, int]):
        return self.generator.loss(x0, cond, generator=rng, share=share)


def _distributed(model: WeightGenerator):
    """The model wrapped for training across the launched processes (DDP), or None in one process."""
    group = ranks()
    if not group.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(_Objective(model), device_ids=[device.index] if device.type == "cuda" else None)


class _Trainer:
    """One run: the model, its optimiser, the batch stream and the log. `run()` returns when a stop fires.

    Under `accelerate launch` every rank draws the same batches and noise, computes the loss of its share of the
    rows, and DDP averages the gradients (meg/distributed.py): the weights stay identical on every rank, rank 0
    decides when to stop and alone writes the training state."""

    def __init__(self, data: _Data, config: GeneratorConfig, progress: bool, checkpoint: Path | None,
                 init: WeightGenerator | None = None, autocast: torch.dtype | None = None) -> None:
        self.config, self.data, self.checkpoint, self.autocast = config, data, checkpoint, autocast
        device = data.vectors.device
        self.model = WeightGenerator(config, data.vectors.shape[1], data.conds.shape[1]).to(device)
        if init is None:
            self.model.fit_normalization(data.vectors)
        else:  # fine-tuning: the starting weights keep their normalisation, which the denoiser was trained in
            self.model.load_state_dict(init.state_dict())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=effective_lr(data, config), weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, config))
        # The EMA copy (when on) is what gets evaluated, kept and returned; the raw weights only train.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
                    if config.ema_decay > 0 else None)
        self.group, self.ddp = ranks(), _distributed(self.model)  # DDP broadcasts rank 0's initial weights
        self.rng = torch.Generator(device=device).manual_seed(config.seed)  # noise and timesteps
        self.batches = _batches(data, config, torch.Generator().manual_seed(config.seed + 3))
        self.eval_data = _eval_subset(data, config)
        self.log = TrainingLog(config=config.to_dict())
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start, self.before = 0.0, 0.0  # perf_counter at the start of `run`; seconds of the runs it resumes
        self.bar = tqdm(total=config.max_steps, disable=not progress or not self.group.main, desc="generator",
                        unit="step")

    def step(self) -> float:
        x0, cond = next(self.batches)
        with torch.autocast(x0.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            if self.ddp is None:
                loss = self.model.loss(x0, cond, generator=self.rng)
            else:
                loss = self.ddp(x0, cond, self.rng, (self.group.rank, self.group.world))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return self._batch_loss(loss.detach())

    def _batch_loss(self, loss: torch.Tensor) -> float:
        """The whole batch's loss (with DDP: the mean of the ranks' scaled shares)."""
        if self.ddp is not None:
            torch.distributed.all_reduce(loss)
            loss = loss / self.group.world
        return loss.item()

    @property
    def evaluated(self) -> WeightGenerator:
        """The weights that are evaluated and returned: the EMA copy when on, else the trained ones."""
        return self.model if self.ema is None else self.ema.module

    def evaluate(self, step: int, seconds: float) -> float:
        """Evaluate, log, remember the best weights; returns the stop metric's mean + std."""
        self.model.eval()
        row = evaluate(
            self.evaluated,
            self.eval_data.vectors,
            self.eval_data.conds,
            self.config.sampling_steps,
            self.config.seed + 2,
            self.eval_data.zero_conds,
        )
        self.model.train()
        value = row["criterion"] if self.config.stop_metric == "l2" else row["relative_criterion"]
        self.log.evals.append({"step": step, "seconds": round(seconds, 3), **row})
        if self.log.best_criterion is None or value < self.log.best_criterion:
            self.log.best_step, self.log.best_criterion = step, value
            self.best_state = copy.deepcopy(self.evaluated.state_dict())
        self.bar.set_postfix(crit=f"{value:.4g}", best=f"{self.log.best_criterion:.4g}")
        return value

    def seconds(self) -> float:
        """Training time so far, including the runs this one resumed."""
        return self.before + time.perf_counter() - self.start

    def run(self) -> tuple[WeightGenerator, TrainingLog]:
        cfg = self.config
        self.start = time.perf_counter()
        first, window = self._resume() if self.checkpoint and self.checkpoint.is_file() else (1, [])
        self.model.train()
        for step in range(first, cfg.max_steps + 1):
            window.append(self.step())
            self.bar.update(1)
            if len(window) == LOG_EVERY or step == cfg.max_steps:
                self.log.loss_steps.append(step)
                self.log.losses.append(sum(window) / len(window))
                self.bar.set_postfix(loss=f"{self.log.losses[-1]:.4g}")
                window = []
            reason = self._stop_reason(step, self.seconds())
            if reason:
                break
            if self.checkpoint and step % cfg.eval_every == 0 and self.group.main:
                self._save(step, window)
        self.bar.close()
        return self._finish(step, reason)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"ema": self.ema} if self.ema is not None else {})}

    def _save(self, step: int, window: list[float]) -> None:
        """Everything `run` needs to continue after `step` (called after each evaluation)."""
        meta = {"step": step, "window": window, "seconds": self.seconds(), "log": self.log.to_dict(),
                "scheduler": self.scheduler.state_dict()}
        # the best weights so far are the only extra tensors; the generator draws only from its own generators
        save_training_state(self.checkpoint, self._modules(), self.optimizer, {"noise": self.rng}, meta,
                            self.best_state, global_rng=False)

    def _resume(self) -> tuple[int, list[float]]:
        """Load the saved state; returns (the next step, the unfinished loss window)."""
        meta, extra = load_training_state(self.checkpoint, self._modules(), self.optimizer, {"noise": self.rng})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.log = TrainingLog.from_dict({**meta["log"], "resumed_from_step": meta["step"]})
        self.best_state = extra or None
        self.before = float(meta["seconds"])
        for _ in range(meta["step"]):
            next(self.batches)  # the batch stream is a seeded function of the step: replay it (cheap indexing)
        self.bar.update(meta["step"])
        return meta["step"] + 1, list(meta["window"])

    def _stop_reason(self, step: int, seconds: float) -> str:
        cfg = self.config
        at_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
        if at_eval:  # every rank evaluates its (identical) weights; rank 0's verdict holds for all
            reached = self.group.broadcast(self.evaluate(step, seconds) < cfg.stop_threshold)
            if reached:
                return "criterion"
        return "max_steps" if step == cfg.max_steps else ""

    def _finish(self, step: int, reason: str) -> tuple[WeightGenerator, TrainingLog]:
        if not self.log.evals or self.log.evals[-1]["step"] != step:
            self.evaluate(step, self.seconds())
        model = self.evaluated
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model.eval()
        self.log.steps, self.log.stop_reason = step, reason
        self.log.wall_seconds = round(self.seconds(), 3)
        return model, self.log


def train_generator(
    vectors: torch.Tensor,
    conds: torch.Tensor,
    config: GeneratorConfig | None = None,
    zero_conds: torch.Tensor | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    init: WeightGenerator | None = None,
    focus: torch.Tensor | None = None,
    autocast: torch.dtype | None = None,
) -> tuple[WeightGenerator, TrainingLog]:
    """Train a generator that maps conds (N, C) to the collected vectors (N, D) (original weight space).

    Runs on the device of `vectors`. zero_conds (M, C): "+DA" conditions paired with the all-zero vector.
    Stops when the criterion falls under `config.stop_threshold`, or at `max_steps`; the returned model holds
    the best evaluated weights. Deterministic given `config.seed` (on one device and thread count). With
    `checkpoint` (a path keyed by the inputs), the training state is saved there after every evaluation and a
    state found there is continued, ending as an uninterrupted run would. With `init` (a generator of the same
    architecture and sizes), training starts from its weights and normalisation instead of a fresh network: a
    lifelong update fine-tunes the pack's generator (`meg.editor.MegEditor.add`) with `config`'s schedule.
    `focus` (row indices, e.g. the new edits' pairs): FOCUS_FRACTION of every batch and of the evaluation subset
    come from these rows, the rest replays the others. `autocast` (e.g. torch.bfloat16): the forward and loss run
    in that precision under torch.autocast (weights, optimiser state, evaluation and the result stay float32).
    """
    config = config or GeneratorConfig()
    _check_inputs(vectors, conds, zero_conds)
    if init is not None and (init.dim, init.cond_dim) != (vectors.shape[1], conds.shape[1]):
        raise InputError(f"init generator maps {init.cond_dim}-d conditions to {init.dim}-d vectors, but the data "
                         f"has {conds.shape[1]}-d conditions and {vectors.shape[1]}-d vectors")
    device = vectors.device
    data = _Data(
        vectors.detach().float(),
        conds.detach().to(device, torch.float32),
        None if zero_conds is None else zero_conds.detach().to(device, torch.float32),
        None if focus is None else _focus_rows(focus, vectors.shape[0]),
    )
    return _Trainer(data, config, progress, Path(checkpoint) if checkpoint else None, init, autocast).run()


def _focus_rows(focus: torch.Tensor, n: int) -> torch.Tensor:
    rows = torch.as_tensor(focus, dtype=torch.long).flatten().cpu().unique()
    if len(rows) == 0 or rows.min() < 0 or rows.max() >= n:
        raise InputError(f"focus must name between 1 and {n} training rows in 0..{n - 1}, got {len(rows)} rows "
                         f"in {rows.min().item() if len(rows) else '-'}..{rows.max().item() if len(rows) else '-'}")
    return rows


# A generator "holds" its vectors when its last evaluation is within this factor of the stop threshold. Measured
# on the reference model (docs/LOG.md, 2026-12-01): relative L2 0.08-0.29 gave Rel-AG 99-100 (256-1,024
# vectors), 0.78 gave 84.7 (an under-trained 1,024) and 1.10 gave 16.5 (10,000 vectors on the tiny preset).
HOLDS_FACTOR = 2.0


def criterion_reached(log: dict[str, Any], config: GeneratorConfig) -> float | None:
    """The stop criterion at the last evaluation of a training log (None when it was never evaluated)."""
    evals = log.get("evals") or []
    key = "relative_criterion" if config.stop_metric == "relative_l2" else "criterion"
    return evals[-1][key] if evals else None


def holds(log: dict[str, Any], config: GeneratorConfig) -> bool:
    """Whether the trained generator reproduces its vectors (see HOLDS_FACTOR); True when nothing was measured."""
    reached = criterion_reached(log, config)
    return log.get("stop_reason") != "max_steps" or reached is None or config.stop_threshold <= 0 or \
        reached <= HOLDS_FACTOR * config.stop_threshold


def trained_generator(config: GeneratorConfig, vectors: torch.Tensor, conds: torch.Tensor,
                      zero_conds: torch.Tensor | None, work: Path | None, progress: bool = True,
                      init: WeightGenerator | None = None, focus: torch.Tensor | None = None,
                      autocast: torch.dtype | None = None) -> tuple[WeightGenerator, dict]:
    """A generator trained on (conds -> vectors) (paper stage 4), or the one stored in the work directory `work`
    under a key of its inputs; an interrupted training continues from its state saved there at the last
    evaluation. Trains on the device of `vectors`; `init` / `focus`: fine-tune, `autocast`: lower precision (see
    `train_generator`)."""
    # Fresh trainings keep the keys they had before fine-tuning existed: the extra parts are only added for it.
    extra = [*(init.state_dict().values() if init is not None else []),
             *([torch.as_tensor(focus)] if focus is not None else []), *([str(autocast)] if autocast else [])]
    key = files.digest(config.to_dict(), vectors, conds, zero_conds if zero_conds is not None else 0, *extra)
    cached = work / files.TRAINED_GENERATOR.format(key=key) if work else None
    if cached and (cached / files.PACK_GENERATOR).is_file():
        saved = files.read_json(cached / files.GENERATOR_LOG) if (cached / files.GENERATOR_LOG).is_file() else {}
        return WeightGenerator.load(cached, device=vectors.device), {**saved, "resumed_from": cached.name}
    checkpoint = work / files.GENERATOR_TRAINING.format(key=key) if work else None
    generator, log = train_generator(vectors, conds, config, zero_conds=zero_conds, progress=progress,
                                     checkpoint=checkpoint, init=init, focus=focus, autocast=autocast)
    if cached and ranks().main:
        generator.save(cached)
        log.save(cached / files.GENERATOR_LOG)  # so a reuse knows whether the generator holds its vectors
        checkpoint.unlink(missing_ok=True)  # the finished generator replaces its (several times larger) state
    return generator, log.to_dict()
