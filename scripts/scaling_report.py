"""Scaling of `meg bench` with the number of edits: the six metrics and Score per method against N, and the meg
fit's cost per stage against N with a fitted power law (log-log least squares), from the committed bench files.

    python scripts/scaling_report.py --stem bench-counterfact-edit --ns 1024,2048,4096,10000
    python scripts/scaling_report.py --stem bench-reference-2-counterfact-edit --ns 16,128,1024 \
        --single single-edits-reference-2

Reads docs/results/<stem>-<N>.json (one `meg bench` run per N, each with its own cold work directory, so the meg
row's stage seconds are a cold fit with the shipped encoder and verifier) and writes
docs/results/scaling-<data>.{json,md,png} and docs/results/cost-<data>.{json,md,png}. `--single` adds an N = 1
point per baseline from a scripts/measure_single_edits.py result (edits applied each ALONE, the published
single-edit figure), the best-Score setting of each method.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf", "score")
STAGES = ("encoder", "embed", "router", "collect", "generator")


def power_law(ns: list[float], seconds: list[float]) -> float | None:
    """Exponent b of seconds ~ a * N^b by least squares on logs (None with fewer than 2 positive points)."""
    points = [(math.log(n), math.log(s)) for n, s in zip(ns, seconds) if s > 0]
    if len(points) < 2:
        return None
    mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else None


def single_edit_points(singles: list[dict | None]) -> tuple[list[list], dict[str, list[tuple[int, float]]]]:
    """Table rows and Score series at N = 1 from single-edit results: each method's best-Score setting."""
    if None in singles:
        raise SystemExit("--single: a named results file is not under --results")
    rows, series = [], {}
    settings = [r for single in singles for r in single["rows"]]
    for method in dict.fromkeys(r["method"] for r in settings):
        best = max((r for r in settings if r["method"] == method), key=lambda r: r["score"])
        rows.append([1, f"{method} ({best['setting']})", *[best.get(k) for k in METRICS], "", "", ""])
        series[method] = [(1, best["score"])]
    return rows, series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stem", default="bench-counterfact-edit")
    parser.add_argument("--ns", default="1024,2048,4096,10000")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--single", default=None, help="comma-separated single-edit results stems (N = 1 "
                        "points), e.g. single-edits-reference-2")
    args = parser.parse_args()
    from meg.results import markdown_table, read_results, write_results

    benches = {}
    for n in [int(x) for x in args.ns.split(",")]:
        bench = read_results(args.results, f"{args.stem}-{n}")
        if bench is None:
            print(f"missing {args.stem}-{n}.json: skipped")
            continue
        benches[n] = bench
    ns = sorted(benches)
    data_name = args.stem.removeprefix("bench-")
    singles = args.single.split(",") if args.single else []
    rows, series = single_edit_points([read_results(args.results, name) for name in singles])
    for n in ns:
        for r in benches[n]["results"]:
            m = r["metrics"]
            clean = (r.get("clean_locality") or {}).get("loc_ag")
            rows.append([n, r["method"], *[m.get(k) for k in METRICS], "" if clean is None else clean,
                         r["edit_seconds"], r["peak_rss_mb"]])
            series.setdefault(r["method"], []).append((n, m["score"]))
    single_flag = f" --single {args.single}" if args.single else ""
    command = f"python scripts/scaling_report.py --stem {args.stem} --ns {args.ns}{single_flag}"
    sources = ", ".join(f"`{name}.md`" for name in [*singles, *(f"{args.stem}-{n}" for n in ns)])
    model = benches[ns[0]]["setup"]["model"] if ns else "?"
    single_note = (" N = 1: each of the single-edit file's edits applied alone to a fresh model (not a batch of "
                   "one), the best setting of each method there." if args.single else "")
    table = markdown_table(["N", "method", "Rel-AG", "Gen-AG", "Loc-AG", "Rel-TF", "Gen-TF", "Loc-TF", "Score",
                            "clean Loc-AG", "edit s", "RSS MB"], rows)
    conflicting = ", ".join(f"{benches[n]['setup']['conflicting_locality']} at N = {n}" for n in ns
                            if benches[n]["setup"].get("conflicting_locality") is not None)
    text = (f"# Scaling with the number of edits: {data_name}\n\nCommand: `{command}` (aggregates {sources}; each "
            f"names its own `meg bench` command).\n\nModel: {model}. All edits of each N in one batch; the baselines at the "
            f"setting each run names (its `--configs`).{single_note} clean Loc-AG: Loc-AG without the locality prompts that "
            f"ask about a fact the edit set itself changes ({conflicting or 'not reported by these runs'}; a correct "
            f"editor changes those answers).\n\n{table}")

    def draw_scores(axes) -> None:
        for method, points in series.items():
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axes.set_xscale("log")
        axes.set_xlabel("edits in one batch (N)")
        axes.set_ylabel("Score")
        axes.set_ylim(0, 100)
        axes.legend(fontsize=7, ncol=3, loc="lower left")

    write_results(args.results, f"scaling-{data_name}", {"command": command, "rows": rows}, text, draw_scores)

    cost_rows, costs = [], {}
    for n in ns:
        meg = next((r for r in benches[n]["results"] if r["method"] == "meg"), None)
        if meg is None:
            continue
        stages = meg["stats"]["log"].get("stage_seconds", {})
        for stage in STAGES:
            costs.setdefault(stage, []).append((n, float(stages.get(stage, 0.0))))
        costs.setdefault("evaluation", []).append((n, float(meg["eval_seconds"])))
        cost_rows.append([n, *[stages.get(s, 0.0) for s in STAGES], meg["edit_seconds"], meg["eval_seconds"],
                          meg["peak_rss_mb"]])
    exponents = {stage: power_law([p[0] for p in pts], [p[1] for p in pts]) for stage, pts in costs.items()}
    cost_table = markdown_table(["N", *[f"{s} s" for s in STAGES], "fit s (edit)", "evaluation s", "peak RSS MB"],
                                cost_rows)
    fitted = ", ".join(f"{s} {e:.2f}" for s, e in exponents.items() if e is not None)
    cost_text = (f"# Cost of the meg fit against N: {data_name}\n\nCommand: `{command}`.\n\nWall seconds per stage of "
                 f"a cold `meg` fit (fresh work directory per N, the shipped encoder and verifier: encoder = loading "
                 f"them), evaluation seconds, and the peak resident memory while fitting. Fitted exponents b of "
                 f"seconds ~ N^b: {fitted}.\n\n{cost_table}")

    def draw_costs(axes) -> None:
        for stage, pts in costs.items():
            exponent = exponents.get(stage)
            label = f"{stage} (b = {exponent:.2f})" if exponent is not None else stage
            axes.plot([p[0] for p in pts], [max(p[1], 1e-2) for p in pts], marker="o", label=label)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("edits (N)")
        axes.set_ylabel("wall seconds")
        axes.legend(fontsize=7)

    write_results(args.results, f"cost-{data_name}", {"command": command, "rows": cost_rows, "exponents": exponents},
                  cost_text, draw_costs)
    print(text)
    print(cost_text)


if __name__ == "__main__":
    main()
