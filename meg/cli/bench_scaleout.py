"""`meg bench-scaleout`: neuron collection by one process and by several under `accelerate launch`, timed in one
run (settings interleaved), with the collected vectors compared bit for bit."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, NOption,
    check_count, check_model_device, check_out, check_stem, command_line, friendly_errors, load_data,
)


@friendly_errors
def command(
    model: ModelOption = "reference",
    data: DataOption = None,
    n: NOption = 1024,
    settings: Annotated[str, typer.Option(help="comma-separated PROCESSESxTHREADS settings; the first is the "
                                          "baseline of the speed-ups")] = "1x1,1x2,2x1",
    repeats: Annotated[int, typer.Option(help="times each setting runs (interleaved)")] = 2,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    name: Annotated[str, typer.Option(help="results file stem")] = "scaleout-collection",
    work_dir: Annotated[Path | None, typer.Option(help="scratch directory for the runs (default: a temporary "
                                                  "one, removed afterwards)")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Time neuron collection of the same N edits per setting; write JSON + markdown + PNG."""
    from meg.benchmarks.scaleout import Setting, measure_scaleout, write_scaleout

    chosen = [Setting.parse(s.strip()) for s in settings.split(",") if s.strip()]
    if not chosen:
        raise typer.BadParameter("give at least one setting", param_hint="--settings")
    check_count(repeats, "--repeats")
    check_out(out, "--out")
    check_stem(name)
    check_out(work_dir, "--work-dir")
    check_model_device(model, device)
    dataset = load_data(data, n)  # read and checked before any process starts
    job = {"model": model, "data": str(data.resolve()) if data else None, "n": n, "device": device}
    with tempfile.TemporaryDirectory(prefix="meg-scaleout-") as scratch:
        measured = measure_scaleout(job, chosen, repeats, work_dir or Path(scratch))
    description = (f"model {model}, {dataset.name}, first {n} edits, device {device}; "
                   f"settings {', '.join(s.name for s in chosen)}, {repeats} repeats")
    paths = write_scaleout(out, name, measured, {"command": command_line(), "description": description})
    typer.echo(Path(paths["md"]).read_text())
