"""Result files of benchmarks and evaluations: JSON (every number), a markdown table, a PNG plot.

Every writer here is atomic; the JSON carries the environment (package versions, machine) so a number can be
traced to where it was measured.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from meg import __version__
from meg.files import atomic_path, atomic_write_json, atomic_write_text, read_json

_PACKAGES = ("torch", "transformers", "diffusers", "sentence-transformers", "safetensors", "tokenizers", "numpy")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result (also printed by `meg env`)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    return {
        "meg_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "packages": versions,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats printed with up to 4 significant decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def read_results(directory: str | Path, name: str) -> dict[str, Any] | None:
    """The JSON that `write_results(directory, name, ...)` wrote, or None when there is none."""
    path = Path(directory) / f"{name}.json"
    return read_json(path) if path.is_file() else None


def write_results(
    directory: str | Path,
    name: str,
    data: dict[str, Any],
    markdown: str,
    plot: Callable[[Any], None] | None = None,
) -> dict[str, Path]:
    """Write `<name>.json`, `<name>.md` and (when `plot` draws on a matplotlib Axes) `<name>.png`."""
    directory = Path(directory)
    paths = {"json": directory / f"{name}.json", "md": directory / f"{name}.md"}
    atomic_write_json(paths["json"], {**data, "environment": environment()})
    atomic_write_text(paths["md"], markdown)
    if plot is not None:
        paths["png"] = directory / f"{name}.png"
        save_plot(paths["png"], plot)
    return paths


def save_plot(path: str | Path, draw: Callable[[Any], None], size: tuple[float, float] = (7.0, 4.0)) -> None:
    """Draw on a fresh Axes with the non-interactive backend and save a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    try:
        draw(axes)
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(figure)
