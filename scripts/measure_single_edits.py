"""Single-edit success of the weight-editing baselines: each of N CounterFact edits applied ALONE to a fresh copy
of the model and scored with the paper's protocol (Rel / Gen / Loc, AG and TF), plus MEMIT's step-1 success.

    python scripts/measure_single_edits.py --model reference-2 --n 100 --out docs/results
    python scripts/measure_single_edits.py --model reference-2 --records ../shared/data/counterfact/counterfact-val.json \\
        --n 20 --setting memit-v2:memit:'{"v_lr": 2.0}' --name single-edits-val

Why: the published MEMIT / AlphaEdit edit ~100% of single facts on GPT-2 XL / GPT-J (ROME's Table and MEMIT's
N = 1 point); a model on which they do not is no substrate for comparing mass editing against them. Edits: `--n`
CounterFact records sampled (seeded) as scripts/measure_step1.py samples them. Settings (`--setting
NAME:METHOD:JSON`, repeatable; default: SETTINGS below) are method configs; "data_dir" (the key statistics'
corpus) is added from --data-dir for MEMIT / AlphaEdit. Each finished (setting, edit) is appended to
<work>/records.jsonl and skipped on a rerun. Writes <name>.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping, not spinning, OpenMP threads

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
# name -> (method, config). The published GPT-J values are the configs' defaults; "-v2" raises the step-1
# learning rate and norm ball as the reference model's sweep needed (docs/results/baseline-sweep.md); "rome-style"
# is MEMIT's solve at one layer (ROME's rank-one update with its covariance, without ROME's own key averaging).
SETTINGS: dict[str, tuple[str, dict]] = {
    "memit": ("memit", {}),
    "memit-v2": ("memit", {"v_lr": 2.0, "clamp_norm_factor": 4.0}),
    "alphaedit": ("alphaedit", {}),
    "alphaedit-v2": ("alphaedit", {"v_lr": 2.0, "clamp_norm_factor": 4.0}),
    "rome-style": ("memit", {"layers": [3]}),
}
METRICS = ("rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf")


def parse_setting(text: str) -> tuple[str, tuple[str, dict]]:
    name, method, config = text.split(":", 2)
    return name, (method, json.loads(config))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name (reference, reference-2), path or Hub id")
    parser.add_argument("--records", type=Path, default=DATA / "counterfact" / "counterfact-edit.json")
    parser.add_argument("--n", type=int, default=100, help="edits, each applied alone")
    parser.add_argument("--seed", type=int, default=0, help="edit sample")
    parser.add_argument("--setting", action="append", type=parse_setting, default=None,
                        help="NAME:METHOD:JSON config (repeatable; default: the script's SETTINGS)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="shared data directory (key statistics corpus)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="resume directory (default: <out>/<name>-work)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default=None, help="results stem (default: single-edits-<model name>)")
    return parser.parse_args(argv)


def sample(records: Path, n: int, seed: int):
    """The dataset and `n` of its records with their subject in the prompt, sampled as measure_step1 does."""
    from meg.data import load_dataset, sample_with_subject

    dataset = load_dataset(records)
    return dataset, sorted(sample_with_subject(dataset.requests, n, seed))


def run(args: argparse.Namespace, settings: dict, work: Path) -> list[dict]:
    """Every (setting, edit) record, computing the missing ones."""
    import torch

    from meg.evaluation.harness import evaluate_chunk, pre_edit_outputs
    from meg.methods import EditContext, get_method, with_statistics_data
    from meg.methods.unedited import PlainLM
    from meg.models import load_causal_lm

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model)
    dataset, indices = sample(args.records, args.n, args.seed)
    requests = [dataset.requests[i] for i in indices]
    prompts = [p for r in requests for p in r.unrelated]
    pre_edit = pre_edit_outputs(PlainLM(model, tokenizer, dataset.template), prompts, None, progress=False)
    path = work / "records.jsonl"
    done = {(r["setting"], r["index"]): r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    out = []
    for name, (method, fields) in settings.items():
        config = with_statistics_data(method, fields, str(args.data_dir.resolve()))
        for index, request in zip(indices, requests):
            record = done.get((name, index))
            if record is None or record["config"] != fields:
                start = time.perf_counter()
                context = EditContext(template=dataset.template, config=config, progress=False, work_dir=work)
                lm = get_method(method)(model, tokenizer, [request.for_editing()], context)
                scored = evaluate_chunk(lm, [request], index, pre_edit)[0]
                stats = lm.stats()
                record = {"setting": name, "method": method, "config": fields, "index": index, **scored,
                          "step1_success": stats.get("step1_success"), "seconds": time.perf_counter() - start}  # fmt: skip
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            out.append(record)
        rows = [r for r in out if r["setting"] == name]
        print(f"{name}: Rel-AG {100 * sum(r['reliability']['ag'] for r in rows) / len(rows):.1f}%", flush=True)
    return out


def summarise(records: list[dict], settings: dict) -> list[dict]:
    from meg.evaluation.metrics import aggregate

    rows = []
    for name, (method, fields) in settings.items():
        mine = [r for r in records if r["setting"] == name]
        steps = [r["step1_success"] for r in mine if r["step1_success"] is not None]
        rows.append({"setting": name, "method": method, "config": fields, "edits": len(mine),
                     **aggregate(mine).to_dict(), "step1_success": 100 * sum(steps) / len(steps) if steps else None,
                     "seconds_per_edit": sum(r["seconds"] for r in mine) / len(mine)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from meg.results import markdown_table, write_results

    settings = dict(args.setting) if args.setting else SETTINGS
    name = args.name or f"single-edits-{Path(args.model).name}"
    work = args.work or args.out / f"{name}-work"
    work.mkdir(parents=True, exist_ok=True)
    rows = summarise(run(args, settings, work), settings)
    command = "python scripts/measure_single_edits.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    table = markdown_table(["setting", "method", "config", *(m.replace("_", "-").title() for m in METRICS), "Score",
                            "step-1 %", "s / edit"],
                           [[r["setting"], r["method"], f"`{json.dumps(r['config'])}`", *(fmt(r[m]) for m in METRICS),
                             fmt(r["score"]), fmt(r["step1_success"]), f"{r['seconds_per_edit']:.1f}"] for r in rows])  # fmt: skip
    markdown = (f"# Single edits on {args.model}\n\nCommand: `{command}`\n\nEach of {rows[0]['edits']} edits of "
                f"{args.records.name} (seeded sample, subject in the prompt) applied alone to a fresh copy of the model; "
                "paper metrics in percent; step-1 % = edits whose optimised residual alone produces the target (MEMIT's "
                "step 1, at the last edited layer). Configs are the method's defaults (the published GPT-J values) "
                f"plus the fields shown; key statistics over the model's training text.\n\n{table}")

    def draw(axes) -> None:
        xs = range(len(rows))
        for offset, metric in zip((-0.25, 0, 0.25), ("rel_ag", "gen_ag", "loc_ag")):
            axes.bar([x + offset for x in xs], [r[metric] or 0 for r in rows], width=0.25, label=metric)
        axes.set_xticks(list(xs), [r["setting"] for r in rows], rotation=20)
        axes.set(ylabel="percent", title=f"Single edits on {args.model}")
        axes.legend()

    data = {"model": args.model, "records": args.records.name, "n": args.n, "seed": args.seed, "command": command,
            "rows": rows}  # fmt: skip
    write_results(args.out, name, data, markdown, draw)
    print(markdown)


if __name__ == "__main__":
    main()
