"""`meg bench`: MeG, its ablations and the baselines on the same edits in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, FirstNOption, ModelOption, SkipInvalidOption,
    check_count, check_file, check_model_device, check_out, check_stem, command_line, friendly_errors,
    read_json_option, split_names,
)


@friendly_errors
def command(
    out: Annotated[Path, typer.Option(help="bench directory (per-method runs and records)")],
    model: ModelOption = "reference",
    data: DataOption = None,
    n: FirstNOption = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "unedited,meg,ft,memit,alphaedit,knn,mlp",
    configs: Annotated[Path | None, typer.Option(help="JSON {method: {config fields}}")] = None,
    results: Annotated[Path | None, typer.Option(help="where the table goes (default: --out)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="cached stages (encoder, collected vectors, generators, "
                                                  "packs), shareable between benches (default: <out>/work)")] = None,
    name: Annotated[str | None, typer.Option(help="results file stem (default: bench-<data>-<n>)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every stage")] = 0,
    overwrite: Annotated[bool, typer.Option(help="discard previous runs in --out")] = False,
    skip_invalid: SkipInvalidOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Edit the first N records with every method; write JSON + markdown + PNG of the comparison."""
    from meg.benchmarks.compare import BenchConfig, bench_methods, write_bench
    from meg.distributed import ranks
    from meg.evaluation.runner import RunConfig

    check_count(n, "--n")
    check_file(data, "--data")
    for path, option in ((out, "--out"), (results, "--results"), (work_dir, "--work-dir")):
        check_out(path, option)
    check_stem(name)
    check_model_device(model, device)
    run = RunConfig(model=model, data=str(data) if data else None, n=n, method="bench", seed=seed, device=device,
                    skip_invalid=skip_invalid)
    chosen = tuple(split_names(methods, "--methods"))
    setup = BenchConfig(run, chosen, read_json_option(configs, "--configs"))  # checks every method and its config
    bench = bench_methods(setup, out, overwrite, work_dir)
    stem = name or f"bench-{bench['setup']['data']}-{bench['setup']['n_used']}"
    if ranks().main:  # under `accelerate launch` rank 0 writes the results
        paths = write_bench(results or out, stem, bench, command_line())
        typer.echo(Path(paths["md"]).read_text())
