"""Loading causal LMs (any Hub id or local path) and fingerprinting them, so a pack knows its base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from meg.architectures import context_length_of
from meg.errors import InputError

REFERENCE_MODEL = "reference"  # the name that selects the model shipped in meg/assets/reference-model
# Models this project trains (scripts/train_reference_model.py --recipe NAME), by name -> directory name. Each is
# looked up in meg/assets (shipped) and then in the user cache (meg.files.cache_dir(), where it can live unshipped).
REFERENCE_MODELS = {REFERENCE_MODEL: "reference-model", "reference-2": "reference-2"}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def reference_model_path(name: str = REFERENCE_MODEL) -> Path:
    """Directory of a small GPT-2-architecture model this project trains (see its model card): meg/assets/<dir>
    when shipped (or when nothing is found: where the recipe writes by default), else the user cache's <name>."""
    if name not in REFERENCE_MODELS:
        raise InputError(f"unknown reference model {name!r}; choose one of {', '.join(REFERENCE_MODELS)}")
    shipped = Path(__file__).resolve().parent / "assets" / REFERENCE_MODELS[name]
    if name == REFERENCE_MODEL or (shipped / "config.json").is_file():
        return shipped
    from meg.files import cache_dir  # only here: meg.files is not needed to load a model

    cached = cache_dir() / name
    return cached if (cached / "config.json").is_file() else shipped


def resolve_model_id(model: str) -> str:
    """'reference' / 'reference-2' -> the trained checkpoint; anything else is passed to from_pretrained unchanged."""
    return str(reference_model_path(model)) if model in REFERENCE_MODELS else model


def context_and_tokenizer(model: str) -> tuple[int | None, Any]:
    """(the longest sequence the model accepts, its tokenizer), read from the model's config and tokenizer files
    alone, without its weights, for checks before it loads; (None, None) when they cannot be read here (loading
    the model then says why)."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_id(model))
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_id(model))
    except Exception:  # noqa: BLE001 (transformers raises many types; the model load reports the problem)
        return None, None
    return context_length_of(config), tokenizer


def load_causal_lm(
    model: str, dtype: str = "float32", device: str = "cpu"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer with `from_pretrained` (Hub id or path) in eval mode.

    The shipped reference model is stored in float16 to stay small; `dtype` (default float32) is what it runs in.
    `device="auto"`: a model too large for one device is spread over the visible ones (`device_map="auto"`, layers
    placed by accelerate); the neuron then runs on whichever device holds its layer.
    """
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    check_device(device)
    check_model_name(model)
    name = resolve_model_id(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        placed = {"device_map": "auto"} if device == "auto" else {}
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=_DTYPES[dtype], **placed)
    except Exception as err:  # missing files, bad JSON, damaged weights, no tokenizer: transformers' many types
        if isinstance(err, MemoryError):
            raise
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        raise InputError(f"could not load model {model!r}: {lines[0]}") from None
    return (lm if device == "auto" else lm.to(device)).eval(), tokenizer


def check_device(device: str) -> str:
    """`device` when it is a torch device this machine has (or "auto": spread over them); checked before anything is
    loaded onto it."""
    if device == "auto":
        return device
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0, mps) or auto") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: no CUDA device is available here (torch {torch.__version__}); use cpu")
        if where.index is not None and where.index >= count:
            raise InputError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here; use cpu")
    elif where.type == "meta":
        raise InputError(f"device {device!r} holds no data; use cpu or a GPU")
    elif where.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=where)
        except Exception:
            raise InputError(f"device {device!r} is not available here; use cpu") from None
    return device


def check_model_name(model: str) -> str:
    """Refuse at once a model that names a local path but is not a model directory; a Hub id can only be checked
    by loading it."""
    if not isinstance(model, str) or not model.strip():
        raise InputError("the model must be a Hugging Face id, a model directory or 'reference', got an empty name")
    if model in REFERENCE_MODELS:
        return model
    path = Path(model).expanduser()
    if not path.exists() and not model.startswith((".", "/", "~")):
        return model  # a Hub id
    if not path.is_dir():
        problem = "no such directory" if not path.exists() else "a file, not a model directory"
        raise InputError(f"model {model!r}: {problem} (give a Hugging Face id or a directory saved with "
                         "save_pretrained)")
    if not (path / "config.json").is_file():
        raise InputError(f"model {model!r}: {path} is not a model directory (no config.json); give a Hugging Face "
                         "id or a directory saved with save_pretrained")
    return model


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
