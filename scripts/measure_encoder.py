"""Measure the query encoder (paper stage 1) on CounterFact: throughput, tuning cost, and what tuning buys.

Edits: the first --edits records of counterfact-val.json (prompt, rephrase_prompt, locality_prompt). Pseudo pairs
(NOT in the edit set): the first --pairs records of counterfact-train.json (prompt, rephrase_prompt).
Writes <out>/encoder-tuning.json and .md. Example (about 5 minutes on one shared CPU core):

    python scripts/measure_encoder.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from meg import __version__
from meg.encoder import EncoderConfig, QueryEncoder
from meg.files import atomic_write_json, atomic_write_text
from meg.requests import PseudoPair

DATA = Path("/work/shared/data/counterfact")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", type=Path, default=DATA / "counterfact-val.json")
    parser.add_argument("--train", type=Path, default=DATA / "counterfact-train.json")
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results")
    parser.add_argument("--name", default="encoder-tuning", help="output file stem")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--config", default="{}", help='JSON overrides of EncoderConfig, e.g. \'{"epochs": 5}\'')
    return parser.parse_args()


def load_data(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[PseudoPair], int]:
    """Edit-set texts by kind, and pseudo pairs with any edit prompt removed (count of removed returned)."""
    records = json.loads(args.val.read_text())[: args.edits]
    texts = {
        "prompt": [r["prompt"] for r in records],
        "paraphrase": [r["rephrase_prompt"] for r in records],
        "locality": [r["locality_prompt"] for r in records],
    }
    edit_texts = set(texts["prompt"]) | set(texts["paraphrase"])
    rows = json.loads(args.train.read_text())[: args.pairs]
    pairs = [PseudoPair(r["prompt"], r["rephrase_prompt"]) for r in rows]
    kept = [p for p in pairs if p.question not in edit_texts and p.paraphrase not in edit_texts]
    return texts, kept, len(pairs) - len(kept)


def routing_metrics(emb: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine structure between paraphrases / locality prompts and the edit prompts (all unit vectors)."""
    prompts, paraphrases, locality = emb["prompt"], emb["paraphrase"], emb["locality"]
    para_sim = paraphrases @ prompts.T  # (N, N): paraphrase i vs edit prompt j
    loc_nearest = (locality @ prompts.T).max(dim=1).values
    threshold = torch.quantile(loc_nearest, 0.98)  # lets 2% of locality prompts through a similarity gate
    own = torch.arange(len(prompts))
    return {
        "paraphrase_nearest_edit_accuracy": (para_sim.argmax(dim=1) == own).float().mean().item(),
        "cos_original_paraphrase": para_sim.diagonal().mean().item(),
        "cos_locality_nearest_edit": loc_nearest.mean().item(),
        "cos_locality_own_edit": (locality * prompts).sum(dim=1).mean().item(),
        "paraphrases_admitted_at_2pct_locality": (para_sim.max(dim=1).values > threshold).float().mean().item(),
    }


def embed_all(encoder: QueryEncoder, texts: dict[str, list[str]]) -> tuple[dict[str, torch.Tensor], float]:
    start = time.perf_counter()
    emb = {kind: encoder.encode(items, batch_size=64) for kind, items in texts.items()}
    return emb, time.perf_counter() - start


def markdown(result: dict) -> str:
    untuned, tuned, log = result["untuned"], result["tuned"], result["tuning"]
    rows = [
        ("paraphrase -> own edit is the nearest edit prompt (cosine)", "paraphrase_nearest_edit_accuracy", "{:.1%}"),
        ("mean cosine original-paraphrase", "cos_original_paraphrase", "{:.3f}"),
        ("mean cosine locality prompt - nearest edit prompt", "cos_locality_nearest_edit", "{:.3f}"),
        ("mean cosine locality prompt - its own edit prompt", "cos_locality_own_edit", "{:.3f}"),
        ("paraphrases above a similarity bar passing 2% of locality prompts", "paraphrases_admitted_at_2pct_locality",
         "{:.1%}"),
    ]
    table = "\n".join(f"| {label} | {fmt.format(untuned[k])} | {fmt.format(tuned[k])} |" for label, k, fmt in rows)
    return f"""# Query encoder tuning on CounterFact (meg {result["meg_version"]})

Command: `{result["command"]}`

Encoder `{result["config"]["model"]}`; {result["edits"]} edits from counterfact-val.json; {result["pairs"]} pseudo pairs from
counterfact-train.json ({result["pairs_dropped_overlap"]} dropped: their prompt or paraphrase is also an edit prompt or
paraphrase); {result["threads"]} torch thread(s) on a CPU shared with other jobs.

- Encoding throughput (untuned, {result["encode_texts"]} texts, batch 64): {result["encode_texts_per_s"]:.0f} texts/s
- Tuning, config `{json.dumps(result["config"])}`: {log["wall_seconds"]:.0f} s wall
  ({log["cache_seconds"]:.0f} s caching the frozen layers for {log["texts"]} distinct texts, {log["train_seconds"]:.0f} s
  for {log["steps"]} steps of the last layer); InfoNCE (eval mode, batches of {result["config"]["batch_size"]}):
  {log["initial_loss"]:.3f} -> {log["final_loss"]:.3f}

| measure (1,000 edits) | untuned | tuned |
|---|---|---|
{table}
"""


def command(args: argparse.Namespace) -> str:
    overrides = "" if json.loads(args.config) == {} else f" --config '{args.config}'"
    return f"python scripts/measure_encoder.py --threads {args.threads}{overrides}"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, pairs, dropped = load_data(args)
    config = replace(EncoderConfig.paper(), **json.loads(args.config))  # the committed rows: the paper's tuning
    encoder = QueryEncoder.from_config(config)
    untuned_emb, seconds = embed_all(encoder, texts)
    tuned_encoder = copy.deepcopy(encoder)
    log = tuned_encoder.tune(pairs, progress=True)
    tuned_emb, _ = embed_all(tuned_encoder, texts)
    n_texts = sum(len(v) for v in texts.values())
    result = {
        "meg_version": __version__,
        "command": command(args),
        "config": config.to_dict(), "edits": len(texts["prompt"]), "pairs": len(pairs),
        "pairs_dropped_overlap": dropped, "threads": args.threads,
        "encode_texts": n_texts, "encode_seconds": seconds, "encode_texts_per_s": n_texts / seconds,
        "tuning": log.to_dict(), "untuned": routing_metrics(untuned_emb), "tuned": routing_metrics(tuned_emb),
    }
    atomic_write_json(args.out / f"{args.name}.json", result)
    atomic_write_text(args.out / f"{args.name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
