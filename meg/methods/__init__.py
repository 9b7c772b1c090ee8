"""Editing methods behind one signature; `METHODS` maps a name to its `apply` function (see base.py)."""

from __future__ import annotations

import importlib

from meg.errors import InputError
from meg.methods.base import ApplyFn, EditContext, EditedLM

# name -> "module:function"; resolved lazily so importing meg.methods stays cheap.
METHODS: dict[str, str] = {
    "meg": "meg.methods.meg_method:apply_meg",
    "meg-paper": "meg.methods.meg_method:apply_meg_paper",
    "meg-query": "meg.methods.meg_method:apply_meg_query",
    "meg-gate": "meg.methods.meg_method:apply_meg_gate",
    "knn": "meg.methods.meg_method:apply_knn",
    "mlp": "meg.methods.meg_method:apply_mlp",
    "unedited": "meg.methods.unedited:apply_unedited",
    "ft": "meg.baselines.ft:apply_ft",
    "memit": "meg.baselines.memit:apply_memit",
    "alphaedit": "meg.baselines.alphaedit:apply_alphaedit",
}


def get_method(name: str) -> ApplyFn:
    """The `apply` function registered under `name`."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, function = METHODS[name].split(":")
    return getattr(importlib.import_module(module), function)


__all__ = ["METHODS", "EditContext", "EditedLM", "get_method"]
