"""Editing methods behind one signature; `METHODS` maps a name to its `apply` function (see base.py)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence

from meg.errors import InputError
from meg.methods.base import ApplyFn, EditContext, EditedLM

log = logging.getLogger(__name__)

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


# Each baseline's config class (module:class), to check a config before any model is loaded.
_BASELINE_CONFIGS = {"ft": "meg.baselines.ft:FTConfig", "memit": "meg.baselines.memit:MEMITConfig",
                     "alphaedit": "meg.baselines.alphaedit:AlphaEditConfig"}


def check_config(name: str, config: object) -> None:
    """Refuse an unknown method, or a config its `apply` would refuse, before any model is loaded: MeG variants
    take MegConfig fields, baselines their own config (or a preset), `unedited` none."""
    get_method(name)
    if config is None:
        return
    if name == "unedited":
        raise InputError(f"method 'unedited' takes no config, got {config!r}")
    if name in _BASELINE_CONFIGS:
        config_class = _baseline_config_class(name)
        presets = importlib.import_module(config_class.__module__).PRESETS
        importlib.import_module("meg.baselines.base").resolve_config(config_class, config, presets)
        return
    from meg.config import MegConfig

    if not isinstance(config, dict | MegConfig):
        raise InputError(f"the config of method {name!r} must be a JSON object of MegConfig fields, got "
                         f"{type(config).__name__}")
    if isinstance(config, dict):
        MegConfig.from_dict(config)


def check_methods(methods: object, configs: object, allowed: Sequence[str] = tuple(METHODS), command: str = "",
                  configured_as: Callable[[str], str] = lambda name: name) -> None:
    """The one check of a benchmark's `--methods` and its configs ({method: config}), before any model is loaded:
    at least one method, each in `allowed` (the methods of `command`) and named once, configs only for methods of
    `command` (`configured_as`: the method whose config a method takes), each config valid (`check_config`), also
    those of methods this run does not bench (one configs file may serve every method of a model)."""
    if isinstance(methods, str) or not isinstance(methods, tuple | list) or not methods:
        raise InputError(f"--methods must name at least one method; choose from {', '.join(allowed)}, got {methods!r}")
    for name in methods:
        if name not in allowed:
            raise InputError(f"--methods: {name!r} is not a method of {command or 'this command'}; choose from "
                             f"{', '.join(allowed)}")
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise InputError(f"--methods: {', '.join(repeated)} given more than once")
    configs = configs or {}
    if not isinstance(configs, dict):
        raise InputError(f"the method configs must be a JSON object {{method: {{fields}}}}, got {type(configs).__name__}")
    configured = {configured_as(m) for m in methods}
    known = {configured_as(m) for m in allowed}
    unknown = sorted(map(str, set(configs) - known))
    if unknown:
        raise InputError(f"configs given for {', '.join(map(repr, unknown))}, not a method of {command or 'this command'}; "
                         f"choose from {', '.join(sorted(known))}")
    for name in sorted(configured | set(configs)):  # a config of a method not benched is still checked
        check_config(name, configs.get(name))
    unused = sorted(set(configs) - configured)
    if unused:  # one configs file may serve a model's every method; say which of them this run leaves out
        log.warning("configs for %s not used: not in --methods (%s)", ", ".join(unused), ", ".join(methods))


def with_statistics_data(name: str, fields: dict, data_dir: str) -> dict:
    """`fields` plus "data_dir" (where a baseline's key statistics read their text) when method `name`'s config
    has that field (MEMIT, AlphaEdit); other methods' fields unchanged."""
    if name not in _BASELINE_CONFIGS:
        return fields
    has_field = "data_dir" in {f.name for f in dataclasses.fields(_baseline_config_class(name))}
    return {**fields, "data_dir": data_dir} if has_field else fields


def _baseline_config_class(name: str) -> type:
    """Baseline `name`'s config class, resolved by name as METHODS are (the baselines import this package)."""
    module, cls = _BASELINE_CONFIGS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str) -> ApplyFn:
    """The `apply` function registered under `name`."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, function = METHODS[name].split(":")
    return getattr(importlib.import_module(module), function)


__all__ = ["METHODS", "EditContext", "EditedLM", "check_config", "get_method", "with_statistics_data"]
