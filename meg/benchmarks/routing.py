"""`meg route-bench`: routing quality on its own, no language model needed.

For each router variant: the share of edit prompts routed to their own edit, of paraphrases routed to their own
edit, and of locality prompts routed anywhere, at the calibrated operating point and as a curve over the
router's threshold. Calibration uses only the shipped pseudo pairs and unrelated queries (disjoint from the
test data); the test paraphrases and locality prompts are only ever scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from meg.data.defaults import held_out_negatives
from meg.encoder import EncoderConfig, tuned_encoder
from meg.gate import PAPER_EPSILONS, GateConfig
from meg.prompts import normalize_answer
from meg.pseudo_edits import split_pairs
from meg.requests import EditRequest, PseudoPair
from meg.results import markdown_table, read_results, write_results
from meg.routing import RetrievalConfig, Routes, RoutingData, router_class
from meg.routing.subjects import SubjectIndex


@dataclass(frozen=True)
class RouterVariant:
    """One router setting to measure."""

    label: str
    router: str
    tuned_encoder: bool = True
    use_subjects: bool = True  # False: the edits are given without a subject field
    encoder_config: dict | None = None  # overrides of EncoderConfig fields (e.g. hard negatives)
    retrieval_config: dict | None = None  # overrides of RetrievalConfig fields
    gate_config: dict | None = None  # overrides of GateConfig fields (the paper's gate)


# Encoders: the default EncoderConfig() is InfoNCE + 6 hard negatives at T 0.05 ("hard"); "tuned" is the paper's.
_PAPER = {"hard_negatives": EncoderConfig.paper().hard_negatives, "temperature": EncoderConfig.paper().temperature}
# The cosine-scored router of 2026-11-30 (session 5): the ablations below vary one thing against it.
_COSINE = {"verifier": None, "paraphrase_recall": 0.97, "verifier_weight": 1.0}
_CAPPED = {"max_epochs": 300}  # the paper gate's CPU budget at 10,000 edits (see the -300 rows)
VARIANTS: dict[str, RouterVariant] = {
    "paper-gate/untuned": RouterVariant("paper gate, untuned encoder", "paper-gate", tuned_encoder=False),
    "paper-gate/tuned": RouterVariant("paper gate, InfoNCE encoder", "paper-gate", encoder_config=_PAPER),
    "paper-gate/hard": RouterVariant("paper gate, InfoNCE + hard negatives (the meg-gate method)", "paper-gate",
                                     ),
    # At 10,000 edits one epoch takes ~7-8 s on a CPU thread and the uncapped gates (up to 2,000 epochs) take hours
    # each (their training resumes across runs); these rows say what 300 epochs give.
    "paper-gate/untuned-300": RouterVariant("paper gate, untuned encoder, training capped at 300 epochs (a CPU "
                                            "budget; the paper trains to convergence)", "paper-gate",
                                            tuned_encoder=False, gate_config=_CAPPED),
    "paper-gate/tuned-300": RouterVariant("paper gate, InfoNCE encoder, training capped at 300 epochs", "paper-gate",
                                          encoder_config=_PAPER, gate_config=_CAPPED),
    "paper-gate/hard-300": RouterVariant("paper gate, InfoNCE + hard negatives, training capped at 300 epochs",
                                         "paper-gate", gate_config=_CAPPED),
    # The paper's operating point: its encoder tuning and a fixed epsilon (meg.gate.PAPER_EPSILONS), not calibrated.
    **{f"paper-gate/tuned-eps{eps:g}": RouterVariant(f"paper gate, InfoNCE encoder, fixed epsilon {eps:g} ({name})",
                                                     "paper-gate", encoder_config=_PAPER, gate_config={"epsilon": eps})
       for name, eps in PAPER_EPSILONS.items()},
    "retrieval/default": RouterVariant("subject-verified retrieval as configured by default (RetrievalConfig(), "
                                       "hard-negative encoder)", "retrieval"),
    "retrieval/no-veto": RouterVariant("the default router without the verifier's veto (RetrievalConfig.verifier_veto "
                                       "null, the default before 2026-12-02)", "retrieval",
                                       retrieval_config={"verifier_veto": None}),
    "retrieval/no-relation-veto": RouterVariant("the default router without the relation veto "
                                                "(RetrievalConfig.relation_veto false, the default before 2026-12-02)",
                                                "retrieval", retrieval_config={"relation_veto": False}),
    "retrieval/veto5": RouterVariant("the default router, verifier_veto 0.05", "retrieval",
                                     retrieval_config={"verifier_veto": 0.05}),
    "inferred/default": RouterVariant("the default router with edits given WITHOUT subjects: subjects guessed from "
                                      "the prompts (meg.routing.subjects.infer_subject)", "retrieval",
                                      use_subjects=False),
    "nearest/tuned": RouterVariant("retrieval with edits given WITHOUT subjects (nearest edit + calibrated cosine), "
                                   "InfoNCE encoder", "retrieval", use_subjects=False, encoder_config=_PAPER,
                                   retrieval_config={"infer_subjects": False}),
    "nearest/hard": RouterVariant("retrieval with edits given WITHOUT subjects (nearest edit + calibrated cosine), "
                                  "hard-negative encoder", "retrieval", use_subjects=False,
                                  retrieval_config={"infer_subjects": False}),
    "retrieval/hard": RouterVariant("cosine-scored subject-verified retrieval, 97% of held-out pairs, InfoNCE + 6 "
                                    "hard negatives (T 0.05)", "retrieval",
                                    retrieval_config=_COSINE),
    "retrieval/tuned": RouterVariant("cosine-scored retrieval (as retrieval/hard), InfoNCE encoder", "retrieval",
                                     encoder_config=_PAPER, retrieval_config=_COSINE),
    "retrieval/untuned": RouterVariant("cosine-scored retrieval (as retrieval/hard), untuned encoder", "retrieval",
                                       tuned_encoder=False, retrieval_config=_COSINE),
    "retrieval/hard2": RouterVariant("cosine-scored retrieval (as retrieval/hard), InfoNCE + 2 hard negatives",
                                     "retrieval", encoder_config={"hard_negatives": 2, "temperature": 0.05},
                                     retrieval_config=_COSINE),
    "retrieval/exact": RouterVariant("retrieval/hard with exact subject naming only", "retrieval",
                                     retrieval_config={**_COSINE, "approximate_subjects": None}),
    "retrieval/unmasked": RouterVariant("retrieval/hard with plain cosine (no subject-masked share)", "retrieval",
                                        retrieval_config={**_COSINE, "masked_weight": 0.0}),
    "retrieval/uniform": RouterVariant("retrieval/hard with plain cosine and the threshold from all held-out pairs "
                                       "equally", "retrieval",
                                       retrieval_config={**_COSINE, "matched_calibration": False,
                                                         "masked_weight": 0.0}),
    "retrieval/nofloor": RouterVariant("retrieval/hard with the free-path threshold from the unrelated queries alone "
                                       "(no paraphrase-pair floor)", "retrieval",
                                       retrieval_config={**_COSINE, "free_floor": False}),
    "retrieval/r98": RouterVariant("retrieval/hard with thresholds keeping 98% of the held-out pairs", "retrieval",
                                   retrieval_config={**_COSINE, "paraphrase_recall": 0.98}),
    "retrieval/verifier": RouterVariant("retrieval/hard, the nearest candidate confirmed by the cross-encoder "
                                        "verifier (meg/routing/verifier.py)", "retrieval",
                                        retrieval_config={**_COSINE, "verifier": {}}),
    "retrieval/verifier98": RouterVariant("retrieval/verifier with thresholds keeping 98% of the held-out pairs",
                                          "retrieval",
                                          retrieval_config={**_COSINE, "verifier": {}, "paraphrase_recall": 0.98}),
    "retrieval/blend50": RouterVariant("retrieval/verifier98 scoring the mean of the verifier's and the cosine's "
                                       "ranks among the held-out pairs", "retrieval",
                                       retrieval_config={**_COSINE, "verifier": {}, "paraphrase_recall": 0.98,
                                                         "verifier_weight": 0.5}),
}


def variant_configs(variant: RouterVariant) -> tuple[EncoderConfig, RetrievalConfig]:
    """The encoder and retrieval settings a variant stands for (defaults with its overrides)."""
    encoder = EncoderConfig(**{**EncoderConfig().to_dict(), "tune": variant.tuned_encoder,
                               **(variant.encoder_config or {})})
    retrieval = RetrievalConfig.from_dict({**RetrievalConfig().to_dict(), **(variant.retrieval_config or {})})
    return encoder, retrieval


def _settings(variant: RouterVariant, calibration_pairs: int = 0) -> dict[str, Any]:
    """What a stored row must match to be reused: the definition, the settings it resolved to and, for retrieval
    routers (which calibrate on pairs), the number of calibration-only pairs."""
    encoder, retrieval = variant_configs(variant)
    definition = {k: v for k, v in asdict(variant).items() if not (k == "gate_config" and v is None)}  # older rows
    settings = {"variant": definition, "encoder": encoder.to_dict(), "retrieval": retrieval.to_dict()}
    if variant.router == "retrieval":
        settings["calibration_only_pairs"] = calibration_pairs
    return settings


@dataclass
class QuerySets:
    """The scored query sets: edit prompts and locality prompts (row i belongs to edit i), and the first
    paraphrase of the edits that have one (`paraphrase_rows`: their edit rows)."""

    edits: list[str]
    paraphrases: list[str]
    locality: list[str]
    paraphrase_rows: list[int]


def query_sets(requests: Sequence[EditRequest]) -> QuerySets:
    rows = [i for i, r in enumerate(requests) if r.paraphrases]
    return QuerySets([r.prompt for r in requests], [requests[i].paraphrases[0] for i in rows],
                     [r.unrelated[0] for r in requests], rows)


def conflicting_locality(requests: Sequence[EditRequest]) -> torch.Tensor:
    """(N,) bool: locality prompt i asks about a fact the edit set itself changes, so a correct router SHOULD
    route it although the benchmark scores it as unrelated.

    A locality prompt conflicts when it repeats an edit prompt, or names (whole words) the subject of an edit
    whose true answer is the locality prompt's own expected answer: the same subject and the same answer is the
    same fact asked in other words ("The constellation of Tau Herculis is" vs the edit "In which constellation
    is Tau Herculis?"). Needs `ground_truth` and `unrelated_answers`; a prompt whose answer is unknown conflicts
    only by repetition, and an edit without a locality prompt (some KnowEdit records) never does. Used for reporting
    only, never for calibration.
    """
    index = SubjectIndex([r.subject for r in requests], [r.prompt for r in requests])
    truths = [normalize_answer(r.ground_truth) if r.ground_truth else None for r in requests]
    prompts = {r.prompt.strip().lower() for r in requests}
    locality = [r.unrelated[0] if r.unrelated else "" for r in requests]
    named = index.named_in(locality)
    out = torch.zeros(len(requests), dtype=torch.bool)
    for i, r in enumerate(requests):
        answer = normalize_answer(r.unrelated_answers[0]) if r.unrelated_answers else ""
        same_fact = bool(answer) and any(truths[j] == answer for j in named[i])
        out[i] = bool(locality[i]) and (same_fact or locality[i].strip().lower() in prompts)
    return out


def fact_groups(requests: Sequence[EditRequest]) -> torch.Tensor:
    """(N,) long: edits that change the same fact (same subject and same true answer, e.g. KnowEdit's ZsRE file
    edits "What constellation is home to Butterfly Cluster?" and "What is the constellation where Butterfly
    Cluster is located?" separately) share a group; an edit without subject or true answer is its own group."""
    keys: dict[tuple[str, str], int] = {}
    groups = []
    for i, r in enumerate(requests):
        key = (r.subject.strip().lower(), normalize_answer(r.ground_truth)) if r.subject and r.ground_truth else ("", str(i))
        groups.append(keys.setdefault(key, len(keys)))
    return torch.tensor(groups, dtype=torch.long)


def rates(routes: dict[str, Routes], conflicting: torch.Tensor | None = None, facts: torch.Tensor | None = None,
          paraphrase_rows: Sequence[int] | None = None) -> dict[str, float | None]:
    """Percentages: edit prompts / paraphrases routed to their OWN edit, locality prompts routed at all; with
    `conflicting` (N,), also the locality prompts routed among the clean (non-conflicting) ones; with `facts`
    (N,), also the paraphrases routed to an edit of their own fact (their edit or a duplicate of it).
    `paraphrase_rows`: the edit row of each paraphrase (default: row i is edit i's); None rates when there are
    no paraphrases (KnowEdit's WikiData files have none)."""
    edits = routes["edits"]
    out = {"edit_own": 100.0 * float((edits.routed & (edits.edit == torch.arange(len(edits.edit)))).double().mean()),
           "locality_routed": 100.0 * float(routes["locality"].routed.double().mean()), "paraphrase_own": None}
    r = routes["paraphrases"]
    own = torch.arange(len(r.edit)) if paraphrase_rows is None else torch.as_tensor(paraphrase_rows, dtype=torch.long)
    if len(own):
        out["paraphrase_own"] = 100.0 * float((r.routed & (r.edit == own)).double().mean())
        if facts is not None:
            same = r.routed & (facts[r.edit.clamp_min(0)] == facts[own])
            out["paraphrase_own_fact"] = 100.0 * float(same.double().mean())
    if conflicting is not None and bool((~conflicting).any()):
        out["locality_routed_clean"] = 100.0 * float(routes["locality"].routed[~conflicting].double().mean())
    return out


def _measure(router, sets: QuerySets, embed, conflicting: torch.Tensor, facts: torch.Tensor) -> dict[str, Any]:
    texts = {name: t for name, t in (("edits", sets.edits), ("paraphrases", sets.paraphrases),
                                     ("locality", sets.locality)) if t}
    emb = {name: embed(t) for name, t in texts.items()}
    none = Routes(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    point = rates({"paraphrases": none, **{name: router.route(texts[name], emb[name]) for name in texts}},
                  conflicting, facts, sets.paraphrase_rows)
    curves = {name: router.curve(texts[name], emb[name]) for name in texts}
    curve = [{"threshold": value, **rates({"paraphrases": none, **{name: curves[name][i][1] for name in texts}},
                                          conflicting, facts, sets.paraphrase_rows)}
             for i, (value, _) in enumerate(curves["edits"])]
    return {"operating_point": point, "curve": curve}


def bench_variant(variant: RouterVariant, requests: Sequence[EditRequest], pairs: Sequence[PseudoPair],
                  unrelated: Sequence[str], work: Path | None, progress: bool = True,
                  calibration: Sequence[PseudoPair] = ()) -> dict[str, Any]:
    """Fit one router variant on the edits (calibrating on `unrelated`, the pairs held out of `pairs` and the
    calibration-only pairs `calibration`) and score the three query sets."""
    encoder_config, retrieval = variant_configs(variant)
    start = time.perf_counter()
    tune_pairs, held_out = split_pairs(pairs)
    calibration_pairs = held_out + list(calibration)
    encoder, _ = tuned_encoder(encoder_config, tune_pairs, work, progress=progress)
    embed = lambda texts: encoder.encode(list(texts), progress=False)  # noqa: E731 (a one-line closure)
    edits = requests if variant.use_subjects else [replace(r, subject=None) for r in requests]
    data = RoutingData([r.prompt for r in edits], embed([r.prompt for r in edits]), [r.subject for r in edits],
                       list(unrelated), embed(unrelated), calibration_pairs, tune_pairs, embed, work,
                       held_out_negatives(list(requests)))
    gate = GateConfig.from_dict({**GateConfig().to_dict(), **(variant.gate_config or {})})
    fit_start = time.perf_counter()
    router = router_class(variant.router).fit(data, gate if variant.router == "paper-gate" else retrieval, progress)
    fit_seconds = time.perf_counter() - fit_start
    result = _measure(router, query_sets(requests), embed, conflicting_locality(requests), fact_groups(requests))
    record = router.fitted()
    training = record.pop("training", None)  # the paper gate's log: epochs, final loss, accuracy, and losses
    if training:
        record["training"] = {k: v for k, v in training.items() if k != "losses"}
    return {**_settings(variant, len(calibration)), **result, "calibration": record,
            "fit_seconds": round(fit_seconds, 2), "seconds": round(time.perf_counter() - start, 2)}


def usable_requests(requests: Sequence[EditRequest]) -> list[EditRequest]:
    """The requests route-bench scores: those with an unrelated prompt (paraphrases are scored where given)."""
    return [r for r in requests if r.unrelated]


def route_bench(requests: Sequence[EditRequest], variants: Sequence[str], pairs: Sequence[PseudoPair],
                unrelated: Sequence[str], work: Path | None, progress: bool = True,
                previous: dict[str, Any] | None = None,
                checkpoint: Callable[[dict[str, Any]], None] | None = None,
                stamp: dict[str, Any] | None = None, fresh: bool = False,
                calibration: Sequence[PseudoPair] = ()) -> dict[str, Any]:
    """Every variant on the same edits; requests lacking an unrelated prompt are skipped.

    `previous` holds variant results of an earlier run on the same edits (a results file's "variants"): a
    requested variant found there with the same definition is not measured again, and the others are kept, so
    an interrupted or extended bench loses nothing; `fresh` measures every requested variant again (the others
    are still kept). `checkpoint` receives the bench after every variant; `stamp` (e.g. the command and date) is
    stored with each variant measured now.
    """
    usable = usable_requests(requests)
    taken = {r.prompt for r in usable} | {r.paraphrases[0] for r in usable if r.paraphrases}
    taken |= {r.unrelated[0] for r in usable}
    pairs = [p for p in pairs if p.question not in taken and p.paraphrase not in taken]
    calibration = [p for p in calibration if p.question not in taken and p.paraphrase not in taken]
    unrelated = [q for q in unrelated if q not in taken]
    bench = {"n": len(usable), "pseudo_pairs": len(pairs), "calibration_queries": len(unrelated),
             "conflicting_locality": int(conflicting_locality(usable).sum()),
             "facts_edited_more_than_once": int(fact_groups(usable).bincount().gt(1).sum()),
             "variants": dict(previous or {})}
    for name in variants:
        done = bench["variants"].get(name)
        settings = _settings(VARIANTS[name], len(calibration))
        if not fresh and done is not None and all(done.get(k) == v for k, v in settings.items()):
            continue  # measured before with the same definition and settings (a resumed or extended run)
        result = bench_variant(VARIANTS[name], usable, pairs, unrelated, work, progress, calibration)
        bench["variants"][name] = {**result, **(stamp or {})}
        if checkpoint is not None:
            checkpoint(bench)
    return bench


def previous_variants(out_dir: str | Path, name: str, data: str, n: int) -> dict[str, Any]:
    """Variant results of an earlier route-bench in `out_dir/name` on the same data set and N (else {}); rows of
    variants no longer defined are dropped, rows written before commands were stored per row get the file's."""
    earlier = read_results(out_dir, name)
    if not earlier or earlier.get("setup", {}).get("data") != data or earlier.get("n") != n:
        return {}
    command = earlier["setup"].get("command")
    return {key: {"command": command, **result} for key, result in earlier.get("variants", {}).items()
            if key in VARIANTS}


def _calibration_pairs(result: dict[str, Any]) -> str:
    """Held-out pairs a retrieval row was calibrated on ("-" for routers that calibrate on unrelated queries only)."""
    count = result.get("calibration", {}).get("calibration", {}).get("paraphrase_pairs")
    return "-" if count is None else str(count)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_route_bench(out_dir: str | Path, name: str, bench: dict[str, Any], setup: dict[str, Any]) -> dict[str, Path]:
    rows = []
    for key, result in bench["variants"].items():
        p = result["operating_point"]
        optional = [p.get(k) for k in ("paraphrase_own_fact", "locality_routed_clean")]
        label = VARIANTS[key].label if key in VARIANTS else result["variant"]["label"]  # today's wording
        rows.append([key, label, f"{p['edit_own']:.1f}", _percent(p.get("paraphrase_own")),
                     _percent(optional[0]), f"{p['locality_routed']:.1f}", _percent(optional[1]),
                     _calibration_pairs(result),
                     result.get("measured", "-"), result["fit_seconds"]])
    table = markdown_table(["router", "setting", "edit prompts -> own edit %", "paraphrases -> own edit %",
                            "paraphrases -> own fact %", "locality routed %", "clean locality routed %",
                            "calibration pairs", "measured", "fit s"], rows)
    conflicting = bench.get("conflicting_locality", 0)
    commands = list(dict.fromkeys(r.get("command", setup["command"]) for r in bench["variants"].values()))
    measured_by = "".join(f"- `{c}`\n" for c in commands)
    header = (f"# Routing: {setup['data']} (N = {bench['n']})\n\nRows measured by (each row's command is in the "
              f"JSON):\n\n{measured_by}\n"
              f"Calibration: {bench['calibration_queries']} shipped unrelated queries, {bench['pseudo_pairs']} shipped "
              f"pseudo pairs (the 10% not used for tuning are held out for calibration) and, in rows whose "
              f"'calibration pairs' exceed those, the shipped calibration-only pairs; all disjoint from the test data; "
              f"target unrelated routing rate 2%.\n\n"
              f"Conflicting locality prompts: {conflicting} of {bench['n']} ({100 * conflicting / bench['n']:.1f}%) ask "
              "about a fact the edit set itself changes (they repeat an edit prompt, or name an edited subject and "
              "expect that edit's true answer), so a correct router routes them; 'clean' leaves them out "
              "(meg.benchmarks.routing.conflicting_locality).\n\n"
              f"Facts edited more than once: {bench.get('facts_edited_more_than_once', 0)} (same subject and true answer "
              "under differently worded prompts); 'own fact' counts a paraphrase routed to any edit of its fact "
              "(meg.benchmarks.routing.fact_groups).\n\n")

    def draw(axes) -> None:
        x = "locality_routed_clean" if bench.get("conflicting_locality") else "locality_routed"
        y = "paraphrase_own" if all(r["operating_point"].get("paraphrase_own") is not None
                                    for r in bench["variants"].values()) else "edit_own"
        for key, result in bench["variants"].items():
            curve = result["curve"]
            axes.plot([c[x] for c in curve], [c[y] for c in curve], label=key)
            p = result["operating_point"]
            axes.scatter([p[x]], [p[y]], marker="o")
        axes.axvline(2.0, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("clean locality prompts routed (%)" if x.endswith("clean") else "locality prompts routed (%)")
        axes.set_ylabel(f"{'paraphrases' if y == 'paraphrase_own' else 'edit prompts'} routed to their own edit (%)")
        axes.set_xscale("symlog", linthresh=1.0)
        axes.set_xlim(left=0)
        axes.legend(fontsize=7)
        axes.set_title(f"routing, {setup['data']}, N = {bench['n']} (dots: calibrated points)")

    return write_results(out_dir, name, {"setup": setup, **bench}, header + table, draw)
