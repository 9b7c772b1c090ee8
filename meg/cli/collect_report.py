"""`meg collect-report`: where neuron collection fails on a data set (answer length, relation, familiarity,
failures' loss), one before/after row per collection variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, NOption,
    check_layers, check_model_device, check_out, check_stem, command_line, friendly_errors, load_data, model_config,
)


@friendly_errors
def command(
    model: ModelOption = "reference",
    data: DataOption = None,
    n: NOption = 256,
    variant: Annotated[list[str] | None, typer.Option(help="collection variant, repeatable: 'preset' or FIELD=VALUE,"
                                                      "... of the collection settings (and layer=K); default: "
                                                      "preset")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="drop invalid records of the data file")] = False,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: collection-<data>-<n>)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="keep collected chunks here (a rerun resumes)")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Collect the first N edits with each variant; write JSON + markdown + PNG of where collection fails."""
    from meg.benchmarks.collection_report import Variant, edit_facts, measure_variant, write_collection_report
    from meg.architectures import resolve
    from meg.collection import preset, preset_for
    from meg.models import load_causal_lm

    variants = [Variant.parse(v) for v in (variant or ["preset"])]
    check_out(out, "--out")
    check_out(work_dir, "--work-dir")
    check_stem(name)
    check_model_device(model, device)
    dataset = load_data(data, n, skip_invalid)
    check_layers(model, [v.layer for v in variants], "--variant layer")
    config = model_config(model)
    for v in variants:  # every variant's settings checked against the family's preset before the model loads
        v.config(preset(resolve(config.model_type).collection_preset)) if config is not None else None
    lm, tokenizer = load_causal_lm(model, device=device)
    base = preset_for(lm)
    facts = edit_facts(lm, tokenizer, dataset.requests, dataset.template)
    runs = [measure_variant(lm, tokenizer, dataset.requests, dataset.template, base, v, work_dir) for v in variants]
    description = (f"model {model}, {dataset.name}, first {len(dataset.requests)} edits, device {device}, base "
                   f"settings: the model's preset {base}")
    stem = name or f"collection-{dataset.name}-{len(dataset.requests)}"
    paths = write_collection_report(out, stem, runs, facts, {"command": command_line(), "description": description})
    typer.echo(Path(paths["md"]).read_text())
