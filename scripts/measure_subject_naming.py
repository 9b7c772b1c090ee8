"""Approximate subject naming, word-anchored (meg/routing/subjects.py) against the rule it replaced.

The replaced rule named a subject approximately when the query held `min_coverage` of the subject's character
trigrams anywhere and each subject word kept half of its own trigrams, in any word of the query. Counted per data
set (first --n edits): paraphrases naming their own edit's subject (exactly / with approximate naming), and the
prompts that name some edited subject ONLY approximately among the shipped unrelated queries and each edit's
locality prompts: each such prompt becomes a routing candidate and pays the verifier.

    python scripts/measure_subject_naming.py --data ../shared/data --out docs/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from meg.data import load_dataset
from meg.data.defaults import default_unrelated
from meg.results import markdown_table, write_results
from meg.routing.subjects import _ALNUM, _CONNECTORS, SubjectIndex, trigrams

SETS = {"CounterFact edit (first 2,048)": ("counterfact/counterfact-edit.json", 2048),
        "KnowEdit ZsRE test": ("zsre/knowedit_zsre_test_all.json", None),
        "KnowEdit WikiData counterfact": ("knowedit/benchmark_wiki_counterfact_train_cf.json", None),
        "KnowEdit recent": ("knowedit/benchmark_wiki_recent_recent_train.json", None)}
COVERAGE = 0.8  # RetrievalConfig.approximate_subjects


def replaced_rule(text: str, subject: str) -> bool:
    """The rule before word anchoring: coverage over the whole query, each word half of its trigrams."""
    grams, text_grams = trigrams(subject), trigrams(text)
    words = [trigrams(w) for w in _ALNUM.findall(subject.lower()) if w not in _CONNECTORS]
    return bool(grams) and len(grams & text_grams) >= COVERAGE * len(grams) and \
        all(len(g & text_grams) >= 0.5 * len(g) for g in words)


def count(requests, queries: list[str]) -> dict[str, int]:
    exact = SubjectIndex([r.subject for r in requests], [r.prompt for r in requests])
    anchored = SubjectIndex([r.subject for r in requests], [r.prompt for r in requests], COVERAGE)
    subjects = [requests[i].subject for i in anchored.indexed]

    holding: dict[str, list[int]] = {}  # trigram -> the subjects holding it
    for k, s in enumerate(subjects):
        for gram in trigrams(s):
            holding.setdefault(gram, []).append(k)

    def old(texts: list[str]) -> list[set[int]]:  # the replaced rule, as a fallback to exact naming
        found = [set(f) for f in exact.named_in(texts)]
        return [f or {anchored.indexed[k] for k in {k for g in trigrams(t) for k in holding.get(g, [])}
                      if replaced_rule(t, subjects[k])} for t, f in zip(texts, found)]

    paraphrases = [(i, p) for i, r in enumerate(requests) for p in r.paraphrases[:1]]
    texts = [p for _, p in paraphrases]
    own_exact = sum(i in f for (i, _), f in zip(paraphrases, exact.named_in(texts)))
    own_old = sum(i in f for (i, _), f in zip(paraphrases, old(texts)))
    own_new = sum(i in f for (i, _), f in zip(paraphrases, anchored.named_in(texts)))
    locality = [q for r in requests for q in r.unrelated[:1]]
    only_approx = {}
    for name, prompts in (("unrelated", queries), ("locality", locality)):
        plain = exact.named_in(prompts)
        only_approx[f"{name}_old"] = sum(bool(f) and not e for e, f in zip(plain, old(prompts)))
        only_approx[f"{name}_new"] = sum(bool(f) and not e for e, f in zip(plain, anchored.named_in(prompts)))
    return {"edits": len(requests), "paraphrases": len(paraphrases), "own_exact": own_exact, "own_old": own_old,
            "own_new": own_new, "locality": len(locality), "unrelated": len(queries), **only_approx}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    queries = list(default_unrelated())
    results = {}
    for label, (file, n) in SETS.items():
        requests = load_dataset(args.data / file, skip_invalid=True).requests[:n]
        results[label] = count(requests, queries)
        print(label, results[label], flush=True)
    command = "python scripts/measure_subject_naming.py " + shlex.join(sys.argv[1:])
    rows = [[label, r["paraphrases"], r["own_exact"], r["own_old"], r["own_new"], r["unrelated_old"],
             r["unrelated_new"], r["locality_old"], r["locality_new"]] for label, r in results.items()]
    table = markdown_table(["data", "paraphrases", "own subject named exactly", "+ approximately (replaced rule)",
                            "+ approximately (anchored)", "unrelated named only approximately (replaced)",
                            "(anchored)", "locality named only approximately (replaced)", "(anchored)"], rows)
    text = (f"# Approximate subject naming: word-anchored vs whole-query trigram coverage\n\nCommand: `{command}`\n\n"
            f"Unrelated: the {len(queries):,} shipped unrelated queries; locality: each edit's first locality prompt; "
            f"paraphrases: each edit's first. Coverage {COVERAGE} (RetrievalConfig.approximate_subjects).\n\n"
            f"{table}\n")
    write_results(args.out, "subject-naming", {"command": command, "coverage": COVERAGE, "sets": results}, text)
    print(text)


if __name__ == "__main__":
    main()
