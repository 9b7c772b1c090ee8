"""`meg edit`: compile an edit file into an edit pack for a base model (the paper's four stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import DeviceOption, ModelOption, friendly_errors, read_config

EditsOption = Annotated[Path, typer.Option("--edits", "-e", help="JSONL edits (prompt, target, optional subject, "
                                           "paraphrases, unrelated) or a CounterFact / ZsRE / KnowEdit file")]


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
    edits: EditsOption,
    out: Annotated[Path, typer.Option(help="pack directory to write")],
    model: ModelOption = "reference",
    pseudo_pairs: Annotated[Path | None, typer.Option(help="JSONL (question, paraphrase) pairs for the encoder")] = None,
    unrelated: Annotated[Path | None, typer.Option(help="JSONL unrelated queries (prompt) for calibration")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of MegConfig fields")] = None,
    template: Annotated[str | None, typer.Option(help="prompt template with {prompt}, or a data-set name")] = None,
    layer: Annotated[int | None, typer.Option(help="FFN layer of the neuron (default: the architecture's)")] = None,
    router: Annotated[str | None, typer.Option(help="router: retrieval or paper-gate")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="keep resumable intermediate files here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing pack")] = False,
    device: DeviceOption = "cpu",
    help_config: HelpConfigOption = False,
) -> None:
    """Fit MeG on the edits and save the pack."""
    from meg.cli.summaries import pack_summary
    from meg.data import load_dataset
    from meg.editor import MegEditor
    from meg.models import load_causal_lm
    from meg.requests import load_pseudo_pairs, load_queries

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    settings = read_config(config, layer=layer, router=router)
    dataset = load_dataset(edits, template=template)
    lm, tokenizer = load_causal_lm(model, device=device)
    pairs = load_pseudo_pairs(pseudo_pairs) if pseudo_pairs else None
    queries = load_queries(unrelated) if unrelated else None
    editor = MegEditor(lm, tokenizer, settings, dataset.template, model_name=model)
    pack = editor.fit(dataset.requests, pairs, queries, work_dir)
    pack.save(out, overwrite=overwrite)
    typer.echo(pack_summary(pack, out))
