"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 2.1).

Where in the network does a model recall a fact? For each fact (prompt naming a subject, the answer the model
gives), three runs:
1. clean: p = P(answer's first token | prompt);
2. corrupted: Gaussian noise (`noise_scale` x the standard deviation of the subject tokens' embeddings, ROME's 3)
   added to the token embeddings of the subject, `samples` draws: p* (the answer's probability drops);
3. corrupted-with-restoration: the same noise, but the residual stream after block l at one token is overwritten
   with its clean value: p*_l,t.
The indirect effect of (l, t) is p*_l,t - p*; averaged over facts it is the AIE of ROME's Fig. 1. Tokens traced:
the subject's first token, its last token, and the prompt's last token. A model that recalls facts at the
subject's last token, the premise of ROME / MEMIT / AlphaEdit, shows a high AIE there at the middle layers; a
model that only reads the fact out at the end of the prompt shows it at the last token alone.

Facts: those the model knows (its top-1 next token after the prompt is the answer's first token); the rest carry
no signal and ROME leaves them out too. The same noise draws are used for every restoration of a fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.data.records import read_records
from meg.errors import InputError
from meg.results import markdown_table, write_results
from meg.surgery import add_to_input_embeddings, capture_activations, frozen_eval, num_layers, set_block_output

POSITIONS = ("subject_first", "subject_last", "prompt_last")


@dataclass(frozen=True)
class TraceConfig:
    """ROME's settings: noise 3 x the subject embeddings' std, 10 noise draws per fact."""

    noise_scale: float = 3.0
    samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise_scale <= 0:
            raise InputError(f"noise_scale must be > 0, got {self.noise_scale}")
        if self.samples < 1:
            raise InputError(f"samples must be >= 1, got {self.samples}")


class TracedFact(NamedTuple):
    prompt: str
    subject: str
    answer: str


def load_facts(path: str | Path) -> list[TracedFact]:
    """True facts with subjects: ROME's known_1000.json (prompt, subject, attribute) or a CounterFact file
    (prompt, subject, the true answer)."""
    records = read_records(path)
    if "attribute" in records[0]:
        return [TracedFact(r["prompt"], r["subject"], r["attribute"]) for r in records]
    from meg.data.counterfact import load_counterfact

    return [TracedFact(r.prompt, r.subject, r.ground_truth) for r in load_counterfact(path) if r.ground_truth]


@dataclass(frozen=True)
class Encoded:
    """One fact tokenised: prompt ids (T,), the answer's first token, the traced token positions."""

    input_ids: torch.Tensor
    answer_id: int
    positions: dict[str, int]


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int | None:
    """The token whose character span holds `char`."""
    return next((i for i, (start, end) in enumerate(offsets) if start <= char < end), None)


def encode_fact(tokenizer: PreTrainedTokenizerBase, fact: TracedFact) -> Encoded | None:
    """Token positions of the subject's first and last tokens and of the prompt's end, and the answer's first
    token as the model would see it after the prompt; None when the subject is not in the prompt or the prompt's
    tokens are not a prefix of prompt + answer (BPE merging across the boundary)."""
    at = fact.prompt.find(fact.subject)
    if not fact.subject or at < 0:
        return None
    encoded = tokenizer(fact.prompt, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    full = tokenizer(f"{fact.prompt} {fact.answer}")["input_ids"]
    first, last = _token_at(offsets, at), _token_at(offsets, at + len(fact.subject) - 1)
    if first is None or last is None or full[: len(ids)] != ids or len(full) <= len(ids):
        return None
    positions = {"subject_first": first, "subject_last": last, "prompt_last": len(ids) - 1}
    return Encoded(torch.tensor(ids), full[len(ids)], positions)


@torch.no_grad()
def answer_probability(model: nn.Module, input_ids: torch.Tensor, answer_id: int) -> torch.Tensor:
    """P(answer_id) after the last token of each row of `input_ids` (B, T): (B,)."""
    logits = model(input_ids=input_ids).logits[:, -1].float()
    return logits.softmax(-1)[:, answer_id]


@torch.no_grad()
def subject_embedding_std(model: nn.Module, encoded: Sequence[Encoded]) -> float:
    """Standard deviation of the token embeddings over every subject token of the facts (ROME's noise unit)."""
    table = model.get_input_embeddings().weight
    ids = torch.cat([e.input_ids[e.positions["subject_first"] : e.positions["subject_last"] + 1] for e in encoded])
    return float(table[ids.to(table.device)].float().std())


@torch.no_grad()
def trace_fact(model: nn.Module, fact: Encoded, sigma: float, config: TraceConfig, generator: torch.Generator) -> dict:
    """Clean and corrupted probability of the answer, and the restored probability per traced position and
    layer: {"clean": p, "corrupted": p*, "restored": {position: [p*_l for each layer]}}."""
    layers = list(range(num_layers(model)))
    device = next(model.parameters()).device
    ids = fact.input_ids.to(device)[None]  # (1, T)
    with capture_activations(model, layers, "block") as clean_states:
        clean = float(answer_probability(model, ids, fact.answer_id)[0])
    clean_states = {layer: state[0].clone() for layer, state in clean_states.items()}  # (T, d) each
    s, t, d = config.samples, ids.shape[1], clean_states[layers[0]].shape[-1]
    subject = slice(fact.positions["subject_first"], fact.positions["subject_last"] + 1)
    noise = torch.zeros(s, t, d)
    noise[:, subject] = sigma * torch.randn(s, subject.stop - subject.start, d, generator=generator)
    groups = 1 + len(POSITIONS) * len(layers)  # group 0: corrupted only; then (position, layer)
    batch_noise = noise.repeat(groups, 1, 1).to(device)  # (groups * S, T, d): row g * S + k = group g, draw k
    with ExitStack() as stack:
        stack.enter_context(add_to_input_embeddings(model, batch_noise))
        for layer in layers:
            rows = torch.cat([torch.arange(s) + s * (1 + p * len(layers) + layer) for p in range(len(POSITIONS))])
            where = torch.tensor([fact.positions[name] for name in POSITIONS]).repeat_interleave(s)
            stack.enter_context(set_block_output(model, layer, clean_states[layer][where], rows, where))
        probs = answer_probability(model, ids.expand(groups * s, t), fact.answer_id).view(groups, s).mean(1).cpu()
    restored = probs[1:].view(len(POSITIONS), len(layers))
    return {"clean": clean, "corrupted": float(probs[0]),
            "restored": {name: restored[p].tolist() for p, name in enumerate(POSITIONS)}}  # fmt: skip


def _rounded(trace: dict, digits: int = 4) -> dict:
    """A per-fact trace with its probabilities rounded (the results file keeps every fact)."""
    return {"clean": round(trace["clean"], digits), "corrupted": round(trace["corrupted"], digits),
            "restored": {k: [round(p, digits) for p in v] for k, v in trace["restored"].items()}}  # fmt: skip


def known_facts(model: nn.Module, encoded: Sequence[Encoded]) -> list[bool]:
    """Whether the model's top-1 next token after each prompt is the answer's first token."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return [int(model(input_ids=e.input_ids.to(device)[None]).logits[0, -1].argmax()) == e.answer_id for e in encoded]


def causal_trace(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, facts: Sequence[TracedFact], config: TraceConfig = TraceConfig()
) -> dict:
    """Trace every known fact of `facts`; the averages (AIE per position and layer) and the per-fact traces."""
    with frozen_eval(model):
        encoded = [encode_fact(tokenizer, f) for f in facts]
        usable = [e for e in encoded if e is not None]
        if not usable:
            raise InputError("no fact has its subject in its prompt and a tokenisable answer")
        known = [e for e, k in zip(usable, known_facts(model, usable)) if k]
        if not known:
            raise InputError(f"the model knows none of the {len(usable)} usable facts (top-1 answer token)")
        sigma = config.noise_scale * subject_embedding_std(model, known)
        generator = torch.Generator().manual_seed(config.seed)
        traces = [trace_fact(model, e, sigma, config, generator) for e in known]
    return {"config": asdict(config), "facts": len(facts), "usable": len(usable), "known": len(known),
            "noise_sigma": sigma, **summarise(traces), "traces": [_rounded(t) for t in traces]}  # fmt: skip


def summarise(traces: Sequence[dict]) -> dict:
    """Mean clean / corrupted probability and the average indirect effect per position and layer."""
    corrupted = torch.tensor([t["corrupted"] for t in traces])
    aie = {name: (torch.tensor([t["restored"][name] for t in traces]) - corrupted[:, None]).mean(0).tolist()
           for name in POSITIONS}  # fmt: skip
    return {"mean_clean": float(torch.tensor([t["clean"] for t in traces]).mean()),
            "mean_corrupted": float(corrupted.mean()), "aie": aie}  # fmt: skip


def report(result: dict, name: str, command: str, out_dir: str | Path) -> dict[str, Path]:
    """`<name>.json` (with the per-fact traces), `.md` (the AIE table) and `.png` (AIE against layer)."""
    aie, layers = result["aie"], range(len(result["aie"][POSITIONS[0]]))
    rows = [[layer, *(f"{aie[p][layer]:.3f}" for p in POSITIONS)] for layer in layers]
    markdown = "\n".join([
        f"# Causal tracing: {result['model']}", "", f"Command: `{command}`", "",
        f"Facts: {result['known']} the model knows (top-1 answer token) of {result['usable']} usable of "
        f"{result['facts']}. Noise: {result['config']['noise_scale']} x std of subject embeddings "
        f"(sigma {result['noise_sigma']:.3f}), {result['config']['samples']} draws per fact. Mean P(answer): clean "
        f"{result['mean_clean']:.3f}, subject corrupted {result['mean_corrupted']:.3f}.", "",
        "Average indirect effect of restoring the clean hidden state after each block at one token "
        "(P(answer) restored - corrupted):", "",
        markdown_table(["layer", *POSITIONS], rows), "",
    ])  # fmt: skip

    def draw(axes) -> None:
        for p in POSITIONS:
            axes.plot(list(layers), aie[p], marker="o", label=p.replace("_", " "))
        axes.axhline(result["mean_clean"] - result["mean_corrupted"], color="grey", ls=":", label="total effect")
        axes.set(xlabel="layer (hidden state restored after block)", ylabel="average indirect effect",
                 title=f"Causal tracing, {result['model']} ({result['known']} known facts)")  # fmt: skip
        axes.legend()

    return write_results(out_dir, name, {**result, "command": command}, markdown, draw)
