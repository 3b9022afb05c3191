"""Markdown tables (mean ± std and count per cell) and a privacy-utility plot from result records.

    python scripts/make_tables.py results/sepsis.jsonl --group mode epsilon
    python scripts/make_tables.py results/sepsis.jsonl --group alpha beta --where mode=fusiondp
    python scripts/make_tables.py results/sepsis.jsonl --plot docs/sepsis_aupr.png --out docs/table.md
    python scripts/make_tables.py results/sepsis/ results/old.jsonl --group mode epsilon

Results are results folders (one JSON file per run, as ``scripts/sweep.py`` writes them) or JSON-lines
files, in any mix.

The plot draws --y (default test AUPR) against the target ε, one line per DP mode; the non-private
modes, for which ε means nothing, are horizontal dashed lines. Runs whose settings void their
guarantee (``outside_guarantee`` in the record, other than seeded experiment mode, which every
reproducible table is made of) are left out unless --include_outside_guarantee; a
cell that pools runs with different settings (other than the seed) is reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
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
    parser.add_argument("--y", default="test_aupr", help="metric of the plot")
    parser.add_argument(
        "--include_outside_guarantee",
        action="store_true",
        help="keep runs whose settings void the privacy guarantee (left out by default)",
    )
    return parser


def load_frame(
    paths: list[Path], where: list[str], *, include_outside_guarantee: bool = False
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


def markdown_table(frame: pd.DataFrame, *, group: list[str], metrics: list[str]) -> str:
    missing = [c for c in [*group, *metrics] if c not in frame]
    if missing:
        raise SystemExit(f"column(s) {missing} are not in the records; available: {sorted(frame.columns)}")
    grouped = frame.groupby(group, sort=True, dropna=False)
    _warn_mixed_settings(grouped, group)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}:{stat}" for metric, stat in stats.columns]
    stats = stats.assign(n=grouped.size()).reset_index()
    stats = _mode_order(stats)
    header = [*group, *metrics, "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in stats.iterrows():
        cells = [str(row[g]) for g in group]
        for m in metrics:
            std = row[f"{m}:std"]
            spread = "" if pd.isna(std) else f" ± {std:.4f}"  # one run: no spread to show
            cells.append(f"{row[f'{m}:mean']:.4f}{spread}")
        cells.append(str(int(row["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def privacy_utility_plot(frame: pd.DataFrame, *, y: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plots]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in [m for m in MODES if m in set(frame["mode"])]:
        runs = frame[frame["mode"] == mode]
        if not MODES[mode].private:  # ε does not apply: one line at the mean over all its runs
            ax.axhline(
                runs[y].mean(),
                linestyle="--",
                linewidth=1,
                color=f"C{list(MODES).index(mode)}",
                label=f"{mode} (no DP, n={len(runs)})",
            )
            continue
        stats = runs.groupby("epsilon")[y].agg(["mean", "std"]).reset_index()
        if len(stats) == 1:
            ax.plot(
                stats["epsilon"],
                stats["mean"],
                marker="o",
                linestyle="none",
                label=mode,
                color=f"C{list(MODES).index(mode)}",
            )
        else:
            ax.errorbar(
                stats["epsilon"],
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                label=mode,
                color=f"C{list(MODES).index(mode)}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (target)")
    ax.set_ylabel(y)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main(args: argparse.Namespace) -> str:
    frame = load_frame(args.results, args.where, include_outside_guarantee=args.include_outside_guarantee)
    table = markdown_table(frame, group=args.group, metrics=args.metrics)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    if args.plot:
        privacy_utility_plot(frame, y=args.y, path=args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
