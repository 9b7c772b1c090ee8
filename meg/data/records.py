"""Reading published data-set files (a JSON list of objects) and checking their fields.

Every check fails with ONE line naming the file, the record index and the field as the file spells it, e.g.
`counterfact-edit.json record 17: field 'target_new' must be a non-empty string, got ''`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from meg.errors import InputError
from meg.files import read_text

Record = dict[str, Any]
T = TypeVar("T")


def where(path: Path, index: int) -> str:
    """The error prefix of one record: the file's name and the record's 0-based index."""
    return f"{path.name} record {index}"


def read_records(path: str | Path) -> list[Record]:
    """A JSON file holding a list of objects (the published format of CounterFact, ZsRE and KnowEdit)."""
    path = Path(path)
    text = read_text(path, "data file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path.name}: invalid JSON at line {err.lineno} ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{path.name}: JSON nested too deeply") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{path.name}: expected a non-empty JSON list of records")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"{where(path, index)}: expected a JSON object, got {type(record).__name__}")
    return data


def parse_each(path: Path, records: list[Record], parse: Callable[[Record, str, int], T], skip_invalid: bool = False) -> list[T]:
    """`parse(record, where, index)` for every record. The first invalid record raises its one-line error,
    unless `skip_invalid`: then invalid records are dropped with one warning that counts them."""
    results: list[T] = []
    errors: list[str] = []
    for index, record in enumerate(records):
        try:
            results.append(parse(record, where(path, index), index))
        except InputError as err:
            if not skip_invalid:
                raise
            errors.append(str(err))
    if errors:
        warnings.warn(f"{path.name}: skipped {len(errors)} invalid record(s); first: {errors[0]}", stacklevel=3)
    return results


def text(record: Record, field: str, at: str, label: str | None = None) -> str:
    """`record[field]`, which must be a non-empty string; `label` names a nested field (e.g. 'a.b') in errors."""
    label = label or field
    if field not in record:
        raise InputError(f"{at}: field {label!r} is missing")
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{at}: field {label!r} must be a non-empty string, got {_short(value)}")
    return value


def first_text(value: Any, field: str, at: str) -> str:
    """The first string of a value that is a string or a (possibly nested) list of strings.

    KnowEdit stores answers as "x", ["x", "alias"] or [["x", "alias"]]; the first string is the canonical one.
    """
    answer = optional_first_text(value, field, at)
    if answer is None:
        raise InputError(f"{at}: field {field!r} must be a non-empty string or list of strings, got {_short(value)}")
    return answer


def optional_first_text(value: Any, field: str, at: str) -> str | None:
    """Like `first_text`, but an absent or empty answer (None, "", [], [[]]) is None: the answer is unknown.

    A few published KnowEdit items have such empty answers; only a wrong type is an error.
    """
    while isinstance(value, list) and value:
        value = value[0]
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InputError(f"{at}: field {field!r} must be a string or list of strings, got {_short(value)}")
    return value


def text_list(record: Record, field: str, at: str, required: bool = True) -> list[str]:
    """`record[field]` as a list of non-empty strings (a single string counts as a list of one)."""
    if field not in record or record[field] is None:
        if required:
            raise InputError(f"{at}: field {field!r} is missing")
        return []
    value = record[field]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise InputError(f"{at}: field {field!r} must be a list of non-empty strings, got {_short(value)}")
    return items


def mapping(record: Record, field: str, at: str, required: bool = False) -> Record:
    """`record[field]`, which must be a JSON object (an empty one when the field is absent and not required)."""
    if required and field not in record:
        raise InputError(f"{at}: field {field!r} is missing")
    value = record.get(field, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{at}: field {field!r} must be a JSON object, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message, cut so the message stays one readable line."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


__all__ = ["Record", "first_text", "mapping", "optional_first_text", "parse_each", "read_records", "text", "text_list", "where"]
