"""Edit requests: what a user asks the model to learn, and the JSONL format they come in.

JSONL edit format, one object per line:
    {"prompt": "The mother tongue of Danielle Darrieux is", "target": "English",
     "subject": "Danielle Darrieux",                       # optional, used by subject-aware routers
     "paraphrases": ["Danielle Darrieux's mother tongue is"],  # optional, extra phrasings of the same query
     "unrelated": ["The mother tongue of Michel Rocard is"]}   # optional, queries that must NOT change
Other keys (`case_id`, `ground_truth`, `unrelated_answers`: the true answer of each unrelated query, "" when
unknown) are kept when present; they serve evaluation only. Duplicate prompts: the later record wins
(`deduplicate` reports which ones were replaced).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meg.errors import InputError
from meg.files import atomic_write_text


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: the model should answer `prompt` with `target`.

    `prompt` is the raw query (a question or a sentence prefix); the pack's prompt template turns it into the
    text the LM sees. `paraphrases` and `unrelated` are optional: evaluation uses them, and the editor may use
    the paraphrases a user gives as extra training phrasings.
    """

    prompt: str
    target: str
    subject: str | None = None
    paraphrases: tuple[str, ...] = ()
    unrelated: tuple[str, ...] = ()
    ground_truth: str | None = None
    case_id: str | None = None
    unrelated_answers: tuple[str, ...] = ()  # true answer per unrelated query ("" unknown); evaluation only

    def __post_init__(self) -> None:
        where = f"edit {self.case_id!r}" if self.case_id is not None else "edit"
        for name in ("prompt", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        if self.subject is not None and not isinstance(self.subject, str):
            raise InputError(f"{where}: field 'subject' must be a string, got {self.subject!r}")
        for name in ("paraphrases", "unrelated"):
            value = getattr(self, name)
            if not all(isinstance(v, str) and v.strip() for v in value):
                raise InputError(f"{where}: field {name!r} must be a list of non-empty strings")
        answers = self.unrelated_answers
        if not all(isinstance(v, str) for v in answers) or (answers and len(answers) != len(self.unrelated)):
            raise InputError(f"{where}: field 'unrelated_answers' must be a list of strings, one per unrelated query")

    def for_editing(self) -> EditRequest:
        """The request without evaluation-only fields, as an editing method may see it in a benchmark."""
        return replace(self, paraphrases=(), unrelated=(), ground_truth=None, unrelated_answers=())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["paraphrases"], data["unrelated"] = list(self.paraphrases), list(self.unrelated)
        data["unrelated_answers"] = list(self.unrelated_answers)
        return {k: v for k, v in data.items() if v not in (None, [])}


@dataclass(frozen=True)
class PseudoPair:
    """A (question, paraphrase) pair NOT in the edit set, used to tune the query encoder (paper stage 1).

    `subject` (optional) lets encoder tuning build hard negatives by swapping subjects between pairs.
    """

    question: str
    paraphrase: str
    subject: str | None = None


@dataclass(frozen=True)
class NegativePair:
    """A question and another question about the same subject but another relation (a verifier negative)."""

    question: str
    other: str
    subject: str


_KNOWN = {"prompt", "target", "subject", "paraphrases", "unrelated", "ground_truth", "case_id", "unrelated_answers"}
_ALIASES = {"target_new": "target", "rephrase_prompt": "paraphrases", "locality_prompt": "unrelated",
            "locality_ground_truth": "unrelated_answers"}


def request_from_dict(data: Any, where: str) -> EditRequest:
    """Build an EditRequest from one JSON object; `where` (e.g. 'edits.jsonl record 3') prefixes every error."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    data = {_ALIASES.get(k, k): v for k, v in data.items()}
    for name in ("prompt", "target"):
        if name not in data:
            raise InputError(f"{where}: missing field {name!r}")
    kwargs = {k: v for k, v in data.items() if k in _KNOWN}
    for name in ("paraphrases", "unrelated", "unrelated_answers"):
        value = kwargs.get(name, [])
        kwargs[name] = tuple([value] if isinstance(value, str) else value)
    for name in ("case_id", "ground_truth"):
        if kwargs.get(name) is not None:
            kwargs[name] = str(kwargs[name])
    try:
        return EditRequest(**kwargs)
    except InputError as err:
        raise InputError(f"{where}: {str(err).split(': ', 1)[-1]}") from None
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL file; blank lines are skipped; a bad line fails naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number}: invalid JSON ({err.msg})") from None
    return rows


def load_edit_file(path: str | Path) -> list[EditRequest]:
    """Read a JSONL edit file (format in the module docstring)."""
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: no edit records")
    return [request_from_dict(row, f"{path} record {i}") for i, row in enumerate(rows)]


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    """Write JSON objects as JSONL (atomically)."""
    atomic_write_text(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_edit_file(requests: Iterable[EditRequest], path: str | Path) -> None:
    """Write requests as JSONL (atomically)."""
    write_jsonl((r.to_json() for r in requests), path)


def deduplicate(requests: Sequence[EditRequest]) -> tuple[list[EditRequest], list[str]]:
    """Keep the LAST request for each prompt (the rule for duplicate or conflicting edits).

    Returns the kept requests in first-appearance order and the prompts whose earlier versions were dropped.
    """
    last: dict[str, EditRequest] = {}
    replaced: list[str] = []
    for request in requests:
        key = request.prompt.strip()
        if key in last:
            replaced.append(key)
        last[key] = request
    order = list(dict.fromkeys(r.prompt.strip() for r in requests))
    return [last[k] for k in order], replaced


def load_pseudo_pairs(path: str | Path) -> list[PseudoPair]:
    """JSONL with `question` and `paraphrase` (and optionally `subject`) per line."""
    pairs = []
    for i, row in enumerate(read_jsonl(path)):
        for name in ("question", "paraphrase"):
            if not isinstance(row, dict) or not isinstance(row.get(name), str) or not row[name].strip():
                raise InputError(f"{path} record {i}: field {name!r} must be a non-empty string")
        subject = row.get("subject")
        if subject is not None and (not isinstance(subject, str) or not subject.strip()):
            raise InputError(f"{path} record {i}: field 'subject' must be a non-empty string when given")
        pairs.append(PseudoPair(row["question"], row["paraphrase"], subject))
    return pairs


def load_negative_pairs(path: str | Path) -> list[NegativePair]:
    """JSONL with `question`, `other` and `subject` per line."""
    pairs = []
    for i, row in enumerate(read_jsonl(path)):
        for name in ("question", "other", "subject"):
            if not isinstance(row, dict) or not isinstance(row.get(name), str) or not row[name].strip():
                raise InputError(f"{path} record {i}: field {name!r} must be a non-empty string")
        pairs.append(NegativePair(row["question"], row["other"], row["subject"]))
    return pairs


def load_queries(path: str | Path) -> list[str]:
    """JSONL with `prompt` per line (unrelated queries for gate calibration)."""
    queries = []
    for i, row in enumerate(read_jsonl(path)):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise InputError(f"{path} record {i}: field 'prompt' must be a non-empty string")
        queries.append(row["prompt"])
    return queries


__all__ = [
    "EditRequest",
    "NegativePair",
    "load_negative_pairs",
    "PseudoPair",
    "deduplicate",
    "load_edit_file",
    "load_pseudo_pairs",
    "load_queries",
    "request_from_dict",
    "write_edit_file",
    "write_jsonl",
]
