"""Training the reference model: a GPT-2-architecture LM (~7M parameters) that memorises the true facts.

Memorisation is the point: edits must change answers the model knows. So dropout is off, every line is seen
once per epoch, and the loss covers every real token of `line + EOS` (pads are -100). Lines are bucketed by
token length (sorted, then cut into batches of about `batch_tokens` tokens) so almost no compute goes to padding;
the batch order is reshuffled every epoch with a seeded generator.

Long runs resume (`train_reference_model(..., work_dir=...)`): every `checkpoint_minutes` and after every epoch
the loop saves the weights, AdamW's moments, the schedule's step, the batch-order generator as it was when the
epoch's order was drawn, and the position in the epoch (meg.training_state: safetensors + JSON, no pickle). A
rerun of the same command loads that state and continues with exactly the steps the first run would have taken.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from meg.errors import InputError
from meg.files import digest
from meg.refmodel.card import evaluate, monitor_callback, save_reference_model
from meg.refmodel.corpus import EvalFacts, build_corpus, evaluation_facts
from meg.refmodel.corpus2 import Corpus2Config, build_corpus2
from meg.refmodel.tokenizer import encode_lines, train_bpe
from meg.training_state import load_training_state, save_training_state, training_meta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceTrainConfig:
    """Shape and optimisation of the reference model. Defaults are the shipped recipe (see the model card)."""

    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_positions: int = 128  # lines longer than this are left out (one line of the shared corpus)
    vocab_size: int = 8192  # BPE target size (the model uses the tokenizer's actual size)
    # Measured here (2 threads, OMP_WAIT_POLICY=PASSIVE): ~2,400-2,800 tokens/s on an idle machine, ~1,400 with
    # one other job on the 2 cores; the shipped run averaged 1,061 with 1-3 other jobs (61.8 min for 4 epochs of
    # ~0.98M tokens). More epochs learn more facts (accuracy still rose every epoch) but only fit an idle machine.
    epochs: int = 4
    batch_tokens: int = 2048  # tokens per batch, padding included; small batches = more updates per epoch
    lr: float = 2e-3  # AdamW peak rate, after `warmup_steps` of linear warm-up, then cosine to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01  # on matrices only; small, since forgetting facts is what decay does
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    max_lines: int | None = None  # a subset (the first lines of the corpus), for smoke tests
    eval_per_category: int = 1000  # facts per category scored by greedy decoding after training
    monitor_facts: int = 200  # CounterFact prompts scored after every epoch, for the log
    corpus2: Corpus2Config | None = None  # None: corpus.py (one line per fact); else corpus2.py (reference-2)
    checkpoint_minutes: float = 10.0  # with a work directory: save the training state this often

    def __post_init__(self) -> None:
        if isinstance(self.corpus2, dict):  # from JSON
            object.__setattr__(self, "corpus2", Corpus2Config(**self.corpus2))
        if not self.checkpoint_minutes > 0:
            raise InputError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("epochs", "batch_tokens", "threads", "n_positions"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_tokens < self.n_positions:
            raise InputError(f"batch_tokens ({self.batch_tokens}) must be >= n_positions ({self.n_positions})")

    @classmethod
    def quick(cls) -> ReferenceTrainConfig:
        """A seconds-long smoke run: a tiny model on 400 lines for one epoch."""
        return cls(n_embd=64, n_layer=2, n_head=2, vocab_size=1024, epochs=1, batch_tokens=1024, warmup_steps=2,
                   max_lines=400, eval_per_category=8, monitor_facts=0)  # fmt: skip

    def to_json(self) -> dict:
        return asdict(self)


def build_model(config: ReferenceTrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 (seeded by the caller) with dropout off and `<|endoftext|>` ids."""
    eos = tokenizer.eos_token_id
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip
    return GPT2LMHeadModel(gpt2)


def length_batches(lengths: list[int], batch_tokens: int, generator: torch.Generator) -> list[list[int]]:
    """Indices grouped into batches of similar length, each at most `batch_tokens` tokens padded; shuffled.

    A random permutation first, then a stable sort by length: equal-length lines mix differently every epoch.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # lengths only grow along `order`, so line i's length is the padded width of the batch it joins
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[b] for b in shuffled]


def collate(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `labels`, both (B, T); labels are -100 on pads.

    No attention mask, on purpose: with right padding and causal attention a real token only ever attends to
    earlier, real tokens, so pads cannot change the loss; an explicit mask would also push SDPA off its fast
    causal kernel (measured here: about 3x slower training).
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(ids)] = input_ids[row, : len(ids)]
    return {"input_ids": input_ids, "labels": labels}


def _optimizer(model: torch.nn.Module, config: ReferenceTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, LayerNorms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, total: int, config: ReferenceTrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at `total` steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(model, optimizer, scheduler, batch: dict[str, torch.Tensor], config: ReferenceTrainConfig) -> tuple[float, int]:
    """One optimisation step -> (summed token loss, number of predicted tokens)."""
    loss = model(**batch).loss  # mean over the (labels != -100) tokens after the shift
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    n = int((batch["labels"][:, 1:] != -100).sum())
    return float(loss.detach()) * n, n


@dataclass(frozen=True)
class Checkpointing:
    """Where `train_loop` keeps its state, and how often it saves it."""

    path: Path  # one safetensors file (meg.training_state layout)
    every_seconds: float = 600.0
    stop_after_steps: int | None = None  # save and return after this many steps in all (what a kill leaves)


def _saved_modules(model: GPT2LMHeadModel) -> dict[str, torch.nn.Module]:
    """The modules whose tensors make up the model: GPT-2's output layer shares the token embedding's weight,
    and safetensors refuses tensors that share memory, so the output layer is saved only when it is untied."""
    modules: dict[str, torch.nn.Module] = {"transformer": model.transformer}
    if model.lm_head.weight is not model.transformer.wte.weight:
        modules["lm_head"] = model.lm_head
    return modules


@dataclass
class _Progress:
    """Where the loop stands: the JSON half of a checkpoint."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # batches of it already done
    step: int = 0  # optimisation steps in all (the schedule's position)
    loss_sum: float = 0.0  # of the epoch in progress
    tokens: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss of each finished epoch
    finished: bool = False
    seconds: float = 0.0  # training time up to the last save, over every sitting


def train_loop(
    model: GPT2LMHeadModel,
    sequences: list[list[int]],
    config: ReferenceTrainConfig,
    pad_id: int,
    on_epoch=None,
    max_steps: int | None = None,
    checkpoint: Checkpointing | None = None,
) -> list[float] | None:
    """Train in place for `config.epochs` epochs; -> mean token loss of each epoch.

    `on_epoch(epoch, loss)` is called after each epoch (for monitoring); `max_steps` stops early (throughput
    measurement). The schedule always spans the full run, so a measured step costs what a real one does.
    With `checkpoint`, the state is loaded from its path when there is one (a finished run returns its losses
    at once) and saved there every `every_seconds` and after every epoch; `stop_after_steps` saves and returns
    None, as if the process had been killed right after that save.
    """
    generator = torch.Generator().manual_seed(config.seed)
    lengths = [len(s) for s in sequences]
    steps_per_epoch = len(length_batches(lengths, config.batch_tokens, torch.Generator().manual_seed(0)))
    total = steps_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))
    progress = _Progress()
    if checkpoint is not None and checkpoint.path.is_file():
        meta, _ = load_training_state(checkpoint.path, _saved_modules(model), optimizer, {"batch_order": generator})
        progress = _Progress(**meta["progress"])
        scheduler.last_epoch = progress.step  # the learning rate itself came back with the optimizer's groups
        log.info("resumed from %s: epoch %d, batch %d, step %d", checkpoint.path, progress.epoch + 1,
                 progress.batch, progress.step)  # fmt: skip
    if progress.finished:
        return progress.losses
    model.train()
    saved_at = time.monotonic()  # (wall clock at the last save: checkpoints are due by time, not by step)
    for epoch in range(progress.epoch, config.epochs):
        epoch_start = torch.Generator().set_state(generator.get_state())  # what a checkpoint stores
        batches = length_batches(lengths, config.batch_tokens, generator)
        for index in tqdm(range(progress.batch, len(batches)), desc=f"epoch {epoch + 1}/{config.epochs}",
                          mininterval=10, leave=False):  # fmt: skip
            rows = batches[index]
            loss, n = _step(model, optimizer, scheduler, collate([sequences[i] for i in rows], pad_id), config)
            progress.loss_sum, progress.tokens, progress.step = progress.loss_sum + loss, progress.tokens + n, progress.step + 1
            progress.batch = index + 1
            if max_steps is not None and progress.step >= max_steps:
                return [progress.loss_sum / progress.tokens]
            stop = checkpoint is not None and checkpoint.stop_after_steps == progress.step
            if checkpoint is not None and (stop or time.monotonic() - saved_at >= checkpoint.every_seconds):
                saved_at = _save(checkpoint, model, optimizer, epoch_start, progress, saved_at)
            if stop:
                return None
        progress.losses.append(progress.loss_sum / progress.tokens)
        progress.epoch, progress.batch, progress.loss_sum, progress.tokens = epoch + 1, 0, 0.0, 0
        progress.finished = progress.epoch == config.epochs
        log.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, progress.losses[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, progress.losses[-1])
            model.train()
        if checkpoint is not None:  # the generator now stands where the next epoch draws its order
            saved_at = _save(checkpoint, model, optimizer, generator, progress, saved_at)
    return progress.losses


def _save(checkpoint: Checkpointing, model, optimizer, order: torch.Generator, progress: _Progress,
          since: float) -> float:  # fmt: skip
    """Write the state (adding the time since `since` to the training time); -> the time of this save."""
    now = time.monotonic()
    progress.seconds += now - since
    save_training_state(checkpoint.path, _saved_modules(model), optimizer, {"batch_order": order},
                        {"progress": asdict(progress)}, global_rng=False)  # fmt: skip
    log.info("saved training state after step %d (%d epochs and %d batches done)", progress.step, progress.epoch,
             progress.batch)  # fmt: skip
    return now


@dataclass
class Prepared:
    """The tokenizer and the tokenised corpus of one run."""

    tokenizer: PreTrainedTokenizerFast
    lines: list[str]
    sequences: list[list[int]]  # line tokens + EOS, only lines that fit n_positions
    dropped: int  # lines longer than n_positions
    corpus_stats: dict = field(default_factory=dict)  # what corpus2 reports (facts, relations, ...)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def prepare(config: ReferenceTrainConfig, data_dir: str | Path | None = None, lines: list[str] | None = None,
            tokenizer_lines: list[str] | None = None) -> Prepared:  # fmt: skip
    """Build the corpus (from `data_dir`: corpus.py, or corpus2.py when `config.corpus2` is set; or the given
    `lines`), train the tokenizer (on `tokenizer_lines` when given: corpora compared with one tokenizer), tokenise."""
    stats = {}
    if lines is None:
        if data_dir is None:
            raise InputError("prepare needs data_dir or lines")
        if config.corpus2 is None:
            lines = build_corpus(data_dir)
        else:
            corpus = build_corpus2(data_dir, config.corpus2)
            lines, stats = corpus.lines, corpus.stats()
    lines = lines[: config.max_lines] if config.max_lines else lines
    tokenizer = train_bpe(lines if tokenizer_lines is None else tokenizer_lines, config.vocab_size, config.n_positions)
    encoded = encode_lines(tokenizer, lines)
    fitting = [(line, ids) for line, ids in zip(lines, encoded) if len(ids) <= config.n_positions]
    return Prepared(tokenizer, [l for l, _ in fitting], [ids for _, ids in fitting], len(lines) - len(fitting), stats)


def measure_throughput(config: ReferenceTrainConfig, prepared: Prepared, steps: int = 100) -> float:
    """Training tokens per second (padding included) over `steps` steps after 5 warm-up steps."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    model = build_model(config, prepared.tokenizer)
    pad = prepared.tokenizer.pad_token_id
    train_loop(model, prepared.sequences, config, pad, max_steps=5)
    generator = torch.Generator().manual_seed(config.seed + 1)
    batches = length_batches([len(s) for s in prepared.sequences], config.batch_tokens, generator)[:steps]
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens, start = 0, time.perf_counter()
    for rows in batches:
        batch = collate([prepared.sequences[i] for i in rows], pad)
        _step(model, optimizer, scheduler, batch, config)
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def train_reference_model(
    config: ReferenceTrainConfig,
    data_dir: str | Path | None,
    out_dir: str | Path,
    lines: list[str] | None = None,
    eval_facts: EvalFacts | None = None,
    work_dir: str | Path | None = None,
    tokenizer_lines: list[str] | None = None,
    recipe: str | None = None,
) -> dict:
    """The whole recipe: corpus -> tokenizer -> training -> greedy evaluation -> checkpoint + model card.

    `out_dir` is written atomically (built in a temporary sibling, then renamed). Returns the training summary
    (also saved as training_summary.json). `lines` / `eval_facts` replace what is built from `data_dir` (tests).
    With `work_dir`, training saves its state there (`training_checkpoint`) and a rerun continues from it.
    `tokenizer_lines`: train the tokenizer on these instead of the corpus (a pilot comparing corpora).
    `recipe`: the recipe's name (RECIPES), recorded in the summary and the model card.
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    if eval_facts is None:
        if data_dir is None:
            raise InputError("train_reference_model needs data_dir or eval_facts")
        eval_facts = evaluation_facts(data_dir, config.eval_per_category, config.seed)
    prepared = prepare(config, data_dir, lines, tokenizer_lines)
    log.info("corpus: %d lines (%d too long, left out), %d tokens/epoch, vocab %d",
             len(prepared.lines), prepared.dropped, prepared.tokens, len(prepared.tokenizer))  # fmt: skip
    model = build_model(config, prepared.tokenizer)
    monitor = monitor_callback(model, prepared.tokenizer, eval_facts, config.monitor_facts)
    checkpoint = None if work_dir is None else training_checkpoint(config, prepared, work_dir)
    losses = train_loop(model, prepared.sequences, config, prepared.tokenizer.pad_token_id, monitor, checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    if checkpoint is not None:  # training time over every sitting
        train_seconds = training_meta(checkpoint.path)["progress"]["seconds"]
    model.to(torch.float16).to(torch.float32)  # score the weights exactly as shipped (float16)
    accuracy = evaluate(model, prepared.tokenizer, eval_facts)
    summary = {
        **({"recipe": recipe} if recipe else {}),
        "config": config.to_json(),
        "corpus": {**prepared.corpus_stats, "lines": len(prepared.lines), "dropped_too_long": prepared.dropped,
                   "tokens_per_epoch": prepared.tokens},
        "vocab_size": len(prepared.tokenizer),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "epoch_losses": losses,
        "final_loss": losses[-1],
        "train_seconds": round(train_seconds, 1),
        # corpus tokens per second over the whole training phase (tokenizer, epochs, per-epoch monitoring)
        "tokens_per_second": round(config.epochs * prepared.tokens / train_seconds),
        "greedy_accuracy": accuracy,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    save_reference_model(model, prepared.tokenizer, summary, out_dir)
    log.info("summary: %s", json.dumps({k: summary[k] for k in ("final_loss", "greedy_accuracy", "wall_seconds")}))
    return summary


# Fields that do not change what training computes: a run may resume with other values.
_NOT_TRAINING = ("threads", "eval_per_category", "monitor_facts", "checkpoint_minutes")


def training_checkpoint(config: ReferenceTrainConfig, prepared: Prepared, work_dir: str | Path) -> Checkpointing:
    """The state file of this run in `work_dir`, named by a hash of the training settings and the token ids, so
    a changed config or corpus starts afresh instead of continuing another run's state. (The thread count is not
    in the hash: a resumed run may use other threads, at the cost of float rounding.)"""
    settings = {k: v for k, v in config.to_json().items() if k not in _NOT_TRAINING}
    ids = torch.tensor([i for s in prepared.sequences for i in s], dtype=torch.int32)
    key = digest(settings, ids, [len(s) for s in prepared.sequences])
    path = Path(work_dir) / f"reference-training-{key}.safetensors"
    return Checkpointing(path, every_seconds=60 * config.checkpoint_minutes)


RECIPES: dict[str, ReferenceTrainConfig] = {
    # the shipped meg/assets/reference-model (see its card)
    "reference": ReferenceTrainConfig(),
    # reference-2 (docs/LOG.md, 2026-12-01): a deeper model on corpus2 (each fact in several wordings and contexts),
    # sized for about five hours on ONE CPU thread; resumable (scripts/train_reference_model.py --recipe reference-2)
    "reference-2": ReferenceTrainConfig(n_layer=10, threads=1, epochs=3,
                                        corpus2=Corpus2Config(context_weights=(2, 2, 1), fact_context=0.8)),
}


def with_epochs(config: ReferenceTrainConfig, epochs: int | None) -> ReferenceTrainConfig:
    """`config` with another number of epochs (None keeps it)."""
    return config if epochs is None else replace(config, epochs=epochs)


__all__ = [
    "RECIPES",
    "Checkpointing",
    "Prepared",
    "ReferenceTrainConfig",
    "build_model",
    "collate",
    "length_batches",
    "lr_factor",
    "measure_throughput",
    "prepare",
    "train_loop",
    "train_reference_model",
    "training_checkpoint",
    "with_epochs",
]
