"""CLI plumbing shared by the commands: one-line errors, checks of options and inputs, model and data loading,
option types.

Every command checks its options and input files before it loads a model or runs a stage (the `check_*` helpers
here name the option and what is valid), so a mistake costs seconds, not a finished fit.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from meg.errors import InputError, MegError

F = TypeVar("F", bound=Callable[..., Any])

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Hugging Face id or path of a causal LM; 'reference' = the shipped model")
]
DeviceOption = Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda, cuda:0, mps, or auto (a model too large "
                                           "for one GPU is spread over them)")]
DtypeOption = Annotated[str, typer.Option(help="float32, or bfloat16: the base model runs in bf16 for collection and "
                                          "the generator trains under bf16 autocast (collected vectors stay float32)")]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", "-d", help="edit data: CounterFact / ZsRE / KnowEdit JSON or a JSONL edit file "
                 "(default: the shipped CounterFact sample)"),
]
NOption = Annotated[int, typer.Option("--n", "-n", help="use the first N records")]
FirstNOption = Annotated[int | None, typer.Option("--n", "-n", help="first N usable records (default: all)")]
SkipInvalidOption = Annotated[bool, typer.Option(help="drop invalid records of the data file (one warning counts "
                                                 "them) instead of stopping at the first")]
TrustModelsOption = Annotated[str | None, typer.Option(help="comma-separated encoder / verifier models a pack may "
                                                       "name besides the shipped ones (a pack is data: it does not "
                                                       "choose what gets loaded unless you say so)")]

INPUT_EXIT, BUG_EXIT = 2, 1
REPORT = "internal error, please report it (with the command, this line and the output of `meg env`)"


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def _is_input_error(err: BaseException) -> bool:
    """Errors the user can fix: bad input (MegError), files and directories (OSError), memory."""
    return isinstance(err, MegError | OSError | MemoryError) or type(err).__name__ == "OutOfMemoryError"


def _warn(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001 (showwarning's API)
    typer.echo(f"warning: {message}", err=True)


def friendly_errors(command: F) -> F:
    """Print a user error as one line `error: ...` and exit 2; anything else is a bug: one line asking for a
    report, exit 1. Warnings print as one line `warning: ...`. Set MEG_DEBUG=1 for the full traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _warn
            try:
                return command(*args, **kwargs)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise
            except Exception as err:
                if os.environ.get("MEG_DEBUG"):
                    raise
                if _is_input_error(err):
                    typer.echo(f"error: {_one_line(err)}", err=True)
                    raise typer.Exit(INPUT_EXIT) from None
                typer.echo(f"error: {REPORT}: {type(err).__name__}: {_one_line(err)[:300]} "
                           "(MEG_DEBUG=1 shows the traceback)", err=True)
                raise typer.Exit(BUG_EXIT) from None

    return wrapper  # type: ignore[return-value]


# --- checks of options and inputs, before any model is loaded ---


def check_count(value: int | None, option: str, minimum: int = 1) -> int | None:
    """An integer option that must be >= `minimum` (None: not given)."""
    if value is not None and value < minimum:
        raise InputError(f"{option} must be >= {minimum}, got {value}")
    return value


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_file(path: Path | None, option: str) -> Path | None:
    """An input file option: it must exist and be a file (its contents are checked by its reader)."""
    if path is None:
        return None
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory, expected a file")
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    return path


def check_out(path: Path | None, option: str) -> Path | None:
    """An output directory option: creatable (not a file, not under one)."""
    from meg.files import check_creatable

    if path is not None:
        try:
            check_creatable(path)
        except InputError as err:
            raise InputError(f"{option} {err}") from None
    return path


def check_stem(name: str | None, option: str = "--name") -> str | None:
    """A results file stem: a plain name (it must not lead out of the results directory)."""
    if name is not None and (not name.strip() or Path(name).name != name or name in (".", "..")):
        raise InputError(f"{option} must be a plain file name without a directory, got {name!r}")
    return name


def check_dtype(dtype: str, device: str) -> str:
    """--dtype: float32, or bfloat16 where the device computes in it."""
    import torch

    if dtype not in ("float32", "bfloat16"):
        raise InputError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise InputError(f"--dtype bfloat16: the GPU of --device {device} does not support bf16; use float32")
    return dtype


def check_model_device(model: str, device: str) -> None:
    """The model (a local path must be a model directory) and the device (it must exist here)."""
    from meg.models import check_device, check_model_name

    check_device(device)
    check_model_name(model)


def model_config(model: str) -> Any:
    """The model's config, read without its weights, for checks before the model loads; None when it cannot be
    read here (loading the model then says why)."""
    from transformers import AutoConfig

    from meg.models import resolve_model_id

    try:
        return AutoConfig.from_pretrained(resolve_model_id(model))
    except Exception:  # noqa: BLE001 (transformers raises many types; the model load reports the problem)
        return None


def check_layers(model: str, layers: list[int | None], option: str) -> None:
    """Every layer of an option is one of the model's (read from its config), before the model loads."""
    from meg.architectures import check_layer

    count = getattr(model_config(model), "num_hidden_layers", None)
    for layer in layers:
        if layer is not None and isinstance(count, int):
            try:
                check_layer(layer, count)
            except InputError as err:
                raise InputError(f"{option}: {err}") from None


def check_prompts_fit(model: str, texts: list[str], names: list[str], max_new_tokens: int,
                      targets: list[str] | None = None, hint: str = "shorten the prompt or lower --max-new-tokens") -> None:
    """Refuse before the model loads a templated prompt with no room for `max_new_tokens` in the model's context
    (and, with `targets`, an edit whose prompt + target is longer than it), read from the model's config and
    tokenizer alone; nothing is checked when they cannot be read here."""
    from meg.models import context_and_tokenizer
    from meg.prompts import encode_answers

    limit, tokenizer = context_and_tokenizer(model)
    if limit is None or not texts:
        return
    for name, text, ids in zip(names, texts, tokenizer(texts)["input_ids"]):
        if len(ids) + max_new_tokens > limit:
            raise InputError(f"{name} ({text[:50]!r}) is {len(ids)} tokens; with {max_new_tokens} generated tokens it "
                             f"exceeds the model's context of {limit} tokens ({hint})")
    if targets is not None:
        encode_answers(tokenizer, texts, targets, max_length=limit, names=names)


def check_edits_fit(model: str, requests: list, template: Any, source: Path | None) -> None:
    """`check_prompts_fit` for edits: each templated prompt, the tokens generated to check the edit
    (meg.decoding.MAX_NEW_TOKENS), and prompt + target fit the model's context."""
    from meg.decoding import MAX_NEW_TOKENS

    where = source.name if source is not None else "edit"
    check_prompts_fit(model, [template.format(r.prompt) for r in requests],
                      [f"{where} record {i}" for i in range(len(requests))], MAX_NEW_TOKENS,
                      [r.target for r in requests], hint="shorten the prompt")


def split_names(text: str | None, option: str, allow_empty: bool = False) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list is refused unless `allow_empty`."""
    names = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not names and not allow_empty:
        raise InputError(f"{option} must name at least one, got {text!r}")
    return names


def trusted_models(text: str | None) -> list[str]:
    """The --trust-pack-models list."""
    return split_names(text, "--trust-pack-models", allow_empty=True)


def command_line() -> str:
    """The command as typed, for result files ("the command behind every number")."""
    return "meg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_ints(text: str | None, name: str, minimum: int | None = None) -> list[int] | None:
    """'0,2,4' -> [0, 2, 4]; None stays None; an empty list, or a value below `minimum`, is refused."""
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{name} must list at least one integer, got {text!r}")
    if minimum is not None and min(values) < minimum:
        raise InputError(f"{name} values must be >= {minimum}, got {min(values)}")
    return values


def load_data(data: Path | None, n: int | None, skip_invalid: bool = False):
    """The edit dataset at `data` (or the shipped demo sample) cut to its first n records (n >= 1, at most the
    records there are)."""
    from dataclasses import replace

    from meg.data import load_dataset
    from meg.data.defaults import demo_dataset

    check_count(n, "--n")
    check_file(data, "--data")
    dataset = demo_dataset() if data is None else load_dataset(data, skip_invalid=skip_invalid)
    if n is not None and n > len(dataset.requests):
        raise InputError(f"--n {n} is more than the {len(dataset.requests)} records of {dataset.name}")
    return replace(dataset, requests=dataset.requests[:n]) if n else dataset


def read_json_option(path: Path | None, option: str = "--config") -> dict[str, Any] | None:
    """A JSON object from a --config file (None when not given)."""
    from meg.files import read_user_json

    if path is None:
        return None
    check_file(path, option)
    data = read_user_json(path, "JSON config")
    if not isinstance(data, dict):
        raise InputError(f"{option} {path}: the config must be a JSON object, got {type(data).__name__}")
    return data


def read_config(path: Path | None, **overrides: Any):
    """A MegConfig from a --config JSON file, with CLI options that were given taking precedence."""
    from meg.config import MegConfig

    data = read_json_option(path) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return MegConfig.from_dict(data)
