"""The encoder's training set (paper stage 1): pseudo-edit pairs, optionally with synthetic hard negatives.

The paper tunes the encoder with in-batch negatives only; measured here (docs/LOG.md), that encoder learns to
recognise a fact by its SUBJECT: a question about the same subject but another relation then sits at cosine
~0.97 from the edit, so nothing downstream can tell them apart. Hard negatives fix that, built by swapping
subjects between pseudo pairs (both kinds are what locality prompts look like):
- same subject, other relation: pair j's question with pair i's subject written in;
- same relation, other subject: pair i's question with pair j's subject written in.
Pairs whose questions share a template (the same relation worded the same way) are never paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from meg.errors import InputError
from meg.requests import PseudoPair


@dataclass
class TuningSet:
    """Distinct texts and, per pair, indices into them: question (P,), paraphrase (P,), hard negatives (P, H)
    with -1 where a pair has none."""

    texts: list[str]
    questions: torch.Tensor
    paraphrases: torch.Tensor
    hard: torch.Tensor


def template(text: str, subject: str | None) -> str | None:
    """The text with its subject replaced by '{}' (None when the subject is absent from it)."""
    if not subject or subject not in text:
        return None
    return text.replace(subject, "{}", 1)


def _hard_texts(pairs: Sequence[PseudoPair], per_pair: int, seed: int) -> list[list[str]]:
    """Up to `per_pair` synthetic negatives for every pair (alternating the two kinds)."""
    templates = [template(p.question, p.subject) for p in pairs]
    usable = [i for i, t in enumerate(templates) if t is not None]
    out: list[list[str]] = [[] for _ in pairs]
    if per_pair == 0 or len(usable) < 2:
        return out
    gen = torch.Generator().manual_seed(seed)
    for i in usable:
        for slot in range(per_pair):
            for _ in range(10):  # a few partners per slot: skip those sharing i's template or subject
                j = usable[int(torch.randint(len(usable), (1,), generator=gen))]
                if templates[j] != templates[i] and pairs[j].subject != pairs[i].subject:
                    same_subject = slot % 2 == 0
                    out[i].append(templates[j].format(pairs[i].subject) if same_subject
                                  else templates[i].format(pairs[j].subject))
                    break
    return out


def tuning_set(pairs: Sequence[PseudoPair], hard_negatives: int = 0, seed: int = 0) -> TuningSet:
    """Index the pairs' texts (and `hard_negatives` synthetic negatives per pair) for cached InfoNCE."""
    if not all(isinstance(p, PseudoPair) for p in pairs):
        raise InputError("encoder tuning: pairs must be PseudoPair(question, paraphrase) objects")
    index: dict[str, int] = {}
    hard = _hard_texts(pairs, hard_negatives, seed)
    for pair, negatives in zip(pairs, hard):
        for text in (pair.question, pair.paraphrase, *negatives):
            index.setdefault(text, len(index))
    questions = torch.tensor([index[p.question] for p in pairs], dtype=torch.long)
    paraphrases = torch.tensor([index[p.paraphrase] for p in pairs], dtype=torch.long)
    width = max(hard_negatives, 1)
    hard_idx = torch.full((len(pairs), width), -1, dtype=torch.long)
    for i, negatives in enumerate(hard):
        hard_idx[i, : len(negatives)] = torch.tensor([index[t] for t in negatives], dtype=torch.long)
    if questions.unique().numel() < 2:
        raise InputError(f"encoder tuning needs pairs with at least 2 distinct questions, got {len(pairs)} pair(s)")
    return TuningSet(list(index), questions, paraphrases, hard_idx)


def split_pairs(pairs: Sequence[PseudoPair], holdout: float = 0.1, seed: int = 0) -> tuple[list[PseudoPair], list[PseudoPair]]:
    """(pairs to tune the encoder on, pairs held out to calibrate the router), a seeded split.

    Calibrating on pairs the encoder was trained on would overstate how close a new paraphrase lands.
    """
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(len(pairs) * holdout))
    held = set(order[:cut])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
