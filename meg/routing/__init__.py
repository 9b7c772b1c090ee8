"""Routers: which queries reach the weight generator, and which edit they match (see base.py)."""

from __future__ import annotations

from meg.errors import InputError
from meg.routing.base import Router, Routes, RoutingData, nearest_edit
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


__all__ = ["ROUTERS", "RetrievalConfig", "Router", "Routes", "RoutingData", "nearest_edit", "router_class"]
