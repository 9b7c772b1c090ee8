"""Prompt templates, answer normalisation, and tokenisation of `prompt + " " + target + "." + EOS`.

Tokenisation never assumes how a tokenizer merges across the prompt/target boundary: the target's tokens are
found by tokenising the prompt and the prompt-plus-target separately and taking what the longer one adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from meg.errors import InputError

LossTokens = Literal["answer", "target"]


@dataclass(frozen=True)
class PromptTemplate:
    """How a raw query is shown to the LM: `text` with one `{prompt}` placeholder.

    CounterFact prompts are sentence prefixes and use "{prompt}"; ZsRE questions use a question-answer
    template (see meg.data.templates).
    """

    text: str = "{prompt}"

    def __post_init__(self) -> None:
        if self.text.count("{prompt}") != 1:
            raise InputError(f"prompt template must contain '{{prompt}}' exactly once, got {self.text!r}")

    def format(self, prompt: str) -> str:
        return self.text.replace("{prompt}", prompt)


def normalize_answer(text: str) -> str:
    """The paper's AG comparison form: trimmed, one trailing '.' dropped, lower-cased."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text.lower()


def answers_match(generated: str, target: str) -> bool:
    """Case-insensitive exact match after normalisation (paper, AG metric)."""
    return normalize_answer(generated) == normalize_answer(target)


@dataclass
class AnswerBatch:
    """A right-padded batch of `prompt + " " + target + "." + EOS` sequences.

    Shapes: all (B, T). `target_mask[b, t]` marks tokens of " target"; `answer_mask` marks target + "." + EOS.
    The loss/accuracy at token t is read from the logits at position t - 1.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    answer_mask: torch.Tensor

    def to(self, device: torch.device | str) -> AnswerBatch:
        return AnswerBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def loss_mask(self, tokens: LossTokens) -> torch.Tensor:
        return self.answer_mask if tokens == "answer" else self.target_mask


def join_answer(prompt_text: str, answer: str) -> str:
    """`prompt + " " + answer`, without doubling a space the prompt already ends with."""
    return prompt_text + answer if prompt_text.endswith((" ", "\n")) else f"{prompt_text} {answer}"


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _row_ids(tokenizer: PreTrainedTokenizerBase, prompt_text: str, target: str, suffix: bool) -> tuple[list[int], int, int]:
    """-> (ids, target_start, target_end) for one row."""
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    with_target = tokenizer(join_answer(prompt_text, target))["input_ids"]
    start = _common_prefix(prompt_ids, with_target)
    end = len(with_target)
    ids = list(with_target)
    if suffix:
        ids += tokenizer(".", add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids, start, end


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS, else 0 (always masked out)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def encode_answers(
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    targets: Sequence[str],
    suffix: bool = True,
    max_length: int | None = None,
    names: Sequence[str] | None = None,
) -> AnswerBatch:
    """Tokenise rows `prompt_text + " " + target (+ "." + EOS when suffix)`, right-padded.

    `prompt_texts` are already templated. `names` label rows in errors (default: "record i").
    """
    rows = []
    for i, (prompt_text, target) in enumerate(zip(prompt_texts, targets, strict=True)):
        name = names[i] if names is not None else f"record {i}"
        ids, start, end = _row_ids(tokenizer, prompt_text, target, suffix)
        if start >= end:
            raise InputError(f"{name}: target {target!r} adds no tokens after the prompt")
        if max_length is not None and len(ids) > max_length:
            raise InputError(f"{name}: prompt + target is {len(ids)} tokens, longer than the model's context ({max_length})")
        rows.append((ids, start, end))
    width = max(len(ids) for ids, _, _ in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id(tokenizer), dtype=torch.long)
    attention = torch.zeros(batch, width, dtype=torch.long)
    target_mask = torch.zeros(batch, width, dtype=torch.bool)
    answer_mask = torch.zeros(batch, width, dtype=torch.bool)
    for b, (ids, start, end) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        target_mask[b, start:end] = True
        answer_mask[b, start : len(ids)] = True
    return AnswerBatch(input_ids, attention, target_mask, answer_mask)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompt_texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt batch for generation: input_ids, attention_mask, both (B, T)."""
    ids = [tokenizer(text)["input_ids"] for text in prompt_texts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention[b, width - len(row) :] = 1
    return input_ids, attention
