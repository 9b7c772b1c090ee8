"""Model surgery: the only module that touches a Hugging Face model's internals.

`mount_neuron` adds ONE extra neuron to the FFN of one decoder layer for the duration of a `with` block, with a
different neuron per batch row (paper, "The neuron"):

    FFN'(h)[b, t] = FFN(h)[b, t] + w_out[b] * act(w_in[b] . h[b, t] + bias[b])    ("activated", D = 2d + 1)
    FFN'(h)[b, t] = FFN(h)[b, t] + w_out[b] * (w_in[b] . h[b, t])                 ("linear",    D = 2d)

The neuron vector of a row is laid out `[w_in (d), bias (1, activated form only), w_out (d)]`. A row of zeros is an
exact no-op: that row's FFN output is returned untouched (`torch.where`), so its logits are bit-identical.

The hook is registered on entry and removed in `finally`, so the model is unmodified after the block, even when
the block raises. Per-call state (the weights) lives in the hook's closure, never on a module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meg.architectures import ArchSpec, NeuronForm, check_layer, default_layer, resolve
from meg.errors import InputError


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


def neuron_delta(spec: NeuronSpec, weights: torch.Tensor, h: torch.Tensor, act: nn.Module | None) -> torch.Tensor:
    """The neuron's contribution for FFN input h (B, T, d) and weights (B, D): (B, T, d) in weights' dtype."""
    w_in, bias, w_out = spec.split(weights)
    pre = torch.einsum("btd,bd->bt", h.to(weights.dtype), w_in)  # (B, T)
    if bias is not None:
        pre = pre + bias[:, None]
    a = act(pre) if act is not None else pre  # (B, T)
    return a[:, :, None] * w_out[:, None, :]  # (B, T, d)


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
        rows = _rows_for(weights, h.shape[0])  # (B, D)
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
    config = _config(model)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
