"""How well, and at how many DDIM steps, a generator reproduces long neuron vectors (issue 19).

The neuron vector of a model with hidden size d has D = 2d + 1 entries: 2,049 at d = 1024 (GPT-2 medium), 8,193
at d = 4096 (7B models). No trained model of those sizes is available here, so the vectors are collected from
random-weight stand-ins of those widths, cut to a few layers so that collection fits a CPU (the vector's length
depends only on d). Collection runs its step budget whether or not it reaches the targets (on random weights it
cannot), so the vectors are what the optimiser produces, not edits that work. Each generator preset is trained
on them for the same step budget; then, from fixed noise, its samples are compared with the collected vectors
(relative L2 error, mean over edits) at several sampling step counts, and each count is timed.

    python scripts/measure_long_vectors.py --n 64 --out docs/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace

import torch

from meg.collection import collect_weights, preset_for
from meg.data import load_dataset
from meg.diffusion.generator import CONFIGS
from meg.diffusion.train import train_generator
from meg.models import load_causal_lm
from meg.pack import EditPack
from meg.results import markdown_table, write_results
from meg.surgery import neuron_spec

SHAPES = {
    "gpt2-d1024-4layers": {"model_type": "gpt2", "n_embd": 1024, "n_layer": 4, "n_head": 16, "vocab_size": 50257,
                           "n_positions": 1024},
    "llama-d4096-2layers": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                            "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 32,
                            "vocab_size": 32000, "max_position_embeddings": 2048},
}


def stand_in(shape: str, seed: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(SHAPES[shape])
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).eval()


def relative_l2(samples: torch.Tensor, vectors: torch.Tensor) -> float:
    return float(((samples - vectors).norm(dim=1) / vectors.norm(dim=1).clamp_min(1e-12)).mean())


def relative_to_spread(samples: torch.Tensor, vectors: torch.Tensor) -> float:
    """Error over the vectors' mean distance from their mean: 1 = no better than answering the mean vector, so
    it measures the edit-specific part (the plain relative L2 is small whenever the vectors share a large part)."""
    spread = (vectors - vectors.mean(dim=0)).norm(dim=1).mean().clamp_min(1e-12)
    return float((samples - vectors).norm(dim=1).mean() / spread)


def measure(shape: str, args: argparse.Namespace, pack: EditPack, tokenizer, requests) -> list[dict]:
    model = stand_in(shape, args.seed)
    spec = neuron_spec(model, None)
    config = replace(preset_for(model), steps=args.collection_steps, batch_size=args.n)
    start = time.perf_counter()
    collected = collect_weights(model, tokenizer, spec, requests, config, pack.template, progress=False)
    collect_s = time.perf_counter() - start
    del model
    vectors, conds = collected.vectors, pack.edit_embeddings[: args.n]
    print(f"{shape}: D = {spec.dim}, collected {len(vectors)} vectors in {collect_s:.0f} s "
          f"(success {collected.success_rate:.0%}), |v| mean {float(vectors.norm(dim=1).mean()):.3g}", flush=True)
    rows = []
    noise = torch.randn(len(vectors), spec.dim, generator=torch.Generator().manual_seed(args.seed))
    for preset in args.presets.split(","):
        gconfig = replace(CONFIGS["small-gpt2"], preset=preset, max_steps=args.train_steps,
                          eval_every=max(args.train_steps // 4, 1), stop_threshold=0.0,
                          warmup_steps=min(100, args.train_steps // 8))
        start = time.perf_counter()
        generator, log = train_generator(vectors, conds, gconfig, progress=False)
        train_s = time.perf_counter() - start
        generator.eval()
        params = sum(p.numel() for p in generator.parameters())
        for steps in [int(s) for s in args.sampling_steps.split(",")]:
            start = time.perf_counter()
            with torch.no_grad():
                samples = generator.sample(conds, steps=steps, noise=noise)
            seconds = (time.perf_counter() - start) / len(vectors)
            rows.append({"shape": shape, "D": spec.dim, "preset": preset, "parameters": params,
                         "train_steps": args.train_steps, "train_seconds": train_s, "sampling_steps": steps,
                         "relative_l2": relative_l2(samples, vectors),
                         "error_over_spread": relative_to_spread(samples, vectors), "seconds_per_vector": seconds,
                         "collection_seconds": collect_s, "collection_success": collected.success_rate})
            print(f"  {preset} ({params / 1e6:.1f}M) {steps:>2} steps: relative L2 {rows[-1]['relative_l2']:.3f}, "
                  f"error / spread {rows[-1]['error_over_spread']:.3f}, "
                  f"{seconds * 1e3:.1f} ms/vector", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/counterfact/counterfact-edit.json")
    parser.add_argument("--pack", default="runs/bench16-cf1024/work/pack-62a2fac2d85b32d6",
                        help="a pack on the first edits of --data: its edit embeddings are the conditions")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--collection-steps", type=int, default=20)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--train-steps", type=int, default=800)
    parser.add_argument("--sampling-steps", default="1,2,4,10,25,50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--name", default="generator-long-vectors")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pack = EditPack.load(args.pack)
    _, tokenizer = load_causal_lm("reference")
    requests = load_dataset(args.data).requests[: args.n]
    rows = [row for shape in args.shapes.split(",") for row in measure(shape, args, pack, tokenizer, requests)]
    command = "python scripts/measure_long_vectors.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table = markdown_table(["stand-in", "D", "generator", "parameters", "sampling steps", "relative L2",
                            "error / spread", "ms/vector"],
                           [[r["shape"], r["D"], r["preset"], f"{r['parameters'] / 1e6:.1f}M", r["sampling_steps"],
                             r["relative_l2"], r["error_over_spread"], r["seconds_per_vector"] * 1e3] for r in rows])
    markdown = (f"# Generators on long neuron vectors: reproduction error against sampling steps\n\nCommand: "
                f"`{command}`\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{args.n} edits (first of {args.data}), "
                f"collection {args.collection_steps} steps, generators trained {args.train_steps} steps (the "
                f"`small-gpt2` recipe with the named DiT size), one CPU thread.\n\n{table}")

    def plot(ax) -> None:
        for key in sorted({(r["shape"], r["preset"]) for r in rows}):
            points = [r for r in rows if (r["shape"], r["preset"]) == key]
            ax.plot([p["sampling_steps"] for p in points], [p["error_over_spread"] for p in points], marker="o",
                    label=f"{key[0]} (D = {points[0]['D']}), {key[1]}")
        ax.set_xscale("log")
        ax.set_xlabel("DDIM sampling steps")
        ax.set_ylabel("error / spread of the collected vectors")
        ax.legend(fontsize=7)

    write_results(args.out, args.name, {"rows": rows, "command": command}, markdown, plot)
    print(markdown)


if __name__ == "__main__":
    main()
