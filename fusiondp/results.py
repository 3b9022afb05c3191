"""Result records: one JSON object per finished run, appended to a JSON-lines file.

Appends take an exclusive ``flock`` and write the whole line in one ``write`` call, so runs of a
parallel sweep can share one file without interleaving or truncating each other's lines.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND single writes are still atomic enough
    fcntl = None


EXPERIMENT_MODE = "sampler and noise seeded from a recorded seed (experiment mode)"
"""The reason a seeded DP run's record gives for ``privacy_guarantee_holds: false``. Tables keep such
runs (reproducibility is their point); a model meant for release is trained with ``--secure_rng``."""


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


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line (NaN/inf become null), safely under concurrent writers."""
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


def load_records(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines file; a malformed line raises with its line number."""
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


def run_settings(args) -> dict:
    """A run's full resolved arguments (defaults included), JSON-ready."""
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()}


def find_run(path: str | os.PathLike, settings: dict) -> dict | None:
    """The first record whose recorded arguments equal ``settings`` on every flag that affects results.

    Comparing ALL such flags (not a chosen few) keeps a quick ``--epochs 1`` run or a
    ``--c_h_from_private`` run from standing in for the real one.
    """
    if not Path(path).exists():
        return None
    wanted = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY_FLAGS}
    for record in load_records(path):
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


def git_commit() -> str | None:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
