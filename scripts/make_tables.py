"""Markdown tables (mean ± std and count per cell) and a privacy-utility plot from result records.

    python scripts/make_tables.py results/sepsis.jsonl --group mode epsilon
    python scripts/make_tables.py results/sepsis.jsonl --group alpha beta --where mode=fusiondp
    python scripts/make_tables.py results/sepsis.jsonl --plot docs/sepsis_aupr.png --out docs/table.md
    python scripts/make_tables.py results/sepsis/ results/old.jsonl --group mode epsilon
    python scripts/make_tables.py results/sepsis/ --metrics test_auroc test_group_auroc_gap \
        test_worst_group_auroc test_worst_group --plot docs/gap.png --y test_group_auroc_gap test_worst_group_auroc
    python scripts/make_tables.py results/sepsis/ --per_group --group mode epsilon group --metrics group_auroc

Results are results folders (one JSON file per run, as ``scripts/sweep.py`` writes them) or JSON-lines
files, in any mix.

Per-group metrics (fusiondp/experiment/groups.py): the flat fields (``test_group_auroc_gap``,
``test_worst_group_auroc``, ``test_group_auroc_gap_<family>``, ...) are ordinary --metrics; a text
field (``test_worst_group``) shows its most frequent value and how many runs had it. ``--per_group``
turns each run into one row per test group, with the columns ``group``, ``group_family``,
``group_n``, ``group_auroc``, ``group_aupr``, ``group_positive_rate``,
``group_predicted_positive_rate`` and ``group_too_small``, to --group, --where and plot by; a
too-small group has no numbers (``n/a``).

The plot draws --y (default test AUPR) against the target ε, one line per DP mode, one panel per --y
metric (with --per_group, one panel per group and metric); the non-private modes, for which ε means
nothing, are horizontal dashed lines. Runs whose settings void their
guarantee (``outside_guarantee`` in the record, other than seeded experiment mode, which every
reproducible table is made of) are left out unless --include_outside_guarantee; a
cell that pools runs with different settings (other than the seed) is reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fusiondp.experiment.records import EXPERIMENT_MODE
from fusiondp.experiment.results import flags_to_conditions, load_records
from fusiondp.mechanism.modes import MODES

DEFAULT_METRICS = ["test_aupr", "test_auroc", "test_f1", "test_acc"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="results folders or JSON-lines files")
    parser.add_argument("--group", nargs="+", default=["mode", "epsilon"], help="columns to group by")
    parser.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    parser.add_argument(
        "--where",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="keep matching runs only; KEY=a,b keeps either value, KEY=none a missing one",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG: --y against epsilon per mode")
    parser.add_argument("--y", nargs="+", default=["test_aupr"], help="metric(s) of the plot, one panel each")
    parser.add_argument(
        "--per_group",
        action="store_true",
        help="one row per run and test group (from test_groups): columns group, group_family, group_auroc, ...",
    )
    parser.add_argument(
        "--include_outside_guarantee",
        action="store_true",
        help="keep runs whose settings void the privacy guarantee (left out by default)",
    )
    return parser


GROUP_METRICS = ("n", "positive_rate", "predicted_positive_rate", "auroc", "aupr")
"""The per-group fields of ``test_groups`` that --per_group turns into ``group_<name>`` columns."""


def per_group_rows(frame: pd.DataFrame, *, field: str = "test_groups") -> pd.DataFrame:
    """One row per run and group of ``field``: the run's columns plus ``group``, ``group_family``,
    ``group_<metric>`` (NaN for a too-small group) and ``group_too_small``. Runs without groups drop out."""
    if field not in frame:
        raise SystemExit(f"--per_group: no {field!r} in the records (runs from before per-group metrics?)")
    rows = []
    for _, run in frame.iterrows():
        groups = run[field]
        if not isinstance(groups, dict):
            continue
        for name, metrics in groups.items():
            extra = {f"group_{m}": metrics.get(m, float("nan")) for m in GROUP_METRICS}
            extra["group_n"] = metrics.get("n")
            rows.append(
                {
                    **run.to_dict(),
                    "group": name,
                    "group_family": name.split("=", 1)[0],
                    **{k: (float("nan") if v is None else v) for k, v in extra.items()},
                    "group_too_small": bool(metrics.get("too_small", False)),
                }
            )
    if not rows:
        raise SystemExit(f"--per_group: no run has {field!r}")
    out = pd.DataFrame(rows)
    for column in ("group", "group_family"):  # the records' order (Age=<40 before Age=40-59), not A-Z
        out[column] = pd.Categorical(out[column], categories=list(dict.fromkeys(out[column])), ordered=True)
    return out


def load_frame(
    paths: list[Path], where: list[str], *, include_outside_guarantee: bool = False, per_group: bool = False
) -> pd.DataFrame:
    records = [r for p in paths for r in load_records(p)]
    if not records:
        raise SystemExit(f"no records in {[str(p) for p in paths]}")

    # Seeded (experiment-mode) runs stay: reproducible tables are made of them, and every one of them
    # says so. What is left out is a configuration that voids the guarantee whatever the RNG.
    def voided(record: dict) -> bool:
        return any(reason != EXPERIMENT_MODE for reason in record.get("outside_guarantee") or [])

    outside = [r for r in records if voided(r)]
    if outside and not include_outside_guarantee:
        records = [r for r in records if not voided(r)]
        print(
            f"note: left out {len(outside)} run(s) whose settings void their guarantee "
            "(e.g. --c_h_from_private); --include_outside_guarantee keeps them",
            file=sys.stderr,
        )
    frame = pd.DataFrame(records)
    if per_group:
        frame = per_group_rows(frame)
    for key, value in flags_to_conditions([f"--{w}" for w in where]).items():
        if key not in frame:
            raise SystemExit(f"--where {key}={value}: no column {key!r} in the records")
        wanted = set()
        for v in value.split(","):  # KEY=a,b keeps either; "none" also matches a missing value
            wanted |= {v, str(float(v))} if _numeric(v) else ({"None", "nan"} if v.lower() == "none" else {v})
        frame = frame[frame[key].astype(str).isin(wanted)]
    return frame


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _mode_order(frame: pd.DataFrame) -> pd.DataFrame:
    if "mode" in frame:
        order = {m: i for i, m in enumerate(MODES)}
        return frame.assign(_order=frame["mode"].map(order)).sort_values(["_order"], kind="stable")
    return frame


def _warn_mixed_settings(grouped, group: list[str]) -> None:
    """Say so when one cell pools runs whose settings differ in more than the seed."""
    for key, cell in grouped:
        if "args" not in cell:
            return
        settings = pd.DataFrame([a for a in cell["args"] if isinstance(a, dict)])
        ignored = {"seed", "results_json", "no_progress", "skip_existing", "device", *group}
        mixed = [c for c in settings.columns if c not in ignored and settings[c].astype(str).nunique() > 1]
        if mixed:
            print(
                f"warning: cell {key} pools runs with different {mixed}; add them to --group or --where",
                file=sys.stderr,
            )


def _is_text(series: pd.Series) -> bool:
    values = series.dropna()
    return len(values) > 0 and not pd.api.types.is_numeric_dtype(values.infer_objects())


def _is_whole(series: pd.Series) -> bool:
    """A count column (every value a whole number, e.g. group_n), shown without decimals."""
    values = pd.to_numeric(series, errors="coerce").dropna()
    return (
        len(values) > 0
        and not pd.api.types.is_bool_dtype(series)
        and bool((values == values.round()).all())
        and series.name.endswith("_n")
    )


def _most_common(values: pd.Series) -> str:
    """A text metric's cell: its most frequent value and in how many of the cell's runs it occurs."""
    counts = values.dropna().astype(str).value_counts()
    if counts.empty:
        return "n/a"
    return f"{counts.index[0]} ({counts.iloc[0]}/{len(values)})"


def markdown_table(frame: pd.DataFrame, *, group: list[str], metrics: list[str]) -> str:
    missing = [c for c in [*group, *metrics] if c not in frame]
    if missing:
        raise SystemExit(f"column(s) {missing} are not in the records; available: {sorted(frame.columns)}")
    grouped = frame.groupby(group, sort=True, dropna=False, observed=True)
    _warn_mixed_settings(grouped, group)
    text = [m for m in metrics if _is_text(frame[m])]
    counts = {m for m in metrics if m not in text and _is_whole(frame[m])}
    numeric = [m for m in metrics if m not in text]
    stats = grouped[numeric].agg(["mean", "std"]) if numeric else pd.DataFrame(index=grouped.size().index)
    stats.columns = [f"{metric}:{stat}" for metric, stat in stats.columns] if numeric else []
    for m in text:
        stats[f"{m}:mode"] = grouped[m].agg(_most_common)
    stats = stats.assign(n=grouped.size()).reset_index()
    stats = _mode_order(stats)
    header = [*group, *metrics, "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in stats.iterrows():
        cells = [str(row[g]) for g in group]
        for m in metrics:
            if m in text:
                cells.append(row[f"{m}:mode"])
                continue
            mean, std = row[f"{m}:mean"], row[f"{m}:std"]
            digits = 0 if m in counts and float(mean).is_integer() else 4  # counts (group_n) stay whole
            spread = "" if pd.isna(std) or (digits == 0 and std == 0) else f" ± {std:.{max(digits, 1)}f}"
            cells.append("n/a" if pd.isna(mean) else f"{mean:.{digits}f}{spread}")  # n/a: no run has a number
        cells.append(str(int(row["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _draw_panel(ax, frame: pd.DataFrame, y: str) -> None:
    """--y against ε, one line per DP mode; the non-private modes as dashed horizontal lines."""
    for mode in [m for m in MODES if m in set(frame["mode"])]:
        runs = frame[frame["mode"] == mode]
        color = f"C{list(MODES).index(mode)}"
        if not MODES[mode].private:  # ε does not apply: one line at the mean over all its runs
            if runs[y].notna().any():
                ax.axhline(
                    runs[y].mean(),
                    linestyle="--",
                    linewidth=1,
                    color=color,
                    label=f"{mode} (no DP, n={len(runs)})",
                )
            continue
        stats = runs.groupby("epsilon")[y].agg(["mean", "std"]).reset_index().dropna(subset=["mean"])
        if len(stats) == 1:
            ax.plot(stats["epsilon"], stats["mean"], marker="o", linestyle="none", label=mode, color=color)
        elif len(stats) > 1:
            ax.errorbar(
                stats["epsilon"],
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                label=mode,
                color=color,
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (target)")
    ax.set_ylabel(y)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def privacy_utility_plot(
    frame: pd.DataFrame, *, y: str | Sequence[str], path: Path, per_group: bool = False
) -> None:
    """One panel per metric of ``y`` (and, with ``per_group``, per test group), side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plots]'") from None
    metrics = [y] if isinstance(y, str) else list(y)
    missing = [m for m in metrics if m not in frame]
    if missing:
        raise SystemExit(f"--y {missing}: not in the records; available: {sorted(frame.columns)}")
    if per_group:
        panels = [(g, frame[frame["group"] == g], m) for g in dict.fromkeys(frame["group"]) for m in metrics]
    else:
        panels = [(None, frame, m) for m in metrics]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    share = per_group and len(metrics) == 1  # groups side by side on one scale, to compare them
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False, sharey=share)
    for ax, (title, runs, metric) in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, runs, metric)
        if title:
            ax.set_title(title, fontsize=10)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main(args: argparse.Namespace) -> str:
    frame = load_frame(
        args.results,
        args.where,
        include_outside_guarantee=args.include_outside_guarantee,
        per_group=args.per_group,
    )
    table = markdown_table(frame, group=args.group, metrics=args.metrics)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    if args.plot:
        privacy_utility_plot(frame, y=args.y, path=args.plot, per_group=args.per_group)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
