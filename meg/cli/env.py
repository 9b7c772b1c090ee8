"""`meg env`: versions and machine facts to paste into a bug report."""

from __future__ import annotations

import json

import typer

from meg.results import environment


def command() -> None:
    """Print package versions and machine facts as JSON."""
    typer.echo(json.dumps(environment(), indent=2))
