"""The conditional diffusion generator of neuron vectors (paper stage 4).

- `schedule`: the noise schedule and the DDIM sampler (diffusers' `DDIMScheduler`, v-prediction);
- `dit`: the 1-D DiT denoiser and its size presets; `mlp`: the residual-MLP denoiser (the paper's ablation);
- `generator`: `GeneratorConfig` and `WeightGenerator` (normalisation + denoiser + schedule; save / load);
- `train`: `train_generator`, the paper's stopping criterion and `TrainingLog`.

Names resolve lazily, so importing one submodule does not import diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "NoiseSchedule": "meg.diffusion.schedule",
    "DiT1D": "meg.diffusion.dit",
    "DiTSize": "meg.diffusion.dit",
    "DIT_PRESETS": "meg.diffusion.dit:PRESETS",
    "ResidualMLP": "meg.diffusion.mlp",
    "MLPSize": "meg.diffusion.mlp",
    "MLP_PRESETS": "meg.diffusion.mlp:PRESETS",
    "GeneratorConfig": "meg.diffusion.generator",
    "GENERATOR_CONFIGS": "meg.diffusion.generator:CONFIGS",
    "WeightGenerator": "meg.diffusion.generator",
    "TrainingLog": "meg.diffusion.train",
    "train_generator": "meg.diffusion.train",
    "evaluate": "meg.diffusion.train",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'meg.diffusion' has no attribute {name!r}")
    module, _, attr = _PUBLIC[name].partition(":")
    return getattr(importlib.import_module(module), attr or name)
