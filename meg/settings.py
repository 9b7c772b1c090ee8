"""What every config dataclass shares: a strict JSON round trip, one validation style, and help text.

A config class subclasses `Settings` and declares its fields with `setting(default, "help")`. On construction
(`__post_init__`) each value is checked against its annotation (int, float, bool, str, Literal choices, None,
tuples, nested `Settings`, which may arrive as dicts from JSON), then against the class's `rules()`, value
constraints as `{field: (ok, "what is valid")}`. Every failure is one line, `<Class>.<field> must be <what is
valid>, got <value>`, before any work starts. `from_dict` rejects unknown fields (a typo in a config file or
a pack written by another version fails loudly instead of being dropped). `help_lines()` lists every field
with its type, default and help, for `meg edit --help-config`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from meg.errors import InputError

T = TypeVar("T", bound="Settings")
Rules = dict[str, tuple[bool, str]]


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 (dataclass metadata name)
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with help text (shown by `meg edit --help-config`)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_settings(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Settings)


def _describe(kind: Any) -> str:
    """A type as users read it: 'an integer', 'one of: a, b', 'a number or null'."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "an object"}
    if kind in names:
        return names[kind]
    return f"a {kind.__name__} object" if _is_settings(kind) else str(kind)


def _convert(kind: Any, value: Any) -> tuple[bool, Any]:
    """(value fits `kind`, the value converted: int -> float, list -> tuple, dict -> nested Settings)."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return True, value
    if origin is Literal:
        return (isinstance(value, str | int | bool | type(None)) and value in args), value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(arg, value)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        item = args[0] if args else Any
        converted = [_convert(item, v) for v in value]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    if kind is type(None):
        return value is None, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if kind is dict or origin is dict:
        return isinstance(value, dict), value
    if _is_settings(kind):
        if isinstance(value, kind):
            return True, value
        if isinstance(value, dict):
            return True, kind.from_dict(value)
        return False, value
    return isinstance(value, kind), value


class Settings:
    """Mixin for a config dataclass (see module docstring)."""

    def __post_init__(self) -> None:
        self.check_types()
        self.check_rules()

    def check_types(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            ok, converted = _convert(hints[f.name], value)
            if not ok:
                raise InputError(f"{type(self).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r}")
            if converted is not value:
                object.__setattr__(self, f.name, converted)

    def check_rules(self) -> None:
        for name, (ok, valid) in self.rules().items():
            if not ok:
                raise InputError(f"{type(self).__name__}.{name} must be {valid}, got {getattr(self, name)!r}")

    def rules(self) -> Rules:
        """Value constraints beyond the types: {field: (ok, what is valid)}."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Settings) else list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        if not isinstance(data, dict):
            raise InputError(f"{cls.__name__}: expected a JSON object of settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown {cls.__name__} fields: {', '.join(map(str, unknown))}; valid: {', '.join(known)}")
        return cls(**data)

    @classmethod
    def _nested(cls, name: str) -> type[Settings] | None:
        kind = _hints(cls)[name]
        return next((a for a in (kind, *get_args(kind)) if _is_settings(a)), None)

    @classmethod
    def leaves(cls) -> list[str]:
        """Every leaf setting's dotted name, nested settings expanded (the count the docs report)."""
        out: list[str] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = cls._nested(f.name)
            out += [f"{f.name}.{n}" for n in nested.leaves()] if nested else [f.name]
        return out

    @classmethod
    def help_lines(cls, prefix: str = "") -> list[str]:
        """One line per setting: `name (type; default ...): help`; nested settings are expanded."""
        lines = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested, help_text = cls._nested(f.name), f.metadata.get("help", "")
            if nested:
                lines += [f"{prefix}{f.name}: {help_text}", *nested.help_lines(prefix + f.name + ".")]
                continue
            default = f.default if f.default is not dataclasses.MISSING else "(computed)"
            lines.append(f"{prefix}{f.name} ({_describe(_hints(cls)[f.name])}; default {default!r}): {help_text}")
        return lines


__all__ = ["Rules", "Settings", "setting"]
