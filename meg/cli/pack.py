"""`meg pack ...`: look at edit packs without a model: `show` one, `diff` two, `verify` one's files.

A command group (registered in meg/cli/main.py like a command): each subcommand is a function of `group`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meg.cli.common import friendly_errors

group = typer.Typer(help="Inspect edit packs: show one, diff two, verify one.", no_args_is_help=True)

PackArgument = Annotated[Path, typer.Argument(help="edit pack directory")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


def _history_line(entry: dict[str, Any]) -> str:
    """One history entry: operation, count, date, version, and what it recomputed."""
    date = entry.get("date") or "date unknown"
    parts = [f"{entry['operation']} {entry['count']} edits", date, f"meg-edit {entry.get('meg_version')}"]
    if "generator" in entry:
        parts.append(f"generator {entry['generator']}")
    if entry.get("conflicts"):
        parts.append(f"{len(entry['conflicts'])} possible conflicts")
    if entry.get("migrated_from_format"):
        parts.append(f"migrated from format {entry['migrated_from_format']}")
    return "  " + ", ".join(parts)


def show_text(pack, path: Path) -> str:
    """Edits, ids, collection success, router calibration and the history of `pack`."""
    fitted = pack.router_fitted
    from meg.cli.summaries import id_ranges

    lines = [(f"{path}: {len(pack)} edits (ids {id_ranges(pack.ids)}, next id {pack.next_id}) for base model "
              f"{pack.base_model!r}, layer {pack.neuron.layer}, weights {pack.config.weights}"),
             f"collection: {int(pack.collection.success.sum())}/{len(pack)} collected ({pack.collection.success_rate:.1%})",
             f"router: {pack.router_name}" + (f", thresholds {fitted['thresholds']}" if "thresholds" in fitted else ""),
             f"calibration: {json.dumps(fitted.get('calibration', {}), default=str)}",
             f"history ({len(pack.history)}):", *(_history_line(e) for e in pack.history)]
    return "\n".join(lines)


@group.command("show")
@friendly_errors
def show(pack: PackArgument, as_json: JsonOption = False) -> None:
    """Edits, collection success, router calibration and the history of operations."""
    from meg.pack import EditPack

    loaded = EditPack.load(pack, trust_models=True)  # nothing named by the pack is loaded here
    if as_json:
        typer.echo(json.dumps({"edits": len(loaded), "ids": loaded.ids, "next_id": loaded.next_id,
                               "base_model": loaded.base_model, "collected": int(loaded.collection.success.sum()),
                               "router": {"name": loaded.router_name, **loaded.router_fitted},
                               "history": loaded.history}, default=str))
        return
    typer.echo(show_text(loaded, pack))


def _edit(request) -> str:
    return f"{request.prompt!r} -> {request.target!r}"


def diff_text(result: dict[str, Any], before: Path, after: Path) -> str:
    """The `meg.lifelong.diff` of two packs, one line per edit."""
    lines = [(f"{before} -> {after}: {len(result['added'])} added, {len(result['removed'])} removed, "
              f"{len(result['replaced'])} replaced")]
    if not result["same_lineage"]:
        lines.append("note: the packs do not descend from the same fit, so equal ids may name unrelated edits")
    lines += [f"+ {i}: {_edit(r)}" for i, r in result["added"]]
    lines += [f"- {i}: {_edit(r)}" for i, r in result["removed"]]
    lines += [f"~ {i}: {_edit(old)} => {_edit(new)}" for i, old, new in result["replaced"]]
    return "\n".join(lines)


@group.command("diff")
@friendly_errors
def diff(before: PackArgument, after: PackArgument, as_json: JsonOption = False) -> None:
    """Edits added, removed and replaced from the first pack to the second, by edit id."""
    from meg.lifelong import diff as pack_diff
    from meg.pack import EditPack

    result = pack_diff(EditPack.load(before, trust_models=True), EditPack.load(after, trust_models=True))
    if as_json:
        typer.echo(json.dumps({
            "added": [{"id": i, **r.to_json()} for i, r in result["added"]],
            "removed": [{"id": i, **r.to_json()} for i, r in result["removed"]],
            "replaced": [{"id": i, "before": o.to_json(), "after": n.to_json()} for i, o, n in result["replaced"]],
            "same_lineage": result["same_lineage"]}))
        return
    typer.echo(diff_text(result, before, after))


@group.command("verify")
@friendly_errors
def verify(pack: PackArgument) -> None:
    """Check every file of a pack against its manifest (size and sha256), then read it; no model is loaded."""
    from meg.pack import SHIPPED_MODELS, EditPack, named_models
    from meg.pack import verify as verify_files

    checked = verify_files(pack)
    loaded = EditPack.load(pack, trust_models=True)  # the structure: config, edits, tensor shapes
    if checked is None:
        typer.echo(f"ok: {pack} reads as a pack of {len(loaded)} edits, but it has no manifest (written before "
                   "manifests existed), so its files cannot be checked; saving it again adds one")
    else:
        typer.echo(f"ok: {pack}: {checked} files match the manifest; {len(loaded)} edits")
    foreign = {role: model for role, model in named_models(loaded.config).items() if model not in SHIPPED_MODELS}
    if foreign:
        names = ", ".join(f"{role} {model!r}" for role, model in foreign.items())
        typer.echo(f"note: the pack names {names}; using it needs --trust-pack-models "
                   f"{','.join(foreign.values())}")
