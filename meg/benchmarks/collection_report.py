"""Where neuron collection (stage 3) fails, and what a setting changes: success overall, by the answer's length
in tokens, by relation, and by how familiar the unedited model is with the answer; the final loss of failures;
seconds per edit. One row per variant (the preset, or the preset with some `CollectionConfig` fields or the layer
changed), all on the same edits, so a change reads as a before/after row.

Familiarity is the unedited model's mean log-probability of the answer's tokens after the prompt (teacher-forced):
an answer the model has produced in this context scores near 0, one it has never produced far below. Relation is
the prompt with its subject replaced by "{}" (CounterFact, ZsRE and KnowEdit prompts are relation templates filled
with a subject); edits without a subject are grouped under "(no subject)".
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.collection import CollectionConfig, collect_weights
from meg.decoding import answer_log_probs
from meg.errors import InputError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.results import markdown_table, write_results
from meg.surgery import neuron_spec

LENGTHS = ("1", "2", "3", "4", "5", "6+")  # answer length in tokens
# (lower bound of the mean token log-probability, label), first match wins
FAMILIARITY = ((math.log(0.1), "familiar (mean token p >= 0.1)"), (math.log(0.001), "p 0.001-0.1"),
               (-math.inf, "unfamiliar (p < 0.001)"))
TOP_RELATIONS = 12  # the most frequent relations reported one by one


@dataclass(frozen=True)
class Variant:
    """A named change of the collection: `CollectionConfig` fields and, optionally, the layer."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    layer: int | None = None

    @staticmethod
    def parse(text: str) -> Variant:
        """'preset', or 'field=value,field=value' (values as JSON, else strings); 'layer=K' moves the neuron."""
        text = text.strip()
        if text in ("", "preset"):
            return Variant("preset")
        changes: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, raw = part.partition("=")
            if not sep or not key.strip():
                raise InputError(f"--variant {text!r}: {part!r} is not FIELD=VALUE (e.g. steps=240,input_lr_scale=0.1)")
            try:
                changes[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                changes[key.strip()] = raw.strip()
        layer = changes.pop("layer", None)
        if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool) or layer < 0):
            raise InputError(f"--variant {text!r}: layer must be an integer >= 0, got {layer!r}")
        unknown = sorted(set(changes) - set(CollectionConfig.__dataclass_fields__))
        if unknown:
            raise InputError(f"--variant {text!r}: {', '.join(unknown)} is not a collection setting; choose from "
                             f"layer, {', '.join(CollectionConfig.__dataclass_fields__)}")
        return Variant(text, changes, layer)

    def config(self, base: CollectionConfig) -> CollectionConfig:
        """`base` with this variant's changes (checked by the config's own rules)."""
        return replace(base, **self.changes) if self.changes else base


def edit_facts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
               template: PromptTemplate) -> list[dict[str, Any]]:
    """Per edit: answer length in tokens, its bucket, relation, familiarity (mean token log-probability) and bucket."""
    texts = [template.format(r.prompt) for r in requests]
    log_probs = answer_log_probs(model, tokenizer, texts, [r.target for r in requests])
    facts = []
    for request, log_prob in zip(requests, log_probs):
        length = len(tokenizer(" " + request.target.strip(), add_special_tokens=False)["input_ids"])
        facts.append({"tokens": length, "length": LENGTHS[min(length, len(LENGTHS)) - 1],
                      "relation": relation_of(request), "log_prob": round(log_prob, 4),
                      "familiarity": next(label for bound, label in FAMILIARITY if log_prob >= bound)})
    return facts


def relation_of(request: EditRequest) -> str:
    """The prompt with its subject replaced by "{}"."""
    if not request.subject or request.subject not in request.prompt:
        return "(no subject)"
    return request.prompt.replace(request.subject, "{}").strip()


def measure_variant(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                    template: PromptTemplate, base: CollectionConfig, variant: Variant,
                    work: Path | None) -> dict[str, Any]:
    """Collect every edit with the variant's settings; per-edit success, final loss and steps, and the seconds."""
    spec = neuron_spec(model, variant.layer)
    config = variant.config(base)
    start = time.perf_counter()
    result = collect_weights(model, tokenizer, spec, requests, config, template, work, progress=False)
    seconds = time.perf_counter() - start
    return {"variant": variant.name, "layer": spec.layer, "config": config.to_dict(), "seconds": round(seconds, 2),
            "success": result.success.tolist(), "loss": [round(float(x), 4) for x in result.loss],
            "steps": result.steps.tolist()}


def summarize(facts: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """Success overall and per group, failures' final-loss quantiles, seconds and steps per edit."""
    success = run["success"]

    def groups(key: str, order: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        counts = Counter(f[key] for f in facts)
        names = [k for k in order if k in counts] if order else [k for k, _ in counts.most_common(TOP_RELATIONS)]
        return {name: _rate([s for f, s in zip(facts, success) if f[key] == name]) for name in names}

    failed = sorted(loss for loss, ok in zip(run["loss"], success) if not ok)
    return {"variant": run["variant"], "layer": run["layer"], "overall": _rate(success),
            "by_length": groups("length", LENGTHS), "by_familiarity": groups("familiarity", [b[1] for b in FAMILIARITY]),
            "by_relation": groups("relation"),
            "failure_loss": _quantiles(failed), "seconds": run["seconds"],
            "seconds_per_edit": round(run["seconds"] / len(success), 4),
            "mean_steps": round(statistics.mean(run["steps"]), 2)}


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    return {"edits": len(flags), "success": round(100 * sum(flags) / len(flags), 1) if flags else None}


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731 (values are sorted)
    return {"n": len(values), "p10": pick(0.1), "median": pick(0.5), "p90": pick(0.9)}


def write_collection_report(out_dir: str | Path, name: str, runs: list[dict[str, Any]], facts: list[dict],
                            setup: dict[str, Any]) -> dict[str, Path]:
    """JSON (every number, per-edit facts and outcomes) + markdown tables + a plot of success by answer length per
    variant."""
    summaries = [summarize(facts, run) for run in runs]
    head = ["variant", "layer", "success %", "s / edit", "mean steps", "failures' loss p10 / median / p90"]
    rows = [[s["variant"], s["layer"], s["overall"]["success"], s["seconds_per_edit"], s["mean_steps"],
             _loss_cell(s["failure_loss"])] for s in summaries]
    parts = [f"# Neuron collection: where it fails\n\nCommand: `{setup['command']}`\n\n{setup['description']}\n",
             markdown_table(head, rows)]
    for key, title in (("by_length", "answer length (tokens)"), ("by_familiarity", "familiarity"),
                       ("by_relation", f"relation (the {TOP_RELATIONS} most frequent)")):
        names = list(summaries[0][key])
        table = [[n, summaries[0][key][n]["edits"], *(s[key][n]["success"] for s in summaries)] for n in names]
        parts.append(f"## Success % by {title}\n\n" + markdown_table([title, "edits", *(s["variant"] for s in summaries)],
                                                                      table))

    def draw(axes) -> None:
        for s in summaries:
            names = list(s["by_length"])
            axes.plot(names, [s["by_length"][n]["success"] for n in names], marker="o", label=s["variant"])
        axes.set_xlabel("answer length (tokens)")
        axes.set_ylabel("collection success %")
        axes.set_ylim(0, 102)
        axes.legend()

    data = {"setup": setup, "summaries": summaries, "edits": facts, "runs": runs}
    return write_results(out_dir, name, data, "\n\n".join(parts) + "\n", draw)


def _loss_cell(quantiles: dict[str, float] | None) -> str:
    return "-" if not quantiles else f"{quantiles['p10']:.2f} / {quantiles['median']:.2f} / {quantiles['p90']:.2f}"
