"""Model surgery: the only module that touches a Hugging Face model's internals.

`mount_neuron` adds ONE extra neuron to the FFN of one decoder layer for the duration of a `with` block, with a
different neuron per batch row (paper, "The neuron"):

    FFN'(h)[b, t] = FFN(h)[b, t] + w_out[b] * act(w_in[b] . h[b, t] + bias[b])    ("activated", D = 2d + 1)
    FFN'(h)[b, t] = FFN(h)[b, t] + w_out[b] * (w_in[b] . h[b, t])                 ("linear",    D = 2d)

The neuron vector of a row is laid out `[w_in (d), bias (1, activated form only), w_out (d)]`. A row of zeros is an
exact no-op: that row's FFN output is returned untouched (`torch.where`), so its logits are bit-identical.

The hook is registered on entry and removed in `finally`, so the model is unmodified after the block, even when
the block raises. Per-call state (the weights) lives in the hook's closure, never on a module.

Weight-editing baselines (meg.baselines) get what they need from here too: the FFN output projection of a layer
(`ffn_output_projection`), its weight as an (out, in) "linear view" whatever the module's orientation
(`linear_weight`, `add_linear_update`), the keys and block outputs of a forward pass (`capture_activations`), and
a per-row delta added to a layer's FFN output at chosen positions (`add_to_ffn_output`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from meg.architectures import ArchSpec, NeuronForm, check_layer, context_length_of, default_layer, resolve
from meg.errors import InputError, UnsupportedModelError


@dataclass(frozen=True)
class NeuronSpec:
    """Where the neuron sits and how long its vector is. Serialisable (all fields are plain values)."""

    model_type: str
    layer: int
    hidden_size: int
    form: NeuronForm

    @property
    def dim(self) -> int:
        """D: 2d + 1 for the activated form (with bias), 2d for the linear form."""
        return 2 * self.hidden_size + (1 if self.form == "activated" else 0)

    def split(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(B, D) -> w_in (B, d), bias (B,) or None, w_out (B, d). Views, no copies."""
        d = self.hidden_size
        w_in = weights[:, :d]
        if self.form == "activated":
            return w_in, weights[:, d], weights[:, d + 1 :]
        return w_in, None, weights[:, d:]

    def join(self, w_in: torch.Tensor, bias: torch.Tensor | None, w_out: torch.Tensor) -> torch.Tensor:
        """Inverse of `split`: w_in (B, d), bias (B,), w_out (B, d) -> (B, D)."""
        parts = [w_in] + ([bias[:, None]] if self.form == "activated" else []) + [w_out]
        return torch.cat(parts, dim=1)

    def zeros(self, batch: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The no-op neuron for `batch` rows: (batch, D) zeros."""
        return torch.zeros(batch, self.dim, dtype=dtype, device=device)

    def check(self, weights: torch.Tensor, name: str = "weights") -> None:
        """Fail with one line if `weights` is not a floating (B, D) tensor."""
        if not isinstance(weights, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor of shape (B, {self.dim}), got {type(weights).__name__}")
        if not weights.is_floating_point():
            raise InputError(f"{name} must have a floating dtype, got {weights.dtype}")
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise InputError(
                f"{name} must have shape (B, {self.dim}) for a {self.form} neuron on hidden size {self.hidden_size}, "
                f"got {tuple(weights.shape)}"
            )


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise InputError("model must be a Hugging Face PreTrainedModel with a .config.model_type")
    return config


def _blocks(model: nn.Module, arch: ArchSpec) -> nn.ModuleList:
    try:
        return model.get_submodule(arch.blocks)
    except AttributeError as err:
        raise InputError(
            f"model has no submodule {arch.blocks!r}; pass the *ForCausalLM model, or fix the architecture row"
        ) from err


def num_layers(model: nn.Module, extra_architectures: dict[str, ArchSpec] | None = None) -> int:
    """Number of decoder blocks of `model`."""
    return len(_blocks(model, resolve(_config(model).model_type, extra_architectures)))


def neuron_spec(
    model: nn.Module, layer: int | None = None, extra_architectures: dict[str, ArchSpec] | None = None
) -> NeuronSpec:
    """Describe the neuron for `model` at `layer` (None = the architecture's default layer)."""
    config = _config(model)
    arch = resolve(config.model_type, extra_architectures)
    n = len(_blocks(model, arch))
    layer = default_layer(arch, n) if layer is None else check_layer(layer, n)
    return NeuronSpec(config.model_type, layer, int(config.hidden_size), arch.form)


def _ffn_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("could not find the FFN input tensor in the hooked call")


def _rows_for(weights: torch.Tensor, batch: int) -> torch.Tensor:
    """Match the weights' rows to the hidden batch. Generation with beams or num_return_sequences expands each
    prompt k times with repeat_interleave, so row b of the weights serves hidden rows b*k .. b*k+k-1."""
    if weights.shape[0] == batch:
        return weights
    if batch % weights.shape[0] == 0:
        return weights.repeat_interleave(batch // weights.shape[0], dim=0)
    raise InputError(f"weights have {weights.shape[0]} rows but the model ran a batch of {batch}")


def neuron_pre_activation(spec: NeuronSpec, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """w_in . h + bias for FFN input h (B, T, d) and weights (B, D): (B, T) in weights' dtype."""
    w_in, bias, _ = spec.split(weights)
    pre = torch.einsum("btd,bd->bt", h.to(weights.dtype), w_in)
    return pre + bias[:, None] if bias is not None else pre


def neuron_delta(spec: NeuronSpec, weights: torch.Tensor, h: torch.Tensor, act: nn.Module | None) -> torch.Tensor:
    """The neuron's contribution for FFN input h (B, T, d) and weights (B, D): (B, T, d) in weights' dtype."""
    pre = neuron_pre_activation(spec, weights, h)  # (B, T)
    a = act(pre) if act is not None else pre  # (B, T)
    return a[:, :, None] * spec.split(weights)[2][:, None, :]  # (B, T, d)


@contextmanager
def mount_neuron(
    model: nn.Module,
    spec: NeuronSpec,
    weights: torch.Tensor,
    extra_architectures: dict[str, ArchSpec] | None = None,
) -> Iterator[None]:
    """Mount a per-row neuron on `spec.layer` of `model` inside the block.

    Args:
        model: a Hugging Face causal LM whose `config.model_type` has an architecture row.
        spec: from `neuron_spec(model, layer)`.
        weights: (B, D) floating tensor, one neuron per batch row; may require grad (collection trains it).
            The tensor is read at every forward, so in-place updates inside the block take effect.

    Every forward inside the block must use batch B (or a multiple of B for beams). Run `backward` inside the
    block too: with gradient checkpointing the forward is replayed during backward.
    """
    spec.check(weights)
    arch = resolve(spec.model_type, extra_architectures)
    block = _blocks(model, arch)[spec.layer]
    ffn = block.get_submodule(arch.ffn)
    act = ffn.get_submodule(arch.activation) if arch.activation else None

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(f"FFN of {spec.model_type} returned {type(output).__name__}, expected a tensor")
        h = _ffn_input(args, kwargs)  # (B, T, d)
        rows = _rows_for(weights, h.shape[0]).to(h.device)  # (B, D), on the device of this layer (device_map)
        active = rows.ne(0).any(dim=1)  # (B,) rows whose neuron is not the no-op
        if not bool(active.any()):
            return output
        delta = neuron_delta(spec, rows, h, act).to(output.dtype)
        return torch.where(active[:, None, None], output + delta, output)

    handle = ffn.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode (no dropout) for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model accepts, when its config says (None = unknown)."""
    return context_length_of(_config(model))


def logits_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The next-token logits (K, V) at the positions where `where` (B, T) is True, row-major, with the output
    projection computed only there: a loss over a few answer tokens needs K << B x T rows, and on a small model the
    full (B, T, V) projection is about a third of the forward (8,192 x 256 per token on the reference model).
    Equal to `model(...).logits[where]` up to float rounding (tested on every architecture of the table)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
    logits = model.get_output_embeddings()(hidden[where])  # (K, V)
    cap = getattr(_config(model), "final_logit_softcapping", None)  # Gemma-2 caps its logits in the head's forward
    return torch.tanh(logits / cap) * cap if cap else logits


# --- internals for weight-editing baselines (FT, MEMIT, AlphaEdit) ---------------------------------------------

CaptureSite = Literal["keys", "block", "ffn"]


def _arch(model: nn.Module, extra_architectures: dict[str, ArchSpec] | None) -> ArchSpec:
    return resolve(_config(model).model_type, extra_architectures)


def decoder_block(model: nn.Module, layer: int, extra_architectures: dict[str, ArchSpec] | None = None) -> nn.Module:
    """Decoder block `layer` (0-indexed)."""
    blocks = _blocks(model, _arch(model, extra_architectures))
    return blocks[check_layer(layer, len(blocks))]


def ffn_module(model: nn.Module, layer: int, extra_architectures: dict[str, ArchSpec] | None = None) -> nn.Module:
    """The FFN (MLP) module of decoder block `layer`."""
    return decoder_block(model, layer, extra_architectures).get_submodule(_arch(model, extra_architectures).ffn)


def ffn_output_projection(
    model: nn.Module, layer: int, extra_architectures: dict[str, ArchSpec] | None = None
) -> nn.Module:
    """The FFN's output projection of block `layer` (GPT-2 `mlp.c_proj`, Llama `mlp.down_proj`, ...)."""
    arch = _arch(model, extra_architectures)
    if arch.ffn_out is None:
        model_type = _config(model).model_type
        raise UnsupportedModelError(
            f"the architecture row of {model_type!r} has no ffn_out path; add ffn_out='mlp.<output projection>' to it"
        )
    return decoder_block(model, layer, extra_architectures).get_submodule(arch.ffn_out)


def linear_weight(projection: nn.Module) -> torch.Tensor:
    """The projection's weight as W (out, in), so that output = W k + b; a view sharing the module's storage.

    transformers' Conv1D (GPT-2) stores its weight (in, out); nn.Linear stores (out, in).
    """
    if isinstance(projection, Conv1D):
        return projection.weight.T
    if isinstance(projection, nn.Linear):
        return projection.weight
    raise InputError(f"expected an nn.Linear or transformers Conv1D projection, got {type(projection).__name__}")


@torch.no_grad()
def add_linear_update(projection: nn.Module, delta: torch.Tensor) -> None:
    """W += delta in place, delta (out, in) in the linear view, whatever the module's own orientation."""
    weight = linear_weight(projection)  # (out, in) view
    if tuple(delta.shape) != tuple(weight.shape):
        raise InputError(f"update has shape {tuple(delta.shape)}, the projection's weight is {tuple(weight.shape)}")
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def _site_module(model: nn.Module, layer: int, site: CaptureSite, extra: dict[str, ArchSpec] | None) -> nn.Module:
    if site == "keys":
        return ffn_output_projection(model, layer, extra)
    if site == "block":
        return decoder_block(model, layer, extra)
    if site == "ffn":
        return ffn_module(model, layer, extra)
    raise InputError(f"capture site must be 'keys', 'block' or 'ffn', got {site!r}")


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _register_capture(module: nn.Module, site: CaptureSite, store: dict[int, torch.Tensor], layer: int) -> Any:
    """Hook `module` so each forward writes its input (keys, ffn) or output (block), detached, into `store[layer]`."""
    if site in ("keys", "ffn"):

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            store[layer] = _ffn_input(args, kwargs).detach()

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        store[layer] = _first_tensor(output).detach()

    return module.register_forward_hook(hook)


@contextmanager
def capture_activations(
    model: nn.Module,
    layers: list[int] | tuple[int, ...],
    site: CaptureSite = "keys",
    extra_architectures: dict[str, ArchSpec] | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Record activations of the forward passes run inside the block: `{layer: tensor}`, detached, last pass wins.

    site "keys": the input of the FFN output projection, (B, T, m) (m = FFN width): MEMIT's keys k.
    site "block": the decoder block's output hidden state (the residual stream after the block), (B, T, d).
    site "ffn": the FFN's input (the normalised hidden state the neuron reads), (B, T, d).
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            module = _site_module(model, layer, site, extra_architectures)
            handles.append(_register_capture(module, site, captured, layer))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_to_ffn_output(
    model: nn.Module,
    layer: int,
    delta: torch.Tensor,
    positions: torch.Tensor,
    extra_architectures: dict[str, ArchSpec] | None = None,
) -> Iterator[None]:
    """Add `delta[b]` (B, d) to the FFN output of block `layer` at token `positions[b]` (B,) of each row b.

    The FFN output feeds the residual stream additively, so this is MEMIT's "add delta to the hidden state after
    layer L at the subject's last token". Out of place (`index_put`): gradients flow into `delta`.
    """
    ffn = ffn_module(model, layer, extra_architectures)
    rows = torch.arange(delta.shape[0], device=delta.device)

    def hook(module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(f"FFN returned {type(output).__name__}, expected a tensor")
        if output.shape[0] != delta.shape[0]:
            raise InputError(f"delta has {delta.shape[0]} rows but the model ran a batch of {output.shape[0]}")
        index = (rows.to(output.device), positions.to(output.device))
        return output.index_put(index, output[index] + delta.to(output.dtype))  # (B, T, d)

    handle = ffn.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --- internals for causal tracing (meg.benchmarks.tracing) -----------------------------------------------------


@contextmanager
def add_to_input_embeddings(model: nn.Module, noise: torch.Tensor) -> Iterator[None]:
    """Add `noise` (B, T, d) to the token embeddings of every forward pass inside the block (before position
    embeddings, as ROME's causal tracing corrupts them). Rows or positions left at zero are untouched."""

    def hook(module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        if output.shape != noise.shape:
            raise InputError(f"noise has shape {tuple(noise.shape)}, the embeddings are {tuple(output.shape)}")
        return output + noise.to(output.dtype)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def set_block_output(
    model: nn.Module,
    layer: int,
    values: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    extra_architectures: dict[str, ArchSpec] | None = None,
) -> Iterator[None]:
    """Overwrite the residual stream after block `layer` with `values[i]` (K, d) at (rows[i], positions[i]) (K,):
    ROME's "restore a clean hidden state" in a corrupted run. Rows not named run unchanged."""
    block = decoder_block(model, layer, extra_architectures)

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = _first_tensor(output)
        index = (rows.to(hidden.device), positions.to(hidden.device))
        patched = hidden.index_put(index, values.to(hidden.device, hidden.dtype))
        return (patched, *output[1:]) if isinstance(output, (tuple, list)) else patched

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
