"""Decoding for the server: one batch of rows, each with its own neuron, sampling settings, token budget and stop
strings, and text handed out as it is produced (for streaming).

`meg.decoding.greedy_generate` serves the metrics (one setting for the whole batch); a server batch mixes requests,
so here every row carries its own `temperature`, `top_p`, `max_tokens`, `stop` and seed. Each row's token is
chosen by its own settings (argmax for temperature 0, else a draw from its own random generator after top-p), and
each row ends at its own budget, stop string or EOS. The loop (`_decode`, KV cache, explicit position ids for the
left padding) drops a row from the batch as soon as it ends, so a batch costs what its rows still need; a model
whose forward takes no position ids runs through transformers' `generate` instead (a logits processor hands each
row's choice back as a one-hot score, a stopping criterion ends each row; ended rows are then padded to the end).
Row i runs with neuron `weights[i]` (zeros: the unedited model, bit for bit); temperature-0 rows give what
`greedy_generate` gives for the same text.
"""

from __future__ import annotations

import inspect
import secrets
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from meg.prompts import pad_id
from meg.surgery import NeuronSpec, frozen_eval, mount_neuron


@dataclass(frozen=True)
class RowSpec:
    """One sequence to decode: its prompt token ids and how to decode it."""

    ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: drawn at random


@dataclass
class RowResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_tokens), "cancelled"
    tokens: int  # tokens generated (EOS not counted)


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(secrets.randbits(62) if seed is None else seed % (2**63))
    return gen


def row_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice `choice` of a request seeded with `seed` (choices of one request differ)."""
    return None if seed is None else zlib.crc32(f"{seed}:{choice}".encode())


class _RowSampler(LogitsProcessor):
    """Choose every row's next token by its own settings; return the choice as a one-hot score (0 / -inf), so the
    greedy loop of `generate` takes exactly it."""

    def __init__(self, rows: Sequence[RowSpec]):
        self.rows = list(rows)
        self.generators = [_generator(r.seed) if r.temperature > 0 else None for r in rows]

    def choose(self, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The next token (len(rows),) of rows `rows` (indices into the batch given at construction), whose
        next-token scores are `scores` (len(rows), V)."""
        chosen = scores.argmax(-1)
        for k, i in enumerate(rows):
            row = self.rows[i]
            if row.temperature <= 0:
                continue
            probs = torch.softmax(scores[k].float().cpu() / row.temperature, dim=-1)  # (V,)
            if row.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < row.top_p  # the smallest set reaching top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            chosen[k] = int(torch.multinomial(probs, 1, generator=self.generators[i]))
        return chosen

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = self.choose(scores, range(len(self.rows)))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, chosen[:, None], 0.0)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` to hold back while streaming: an incomplete character (the
    tokenizer's replacement character) or the start of a stop string that the next tokens may complete."""
    keep = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = max(keep, k)
                break
    return keep


class _RowStops(StoppingCriteria):
    """Ends each row at EOS, its first stop string or its token budget (or when `cancelled(i)`), keeping its text,
    and reports newly visible text to `on_text(i, delta)` after every step."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rows: Sequence[RowSpec], width: int,
                 on_text: Callable[[int, str], None] | None, cancelled: Callable[[int], bool] | None,
                 stream_rows: set[int] | None = None):
        self.tokenizer, self.rows, self.width = tokenizer, list(rows), width
        self.on_text, self.cancelled = on_text, cancelled
        self.eos = tokenizer.eos_token_id
        self.results: list[RowResult | None] = [None] * len(rows)
        self.sent = [""] * len(rows)
        self.last: torch.Tensor | None = None
        # rows whose text is needed at every step: stop strings to find, or text to stream (the others are decoded
        # once, when they end)
        streamed = set(range(len(rows))) if stream_rows is None else stream_rows
        self.watch = [bool(r.stop) or (on_text is not None and i in streamed) for i, r in enumerate(rows)]

    def _emit(self, i: int, visible: str) -> None:
        if self.on_text is not None and visible.startswith(self.sent[i]) and len(visible) > len(self.sent[i]):
            self.on_text(i, visible[len(self.sent[i]):])
            self.sent[i] = visible

    def _step(self, i: int, tokens: list[int]) -> bool:
        row = self.rows[i]
        ended_by_eos = self.eos is not None and tokens and tokens[-1] == self.eos
        if ended_by_eos:
            tokens = tokens[:-1]
        if not self.watch[i]:
            finish = "stop" if ended_by_eos else "length" if len(tokens) >= row.max_tokens else None
            if finish is None and self.cancelled is not None and self.cancelled(i):
                finish = "cancelled"
            if finish is None:
                return False
            self.results[i] = RowResult(self.tokenizer.decode(tokens, skip_special_tokens=True), finish, len(tokens))
            return True
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in row.stop if s in text]
        finish = None
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        elif ended_by_eos:
            finish = "stop"
        elif len(tokens) >= row.max_tokens:
            finish = "length"
        elif self.cancelled is not None and self.cancelled(i):
            finish = "cancelled"
        if finish is None:
            self._emit(i, text[: len(text) - _held_back(text, row.stop)])
            return False
        self._emit(i, text)
        self.results[i] = RowResult(text, finish, len(tokens))
        return True

    def done(self, i: int, tokens: list[int]) -> bool:
        """After row i produced `tokens`: whether it has ended (its result is then kept)."""
        if self.results[i] is None:
            self._step(i, tokens)
        return self.results[i] is not None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.last = input_ids
        new = input_ids[:, self.width:].tolist()
        done = [self.results[i] is not None or self._step(i, tokens) for i, tokens in enumerate(new)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> list[RowResult]:
        """Rows the loop ended before this criterion did (the overall budget): their text so far."""
        out = []
        for i, result in enumerate(self.results):
            if result is None:
                tokens = [] if self.last is None else self.last[i, self.width:].tolist()[: self.rows[i].max_tokens]
                result = RowResult(self.tokenizer.decode(tokens, skip_special_tokens=True), "length", len(tokens))
            out.append(result)
        return out


@torch.no_grad()
def generate_rows(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[RowSpec],
    spec: NeuronSpec | None = None,
    weights: torch.Tensor | None = None,
    on_text: Callable[[int, str], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
    stream_rows: set[int] | None = None,
) -> list[RowResult]:
    """Decode every row in one batch (left-padded), row i with neuron `weights[i]` when given (B, D).

    The callers check that each row's prompt plus `max_tokens` fits the model's context. `on_text(i, delta)` is
    called from this thread as row i's text grows (never with the part of a stop string or an incomplete
    character), for the rows in `stream_rows` (None: every row); `cancelled(i)` true ends row i at the next step.
    """
    rows = list(rows)
    if not rows:
        return []
    device = next(model.parameters()).device
    width = max(len(r.ids) for r in rows)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row.ids):] = torch.tensor(row.ids, dtype=torch.long)
        attention[b, width - len(row.ids):] = 1
    stops = _RowStops(tokenizer, rows, width, on_text, cancelled, stream_rows)
    if weights is not None and not bool(weights.ne(0).any()):
        weights = None  # nothing routed: no neuron mounted at all
    sampler = _RowSampler(rows)
    with frozen_eval(model):
        if _shrinkable(model):
            _decode(model, rows, input_ids.to(device), attention.to(device), spec,
                    None if weights is None else weights.to(device), sampler, stops)
        else:
            config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max(r.max_tokens for r in rows),
                                      pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            with mount_neuron(model, spec, weights.to(device)) if weights is not None else nullcontext():
                model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                               stopping_criteria=StoppingCriteriaList([stops]))
    return stops.finish()


def _shrinkable(model: nn.Module) -> bool:
    """Whether `_decode` can run this model: it takes position ids, and its cache can drop rows."""
    return "position_ids" in inspect.signature(model.forward).parameters and hasattr(DynamicCache,
                                                                                       "batch_select_indices")


def _decode(model: nn.Module, rows: list[RowSpec], input_ids: torch.Tensor, attention: torch.Tensor,
            spec: NeuronSpec | None, weights: torch.Tensor | None, sampler: _RowSampler, stops: _RowStops) -> None:
    """The decoding loop with the KV cache, dropping every row that has ended: a batch costs what its rows still
    need, not B x its longest answer (a short answer beside a long one costs only its own steps)."""
    active = list(range(len(rows)))
    tokens: list[list[int]] = [[] for _ in rows]
    cache = DynamicCache()
    step_ids, mask = input_ids, attention
    positions = (attention.cumsum(-1) - 1).clamp_min(0)  # left padding: every row's positions start at 0
    w = weights
    accepted = inspect.signature(model.forward).parameters
    extra = {"cache" if "cache" in accepted else "past_key_values": cache}
    if "logits_to_keep" in accepted:
        extra["logits_to_keep"] = 1  # the prompt's other positions need no output projection
    for _ in range(max(r.max_tokens for r in rows)):
        with mount_neuron(model, spec, w) if w is not None else nullcontext():
            logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **extra).logits[:, -1, :]  # (A, V)
        chosen = sampler.choose(logits, active).tolist()
        keep = []
        for k, i in enumerate(active):
            tokens[i].append(chosen[k])
            if not stops.done(i, tokens[i]):
                keep.append(k)
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, active = mask[index], [active[k] for k in keep]
            chosen = [chosen[k] for k in keep]
            w = w[index] if w is not None else None
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        positions = mask.sum(1, keepdim=True) - 1
        step_ids = torch.tensor(chosen, dtype=torch.long, device=mask.device)[:, None]
