"""The collected-vector oracle: each paraphrase run with the collected neuron of ITS OWN edit.

This is the best any router + generator can do with the collected vectors (perfect routing, perfect
generation), so it bounds MeG's Generality from above; benchmark tables report it beside MeG.
"""

from __future__ import annotations

from collections.abc import Sequence

from meg.decoding import greedy_generate, teacher_forced_accuracy
from meg.evaluation.metrics import ag_pass
from meg.requests import EditRequest


def oracle_generality(edited, requests: Sequence[EditRequest], max_new_tokens: int = 20) -> dict[str, float] | None:
    """Gen-AG and Gen-TF (%) of the paraphrases with their own edit's collected vector (needs a MeG pack)."""
    pack = getattr(edited, "pack", None)
    rows = [i for i, r in enumerate(requests) if r.paraphrases]
    if pack is None or not rows:
        return None
    index = {r.prompt: i for i, r in enumerate(pack.requests)}
    rows = [i for i in rows if requests[i].prompt in index]
    texts = [pack.template.format(requests[i].paraphrases[0]) for i in rows]
    targets = [requests[i].target for i in rows]
    weights = pack.collection.vectors[[index[requests[i].prompt] for i in rows]]
    model, tokenizer = edited.model, edited.tokenizer
    outputs = greedy_generate(model, tokenizer, texts, max_new_tokens, pack.neuron, weights)
    forced = teacher_forced_accuracy(model, tokenizer, texts, targets, pack.neuron, weights)
    return {"gen_ag": 100.0 * sum(ag_pass(o, t) for o, t in zip(outputs, targets)) / len(rows),
            "gen_tf": 100.0 * sum(forced) / len(rows), "cases": len(rows)}
