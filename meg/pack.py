"""The edit pack: everything an edited model needs, as one directory of JSON + safetensors (never pickle).

    pack_config.json          format version, package version, base model + fingerprint, neuron, template,
                              the resolved MegConfig (every setting, once), what the router's fit produced
                              (thresholds, calibration), the next edit id, the history of operations, logs
    edits.jsonl               the edit requests, one per line (the input format), each with its stable `id`
    vectors.safetensors       collected neuron vectors (N, D), success (N,), loss, steps, edit embeddings (N, C),
                              the router's calibration queries' embeddings (M, C; the texts in its metadata)
    encoder_layer.safetensors the tuned last layer of the query encoder (absent when not tuned)
    router.safetensors / gate.safetensors   the router's tensors (the verifier's layers / the familiarity network)
    generator.safetensors     the diffusion generator's weights (absent for weights = "retrieved")
    manifest.json             size and sha256 of every other file, written last (packs from before 2026-12-01 lack it)

Format 2 stores every setting once: the router's and the generator's settings are parts of the MegConfig, and the
router block holds only what its fit produced. Format-1 packs (meg-edit 0.1.0) load through `migrate_format_1`.
Keeping the requests and their collected vectors means edits can be added without recollecting the old ones.
`save` builds the directory next to its destination and renames it into place, so a pack on disk is always
complete; `load` checks every file and names the one that is missing or broken.

A pack cannot lie about its contents: `load` checks every file against the manifest (a missing, extra or changed
file is refused by name; `meg pack verify` does the same without loading anything else), reads only plain file
names inside the pack directory (no `..`, absolute paths or symbolic links leading out), and loads only the
shipped encoder and verifier models unless the caller trusts the ones the pack names (`trust_models`,
`--trust-pack-models`): a pack is data, it must not choose which code or weights get loaded. Packs written
before manifests existed (format 1, and format 2 before 2026-12-01) still load; nothing can be checked for them,
and `load` says so in a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from meg import __version__, files
from meg.architectures import resolve
from meg.collection import PRESETS as COLLECTION_PRESETS
from meg.collection import CollectionResult
from meg.config import MegConfig
from meg.diffusion.generator import WeightGenerator
from meg.errors import InputError, MegError, PackError
from meg.prompts import PromptTemplate
from meg.requests import EditRequest, read_jsonl, request_from_dict, write_jsonl
from meg.routing import router_class
from meg.surgery import NeuronSpec

FORMAT = files.PACK_FORMAT
FORMAT_VERSION = 2
# The encoder and verifier models a pack may name without the caller trusting them: the shipped ones.
SHIPPED_MODELS = ("minilm", "all-MiniLM-L6-v2")
QUERY_EMBEDDINGS, QUERIES = "calibration_query_embeddings", "calibration_queries"  # in vectors.safetensors

log = logging.getLogger("meg")


def history_entry(operation: str, count: int, **details: Any) -> dict[str, Any]:
    """One line of a pack's history: what was done, to how many edits, when, by which version."""
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"operation": operation, "count": count, "date": when, "meg_version": __version__, **details}


@dataclass
class EditPack:
    """An edit set compiled for one base model (see module docstring for the files)."""

    config: MegConfig  # resolved: layer, collection and generator filled in
    base_model: str
    base_fingerprint: dict[str, Any]
    neuron: NeuronSpec
    template: PromptTemplate
    requests: list[EditRequest]
    ids: list[int]  # stable edit ids, one per request; never reused within a pack's history
    collection: CollectionResult
    edit_embeddings: torch.Tensor  # (N, C)
    encoder_state: dict[str, torch.Tensor] | None
    router_fitted: dict[str, Any]  # what the router's fit produced (thresholds, calibration, training log)
    router_state: dict[str, torch.Tensor]
    generator: WeightGenerator | None
    next_id: int = -1  # the id the next added edit gets (-1: one past the largest id)
    history: list[dict[str, Any]] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    # The router's calibration queries (text -> (C,) embedding under this pack's encoder), so a lifelong change
    # re-encodes only queries it has not seen ({} for packs saved before 2026-12-02).
    query_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.next_id < 0:
            self.next_id = max(self.ids, default=-1) + 1

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def router_name(self) -> str:
        return self.config.router

    @property
    def weights_requested(self) -> str:
        """The weight source asked for when the pack was fitted ("auto" / "generated" / "retrieved"); the config
        holds the one that was used. Packs saved before it was recorded answer with the one used."""
        fits = [h for h in self.history if h.get("operation") == "fit" and "weights" in h]
        return fits[0]["weights"] if fits else self.config.weights

    # Lifelong editing returns a NEW pack (this object and its directory stay as they are until the new one is
    # saved); the work needs the base model, so it is done by a `meg.editor.MegEditor` on it (meg/lifelong.py
    # says what each operation recomputes). Options: pseudo_pairs, unrelated, calibration_pairs, work_dir, progress.

    def add(self, requests: list[EditRequest], editor: Any, **options: Any) -> EditPack:
        """This pack with `requests` added (a prompt already edited is replaced, keeping its id)."""
        return editor.add(self, requests, **options)

    def replace(self, requests: list[EditRequest], editor: Any, **options: Any) -> EditPack:
        """This pack with new targets (or other fields) for prompts it already edits."""
        return editor.replace(self, requests, **options)

    def remove(self, edits: list[int | str], editor: Any, **options: Any) -> EditPack:
        """This pack without the edits named by id or prompt; their prompts reach the base model untouched."""
        return editor.remove(self, edits, **options)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the pack directory atomically (an existing one is replaced only with `overwrite`)."""
        path = Path(path)
        with files.atomic_directory(path, overwrite=overwrite) as tmp:
            files.atomic_write_json(tmp / files.PACK_CONFIG, self._config_json())
            write_jsonl([{"id": i, **r.to_json()} for i, r in zip(self.ids, self.requests)], tmp / files.PACK_EDITS)
            files.save_tensors(tmp / files.PACK_VECTORS, self._vector_tensors(),
                               metadata={"predictions": json.dumps(self.collection.predictions),
                                         QUERIES: json.dumps(list(self.query_embeddings))})
            if self.encoder_state is not None:
                files.save_tensors(tmp / files.PACK_ENCODER, self.encoder_state)
            files.save_tensors(tmp / router_class(self.router_name).state_file, self.router_state)
            if self.generator is not None:
                files.save_tensors(tmp / files.PACK_GENERATOR, self.generator.state_dict())
            files.write_manifest(tmp)  # last: it covers every file above
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
            "next_id": self.next_id,
            "meg": self.config.to_dict(),
            "router": self.router_fitted,
            "history": self.history,
            "log": self.log,
            "manifest": files.PACK_MANIFEST,
        }

    def _vector_tensors(self) -> dict[str, torch.Tensor]:
        c = self.collection
        queries = {QUERY_EMBEDDINGS: torch.stack(list(self.query_embeddings.values()))} if self.query_embeddings else {}
        return {"vectors": c.vectors, "success": c.success, "loss": c.loss, "steps": c.steps,
                "edit_embeddings": self.edit_embeddings, **queries}

    @classmethod
    def load(cls, path: str | Path, trust_models: bool | Iterable[str] = ()) -> EditPack:
        """Read and check a pack directory; any missing, extra or corrupted file raises a one-line PackError.

        The encoder and verifier models the pack names must be the shipped ones or listed in `trust_models`
        (True trusts any): loading a pack never loads a model the caller did not choose.
        """
        path = Path(path)
        if not path.is_dir():
            files.recover_directory(path)  # a replace killed after parking the old pack: put it back
            if not path.is_dir():
                raise PackError(f"{path}: no such pack directory")
        meta = _read_config(path)
        checked = verify(path)
        if checked is None and meta.get("manifest") is not None:
            raise PackError(f"{path}: damaged pack, {files.PACK_MANIFEST} is missing (its config says it has one)")
        try:
            legacy = meta.get("format_version", 1) == 1
            pack = _assemble(path, migrate_format_1(path, meta) if legacy else meta, numbered_by_line=legacy)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError,
                MegError) as err:
            if isinstance(err, PackError):
                raise
            raise PackError(f"{path / files.PACK_CONFIG}: invalid pack config ({_short(err)})") from None
        check_models(pack.config, trust_models, path)
        return pack


def verify(path: str | Path) -> int | None:
    """Check a pack's files against its manifest without loading anything (PackError naming the first bad file).
    Returns the number of files checked, or None for a pack written before manifests (logged: nothing to check)."""
    path = Path(path)
    if not path.is_dir():
        raise PackError(f"{path}: no such pack directory")
    checked = files.verify_manifest(path)
    if checked is None:
        log.info("%s has no %s (written before manifests): its files cannot be checked", path, files.PACK_MANIFEST)
    return checked


def named_models(config: MegConfig) -> dict[str, str]:
    """The models a pack's config makes `EditedModel` load: {"encoder": ..., "verifier": ...}."""
    models = {"encoder": config.encoder.model}
    verifier = config.retrieval.verifier
    if config.router == "retrieval" and verifier is not None:
        models["verifier"] = verifier.model
    return models


def check_models(config: MegConfig, trust_models: bool | Iterable[str], path: Path | str = "pack") -> None:
    """Refuse a pack naming an encoder or verifier model that is neither shipped nor trusted by the caller."""
    if trust_models is True:
        return
    trusted = set(SHIPPED_MODELS) | ({trust_models} if isinstance(trust_models, str) else set(trust_models or ()))
    for role, model in named_models(config).items():
        if model not in trusted:
            raise PackError(f"{path}: the pack names {role} model {model!r}, which is not the shipped one; loading it "
                            f"would run whatever it points at. If you trust it, pass trust_models=[{model!r}] "
                            f"(CLI: --trust-pack-models {model})")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _read_config(path: Path) -> dict[str, Any]:
    config_path = files.inside(path, files.PACK_CONFIG)
    if not config_path.is_file():
        raise PackError(f"{path}: not an edit pack (missing {files.PACK_CONFIG})")
    try:
        meta = files.read_json(config_path)
    except (ValueError, RecursionError, OSError) as err:  # JSON, UTF-8, nesting, reading
        raise PackError(f"{config_path}: corrupted JSON ({_short(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PackError(f"{config_path}: not an edit pack config (format {found!r})")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PackError(f"{config_path}: format_version must be an integer >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise PackError(f"{config_path}: pack format {version!r} is newer than this meg-edit supports "
                        f"({FORMAT_VERSION})")
    return meta


def _tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = files.inside(path, name)
    if not file.is_file():
        raise PackError(f"{path}: incomplete pack, missing {name}")
    try:
        return files.load_tensors(file)
    except InputError as err:  # truncated or corrupted header
        raise PackError(str(err)) from None


def _metadata_strings(path: Path, name: str) -> list[str]:
    """A list of strings stored under `name` in the vectors file's metadata: the greedy predictions of collection
    ("predictions") or the calibration queries."""
    file = files.inside(path, files.PACK_VECTORS)
    try:
        strings = json.loads(files.load_metadata(file).get(name, "[]"))
    except (InputError, ValueError, RecursionError) as err:
        raise PackError(f"{file}: corrupted metadata ({_short(err)})") from None
    if not isinstance(strings, list) or not all(isinstance(p, str) for p in strings):
        raise PackError(f"{file}: corrupted metadata ({name} must be a list of strings)")
    return strings


def _query_embeddings(path: Path, vectors: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """The calibration queries' embeddings kept in the vectors file ({} when it has none)."""
    queries, embeddings = _metadata_strings(path, QUERIES), vectors.get(QUERY_EMBEDDINGS)
    if embeddings is None:
        return {}
    if tuple(embeddings.shape) != (len(queries), dim) or len(set(queries)) < len(queries):
        raise PackError(f"{path / files.PACK_VECTORS}: {QUERY_EMBEDDINGS} has shape {tuple(embeddings.shape)}, expected "
                        f"({len(queries)}, {dim}): one row per distinct calibration query in its metadata")
    return dict(zip(queries, embeddings))


def _edits(path: Path, numbered_by_line: bool) -> tuple[list[int], list[EditRequest]]:
    """(ids, requests) from edits.jsonl; format 1 had no ids: its edits are numbered by line."""
    file = files.inside(path, files.PACK_EDITS)
    if not file.is_file():
        raise PackError(f"{path}: incomplete pack, missing {files.PACK_EDITS}")
    try:
        rows = read_jsonl(file)
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{file}: expected one JSON object per edit")
        ids = list(range(len(rows))) if numbered_by_line else [r.pop("id", None) for r in rows]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) or len(set(ids)) < len(ids):
            raise InputError(f"{file}: every edit needs a distinct integer id >= 0")
        return ids, [request_from_dict(r, f"{file} record {k}") for k, r in enumerate(rows)]
    except InputError as err:
        raise PackError(f"corrupted pack: {err}") from None


def _assemble(path: Path, meta: dict[str, Any], numbered_by_line: bool = False) -> EditPack:
    # Packs saved before `vectors_per` existed sampled every query's own noise; before `generator_vectors`, the
    # generator learned the successful vectors only.
    config = MegConfig.from_dict({"vectors_per": "query", "generator_vectors": "successful", **meta["meg"]})
    neuron = NeuronSpec(**meta["neuron"])
    ids, requests = _edits(path, numbered_by_line)
    vectors = _tensors(path, files.PACK_VECTORS)
    predictions = _metadata_strings(path, "predictions")
    collection = CollectionResult(vectors["vectors"], vectors["success"], vectors["loss"], vectors["steps"], predictions)
    embeddings = vectors["edit_embeddings"]
    _check_shapes(path, neuron, requests, collection, embeddings)
    if config.weights == "auto":
        raise PackError(f"{path / files.PACK_CONFIG}: weights must be the source the fit used (generated or retrieved), "
                        "got 'auto'")
    generator = None
    if config.weights == "generated":
        state = _tensors(path, files.PACK_GENERATOR)
        generator = _generator(path, config, neuron.dim, int(embeddings.shape[1]), state)
    return EditPack(
        config=config, base_model=meta["base_model"]["name"], base_fingerprint=meta["base_model"]["fingerprint"],
        neuron=neuron, template=PromptTemplate(meta["template"]), requests=requests, ids=ids,
        collection=collection, edit_embeddings=embeddings,
        encoder_state=_tensors(path, files.PACK_ENCODER) if config.encoder.tune else None,
        router_fitted=meta["router"], router_state=_tensors(path, router_class(config.router).state_file),
        generator=generator, next_id=int(meta.get("next_id", -1)), history=list(meta.get("history", [])),
        log=meta.get("log", {}), query_embeddings=_query_embeddings(path, vectors, int(embeddings.shape[1])),
    )


def _generator(path: Path, config: MegConfig, dim: int, cond_dim: int, state: dict[str, torch.Tensor]) -> WeightGenerator:
    """The generator the config describes, with the file's weights. Its shapes are compared on the meta device
    first, so a config asking for an enormous network is refused before any memory is allocated."""
    settings = config.generator_for(dim)
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in WeightGenerator(settings, dim, cond_dim).state_dict().items()}
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as err:
        raise PackError(f"{path / files.PACK_CONFIG}: the generator settings cannot be built ({_short(err)})") from None
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise PackError(f"{path / files.PACK_GENERATOR}: does not fit the configured generator ({len(wrong)} tensors "
                        f"differ, first {wrong[0]}: {found.get(wrong[0])} in the file, {expected.get(wrong[0])} "
                        "expected)")
    generator = WeightGenerator(settings, dim, cond_dim)
    try:
        generator.load_state_dict(state)
    except RuntimeError as err:
        raise PackError(f"{path / files.PACK_GENERATOR}: does not fit the configured generator ({_short(err)})") from None
    return generator.eval()


def _check_shapes(path: Path, neuron: NeuronSpec, requests: list, collection: CollectionResult, embeddings: torch.Tensor) -> None:
    n = len(requests)
    expected = {"vectors": (n, neuron.dim), "success": (n,), "loss": (n,), "steps": (n,)}
    for name, shape in expected.items():
        if tuple(getattr(collection, name).shape) != shape:
            raise PackError(f"{path / files.PACK_VECTORS}: {name} has shape {tuple(getattr(collection, name).shape)}, "
                            f"expected {shape} for {n} edits")
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise PackError(f"{path / files.PACK_VECTORS}: edit_embeddings has shape {tuple(embeddings.shape)}, expected ({n}, C)")


# --- format 1 (meg-edit 0.1.0) ---

# Settings format 1 stored that became constants: the value every format-1 pack of ours used. A pack with another
# value cannot be represented any more and is refused by name; settings that only shaped training are dropped.
_FIXED_V1 = {"encoder": {"max_length": 128}, "gate": {"hidden_mult": 4, "dropout": 0.1, "labels": 10},
             "verifier": {"max_length": 96}}
_TRAINING_ONLY_V1 = {"meg": ("use_paraphrases", "sampling_steps"), "collection": ("max_new_tokens",),
                     "generator": ("weight_decay", "max_seconds", "eval_size", "log_every", "keep_best", "zero_fraction"),
                     "verifier": ("lr", "batch_size", "negatives_per_pair", "shipped_negatives", "link_templates")}
# Retrieval settings older format-1 packs were written without: the behaviour they had then.
_LEGACY_RETRIEVAL = {"approximate_subjects": None, "infer_subjects": False, "matched_calibration": False,
                     "masked_weight": 0.0, "free_floor": False, "verifier_weight": 1.0, "match_form": False}


def _drop_v1(section: str, values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    values = dict(values)
    for name, fixed in _FIXED_V1.get(section, {}).items():
        if name in values and values.pop(name) != fixed:
            raise PackError(f"this format-1 pack sets {section}.{name}, which is fixed at {fixed} since pack format 2")
    for name in _TRAINING_ONLY_V1.get(section, ()):
        values.pop(name, None)
    return values


def migrate_format_1(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A format-1 pack config as format 2: every setting once in the resolved MegConfig (the router's settings as
    the router block stored them, with the behaviour of the version that wrote them), ids 0..N-1 by line."""
    meg, router, neuron = dict(meta["meg"]), meta["router"], meta["neuron"]
    settings = router["config"]
    if router["name"] == "retrieval":
        retrieval = {**_LEGACY_RETRIEVAL, **settings["retrieval"]}
        retrieval["verifier"] = _drop_v1("verifier", retrieval.get("verifier"))
        meg["retrieval"], fitted = retrieval, {"thresholds": settings["thresholds"],
                                               "calibration": settings.get("calibration") or {}}
    else:
        meg["gate"], fitted = settings["gate"], {"calibration": settings["calibration"],
                                                 "training": settings.get("training", {})}
    generator = meg.get("generator")
    if generator is None and files.inside(path, files.PACK_GENERATOR_CONFIG).is_file():
        generator = files.read_json(path / files.PACK_GENERATOR_CONFIG)["config"]
    if generator is not None and meg.get("sampling_steps"):
        generator = {**generator, "sampling_steps": meg["sampling_steps"]}  # format 1's inference override
    collection = meg.get("collection") or COLLECTION_PRESETS[resolve(neuron["model_type"]).collection_preset].to_dict()
    meg.update(layer=neuron["layer"], collection=_drop_v1("collection", collection),
               generator=_drop_v1("generator", generator), encoder=_drop_v1("encoder", meg["encoder"]),
               gate=_drop_v1("gate", meg["gate"]), retrieval=meg["retrieval"])
    meg["retrieval"]["verifier"] = _drop_v1("verifier", meg["retrieval"].get("verifier"))
    meg = _drop_v1("meg", meg)
    count = int(meta.get("num_edits", 0))
    history = [{**history_entry("fit", count, migrated_from_format=1, written_by=meta.get("meg_version")),
                "date": None}]  # format 1 kept no date
    return {**meta, "format_version": FORMAT_VERSION, "meg": meg, "router": fitted, "next_id": count,
            "history": history}
