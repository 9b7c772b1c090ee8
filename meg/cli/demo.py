"""`meg demo`: the main job. Edit the shipped reference model with 256 CounterFact facts and report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import ModelOption, command_line, friendly_errors


@friendly_errors
def command(
    model: ModelOption = "reference",
    n: Annotated[int, typer.Option("--n", "-n", help="edits applied in one batch")] = 256,
    out: Annotated[Path, typer.Option(help="report directory")] = Path("meg-demo"),
    quick: Annotated[bool, typer.Option(help="shorter training (smoke test), numbers not meaningful")] = False,
) -> None:
    """Edit, show before/after answers for a few facts, print the six metrics and the Score."""
    from meg.cli.summaries import demo_table
    from meg.demo import examples, run_demo
    from meg.evaluation.report import report_markdown

    report = run_demo(model, n, out, quick=quick, command=command_line())
    typer.echo(demo_table(examples(out)))
    typer.echo(report_markdown(report))
    typer.echo(f"full report: {out / 'report.md'} (records: {out / 'records.jsonl'})")
