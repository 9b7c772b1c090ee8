"""`meg bench-lifelong`: K sequential rounds of R edits, every edit so far evaluated after each round, per method
(meg.benchmarks.lifelong)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DeviceOption, ModelOption, SkipInvalidOption,
    check_count, check_file, check_model_device, check_out, check_stem, command_line, friendly_errors,
    read_json_option, split_names,
)


@friendly_errors
def command(
    data: Annotated[Path, typer.Option("--data", "-d", help="edit data (CounterFact / ZsRE / KnowEdit JSON or a JSONL "
                                       "edit file); the first rounds x per-round records are edited, in file order")],
    rounds: Annotated[int, typer.Option(help="sequential rounds K")] = 10,
    per_round: Annotated[int, typer.Option(help="edits per round R")] = 100,
    model: ModelOption = "reference",
    methods: Annotated[str, typer.Option(help="comma-separated: meg (fit, then add per round), meg-batch (one fit "
                                              "of all edits), ft, memit, alphaedit (sequential)")
                       ] = "meg,meg-batch,ft,memit,alphaedit",
    configs: Annotated[Path | None, typer.Option(help="JSON {method: {config fields}}; 'meg' configures meg and "
                                                      "meg-batch")] = None,
    out: Annotated[Path, typer.Option(help="results directory (JSON, markdown, PNG); the rows of methods "
                                              "not run now that its file holds for the same edits and rounds "
                                              "are kept")] = Path("docs/results"),
    name: Annotated[str | None, typer.Option(help="results file stem (default: lifelong-<data>-<K>x<R>)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="rounds' states, records and finished rows, so a rerun "
                                                  "resumes (default: runs/<name>)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every stage")] = 0,
    overwrite: Annotated[bool, typer.Option(help="use a work directory that holds a run with other settings "
                                                 "(rows of other settings are never reused)")] = False,
    skip_invalid: SkipInvalidOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Edit in K rounds of R with every method, evaluate all edits so far after each round; write JSON + markdown +
    PNG (Score against the number of edits), rewritten as each row finishes."""
    from meg.benchmarks.lifelong import LifelongConfig, bench_lifelong, write_lifelong
    from meg.evaluation.runner import RunConfig
    from meg.results import read_results

    check_count(rounds, "--rounds")
    check_count(per_round, "--per-round")
    check_file(data, "--data")
    stem = check_stem(name) or f"lifelong-{data.stem}-{rounds}x{per_round}"
    work = work_dir or Path("runs") / stem
    for path, option in ((out, "--out"), (work, "--work-dir")):
        check_out(path, option)
    check_model_device(model, device)
    run = RunConfig(model=model, data=str(data), seed=seed, device=device, skip_invalid=skip_invalid)
    setup = LifelongConfig(run, rounds, per_round, tuple(split_names(methods, "--methods")),
                           read_json_option(configs, "--configs"))  # checks every method and its config
    command = command_line()
    bench = bench_lifelong(setup, work, overwrite, log=typer.echo,
                           on_row=lambda partial: write_lifelong(out, stem, partial, command),
                           earlier=read_results(out, stem))  # its rows of other methods stay in the file
    typer.echo(Path(write_lifelong(out, stem, bench, command)["md"]).read_text())
