"""Fine-tune or retrain the generator when edits are added to a pack? Fidelity and seconds of each, measured.

    python scripts/measure_lifelong_generator.py [--old 256] [--new 44] [--threads 1] [--out FILE]

The reference model, the shipped CounterFact sample (meg/assets/demo_counterfact.jsonl): a pack is fitted on the
first --old edits with the library defaults; the next --new edits are collected and embedded with the pack's
encoder (what `MegEditor.add` does). Then every variant below trains a generator on ALL successfully collected
vectors (old + new, the replay) and is scored separately on the old and the new edits:
- relative L2: ||generated - collected|| / ||collected||, mean (the generator's own stop metric);
- Rel-AG: the edit prompt answered with the vector generated from its own embedding (the matched-edit route).
"retrain" is a fresh generator with the pack's settings (what a fit of all the edits runs); "fine-tune K" starts
from the pack's generator and runs K steps of the same schedule shape (warm-up, cosine decay) with the stop
criterion checked every K / 3 steps, its batches either uniform over all pairs or "focus" (half of every batch
from the new edits, the rest a replay of the old: `train_generator(focus=...)`). "pack as is" is the old generator
without any training.
With --tiny, the same on the tests' setup (tests/conftest.py: the tiny GPT-2 that knows 16 facts, `tiny_config()`,
its pseudo pairs and unrelated queries). Writes JSON to --out (default: stdout only).
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

FINE_TUNE_STEPS = (100, 200, 400)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=256, help="edits in the starting pack")
    parser.add_argument("--new", type=int, default=44, help="edits added")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the pack's)")
    parser.add_argument("--steps", default=",".join(map(str, FINE_TUNE_STEPS)), help="fine-tuning step budgets")
    parser.add_argument("--modes", default="uniform,focus", help="fine-tuning batches: uniform over all pairs, "
                        "and/or focus (half of every batch from the new edits, the rest replaying the old)")
    parser.add_argument("--no-retrain", action="store_true", help="skip the retrain variant")
    parser.add_argument("--rule", action="store_true", help="also the library's rule: meg.lifelong.fine_tune_config "
                        "with the new edits as focus, what MegEditor.add runs")
    parser.add_argument("--tiny", action="store_true", help="the tests' setup instead: tiny GPT-2 of tests/conftest.py, "
                        "tiny_config(), its 16 facts (--old 12 --new 4)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "meg-lifelong-generator")
    return parser.parse_args()


def score(model, tokenizer, pack, generator, conds, vectors, requests, template) -> dict:
    """Relative L2 and Rel-AG of `generator` on (conds (n, C) -> vectors (n, D)) for `requests`."""
    import torch

    from meg.decoding import MAX_NEW_TOKENS, greedy_generate
    from meg.evaluation.metrics import ag_pass

    generated = generator.sample(conds, generator=torch.Generator().manual_seed(7))  # (n, D)
    rel = ((generated - vectors).norm(dim=1) / vectors.norm(dim=1).clamp_min(1e-12)).mean().item()
    outputs = greedy_generate(model, tokenizer, [template.format(r.prompt) for r in requests], MAX_NEW_TOKENS,
                              pack.neuron, generated, 64)
    ag = sum(ag_pass(o, r.target) for o, r in zip(outputs, requests)) / len(requests)
    return {"relative_l2": round(rel, 4), "rel_ag": round(100 * ag, 1)}


def tiny_setup():
    """(model, tokenizer, config, template, requests, fit options) of tests/test_lifelong.py."""
    import sys

    from meg.prompts import PromptTemplate
    from meg.requests import EditRequest, PseudoPair

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import conftest as c

    tokenizer = c.build_tokenizer()
    model = c.train_on_facts(c.build_model("gpt2", vocab_size=len(tokenizer), n_embd=64), tokenizer)
    requests = [EditRequest(p, t, subject=s) for (p, _), t, s in zip(c.FACTS, c.NEW_TARGETS, c.SUBJECTS)]
    options = {"pseudo_pairs": [PseudoPair(*p) for p in c.PSEUDO_PAIRS], "unrelated": c.UNRELATED[20:],
               "calibration_pairs": [], "progress": False}
    return model, tokenizer, c.tiny_config(), PromptTemplate(), requests, options


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from meg.collection import collect_weights
    from meg.config import MegConfig
    from meg.data.defaults import demo_dataset
    from meg.diffusion.train import train_generator
    from meg.editor import MegEditor
    from meg.encoder import QueryEncoder
    from meg.models import load_causal_lm

    work = args.work
    if args.tiny:
        model, tokenizer, config, template, requests, fit_options = tiny_setup()
    else:
        dataset = demo_dataset()
        requests = [r.for_editing() for r in dataset.requests[: args.old + args.new]]
        model, tokenizer = load_causal_lm("reference")
        config, template, fit_options = MegConfig(), dataset.template, {}
    old, new = requests[: args.old], requests[args.old : args.old + args.new]
    start = time.perf_counter()
    pack = MegEditor(model, tokenizer, config, template).fit(old, work_dir=work, **fit_options)
    fit_seconds = time.perf_counter() - start
    encoder = QueryEncoder.from_config(pack.config.encoder)
    encoder.load_tuned_state(pack.encoder_state)
    collected = collect_weights(model, tokenizer, pack.neuron, new, pack.config.collection, template, work)
    new_emb = encoder.encode([r.prompt for r in new])
    ok_old, ok_new = pack.collection.success, collected.success
    sets = {
        "old": (pack.edit_embeddings[ok_old], pack.collection.vectors[ok_old], [r for r, k in zip(old, ok_old) if k]),
        "new": (new_emb[ok_new], collected.vectors[ok_new], [r for r, k in zip(new, ok_new) if k]),
    }
    conds = torch.cat([sets["old"][0], sets["new"][0]])
    vectors = torch.cat([sets["old"][1], sets["new"][1]])
    base = pack.config.generator

    def measured(name: str, generator, seconds: float, log=None) -> dict:
        row = {"variant": name, "seconds": round(seconds, 1)}
        for part, (c, v, reqs) in sets.items():
            row[part] = score(model, tokenizer, pack, generator, c, v, reqs, template)
        if log is not None:
            row["steps"], row["stop_reason"] = log.steps, log.stop_reason
        print(json.dumps(row), flush=True)
        return row

    rows = [measured("pack as is", pack.generator, 0.0)]
    new_rows = torch.arange(len(sets["old"][1]), len(vectors))
    for mode in args.modes.split(","):
        for steps in [int(s) for s in args.steps.split(",") if s]:
            config = replace(base, max_steps=steps, warmup_steps=min(base.warmup_steps, steps // 10),
                             eval_every=max(steps // 3, 1), **({"lr": args.lr} if args.lr else {}))
            t = time.perf_counter()
            generator, log = train_generator(vectors, conds, config, progress=False, init=pack.generator,
                                             focus=new_rows if mode == "focus" else None)
            rows.append(measured(f"fine-tune {steps} {mode}" + (f" lr {args.lr:g}" if args.lr else ""), generator,
                                 time.perf_counter() - t, log))
    if args.rule:
        from meg.lifelong import fine_tune_config

        t = time.perf_counter()
        generator, log = train_generator(vectors, conds, fine_tune_config(base), progress=False, init=pack.generator,
                                         focus=new_rows)
        rows.append(measured("library rule", generator, time.perf_counter() - t, log))
    if not args.no_retrain:
        t = time.perf_counter()
        generator, log = train_generator(vectors, conds, base, progress=False)
        rows.append(measured("retrain", generator, time.perf_counter() - t, log))
    report = {"old_edits": args.old, "new_edits": args.new, "threads": args.threads, "fit_seconds": round(fit_seconds, 1),
              "fit_stage_seconds": pack.log["stage_seconds"], "collected_new": int(ok_new.sum()), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()
