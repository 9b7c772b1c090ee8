"""Packs that cannot lie, overwrite that cannot destroy, one process per work directory, the default cache.

- Every byte flipped in every file of a saved pack is detected on load (the manifest).
- A replace killed at each of its steps leaves the old pack or the new one, never nothing: the writer is "killed"
  by raising at each step with the error clean-up switched off (what a kill -9 leaves), and once for real with
  SIGKILL in a subprocess; the next load or save restores a parked pack and deletes stale temporaries.
- `--overwrite` replaces only an edit pack or an empty directory.
- A second process on a locked work directory waits, or refuses with a message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from meg import files
from meg.cli.main import app
from meg.errors import InputError, PackError
from meg.pack import EditPack

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _with_encoder_layer(pack: EditPack) -> EditPack:
    """The fixture pack with a tuned encoder layer too, so a saved pack holds every kind of file."""
    config = dataclasses.replace(pack.config, encoder=dataclasses.replace(pack.config.encoder, tune=True))
    return dataclasses.replace(pack, config=config, encoder_state={"weight": torch.randn(8, 8)})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Two saved format-2 packs: retrieval + generator + encoder layer, and the paper's gate (retrieved vectors)."""
    root = tmp_path_factory.mktemp("saved")
    _with_encoder_layer(EditPack.load(FIXTURES / "pack-retrieval")).save(root / "retrieval")
    EditPack.load(FIXTURES / "pack-paper-gate").save(root / "gate")
    return {"retrieval": root / "retrieval", "gate": root / "gate"}


def _pack_files(saved: dict[str, Path]) -> list[tuple[str, str]]:
    return [(kind, p.name) for kind, d in saved.items() for p in sorted(d.iterdir())]


def test_a_saved_pack_has_a_manifest_of_every_other_file(saved):
    names = {p.name for p in saved["retrieval"].iterdir()}
    assert names == {"pack_config.json", "edits.jsonl", "vectors.safetensors", "encoder_layer.safetensors",
                     "router.safetensors", "generator.safetensors", "manifest.json"}
    manifest = json.loads((saved["retrieval"] / files.PACK_MANIFEST).read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"size": (saved["retrieval"] / name).stat().st_size,
                         "sha256": files.sha256_file(saved["retrieval"] / name)}
    assert files.verify_manifest(saved["retrieval"]) == 6 and EditPack.load(saved["gate"]).router_name == "paper-gate"


def test_flipping_any_byte_of_any_pack_file_is_detected_on_load(saved, tmp_path):
    """16 positions spread over every file of both packs, plus its first and last byte."""
    checked = 0
    for kind, name in _pack_files(saved):
        data = (saved[kind] / name).read_bytes()
        positions = sorted({0, len(data) - 1, *(len(data) * k // 16 for k in range(16))})
        for at in positions:
            copy = tmp_path / f"{kind}-{name}-{at}"
            copy.mkdir()
            for f in saved[kind].iterdir():
                (copy / f.name).write_bytes(f.read_bytes())
            flipped = bytearray(data)
            flipped[at] ^= 0x01  # one bit: the smallest change there is
            (copy / name).write_bytes(bytes(flipped))
            with pytest.raises(PackError) as caught:
                EditPack.load(copy)
            assert name in str(caught.value) or "manifest" in str(caught.value), (name, at, str(caught.value))
            checked += 1
    assert checked >= 12 * 16


def test_packs_without_a_manifest_still_load_and_say_nothing_can_be_checked(saved, tmp_path, caplog):
    import logging
    import shutil

    shutil.copytree(saved["gate"], tmp_path / "old")
    (tmp_path / "old" / files.PACK_MANIFEST).unlink()
    meta = json.loads((tmp_path / "old" / files.PACK_CONFIG).read_text())
    meta.pop("manifest")  # as written before manifests existed
    (tmp_path / "old" / files.PACK_CONFIG).write_text(json.dumps(meta))
    with caplog.at_level(logging.INFO, logger="meg"):
        assert len(EditPack.load(tmp_path / "old")) == 8
        assert len(EditPack.load(FIXTURES / "pack-retrieval")) == 8  # format 1
    assert "cannot be checked" in caplog.text


# --- safe overwrite ---


def _fake_pack(path: Path, tag: str) -> Path:
    """A directory that says it is an edit pack (enough for atomic_directory), with a tag to tell them apart."""
    path.mkdir(parents=True)
    (path / files.PACK_CONFIG).write_text(json.dumps({"format": files.PACK_FORMAT, "tag": tag}))
    (path / "payload.bin").write_bytes(tag.encode() * 1000)
    return path


def _tag(path: Path) -> str:
    return json.loads((path / files.PACK_CONFIG).read_text())["tag"]


def _write(path: Path, tag: str, overwrite: bool = True) -> None:
    with files.atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / files.PACK_CONFIG).write_text(json.dumps({"format": files.PACK_FORMAT, "tag": tag}))
        (tmp / "payload.bin").write_bytes(tag.encode() * 1000)


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("existing", ["pack", "empty"])
def test_overwrite_replaces_an_edit_pack_or_an_empty_directory(tmp_path, existing):
    target = tmp_path / "out"
    _fake_pack(target, "old") if existing == "pack" else target.mkdir()
    _write(target, "new")
    assert _tag(target) == "new" and _hidden(tmp_path) == []


@pytest.mark.parametrize("what", ["user-dir", "file", "symlink", "broken-pack-config"])
def test_overwrite_refuses_anything_else_and_deletes_nothing(tmp_path, what):
    target = tmp_path / "out"
    if what == "user-dir":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work")
    elif what == "file":
        target.write_text("a file")
    elif what == "symlink":
        _fake_pack(tmp_path / "real", "real")
        target.symlink_to(tmp_path / "real")
    else:
        target.mkdir()
        (target / files.PACK_CONFIG).write_text("{not json")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match="overwrite replaces only an edit pack or an empty directory"):
        _write(target, "new")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_cli_overwrite_of_a_user_directory_is_refused_before_any_work(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "edits.jsonl").write_text('{"prompt": "The capital of France is", "target": "Rome"}\n')
    result = runner.invoke(app, ["edit", "--edits", str(tmp_path / "edits.jsonl"), "--out", str(tmp_path / "mine"),
                                 "--overwrite"])
    assert result.exit_code == 2 and "not an edit pack" in result.stderr and "Traceback" not in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


class Killed(BaseException):
    """Stands for kill -9 at a step (the clean-up after errors is switched off, as a killed process runs none)."""


STEPS = ["writing", "written", "parked", "installed", "done"]


def _kill_at(monkeypatch, step: str) -> None:
    monkeypatch.setattr(files, "_undo", lambda *a: None)

    def checkpoint(name: str) -> None:
        if name == step:
            raise Killed(step)

    monkeypatch.setattr(files, "_checkpoint", checkpoint)


@pytest.mark.parametrize("step", STEPS)
def test_a_replace_killed_at_each_step_leaves_the_old_or_the_new_pack(tmp_path, monkeypatch, step):
    target = _fake_pack(tmp_path / "pack", "old")
    _kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        with files.atomic_directory(target, overwrite=True) as tmp:
            (tmp / files.PACK_CONFIG).write_text(json.dumps({"format": files.PACK_FORMAT, "tag": "new"}))
            if step == "writing":
                raise Killed("in the middle of writing the new pack")
            (tmp / "payload.bin").write_bytes(b"new" * 1000)
    left = _hidden(tmp_path)
    if step in ("writing", "written"):
        assert _tag(target) == "old" and any(n.endswith(".tmp") for n in left)
    elif step == "parked":
        assert not target.exists() and any(n.endswith(".old") for n in left)  # the "nothing at the path"
    else:
        assert _tag(target) == ("new" if step in ("installed", "done") else "old")
    monkeypatch.undo()
    monkeypatch.setattr(files, "_alive", lambda pid: False)  # the killed writer is gone (here: it was this process)
    # the next run on that path (a load here) finds and restores the parked pack, and cleans up
    files.recover_directory(target)
    assert _tag(target) == ("new" if step in ("installed", "done") else "old")
    assert (target / "payload.bin").read_bytes() == (b"new" * 1000 if step in ("installed", "done") else b"old" * 1000)
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("step", STEPS)
def test_an_error_at_each_step_puts_the_old_pack_back_at_once(tmp_path, monkeypatch, step):
    target = _fake_pack(tmp_path / "pack", "old")

    def checkpoint(name: str) -> None:
        if name == step:
            raise OSError(f"disk full at {step}")

    monkeypatch.setattr(files, "_checkpoint", checkpoint)
    with pytest.raises(OSError):
        with files.atomic_directory(target, overwrite=True) as tmp:
            (tmp / files.PACK_CONFIG).write_text(json.dumps({"format": files.PACK_FORMAT, "tag": "new"}))
            if step == "writing":
                raise OSError("disk full while writing")
    assert _tag(target) == ("new" if step in ("installed", "done") else "old") and _hidden(tmp_path) == []


def test_the_next_save_or_load_recovers_a_killed_replace(tmp_path, monkeypatch, saved):
    import shutil

    target = tmp_path / "pack"
    shutil.copytree(saved["gate"], target)
    _kill_at(monkeypatch, "parked")
    with pytest.raises(Killed):
        EditPack.load(saved["gate"]).save(target, overwrite=True)
    assert not target.exists()
    monkeypatch.undo()
    monkeypatch.setattr(files, "_alive", lambda pid: False)
    assert len(EditPack.load(target)) == 8 and _hidden(tmp_path) == []  # load restored it
    # and a save after a writer killed while building its temporary cleans that temporary
    _kill_at(monkeypatch, "written")
    with pytest.raises(Killed):
        EditPack.load(saved["gate"]).save(target, overwrite=True)
    monkeypatch.undo()
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    left.rename(tmp_path / left.name.replace(f".{os.getpid()}-", ".999999999-"))  # as if its writer had died
    EditPack.load(saved["gate"]).save(target, overwrite=True)
    assert _hidden(tmp_path) == [] and files.verify_manifest(target) == 4


def test_a_replace_parked_by_an_older_version_is_restored(tmp_path):
    parked = tmp_path / ".pack.ab12cd34.old"  # meg-edit before this change parked as .<name>.<random>.old/x
    _fake_pack(parked / "x", "old")
    (tmp_path / ".pack.zz99yy88.tmp").mkdir()  # and never cleaned its temporaries
    files.recover_directory(tmp_path / "pack")
    assert _tag(tmp_path / "pack") == "old" and _hidden(tmp_path) == []


def test_temporaries_of_live_writers_are_left_alone(tmp_path):
    busy = tmp_path / f".pack.{os.getpid()}-abcd1234.tmp"
    busy.mkdir()
    files.recover_directory(tmp_path / "pack")
    assert busy.exists()


WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from meg import files
    step = sys.argv[2]

    def checkpoint(name):
        print(name, flush=True)
        if name == step:
            time.sleep(600)

    files._checkpoint = checkpoint
    with files.atomic_directory(Path(sys.argv[1]), overwrite=True) as tmp:
        (tmp / "pack_config.json").write_text(json.dumps({"format": files.PACK_FORMAT, "tag": "new"}))
        (tmp / "payload.bin").write_bytes(b"new" * 1000)
        if step == "writing":
            print("writing", flush=True)
            time.sleep(600)
""")


@pytest.mark.parametrize("step", ["writing", "parked"])
def test_a_writer_killed_with_sigkill_is_recovered_by_the_next_run(tmp_path, step):
    target = _fake_pack(tmp_path / "pack", "old")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), step], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        for line in writer.stdout:
            if line.strip() == step or time.monotonic() > deadline:
                break
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(30)
    assert writer.returncode == -signal.SIGKILL
    if step == "parked":
        assert not target.exists()  # killed between the two renames: nothing at the path until the next run
    assert _hidden(tmp_path)
    files.check_output_dir(target, overwrite=True)  # what the next save does first
    assert _tag(target) == "old" and (target / "payload.bin").read_bytes() == b"old" * 1000
    assert _hidden(tmp_path) == []


# --- the work-directory lock ---

HOLDER = textwrap.dedent("""
    import sys, time
    from meg import files
    with files.work_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
""")


def _hold(directory: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(seconds)], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_on_a_work_directory_waits_or_refuses(tmp_path, caplog):
    import logging

    work = tmp_path / "work"
    holder = _hold(work, 4)
    try:
        with pytest.raises(InputError, match=rf"{work} is in use by process {holder.pid}"):
            with files.work_lock(work, timeout=0):
                pass
        with pytest.raises(InputError, match="still in use by process .* after 0.5 s"):
            with files.work_lock(work, timeout=0.5):
                pass
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="meg"), files.work_lock(work):  # waits for the holder
            waited = time.monotonic() - start
            assert holder.stdout.readline().strip() == "released"  # the first process had finished
        assert waited > 0.5 and "waiting for it to finish" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_within_a_process_and_cleans_stale_temporaries(tmp_path):
    work = tmp_path / "work"
    (work / "collection").mkdir(parents=True)
    stale = work / "collection" / ".chunk-x.safetensors.999999999-abcd1234.tmp"
    stale.write_bytes(b"half a chunk")
    with files.work_lock(work), files.work_lock(work):
        assert not stale.exists()


def test_meg_edit_refuses_a_busy_work_directory_before_any_stage(tmp_path, monkeypatch, tokenizer):
    from conftest import build_model
    from meg.editor import MegEditor
    from meg.requests import EditRequest

    work = tmp_path / "work"
    holder = _hold(work, 60)
    monkeypatch.setenv("MEG_LOCK_TIMEOUT", "0")
    try:
        editor = MegEditor(build_model("gpt2", vocab_size=len(tokenizer)), tokenizer)
        with pytest.raises(InputError, match="in use by process"):
            editor.fit([EditRequest("The capital of France is", "Rome")], work_dir=work)
    finally:
        holder.kill()
        holder.wait()


# --- the default cache ---


def test_tests_never_write_to_the_users_home():
    assert not files.cache_dir().resolve().is_relative_to((Path.home() / ".cache").resolve())


def test_fit_without_a_work_dir_caches_its_stages_in_the_user_cache(tmp_path, monkeypatch, tokenizer):
    import meg.editor
    from conftest import build_model
    from meg.requests import EditRequest

    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    class Stop(Exception):
        pass

    def tuned_encoder(config, pairs, work, *args, **kwargs):
        seen["work"] = work
        raise Stop

    monkeypatch.setattr(meg.editor, "tuned_encoder", tuned_encoder)
    editor = meg.editor.MegEditor(build_model("gpt2", vocab_size=len(tokenizer)), tokenizer)
    with pytest.raises(Stop):
        editor.fit([EditRequest("The capital of France is", "Rome")])
    assert seen["work"] == tmp_path / "cache" / "stages"


def test_the_collection_key_tells_two_models_of_the_same_shape_apart(tokenizer):
    from conftest import build_model
    from meg.collection import CollectionConfig, job_key
    from meg.prompts import PromptTemplate
    from meg.surgery import neuron_spec

    a, b = (build_model("gpt2", vocab_size=len(tokenizer), seed=s) for s in (0, 1))
    spec = neuron_spec(a, 1)
    assert spec == neuron_spec(b, 1)
    assert job_key(a, spec, CollectionConfig(), PromptTemplate()) != job_key(b, spec, CollectionConfig(), PromptTemplate())


def test_cache_ls_and_clear_touch_only_meg_edits_own_entries(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEG_CACHE_DIR", str(cache))
    for kind, size in (("stages", 3000), ("pre_edit", 200), ("stats", 10)):
        (cache / kind / "sub").mkdir(parents=True)
        (cache / kind / "sub" / "entry.bin").write_bytes(b"x" * size)
    (cache / "reference-2").mkdir()
    (cache / "reference-2" / "model.safetensors").write_bytes(b"m" * 50)
    (cache / "my-notes.txt").write_text("mine")
    listing = runner.invoke(app, ["cache", "ls"])
    assert listing.exit_code == 0, listing.output
    assert "stages" in listing.output and "3.0 kB" in listing.output and "reference-2" in listing.output
    assert "never cleared" in listing.output and "3.2 kB" in listing.output  # 3,000 + 200 + 10 bytes
    declined = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert declined.exit_code == 1 and (cache / "stages").exists()
    only = runner.invoke(app, ["cache", "clear", "--kind", "pre_edit", "--yes"])
    assert only.exit_code == 0 and not (cache / "pre_edit").exists() and (cache / "stages").exists()
    everything = runner.invoke(app, ["cache", "clear", "--yes"])
    assert everything.exit_code == 0, everything.output
    assert sorted(p.name for p in cache.iterdir()) == ["my-notes.txt", "reference-2"]
    assert runner.invoke(app, ["cache", "clear", "--yes"]).output.strip() == "nothing to clear"
