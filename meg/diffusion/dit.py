"""A 1-D diffusion transformer (DiT) over a neuron weight vector (paper stage 4, "Generator").

The vector x (B, D) is zero-padded to a multiple of the patch size P and cut into N = ceil(D / P) patches,
each a token: Linear(P, H) plus a fixed 1-D sin-cos position. The condition c (B, H) is the embedding of the
diffusion timestep plus a linear map of the L2-normalised query embedding; it steers every block through
adaLN-Zero (Peebles & Xie 2023): per-block shift / scale / gate, gates initialised at zero so every block
starts as the identity and the untrained network predicts v = 0. The last layer maps each token back to P values;
the padding is cropped.

The paper's DiT: patches of 100, hidden 768, 12 blocks, 12 heads, MLP ratio 4 (the released GPT-J and Phi-2
configs use 24 blocks: "paper-deep"). Where the research code differs we follow the paper's text and standard
DiT: the query embedding gets its own Linear(C, H) (the research code adds the 768-d BERT vector to the
timestep embedding directly, which ties H to C), and the adaLN-Zero initialisation is applied.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meg.errors import InputError


@dataclass(frozen=True)
class DiTSize:
    """A named DiT size: hidden width H, blocks, attention heads, patch length P, MLP ratio."""

    hidden: int
    depth: int
    heads: int
    patch: int
    mlp_ratio: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)


# Measured with scripts/bench_generator.py (docs/results/generator-throughput.md) on this 2-core CPU, 1 thread,
# while other jobs held the CPU (load ~3.7: lower bounds), float32, condition 384-d. Training = forward +
# backward + AdamW; latency = one query, one denoiser pass (x 50 for the paper's sampler):
#   D = 513 (the 7M reference model, d = 256):
#     tiny   (1.3M params)   628 samples/s at batch 256,   4 ms/pass,  218 ms for 50 steps
#     small  (7.5M params)   137 samples/s at batch 256,  12 ms/pass,  727 ms for 50 steps
#     paper  (130M params)   7.5 samples/s at batch 32,  104 ms/pass,  6.2 s for 50 steps
#   D = 8193 (GPT-J): paper  0.8 samples/s at batch 4,   381 ms/pass
PRESETS: dict[str, DiTSize] = {
    "paper": DiTSize(hidden=768, depth=12, heads=12, patch=100),  # paper text; Llama-3 configs
    "paper-deep": DiTSize(hidden=768, depth=24, heads=12, patch=100),  # released GPT-J / Phi-2 configs
    "small": DiTSize(hidden=256, depth=6, heads=8, patch=64),
    "tiny": DiTSize(hidden=128, depth=4, heads=4, patch=64),  # the one measured end to end in docs/meg-method.md
}


def sincos_positions(num: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos position table (MAE / DiT): (num, dim), first half sin, second half cos."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = torch.arange(num, dtype=torch.float64)[:, None] * omega[None, :]  # (num, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (num, dim)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([args.cos(), args.sin()], dim=1)  # (B, 2 * half)
    return F.pad(emb, (0, dim - 2 * half))  # (B, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with shift / scale (B, H) broadcast over x's middle axes."""
    if x.ndim == 3:  # tokens (B, N, H)
        shift, scale = shift[:, None, :], scale[:, None, :]
    return x * (1 + scale) + shift


class ConditionEmbedder(nn.Module):
    """c = MLP(sinusoid(t)) + Linear(normalise(q)): the paper's "timestep embedding + L2-normalised query
    embedding". t (B,) long, q (B, C) -> c (B, H)."""

    def __init__(self, cond_dim: int, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.query = nn.Linear(cond_dim, hidden)

    def forward(self, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(timestep_embedding(t, self.freq_dim).to(cond.dtype))  # (B, H)
        return t_emb + self.query(F.normalize(cond, dim=-1))  # (B, H)

    def init_weights(self) -> None:
        for layer in self.time_mlp[0], self.time_mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)  # DiT's timestep-MLP init


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, H) -> (B, N, H)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, h // self.heads)  # (B, N, 3, heads, H/heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, H/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, H/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, h))  # (B, N, H)


def feed_forward(hidden: int, ratio: float) -> nn.Sequential:
    """The transformer MLP: H -> ratio*H -> H with tanh-GELU (as DiT)."""
    inner = int(hidden * ratio)
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))


class AdaLNBlock(nn.Module):
    """A DiT block with adaLN-Zero: x += gate1 * Attn(mod(LN(x))); x += gate2 * MLP(mod(LN(x)))."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = feed_forward(hidden, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))  # c -> 6 x (B, H)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)  # each (B, H)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, H)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, H)


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c) then Linear(H, out), zero-initialised: (..., H) -> (..., out)."""

    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)  # each (B, H)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_linear_xavier(module: nn.Module) -> None:
    """DiT's basic init: xavier-uniform weights, zero biases, for every Linear below `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def zero_init(*layers: nn.Module) -> None:
    """adaLN-Zero: the last Linear of each modulation branch and the output layer start at zero."""
    for layer in layers:
        last = layer[-1] if isinstance(layer, nn.Sequential) else layer
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


class DiT1D(nn.Module):
    """Denoiser: noisy vector x (B, D), timesteps t (B,), query embedding cond (B, C) -> v prediction (B, D)."""

    def __init__(self, dim: int, cond_dim: int, size: DiTSize | str = "small") -> None:
        super().__init__()
        self.size = resolve_size(size)
        s = self.size
        if s.hidden % s.heads or s.hidden % 2:
            raise InputError(f"DiT hidden size {s.hidden} must be even and divisible by heads {s.heads}")
        self.dim, self.cond_dim = dim, cond_dim
        self.num_patches = math.ceil(dim / s.patch)  # N
        self.patch_embed = nn.Linear(s.patch, s.hidden)
        # Fixed positions are rebuilt from the sizes, so they are not saved (persistent=False).
        self.register_buffer("pos", sincos_positions(self.num_patches, s.hidden)[None], persistent=False)  # (1,N,H)
        self.cond_embed = ConditionEmbedder(cond_dim, s.hidden)
        self.blocks = nn.ModuleList(AdaLNBlock(s.hidden, s.heads, s.mlp_ratio) for _ in range(s.depth))
        self.final = FinalLayer(s.hidden, s.patch)
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_xavier(self)
        self.cond_embed.init_weights()
        zero_init(*(block.ada for block in self.blocks), self.final.ada, self.final.linear)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.size.patch
        pad = self.num_patches * p - self.dim
        tokens = F.pad(x, (0, pad)).reshape(b, self.num_patches, p)  # (B, N, P)
        h = self.patch_embed(tokens) + self.pos.to(x.dtype)  # (B, N, H)
        c = self.cond_embed(t, cond)  # (B, H)
        for block in self.blocks:
            h = block(h, c)  # (B, N, H)
        out = self.final(h, c)  # (B, N, P)
        return out.reshape(b, self.num_patches * p)[:, : self.dim]  # (B, D)


def resolve_size(size: DiTSize | str) -> DiTSize:
    """A preset name or a DiTSize -> DiTSize; unknown names fail with the valid choices."""
    if isinstance(size, DiTSize):
        return size
    if size not in PRESETS:
        raise InputError(f"unknown DiT preset {size!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[size]
