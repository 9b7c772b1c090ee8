"""Choose the editing layer the way the paper did: single-neuron edit success rate per layer on a sample."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.collection import CollectionConfig, collect_weights
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.results import markdown_table, write_results
from meg.surgery import neuron_spec, num_layers


@dataclass(frozen=True)
class LayerScore:
    """Collection outcome at one layer: greedy success rate, mean final loss, mean steps, wall time."""

    layer: int
    success_rate: float
    mean_loss: float
    mean_steps: float
    seconds: float


def sweep_layers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    config: CollectionConfig,
    template: PromptTemplate = PromptTemplate(),
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> list[LayerScore]:
    """Collect `requests` at every layer in `layers` (default: all) and score each layer."""
    layers = list(range(num_layers(model))) if layers is None else list(layers)
    scores = []
    for layer in layers:
        spec = neuron_spec(model, layer)
        start = time.perf_counter()
        result = collect_weights(model, tokenizer, spec, requests, config, template, progress=progress)
        scores.append(
            LayerScore(
                layer=spec.layer,
                success_rate=result.success_rate,
                mean_loss=float(result.loss.mean()),
                mean_steps=float(result.steps.float().mean()),
                seconds=time.perf_counter() - start,
            )
        )
    return scores


def best_layer(scores: Sequence[LayerScore]) -> LayerScore:
    """Highest success rate; ties go to the lower final loss."""
    return max(scores, key=lambda s: (s.success_rate, -s.mean_loss))


def layers_markdown(scores: Sequence[LayerScore]) -> str:
    best = best_layer(scores).layer
    rows = [
        [f"**{s.layer}**" if s.layer == best else s.layer, f"{s.success_rate:.1%}", s.mean_loss, s.mean_steps, s.seconds]
        for s in scores
    ]
    return markdown_table(["layer", "edit success", "final loss", "mean steps", "seconds"], rows)


def write_layer_sweep(out_dir: str | Path, name: str, scores: Sequence[LayerScore], setup: dict) -> dict[str, Path]:
    """JSON + markdown + PNG of a sweep (`setup` records model, data, n and the collection config)."""

    def draw(axes) -> None:
        axes.plot([s.layer for s in scores], [100 * s.success_rate for s in scores], marker="o")
        axes.set_xlabel("layer")
        axes.set_ylabel("single-neuron edit success (%)")
        axes.set_title(f"layer sweep: {setup.get('model', '')}")

    data = {"setup": setup, "best_layer": best_layer(scores).layer, "layers": [asdict(s) for s in scores]}
    header = f"# Layer sweep\n\nCommand: `{setup.get('command', '')}`\n\n"
    return write_results(out_dir, name, data, header + layers_markdown(scores), draw)
