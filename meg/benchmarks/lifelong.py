"""`meg bench-lifelong`: K sequential rounds of R edits; after each round, every edit made so far is evaluated.

Every method edits the same records in the same order: the first K x R usable records of the data, round k the
records (k-1) R to k R - 1.
- `meg`: round 1 is `MegEditor.fit` on the first R edits, round k > 1 `MegEditor.add` of the next R to the pack
  round k-1 left (meg/lifelong.py decides what an add recomputes).
- `meg-batch`: `MegEditor.fit` on all K x R edits at once, from an empty work directory of its own (a cold fit);
  one row, at round K. It takes meg's config ("meg" in the method configs configures both).
- `ft`, `memit`, `alphaedit` (meg/baselines): each round is applied to the model the previous round left, as their
  users run them sequentially. FT fine-tunes that model on the round's edits. MEMIT solves with the BASE model's
  key statistics, computed (or read from their cache) once and kept, as the published code keeps its covariance
  in memory (the first round a process edits pays for them). AlphaEdit projects onto the base model's null space and adds the keys of every earlier round to its
  solve (its published sequential setting, `meg.baselines.alphaedit.edit_alphaedit`).

After each round: the paper's six metrics and Score (`meg.evaluation`) over every edit made so far, over the
round-1 edits (retention) and over the round's own edits. Seconds: the wall time of the round's edit (fit, add or
apply) alone; evaluation and the saving of the round's state are not counted. The process's CPU seconds over the
same span are recorded beside it: on a machine shared with other jobs (or a process paused by one) wall time
counts the waiting too, CPU time does not (with one torch thread the two agree on an idle machine).

Resuming. Per method and round, `<work>/<method>/round-<k>/` holds the state after the round (meg: the pack;
baselines: the weights that differ from the base model's and, for AlphaEdit, the key moments of every edit so far,
as safetensors), `edit.json` (seconds and the method's stats, written once the state is saved), the evaluation
records (resumable chunk by chunk) and `row.json`, the finished row, written atomically. Each JSON file records the
settings it belongs to and is not reused under others. A rerun reads the finished rows back, loads the state of
the last finished round and goes on from there. A round interrupted while editing is edited again, reusing what
its first attempt cached in `<work>/<method>/stages` (its seconds then count only the rest). When a finished
round's state is missing and a later round needs it, the round is edited again only to continue; its row stays
as measured. The results file is a record too: a run of some methods keeps the rows that file holds of the others
when they measured the same edits, rounds and run settings (`kept_rows`), each with the command that measured it,
so methods can run apart (each in its own work directory, on its own core) and meet in one file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meg import files
from meg.baselines import alphaedit, ft, memit
from meg.baselines.base import editable_copy, resolve_config
from meg.data import Dataset
from meg.edited_model import EditedModel
from meg.editor import MegEditor, _training_summary
from meg.errors import InputError
from meg.evaluation.harness import evaluate
from meg.evaluation.metrics import COLUMNS, MetricTable, aggregate
from meg.evaluation.report import HEADERS, metric_row
from meg.evaluation.runner import PreparedRun, RunConfig, check_run, edit_context, frozen, prepare_run, read_dataset
from meg.methods import check_methods
from meg.methods.base import EditContext, EditedLM
from meg.methods.meg_method import meg_config
from meg.methods.unedited import PlainLM
from meg.pack import EditPack, named_models
from meg.requests import EditRequest, read_jsonl
from meg.results import markdown_table, write_results

METHODS = ("meg", "meg-batch", "ft", "memit", "alphaedit")
BATCH = "meg-batch"
# Files of one method's round, in <work>/<method>/round-<k>/ (besides the evaluation's records.jsonl).
ROW_FILE = "row.json"  # the finished row
EDIT_FILE = "edit.json"  # seconds and stats of the round's edit, written once its state is saved
PACK_DIR = "pack"  # meg: the pack after the round
WEIGHTS_FILE = "weights.safetensors"  # baselines: the weights that differ from the base model's
KEYS_FILE = "keys.safetensors"  # AlphaEdit: K_p K_p^T per edited layer over every edit so far


def configured_as(method: str) -> str:
    """The method whose config a method takes (meg-batch: meg's)."""
    return "meg" if method == BATCH else method


@dataclass(frozen=True)
class LifelongConfig:
    """What `meg bench-lifelong` measures: the run (model, data, seed, device, ...), K rounds of R edits, the
    methods and their configs ({method: config}; "meg" configures meg and meg-batch alike)."""

    run: RunConfig
    rounds: int = 10
    per_round: int = 100
    methods: tuple[str, ...] = METHODS
    method_configs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Counts, methods and their configs, checked before any model is loaded."""
        for option, value in (("--rounds", self.rounds), ("--per-round", self.per_round)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{option} must be an integer >= 1, got {value!r}")
        check_methods(self.methods, self.method_configs, METHODS, "bench-lifelong", configured_as)

    @property
    def edits(self) -> int:
        return self.rounds * self.per_round

    def frozen_run(self) -> RunConfig:
        """The run as frozen in the work directory: the first K x R records."""
        return replace(self.run, n=self.edits, method="bench-lifelong", method_config=None)

    def config_of(self, method: str) -> Any:
        return (self.method_configs or {}).get(configured_as(method))


def check_lifelong(config: LifelongConfig, work: Path, overwrite: bool) -> Dataset:
    """What can be checked before the model loads: the data (it must hold K x R usable records) and the work
    directory (`check_run`). Returns the records."""
    dataset = read_dataset(replace(config.run, n=None))
    if config.edits > len(dataset.requests):
        raise InputError(f"--rounds {config.rounds} x --per-round {config.per_round} = {config.edits} edits, more than "
                         f"the {len(dataset.requests)} records of {dataset.name}")
    return check_run(config.frozen_run(), work, overwrite)


# --- one method's state from round to round ---


class MegRounds:
    """meg: the state is the pack; round 1 fits it, later rounds add to it (`stages`: the editor's work directory)."""

    def __init__(self, prep: PreparedRun, context: EditContext) -> None:
        self.context = context
        self.model, self.tokenizer = prep.model, prep.tokenizer
        self.editor = MegEditor(prep.model, prep.tokenizer, meg_config(context), prep.dataset.template)

    def edit(self, pack: EditPack | None, requests: Sequence[EditRequest]) -> EditPack:
        c = self.context
        if pack is None:
            return self.editor.fit(requests, c.pseudo_pairs or None, c.unrelated or None, c.work_dir, c.progress,
                                   calibration_pairs=c.calibration_pairs, negative_pairs=c.negative_pairs)
        return self.editor.add(pack, requests, c.pseudo_pairs or None, c.unrelated or None, c.work_dir, c.progress,
                               calibration_pairs=c.calibration_pairs)

    @staticmethod
    def stats(pack: EditPack) -> dict[str, Any]:
        """The operation's stage seconds and generator work (from the pack's history / fit log)."""
        last = pack.history[-1]
        if last["operation"] == "fit":
            stages, generator = pack.log.get("stage_seconds", {}), _training_summary(pack.log.get("generator_training"))
        else:
            stages = last.get("stage_seconds", {})
            generator = {k: v for k, v in last.items() if k.startswith("generator")}
        return {"operation": last["operation"], "edits": len(pack), "collected": int(pack.collection.success.sum()),
                "weights": pack.config.weights, "conflicts": len(last.get("conflicts") or []),
                "stage_seconds": stages, **generator}

    def answer(self, pack: EditPack) -> EditedLM:
        return EditedModel(self.model, self.tokenizer, pack)

    @staticmethod
    def save(pack: EditPack, folder: Path) -> None:
        pack.save(folder / PACK_DIR, overwrite=True)

    def load(self, folder: Path) -> EditPack | None:
        path = folder / PACK_DIR
        if not path.is_dir():
            return None  # the models this editor's own config names are trusted: it chose them
        return EditPack.load(path, trust_models=list(named_models(self.editor.resolved_config()).values()))


@dataclass
class EditedWeights:
    """A baseline's state after a round: the edited model, and for AlphaEdit K_p K_p^T of every edit so far."""

    model: nn.Module
    keys: dict[int, torch.Tensor] | None = None


class BaselineRounds:
    """FT, MEMIT or AlphaEdit applied round after round to the model the previous round left (module docstring)."""

    def __init__(self, name: str, prep: PreparedRun, context: EditContext) -> None:
        self.name, self.context = name, context
        self.base, self.tokenizer, self.template = prep.model, prep.tokenizer, prep.dataset.template
        self.statistics: dict[int, torch.Tensor] | None = None  # MEMIT / AlphaEdit: the base model's, once
        self.last_stats: dict[str, Any] = {}  # what the method reported of its last edit

    def edit(self, state: EditedWeights | None, requests: Sequence[EditRequest]) -> EditedWeights:
        model, c = self.base if state is None else state.model, self.context
        if self.name == "ft":
            edited, keys = ft.apply_ft(model, self.tokenizer, requests, c), None
        elif self.name == "memit":
            edited, keys = memit.apply_memit(model, self.tokenizer, requests, c, self._statistics()), None
        else:
            edited, keys = alphaedit.edit_alphaedit(model, self.tokenizer, requests, c, self._statistics(),
                                                    state.keys if state is not None else None)
        self.last_stats = edited.stats()
        return EditedWeights(edited.model, keys)

    def _statistics(self) -> dict[int, torch.Tensor]:
        if self.statistics is None:
            kind, presets = ((memit.MEMITConfig, memit.PRESETS) if self.name == "memit"
                             else (alphaedit.AlphaEditConfig, alphaedit.PRESETS))
            config = resolve_config(kind, self.context.config, presets)
            self.statistics = memit.statistics_for(self.base, self.tokenizer, self.context, config)
        return self.statistics

    def stats(self, state: EditedWeights) -> dict[str, Any]:
        """What the method reported of the edit that made `state` (the same call as `MegRounds.stats`)."""
        return {k: v for k, v in self.last_stats.items() if k != "edit_seconds"}

    def answer(self, state: EditedWeights) -> EditedLM:
        return PlainLM(state.model, self.tokenizer, self.template)

    def save(self, state: EditedWeights, folder: Path) -> None:
        base = self.base.state_dict()
        changed = {k: v for k, v in state.model.state_dict().items() if not torch.equal(v, base[k])}
        files.save_tensors(folder / WEIGHTS_FILE, changed)
        if state.keys is not None:
            files.save_tensors(folder / KEYS_FILE, {f"layer{layer}": m for layer, m in state.keys.items()})

    def load(self, folder: Path) -> EditedWeights | None:
        weights, keys = folder / WEIGHTS_FILE, folder / KEYS_FILE
        if not weights.is_file() or (self.name == "alphaedit" and not keys.is_file()):
            return None
        model = editable_copy(self.base)
        unexpected = model.load_state_dict(files.load_tensors(weights), strict=False).unexpected_keys
        if unexpected:
            raise InputError(f"{weights}: holds weights the model does not have ({', '.join(unexpected[:3])})")
        moments = ({int(k.removeprefix("layer")): m for k, m in files.load_tensors(keys).items()}
                   if self.name == "alphaedit" else None)
        return EditedWeights(model, moments)


# --- the rounds of one method ---


def _json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so saved settings compare equal."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Rounds:
    """One method's rounds in `directory`: finished rows read back, the state after a round loaded or made by
    editing from the state before it, each row evaluated over every edit made so far."""

    method: str
    runner: MegRounds | BaselineRounds
    requests: list[EditRequest]  # every edit of the schedule, in order, as evaluated (paraphrases, unrelated)
    per_round: int  # edits per round of this method (meg-batch: all of them)
    cohort: int  # the schedule's R: "round-1" and "latest" edits are cohorts of this size
    settings: dict[str, Any]  # recorded in every file of these rounds
    directory: Path
    prep: PreparedRun
    run: RunConfig
    log: Callable[[str], None]
    progress: bool = True
    _latest: tuple[int, Any] | None = None

    @property
    def count(self) -> int:
        return len(self.requests) // self.per_round

    def folder(self, k: int) -> Path:
        return self.directory / f"round-{k}"

    def _key(self, k: int) -> dict[str, Any]:
        return _json({**self.settings, "per_round": self.per_round, "round": k})

    def _saved(self, k: int, name: str) -> dict[str, Any] | None:
        """The round's JSON file when it was written for these settings."""
        path = self.folder(k) / name
        try:
            data = files.read_json(path) if path.is_file() else None
        except ValueError:  # damaged by hand; an atomic writer never leaves half a file
            return None
        return data if isinstance(data, dict) and data.get("key") == self._key(k) else None

    def state(self, k: int) -> Any:
        """The state after round k (None before round 1): the saved one, else edited from the state before."""
        if k == 0:
            return None
        if self._latest is not None and self._latest[0] == k:
            return self._latest[1]
        state = self.runner.load(self.folder(k)) if self._saved(k, EDIT_FILE) else None
        if state is None:
            state = self._edit(k, self.state(k - 1))
        self._latest = (k, state)  # only the latest is kept: a round needs the one before it
        return state

    def _edit(self, k: int, previous: Any) -> Any:
        folder, batch = self.folder(k), self.requests[(k - 1) * self.per_round : k * self.per_round]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EDIT_FILE).unlink(missing_ok=True)
        if self._saved(k, ROW_FILE) is None:
            (folder / files.RUN_RECORDS).unlink(missing_ok=True)  # records of another state
        self.log(f"{self.method} round {k}/{self.count}: editing {len(batch)} edits")
        start, cpu = time.perf_counter(), time.process_time()
        state = self.runner.edit(previous, [r.for_editing() for r in batch])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        self.runner.save(state, folder)
        files.atomic_write_json(folder / EDIT_FILE, {"key": self._key(k), "seconds": round(seconds, 2),
                                                     "cpu_seconds": round(cpu, 2),
                                                     "stats": _json(self.runner.stats(state))})
        return state

    def in_force(self, records: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
        """Metrics of the round-1 edits that no later edit of rounds 1..k re-edits (a later edit of the same prompt
        wins, `meg.requests.deduplicate`), and how many they are: the retention a correct editor can keep."""
        last = {r.prompt.strip(): i for i, r in enumerate(self.requests[: k * self.per_round])}
        kept = [rec for i, rec in enumerate(records[: self.cohort]) if last[self.requests[i].prompt.strip()] == i]
        return {"edits": len(kept), **aggregate(kept).to_dict()}

    def _with_in_force(self, k: int, saved: dict[str, Any]) -> dict[str, Any]:
        """A row saved before rows kept `round1_in_force`, completed from its round's records (when they are there)."""
        row, path = saved["row"], self.folder(k) / files.RUN_RECORDS
        if "round1_in_force" in row or not path.is_file():
            return row
        records = sorted(read_jsonl(path), key=lambda r: r["index"])
        row = {**row, "round1_in_force": self.in_force(records, k)}
        files.atomic_write_json(self.folder(k) / ROW_FILE, {"key": self._key(k), "row": row})
        return row

    def row(self, k: int) -> dict[str, Any]:
        """Round k's finished row: read back, or edited (as needed) and evaluated on every edit made so far."""
        saved = self._saved(k, ROW_FILE)
        if saved is not None:
            return self._with_in_force(k, saved)
        state = self.state(k)
        edit, done = self._saved(k, EDIT_FILE), self.requests[: k * self.per_round]
        start = time.perf_counter()
        records = evaluate(self.runner.answer(state), done, self.prep.pre_edit, self.folder(k), self.run.chunk_size,
                           self.run.max_new_tokens, self.progress)
        row = {"method": self.method, "round": len(done) // self.cohort, "edits": len(done),
               "edit_seconds": edit["seconds"], "edit_cpu_seconds": edit["cpu_seconds"],
               "eval_seconds": round(time.perf_counter() - start, 2),
               "metrics": aggregate(records).to_dict(), "round1": aggregate(records[: self.cohort]).to_dict(),
               "round1_in_force": self.in_force(records, k),
               "latest": aggregate(records[-self.cohort :]).to_dict(), "stats": edit["stats"]}
        files.atomic_write_json(self.folder(k) / ROW_FILE, {"key": self._key(k), "row": row})
        self.log(_row_line(row))
        return row


def _row_line(row: dict[str, Any]) -> str:
    m, first = row["metrics"], row["round1"]
    return (f"{row['method']} round {row['round']} ({row['edits']} edits): Score {m['score']:.1f} (Rel-AG "
            f"{m['rel_ag']:.1f}, Gen-AG {m['gen_ag'] or 0:.1f}, Loc-AG {m['loc_ag'] or 0:.1f}); round-1 Rel-AG "
            f"{first['rel_ag']:.1f}; edit {row['edit_seconds']:.1f} s")


def method_rounds(method: str, config: LifelongConfig, prep: PreparedRun, context: EditContext, work: Path,
                  log: Callable[[str], None], progress: bool) -> Rounds:
    """The rounds of `method` in `<work>/<method>`, its stages cached in `<work>/<method>/stages`."""
    directory = work / method
    context = replace(context, config=config.config_of(method), work_dir=directory / "stages", progress=progress)
    runner = MegRounds(prep, context) if method in ("meg", BATCH) else BaselineRounds(method, prep, context)
    per_round = config.edits if method == BATCH else config.per_round
    settings = {"run": frozen(config.frozen_run()), "method": method, "config": config.config_of(method)}
    return Rounds(method, runner, list(prep.dataset.requests), per_round, config.per_round, settings, directory, prep,
                  config.frozen_run(), log, progress)


# Setup fields that may differ between runs whose rows are kept together: they change no row of another method.
PER_METHOD_FIELDS = ("methods", "method_configs", "threads")


def kept_rows(earlier: dict[str, Any] | None, setup: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an earlier results file (`write_lifelong`) that a run with `setup` keeps: those of methods it
    does not run, when the earlier run measured the same thing (every setup field but the methods, their configs
    and the thread count alike) and no method run now shares the row's config under other settings (meg and
    meg-batch share meg's); each keeps the command that measured it (the earlier file's when it has none). A method
    run now is never kept: its rows come from the work directory, or are measured again."""
    if not earlier or "setup" not in earlier:
        return []
    before = earlier["setup"]
    if any(before.get(k) != v for k, v in setup.items() if k not in PER_METHOD_FIELDS):
        return []
    then, now = before.get("method_configs") or {}, setup["method_configs"] or {}
    shared = {configured_as(m) for m in setup["methods"]}

    def same_config(method: str) -> bool:
        key = configured_as(method)
        return key not in shared or then.get(key) == now.get(key)

    return [{**row, "command": row.get("command", earlier.get("command"))} for row in earlier.get("rows", [])
            if row["method"] in METHODS and row["method"] not in setup["methods"] and same_config(row["method"])]


def _with_kept(setup: dict[str, Any], kept: Sequence[dict[str, Any]], earlier: dict[str, Any] | None
               ) -> dict[str, Any]:
    """The setup of a file that holds the kept rows too: their methods, and the configs they were measured with."""
    if not kept or earlier is None:  # rows are only kept from an earlier file
        return setup
    then = earlier["setup"].get("method_configs") or {}
    configs = dict(setup["method_configs"] or {})
    for key in {configured_as(r["method"]) for r in kept}:
        configs.pop(key, None)
        if then.get(key) is not None:
            configs[key] = then[key]
    methods = {r["method"] for r in kept} | set(setup["methods"])
    return {**setup, "methods": [m for m in METHODS if m in methods], "method_configs": configs or None}


def _in_order(rows: Sequence[dict[str, Any]], kept: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the order of METHODS when some were kept from an earlier file, else as measured."""
    return sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["round"])) if kept else list(rows)


def bench_lifelong(config: LifelongConfig, work: str | Path, overwrite: bool = False,
                   calibration_pairs: Sequence[Any] | None = None, progress: bool = True,
                   log: Callable[[str], None] = print,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every method's rounds (module docstring) in the work directory `work`; `on_row(summary so far)` after each
    finished row. `calibration_pairs`: the router's calibration-only pairs (None: the shipped ones). `earlier`: the
    results file this run rewrites; its rows of other methods are kept (`kept_rows`), so a method run on its own
    adds its rows to the file instead of dropping the others'."""
    work = Path(work)
    dataset = check_lifelong(config, work, overwrite)
    with files.work_lock(work):  # one bench at a time in this directory
        prep = prepare_run(config.frozen_run(), work, overwrite, dataset=dataset)
        context = replace(edit_context(config.frozen_run(), prep.dataset, work), calibration_pairs=calibration_pairs)
        setup = {**asdict(config.frozen_run()), "rounds": config.rounds, "per_round": config.per_round,
                 "methods": list(config.methods), "method_configs": config.method_configs, "data": prep.dataset.name,
                 "n_used": len(prep.dataset.requests), "filter": prep.note, "threads": torch.get_num_threads()}
        kept = kept_rows(earlier, setup)
        setup, rows = _with_kept(setup, kept, earlier), list(kept)
        for method in config.methods:
            rounds = method_rounds(method, config, prep, context, work, log, progress)
            for k in range(1, rounds.count + 1):
                rows.append(rounds.row(k))
                if on_row is not None:
                    on_row(summarise(setup, _in_order(rows, kept), prep.seconds))
        return summarise(setup, _in_order(rows, kept), prep.seconds)


# --- results ---


def add_vs_batch(rows: Sequence[dict[str, Any]], per_round: int) -> dict[str, Any] | None:
    """The last meg add (R edits into a pack of (K-1) R) against the cold one-batch fit of the same K R edits,
    both without evaluation; None until both rows exist."""
    batch = next((r for r in rows if r["method"] == BATCH), None)
    last = next((r for r in rows if r["method"] == "meg" and batch and r["edits"] == batch["edits"]), None)
    if batch is None or last is None or last["round"] < 2:
        return None
    return {"added": per_round, "pack_before": last["edits"] - per_round, "add_seconds": last["edit_seconds"],
            "batch_edits": batch["edits"], "batch_seconds": batch["edit_seconds"],
            "ratio": round(last["edit_seconds"] / batch["edit_seconds"], 4),
            "add_cpu_seconds": last["edit_cpu_seconds"], "batch_cpu_seconds": batch["edit_cpu_seconds"],
            "cpu_ratio": round(last["edit_cpu_seconds"] / max(batch["edit_cpu_seconds"], 1e-9), 4),
            "add_stage_seconds": last["stats"].get("stage_seconds"),
            "batch_stage_seconds": batch["stats"].get("stage_seconds")}


def summarise(setup: dict[str, Any], rows: Sequence[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    return {"setup": setup, "rows": list(rows), "add_vs_batch": add_vs_batch(rows, setup["per_round"]),
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def _columns(bench: dict[str, Any]) -> list[str]:
    """Methods with rows, in the bench's order; meg-batch last (it has one row, at the last round)."""
    present = {r["method"] for r in bench["rows"]}
    ordered = [m for m in bench["setup"]["methods"] if m in present]
    return [m for m in ordered if m != BATCH] + [m for m in ordered if m == BATCH]


def _matrix(bench: dict[str, Any], cell: Callable[[dict[str, Any]], Any]) -> str:
    """A rounds x methods markdown table of `cell(row)`."""
    methods, per_round = _columns(bench), bench["setup"]["per_round"]
    at = {(r["method"], r["round"]): r for r in bench["rows"]}
    rows = [[k, k * per_round, *(cell(at[m, k]) if (m, k) in at else "" for m in methods)]
            for k in range(1, bench["setup"]["rounds"] + 1)]
    return markdown_table(["round", "edits", *methods], rows)


def _describe(setup: dict[str, Any]) -> str:
    k, r = setup["rounds"], setup["per_round"]
    return (f"Model: {setup['model']}. Data: the first {k * r:,} records of {setup['data']} in file order; round k "
            f"edits records (k-1) x {r} to k x {r} - 1. After each round every edit made so far is evaluated with the "
            "paper's protocol (Rel / Gen / Loc, AG and TF, Score; `meg run`'s report lists it); round-1 = the first "
            f"{r} edits. meg: round 1 fits a pack, every later round adds the round's edits to the previous pack; "
            f"meg-batch: one fit of all {k * r:,} edits from an empty work directory (its row sits at round {k}); "
            "ft / memit / alphaedit: each round edits the model the previous round left (MEMIT with the base model's "
            "key statistics; AlphaEdit with the base model's null space and the earlier rounds' keys in its solve). "
            "Edit s = wall time of the round's fit / add / apply alone (evaluation excluded), CPU s = the process's "
            "CPU time over the same span (it does not count waiting for a busy or paused machine); one process, "
            f"{setup['threads']} torch thread(s).\n\n")


def lifelong_markdown(bench: dict[str, Any], command: str) -> str:
    setup = bench["setup"]
    table = []
    for r in bench["rows"]:
        metrics = MetricTable(**{c: r["metrics"][c] for c in COLUMNS})
        table.append([r["method"], r["round"], r["edits"], *metric_row(metrics), round(r["round1"]["rel_ag"], 2),
                      round(r["round1"]["gen_ag"] or 0, 2), r["edit_seconds"], r["edit_cpu_seconds"],
                      r["eval_seconds"]])
    title = f"# Lifelong editing: {setup['data']}, {setup['rounds']} rounds of {setup['per_round']} edits\n\n"
    text = [title, f"Command: `{command}`\n\n", _kept_commands(bench), _describe(setup),
            "## Score over every edit so far\n\n", _matrix(bench, lambda r: round(r["metrics"]["score"], 2)),
            f"\n## Round-1 retention: Rel-AG / Gen-AG of the first {setup['per_round']} edits\n\n",
            _matrix(bench, lambda r: f"{r['round1']['rel_ag']:.1f} / {r['round1']['gen_ag'] or 0:.1f}"),
            ("\nThe same for the round-1 edits still in force: those whose prompt no later edit re-edits (the later "
             "edit wins, so a correct editor answers the later target there); Rel-AG / Gen-AG (edits in force):\n\n"),
            _matrix(bench, _in_force_cell),
            "\n## Edit seconds per round, wall / CPU (evaluation excluded)\n\n",
            _matrix(bench, lambda r: f"{r['edit_seconds']:.1f} / {r['edit_cpu_seconds']:.1f}"),
            "\n## Every row (metrics over every edit so far)\n\n",
            markdown_table(["Method", "round", "edits", *HEADERS, "round-1 Rel-AG", "round-1 Gen-AG", "edit s",
                            "edit CPU s", "eval s"], table)]
    timing = bench.get("add_vs_batch")
    if timing:
        text.append(f"\n## Adding vs one batch\n\nAdding {timing['added']} edits to the {timing['pack_before']}-edit "
                    f"pack took {timing['add_seconds']:.1f} s (stages: {_stages(timing['add_stage_seconds'])}); the "
                    f"cold one-batch fit of all {timing['batch_edits']} took {timing['batch_seconds']:.1f} s (stages: "
                    f"{_stages(timing['batch_stage_seconds'])}): {100 * timing['ratio']:.1f}% of its wall time; in "
                    f"CPU seconds {timing['add_cpu_seconds']:.1f} against {timing['batch_cpu_seconds']:.1f}: "
                    f"{100 * timing['cpu_ratio']:.1f}%.\n")
    return "".join(text)


def _kept_commands(bench: dict[str, Any]) -> str:
    """Which rows earlier runs of the same measurement wrote (`kept_rows`), with their commands."""
    by_command: dict[str, list[str]] = {}
    for row in bench["rows"]:
        if row.get("command") is not None and row["method"] not in by_command.get(row["command"], []):
            by_command.setdefault(row["command"], []).append(row["method"])
    return "".join(f"Rows of {', '.join(methods)} kept from an earlier run of the same measurement: `{command}`\n\n"
                   for command, methods in by_command.items())


def _in_force_cell(row: dict[str, Any]) -> str:
    kept = row.get("round1_in_force")
    return f"{kept['rel_ag']:.1f} / {kept['gen_ag'] or 0:.1f} ({kept['edits']})" if kept else "-"


def _stages(seconds: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in (seconds or {}).items()) or "not recorded"


def _plot(axes: Any, bench: dict[str, Any]) -> None:
    for i, method in enumerate(_columns(bench)):
        rows = sorted((r for r in bench["rows"] if r["method"] == method), key=lambda r: r["edits"])
        edits, color = [r["edits"] for r in rows], f"C{i}"
        if method == BATCH:
            axes.plot(edits, [r["metrics"]["score"] for r in rows], "*", ms=12, color=color, label="meg-batch (one fit)")
            continue
        axes.plot(edits, [r["metrics"]["score"] for r in rows], "o-", color=color, label=f"{method} Score")
        axes.plot(edits, [r["round1"]["rel_ag"] for r in rows], ":", color=color, label=f"{method} round-1 Rel-AG")
    setup = bench["setup"]
    axes.set_xlabel("edits made so far")
    axes.set_ylabel("%")
    axes.set_ylim(0, 105)
    axes.legend(fontsize=6, ncol=2)
    axes.set_title(f"{setup['data']}: {setup['rounds']} rounds of {setup['per_round']} edits")


def write_lifelong(out_dir: str | Path, name: str, bench: dict[str, Any], command: str) -> dict[str, Path]:
    """`<name>.json` (every row), `<name>.md` (the tables) and `<name>.png` (Score against edits) in `out_dir`."""
    return write_results(out_dir, name, {**bench, "command": command}, lifelong_markdown(bench, command),
                         lambda axes: _plot(axes, bench))
