"""`meg generate`: answer prompts with an edit pack applied (batched; each row its own route and neuron)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import DeviceOption, ModelOption, friendly_errors


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack directory")],
    prompt: Annotated[list[str] | None, typer.Option(help="a raw query; repeat for several")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="a text file with one query per line")] = None,
    model: ModelOption = "reference",
    max_new_tokens: Annotated[int, typer.Option(help="greedy decoding budget")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of a table")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Greedy answers, with each row's route and router score."""
    from meg.cli.summaries import answers_table
    from meg.edited_model import EditedModel
    from meg.errors import InputError
    from meg.models import load_causal_lm

    prompts = list(prompt or [])
    if prompts_file is not None:
        prompts += [line for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InputError("give at least one --prompt or a --prompts-file")
    lm, tokenizer = load_causal_lm(model, device=device)
    edited = EditedModel.from_pretrained(lm, tokenizer, str(pack))
    outputs, details = edited.generate(prompts, max_new_tokens), edited.describe(prompts)
    if as_json:
        for p, o, d in zip(prompts, outputs, details):
            typer.echo(json.dumps({"prompt": p, "output": o, **d}, ensure_ascii=False))
    else:
        typer.echo(answers_table(prompts, outputs, details))
