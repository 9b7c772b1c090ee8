"""Data sets: loaders for CounterFact, ZsRE, KnowEdit and the JSONL edit format, behind one `load_dataset`.

    from meg.data import load_dataset
    data = load_dataset("../shared/data/counterfact/counterfact-edit.json")   # kind detected from the records
    data.requests[0].prompt, data.template.format(data.requests[0].prompt)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from meg.data.counterfact import is_flat_record, is_rome_record, load_counterfact, true_facts_counterfact
from meg.data.facts import Fact
from meg.data.knowedit import is_knowedit_record, is_wikibio_record, load_knowedit, refuse_wikibio, true_facts_knowedit
from meg.data.records import Record, read_records
from meg.data.templates import TEMPLATES, template_for
from meg.data.zsre import is_mend_record, load_zsre, true_facts_zsre
from meg.errors import InputError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest, load_edit_file

DatasetKind = Literal["auto", "counterfact", "zsre", "knowedit", "jsonl"]

_LOADERS: dict[str, Callable[[Path, bool], list[EditRequest]]] = {
    "counterfact": load_counterfact,
    "zsre": load_zsre,
    "knowedit": load_knowedit,
    "jsonl": load_edit_file,
}


@dataclass(frozen=True)
class Dataset:
    """Edit requests read from one file, with the prompt template their prompts are shown in."""

    name: str
    kind: str
    requests: list[EditRequest]
    template: PromptTemplate
    path: Path

    def __len__(self) -> int:
        return len(self.requests)


def _kind_of_record(record: Record) -> str | None:
    if is_rome_record(record) or is_flat_record(record):
        return "counterfact"
    if is_mend_record(record):
        return "zsre"
    if is_knowedit_record(record):
        # KnowEdit's ZsRE is the only KnowEdit file whose answers are lists next to a rephrased question.
        is_zsre = isinstance(record.get("ground_truth"), list) and "rephrase_prompt" in record
        return "zsre" if is_zsre else "knowedit"
    return None


def detect_kind(path: str | Path) -> str:
    """The data-set kind of a file: '.jsonl' is the user edit format, JSON files are told apart by record 0."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return "jsonl"
    first = read_records(path)[0]
    if is_wikibio_record(first):
        refuse_wikibio(path)
    kind = _kind_of_record(first)
    if kind is None:
        found = ", ".join(sorted(first)) or "no fields"
        raise InputError(f"{path.name}: cannot tell the data set from record 0 (fields: {found}); pass kind= one of {', '.join(_LOADERS)}")
    return kind


def load_dataset(
    path: str | Path, kind: DatasetKind = "auto", template: str | None = None, skip_invalid: bool = False
) -> Dataset:
    """Read the edit requests of `path`. `template` overrides the kind's prompt template (a name or a text).

    Published files are strict by default: the first invalid record raises a one-line InputError naming file,
    record and field. `skip_invalid=True` drops invalid records of a published file (JSON) with one warning;
    e.g. MEND's zsre_mend_train-1k.json has two records whose new answer `alt` is empty. A JSONL edit file is
    strict too, and `skip_invalid` applies to it the same way (the user asked for it by name).
    """
    path = Path(path)
    if kind not in get_args(DatasetKind):
        raise InputError(f"data set kind {kind!r} is not one of {', '.join(get_args(DatasetKind))}")
    resolved = detect_kind(path) if kind == "auto" else kind
    requests = _LOADERS[resolved](path, skip_invalid)
    return Dataset(path.stem, resolved, requests, template_for(resolved, template), path)


def sample_with_subject(requests: Sequence[EditRequest], n: int, seed: int) -> list[int]:
    """Indices of `n` requests (all if fewer) whose subject is named in their prompt, drawn with `seed` in draw
    order: the edits that locate-then-edit measurements can key at the subject's last token."""
    usable = [i for i, r in enumerate(requests) if r.subject and r.subject in r.prompt]
    return random.Random(seed).sample(usable, min(n, len(usable)))


__all__ = [
    "TEMPLATES",
    "Dataset",
    "DatasetKind",
    "Fact",
    "detect_kind",
    "load_counterfact",
    "load_dataset",
    "load_knowedit",
    "load_zsre",
    "sample_with_subject",
    "template_for",
    "true_facts_counterfact",
    "true_facts_knowedit",
    "true_facts_zsre",
]
