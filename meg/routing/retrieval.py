"""Subject-verified retrieval: route a query to its nearest edit only when the evidence says it is that edit.

Measured on CounterFact (docs/LOG.md, docs/results/routing-*.md): a paraphrase's nearest edit prompt is its own
edit ~98% of the time, but no similarity threshold separates paraphrases from neighbourhood prompts, which share
the relation ("BBC Radio, by" vs the edit "BBC One, by"). What does separate them is the subject: every
CounterFact paraphrase names its subject; a neighbourhood prompt names another one. So:

1. subject path: if the query names the subject of one or more edits (whole words, case-insensitive), compare
   the sentence that names it (CounterFact paraphrases carry unrelated leading text) with those edits' prompts
   and take the most similar; route when cosine >= `subject_threshold`. The threshold is what rejects queries
   about the same subject but another fact.
2. free path: edits given WITHOUT a subject are matched by cosine over the whole query and routed when cosine
   >= `free_threshold`. With `subject_required=False`, edits with a subject may be reached this way too.
Calibration never sees test data: `subject_threshold` keeps `paraphrase_recall` of held-out pseudo pairs
(question vs its paraphrase, disjoint from the edits); `free_threshold` routes at most `target_unrelated_rate`
of the unrelated calibration queries overall and, with `free_floor`, never sits below the cosine that keeps
`paraphrase_recall` of the held-out pairs: with only a handful of free edits (ZsRE edits whose prompt misspells
their subject) the unrelated queries alone put it at 0.33, low enough to route 4% of the questions about those
edits' subjects while adding 0.2% of paraphrases (docs/LOG.md, 2026-11-30). With `matched_calibration` each
held-out pair counts as often as it is the nearest pair to an edit, so the threshold fits the edits' style of
question: the shipped pairs are 2/3 CounterFact, whose paraphrases sit further from their prompts than ZsRE's,
and a threshold calibrated on all of them let ZsRE same-subject questions through (docs/LOG.md, 2026-11-30).
With `match_form` an edit asked as a question is matched among the question pairs only (and a prompt to complete
among the others): with the 3,000 CounterFact calibration pairs added, 164 of KnowEdit ZsRE's 1,304 questions
found their nearest pair among CounterFact prompts of the same relation ("In what city did Ralph Habib die?" ->
"Haakon Lie died in the city of"), whose paraphrases sit further away, and 2.7% of the clean locality prompts
were routed instead of 1.0%.
The subject path scores (1 - `masked_weight`) x cosine(query, edit) + `masked_weight` x cosine of both with the
subject replaced by "it": the tuned encoder still weighs the shared subject heavily, and the masked texts
compare only what is asked about it (a question on the same subject and another relation scores lower).
With `verifier` set (the default), the most similar candidate is still chosen by that score, but whether to
route is decided by a cross-encoder (verifier.py) reading the candidate's prompt and the query together, blended
with the cosine (`verifier_weight`: each score as its rank among the held-out pairs); the threshold is
calibrated on the held-out pairs the same way.
With `relation_veto` (the default), a candidate is dropped before any scoring when the query, its subject
masked, is a template that the verifier's own negatives pair with the candidate edit's template as another
relation of one subject ("{} is followed by" vs "{} follows", "The name of the father of {} is" vs "... mother
..."): with the verifier's veto, 81 of KnowEdit WikiData counterfact's 1,254 locality prompts that repeat no
edit prompt were still routed to their subject's edit, 73 of them "follows" against "is followed by", a pair the
cross-encoder never learned to tell apart (docs/LOG.md, 2026-12-02, session 19). Only exact template pairs seen
as negatives count, so a reworded paraphrase is never dropped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from meg import files
from meg.errors import InputError, PackError
from meg.pseudo_edits import template
from meg.requests import NegativePair
from meg.routing.base import Encode, Routes, RoutingData, embed_known
from meg.routing.subjects import SubjectIndex, focus, infer_subject, without_subject
from meg.routing.verifier import SubjectVerifier, VerifierConfig, trained_verifier
from meg.settings import Rules, Settings, setting


@dataclass(frozen=True)
class RetrievalConfig(Settings):
    """Settings of the subject-verified retrieval router (thresholds null = calibrate). Every switch below is a
    measured departure or its ablation (docs/results/routing-*.md): the defaults are the best measured."""

    target_unrelated_rate: float = setting(0.02, "the free path routes at most this share of unrelated queries")
    paraphrase_recall: float = setting(0.98, "share of held-out paraphrase pairs the subject path must accept")
    subject_threshold: float | None = setting(None, "fixed subject-path threshold; null = calibrate")
    free_threshold: float | None = setting(None, "fixed free-path cosine threshold; null = calibrate")
    use_subjects: bool = setting(True, "false: ignore subjects, route by cosine only (the nearest-edit ablation)")
    subject_required: bool = setting(True, "an edit with a subject is reachable only by a query that names it")
    focus: bool = setting(True, "compare only the sentence naming the subject")
    approximate_subjects: float | None = setting(0.8, "trigram coverage naming a subject approximately; null = exact")
    infer_subjects: bool = setting(True, "an edit given without a subject gets one guessed from its prompt")
    matched_calibration: bool = setting(True, "weight held-out pairs by how many edits they are nearest to")
    match_form: bool = setting(True, "... among the pairs of the edit's form: question ('?') or prompt to complete")
    masked_weight: float = setting(0.2, "share of the subject-masked cosine in the subject score; 0 = plain cosine")
    verifier: VerifierConfig | None = setting(factory=VerifierConfig, help="the cross-encoder scoring the subject "
                                              "path with the cosine (see verifier_weight); null = cosine only")
    free_floor: bool = setting(True, "the free threshold is at least the held-out pairs' paraphrase_recall cosine")
    verifier_weight: float = setting(0.7, "the verifier's share of the subject score, as ranks among the held-out "
                                          "pairs; 1 = the verifier alone decides")
    verifier_veto: float | None = setting(0.01, "a candidate whose verifier probability is below the held-out pairs' "
                                                "quantile at this share is never routed, whatever its cosine; null = "
                                                "off (the blend alone decides)")
    relation_veto: bool = setting(True, "never route a query whose subject-masked template the verifier's negatives "
                                        "pair with the candidate edit's as another relation of one subject")

    def rules(self) -> Rules:
        def cosine(v: float | None) -> bool:
            return v is None or -1 <= v <= 1

        return {"target_unrelated_rate": (0 < self.target_unrelated_rate < 1, "in (0, 1)"),
                "paraphrase_recall": (0 < self.paraphrase_recall < 1, "in (0, 1)"),
                "subject_threshold": (cosine(self.subject_threshold), "a cosine in [-1, 1] or null"),
                "free_threshold": (cosine(self.free_threshold), "a cosine in [-1, 1] or null"),
                "approximate_subjects": (self.approximate_subjects is None or 0 < self.approximate_subjects <= 1,
                                         "in (0, 1] or null"),
                "masked_weight": (0 <= self.masked_weight < 1, "in [0, 1)"),
                "verifier_weight": (0 < self.verifier_weight <= 1, "in (0, 1]"),
                "verifier_veto": (self.verifier_veto is None or 0 < self.verifier_veto < 1, "in (0, 1) or null")}


def conformal_threshold(scores: torch.Tensor, rate: float) -> float:
    """Smallest threshold t such that a new exchangeable score passes (score >= t) with probability <= rate:
    the k-th largest score with k = floor(rate * (n + 1)), nudged up so that score itself fails."""
    # Kept in the scores' dtype: a threshold nudged in float64 would round back onto the score in float32.
    s = scores.flatten().sort(descending=True).values
    k = math.floor(rate * (len(s) + 1) + 1e-9)
    if k < 1:
        return math.inf
    if not math.isfinite(s[k - 1]):  # fewer than k queries can pass at all (-inf = never): let them all through
        finite = s[torch.isfinite(s)]
        return float(finite.min()) if len(finite) else math.inf
    return float(torch.nextafter(s[k - 1], torch.tensor(math.inf, dtype=s.dtype)))


def other_relations(negatives: Sequence[NegativePair]) -> set[frozenset[str]]:
    """Template pairs ("{} follows", "{} is followed by") that some negative asks of one subject: two relations."""
    pairs = ((template(n.question, n.subject), template(n.other, n.subject)) for n in negatives)
    return {frozenset(pair) for pair in pairs if None not in pair and pair[0] != pair[1]}


def _is_question(text: str) -> bool:
    """A question ("Who founded X?") rather than a prompt to complete ("X was founded by")."""
    return text.rstrip().endswith("?")


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The smallest value v with (weight of values <= v) >= q * total weight (equal weights: the lower q-quantile)."""
    order = values.argsort()
    cumulative = weights[order].cumsum(0) / weights.sum()  # (P,)
    k = int(torch.searchsorted(cumulative, torch.tensor(q, dtype=cumulative.dtype) - 1e-12))
    return float(values[order][min(k, len(values) - 1)])


def _reference(name: str, scores: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sorted scores and their weighted CDF, the lookup table of `RetrievalRouter._rank`."""
    order = scores.argsort()
    return {name: scores[order].contiguous(), f"{name}_cdf": (weights[order].cumsum(0) / weights.sum()).contiguous()}


# Matched calibration weighs each held-out pair by the edits it is nearest to. With fewer edits than this, each
# edit counts its k nearest pairs instead (k * edits >= this): with one edit the threshold was the quantile of ONE
# pair's score, i.e. that pair's own score, and the README's one-edit example routed only exact repeats. With
# this many edits or more nothing changes (the committed routing rows have >= 1,024). 50: at paraphrase_recall 0.98
# the threshold is then the lowest of 50 pairs (about their 2% quantile) rather than one pair's own score, and a
# handful of edits still count only pairs of their own style (tests/test_routing.py).
MIN_MATCHED_PAIRS = 50

MASKED_EDITS = "masked_edits"  # router state: (N, C) embeddings of the edit prompts with their subject masked
PAIRS = "pairs."  # router state: per held-out pair, what calibration computed that does not depend on the edits


def pair_key(pair: Any) -> bytes:
    """8 bytes naming a held-out pair by its texts: the key of its cached calibration scores."""
    text = "\0".join((pair.question, pair.paraphrase, pair.subject or ""))
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@dataclass
class PairScore:
    """A held-out pair's question embedding (C,), and once the subject calibration has weighed it, its cosine
    score (blended with the masked one) and the verifier's probability (NaN until then). None of these depends on
    the edits, only on the pair, the encoder and the verifier, which a lifelong refit keeps: a refit scores only
    the pairs it has not scored before (docs/LOG.md, 2026-12-02: 3,300 pairs cost 60 of a 70 s refit)."""

    question: torch.Tensor
    cosine: float = math.nan
    verdict: float = math.nan

_CLOSED = 1.0 + 1e-6  # above any cosine: a path that accepts nothing (finite, so JSON can store it)


class RetrievalRouter:
    """Nearest edit, verified by subject and calibrated similarity (see module docstring)."""

    name: ClassVar[str] = "retrieval"
    state_file: ClassVar[str] = files.PACK_ROUTER
    score_name: ClassVar[str] = "similarity"

    def __init__(self, config: RetrievalConfig, edit_embeddings: torch.Tensor, subjects: Sequence[str | None],
                 prompts: Sequence[str], thresholds: dict[str, float], calibration: dict[str, Any] | None = None,
                 encode: Encode | None = None, verifier: SubjectVerifier | None = None):
        self.config, self.edit_embeddings = config, edit_embeddings  # (N, C)
        self.verifier = verifier
        self.prompts, self.encode = list(prompts), encode
        infer = config.use_subjects and config.infer_subjects
        given = list(subjects) if config.use_subjects else [None] * len(prompts)
        self.subjects = [s or (infer_subject(p) if infer else None) for s, p in zip(given, prompts)]
        self.index = SubjectIndex(self.subjects, self.prompts, config.approximate_subjects)
        free = torch.ones(len(prompts), dtype=torch.bool)
        if config.subject_required:
            free[self.index.indexed] = False
        self.free_edits = free.nonzero().flatten()  # edits the free path may reach
        self.thresholds = thresholds
        self.calibration = calibration or {}
        self._masked_edits: torch.Tensor | None = None  # (N, C) edit prompts without their subject, on first use
        self.other_relations: set[frozenset[str]] = set()  # `relation_veto`'s template pairs (see other_relations)
        self._templates = [template(p, s) if s else None for p, s in zip(self.prompts, self.subjects)]
        self.reference: dict[str, torch.Tensor] = {}  # held-out pair scores for `verifier_weight` < 1
        self._pair_questions: torch.Tensor | None = None  # (P, C) while fitting: both calibrations use them
        self.pair_scores: dict[bytes, PairScore] = {}  # by `pair_key`: kept with the pack for the next refit

    def _masked_weight(self) -> float:
        return self.config.masked_weight if self.encode is not None else 0.0  # masking needs the encoder

    def _masked_texts(self) -> list[str]:
        return [without_subject(p, s) if s else p for p, s in zip(self.prompts, self.subjects)]

    def _masked_edit_embeddings(self, known: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(N, C) embeddings of the edit prompts without their subject, encoded on first use; `known` (masked text
        -> embedding, from the router this one refits) spares re-encoding the edits a lifelong change keeps."""
        if self._masked_edits is None:
            masked = embed_known(self._masked_texts(), known or {}, self.encode)
            self._masked_edits = masked.to(self.edit_embeddings.dtype)
        return self._masked_edits

    def _known_masked(self) -> dict[str, torch.Tensor]:
        """Masked text -> embedding of this router's edits, when they were encoded (or loaded with the pack)."""
        return dict(zip(self._masked_texts(), self._masked_edits)) if self._masked_edits is not None else {}

    # --- routing ---

    def _pairs(self, queries: Sequence[str],
               candidates: list[list[int]]) -> tuple[list[tuple[int, int]], list[str], list[str]]:
        """(query row, candidate edit) pairs, each pair's focused query text and (with `masked_weight`) that text
        with the candidate's subject masked: every text the subject path compares."""
        pairs = [(r, c) for r, cands in enumerate(candidates) for c in cands]
        needed = self.config.focus or self.other_relations
        focused = [focus(queries[r], self.subjects[c]) for r, c in pairs] if needed else []
        if self.other_relations:  # `relation_veto`: candidates the negatives name as another relation are dropped
            kept = [k for k, (t, (_, c)) in enumerate(zip(focused, pairs)) if not self._other_relation(t, c)]
            pairs, focused = [pairs[k] for k in kept], [focused[k] for k in kept]
        texts = focused if self.config.focus else [queries[r] for r, _ in pairs]
        masked = ([without_subject(t, self.subjects[c]) for t, (_, c) in zip(texts, pairs)]
                  if self._masked_weight() > 0 else [])
        return pairs, texts, masked

    def _other_relation(self, text: str, edit: int) -> bool:
        """Whether `text` (a focused query) asks, by the negatives' templates, another relation than edit `edit`."""
        if self._templates[edit] is None:
            return False
        asked = template(text, self.subjects[edit])
        return asked is not None and frozenset((asked, self._templates[edit])) in self.other_relations

    def _embed_into(self, table: dict[str, torch.Tensor], texts: Sequence[str], encode: Encode | None = None) -> None:
        """Add to `table` the embeddings of the `texts` it lacks, encoded together in one encoder pass."""
        encode = encode or self.encode
        missing = sorted({t for t in texts if t not in table})
        if missing and encode is not None:
            table.update(zip(missing, encode(missing).to(self.edit_embeddings.dtype)))

    def _subject_path(self, queries: Sequence[str], table: dict[str, torch.Tensor], candidates: list[list[int]],
                      threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query: best similarity among edits whose subject it names (-inf if none), and that edit.

        Each candidate is compared with the sentence naming ITS subject (a CounterFact paraphrase's leading
        noise may name another edited subject), so one query may need several focused texts. `table` maps texts
        to embeddings; the texts it lacks are encoded in one pass. With `threshold` (routing, not calibration)
        the verifier reads only the rows whose route its verdict can change (`_undecided`).
        """
        best = torch.full((len(queries),), -math.inf)
        edit = torch.full((len(queries),), -1, dtype=torch.long)
        pairs, texts, masked = self._pairs(queries, candidates)
        if not pairs:
            return best, edit
        self._embed_into(table, texts + masked)
        rows = torch.tensor([r for r, _ in pairs])
        edits = torch.tensor([c for _, c in pairs])
        sims = self._cosine(queries, texts, masked, pairs, edits, table)  # (P,)
        chosen: dict[int, str] = {}
        for p in sims.argsort().tolist():  # ascending: each row ends with its most similar candidate
            best[rows[p]], edit[rows[p]], chosen[int(rows[p])] = sims[p], edits[p], texts[p]
        if self.verifier is not None:  # the nearest candidate stands; the verifier decides whether to route
            named = sorted(chosen) if threshold is None else self._undecided(sorted(chosen), best, threshold)
            if not named:
                return best, edit
            prompts = [self.prompts[int(edit[r])] for r in named]
            verdict = self.verifier.score(prompts, [chosen[r] for r in named])
            # A repeat of the edit prompt is that edit: the verifier never saw identical pairs in training.
            repeat = torch.tensor([_same(p, chosen[r]) for p, r in zip(prompts, named)])
            verdict = torch.where(repeat, torch.ones_like(verdict), verdict)
            at = torch.tensor(named)
            best[at] = self._vetoed(self._blend(best[at], verdict), verdict).to(best.dtype)
        return best, edit

    def _vetoed(self, scores: torch.Tensor, verdict: torch.Tensor) -> torch.Tensor:
        """`scores` with -inf where the verifier's probability is under the calibrated veto (`verifier_veto`)."""
        veto = self.thresholds.get("verifier_veto")
        return scores if veto is None else torch.where(verdict < veto, torch.full_like(scores, -math.inf), scores)

    def _undecided(self, rows: list[int], best: torch.Tensor, threshold: float) -> list[int]:
        """The rows (of `best`, their cosines) whose route depends on the verifier: with `verifier_weight` < 1 the
        blended score lies between its values at the lowest and the highest verdict, so a row whose lower bound
        reaches the threshold is routed and one whose upper bound misses it is not, whatever the verifier says.
        Those get the deciding bound as their score (exact decisions; the verifier is the costliest part of
        routing, and at the calibrated point most paraphrases are decided by their cosine alone)."""
        if not rows or self.config.verifier_weight >= 1 or not self.reference:
            return rows
        at = torch.tensor(rows)
        low = self._blend(best[at], torch.zeros(len(rows))).to(best.dtype)
        high = self._blend(best[at], torch.ones(len(rows))).to(best.dtype)
        routed, dropped = low >= threshold, high < threshold
        if self.thresholds.get("verifier_veto") is not None:  # the verifier may still veto a high cosine
            routed = torch.zeros_like(routed)
        best[at[routed]], best[at[dropped]] = low[routed], high[dropped]
        return [r for r, decided in zip(rows, (routed | dropped).tolist()) if not decided]

    def _blend(self, cosine: torch.Tensor, verdict: torch.Tensor) -> torch.Tensor:
        """The verifier's probability, or with `verifier_weight` < 1 the weighted mean of both scores' ranks."""
        w = self.config.verifier_weight
        if w >= 1 or not self.reference:
            return verdict
        return w * self._rank("verifier", verdict) + (1 - w) * self._rank("cosine", cosine)

    def _rank(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Weighted share of the held-out pairs scoring <= each value (their empirical CDF)."""
        ref, cdf = self.reference[name], self.reference[f"{name}_cdf"]  # (P,) ascending, (P,)
        below = torch.searchsorted(ref, values.to(ref.dtype).contiguous(), right=True)
        return torch.where(below > 0, cdf[(below - 1).clamp_min(0)], torch.zeros_like(cdf[0]))

    def _cosine(self, queries: Sequence[str], texts: list[str], masked: list[str], pairs: list[tuple[int, int]],
                edits: torch.Tensor, table: dict[str, torch.Tensor]) -> torch.Tensor:
        """(P,) cosine of each focused query text with its candidate edit prompt (blended with the masked one).
        Without an encoder a focused text falls back to its whole query's embedding."""
        vectors = torch.stack([table.get(t, table.get(queries[r])) for t, (r, _) in zip(texts, pairs)])  # (P, C)
        sims = (vectors * self.edit_embeddings[edits]).sum(dim=1)  # (P,)
        weight = self._masked_weight()
        if weight > 0:
            masked_vectors = torch.stack([table[t] for t in masked])  # (P, C)
            masked_sims = (masked_vectors * self._masked_edit_embeddings()[edits]).sum(dim=1)  # (P,)
            sims = (1 - weight) * sims + weight * masked_sims
        return sims

    def scores(self, queries: Sequence[str], embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both paths' best similarity and edit per query (thresholds are applied by `decide`)."""
        return self._scores(queries, self._table(queries, embeddings), self.index.named_in(queries))

    def _table(self, queries: Sequence[str], embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(queries, embeddings.to(self.edit_embeddings.dtype)))

    def _scores(self, queries: Sequence[str], table: dict[str, torch.Tensor], candidates: list[list[int]],
                threshold: float | None = None) -> dict[str, torch.Tensor]:
        subject_sim, subject_edit = self._subject_path(queries, table, candidates, threshold)
        free_sim = torch.full((len(queries),), -math.inf)
        free_edit = torch.full((len(queries),), -1, dtype=torch.long)
        if len(self.free_edits):
            embeddings = torch.stack([table[q] for q in queries])  # (B, C)
            sims = embeddings @ self.edit_embeddings[self.free_edits].T  # (B, F)
            free_sim, best = sims.max(dim=1)
            free_edit = self.free_edits[best]
        return {"subject_sim": subject_sim, "subject_edit": subject_edit, "free_sim": free_sim, "free_edit": free_edit}

    @staticmethod
    def decide(scores: dict[str, torch.Tensor], subject_threshold: float, free_threshold: float) -> Routes:
        by_subject = scores["subject_sim"] >= subject_threshold
        routed = by_subject | (scores["free_sim"] >= free_threshold)
        edit = torch.where(by_subject, scores["subject_edit"], scores["free_edit"])
        score = torch.where(by_subject, scores["subject_sim"], scores["free_sim"])
        return Routes(routed, edit, score.nan_to_num(neginf=-1.0))

    def route(self, queries: Sequence[str], embeddings: torch.Tensor) -> Routes:
        scores = self._scores(queries, self._table(queries, embeddings), self.index.named_in(queries),
                              self.thresholds["subject"])
        return self.decide(scores, self.thresholds["subject"], self.thresholds["free"])

    def route_texts(self, queries: Sequence[str], encode: Encode,
                    whole: bool = False) -> tuple[Routes, dict[str, torch.Tensor]]:
        """Route raw queries encoding only what routing needs, in one encoder pass: the focused and masked texts
        of queries that name an edited subject, and whole queries only for the free path (when some edit is
        reachable by it) or when `whole`. A query that names no edited subject, with no free edits, costs a
        subject-index lookup and nothing else. -> (routes, the embeddings computed, by text)."""
        candidates = self.index.named_in(queries)
        table: dict[str, torch.Tensor] = {}
        needed = list(queries) if whole or len(self.free_edits) else []
        _, texts, masked = self._pairs(queries, candidates)
        self._embed_into(table, needed + texts + masked, encode)
        scores = self._scores(queries, table, candidates, self.thresholds["subject"])
        return self.decide(scores, self.thresholds["subject"], self.thresholds["free"]), table

    def curve(self, queries: Sequence[str], embeddings: torch.Tensor) -> list[tuple[float, Routes]]:
        """Routes with both thresholds shifted by an offset in [-0.5, 0.5] (0 = the calibrated point)."""
        scores = self.scores(queries, embeddings)
        offsets = torch.linspace(-0.5, 0.5, 41).tolist()
        return [(d, self.decide(scores, self.thresholds["subject"] + d, self.thresholds["free"] + d)) for d in offsets]

    # --- fitting ---

    @classmethod
    def fit(cls, data: RoutingData, config: RetrievalConfig, progress: bool = True) -> RetrievalRouter:
        from meg.data.defaults import default_negative_pairs

        verifier, verifier_log = None, None
        negatives = default_negative_pairs() if data.negative_pairs is None else data.negative_pairs
        if config.verifier is not None:
            verifier, verifier_log = trained_verifier(config.verifier, data.training_pairs, negatives, data.work,
                                                      progress)
        relations = other_relations(negatives) if config.relation_veto else set()
        return cls._calibrated(data, config, verifier, verifier_log, relations=relations)

    def refit(self, data: RoutingData, progress: bool = True) -> RetrievalRouter:
        """This router's settings and verifier on another edit set (a lifelong add or remove): only the
        calibration is re-run, since the thresholds weigh the held-out pairs by the edits they are nearest to."""
        return self._calibrated(data, self.config, self.verifier, self.calibration.get("verifier_training"),
                                self._known_masked(), self.pair_scores, self.other_relations)

    @classmethod
    def _calibrated(cls, data: RoutingData, config: RetrievalConfig, verifier: SubjectVerifier | None,
                    verifier_log: dict | None, known_masked: dict[str, torch.Tensor] | None = None,
                    known_pairs: dict[bytes, PairScore] | None = None,
                    relations: set[frozenset[str]] = frozenset()) -> RetrievalRouter:
        router = cls(config, data.edit_embeddings, data.subjects, data.edit_queries,
                     {"subject": _CLOSED, "free": _CLOSED}, encode=data.encode, verifier=verifier)
        router.other_relations = set(relations)
        if known_masked and router._masked_weight() > 0:
            router._masked_edit_embeddings(known_masked)
        router.pair_scores = dict(known_pairs or {})
        try:
            router.thresholds["subject"], pairs, matched = router._calibrate_subject(data)
            router.thresholds["free"], achieved, floor = router._calibrate_free(data)
        finally:
            router._pair_questions = None
        current = {pair_key(p) for p in data.pseudo_pairs}  # the pairs of another edit set are not kept
        router.pair_scores = {k: v for k, v in router.pair_scores.items() if k in current}
        router.calibration = {"paraphrase_pairs": pairs, "pairs_nearest_to_edits": matched,
                              "unrelated_queries": len(data.unrelated_queries), "free_floor": floor,
                              "achieved_unrelated_rate": achieved, "subject_edits": len(router.index),
                              "free_edits": len(router.free_edits)}
        if verifier_log is not None:
            router.calibration["verifier_training"] = verifier_log
        return router

    def _calibrate_subject(self, data: RoutingData) -> tuple[float, int, int]:
        """(threshold keeping `paraphrase_recall` of the held-out pairs naming their subject, pairs, pairs that
        are some edit's nearest)."""
        if self.config.subject_threshold is not None:
            return self.config.subject_threshold, 0, 0
        rows = [i for i, p in enumerate(data.pseudo_pairs) if p.subject and p.subject.lower() in p.question.lower()
                and p.subject.lower() in p.paraphrase.lower()]
        pairs, total = [data.pseudo_pairs[i] for i in rows], len(rows)
        if len(pairs) < 20 or self.encode is None:
            raise InputError(f"retrieval router: calibrating the subject threshold needs >= 20 held-out pseudo pairs "
                             f"with a subject, got {len(pairs)}; give pairs with subjects or a fixed subject_threshold")
        questions = self._questions(data)[rows]  # (P, C)
        edits = torch.as_tensor(self.index.indexed) if len(self.index.indexed) else torch.arange(len(self.prompts))
        weights = self._pair_weights(edits, questions, [p.question for p in pairs])
        used = weights > 0  # zero-weight pairs do not move the quantile: score only the others
        pairs, questions, weights = [p for p, u in zip(pairs, used.tolist()) if u], questions[used], weights[used]
        sims, verdict = self._pair_scores(pairs, questions)
        if self.verifier is not None:  # the subject threshold applies to the verifier's probability (or blend)
            if self.config.verifier_weight < 1:
                self.reference = {**_reference("cosine", sims, weights), **_reference("verifier", verdict, weights)}
            sims = self._blend(sims, verdict)
        share = 1 - self.config.paraphrase_recall  # of the pairs the threshold may miss
        if self.verifier is not None and self.config.verifier_veto is not None:  # vetoed pairs are missed already
            self.thresholds["verifier_veto"] = veto = weighted_quantile(verdict, weights, self.config.verifier_veto)
            kept = verdict >= veto
            missed = float(weights[~kept].sum() / weights.sum())
            share = max(0.0, (share - missed) / max(1 - missed, 1e-12))
            sims, weights = sims[kept], weights[kept]
        threshold = weighted_quantile(sims, weights, share)
        return threshold, total, len(pairs) if self.config.matched_calibration else 0

    def _pair_scores(self, pairs: Sequence[Any], questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) cosine scores (zeros when the verifier alone decides) and (P,) verifier probabilities (NaN without a
        verifier) of the held-out pairs (their questions' embeddings (P, C)), scoring only those not scored before."""
        known = [self.pair_scores[pair_key(p)] for p in pairs]
        todo = [i for i, k in enumerate(known) if math.isnan(k.verdict if self.verifier is not None else k.cosine)]
        if todo:
            sims, verdict = self._score_pairs([pairs[i] for i in todo], questions[todo])
            for i, cosine, probability in zip(todo, sims.tolist(), verdict.tolist()):
                known[i].cosine, known[i].verdict = cosine, probability
        return (torch.tensor([k.cosine for k in known], dtype=torch.float64),
                torch.tensor([k.verdict for k in known], dtype=torch.float64))

    def _score_pairs(self, pairs: Sequence[Any], questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_pair_scores` computed: each question against its focused paraphrase, by cosine (blended with both
        texts' subject-masked cosine) and by the verifier."""
        texts = [focus(p.paraphrase, p.subject) if self.config.focus else p.paraphrase for p in pairs]
        sims = torch.zeros(len(pairs), dtype=torch.float64)  # (P,) cosines, unless the verifier alone decides
        if self.verifier is None or self.config.verifier_weight < 1:
            sims = (self.encode(texts) * questions).sum(dim=1).double()
            weight = self._masked_weight()
            if weight > 0:
                masked_q = self.encode([without_subject(p.question, p.subject) for p in pairs])
                masked_p = self.encode([without_subject(t, p.subject) for t, p in zip(texts, pairs)])
                sims = (1 - weight) * sims + weight * (masked_q * masked_p).sum(dim=1).double()
        verdict = torch.full((len(pairs),), math.nan, dtype=torch.float64)
        if self.verifier is not None:
            verdict = self.verifier.score([p.question for p in pairs], texts).double()  # (P,)
        return sims, verdict

    def _pair_weights(self, edits: torch.Tensor, questions: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(P,) weight of each held-out pair: with `matched_calibration` the number of the edits (ids (E,)) whose
        nearest held-out question (P, C; `texts`) it is (their k nearest with fewer than MIN_MATCHED_PAIRS
        edits), among the questions of the edit's form with `match_form`, else 1."""
        if not self.config.matched_calibration:
            return torch.ones(len(questions), dtype=torch.float64)
        sims = self.edit_embeddings[edits].to(questions.dtype) @ questions.T  # (E, P)
        if self.config.match_form:
            edit_form = torch.tensor([_is_question(self.prompts[i]) for i in edits.tolist()])  # (E,)
            pair_form = torch.tensor([_is_question(t) for t in texts])  # (P,)
            other = edit_form[:, None] != pair_form[None, :]  # (E, P)
            other &= ~other.all(dim=1, keepdim=True)  # an edit whose form no pair has: any pair
            sims = sims.masked_fill(other, -math.inf)
        if len(edits) >= MIN_MATCHED_PAIRS:
            nearest = sims.argmax(dim=1)  # (E,) nearest pair per edit
        else:  # few edits: each one's k nearest pairs, so the quantile is taken over enough pairs
            k = min(math.ceil(MIN_MATCHED_PAIRS / max(len(edits), 1)), sims.shape[1])
            top = sims.topk(k, dim=1)  # (E, k); pairs of the other form (-inf) are not counted
            nearest = top.indices[torch.isfinite(top.values)]
        return torch.bincount(nearest, minlength=len(questions)).double()

    def _questions(self, data: RoutingData) -> torch.Tensor:
        """(P, C) embeddings of every held-out pair's question, encoded once per fit (and by a refit only for the
        pairs the previous fit did not have)."""
        if self._pair_questions is None:
            keys = [pair_key(p) for p in data.pseudo_pairs]
            missing = [i for i, k in enumerate(keys) if k not in self.pair_scores]
            if missing:
                encoded = self.encode([data.pseudo_pairs[i].question for i in missing])
                self.pair_scores.update((keys[i], PairScore(e)) for i, e in zip(missing, encoded))
            self._pair_questions = torch.stack([self.pair_scores[k].question for k in keys]) if keys else None
        return self._pair_questions

    def _pair_floor(self, data: RoutingData) -> float:
        """Whole-query cosine keeping `paraphrase_recall` of the held-out pairs (matched to the free edits)."""
        pairs = list(data.pseudo_pairs)
        if not pairs or self.encode is None:
            return -1.0
        questions = self._questions(data)  # (P, C)
        weights = self._pair_weights(self.free_edits, questions, [p.question for p in pairs])
        used = weights > 0
        paraphrases = self.encode([p.paraphrase for p, u in zip(pairs, used.tolist()) if u])
        sims = (paraphrases * questions[used]).sum(dim=1).double()  # (P',)
        weights = weights[used]
        return weighted_quantile(sims, weights, 1 - self.config.paraphrase_recall)

    def _calibrate_free(self, data: RoutingData) -> tuple[float, float, float | None]:
        """(the free-path threshold that keeps the overall unrelated routing rate <= target, the rate achieved,
        the paraphrase-pair floor applied or None)."""
        queries, emb = data.unrelated_queries, data.unrelated_embeddings
        if self.config.free_threshold is not None or not queries:
            fixed = self.config.free_threshold
            return (fixed if fixed is not None else _CLOSED), float("nan"), None
        scores = self.scores(queries, emb)
        by_subject = scores["subject_sim"] >= self.thresholds["subject"]
        budget = max(self.config.target_unrelated_rate - float(by_subject.double().mean()), 0.0)
        # Queries the subject path already routes are spent budget; only the rest compete for the free path.
        free_sim = torch.where(by_subject, torch.tensor(-math.inf), scores["free_sim"])
        threshold = conformal_threshold(free_sim, budget) if budget > 0 and len(self.free_edits) else math.inf
        floor = None
        if self.config.free_floor and math.isfinite(threshold) and len(self.free_edits):
            floor = self._pair_floor(data)
            threshold = max(threshold, floor)
        threshold = min(max(threshold, -1.0), _CLOSED)  # a cosine; also keeps float32 comparisons exact
        achieved = self.decide(scores, self.thresholds["subject"], threshold).routed.double().mean()
        return threshold, float(achieved), floor

    # --- persistence ---

    def fitted(self) -> dict[str, Any]:
        relations = sorted(sorted(pair) for pair in self.other_relations)
        return {"thresholds": self.thresholds, "calibration": self.calibration,
                **({"other_relations": relations} if relations else {})}

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Edit embeddings, subjects and prompts are in the pack already; only the verifier's trained layers are not.
        # The subject-masked edit prompts' embeddings are stored too: encoding them costs a pass over every edit
        # (3.4 s for 1,024 edits on a CPU thread), which the first routed query would otherwise pay.
        state = {f"verifier.{k}": v for k, v in self.verifier.tuned_state().items()} if self.verifier else {}
        if self._masked_weight() > 0:
            state[MASKED_EDITS] = self._masked_edit_embeddings()
        return {**state, **self._pair_state(), **{f"reference.{k}": v for k, v in self.reference.items()}}

    def _pair_state(self) -> dict[str, torch.Tensor]:
        """`pair_scores` as tensors: keys (P, 8) uint8, questions (P, C), cosine and verdict (P,) float64."""
        if not self.pair_scores:
            return {}
        keys, scores = list(self.pair_scores), list(self.pair_scores.values())
        return {f"{PAIRS}key": torch.tensor([list(k) for k in keys], dtype=torch.uint8),
                f"{PAIRS}question": torch.stack([s.question for s in scores]),
                f"{PAIRS}cosine": torch.tensor([s.cosine for s in scores], dtype=torch.float64),
                f"{PAIRS}verdict": torch.tensor([s.verdict for s in scores], dtype=torch.float64)}

    @staticmethod
    def _pairs_from_state(state: dict[str, torch.Tensor]) -> dict[bytes, PairScore]:
        """`_pair_state` read back ({} from packs saved before 2026-12-02: a refit then scores every pair)."""
        if f"{PAIRS}key" not in state:
            return {}
        parts = [state[f"{PAIRS}{name}"] for name in ("key", "question", "cosine", "verdict")]
        if len({len(part) for part in parts}) != 1:
            raise PackError(f"router state {PAIRS}*: key, question, cosine and verdict differ in length "
                            f"({', '.join(str(len(part)) for part in parts)})")
        keys, questions, cosine, verdict = parts
        return {bytes(k.tolist()): PairScore(q, c, v)
                for k, q, c, v in zip(keys, questions, cosine.tolist(), verdict.tolist())}

    @classmethod
    def from_state(cls, config: RetrievalConfig, fitted: dict[str, Any], state: dict[str, torch.Tensor],
                   edit_embeddings: torch.Tensor, requests: Sequence[Any], encode: Encode | None = None) -> RetrievalRouter:
        verifier = None
        if config.verifier is not None:
            verifier = SubjectVerifier(config.verifier, device=edit_embeddings.device)
            verifier.load_tuned_state({k.removeprefix("verifier."): v for k, v in state.items()
                                       if k.startswith("verifier.")})
        router = cls(config, edit_embeddings, [r.subject for r in requests], [r.prompt for r in requests],
                     dict(fitted["thresholds"]), fitted.get("calibration"), encode, verifier)
        # Packs saved before 2026-12-02 have no relation pairs: no relation veto.
        router.other_relations = {frozenset(pair) for pair in fitted.get("other_relations", [])}
        router.reference = {k.removeprefix("reference."): v for k, v in state.items() if k.startswith("reference.")}
        router.pair_scores = cls._pairs_from_state(state)
        masked = state.get(MASKED_EDITS)  # absent in packs saved before 2026-12-01: encoded on first use
        if masked is not None:
            if tuple(masked.shape) != tuple(edit_embeddings.shape):
                raise PackError(f"router state {MASKED_EDITS!r} has shape {tuple(masked.shape)}, expected "
                                f"{tuple(edit_embeddings.shape)} (one embedding per edit)")
            router._masked_edits = masked.to(edit_embeddings.dtype)
        return router
