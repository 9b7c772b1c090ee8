"""ZsRE (Levy et al. 2017, as used by MEND and KnowEdit): question -> short answer edits.

Two published layouts, detected per file from its first record:
- MEND: `subject, src, rephrase, alt, answers[], pred, loc, loc_ans, cond`. `alt` is the new answer,
  `answers[0]` the true one, `loc`/`loc_ans` an unrelated Natural Questions pair ("nq question: ..." prefix).
- KnowEdit: `subject, prompt, target_new, ground_truth[], rephrase_prompt, locality{Relation_Specificity}`,
  parsed by meg.data.knowedit.

Questions and paraphrases are shown in the ZsRE question-answer template (meg.data.templates); KnowEdit's
locality prompts are sentence prefixes and keep the plain template.
"""

from __future__ import annotations

from pathlib import Path

from meg.data.facts import Fact
from meg.data.knowedit import is_knowedit_record, parse_knowedit_record
from meg.data.records import Record, first_text, parse_each, read_records, text, where
from meg.errors import InputError
from meg.requests import EditRequest, request_from_dict

Parsed = tuple[EditRequest, list[Fact]]

NQ_PREFIX = "nq question: "


def is_mend_record(record: Record) -> bool:
    """MEND's layout: the question is `src`, the new answer `alt`."""
    return "src" in record and "alt" in record


def strip_nq_prefix(question: str) -> str:
    """MEND stores NQ questions as 'nq question: who ...'; the prefix is not part of the question."""
    return question[len(NQ_PREFIX) :] if question.startswith(NQ_PREFIX) else question


def _answers(record: Record, at: str) -> str:
    if not isinstance(record.get("answers"), list) or not record["answers"]:
        raise InputError(f"{at}: field 'answers' must be a non-empty list of strings, got {record.get('answers')!r}")
    return first_text(record["answers"], "answers", at)


def _mend_facts(record: Record, at: str, index: int) -> list[Fact]:
    """Question and paraphrase -> true answer; NQ question -> its answer; all in the ZsRE template.

    Independent of `alt`: two published MEND records have an empty new answer but valid true facts.
    """
    question, paraphrase, truth = text(record, "src", at), text(record, "rephrase", at), _answers(record, at)
    loc, loc_answer = strip_nq_prefix(text(record, "loc", at)), text(record, "loc_ans", at)
    return [Fact(question, truth, "zsre"), Fact(paraphrase, truth, "zsre"), Fact(loc, loc_answer, "zsre")]


def _parse_mend(record: Record, at: str, index: int) -> Parsed:
    """One MEND record -> (request: question -> alt, with paraphrase and NQ question; its true facts)."""
    facts = _mend_facts(record, at, index)
    request = request_from_dict(
        {"prompt": facts[0].prompt, "target": text(record, "alt", at), "subject": record.get("subject"),
         "paraphrases": [facts[1].prompt], "unrelated": [facts[2].prompt], "unrelated_answers": [facts[2].answer],
         "ground_truth": facts[0].answer, "case_id": record.get("case_id", index)},
        at,
    )  # fmt: skip
    return request, facts


def _knowedit_zsre(record: Record, at: str, index: int) -> Parsed:
    return parse_knowedit_record(record, at, index, template="zsre")


def _records(path: Path) -> tuple[list[Record], bool]:
    """The file's records and whether they are in MEND's layout (else KnowEdit's)."""
    records = read_records(path)
    if is_mend_record(records[0]):
        return records, True
    if is_knowedit_record(records[0]):
        return records, False
    found = ", ".join(sorted(records[0])) or "no fields"
    raise InputError(f"{where(path, 0)}: not a ZsRE record (expected MEND 'src'/'alt' or KnowEdit 'prompt'/'target_new'; found {found})")


def parse_zsre(path: str | Path, skip_invalid: bool = False) -> list[Parsed]:
    """Every record of a ZsRE file (MEND or KnowEdit layout) as (request, true facts).

    An invalid record raises a one-line InputError, or is dropped with a warning when `skip_invalid`.
    """
    path = Path(path)
    records, mend = _records(path)
    return parse_each(path, records, _parse_mend if mend else _knowedit_zsre, skip_invalid)


def load_zsre(path: str | Path, skip_invalid: bool = False) -> list[EditRequest]:
    """The edit requests of a ZsRE file: prompt = question, target = the new answer."""
    return [request for request, _ in parse_zsre(path, skip_invalid)]


def true_facts_zsre(path: str | Path) -> list[Fact]:
    """True facts: question and paraphrase -> true answer (ZsRE template), and the unrelated pairs
    (MEND: NQ question -> loc_ans in the ZsRE template; KnowEdit: locality prompt -> its answer, plain)."""
    path = Path(path)
    records, mend = _records(path)
    if mend:
        return [fact for facts in parse_each(path, records, _mend_facts) for fact in facts]
    return [fact for _, facts in parse_each(path, records, _knowedit_zsre) for fact in facts]


__all__ = ["NQ_PREFIX", "is_mend_record", "load_zsre", "parse_zsre", "strip_nq_prefix", "true_facts_zsre"]
