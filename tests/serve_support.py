"""What the server tests share: a tiny model and pack on disk (built once per test session), engines on copies of
the pack, and a real uvicorn server in a thread on a free port."""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import FACTS, NEW_TARGETS, PSEUDO_PAIRS, SUBJECTS, UNRELATED, tiny_config
from meg.requests import EditRequest, PseudoPair

REQUESTS = [EditRequest(p, t, subject=s) for (p, _), t, s in zip(FACTS, NEW_TARGETS, SUBJECTS)]
FIRST, LATER = REQUESTS[:12], REQUESTS[12:]
PAIRS = [PseudoPair(q, p, s) for q, p, s in PSEUDO_PAIRS]
CALIBRATION, ASKED = UNRELATED[20:], UNRELATED[:20]


@dataclass
class Workspace:
    root: Path
    model_dir: Path
    pack_dir: Path  # never changed: tests that edit work on a copy (`pack_copy`)
    pairs: Path
    unrelated: Path
    empty: Path

    def pack_copy(self, name: str) -> Path:
        target = Path(tempfile.mkdtemp(prefix=f"meg-serve-{name}-", dir=self.root)) / "pack"
        shutil.copytree(self.pack_dir, target)
        return target


_CACHE: dict[str, Workspace] = {}


def workspace(model, tokenizer) -> Workspace:
    """The fact model saved as a model directory, a 12-edit pack fitted on it (collected vectors served directly:
    seconds to fit and to change), and small calibration files for live edits. Built once per session."""
    if "ws" in _CACHE:
        return _CACHE["ws"]
    from meg.editor import MegEditor

    root = Path(tempfile.mkdtemp(prefix="meg-serve-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    pack = MegEditor(model, tokenizer, tiny_config(weights="retrieved")).fit(
        FIRST, PAIRS, CALIBRATION, calibration_pairs=[], progress=False)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    pack.save(root / "pack")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"question": q, "paraphrase": p, "subject": s}) + "\n"
                                              for q, p, s in PSEUDO_PAIRS))
    (root / "unrelated.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in CALIBRATION))
    (root / "empty.jsonl").write_text("")
    _CACHE["ws"] = Workspace(root, root / "model", root / "pack", root / "pairs.jsonl", root / "unrelated.jsonl",
                             root / "empty.jsonl")
    return _CACHE["ws"]


def engine_for(ws: Workspace, model, tokenizer, name: str = "edits", editable: bool = True, engine_class=None):
    """An engine serving a copy of the workspace pack (live edits saved into the copy)."""
    from meg.pack import EditPack
    from meg.serve.engine import EditOptions, Engine

    path = ws.pack_copy(name)
    options = EditOptions(PAIRS, CALIBRATION, [])
    return (engine_class or Engine)(model, tokenizer, EditPack.load(path), path if editable else None, options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(engine, **settings):
    """A real uvicorn server for `engine` in a thread; yields its base URL and the app's server state."""
    import uvicorn

    from meg.serve.app import ServeSettings, create_app

    port = free_port()
    app = create_app(engine, ServeSettings(**{"name": "tiny", **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2400):  # up to a minute on a loaded machine
        if server.started:
            break
        time.sleep(0.025)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}", app.state.server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
