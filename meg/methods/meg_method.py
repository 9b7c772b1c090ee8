"""MeG behind the editing contract: fit an edit pack on the requests and return the `EditedModel`.

With a `context.work_dir`, the fitted pack is saved to `<work_dir>/pack-<hash of settings and edits>` and reused
by a later call with the same edits and settings, so a benchmark that is interrupted after editing does not edit
again; variants (kNN, MLP, the paper's gate) sharing a work directory also share its cached stages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.config import MegConfig
from meg.distributed import ranks
from meg.edited_model import EditedModel
from meg.editor import MegEditor
from meg.encoder import EncoderConfig
from meg.errors import PackError
from meg.files import digest
from meg.methods.base import EditContext
from meg.pack import EditPack, named_models
from meg.requests import EditRequest, deduplicate
from meg.surgery import neuron_spec

log = logging.getLogger("meg")


def meg_config(context: EditContext) -> MegConfig:
    """The MegConfig in the context (object or dict), else the defaults with the context's layer and seed."""
    config = context.config
    if isinstance(config, dict):
        return MegConfig.from_dict({"layer": context.layer, "seed": context.seed, **config})
    return config or MegConfig(layer=context.layer, seed=context.seed)


def _reusable(path: Path, editor: MegEditor, requests: Sequence[EditRequest]) -> EditPack | None:
    if not path.is_dir():
        return None
    try:  # the models this editor's own config names are trusted: it chose them
        pack = EditPack.load(path, trust_models=list(named_models(editor.resolved_config()).values()))
    except PackError as err:
        log.warning("ignoring unreadable pack in the work directory: %s", err)
        return None
    same = (pack.config == editor.resolved_config() and pack.template == editor.template
            and pack.requests == deduplicate(list(requests))[0])
    return pack if same else None


def apply_meg(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], context: EditContext
) -> EditedModel:
    """Run the four MeG stages (or reuse the work directory's pack) and apply the pack to `model`."""
    config = meg_config(context)
    # The pairs and queries calibrate the router: a pack fitted on other ones is not reused.
    data = [[asdict(p) for p in context.pseudo_pairs], list(context.unrelated),
            None if context.calibration_pairs is None else [asdict(p) for p in context.calibration_pairs]]
    if context.negative_pairs is not None:  # (only then: keys of packs fitted with the shipped ones stay)
        data.append([asdict(n) for n in context.negative_pairs])
    key = digest(config.to_dict(), context.template.text, [r.to_json() for r in requests], data)
    pack_dir = Path(context.work_dir) / f"pack-{key}" if context.work_dir else None
    editor = MegEditor(model, tokenizer, config, context.template)
    pack = _reusable(pack_dir, editor, requests) if pack_dir else None
    if pack is None:
        pack = editor.fit(requests, context.pseudo_pairs or None, context.unrelated or None, context.work_dir,
                          context.progress, calibration_pairs=context.calibration_pairs,
                          negative_pairs=context.negative_pairs)
        group = ranks()
        if pack_dir and group.main:  # under `accelerate launch` rank 0 writes, the others wait for the pack
            pack.save(pack_dir, overwrite=True)
        group.barrier()
    return EditedModel(model, tokenizer, pack)


def _apply_variant(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                   context: EditContext, **changes) -> EditedModel:
    """`apply_meg` with some MegConfig fields changed from the context's config."""
    config = replace(meg_config(context), **changes)
    return apply_meg(model, tokenizer, requests, replace(context, config=config))


def apply_knn(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
              context: EditContext) -> EditedModel:
    """Ablation "kNN": no diffusion; a routed query gets the collected vector of the edit it matched."""
    return _apply_variant(model, tokenizer, requests, context, weights="retrieved")


def apply_mlp(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
              context: EditContext) -> EditedModel:
    """Ablation "MLP": the paper's MLP generator in place of the DiT (same training budget and sampler)."""
    config = meg_config(context)
    generator = replace(config.generator_for(neuron_spec(model, config.layer).dim), architecture="mlp", preset="tiny")
    return _apply_variant(model, tokenizer, requests, context, generator=generator)


def apply_meg_paper(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                    context: EditContext) -> EditedModel:
    """MeG as the paper configures it: the familiarity gate, the paper's encoder tuning (in-batch negatives,
    temperature 1.0) and the generator conditioned on the query; everything else as `meg` (= MegConfig.paper() +
    the context's overrides)."""
    encoder = replace(meg_config(context).encoder, **{k: getattr(EncoderConfig.paper(), k)
                                                      for k in ("hard_negatives", "temperature")})
    return _apply_variant(model, tokenizer, requests, context, router="paper-gate", encoder=encoder, condition="query")


def apply_meg_gate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                   context: EditContext) -> EditedModel:
    """`meg` with the paper's familiarity gate as the router; encoder, vectors and generator are meg's own (and
    shared through the work directory), so a table of meg vs meg-gate isolates the routing decision."""
    return _apply_variant(model, tokenizer, requests, context, router="paper-gate")


def apply_meg_query(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                    context: EditContext) -> EditedModel:
    """`meg` with the generator conditioned on the query's OWN embedding (`condition="query"`, the paper's) instead
    of the matched edit's: the pair meg / meg-query isolates the conditioning."""
    return _apply_variant(model, tokenizer, requests, context, condition="query")
