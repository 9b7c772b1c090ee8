"""The edit pack: everything an edited model needs, as one directory of JSON + safetensors (never pickle).

    pack_config.json          format version, package version, base model + fingerprint, neuron, template,
                              the full MegConfig, router name/config/calibration, training logs
    edits.jsonl               the edit requests, one per line (the input format)
    vectors.safetensors       collected neuron vectors (N, D), success (N,), loss, steps, edit embeddings (N, C)
    encoder_layer.safetensors the tuned last layer of the query encoder (absent when not tuned)
    gate.safetensors          the router's tensors (the paper's familiarity network)
    generator.safetensors     the diffusion generator, with generator_config.json (absent for "retrieved")

Keeping the requests and their collected vectors means a later version can add edits without recollecting
the old ones. `save` builds the directory next to its destination and renames it into place, so a pack on
disk is always complete; `load` checks every file and names the one that is missing or broken.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from meg import __version__, files
from meg.collection import CollectionResult
from meg.config import MegConfig
from meg.diffusion.generator import WeightGenerator
from meg.errors import InputError, MegError, PackError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest, load_edit_file, write_edit_file
from meg.surgery import NeuronSpec

FORMAT = "meg-edit-pack"
FORMAT_VERSION = 1


@dataclass
class EditPack:
    """An edit set compiled for one base model (see module docstring for the files)."""

    config: MegConfig
    base_model: str
    base_fingerprint: dict[str, Any]
    neuron: NeuronSpec
    template: PromptTemplate
    requests: list[EditRequest]
    collection: CollectionResult
    edit_embeddings: torch.Tensor  # (N, C)
    encoder_state: dict[str, torch.Tensor] | None
    router_name: str
    router_config: dict[str, Any]
    router_state: dict[str, torch.Tensor]
    router_state_file: str
    generator: WeightGenerator | None
    log: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the pack directory atomically (an existing one is replaced only with `overwrite`)."""
        path = Path(path)
        with files.atomic_directory(path, overwrite=overwrite) as tmp:
            files.atomic_write_json(tmp / files.PACK_CONFIG, self._config_json())
            write_edit_file(self.requests, tmp / files.PACK_EDITS)
            files.save_tensors(tmp / files.PACK_VECTORS, self._vector_tensors(),
                               metadata={"predictions": json.dumps(self.collection.predictions)})
            if self.encoder_state is not None:
                files.save_tensors(tmp / files.PACK_ENCODER, self.encoder_state)
            files.save_tensors(tmp / self.router_state_file, self.router_state)
            if self.generator is not None:
                self.generator.save(tmp)
        return path

    def _config_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meg_version": __version__,
            "base_model": {"name": self.base_model, "fingerprint": self.base_fingerprint},
            "neuron": asdict(self.neuron),
            "template": self.template.text,
            "num_edits": len(self.requests),
            "num_collected": int(self.collection.success.sum()),
            "meg": self.config.to_dict(),
            "router": {"name": self.router_name, "state_file": self.router_state_file, "config": self.router_config},
            "log": self.log,
        }

    def _vector_tensors(self) -> dict[str, torch.Tensor]:
        c = self.collection
        return {"vectors": c.vectors, "success": c.success, "loss": c.loss, "steps": c.steps,
                "edit_embeddings": self.edit_embeddings}

    @classmethod
    def load(cls, path: str | Path) -> EditPack:
        """Read and check a pack directory; any missing or corrupted file raises a one-line PackError."""
        path = Path(path)
        if not path.is_dir():
            raise PackError(f"{path}: no such pack directory")
        meta = _read_config(path)
        try:
            return _assemble(path, meta)
        except (KeyError, TypeError, ValueError, MegError) as err:
            if isinstance(err, PackError):
                raise
            raise PackError(f"{path / files.PACK_CONFIG}: invalid pack config ({err})") from None


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / files.PACK_CONFIG
    if not config_path.is_file():
        raise PackError(f"{path}: not an edit pack (missing {files.PACK_CONFIG})")
    try:
        meta = files.read_json(config_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackError(f"{config_path}: corrupted JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise PackError(f"{config_path}: not an edit pack config (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise PackError(f"{config_path}: pack format {meta['format_version']} is newer than this meg-edit supports")
    return meta


def _tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.is_file():
        raise PackError(f"{path}: incomplete pack, missing {name}")
    try:
        return files.load_tensors(file)
    except Exception as err:  # safetensors raises its own error types for truncated/corrupted headers
        raise PackError(f"{file}: corrupted safetensors file ({str(err).splitlines()[0]})") from None


def _requests(path: Path) -> list[EditRequest]:
    file = path / files.PACK_EDITS
    if not file.is_file():
        raise PackError(f"{path}: incomplete pack, missing {files.PACK_EDITS}")
    try:
        return load_edit_file(file)
    except InputError as err:
        raise PackError(f"corrupted pack: {err}") from None


def _assemble(path: Path, meta: dict[str, Any]) -> EditPack:
    config = MegConfig.from_dict(meta["meg"])
    neuron = NeuronSpec(**meta["neuron"])
    requests = _requests(path)
    vectors = _tensors(path, files.PACK_VECTORS)
    predictions = json.loads(files.load_metadata(path / files.PACK_VECTORS).get("predictions", "[]"))
    collection = CollectionResult(vectors["vectors"], vectors["success"], vectors["loss"], vectors["steps"], predictions)
    _check_shapes(path, neuron, requests, collection, vectors["edit_embeddings"])
    router = meta["router"]
    generator = None
    if config.weights == "generated":
        for name in (files.PACK_GENERATOR, files.PACK_GENERATOR_CONFIG):
            if not (path / name).is_file():
                raise PackError(f"{path}: incomplete pack, missing {name}")
        generator = WeightGenerator.load(path)
    return EditPack(
        config=config,
        base_model=meta["base_model"]["name"],
        base_fingerprint=meta["base_model"]["fingerprint"],
        neuron=neuron,
        template=PromptTemplate(meta["template"]),
        requests=requests,
        collection=collection,
        edit_embeddings=vectors["edit_embeddings"],
        encoder_state=_tensors(path, files.PACK_ENCODER) if config.encoder.tune else None,
        router_name=router["name"],
        router_config=router["config"],
        router_state=_tensors(path, router["state_file"]),
        router_state_file=router["state_file"],
        generator=generator,
        log=meta.get("log", {}),
    )


def _check_shapes(path: Path, neuron: NeuronSpec, requests: list, collection: CollectionResult, embeddings: torch.Tensor) -> None:
    n = len(requests)
    expected = {"vectors": (n, neuron.dim), "success": (n,), "loss": (n,), "steps": (n,)}
    for name, shape in expected.items():
        if tuple(getattr(collection, name).shape) != shape:
            raise PackError(f"{path / files.PACK_VECTORS}: {name} has shape {tuple(getattr(collection, name).shape)}, "
                            f"expected {shape} for {n} edits")
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise PackError(f"{path / files.PACK_VECTORS}: edit_embeddings has shape {tuple(embeddings.shape)}, expected ({n}, C)")
