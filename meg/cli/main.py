"""Entry point of the `meg` command: registers one command per module of this package."""

from __future__ import annotations

import typer

from meg.cli import bench, bench_collect, bench_infer, bench_lifelong, cache, demo, edit, env, generate, layers, pack
from meg.cli import bench_scaleout, carryover, collect_report, route_bench, run, serve, serve_bench
from meg.cli import eval as eval_command

app = typer.Typer(
    name="meg",
    help="Massive knowledge editing of Hugging Face causal LMs with one generated neuron (MeG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMANDS = {
    "demo": demo,
    "edit": edit,
    "generate": generate,
    "run": run,
    "eval": eval_command,
    "bench": bench,
    "route-bench": route_bench,
    "layers": layers,
    "bench-collect": bench_collect,
    "bench-infer": bench_infer,
    "bench-scaleout": bench_scaleout,
    "collect-report": collect_report,
    "carryover": carryover,
    "bench-lifelong": bench_lifelong,
    "env": env,
    "serve": serve,
    "bench-serve": serve_bench,
    "pack": pack,  # a group: `meg pack show`, `meg pack diff`, `meg pack verify`
    "cache": cache,  # a group: `meg cache ls`, `meg cache clear`
}

for _name, _module in COMMANDS.items():
    if hasattr(_module, "group"):  # a module with subcommands registers its Typer group
        app.add_typer(_module.group, name=_name)
    else:
        app.command(_name)(_module.command)


if __name__ == "__main__":
    app()
