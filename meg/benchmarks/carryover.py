"""Do edits carry over to rephrasings? The collected neuron of an edit, run on rephrasings of its question.

Generality is capped by what the collected vector does on a rephrasing: a perfect router and a perfect generator
can do no better than mount the edit's own collected neuron there (the oracle, as in `meg bench`'s oracle line).
This report measures that oracle on every rephrasing of the pack's edits that a data file holds, and why it fails:

- rephrasings: the edits' paraphrases (CounterFact, ZsRE) and KnowEdit's subject aliases (`portability.
  Subject_Aliasing`: the edit's question with its subject named another way; scored against the alias item's own
  answer);
- per case: the unedited model's answer, the oracle's (greedy AG and teacher-forced TF), the same neuron on the
  edit's own prompt (did collection write the fact at all), the pack's answer and route when a pack is given, and
  how strongly the neuron fires at the rephrasing's last token relative to the edit prompt's (its pre-activation
  w_in . h + bias on the rephrasing / on the prompt: a neuron trained on one context is a key that must match
  the new one);
- grouped by the answer's length in tokens, by how much of the subject's wording the rephrasing keeps, by that
  firing ratio and by relation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.benchmarks.collection_report import LENGTHS, TOP_RELATIONS, relation_of
from meg.decoding import MAX_NEW_TOKENS, greedy_generate, last_token_pre_activations, teacher_forced_accuracy
from meg.evaluation.metrics import ag_pass
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.results import markdown_table, write_results
from meg.surgery import NeuronSpec

KINDS = ("paraphrase", "subject alias")
# (lower bound of pre-activation on the rephrasing / on the edit prompt, label), first match wins
FIRING = ((1.0, "as strong or stronger (>= 1)"), (0.5, "0.5-1"), (0.0, "0-0.5"), (-math.inf, "off (<= 0)"))  # 0: off
OVERLAP = ("every subject word", "some subject words", "no subject word")


@dataclass(frozen=True)
class Rephrasing:
    """A rephrased question of edit number `edit` (in the pack's order), the answer expected there, its kind."""

    edit: int
    text: str
    target: str
    kind: str


def rephrasings(edits: Sequence[EditRequest], data: Sequence[EditRequest],
                aliases: dict[str, list[tuple[str, str]]] | None = None) -> list[Rephrasing]:
    """Every paraphrase in `data` and every alias (`{edit prompt: [(prompt, answer)]}`) of an edit in `data` the
    pack holds with the same target (an edit a later one replaced is skipped)."""
    index = {r.prompt: i for i, r in enumerate(edits)}
    cases = []
    for request in data:
        i = index.get(request.prompt)
        if i is not None and edits[i].target == request.target:
            cases += [Rephrasing(i, p, request.target, KINDS[0]) for p in request.paraphrases]
    asked = {r.prompt for r in data}
    for prompt, pairs in (aliases or {}).items():
        if prompt in index and prompt in asked:
            cases += [Rephrasing(index[prompt], p, answer, KINDS[1]) for p, answer in pairs]
    return cases


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def subject_overlap(subject: str | None, text: str) -> str:
    """How much of the subject's wording `text` keeps: every word, some, or none (no subject: none)."""
    words = _words(subject or "")
    kept = len(words & _words(text))
    return OVERLAP[0] if words and kept == len(words) else OVERLAP[1] if kept else OVERLAP[2]


def firing_bucket(on_rephrasing: float, on_prompt: float) -> str:
    """The FIRING label of the neuron's pre-activation on the rephrasing relative to the edit prompt."""
    ratio = on_rephrasing / on_prompt if on_prompt > 0 else (math.inf if on_rephrasing > 0 else -math.inf)
    return FIRING[-1][1] if ratio <= 0 else next(label for bound, label in FIRING if ratio >= bound)


def measure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: NeuronSpec, template: PromptTemplate,
            vectors: torch.Tensor, edits: Sequence[EditRequest], cases: Sequence[Rephrasing], edited: Any = None,
            max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict[str, Any]]:
    """One record per case (module docstring); `edited`: an EditedModel of the pack, or None."""
    texts = [template.format(c.text) for c in cases]
    targets = [c.target for c in cases]
    weights = vectors[[c.edit for c in cases]]
    used = sorted({c.edit for c in cases})
    row_of = {e: k for k, e in enumerate(used)}
    prompts = [template.format(edits[e].prompt) for e in used]
    on_prompt = greedy_generate(model, tokenizer, prompts, max_new_tokens, spec, vectors[used])
    fire_prompt = last_token_pre_activations(model, tokenizer, prompts, spec, vectors[used])
    base = greedy_generate(model, tokenizer, texts, max_new_tokens)
    oracle = greedy_generate(model, tokenizer, texts, max_new_tokens, spec, weights)
    forced = teacher_forced_accuracy(model, tokenizer, texts, targets, spec, weights)
    fire = last_token_pre_activations(model, tokenizer, texts, spec, weights)
    if edited is not None:
        raw = [c.text for c in cases]
        answers, routes = edited.generate(raw, max_new_tokens), edited.route(raw)
    records = []
    for k, case in enumerate(cases):
        request, p = edits[case.edit], row_of[case.edit]
        length = len(tokenizer(" " + case.target.strip(), add_special_tokens=False)["input_ids"])
        record = {**asdict(case), "prompt": request.prompt, "relation": relation_of(request),
                  "tokens": length, "length": LENGTHS[min(length, len(LENGTHS)) - 1],
                  "overlap": subject_overlap(request.subject, case.text),
                  "base_ag": ag_pass(base[k], case.target), "oracle_output": oracle[k],
                  "oracle_ag": ag_pass(oracle[k], case.target), "oracle_tf": round(forced[k], 4),
                  "prompt_ag": ag_pass(on_prompt[p], request.target),
                  "fire": round(fire[k], 4), "fire_prompt": round(fire_prompt[p], 4),
                  "firing": firing_bucket(fire[k], fire_prompt[p])}
        if edited is not None:
            edit = int(routes.edit[k])
            record.update(pack_output=answers[k], pack_ag=ag_pass(answers[k], case.target),
                          routed_own=bool(routes.routed[k]) and edit == case.edit)
        records.append(record)
    return records


def _pct(flags: Sequence[bool]) -> float | None:
    return round(100 * sum(flags) / len(flags), 1) if flags else None


def _group(records: Sequence[dict[str, Any]], key: str, order: Sequence[str] | None = None) -> dict[str, Any]:
    """Per value of `key`: cases, the oracle's AG over all of them, and over those whose edit was collected."""
    counts = Counter(r[key] for r in records)
    names = [n for n in order if n in counts] if order else [n for n, _ in counts.most_common(TOP_RELATIONS)]
    groups = {}
    for name in names:
        rows = [r for r in records if r[key] == name]
        collected = [r["oracle_ag"] for r in rows if r["prompt_ag"]]
        groups[name] = {"cases": len(rows), "oracle_ag": _pct([r["oracle_ag"] for r in rows]),
                        "collected": len(collected), "carry_over": _pct(collected)}
    return groups


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: the rates, the oracle by group, and what the oracle's failures have in common. `carry_over`: the
    oracle's AG over the cases whose edit was collected (its neuron answers the edit prompt), which is what a
    rephrasing costs once collection has succeeded."""
    out = {}
    for kind in KINDS:
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        collected = [r for r in rows if r["prompt_ag"]]
        missed = [r for r in collected if not r["oracle_ag"]]
        weak = [r for r in missed if r["firing"] in (FIRING[2][1], FIRING[3][1])]
        summary = {"cases": len(rows), "edits": len({r["edit"] for r in rows}),
                   "base_ag": _pct([r["base_ag"] for r in rows]), "oracle_ag": _pct([r["oracle_ag"] for r in rows]),
                   "oracle_tf": round(100 * sum(r["oracle_tf"] for r in rows) / len(rows), 1),
                   "prompt_ag": _pct([r["prompt_ag"] for r in rows]), "collected": len(collected),
                   "carry_over": _pct([r["oracle_ag"] for r in collected]),
                   "failures": {"oracle_failures": sum(not r["oracle_ag"] for r in rows),
                                "not_collected": sum(not r["oracle_ag"] and not r["prompt_ag"] for r in rows),
                                "collected_fires_below_half": len(weak),
                                "collected_fires_at_least_half": len(missed) - len(weak)},
                   "by_length": _group(rows, "length", LENGTHS), "by_overlap": _group(rows, "overlap", OVERLAP),
                   "by_firing": _group(rows, "firing", [label for _, label in FIRING]),
                   "by_relation": _group(rows, "relation")}
        if "pack_ag" in rows[0]:
            summary.update(pack_ag=_pct([r["pack_ag"] for r in rows]), routed_own=_pct([r["routed_own"] for r in rows]),
                           pack_ag_collected=_pct([r["pack_ag"] for r in collected]),
                           routed_own_collected=_pct([r["routed_own"] for r in collected]))
        out[kind] = summary
    return out


def _markdown(summaries: dict[str, Any], setup: dict[str, Any]) -> str:
    head = ["rephrasing", "cases", "unedited AG", "edit prompt AG (collected)", "oracle AG", "oracle TF",
            "carry-over (oracle AG where collected)", "routed to own edit (where collected)", "pack AG (where collected)"]
    rows = [[kind, s["cases"], s["base_ag"], s["prompt_ag"], s["oracle_ag"], s["oracle_tf"], s["carry_over"],
             f"{s.get('routed_own', '-')} ({s.get('routed_own_collected', '-')})",
             f"{s.get('pack_ag', '-')} ({s.get('pack_ag_collected', '-')})"] for kind, s in summaries.items()]
    parts = [f"# Do edits carry over to rephrasings?\n\nCommand: `{setup['command']}`\n\n{setup['description']}\n",
             markdown_table(head, rows)]
    failure_head = ["rephrasing", "oracle failures", "edit not collected", "collected; neuron fires < half as strongly",
                    "collected; fires at least half as strongly, still wrong"]
    parts.append("## Why the oracle fails\n\n" + markdown_table(failure_head, [
        [kind, f["oracle_failures"], f["not_collected"], f["collected_fires_below_half"],
         f["collected_fires_at_least_half"]] for kind, f in ((k, s["failures"]) for k, s in summaries.items())]))
    for key, title in (("by_length", "answer length (tokens)"), ("by_overlap", "subject wording kept"),
                       ("by_firing", "neuron firing on the rephrasing / on the edit prompt"),
                       ("by_relation", f"relation (the {TOP_RELATIONS} most frequent)")):
        for kind, s in summaries.items():
            table = [[name, g["cases"], g["oracle_ag"], g["collected"], "-" if g["carry_over"] is None else g["carry_over"]]
                     for name, g in s[key].items()]
            parts.append(f"## Oracle by {title}: {kind}\n\n"
                         + markdown_table([title, "cases", "oracle AG", "collected", "carry-over"], table))
    return "\n\n".join(parts) + "\n"


def write_carryover(out_dir: str | Path, name: str, records: Sequence[dict[str, Any]],
                    setup: dict[str, Any]) -> dict[str, Path]:
    """JSON (every case) + markdown tables + a plot of the carry-over by answer length per kind of rephrasing."""
    summaries = summarize(records)

    def draw(axes) -> None:
        for kind, s in summaries.items():
            values = [s["by_length"].get(n, {}).get("carry_over") for n in LENGTHS]
            axes.plot(LENGTHS, [math.nan if v is None else v for v in values], marker="o", label=f"{kind} ({s['cases']})")
        axes.set_xlabel("answer length (tokens)")
        axes.set_ylabel("carry-over % (oracle AG where collected)")
        axes.set_ylim(0, 102)
        axes.legend()

    data = {"setup": setup, "summaries": summaries, "cases": list(records)}
    return write_results(out_dir, name, data, _markdown(summaries, setup), draw)
