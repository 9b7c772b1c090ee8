"""What the weight-editing baselines share: config handling, the copy they edit, the LM they return, the loss.

Configs are frozen dataclasses; `context.config` may be None (defaults), a config object, a preset name, or a
dict of fields (optionally with "preset": the named config the other fields override).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from meg.errors import InputError
from meg.methods.unedited import PlainLM
from meg.prompts import AnswerBatch, LossTokens, PromptTemplate, pad_id
from meg.settings import Settings
from meg.surgery import logits_at

C = TypeVar("C", bound="BaselineConfig")


class BaselineConfig(Settings):
    """Mixin for a baseline's frozen config dataclass: types and `rules()` checked, to_dict / from_dict
    (meg.settings.Settings)."""


def resolve_config(kind: type[C], value: Any, presets: dict[str, C]) -> C:
    """A config object from `context.config`: None, an object, a preset name, or a dict (with optional "preset")."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict):
        raise InputError(f"expected a {kind.__name__}, a dict or a preset name, got {type(value).__name__}")
    value = dict(value)
    name = value.pop("preset", None)
    if name is None:
        return kind.from_dict(value)
    if name not in presets:
        raise InputError(f"unknown {kind.__name__} preset {name!r}; choose one of {', '.join(presets) or '(none)'}")
    kind.from_dict(value)  # validates the overriding fields' names
    return replace(presets[name], **value)


def editable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with every parameter frozen; the caller's model is never touched."""
    edited = copy.deepcopy(model)
    edited.requires_grad_(False)
    return edited.eval()


class WeightEditedLM(PlainLM):
    """A `PlainLM` around an edited copy of the model, with the method's hyperparameters and wall time."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate,
                 info: dict[str, Any]) -> None:  # fmt: skip
        super().__init__(model, tokenizer, template)
        self.info = info

    def stats(self) -> dict[str, Any]:
        return dict(self.info)


def target_nll(model: nn.Module, batch: AnswerBatch, tokens: LossTokens = "target") -> torch.Tensor:
    """Per row: mean negative log-likelihood under `model` of the target tokens ("answer": target + "." + EOS, when
    the batch was encoded with the suffix). -> (B,)

    Token t is scored from the logits at t - 1 (teacher forcing, as `meg.decoding.teacher_forced_accuracy`), and
    the output projection is computed only where a scored token is predicted (`logits_at`: a few answer tokens
    per row instead of every position)."""
    scored = batch.loss_mask(tokens)[:, 1:]  # (B, T-1): token t + 1 is scored from the logits at t
    where = F.pad(scored, (0, 1))  # (B, T)
    logits = logits_at(model, batch.input_ids, batch.attention_mask, where)  # (K, V), row-major
    token_lp = F.log_softmax(logits.float(), dim=-1).gather(-1, batch.input_ids[:, 1:][scored][:, None]).squeeze(-1)
    total = torch.zeros(len(scored), dtype=token_lp.dtype, device=token_lp.device)
    return -total.index_add(0, where.nonzero()[:, 0], token_lp) / scored.sum(1)


def chunks(n: int, size: int) -> list[slice]:
    """Row slices of at most `size` covering range(n)."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def select_rows(batch: AnswerBatch, rows: slice) -> AnswerBatch:
    """Rows of a batch, trimmed to their own longest sequence (right padding)."""
    width = int(batch.attention_mask[rows].sum(1).max())
    return AnswerBatch(*(getattr(batch, f)[rows, :width] for f in AnswerBatch.__dataclass_fields__))


def right_padded(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask (B, T) of `texts`, right-padded, each truncated to `max_length` tokens."""
    ids = [tokenizer(t)["input_ids"][:max_length] for t in texts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row, dtype=torch.long), 1
    return input_ids, mask
