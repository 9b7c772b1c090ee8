"""`meg run` / `meg eval` as library functions: edit the first N records in one batch (or load a pack), then
evaluate with the paper's protocol and write the report.

The run directory holds the frozen run config, the editing work files (resumable), the per-case records
(resumable) and the report; one process at a time works in it (a second waits, `files.work_lock`). Every setting
and the data file are checked before the model is loaded or anything is written. The pre-edit model's outputs are cached per model fingerprint and template under
the cache directory (default ~/.cache/meg-edit, or $MEG_CACHE_DIR).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meg import files
from meg.data import Dataset, load_dataset, template_for
from meg.data.defaults import default_pseudo_pairs, default_unrelated, demo_dataset, held_out_negatives
from meg.decoding import MAX_NEW_TOKENS
from meg.distributed import ranks
from meg.errors import InputError
from meg.evaluation.harness import evaluate, pre_edit_outputs
from meg.evaluation.metrics import ag_pass
from meg.evaluation.report import build_report, write_report
from meg.methods import EditContext, check_config, get_method
from meg.methods.unedited import PlainLM
from meg.models import context_and_tokenizer, fingerprint, load_causal_lm
from meg.prompts import join_answer
from meg.requests import load_pseudo_pairs, load_queries

log = logging.getLogger("meg")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; frozen into `<out>/run_config.json`."""

    model: str = "reference"
    data: str | None = None  # a data file; None = the shipped CounterFact sample
    n: int | None = None  # first N usable records (None = all)
    method: str = "meg"
    method_config: dict[str, Any] | None = None  # the method's own config as a dict (MeG: MegConfig fields)
    template: str | None = None  # overrides the data set's prompt template
    keep_only_wrong: bool | None = None  # paper's ZsRE filter; None = on for ZsRE, off otherwise
    zsre_target: str = "new"  # "new": the counterfactual answer (`alt` / `target_new`); "true": the true answer
    pseudo_pairs: str | None = None  # JSONL file; None = the shipped defaults
    unrelated: str | None = None  # JSONL file; None = the shipped defaults
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = 0
    device: str = "cpu"
    chunk_size: int = 64
    skip_invalid: bool = False  # drop invalid records of the data file (one warning) instead of failing

    def __post_init__(self) -> None:
        checks = {
            "n": (self.n is None or _positive_int(self.n), "an integer >= 1, or null for all records"),
            "zsre_target": (self.zsre_target in ZSRE_TARGETS, f"one of: {', '.join(ZSRE_TARGETS)}"),
            "max_new_tokens": (_positive_int(self.max_new_tokens), "an integer >= 1"),
            "chunk_size": (_positive_int(self.chunk_size), "an integer >= 1"),
            "seed": (isinstance(self.seed, int) and not isinstance(self.seed, bool), "an integer"),
            "keep_only_wrong": (self.keep_only_wrong in (None, True, False), "true, false or null"),
            "method_config": (self.method_config is None or isinstance(self.method_config, dict), "an object or null"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:
                raise InputError(f"RunConfig.{name} must be {valid}, got {getattr(self, name)!r}")


ZSRE_TARGETS = ("new", "true")
# Methods whose editing runs across the processes of `accelerate launch` (the MeG stages, meg/distributed.py); every
# other method edits in one process (launch it without accelerate).
SCALES_OUT = ("meg", "meg-paper", "meg-query", "meg-gate", "knn", "mlp", "unedited")


def check_scales_out(methods: Sequence[str]) -> None:
    """Under `accelerate launch`, refuse methods that edit in one process (before any model loads)."""
    alone = [m for m in methods if m not in SCALES_OUT]
    if ranks().distributed and alone:
        named = ", ".join(map(repr, alone))
        raise InputError(f"{f'method {named} edits' if len(alone) == 1 else f'methods {named} edit'} in one process; "
                         f"launch without accelerate (methods that run on several processes: {', '.join(SCALES_OUT)})")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def frozen(config: RunConfig) -> dict[str, Any]:
    """The run config as stored in run_config.json (`skip_invalid` only when set, so runs frozen before the
    setting existed still match)."""
    data = asdict(config)
    if not data["skip_invalid"]:
        del data["skip_invalid"]
    return data


def _cache_file(model, dataset: Dataset) -> Path:
    key = hashlib.sha256(json.dumps([fingerprint(model), dataset.template.text], default=str).encode()).hexdigest()[:16]
    return files.cache_dir() / "pre_edit" / f"{key}.jsonl"


def _freeze(run_dir: Path, config: RunConfig, overwrite: bool) -> None:
    if not ranks().main:  # under `accelerate launch`, rank 0 writes the run directory
        return
    path = run_dir / files.RUN_CONFIG
    settings = frozen(config)
    if path.exists() and not overwrite and files.read_user_json(path) != settings:
        raise InputError(f"{run_dir} holds a run with other settings; pass --overwrite or choose another --out")
    if overwrite and run_dir.exists():
        for name in (files.RUN_RECORDS, files.REPORT_JSON):
            (run_dir / name).unlink(missing_ok=True)
    files.atomic_write_json(path, settings)


def select_records(dataset: Dataset, config: RunConfig, base: PlainLM, cache: Path | None) -> tuple[Dataset, str | None]:
    """Apply the ZsRE target choice and filter, then keep the first N. Returns the data and a filter note."""
    requests = dataset.requests
    if config.zsre_target == "true":
        requests = [replace(r, target=r.ground_truth) for r in requests if r.ground_truth]
    keep_only_wrong = dataset.kind == "zsre" if config.keep_only_wrong is None else config.keep_only_wrong
    note = None
    if keep_only_wrong:
        answers = pre_edit_outputs(base, [r.prompt for r in requests], cache, progress=False)
        kept = [r for r in requests if not ag_pass(answers[r.prompt], r.target)]
        note = f"kept {len(kept)} of {len(requests)} records whose edit target the base model does not already give"
        requests = kept
    if config.n is not None:
        if config.n > len(requests):
            raise InputError(f"--n {config.n} is more than the {len(requests)} usable records of {dataset.name}"
                             + (f" ({note})" if note else ""))
        requests = requests[: config.n]
    return replace(dataset, requests=requests), note


def edit_context(config: RunConfig, dataset: Dataset, run_dir: Path) -> EditContext:
    pairs = load_pseudo_pairs(config.pseudo_pairs) if config.pseudo_pairs else default_pseudo_pairs()
    unrelated = load_queries(config.unrelated) if config.unrelated else default_unrelated()
    return EditContext(template=dataset.template, pseudo_pairs=pairs, unrelated=unrelated,
                       negative_pairs=held_out_negatives(dataset.requests), work_dir=run_dir / "work",
                       config=config.method_config, seed=config.seed)


@dataclass
class PreparedRun:
    model: Any
    tokenizer: Any
    dataset: Dataset
    pre_edit: dict[str, str]
    note: str | None
    seconds: dict[str, float]


def read_dataset(config: RunConfig, template: str | None = None) -> Dataset:
    """The run's records, read and checked before any model is loaded: every record valid (or skipped with
    `skip_invalid`), and N not more than the records that can be used."""
    template = template or config.template
    dataset = (load_dataset(config.data, template=template, skip_invalid=config.skip_invalid) if config.data
               else _demo(template))
    _check_n(dataset, config)
    return dataset


def _check_n(dataset: Dataset, config: RunConfig) -> None:
    usable = [r for r in dataset.requests if r.ground_truth] if config.zsre_target == "true" else dataset.requests
    if config.n is not None and config.n > len(usable):
        raise InputError(f"--n {config.n} is more than the {len(usable)} usable records of {dataset.name}")


def _fitting(dataset: Dataset, config: RunConfig) -> Dataset:
    """The records whose queries fit the model's context with the tokens generated for them (and whose prompt +
    target fits, for collection), checked from the model's config and tokenizer before it loads: a record that
    does not is an error naming it, or is dropped with one warning under `skip_invalid` (KnowEdit's WikiData
    counterfact holds 111-token prompts; the reference model reads 128)."""
    limit, tokenizer = context_and_tokenizer(config.model)
    if limit is None or not dataset.requests:
        return dataset
    keep, dropped = [], []
    for i, request in enumerate(dataset.requests):
        problem = _too_long(request, dataset.template, tokenizer, limit, config.max_new_tokens)
        if problem and not config.skip_invalid:
            raise InputError(f"{dataset.path} record {i}: {problem} (--skip-invalid drops such records)")
        (dropped if problem else keep).append(request if not problem else i)
    if dropped:
        log.warning("%d records of %s do not fit the model's context of %d tokens and were skipped (first: record %d)",
                    len(dropped), dataset.name, limit, dropped[0])
    return replace(dataset, requests=keep)


def _too_long(request, template, tokenizer, limit: int, max_new_tokens: int) -> str | None:
    """Why a record's evaluated queries or its edit do not fit `limit` tokens (None when they do)."""
    for field, text in (("prompt", request.prompt), ("paraphrases", (request.paraphrases or ("",))[0]),
                        ("unrelated", (request.unrelated or ("",))[0])):
        length = len(tokenizer(template.format(text))["input_ids"]) if text else 0
        if length + max_new_tokens > limit:
            return (f"{field} {text[:40]!r} is {length} tokens; with {max_new_tokens} generated tokens it exceeds the "
                    f"model's context of {limit}")
    edit = len(tokenizer(join_answer(template.format(request.prompt), request.target))["input_ids"])
    if edit > limit:
        return f"prompt + target is {edit} tokens, more than the model's context of {limit}"
    return None


def check_run(config: RunConfig, run_dir: Path, overwrite: bool, template: str | None = None) -> Dataset:
    """Everything about a run that can be checked before the model is loaded: the data (`read_dataset`), the run
    directory (creatable, and not holding a run with other settings unless `overwrite`)."""
    dataset = read_dataset(config, template)
    files.check_run_dir(run_dir)  # a user's own directory is never written into, nor its files deleted
    path = run_dir / files.RUN_CONFIG
    if path.is_file() and not overwrite and files.read_user_json(path) != frozen(config):
        raise InputError(f"{run_dir} holds a run with other settings; pass --overwrite or choose another --out")
    dataset = _fitting(dataset, config)  # last: it reads the model's tokenizer
    _check_n(dataset, config)
    return dataset


def prepare_run(config: RunConfig, run_dir: Path, overwrite: bool, template: str | None = None,
                dataset: Dataset | None = None) -> PreparedRun:
    """Check the data and the run directory, freeze the config, load the model, select records, compute the
    pre-edit outputs. `dataset`: the records `check_run` already read."""
    start, seconds = time.perf_counter(), {}
    dataset = dataset or check_run(config, run_dir, overwrite, template)
    run_dir.mkdir(parents=True, exist_ok=True)
    _freeze(run_dir, config, overwrite)
    model, tokenizer = load_causal_lm(config.model, device=ranks().device(config.device))
    base, cache = PlainLM(model, tokenizer, dataset.template), _cache_file(model, dataset)
    dataset, note = select_records(dataset, config, base, cache)
    seconds["load"] = time.perf_counter() - start
    t = time.perf_counter()
    queries = [q for r in dataset.requests for q in (r.prompt, *r.paraphrases[:1], *r.unrelated[:1])]
    pre_edit = pre_edit_outputs(base, queries, cache)
    seconds["pre_edit_outputs"] = time.perf_counter() - t
    return PreparedRun(model, tokenizer, dataset, pre_edit, note, seconds)


def _evaluate_and_report(prep: PreparedRun, edited, config: RunConfig, run_dir: Path, command: str,
                         started: float) -> dict[str, Any]:
    t = time.perf_counter()
    records = evaluate(edited, prep.dataset.requests, prep.pre_edit, run_dir, config.chunk_size, config.max_new_tokens)
    prep.seconds["evaluate"] = time.perf_counter() - t
    prep.seconds["total"] = time.perf_counter() - started
    dataset = prep.dataset
    setup = {**asdict(config), "command": command, "data": dataset.name, "data_path": str(dataset.path),
             "kind": dataset.kind, "template": dataset.template.text, "target_field": _target_field(dataset, config),
             "filter": prep.note, "n_used": len(dataset.requests)}
    seconds = {k: round(v, 2) for k, v in prep.seconds.items()}
    report = build_report(records, setup, seconds, edited.stats(), config.max_new_tokens)
    if ranks().main:
        write_report(run_dir, report)
    return report


def run_edit_and_eval(config: RunConfig, out: str | Path, overwrite: bool = False, command: str = "") -> dict[str, Any]:
    """Edit the first N records in one batch with `config.method`, evaluate every record, write the report
    into `out` and return it."""
    started, run_dir = time.perf_counter(), Path(out)
    check_config(config.method, config.method_config)
    apply = get_method(config.method)
    check_scales_out([config.method])
    dataset = check_run(config, run_dir, overwrite)
    with files.work_lock(run_dir):
        prep = prepare_run(config, run_dir, overwrite, dataset=dataset)
        t = time.perf_counter()
        requests = [r.for_editing() for r in prep.dataset.requests]
        edited = apply(prep.model, prep.tokenizer, requests, edit_context(config, prep.dataset, run_dir))
        prep.seconds["edit"] = time.perf_counter() - t
        return _evaluate_and_report(prep, edited, config, run_dir, command, started)


def evaluate_pack(pack_dir: str | Path, model: str, data: str | None, n: int | None, out: str | Path,
                  overwrite: bool = False, device: str = "cpu", command: str = "", skip_invalid: bool = False,
                  trust_models: bool | Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate an existing pack (its own template) on the first N usable records of `data`."""
    from meg.edited_model import EditedModel
    from meg.pack import EditPack

    started, run_dir = time.perf_counter(), Path(out)
    pack = EditPack.load(pack_dir, trust_models=trust_models)
    config = RunConfig(model=model, data=data, n=n, method=f"meg (pack {Path(pack_dir).name})", device=device,
                       template=pack.template.text, skip_invalid=skip_invalid)
    dataset = check_run(config, run_dir, overwrite)
    with files.work_lock(run_dir):
        prep = prepare_run(config, run_dir, overwrite, dataset=dataset)
        edited = EditedModel(prep.model, prep.tokenizer, pack)
        return _evaluate_and_report(prep, edited, config, run_dir, command, started)


def _demo(template: str | None) -> Dataset:
    dataset = demo_dataset()
    return replace(dataset, template=template_for("counterfact", template)) if template else dataset


def _target_field(dataset: Dataset, config: RunConfig) -> str:
    if config.zsre_target == "true":
        return "the true answer (answers[0] / ground_truth)"
    return {"counterfact": "target_new", "zsre": "alt (MEND) / target_new (KnowEdit)", "knowedit": "target_new",
            "jsonl": "target"}.get(dataset.kind, "target")
