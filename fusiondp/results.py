"""Result records: one JSON object per finished run, appended to a JSON-lines file.

Appends take an exclusive ``flock`` and write the whole line in one ``write`` call, so runs of a
parallel sweep can share one file without interleaving or truncating each other's lines.

Command line: ``python -m fusiondp.results FILE --contains mode=fusiondp epsilon=2 seed=1`` exits 0
when a record matches every key=value, 1 otherwise (the sweep uses it to skip finished runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
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


def _same(recorded, wanted: str) -> bool:
    if isinstance(recorded, bool):
        return str(recorded).lower() == wanted.lower()
    try:
        return float(recorded) == float(wanted)
    except (TypeError, ValueError):
        return str(recorded) == wanted


def _lookup(record: dict, key: str):
    """A run's setting: from its full argument dict when present, else the flat record."""
    args = record.get("args") or {}
    return args[key] if key in args else record.get(key)


def has_record(path: str | os.PathLike, conditions: dict[str, str]) -> bool:
    if not Path(path).exists():
        return False
    return any(all(_same(_lookup(r, k), v) for k, v in conditions.items()) for r in load_records(path))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Query a JSON-lines results file.")
    parser.add_argument("results_json")
    parser.add_argument(
        "--contains",
        nargs="+",
        metavar="KEY=VALUE",
        required=True,
        help="exit 0 if some record matches all of these (and --flags), else 1",
    )
    parser.add_argument(
        "--flags",
        default="",
        help="training-script flags that must match too, as one string: --flags='--epochs 5'",
    )
    args = parser.parse_args(argv)
    conditions = flags_to_conditions(shlex.split(args.flags))
    for item in args.contains:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--contains takes KEY=VALUE pairs, got {item!r}")
        conditions[key] = value
    return 0 if has_record(args.results_json, conditions) else 1


if __name__ == "__main__":
    sys.exit(main())
