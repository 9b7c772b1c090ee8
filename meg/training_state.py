"""Mid-training checkpoints: a module, its optimizer and its random generators in one safetensors file.

A long training loop (the familiarity gate memorising 10,000 random labels runs for hours on a CPU) saves its
state every few epochs; a rerun with the same inputs loads it and continues. Restoring the optimizer moments
and every random generator the loop draws from (batch order, dropout) makes the resumed run identical to an
uninterrupted one, which the tests check tensor for tensor.

Layout: tensors `module.<name>`, `optimizer.<param index>.<slot>` and `rng.<name>` (generator states as uint8),
plus JSON metadata under the header key "training_state" (format version and the caller's `meta`). The
optimizer's hyperparameters are not stored: the caller rebuilds the optimizer from its own config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meg import files
from meg.errors import InputError

FORMAT_VERSION = 1
GLOBAL_RNG = "torch_global"  # the default CPU generator (dropout on CPU draws from it)
CUDA_RNG = "torch_cuda"  # the module's CUDA device generator (dropout on a GPU draws from it)


def save_training_state(path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                        generators: dict[str, torch.Generator], meta: dict[str, Any]) -> None:
    """Write module + optimizer state + generator states + `meta` (JSON-serialisable) atomically to `path`."""
    tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            tensors[f"optimizer.{index}.{slot}"] = torch.as_tensor(value)
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    tensors[f"rng.{GLOBAL_RNG}"] = torch.get_rng_state()
    device = _device(module)
    if device.type == "cuda":
        tensors[f"rng.{CUDA_RNG}"] = torch.cuda.get_rng_state(device)
    header = {"format": FORMAT_VERSION, "meta": meta}
    files.save_tensors(path, tensors, metadata={"training_state": json.dumps(header)})


def load_training_state(path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                        generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Restore what `save_training_state` wrote into `module`, `optimizer` and `generators`; returns `meta`.

    The global CPU generator (and the module's CUDA generator) is restored too, so call this where the training loop will run (inside the same
    seeded block)."""
    meta = training_meta(path)
    tensors = files.load_tensors(path)
    device = _device(module)
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless capturable; the moments live with the parameters
            state.setdefault(int(index), {})[slot] = value if slot == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors[f"rng.{GLOBAL_RNG}"])
    if device.type == "cuda" and f"rng.{CUDA_RNG}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.{CUDA_RNG}"], device)
    return meta


def training_meta(path: str | Path) -> dict[str, Any]:
    """The caller's `meta` of a checkpoint, read from the header alone (no tensors loaded)."""
    header = json.loads(files.load_metadata(path).get("training_state", "null") or "null")
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise InputError(f"{path}: not a training checkpoint of format {FORMAT_VERSION}")
    return header["meta"]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


__all__ = ["load_training_state", "save_training_state", "training_meta"]
