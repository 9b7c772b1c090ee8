"""Pilot for reference-2: the same model and token budget on two corpus styles of the same CounterFact facts.

    python scripts/pilot_reference_2.py --records 1500 --tokens 800000 --out runs/reference-2/pilot
    python scripts/measure_step1.py --model runs/reference-2/pilot/multi --n 64 --pool 1500

Styles: "single" is the first reference model's (corpus.py: each fact in its one data wording, no context);
"multi" is corpus2.py (every fact also in other templates of its relation, after 0-2 context sentences). Both
use the first `--records` records of counterfact-edit.json (their edit facts and locality facts), one tokenizer
(trained on the full reference-2 corpus, as the real model will be), and about `--tokens` training tokens: each
style gets the number of epochs that comes closest. Each model is resumable from `--out/work`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping, not spinning, OpenMP threads

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(Path(__file__).stem)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--records", type=int, default=1500, help="first N records of counterfact-edit.json")
    parser.add_argument("--tokens", type=int, default=800_000, help="training tokens per style (approximately)")
    parser.add_argument("--styles", default="single,multi")
    parser.add_argument("--extra-wordings", type=int, default=None, help="override Corpus2Config.extra_wordings")
    parser.add_argument("--fact-context", type=float, default=None, help="override Corpus2Config.fact_context")
    parser.add_argument("--layers", type=int, default=None, help="override the recipe's number of layers")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reference-2" / "pilot")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from meg.data.counterfact import parse_counterfact
    from meg.data.facts import Fact
    from meg.refmodel.corpus import EvalFacts
    from meg.refmodel.corpus2 import build_corpus2, single_template_lines
    from meg.refmodel.tokenizer import encode_lines, train_bpe
    from meg.refmodel.train import RECIPES, train_reference_model

    base = RECIPES["reference-2"]
    corpus2 = base.corpus2 if args.extra_wordings is None else replace(base.corpus2, extra_wordings=args.extra_wordings)
    corpus2 = corpus2 if args.fact_context is None else replace(corpus2, fact_context=args.fact_context)
    base = replace(base, corpus2=corpus2, n_layer=args.layers or base.n_layer, monitor_facts=0)
    tokenizer_lines = build_corpus2(args.data, base.corpus2).lines
    tokenizer = train_bpe(tokenizer_lines, base.vocab_size, base.n_positions)
    requests = [r for r, _ in parse_counterfact(args.data / "counterfact" / "counterfact-edit.json")[: args.records]]
    facts = [Fact(r.prompt, r.ground_truth) for r in random.Random(0).sample(requests, min(300, len(requests)))]
    eval_facts = EvalFacts({"counterfact_prompt": facts})
    results = {}
    for style in args.styles.split(","):
        if style == "single":
            lines = single_template_lines(args.data, args.records)
        else:
            lines = build_corpus2(args.data, replace(base.corpus2, counterfact_subset=args.records)).lines
        tokens = sum(len(ids) for ids in encode_lines(tokenizer, lines))
        epochs = max(1, round(args.tokens / tokens))
        config = replace(base, epochs=epochs, corpus2=None)
        log.info("%s: %d lines, %d tokens/epoch, %d epochs", style, len(lines), tokens, epochs)
        summary = train_reference_model(config, args.data, args.out / style, lines=lines, eval_facts=eval_facts,
                                        work_dir=args.out / "work", tokenizer_lines=tokenizer_lines)  # fmt: skip
        results[style] = {"lines": len(lines), "tokens_per_epoch": tokens, "epochs": epochs,
                          "final_loss": summary["final_loss"], "greedy_accuracy": summary["greedy_accuracy"],
                          "train_seconds": summary["train_seconds"]}  # fmt: skip
        print(style, json.dumps(results[style]), flush=True)
    (args.out / "pilot.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
