"""`meg demo`: edit a model with 256 CounterFact facts in one batch, show before/after answers, report.

Runs offline on the shipped reference model and the shipped CounterFact sample. The settings are the library
defaults cut to fit the demo's budget (about 5 minutes on a 2-core CPU): fewer encoder-tuning epochs and a
shorter generator run; `meg run` uses the full defaults.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from meg.config import MegConfig, default_encoder_config
from meg.diffusion.generator import CONFIGS
from meg.evaluation.harness import read_records
from meg.evaluation.runner import RunConfig, run_edit_and_eval
from meg.files import RUN_RECORDS


def demo_config(quick: bool = False) -> MegConfig:
    """The demo's MeG settings; `quick` (for CI smoke tests) shortens every stage further."""
    generator = replace(CONFIGS["small-gpt2"], max_steps=300 if quick else 1000, eval_every=150 if quick else 500)
    encoder = replace(default_encoder_config(), epochs=1 if quick else 2)
    return MegConfig(encoder=encoder, generator=generator)


def run_demo(model: str, n: int, out: str | Path, quick: bool = False, overwrite: bool = True,
             command: str = "meg demo") -> dict[str, Any]:
    """Edit the first `n` shipped CounterFact facts and evaluate; returns the report."""
    config = RunConfig(model=model, n=n, method="meg", method_config=demo_config(quick).to_dict())
    return run_edit_and_eval(config, out, overwrite=overwrite, command=command)


def examples(out: str | Path, count: int = 4) -> list[dict[str, Any]]:
    """The first `count` evaluated edits with their three queries (for the before/after table)."""
    rows = []
    for record in read_records(Path(out) / RUN_RECORDS)[:count]:
        for metric in ("reliability", "generality", "locality"):
            case = record.get(metric)
            if case:
                rows.append({"edit": record["index"], "kind": metric, "prompt": case["prompt"], "expected": case["expected"],
                             "before": case.get("before") or "", "after": case["generated"], "ok": case["ag"]})
    return rows
