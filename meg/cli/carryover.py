"""`meg carryover`: how often an edit's collected neuron makes a rephrasing of its question give the new answer
(the oracle of Generality), and why it fails (answer length, subject wording, how strongly the neuron fires)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, NOption, TrustModelsOption,
    check_count, check_model_device, check_out, check_stem, command_line, friendly_errors, load_data, trusted_models,
)


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack directory (its edits' collected vectors are the oracle)")],
    data: DataOption = None,
    n: NOption = None,
    model: ModelOption = "reference",
    skip_invalid: Annotated[bool, typer.Option(help="drop invalid records of the data file")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="greedy decoding budget")] = 20,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: carryover-<data>)")] = None,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Run every rephrasing of the pack's edits in --data (paraphrases; KnowEdit's subject aliases) with the edit's
    own collected neuron and with the pack; write JSON + markdown + PNG."""
    from meg.benchmarks.carryover import measure, rephrasings, write_carryover
    from meg.data.knowedit import subject_aliases
    from meg.edited_model import EditedModel
    from meg.errors import InputError
    from meg.models import load_causal_lm
    from meg.pack import EditPack

    check_count(max_new_tokens, "--max-new-tokens")
    check_out(out, "--out")
    check_stem(name)
    check_model_device(model, device)
    dataset = load_data(data, n, skip_invalid)
    aliases = subject_aliases(dataset.path) if dataset.kind == "knowedit" else {}
    loaded = EditPack.load(pack, trust_models=trusted_models(trust_pack_models))
    cases = rephrasings(loaded.requests, dataset.requests, aliases)
    if not cases:
        raise InputError(f"--data {data}: none of its records is an edit of --pack {pack} with a paraphrase or a "
                         "subject alias")
    lm, tokenizer = load_causal_lm(model, device=device)
    edited = EditedModel(lm, tokenizer, loaded)
    records = measure(lm, tokenizer, loaded.neuron, loaded.template, loaded.collection.vectors, loaded.requests, cases,
                      edited, max_new_tokens)
    description = (f"model {model}, pack {pack} ({len(loaded.requests)} edits, neuron at layer {loaded.neuron.layer}), "
                   f"data {dataset.name}: {len(cases)} rephrasings of {len({c.edit for c in cases})} edits")
    stem = name or f"carryover-{dataset.name}"
    paths = write_carryover(out, stem, records, {"command": command_line(), "description": description})
    typer.echo(Path(paths["md"]).read_text())
