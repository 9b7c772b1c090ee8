"""`meg route-bench`: routing quality of every router on one data set, no language model needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, FirstNOption,
    check_out, check_stem, command_line, friendly_errors, load_data, split_names,
)


@friendly_errors
def command(
    data: DataOption = None,
    n: FirstNOption = None,
    routers: Annotated[str, typer.Option(help="comma-separated variants of meg.benchmarks.routing.VARIANTS")] = (
        "paper-gate/untuned,paper-gate/tuned,nearest/tuned,retrieval/tuned"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: routing-<data>-<n>)")] = None,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    fresh: Annotated[bool, typer.Option(help="measure the requested routers again (default: their rows already in "
                                             "the results file, same definition, are kept); other rows stay")] = False,
) -> None:
    """Fit each router on the first N edits and score edit prompts, paraphrases and locality prompts.

    Rows of the same data set and N already in the results file are kept, so runs add up and an interrupted
    run resumes; the files are rewritten after every router."""
    import datetime

    from meg.benchmarks.routing import VARIANTS, previous_variants, route_bench, usable_requests, write_route_bench
    from meg.data.defaults import default_calibration_pairs, default_pseudo_pairs, default_unrelated
    from meg.errors import InputError
    from meg.files import cache_dir

    chosen = split_names(routers, "--routers")
    check_stem(name)
    check_out(out, "--out")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown router variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    dataset = load_data(data, n)
    usable = len(usable_requests(dataset.requests))
    stem = name or f"routing-{dataset.name}-{usable}"
    setup = {"command": command_line(), "data": dataset.name}
    previous = previous_variants(out, stem, dataset.name, usable)
    stamp = {"command": setup["command"], "measured": datetime.date.today().isoformat()}
    bench = route_bench(dataset.requests, chosen, default_pseudo_pairs(), default_unrelated(), cache_dir() / "encoders",
                        previous=previous, checkpoint=lambda b: write_route_bench(out, stem, b, setup), stamp=stamp,
                        fresh=fresh, calibration=default_calibration_pairs())
    paths = write_route_bench(out, stem, bench, setup)
    typer.echo(Path(paths["md"]).read_text())
