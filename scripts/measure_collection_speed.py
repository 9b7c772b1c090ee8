"""Collection speed-ups, before/after in one process: the loss from the full logits vs from the answer positions
only (`meg.surgery.logits_at`), and the batch size. Variants are timed interleaved, round after round, on the same
edits, so the ratios hold on a shared machine; writes docs/results/collection-speed.{json,md,png}.

    python scripts/measure_collection_speed.py --n 256 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def full_logits_losses(model: nn.Module, batch, tokens) -> torch.Tensor:
    """The loss as computed before: the whole (B, T, V) logits, then the mean over each row's loss tokens."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.loss_mask(tokens)[:, 1:].float()
    nll = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch.input_ids[:, 1:], reduction="none")
    return (nll * mask).sum(1) / mask.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "counterfact" / "counterfact-val.json")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="32,64,128,256")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dataclasses import replace

    from meg import collection
    from meg.collection import collect_weights, preset_for
    from meg.data import load_dataset
    from meg.models import load_causal_lm
    from meg.results import markdown_table, write_results
    from meg.surgery import neuron_spec

    model, tokenizer = load_causal_lm("reference")
    dataset = load_dataset(args.data)
    requests = [r.for_editing() for r in dataset.requests[: args.n]]
    spec, base = neuron_spec(model), preset_for(model)
    answer_only = collection._row_losses
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    variants = [("full logits", base.batch_size, full_logits_losses)]
    variants += [("answer logits", size, answer_only) for size in sizes]
    seconds: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    results = {}
    for _ in range(args.rounds):
        for i, (_, size, loss) in enumerate(variants):
            collection._row_losses = loss
            start = time.perf_counter()
            results[i] = collect_weights(model, tokenizer, spec, requests, replace(base, batch_size=size),
                                         dataset.template, progress=False)
            seconds[i].append(time.perf_counter() - start)
    collection._row_losses = answer_only
    before = min(seconds[0])
    rows, points = [], []
    for i, (name, size, _) in enumerate(variants):
        best = min(seconds[i])
        diff = float((results[i].vectors - results[0].vectors).abs().max())
        point = {"loss": name, "batch_size": size, "seconds": best, "edits_per_second": len(requests) / best,
                 "speedup": before / best, "success_rate": results[i].success_rate,
                 "mean_steps": float(results[i].steps.float().mean()), "max_abs_vector_diff_vs_before": diff}
        points.append(point)
        rows.append([name, size, f"{best:.1f}", f"{point['edits_per_second']:.2f}", f"{point['speedup']:.2f}x",
                     f"{point['success_rate']:.1%}", f"{point['mean_steps']:.1f}", f"{diff:.2e}"])
    command = (f"python scripts/measure_collection_speed.py --n {args.n} --rounds {args.rounds} "
               f"--threads {args.threads} --batch-sizes {args.batch_sizes}")
    setup = {"command": command, "model": "reference", "layer": spec.layer, "edits": len(requests),
             "data": str(args.data.name), "preset": base.to_dict(), "rounds": args.rounds, "threads": args.threads}
    table = markdown_table(["loss", "batch", "seconds (best of rounds)", "edits/s", "speed-up", "success",
                            "mean steps", "max |vector diff| vs before"], rows)
    header = (f"# Neuron collection: speed of the loss and the batch size\n\nCommand: `{command}`\n\n"
              f"{len(requests)} edits of {args.data.name}, the reference model, layer {spec.layer}, preset "
              f"small-gpt2, {args.threads} thread(s); variants timed interleaved over {args.rounds} rounds, best "
              f"round shown; speed-up against the first row (the loss over the full logits at the preset's batch).\n\n")

    def draw(axes) -> None:
        answer = [p for p in points if p["loss"] == "answer logits"]
        axes.plot([p["batch_size"] for p in answer], [p["edits_per_second"] for p in answer], marker="o",
                  label="answer logits")
        axes.scatter([points[0]["batch_size"]], [points[0]["edits_per_second"]], color="red", label="full logits")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("edits per batch")
        axes.set_ylabel("edits / second")
        axes.legend()

    paths = write_results(args.out, "collection-speed", {"setup": setup, "points": points}, header + table, draw)
    print(Path(paths["md"]).read_text())


if __name__ == "__main__":
    main()
