"""`meg route-bench`: routing quality of every router on one data set, no language model needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import DataOption, FirstNOption, command_line, friendly_errors, load_data


@friendly_errors
def command(
    data: DataOption = None,
    n: FirstNOption = None,
    routers: Annotated[str, typer.Option(help="comma-separated variants of meg.benchmarks.routing.VARIANTS")] = (
        "paper-gate/untuned,paper-gate/tuned,nearest/tuned,retrieval/tuned"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: routing-<data>-<n>)")] = None,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
) -> None:
    """Fit each router on the first N edits and score edit prompts, paraphrases and locality prompts."""
    from meg.benchmarks.routing import VARIANTS, route_bench, write_route_bench
    from meg.data.defaults import default_pseudo_pairs, default_unrelated
    from meg.errors import InputError
    from meg.files import cache_dir

    chosen = [v.strip() for v in routers.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown router variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    dataset = load_data(data, n)
    bench = route_bench(dataset.requests, chosen, default_pseudo_pairs(), default_unrelated(), cache_dir() / "encoders")
    stem = name or f"routing-{dataset.name}-{bench['n']}"
    paths = write_route_bench(out, stem, bench, {"command": command_line(), "data": dataset.name})
    typer.echo(Path(paths["md"]).read_text())
