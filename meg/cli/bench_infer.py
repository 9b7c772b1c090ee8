"""`meg bench-infer`: what an edit pack adds to a query, as edited/base time ratios (meg.benchmarks.inference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DataOption, DeviceOption, ModelOption, TrustModelsOption,
    check_choice, check_count, check_file, check_model_device, check_out, check_stem, command_line, friendly_errors,
    load_data, parse_ints, split_names, trusted_models,
)


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack directory (made for --model)")],
    data: DataOption = None,
    model: ModelOption = "reference",
    stand_ins: Annotated[str, typer.Option(help="comma-separated random-weight stand-ins to time too "
                                                "(gpt2-medium-shape, llama-1b-shape), or 'none'")] = "none",
    batches: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,16",
    caches: Annotated[str, typer.Option(help="comma-separated: cold (nothing cached), precomputed (every edit's "
                                             "vector ready, queries not seen), warm (queries seen)")
                      ] = "cold,precomputed,warm",
    methods: Annotated[str, typer.Option(help="meg (the pack as saved), knn (its collected vectors)")] = "meg,knn",
    prompts_per_batch: Annotated[int, typer.Option(help="prompts per cell = this x the batch size, at most "
                                                        "--max-prompts")] = 8,
    max_prompts: Annotated[int, typer.Option(help="cap on prompts per cell")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="greedy decoding budget (paper's AG protocol: 20)")] = 20,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    name: Annotated[str, typer.Option(help="results file stem")] = "inference-cost",
    seed: Annotated[int, typer.Option(help="seed of the prompt sample and the stand-ins' weights")] = 0,
    own_model: Annotated[bool, typer.Option("--model-rows/--no-model-rows", help="time --model itself (off: only "
                                            "the stand-ins, whose tokenizer is still --model's)")] = True,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Time base and edited decoding alternately on three query streams; write JSON + markdown + PNG."""
    from meg.benchmarks import inference
    from meg.errors import InputError
    from meg.models import load_causal_lm
    from meg.pack import EditPack

    sizes = parse_ints(batches, "--batches", minimum=1)
    cache_states = [check_choice(c, ("cold", "precomputed", "warm"), "--caches")
                    for c in split_names(caches, "--caches")]
    kinds = [check_choice(m, ("meg", "knn"), "--methods") for m in split_names(methods, "--methods")]
    shapes = [] if stand_ins.strip() == "none" else [check_choice(s, tuple(inference.STAND_INS), "--stand-ins")
                                                     for s in split_names(stand_ins, "--stand-ins")]
    if not own_model and not shapes:
        raise InputError("--no-model-rows needs --stand-ins: there would be nothing to time")
    for value, option in ((prompts_per_batch, "--prompts-per-batch"), (max_prompts, "--max-prompts"),
                          (max_new_tokens, "--max-new-tokens")):
        check_count(value, option)
    check_out(out, "--out")
    check_stem(name)
    check_file(data, "--data")
    check_model_device(model, device)
    loaded = EditPack.load(pack, trust_models=trusted_models(trust_pack_models))
    paraphrases, unrelated = inference.pack_queries(loaded, load_data(data, None).requests)
    streams = inference.query_streams(paraphrases, unrelated, max(sizes) * prompts_per_batch, seed)

    def count(batch: int) -> int:
        return min(batch * prompts_per_batch, max_prompts)

    lm, tokenizer = load_causal_lm(model, device=device)
    cells = inference.measure(model, inference.edited_models(lm, tokenizer, loaded, max(sizes), kinds), streams,
                              sizes, cache_states, count, max_new_tokens, typer.echo) if own_model else []
    for shape in shapes:
        stand_in = inference.stand_in_model(shape, seed).to(device)
        stand_pack = inference.stand_in_pack(loaded, stand_in, seed)
        cells += inference.measure(shape, inference.edited_models(stand_in, tokenizer, stand_pack, max(sizes), kinds),
                                   streams, sizes, cache_states, count, max_new_tokens, typer.echo)
        del stand_in
    setup = {"command": command_line(), "description": inference.describe_setup(model, loaded, shapes, device),
             "notes": inference.NOTES}
    paths = inference.write_inference(out, name, cells, setup)
    typer.echo(Path(paths["md"]).read_text())
