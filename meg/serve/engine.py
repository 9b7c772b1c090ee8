"""The server's model side: one batch of rows -> routes, per-row neurons, decoding; and live changes of the pack.

All inference runs on ONE thread (the batcher's worker): `EditedModel` keeps a route / vector cache that is not
thread-safe, and a neuron is mounted on the shared base model for the length of a batch.

Live edits (`change`) run on another thread, one at a time, with their own copy of the base model and tokenizer
(neuron collection mounts trained neurons on the model it works on, which must not be the one serving), then:
the new pack is saved over the served pack directory (atomically, `EditPack.save`), and only then a new
`EditedModel` on the serving model replaces the current one in one assignment. A batch takes the current
`EditedModel` when it starts and keeps it to the end, so requests in flight finish on the old pack, and an edit is
acknowledged only once it is on disk: a crash after the acknowledgement cannot lose it.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.edited_model import EditedModel
from meg.errors import InputError
from meg.pack import EditPack
from meg.prompts import PromptTemplate
from meg.requests import EditRequest
from meg.serve.sampling import RowResult, RowSpec, generate_rows
from meg.surgery import context_length

log = logging.getLogger("meg")


@dataclass(frozen=True)
class Row:
    """One choice to decode: the decoding settings and the text the router reads (None: the unedited model)."""

    spec: RowSpec
    route: str | None


@dataclass(frozen=True)
class Served:
    """What a batch runs on, taken as a whole when it starts: the edited model (None: no pack) and its revision."""

    edited: EditedModel | None
    revision: int


@dataclass
class EditOptions:
    """The router's calibration inputs of a live edit (None: the shipped sets, as `meg edit` uses)."""

    pseudo_pairs: list | None = None
    unrelated: list[str] | None = None
    calibration_pairs: list | None = None
    work_dir: Path | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {"pseudo_pairs": self.pseudo_pairs, "unrelated": self.unrelated,
                "calibration_pairs": self.calibration_pairs, "work_dir": self.work_dir, "progress": False}


class Engine:
    """A base model, its tokenizer and (optionally) an edit pack, answering batches of `Row`s.

    `pack_path`: where live edits are saved (None: they are refused)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pack: EditPack | None = None,
                 pack_path: str | Path | None = None, edit_options: EditOptions | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.pack_path = Path(pack_path) if pack_path is not None else None
        self.edit_options = edit_options or EditOptions()
        self._served = Served(_prepared(EditedModel(model, tokenizer, pack)) if pack is not None else None, 0)
        self._edit_lock = threading.Lock()
        self._editing: tuple[nn.Module, PreTrainedTokenizerBase] | None = None
        self.context = context_length(model)
        self.batches = 0

    # --- what is served ---

    @property
    def served(self) -> Served:
        return self._served

    @property
    def current_pack(self) -> EditPack | None:
        edited = self._served.edited
        return edited.pack if edited is not None else None

    @property
    def template(self) -> PromptTemplate:
        pack = self.current_pack
        return pack.template if pack is not None else PromptTemplate()

    # --- inference (the worker thread only) ---

    def run(self, rows: Sequence[Row], on_text: Callable[[int, str], None] | None = None,
            cancelled: Callable[[int], bool] | None = None,
            on_route: Callable[[int, dict[str, Any]], None] | None = None, stream_rows: set[int] | None = None
            ) -> list[tuple[RowResult, dict[str, Any]]]:
        """Route every row that asks for the edited model, mount its neuron, decode the batch in one pass."""
        served = self._served  # this batch keeps it to the end, whatever a live edit swaps in meanwhile
        rows = list(rows)
        infos = [self._unedited_info(served) for _ in rows]
        weights = None
        keys = list(dict.fromkeys(r.route for r in rows if r.route is not None))
        if served.edited is not None and keys:
            edited = served.edited
            vectors = edited.neuron_weights(keys)  # (K, D)
            described = dict(zip(keys, edited.describe(keys)))
            at = {key: k for k, key in enumerate(keys)}
            weights = torch.zeros(len(rows), vectors.shape[1])
            for i, row in enumerate(rows):
                if row.route is not None:
                    weights[i] = vectors[at[row.route]]
                    infos[i] = self._info(served, row.route, described[row.route])
        if on_route is not None:
            for i, info in enumerate(infos):
                on_route(i, info)
        spec = served.edited.pack.neuron if served.edited is not None else None
        results = generate_rows(self.model, self.tokenizer, [r.spec for r in rows], spec, weights, on_text, cancelled,
                                stream_rows)
        self.batches += 1
        return list(zip(results, infos))

    def warm_up(self, prompt: str = "Hello") -> None:
        """One routed, one-token request, so that the first client does not pay for lazy initialisation."""
        ids = tuple(self.tokenizer(self.template.format(prompt))["input_ids"])
        self.run([Row(RowSpec(ids, 1), prompt if self._served.edited is not None else None)])

    @staticmethod
    def _unedited_info(served: Served) -> dict[str, Any]:
        return {"edited": False, "edit": None, "score": None, "routed_on": None, "pack_revision": served.revision}

    @staticmethod
    def _info(served: Served, key: str, described: dict[str, Any]) -> dict[str, Any]:
        edited = served.edited
        score_name = edited.router.score_name
        row = described.get("edit")
        routed = bool(described["routed"]) and row is not None
        edit = None
        if routed:
            request = edited.pack.requests[row]
            edit = {"id": edited.pack.ids[row], "prompt": request.prompt, "target": request.target,
                    "subject": request.subject}
        score = described.get(score_name)
        return {"edited": routed, "edit": edit, "score": None if score is None else float(score),
                "score_name": score_name, "routed_on": key, "pack_revision": served.revision}

    # --- live edits (one at a time, off the worker thread) ---

    def _editing_model(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """The editor's own copy of the base model and tokenizer (made once)."""
        if self._editing is None:
            self._editing = copy.deepcopy(self.model).eval(), copy.deepcopy(self.tokenizer)
        return self._editing

    def change(self, operation: str, requests: Sequence[EditRequest] = (), keys: Sequence[int | str] = ()
               ) -> dict[str, Any]:
        """Add, replace or remove edits; save the new pack over the served one; swap it in; say what changed."""
        from meg.editor import MegEditor

        if self.pack_path is None or self._served.edited is None:
            raise InputError("this server has no pack to edit")
        with self._edit_lock:
            before = self._served.edited.pack
            model, tokenizer = self._editing_model()
            editor = MegEditor(model, tokenizer, before.config, before.template, model_name=before.base_model)
            options = self.edit_options.as_kwargs()
            if operation == "remove":
                after = editor.remove(before, list(keys), **options)
            elif operation in ("add", "replace"):
                after = getattr(editor, operation)(before, list(requests), **options)
            else:
                raise InputError(f"unknown edit operation {operation!r}")
            after.save(self.pack_path, overwrite=True)  # on disk before anyone is told
            # the same base model as at start (checked there)
            edited = _prepared(EditedModel(self.model, self.tokenizer, after, check_base=False))
            revision = self._served.revision + 1
            self._served = Served(edited, revision)
        entry = after.history[-1]
        log.info("pack %s: %s (%d edits now)", self.pack_path, operation, len(after))
        return {"operation": operation, "edits": len(after), "pack_revision": revision,
                **{k: entry.get(k, []) for k in ("added", "replaced", "removed", "unchanged", "conflicts")}}


def _prepared(edited: EditedModel) -> EditedModel:
    """Work an edited model can do before it serves (sampling every edit's vector, where it does that), done here
    rather than in the first requests' batches."""
    precompute = getattr(edited, "precompute", None)
    if callable(precompute):
        precompute()
    return edited
