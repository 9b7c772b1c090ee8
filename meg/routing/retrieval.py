"""Subject-verified retrieval: route a query to its nearest edit only when the evidence says it is that edit.

Measured on CounterFact (docs/results/routing-*.md): a paraphrase's nearest edit prompt is its own edit ~98% of
the time, but a plain similarity threshold cannot separate paraphrases from neighbourhood prompts, which share
the relation ("The mother tongue of Danielle Darrieux is" vs "Michel Rocard is a native speaker of"). What does
separate them is the subject: every CounterFact paraphrase names its subject, almost no neighbour does. So:

1. subject path: if the query names the subject of one or more edits (whole words, case-insensitive), take the
   most similar of those edits; route when cosine >= `subject_threshold`. The threshold rejects queries about
   the same subject but another fact (KnowEdit's locality prompts are exactly that).
2. free path: otherwise (or for edits given without a subject) take the nearest edit overall; route when
   cosine >= `free_threshold`.
Both thresholds are calibrated without test data: `subject_threshold` on synthetic same-subject queries made from
the edits themselves (edit j's prompt with edit i's subject written in: same subject, another relation), and
`free_threshold` on the unrelated queries, so that at most `target_unrelated_rate` of them are routed overall.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from meg import files
from meg.errors import InputError
from meg.routing.base import Routes, RoutingData, nearest_edit

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> tuple[str, ...]:
    """Lower-cased word and punctuation tokens: the unit of subject matching."""
    return tuple(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of the subject-verified retrieval router (thresholds None = calibrate)."""

    target_unrelated_rate: float = 0.02
    subject_negative_rate: float = 0.02  # share of synthetic same-subject/other-fact queries let through
    subject_threshold: float | None = None
    free_threshold: float | None = None
    use_subjects: bool = True
    max_negatives: int = 4000  # synthetic same-subject queries used for calibration
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_unrelated_rate", "subject_negative_rate"):
            if not 0 < getattr(self, name) < 1:
                raise InputError(f"RetrievalConfig.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("subject_threshold", "free_threshold"):
            value = getattr(self, name)
            if value is not None and not -1 <= value <= 1:
                raise InputError(f"RetrievalConfig.{name} must be a cosine in [-1, 1] or None, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown RetrievalConfig fields: {', '.join(sorted(unknown))}")
        return cls(**data)


class SubjectIndex:
    """Which edits' subjects a text names: subject word-tuples -> edit indices, matched over n-grams."""

    def __init__(self, subjects: Sequence[str | None], prompts: Sequence[str]):
        self.table: dict[tuple[str, ...], list[int]] = {}
        for i, (subject, prompt) in enumerate(zip(subjects, prompts)):
            key = words(subject) if subject else ()
            # An edit whose prompt does not contain its own subject cannot be verified by subject.
            if key and _contains(words(prompt), key):
                self.table.setdefault(key, []).append(i)
        self.longest = max((len(k) for k in self.table), default=0)

    def __len__(self) -> int:
        return len(self.table)

    def edits_named_in(self, text: str) -> list[int]:
        tokens = words(text)
        found: list[int] = []
        for n in range(1, min(self.longest, len(tokens)) + 1):
            for start in range(len(tokens) - n + 1):
                found += self.table.get(tokens[start : start + n], [])
        return sorted(set(found))


def _contains(tokens: tuple[str, ...], key: tuple[str, ...]) -> bool:
    return any(tokens[i : i + len(key)] == key for i in range(len(tokens) - len(key) + 1))


def conformal_threshold(scores: torch.Tensor, rate: float) -> float:
    """Smallest threshold t such that a new exchangeable score passes (score >= t) with probability <= rate:
    the k-th largest score with k = floor(rate * (n + 1)), nudged up so that score itself fails."""
    s = scores.double().flatten().sort(descending=True).values
    k = math.floor(rate * (len(s) + 1) + 1e-9)
    if k < 1:
        return float("inf") if len(s) else 1.0
    return float(torch.nextafter(s[k - 1], torch.tensor(math.inf, dtype=s.dtype)))


class RetrievalRouter:
    """Nearest edit, verified by subject and calibrated similarity (see module docstring)."""

    name: ClassVar[str] = "retrieval"
    state_file: ClassVar[str] = files.PACK_ROUTER
    score_name: ClassVar[str] = "similarity"

    def __init__(self, config: RetrievalConfig, edit_embeddings: torch.Tensor, subjects: Sequence[str | None],
                 prompts: Sequence[str], thresholds: dict[str, float], calibration: dict[str, Any] | None = None):
        self.config, self.edit_embeddings = config, edit_embeddings  # (N, C)
        self.subjects, self.prompts = list(subjects), list(prompts)
        self.index = SubjectIndex(self.subjects if config.use_subjects else [None] * len(prompts), self.prompts)
        self.thresholds = thresholds
        self.calibration = calibration or {}

    # --- routing ---

    def _subject_path(self, queries: Sequence[str], embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query: best similarity among edits whose subject it names (-inf if none), and that edit."""
        best = torch.full((len(queries),), -math.inf)
        edit = torch.full((len(queries),), -1, dtype=torch.long)
        for row, query in enumerate(queries):
            candidates = self.index.edits_named_in(query)
            if candidates:
                sims = self.edit_embeddings[candidates] @ embeddings[row]  # (K,)
                k = int(sims.argmax())
                best[row], edit[row] = sims[k], candidates[k]
        return best, edit

    def decide(self, queries: Sequence[str], embeddings: torch.Tensor, subject_threshold: float,
               free_threshold: float) -> Routes:
        embeddings = embeddings.to(self.edit_embeddings.dtype)
        subj_sim, subj_edit = self._subject_path(queries, embeddings)
        free_sim, free_edit = nearest_edit(embeddings, self.edit_embeddings)
        by_subject = subj_sim >= subject_threshold
        routed = by_subject | (free_sim >= free_threshold)
        edit = torch.where(by_subject, subj_edit, free_edit)
        score = torch.where(by_subject, subj_sim, free_sim)
        return Routes(routed, edit, score)

    def route(self, queries: Sequence[str], embeddings: torch.Tensor) -> Routes:
        return self.decide(queries, embeddings, self.thresholds["subject"], self.thresholds["free"])

    # --- fitting ---

    @classmethod
    def fit(cls, data: RoutingData, meg_config: Any, progress: bool = True) -> RetrievalRouter:
        config: RetrievalConfig = meg_config.retrieval
        router = cls(config, data.edit_embeddings, data.subjects, data.edit_queries, {"subject": 1.0, "free": 1.0})
        encode = data.extra.get("encode")
        router.thresholds["subject"], negatives = router._calibrate_subject(encode)
        router.thresholds["free"], achieved = router._calibrate_free(data)
        router.calibration = {"subject_negatives": negatives, "unrelated_queries": len(data.unrelated_queries),
                              "achieved_unrelated_rate": achieved, "subject_edits": len(router.index)}
        return router

    def _calibrate_subject(self, encode) -> tuple[float, int]:
        if self.config.subject_threshold is not None:
            return self.config.subject_threshold, 0
        queries = self._same_subject_queries()
        if not queries or encode is None:
            return 1.0, 0  # nothing to calibrate on: the subject path only accepts exact prompt matches
        sims, _ = self._subject_path(queries, encode(queries))
        sims = sims[torch.isfinite(sims)]
        return conformal_threshold(sims, self.config.subject_negative_rate), len(queries)

    def _same_subject_queries(self) -> list[str]:
        """Edit j's prompt with edit i's subject in place of j's: same subject as edit i, another fact.
        Pairs whose subject-masked prompts are identical (the same relation template) are skipped."""
        rows = [i for i, s in enumerate(self.subjects) if s and s in self.prompts[i]]
        templates = {i: self.prompts[i].replace(self.subjects[i], "{}") for i in rows}
        if len(rows) * (len(rows) - 1) <= self.config.max_negatives:
            pairs = [(i, j) for i in rows for j in rows if i != j]
        else:
            gen = torch.Generator().manual_seed(self.config.seed)
            picks = torch.randint(len(rows), (self.config.max_negatives, 2), generator=gen).tolist()
            pairs = [(rows[a], rows[b]) for a, b in picks]
        out = [templates[j].replace("{}", self.subjects[i]) for i, j in pairs if templates[i] != templates[j]]
        return list(dict.fromkeys(out))

    def _calibrate_free(self, data: RoutingData) -> tuple[float, float]:
        """The free-path threshold that keeps the overall unrelated routing rate <= target."""
        queries, emb = data.unrelated_queries, data.unrelated_embeddings
        if self.config.free_threshold is not None or not queries:
            return (self.config.free_threshold if self.config.free_threshold is not None else 1.0), float("nan")
        subj_sim, _ = self._subject_path(queries, emb.to(self.edit_embeddings.dtype))
        by_subject = subj_sim >= self.thresholds["subject"]
        budget = max(self.config.target_unrelated_rate - float(by_subject.double().mean()), 0.0)
        free_sim, _ = nearest_edit(emb.to(self.edit_embeddings.dtype), self.edit_embeddings)
        free_sim = torch.where(by_subject, torch.tensor(-math.inf), free_sim)  # already routed: no double count
        threshold = conformal_threshold(free_sim, budget) if budget > 0 else float("inf")
        threshold = min(threshold, 1.0 + 1e-6)
        achieved = self.decide(queries, emb, self.thresholds["subject"], threshold).routed.double().mean()
        return threshold, float(achieved)

    # --- persistence ---

    def config_dict(self) -> dict[str, Any]:
        return {"retrieval": self.config.to_dict(), "thresholds": self.thresholds, "calibration": self.calibration}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}  # everything it needs (edit embeddings, subjects, prompts) is in the pack already

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor], edit_embeddings: torch.Tensor,
                   requests: Sequence[Any]) -> RetrievalRouter:
        return cls(RetrievalConfig.from_dict(config["retrieval"]), edit_embeddings, [r.subject for r in requests],
                   [r.prompt for r in requests], dict(config["thresholds"]), config.get("calibration"))
