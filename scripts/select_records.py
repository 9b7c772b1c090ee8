r"""Keep the records of a JSON edit file (a list of records) whose target matches a regular expression.

    python scripts/select_records.py --data ../shared/data/knowedit/benchmark_wiki_recent_recent_train.json \
        --target '\d{4}-\d\d-\d\dT' --out runs/recent-timestamps.json

Why: a collection report on the edits one setting fails (KnowEdit recent's 36 WikiData timestamps,
"0850-01-01T00:00:00Z", that no SGD setting collects) measures a fix on them alone, at a fraction of the cost.
The target field is the one `meg` reads: target_new (CounterFact's requested_rewrite.target_new.str, ZsRE's alt).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from meg import files
from meg.data.records import read_records
from meg.errors import InputError


def target_of(record: dict) -> str:
    """The new target of a CounterFact, ZsRE or KnowEdit record."""
    rewrite = record.get("requested_rewrite")
    if isinstance(rewrite, dict):
        return str(rewrite["target_new"]["str"])
    return str(record.get("target_new", record.get("alt", "")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--target", required=True, help="regular expression searched in each record's new target")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    try:
        pattern = re.compile(args.target)
    except re.error as error:
        parser.error(f"--target {args.target!r} is not a regular expression: {error}")
    try:
        records = read_records(args.data)  # the data readers' own checks and one-line errors
    except InputError as error:
        parser.error(f"--data: {error}")
    kept = [r for r in records if pattern.search(target_of(r))]
    files.atomic_write_text(args.out, json.dumps(kept, ensure_ascii=False))
    print(f"{args.out}: {len(kept)} of {len(records)} records")


if __name__ == "__main__":
    main()
