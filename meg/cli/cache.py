"""`meg cache ls|clear`: what meg-edit keeps in the user cache ($MEG_CACHE_DIR, else ~/.cache/meg-edit), and
freeing it. Only meg-edit's own cache directories (`meg.files.CACHE_KINDS`) are ever deleted; anything else
found there (models trained by the scripts, a user's own files) is listed and left alone.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meg.cli.common import friendly_errors, split_names

group = typer.Typer(help="The user cache of stages and outputs: list it, clear it.", no_args_is_help=True)


def human(size: int) -> str:
    """Bytes as 1.2 MB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


@group.command("ls")
@friendly_errors
def ls() -> None:
    """Size of every kind of cache entry, and anything else found in the cache directory."""
    from meg.files import cache_dir, cache_usage
    from meg.results import markdown_table

    rows = cache_usage()
    typer.echo(f"cache directory: {cache_dir()} ($MEG_CACHE_DIR)")
    if not rows:
        typer.echo("empty")
        return
    table = [[r["name"], human(r["bytes"]), r["files"], r["kind"] or "not meg-edit's cache: never cleared"]
             for r in rows]
    typer.echo(markdown_table(["entry", "size", "files", "what"], table))
    ours = sum(r["bytes"] for r in rows if r["kind"])
    typer.echo(f"meg-edit's cache: {human(ours)} (`meg cache clear` frees it)")


@group.command("clear")
@friendly_errors
def clear(
    kind: Annotated[str | None, typer.Option(help="comma-separated kinds to clear (default: all of meg-edit's)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete meg-edit's cache entries (cached stages, pre-edit answers, tuned encoders, key statistics)."""
    from meg.errors import InputError
    from meg.files import CACHE_KINDS, cache_usage, clear_cache

    kinds = split_names(kind, "--kind") if kind is not None else None
    unknown = sorted(set(kinds or ()) - set(CACHE_KINDS))
    if unknown:
        raise InputError(f"--kind {', '.join(unknown)}: not a cache kind; choose from {', '.join(CACHE_KINDS)}")
    doomed = [r for r in cache_usage() if r["kind"] and (not kinds or r["name"] in kinds)]
    if not doomed:
        typer.echo("nothing to clear")
        return
    listing = ", ".join(f"{r['name']} ({human(r['bytes'])})" for r in doomed)
    if not yes:
        typer.confirm(f"delete {listing}?", abort=True)
    for path in clear_cache(kinds):
        typer.echo(f"deleted {path}")
