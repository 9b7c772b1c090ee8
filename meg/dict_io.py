"""to_dict / from_dict for the config dataclasses saved as JSON (packs, results, caches).

One mixin instead of the same dozen lines in every config class: `from_dict` rejects unknown fields with a
one-line error naming the class, the offending fields and the valid ones, so a typo in a JSON config file or an
old pack read by a newer version fails loudly instead of being dropped.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

from meg.errors import InputError

T = TypeVar("T", bound="DictIO")


class DictIO:
    """Mixin for a dataclass: `to_dict()` (nested dataclasses become dicts) and a strict `from_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown {cls.__name__} fields: {', '.join(unknown)}; valid: {', '.join(known)}")
        return cls(**data)


__all__ = ["DictIO"]
