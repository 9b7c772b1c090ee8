"""The reference model's training corpus: the TRUE facts of the shared data sets, never counterfactual targets.

Each fact becomes one line `template.format(prompt) + " " + answer + "."` (meg.data.facts.Fact.line): CounterFact
prompts, paraphrases and locality prompts with their true objects (all 21,919 cases), ZsRE questions and
paraphrases with their true answers in the ZsRE question-answer template, MEND's unrelated NQ pairs (same
template) and KnowEdit-ZsRE's locality facts (plain sentence prefixes).
"""

from __future__ import annotations

import random
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meg.data.counterfact import parse_counterfact, true_facts_counterfact
from meg.data.facts import Fact
from meg.data.zsre import parse_zsre, true_facts_zsre
from meg.errors import InputError

COUNTERFACT_FILES = (
    "counterfact/counterfact-edit.json",
    "counterfact/counterfact-train.json",
    "counterfact/counterfact-val.json",
)
ZSRE_FILES = ("zsre/zsre_mend_train-1k.json", "zsre/knowedit_zsre_test_all.json")

# Categories of trained facts whose greedy accuracy the model card reports.
EVAL_CATEGORIES = ("counterfact_prompt", "counterfact_paraphrase", "zsre_question")


def _require(data_dir: Path, names: Iterable[str]) -> list[Path]:
    paths = [data_dir / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"training data not found: {', '.join(missing)} (pass --data DIR with the shared data)")
    return paths


def corpus_facts(data_dir: str | Path) -> list[Fact]:
    """All true facts, in a fixed order: CounterFact edit/train/val, then ZsRE MEND and KnowEdit."""
    data_dir = Path(data_dir)
    facts: list[Fact] = []
    for path in _require(data_dir, COUNTERFACT_FILES):
        facts += true_facts_counterfact(path)
    for path in _require(data_dir, ZSRE_FILES):
        facts += true_facts_zsre(path)
    return facts


def unique_lines(facts: Iterable[Fact]) -> list[str]:
    """Training lines, de-duplicated, in first-appearance order (deterministic)."""
    return list(dict.fromkeys(fact.line() for fact in facts))


def build_corpus(data_dir: str | Path) -> list[str]:
    """The de-duplicated training lines built from `data_dir` (the shared data layout)."""
    return unique_lines(corpus_facts(data_dir))


@dataclass(frozen=True)
class EvalFacts:
    """Trained facts to score by greedy decoding, per category (see EVAL_CATEGORIES)."""

    by_category: dict[str, list[Fact]]

    def total(self) -> int:
        return sum(len(v) for v in self.by_category.values())


def _categorised(data_dir: Path) -> dict[str, list[Fact]]:
    """CounterFact prompts and first paraphrases, ZsRE questions, each with its true answer."""
    out: dict[str, list[Fact]] = defaultdict(list)
    for path in _require(data_dir, COUNTERFACT_FILES):
        for request, _ in parse_counterfact(path):
            out["counterfact_prompt"].append(Fact(request.prompt, request.ground_truth, "counterfact"))
            out["counterfact_paraphrase"] += [Fact(p, request.ground_truth, "counterfact") for p in request.paraphrases[:1]]
    for path in _require(data_dir, ZSRE_FILES):
        with warnings.catch_warnings():  # MEND has 2 records with an empty NEW answer; their questions are fine
            warnings.simplefilter("ignore")
            parsed = parse_zsre(path, skip_invalid=True)
        out["zsre_question"] += [Fact(request.prompt, request.ground_truth, "zsre") for request, _ in parsed]
    return out


def _unambiguous(facts: list[Fact], all_facts: list[Fact]) -> list[Fact]:
    """Facts whose templated prompt has ONE answer in the corpus (e.g. "X is a twin city of" has several)."""
    answers: dict[str, set[str]] = defaultdict(set)
    for fact in all_facts:
        answers[fact.text()].add(fact.answer.strip().lower())
    return [f for f in dict.fromkeys(facts) if len(answers[f.text()]) == 1]


def evaluation_facts(data_dir: str | Path, per_category: int, seed: int) -> EvalFacts:
    """A fixed seeded sample of `per_category` trained, unambiguous facts of each category."""
    data_dir = Path(data_dir)
    all_facts = corpus_facts(data_dir)
    rng = random.Random(seed)
    categorised = _categorised(data_dir)
    sample = {}
    for category in EVAL_CATEGORIES:
        pool = _unambiguous(categorised[category], all_facts)
        sample[category] = rng.sample(pool, min(per_category, len(pool)))
    return EvalFacts(sample)


__all__ = [
    "COUNTERFACT_FILES",
    "EVAL_CATEGORIES",
    "ZSRE_FILES",
    "EvalFacts",
    "build_corpus",
    "corpus_facts",
    "evaluation_facts",
    "unique_lines",
]
