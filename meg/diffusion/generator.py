"""The weight generator (paper stage 4): a denoiser, the noise schedule and the weight normalisation, in one module.

`loss(x0, cond)` is the paper's training objective, `sample(cond)` the paper's sampler; both take and return
neuron vectors in the ORIGINAL weight space (the layout of `meg.surgery.NeuronSpec`, length D = 2d + 1).
Inside, vectors are normalised before diffusion:
- "scale" (paper): z = x / 0.01, i.e. weights x100;
- "standardize" (ours): z = (x - mean) / std per dimension, fitted on the training vectors. A small model's
  w_in and w_out entries can differ in scale by orders of magnitude; one global factor then leaves some
  dimensions far below the noise level and others far above it.
Both are stored as buffers (`norm_shift`, `norm_scale`), so `state_dict` holds everything and round-trips
through safetensors; the config round-trips through JSON (`save` / `load`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from meg import __version__, files
from meg.diffusion import dit, mlp
from meg.diffusion.schedule import NoiseSchedule, TimestepSpacing
from meg.errors import InputError
from meg.settings import Rules, Settings, setting

Architecture = Literal["dit", "mlp"]
Normalization = Literal["scale", "standardize"]
StopMetric = Literal["l2", "relative_l2"]
LrSchedule = Literal["constant", "cosine"]

GENERATOR_WEIGHTS = files.PACK_GENERATOR  # "generator.safetensors"
GENERATOR_CONFIG = files.PACK_GENERATOR_CONFIG  # "generator_config.json"


@dataclass(frozen=True)
class GeneratorConfig(Settings):
    """Everything that defines a generator and its training. Defaults: the paper's stage-4 setting, with the
    "small" preset (the paper's own size is preset "paper")."""

    architecture: Architecture = setting("dit", "dit (paper) or mlp (the paper's faster, less general ablation)")
    preset: str = setting("small", "a size in meg.diffusion.dit.PRESETS / mlp.PRESETS")
    normalization: Normalization = setting("scale", "scale: z = x / weight_scale (paper); standardize: per dimension")
    weight_scale: float = setting(0.01, "with 'scale': z = x / weight_scale (paper: x100)")
    # diffusion (paper: T = 1000, linear betas 1e-4 .. 0.02, v-prediction, DDIM 50 steps)
    num_train_timesteps: int = setting(1000, "diffusion steps T (paper 1000)")
    beta_start: float = setting(1e-4, "first beta of the linear schedule (paper 1e-4)")
    beta_end: float = setting(0.02, "last beta of the linear schedule (paper 0.02)")
    timestep_spacing: TimestepSpacing = setting("trailing", "DDIM timestep spacing (meg.diffusion.schedule)")
    sampling_steps: int = setting(50, "DDIM steps at inference and evaluation (paper 50)")
    # optimisation (paper: AdamW 1e-4, no weight decay, batch 255-512; no schedule or EMA is described)
    lr: float = setting(1e-4, "AdamW learning rate (paper 1e-4)")
    lr_schedule: LrSchedule = setting("constant", "cosine: linear warm-up, then cosine decay to 0 at max_steps")
    warmup_steps: int = setting(0, "warm-up steps of the cosine schedule")
    ema_decay: float = setting(0.0, "> 0: evaluate, keep and return an exponential moving average of the weights")
    batch_size: int = setting(256, "pairs per step, +DA zero pairs included (capped by the number of vectors)")
    max_steps: int = setting(100_000, "budget in optimiser steps")
    # stop criterion (paper: mean + std over vectors of ||generated - collected||_2 < 0.5, checked every 1000
    # epochs, measured in the original weight space; "relative_l2" divides each error by ||collected||_2)
    eval_every: int = setting(1000, "steps between evaluations of the stop criterion")
    stop_threshold: float = setting(0.5, "stop when the criterion's mean + std is below this; 0 disables it")
    stop_metric: StopMetric = setting("l2", "l2 (paper, absolute) or relative_l2 (divided by ||collected||)")
    seed: int = setting(0, "initialisation, batches, noise and timesteps")

    def rules(self) -> Rules:
        presets = dit.PRESETS if self.architecture == "dit" else mlp.PRESETS
        return {
            "preset": (self.preset in presets, f"one of: {', '.join(presets)}"),
            "weight_scale": (self.weight_scale > 0, "> 0"),
            "num_train_timesteps": (self.num_train_timesteps >= 2, ">= 2"),
            "beta_start": (0 < self.beta_start < 1, "in (0, 1)"),
            "beta_end": (self.beta_start <= self.beta_end < 1, "in [beta_start, 1)"),
            "sampling_steps": (1 <= self.sampling_steps <= self.num_train_timesteps, "in 1..num_train_timesteps"),
            "lr": (self.lr > 0, "> 0"),
            "warmup_steps": (0 <= self.warmup_steps < self.max_steps, "in 0..max_steps-1"),
            "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "max_steps": (self.max_steps >= 1, ">= 1"),
            "eval_every": (self.eval_every >= 1, ">= 1"),
            "stop_threshold": (self.stop_threshold >= 0, ">= 0"),
        }

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.num_train_timesteps, self.beta_start, self.beta_end, self.timestep_spacing)


# Named settings. "paper*": the paper's stage 4 (DiT 768 x 12, weights x100, AdamW 1e-4, 50 DDIM steps, stop
# at mean + std of the L2 error < 0.5). "small-gpt2" is ours for the 7M reference model (D = 513, 256-1024
# vectors): the DiT measured in docs/meg-method.md (hidden 128, depth 4, patches of 64, standardised vectors), a
# relative stop criterion because the paper's absolute 0.5 is met by any vector shorter than 0.5, and 10 sampling
# steps (4 lost nothing there). Its optimiser settings come from docs/results/generator-fidelity.md (1,024
# counterfact-val edits, 1,500 steps): at AdamW 1e-3 the DiT is far from converged (relative L2 0.78, 84.7% of the
# edit prompts reproduced); 5e-3 with a 100-step warm-up and cosine decay gives 0.285 and 99.8% in the same time
# (1e-2: 0.251; 3e-2 diverged); a constant rate is worse at 1e-2 (0.358) and cosine at 1e-3 is worse than constant.
CONFIGS: dict[str, GeneratorConfig] = {
    "paper": GeneratorConfig(preset="paper", batch_size=256),
    "paper-mlp": GeneratorConfig(architecture="mlp", preset="large"),
    "small-gpt2": GeneratorConfig(
        preset="tiny",
        normalization="standardize",
        lr=5e-3,
        lr_schedule="cosine",
        warmup_steps=100,
        max_steps=1500,
        eval_every=500,
        stop_metric="relative_l2",
        stop_threshold=0.2,
        sampling_steps=10,
    ),
}


def build_denoiser(config: GeneratorConfig, dim: int, cond_dim: int) -> nn.Module:
    """The denoiser network named by `config.architecture` and `config.preset`."""
    if config.architecture == "dit":
        return dit.DiT1D(dim, cond_dim, config.preset)
    return mlp.ResidualMLP(dim, cond_dim, config.preset)


class WeightGenerator(nn.Module):
    """Conditional diffusion model: query embedding (B, C) -> neuron vector (B, D).

    Parameters are initialised from `config.seed` (under a forked RNG: the global RNG is left as it was), so
    the same config always builds the same network.
    """

    def __init__(self, config: GeneratorConfig, dim: int, cond_dim: int) -> None:
        super().__init__()
        if dim < 1 or cond_dim < 1:
            raise InputError(f"dim and cond_dim must be >= 1, got dim={dim}, cond_dim={cond_dim}")
        self.config, self.dim, self.cond_dim = config, dim, cond_dim
        self.schedule = config.schedule()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.denoiser = build_denoiser(config, dim, cond_dim)
        # z = (x - norm_shift) / norm_scale; "scale" needs no fitting: shift 0, scale = weight_scale.
        self.register_buffer("norm_shift", torch.zeros(dim))  # (D,)
        self.register_buffer("norm_scale", torch.full((dim,), config.weight_scale))  # (D,)

    # --- normalisation ---

    def fit_normalization(self, vectors: torch.Tensor) -> None:
        """For "standardize": per-dimension mean and std of the training vectors (N, D). No-op for "scale".

        A dimension that barely varies gets std floored at 1e-3 of the mean std, so it is not blown up to noise.
        """
        if self.config.normalization != "standardize":
            return
        x = vectors.to(self.norm_shift.device, torch.float32)  # (N, D)
        std = x.std(dim=0, unbiased=False)  # (D,)
        self.norm_shift.copy_(x.mean(dim=0))
        self.norm_scale.copy_(std.clamp_min(1e-3 * float(std.mean()) + 1e-12))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Original weight space (B, D) -> diffusion space (B, D)."""
        return (x - self.norm_shift) / self.norm_scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space (B, D) -> original weight space (B, D)."""
        return z * self.norm_scale + self.norm_shift

    # --- training and sampling ---

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's v prediction in diffusion space: z_t (B, D), t (B,), cond (B, C) -> (B, D)."""
        return self.denoiser(z_t, t, cond)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             share: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """The paper's objective: t ~ U{0..T-1}, eps ~ N(0, I), MSE between predicted and true v.

        x0: collected vectors (B, D) in the original weight space; cond: query embeddings (B, C).
        share (rank, world): the noise and timesteps are drawn for the whole batch (every rank draws alike), the
        loss is taken over rows rank, rank + world, ... and scaled by world / (B * D), so the mean of the ranks'
        gradients (what DistributedDataParallel all-reduces) is the gradient of the whole batch's MSE.
        """
        self._check(cond, x0)
        z0 = self.normalize(x0.to(self.norm_scale.dtype))  # (B, D)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)  # (B, D)
        t = self.schedule.random_timesteps(z0.shape[0], z0.device, generator)  # (B,)
        z_t = self.schedule.add_noise(z0, noise, t)
        target = self.schedule.velocity(z0, noise, t)  # v = a_t eps - s_t z0
        rank, world = share
        if world == 1:
            return F.mse_loss(self(z_t, t, cond.to(z0.dtype)), target)
        rows = slice(rank, None, world)
        error = self(z_t[rows], t[rows], cond[rows].to(z0.dtype)) - target[rows]  # (B / world, D)
        return error.pow(2).sum() * (world / target.numel())

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Generate one neuron vector per row of `cond` (B, C): (B, D) in the original weight space.

        steps: DDIM steps (default `config.sampling_steps`). The starting noise x_T is `noise` (B, D) when given,
        else drawn from `generator` on cond's device; the same generator state gives the same vectors. Rows are
        independent, so row i of a batch equals sampling row i alone from the same noise row (up to float
        rounding of batched matmuls).
        """
        self._check(cond)
        dtype = self.norm_scale.dtype
        if noise is None:
            noise = torch.randn((cond.shape[0], self.dim), generator=generator, device=cond.device, dtype=dtype)
        elif noise.shape != (cond.shape[0], self.dim):
            raise InputError(f"noise must have shape ({cond.shape[0]}, {self.dim}), got {tuple(noise.shape)}")
        cond = cond.to(dtype)

        def denoise(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self(z_t, t, cond)  # (B, D)

        steps = self.config.sampling_steps if steps is None else steps
        z0 = self.schedule.sample(denoise, noise.to(dtype), steps, eta=eta, generator=generator)  # (B, D)
        return self.denormalize(z0)

    def _check(self, cond: torch.Tensor, x0: torch.Tensor | None = None) -> None:
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise InputError(f"cond must have shape (B, {self.cond_dim}), got {tuple(cond.shape)}")
        if x0 is not None and (x0.ndim != 2 or x0.shape != (cond.shape[0], self.dim)):
            raise InputError(f"vectors must have shape ({cond.shape[0]}, {self.dim}), got {tuple(x0.shape)}")

    # --- artifacts ---

    def save(self, directory: str | Path) -> None:
        """Write `generator.safetensors` (state_dict) and `generator_config.json` (config and sizes)."""
        directory = Path(directory)
        files.save_tensors(directory / GENERATOR_WEIGHTS, self.state_dict(), metadata={"meg_version": __version__})
        meta = {"meg_version": __version__, "dim": self.dim, "cond_dim": self.cond_dim, "config": self.config.to_dict()}
        files.atomic_write_json(directory / GENERATOR_CONFIG, meta)

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> WeightGenerator:
        """Inverse of `save`: the same config, sizes and tensors, so sampling gives identical vectors."""
        directory = Path(directory)
        for name in (GENERATOR_WEIGHTS, GENERATOR_CONFIG):
            if not (directory / name).is_file():
                raise InputError(f"{directory} has no {name}; it is not a saved generator")
        meta = files.read_user_json(directory / GENERATOR_CONFIG)  # damaged files: one line naming them
        try:
            model = cls(GeneratorConfig.from_dict(meta["config"]), int(meta["dim"]), int(meta["cond_dim"]))
            model.load_state_dict(files.load_tensors(directory / GENERATOR_WEIGHTS))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{directory}: damaged generator ({str(err).splitlines()[0][:200]}); delete it to "
                             "train again") from None
        return model.to(device)
