"""Mid-training checkpoints: modules, their optimizer and their random generators in one safetensors file.

A long training loop (the familiarity gate memorising 10,000 random labels runs for hours on a CPU) saves its
state every few epochs; a rerun with the same inputs loads it and continues. Restoring the optimizer moments
and every random generator the loop draws from (batch order, dropout) makes the resumed run identical to an
uninterrupted one, which the tests check tensor for tensor.

Layout: tensors `module.<module>.<name>`, `optimizer.<param index>.<slot>`, `rng.<name>` (generator states as
uint8) and `tensor.<name>` (anything else the loop keeps, e.g. its best weights so far), plus JSON metadata
under the header key "training_state" (format version and the caller's `meta`). The optimizer's
scalar hyperparameters are stored (a learning-rate schedule moves `lr`); the caller rebuilds the optimizer from
its own config and the stored values replace its scalars.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meg import files
from meg.errors import InputError

FORMAT_VERSION = 1
GLOBAL_RNG = "torch_global"  # the default CPU generator (dropout on CPU draws from it)
CUDA_RNG = "torch_cuda"  # the module's CUDA device generator (dropout on a GPU draws from it)


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed the default generators (initialisation, dropout) for a block without touching the caller's state."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def save_training_state(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        generators: dict[str, torch.Generator], meta: dict[str, Any],
                        tensors: dict[str, torch.Tensor] | None = None, global_rng: bool = True) -> None:
    """Write the modules' and the optimizer's states, the `generators`' states, extra `tensors` and `meta`
    (JSON-serialisable) atomically to `path`. `global_rng`: also the default generators (CPU, and the modules'
    CUDA device), for loops whose dropout draws from them."""
    out = {f"tensor.{k}": v for k, v in (tensors or {}).items()}
    for name, module in modules.items():
        out.update({f"module.{name}.{k}": v for k, v in module.state_dict().items()})
    for index, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            out[f"optimizer.{index}.{slot}"] = torch.as_tensor(value)
    for name, gen in generators.items():
        out[f"rng.{name}"] = gen.get_state()
    device = _device(modules)
    if global_rng:
        out[f"rng.{GLOBAL_RNG}"] = torch.get_rng_state()
    if global_rng and device.type == "cuda":
        out[f"rng.{CUDA_RNG}"] = torch.cuda.get_rng_state(device)
    groups = [{k: v for k, v in g.items() if _scalar(v)} for g in optimizer.state_dict()["param_groups"]]
    header = {"format": FORMAT_VERSION, "meta": meta, "param_groups": groups}
    files.save_tensors(path, out, metadata={"training_state": json.dumps(header)})


def load_training_state(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        generators: dict[str, torch.Generator]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore what `save_training_state` wrote into `modules`, `optimizer` and `generators`; returns
    (`meta`, the extra tensors on the modules' device).

    The default generators are restored too when they were saved (`global_rng`), so call this where the
    training loop will run (inside the same seeded block)."""
    header = _header(path)
    stored = files.load_tensors(path)
    device = _device(modules)
    for name, module in modules.items():
        module.load_state_dict(_section(stored, f"module.{name}."))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless capturable; the moments live with the parameters
            state.setdefault(int(index), {})[slot] = value if slot == "step" else value.to(device)
    # scalar hyperparameters as they were (a scheduler has moved `lr`); the rest from the caller's optimizer
    groups = [{**g, **saved} for g, saved in zip(optimizer.state_dict()["param_groups"], header["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for name, gen in generators.items():
        gen.set_state(stored[f"rng.{name}"])
    if f"rng.{GLOBAL_RNG}" in stored:
        torch.set_rng_state(stored[f"rng.{GLOBAL_RNG}"])
    if device.type == "cuda" and f"rng.{CUDA_RNG}" in stored:
        torch.cuda.set_rng_state(stored[f"rng.{CUDA_RNG}"], device)
    return header["meta"], {k: v.to(device) for k, v in _section(stored, "tensor.").items()}


def training_meta(path: str | Path) -> dict[str, Any]:
    """The caller's `meta` of a checkpoint, read from the header alone (no tensors loaded)."""
    return _header(path)["meta"]


def _header(path: str | Path) -> dict[str, Any]:
    header = json.loads(files.load_metadata(path).get("training_state", "null") or "null")
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise InputError(f"{path}: not a training checkpoint of format {FORMAT_VERSION}")
    return header


def _section(stored: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _device(modules: dict[str, nn.Module]) -> torch.device:
    return next(next(iter(modules.values())).parameters()).device


__all__ = ["load_training_state", "save_training_state", "training_meta"]
