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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the train_*.py scripts live at the top level, not in the package

DATASETS = {
    "sepsis": "train_fusiondp_sepsis.py",
    "bank": "train_fusiondp_bank.py",
    "adult": "train_fusiondp_adult.py",
    "mimic": "train_fusiondp_mimic.py",
}
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


@dataclass(frozen=True)
class Run:
    """One run of the sweep: the train script, its flags, its log and its thread count."""

    name: str
    script: str
    flags: tuple[str, ...]
    log: str
    threads: int | None = None
    cwd: str = str(REPO)

    def command(self, python: str | None = None) -> list[str]:
        return [python or sys.executable, self.script, *self.flags]


@dataclass
class Outcome:
    """How a run ended: ``status`` is ``done``, ``skipped`` (a record was there already) or ``failed``."""

    name: str
    status: str
    log: str
    seconds: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------- running one run
# These functions run on the workers (submitit, Ray): standard library only, so that a worker needs
# nothing of this repository but the train script itself.


def _error_line(log: str) -> str:
    """The most telling line of a failed run's log: the last one naming an error, else the last line."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError as err:
        return f"(no log: {err})"
    errors = [line for line in lines if "error" in line.lower() or "killed" in line.lower()]
    return (errors or lines or ["(empty log)"])[-1]


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the run gets SIGKILL when the sweep dies, even by SIGKILL, so no orphan writes a record
    after a restarted sweep has started the same setting again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def start_run(run: Run, *, tie_to_parent: bool = False) -> subprocess.Popen:
    """Start ``run`` with its output in its log (overwritten: a rerun's log is the rerun's)."""
    Path(run.log).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if run.threads:
        env["OMP_NUM_THREADS"] = str(run.threads)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the log shows where a killed run was
    command = run.command()
    with open(run.log, "w") as log:
        log.write(f"$ cd {shlex.quote(run.cwd)} && {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            command,
            cwd=run.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_set_parent_death_signal if tie_to_parent and sys.platform == "linux" else None,
        )


def outcome_of(run: Run, returncode: int, seconds: float) -> Outcome:
    """Read a finished process's log: a record written, a record found (``skipped: ``) or a failure."""
    if returncode != 0:
        reason = f"exit status {returncode}" if returncode > 0 else f"killed by signal {-returncode}"
        return Outcome(run.name, "failed", run.log, seconds, f"{reason}: {_error_line(run.log)}")
    try:
        skipped = any(line.startswith("skipped: ") for line in Path(run.log).read_text().splitlines())
    except OSError:
        skipped = False
    return Outcome(run.name, "skipped" if skipped else "done", run.log, seconds)


def run_one(run: Run) -> Outcome:
    """Run ``run`` to its end (the task of the Ray and submitit launchers)."""
    start = time.time()
    proc = start_run(run)
    try:
        returncode = proc.wait()
    except BaseException:  # interrupted (preemption, Ctrl-C): the run must not outlive its task
        proc.kill()
        proc.wait()
        raise
    return outcome_of(run, returncode, time.time() - start)


class SubmititTask:
    """The submitit task: :func:`run_one`, and a ``checkpoint`` so that submitit requeues the task
    when SLURM preempts it or its time runs out (submitit calls ``checkpoint`` on the USR2 signal).

    There is nothing to save: the run starts over on requeue, and a run that had finished has its
    record and returns at once through ``--skip_existing``.
    """

    def __call__(self, run: Run) -> Outcome:
        return run_one(run)

    def checkpoint(self, run: Run):  # submitit.helpers.DelayedSubmission
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SubmititTask(), run)


# --------------------------------------------------------------------------- planning


def train_script(args: argparse.Namespace) -> Path:
    script = Path(args.script) if args.script else REPO / DATASETS[args.dataset]
    if not script.is_absolute():
        script = (Path.cwd() / script) if (Path.cwd() / script).is_file() else REPO / script
    if not script.is_file():
        raise SystemExit(f"--script {args.script or DATASETS[args.dataset]!r}: no such file ({script})")
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
    from fusiondp.results import is_results_dir

    return is_results_dir(results)


def default_logs(results: str) -> Path:
    """``RESULTS/logs`` for a results folder, ``RESULTS_without_.jsonl.logs`` beside a JSON-lines file."""
    if is_folder(results):
        return Path(results) / "logs"
    path = Path(results)
    return path.with_name(path.name.removesuffix(".jsonl") + ".logs")


def _load_script(script: Path):
    """The train script as a module (for its argument parser)."""
    if script.parent == REPO:
        return importlib.import_module(script.stem)
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
    from fusiondp.results import OUTPUT_ONLY_FLAGS, load_records, run_settings, settings_digest

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
                settings = run_settings(parser.parse_args(list(run.flags)))
        except SystemExit:  # a bad flag: the run itself fails and says why
            continue
        wanted = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY_FLAGS}
        for recorded in index.get(settings_digest(settings), []):
            if {k: v for k, v in recorded.items() if k not in OUTPUT_ONLY_FLAGS} == wanted:
                done.add(run.name)
                break
    return done


# --------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Progress:
    """One line per sweep: done (skipped), running, failed, remaining, ETA; rewritten in place on a
    terminal, printed again on each change otherwise (logs, CI)."""

    total: int
    slots: int
    stream: io.TextIOBase = field(default_factory=lambda: sys.stderr)
    done: int = 0
    skipped: int = 0
    failed: int = 0
    running: int = 0
    seconds: list[float] = field(default_factory=list)
    _last: str = ""

    def line(self) -> str:
        remaining = self.total - self.done - self.skipped - self.failed - self.running
        eta = "?"
        if self.seconds:
            mean = sum(self.seconds) / len(self.seconds)
            eta = _duration(mean * (remaining + 0.5 * self.running) / max(self.slots, 1))
        elif remaining + self.running == 0:
            eta = "0s"
        return (
            f"progress: {self.done + self.skipped}/{self.total} done ({self.skipped} skipped), "
            f"{self.running} running, {self.failed} failed, {remaining} remaining, ETA {eta}"
        )

    def _tty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def event(self, message: str) -> None:
        """A line of its own (a run finished, failed or was skipped), above the progress line."""
        if self._tty() and self._last:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        if self._tty() and self._last:
            self.stream.write(self._last)
        self.stream.flush()

    def finish(self, outcome: Outcome) -> None:
        if outcome.status == "skipped":
            self.skipped += 1
            self.event(f"skipped (in the results already): {outcome.name}")
        elif outcome.status == "done":
            self.done += 1
            self.seconds.append(outcome.seconds)
            self.event(f"done: {outcome.name} ({_duration(outcome.seconds)})")
        else:
            self.failed += 1
            self.seconds.append(outcome.seconds)
            self.event(f"FAILED: {outcome.name} (log: {outcome.log})")

    def show(self) -> None:
        text = self.line()
        if text == self._last:
            return
        self._last = text
        self.stream.write(f"\r\033[K{text}" if self._tty() else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty() and self._last:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- launchers


def launch_local(runs: Sequence[Run], args: argparse.Namespace, progress: Progress) -> list[Outcome]:
    """``--jobs`` processes at a time on this machine; stopping the sweep stops its runs."""
    pending = deque(runs)
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    outcomes = []
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                run = pending.popleft()
                running[start_run(run, tie_to_parent=True)] = (run, time.time())
            for proc in [p for p in running if p.poll() is not None]:
                run, start = running.pop(proc)
                outcomes.append(outcome_of(run, proc.returncode, time.time() - start))
                progress.finish(outcomes[-1])
            progress.running = len(running)
            progress.show()
            time.sleep(args.poll)
    finally:  # Ctrl-C or SIGTERM: no run may go on and write a record behind the sweep's back
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return outcomes


def _pickle_this_module_by_value(cloudpickle) -> None:
    """Ship this file's functions to the workers by value: scripts/ is not an importable package there
    (run as ``python scripts/sweep.py`` it is ``__main__``, which cloudpickle sends by value anyway)."""
    module = sys.modules[__name__]
    if __name__ != "__main__" and hasattr(cloudpickle, "register_pickle_by_value"):
        cloudpickle.register_pickle_by_value(module)


def slurm_parameters(args: argparse.Namespace) -> dict:
    """The sbatch parameters of the array, in submitit's SlurmExecutor names."""
    params = {
        "job_name": args.job_name or f"fusiondp-{args.dataset or 'sweep'}",
        "time": args.time,
        "cpus_per_task": args.cpus,
        "signal_delay_s": args.signal_delay_s,
        "array_parallelism": args.array_parallelism,
        "stderr_to_stdout": True,
    }
    if args.partition:
        params["partition"] = args.partition
    if args.gpus:
        params["gpus_per_node"] = args.gpus
    if args.mem:
        # sbatch wants whole units: 16 -> 16GB, 0.5 -> 512MB
        params["mem"] = f"{int(args.mem)}GB" if float(args.mem).is_integer() else f"{int(args.mem * 1024)}MB"
    if args.account:
        params["account"] = args.account
    if args.qos:
        params["qos"] = args.qos
    if args.constraint:
        params["constraint"] = args.constraint
    if args.slurm_setup:
        params["setup"] = list(args.slurm_setup)
    return params


def sbatch_script(args: argparse.Namespace, num_runs: int, folder: Path) -> str:
    """The sbatch script submitit writes for the array (what ``--dry_run`` prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=num_runs, **slurm_parameters(args))


def submitit_folder(args: argparse.Namespace) -> Path:
    base = Path(args.submitit_folder) if args.submitit_folder else Path(args.logs) / "submitit"
    return base.resolve() / "%j"


def launch_slurm(runs: Sequence[Run], args: argparse.Namespace, progress: Progress) -> list[Outcome] | None:
    """One submitit job array; waits with progress unless ``--no_wait`` (then returns None)."""
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise SystemExit(
            "--launcher slurm needs submitit: pip install -e '.[slurm]' (or pip install submitit==1.5.4)"
        ) from None
    _pickle_this_module_by_value(cloudpickle)
    folder = submitit_folder(args)
    if args.submitit_cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(**slurm_parameters(args))
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.time)
    jobs = executor.map_array(SubmititTask(), list(runs))
    print(
        f"submitted {len(jobs)} task(s) ({args.submitit_cluster}): job {jobs[0].job_id.split('_')[0]}, "
        f"submitit logs in {folder.parent}",
        file=sys.stderr,
    )
    if args.no_wait:
        print(
            "not waiting (--no_wait): run the same command again after the array ended to see the "
            "table and rerun what failed",
            file=sys.stderr,
        )
        return None
    waiting = dict(zip(jobs, runs, strict=True))
    outcomes = []
    while waiting:
        for job in [j for j in waiting if j.done()]:
            run = waiting.pop(job)
            try:
                outcomes.append(job.result())
            except Exception as err:  # a task killed, out of requeues or never started
                message = str(err).strip().splitlines()
                outcomes.append(Outcome(run.name, "failed", run.log, 0.0, (message or ["?"])[-1]))
            progress.finish(outcomes[-1])
        progress.running = sum(1 for j in waiting if str(j.state).upper() == "RUNNING")
        progress.show()
        if waiting:
            time.sleep(args.poll)
    return outcomes


def launch_ray(runs: Sequence[Run], args: argparse.Namespace, progress: Progress) -> list[Outcome]:
    """One Ray task per run on ``--ray_address``, or on a local Ray of ``--jobs`` × ``--cpus_per_run`` CPUs."""
    try:
        import ray
        import ray.cloudpickle
    except ImportError:
        raise SystemExit(
            "--launcher ray needs Ray: pip install -e '.[ray]' (or pip install 'ray==2.60.0')"
        ) from None
    _pickle_this_module_by_value(ray.cloudpickle)
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        # A small object store: the tasks pass a few strings, and a big one would take memory from the runs.
        ray.init(
            num_cpus=args.jobs * args.cpus_per_run,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=128 * 1024**2,
        )
    try:
        capacity = int(ray.cluster_resources().get("CPU", 1) // args.cpus_per_run) or 1
        progress.slots = capacity
        task = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run)(run_one)
        refs = {task.remote(run): run for run in runs}
        outcomes = []
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=args.poll)
            for ref in ready:
                run = refs.pop(ref)
                try:
                    outcomes.append(ray.get(ref))
                except Exception as err:  # a worker lost, a node gone
                    outcomes.append(
                        Outcome(run.name, "failed", run.log, 0.0, str(err).strip().splitlines()[-1])
                    )
                progress.finish(outcomes[-1])
            progress.running = min(len(refs), capacity)  # Ray does not say which queued task has started
            progress.show()
    finally:
        ray.shutdown()
    return outcomes


LAUNCHERS: dict[str, Callable[..., list[Outcome] | None]] = {
    "local": launch_local,
    "slurm": launch_slurm,
    "ray": launch_ray,
}


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
    what.add_argument("--modes", nargs="+", default=ALL_MODES, help="default: all nine")
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

    how = parser.add_argument_group("how to run")
    how.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local")
    how.add_argument(
        "--jobs", type=int, default=1, help="local: runs at a time; ray without address: their CPUs"
    )
    how.add_argument("--poll", type=float, default=None, help="seconds between status checks")
    how.add_argument(
        "--dry_run", action="store_true", help="print the runs (and, for slurm, the sbatch script)"
    )
    how.add_argument("--no_table", action="store_true", help="no mean ± std table at the end")
    how.add_argument("--table_metrics", nargs="+", default=None, help="metrics of the final table")

    slurm = parser.add_argument_group("slurm (submitit)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time", type=int, default=60, help="minutes per task (default: %(default)s)")
    slurm.add_argument("--gpus", type=int, default=0, help="GPUs per task")
    slurm.add_argument("--cpus", type=int, default=2, help="CPUs per task, and its OMP_NUM_THREADS")
    slurm.add_argument("--mem", type=float, default=None, help="GB of memory per task")
    slurm.add_argument("--array_parallelism", type=int, default=256, help="tasks of the array at a time")
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--constraint", default=None)
    slurm.add_argument("--job_name", default=None)
    slurm.add_argument(
        "--slurm_setup",
        nargs="+",
        default=None,
        metavar="LINE",
        help="shell lines run before each task, e.g. 'source .venv/bin/activate'",
    )
    slurm.add_argument("--signal_delay_s", type=int, default=120, help="USR2 this long before the time limit")
    slurm.add_argument("--max_requeues", type=int, default=3, help="requeues of a timed-out task")
    slurm.add_argument("--submitit_folder", default=None, help="submitit's files (default: LOGS/submitit)")
    slurm.add_argument(
        "--submitit_cluster",
        choices=["slurm", "local"],
        default="slurm",
        help="local: submitit's local executor (every task at once, here), to try the array without a cluster",
    )
    slurm.add_argument("--no_wait", action="store_true", help="submit and return")

    ray_group = parser.add_argument_group("ray")
    ray_group.add_argument(
        "--ray_address", default=None, help="e.g. auto or ray://head:10001 (default: a local Ray)"
    )
    ray_group.add_argument("--cpus_per_run", type=int, default=1)
    ray_group.add_argument("--gpus_per_run", type=float, default=0)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the sweep's flags; everything after ``--`` goes to the train script untouched."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = get_args_parser().parse_args(argv)
    args.extra = [*args.extra, *extra]
    return args


def check_args(args: argparse.Namespace) -> None:
    """Reject values no sweep can use, naming the flag and the value."""
    if not args.dataset and not args.script:
        raise SystemExit("give --dataset (sepsis, bank, adult, mimic) or --script")
    bad_modes = [m for m in args.modes if m not in ALL_MODES]
    if bad_modes:
        raise SystemExit(f"--modes: unknown mode(s) {bad_modes}; known: {ALL_MODES}")
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
    from fusiondp.results import load_records

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
