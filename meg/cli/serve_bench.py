"""`meg bench-serve`: load test of `meg serve` (edited vs unedited model, 1 / 8 / 32 concurrent clients)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    ModelOption, check_count, check_file, check_model_device, check_out, check_stem, command_line, friendly_errors,
    parse_ints,
)


def _shown(path: Path) -> str:
    """A path as the results files name it: relative to the working directory (the checkout); the project's
    `runs/` directory beside it is written `runs/`."""
    shown = os.path.relpath(Path(path).resolve(), Path.cwd())
    return shown[3:] if shown.startswith("../runs/") else shown


def _command() -> str:
    """The command line, its paths written as `_shown` writes them."""
    import shlex

    words = shlex.split(command_line())
    return " ".join(shlex.quote(_shown(Path(w)) if "/" in w and Path(w).exists() else w) for w in words)


@friendly_errors
def command(
    pack: Annotated[Path, typer.Option(help="edit pack to serve")],
    model: ModelOption = "reference",
    data: Annotated[Path | None, typer.Option("--data", "-d", help="the pack's data file (CounterFact / ZsRE / "
                                              "KnowEdit JSON or JSONL): its paraphrases and neighbourhood prompts "
                                              "are the requests (default: the edit prompts and shipped unrelated "
                                              "queries)")] = None,
    clients: Annotated[str, typer.Option(help="comma-separated concurrency levels")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="requests each client sends, one after another")] = 16,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of every request (greedy)")] = 20,
    warmup: Annotated[int, typer.Option(help="requests sent one at a time before measuring")] = 8,
    port: Annotated[int, typer.Option(help="loopback port of the servers (started one after the other)")] = 8765,
    server_args: Annotated[str, typer.Option(help="extra options for `meg serve`, e.g. '--max-batch 64'")] = "",
    out: Annotated[Path, typer.Option(help="results directory")] = Path("docs/results"),
    name: Annotated[str, typer.Option(help="results file stem")] = "serve-load",
) -> None:
    """Serve the model with and without the pack on loopback, send the same requests at each concurrency level,
    and write requests/s, latency percentiles, errors and peak RSS (JSON + markdown + PNG)."""
    import shlex

    from meg.benchmarks.serve_load import markdown, plot, prompt_pool, run_load_test
    from meg.cli.serve import check_port
    from meg.data import load_dataset
    from meg.data.defaults import default_unrelated
    from meg.pack import EditPack
    from meg.results import write_results

    levels = parse_ints(clients, "--clients", minimum=1)
    check_count(requests, "--requests")
    check_count(max_tokens, "--max-tokens")
    check_count(warmup, "--warmup", minimum=0)
    check_out(out, "--out")
    check_stem(name)
    check_file(data, "--data")
    check_model_device(model, "cpu")
    check_port("127.0.0.1", port)
    loaded = EditPack.load(pack)
    dataset = load_dataset(data).requests if data is not None else None
    prompts = prompt_pool(loaded.requests, dataset, default_unrelated())
    results = run_load_test(model, pack, prompts, levels, requests, max_tokens, port, warmup,
                            server_args=shlex.split(server_args))
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    setup = (f"model {model}, pack {_shown(pack)} ({len(loaded)} edits, router {loaded.router_name}, weights "
             f"{loaded.config.weights}), requests from {_shown(data) if data else 'the pack and shipped queries'} "
             f"({prompts.source}); {requests} requests per client, half about edited facts, half unrelated, "
             f"max_tokens {max_tokens}, temperature 0; each server a subprocess with OMP_NUM_THREADS={threads}, "
             f"{os.cpu_count()} CPUs on the machine")
    data_out = {"command": _command(), "setup": setup, **results}
    paths = write_results(out, name, data_out, markdown(results, _command(), setup), plot(results))
    typer.echo(Path(paths["md"]).read_text())
