"""The paper's metrics (section "Evaluation protocol"): Reliability, Generality, Locality, each AG and TF; Score.

- AG: greedy generation (<= 20 new tokens) matches the expected answer after trimming, dropping one trailing
  '.', case-insensitively (`meg.prompts.answers_match`).
- TF: teacher-forced token accuracy over the expected answer's tokens.
- Reliability: the edit prompt vs the new target. Generality: the first paraphrase vs the new target.
  Locality: one unrelated prompt per edit vs the PRE-edit model's own greedy output (an untouched model: 100).
- Score: harmonic mean of the six numbers (0 when any is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meg.prompts import normalize_answer

METRICS = ("reliability", "generality", "locality")
COLUMNS = ("rel_ag", "gen_ag", "loc_ag", "rel_tf", "gen_tf", "loc_tf")  # the paper's table order


def locality_target(pre_edit_output: str) -> str:
    """The pre-edit answer used as Locality's expected text: trimmed, one trailing '.' dropped (case kept)."""
    text = pre_edit_output.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def ag_pass(generated: str, expected: str) -> bool:
    """AG exact match (the paper's normalisation on both sides)."""
    return normalize_answer(generated) == normalize_answer(expected)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (or the sequence is empty)."""
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


@dataclass(frozen=True)
class MetricTable:
    """Percentages (0-100) of the six metrics and their Score; `None` where a metric had no cases."""

    rel_ag: float | None
    gen_ag: float | None
    loc_ag: float | None
    rel_tf: float | None
    gen_tf: float | None
    loc_tf: float | None

    @property
    def score(self) -> float:
        values = [v for v in self.values() if v is not None]
        return harmonic_mean(values)

    def values(self) -> list[float | None]:
        return [getattr(self, c) for c in COLUMNS]

    def to_dict(self) -> dict[str, float | None]:
        return {**{c: getattr(self, c) for c in COLUMNS}, "score": self.score}


def _mean_percent(values: Sequence[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def aggregate(records: Sequence[dict]) -> MetricTable:
    """Average per-record results. Each record has, per metric present, `<metric>: {"ag": bool, "tf": float}`."""
    columns = {}
    for metric, short in zip(METRICS, ("rel", "gen", "loc")):
        cases = [r[metric] for r in records if r.get(metric) is not None]
        columns[f"{short}_ag"] = _mean_percent([float(c["ag"]) for c in cases])
        columns[f"{short}_tf"] = _mean_percent([float(c["tf"]) for c in cases])
    return MetricTable(**columns)
