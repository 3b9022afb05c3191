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
import platform
import re
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module stays importable without torch's start-up cost
    from fusiondp.config import RunConfig
    from fusiondp.modes import ModeSpec
    from fusiondp.privacy import PrivacySpec
    from fusiondp.scaling import ScalingPlan
    from fusiondp.step import StepConfig

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


OMITTED_WHEN_UNSET = frozenset({"mix_weight"})
"""Flags added after records existed: left out of the settings while unset, so that a run without them
has the same settings (and skip-matching) as before the flag existed."""


def run_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """A run's full resolved flags (defaults included), JSON-ready: ``vars(args)`` of its command line,
    or :meth:`fusiondp.config.RunConfig.settings`. Unset new flags (:data:`OMITTED_WHEN_UNSET`) are
    left out."""
    return {
        k: (str(v) if isinstance(v, os.PathLike) else v)
        for k, v in flags.items()
        if not (k in OMITTED_WHEN_UNSET and v is None)
    }


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


# --------------------------------------------------------------------------------------------------
# The record of one run, and its one-line summary
# --------------------------------------------------------------------------------------------------

FEATURE_EPSILON_FIELDS = (
    "epsilon_zero_out",
    "accountant_zero_out",
    "epsilon_replace_one",
    "accountant_replace_one",
)

SUMMARY_KEYS = ("mode", "epsilon", "epsilon_spent", "sigma")


def build_record(
    config: RunConfig,
    *,
    dataset: str,
    mode: ModeSpec,
    step: StepConfig,
    privacy: PrivacySpec | None,
    steps: int,
    num_rows: int,
    num_features: int | None,
    c_h_source: str,
    alpha_rule: str,
    scaling: ScalingPlan | None,
    stats_epsilon: float | None,
    privacy_notes: Sequence[str],
    rng: str | None,
    outside_guarantee: list[str],
    per_example: tuple[str | None, str],
    log: list[dict],
    train_seconds: float | None,
    device: str,
    extra_record: dict | None = None,
) -> dict:
    """The result record of one finished run (docs/design.md §5): what was asked, what was used, what
    it guarantees, what it scored, and where it ran. Reads no data; every value is passed in."""
    import torch  # the one heavy import, here only

    stats_sigma = scaling.stats_noise_multiplier if scaling else None
    final = log[-1]
    method, method_reason = per_example
    return {
        "dataset": dataset,
        "mode": mode.name,
        "epsilon": config.epsilon,
        "delta": config.delta,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "public_batch_size": config.public_batch_size,
        "lr": config.lr,
        "max_grad_norm": config.max_grad_norm,
        "alpha": config.alpha,
        "alpha_used": step.w_priv if mode.private_loss == "difference" else None,
        "alpha_rule": alpha_rule,
        "max_private_noise": config.max_private_noise,
        "beta": config.beta,
        "beta_meaning": config.beta_meaning,
        "mix_weight": config.mixing_weight if config.is_naive else None,
        "max_param_norm": config.max_param_norm,
        "c_h": step.c_h,
        "c_h_source": c_h_source,
        "w_pub": step.w_pub,
        "w_priv": step.w_priv,
        "regularizer_weight": step.reg_weight,
        "sigma": privacy.noise_multiplier if privacy else None,
        "sample_rate": config.batch_size / num_rows,
        "steps": steps,
        "accountant": privacy.accountant if privacy else None,
        "epsilon_spent": (
            privacy.epsilon_spent if privacy else (None if mode.name == "sgd_ori" else (stats_epsilon or 0.0))
        ),
        "neighbouring_relation": privacy.neighbouring_relation if privacy else None,
        # Feature-level epsilon of this sigma under both relations, whatever it was calibrated for.
        **{k: (getattr(privacy, k) if privacy else None) for k in FEATURE_EPSILON_FIELDS},
        "scaling": scaling.source if scaling else None,
        "scaling_description": scaling.description if scaling else None,
        "scaling_noise_multiplier": stats_sigma,
        "scaling_epsilon_cost": (
            (privacy.epsilon_spent - privacy.epsilon_without_statistics)
            if privacy and stats_sigma
            else stats_epsilon
        ),
        "epsilon_without_statistics": privacy.epsilon_without_statistics if privacy else None,
        "privacy_notes": [*(privacy.notes if privacy else ()), *(privacy_notes if privacy else ())],
        "rng": rng,
        "guarantee": (
            f"(eps, delta) feature-level DP: original sensitive values are read only through the DP "
            f"scaling statistics (--scaling dp), eps = {stats_epsilon:.4g}"
            if stats_epsilon
            else mode.guarantee
        )
        # The mode's nominal guarantee is not this run's when something lies outside it (e.g. a scale
        # fitted on private rows under sgd_hybrid, whose nominal guarantee says they are never read).
        + (
            ""
            if not outside_guarantee or mode.name == "sgd_ori"
            else " [nominal: does not hold for this run, see outside_guarantee]"
        ),
        "privacy_guarantee_holds": mode.name != "sgd_ori" and not outside_guarantee,
        "outside_guarantee": outside_guarantee,
        "divide_by_realised_batch": config.divide_by_realised_batch,
        "per_example_method": method,
        "per_example_reason": method_reason,
        **{k: final[k] for k in final if k.startswith(("val_", "test_"))},
        "train_seconds": train_seconds,
        # None where the timing depends on private data (fusiondp.train.run_experiment's private_timing)
        "seconds_per_epoch": None if train_seconds is None else train_seconds / max(len(log), 1),
        "num_train_rows": num_rows,
        "num_features": num_features,
        "epochs_log": log,
        "device": device,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # float sums, hence the last digits, depend on it
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "command": command_line(),
        "args": config.settings(),
        **(extra_record or {}),
    }


def print_summary(record: dict, metrics: Sequence[str], *, extra: Sequence[str] = ()) -> None:
    """One JSON line on stdout: the run's mode and privacy (:data:`SUMMARY_KEYS`), ``extra`` keys, and
    ``metrics`` (the dataset's headline test metrics). Every training script ends with it."""
    keys = (*SUMMARY_KEYS, *extra, *metrics)
    print(json.dumps({k: record.get(k) for k in keys}))
