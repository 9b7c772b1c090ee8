"""`meg serve`: an OpenAI-compatible HTTP server for a model with an edit pack (meg/serve/ holds the server)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from meg.cli.common import (
    DeviceOption, TrustModelsOption, check_count, check_file, check_model_device, friendly_errors, trusted_models,
)


def check_port(host: str, port: int) -> None:
    """The port is a TCP port number and nothing listens on it here (checked before the model loads)."""
    from meg.errors import InputError

    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise InputError(f"--host {host!r}: not an address of this machine ({err.strerror or err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise InputError(f"--port {port} on {host}: {err.strerror or err} (another server is there, or choose "
                             "another --host / --port)") from None


@friendly_errors
def command(
    pack: Annotated[Path | None, typer.Option(help="edit pack directory to serve; live edits (POST/DELETE /v1/edits) "
                                              "are saved into it (without it: the base model alone)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hugging Face id or path of a causal LM; "
                                              "'reference' = the shipped model (default: the pack's base model)")
                     ] = None,
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="MEG_API_KEY", show_envvar=True,
                                                help="require 'Authorization: Bearer KEY' on every route "
                                                "(edit routes refuse to run without one off loopback)")] = None,
    name: Annotated[str | None, typer.Option(help="model id clients send (default: --model); '<name>:base' is "
                                             "the unedited model")] = None,
    read_only: Annotated[bool, typer.Option(help="refuse live edits (the pack on disk is never written)")] = False,
    max_batch: Annotated[int, typer.Option(help="rows (choices) decoded in one forward pass at most")] = 32,
    gather_ms: Annotated[float, typer.Option(help="how long a batch waits for more requests after the first")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="requests waiting at most; more are answered 503")] = 256,
    timeout: Annotated[float, typer.Option(help="seconds a request may wait and decode before a 504")] = 120.0,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted (413 above)")] = 1 << 20,
    max_prompt_chars: Annotated[int, typer.Option(help="longest prompt accepted, in characters")] = 16_384,
    pseudo_pairs: Annotated[Path | None, typer.Option(help="live edits: JSONL (question, paraphrase) pairs for "
                                                      "the router's calibration (default: the shipped ones)")] = None,
    unrelated: Annotated[Path | None, typer.Option(help="live edits: JSONL unrelated queries (prompt) for "
                                                   "calibration (default: the shipped ones)")] = None,
    calibration_pairs: Annotated[Path | None, typer.Option(help="live edits: JSONL pairs used for calibration only "
                                                           "(default: the shipped 3,000; an empty file: none)")] = None,
    trust_pack_models: TrustModelsOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Serve the model with the pack applied: OpenAI's /v1/completions and /v1/chat/completions, live edits at
    /v1/edits, and a comparison page at /."""
    from meg.errors import InputError
    from meg.requests import load_pseudo_pairs, load_queries

    for value, option in ((max_batch, "--max-batch"), (max_queue, "--max-queue"), (max_body_bytes, "--max-body-bytes"),
                          (max_prompt_chars, "--max-prompt-chars")):
        check_count(value, option)
    if gather_ms < 0 or timeout <= 0:
        raise InputError(f"--gather-ms must be >= 0 and --timeout > 0, got {gather_ms:g} and {timeout:g}")
    if api_key is not None and not api_key.strip():
        raise InputError("--api-key (or MEG_API_KEY) is empty; give a key or leave it unset")
    if name is not None and (not name.strip() or name.endswith(":base")):
        raise InputError(f"--name must be a non-empty id not ending in ':base', got {name!r}")
    for path, option in ((pseudo_pairs, "--pseudo-pairs"), (unrelated, "--unrelated"),
                         (calibration_pairs, "--calibration-pairs")):
        check_file(path, option)
    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    from meg.pack import EditPack

    loaded = EditPack.load(pack, trust_models=trusted_models(trust_pack_models)) if pack is not None else None
    model = model or (loaded.base_model if loaded is not None else "reference")
    check_model_device(model, device)
    check_port(host, port)
    from meg.serve.engine import EditOptions

    options = EditOptions(load_pseudo_pairs(pseudo_pairs) if pseudo_pairs else None,
                          load_queries(unrelated) if unrelated else None,
                          load_pseudo_pairs(calibration_pairs) if calibration_pairs else None)
    _run(model, loaded, pack, device, options, port, host=host, api_key=api_key, name=name or model,
         read_only=read_only, max_batch=max_batch, gather_ms=gather_ms, max_queue=max_queue, timeout_s=timeout,
         max_body_bytes=max_body_bytes, max_prompt_chars=max_prompt_chars)


def _run(model: str, loaded, pack: Path | None, device: str, options, port: int, **settings) -> None:
    from meg.models import load_causal_lm
    from meg.serve.app import ServeSettings, is_loopback, serve
    from meg.serve.engine import Engine

    lm, tokenizer = load_causal_lm(model, device=device)
    read_only = settings["read_only"]
    engine = Engine(lm, tokenizer, loaded, None if read_only or pack is None else pack, options)
    engine.warm_up()
    config = ServeSettings(**settings)
    edits = f"{len(loaded)} edits from {pack}" if loaded is not None else "no pack"
    typer.echo(f"serving {config.name!r} ({edits}) on http://{config.host}:{port} (Ctrl-C stops)", err=True)
    if loaded is not None and not read_only and not config.api_key and not is_loopback(config.host):
        typer.echo("warning: no --api-key on a non-loopback host: edit routes will refuse every request", err=True)
    serve(engine, config, port, log_level=os.environ.get("MEG_SERVE_LOG", "warning"))
