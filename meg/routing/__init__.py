"""Routers: which queries reach the weight generator, and which edit they match (see base.py)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import torch

from meg import files
from meg.errors import InputError
from meg.routing.base import Router, Routes, RoutingData, embed_known, nearest_edit
from meg.routing.paper_gate import PaperGateRouter
from meg.routing.retrieval import RetrievalConfig, RetrievalRouter

ROUTERS: dict[str, type] = {
    PaperGateRouter.name: PaperGateRouter,
    RetrievalRouter.name: RetrievalRouter,
}


def router_class(name: str) -> type:
    """The router registered under `name`."""
    if name not in ROUTERS:
        raise InputError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    return ROUTERS[name]


def router_parts(router: Router) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What a pack keeps of a fitted router: (its fitted values, its state tensors)."""
    return router.fitted(), router.state_dict()


# The last router fitted in this process, by a key of its inputs: the variants of one `meg bench` (meg, mlp, knn)
# fit the same router on the same edits, 141 s each at 10,000 edits (docs/LOG.md, 2026-12-02). Kept in memory
# only, so a code change never meets a router fitted by older code.
_LAST_FIT: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] = {}


def fitted_router(name: str, config: Any, data: RoutingData,
                  progress: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What a pack keeps of router `name` fitted with `config` on `data`: (its fitted values, its state tensors);
    the same inputs as the previous call in this process return that call's result without fitting again."""
    negatives = None if data.negative_pairs is None else [asdict(n) for n in data.negative_pairs]
    key = files.digest(name, config.to_dict(), data.edit_queries, data.subjects, data.edit_embeddings,
                       data.unrelated_queries, data.unrelated_embeddings, [asdict(p) for p in data.pseudo_pairs],
                       [asdict(p) for p in data.training_pairs], negatives, str(data.work))
    if key not in _LAST_FIT:
        parts = router_parts(router_class(name).fit(data, config, progress=progress))
        _LAST_FIT.clear()
        _LAST_FIT[key] = parts
    fitted, state = _LAST_FIT[key]
    return copy.deepcopy(fitted), dict(state)


__all__ = ["ROUTERS", "RetrievalConfig", "Router", "Routes", "RoutingData", "embed_known", "fitted_router",
           "nearest_edit", "router_class", "router_parts"]
