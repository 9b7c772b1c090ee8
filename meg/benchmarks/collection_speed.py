"""Weight-collection throughput: edits per second, one edit at a time vs batched (every row its own neuron)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.collection import CollectionConfig, collect_weights
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.results import markdown_table, write_results
from meg.surgery import NeuronSpec


@dataclass(frozen=True)
class SpeedPoint:
    batch_size: int
    edits: int
    seconds: float
    edits_per_second: float
    success_rate: float


def measure_collection_speed(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: NeuronSpec,
    requests: Sequence[EditRequest],
    config: CollectionConfig,
    batch_sizes: Sequence[int],
    template: PromptTemplate = PromptTemplate(),
    single_edits: int = 32,
) -> list[SpeedPoint]:
    """Time `collect_weights` at each batch size. Batch size 1 runs on the first `single_edits` requests only
    (it is the slow baseline); the others run on all of them."""
    points = []
    for size in batch_sizes:
        subset = list(requests[: single_edits if size == 1 else len(requests)])
        start = time.perf_counter()
        result = collect_weights(model, tokenizer, spec, subset, replace(config, batch_size=size), template)
        seconds = time.perf_counter() - start
        points.append(SpeedPoint(size, len(subset), seconds, len(subset) / seconds, result.success_rate))
    return points


def write_collection_speed(out_dir: str | Path, points: Sequence[SpeedPoint], setup: dict) -> dict[str, Path]:
    base = next((p.edits_per_second for p in points if p.batch_size == 1), None)
    rows = [
        [p.batch_size, p.edits, p.seconds, p.edits_per_second, f"{p.edits_per_second / base:.1f}x" if base else "-",
         f"{p.success_rate:.1%}"]
        for p in points
    ]
    table = markdown_table(["batch size", "edits", "seconds", "edits/s", "speed-up", "success"], rows)
    header = f"# Weight-collection throughput\n\nCommand: `{setup['command']}`\n\nSetup: {setup['description']}\n\n"

    def draw(axes) -> None:
        axes.plot([p.batch_size for p in points], [p.edits_per_second for p in points], marker="o")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("edits per forward/backward (batch size)")
        axes.set_ylabel("edits / second")
        axes.set_title("neuron collection throughput")

    data = {"setup": setup, "points": [asdict(p) for p in points]}
    return write_results(out_dir, "collection-throughput", data, header + table, draw)
