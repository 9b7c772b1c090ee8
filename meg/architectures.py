"""Where the neuron attaches, per Hugging Face `model_type`: data, not name sniffing.

Each row names, relative to the `*ForCausalLM` module, the list of decoder blocks, the FFN module inside a
block, (for non-gated FFNs) the FFN's own activation module, and the FFN's output projection (the matrix that
weight-editing baselines such as MEMIT and AlphaEdit rewrite). `meg.surgery` is the only user.

Neuron forms (paper, "The neuron"):
- "activated": `w_out * act(w_in . h + b)`, D = 2d + 1, for plain two-matrix FFNs (GPT-2, GPT-J, GPT-NeoX,
  Phi, Falcon, BLOOM, StarCoder). The extra neuron is then exactly one more hidden unit of the FFN, using the
  FFN's own activation.
- "linear": `w_out * (w_in . h)`, D = 2d, for gated FFNs (Llama family). A gated unit would need three vectors
  (gate, up, down); the paper instead adds a plain linear neuron to the FFN output, and we follow it.
In both forms a zero vector is an exact no-op.

To support a new architecture, add a row to `ARCHITECTURES` (or pass `extra_architectures` to `resolve`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal

from meg.errors import InputError, UnsupportedModelError

NeuronForm = Literal["activated", "linear"]


@dataclass(frozen=True)
class ArchSpec:
    """Module paths for one `model_type`.

    Attributes:
        blocks: dotted path of the `ModuleList` of decoder blocks, e.g. "transformer.h".
        ffn: dotted path of the FFN module inside one block, e.g. "mlp". Its first input is the FFN input h.
        activation: dotted path of the FFN activation inside `ffn` ("activated" form only).
        form: which neuron form this family gets (see module docstring).
        layer_fraction: default layer = floor(layer_fraction * n_layers); see `default_layer`.
        collection_preset: name of the weight-collection preset in `meg.collection.PRESETS`.
        ffn_out: dotted path of the FFN's output projection inside one block, e.g. "mlp.c_proj" (a Linear, or a
            transformers Conv1D). Its input is the "key" of locate-then-edit methods (Meng et al. 2023); None =
            unknown, so weight-editing baselines refuse the model.
    """

    blocks: str
    ffn: str
    activation: str | None
    form: NeuronForm
    layer_fraction: float
    collection_preset: str
    ffn_out: str | None = None

    def __post_init__(self) -> None:
        if (self.form == "activated") != (self.activation is not None):
            raise ValueError("an 'activated' neuron needs an activation path; a 'linear' one has none")
        if not 0.0 <= self.layer_fraction < 1.0:
            raise ValueError(f"layer_fraction must be in [0, 1), got {self.layer_fraction}")


# Default layer rule. The paper sweeps layers and lands at 9/28 (GPT-J), 14/32 (Llama-3-8B) and 29/32 (Phi-2);
# we keep its choice for those families and use 1/3 of depth elsewhere (the GPT-J-like setting). On our
# GPT-2-shaped reference model the sweep (docs/results/layers-reference.md, 64 edits) gives layers 0-2
# 100 / 98.4 / 98.4% success: within one edit of each other, so the 1/3 rule (layer 2) stands; success falls
# past mid-depth (84% at layer 5). `meg layers` runs the sweep for any model.
_GPTJ_FRACTION = 9 / 28 + 1e-6
_LLAMA_FRACTION = 14 / 32
_PHI_FRACTION = 29 / 32
_THIRD = 1 / 3 + 1e-6


def _plain(
    blocks: str, activation: str, ffn_out: str, fraction: float = _THIRD, preset: str = "paper-gptj"
) -> ArchSpec:
    return ArchSpec(blocks, "mlp", activation, "activated", fraction, preset, ffn_out)


def _gated(fraction: float = _LLAMA_FRACTION) -> ArchSpec:
    return ArchSpec("model.layers", "mlp", None, "linear", fraction, "paper-llama3", "mlp.down_proj")


ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": _plain("transformer.h", "act", "mlp.c_proj", preset="small-gpt2"),  # Conv1D, weight (in, out)
    "gpt_bigcode": _plain("transformer.h", "act", "mlp.c_proj"),  # nn.Linear, unlike GPT-2
    "gptj": _plain("transformer.h", "act", "mlp.fc_out", _GPTJ_FRACTION),
    "gpt_neox": _plain("gpt_neox.layers", "act", "mlp.dense_4h_to_h"),
    "falcon": _plain("transformer.h", "act", "mlp.dense_4h_to_h"),
    "bloom": _plain("transformer.h", "gelu_impl", "mlp.dense_4h_to_h"),
    "phi": _plain("model.layers", "activation_fn", "mlp.fc2", _PHI_FRACTION, preset="paper-phi2"),
    "llama": _gated(),
    "mistral": _gated(),
    "qwen2": _gated(),
    "qwen3": _gated(),
    "gemma": _gated(),
    "gemma2": _gated(),
    "olmo2": _gated(),
}


def resolve(model_type: str, extra_architectures: dict[str, ArchSpec] | None = None) -> ArchSpec:
    """Return the row for `model_type`, or fail with a message that says how to add one."""
    table = {**ARCHITECTURES, **(extra_architectures or {})}
    if model_type not in table:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(table))}. "
            "To add it, pass extra_architectures={'%s': ArchSpec(blocks=..., ffn=..., activation=..., form=..., "
            "layer_fraction=..., collection_preset=..., ffn_out=...)} or add a row to meg.architectures.ARCHITECTURES" % model_type
        )
    return table[model_type]


def default_layer(spec: ArchSpec, n_layers: int) -> int:
    """The layer used when none is given: floor(layer_fraction * n_layers), 0-indexed."""
    return min(n_layers - 1, int(spec.layer_fraction * n_layers))


def context_length_of(config: Any) -> int | None:
    """The longest sequence a model with this Hugging Face config accepts, when the config says (None = unknown)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_layer(layer: int, n_layers: int) -> int:
    """Validate an explicit layer index: an integer in 0..n_layers-1 (a negative index is refused, not counted
    from the end: `-1` is far more often a mistake than a wish for the last block)."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise InputError(f"layer must be an integer in 0..{n_layers - 1}, got {layer!r}")
    if not 0 <= layer < n_layers:
        raise InputError(f"layer {layer} is out of range for a model with {n_layers} layers (valid: 0..{n_layers - 1})")
    return int(layer)
