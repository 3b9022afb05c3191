r"""One sweep entry point: a dataset's train script over modes × ε × α × β × seeds, on one machine,
a SLURM cluster (submitit) or a Ray cluster.

    python scripts/sweep.py --dataset sepsis --modes sgd_ori dpsgd fusiondp --epsilons 2 --seeds 1 \
        --jobs 2 --results results/quickstart
    python scripts/sweep.py --dataset sepsis --epsilons 0.5 1 2 4 --results results/sepsis -- --epochs 13
    python scripts/sweep.py --dataset mimic --launcher slurm --partition gpu --time 120 --gpus 1 --cpus 8 \
        --mem 64 --results /shared/results/mimic -- --device cuda --data_dir /shared/outputs/mimic
    python scripts/sweep.py --dataset bank --launcher ray --ray_address auto --results results/bank \
        -- --one_hot --data_dir outputs/bank_hgb
    python scripts/sweep.py --dataset sepsis --launcher slurm --partition gpu --results r/ --dry_run

Every run is ``python train_fusiondp_<dataset>.py --mode M --epsilon E [--alpha A] [--beta B] --seed S
--results_json RESULTS --skip_existing --no_progress [flags after --]``, in its own process: a crash or
an out-of-memory kill stays in that run, the run keeps its own log (``LOGS/<name>.log``), and the
command is exactly the one a user would type to rerun it by hand. (Calling the scripts' ``main(args)``
in-process would save the ~3 s of interpreter and torch start-up per run, which training dwarfs.)

``--results``: a results folder (recommended; one JSON file per run, written atomically, safe on NFS
and Lustre) or a JSON-lines file (``*.jsonl``, appends under ``flock``: one machine only). A setting
that already has a record is skipped before anything is launched (and, should two sweeps race, by the
run's own ``--skip_existing``); a failed or killed run has no record and runs again next time. So a
sweep killed midway and started again loses nothing and repeats nothing that finished.

Launchers (``--launcher``):

* ``local`` (default): ``--jobs`` processes at a time; each gets ``OMP_NUM_THREADS = cores / jobs``
  unless ``OMP_NUM_THREADS`` is set. Killing the sweep kills its runs (none survives to write late).
* ``slurm``: one submitit job array (``--partition --time --gpus --cpus --mem --array_parallelism``,
  ``--slurm_setup`` lines run before each task, e.g. activating the venv). A task that is preempted or
  reaches its time limit is requeued by submitit (the run starts over; ``--max_requeues``). The
  sweep waits and shows progress unless ``--no_wait``; ``--dry_run`` prints the sbatch script instead
  of submitting. ``--submitit_cluster local`` runs the same array through submitit's local executor.
* ``ray``: one Ray task per run (``--cpus_per_run``, ``--gpus_per_run``) on ``ray.init(address=
  --ray_address)``, or on a local Ray with ``--jobs`` × ``--cpus_per_run`` CPUs when no address.

The results folder must be on a file system every worker sees (as must the repository and its venv).
One progress line per sweep (done, running, failed, remaining, ETA); at the end failed runs are named
with their logs, the exit status is non-zero, and the mean ± std table of ``scripts/make_tables.py``
is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import io
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import fusiondp  # noqa: F401
except ModuleNotFoundError:  # run by an interpreter without the package: say so in one line
    raise SystemExit(
        f"scripts/sweep.py: {sys.executable} cannot import fusiondp. Run `make setup` and use "
        ".venv/bin/python, or install the package into this interpreter (pip install -e .)."
    ) from None

from fusiondp.datasets import DATASETS, train_script_name
from fusiondp.experiment.launch import (
    LAUNCHERS,
    Outcome,
    Progress,
    Run,
    SubmititTask,
    add_launcher_args,
    parse_with_passthrough,
    sbatch_script,
    submitit_folder,
)
from fusiondp.mechanism.modes import MODES

REPO = Path(__file__).resolve().parent.parent
__all__ = ["LAUNCHERS", "Outcome", "Progress", "Run", "SubmititTask"]  # the launchers' names, re-exported

ALL_MODES = [
    "sgd_ori",
    "sgd_hybrid",
    "sgd_pub",
    "dpsgd",
    "naive_fusion",
    "naive_fusion_pub",
    "feature-dp",
    "calibrated_fusion",
    "fusiondp",
]


# --------------------------------------------------------------------------- planning


def train_script(args: argparse.Namespace) -> Path:
    script = Path(args.script) if args.script else REPO / train_script_name(args.dataset)
    if not script.is_absolute():
        script = (Path.cwd() / script) if (Path.cwd() / script).is_file() else REPO / script
    if not script.is_file():
        raise SystemExit(
            f"--script {args.script or train_script_name(args.dataset)!r}: no such file ({script})"
        )
    return script


def _short(value: str) -> str:
    return value.replace("/", "-").replace(" ", "")


def plan_runs(args: argparse.Namespace) -> list[Run]:
    """Every run of the sweep, in the order modes × ε × α × β × seeds (the order they start in)."""
    script = train_script(args)
    results = str(Path(args.results).resolve()) + ("/" if is_folder(args.results) else "")
    extra = list(args.extra)
    tag = hashlib.sha256(shlex.join([script.name, *extra]).encode()).hexdigest()[:6]
    runs = []
    for mode in args.modes:
        for eps in args.epsilons:
            for alpha in args.alphas or [None]:
                for beta in args.betas or [None]:
                    for seed in args.seeds:
                        flags = ["--mode", mode, "--epsilon", eps]
                        name = f"{mode} eps={eps}"
                        if alpha is not None:
                            flags += ["--alpha", alpha]
                            name += f" alpha={alpha}"
                        if beta is not None:
                            flags += ["--beta", beta]
                            name += f" beta={beta}"
                        flags += [
                            "--seed",
                            seed,
                            "--results_json",
                            results,
                            "--skip_existing",
                            "--no_progress",
                        ]
                        name += f" seed={seed}"  # the extra flags are the whole sweep's: said once, above
                        # The extra flags' hash keeps the logs of sweeps with other flags apart.
                        stem = (
                            f"{mode}_eps{eps}_a{alpha}_b{beta}_s{seed}"
                            if alpha or beta
                            else f"{mode}_eps{eps}_s{seed}"
                        )
                        log = Path(args.logs) / f"{_short(stem)}-{tag}.log"
                        # Run where the sweep was started, so relative paths after -- mean what they say.
                        runs.append(
                            Run(name, str(script), (*flags, *extra), str(log.resolve()), cwd=os.getcwd())
                        )
    return runs


def is_folder(results: str) -> bool:
    from fusiondp.experiment.results import is_results_dir

    return is_results_dir(results)


def default_logs(results: str) -> Path:
    """``RESULTS/logs`` for a results folder, ``RESULTS_without_.jsonl.logs`` beside a JSON-lines file."""
    if is_folder(results):
        return Path(results) / "logs"
    path = Path(results)
    return path.with_name(path.name.removesuffix(".jsonl") + ".logs")


def _load_script(script: Path):
    """The train script as a module, loaded from its file (for its argument parser)."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished(runs: Sequence[Run], results: str) -> set[str]:
    """Names of the runs whose settings already have a record in ``results``.

    The settings are the train script's own parse of the run's flags (defaults included), compared on
    every flag as ``--skip_existing`` does, so a skip here is exactly a skip there. Where the script
    resolves settings only after parsing (the notes script's δ), nothing is found here and the run
    itself skips at once.
    """
    from fusiondp.experiment.config import run_settings
    from fusiondp.experiment.results import OUTPUT_ONLY_FLAGS, load_records, settings_digest

    if not runs or not Path(results).exists():
        return set()
    index: dict[str, list[dict]] = {}
    for record in load_records(results):  # once, not once per run: a sweep may have thousands
        if isinstance(record.get("args"), dict):
            index.setdefault(settings_digest(record["args"]), []).append(record["args"])
    try:
        parser = _load_script(Path(runs[0].script)).get_args_parser()
    except Exception as err:  # a missing dependency here must not stop the sweep
        print(
            f"note: cannot read {runs[0].script}'s flags here ({err}); each run checks itself",
            file=sys.stderr,
        )
        return set()
    done = set()
    for run in runs:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                settings = run_settings(vars(parser.parse_args(list(run.flags))))
        except SystemExit:  # a bad flag: the run itself fails and says why
            continue
        wanted = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY_FLAGS}
        for recorded in index.get(settings_digest(settings), []):
            if {k: v for k, v in recorded.items() if k not in OUTPUT_ONLY_FLAGS} == wanted:
                done.add(run.name)
                break
    return done


# --------------------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--dataset", choices=sorted(DATASETS), default=None, help="runs train_fusiondp_<dataset>.py"
    )
    what.add_argument("--script", default=None, help="another train script (instead of --dataset)")
    what.add_argument(
        "--modes",
        nargs="+",
        default=ALL_MODES,
        help="default: the nine modes of the paper (not pretrain_dpsgd)",
    )
    what.add_argument("--epsilons", nargs="+", default=["0.5", "1", "2", "4"])
    what.add_argument("--alphas", nargs="+", default=None, help="default: the script's --alpha")
    what.add_argument("--betas", nargs="+", default=None, help="default: the script's --beta")
    what.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    what.add_argument(
        "--results",
        required=True,
        help="results folder (an existing folder, or a path ending in / or without extension: one JSON "
        "file per run; for clusters) or JSON-lines file (*.jsonl; one machine)",
    )
    what.add_argument(
        "--logs", default=None, help="folder of the runs' logs (default: RESULTS/logs or RESULTS.logs)"
    )
    what.add_argument("extra", nargs="*", help="after --: flags passed to every run of the train script")

    how = add_launcher_args(parser)
    how.add_argument("--no_table", action="store_true", help="no mean ± std table at the end")
    how.add_argument("--table_metrics", nargs="+", default=None, help="metrics of the final table")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the sweep's flags; everything after ``--`` goes to the train script untouched."""
    return parse_with_passthrough(get_args_parser(), argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values no sweep can use, naming the flag and the value."""
    if not args.dataset and not args.script:
        raise SystemExit(f"give --dataset (one of {', '.join(DATASETS)}) or --script")
    bad_modes = [m for m in args.modes if m not in MODES]
    if bad_modes:
        raise SystemExit(f"--modes: unknown mode(s) {bad_modes}; known: {list(MODES)}")
    for name in ("jobs", "cpus", "time", "cpus_per_run", "array_parallelism"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)!r}")
    for name in ("epsilons", "alphas", "betas", "seeds"):
        for value in getattr(args, name) or []:
            try:
                float(value)
            except ValueError:
                raise SystemExit(f"--{name}: {value!r} is not a number") from None
    # A flag given twice takes its last value: after --, it would silently override the sweep's own.
    owned = ["--mode", "--epsilon", "--seed", "--results_json"]
    owned += ["--alpha"] * bool(args.alphas) + ["--beta"] * bool(args.betas)
    clash = [t for t in args.extra if t.split("=", 1)[0] in owned]
    if clash:
        raise SystemExit(f"flags after -- must not set what the sweep sets ({' '.join(owned)}); got {clash}")


def print_table(args: argparse.Namespace) -> bool:
    """The mean ± std table of the results (stdout); False when there is nothing to tabulate."""
    from fusiondp.experiment.results import load_records

    results = Path(args.results)
    if not results.exists() or not load_records(results):
        print(f"no finished runs in {results}: no table", file=sys.stderr)
        return False
    if args.no_table:
        return True
    command = [
        sys.executable,
        str(REPO / "scripts" / "make_tables.py"),
        str(results),
        "--group",
        "mode",
        "epsilon",
    ]
    if args.table_metrics:
        command += ["--metrics", *args.table_metrics]
    sys.stdout.flush()
    return subprocess.run(command, cwd=REPO, check=False).returncode == 0


def main(args: argparse.Namespace) -> int:
    """Plan, skip what is finished, launch the rest, report; 0 when every run has its record."""
    check_args(args)
    args.logs = str(Path(args.logs) if args.logs else default_logs(args.results))
    if args.poll is None:
        args.poll = 10.0 if args.launcher == "slurm" and args.submitit_cluster == "slurm" else 0.5
    cores = os.cpu_count() or 1
    # Parallel runs share the cores instead of each starting one thread per core.
    threads = {
        "local": int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // args.jobs)),
        "slurm": args.cpus,
        "ray": args.cpus_per_run,
    }[args.launcher]
    runs = [Run(r.name, r.script, r.flags, r.log, threads, r.cwd) for r in plan_runs(args)]
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command("python")))
        if args.launcher == "slurm":
            print(sbatch_script(args, len(runs), submitit_folder(args)))
        return 0

    skip = finished(runs, args.results)
    todo = [run for run in runs if run.name not in skip]
    slots = {"local": args.jobs, "slurm": min(args.array_parallelism, max(len(todo), 1)), "ray": args.jobs}
    print(
        f"{len(runs)} run(s), {slots[args.launcher]} at a time (finished ones are skipped), launcher "
        f"{args.launcher}, results in {args.results}, logs in {args.logs}"
        + (f", every run with {shlex.join(args.extra)}" if args.extra else ""),
        file=sys.stderr,
    )
    progress = Progress(total=len(runs), slots=slots[args.launcher])
    if len(skip) > 20:  # a resumed paper-size sweep: one line, not hundreds
        progress.skipped = len(skip)
        progress.event(f"skipped (in the results already): {len(skip)} run(s)")
    else:
        for run in runs:
            if run.name in skip:
                progress.finish(Outcome(run.name, "skipped", run.log))

    # SIGTERM (e.g. scancel, kill) stops the sweep the way Ctrl-C does: its runs are stopped too.
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        outcomes = LAUNCHERS[args.launcher](todo, args, progress) if todo else []
    except KeyboardInterrupt:
        progress.close()
        print(
            f"stopped: the finished runs' records are in {args.results}; the runs under way were stopped "
            "and have none: the same command runs them (and only them) again",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.show()
    progress.close()
    if outcomes is None:  # submitted, not waited for
        return 0
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(
            f"{len(failed)} of {len(runs)} run(s) failed (they have no record; run the sweep again to "
            "retry them):",
            file=sys.stderr,
        )
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.error} (log: {outcome.log})", file=sys.stderr)
        print(f"logs of every run: {args.logs}", file=sys.stderr)
    has_table = print_table(args)
    return 0 if has_table and not failed else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
