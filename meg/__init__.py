"""meg-edit: massive knowledge editing with one generated FFN neuron (MeG, arXiv 2512.14395).

The package imports nothing heavy at import time; the public names below resolve lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (resolved on first access, so `import meg` stays cheap). The first six
# are what the README's quick start imports; the rest are the stages' building blocks.
_PUBLIC = {
    "MegEditor": "meg.editor",
    "EditedModel": "meg.edited_model",
    "EditPack": "meg.pack",
    "MegConfig": "meg.config",
    "EditRequest": "meg.requests",
    "load_causal_lm": "meg.models",
    "mount_neuron": "meg.surgery",
    "NeuronSpec": "meg.surgery",
    "CollectionConfig": "meg.collection",
    "collect_weights": "meg.collection",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'meg' has no attribute {name!r}")
