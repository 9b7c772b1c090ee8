"""Measure the generator presets on this machine: training samples/s and per-query sampling latency.

    python scripts/bench_generator.py [--seconds 3] [--threads N] [--out docs/results]

Writes generator-throughput.json and generator-throughput.md under --out. Every measurement is time-boxed
(--seconds), so the whole run takes about two minutes on a 2-core CPU. Random vectors and conditions: the cost of
a step does not depend on the data.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from meg import files
from meg.diffusion import GeneratorConfig, WeightGenerator

COND_DIM = 384  # all-MiniLM-L6-v2, the query encoder measured in docs/meg-method.md
# (architecture, preset, D, training batch): D = 513 is the 7M reference model (d = 256), 8193 is GPT-J.
CASES = [
    ("dit", "tiny", 513, 256),
    ("dit", "small", 513, 256),
    ("dit", "paper", 513, 32),
    ("dit", "paper", 8193, 4),
    ("mlp", "tiny", 513, 256),
    ("mlp", "small", 513, 256),
    ("mlp", "large", 513, 64),
]


def _timed(fn, seconds: float, max_calls: int = 1000) -> tuple[float, int]:
    """Call fn once to warm up, then until `seconds` have passed: (seconds per call, calls)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - start < seconds):
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def train_rate(model: WeightGenerator, dim: int, batch: int, seconds: float) -> dict:
    """Training samples/s: forward + backward + AdamW on `batch` random pairs."""
    x0, cond = torch.randn(batch, dim) * 0.01, torch.randn(batch, COND_DIM)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model.loss(x0, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    per_step, calls = _timed(step, seconds)
    return {"train_batch": batch, "train_steps_timed": calls, "train_samples_per_s": round(batch / per_step, 1)}


def latency(model: WeightGenerator, dim: int, seconds: float, steps: int = 50) -> dict:
    """One query: one denoiser pass, and the whole DDIM loop at `steps` (measured when it takes < 10 s)."""
    cond, z, t = torch.randn(1, COND_DIM), torch.randn(1, dim), torch.tensor([500])
    with torch.no_grad():
        per_pass, _ = _timed(lambda: model(z, t, cond), seconds)
    row = {"pass_ms": round(per_pass * 1e3, 2)}
    if per_pass * steps < 10:
        per_sample, _ = _timed(lambda: model.sample(cond, steps=steps), seconds, max_calls=20)
        row[f"sample_{steps}_ms"] = round(per_sample * 1e3, 1)
    else:
        row[f"sample_{steps}_ms"] = None  # too slow to time here; about steps x pass_ms
    return row


def measure(arch: str, preset: str, dim: int, batch: int, seconds: float) -> dict:
    model = WeightGenerator(GeneratorConfig(architecture=arch, preset=preset), dim, COND_DIM)
    params = sum(p.numel() for p in model.parameters())
    row = {"architecture": arch, "preset": preset, "D": dim, "params_M": round(params / 1e6, 2)}
    row |= train_rate(model.train(), dim, batch, seconds)
    row |= latency(model.eval(), dim, seconds)
    print(row, flush=True)
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    head = "| architecture | preset | D | params (M) | train samples/s (batch) | one pass (ms) | 50-step sample (ms) |"
    lines = [
        "# Generator throughput on this machine",
        "",
        f"Command: `{meta['command']}`. {meta['cpu']}, torch {meta['torch']} with {meta['threads']} thread(s), "
        f"load average {meta['load_before']} before the run and {meta['load_after']} after: with a load above the "
        "core count other jobs shared the CPU and these numbers are lower bounds. Float32, condition "
        f"{COND_DIM}-d; training = forward + backward + AdamW at the batch shown; latency = one query (batch 1).",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sample = "-" if r["sample_50_ms"] is None else r["sample_50_ms"]
        lines.append(
            f"| {r['architecture']} | {r['preset']} | {r['D']} | {r['params_M']} | "
            f"{r['train_samples_per_s']} ({r['train_batch']}) | {r['pass_ms']} | {sample} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time box per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "command": "python scripts/bench_generator.py " + " ".join(sys.argv[1:]),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": args.seconds,
        "load_before": round(os.getloadavg()[0], 2),
    }
    torch.manual_seed(0)  # a script, not the library: random benchmark inputs only
    rows = [measure(*case, args.seconds) for case in CASES]
    meta["load_after"] = round(os.getloadavg()[0], 2)
    files.atomic_write_json(args.out / "generator-throughput.json", {"meta": meta, "rows": rows})
    files.atomic_write_text(args.out / "generator-throughput.md", markdown(meta, rows))


if __name__ == "__main__":
    main()
