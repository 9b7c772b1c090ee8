"""The one place that knows file names, and how files are written: atomically, as JSON or safetensors.

Every artifact is a directory of JSON (configs, manifests) and safetensors (tensors); nothing is pickled.
Writers go through a temporary file (or directory) in the same folder and `os.replace`, so an interrupted
run never leaves a half-written file under the final name. Temporaries are hidden siblings named
`.<name>.<pid>-<random>.tmp` (a directory being replaced is parked as `.<name>.<pid>-<random>.old`): the pid tells
a later run that their writer is dead, so it can delete them and restore a parked directory (`recover_directory`).
Readers for user files (`read_text`, `parse_json`, `load_tensors`) fail with one line naming the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from meg.distributed import ranks
from meg.errors import InputError, PackError

log = logging.getLogger("meg")

# --- weight collection (a resumable cache directory) ---
COLLECTION_DIR = "collection"  # finished chunks of every collection job in a work directory
COLLECTION_CHUNK = "chunk-{key}.safetensors"  # keyed by the job (model, neuron, settings, template) and its edits

# --- edit pack ---
PACK_FORMAT = "meg-edit-pack"  # the `format` of every pack_config.json
PACK_CONFIG = "pack_config.json"
PACK_MANIFEST = "manifest.json"  # size and sha256 of every other file of the pack, written last
MANIFEST_FORMAT = "meg-edit-manifest"
PACK_EDITS = "edits.jsonl"
PACK_VECTORS = "vectors.safetensors"
PACK_ENCODER = "encoder_layer.safetensors"
PACK_GATE = "gate.safetensors"
PACK_GENERATOR = "generator.safetensors"
PACK_GENERATOR_CONFIG = "generator_config.json"
PACK_ROUTER = "router.safetensors"

# --- evaluation / benchmark run directories ---
RUN_CONFIG = "run_config.json"
RUN_RECORDS = "records.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
BASELINE_CACHE = "pre_edit_outputs.jsonl"
BENCH_RESULT = "bench_result.json"  # one method's finished row of `meg bench`
BENCH_ROW = "bench_row.json"  # the settings a row's records in its run directory were made with
LOCATE_TARGETS = "locate-targets-{key}.safetensors"  # MEMIT / AlphaEdit step-1 targets of one chunk of edits
TUNED_ENCODER = "encoder-{key}.safetensors"  # a tuned encoder layer in a work directory, keyed by inputs
TRAINED_VERIFIER = "verifier-{key}.safetensors"  # the routing verifier's trained layers, keyed by inputs
GATE_TRAINING = "gate-training-{key}.safetensors"  # the familiarity gate's training state (resumable), keyed by inputs
TRAINED_GENERATOR = "generator-{key}"  # a finished generator (a directory as in a pack), keyed by inputs
GENERATOR_LOG = "training_log.json"  # beside a finished generator: its training log (was the criterion met?)
GENERATOR_TRAINING = "generator-training-{key}.safetensors"  # an unfinished generator's training state, keyed by inputs


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (tensors by their bytes): the key of every cached stage."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where reusable caches live (cached stages, pre-edit outputs, tuned encoders, key statistics): $MEG_CACHE_DIR,
    else ~/.cache/meg-edit. Never the working directory."""
    return Path(os.environ.get("MEG_CACHE_DIR") or Path.home() / ".cache" / "meg-edit")


def _temp_prefix(path: Path) -> str:
    """`.<name>.<pid>-`: hidden, tied to its target's name, and telling whose it is (see `stale`)."""
    return f".{path.name}.{os.getpid()}-"


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error deleted."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors, atomically; tensors are made contiguous and moved to CPU."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file; a missing, truncated or damaged one raises a one-line InputError naming it."""
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types (and OSError) for bad files
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except Exception as err:
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# --- reading user files: one line naming the file for every way they can be wrong ---


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`; a missing file, a directory, unreadable or non-UTF-8 bytes raise InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a {what}")
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}, line {line}); save the {what} as UTF-8") from None


def parse_json(text: str, where: str) -> Any:
    """JSON from text; invalid or absurdly nested JSON raises InputError prefixed with `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def read_user_json(path: str | Path, what: str = "JSON file") -> Any:
    """`parse_json(read_text(path))`: a JSON file a user gave, every failure one line naming it."""
    return parse_json(read_text(path, what), str(path))


# --- directories replaced whole (edit packs): safe overwrite, crash recovery ---

# `.<name>.<pid>-<8 random>.tmp|old`; before pids were in the names: `.<name>.<8 random>.tmp|old` (mkstemp's).
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.(?P<kind>tmp|old)$")


def is_edit_pack(path: str | Path) -> bool:
    """True when `path` is a directory whose pack_config.json says it is an edit pack (the only thing that
    `--overwrite` may replace, besides an empty directory)."""
    config = Path(path) / PACK_CONFIG
    if not config.is_file() or config.is_symlink():
        return False
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == PACK_FORMAT


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale(entry: Path) -> bool:
    """A temporary or parked sibling whose writer is gone (temporaries written before pids were in the names
    count as stale: their writers belong to a version that never cleaned up)."""
    match = _TEMP.match(entry.name)
    return bool(match) and (match["pid"] is None or not _alive(int(match["pid"])))


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def recover_directory(path: str | Path) -> list[str]:
    """Finish what killed writers of `path` left behind: when nothing is at `path`, put back the directory a
    killed replace had parked (the newest), then delete their stale temporaries. Returns what was done."""
    path = Path(path)
    try:
        siblings = [e for e in path.parent.iterdir() if e.name.startswith(f".{path.name}.")]
    except OSError:
        return []
    mine = [e for e in siblings if _TEMP.match(e.name) and _TEMP.match(e.name)["name"] == path.name and stale(e)]
    done = []
    parked = sorted((e for e in mine if e.name.endswith(".old")), key=lambda e: e.stat().st_mtime, reverse=True)
    for entry in parked:
        inner = entry / "x" if (entry / "x").exists() else entry  # older versions parked it as .old/x
        if not path.exists() and not path.is_symlink():
            try:
                os.rename(inner, path)
                done.append(f"restored {path} from {entry.name}, left there by a replace that was killed")
            except OSError:
                continue
    for entry in mine:
        if entry.exists() or entry.is_symlink():
            _remove(entry)
            done.append(f"deleted {entry.name}, a temporary of a killed write")
    for line in done:
        log.warning("%s", line)
    return done


def _check_ancestors(path: Path) -> None:
    ancestor = next((a for a in path.parents if a.exists() or a.is_symlink()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise InputError(f"{path}: cannot create it, {ancestor} is a file, not a directory")


def check_creatable(path: str | Path) -> Path:
    """Refuse, before any work, a directory to write into that is a file or lies under one."""
    path = Path(path)
    _check_ancestors(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise InputError(f"{path} is a file; give a directory")
    return path


def check_run_dir(path: str | Path) -> Path:
    """Refuse, before any work, a run directory (`meg run/eval/bench/demo --out`) that is a file, lies under one, or
    is a directory of something else: a run reads, writes and (with overwrite) deletes its files (records.jsonl,
    report.json, ...) there, so only a run directory (holding run_config.json) or an empty one is ever used."""
    path = check_creatable(path)
    if path.is_dir() and not (path / RUN_CONFIG).is_file() and any(p.name != WORK_LOCK for p in path.iterdir()):
        raise InputError(f"{path} is a directory that is not a run directory (no {RUN_CONFIG}); a run writes and "
                         "deletes its files there, so only a run directory or an empty one is used (choose another "
                         "path)")
    return path


def check_output_dir(path: str | Path, overwrite: bool = False, replaces: Callable[[Path], bool] = is_edit_pack,
                     what: str = "an edit pack") -> None:
    """Refuse, before any work starts, an output directory that cannot be created or must not be replaced.

    `path` may not exist (its first existing ancestor must be a directory); with `overwrite` it may be `what`
    (`replaces(path)` is true) or an empty directory; anything else, a file or a user's own directory, is refused,
    so an overwrite never deletes data that meg-edit did not write. A replace killed earlier is recovered first.
    """
    path = Path(path)
    _check_ancestors(path)
    recover_directory(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if path.is_symlink() or not path.is_dir():
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise InputError(f"{path} is {kind}, not {what}; overwrite replaces only {what} or an empty directory")
    if any(path.iterdir()) and not replaces(path):
        raise InputError(f"{path} is a directory that is not {what}; overwrite replaces only {what} or an empty "
                         "directory, so nothing else is ever deleted (choose another path or remove it yourself)")


def _checkpoint(step: str) -> None:
    """Called between the steps of a replace (tests kill the writer here)."""


def _undo(tmp: Path, path: Path, parked: Path | None) -> None:
    """After an error inside a replace: the old directory back at `path` (or the new one kept if it was already in
    place), no temporaries left."""
    if parked is not None and parked.exists():
        if path.exists() or path.is_symlink():
            _remove(parked)
        else:
            os.rename(parked, path)
    _remove(tmp)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False, replaces: Callable[[Path], bool] = is_edit_pack,
                     what: str = "an edit pack") -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place only when the block succeeds.

    An existing `path` is replaced only with `overwrite=True`, only when it is `what` or empty (see
    `check_output_dir`, called before the block runs and again before the swap), and only after the new one is
    complete. The swap parks the old directory as `.<name>.<pid>-<random>.old`, renames the new one into place,
    then deletes the parked one; a writer killed between those steps leaves the old directory parked, and the
    next write or load of `path` puts it back (`recover_directory`).
    """
    path = Path(path)
    check_output_dir(path, overwrite, replaces, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    parked: Path | None = None
    try:
        yield tmp
        _checkpoint("written")
        check_output_dir(path, overwrite, replaces, what)
        if path.exists():
            parked = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
            os.rename(path, parked)
            _checkpoint("parked")
        os.rename(tmp, path)
        _checkpoint("installed")
        if parked is not None:
            _remove(parked)
            parked = None
        _checkpoint("done")
    except BaseException:
        _undo(tmp, path, parked)
        raise


# --- pack manifests: size and sha256 of every file ---


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path) -> None:
    """Write PACK_MANIFEST: size and sha256 of every other file of `directory` (call it last)."""
    directory = Path(directory)
    entries = {}
    for file in sorted(directory.iterdir()):
        if file.name != PACK_MANIFEST and not _TEMP.match(file.name):
            entries[file.name] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    atomic_write_json(directory / PACK_MANIFEST, {"format": MANIFEST_FORMAT, "files": entries})


def inside(directory: str | Path, name: Any) -> Path:
    """`directory / name` for a plain file name whose real path stays inside `directory`: a name with a separator
    or `..`, an absolute path, or a symbolic link leading out of the directory raises PackError."""
    directory = Path(directory)
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name \
            or "\0" in name:
        raise PackError(f"{directory}: file name {name!r} is not a plain file name inside the pack")
    file = directory / name
    try:
        real, root = file.resolve(), directory.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise PackError(f"{file}: cannot resolve it ({_first_line(err)})") from None
    if not real.is_relative_to(root):
        raise PackError(f"{file}: leads outside the pack (to {real}); pack files must be inside the pack directory")
    return file


def _manifest_entries(directory: Path, manifest: Path) -> dict[str, dict[str, Any]]:
    if manifest.is_symlink() or not manifest.is_file():
        raise PackError(f"{manifest}: not a regular file")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise PackError(f"{manifest}: damaged manifest ({_first_line(err)})") from None
    entries = data.get("files") if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
    if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in entries.values()):
        raise PackError(f"{manifest}: damaged manifest (expected format {MANIFEST_FORMAT!r} with size and sha256 "
                        "per file)")
    for name in entries:
        inside(directory, name)
    return entries


def verify_manifest(directory: str | Path) -> int | None:
    """Check every file of a pack against its manifest: a missing, extra, resized or changed file, or a symbolic
    link, raises PackError naming it. Returns the number of files checked, or None when the pack has no manifest
    (packs written before manifests: nothing can be checked)."""
    directory = Path(directory)
    manifest = directory / PACK_MANIFEST
    if not manifest.exists() and not manifest.is_symlink():
        return None
    entries = _manifest_entries(directory, manifest)
    present = {e.name for e in directory.iterdir()} - {PACK_MANIFEST}
    for name in sorted(set(entries) - present):
        raise PackError(f"{directory}: corrupted pack, {name} is missing (the manifest lists it)")
    for name in sorted(present - set(entries)):
        raise PackError(f"{directory / name}: not part of the pack (not in its manifest); remove it")
    for name, entry in sorted(entries.items()):
        file = directory / name
        if file.is_symlink() or not file.is_file():
            raise PackError(f"{file}: not a regular file (the manifest lists a file)")
        size = file.stat().st_size
        if size != entry["size"]:
            raise PackError(f"{file}: corrupted, {size} bytes where the manifest says {entry['size']}")
        if sha256_file(file) != entry["sha256"]:
            raise PackError(f"{file}: corrupted, its sha256 differs from the manifest's")
    return len(entries)


# --- work directories: one process at a time ---

WORK_LOCK = ".meg-lock"
_HELD: dict[Path, list[Any]] = {}  # resolved directory -> [open lock file, depth]: re-entrant within a process


def _lock_timeout() -> float | None:
    """$MEG_LOCK_TIMEOUT seconds to wait for a busy work directory (0: refuse at once); unset: wait."""
    value = os.environ.get("MEG_LOCK_TIMEOUT")
    try:
        return None if value in (None, "") else max(0.0, float(value))
    except ValueError:
        raise InputError(f"MEG_LOCK_TIMEOUT must be a number of seconds, got {value!r}") from None


def _owner(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


def _try_lock(handle) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False


def _acquire(handle, directory: Path, timeout: float | None) -> None:
    if _try_lock(handle):
        return
    owner = _owner(handle)
    if timeout == 0:
        raise InputError(f"{directory} is in use by {owner}; wait for it to finish or use another work directory")
    log.warning("%s is in use by %s; waiting for it to finish (its finished stages are then reused)", directory, owner)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        time.sleep(0.2)
        if _try_lock(handle):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise InputError(f"{directory} is still in use by {owner} after {timeout:g} s; wait for it to finish or "
                             "use another work directory")


@contextmanager
def work_lock(directory: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold `directory` (created if needed) for this process: a second process on it waits with a message until
    the first is done, then reuses its finished stages (`timeout` seconds at most, default $MEG_LOCK_TIMEOUT or
    no limit; 0 refuses at once). Stale temporaries of killed writers are cleaned once the lock is held."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield directory
        finally:
            _HELD[key][1] -= 1
        return
    group = ranks()
    if not group.main:  # under `accelerate launch` rank 0 holds the directory for every process of the job
        _HELD[key] = [None, 1]
        try:
            group.barrier()  # rank 0 holds it now
            yield directory
        finally:
            _HELD.pop(key, None)
        return
    handle = open(directory / WORK_LOCK, "a+", encoding="utf-8")
    try:
        _acquire(handle, directory, _lock_timeout() if timeout is None else timeout)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD[key] = [handle, 1]
        clean_stale(directory)
        group.barrier()  # the other ranks of the job go on once the lock is held
        yield directory
    finally:
        _HELD.pop(key, None)
        handle.close()  # closing releases the lock


def clean_stale(directory: str | Path) -> list[str]:
    """Recover every target under `directory` that a killed writer left temporaries for (`recover_directory`)."""
    directory, done = Path(directory), []
    if not directory.is_dir():
        return done
    for root, dirs, names in os.walk(directory):
        targets = {Path(root) / m["name"] for n in (*dirs, *names) if (m := _TEMP.match(n)) and stale(Path(root) / n)}
        for target in sorted(targets):
            done += recover_directory(target)
    return done


# --- the user cache ---

CACHE_KINDS = {
    "stages": "cached stages of fits without --work-dir (tuned encoders, collected neurons, generators, routers)",
    "pre_edit": "pre-edit answers of base models (meg run / eval / bench)",
    "encoders": "tuned encoders of meg route-bench",
    "stats": "key statistics of MEMIT / AlphaEdit",
}


def stages_dir() -> Path:
    """The work directory of every cached stage when no work directory is given: cache_dir() / "stages"."""
    return cache_dir() / "stages"


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`, symbolic links not followed."""
    if path.is_symlink() or path.is_file():
        return (path.lstat().st_size, 1)
    total = count = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += (Path(root) / name).lstat().st_size
                count += 1
            except OSError:
                pass
    return total, count


def cache_usage() -> list[dict[str, Any]]:
    """Every entry of cache_dir(): {"name", "path", "bytes", "files", "kind"}; kind is the description of one of
    meg-edit's cache kinds (CACHE_KINDS), or None for anything else found there (models trained by the scripts,
    a user's own files), which `clear_cache` never touches."""
    root, rows = cache_dir(), []
    if not root.is_dir():
        return rows
    for entry in sorted(root.iterdir()):
        size, count = tree_size(entry)
        known = entry.name in CACHE_KINDS and entry.is_dir() and not entry.is_symlink()
        rows.append({"name": entry.name, "path": entry, "bytes": size, "files": count,
                     "kind": CACHE_KINDS[entry.name] if known else None})
    return rows


def clear_cache(kinds: list[str] | None = None) -> list[Path]:
    """Delete meg-edit's own cache directories (all of CACHE_KINDS, or `kinds`); nothing else in cache_dir() is
    touched. Returns what was deleted."""
    unknown = sorted(set(kinds or ()) - set(CACHE_KINDS))
    if unknown:
        raise InputError(f"unknown cache kind(s) {', '.join(unknown)}; choose from {', '.join(CACHE_KINDS)}")
    deleted = []
    for row in cache_usage():
        if row["kind"] is not None and (not kinds or row["name"] in kinds):
            shutil.rmtree(row["path"])
            deleted.append(row["path"])
    return deleted
