"""Human-readable summaries the CLI prints (kept apart so commands stay a few lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meg.results import markdown_table


def pack_summary(pack, path: Path) -> str:
    """What was written: edits, collection success, router calibration, stage wall times."""
    log: dict[str, Any] = pack.log
    lines = [
        f"wrote {path}: {len(pack)} edits, {int(pack.collection.success.sum())} collected "
        f"({pack.collection.success_rate:.1%}), layer {pack.neuron.layer}, router {pack.router_name}",
    ]
    if log.get("replaced_duplicates"):
        lines.append(f"{len(log['replaced_duplicates'])} duplicate prompts: the later edit won")
    calibration = pack.router_fitted.get("calibration") or {}
    thresholds = pack.router_fitted.get("thresholds")
    lines.append(f"calibration: {calibration}" + (f", thresholds {thresholds}" if thresholds else ""))
    stages = log.get("stage_seconds", {})
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return "\n".join(lines)


def answers_table(prompts, outputs, details) -> str:
    """prompt | routed | edit | score | answer, one row per prompt."""
    rows = []
    for prompt, output, detail in zip(prompts, outputs, details):
        score_key = next((k for k in detail if k not in ("routed", "edit")), None)
        score = f"{score_key} {detail[score_key]:.3f}" if score_key else ""
        rows.append([prompt, "yes" if detail.get("routed") else "no", detail.get("edit", ""), score, output.strip()])
    return markdown_table(["prompt", "routed", "edit", "score", "answer"], rows)


def demo_table(rows) -> str:
    """edit | query kind | prompt | expected | answer before | answer after | pass."""
    body = [[r["edit"], r["kind"], r["prompt"][:60], r["expected"], r["before"].strip()[:30], r["after"].strip()[:30],
             "yes" if r["ok"] else "no"] for r in rows]
    return markdown_table(["edit", "query", "prompt", "expected", "before", "after", "pass"], body)
