"""The routing decision every MeG query starts with: is it about an edited fact, and which one?

A router is fitted once at edit time (`fit`) and then answers batches (`route`). It returns, per query, whether
the query goes to the weight generator (`routed`) and the edit it matched (`edit`, -1 = none; the paper's gate
does not need one, but every router reports its nearest edit so the generator can be conditioned on it and the
records show it). Routers are registered in `meg.routing.ROUTERS` by name; the pack stores the name, what the
fit produced (`fitted`) and its tensors; the router's settings are its config in the pack's MegConfig.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from meg.requests import NegativePair, PseudoPair


@dataclass
class Routes:
    """Per query (B rows): routed (bool), matched edit index (long, -1 = none), router statistic (float)."""

    routed: torch.Tensor
    edit: torch.Tensor
    score: torch.Tensor

    def row(self, i: int) -> dict[str, Any]:
        edit = int(self.edit[i])
        return {"routed": bool(self.routed[i]), "edit": edit if edit >= 0 else None, "score": float(self.score[i])}

    def select(self, rows: torch.Tensor) -> Routes:
        return Routes(self.routed[rows], self.edit[rows], self.score[rows])


Encode = Callable[[Sequence[str]], torch.Tensor]


def embed_known(texts: Sequence[str], known: dict[str, torch.Tensor], encode: Encode) -> torch.Tensor:
    """(M, C) embeddings of `texts`, encoding only the (distinct) ones `known` (text -> embedding, computed earlier
    with the same encoder) lacks; with none of them known, all in one pass as given."""
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if not texts or len(missing) == len(texts):
        return encode(list(texts))
    table = {**known, **dict(zip(missing, encode(missing)))} if missing else known
    return torch.stack([table[t] for t in texts])


@dataclass
class RoutingData:
    """What a router may learn from: the edits, and queries from data disjoint from any test set.

    edit_embeddings: (N, C) unit-norm embeddings of the edit prompts (raw, untemplated);
    unrelated_embeddings: (M, C) of queries that must not be routed (for calibration);
    pseudo_pairs: (question, paraphrase) pairs held out from encoder tuning, for calibration;
    training_pairs: the pairs the encoder was tuned on (for routers that train more);
    encode: the tuned encoder's `encode`, for routers that embed more texts;
    work: a work directory where routers may cache what they train;
    negative_pairs: same-subject, other-relation question pairs for a router's verifier (None: the shipped ones).
    """

    edit_queries: list[str]
    edit_embeddings: torch.Tensor
    subjects: list[str | None]
    unrelated_queries: list[str]
    unrelated_embeddings: torch.Tensor
    pseudo_pairs: Sequence[PseudoPair] = ()
    training_pairs: Sequence[PseudoPair] = ()
    encode: Encode | None = None
    work: Path | None = None
    negative_pairs: Sequence[NegativePair] | None = None


class Router(Protocol):
    """Routing behind one interface (see module docstring)."""

    name: ClassVar[str]
    state_file: ClassVar[str]
    score_name: ClassVar[str]  # what `Routes.score` is, e.g. "entropy" or "similarity"

    def route(self, queries: Sequence[str], embeddings: torch.Tensor) -> Routes:
        """Route a batch: raw queries (B) and their unit-norm embeddings (B, C)."""
        ...

    def route_texts(self, queries: Sequence[str], encode: Encode,
                    whole: bool = False) -> tuple[Routes, dict[str, torch.Tensor]]:
        """Route raw queries, encoding (with `encode`, in one pass) only the texts this router needs; every whole
        query too when `whole`. -> (routes, the embeddings computed, by text). What EditedModel calls."""
        ...

    def fitted(self) -> dict[str, Any]:
        """JSON-serialisable values the fit produced (thresholds, calibration, training log), not settings: the
        settings are the router's config, stored once in the pack's MegConfig."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned tensors (stored as safetensors in the pack)."""
        ...

    # Construction: `fit(data: RoutingData, config, progress) -> Router` at edit time, with the router's own
    # config (GateConfig, RetrievalConfig), and `from_state(config, fitted, state_dict, edit_embeddings, requests,
    # encode) -> Router` when a pack is loaded (`encode` embeds texts with the pack's tuned encoder, for routers
    # that embed more than the query); `router.refit(data, progress) -> Router` fits the same router to another
    # edit set, reusing what it learned that does not depend on the edits (lifelong add / remove).


def nearest_edit(embeddings: torch.Tensor, edit_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest edit for unit-norm rows: (B, C) x (N, C) -> best similarity (B,), edit index (B,)."""
    similarity = embeddings @ edit_embeddings.T  # (B, N)
    best, index = similarity.max(dim=1)
    return best, index
