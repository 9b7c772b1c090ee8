"""`meg layers`: the paper's layer sweep (single-neuron edit success per layer) for any model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, NOption,
    check_layers, check_model_device, check_out, command_line, friendly_errors, load_data, parse_ints,
)


@friendly_errors
def command(
    model: ModelOption = "reference",
    data: DataOption = None,
    n: NOption = 64,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers (default: all)")] = None,
    preset: Annotated[str | None, typer.Option(help="collection preset (default: the architecture's)")] = None,
    out: Annotated[Path | None, typer.Option(help="write layers-<name>.{json,md,png} into this directory")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Collect N edits at every layer, print the success table and the best layer."""
    from meg.benchmarks.layers import best_layer, layers_markdown, sweep_layers, write_layer_sweep
    from meg.collection import preset as named_preset
    from meg.collection import preset_for
    from meg.models import load_causal_lm
    from meg.surgery import neuron_spec

    chosen = parse_ints(layers, "--layers", minimum=0)
    if preset is not None:
        named_preset(preset)  # an unknown name is refused now, not after the model has loaded
    check_out(out, "--out")
    check_model_device(model, device)
    dataset = load_data(data, n)
    check_layers(model, chosen or [], "--layers")
    lm, tokenizer = load_causal_lm(model, device=device)
    for layer in chosen or ():
        neuron_spec(lm, layer)  # every layer in range, before the first one is swept
    config = preset_for(lm, preset)
    scores = sweep_layers(lm, tokenizer, dataset.requests, config, dataset.template, chosen)
    typer.echo(layers_markdown(scores))
    typer.echo(f"best layer: {best_layer(scores).layer}")
    if out is not None:
        setup = {"command": command_line(), "model": model, "data": dataset.name, "n": len(dataset.requests),
                 "collection": config.__dict__}
        paths = write_layer_sweep(out, f"layers-{Path(model).name}", scores, setup)
        typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
