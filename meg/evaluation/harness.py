"""The evaluation runner: score any `EditedLM` on edit requests, one record per case, resumable.

Records are appended to `records.jsonl` in the run directory one chunk at a time; a rerun skips the cases
already there (a torn last line from an interrupted write is discarded). Aggregation (`metrics.aggregate`) is a
separate pure step over the records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from meg import files
from meg.decoding import MAX_NEW_TOKENS
from meg.distributed import ranks
from meg.evaluation.metrics import ag_pass, locality_target
from meg.methods.base import EditedLM
from meg.requests import EditRequest


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a run so far; a torn final line (interrupted append) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _cases(requests: Sequence[EditRequest], pre_edit: dict[str, str]) -> dict[str, list[tuple[int, str, str]]]:
    """Per metric, (row, prompt, expected) for the requests that have that metric."""
    cases: dict[str, list[tuple[int, str, str]]] = {"reliability": [], "generality": [], "locality": []}
    for row, r in enumerate(requests):
        cases["reliability"].append((row, r.prompt, r.target))
        if r.paraphrases:
            cases["generality"].append((row, r.paraphrases[0], r.target))
        if r.unrelated:
            cases["locality"].append((row, r.unrelated[0], locality_target(pre_edit[r.unrelated[0]])))
    return cases


def _score_cases(lm: EditedLM, cases: list[tuple[int, str, str]], max_new_tokens: int,
                 pre_edit: dict[str, str]) -> list[dict[str, Any]]:
    if not cases:
        return []
    prompts, expected = [c[1] for c in cases], [c[2] for c in cases]
    generated = lm.generate(prompts, max_new_tokens)
    # An empty expected answer (the pre-edit model stopped at once) has no tokens to force: TF = AG there.
    forced_rows = [i for i, e in enumerate(expected) if e.strip()]
    forced = lm.teacher_forced([prompts[i] for i in forced_rows], [expected[i] for i in forced_rows]) if forced_rows else []
    tf = dict(zip(forced_rows, forced))
    details = lm.describe(prompts)
    out = []
    for i, (prompt, exp, gen, det) in enumerate(zip(prompts, expected, generated, details)):
        passed = ag_pass(gen, exp)
        out.append({"prompt": prompt, "expected": exp, "before": pre_edit.get(prompt), "generated": gen, "ag": passed,
                    "tf": tf.get(i, float(passed)), **det})
    return out


def evaluate_chunk(
    lm: EditedLM, requests: Sequence[EditRequest], start: int, pre_edit: dict[str, str], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[dict[str, Any]]:
    """Score one chunk of requests; returns one record per request (index = start + row)."""
    records = [
        {"index": start + row, "case_id": r.case_id, "reliability": None, "generality": None, "locality": None}
        for row, r in enumerate(requests)
    ]
    for metric, cases in _cases(requests, pre_edit).items():
        for (row, _, _), result in zip(cases, _score_cases(lm, cases, max_new_tokens, pre_edit)):
            records[row][metric] = result
    return records


def evaluate(
    lm: EditedLM,
    requests: Sequence[EditRequest],
    pre_edit: dict[str, str],
    run_dir: str | Path,
    chunk_size: int = 64,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every request, resuming from `run_dir/records.jsonl`; returns all records in order.

    `pre_edit` maps each locality prompt (and, when present, each edit prompt and paraphrase: kept in the
    records as "before") to the unedited model's greedy output (see `pre_edit_outputs`).
    """
    path, group = Path(run_dir) / files.RUN_RECORDS, ranks()
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_records(path)
    if done and len(done) % chunk_size and len(done) != len(requests):
        done = done[: len(done) - len(done) % chunk_size]  # a chunk only counts when it was written whole
        if group.main:
            files.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done))
    starts = range(len(done), len(requests), chunk_size)
    bar = tqdm(total=len(requests), initial=len(done), desc="evaluate", unit="edit", disable=not progress or not group.main)
    chunks = group.in_rounds(len(starts), lambda i: evaluate_chunk(
        lm, requests[starts[i] : starts[i] + chunk_size], starts[i], pre_edit, max_new_tokens))
    for finished in chunks:  # one chunk per process and round (one process: one chunk at a time)
        for chunk in finished:
            if group.main:
                _append_records(path, chunk)
            done += chunk
            bar.update(len(chunk))
    bar.close()
    group.barrier()  # rank 0 has written every record before any process reads the file again
    return done


def pre_edit_outputs(
    base: EditedLM, prompts: Sequence[str], cache_path: str | Path | None, max_new_tokens: int = MAX_NEW_TOKENS, chunk_size: int = 256,
    progress: bool = True,
) -> dict[str, str]:
    """The unedited model's greedy output for each prompt, cached in a JSONL file (prompt -> output).

    The cache file name must identify the model and template (the caller builds it from the fingerprint).
    """
    cache: dict[str, str] = {}
    path = Path(cache_path) if cache_path else None
    if path and path.exists():
        cache = {r["prompt"]: r["output"] for r in read_records(path)}
    missing, group = [p for p in dict.fromkeys(prompts) if p not in cache], ranks()
    starts = range(0, len(missing), chunk_size)
    bar = tqdm(total=len(missing), desc="pre-edit outputs", unit="prompt",
               disable=not progress or not missing or not group.main)
    rounds = group.in_rounds(len(starts), lambda i: base.generate(missing[starts[i] : starts[i] + chunk_size],
                                                                  max_new_tokens))
    for first, finished in zip(range(0, len(starts), group.world), rounds):
        for start, outputs in zip(starts[first : first + group.world], finished):
            batch = missing[start : start + chunk_size]
            cache.update(zip(batch, outputs))
            if path and group.main:
                path.parent.mkdir(parents=True, exist_ok=True)
                _append_records(path, [{"prompt": p, "output": o} for p, o in zip(batch, outputs)])
            bar.update(len(batch))
    bar.close()
    group.barrier()  # rank 0 has written the cache before any process reads it again
    return {p: cache[p] for p in prompts}
