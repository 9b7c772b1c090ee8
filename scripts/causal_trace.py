"""Causal tracing of a model's factual recall (ROME's Fig. 1): the average indirect effect of restoring each
layer's hidden state at the subject's first / last token and at the prompt's last token.

    python scripts/causal_trace.py --model reference-2 --out docs/results
    python scripts/causal_trace.py --model reference --out docs/results

Facts: ROME's known_1000 (default) or any CounterFact file (`--data`); only the facts the model knows are traced
(meg/benchmarks/tracing.py). Writes causal-trace-<model>.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping, not spinning, OpenMP threads

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name (reference, reference-2), path or Hub id")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "rome" / "known_1000.json")
    parser.add_argument("--n", type=int, default=None, help="first N facts of the file (default: all)")
    parser.add_argument("--samples", type=int, default=10, help="noise draws per fact")
    parser.add_argument("--noise-scale", type=float, default=3.0, help="noise std in units of the subject embeddings' std")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON, markdown and plot")
    parser.add_argument("--name", default=None, help="results file stem (default: causal-trace-<model name>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from meg.benchmarks.tracing import TraceConfig, causal_trace, load_facts, report
    from meg.models import load_causal_lm

    torch.set_num_threads(args.threads)
    if not args.data.is_file():
        raise SystemExit(f"error: --data {args.data} does not exist")
    config = TraceConfig(noise_scale=args.noise_scale, samples=args.samples, seed=args.seed)
    model, tokenizer = load_causal_lm(args.model)
    model.requires_grad_(False)
    facts = load_facts(args.data)[: args.n]
    result = {"model": args.model, "data": args.data.name, **causal_trace(model, tokenizer, facts, config)}
    command = "python scripts/causal_trace.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    paths = report(result, args.name or f"causal-trace-{Path(args.model).name}", command, args.out)
    print(Path(paths["md"]).read_text())


if __name__ == "__main__":
    main()
