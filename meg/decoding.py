"""Batched greedy decoding and teacher-forced scoring, optionally with a per-row neuron mounted.

These are the two ways every metric reads a model (paper, "Evaluation protocol"): AG = greedy generation of up to
20 new tokens; TF = teacher-forced accuracy over the target tokens. Rows are decoded in mini-batches; when
`weights` is given, row i runs with neuron `weights[i]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from meg.errors import InputError
from meg.prompts import encode_answers, encode_prompts, pad_id
from meg.surgery import (
    NeuronSpec, capture_activations, context_length, frozen_eval, mount_neuron, neuron_pre_activation,
)

MAX_NEW_TOKENS = 20  # the paper's AG protocol: greedy generation of up to 20 new tokens


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _mounted(model: nn.Module, spec: NeuronSpec | None, weights: torch.Tensor | None):
    if weights is None:
        return nullcontext()
    if spec is None:
        raise ValueError("weights given without a NeuronSpec")
    return mount_neuron(model, spec, weights)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_max_new_tokens(max_new_tokens: int) -> int:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    return max_new_tokens


def _check_fits(texts: Sequence[str], first: int, attention: torch.Tensor, max_new_tokens: int, limit: int | None) -> None:
    """Refuse a prompt that leaves no room for `max_new_tokens` in the model's context (positions past it crash
    models with learned position embeddings, and mean nothing to the others)."""
    if limit is None:
        return
    lengths = attention.sum(1)
    row = int(lengths.argmax())
    if int(lengths[row]) + max_new_tokens > limit:
        raise InputError(f"prompt {first + row} ({texts[row][:50]!r}) is {int(lengths[row])} tokens; with "
                         f"max_new_tokens {max_new_tokens} it exceeds the model's context of {limit} tokens "
                         "(shorten the prompt or lower max_new_tokens)")


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    spec: NeuronSpec | None = None,
    weights: torch.Tensor | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations (special tokens removed), one string per prompt; stops at EOS. A prompt with no room
    left for `max_new_tokens` in the model's context raises InputError naming it."""
    prompt_texts, device, limit = list(prompt_texts), _device(model), context_length(model)
    check_max_new_tokens(max_new_tokens)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
    )
    outputs: list[str] = []
    with frozen_eval(model):
        for rows in _chunks(len(prompt_texts), batch_size):
            input_ids, attention = encode_prompts(tokenizer, prompt_texts[rows])
            _check_fits(prompt_texts[rows], rows.start, attention, max_new_tokens, limit)
            w = None if weights is None else weights[rows].to(device)
            with _mounted(model, spec, w):
                generated = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
                )
            new_tokens = generated[:, input_ids.shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


@torch.no_grad()
def sample_top_k(model: nn.Module, tokenizer: PreTrainedTokenizerBase, starts: Sequence[str], length: int, top_k: int,
                 seed: int) -> list[str]:  # fmt: skip
    """One top-k sampled text per start, `length` tokens long with its start, from a seeded generator (the
    same texts on every call). One row at a time without a cache: for a handful of short texts (MEMIT's context
    prefixes), not for serving."""
    generator, device, texts = torch.Generator().manual_seed(seed), _device(model), []
    with frozen_eval(model):
        for start in starts:
            ids = tokenizer(start)["input_ids"]
            while len(ids) < length:
                row = torch.tensor([ids], device=device)
                logits = model(input_ids=row, attention_mask=torch.ones_like(row)).logits[0, -1].float().cpu()
                top = logits.topk(min(top_k, logits.numel()))
                ids.append(int(top.indices[torch.multinomial(top.values.softmax(-1), 1, generator=generator)]))
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


@torch.no_grad()
def teacher_forced_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    targets: Sequence[str],
    spec: NeuronSpec | None = None,
    weights: torch.Tensor | None = None,
    batch_size: int = 64,
) -> list[float]:
    """Per row: the share of target tokens of `prompt + " " + target` that are the argmax given the gold prefix."""
    prompt_texts, targets, device = list(prompt_texts), list(targets), _device(model)
    scores: list[float] = []
    with frozen_eval(model):
        for rows in _chunks(len(prompt_texts), batch_size):
            batch = encode_answers(tokenizer, prompt_texts[rows], targets[rows], suffix=False).to(device)
            w = None if weights is None else weights[rows].to(device)
            with _mounted(model, spec, w):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            predicted = logits[:, :-1].argmax(-1)  # (B, T-1): prediction for token t+1
            mask = batch.target_mask[:, 1:]
            hits = (predicted == batch.input_ids[:, 1:]) & mask
            scores += (hits.sum(1).float() / mask.sum(1).float()).tolist()
    return scores


@torch.no_grad()
def answer_log_probs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 64,
) -> list[float]:
    """Per row: the mean log-probability of the target's tokens of `prompt + " " + target` given the gold prefix
    (how familiar the model is with the answer after this prompt; 0 = certain)."""
    prompt_texts, targets, device = list(prompt_texts), list(targets), _device(model)
    scores: list[float] = []
    with frozen_eval(model):
        for rows in _chunks(len(prompt_texts), batch_size):
            batch = encode_answers(tokenizer, prompt_texts[rows], targets[rows], suffix=False).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
            taken = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]  # (B, T-1)
            mask = batch.target_mask[:, 1:]
            scores += ((taken * mask).sum(1) / mask.sum(1)).tolist()
    return scores


@torch.no_grad()
def last_token_pre_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    spec: NeuronSpec,
    weights: torch.Tensor,
    batch_size: int = 64,
) -> list[float]:
    """Per row: how strongly neuron `weights[i]` fires at the last token of prompt i, as its pre-activation
    w_in . h + bias, h being the FFN input at the neuron's layer (not mounted: the neuron reads its layer's input,
    which it does not change)."""
    prompt_texts, device = list(prompt_texts), _device(model)
    spec.check(weights)
    values: list[float] = []
    with frozen_eval(model), capture_activations(model, [spec.layer], site="ffn") as captured:
        for rows in _chunks(len(prompt_texts), batch_size):
            ids = [tokenizer(text)["input_ids"] for text in prompt_texts[rows]]
            width = max(len(x) for x in ids)  # right-padded, so every row keeps the positions it has alone
            input_ids = torch.tensor([x + [pad_id(tokenizer)] * (width - len(x)) for x in ids], device=device)
            attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            model(input_ids=input_ids, attention_mask=attention)
            last = torch.tensor([len(x) - 1 for x in ids], device=device)
            h = captured[spec.layer][torch.arange(len(ids), device=device), last][:, None, :]  # (B, 1, d)
            values += neuron_pre_activation(spec, weights[rows].to(h.device).float(), h.float())[:, 0].tolist()
    return values
