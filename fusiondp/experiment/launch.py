"""Launching a sweep's runs: each a train-script process, on this machine, a SLURM array (submitit) or
Ray (docs/design.md §5). ``scripts/sweep.py`` plans the runs and reads its flags; this module starts
them, follows them and reports how each ended.

Standard library only at the top: the submitit and Ray workers receive :func:`run_one` and
:class:`SubmititTask` by value and need nothing of this repository but the train script itself. The
launchers read the sweep's parsed flags (``options``: ``--jobs``, ``--poll``, the slurm and ray groups
of ``scripts/sweep.py``); no training configuration passes through here, only command lines.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[2]  # the repository root (fusiondp/experiment/launch.py)


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


def launch_local(runs: Sequence[Run], options: argparse.Namespace, progress: Progress) -> list[Outcome]:
    """``--jobs`` processes at a time on this machine; stopping the sweep stops its runs."""
    pending = deque(runs)
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    outcomes = []
    try:
        while pending or running:
            while pending and len(running) < options.jobs:
                run = pending.popleft()
                running[start_run(run, tie_to_parent=True)] = (run, time.time())
            for proc in [p for p in running if p.poll() is not None]:
                run, start = running.pop(proc)
                outcomes.append(outcome_of(run, proc.returncode, time.time() - start))
                progress.finish(outcomes[-1])
            progress.running = len(running)
            progress.show()
            time.sleep(options.poll)
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
    """Ship this module's functions to the workers by value: a worker then needs no particular version
    of this package installed, only the train script and its environment."""
    module = sys.modules[__name__]
    if __name__ != "__main__" and hasattr(cloudpickle, "register_pickle_by_value"):
        cloudpickle.register_pickle_by_value(module)


def slurm_parameters(options: argparse.Namespace) -> dict:
    """The sbatch parameters of the array, in submitit's SlurmExecutor names."""
    params = {
        "job_name": options.job_name or f"fusiondp-{options.dataset or 'sweep'}",
        "time": options.time,
        "cpus_per_task": options.cpus,
        "signal_delay_s": options.signal_delay_s,
        "array_parallelism": options.array_parallelism,
        "stderr_to_stdout": True,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    if options.mem:
        # sbatch wants whole units: 16 -> 16GB, 0.5 -> 512MB
        params["mem"] = (
            f"{int(options.mem)}GB" if float(options.mem).is_integer() else f"{int(options.mem * 1024)}MB"
        )
    if options.account:
        params["account"] = options.account
    if options.qos:
        params["qos"] = options.qos
    if options.constraint:
        params["constraint"] = options.constraint
    if options.slurm_setup:
        params["setup"] = list(options.slurm_setup)
    return params


def sbatch_script(options: argparse.Namespace, num_runs: int, folder: Path) -> str:
    """The sbatch script submitit writes for the array (what ``--dry_run`` prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(
        command=command, folder=folder, map_count=num_runs, **slurm_parameters(options)
    )


def submitit_folder(options: argparse.Namespace) -> Path:
    base = Path(options.submitit_folder) if options.submitit_folder else Path(options.logs) / "submitit"
    return base.resolve() / "%j"


def launch_slurm(
    runs: Sequence[Run], options: argparse.Namespace, progress: Progress
) -> list[Outcome] | None:
    """One submitit job array; waits with progress unless ``--no_wait`` (then returns None)."""
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise SystemExit(
            "--launcher slurm needs submitit: pip install -e '.[slurm]' (or pip install submitit==1.5.4)"
        ) from None
    _pickle_this_module_by_value(cloudpickle)
    folder = submitit_folder(options)
    if options.submitit_cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
        executor.update_parameters(**slurm_parameters(options))
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_requeues)
        executor.update_parameters(timeout_min=options.time)
    jobs = executor.map_array(SubmititTask(), list(runs))
    print(
        f"submitted {len(jobs)} task(s) ({options.submitit_cluster}): job {jobs[0].job_id.split('_')[0]}, "
        f"submitit logs in {folder.parent}",
        file=sys.stderr,
    )
    if options.no_wait:
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
            time.sleep(options.poll)
    return outcomes


def launch_ray(runs: Sequence[Run], options: argparse.Namespace, progress: Progress) -> list[Outcome]:
    """One Ray task per run on ``--ray_address``, or on a local Ray of ``--jobs`` × ``--cpus_per_run`` CPUs."""
    try:
        import ray
        import ray.cloudpickle
    except ImportError:
        raise SystemExit(
            "--launcher ray needs Ray: pip install -e '.[ray]' (or pip install 'ray==2.60.0')"
        ) from None
    _pickle_this_module_by_value(ray.cloudpickle)
    if options.ray_address:
        ray.init(address=options.ray_address, log_to_driver=False)
    else:
        # A small object store: the tasks pass a few strings, and a big one would take memory from the runs.
        ray.init(
            num_cpus=options.jobs * options.cpus_per_run,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=128 * 1024**2,
        )
    try:
        capacity = int(ray.cluster_resources().get("CPU", 1) // options.cpus_per_run) or 1
        progress.slots = capacity
        task = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run)(run_one)
        refs = {task.remote(run): run for run in runs}
        outcomes = []
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=options.poll)
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


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The flags of every launcher (``--launcher``, ``--jobs``, the slurm and ray groups), shared by
    ``scripts/sweep.py`` and ``scripts/tune.py``; returns the "how to run" group for more flags."""
    how = parser.add_argument_group("how to run")
    how.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local")
    how.add_argument(
        "--jobs", type=int, default=1, help="local: runs at a time; ray without address: their CPUs"
    )
    how.add_argument("--poll", type=float, default=None, help="seconds between status checks")
    how.add_argument(
        "--dry_run", action="store_true", help="print the runs (and, for slurm, the sbatch script)"
    )

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
    return how


def parse_with_passthrough(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse a launching script's flags; everything after ``--`` goes to the train script untouched
    (``args.extra``, after any positional extras)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.extra = [*args.extra, *extra]
    return args
