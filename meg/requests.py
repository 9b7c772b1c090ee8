"""Edit requests: what a user asks the model to learn, and the JSONL format they come in.

JSONL edit format, one object per line:
    {"prompt": "The mother tongue of Danielle Darrieux is", "target": "English",
     "subject": "Danielle Darrieux",                       # optional, used by subject-aware routers
     "paraphrases": ["Danielle Darrieux's mother tongue is"],  # optional, extra phrasings of the same query
     "unrelated": ["The mother tongue of Michel Rocard is"]}   # optional, queries that must NOT change
Other keys (`case_id`, `ground_truth`, `unrelated_answers`: the true answer of each unrelated query, "" when
unknown) are kept when present; they serve evaluation only. Any other key is ignored, except one that looks like a
misspelt field (`paraphrase`, `promt`): that is refused, naming the field it resembles. Duplicate prompts: the later
record wins (`deduplicate` reports which ones were replaced).
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meg.errors import InputError
from meg.files import atomic_write_text, read_text


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
        if self.subject is not None and (not isinstance(self.subject, str) or not self.subject.strip()):
            raise InputError(f"{where}: field 'subject' must be a non-empty string when given, got {self.subject!r}")
        for name in ("paraphrases", "unrelated", "unrelated_answers"):
            if isinstance(getattr(self, name), list):  # the API may pass lists; the request is frozen and hashable
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("paraphrases", "unrelated"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v.strip() for v in value):
                raise InputError(f"{where}: field {name!r} must be a list of non-empty strings")
        answers = self.unrelated_answers
        if not isinstance(answers, tuple) or not all(isinstance(v, str) for v in answers) or (
                answers and len(answers) != len(self.unrelated)):
            raise InputError(f"{where}: field 'unrelated_answers' must be a list of strings, one per unrelated query")
        for name in ("ground_truth", "case_id"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InputError(f"{where}: field {name!r} must be a string, got {getattr(self, name)!r}")
        for name in ("prompt", "target", "subject", "ground_truth", "case_id", *("paraphrases", "unrelated")):
            value = getattr(self, name)
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str) and not _encodable(text):
                    raise InputError(f"{where}: field {name!r} holds an unpaired surrogate (\\ud800-\\udfff); "
                                     "it cannot be written as UTF-8")

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
_LISTS = ("paraphrases", "unrelated", "unrelated_answers")
_NAMES = sorted(_KNOWN | set(_ALIASES))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    """A JSON value's type as the file spells it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _misspelt(key: Any) -> str | None:
    """The known field an unknown key most resembles, when it looks like a typo of it."""
    if not isinstance(key, str) or key in _NAMES:
        return None
    close = difflib.get_close_matches(key, _NAMES, n=1, cutoff=0.8)
    if not close or close[0] in key:  # `subject_id` is extra data about the subject, not a typo of it
        return None
    return _ALIASES.get(close[0], close[0])


def request_from_dict(data: Any, where: str) -> EditRequest:
    """Build an EditRequest from one JSON object; `where` (e.g. 'edits.jsonl record 3') prefixes every error."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in data:
        if (near := _misspelt(key)) is not None:
            raise InputError(f"{where}: unknown field {key!r} (did you mean {near!r}?)")
    data = {_ALIASES.get(k, k): v for k, v in data.items()}
    for name in ("prompt", "target"):
        if name not in data:
            raise InputError(f"{where}: missing field {name!r}")
    kwargs = {k: v for k, v in data.items() if k in _KNOWN}
    for name in _LISTS:
        value = kwargs.get(name)
        if value is None:
            value = []
        if not isinstance(value, str | list):
            raise InputError(f"{where}: field {name!r} must be a list of strings (or one string), got {_kind(value)}")
        kwargs[name] = tuple([value] if isinstance(value, str) else value)
    for name in ("case_id", "ground_truth"):
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise InputError(f"{where}: field {name!r} must be a string or an integer, got {_kind(value)}")
        if value is not None:
            kwargs[name] = str(value)
    try:
        return EditRequest(**kwargs)
    except InputError as err:
        raise InputError(f"{where}: {str(err).split(': ', 1)[-1]}") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL file; blank lines are skipped; a bad line fails naming the file and line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(read_text(path, "JSONL file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number}: invalid JSON ({err.msg})") from None
        except RecursionError:
            raise InputError(f"{path} line {number}: JSON nested too deeply") from None
    return rows


def load_edit_file(path: str | Path, skip_invalid: bool = False) -> list[EditRequest]:
    """Read a JSONL edit file (format in the module docstring). The first invalid record raises its one-line
    error, unless `skip_invalid`: then invalid records are dropped with one warning that counts them."""
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: no edit records")
    requests, errors = [], []
    for i, row in enumerate(rows):
        try:
            requests.append(request_from_dict(row, f"{path} record {i}"))
        except InputError as err:
            if not skip_invalid:
                raise
            errors.append(str(err))
    if errors:
        warnings.warn(f"{Path(path).name}: skipped {len(errors)} invalid record(s); first: {errors[0]}", stacklevel=2)
    if not requests:
        raise InputError(f"{path}: no valid edit records (all {len(rows)} are invalid; first: {errors[0]})")
    return requests


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
