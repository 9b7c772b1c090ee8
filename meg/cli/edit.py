"""`meg edit`: compile an edit file into an edit pack for a base model (the paper's four stages), or change an
existing pack (`--pack P --add / --replace / --remove FILE`, recomputing only what the change needs: meg/lifelong.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DeviceOption, DtypeOption, SkipInvalidOption, TrustModelsOption,
    check_count, check_dtype, check_edits_fit, check_file, check_layers, check_model_device, check_out, friendly_errors,
    read_config, trusted_models,
)

EditsOption = Annotated[Path | None, typer.Option("--edits", "-e", help="JSONL edits (prompt, target, optional "
                                                  "subject, paraphrases, unrelated) or a CounterFact / ZsRE / "
                                                  "KnowEdit file")]
PackOption = Annotated[Path | None, typer.Option(help="an existing pack to change with --add, --replace or --remove "
                                                 "(written to --out; the pack itself is left as it is)")]


def _print_config_help(value: bool) -> None:
    """--help-config: every MegConfig setting with its type, default and help, then exit."""
    if value:
        from meg.config import MegConfig

        typer.echo("MegConfig settings (JSON keys of --config; nested settings as objects):")
        typer.echo("\n".join(f"  {line}" for line in MegConfig.help_lines()))
        raise typer.Exit()


HelpConfigOption = Annotated[bool, typer.Option("--help-config", is_eager=True, callback=_print_config_help,
                                                help="list every setting of --config and exit")]


@friendly_errors
def command(
    out: Annotated[Path, typer.Option(help="pack directory to write")],
    edits: EditsOption = None,
    pack: PackOption = None,
    add: Annotated[Path | None, typer.Option(help="with --pack: edits to add (a prompt already edited is "
                                             "replaced)")] = None,
    replace: Annotated[Path | None, typer.Option(help="with --pack: new targets for edited prompts")] = None,
    remove: Annotated[Path | None, typer.Option(help="with --pack: JSONL of edit ids or prompts to remove")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hugging Face id or path of a causal LM; "
                                              "'reference' = the shipped model (default; with --pack: the pack's "
                                              "base model)")] = None,
    pseudo_pairs: Annotated[Path | None, typer.Option(help="JSONL (question, paraphrase) pairs for the encoder")] = None,
    unrelated: Annotated[Path | None, typer.Option(help="JSONL unrelated queries (prompt) for calibration")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of MegConfig fields")] = None,
    template: Annotated[str | None, typer.Option(help="prompt template with {prompt}, or a data-set name")] = None,
    layer: Annotated[int | None, typer.Option(help="FFN layer of the neuron (default: the architecture's)")] = None,
    router: Annotated[str | None, typer.Option(help="router: retrieval or paper-gate")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="keep resumable intermediate files here (default: the user "
                                                  "cache, see `meg cache ls`); one process at a time")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing pack (only an edit pack or an empty "
                                            "directory is ever replaced)")] = False,
    skip_invalid: SkipInvalidOption = False,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    help_config: HelpConfigOption = False,
) -> None:
    """Fit MeG on the edits and save the pack, or add, replace or remove edits of an existing pack."""
    from meg.cli.summaries import operation_summary, pack_summary
    from meg.data import load_dataset
    from meg.distributed import ranks
    from meg.editor import MegEditor
    from meg.files import check_output_dir
    from meg.models import load_causal_lm
    from meg.requests import load_pseudo_pairs, load_queries

    check_output_dir(out, overwrite)  # before any work: a finished fit is never thrown away for a bad --out
    changes = {"--add": add, "--replace": replace, "--remove": remove}
    given = [name for name, path in changes.items() if path is not None]
    _check_mode(edits, pack, given, {"--config": config, "--template": template, "--layer": layer, "--router": router})
    check_count(layer, "--layer", minimum=0)  # a negative layer would count from the end without a word
    for path, option in ((edits, "--edits"), (pseudo_pairs, "--pseudo-pairs"), (unrelated, "--unrelated"),
                         (config, "--config"), (add, "--add"), (replace, "--replace"), (remove, "--remove")):
        check_file(path, option)
    check_out(work_dir, "--work-dir")
    check_model_device(model or "reference", device)
    check_dtype(dtype, device)
    group = ranks()  # under `accelerate launch`: every process fits its share, rank 0 writes the pack
    device = group.device(device)
    pairs = load_pseudo_pairs(pseudo_pairs) if pseudo_pairs else None
    queries = load_queries(unrelated) if unrelated else None
    if pack is None:
        settings = read_config(config, layer=layer, router=router)
        dataset = load_dataset(edits, template=template, skip_invalid=skip_invalid)
        check_layers(model or "reference", [settings.layer], "--layer" if layer is not None else "--config layer")
        check_edits_fit(model or "reference", dataset.requests, dataset.template, edits)
        with _holding(work_dir):  # a second process on --work-dir is refused (or waits) before the model loads
            lm, tokenizer = load_causal_lm(model or "reference", dtype=dtype, device=device)
            editor = MegEditor(lm, tokenizer, settings, dataset.template, model_name=model or "reference",
                               precision=dtype)
            fitted = editor.fit(dataset.requests, pairs, queries, work_dir, progress=group.main)
        if group.main:
            fitted.save(out, overwrite=overwrite)
            typer.echo(pack_summary(fitted, out))
        return
    from meg.lifelong import plan_add, plan_remove, read_removals
    from meg.pack import EditPack

    before = EditPack.load(pack, trust_models=trusted_models(trust_pack_models))
    # the change is read and planned before the model is loaded, so a bad file or an unknown edit costs nothing
    removals = read_removals(remove) if remove is not None else None
    requests = load_dataset(add or replace, skip_invalid=skip_invalid).requests if removals is None else None
    if removals is not None:
        plan_remove(before.requests, before.ids, before.next_id, removals)
    else:
        plan_add(before.requests, before.ids, before.next_id, requests, "add" if add is not None else "replace")
        check_edits_fit(model or before.base_model, requests, before.template, add or replace)
    with _holding(work_dir):
        lm, tokenizer = load_causal_lm(model or before.base_model, dtype=dtype, device=device)
        editor = MegEditor(lm, tokenizer, before.config, before.template, model_name=before.base_model,
                           precision=dtype)
        options = {"pseudo_pairs": pairs, "unrelated": queries, "work_dir": work_dir, "progress": group.main}
        if removals is not None:
            after = editor.remove(before, removals, **options)
        else:
            after = (editor.add if add is not None else editor.replace)(before, requests, **options)
    if group.main:
        after.save(out, overwrite=overwrite)
        typer.echo(operation_summary(after, out))


def _holding(work_dir: Path | None):
    """The --work-dir lock for the whole command (the editor's own lock on it is re-entrant)."""
    from contextlib import nullcontext

    from meg.files import work_lock

    return work_lock(work_dir) if work_dir is not None else nullcontext()


def _check_mode(edits: Path | None, pack: Path | None, changes: list[str], fit_only: dict[str, object]) -> None:
    """Either --edits (a fit) or --pack with one of --add / --replace / --remove; fit settings only for a fit."""
    from meg.errors import InputError

    if pack is None:
        if changes:
            raise InputError(f"{changes[0]} changes an existing pack: give it with --pack (and no --edits)")
        if edits is None:
            raise InputError("give --edits FILE to fit a pack, or --pack P with --add, --replace or --remove FILE")
        return
    if edits is not None:
        raise InputError("--edits fits a new pack; to change --pack use --add, --replace or --remove")
    if len(changes) != 1:
        raise InputError(f"--pack needs exactly one of --add, --replace, --remove (got {len(changes) or 'none'})")
    given = [name for name, value in fit_only.items() if value is not None]
    if given:
        raise InputError(f"{given[0]} sets up a fit; a changed pack keeps the settings it was fitted with")
