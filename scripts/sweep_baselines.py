"""Choose the FT / MEMIT / AlphaEdit hyperparameters for the reference model with a small documented sweep.

    python scripts/sweep_baselines.py [--n 64] [--threads 1] [--out docs/results]

Edits: the first N records of counterfact-val.json (NOT counterfact-edit.json, which the benchmarks use), applied
in one batch. Every setting is scored with the paper's protocol (meg.evaluation: Rel/Gen/Loc x AG/TF against the
unedited model's own outputs for Locality) and Score = their harmonic mean; the best Score per method becomes
that module's PRESETS["reference"]. The key statistics (E[k k^T] of every layer) are computed once over a sample of
the reference model's training text and cached (meg.baselines.covariance). Each finished setting is appended to
--work/settings.jsonl and skipped on a rerun. Writes baseline-sweep.json and baseline-sweep.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping OpenMP threads on a shared CPU

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
METRIC_HEADERS = ["Rel AG", "Gen AG", "Loc AG", "Rel TF", "Gen TF", "Loc TF"]
STATS_TEXTS = 10000  # corpus lines for the key statistics (the LocateConfig.mom2_n_texts default)

# (method, short name, config fields), for the 6-layer reference model (MeG's default layer there: 2). MEMIT and
# AlphaEdit start from v_lr 2 / clamp 4 (a pilot on 32 edits: the residual stream's norm is ~240 here, so the
# paper's v_lr 0.5 / clamp 0.75 cannot reach the targets in 25 steps; one row per method keeps the paper's values).
_V = {"mom2_n_texts": STATS_TEXTS, "v_lr": 2.0, "clamp_norm_factor": 4.0}
_PAPER_V = {"mom2_n_texts": STATS_TEXTS, "v_lr": 0.5, "clamp_norm_factor": 0.75}
_RANGES = {"L0-2": [0, 1, 2], "L1-3": [1, 2, 3], "L2-4": [2, 3, 4]}
GRID: list[tuple[str, str, dict]] = [
    ("unedited", "no edit (reference row)", {}),
    *[("ft", f"L{layer} lr0.002", {"layer": layer, "lr": 2e-3}) for layer in (1, 2, 3)],
    *[("ft", f"L2 lr{lr:g}", {"layer": 2, "lr": lr}) for lr in (5e-4, 1e-2)],
    ("ft", "L2 lr0.002 answer-loss", {"layer": 2, "lr": 2e-3, "loss_tokens": "answer"}),
    ("ft", "L2 lr0.002 FT-L 5e-3", {"layer": 2, "lr": 2e-3, "norm_constraint": 5e-3}),
    *[("memit", f"L1-3 w{w:g}", {**_V, "layers": [1, 2, 3], "mom2_update_weight": w}) for w in (100, 1000, 15000)],
    *[("memit", f"{r} w1000", {**_V, "layers": _RANGES[r], "mom2_update_weight": 1000}) for r in ("L0-2", "L2-4")],
    ("memit", "L1-3 w1000 v_steps50", {**_V, "layers": [1, 2, 3], "mom2_update_weight": 1000, "v_steps": 50}),
    ("memit", "L1-3 w1000 paper v", {**_PAPER_V, "layers": [1, 2, 3], "mom2_update_weight": 1000}),
    *[("alphaedit", f"{r} t0.02", {**_V, "layers": layers}) for r, layers in _RANGES.items()],
    *[("alphaedit", f"L1-3 t{t:g}", {**_V, "layers": [1, 2, 3], "nullspace_threshold": t}) for t in (5e-3, 0.1)],
    ("alphaedit", "L1-3 t0.02 l2=1", {**_V, "layers": [1, 2, 3], "l2": 1.0}),
    ("alphaedit", "L1-3 t0.02 paper v", {**_PAPER_V, "layers": [1, 2, 3]}),
    # Second pass, around each method's first-pass best (FT L3 lr 2e-3, MEMIT L0-2 w1000, AlphaEdit t0.1).
    ("ft", "L3 lr0.001", {"layer": 3, "lr": 1e-3}),
    ("ft", "L4 lr0.002", {"layer": 4, "lr": 2e-3}),
    ("ft", "L3 lr0.002 FT-L 2e-2", {"layer": 3, "lr": 2e-3, "norm_constraint": 2e-2}),
    ("ft", "L3 lr0.002 out-proj", {"layer": 3, "lr": 2e-3, "params": "ffn_out"}),
    *[("memit", f"L0-2 w{w:g}", {**_V, "layers": [0, 1, 2], "mom2_update_weight": w}) for w in (300, 3000)],
    ("memit", "L0-3 w1000", {**_V, "layers": [0, 1, 2, 3], "mom2_update_weight": 1000}),
    *[("alphaedit", f"L0-2 t{t:g}", {**_V, "layers": [0, 1, 2], "nullspace_threshold": t}) for t in (0.1, 0.3)],
    ("alphaedit", "L0-3 t0.1", {**_V, "layers": [0, 1, 2, 3], "nullspace_threshold": 0.1}),
]
# At the benchmarks' size (1,024 edits) the N = 64 choices lose most of their locality (docs/LOG.md), so the
# settings are swept again there: FT's rate and layer (layer 2 is MeG's), MEMIT's lambda (the covariance
# weight that protects other keys) and AlphaEdit's null-space threshold and ridge. MEMIT and AlphaEdit rows
# share their step-1 target values (cached in --work), so each costs only its least-squares spread.
_L02 = {**_V, "layers": [0, 1, 2]}
GRID_1024: list[tuple[str, str, dict]] = [
    ("unedited", "no edit (reference row)", {}),
    *[("ft", f"L4 lr{lr:g}", {"layer": 4, "lr": lr}) for lr in (2e-3, 1e-3, 5e-4)],
    ("ft", "L2 lr0.002", {"layer": 2, "lr": 2e-3}),
    *[("memit", f"L0-2 w{w:g}", {**_L02, "mom2_update_weight": w}) for w in (1000, 3000, 10000, 30000, 100000)],
    *[("alphaedit", f"L0-2 t{t:g}", {**_L02, "nullspace_threshold": t}) for t in (0.1, 0.05, 0.02)],
    *[("alphaedit", f"L0-2 t{t:g} l2=100", {**_L02, "nullspace_threshold": t, "l2": 100.0}) for t in (0.1, 0.02)],
    # Second pass: more layers (more key directions to store 1,024 facts in) around each method's first-pass best.
    *[("memit", f"L0-{last} w3000", {**_V, "layers": list(range(last + 1)), "mom2_update_weight": 3000})
      for last in (3, 4)],
    *[("alphaedit", f"L0-{last} t0.1 l2=100", {**_V, "layers": list(range(last + 1)), "nullspace_threshold": 0.1,
                                                "l2": 100.0}) for last in (3, 4)],
    ("alphaedit", "L0-2 t0.1 l2=30", {**_L02, "nullspace_threshold": 0.1, "l2": 30.0}),
    ("alphaedit", "L0-2 t0.2 l2=100", {**_L02, "nullspace_threshold": 0.2, "l2": 100.0}),
]
# reference-2 (10 layers, d 256; MeG's default layer 3), 1,024 edits, MEMIT / AlphaEdit as the reference code runs
# step 1 (context templates, early stop, KL at the subject: the LocateConfig defaults). Starting points from the
# single-edit sweep (docs/results/single-edits-reference-2-val-sweep.md): v_lr 2 / clamp 4, lambda 300 at one edit;
# lambda and the ridge grow with N, so the grid spans lambda 300-10,000 and l2 10-100 (AlphaEdit's 10 and the
# reference model's choice 100). Rows ending at layer 3 share one step 1.
_L13 = {**_V, "layers": [1, 2, 3]}
GRID_R2_1024: list[tuple[str, str, dict]] = [
    ("unedited", "no edit (reference row)", {}),
    *[("ft", f"L{layer} lr0.002", {"layer": layer, "lr": 2e-3}) for layer in (3, 5)],
    ("ft", "L3 lr0.0005", {"layer": 3, "lr": 5e-4}),
    *[("memit", f"L1-3 w{w:g}", {**_L13, "mom2_update_weight": w}) for w in (300, 1000, 3000, 10000)],
    *[("alphaedit", f"L1-3 t0.02 l2={l2:g}", {**_L13, "l2": l2}) for l2 in (10.0, 100.0)],
]
# reference-2 at N = 16 and 128 (the N-curve of issue 23): the same step 1, lambda and ridge spanning the
# single-edit choices (lambda 300, l2 1) and the 1,024-edit ones (lambda 1,000, l2 10).
GRID_R2_SMALL: list[tuple[str, str, dict]] = [
    ("unedited", "no edit (reference row)", {}),
    *[("ft", f"L{layer} lr0.002", {"layer": layer, "lr": 2e-3}) for layer in (3, 5)],
    ("ft", "L5 lr0.0005", {"layer": 5, "lr": 5e-4}),
    *[("memit", f"L1-3 w{w:g}", {**_L13, "mom2_update_weight": w}) for w in (100, 300, 1000, 3000)],
    *[("alphaedit", f"L1-3 t0.02 l2={l2:g}", {**_L13, "l2": l2}) for l2 in (1.0, 10.0, 100.0)],
]
GRIDS = {"n64": GRID, "n1024": GRID_1024, "r2-1024": GRID_R2_1024, "r2-small": GRID_R2_SMALL}
GRID_NOTES = {
    "n64": "Two passes: the grid, then settings around each method's best (the rows after the first AlphaEdit block).",
    "n1024": "Two passes: the grid around the N = 64 choices (first row of each method), then more layers and "
             "ridges around each method's best (the rows after the first pass's last AlphaEdit row). MEMIT and "
             "AlphaEdit rows with the same last layer share their cached step-1 target values, so only the first "
             "of them pays for the delta optimisation.",
    "r2-1024": "One pass around the single-edit choices (v_lr 2, clamp 4; lambda and ridge raised for 1,024 edits); "
                "MEMIT / AlphaEdit with the reference code's step 1 (context templates, early stop, KL at the "
                "subject); rows ending at layer 3 share their cached step-1 target values.",
    "r2-small": "The N-curve's sweep at a small N: lambda and ridge from the single-edit choice to the 1,024-edit "
                "one, FT's layer and rate; MEMIT / AlphaEdit rows share one cached step 1.",
}
# Where a grid's choices are kept (default: the methods' PRESETS[model]).
CHOICE_HOME = {"r2-small": "the `{model}` presets, with fields over them in `configs/bench-{model}-n{n}.json` where "
                           "this N chose otherwise (else `configs/bench-{model}.json` serves this N)"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference", help="model id or path (default: the reference model)")
    parser.add_argument("--data", type=Path, default=DATA, help="shared data directory")
    parser.add_argument("--n", type=int, default=64, help="edits (first N records of counterfact-val.json)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="n64", help="settings to try (n1024: the large sweep)")
    parser.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    parser.add_argument("--per-method", type=int, default=None, help="only the first K settings of each method (smoke)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "meg-baseline-sweep")
    return parser.parse_args()


def score_setting(model, tokenizer, dataset, pre_edit, method: str, config: dict, work: Path) -> dict:
    """Edit with one setting, evaluate, and return the metric row (percentages, Score, seconds)."""
    from meg.evaluation.harness import evaluate
    from meg.evaluation.metrics import aggregate
    from meg.methods import EditContext, get_method

    start = time.perf_counter()
    requests = [r.for_editing() for r in dataset.requests]
    context = EditContext(template=dataset.template, config=config, progress=False, work_dir=work)
    lm = get_method(method)(model, tokenizer, requests, context)
    edit_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as run_dir:
        records = evaluate(lm, dataset.requests, pre_edit, run_dir, progress=False)
    stats = {k: v for k, v in lm.stats().items() if k not in ("config", "method")}
    eval_seconds = time.perf_counter() - start - edit_seconds
    return {**aggregate(records).to_dict(), "edit_s": edit_seconds, "eval_s": eval_seconds, "stats": stats}


def precompute_statistics(model, tokenizer, data_dir: Path, grid: list[tuple[str, str, dict]]) -> dict:
    """E[k k^T] of every layer the grid edits, in one pass (cached), so no setting pays for it; returns its cost."""
    from meg.baselines.covariance import corpus_for_model, default_stats_dir, second_moments

    start = time.perf_counter()
    texts = corpus_for_model(data_dir, STATS_TEXTS, seed=0)
    layers = sorted({layer for _, _, fields in grid for layer in fields.get("layers", [])})
    second_moments(model, tokenizer, layers, texts)
    return {"texts": len(texts), "seconds": time.perf_counter() - start, "stats_dir": str(default_stats_dir())}


def _statistics_record(work: Path, measured: dict) -> dict:
    """The cost of the run that computed the statistics (a rerun finds them cached and measures ~0 s)."""
    from meg import files

    path = work / "statistics.json"
    if path.exists() and files.read_json(path)["texts"] == measured["texts"]:
        return files.read_json(path)
    files.atomic_write_json(path, measured)
    return measured


def markdown(rows: list[dict], setup: dict, chosen: dict) -> str:
    from meg.results import markdown_table

    headers = ["method", "setting", *METRIC_HEADERS, "Score", "edit s", "eval s"]
    cells = [[r["method"], r["name"], *(r[c] for c in ("rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf",
              "score", "edit_s", "eval_s"))] for r in rows]  # fmt: skip
    best = "\n".join(f"- {m}: `{r['name']}` (Score {r['score']:.2f}): `{json.dumps(r['config'])}`"
                     for m, r in chosen.items())
    total = sum(r["edit_s"] + r["eval_s"] for r in rows)
    return (f"# Baseline hyperparameter sweep ({setup['model']})\n\nCommand: `{setup['command']}`. {setup['n']} edits "
            f"(first records of counterfact-val.json), one batch; paper metrics (percent), Score = harmonic mean. "
            f"Key statistics: {setup['statistics']['texts']} lines of the model's training text, "
            f"{setup['statistics']['seconds']:.0f} s once, then cached. {setup['threads']} torch thread(s) on a "
            f"shared 2-core CPU: seconds are upper bounds; {len(rows)} settings took {total / 60:.1f} min in all. "
            f"One edit is {100 / setup['n']:.1f} points of a Rel/Gen/Loc AG column, so Score differences of a "
            f"few points are within noise. {GRID_NOTES[setup['grid']]}\n\n{markdown_table(headers, cells)}\nChosen (best Score per "
            f"method, stored as {_choice_home(setup)}):\n\n{best}\n")


def _choice_home(setup: dict) -> str:
    default = "`PRESETS[\"{model}\"]` in meg/baselines/{{ft,memit,alphaedit}}.py"
    return CHOICE_HOME.get(setup["grid"], default).format(model=setup["model"], n=setup["n"])


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from meg.data import load_dataset
    from meg.evaluation.harness import pre_edit_outputs
    from meg.methods import with_statistics_data
    from meg.methods.unedited import PlainLM
    from meg.models import load_causal_lm
    from meg.results import write_results

    model, tokenizer = load_causal_lm(args.model)
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.data / "counterfact" / "counterfact-val.json")
    dataset = replace(dataset, requests=dataset.requests[: args.n])
    grid = GRIDS[args.grid]
    statistics = _statistics_record(args.work, precompute_statistics(model, tokenizer, args.data.resolve(), grid))
    base = PlainLM(model, tokenizer, dataset.template)
    pre_edit = pre_edit_outputs(base, [r.unrelated[0] for r in dataset.requests if r.unrelated], None, progress=False)
    done_path = args.work / "settings.jsonl"
    lines = done_path.read_text().splitlines() if done_path.exists() else []
    done = {(r["method"], r["name"]): r for r in map(json.loads, lines)}
    methods = set(args.only.split(",")) if args.only else {m for m, _, _ in grid}
    rows: list[dict] = []
    for method, name, fields in grid:
        if method not in methods or sum(r["method"] == method for r in rows) == (args.per_method or -1):
            continue
        config = with_statistics_data(method, fields, str(args.data.resolve()))
        row = done.get((method, name))
        if row is None or row["config"] != fields or row["n"] != args.n:
            row = {"method": method, "name": name, "config": fields, "n": args.n,
                   **score_setting(model, tokenizer, dataset, pre_edit, method, config, args.work)}  # fmt: skip
            with open(done_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        print(f"{method:9s} {name:28s} score {row['score']:6.2f}  rel {row['rel_ag']:5.1f} gen {row['gen_ag']:5.1f} "
              f"loc {row['loc_ag']:5.1f}  edit {row['edit_s']:5.1f}s eval {row['eval_s']:5.1f}s", flush=True)
        rows.append(row)
    methods_run = sorted({r["method"] for r in rows} - {"unedited"})
    chosen = {m: max((r for r in rows if r["method"] == m), key=lambda r: r["score"]) for m in methods_run}
    grid_flag = f" --grid {args.grid}" if args.grid != "n64" else ""
    model_flag = f" --model {args.model}" if args.model != "reference" else ""
    command = f"python scripts/sweep_baselines.py{model_flag} --n {args.n}{grid_flag} --threads {args.threads}"
    setup = {"command": command, "model": args.model, "n": args.n, "grid": args.grid, "threads": args.threads,
             "statistics": statistics,
             "data": "counterfact-val.json", "template": dataset.template.text}  # fmt: skip
    data = {"setup": setup, "rows": rows, "chosen": {m: r["config"] for m, r in chosen.items()}}
    stem = "baseline-sweep" if args.grid == "n64" else f"baseline-sweep-{args.n}"
    stem = stem if args.model == "reference" else stem.replace("baseline-sweep", f"baseline-sweep-{args.model}")
    paths = write_results(args.out, stem, data, markdown(rows, setup, chosen))
    print("wrote", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
