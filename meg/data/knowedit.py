"""KnowEdit (Zhang et al. 2024, "A Comprehensive Study of Knowledge Editing for LLMs") benchmark files.

Layout shared by `benchmark_wiki_counterfact_train_cf.json`, `benchmark_wiki_recent_recent_train.json` and
KnowEdit's ZsRE (`knowedit_zsre_test_all.json`, read by meg.data.zsre):
`subject, prompt, target_new, ground_truth (str, list, nested list, or absent), rephrase_prompt (optional),
locality {Relation_Specificity: [{prompt, ground_truth}], ...}, portability {...}`.

Unrelated prompts are the `Relation_Specificity` locality prompts: other facts about the same subject that an
edit must leave alone. (`Forgetfulness` prompts ask about the edited relation itself and are not used.)
WikiBio (`text, labels, concept`) is long-form text generation, not a prompt -> answer edit: it is refused.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from meg.data.facts import Fact
from meg.data.records import Record, mapping, optional_first_text, parse_each, read_records, text, text_list, where
from meg.errors import InputError
from meg.requests import EditRequest, request_from_dict

Parsed = tuple[EditRequest, list[Fact]]

LOCALITY_KIND = "Relation_Specificity"
ALIAS_KIND = "Subject_Aliasing"  # portability prompts naming the subject by an alias
_PARAPHRASE_FIELDS = ("rephrase_prompt", "rephrase", "paraphrase_prompts")


def is_wikibio_record(record: Record) -> bool:
    """KnowEdit WikiBio records hold a passage (`text`) and its continuation (`labels`) instead of a prompt."""
    return "text" in record and "labels" in record and "prompt" not in record


def is_knowedit_record(record: Record) -> bool:
    """A KnowEdit edit: `prompt` + `target_new` with a `locality` or `portability` object."""
    return "prompt" in record and "target_new" in record and ("locality" in record or "portability" in record)


def refuse_wikibio(path: Path) -> None:
    """WikiBio cannot be turned into prompt -> answer edits; say so in one line."""
    raise InputError(
        f"{path.name}: KnowEdit WikiBio (long-form text continuation) is not supported; "
        "use a prompt -> answer data set (CounterFact, ZsRE, wiki_counterfact, wiki_recent)"
    )


def locality_pairs(record: Record, at: str) -> list[tuple[str, str | None]]:
    """(prompt, first true answer or None when empty) of each Relation_Specificity locality item."""
    items = mapping(record, "locality", at).get(LOCALITY_KIND, [])
    label = f"locality.{LOCALITY_KIND}"
    if not isinstance(items, list):
        raise InputError(f"{at}: field {label!r} must be a list of {{prompt, ground_truth}} objects")
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            raise InputError(f"{at}: field {label!r} must be a list of {{prompt, ground_truth}} objects")
        prompt = text(item, "prompt", at, f"{label}.prompt")
        # A few published items have an empty answer: the prompt still serves as an unrelated query.
        pairs.append((prompt, optional_first_text(item.get("ground_truth"), f"{label}.ground_truth", at)))
    return pairs


def subject_aliases(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """{edit prompt: [(alias prompt, expected answer)]} from each record's `portability.Subject_Aliasing`: the
    edit's question with its subject named another way. KnowEdit scores them as portability; `meg carryover` reads
    them as rephrasings of the edit. Items without an answer are skipped; a wrong layout is a one-line error."""
    path = Path(path)
    aliases: dict[str, list[tuple[str, str]]] = {}
    label = f"portability.{ALIAS_KIND}"
    for index, record in enumerate(read_records(path)):
        at = where(path, index)
        items = mapping(record, "portability", at).get(ALIAS_KIND, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise InputError(f"{at}: field {label!r} must be a list of {{prompt, ground_truth}} objects")
        pairs = [(text(item, "prompt", at, f"{label}.prompt"),
                  optional_first_text(item.get("ground_truth"), f"{label}.ground_truth", at)) for item in items]
        if pairs:  # a prompt edited twice keeps its later record's aliases (the later edit wins)
            aliases[text(record, "prompt", at)] = [(p, a) for p, a in pairs if a is not None]
    return aliases


def _paraphrases(record: Record, at: str) -> list[str]:
    for field in _PARAPHRASE_FIELDS:
        if record.get(field) is not None:
            return text_list(record, field, at)
    return []


def parse_knowedit_record(record: Record, at: str, index: int, template: str = "knowedit") -> Parsed:
    """One KnowEdit record (number `index`) -> (request, true facts); `template` is that of prompt and paraphrases.

    Facts: prompt and paraphrases -> ground_truth (when the record has one) in `template`; locality prompts
    -> their answers, always as sentence prefixes ("knowedit" template: the prompt as is).
    """
    prompt, target = text(record, "prompt", at), text(record, "target_new", at)
    truth = optional_first_text(record.get("ground_truth"), "ground_truth", at)  # absent in wiki_recent
    subject = text(record, "subject", at) if "subject" in record else None
    paraphrases = _paraphrases(record, at)
    locality = locality_pairs(record, at)
    case_id = record.get("case_id", index)  # KnowEdit has no ids: the record index
    request = request_from_dict(
        {"prompt": prompt, "target": target, "subject": subject, "paraphrases": paraphrases,
         "unrelated": [p for p, _ in locality], "unrelated_answers": [a or "" for _, a in locality],
         "ground_truth": truth, "case_id": case_id},
        at,
    )  # fmt: skip
    facts = [Fact(p, truth, template) for p in (prompt, *paraphrases)] if truth is not None else []
    facts += [Fact(p, answer, "knowedit") for p, answer in locality if answer is not None]
    return request, facts


def parse_knowedit(path: str | Path, template: str = "knowedit", skip_invalid: bool = False) -> list[Parsed]:
    """Every record of a KnowEdit file as (request, true facts); WikiBio and other layouts are refused.

    An invalid record raises a one-line InputError, or is dropped with a warning when `skip_invalid`.
    """
    path = Path(path)
    records = read_records(path)
    if is_wikibio_record(records[0]):
        refuse_wikibio(path)
    if not is_knowedit_record(records[0]):
        found = ", ".join(sorted(records[0])) or "no fields"
        raise InputError(f"{where(path, 0)}: not a KnowEdit record (expected 'prompt', 'target_new', 'locality'; found {found})")
    parse = partial(parse_knowedit_record, template=template)
    return parse_each(path, records, parse, skip_invalid)


def load_knowedit(path: str | Path, skip_invalid: bool = False) -> list[EditRequest]:
    """The edit requests of a KnowEdit file (wiki_counterfact, wiki_recent, or KnowEdit's ZsRE)."""
    return [request for request, _ in parse_knowedit(path, skip_invalid=skip_invalid)]


def true_facts_knowedit(path: str | Path) -> list[Fact]:
    """True facts of a KnowEdit file: prompt -> ground_truth when given, locality prompt -> its answer."""
    return [fact for _, facts in parse_knowedit(path) for fact in facts]


__all__ = [
    "is_knowedit_record",
    "is_wikibio_record",
    "load_knowedit",
    "parse_knowedit",
    "parse_knowedit_record",
    "subject_aliases",
    "true_facts_knowedit",
]
