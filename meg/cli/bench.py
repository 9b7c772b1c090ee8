"""`meg bench`: MeG, its ablations and the baselines on the same edits in one process."""

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
    out: Annotated[Path, typer.Option(help="bench directory (per-method runs and records)")],
    model: ModelOption = "reference",
    data: DataOption = None,
    n: FirstNOption = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "unedited,meg,ft,memit,alphaedit,knn,mlp",
    configs: Annotated[Path | None, typer.Option(help="JSON {method: {config fields}}")] = None,
    results: Annotated[Path, typer.Option(help="where the table goes")] = Path("docs/results"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: bench-<data>-<n>)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every stage")] = 0,
    overwrite: Annotated[bool, typer.Option(help="discard previous runs in --out")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Edit the first N records with every method; write JSON + markdown + PNG of the comparison."""
    from meg.benchmarks.compare import BenchConfig, bench_methods, write_bench
    from meg.evaluation.runner import RunConfig

    run = RunConfig(model=model, data=str(data) if data else None, n=n, method="bench", seed=seed, device=device)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    bench = bench_methods(BenchConfig(run, chosen, read_json_option(configs)), out, overwrite)
    stem = name or f"bench-{bench['setup']['data']}-{bench['setup']['n_used']}"
    paths = write_bench(results, stem, bench, command_line())
    typer.echo(Path(paths["md"]).read_text())
