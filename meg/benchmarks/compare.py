"""`meg bench`: every editing method in one process on the same first-N edits, side by side.

Per method: the six metrics and Score (paper protocol, `meg.evaluation`), edit wall time, peak resident memory
while editing, and inference queries/second on a fixed mix of edited and unrelated prompts (greedy, 20 tokens,
cold caches). The model, the records, the ZsRE filter and the pre-edit outputs are shared by all methods, and
each method's records live in its own run directory, so an interrupted bench resumes.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meg import files
from meg.benchmarks.oracle import oracle_generality
from meg.benchmarks.routing import conflicting_locality
from meg.data.defaults import default_unrelated
from meg.distributed import ranks
from meg.evaluation.harness import evaluate, read_records
from meg.evaluation.metrics import COLUMNS, MetricTable, aggregate
from meg.evaluation.report import HEADERS, metric_row
from meg.evaluation.runner import RunConfig, check_run, check_scales_out, edit_context, frozen, prepare_run
from meg.methods import METHODS, check_methods, get_method
from meg.results import markdown_table, write_results


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # no /proc (macOS): fall back to the peak so far, which getrusage reports
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def peak_rss(interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Sample the process's resident memory in a thread; yields a dict filled with the peak (MB) on exit."""
    result, stop = {"peak_mb": _rss_mb()}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak_mb"] = max(result["peak_mb"], _rss_mb())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_mb"] = max(result["peak_mb"], _rss_mb())


@dataclass(frozen=True)
class BenchConfig:
    """What `meg bench` compares: one RunConfig (model, data, N, ...) and a list of methods."""

    run: RunConfig
    methods: tuple[str, ...] = ("unedited", "meg", "ft", "memit", "alphaedit", "knn", "mlp")
    method_configs: dict[str, dict[str, Any]] | None = None
    throughput_queries: int = 64  # edited prompts; as many unrelated prompts are mixed in

    def __post_init__(self) -> None:
        """The methods and their configs, checked before any model is loaded."""
        check_methods(self.methods, self.method_configs, tuple(METHODS), "bench")
        check_scales_out(self.methods)


def throughput(lm, prompts: Sequence[str]) -> float:
    """Queries per second of `lm.generate` on `prompts` with cold caches."""
    if hasattr(lm, "clear_cache"):
        lm.clear_cache()
    start = time.perf_counter()
    lm.generate(list(prompts))
    return len(prompts) / (time.perf_counter() - start)


def bench_method(name: str, prep, config: BenchConfig, run_dir: Path, mix: Sequence[str], work: Path,
                 conflicts: Sequence[bool]) -> dict[str, Any]:
    """Edit with one method, evaluate it and time its inference; a finished row with the same settings is read
    back from `run_dir` instead (so a bench can be resumed or extended by more methods). Stage caches live in
    `work`, keyed by their inputs, so methods and benches on other data share them safely. `conflicts`: the
    locality prompts left out of `clean_locality`."""
    run = replace(config.run, method=name, method_config=(config.method_configs or {}).get(name))
    done = run_dir / files.BENCH_RESULT
    if done.exists():
        saved = files.read_json(done)
        if saved.get("run") == frozen(run):
            return _with_clean_locality(saved["result"], run_dir, conflicts)
    _set_aside_other_settings(run_dir, frozen(run))
    result = _measure_method(name, run, prep, run_dir, mix, work, conflicts)
    if ranks().main:  # under `accelerate launch` rank 0 writes; every rank has the same records
        files.atomic_write_json(done, {"run": frozen(run), "result": result})
    return result


def _set_aside_other_settings(run_dir: Path, run: dict[str, Any]) -> None:
    """Records resume only into the settings they were made with: a row's records, result and marker made with
    other settings (a changed config) are moved to `run_dir`/superseded-<key>/, never deleted, so the row is
    evaluated afresh; then `run_dir` is marked with `run`. Rows from before the marker: their result names them."""
    marker, done, group = run_dir / files.BENCH_ROW, run_dir / files.BENCH_RESULT, ranks()
    owner = files.read_json(marker) if marker.exists() else files.read_json(done).get("run") if done.exists() else None
    if group.main and owner is not None and owner != run:
        aside = run_dir / f"superseded-{files.digest(owner)}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in (run_dir / files.RUN_RECORDS, done, marker):
            if path.exists():
                path.replace(aside / path.name)
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.atomic_write_json(marker, run)
    group.barrier()  # no rank reads the row's records before they are set aside


def _measure_method(name: str, run: RunConfig, prep, run_dir: Path, mix: Sequence[str], work: Path,
                    conflicts: Sequence[bool]) -> dict[str, Any]:
    requests = [r.for_editing() for r in prep.dataset.requests]
    with peak_rss() as memory:
        start = time.perf_counter()
        context = replace(edit_context(run, prep.dataset, run_dir), work_dir=work)
        edited = get_method(name)(prep.model, prep.tokenizer, requests, context)
        edit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    records = evaluate(edited, prep.dataset.requests, prep.pre_edit, run_dir, run.chunk_size, run.max_new_tokens)
    eval_seconds = time.perf_counter() - start
    return {"method": name, "metrics": aggregate(records).to_dict(), "edit_seconds": round(edit_seconds, 2),
            "eval_seconds": round(eval_seconds, 2), "peak_rss_mb": round(memory["peak_mb"], 1),
            "queries_per_second": round(throughput(edited, mix), 2), "stats": edited.stats(),
            "oracle_generality": oracle_generality(edited, prep.dataset.requests, run.max_new_tokens),
            "clean_locality": clean_locality(records, conflicts)}


def bench_methods(config: BenchConfig, out_dir: str | Path, overwrite: bool = False,
                  work_dir: str | Path | None = None) -> dict[str, Any]:
    """Every method on the same edits; per-method run directories under `out_dir`, cached stages in `work_dir`
    (default `out_dir`/work)."""
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir / "work"
    dataset = check_run(config.run, out_dir, overwrite)
    files.check_creatable(work)
    with files.work_lock(out_dir), files.work_lock(work):  # one bench at a time on these directories
        prep = prepare_run(config.run, out_dir, overwrite, dataset=dataset)
        edited_prompts = [r.prompt for r in prep.dataset.requests[: config.throughput_queries]]
        mix = [q for pair in zip(edited_prompts, default_unrelated()) for q in pair]  # alternate edited/unrelated
        conflicts = conflicting_locality(prep.dataset.requests).tolist()
        results = [bench_method(name, prep, config, out_dir / name, mix, work, conflicts) for name in config.methods]
    return {"setup": {**asdict(config.run), "methods": list(config.methods), "data": prep.dataset.name,
                      "n_used": len(prep.dataset.requests), "filter": prep.note, "threads": os.cpu_count(),
                      "conflicting_locality": sum(conflicts)},
            "results": results, "seconds": {k: round(v, 2) for k, v in prep.seconds.items()}}


def _with_clean_locality(result: dict[str, Any], run_dir: Path, conflicts: Sequence[bool]) -> dict[str, Any]:
    """A row read back from a bench made before rows had `clean_locality`: computed from its records (read only
    for such a row) when they are all there."""
    if "clean_locality" in result:
        return result
    records = read_records(run_dir / files.RUN_RECORDS)
    if len(records) != len(conflicts):
        return result
    return {**result, "clean_locality": clean_locality(records, conflicts)}


def clean_locality(records: Sequence[dict], conflicts: Sequence[bool]) -> dict[str, float | None]:
    """Loc-AG and Loc-TF over the locality prompts that do not ask about a fact the edit set itself changes
    (`conflicting_locality`: a correct editor changes those answers, yet Locality counts the change as harm)."""
    clean = [r for r in records if r.get("locality") is not None and not conflicts[r["index"]]]
    table = aggregate(clean)
    return {"loc_ag": table.loc_ag, "loc_tf": table.loc_tf, "prompts": len(clean)}


def bench_markdown(bench: dict[str, Any], command: str) -> str:
    rows = []
    for r in bench["results"]:
        table = MetricTable(**{c: r["metrics"][c] for c in COLUMNS})
        rows.append([r["method"], *metric_row(table), r["edit_seconds"], r["peak_rss_mb"], r["queries_per_second"]])
    setup = bench["setup"]
    header = (f"# {setup['data']}, N = {setup['n_used']}, all edits in one batch\n\nCommand: `{command}`\n\n"
              f"Model: {setup['model']}. Filter: {setup['filter'] or 'none'}. Metrics as in the paper "
              "(see report protocol); edit s = wall time of editing; RSS = peak resident memory while editing; "
              "q/s = greedy answers per second on a fixed 50/50 mix of edited and unrelated prompts. MeG variants share "
              "cached stages (tuned encoder, collected vectors, a generator trained on the same pairs) through the "
              "bench's work directory, so a variant's edit s counts only what it adds to the first one.\n\n")
    oracle = [f"- {r['method']}: collected vector of the right edit on each paraphrase (oracle): Gen-AG "
              f"{r['oracle_generality']['gen_ag']:.1f}, Gen-TF {r['oracle_generality']['gen_tf']:.1f}"
              for r in bench["results"] if r.get("oracle_generality")]
    step1 = [f"- {r['method']}: {100 * r['stats']['step1_success']:.1f}%" for r in bench["results"]
             if r.get("stats", {}).get("step1_success") is not None]  # fmt: skip
    table = markdown_table(["Method", *HEADERS, "edit s", "RSS MB", "q/s"], rows)
    return (header + table + _clean_locality_text(bench)
            + ("\nGenerality upper bound:\n\n" + "\n".join(oracle) + "\n" if oracle else "")
            + ("\nStep-1 success (edits whose optimised residual alone, before any weight changes, makes the model "
               "produce the target):\n\n" + "\n".join(step1) + "\n" if step1 else ""))


def _clean_locality_text(bench: dict[str, Any]) -> str:
    conflicting = bench["setup"].get("conflicting_locality")
    rows = [r for r in bench["results"] if (r.get("clean_locality") or {}).get("loc_ag") is not None]
    if not conflicting or not rows:
        return ""
    lines = [f"- {r['method']}: Loc-AG {r['clean_locality']['loc_ag']:.2f}, Loc-TF {r['clean_locality']['loc_tf']:.2f}"
             for r in rows]
    return (f"\nLocality on clean prompts: {conflicting} of {bench['setup']['n_used']} locality prompts ask about a fact "
            "this edit set changes (they repeat an edit prompt, or name an edited subject and expect that edit's true "
            "answer), so a correct editor changes their answers and Locality counts it as harm. Without them:\n\n"
            + "\n".join(lines) + "\n")


def write_bench(out_dir: str | Path, name: str, bench: dict[str, Any], command: str) -> dict[str, Path]:
    def draw(axes) -> None:
        methods = [r["method"] for r in bench["results"]]
        width = 0.8 / len(methods)
        for i, r in enumerate(bench["results"]):
            values = [r["metrics"][c] or 0 for c in COLUMNS] + [r["metrics"]["score"]]
            axes.bar([x + i * width for x in range(len(values))], values, width, label=r["method"])
        axes.set_xticks([x + 0.4 - width / 2 for x in range(len(HEADERS))], HEADERS)
        axes.set_ylim(0, 105)
        axes.legend(fontsize=7, ncol=4)
        axes.set_title(f"{bench['setup']['data']}, N = {bench['setup']['n_used']}")

    return write_results(out_dir, name, {**bench, "command": command}, bench_markdown(bench, command), draw)
