"""Build the data shipped in meg/assets (pseudo pairs, calibration pairs, unrelated queries, same-subject questions,
demo edits).

    python scripts/build_default_assets.py [--data ../shared/data] [--out meg/assets]
    python scripts/build_default_assets.py --verifier   # then train the default routing verifier (~14 CPU min)

Deterministic: records are taken in file order. Pseudo pairs, calibration pairs (the CounterFact-train records
after those taken as pseudo pairs) and unrelated queries come ONLY from the training splits
(counterfact-train.json, zsre_mend_train-1k.json; same-subject questions from KnowEdit's wiki_counterfact and
wiki_recent train files), and any query that also appears in a benchmark file (counterfact-edit/val.json,
knowedit_zsre_test_all.json: prompt, paraphrase or locality prompt) is skipped, so tuning the encoder or
calibrating a router never sees a benchmark query.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

from meg.data import load_dataset
from meg.data.defaults import (
    CALIBRATION_PAIRS_FILE,
    DEMO_COUNTERFACT_FILE,
    PSEUDO_PAIRS_FILE,
    SAME_SUBJECT_FILE,
    UNRELATED_FILE,
)
from meg.data.records import read_records, text, where
from meg.data.zsre import strip_nq_prefix
from meg.files import atomic_write_text
from meg.requests import write_edit_file

REPO = Path(__file__).resolve().parents[1]
BENCHMARK_FILES = ("counterfact/counterfact-edit.json", "counterfact/counterfact-val.json", "zsre/knowedit_zsre_test_all.json")
KNOWEDIT_TRAIN = ("knowedit/benchmark_wiki_counterfact_train_cf.json", "knowedit/benchmark_wiki_recent_recent_train.json")
CF_TRAIN, MEND_TRAIN, CF_VAL = "counterfact/counterfact-train.json", "zsre/zsre_mend_train-1k.json", "counterfact/counterfact-val.json"


def key(query: str) -> str:
    """Queries compare case- and space-insensitively."""
    return " ".join(query.lower().split())


def benchmark_queries(data: Path) -> set[str]:
    """Every prompt, paraphrase and unrelated prompt of the benchmark edit files."""
    queries = set()
    for name in BENCHMARK_FILES:
        for request in load_dataset(data / name).requests:
            queries.update(key(q) for q in (request.prompt, *request.paraphrases, *request.unrelated))
    return queries


def mend_rows(data: Path) -> list[tuple[str, str, str, str]]:
    """(question, paraphrase, NQ question, subject) of every MEND record (its new answer is not needed here)."""
    path = data / MEND_TRAIN
    rows = []
    for index, record in enumerate(read_records(path)):
        at = where(path, index)
        rows.append((text(record, "src", at), text(record, "rephrase", at), strip_nq_prefix(text(record, "loc", at)),
                     text(record, "subject", at)))
    return rows


def same_subject_rows(data: Path) -> list[tuple[str, str, str]]:
    """(edit prompt, Relation_Specificity prompt, subject) of KnowEdit train records naming the subject in both."""
    rows = []
    for name in KNOWEDIT_TRAIN:
        for record in read_records(data / name):
            subject, prompt = record.get("subject"), record.get("prompt")
            for item in (record.get("locality") or {}).get("Relation_Specificity", []):
                other = item.get("prompt") if isinstance(item, dict) else None
                if subject and prompt and other and subject in prompt and subject in other:
                    rows.append((prompt, other, subject))
    return rows


def take(items: Iterable[tuple[str, ...]], limit: int, excluded: set[str], checked: int | None = None) -> list[tuple[str, ...]]:
    """The first `limit` items none of whose first `checked` strings (default: all) is excluded or was taken
    before (a subject may repeat; the queries may not)."""
    taken, seen = [], set(excluded)
    for item in items:
        keys = [key(s) for s in item[:checked]]
        if any(k in seen for k in keys):
            continue
        seen.update(keys)
        taken.append(item)
        if len(taken) == limit:
            break
    return taken


def jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build(data: Path, out: Path, cf_pairs: int, per_source_unrelated: int, demo: int,
          same_subject: int, calibration: int) -> dict[str, int]:
    """Write the five asset files into `out`; -> number of rows written per file."""
    excluded = benchmark_queries(data)
    cf_train = load_dataset(data / CF_TRAIN).requests
    mend = mend_rows(data)
    # Subjects ride along (not checked for overlap): encoder tuning swaps them to build hard negatives.
    cf_rows = [(r.prompt, r.paraphrases[0], r.subject) for r in cf_train if r.paraphrases]
    pairs = take(cf_rows, cf_pairs, excluded, 2)
    pairs += take(((q, p, s) for q, p, _, s in mend), len(mend), excluded, 2)
    # Calibration only (never tuned on): the next CounterFact-train pairs, disjoint from the pseudo pairs.
    used = excluded | {key(x) for q, p, _ in pairs for x in (q, p)}
    calibration_pairs = take(cf_rows, calibration, used, 2)
    unrelated = take(((u,) for r in cf_train for u in r.unrelated), per_source_unrelated, excluded)
    unrelated += take(((nq,) for _, _, nq, _ in mend), per_source_unrelated, excluded)
    # Only the other question is checked against the benchmarks: the edit prompt is the verifier's reference side.
    negatives = take(((o, q, s) for q, o, s in same_subject_rows(data)), same_subject, excluded, 1)
    atomic_write_text(out / SAME_SUBJECT_FILE, jsonl({"question": q, "other": o, "subject": s} for o, q, s in negatives))
    for name, rows in ((PSEUDO_PAIRS_FILE, pairs), (CALIBRATION_PAIRS_FILE, calibration_pairs)):
        atomic_write_text(out / name, jsonl({"question": q, "paraphrase": p, "subject": s} for q, p, s in rows))
    atomic_write_text(out / UNRELATED_FILE, jsonl({"prompt": u} for (u,) in unrelated))
    write_edit_file(load_dataset(data / CF_VAL).requests[:demo], out / DEMO_COUNTERFACT_FILE)
    return {PSEUDO_PAIRS_FILE: len(pairs), CALIBRATION_PAIRS_FILE: len(calibration_pairs),
            UNRELATED_FILE: len(unrelated), DEMO_COUNTERFACT_FILE: demo, SAME_SUBJECT_FILE: len(negatives)}


def build_verifier(out: Path) -> Path:
    """Train the default routing verifier on the shipped assets and store its trained layers in `out` under the
    name `meg.routing.verifier.trained_verifier` looks for (keyed by its inputs)."""
    import torch

    from meg.data.defaults import default_negative_pairs, default_pseudo_pairs
    from meg.pseudo_edits import split_pairs
    from meg.routing.verifier import VerifierConfig, trained_verifier

    torch.set_num_threads(1)  # the shipped file was trained on one thread; keep the build reproducible
    tune_pairs, _ = split_pairs(default_pseudo_pairs())
    trained_verifier(VerifierConfig(), tune_pairs, default_negative_pairs(), out)
    return out


def build_encoder(out: Path) -> Path:
    """Tune the default query encoder on the shipped pseudo pairs (the split every default fit tunes on) and store
    its last layer in `out` under the name `meg.encoder.tuned_encoder` looks for (keyed by its inputs)."""
    import torch

    from meg.config import MegConfig
    from meg.data.defaults import default_pseudo_pairs
    from meg.encoder import tuned_encoder
    from meg.pseudo_edits import split_pairs

    torch.set_num_threads(1)  # one thread, like the shipped verifier: the build is reproducible on one machine
    config = MegConfig()
    tune_pairs, _ = split_pairs(default_pseudo_pairs(), seed=config.seed)
    tuned_encoder(config.encoder, tune_pairs, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="shared data directory")
    parser.add_argument("--out", type=Path, default=REPO / "meg" / "assets", help="asset directory")
    parser.add_argument("--cf-pairs", type=int, default=2000, help="CounterFact (prompt, paraphrase) pairs")
    parser.add_argument("--unrelated", type=int, default=1000, help="unrelated queries per source")
    parser.add_argument("--demo", type=int, default=300, help="demo edits (first records of counterfact-val)")
    parser.add_argument("--same-subject", type=int, default=3000, help="KnowEdit-train same-subject question pairs")
    parser.add_argument("--calibration", type=int, default=3000, help="CounterFact pairs held out for calibration")
    parser.add_argument("--verifier", action="store_true", help="also train the default routing verifier")
    parser.add_argument("--encoder", action="store_true", help="also tune the default query encoder")
    parser.add_argument("--only-trained", action="store_true", help="only the trained assets (--verifier/--encoder)")
    args = parser.parse_args(argv)
    if not args.only_trained:
        counts = build(args.data.resolve(), args.out, args.cf_pairs, args.unrelated, args.demo, args.same_subject,
                       args.calibration)
        for name, count in counts.items():
            print(f"{args.out / name}: {count} rows")
    if args.verifier:
        print(f"verifier stored in {build_verifier(args.out)}")
    if args.encoder:
        print(f"encoder stored in {build_encoder(args.out)}")


if __name__ == "__main__":
    main()
