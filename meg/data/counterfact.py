"""CounterFact (ROME, Meng et al. 2022): one counterfactual edit per record, in two published layouts.

- flat (as repackaged by KnowledgeSpread / EasyEdit, the files in ../shared/data/counterfact):
  `case_id, prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth`
- ROME's original `counterfact.json`: `case_id`, `requested_rewrite {prompt with "{}" for the subject, subject,
  target_new {str}, target_true {str}}`, `paraphrase_prompts [...]`, `neighborhood_prompts [...]`.

The layout is detected per file from its first record. Each record yields an EditRequest (the edit and its
evaluation prompts) and the true facts it states (for training the reference model).
"""

from __future__ import annotations

from pathlib import Path

from meg.data.facts import Fact
from meg.data.records import Record, mapping, parse_each, read_records, text, text_list, where
from meg.errors import InputError
from meg.requests import EditRequest, request_from_dict

Parsed = tuple[EditRequest, list[Fact]]


def is_rome_record(record: Record) -> bool:
    """ROME's original layout nests the edit under `requested_rewrite`."""
    return "requested_rewrite" in record


def is_flat_record(record: Record) -> bool:
    """The flat layout: `target_new` is a string next to `locality_prompt`."""
    return "locality_prompt" in record and "target_new" in record and "case_id" in record


def _case_id(record: Record, at: str, index: int) -> str:
    """The record's `case_id` (CounterFact's stable id) as a string; the record index when absent."""
    value = record.get("case_id", index)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{at}: field 'case_id' must be an integer or a string, got {value!r}")
    return str(value)


def _parse_flat(record: Record, at: str, index: int) -> Parsed:
    """One flat record -> (request, facts: prompt, paraphrase and locality prompt with their true objects)."""
    prompt, target = text(record, "prompt", at), text(record, "target_new", at)
    subject, truth = text(record, "subject", at), text(record, "ground_truth", at)
    paraphrases = text_list(record, "rephrase_prompt", at, required=False)
    locality = text_list(record, "locality_prompt", at, required=False)
    locality_truth = text(record, "locality_ground_truth", at) if locality else None
    request = request_from_dict(
        {"prompt": prompt, "target": target, "subject": subject, "paraphrases": paraphrases,
         "unrelated": locality, "unrelated_answers": [locality_truth] * len(locality), "ground_truth": truth,
         "case_id": _case_id(record, at, index)},
        at,
    )  # fmt: skip
    facts = [Fact(p, truth) for p in (prompt, *paraphrases)]
    facts += [Fact(p, locality_truth) for p in locality if locality_truth is not None]
    return request, facts


def _parse_rome(record: Record, at: str, index: int) -> Parsed:
    """One ROME record -> (request, facts). Neighbourhood prompts share the true object (ROME's definition)."""
    rewrite = mapping(record, "requested_rewrite", at, required=True)
    template = text(rewrite, "prompt", at, "requested_rewrite.prompt")
    subject = text(rewrite, "subject", at, "requested_rewrite.subject")
    if "{}" not in template:
        raise InputError(f"{at}: field 'requested_rewrite.prompt' must contain '{{}}' for the subject")
    target = text(mapping(rewrite, "target_new", at, True), "str", at, "requested_rewrite.target_new.str")
    truth = text(mapping(rewrite, "target_true", at, True), "str", at, "requested_rewrite.target_true.str")
    prompt = template.replace("{}", subject)
    paraphrases = text_list(record, "paraphrase_prompts", at, required=False)
    neighbours = text_list(record, "neighborhood_prompts", at, required=False)
    request = request_from_dict(
        {"prompt": prompt, "target": target, "subject": subject, "paraphrases": paraphrases,
         "unrelated": neighbours, "unrelated_answers": [truth] * len(neighbours), "ground_truth": truth,
         "case_id": _case_id(record, at, index)},
        at,
    )  # fmt: skip
    return request, [Fact(p, truth) for p in (prompt, *paraphrases, *neighbours)]


def parse_counterfact(path: str | Path, skip_invalid: bool = False) -> list[Parsed]:
    """Every record of a CounterFact file as (request, true facts); the layout is detected from record 0.

    An invalid record raises a one-line InputError, or is dropped with a warning when `skip_invalid`.
    """
    path = Path(path)
    records = read_records(path)
    if is_rome_record(records[0]):
        parse = _parse_rome
    elif is_flat_record(records[0]):
        parse = _parse_flat
    else:
        raise InputError(
            f"{where(path, 0)}: not a CounterFact record (expected 'requested_rewrite' or "
            f"'target_new' + 'locality_prompt'; found {', '.join(sorted(records[0])) or 'no fields'})"
        )
    return parse_each(path, records, parse, skip_invalid)


def load_counterfact(path: str | Path, skip_invalid: bool = False) -> list[EditRequest]:
    """The edit requests of a CounterFact file (either layout): target = the new object."""
    return [request for request, _ in parse_counterfact(path, skip_invalid)]


def true_facts_counterfact(path: str | Path) -> list[Fact]:
    """The true facts a CounterFact file states, in file order (duplicates kept; callers de-duplicate).

    Flat: prompt, paraphrase -> ground_truth; locality prompt -> locality_ground_truth.
    ROME: prompt, paraphrases, neighbourhood prompts -> target_true.
    """
    return [fact for _, facts in parse_counterfact(path) for fact in facts]


__all__ = ["is_flat_record", "is_rome_record", "load_counterfact", "parse_counterfact", "true_facts_counterfact"]
