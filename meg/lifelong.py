"""Lifelong editing: what an add, replace or remove changes in a pack's edit set, and how two packs differ.

A pack keeps every edit request with its collected vector and prompt embedding, so an operation only has to work
out which rows carry over and which are new; `MegEditor.add / replace / remove` (meg/editor.py) then recompute
what the change needs and nothing more:
- collection: only for edits whose (prompt, target) is new, i.e. added or replaced edits;
- edit embeddings: only for prompts the pack has not embedded (a replaced edit keeps its prompt, so its embedding);
- the router: re-fitted on the new edit set with the pack's own encoder and verifier (retrieval: the calibration
  is re-run; the paper's gate is retrained, it memorises the edit set);
- the generator: fine-tuned from the pack's weights on every current vector (the new ones with a replay of the
  old), or retrained when the new edits are most of the set (`generator_plan`); untouched by a remove, and none
  for `weights="retrieved"`. A pack fitted with `weights="auto"` falls back to its collected vectors when the
  trained generator stops reproducing them, as a fit does (the editor resolves it).
Every edit keeps its integer id; added edits take the pack's `next_id` onwards, and ids are never reused. A
replaced edit keeps its id (it is the same prompt with a new answer), so `diff` can say "replaced".

This module is pure bookkeeping (no model, no pack import), so the editor and the CLI both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meg.diffusion.generator import GeneratorConfig
from meg.errors import InputError
from meg.requests import EditRequest, deduplicate, read_jsonl

# The generator rule (measured, docs/LOG.md 2026-12-01 "lifelong editing"): fine-tune the pack's generator for at
# most FINE_TUNE_STEPS steps of its own schedule (warm-up, cosine decay), the stop criterion checked every
# FINE_TUNE_EVAL_EVERY steps, on all current vectors with half of every batch from the new ones (the rest replays
# the old: `train_generator(focus=...)`), unless more than RETRAIN_ABOVE of the vectors are new: then the pack's
# weights and normalisation describe too little of the set, and a fine-tune with the new edits' share of every
# batch would cost as much as a retrain, so the generator is trained afresh with the full budget, as a fit would.
# On the reference model (256 CounterFact edits + 44) this stopped on the criterion after 200 steps (97 s): old and
# new edits at relative L2 0.115 / 0.152, Rel-AG 100 / 100; a retrain stopped after 1,000 steps (954 s): 0.107 /
# 0.104, Rel-AG 100 / 100. On the tests' tiny set-up (12 + 4 edits) 300 steps gave 0.30 / 0.30 and all edits.
# A generator trained on fewer than RETRAIN_BELOW vectors is retrained too: its per-dimension normalisation was
# estimated from too few of them (from one vector every spread is 0, floored to 1e-12, and any new vector maps to
# ~1e9: the README's one-edit pack plus one edit answered " Brussels." for "Rome" after a fine-tune). With the
# tests' 12 vectors a fine-tune answered every edit, as a retrain did; retraining on so few takes seconds.
FINE_TUNE_STEPS = 300
FINE_TUNE_EVAL_EVERY = 50
RETRAIN_ABOVE = 0.5
RETRAIN_BELOW = 8


def _key(prompt: str) -> str:
    """Prompts match as `deduplicate` matches them within one file: the same text up to surrounding spaces."""
    return prompt.strip()


@dataclass
class Change:
    """An operation's result as rows: for each edit after it, its request, its id, and the row of the old pack
    whose collected vector (`vector_from`) and prompt embedding (`embedding_from`) carry over (-1: compute)."""

    operation: str
    requests: list[EditRequest]
    ids: list[int]
    next_id: int
    vector_from: list[int]
    embedding_from: list[int]
    added: list[int] = field(default_factory=list)  # ids
    replaced: list[int] = field(default_factory=list)  # ids whose request changed
    unchanged: list[int] = field(default_factory=list)  # ids given again with the same request (nothing to do)
    removed: list[int] = field(default_factory=list)  # ids
    duplicates: list[str] = field(default_factory=list)  # prompts given twice in the input: the later one won

    @property
    def recollect(self) -> list[int]:
        """Rows whose vector must be collected."""
        return [i for i, row in enumerate(self.vector_from) if row < 0]

    @property
    def count(self) -> int:
        """How many edits the operation changed (the history's `count`)."""
        return len(self.added) + len(self.replaced) + len(self.removed)

    def report(self) -> dict[str, Any]:
        """The ids each kind of change touched, for the pack's history."""
        out = {"added": self.added, "replaced": self.replaced, "removed": self.removed}
        if self.unchanged:
            out["unchanged"] = self.unchanged
        if self.duplicates:
            out["duplicate_prompts"] = self.duplicates
        return out


def plan_add(requests: Sequence[EditRequest], ids: Sequence[int], next_id: int, new: Sequence[EditRequest],
             operation: str = "add") -> Change:
    """The edit set after adding `new`: an edit whose prompt matches one in the pack replaces it in place, keeping
    its id (the later edit wins, as within one edit file); with `operation="replace"` every edit must match one."""
    new, duplicates = deduplicate(list(new))
    if not new:
        raise InputError(f"{operation}: no edit requests given")
    at = {_key(r.prompt): row for row, r in enumerate(requests)}
    if operation == "replace":
        missing = [r.prompt for r in new if _key(r.prompt) not in at]
        if missing:
            raise InputError(f"replace: no edit with prompt {missing[0]!r} in the pack"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + "; use add")
    change = Change(operation, list(requests), list(ids), next_id, list(range(len(requests))),
                    list(range(len(requests))), duplicates=duplicates)
    for request in new:
        row = at.get(_key(request.prompt))
        if row is None:
            change.requests.append(request)
            change.ids.append(change.next_id)
            change.vector_from.append(-1)
            change.embedding_from.append(-1)
            change.added.append(change.next_id)
            change.next_id += 1
            continue
        old = requests[row]
        if request == old:
            change.unchanged.append(ids[row])
            continue
        change.requests[row] = request
        change.replaced.append(ids[row])
        if (request.prompt, request.target) != (old.prompt, old.target):
            change.vector_from[row] = -1  # what collection trains on changed
        if request.prompt != old.prompt:
            change.embedding_from[row] = -1  # the same edit with other spaces: embed the text the pack now holds
    return change


def resolve(requests: Sequence[EditRequest], ids: Sequence[int], keys: Sequence[int | str]) -> list[int]:
    """Rows of the edits named by `keys` (ids or prompts); an edit the pack does not hold is a one-line error."""
    by_id = {i: row for row, i in enumerate(ids)}
    by_prompt = {_key(r.prompt): row for row, r in enumerate(requests)}
    rows = []
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise InputError(f"remove: an edit is named by its id (an integer) or its prompt, got {key!r}")
        row = by_id.get(key) if isinstance(key, int) else by_prompt.get(_key(key))
        if row is None:
            what = f"id {key}" if isinstance(key, int) else f"prompt {key!r}"
            raise InputError(f"remove: no edit with {what} in the pack")
        rows.append(row)
    return sorted(set(rows))


def plan_remove(requests: Sequence[EditRequest], ids: Sequence[int], next_id: int,
                keys: Sequence[int | str]) -> Change:
    """The edit set without the edits named by `keys`; every other edit keeps its row data and id."""
    if not keys:
        raise InputError("remove: no edits named")
    gone = set(resolve(requests, ids, keys))
    if len(gone) == len(requests):
        raise InputError(f"remove: that would remove all {len(requests)} edits; a pack needs at least one")
    kept = [row for row in range(len(requests)) if row not in gone]
    return Change("remove", [requests[r] for r in kept], [ids[r] for r in kept], next_id, kept, list(kept),
                  removed=[ids[r] for r in sorted(gone)])


def read_removals(path: str | Path) -> list[int | str]:
    """Edits to remove from a JSONL file: per line an id (integer), a prompt (string), or an object with `id` or
    `prompt` (so an edit file itself names its edits by prompt)."""
    keys: list[int | str] = []
    for number, row in enumerate(read_jsonl(path)):
        if isinstance(row, dict):
            row = row["id"] if "id" in row else row.get("prompt")
        if isinstance(row, bool) or not isinstance(row, (int, str)) or (isinstance(row, str) and not row.strip()):
            raise InputError(f"{path} record {number}: expected an edit id (integer), a prompt (string), or an "
                             f"object with 'id' or 'prompt', got {row!r}")
        keys.append(row)
    if not keys:
        raise InputError(f"{path}: no edits named")
    return keys


def generator_plan(change: Change, config: GeneratorConfig | None,
                   trained_on: int) -> tuple[str, GeneratorConfig | None]:
    """("none" | "keep" | "fine-tune" | "retrain", the training config): what the generator needs after `change`,
    for a pack whose generator was trained on `trained_on` vectors.

    No generator (retrieved weights): nothing. No vector changed (a remove): keep it; the removed edits'
    conditions are simply never routed to any more, and every other edit's condition and vector are as before.
    Otherwise fine-tune, unless more than RETRAIN_ABOVE of the vectors are new or the generator was trained on
    fewer than RETRAIN_BELOW (the rule and its measurement are at the constants)."""
    if config is None:
        return "none", None
    changed = len(change.recollect)
    if changed == 0:
        return "keep", None
    if changed > RETRAIN_ABOVE * len(change.requests) or trained_on < RETRAIN_BELOW:
        return "retrain", config
    return "fine-tune", fine_tune_config(config)


def fine_tune_config(config: GeneratorConfig, steps: int | None = None) -> GeneratorConfig:
    """The pack's generator settings with the fine-tuning budget: at most `steps` steps of the same schedule shape
    (its warm-up scaled down with the budget), the stop criterion checked every FINE_TUNE_EVAL_EVERY steps."""
    steps = min(FINE_TUNE_STEPS if steps is None else steps, config.max_steps)
    warmup = min(config.warmup_steps, steps // 10)
    return replace(config, max_steps=steps, warmup_steps=warmup,
                   eval_every=max(min(FINE_TUNE_EVAL_EVERY, config.eval_every, steps), 1))


def same_fact(new: EditRequest, old: EditRequest) -> bool:
    """Given subjects (when both edits have one) agree, case-insensitively; the router decides the relation."""
    return new.subject is None or old.subject is None or new.subject.strip().lower() == old.subject.strip().lower()


def conflict(new_id: int, new: EditRequest, old_id: int, old: EditRequest) -> dict[str, Any]:
    """One possible conflict for the report: two kept edits the router takes for one fact, with other targets."""
    return {"id": new_id, "prompt": new.prompt, "target": new.target,
            "earlier_id": old_id, "earlier_prompt": old.prompt, "earlier_target": old.target}


def diff(before: Any, after: Any) -> dict[str, Any]:
    """Edits added, removed and replaced from pack `before` to pack `after`, by id (ids are stable within one
    pack's line of operations; packs fitted separately number their edits independently)."""
    old = dict(zip(before.ids, before.requests))
    new = dict(zip(after.ids, after.requests))
    first = [(p.history or [{}])[0] for p in (before, after)]  # the fit (or migration) both descend from
    return {
        "added": [(i, new[i]) for i in after.ids if i not in old],
        "removed": [(i, old[i]) for i in before.ids if i not in new],
        "replaced": [(i, old[i], new[i]) for i in after.ids if i in old and old[i] != new[i]],
        "same_lineage": first[0] == first[1] and before.base_fingerprint == after.base_fingerprint,
    }
