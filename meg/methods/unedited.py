"""The base model itself, behind the editing contract: the reference row of every benchmark table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.decoding import MAX_NEW_TOKENS, greedy_generate, teacher_forced_accuracy
from meg.methods.base import EditContext
from meg.prompts import PromptTemplate
from meg.requests import EditRequest


class PlainLM:
    """A causal LM that answers raw queries through a prompt template (also used by weight-editing baselines)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, batch_size: int = 64):
        self.model, self.tokenizer, self.template, self.batch_size = model, tokenizer, template, batch_size

    def _texts(self, prompts: Sequence[str]) -> list[str]:
        return [self.template.format(p) for p in prompts]

    def generate(self, prompts: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        return greedy_generate(self.model, self.tokenizer, self._texts(prompts), max_new_tokens, batch_size=self.batch_size)

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        return teacher_forced_accuracy(self.model, self.tokenizer, self._texts(prompts), targets, batch_size=self.batch_size)

    def describe(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        return [{} for _ in prompts]

    def stats(self) -> dict[str, Any]:
        return {}


def apply_unedited(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], context: EditContext
) -> PlainLM:
    """Apply no edit at all."""
    return PlainLM(model, tokenizer, context.template)
