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


def operation_summary(pack, path: Path) -> str:
    """What a lifelong operation (`meg edit --pack`) did: the ids it touched, possible conflicts, what was
    recomputed, and how long each stage took (the pack's last history entry)."""
    entry: dict[str, Any] = pack.history[-1]
    counts = ", ".join(f"{len(entry.get(k, []))} {k}" for k in ("added", "replaced", "removed"))
    lines = [f"wrote {path}: {entry['operation']}: {counts}; {len(pack)} edits now (next id {pack.next_id})"]
    for key in ("added", "replaced", "removed"):
        if entry.get(key):
            lines.append(f"{key} ids: {id_ranges(entry[key])}")
    if entry.get("unchanged"):
        lines.append(f"{len(entry['unchanged'])} edits given again unchanged (ids {id_ranges(entry['unchanged'])})")
    if entry.get("duplicate_prompts"):
        lines.append(f"{len(entry['duplicate_prompts'])} duplicate prompts in the file: the later edit won")
    for c in entry.get("conflicts", []):
        lines.append(f"possible conflict (both kept): id {c['id']} {c['prompt']!r} -> {c['target']!r} vs "
                     f"id {c['earlier_id']} {c['earlier_prompt']!r} -> {c['earlier_target']!r}")
    if "collection_rows" in entry:
        lines.append(f"collected {entry['collected']}/{entry['collection_rows']} new vectors")
    steps = f" ({entry['generator_steps']} steps)" if "generator_steps" in entry else ""
    lines.append(f"generator: {entry['generator']}{steps}")
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in entry.get("stage_seconds", {}).items()))
    return "\n".join(lines)


def id_ranges(ids, limit: int = 12) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (at most `limit` runs, then how many more)."""
    out, ids = [], sorted(ids)
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = i
    return ", ".join(out[:limit]) + (f" and {len(out) - limit} more runs" if len(out) > limit else "")
