"""`meg demo`: the main job. Edit the shipped reference model with 256 CounterFact facts in one batch, show
before/after answers for a few facts, and report the six metrics and the Score.

Runs offline on the shipped reference model and the shipped CounterFact sample, with the library defaults: the
shipped tuned encoder and verifier, so nothing is tuned first. Only the generator's run is cut to fit the demo's
budget (about 5 minutes on a 2-core CPU from an empty cache); `meg run` uses the full defaults.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from meg.cli.common import ModelOption, check_count, check_model_device, check_out, command_line, friendly_errors


def demo_config(quick: bool = False):
    """The demo's MeG settings; `quick` (for CI smoke tests) shortens the generator's run further."""
    from meg.config import MegConfig
    from meg.diffusion.generator import CONFIGS

    generator = replace(CONFIGS["small-gpt2"], max_steps=300 if quick else 500, eval_every=150 if quick else 250)
    return MegConfig(generator=generator)


def run_demo(model: str, n: int, out: str | Path, quick: bool = False, overwrite: bool = True,
             command: str = "meg demo") -> dict[str, Any]:
    """Edit the first `n` shipped CounterFact facts and evaluate; returns the report."""
    from meg.evaluation.runner import RunConfig, run_edit_and_eval

    config = RunConfig(model=model, n=n, method="meg", method_config=demo_config(quick).to_dict())
    return run_edit_and_eval(config, out, overwrite=overwrite, command=command)


def examples(out: str | Path, count: int = 4) -> list[dict[str, Any]]:
    """The first `count` evaluated edits with their three queries (for the before/after table)."""
    from meg.evaluation.harness import read_records
    from meg.files import RUN_RECORDS

    rows = []
    for record in read_records(Path(out) / RUN_RECORDS)[:count]:
        for metric in ("reliability", "generality", "locality"):
            case = record.get(metric)
            if case:
                rows.append({"edit": record["index"], "kind": metric, "prompt": case["prompt"], "expected": case["expected"],
                             "before": case.get("before") or "", "after": case["generated"], "ok": case["ag"]})
    return rows


@friendly_errors
def command(
    model: ModelOption = "reference",
    n: Annotated[int, typer.Option("--n", "-n", help="edits applied in one batch")] = 256,
    out: Annotated[Path, typer.Option(help="report directory")] = Path("meg-demo"),
    quick: Annotated[bool, typer.Option(help="shorter training (smoke test), numbers not meaningful")] = False,
) -> None:
    """Edit, show before/after answers for a few facts, print the six metrics and the Score."""
    from meg.cli.summaries import demo_table
    from meg.evaluation.report import report_markdown

    check_count(n, "--n")
    check_out(out, "--out")
    check_model_device(model, "cpu")
    report = run_demo(model, n, out, quick=quick, command=command_line())
    typer.echo(demo_table(examples(out)))
    typer.echo(report_markdown(report))
    typer.echo(f"full report: {out / 'report.md'} (records: {out / 'records.jsonl'})")
