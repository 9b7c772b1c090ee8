"""The one place that knows file names, and how files are written: atomically, as JSON or safetensors.

Every artifact is a directory of JSON (configs, manifests) and safetensors (tensors); nothing is pickled.
Writers go through a temporary file (or directory) in the same folder and `os.replace`, so an interrupted
run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# --- weight collection (a resumable cache directory) ---
COLLECTION_MANIFEST = "collection.json"
COLLECTION_CHUNK = "chunk-{index:05d}.safetensors"
COLLECTION_DIR = "collection-{key}"  # one collection job (edits, settings, layer) in a work directory

# --- edit pack ---
PACK_CONFIG = "pack_config.json"
PACK_EDITS = "edits.jsonl"
PACK_VECTORS = "vectors.safetensors"
PACK_ENCODER = "encoder_layer.safetensors"
PACK_GATE = "gate.safetensors"
PACK_GENERATOR = "generator.safetensors"
PACK_GENERATOR_CONFIG = "generator_config.json"
PACK_ROUTER = "router.safetensors"

# --- evaluation / benchmark run directories ---
RUN_CONFIG = "run_config.json"
RUN_RECORDS = "records.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
BASELINE_CACHE = "pre_edit_outputs.jsonl"
BENCH_RESULT = "bench_result.json"  # one method's finished row of `meg bench`
LOCATE_TARGETS = "locate-targets-{key}.safetensors"  # MEMIT / AlphaEdit step-1 target values, keyed by inputs
TUNED_ENCODER = "encoder-{key}.safetensors"  # a tuned encoder layer in a work directory, keyed by inputs
TRAINED_VERIFIER = "verifier-{key}.safetensors"  # the routing verifier's trained layers, keyed by inputs
GATE_TRAINING = "gate-training-{key}.safetensors"  # the familiarity gate's training state (resumable), keyed by inputs
TRAINED_GENERATOR = "generator-{key}"  # a finished generator (a directory as in a pack), keyed by inputs
GENERATOR_TRAINING = "generator-training-{key}.safetensors"  # an unfinished generator's training state, keyed by inputs


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (tensors by their bytes): the key of every cached stage."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where reusable caches live (pre-edit outputs, tuned encoders, key statistics): $MEG_CACHE_DIR, else
    ~/.cache/meg-edit. Never the working directory."""
    return Path(os.environ.get("MEG_CACHE_DIR") or Path.home() / ".cache" / "meg-edit")


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error deleted."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors, atomically; tensors are made contiguous and moved to CPU."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    with safe_open(str(path), "pt") as handle:
        return handle.metadata() or {}


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place only when the block succeeds.

    An existing `path` is replaced only with `overwrite=True`, and only after the new one is complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
