"""`meg run`: edit the first N records in one batch with a method, then evaluate (paper protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, FirstNOption, ModelOption,
    command_line, friendly_errors, read_json_option,
)


@friendly_errors
def command(
    out: Annotated[Path, typer.Option(help="run directory (config, records, report)")],
    model: ModelOption = "reference",
    data: DataOption = None,
    n: FirstNOption = None,
    method: Annotated[str, typer.Option(help="editing method (see `meg.methods.METHODS`)")] = "meg",
    config: Annotated[Path | None, typer.Option(help="JSON file with the method's config fields")] = None,
    template: Annotated[str | None, typer.Option(help="prompt template with {prompt}, or a data-set name")] = None,
    zsre_target: Annotated[str, typer.Option(help="ZsRE edit target: new (alt) or true (answers[0])")] = "new",
    keep_only_wrong: Annotated[bool | None, typer.Option(help="paper's filter (default: on for ZsRE)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every stage")] = 0,
    overwrite: Annotated[bool, typer.Option(help="discard a previous run in --out")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Edit, evaluate, and write report.json / report.md / report.png into --out."""
    from meg.evaluation.runner import RunConfig, run_edit_and_eval

    settings = RunConfig(model=model, data=str(data) if data else None, n=n, method=method,
                         method_config=read_json_option(config), template=template, zsre_target=zsre_target,
                         keep_only_wrong=keep_only_wrong, seed=seed, device=device)
    run_edit_and_eval(settings, out, overwrite=overwrite, command=command_line())
    typer.echo((out / "report.md").read_text())
