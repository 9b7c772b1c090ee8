"""FT: fine-tune the FFN of ONE layer on all edits at once (the MeG paper's FT baseline).

Loss: mean negative log-likelihood of the target tokens of `template(prompt) + " " + target`, per edit, averaged
over edits (`loss_tokens="answer"` adds "." + EOS, as MeG's weight collection does, so greedy decoding also
learns to stop after the target); every other weight is frozen. Optimiser: AdamW for a fixed number of steps over
the whole edit batch (mini-batches of `batch_size` accumulate into one step). `norm_constraint` is FT-L's L-infinity box around the
original weights (Zhu et al. 2020, used by ROME/MEMIT's FT baseline): after each step every entry is clamped to
within +-norm_constraint of its start value. The model is deep-copied first; the caller's model is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.baselines.base import (
    BaselineConfig,
    WeightEditedLM,
    chunks,
    editable_copy,
    resolve_config,
    select_rows,
    target_nll,
)
from meg.errors import InputError
from meg.methods.base import EditContext
from meg.prompts import AnswerBatch, LossTokens, encode_answers
from meg.requests import EditRequest
from meg.settings import Rules
from meg.surgery import context_length, ffn_module, ffn_output_projection, neuron_spec

FTParams = Literal["ffn", "ffn_out"]


@dataclass(frozen=True)
class FTConfig(BaselineConfig):
    """FT settings. Defaults follow EasyEdit's FT hyperparameters for GPT-J (Adam lr 5e-4, 25 steps)."""

    layer: int | None = None  # None: EditContext.layer, else the model's default MeG layer
    params: FTParams = "ffn"  # "ffn": every FFN weight of the layer; "ffn_out": only its output projection
    lr: float = 5e-4
    steps: int = 25
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    norm_constraint: float | None = None  # FT-L: max |w - w0| per entry; None = unconstrained
    loss_tokens: LossTokens = "target"  # "target" (paper); "answer" = target + "." + EOS
    batch_size: int = 64  # edits per forward/backward (gradients accumulate over the whole batch per step)

    def rules(self) -> Rules:
        return {
            "layer": (self.layer is None or self.layer >= 0, ">= 0 or null"),
            "lr": (self.lr > 0, "> 0"),
            "steps": (self.steps >= 1, ">= 1"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "norm_constraint": (self.norm_constraint is None or self.norm_constraint > 0, "> 0 or null"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
        }


# Best Score of the sweep on the reference model (64 counterfact-val edits, one batch): docs/results/
# baseline-sweep.md, `python scripts/sweep_baselines.py --n 64 --threads 1`. Score 41.0 (Rel 94, Gen 44, Loc 23 AG):
# FT writes the edits reliably but damages unrelated facts; lower rates or an FT-L box trade Rel for Loc. At the
# benchmarks' 1,024 edits it is still the best FT row (Score 23.0 vs 15-20 for lr 1e-3, 5e-4 and layer 2;
# docs/results/baseline-sweep-1024.md).
# reference-2 (10 layers): 1,024 counterfact-val edits, docs/results/baseline-sweep-reference-2-1024.md
# (`python scripts/sweep_baselines.py --model reference-2 --n 1024 --grid r2-1024 --threads 1`): layer 5 at lr 2e-3,
# Score 25.0 (Rel 35, Gen 16, Loc 31 AG); layer 3 22.1; lr 5e-4 keeps Loc 84 but edits 6% (Score 8.2).
PRESETS: dict[str, FTConfig] = {
    "reference": FTConfig(layer=4, lr=2e-3, steps=25),
    "reference-2": FTConfig(layer=5, lr=2e-3, steps=25),
}


def trainable_parameters(model: nn.Module, layer: int, params: FTParams) -> list[nn.Parameter]:
    """Unfreeze and return the FFN weights of `layer` (all of the FFN, or only its output projection)."""
    module = ffn_module(model, layer) if params == "ffn" else ffn_output_projection(model, layer)
    chosen = list(module.parameters())
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def _step(model: nn.Module, batch: AnswerBatch, config: FTConfig) -> float:
    """Accumulate the gradient of the mean target NLL over all rows; returns the loss."""
    total, n = 0.0, batch.input_ids.shape[0]
    for rows in chunks(n, config.batch_size):
        part = select_rows(batch, rows)
        loss = target_nll(model, part, config.loss_tokens).sum() / n
        loss.backward()
        total += float(loss.detach())
    return total


def finetune(model: nn.Module, params: list[nn.Parameter], batch: AnswerBatch, config: FTConfig) -> list[float]:
    """`config.steps` AdamW steps on the target NLL (FT-L box after each step); returns the loss per step."""
    originals = [p.detach().clone() for p in params] if config.norm_constraint is not None else []
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        losses.append(_step(model, batch, config))
        optimizer.step()
        with torch.no_grad():
            for p, p0 in zip(params, originals):
                p.copy_(torch.clamp(p, p0 - config.norm_constraint, p0 + config.norm_constraint))
    optimizer.zero_grad(set_to_none=True)
    return losses


def apply_ft(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], context: EditContext
) -> WeightEditedLM:
    """Fine-tune a copy of `model` on `requests` (one batch); returns a PlainLM around the copy."""
    start = time.perf_counter()
    config = resolve_config(FTConfig, context.config, PRESETS)
    if not requests:
        raise InputError("no edit requests given")
    edited = editable_copy(model)
    layer = neuron_spec(edited, config.layer if config.layer is not None else context.layer).layer
    texts = [context.template.format(r.prompt) for r in requests]  # exactly as PlainLM shows them
    device = next(edited.parameters()).device
    batch = encode_answers(tokenizer, texts, [r.target for r in requests], suffix=config.loss_tokens == "answer",
                           max_length=context_length(edited)).to(device)  # fmt: skip
    params = trainable_parameters(edited, layer, config.params)
    losses = finetune(edited, params, batch, config)
    edited.requires_grad_(False)
    info = {"method": "ft", "config": config.to_dict(), "layer": layer, "edits": len(requests),
            "loss_first": losses[0], "loss_last": losses[-1], "edit_seconds": time.perf_counter() - start}  # fmt: skip
    return WeightEditedLM(edited, tokenizer, context.template, info)
