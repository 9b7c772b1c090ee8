"""Request bodies of the server (pydantic), as OpenAI clients send them, and how a bad one is reported.

Types are strict (a number sent as a string is refused, naming the field); fields this server does not implement
are refused when set to anything but their neutral value, and unknown fields are refused by name, so a client never
believes a setting took effect when it did not. `validation_error` turns pydantic's report into one line and the
field's name (OpenAI's `param`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic import ValidationInfo, field_validator

MAX_STOPS = 4  # OpenAI's limit on stop sequences
MAX_N = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _neutral(name: str, value: Any, neutral: Any, why: str = "this server does not implement it") -> Any:
    if value is not None and value != neutral:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"{name}={shown} is not supported ({why}); leave it out"
                         + ("" if neutral is None else f" or set it to {neutral!r}"))
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ValueError("must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
    if any(s == "" for s in stops):
        raise ValueError("a stop sequence must not be empty")
    return tuple(stops)


class _Sampling(_Body):
    """What completions and chat completions share."""

    model: StrictStr
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    stop: Any = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    presence_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None
    logit_bias: dict[str, Any] | None = None
    # meg-edit's extension: false answers with the unedited base model (as the model id "<name>:base" does)
    use_edits: StrictBool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        return _stop(value)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, value: float | None, info) -> float | None:
        return _neutral(info.field_name, value, 0.0)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict | None) -> dict | None:
        return _neutral("logit_bias", value or None, None)


class CompletionRequest(_Sampling):
    prompt: Any
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    echo: StrictBool | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            return value
        if isinstance(value, list) and value and all(isinstance(p, int) or isinstance(p, list) for p in value):
            raise ValueError("prompts given as token ids are not supported; send the text")
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        raise ValueError("must be a string or a list of strings")

    # Options this server accepts only at their neutral value (see `_neutral`).
    NEUTRAL: ClassVar[dict[str, Any]] = {"echo": False, "logprobs": None, "best_of": 1, "suffix": None}

    @field_validator(*NEUTRAL)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return _neutral(info.field_name, value, cls.NEUTRAL[info.field_name])


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None

    NEUTRAL: ClassVar[dict[str, Any]] = {"logprobs": False, "top_logprobs": None}

    @field_validator(*NEUTRAL)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return _neutral(info.field_name, value, cls.NEUTRAL[info.field_name])

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: dict | None) -> dict | None:
        if value is not None and value != {"type": "text"}:
            raise ValueError("only {'type': 'text'} is supported")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list | None) -> list | None:
        return _neutral("tools", value or None, None, "this server has no tool calling")

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none"):
            raise ValueError("tool_choice is not supported (this server has no tool calling)")
        return value


class EditChange(_Body):
    """POST /v1/edits: `edits` to add (a prompt already edited is replaced, keeping its id), or with
    mode "replace" new targets for prompts the pack already edits. Records in the edit-file format."""

    edits: Annotated[list[Any], Field(min_length=1)]
    mode: Literal["add", "replace"] = "add"


# --- reporting a validation error as OpenAI does: one message and the field ---


def _param(loc: tuple) -> str | None:
    """('messages', 0, 'content') -> 'messages[0].content'; the type tags pydantic adds for unions are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.isidentifier() and not part[:1].isupper()) and part not in _TAGS:
            out += f".{part}" if out else part
    return out or None


_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def _message(error: dict[str, Any], param: str | None) -> str:
    kind, msg, name = error["type"], error["msg"], param or "body"
    if kind == "missing":
        return f"missing required field '{name}'"
    if kind == "extra_forbidden":
        return f"unknown field '{name}' (this server does not support it)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"invalid '{name}': {msg[:1].lower() + msg[1:]}" + ("" if kind == "value_error" else f", got {shown}")


def validation_error(err: ValidationError) -> tuple[str, str | None]:
    """(one-line message naming the field, the field) for the first error pydantic reports. For a field typed as a
    union, the error of its most specific member is chosen (the one that got furthest into the value)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    same = [e for e in errors if _param(e["loc"]) and _param(first["loc"]) and
            _param(e["loc"]).split("[")[0].split(".")[0] == _param(first["loc"]).split("[")[0].split(".")[0]]
    def rank(e: dict) -> tuple[int, int]:  # deepest first; a wrong value before a missing or an unknown field
        depth = len([p for p in e["loc"] if isinstance(p, int) or p not in _TAGS and "[" not in str(p)])
        return depth, {"extra_forbidden": 0, "missing": 1}.get(e["type"], 2)

    chosen = max(same or [first], key=rank)
    param = _param(chosen["loc"])
    return _message(chosen, param), param
