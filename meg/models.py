"""Loading causal LMs (any Hub id or local path) and fingerprinting them, so a pack knows its base model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from meg.errors import InputError

REFERENCE_MODEL = "reference"  # the name that selects the model shipped in meg/assets/reference-model

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def reference_model_path() -> Path:
    """Directory of the small GPT-2-architecture model this project trains and ships (see its model card)."""
    return Path(__file__).resolve().parent / "assets" / "reference-model"


def resolve_model_id(model: str) -> str:
    """'reference' -> the shipped checkpoint; anything else is passed to from_pretrained unchanged."""
    return str(reference_model_path()) if model == REFERENCE_MODEL else model


def load_causal_lm(
    model: str, dtype: str = "float32", device: str = "cpu"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer with `from_pretrained` (Hub id or path) in eval mode.

    The shipped reference model is stored in float16 to stay small; `dtype` (default float32) is what it runs in.
    """
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    name = resolve_model_id(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=_DTYPES[dtype])
    except OSError as err:
        raise InputError(f"could not load model {model!r}: {str(err).splitlines()[0]}") from None
    return lm.to(device).eval(), tokenizer


_CONFIG_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "n_inner")


def fingerprint(model: nn.Module) -> dict:
    """Identify a base model: its architecture config and a numeric signature of its weights.

    The signature is the mean absolute value of the first 4096 entries of every parameter tensor: cheap for
    large models, different for different checkpoints, and stable when the same checkpoint is loaded in
    another dtype (compared with a relative tolerance in `same_model`).
    """
    config = model.config.to_dict()
    signature = [
        float(p.detach().reshape(-1)[:4096].to("cpu", torch.float64).abs().mean()) for p in model.state_dict().values()
    ]
    return {
        "config": {k: config.get(k) for k in _CONFIG_KEYS if config.get(k) is not None},
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "signature": signature,
    }


def same_model(a: dict, b: dict, rtol: float = 1e-2) -> bool:
    """True when two fingerprints describe the same checkpoint (up to dtype rounding)."""
    if a["config"] != b["config"] or a["num_parameters"] != b["num_parameters"]:
        return False
    if len(a["signature"]) != len(b["signature"]):
        return False
    return all(abs(x - y) <= rtol * max(abs(x), abs(y), 1e-8) for x, y in zip(a["signature"], b["signature"]))
