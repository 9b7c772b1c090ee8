"""The noise schedule and the DDIM sampler of the generator (paper stage 4), separate from any network.

Paper setting: T = 1000 training timesteps, betas linear from 1e-4 to 0.02, v-prediction, MSE loss. Notation
(0-indexed timesteps t = 0 .. T-1, as in diffusers):

    alpha_bar_t = prod_{s <= t} (1 - beta_s)          a_t = sqrt(alpha_bar_t),  s_t = sqrt(1 - alpha_bar_t)
    forward:     x_t = a_t * x_0 + s_t * eps,  eps ~ N(0, I)                       (`add_noise`)
    target:      v   = a_t * eps - s_t * x_0                                       (`velocity`)

DDIM with eta = 0 (Song et al. 2021, eq. 12), from the denoiser's v-prediction v_hat at timestep t to the next
timestep p of the sampling grid (p < t; alpha_bar_p = 1 past the end, `set_alpha_to_one`):

    x0_hat  = a_t * x_t - s_t * v_hat
    eps_hat = a_t * v_hat + s_t * x_t
    x_p     = a_p * x0_hat + s_p * eps_hat

The update itself is diffusers' `DDIMScheduler.step`; this module fixes its settings and runs the loop.

Settings and why:
- `clip_sample=False`: neuron vectors are not images in [-1, 1]; clipping x0_hat would cut real weights.
- `set_alpha_to_one=True`: the last step lands on alpha_bar = 1, so the sampler returns the clean estimate x0_hat
  instead of a sample still carrying s_0 * eps_hat of noise.
- `timestep_spacing="trailing"` (default): the grid starts at t = T-1, where x_T ~ N(0, I) actually matches the
  forward process (alpha_bar_999 = 4e-5), and ends at t = T/steps - 1. With "leading" (diffusers' default) a
  4-step grid starts at t = 750, where the signal still has weight a_t = 0.06, which matters for the few-step
  sampling small models need (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
  Table 2). `DDIMScheduler.step` takes the next timestep as t - T // steps; when `steps` does not divide T, the
  "trailing" and "linspace" grids differ from that by at most one timestep (e.g. 30 steps: 966 vs 967), which
  the update tolerates; "leading" is exact for every `steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from diffusers import DDIMScheduler

from meg.errors import InputError

TimestepSpacing = Literal["leading", "trailing", "linspace"]
# denoiser(x_t (B, D), t (B,) long) -> v_hat (B, D)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoiseSchedule:
    """The paper's diffusion process: `add_noise` / `velocity` for training, `sample` (DDIM) for generation.

    Holds no network and no per-call state: every `sample` call builds its own `DDIMScheduler` (0.1 ms), so one
    schedule can serve concurrent callers, and the config's four numbers rebuild it exactly.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        timestep_spacing: TimestepSpacing = "trailing",
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.timestep_spacing = timestep_spacing
        self._train = self.scheduler()  # only for add_noise / get_velocity / alphas_cumprod

    def scheduler(self) -> DDIMScheduler:
        """A fresh diffusers DDIM scheduler with the paper's schedule and v-prediction."""
        return DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule="linear",
            prediction_type="v_prediction",
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing=self.timestep_spacing,
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t for t = 0 .. T-1: (T,) float32 on CPU."""
        return self._train.alphas_cumprod.detach().to("cpu")

    def timesteps(self, steps: int) -> torch.Tensor:
        """The sampling grid for `steps` DDIM steps, descending: (steps,) long."""
        scheduler = self.scheduler()
        scheduler.set_timesteps(self._check_steps(steps))
        return scheduler.timesteps.clone()

    def random_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0 .. T-1} for each row (the paper's training distribution): (batch,) long."""
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = a_t * x_0 + s_t * eps. x0, noise: (B, D); t: (B,) long -> (B, D)."""
        return self._train.add_noise(x0, noise, t)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = a_t * eps - s_t * x_0. x0, noise: (B, D); t: (B,) -> (B, D)."""
        return self._train.get_velocity(x0, noise, t)

    def sample(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run DDIM from x_T = `noise` (B, D) down the `steps`-step grid; returns x0_hat (B, D).

        `eta` = 0 is deterministic DDIM (the paper's sampler); eta > 0 adds fresh noise each step, drawn from
        `generator`. Every row is independent: the denoiser sees the whole batch but rows never mix.
        """
        scheduler = self.scheduler()
        scheduler.set_timesteps(self._check_steps(steps))  # timesteps stay on CPU: step() indexes CPU tables
        x = noise
        for t in scheduler.timesteps.tolist():
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
            v_hat = denoiser(x, t_batch)  # (B, D)
            x = scheduler.step(v_hat, t, x, eta=eta, generator=generator).prev_sample  # (B, D)
        return x

    def _check_steps(self, steps: int) -> int:
        if not 1 <= steps <= self.num_train_timesteps:
            raise InputError(f"sampling steps must be in 1..{self.num_train_timesteps}, got {steps}")
        return steps
