"""`meg generate`: answer prompts with an edit pack applied (batched; each row its own route and neuron)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DeviceOption, ModelOption, TrustModelsOption,
    check_count, check_file, check_model_device, check_prompts_fit, friendly_errors, trusted_models,
)


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack directory")],
    prompt: Annotated[list[str] | None, typer.Option(help="a raw query; repeat for several")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="a text file with one query per line")] = None,
    model: ModelOption = "reference",
    max_new_tokens: Annotated[int, typer.Option(help="greedy decoding budget")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of a table")] = False,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Greedy answers, with each row's route and router score."""
    from meg.cli.summaries import answers_table
    from meg.edited_model import EditedModel
    from meg.errors import InputError
    from meg.files import read_text
    from meg.models import load_causal_lm
    from meg.pack import EditPack

    check_count(max_new_tokens, "--max-new-tokens")
    prompts = list(prompt or [])
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise InputError(f"--prompt number {empty[0] + 1} is empty; give the text of a query")
    if check_file(prompts_file, "--prompts-file") is not None:
        prompts += [line for line in read_text(prompts_file, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise InputError("give at least one --prompt or a --prompts-file with a query per line")
    check_model_device(model, device)
    loaded = EditPack.load(pack, trust_models=trusted_models(trust_pack_models))  # checked before the model loads
    check_prompts_fit(model, [loaded.template.format(p) for p in prompts], [f"prompt {i}" for i in range(len(prompts))],
                      max_new_tokens)
    lm, tokenizer = load_causal_lm(model, device=device)
    edited = EditedModel(lm, tokenizer, loaded)
    outputs, details = edited.generate(prompts, max_new_tokens), edited.describe(prompts)
    if as_json:
        for p, o, d in zip(prompts, outputs, details):
            typer.echo(json.dumps({"prompt": p, "output": o, **d}, ensure_ascii=False))
    else:
        typer.echo(answers_table(prompts, outputs, details))
