"""Result records: one JSON object per finished run, in a results folder or a JSON-lines file.

Two places a record can go (``--results_json PATH``):

* a **results folder** (PATH is an existing folder, ends in ``/``, or has no file extension): each run
  writes its own ``<mode>_eps<ε>_seed<s>-<digest>-<unique>.json``, to a temporary file in the same
  folder first and then renamed over (``os.replace``), so a reader never sees half a record and a run
  killed midway leaves none. ``<digest>`` is :func:`settings_digest` of the run's settings, so
  :func:`find_run` (``--skip_existing``) opens only the files of the same settings. Nothing is locked:
  this is the layout for clusters, whose shared file systems (NFS, Lustre) do not honour ``flock``
  reliably.
* a **JSON-lines file** (anything else, e.g. ``results/sepsis.jsonl``): appends take an exclusive
  ``flock`` and write the whole line in one ``write`` call, so runs of a parallel sweep on one machine
  can share one file without interleaving or truncating each other's lines.

:func:`load_records` reads either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND single writes are still atomic enough
    fcntl = None


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def is_results_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a results folder rather than a JSON-lines file.

    A folder: an existing directory, a path ending in a separator, or a path without a file extension
    (``results/sepsis``); a file: anything else (``results/sepsis.jsonl``).
    """
    text = os.fspath(path)
    if Path(text).is_dir() or text.endswith(("/", os.sep)):
        return True
    return not Path(text).exists() and Path(text).suffix == ""


def settings_digest(settings: dict) -> str:
    """A short stable hash of a run's settings, without the flags that never change its numbers."""
    wanted = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY_FLAGS}
    text = json.dumps(_json_safe(wanted), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_filename(record: dict) -> str:
    """``<mode>_eps<ε>_seed<s>-<settings digest>-<unique>.json``: readable, findable, never clashing.

    The unique part keeps two runs of the same settings (without ``--skip_existing``) as two records,
    as a JSON-lines file would.
    """
    args = record.get("args") if isinstance(record.get("args"), dict) else None
    parts = [str(record[k]) for k in ("mode",) if record.get(k) is not None]
    parts += [
        f"{key}{record[field]}" for key, field in (("eps", "epsilon"), ("seed", "seed")) if field in record
    ]
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts) or "record")
    digest = settings_digest(args) if args is not None else "noargs"
    return f"{stem}-{digest}-{uuid.uuid4().hex[:8]}.json"


def write_record_file(folder: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as its own JSON file in ``folder``, atomically; return the file's path.

    Written to a hidden temporary file in the same folder (same file system, so the rename is atomic)
    and flushed to disk before ``os.replace`` gives it its name: a run killed at any point leaves
    either the whole record or no record (at most a ``.*.tmp`` file, which :func:`load_records` skips).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / record_filename(record)
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    text = json.dumps(_json_safe(record), sort_keys=False, allow_nan=False) + "\n"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Store ``record`` (NaN/inf become null), safely under concurrent writers.

    In a results folder (:func:`is_results_dir`) as its own file (:func:`write_record_file`); else as
    one line appended to the JSON-lines file ``path``.
    """
    if is_results_dir(path):
        write_record_file(path, record)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_json_safe(record), sort_keys=False, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_files(folder: str | os.PathLike) -> list[Path]:
    """The record files of a results folder, by name (temporary and hidden files left out)."""
    return sorted(p for p in Path(folder).glob("*.json") if not p.name.startswith("."))


def _load_record_file(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON object ({err.msg}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object (a {type(record).__name__}).")
    return record


def load_records(path: str | os.PathLike) -> list[dict]:
    """All records of a results folder or a JSON-lines file.

    A malformed record raises, naming its file (and, in a JSON-lines file, its line number).
    """
    if Path(path).is_dir():
        return [_load_record_file(p) for p in record_files(path)]
    records = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}).") from None
    return records


# Flags that change where output goes or how it is shown, never the numbers of a run.
OUTPUT_ONLY_FLAGS = frozenset({"results_json", "no_progress", "skip_existing"})


def find_run(path: str | os.PathLike, settings: dict) -> dict | None:
    """The first record whose recorded arguments equal ``settings`` on every flag that affects results.

    Comparing ALL such flags (not a chosen few) keeps a quick ``--epochs 1`` run or a
    ``--c_h_from_private`` run from standing in for the real one. ``path``: a results folder (only the
    files whose name carries these settings' digest are opened) or a JSON-lines file.
    """
    if not Path(path).exists():
        return None
    wanted = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY_FLAGS}
    if Path(path).is_dir():
        candidates = Path(path).glob(f"*-{settings_digest(settings)}-*.json")
        records = [_load_record_file(p) for p in sorted(candidates) if not p.name.startswith(".")]
    else:
        records = load_records(path)
    for record in records:
        recorded = record.get("args") or {}
        if {k: v for k, v in recorded.items() if k not in OUTPUT_ONLY_FLAGS} == wanted:
            return record
    return None


def flags_to_conditions(flags: list[str]) -> dict[str, str]:
    """``['--epochs', '5', '--c_h_from_private']`` → ``{'epochs': '5', 'c_h_from_private': 'true'}``."""
    conditions, i = {}, 0
    while i < len(flags):
        token = flags[i]
        if not token.startswith("--"):
            raise ValueError(f"expected a --flag, got {token!r} in {flags}")
        key, sep, value = token[2:].partition("=")
        if not sep:
            has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
            value = flags[i + 1] if has_value else "true"
            i += has_value
        conditions[key] = value
        i += 1
    return conditions
