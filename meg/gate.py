"""The familiarity network (paper stage 2): does a query touch edited knowledge at all?

Paper (Sec. "Familiarity network", research code my_model_five_bert_text.py / train_familiar.py): on the frozen
tuned query embedding, 5 residual blocks `x + Dropout(0.1)(Linear(d, 4d) -> GELU -> Linear(4d, d))`, then
Linear(d, 10). Every edit query gets a random label in 0..9 and the network is trained with cross-entropy
(AdamW 1e-3, 1000-4000 full-batch epochs) until it memorises them. At inference the entropy H of its softmax is
low for edit queries, a bit higher for their paraphrases and high for unrelated queries: H < epsilon -> generate
the neuron's weights, otherwise the zero neuron (an exact no-op).

The paper hand-tunes epsilon per model and dataset on the test data (0.1 to 0.7; the maximum is ln 10 = 2.30).
Here the default calibrates it on unrelated queries that are not test data (`calibrate_epsilon`): the largest
epsilon that lets at most `target_unrelated_rate` of them through. A fixed epsilon stays available. The pack
stores the `Calibration` next to the gate so the value and how it was chosen are on record.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from meg import files
from meg.errors import InputError
from meg.settings import Rules, Settings, setting
from meg.training_state import (
    load_training_state,
    save_training_state,
    seeded,
    training_meta,
)

# The paper's network shape around the residual blocks (research code my_model_five_bert_text.py).
HIDDEN_MULT = 4  # each block's hidden width, in multiples of the embedding width
DROPOUT = 0.1
LABELS = 10  # random classes; the maximum entropy is ln 10 = 2.30 nats
# The paper's fixed thresholds as named settings (nats): 0.1 in the paper's text, 0.3 / 0.6 / 0.7 in the research
# code's run scripts, each hand-tuned per model and data set on the test data. Use: GateConfig(epsilon=...[name]).
PAPER_EPSILONS: dict[str, float] = {"paper": 0.1, "code-0.3": 0.3, "code-0.6": 0.6, "code-0.7": 0.7}


@dataclass(frozen=True)
class GateConfig(Settings):
    """The familiarity network, its training and its epsilon; saved in the edit pack."""

    blocks: int = setting(5, "residual blocks (paper 5; 0 = a linear probe)")
    lr: float = setting(1e-3, "AdamW learning rate (paper 1e-3)")
    max_epochs: int = setting(2000, "upper bound on training epochs (paper trains 1,000-4,000)")
    stop_loss: float = setting(0.005, "stop once an epoch's training loss is below this (the labels are memorised)")
    # The paper gives no batch size. Full-batch AdamW needs thousands of epochs to memorise 10 random labels;
    # batches of 64 got 1,024 edits to loss 0.005 in 250 epochs (3.3 min on 2 CPU threads).
    batch_size: int | None = setting(64, "edits per step; null = full batch")
    epsilon: float | None = setting(None, "fixed entropy threshold in nats (paper 0.1-0.7); null = calibrate it")
    target_unrelated_rate: float = setting(0.02, "with calibration: share of unrelated queries let through")
    seed: int = setting(0, "random labels, initial weights and dropout")

    def rules(self) -> Rules:
        return {"blocks": (self.blocks >= 0, ">= 0"), "lr": (self.lr > 0, "> 0"),
                "max_epochs": (self.max_epochs >= 1, ">= 1"), "stop_loss": (self.stop_loss >= 0, ">= 0"),
                "batch_size": (self.batch_size is None or self.batch_size >= 1, ">= 1 or null"),
                "epsilon": (self.epsilon is None or self.epsilon > 0, "> 0 or null"),
                "target_unrelated_rate": (0 < self.target_unrelated_rate < 1, "in (0, 1)"),
                "seed": (self.seed >= 0, ">= 0")}


class _Block(nn.Module):
    """x + Dropout(Linear(d, m*d) -> GELU -> Linear(m*d, d)), the paper's residual FFN block."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class FamiliarityGate(nn.Module):
    """Query embedding (N, d) -> logits over `labels` random classes; low output entropy = familiar."""

    def __init__(self, dim: int, config: GateConfig | None = None) -> None:
        super().__init__()
        config = config or GateConfig()
        self.dim, self.config = dim, config
        self.blocks = nn.Sequential(*(_Block(dim, HIDDEN_MULT, DROPOUT) for _ in range(config.blocks)))
        self.head = nn.Linear(dim, LABELS)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(emb))  # (N, labels)

    @torch.no_grad()
    def entropy(self, emb: torch.Tensor) -> torch.Tensor:
        """Entropy of the softmax in nats, (N,), in eval mode (dropout off); 0 = certain, ln(labels) = uniform."""
        was_training = self.training
        self.eval()
        try:
            logp = F.log_softmax(self(emb.to(self.head.weight)).float(), dim=-1)  # exact, no clamping of p
            return -(logp.exp() * logp).sum(dim=-1)
        finally:
            self.train(was_training)

    def route(self, emb: torch.Tensor, epsilon: float) -> torch.Tensor:
        """(N,) bool: True = familiar (generate weights), False = zero neuron. Strict H < epsilon."""
        return self.entropy(emb) < epsilon


@dataclass
class GateLog:
    """What `train_gate` did."""

    edits: int
    epochs: int = 0
    final_loss: float = float("nan")
    train_accuracy: float = float("nan")
    stopped_early: bool = False
    seconds: float = 0.0  # including the time of the runs it resumed
    resumed_from_epoch: int = 0
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateLog:
        return cls(**data)


def random_labels(n: int, config: GateConfig) -> torch.Tensor:
    """The paper's random label per edit query, (n,) in 0..labels-1, reproducible from the seed."""
    return torch.randint(LABELS, (n,), generator=torch.Generator().manual_seed(config.seed))


def _shared_by_duplicates(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identical embeddings (a prompt edited twice) get the label of their first occurrence: two labels for one
    input cannot both be memorised, and the loss would never reach `stop_loss`. Unchanged without duplicates."""
    _, inverse = torch.unique(x.cpu(), dim=0, return_inverse=True)  # (N,)
    first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(x)), reduce="amin")
    return labels[first[inverse]]


def train_gate(
    edit_embeddings: torch.Tensor, config: GateConfig | None = None, progress: bool = True,
    checkpoint: str | Path | None = None, save_every: int = 20,
) -> tuple[FamiliarityGate, GateLog]:
    """Train a gate to memorise random labels of the edit queries' embeddings (N, d); returns it in eval mode.

    With `checkpoint`, the training state is saved there every `save_every` epochs and when training ends, and a
    state found there is continued: an interrupted run resumes, a finished one is loaded, and a run capped at
    fewer epochs is extended, each giving the gate an uninterrupted run would. The caller keys the path by the
    embeddings and `training_settings`; a stored state with more epochs than `max_epochs` is left alone and not used."""
    config = config or GateConfig()
    if edit_embeddings.ndim != 2 or len(edit_embeddings) == 0:
        shape = tuple(edit_embeddings.shape)
        raise InputError(f"train_gate: expected edit embeddings of shape (N, d) with N >= 1, got {shape}")
    x = edit_embeddings.detach().float()
    labels = _shared_by_duplicates(x, random_labels(len(x), config)).to(x.device)
    log = GateLog(edits=len(x))
    start, before = time.perf_counter(), 0.0  # `before`: seconds of the runs a resumed state came from

    def seconds() -> float:
        return before + time.perf_counter() - start

    with seeded(config.seed, x.device):
        gate = FamiliarityGate(x.shape[1], config).to(x.device)
        optimizer = torch.optim.AdamW(gate.parameters(), lr=config.lr)
        rngs = {"batches": torch.Generator().manual_seed(config.seed + 1)}
        path = Path(checkpoint) if checkpoint else None
        if path and path.is_file():
            path, before = _resume(path, gate, optimizer, rngs, config, log)
        stopped = bool(log.losses) and log.losses[-1] < config.stop_loss  # a finished state was loaded
        bar = tqdm(range(len(log.losses), len(log.losses) if stopped else config.max_epochs), desc="train gate",
                   unit="epoch", disable=not progress, initial=len(log.losses), total=config.max_epochs)
        for epoch in bar:
            loss = _epoch(gate, optimizer, x, labels, config.batch_size, rngs["batches"])
            log.losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            stopped = loss < config.stop_loss
            if path and (stopped or (epoch + 1) % save_every == 0 or epoch + 1 == config.max_epochs):
                save_training_state(path, {"gate": gate}, optimizer, rngs, {"losses": log.losses, "seconds": seconds()})
            if stopped:
                break
    gate.eval()
    log.stopped_early = stopped
    log.epochs, log.final_loss, log.seconds = len(log.losses), log.losses[-1], seconds()
    with torch.no_grad():
        log.train_accuracy = (gate(x).argmax(dim=-1) == labels).float().mean().item()
    return gate, log


def trained_gate(config: GateConfig, edit_embeddings: torch.Tensor, work: Path | None,
                 progress: bool = True) -> tuple[FamiliarityGate, GateLog]:
    """The familiarity gate (paper stage 2) trained on `edit_embeddings`; with a work directory `work`, its
    training state is kept there under a key of the embeddings and `training_settings`, so an interrupted run
    resumes and a longer `max_epochs` continues a shorter run (at 10,000 edits the gate trains for hours on a CPU)."""
    key = files.digest(training_settings(config), edit_embeddings.detach().float())
    checkpoint = work / files.GATE_TRAINING.format(key=key) if work else None
    return train_gate(edit_embeddings, config, progress=progress, checkpoint=checkpoint)


def training_settings(config: GateConfig) -> dict[str, Any]:
    """The settings a gate's training depends on, for keying its checkpoint (with the embeddings): all but
    `max_epochs` (a longer run continues a shorter one) and the epsilon settings (used after training)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("max_epochs", "epsilon", "target_unrelated_rate")}


def _resume(path: Path, gate: FamiliarityGate, optimizer, rngs: dict, config: GateConfig,
            log: GateLog) -> tuple[Path | None, float]:
    """Load a stored training state into gate/optimizer/rngs/log; (checkpoint path to keep using, seconds spent)."""
    if len(training_meta(path)["losses"]) > config.max_epochs:
        return None, 0.0  # trained further than asked: not this run's state, and not ours to overwrite
    meta, _ = load_training_state(path, {"gate": gate}, optimizer, rngs)
    log.losses, log.resumed_from_epoch = list(meta["losses"]), len(meta["losses"])
    return path, float(meta["seconds"])


def _epoch(gate: FamiliarityGate, optimizer, x: torch.Tensor, labels: torch.Tensor, batch_size, generator) -> float:
    """One pass over the edits (full batch when batch_size is None); mean training loss, dropout on."""
    gate.train()
    order = torch.randperm(len(x), generator=generator).to(x.device) if batch_size else torch.arange(len(x))
    total = 0.0
    for idx in order.split(batch_size or len(x)):
        loss = F.cross_entropy(gate(x[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


@dataclass
class Calibration:
    """How epsilon was chosen; stored in the pack next to the gate.

    method "calibrated": from `queries` unrelated queries at `target_rate`; `achieved_rate` is the share of them
    with H < epsilon. method "fixed": given by the user; rate fields describe the unrelated set if one was given.
    """

    epsilon: float
    method: Literal["calibrated", "fixed"]
    target_rate: float | None = None
    achieved_rate: float | None = None
    queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def calibrate_epsilon(entropies_of_unrelated: torch.Tensor, target_rate: float) -> float:
    """The largest epsilon such that new unrelated queries pass (H < epsilon) at a rate of at most `target_rate`.

    With the n calibration entropies sorted, h(1) <= ... <= h(n), epsilon = h(k) with k = floor(target * (n + 1)).
    For a new query exchangeable with the calibration set, P(H < h(k)) <= k / (n + 1) <= target (the conformal
    bound, exact for continuous H), and on the calibration set itself at most (k - 1) / n pass. Ties: a strict
    "<" never admits queries whose entropy equals epsilon, so ties only lower the rate. Small samples: the
    resolution is 1 / (n + 1); with fewer than ceil(1 / target) - 1 queries no threshold can promise the target
    and this raises (for 2%, at least 49 queries; use ~1,000 or more for a stable value).
    """
    h = entropies_of_unrelated.detach().flatten().double().cpu()
    if not 0.0 < target_rate < 1.0:
        raise InputError(f"calibrate_epsilon: target_rate must be in (0, 1), got {target_rate}")
    if h.numel() == 0 or torch.isnan(h).any():
        raise InputError("calibrate_epsilon: need at least one finite entropy of an unrelated query")
    k = math.floor(target_rate * (h.numel() + 1) + 1e-9)  # 1-based rank of the threshold
    if k < 1:
        need = math.ceil(1.0 / target_rate) - 1
        raise InputError(
            f"calibrate_epsilon: {h.numel()} unrelated queries cannot support target rate {target_rate} "
            f"(need at least {need}); add queries or set a fixed epsilon"
        )
    return float(h.sort().values[k - 1])


def choose_epsilon(config: GateConfig, unrelated_entropies: torch.Tensor | None = None) -> Calibration:
    """A fixed `config.epsilon` as given, else `calibrate_epsilon` at `config.target_unrelated_rate`."""
    if config.epsilon is None and unrelated_entropies is None:
        raise InputError("gate: epsilon is not fixed, so unrelated queries are needed to calibrate it")
    h = None if unrelated_entropies is None else unrelated_entropies.detach().flatten().cpu()
    if config.epsilon is not None:
        rate = None if h is None or h.numel() == 0 else (h < config.epsilon).double().mean().item()
        return Calibration(config.epsilon, "fixed", None, rate, 0 if h is None else h.numel())
    epsilon = calibrate_epsilon(h, config.target_unrelated_rate)
    rate = (h < epsilon).double().mean().item()
    return Calibration(epsilon, "calibrated", config.target_unrelated_rate, rate, h.numel())


__all__ = [
    "PAPER_EPSILONS",
    "Calibration",
    "FamiliarityGate",
    "GateConfig",
    "GateLog",
    "calibrate_epsilon",
    "choose_epsilon",
    "random_labels",
    "train_gate",
    "trained_gate",
    "training_settings",
]
