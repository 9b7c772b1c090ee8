"""`meg bench-collect`: weight-collection throughput, one edit at a time vs batched."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, NOption,
    check_count, check_layers, check_model_device, check_out, command_line, friendly_errors, load_data, parse_ints,
)


@friendly_errors
def command(
    model: ModelOption = "reference",
    data: DataOption = None,
    n: NOption = 128,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes to time")] = "1,8,32,128",
    single_edits: Annotated[int, typer.Option(help="edits timed at batch size 1")] = 32,
    layer: Annotated[int | None, typer.Option(help="layer (default: the architecture's)")] = None,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    device: DeviceOption = "cpu",
) -> None:
    """Measure edits/second of neuron collection at several batch sizes; write JSON + markdown + PNG."""
    from meg.benchmarks.collection_speed import measure_collection_speed, write_collection_speed
    from meg.collection import preset_for
    from meg.models import load_causal_lm
    from meg.surgery import neuron_spec

    sizes = parse_ints(batch_sizes, "--batch-sizes", minimum=1)
    check_count(single_edits, "--single-edits")
    check_count(layer, "--layer", minimum=0)  # a negative layer would count from the end without a word
    check_out(out, "--out")
    check_model_device(model, device)
    dataset = load_data(data, n)
    check_layers(model, [layer], "--layer")
    lm, tokenizer = load_causal_lm(model, device=device)
    spec, config = neuron_spec(lm, layer), preset_for(lm)
    points = measure_collection_speed(lm, tokenizer, spec, dataset.requests, config, sizes, dataset.template, single_edits)
    description = (f"model {model} ({spec.model_type}, layer {spec.layer}, D={spec.dim}), {dataset.name}, "
                   f"collection {config}, device {device}")
    paths = write_collection_speed(out, points, {"command": command_line(), "description": description})
    typer.echo(Path(paths["md"]).read_text())
