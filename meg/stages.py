"""Resumable pipeline stages: a stage's output is stored in a work directory under a hash of its inputs, so a
rerun with the same inputs loads it instead of recomputing (encoder tuning and generator training take minutes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from meg import files
from meg.diffusion.generator import GeneratorConfig, WeightGenerator
from meg.diffusion.train import train_generator
from meg.encoder import EncoderConfig, QueryEncoder
from meg.errors import InputError
from meg.gate import FamiliarityGate, GateConfig, GateLog, train_gate, training_settings
from meg.requests import PseudoPair


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (tensors by their bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tuned_encoder(config: EncoderConfig, pairs: Sequence[PseudoPair], work: Path | None,
                  device: str | torch.device = "cpu", progress: bool = True) -> tuple[QueryEncoder, dict | None]:
    """The query encoder of `config`, its last layer tuned on `pairs` (paper stage 1) unless `config.tune` is off.

    Returns the encoder and its tuning log (None when untuned; {"resumed_from": ...} when loaded from `work`).
    """
    encoder = QueryEncoder.from_config(config, device=device)
    if not config.tune:
        return encoder, None
    cached = (work / files.TUNED_ENCODER.format(key=digest(config.to_dict(), [asdict(p) for p in pairs]))
              if work else None)
    if cached and cached.is_file():
        encoder.load_tuned_state(files.load_tensors(cached))
        return encoder, {"resumed_from": cached.name}
    if not pairs:
        raise InputError("encoder tuning needs pseudo-edit pairs disjoint from the edits; none are left")
    log = encoder.tune(pairs, progress=progress).to_dict()
    if cached:
        files.save_tensors(cached, encoder.tuned_state())
    return encoder, log


def trained_verifier(config, pairs: Sequence[PseudoPair], negatives: Sequence, work: Path | None,
                     progress: bool = True) -> tuple[Any, dict]:
    """The routing verifier of `config` (meg/routing/verifier.py) trained on `pairs` and `negatives`, or the one
    stored in `work`, or the one shipped in meg/assets for the default inputs (training takes ~14 CPU minutes)."""
    from meg.data.defaults import assets_dir
    from meg.routing.verifier import SubjectVerifier

    verifier = SubjectVerifier(config)
    key = digest(config.to_dict(), [asdict(p) for p in pairs], [asdict(n) for n in negatives])
    name = files.TRAINED_VERIFIER.format(key=key)
    for stored in ([work / name] if work else []) + [assets_dir() / name]:
        if stored.is_file():
            verifier.load_tuned_state(files.load_tensors(stored))
            return verifier, {"resumed_from": name}
    log = verifier.train(pairs, negatives, progress=progress)
    if work:
        files.save_tensors(work / name, verifier.tuned_state())
    return verifier, log


def trained_gate(config: GateConfig, edit_embeddings: torch.Tensor, work: Path | None,
                 progress: bool = True) -> tuple[FamiliarityGate, GateLog]:
    """The familiarity gate (paper stage 2) trained on `edit_embeddings`; with `work`, its training state is kept
    there, so an interrupted run resumes and a longer `max_epochs` continues a shorter run (at 10,000 edits the
    gate trains for hours on a CPU)."""
    key = digest(training_settings(config), edit_embeddings.detach().float())
    checkpoint = work / files.GATE_TRAINING.format(key=key) if work else None
    return train_gate(edit_embeddings, config, progress=progress, checkpoint=checkpoint)


def trained_generator(config: GeneratorConfig, vectors: torch.Tensor, conds: torch.Tensor,
                      zero_conds: torch.Tensor | None, work: Path | None, device: str | torch.device = "cpu",
                      progress: bool = True) -> tuple[WeightGenerator, dict]:
    """A diffusion generator trained on (conds -> vectors) (paper stage 4), or the one stored in `work`; an
    interrupted training continues from its state saved in `work` at the last evaluation."""
    key = digest(config.to_dict(), vectors, conds, zero_conds if zero_conds is not None else 0)
    cached = work / files.TRAINED_GENERATOR.format(key=key) if work else None
    if cached and (cached / files.PACK_GENERATOR).is_file():
        return WeightGenerator.load(cached, device=device), {"resumed_from": cached.name}
    checkpoint = work / files.GENERATOR_TRAINING.format(key=key) if work else None
    generator, log = train_generator(vectors, conds, config, zero_conds=zero_conds, progress=progress,
                                     checkpoint=checkpoint)
    if cached:
        generator.save(cached)
        checkpoint.unlink(missing_ok=True)  # the finished generator replaces its (several times larger) state
    return generator, log.to_dict()
