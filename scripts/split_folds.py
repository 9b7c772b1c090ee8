"""Split a JSON edit file (a list of records) into K folds of consecutive records, for cross-fitted benchmarks.

    python scripts/split_folds.py --data ../shared/data/knowedit/benchmark_wiki_counterfact_train_cf.json \
        --folds 2 --stem wiki_counterfact_train_cf --out runs/wikicf-folds

Writes <stem>-fold-a.json, <stem>-fold-b.json, ... under --out. Why: the shipped verifier's same-subject negatives
come from KnowEdit's wiki TRAIN files, so a benchmark on a whole such file trains its router on negatives minus
every pair of its own edits (`meg.data.defaults.held_out_negatives`), which leaves it no example of some relations
(none of "{} follows" against "{} is followed by" is left for WikiData counterfact). Benchmarking one fold at a time
leaves the other folds' pairs in: the router learns each relation from other subjects, as a user's router does
from the shipped negatives, and never sees a pair of the edits it is scored on.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

from meg import files


def folds(records: list, k: int) -> list[list]:
    """`records` cut into k runs of consecutive records, sizes differing by at most one."""
    size, extra = divmod(len(records), k)
    bounds = [i * size + min(i, extra) for i in range(k + 1)]
    return [records[bounds[i] : bounds[i + 1]] for i in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stem", help="file name stem of the folds (default: the data file's)")
    args = parser.parse_args()
    if not 2 <= args.folds <= 26:
        parser.error(f"--folds must be in 2..26, got {args.folds}")
    records = json.loads(args.data.read_text())
    if not isinstance(records, list):
        parser.error(f"--data {args.data}: expected a JSON list of records")
    args.out.mkdir(parents=True, exist_ok=True)
    for letter, part in zip(string.ascii_lowercase, folds(records, args.folds)):
        path = args.out / f"{args.stem or args.data.stem}-fold-{letter}.json"
        files.atomic_write_text(path, json.dumps(part, ensure_ascii=False))
        print(f"{path}: {len(part)} records")


if __name__ == "__main__":
    main()
