"""`meg eval`: evaluate an existing edit pack on a data file with the paper's protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, FirstNOption, ModelOption, SkipInvalidOption, TrustModelsOption,
    check_count, check_file, check_model_device, check_out, command_line, friendly_errors, trusted_models,
)


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack directory")],
    out: Annotated[Path, typer.Option(help="run directory (config, records, report)")],
    model: ModelOption = "reference",
    data: DataOption = None,
    n: FirstNOption = None,
    overwrite: Annotated[bool, typer.Option(help="discard a previous run in --out")] = False,
    skip_invalid: SkipInvalidOption = False,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Score the pack's edited model on the first N records; write the report into --out."""
    from meg.distributed import ranks
    from meg.evaluation.runner import evaluate_pack

    check_count(n, "--n")
    check_file(data, "--data")
    check_out(out, "--out")
    check_model_device(model, device)
    evaluate_pack(pack, model, str(data) if data else None, n, out, overwrite, device, command_line(),
                  skip_invalid=skip_invalid, trust_models=trusted_models(trust_pack_models))
    if ranks().main:  # under `accelerate launch` rank 0 wrote the report
        typer.echo((out / "report.md").read_text())
