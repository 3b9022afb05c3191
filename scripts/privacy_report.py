r"""Each run's privacy guarantee in words and numbers, from its result record.

    python scripts/privacy_report.py results/sepsis.jsonl
    python scripts/privacy_report.py results/bank.jsonl --where mode=fusiondp epsilon=1.0 --out report.md
    python scripts/privacy_report.py --epsilon_table --num_rows 14293 --batch_size 128 --epochs 13 \
        --epsilons 0.5 1 2 4 8          # no records: σ per accountant and relation, ε under both relations

Per run: which columns are protected and under which neighbouring relation; (ε, δ) under BOTH
relations (zero-out and replace-one) for the σ actually used, with the accountant of each; σ, q, T;
the randomness (``rng``: a run seeded from its recorded --seed is an experiment, and its guarantee
does not hold; --secure_rng runs draw the sampler and the noise from OS entropy); where the original
view's sensitive-column scaling came from (``scaling``: support set, DP estimate and its ε cost, or
the private training values); the settings that put the run outside its guarantee; and what is NOT
protected — labels, public columns, and what the public columns reveal about the sensitive ones,
measured by the imputer's quality on HELD-OUT rows (the val/test rows of ``imputation_metrics.csv``
in the record's data_dir, as impute_<dataset>.py writes it; "unavailable" otherwise).

Privacy contract: this report never reads a training file. Imputation quality on training rows (the
original vs the hybrid training values) is a function of their sensitive values and is never computed
or shown here; an ``imputation_metrics.csv`` without a ``rows`` column (older versions measured it on
training rows) or with rows other than val/test is refused, not printed.
Records written before the per-relation fields existed get them recomputed from (σ, q, T, δ); records
without ``rng`` are treated as seeded (they predate --secure_rng).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from fusiondp.experiment.cli import run_main
from fusiondp.experiment.results import flags_to_conditions, load_records
from fusiondp.mechanism.accounting import (
    REPLACE_ONE,
    ZERO_OUT,
    feature_epsilons,
    make_privacy_spec,
    num_steps,
)
from fusiondp.mechanism.optim import warmup_steps
from fusiondp.tabular.impute import QUALITY_ROWS

SEEDED_REASON = "sampler and noise seeded from a recorded seed (experiment mode)"
PRIVATE_SCALING_REASON = (
    "original view's sensitive columns scaled with statistics of the private training values "
    "(scaling 'private': a reference setting)"
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="*", type=Path, help="JSON-lines result files")
    parser.add_argument("--where", nargs="*", default=[], metavar="KEY=VALUE", help="keep matching runs only")
    parser.add_argument("--out", type=Path, default=None, help="write the report here too")
    t = parser.add_argument_group("epsilon table (instead of records)")
    t.add_argument("--epsilon_table", action="store_true", help="print σ and ε under both relations")
    t.add_argument("--num_rows", type=int, default=14293, help="N training rows")
    t.add_argument("--batch_size", type=int, default=128, help="expected Poisson batch size b")
    t.add_argument("--epochs", type=float, default=13, help="T = round(epochs*N/b)")
    t.add_argument("--delta", type=float, default=1e-5)
    t.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 8.0])
    return parser


def epsilon_table(
    *, num_rows: int, batch_size: int, epochs: float, delta: float, epsilons: list[float]
) -> str:
    """Markdown: per target ε and (accountant, relation σ is calibrated for), σ and ε under both relations."""
    plans = [("rdp", ZERO_OUT), ("prv", ZERO_OUT), ("pld", ZERO_OUT), ("pld", REPLACE_ONE)]
    q, steps = batch_size / num_rows, num_steps(epochs=epochs, num_rows=num_rows, batch_size=batch_size)
    lines = [
        f"N = {num_rows}, b = {batch_size}, q = {q:.5f}, T = {steps}, δ = {delta:g}",
        "",
        "| target ε | calibrated for (accountant) | σ | ε zero-out | ε replace-one (pld) |",
        "|---:|---|---:|---:|---:|",
    ]
    for eps in epsilons:
        for accountant, relation in plans:
            spec = make_privacy_spec(
                epsilon=eps,
                delta=delta,
                batch_size=batch_size,
                num_rows=num_rows,
                epochs=epochs,
                accountant=accountant,
                relation=relation,
            )
            lines.append(
                f"| {eps:g} | {relation} ({accountant}) | {spec.noise_multiplier:.4f} | "
                f"{spec.epsilon_zero_out:.3f} ({spec.accountant_zero_out}) | {spec.epsilon_replace_one:.3f} |"
            )
    return "\n".join(lines) + "\n"


def imputation_summary(record: dict) -> tuple[str, pd.DataFrame | None]:
    """(where the numbers come from, per-column imputation quality on held-out rows) for the record.

    Reads only ``imputation_metrics.csv`` in the record's data_dir, and only its held-out rows
    (:data:`fusiondp.tabular.impute.QUALITY_ROWS`); a file that was (or may have been) measured on training
    rows is refused with the reason. Never reads training files.
    """
    if not record.get("data_dir"):
        return "unavailable: the record names no data_dir", None
    data_dir = Path(record["data_dir"])
    metrics = data_dir / "imputation_metrics.csv"
    if not metrics.is_file():
        return (
            f"unavailable: no imputation_metrics.csv in {data_dir} (impute_<dataset>.py writes it, measured "
            "on held-out val/test rows; the authors' sepsis release ships none, and quality on training "
            "rows is never computed for a report)",
            None,
        )
    quality = pd.read_csv(metrics)
    if "rows" not in quality.columns:
        return (
            f"not shown: {metrics} has no 'rows' column, so it was written before imputation quality moved "
            "to held-out rows and was measured on TRAINING rows (a private evaluation, never to be "
            "published); rerun impute_<dataset>.py to measure it on val/test rows",
            None,
        )
    found = list(dict.fromkeys(quality["rows"].astype(str)))
    outside = [r for r in found if r not in QUALITY_ROWS]
    if outside:
        return (
            f"not shown: {metrics} holds quality on rows {outside}; only held-out rows {list(QUALITY_ROWS)} "
            "may be reported (training rows are a private evaluation)",
            None,
        )
    return f"{metrics}, held-out rows: {', '.join(found)}", quality


def _quality_line(row: pd.Series) -> str:
    where = f"{row['column']} ({row['rows']} rows)"
    if row["type"] == "categorical":
        return f"{where}: accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}"
    return f"{where}: R² {row['r2']:.3f}, MSE {row['mse']:.4g}"


def rng_lines(record: dict) -> list[str]:
    """The run's randomness in words; for a seeded DP run, why its guarantee does not hold.

    ``rng`` is "seeded" (the Poisson sampler and the DP noise drawn from the recorded --seed) or
    "secure" (--secure_rng: OS entropy, seeds never recorded); records without it are seeded.
    """
    rng = record.get("rng")
    if rng not in (None, "seeded", "secure"):
        raise ValueError(f"record field rng must be 'seeded' or 'secure', got {rng!r}.")
    # train.py records rng only for runs that draw DP noise (the steps' or the DP statistics');
    # records that predate the field drew it iff they have a sigma.
    dp = record.get("sigma") is not None or rng is not None
    if rng == "secure":
        return [
            "Randomness: secure (--secure_rng): the Poisson sampler and the DP noise are drawn from OS "
            "entropy; their seeds are never recorded."
        ]
    origin = "" if "rng" in record else " (the record predates the rng field: treated as seeded)"
    if not dp:
        return [
            f"Randomness: seeded from the recorded seed {record.get('seed')}{origin}; this mode adds no "
            "DP noise, so the seed does not change its guarantee."
        ]
    return [
        f"Randomness: seeded (experiment mode){origin}: the Poisson sampler and the DP noise are drawn "
        f"from the recorded seed {record.get('seed')}.",
        "EXPERIMENT MODE: the guarantee does NOT hold for this model: anyone who knows the seed can "
        "reproduce the sampler and the noise (and subtract the noise from the update). The (ε, δ) above "
        "describe the mechanism, i.e. what a secure run with the same settings gets. To train a model you "
        "may release, rerun with --secure_rng.",
    ]


def scaling_line(record: dict) -> str:
    """Where the original view's sensitive-column statistics (scaler, NaN fill) came from."""
    scaling = record.get("scaling")
    what = "Scaling of the original view's sensitive columns"
    if scaling is None:
        return f"{what}: not recorded (the record predates the scaling field)."
    if scaling == "support":
        return f"{what}: statistics of the public support set (true values of public rows): no privacy cost."
    if scaling == "dp":
        cost = record.get("scaling_epsilon_cost")
        spent = "ε cost not recorded" if cost is None else f"they took ε = {float(cost):g} of the run's ε"
        return (
            f"{what}: a DP estimate from the training rows' original values ({spent}, composed into the "
            "guarantee above)."
        )
    if scaling == "private":
        consequence = (
            "the guarantee does NOT hold: these statistics are a function of private values computed "
            "outside the mechanism"
            if record.get("sigma") is not None
            else "outside any guarantee"
        )
        return (
            f"{what}: statistics of the training rows' ORIGINAL (private) values, a reference setting, "
            f"NOT private: {consequence}."
        )
    raise ValueError(f"record field scaling must be 'support', 'dp' or 'private', got {scaling!r}.")


def guarantee_status(record: dict) -> tuple[bool, list[str]]:
    """(does the guarantee hold, reasons it does not): the record's own, plus the seeded-randomness and
    private-scaling conditions for DP runs whose record predates those fields."""
    outside = list(record.get("outside_guarantee") or [])
    holds = bool(record.get("privacy_guarantee_holds"))
    if record.get("sigma") is not None:
        if record.get("rng", "seeded") == "seeded" and not any("seed" in r for r in outside):
            outside.append(SEEDED_REASON)
        if record.get("scaling") == "private" and not any(
            "scal" in r.lower() or "statistic" in r.lower() for r in outside
        ):
            outside.append(PRIVATE_SCALING_REASON)
    return holds and not outside, outside


def per_relation(record: dict) -> dict:
    """ε of the run's σ under both relations: from the record, or recomputed for older records."""
    keys = ("epsilon_zero_out", "accountant_zero_out", "epsilon_replace_one", "accountant_replace_one")
    if all(record.get(k) is not None for k in keys):
        return {k: record[k] for k in keys}
    accountant = record.get("accountant") or "rdp"
    accountant = accountant if accountant in ("rdp", "prv", "pld") else "pld"
    eps = feature_epsilons(
        noise_multiplier=record["sigma"],
        sample_rate=record["sample_rate"],
        steps=record["steps"],
        delta=record["delta"],
        accountant=accountant,
        zero_out_term_vanishes=record.get("neighbouring_relation") == ZERO_OUT,
    )
    return {**eps, "accountant_zero_out": f"{eps['accountant_zero_out']} (recomputed)"}


def protected(record: dict, sensitive: list[str]) -> str:
    """What the feature-level guarantee covers: sensitive columns, or the sensitive spans of notes."""
    if sensitive:
        return "columns " + ", ".join(sensitive)
    if record.get("model") == "CAML":
        return (
            "the sensitive spans of each note (zero-out: a note's spans replaced by their infills, i.e. "
            "the hybrid note); span positions and types, found on the original notes, are treated as public"
        )
    return "not recorded"


def tuning_lines(record: dict) -> list[str]:
    """What tuning cost: nothing said for a run outside a study; the protocol for a trial of one."""
    protocol = record.get("tuning_protocol")
    if not protocol:
        return [
            "Tuning: not part of a recorded study. Hyperparameters chosen on private data cost privacy "
            "that this ε does not count."
        ]
    study = record.get("tuning_study")
    if protocol == "idealised" or record.get("epsilon_with_tuning") is None:
        return [
            f"Tuning: a trial of study {study}, idealised protocol: ε above is PER RUN; the cost of "
            "selecting the best of the study's trials is NOT counted (as papers usually report)."
        ]
    return [
        f"Tuning: a trial of study {study}, honest protocol: {record.get('cost_of_tuning')}. Per run "
        f"ε = {record['epsilon_per_run_rdp']:.3f} (RDP); releasing the best trial of the study costs "
        f"ε = {record['epsilon_with_tuning']:.3f} in total at δ = {record['delta']:g}, tuning included. "
        "The validation rows the winner is chosen on are evaluation data (declared public). K stays "
        "unobserved in a study whose trials run with --secure_rng (drawn from OS entropy, published nowhere); "
        "a seeded study is an experiment whose K follows its seed. Only the winning trial is covered.",
    ]


def report(record: dict) -> str:
    """The guarantee of one run, in words and numbers."""
    sensitive = record.get("sensitive_columns") or []
    lines = [
        f"## {record.get('dataset', '?')} · {record['mode']} · seed {record.get('seed')} · target ε "
        f"{record.get('epsilon')} · commit {record.get('git_commit')}",
        "",
        f"Protected: {protected(record, sensitive)}.",
        f"Guarantee: {record.get('guarantee', 'not recorded')}.",
    ]
    if record.get("sigma") is None:
        lines.append("No DP noise: this mode has no (ε, δ) (see the guarantee above).")
    else:
        eps = per_relation(record)
        lines += [
            f"σ calibrated for: {record['neighbouring_relation']} (accountant {record['accountant']}); "
            f"ε spent under it {record['epsilon_spent']:.3f} at δ = {record['delta']:g}.",
            f"Feature-level (ε, δ) of this σ: zero-out ({eps['epsilon_zero_out']:.3f}, {record['delta']:g}) "
            f"[{eps['accountant_zero_out']}]; replace-one ({eps['epsilon_replace_one']:.3f}, "
            f"{record['delta']:g}) [{eps['accountant_replace_one']}].",
            f"Mechanism: σ = {record['sigma']:.4f}, q = b/N = {record['sample_rate']:.5f}, T = {record['steps']} "
            f"steps, clip C = {record.get('max_grad_norm')}.",
        ]
    pre = record.get("public_pretraining")
    if pre:
        lines.append(
            f"Public pretraining: {pre['epochs']:g} epoch(s) ({pre['steps']} steps, lr {pre['lr']:g}) of plain SGD "
            f"on the {pre['view']} rows before the DP steps, without noise: it reads every row's public "
            "columns, imputed sensitive values and label, never an original sensitive value, so the "
            "feature-level guarantee above covers it and no sample-level guarantee holds."
        )
    if record.get("alpha_warmup"):
        lines.append(
            f"Private weight warm-up (--alpha_warmup {record['alpha_warmup']:g}): alpha rises linearly to "
            f"{record.get('alpha_used'):.4g} over the first {warmup_steps(record['alpha_warmup'], steps=record['steps'])} "
            f"of the {record['steps']} steps; a public schedule applied after the noise (post-processing), "
            "so σ and ε above are unchanged."
        )
    lines += tuning_lines(record)
    holds, outside = guarantee_status(record)
    lines.append(
        f"Guarantee holds: {'yes' if holds else 'NO'}"
        + (f" — outside it: {'; '.join(outside)}." if outside else ".")
    )
    lines += rng_lines(record)
    lines.append(scaling_line(record))
    settings = (
        f"Settings: C_h {record.get('c_h_source')}; divide_by_realised_batch "
        f"{record.get('divide_by_realised_batch')}"
    )
    if record.get("noise_source"):
        settings += f"; noise {record['noise_source']}"
    lines.append(settings + ".")
    for note in record.get("privacy_notes") or []:
        lines.append(f"Note: {note}.")
    lines += [
        "",
        "NOT protected: the labels; the public columns (every feature other than the protected ones); "
        "and whatever the public columns reveal about the protected ones. The imputer measures that last "
        "part on held-out val/test rows (an evaluation against their true values, never on training rows, "
        "never used in training):",
    ]
    source, quality = imputation_summary(record)
    lines.append(f"  imputation quality ({source}){':' if quality is not None else ''}")
    if quality is not None:
        lines += [f"  - {_quality_line(row)}" for _, row in quality.iterrows()]
    if record.get("imputer"):
        lines.append(f"  imputer: {record['imputer']}")
    return "\n".join(lines) + "\n"


def _matches(record: dict, conditions: dict[str, str]) -> bool:
    for key, wanted in conditions.items():
        value = record.get(key)
        try:
            if not math.isclose(float(value), float(wanted)):
                return False
        except (TypeError, ValueError):
            if str(value) != wanted:
                return False
    return True


def main(args: argparse.Namespace) -> dict:
    if args.epsilon_table:
        table = epsilon_table(
            num_rows=args.num_rows,
            batch_size=args.batch_size,
            epochs=args.epochs,
            delta=args.delta,
            epsilons=args.epsilons,
        )
        print(table)
        if args.out:
            args.out.write_text(table)
        return {"table": table}
    if not args.results:
        raise ValueError("give JSON-lines result files, or --epsilon_table.")
    conditions = flags_to_conditions([f"--{w}" for w in args.where])
    records = [r for path in args.results for r in load_records(path) if _matches(r, conditions)]
    if not records:
        raise ValueError(f"no records in {[str(p) for p in args.results]} match {args.where}.")
    reports = [report(r) for r in records]
    text = "\n".join(reports)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return {"reports": reports}


if __name__ == "__main__":
    run_main(main, get_args_parser())
