"""Data shipped with the package (meg/assets/*.jsonl, built by scripts/build_default_assets.py).

- pseudo_pairs.jsonl: (question, paraphrase) pairs for tuning the query encoder (paper stage 1). They come from
  CounterFact's train split and MEND's ZsRE train split only, so they never overlap a benchmark's edits.
- calibration_pairs.jsonl: 3,000 more CounterFact-train (question, paraphrase) pairs, disjoint from the pseudo
  pairs: used ONLY to calibrate the router's thresholds, never to tune. With the 300 pseudo pairs held out alone,
  the threshold at 98% of pairs moved by whole points of recall from one pair to the next (docs/LOG.md,
  2026-11-30, session 7).
- same_subject_questions.jsonl: (question, other question about the same subject, subject) from KnowEdit's
  train splits (wiki_counterfact, wiki_recent): negatives for the routing verifier (meg/routing/verifier.py).
- unrelated.jsonl: unrelated queries (CounterFact-train locality prompts, NQ questions) for gate calibration.
- demo_counterfact.jsonl: 300 CounterFact edits (the first records of counterfact-val.json) for demos.
- verifier-<key>.safetensors, encoder-<key>.safetensors: the default routing verifier's trained layers and the
  default query encoder's tuned last layer for these assets (key = hash of the settings and the training pairs;
  `scripts/build_default_assets.py --verifier / --encoder`), so the default settings train nothing;
  `meg.routing.verifier.trained_verifier` and `meg.encoder.tuned_encoder` look them up (`shipped_asset`).
Files are read when a function is called, never at import.
"""

from __future__ import annotations

from pathlib import Path

from meg.requests import (
    EditRequest,
    NegativePair,
    PseudoPair,
    load_edit_file,
    load_negative_pairs,
    load_pseudo_pairs,
    load_queries,
)

PSEUDO_PAIRS_FILE = "pseudo_pairs.jsonl"
CALIBRATION_PAIRS_FILE = "calibration_pairs.jsonl"
UNRELATED_FILE = "unrelated.jsonl"
SAME_SUBJECT_FILE = "same_subject_questions.jsonl"
DEMO_COUNTERFACT_FILE = "demo_counterfact.jsonl"


def assets_dir() -> Path:
    """The package's asset directory (meg/assets)."""
    return Path(__file__).resolve().parents[1] / "assets"


def shipped_asset(name: str) -> Path | None:
    """The shipped file `name` (a trained stage keyed by its inputs), or None when the package has none."""
    path = assets_dir() / name
    return path if path.is_file() else None


def default_pseudo_pairs() -> list[PseudoPair]:
    """About 3,000 (question, paraphrase) pairs disjoint from the benchmark edit files."""
    return load_pseudo_pairs(assets_dir() / PSEUDO_PAIRS_FILE)


def default_calibration_pairs() -> list[PseudoPair]:
    """About 3,000 CounterFact-style (question, paraphrase) pairs for calibration only, disjoint from the pseudo
    pairs and the benchmark edit files."""
    return load_pseudo_pairs(assets_dir() / CALIBRATION_PAIRS_FILE)


def default_negative_pairs() -> list[NegativePair]:
    """About 3,000 same-subject, other-relation question pairs disjoint from the benchmark edit files."""
    return load_negative_pairs(assets_dir() / SAME_SUBJECT_FILE)


def default_unrelated() -> list[str]:
    """About 2,000 queries unrelated to any benchmark edit."""
    return load_queries(assets_dir() / UNRELATED_FILE)


def held_out_negatives(requests: list[EditRequest]) -> list[NegativePair] | None:
    """The shipped verifier negatives minus every pair holding a prompt, paraphrase or locality prompt of
    `requests`; None when no pair does (the shipped verifier then applies as it is).

    The negatives come from KnowEdit's wiki_counterfact and wiki_recent train files, and every record of those
    files with a same-subject locality prompt is among them (1,254 of 1,428 and 403 of 570): a benchmark on those
    files would score the default verifier on its own training pairs. Benchmarks fit the router with these
    negatives instead (a verifier trained without the benchmark's pairs, ~15 CPU minutes once, cached by its
    inputs); CounterFact and KnowEdit ZsRE share no pair with them."""
    texts = {t.strip().lower() for r in requests for t in (r.prompt, *r.paraphrases, *r.unrelated)}
    shipped = default_negative_pairs()
    kept = [n for n in shipped if n.question.strip().lower() not in texts and n.other.strip().lower() not in texts]
    return kept if len(kept) < len(shipped) else None


def demo_requests() -> list[EditRequest]:
    """300 CounterFact edit requests (with paraphrases, unrelated prompts and true objects) for demos."""
    return load_edit_file(assets_dir() / DEMO_COUNTERFACT_FILE)


def demo_dataset():
    """The shipped CounterFact sample as a `meg.data.Dataset` (counterfact template)."""
    from meg.data import Dataset
    from meg.data.templates import TEMPLATES

    path = assets_dir() / DEMO_COUNTERFACT_FILE
    return Dataset("counterfact-sample", "counterfact", demo_requests(), TEMPLATES["counterfact"], path)


__all__ = [
    "CALIBRATION_PAIRS_FILE",
    "DEMO_COUNTERFACT_FILE",
    "PSEUDO_PAIRS_FILE",
    "SAME_SUBJECT_FILE",
    "UNRELATED_FILE",
    "assets_dir",
    "default_calibration_pairs",
    "default_negative_pairs",
    "default_pseudo_pairs",
    "default_unrelated",
    "demo_dataset",
    "demo_requests",
    "held_out_negatives",
    "shipped_asset",
]
