"""The corpus of `reference-2`: every TRUE fact in several wordings of its relation and in several contexts.

Why (docs/LOG.md, 2026-12-01): the first reference model saw each fact in ONE template and one context (corpus.py),
and it recalls facts from the relation words or the subject's first token; MEMIT/AlphaEdit, which write edits at
the subject's LAST token, then reach the new target for about half the edits. A model that must answer the same
fact after many wordings, some naming the relation only after the subject and some preceded by unrelated
sentences, cannot key the answer on one template: it has to carry the fact with the subject.

Lines (deterministic for a config; never a counterfactual `target_new`):
- every wording the data sets give, alone, exactly as corpus.py writes it (`template(prompt) + " " + answer
  + "."`): the texts the benches score;
- `extra_wordings` more lines per fact: other templates of the fact's relation with the subject filled in (the
  templates already seen with this very answer first: relations are grouped by heuristics and some groups mix
  close relations), each preceded by 0-2 context sentences: other facts, or general text (the random leading
  sentences CounterFact paraphrases carry, WikiBio sentences). A fact without other templates repeats its own
  wordings in new contexts.

Relations. None of the files names CounterFact's relations, so templates are grouped: a record's prompt template
is linked with its paraphrase's template (after cutting the paraphrase's random leading text,
meg.routing.subjects.focus) and with its locality prompt's template (CounterFact's locality prompts are the same
relation with another subject that has the same true object; their subjects are found by matching the known
prompt templates). Plain union-find over those links merges unrelated relations through a few odd paraphrases
("{} was born in" paraphrases "The mother tongue of {} is" in CounterFact); a link therefore needs
`link_min_count` records and answer distributions with cosine >= `link_min_cosine`. On the shared data this gives
33 CounterFact relations. ZsRE questions and KnowEdit locality prompts are grouped the same way (same subject and
answer in one record), without the answer check (their answers are mostly names). ROME's known_1000 facts join
the relation of their template when CounterFact has it.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meg.data.counterfact import parse_counterfact
from meg.data.knowedit import parse_knowedit
from meg.data.records import read_records
from meg.data.templates import TEMPLATES
from meg.data.zsre import parse_zsre
from meg.errors import InputError
from meg.refmodel.corpus import COUNTERFACT_FILES, ZSRE_FILES, _require, unique_lines
from meg.routing.subjects import focus

KNOWEDIT_FILES = ("knowedit/benchmark_wiki_counterfact_train_cf.json", "knowedit/benchmark_wiki_recent_recent_train.json")
KNOWN_FILE = "rome/known_1000.json"
WIKIBIO_FILES = ("knowedit/benchmark_WikiBio_wikibio-train-all.json", "knowedit/benchmark_WikiBio_wikibio-test-all.json")
SLOT = "{}"  # where a template takes its subject (filled with str.replace: data texts may hold braces)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Corpus2Config:
    """How many wordings and contexts each fact gets, and how relations are grouped (see the module doc)."""

    extra_wordings: int = 3  # lines per fact beyond the data's own wordings
    context_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # relative odds of 0, 1, 2, ... context sentences
    fact_context: float = 0.5  # share of context sentences that are other facts (the rest: general text)
    max_context_words: int = 30  # longer general-text sentences are not used as context
    link_min_count: int = 2  # CounterFact template links seen in fewer records are ignored
    link_min_cosine: float = 0.3  # ... and links between templates whose answers differ this much
    counterfact_subset: int | None = None  # pilot: CounterFact only, the first N records of counterfact-edit.json
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_weights", tuple(float(w) for w in self.context_weights))
        if self.extra_wordings < 0:
            raise InputError(f"Corpus2Config.extra_wordings must be >= 0, got {self.extra_wordings}")
        if not self.context_weights or min(self.context_weights) < 0 or sum(self.context_weights) <= 0:
            raise InputError(f"Corpus2Config.context_weights must be >= 0 with a positive sum, got {self.context_weights}")
        if not 0 <= self.fact_context <= 1:
            raise InputError(f"Corpus2Config.fact_context must be in [0, 1], got {self.fact_context}")
        if self.counterfact_subset is not None and self.counterfact_subset < 1:
            raise InputError(f"Corpus2Config.counterfact_subset must be >= 1 or None, got {self.counterfact_subset}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Statement:
    """One true fact: `subject` (None when no wording names it) has `answer` under `relation`.

    `wordings` are the data's own prompts (raw, shown through TEMPLATES[`kind`]); `templates` are the ones of
    those wordings that name the subject, with the subject replaced by SLOT.
    """

    subject: str | None
    answer: str
    relation: str | None
    kind: str  # "counterfact" (a sentence prefix) or "zsre" (the question-answer template)
    wordings: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def line(self, prompt: str) -> str:
        """The training sentence of `prompt` (as meg.data.facts.Fact.line)."""
        return f"{TEMPLATES[self.kind].format(prompt)} {self.answer}."


class Relations:
    """Union-find over templates, plus each template's answers (to prefer templates seen with an answer)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.answers: dict[str, Counter] = defaultdict(Counter)
        self._cosines: dict[tuple[str, str], float] = {}

    def root(self, t: str) -> str:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]  # path halving
            t = self.parent[t]
        return t

    def union(self, a: str, b: str) -> None:
        x, y = self.root(a), self.root(b)
        self.parent[max(x, y)] = min(x, y)  # the smaller string represents: independent of link order

    def pools(self, min_uses: int) -> dict[str, list[str]]:
        """Relation -> its templates seen at least `min_uses` times (sorted: deterministic)."""
        out: dict[str, list[str]] = defaultdict(list)
        for t in sorted(self.parent):
            if self.answers[t].total() >= min_uses:
                out[self.root(t)].append(t)
        return out

    def cosine(self, a: str, b: str) -> float:
        """Cosine of the two templates' answer counts (0 when either has none); memoised, so call it only once
        the answers are complete (`cosine_now` before)."""
        key = (a, b) if a < b else (b, a)
        if key not in self._cosines:
            self._cosines[key] = self.cosine_now(a, b)
        return self._cosines[key]

    def cosine_now(self, a: str, b: str) -> float:
        x, y = self.answers[a], self.answers[b]
        dot = sum(v * y[k] for k, v in x.items())
        norm = math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))
        return dot / norm if norm else 0.0


def template_of(text: str, subject: str | None) -> str | None:
    """`text` with its first `subject` replaced by SLOT (None when the subject is absent)."""
    if not subject or subject not in text:
        return None
    return text.replace(subject, SLOT, 1)


class TemplateMatcher:
    """Finds which known template a text fills (the most specific one first) and with which subject."""

    def __init__(self, templates: Iterable[str]) -> None:
        ordered = sorted(set(templates), key=lambda t: (-len(t.replace(SLOT, "")), t))
        self._patterns = [(t, re.compile(re.escape(t).replace(re.escape(SLOT), "(.+)"))) for t in ordered if SLOT in t]

    def match(self, text: str) -> tuple[str, str] | tuple[None, None]:
        for t, pattern in self._patterns:
            found = pattern.fullmatch(text)
            if found:
                return t, found.group(1)
        return None, None


# --- CounterFact ---------------------------------------------------------------------------------------------


@dataclass
class _CounterfactCase:
    subject: str
    truth: str
    prompt: str
    paraphrase: str | None
    locality: tuple[str, str, str] | None  # (prompt, its subject, its true answer)
    prefix: str  # the paraphrase's leading general text ("" when none)


def _counterfact_cases(data_dir: Path) -> tuple[list[list[_CounterfactCase]], Relations, Counter]:
    """Every CounterFact record of the three files (per file), its templates' answers, and the template links
    (prompt - focused paraphrase, prompt - locality prompt) with the number of records showing each."""
    parsed = [[request for request, _ in parse_counterfact(path)] for path in _require(data_dir, COUNTERFACT_FILES)]
    requests = [r for file in parsed for r in file]
    matcher = TemplateMatcher(t for r in requests if (t := template_of(r.prompt, r.subject)))
    relations, links = Relations(), Counter()
    per_file = []
    for file in parsed:
        cases = []
        for r in file:
            t1 = template_of(r.prompt, r.subject)
            if t1 is None or r.ground_truth is None:
                continue
            case = _CounterfactCase(r.subject, r.ground_truth, r.prompt, None, None, "")
            relations.answers[t1][r.ground_truth] += 1
            if r.paraphrases:
                case.paraphrase = r.paraphrases[0]
                focused = focus(case.paraphrase, r.subject)
                case.prefix = case.paraphrase[: len(case.paraphrase) - len(focused)].strip()
                t3 = template_of(focused, r.subject)
                if t3 is not None:
                    relations.answers[t3][r.ground_truth] += 1
                    links[tuple(sorted((t1, t3)))] += 1
            if r.unrelated and r.unrelated_answers and r.unrelated_answers[0]:
                t2, subject = matcher.match(r.unrelated[0])
                if t2 is not None:
                    case.locality = (r.unrelated[0], subject, r.unrelated_answers[0])
                    relations.answers[t2][r.unrelated_answers[0]] += 1
                    links[tuple(sorted((t1, t2)))] += 1
            relations.root(t1)
            cases.append(case)
        per_file.append(cases)
    return per_file, relations, links


def counterfact_relations(data_dir: Path, config: Corpus2Config) -> tuple[list[list[_CounterfactCase]], Relations]:
    """The cases and their relations: links kept when seen `link_min_count` times with similar answers."""
    cases, relations, links = _counterfact_cases(data_dir)
    for (a, b), count in sorted(links.items()):
        if a != b and count >= config.link_min_count and relations.cosine_now(a, b) >= config.link_min_cosine:
            relations.union(a, b)
    return cases, relations


def _counterfact_statements(cases: Iterable[_CounterfactCase], relations: Relations) -> list[Statement]:
    """Each case's edit fact (prompt and paraphrase) and locality fact, in their relations. The paraphrase's
    template joins the fact's own only when the link survived (else it stays a wording, not a template)."""
    out = []
    for case in cases:
        t1 = template_of(case.prompt, case.subject)
        main = Statement(case.subject, case.truth, "cf:" + relations.root(t1), "counterfact", [case.prompt], [t1])
        if case.paraphrase is not None:
            main.wordings.append(case.paraphrase)
            t3 = template_of(focus(case.paraphrase, case.subject), case.subject)
            if t3 is not None and relations.root(t3) == relations.root(t1):
                main.templates.append(t3)
        out.append(main)
        if case.locality is not None:
            prompt, subject, answer = case.locality
            t2 = template_of(prompt, subject)
            out.append(Statement(subject, answer, "cf:" + relations.root(t2), "counterfact", [prompt], [t2]))
    return out


# --- ZsRE, KnowEdit, ROME known_1000 -------------------------------------------------------------------------


_FILLER = {"the", "of", "is", "was", "a", "an", "name", "s"}


def relation_words(text: str) -> frozenset[str]:
    """The content words of a prompt ("The taxon rank of X is" and "X taxon rank" -> {taxon, rank}, given the
    subject X removed), to tell a rewording of a relation from another relation with the same answer."""
    return frozenset(w for w in re.findall(r"\w+", text.lower()) if w not in _FILLER)


def _record_statements(request, facts: Sequence, namespace: str, relations: Relations) -> list[Statement]:
    """A record's facts grouped into statements, whose templates are linked: the edit prompt and its paraphrases
    (reworded by design) form one; any other fact (a locality fact) joins one with the same answer only when
    its content words are the same ("The taxon rank of {} is" / "{} taxon rank"), since KnowEdit records give
    one subject the same answer under different relations (place of birth and citizenship: Singapore)."""
    subject, main = request.subject, {request.prompt, *request.paraphrases}
    grouped: dict[tuple, Statement] = {}
    for fact in facts:
        kind = "zsre" if fact.template == "zsre" else "counterfact"
        named = subject if subject and subject in fact.prompt else None
        t = template_of(fact.prompt, named)
        sense = "main" if fact.prompt in main else relation_words(t.replace(SLOT, " ") if t else fact.prompt)
        statement = grouped.setdefault((fact.answer, kind, sense), Statement(None, fact.answer, None, kind))
        statement.wordings.append(fact.prompt)
        if t is not None:
            statement.subject = subject
            statement.templates.append(f"{namespace}|{kind}|{t}")  # namespaced: "{} taxon rank" per source kind
    for statement in grouped.values():
        for t in statement.templates:
            relations.answers[t][statement.answer] += 1
            relations.union(statement.templates[0], t)
    return list(grouped.values())


def _qa_statements(data_dir: Path, relations: Relations) -> list[Statement]:
    """ZsRE (MEND, KnowEdit) and KnowEdit wiki_counterfact / wiki_recent: questions, prompts, locality facts."""
    out: list[Statement] = []
    with warnings.catch_warnings():  # MEND has 2 records with an empty NEW answer; their true facts are fine
        warnings.simplefilter("ignore")
        parsed = [p for path in _require(data_dir, ZSRE_FILES) for p in parse_zsre(path, skip_invalid=True)]
    parsed += [p for path in _require(data_dir, KNOWEDIT_FILES) for p in parse_knowedit(path)]
    for request, facts in parsed:
        out += _record_statements(request, facts, "qa", relations)
    return out


def _known_statements(data_dir: Path, relations: Relations) -> list[Statement]:
    """ROME known_1000: `prompt` -> `attribute`, in the CounterFact relation of its template when there is one."""
    out = []
    for record in read_records(_require(data_dir, [KNOWN_FILE])[0]):
        subject, prompt, answer = record.get("subject"), record.get("prompt"), record.get("attribute")
        if not all(isinstance(x, str) and x.strip() for x in (subject, prompt, answer)):
            continue
        t = template_of(prompt, subject)
        known = t is not None and t in relations.parent
        relation = "cf:" + relations.root(t) if known else f"rome:{record.get('relation_id')}"
        out.append(Statement(subject, answer, relation, "counterfact", [prompt], [t] if known else []))
    return out


def merge_statements(statements: Iterable[Statement]) -> list[Statement]:
    """One statement per (subject, relation, answer, kind), wordings and templates merged in order.

    Statements without a subject are kept apart (no key can tell them to be the same fact)."""
    merged: dict[tuple, Statement] = {}
    out: list[Statement] = []
    for s in statements:
        if s.subject is None or s.relation is None:
            out.append(s)
            continue
        key = (s.subject, s.relation, s.answer, s.kind)
        if key not in merged:
            merged[key] = Statement(s.subject, s.answer, s.relation, s.kind)
            out.append(merged[key])
        target = merged[key]
        target.wordings += [w for w in s.wordings if w not in target.wordings]
        target.templates += [t for t in s.templates if t not in target.templates]
    return out


# --- general text for contexts --------------------------------------------------------------------------------


def _sentences(text: str, max_words: int) -> list[str]:
    """Sentences of `text` with 4..max_words words that end like sentences."""
    out = []
    for sentence in _SENTENCE.split(text.strip()):
        sentence = " ".join(sentence.split())
        if 4 <= len(sentence.split()) <= max_words and sentence[-1] in ".!?":
            out.append(sentence)
    return out


def general_sentences(data_dir: Path, prefixes: Iterable[str], max_words: int) -> list[str]:
    """Context text that states no edited fact: CounterFact paraphrases' leading sentences and WikiBio text
    (its first sentence, "This is a Wikipedia passage about X.", is left out). Deduplicated, in order."""
    out = [s for prefix in prefixes for s in _sentences(prefix, max_words)]
    for path in _require(data_dir, WIKIBIO_FILES):
        for record in read_records(path):
            for text in (record.get("text"), record.get("labels")):
                if isinstance(text, str):
                    out += [s for s in _sentences(text, max_words) if not s.startswith("This is a Wikipedia passage")]
    return list(dict.fromkeys(out))


# --- lines ---------------------------------------------------------------------------------------------------


def _untag(template: str) -> str:
    """A pooled template without its namespace ("qa|zsre|Who is {}?" -> "Who is {}?")."""
    return template.rsplit("|", 1)[-1]


def extra_prompts(statement: Statement, pool: list[str], relations: Relations, n: int, rng: random.Random,
                  min_cosine: float) -> list[str]:  # fmt: skip
    """`n` prompts for `statement` beyond its own wordings: other templates of its relation, those seen with its
    answer first, then those whose answers resemble its own templates' answers, then the rest (random order
    within each tier); cycling through them and its own wordings when there are fewer than `n`."""
    own = set(statement.templates)
    candidates = [t for t in pool if t not in own]
    keys = {}
    for t in candidates:
        seen = statement.answer in relations.answers[t]
        alike = any(relations.cosine(t, o) >= min_cosine for o in statement.templates)
        keys[t] = (0 if seen else 1 if alike else 2, rng.random())
    chosen = [_untag(t).replace(SLOT, statement.subject, 1) for t in sorted(candidates, key=keys.__getitem__)[:n]]
    cycle = chosen + statement.wordings
    return [cycle[i % len(cycle)] for i in range(n)]


def build_lines(statements: list[Statement], pools: dict[str, list[str]], relations: Relations,
                general: list[str], config: Corpus2Config) -> list[str]:  # fmt: skip
    """The training lines (see the module doc), de-duplicated in first-appearance order."""
    rng = random.Random(config.seed)
    plain = [s for s in statements if s.kind == "counterfact"]
    counts = list(range(len(config.context_weights)))
    lines = [s.line(w) for s in statements for w in s.wordings]
    for statement in statements:
        pool = pools.get(statement.relation, []) if statement.subject else []
        for prompt in extra_prompts(statement, pool, relations, config.extra_wordings, rng, config.link_min_cosine):
            context = []
            for _ in range(rng.choices(counts, weights=config.context_weights)[0]):
                if general and (not plain or rng.random() >= config.fact_context):
                    context.append(rng.choice(general))
                else:
                    other = rng.choice(plain)
                    context.append(other.line(rng.choice(other.wordings)))
            lines.append(" ".join([*context, statement.line(prompt)]))
    return list(dict.fromkeys(lines))


@dataclass
class Corpus2:
    """The lines and what they were built from (counts for the model card)."""

    lines: list[str]
    statements: list[Statement]
    relations: int  # relation groups with at least one statement
    general_sentences: int

    def stats(self) -> dict:
        kinds = Counter(s.kind for s in self.statements)
        return {"lines": len(self.lines), "facts": len(self.statements), "facts_by_kind": dict(kinds),
                "relations": self.relations, "general_sentences": self.general_sentences}  # fmt: skip


def build_corpus2(data_dir: str | Path, config: Corpus2Config) -> Corpus2:
    """The reference-2 corpus from the shared data layout at `data_dir` (deterministic for `config`)."""
    data_dir = Path(data_dir)
    cases, relations = counterfact_relations(data_dir, config)
    if config.counterfact_subset is not None:
        chosen = cases[0][: config.counterfact_subset]  # counterfact-edit.json comes first
        statements = _counterfact_statements(chosen, relations)
    else:
        chosen = [c for file in cases for c in file]
        statements = _counterfact_statements(chosen, relations)
        statements += _qa_statements(data_dir, relations)
        statements += _known_statements(data_dir, relations)
    pools = {f"cf:{k}": v for k, v in relations.pools(min_uses=2).items() if not k.startswith("qa|")}
    for statement in statements:  # ZsRE / KnowEdit statements name their relation by the root of their templates
        if statement.relation is None and statement.templates:
            statement.relation = "qa:" + relations.root(statement.templates[0])
    qa_pools = relations.pools(min_uses=1)
    pools.update({f"qa:{k}": v for k, v in qa_pools.items() if k.startswith("qa|")})
    statements = merge_statements(statements)
    general = general_sentences(data_dir, [c.prefix for c in chosen if c.prefix], config.max_context_words)
    lines = build_lines(statements, pools, relations, general, config)
    used = {s.relation for s in statements if s.relation is not None}
    return Corpus2(lines, statements, len(used), len(general))


def single_template_lines(data_dir: str | Path, counterfact_subset: int) -> list[str]:
    """The first reference model's corpus style (corpus.py: each fact in its one data wording, no context)
    for the first `counterfact_subset` records of counterfact-edit.json: the pilot's baseline."""
    path = _require(Path(data_dir), COUNTERFACT_FILES[:1])[0]
    return unique_lines(fact for _, facts in parse_counterfact(path)[:counterfact_subset] for fact in facts)


__all__ = [
    "KNOWEDIT_FILES",
    "KNOWN_FILE",
    "WIKIBIO_FILES",
    "Corpus2",
    "Corpus2Config",
    "Relations",
    "Statement",
    "TemplateMatcher",
    "build_corpus2",
    "counterfact_relations",
    "extra_prompts",
    "general_sentences",
    "merge_statements",
    "relation_words",
    "single_template_lines",
    "template_of",
]
