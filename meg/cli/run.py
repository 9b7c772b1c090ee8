"""`meg run`: edit the first N records in one batch with a method, then evaluate (paper protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, FirstNOption, ModelOption, SkipInvalidOption,
    check_choice, check_count, check_file, check_model_device, check_out, command_line, friendly_errors,
    read_json_option,
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
    skip_invalid: SkipInvalidOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Edit, evaluate, and write report.json / report.md / report.png into --out."""
    from meg.distributed import ranks
    from meg.evaluation.runner import ZSRE_TARGETS, RunConfig, run_edit_and_eval
    from meg.methods import check_config

    check_count(n, "--n")
    check_choice(zsre_target, ZSRE_TARGETS, "--zsre-target")
    check_file(data, "--data")
    check_out(out, "--out")
    check_model_device(model, device)
    check_config(method, read_json_option(config))  # the data and --n are checked next, still before the model
    settings = RunConfig(model=model, data=str(data) if data else None, n=n, method=method,
                         method_config=read_json_option(config), template=template, zsre_target=zsre_target,
                         keep_only_wrong=keep_only_wrong, seed=seed, device=device, skip_invalid=skip_invalid)
    run_edit_and_eval(settings, out, overwrite=overwrite, command=command_line())
    if ranks().main:  # under `accelerate launch` rank 0 wrote the report
        typer.echo((out / "report.md").read_text())
