"""Which edited subjects a query names: exact whole-word matches, and (optionally) approximate ones.

Exact: the subject's lower-cased word/punctuation tokens appear as a contiguous run in the query's.
Approximate: each of the subject's words is bent into one word of the query, in any order: a query word that
starts with the same letter, is at most `_MAX_SUFFIX` letters longer, and shares character trigrams with it
(Dice >= `_WORD_DICE`), the words' shared trigrams covering `min_coverage` of the subject's. Measured on KnowEdit's
ZsRE test file: 85 of 1,304 paraphrases do not contain their subject verbatim, because the paraphraser bent it
("Derek Whiteheads team", "the Mahabad Republic", "Mechthildi's Austrian father"); paraphrasers bend a name's
end, not its start. A candidate found either way still has to pass the router's similarity check, so
approximate naming only widens the candidate set, and every query it widens pays the verifier.

Word anchoring replaced trigram coverage over the whole query (docs/LOG.md, 2026-12-01 "approximate subject
naming"): coverage alone let "citizen" name "Tizen", "author" "Thor", "language" "Langu" and any query with the
word "d" name "D♭". On the first 2,048 CounterFact edits, KnowEdit ZsRE test, recent and WikiData counterfact,
prompts that named some subject only approximately (the shipped unrelated queries and each set's locality
prompts) fell from 120 / 8 / 123 / 7 to 18 / 0 / 13 / 1, while ZsRE paraphrases naming their own subject only
approximately went from 54 to 52. Subjects with fewer than `_MIN_APPROXIMATE` letters ("Re!", "U2") are named
exactly or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+|[^\w\s]")
_ALNUM = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]\s|\n")
_CHUNK = 256  # texts per sparse product in approximate matching
_WORD_DICE = 0.5  # approximate naming: trigram Dice of a subject word and the query word it was bent into
_MAX_SUFFIX = 2  # ... which may be at most this many letters longer ("Whitehead" -> "Whiteheads", not "Langu" -> "language")
_MIN_APPROXIMATE = 4  # letters a subject needs (connectors aside) to be named approximately at all


def words(text: str) -> tuple[str, ...]:
    """Lower-cased word and punctuation tokens: the unit of exact subject matching."""
    return tuple(_WORD.findall(text.lower()))


def focus(text: str, subject: str) -> str:
    """The text from the start of the sentence that first names `subject` (the whole text if absent)."""
    at = text.lower().find(subject.lower())
    if at < 0:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, at)]
    return text[ends[-1]:].strip() if ends else text


def without_subject(text: str, subject: str) -> str:
    """The text with its first mention of `subject` replaced by "it" (unchanged when it does not name it)."""
    at = text.lower().find(subject.lower())
    return text if at < 0 else f"{text[:at]}it{text[at + len(subject):]}"


def trigrams(text: str) -> set[str]:
    """Character trigrams of each lower-cased word padded with spaces ("java" -> " ja", "jav", "ava", "va ")."""
    return set().union(*map(_word_trigrams, _ALNUM.findall(text.lower())))


def _word_trigrams(word: str) -> set[str]:
    padded = f" {word} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _bent_into(word: str, grams: set[str], text_words: Sequence[str]) -> int:
    """Trigrams `word` shares with the query word it was bent into (0: none is close enough, see module doc)."""
    best = 0
    for other in text_words:
        if other[:1] != word[:1] or len(other) - len(word) > _MAX_SUFFIX:
            continue
        other_grams = _word_trigrams(other)
        shared = len(grams & other_grams)
        if 2 * shared >= _WORD_DICE * (len(grams) + len(other_grams)):
            best = max(best, shared)
    return best


_TOKEN = re.compile(r"\S+")
_CONNECTORS = {"of", "the", "de", "and", "von", "van", "la", "le", "du", "der", "des", "di", "da", "del", "al", "el",
               "&", "zu", "y", "e"}
_NOT_NAMES = {"The", "What", "Which", "Who", "Whom", "Whose", "Where", "When", "How", "Why", "In", "A", "An", "On",
              "At", "Is", "Was", "Does", "Did", "Do", "Are", "Were", "To", "By", "From", "Of", "For", "It", "They",
              "He", "She", "Its", "Their", "His", "Her", "This", "That", "These", "Name", "Q", "As", "With"}


def _capitalised_after(tokens: list[re.Match], i: int) -> bool:
    """Whether the first token after position i that is not a connector starts with a capital letter."""
    for match in tokens[i + 1 :]:
        if match.group(0).lower() not in _CONNECTORS:
            return match.group(0)[:1].isupper()
    return False


def infer_subject(prompt: str) -> str | None:
    """A guess at the entity a prompt is about, for edits given without a subject: the longest run of
    capitalised words or numbers (joined by connectors such as "of", "de"), as it is written in the prompt.

    Measured against the given subjects: the same string for most CounterFact and KnowEdit ZsRE prompts, and
    mostly a part of it otherwise ("Inner Circle" for "Inner Circle railway line"), which still verifies.
    """
    spans: list[tuple[int, int]] = []
    start = end = None
    tokens = list(_TOKEN.finditer(prompt))
    for i, match in enumerate(tokens):
        raw = match.group(0)
        lead = len(raw) - len(raw.lstrip("\"'(["))
        core = raw[lead:].rstrip(",?!:;.\"')]")
        initial = len(core) == 1 and raw[lead:].startswith(core + ".")  # "Herbert T. Levack"
        possessive = re.search(r"['’]s?$", core)
        if possessive:
            core = core[: possessive.start()]
        core_start = match.start() + lead
        named = bool(core) and (core[0].isupper() or core[0].isdigit()) and not (start is None and core in _NOT_NAMES)
        if named:
            start = core_start if start is None else start
            end = core_start + len(core) + (1 if initial else 0)
            closed = possessive or (len(raw[lead:]) > len(core) and not initial)  # punctuation ends a name
            if closed:
                spans.append((start, end))
                start = None
        elif start is not None and raw.lower() in _CONNECTORS and _capitalised_after(tokens, i):
            continue  # "Battle of the Java Sea": connectors between capitalised words stay inside
        elif start is not None:
            spans.append((start, end))
            start = None
    if start is not None:
        spans.append((start, end))
    if not spans:
        return None
    first, last = max(spans, key=lambda span: span[1] - span[0])
    return prompt[first:last]


def _contains(tokens: tuple[str, ...], key: tuple[str, ...]) -> bool:
    return any(tokens[i : i + len(key)] == key for i in range(len(tokens) - len(key) + 1))


class SubjectIndex:
    """Edits by subject. `named_in(texts)` gives, per text, the edits whose subject it names.

    Only edits whose own prompt names their subject are indexed: the others cannot be verified by subject.
    `min_coverage` (None = exact matching only) is the share of a subject's trigrams a text must contain to
    name it approximately; each of the subject's words (connectors such as "of" aside: a paraphraser drops them)
    must also be bent into one of the text's words (module doc), so "Renault 12" does not name "Renault 5", nor
    "Microsoft Office 2010" "Microsoft Office XP" (the word that tells such subjects apart is short and would
    otherwise be outvoted).
    """

    def __init__(self, subjects: Sequence[str | None], prompts: Sequence[str], min_coverage: float | None = None):
        self.table: dict[tuple[str, ...], list[int]] = {}
        for i, (subject, prompt) in enumerate(zip(subjects, prompts)):
            key = words(subject) if subject else ()
            if key and _contains(words(prompt), key):
                self.table.setdefault(key, []).append(i)
        self.longest = max((len(k) for k in self.table), default=0)
        self.indexed = sorted(i for rows in self.table.values() for i in rows)
        self.min_coverage = min_coverage
        self._vocab: dict[str, int] = {}
        self._subject_grams = self._grams([subjects[i] or "" for i in self.indexed], grow=True)  # (S, V)
        self._sizes = np.asarray(self._subject_grams.sum(axis=1)).ravel()  # (S,) trigrams per subject
        self._words = [[(w, _word_trigrams(w)) for w in _ALNUM.findall((subjects[i] or "").lower())
                        if w not in _CONNECTORS] for i in self.indexed]

    def __len__(self) -> int:
        return len(self.indexed)

    def _grams(self, texts: Sequence[str], grow: bool = False) -> sparse.csr_matrix:
        """Binary trigram incidence (len(texts), V); unseen trigrams are dropped unless `grow`."""
        rows, cols = [], []
        for r, text in enumerate(texts):
            for gram in trigrams(text):
                col = self._vocab.setdefault(gram, len(self._vocab)) if grow else self._vocab.get(gram)
                if col is not None:
                    rows.append(r)
                    cols.append(col)
        data = np.ones(len(rows), dtype=np.float32)
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), max(len(self._vocab), 1)))

    def _exact(self, text: str) -> set[int]:
        tokens, found = words(text), set()
        for n in range(1, min(self.longest, len(tokens)) + 1):
            for start in range(len(tokens) - n + 1):
                found.update(self.table.get(tokens[start : start + n], []))
        return found

    def named_in(self, texts: Sequence[str]) -> list[list[int]]:
        """Per text, the sorted edit indices whose subject it names (exactly, or approximately if enabled)."""
        found = [self._exact(t) for t in texts]
        unnamed = [i for i, f in enumerate(found) if not f]  # approximate matching is only a fallback
        if self.min_coverage is not None and self.indexed:
            for start in range(0, len(unnamed), _CHUNK):  # chunks bound the (chunk, S) product's size
                rows = unnamed[start : start + _CHUNK]
                shared = (self._grams([texts[i] for i in rows]) @ self._subject_grams.T).tocoo()  # (b, S)
                covered = shared.data >= self.min_coverage * self._sizes[shared.col]  # (nnz,)
                for row, col in zip(shared.row[covered], shared.col[covered]):
                    if self._bent(_ALNUM.findall(texts[rows[row]].lower()), col):
                        found[rows[row]].add(self.indexed[col])
        return [sorted(f) for f in found]

    def _bent(self, text_words: list[str], subject_row: int) -> bool:
        """Whether every word of subject `subject_row` is bent into a word of the text, covering enough of it."""
        subject = self._words[subject_row]
        if sum(len(w) for w, _ in subject) < _MIN_APPROXIMATE:
            return False
        shared = [_bent_into(w, grams, text_words) for w, grams in subject]
        return all(shared) and sum(shared) >= self.min_coverage * sum(len(g) for _, g in subject)

    def edits_named_in(self, text: str) -> list[int]:
        """`named_in` for one text."""
        return self.named_in([text])[0]


__all__ = ["SubjectIndex", "focus", "infer_subject", "trigrams", "words"]
