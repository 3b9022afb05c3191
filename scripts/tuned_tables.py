"""One table and one plot per data set from tuning studies: every mode's tuned winner against ε, under
both protocols, beside the reference-hyperparameter runs.

    python scripts/tuned_tables.py results/tune/sepsis_eps* --reference results/sepsis.jsonl \
        --out docs/tables/sepsis_tuned.md --plot docs/sepsis_tuned_aupr_vs_eps.png

Each study folder is what ``scripts/tune.py --results`` wrote; its ``study/summary.json`` gives, per
mode, the val-selected winner's test metric (idealised: mean ± std over its seeds; honest: the one
released model) and, under the idealised protocol, the median and interquartile range over all trials.
Several honest studies at the same ε (``--study_seed 0, 1, 2``) are pooled: mean ± std over studies.
``--reference``: records (folders or JSON lines) of runs at fixed hyperparameters (no tuning study);
their mean ± std over seeds per mode and ε fills the last column (or ``--reference_table``, a table
``scripts/make_tables.py --group mode epsilon`` wrote). Only the modes some study tuned are shown. The plot draws the metric against ε,
one colour per mode: solid with error bars for the idealised winners, dashed for the honest releases,
dotted for the reference runs.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from fusiondp.experiment.results import load_records
from fusiondp.mechanism.modes import MODES


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (tune.py --results)")
    parser.add_argument("--reference", nargs="*", type=Path, default=[], help="records of untuned runs")
    parser.add_argument(
        "--reference_table",
        type=Path,
        default=None,
        help="or: a table scripts/make_tables.py wrote with --group mode epsilon (cells 'mean ± std', column n)",
    )
    parser.add_argument("--metric", default="test_aupr", help="a test metric the studies summarised")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    return parser


def _order(mode: str) -> tuple[int, str]:
    base = mode.split("+", 1)[0]
    return (list(MODES).index(base) if base in MODES else len(MODES), mode)


def load_studies(folders: list[Path], metric: str) -> tuple[str, dict]:
    """(data set, cells): ``cells[(epsilon, mode)]`` holds the idealised winner's summary and the list of
    honest releases (one value per study)."""
    datasets, cells = set(), defaultdict(lambda: {"idealised": None, "honest": []})
    for folder in folders:
        path = folder / "study" / "summary.json"
        if not path.exists():
            raise SystemExit(
                f"{folder}: no study/summary.json (run scripts/tune.py with --results {folder} first)"
            )
        summary = json.loads(path.read_text())
        study = summary["_study"]
        datasets.add(study["dataset"])
        for mode, row in summary.items():
            if mode.startswith("_"):
                continue
            if "released" in row and row["released"] is None:  # an honest study that drew K = 0
                continue
            final = row.get(f"final_{metric}")
            if final is None:
                raise SystemExit(f"{path}: no final_{metric} for {mode} (summarised with another metric?)")
            cell = cells[(float(row["epsilon"]), mode)]
            if study["protocol"] == "honest":
                cell["honest"] += [final["mean"]] if final["n"] else []
            else:
                cell["idealised"] = {
                    "final": final,
                    "trials": row.get(f"trials_{metric}"),
                    "k": row.get("trials"),
                }
    if len(datasets) != 1:
        raise SystemExit(f"the studies mix data sets {sorted(datasets)}: give one data set's folders")
    return datasets.pop(), cells


def reference_cells(paths: list[Path], *, dataset: str, metric: str) -> dict:
    """Mean, std and n over seeds per (ε, mode) of untuned runs of ``dataset``."""
    values = defaultdict(list)
    for path in paths:
        for record in load_records(path):
            if (
                record.get("dataset") != dataset
                or record.get("tuning_protocol")
                or record.get("sigma") is None
            ):
                continue
            values[(float(record["epsilon"]), record["mode"])].append(record[metric])
    return {key: _stats(v) for key, v in values.items()}


def reference_from_table(path: Path, *, metric: str) -> dict:
    """The (ε, mode) cells of a ``make_tables.py --group mode epsilon`` Markdown table."""
    rows = [
        line.strip().strip("|").split("|") for line in path.read_text().splitlines() if line.startswith("|")
    ]
    head = [h.strip() for h in rows[0]]
    missing = [c for c in ("mode", "epsilon", metric, "n") if c not in head]
    if missing:
        raise SystemExit(f"{path}: the table has no column(s) {missing}; its columns are {head}")
    cells = {}
    for row in rows[2:]:
        values = dict(zip(head, (v.strip() for v in row), strict=True))
        mean, _, std = values[metric].partition(" ± ")
        cells[(float(values["epsilon"]), values["mode"])] = {
            "mean": float(mean), "std": float(std or 0.0), "n": int(values["n"])
        }  # fmt: skip
    return cells


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def _cell(stats: dict | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f} ({stats['n']})"


def markdown(dataset: str, cells: dict, reference: dict, metric: str) -> str:
    lines = [
        f"{dataset}: {metric}, tuned winners (selected on validation) against ε",
        "",
        "| ε | mode | idealised winner (mean ± std, seeds) | all trials: median [IQR] | honest release "
        "(mean ± std, studies) | reference hyperparameters |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted(set(cells) | set(reference), key=lambda k: (k[0], _order(k[1])))
    for eps, mode in keys:
        cell = cells.get((eps, mode), {"idealised": None, "honest": []})
        ideal = cell["idealised"]
        trials = ideal and ideal["trials"]
        spread = (
            f"{trials['median']:.4f} [{trials['q1']:.4f}, {trials['q3']:.4f}]"
            if trials and trials["n"]
            else "-"
        )
        honest = _cell(_stats(cell["honest"])) if cell["honest"] else "-"
        lines.append(
            f"| {eps:g} | {mode} | {_cell(ideal and ideal['final'])} | {spread} | {honest} | "
            f"{_cell(reference.get((eps, mode)))} |"
        )
    return "\n".join(lines) + "\n"


def plot(dataset: str, cells: dict, reference: dict, metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({m for _, m in cells} | {m for _, m in reference}, key=_order)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, mode in enumerate(modes):
        colour = f"C{i % 10}"
        ideal = sorted(
            (e, c["idealised"]["final"]) for (e, m), c in cells.items() if m == mode and c["idealised"]
        )
        if ideal:
            ax.errorbar([e for e, _ in ideal], [f["mean"] for _, f in ideal], yerr=[f["std"] for _, f in ideal],
                        color=colour, marker="o", capsize=3, label=f"{mode} (idealised)")  # fmt: skip
        honest = sorted((e, _stats(c["honest"])) for (e, m), c in cells.items() if m == mode and c["honest"])
        if honest:
            ax.errorbar([e for e, _ in honest], [s["mean"] for _, s in honest], yerr=[s["std"] for _, s in honest],
                        color=colour, marker="s", linestyle="--", capsize=3, label=f"{mode} (honest)")  # fmt: skip
        ref = sorted((e, s) for (e, m), s in reference.items() if m == mode)
        if ref:
            ax.plot([e for e, _ in ref], [s["mean"] for _, s in ref], color=colour, marker=".", linestyle=":",
                    alpha=0.7, label=f"{mode} (reference)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (idealised: per run; honest: total, tuning included)")
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: tuned winners against ε")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> str:
    dataset, cells = load_studies(args.studies, args.metric)
    reference = reference_cells(args.reference, dataset=dataset, metric=args.metric)
    if args.reference_table:
        reference |= reference_from_table(args.reference_table, metric=args.metric)
    tuned_modes, tuned_eps = {m for _, m in cells}, {e for e, _ in cells}
    reference = {k: v for k, v in reference.items() if k[1] in tuned_modes and k[0] in tuned_eps}
    text = markdown(dataset, cells, reference, args.metric)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot:
        plot(dataset, cells, reference, args.metric, args.plot)
    return text


if __name__ == "__main__":
    main(get_args_parser().parse_args())
