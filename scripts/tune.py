r"""Tune every mode with the same budget, select on validation, then run the winner over seeds.

    python scripts/tune.py --dataset sepsis --modes dpsgd fusiondp --epsilon 2 --protocol idealised \
        --trials 10 --results results/tune/sepsis_eps2_idealised --jobs 2
    python scripts/tune.py --dataset sepsis --modes dpsgd fusiondp --epsilon 2 --protocol honest \
        --mean_trials 10 --results results/tune/sepsis_eps2_honest -- --accountant rdp
    python scripts/tune.py --dataset bank --modes dpsgd fusiondp --epsilon 1 --trials 10 \
        --results results/tune/bank_eps1 --launcher slurm --partition cpu -- --one_hot --data_dir outputs/bank

One study per mode, on Optuna (``RandomSampler`` seeded by ``--study_seed``: candidates independent and
uniform over the mode's space, which the honest protocol's theorem requires; ``JournalStorage`` in
``RESULTS/study/optuna.journal``; the summary in ``RESULTS/study/summary.json``). Every mode gets the same number of trials K:

* ``--protocol idealised``: K = ``--trials``; each trial's σ meets ``--epsilon`` on its own, and the
  records and table say "cost of tuning not counted" (what papers usually report).
* ``--protocol honest``: K drawn once per study seed from ``--trials_distribution`` with mean
  ``--mean_trials`` (Papernot & Steinke 2022); each trial's σ is calibrated so that releasing the best
  of the K runs meets ``--epsilon`` in total (dp-accounting's RepeatAndSelectDpEvent, RDP accountant).
  The validation rows the winner is selected on are declared public (labels and rows of the
  evaluation split, never training rows); the records say so.

All K candidates are drawn and stored before the first run, so a study that is stopped and started
again runs exactly the trials that have no result yet: none lost, none repeated, and the same seed
draws the same K and the same candidates. Each trial is one run of the train script, through the
sweep's launchers (local processes, a SLURM array, Ray), its record in RESULTS. The winner is the
trial with the best ``--select`` metric (a validation metric; a test metric is refused); it is then run
with every seed of ``--seeds``. The table gives, per mode, the winner's test mean ± std over those
seeds and the median and interquartile range of the test metric over all trials (how much the mode
depends on its hyperparameters), and how long the study took.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fusiondp  # noqa: F401
except ModuleNotFoundError:  # run by an interpreter without the package: say so in one line
    raise SystemExit(
        f"scripts/tune.py: {sys.executable} cannot import fusiondp. Run `make setup` and use "
        ".venv/bin/python, or install the package into this interpreter (pip install -e '.[tune]')."
    ) from None

import numpy as np

from fusiondp.datasets import DATASETS, dataset_module, train_script_name
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.launch import (
    LAUNCHERS,
    Outcome,
    Progress,
    Run,
    add_launcher_args,
    parse_with_passthrough,
)
from fusiondp.experiment.results import load_records
from fusiondp.experiment.search import as_argv, candidate_flags, check_space, search_space, suggest
from fusiondp.mechanism.accounting import REPLACE_ONE
from fusiondp.mechanism.modes import get_mode
from fusiondp.mechanism.tuning import DISTRIBUTIONS, TUNING_PROTOCOLS, TrialCount

REPO = Path(__file__).resolve().parent.parent
TUNED_MODES = ["dpsgd", "naive_fusion", "pretrain_dpsgd", "feature-dp", "calibrated_fusion", "fusiondp"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_argument_group("the study")
    what.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    what.add_argument(
        "--modes",
        nargs="+",
        default=None,
        help=f"default: {TUNED_MODES} (under --protocol honest without the replace-one modes, which RDP cannot analyse)",
    )
    what.add_argument("--epsilon", type=float, required=True, help="per run (idealised) or in total (honest)")
    what.add_argument("--protocol", choices=TUNING_PROTOCOLS, default="idealised")
    what.add_argument("--trials", type=int, default=10, help="idealised: the number of trials per mode")
    what.add_argument("--trials_distribution", choices=DISTRIBUTIONS, default="truncated_negative_binomial")
    what.add_argument("--mean_trials", type=float, default=10.0, help="honest: the mean of K")
    what.add_argument("--eta", type=float, default=0.5, help="honest, truncated negative binomial: eta")
    what.add_argument("--study_seed", type=int, default=0, help="draws K and the candidates")
    what.add_argument("--select", default="val_aupr", help="the validation metric the winner maximises")
    what.add_argument(
        "--pretraining",
        action="store_true",
        help="add public pretraining (--pretrain_epochs, --pretrain_lr: a warm start on the hybrid rows) to "
        "the space of every mode (feature-level DP modes only; pretrain_dpsgd always has it)",
    )
    what.add_argument(
        "--seeds", nargs="+", type=int, default=[1, 2, 3], help="trials use the first; the winner all"
    )
    what.add_argument(
        "--results",
        required=True,
        help="the study's folder: run records, study/ (Optuna journal, summary.json)",
    )
    what.add_argument("--logs", default=None, help="the runs' logs (default: RESULTS/logs)")
    what.add_argument("extra", nargs="*", help="after --: flags passed to every run of the train script")
    add_launcher_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The study's flags; everything after ``--`` goes to every run of the train script."""
    return parse_with_passthrough(get_args_parser(), argv)


def train_parser(script: Path) -> argparse.ArgumentParser:
    """The train script's own parser, loaded from its file as the sweep does."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()


def check_passthrough(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse up front flags after ``--`` that a studied mode's runs would refuse (e.g. a split-mode flag
    such as --alpha_warmup with dpsgd among the modes): otherwise every trial of that mode fails at its
    start. Checked with the train script's parser and :meth:`RunConfig.validate`, per mode."""
    for mode in args.modes:
        probe = ["--mode", mode, "--epsilon", str(args.epsilon), *args.extra]
        if warm_started(args, mode):
            probe += ["--pretrain_epochs", "1"]  # the study sets it in every trial of a warm-started mode
        try:
            RunConfig.from_args(parser.parse_args(probe)).validate()
        except ValueError as err:
            raise SystemExit(f"flags after -- ({shlex.join(args.extra)}) with mode {mode}: {err}") from None


def passed_value(extra: list[str], flag: str, *, default: str) -> str:
    """The value the train script will parse for ``flag`` from the flags after ``--`` (the last one
    wins, ``--flag value`` or ``--flag=value``); ``default`` when it is not given."""
    value = default
    for i, token in enumerate(extra):
        if token == flag and i + 1 < len(extra):
            value = extra[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def check_args(args: argparse.Namespace, known: set[str]) -> None:
    """Bad input ends in one line that names the flag and the value."""
    if not args.select.startswith("val_"):
        raise SystemExit(
            f"--select {args.select!r}: the winner is chosen on a validation metric (val_*), never on test."
        )
    if args.protocol == "idealised" and args.trials < 1:
        raise SystemExit(f"--trials must be >= 1, got {args.trials}")
    if args.protocol == "honest":
        try:
            TrialCount(args.trials_distribution, mean=args.mean_trials, eta=args.eta)
        except ValueError as err:
            raise SystemExit(f"--mean_trials/--eta: {err}") from None
        if passed_value(args.extra, "--accountant", default="pld") != "rdp":
            raise SystemExit(
                "--protocol honest needs the RDP accountant (pass -- --accountant rdp): the cost of tuning, "
                "dp-accounting's RepeatAndSelectDpEvent, is computed by it only; PLD cannot."
            )
    owned = {"--mode", "--epsilon", "--seed", "--results_json", "--tuning_protocol", "--tuning_study"}
    clash = [t for t in args.extra if t.split("=", 1)[0] in owned]
    if clash:
        raise SystemExit(f"flags after -- must not set what the study sets ({sorted(owned)}); got {clash}")
    for mode in args.modes:
        try:
            check_space(space_of(args, mode), known_flags=known, protocol=args.protocol)
        except ValueError as err:
            raise SystemExit(f"{mode}: {err}") from None
        if args.protocol == "honest" and get_mode(mode).relation == REPLACE_ONE:
            raise SystemExit(
                f"--protocol honest: mode {mode!r} is calibrated for replace-one, which the RDP accountant "
                "does not analyse; tune it under --protocol idealised."
            )


def warm_started(args: argparse.Namespace, mode: str) -> bool:
    """Whether this study adds a public warm start to ``mode`` (--pretraining, where the mode allows it)."""
    return args.pretraining and get_mode(mode).allows_pretraining and not get_mode(mode).pretrains


def space_of(args: argparse.Namespace, mode: str) -> dict:
    """The search space of ``mode`` in this study."""
    return search_space(
        dataset_module(args.dataset), mode, protocol=args.protocol, pretraining=warm_started(args, mode)
    )


def resolve_modes(args: argparse.Namespace) -> None:
    """``--modes`` unset: every tuned mode the protocol can calibrate; say which modes --pretraining skips."""
    if args.modes is None:
        honest = args.protocol == "honest"
        args.modes = [m for m in TUNED_MODES if not (honest and get_mode(m).relation == REPLACE_ONE)]
    if args.pretraining:
        cold = [m for m in args.modes if not get_mode(m).allows_pretraining]
        if cold:
            print(f"--pretraining: {cold} cannot be warm-started on the hybrid rows (sample-level DP or a noise-view "
                  "baseline) and are tuned without it", file=sys.stderr)  # fmt: skip


def secure_study(args: argparse.Namespace) -> bool:
    """A study whose trials run with ``--secure_rng`` draws its K and its candidates from OS entropy too."""
    return "--secure_rng" in args.extra


def number_of_trials(args: argparse.Namespace) -> int:
    """K: fixed (idealised), or drawn (honest): from OS entropy in a secure study (the bound needs K
    random AND unobserved; it is kept in the study's private journal only, for resumption), else from
    the study seed (an experiment: the same seed draws the same K)."""
    if args.protocol == "idealised":
        return args.trials
    trials = TrialCount(args.trials_distribution, mean=args.mean_trials, eta=args.eta)
    seed = secrets.randbits(128) if secure_study(args) else [args.study_seed, 0x7E57]
    return trials.draw(np.random.default_rng(seed))


def drawn_trials(args: argparse.Namespace) -> dict[str, int]:
    """K of each mode whose study was drawn before (read back from the journal; absent: a new study)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = study_folder(args) / "optuna.journal"
    if not journal.exists():
        return {}
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    drawn = {}
    for mode in args.modes:
        attrs = names[study_name(args, mode)].user_attrs if study_name(args, mode) in names else {}
        if attrs.get("candidates_drawn"):
            drawn[mode] = attrs["trials"]
    return drawn


def trials_per_mode(args: argparse.Namespace) -> dict[str, int]:
    """K of every mode: read back for a study drawn before, else drawn now. A secure honest study draws
    each mode's K independently (each mode's winner is its own release: with one shared K, every released
    score would be evidence about the same K). Elsewhere one K serves every mode (a paired experiment)."""
    drawn = drawn_trials(args)
    if args.protocol == "honest" and secure_study(args):
        return {mode: drawn[mode] if mode in drawn else number_of_trials(args) for mode in args.modes}
    shared = set(drawn.values())
    if len(shared) > 1:
        raise SystemExit(
            f"the studies in {study_folder(args)} were drawn with different K: start a new results folder"
        )
    k = shared.pop() if shared else number_of_trials(args)
    return dict.fromkeys(args.modes, k)


def study_folder(args: argparse.Namespace) -> Path:
    """RESULTS/study: the Optuna journal and summary.json, apart from the run records (RESULTS/*.json)."""
    folder = Path(args.results) / "study"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mode_label(args: argparse.Namespace, mode: str) -> str:
    """The mode as the summary names it: ``fusiondp+pretrained`` when this study adds a public warm start."""
    return f"{mode}+pretrained" if warm_started(args, mode) else mode


def merged_summary(path: Path, summary: dict) -> dict:
    """This start's summary over the one already in ``path``: the modes of earlier starts on the same
    folder (another --modes list, or --pretraining) stay, this start's modes replace theirs."""
    if not path.exists():
        return summary
    old = json.loads(path.read_text())
    if old.get("_study", {}).get("protocol") != summary["_study"]["protocol"]:
        return summary
    return {**{k: v for k, v in old.items() if not k.startswith("_")}, **summary}


def study_name(args: argparse.Namespace, mode: str) -> str:
    warm = "-pretrained" if warm_started(args, mode) else ""
    return f"{args.dataset}-{mode}{warm}-eps{args.epsilon:g}-{args.protocol}-seed{args.study_seed}"


def open_study(args: argparse.Namespace, mode: str, k: int):
    """The mode's study, with its K candidates drawn and stored at creation (never again)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(study_folder(args) / "optuna.journal")))
    name = study_name(args, mode)
    # A secure study's candidates come from numpy's OS-entropy seeding (seed None: the whole state, not a
    # 32-bit seed that the published winner's values would let anyone search for); they are stored below.
    sampler = optuna.samplers.RandomSampler(seed=None if secure_study(args) else args.study_seed)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    if study.user_attrs.get("candidates_drawn"):
        if study.user_attrs["trials"] != k:
            raise SystemExit(
                f"study {name} in {args.results} was drawn with K={study.user_attrs['trials']}, not {k}"
            )
        return study
    if study.get_trials(deepcopy=False):
        # A start stopped while drawing (no run has started: runs follow the complete draw): draw again
        # from scratch, never K more on top of what was drawn.
        optuna.delete_study(study_name=name, storage=storage)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize")
    space = space_of(args, mode)
    hidden = args.protocol == "honest" and secure_study(args)
    for _ in range(k):
        trial = study.ask()
        suggest(trial, space)
        # The released record names its trial: a secure honest study names it by a random tag, since an
        # index would tell that K is larger than it.
        trial.set_user_attr("tag", f"trial-{secrets.token_hex(8)}" if hidden else f"trial{trial.number}")
    study.set_user_attr("trials", k)
    study.set_user_attr("space", {key: list(spec) for key, spec in space.items()})
    study.set_user_attr("candidates_drawn", True)
    return study


def trial_tag(trial) -> str:
    """The name a trial's runs and records carry (``trial<number>``; random in a secure honest study)."""
    return trial.user_attrs.get("tag", f"trial{trial.number}")


def trial_flags(trial, space_keys) -> list[str]:
    """The stored candidate of a trial as train-script flags, in the space's order."""
    return as_argv(candidate_flags({name: trial.params[name] for name in space_keys}))


def run_for(args: argparse.Namespace, script: Path, mode: str, tag: str, flags: list[str], seed: int) -> Run:
    study = study_name(args, mode)
    honest = (
        ["--tuning_trials", args.trials_distribution, "--tuning_mean_trials", str(args.mean_trials)]
        + (
            ["--tuning_eta", str(args.eta)]
            if args.trials_distribution == "truncated_negative_binomial"
            else []
        )
        if args.protocol == "honest"
        else []
    )
    argv = ["--mode", mode, "--epsilon", f"{args.epsilon:g}", "--seed", str(seed), *flags,
            "--tuning_protocol", args.protocol, "--tuning_study", f"{study}/{tag}", *honest,
            "--results_json", str(Path(args.results).resolve()) + "/", "--skip_existing", "--no_progress",
            *args.extra]  # fmt: skip
    name = f"{mode} {tag} seed={seed}"
    log = str(Path(args.logs) / f"{mode}_{tag}_s{seed}.log")
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // args.jobs))
    return Run(name, str(script), tuple(argv), log, threads if args.launcher == "local" else args.cpus)


def launch(args: argparse.Namespace, runs: list[Run]) -> list[Outcome]:
    if not runs:
        return []
    progress = Progress(total=len(runs), slots=args.jobs)
    outcomes = LAUNCHERS[args.launcher](runs, args, progress) or []
    progress.show()
    progress.close()
    return outcomes


def records_by_study(results: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for record in load_records(results) if Path(results).exists() else []:
        found.setdefault(record.get("tuning_study") or "", []).append(record)
    return found


def _same_value(recorded: Any, flag_value: str) -> bool:
    try:
        return float(recorded) == float(flag_value)
    except (TypeError, ValueError):
        return str(recorded) == flag_value


def winner_records(
    found: dict[str, list[dict]], study_name: str, best_tag: str, flags: dict[str, str]
) -> list[dict]:
    """The winner's runs: its trial's record and the ``final`` runs made with ITS flags (every seed).

    Final runs share one tag per study; a final run of an earlier winner (a study resumed after failed
    trials finished, or extended from a smaller study's records) has other flags and is left out, so
    that the winner's mean ± std is never a mix of two configurations.
    """
    own = found.get(f"{study_name}/{best_tag}", [])[:1]
    finals = [
        r for r in found.get(f"{study_name}/final", [])
        if all(_same_value((r.get("args") or {}).get(name), value) for name, value in flags.items())
    ]  # fmt: skip
    return own + finals


def summarise(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {"n": len(values), "mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(values) > 1 else 0.0,
            "median": float(median), "q1": float(q1), "q3": float(q3)}  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    script = REPO / train_script_name(args.dataset)
    resolve_modes(args)
    parser = train_parser(script)
    check_args(args, {action.dest for action in parser._actions})
    check_passthrough(args, parser)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    args.logs = str(Path(args.logs) if args.logs else results / "logs")
    args.poll = args.poll if args.poll is not None else 0.5
    ks = trials_per_mode(args)
    metric = args.select.replace("val_", "test_", 1)
    hidden = args.protocol == "honest" and secure_study(args)
    k_shown = next(iter(ks.values())) if ks else 0
    shown = (
        "K secret (OS entropy, one per mode)" if hidden else f"K = {k_shown} (study seed {args.study_seed})"
    )
    print(f"{args.protocol} protocol, {shown} trial(s) per mode, winner by {args.select}, results in {results}",
          file=sys.stderr)  # fmt: skip
    if args.protocol == "honest" and len(args.seeds) > 1:
        print("honest protocol: the release is the winning trial itself; --seeds beyond the first are not run "
              "(each rerun would be another private release outside the tuned total)", file=sys.stderr)  # fmt: skip
    started = time.time()
    studies = {mode: open_study(args, mode, ks[mode]) for mode in args.modes}

    # 1. Every trial without a result, all modes together (a resumed study runs only those).
    pending = []
    for mode, study in studies.items():
        keys = list(study.user_attrs["space"])
        for trial in study.get_trials(deepcopy=False):
            if trial.state.name == "RUNNING":
                pending.append(
                    run_for(
                        args,
                        script,
                        mode,
                        trial_tag(trial),
                        trial_flags(trial, keys),
                        args.seeds[0],
                    )
                )
    if args.dry_run:  # the candidates are drawn and stored (a later start runs exactly these); nothing runs
        for run in pending:
            print(shlex.join([Path(sys.executable).name, run.script, *run.flags]))
        print(f"dry run: {len(pending)} trial(s) to run, none started", file=sys.stderr)
        return {}
    launch(args, pending)
    found = records_by_study(args.results)
    for study in studies.values():
        for trial in study.get_trials(deepcopy=False):
            if trial.state.name != "RUNNING":
                continue
            records = found.get(f"{study.study_name}/{trial_tag(trial)}", [])
            if records:
                study.tell(trial.number, float(records[0][args.select]))
            # else: the run failed; the trial stays open and the next start runs it again

    # 2. The winner of each mode on validation, then its seeds.
    finals, summary, best_tags, best_flags = [], {}, {}, {}
    for mode, study in studies.items():
        done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if len(done) < ks[mode]:
            print(f"{mode}: {ks[mode] - len(done)} trial(s) failed (see {args.logs}); run the study again to retry "
                  "them", file=sys.stderr)  # fmt: skip
            continue
        if not done:  # K = 0 (Poisson): the mechanism's output is "nothing released"
            summary[mode_label(args, mode)] = {"released": None, "best_params": None}
            continue
        best = max(done, key=lambda t: (t.value, -t.number))
        flags = trial_flags(best, list(study.user_attrs["space"]))
        best_flags[mode] = candidate_flags({name: best.params[name] for name in study.user_attrs["space"]})
        # The winning trial already ran with the first seed; the others run as "final" (idealised only).
        if args.protocol == "idealised":
            finals += [run_for(args, script, mode, "final", flags, seed) for seed in args.seeds[1:]]
        best_tags[mode] = trial_tag(best)
        summary[mode_label(args, mode)] = {
            "best_trial": None if hidden else best.number,  # an index would bound the secret K
            "best_params": best.params,
            "best_" + args.select: best.value,
        }
    launch(args, finals)
    found = records_by_study(args.results)
    for mode, study in studies.items():
        if mode not in best_tags:
            continue
        trial_records = [
            r for n, rs in found.items() if n.startswith(f"{study.study_name}/trial") for r in rs
        ]
        final = winner_records(found, study.study_name, best_tags[mode], best_flags[mode])
        first = (final or trial_records or [{}])[0]
        summary[mode_label(args, mode)] |= {
            "protocol": args.protocol,
            "epsilon": args.epsilon,
            "epsilon_with_tuning": first.get("epsilon_with_tuning"),
            "epsilon_per_run": first.get("epsilon_spent"),
            "cost_of_tuning": first.get("cost_of_tuning"),
            "extra": args.extra,
            f"final_{metric}": summarise([r[metric] for r in final]),
        }
        if args.protocol == "idealised":  # the honest release is the winner alone: nothing of the others
            summary[mode_label(args, mode)] |= {
                "trials": ks[mode],
                f"trials_{metric}": summarise([r[metric] for r in trial_records]),
            }
    summary["_study"] = {"dataset": args.dataset, "protocol": args.protocol, "secure": secure_study(args),
                         "study_seed": None if secure_study(args) else args.study_seed,
                         "select": args.select, "seeds": args.seeds if args.protocol == "idealised" else args.seeds[:1],
                         "extra": args.extra, "command": shlex.join([Path(sys.executable).name, *sys.argv])}  # fmt: skip
    minutes = (time.time() - started) / 60
    if hidden:  # the study's wall time over one trial's time is K: the operator sees it, the summary does not
        print(f"study time this start: {minutes:.1f} min", file=sys.stderr)
    else:
        summary["_study"] |= {"trials": k_shown, "minutes_this_start": minutes}
    summary = merged_summary(study_folder(args) / "summary.json", summary)
    (study_folder(args) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table(summary, metric))
    return summary


def table(summary: dict, metric: str) -> str:
    """The study's Markdown table: per mode the winner's test metric; idealised studies add the
    spread over all trials, honest ones publish the released winner alone."""
    study = summary["_study"]
    honest = study["protocol"] == "honest"
    k = study.get("trials", "secret")
    if honest:
        head = (
            f"{study['dataset']}, honest protocol (cost of tuning counted), K {k}, winner by {study['select']}; "
            "each mode's study is its own release on the same rows: releasing several modes' winners composes "
            "their totals"
            + (
                ""
                if study["secure"]
                else "; EXPERIMENT MODE: K and the candidates follow the recorded study "
                "seed, so the total is what a --secure_rng study spends, not a guarantee of these runs"
            )
        )
        lines = [
            head,
            "",
            f"| mode | ε per run | ε with tuning | released winner: {metric} |",
            "|---|---|---|---|",
        ]
    else:
        lines = [
            f"{study['dataset']}, idealised protocol (cost of tuning not counted), K = {k}, winner by {study['select']}",
            "",
            f"| mode | ε (per run) | winner: {metric} (mean ± std, n) | all trials: median [IQR] |",
            "|---|---|---|---|",
        ]
    for mode, row in summary.items():
        if mode.startswith("_"):
            continue
        if "released" in row and row["released"] is None:
            lines.append(
                f"| {mode} | - | - | nothing released (K = 0) |" if honest else f"| {mode} | - | - | - |"
            )
            continue
        final = row[f"final_{metric}"]
        per_run = "-" if row["epsilon_per_run"] is None else f"{row['epsilon_per_run']:.3g}"
        if honest:
            total = "-" if row["epsilon_with_tuning"] is None else f"{row['epsilon_with_tuning']:.3g}"
            lines.append(f"| {mode} | {per_run} | {total} | {final['mean']:.4f} |")
            continue
        trials = row[f"trials_{metric}"]
        cell = f"{final['mean']:.4f} ± {final['std']:.4f} ({final['n']})" if final["n"] else "-"
        spread = f"{trials['median']:.4f} [{trials['q1']:.4f}, {trials['q3']:.4f}]" if trials["n"] else "-"
        lines.append(f"| {mode} | {per_run} | {cell} | {spread} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
