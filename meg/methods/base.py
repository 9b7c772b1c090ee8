"""One contract for every editing method, MeG and baselines alike (memit's `apply_*_to_model` idea).

A method is a function `apply(model, tokenizer, requests, context) -> EditedLM`. It may copy the model but must
never change the caller's model. The returned `EditedLM` answers RAW queries (it applies the dataset's prompt
template itself), so the evaluation harness treats every method the same way and has no per-method branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn
from transformers import PreTrainedTokenizerBase

from meg.decoding import MAX_NEW_TOKENS
from meg.prompts import PromptTemplate
from meg.requests import EditRequest, NegativePair, PseudoPair


@runtime_checkable
class EditedLM(Protocol):
    """What an editing method returns: a model that generates and scores raw queries in batches."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy continuation of each templated prompt (special tokens removed)."""
        ...

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """Per row: teacher-forced token accuracy of `target` after the templated prompt."""
        ...

    def describe(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """Per row: method-specific details kept in evaluation records (MeG: route, edit, entropy)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Method-level facts for the report (stage wall times, hyperparameters, calibration)."""
        ...


@dataclass
class EditContext:
    """Everything a method may use besides the edits themselves.

    `pseudo_pairs` and `unrelated` come from data disjoint from the edits (the paper's pseudo-edit set and
    unrelated queries); `calibration_pairs` are more such pairs used only to calibrate a router (None = the
    shipped ones); `negative_pairs` train a router's verifier (None = the shipped ones); `work_dir` holds
    resumable intermediate files; `config` is the method's own settings object (None = its defaults).
    """

    template: PromptTemplate = field(default_factory=PromptTemplate)
    pseudo_pairs: Sequence[PseudoPair] = ()
    unrelated: Sequence[str] = ()
    calibration_pairs: Sequence[PseudoPair] | None = None
    negative_pairs: Sequence[NegativePair] | None = None
    work_dir: Path | None = None
    config: Any = None
    layer: int | None = None
    seed: int = 0
    progress: bool = True


ApplyFn = Callable[[nn.Module, PreTrainedTokenizerBase, Sequence[EditRequest], EditContext], EditedLM]
