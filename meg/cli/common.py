"""CLI plumbing shared by the commands: one-line errors, model and data loading, option types."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meg.errors import MegError

F = TypeVar("F", bound=Callable[..., Any])

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Hugging Face id or path of a causal LM; 'reference' = the shipped model")
]
DeviceOption = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda:0")]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", "-d", help="edit data: CounterFact / ZsRE / KnowEdit JSON or a JSONL edit file "
                 "(default: the shipped CounterFact sample)"),
]
NOption = Annotated[int, typer.Option("--n", "-n", help="use the first N records")]
FirstNOption = Annotated[int | None, typer.Option("--n", "-n", help="first N usable records (default: all)")]


def friendly_errors(command: F) -> F:
    """Print a user error as one line and exit 2; set MEG_DEBUG=1 for the full traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (MegError, FileExistsError, FileNotFoundError) as err:
            if os.environ.get("MEG_DEBUG"):
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def command_line() -> str:
    """The command as typed, for result files ("the command behind every number")."""
    return "meg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_ints(text: str | None, name: str) -> list[int] | None:
    """'0,2,4' -> [0, 2, 4]; None stays None."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MegError(f"{name} must be comma-separated integers, got {text!r}") from None


def load_data(data: Path | None, n: int | None):
    """The edit dataset at `data` (or the shipped demo sample) cut to its first n records."""
    from dataclasses import replace

    from meg.data import load_dataset
    from meg.data.defaults import demo_dataset

    dataset = demo_dataset() if data is None else load_dataset(data)
    return replace(dataset, requests=dataset.requests[:n]) if n else dataset


def read_json_option(path: Path | None) -> dict[str, Any] | None:
    """A JSON object from a --config file (None when not given)."""
    if path is None:
        return None
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MegError(f"{path}: cannot read JSON config ({err})") from None
    if not isinstance(data, dict):
        raise MegError(f"{path}: the config must be a JSON object")
    return data


def read_config(path: Path | None, **overrides: Any):
    """A MegConfig from a --config JSON file, with CLI options that were given taking precedence."""
    from meg.config import MegConfig

    data = read_json_option(path) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return MegConfig.from_dict(data)
