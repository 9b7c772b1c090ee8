"""A run's report: `report.json` (every number + the protocol), `report.md` (the paper's table), `report.png`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meg import files
from meg.decoding import MAX_NEW_TOKENS
from meg.evaluation.metrics import COLUMNS, MetricTable, aggregate
from meg.results import environment, markdown_table, save_plot

HEADERS = ["Rel-AG", "Gen-AG", "Loc-AG", "Rel-TF", "Gen-TF", "Loc-TF", "Score"]

PROTOCOL = {
    "edit_schedule": "all N edits applied in one batch",
    "reliability": "the edit prompt, expected answer = the new target",
    "generality": "the first paraphrase of each edit, expected answer = the new target",
    "locality": "the first unrelated prompt of each edit, expected answer = the PRE-edit model's own greedy output",
    "ag": "greedy generation, <= {max_new_tokens} new tokens, stop at EOS, trimmed, one trailing '.' dropped, "
          "case-insensitive exact match",
    "tf": "teacher-forced token accuracy over the expected answer's tokens",
    "score": "harmonic mean of the six numbers (0 if any is 0)",
    "editing_inputs": "editing methods see only prompt, target and subject; test paraphrases and unrelated "
                      "prompts are withheld",
}


def metric_row(table: MetricTable) -> list[float | str]:
    return [("-" if v is None else round(v, 2)) for v in table.values()] + [round(table.score, 2)]


def routing_summary(records: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Share of rows routed per metric, when the method reports routes (MeG)."""
    out = {}
    for metric in ("reliability", "generality", "locality"):
        rows = [r[metric] for r in records if r.get(metric) and "routed" in r[metric]]
        if rows:
            out[f"{metric}_routed"] = 100.0 * sum(bool(x["routed"]) for x in rows) / len(rows)
    return out or None


def build_report(records: Sequence[dict[str, Any]], setup: dict[str, Any], seconds: dict[str, float],
                 method_stats: dict[str, Any], max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    table = aggregate(records)
    protocol = {**PROTOCOL, "ag": PROTOCOL["ag"].format(max_new_tokens=max_new_tokens)}
    return {
        "metrics": table.to_dict(),
        "cases": len(records),
        "routing": routing_summary(records),
        "setup": setup,
        "protocol": protocol,
        "wall_seconds": seconds,
        "method": method_stats,
        "environment": environment(),
    }


def report_markdown(report: dict[str, Any]) -> str:
    setup, metrics = report["setup"], report["metrics"]
    table = MetricTable(**{c: metrics[c] for c in COLUMNS})
    lines = [
        f"# {setup.get('method', 'meg')} on {setup.get('data', '?')} (N = {report['cases']})\n",
        f"Command: `{setup.get('command', '')}`\n",
        markdown_table(["Method"] + HEADERS, [[setup.get("method", "meg")] + metric_row(table)]),
        "\n## Protocol\n",
    ]
    lines += [f"- {k}: {v}" for k, v in report["protocol"].items()]
    lines += [f"- template: `{setup.get('template', '')!r}`", f"- target field: {setup.get('target_field', '')}",
              f"- seed: {setup.get('seed')}"]
    if setup.get("filter"):
        lines.append(f"- filter: {setup['filter']}")
    if report.get("routing"):
        lines += ["\n## Routing\n"] + [f"- {k}: {v:.1f}%" for k, v in report["routing"].items()]
    lines += ["\n## Wall time (s)\n"] + [f"- {k}: {v:.1f}" for k, v in report["wall_seconds"].items()]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and report.png into `run_dir`."""
    run_dir = Path(run_dir)
    paths = {"json": run_dir / files.REPORT_JSON, "md": run_dir / files.REPORT_MD, "png": run_dir / files.REPORT_PNG}
    files.atomic_write_json(paths["json"], report)
    files.atomic_write_text(paths["md"], report_markdown(report))
    metrics = report["metrics"]
    values = [metrics[c] or 0.0 for c in COLUMNS] + [metrics["score"]]

    def draw(axes) -> None:
        bars = axes.bar(HEADERS, values, color=["#4c72b0"] * 3 + ["#55a868"] * 3 + ["#c44e52"])
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_ylim(0, 105)
        axes.set_ylabel("%")
        axes.set_title(f"{report['setup'].get('method', 'meg')} on {report['setup'].get('data', '')}, N = {report['cases']}")

    save_plot(paths["png"], draw)
    return paths
