"""Adding edits to a pack vs fitting all of them again: wall time and the edits' answers, measured.

    python scripts/measure_lifelong.py [--old 256] [--new 44] [--threads 1] [--out FILE]

The reference model, the shipped CounterFact sample (meg/assets/demo_counterfact.jsonl), library defaults, the
benchmark protocol (editing sees prompt, target and subject only). A pack of the first --old edits is fitted (or
found in --work: it is the starting point, not a timed step); then, each without a work directory so nothing is
reused:
- add: `MegEditor.add` of the next --new edits (timed);
- fresh fit: `MegEditor.fit` of all --old + --new edits (timed);
- remove: the --new edits removed again from the added pack (timed).
Evaluation is not timed: Rel-AG (edit prompt), Gen-AG (first paraphrase), Loc-AG (first unrelated prompt vs the
base model's own answer), for the old and the new edits, after add and after the fresh fit; after remove, the
removed edits' prompts that still route to an edit and those answered differently from the base model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping OpenMP threads on a shared CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=256, help="edits in the starting pack")
    parser.add_argument("--new", type=int, default=44, help="edits added")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "meg-lifelong-generator",
                        help="work directory of the starting pack's fit (shared with measure_lifelong_generator.py)")
    return parser.parse_args()


def ag(edited, requests, base_answers) -> dict:
    """Rel-AG, Gen-AG and Loc-AG (percent) of `requests` on the edited model."""
    from meg.evaluation.metrics import ag_pass, locality_target

    rel = edited.generate([r.prompt for r in requests])
    gen = edited.generate([r.paraphrases[0] for r in requests])
    loc = edited.generate([r.unrelated[0] for r in requests])

    def percent(flags) -> float:
        return round(100 * sum(flags) / len(requests), 1)

    return {"rel_ag": percent(ag_pass(o, r.target) for o, r in zip(rel, requests)),
            "gen_ag": percent(ag_pass(o, r.target) for o, r in zip(gen, requests)),
            "loc_ag": percent(ag_pass(o, locality_target(b)) for o, b in zip(loc, base_answers))}


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from meg.config import MegConfig
    from meg.data.defaults import demo_dataset
    from meg.decoding import greedy_generate
    from meg.edited_model import EditedModel
    from meg.editor import MegEditor
    from meg.models import load_causal_lm

    dataset = demo_dataset()
    full = dataset.requests[: args.old + args.new]
    requests = [r.for_editing() for r in full]
    model, tokenizer = load_causal_lm("reference", device=args.device)
    editor = MegEditor(model, tokenizer, MegConfig(), dataset.template, model_name="reference")
    start = editor.fit(requests[: args.old], work_dir=args.work)
    report = {"old_edits": args.old, "new_edits": args.new, "threads": args.threads, "device": args.device}

    t = time.perf_counter()
    added = editor.add(start, requests[args.old :])
    report["add_seconds"] = round(time.perf_counter() - t, 1)
    report["add_history"] = added.history[-1]
    t = time.perf_counter()
    fresh = editor.fit(requests)
    report["fit_seconds"] = round(time.perf_counter() - t, 1)
    report["fit_stage_seconds"] = dict(fresh.log["stage_seconds"])
    t = time.perf_counter()
    removed = editor.remove(added, list(range(args.old, args.old + args.new)))
    report["remove_seconds"] = round(time.perf_counter() - t, 1)
    report["remove_history"] = removed.history[-1]
    print(json.dumps({k: report[k] for k in ("add_seconds", "fit_seconds", "remove_seconds")}), flush=True)

    base_loc = greedy_generate(model, tokenizer, [dataset.template.format(r.unrelated[0]) for r in full])
    old, new = full[: args.old], full[args.old :]
    for name, pack in (("after_add", added), ("fresh_fit", fresh)):
        edited = EditedModel(model, tokenizer, pack)
        report[name] = {"old": ag(edited, old, base_loc[: args.old]), "new": ag(edited, new, base_loc[args.old :])}
        print(name, json.dumps(report[name]), flush=True)
    edited = EditedModel(model, tokenizer, removed)
    prompts = [r.prompt for r in new]
    base = greedy_generate(model, tokenizer, [dataset.template.format(p) for p in prompts])
    report["after_remove"] = {"removed_prompts_routed": sum(d["routed"] for d in edited.describe(prompts)),
                              "removed_prompts_not_base_answer": sum(a != b for a, b in
                                                                     zip(edited.generate(prompts), base)),
                              "old": ag(edited, old, base_loc[: args.old])}
    print("after_remove", json.dumps(report["after_remove"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
