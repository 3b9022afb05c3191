"""scripts/sweep.py: the same tiny sweep through the local launcher, submitit's local executor and a
local Ray; the SLURM array as the sbatch script submitit would submit; a sweep killed midway and
started again loses nothing and repeats nothing.

Every run is a real ``train_fusiondp_sepsis.py`` process on the tests' small synthetic sepsis data
(1 epoch), one thread each, so the launchers must give the very same numbers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_sepsis_frames, quick_run_flags, write_sepsis_dir

from fusiondp.experiment.results import load_records, record_files
from scripts import sweep

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--dataset", "sepsis", "--modes", "sgd_ori", "dpsgd", "--epsilons", "2", "--seeds", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_sepsis_dir(tmp_path_factory.mktemp("data") / "sepsis", make_sepsis_frames())


def tiny(data_dir: Path) -> list[str]:
    """The train-script flags of a quick run, after ``--``."""
    return ["--", *quick_run_flags(data_dir)]


def run_sweep(*args: str, python: str = sys.executable, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per run, whatever the launcher
    proc = subprocess.run(
        [python, "scripts/sweep.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def aupr_by_mode(results: Path) -> dict[str, float]:
    return {r["mode"]: r["test_aupr"] for r in load_records(results)}


@pytest.fixture(scope="module")
def local_sweep(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    results = tmp_path_factory.mktemp("local") / "results"
    proc = run_sweep(*SWEEP, "--jobs", "2", "--results", str(results), *tiny(data_dir))
    return results, proc


def test_local_launcher_writes_one_file_per_run(local_sweep):
    results, proc = local_sweep
    files = record_files(results)
    assert len(files) == 2 and {f.name.split("-")[0] for f in files} == {
        "sgd_ori_eps2.0_seed1",
        "dpsgd_eps2.0_seed1",
    }
    assert "2 run(s), 2 at a time" in proc.stderr and proc.stderr.count("done: ") == 2
    assert "progress: 2/2 done (0 skipped), 0 running, 0 failed, 0 remaining" in proc.stderr
    assert "| dpsgd | 2.0 |" in proc.stdout and "| sgd_ori | 2.0 |" in proc.stdout
    assert sorted(p.name for p in (results / "logs").glob("*.log")) == sorted(
        p.name for p in (results / "logs").iterdir()
    )  # a log per run, nothing else
    assert not list(results.glob(".*"))  # no temporary file left behind


def test_failed_run_is_named_with_its_log(data_dir, tmp_path):
    results = tmp_path / "results"
    proc = run_sweep(
        "--dataset", "sepsis", "--modes", "dpsgd", "--epsilons", "-1", "--seeds", "1", "--results", str(results),
        *tiny(data_dir), check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    named = re.search(r"FAILED: dpsgd eps=-1 seed=1 \(log: (.+\.log)\)", proc.stderr)
    assert named, proc.stderr
    log = Path(named[1])
    assert log.parent == (results / "logs").resolve() and "--epsilon must be" in log.read_text()
    assert (
        "1 of 1 run(s) failed" in proc.stderr
        and "--epsilon must be a finite number > 0, got -1.0" in proc.stderr
    )
    assert "no finished runs" in proc.stderr and not record_files(results)


def test_submitit_local_executor_runs_the_same_sweep(local_sweep, data_dir, tmp_path):
    pytest.importorskip("submitit", reason="the slurm launcher needs submitit: pip install -e '.[slurm]'")
    results = tmp_path / "results"
    proc = run_sweep(
        *SWEEP, "--launcher", "slurm", "--submitit_cluster", "local", "--cpus", "1", "--results", str(results),
        *tiny(data_dir),
    )  # fmt: skip
    assert "submitted 2 task(s) (local)" in proc.stderr and proc.stderr.count("done: ") == 2
    assert list((results / "logs" / "submitit").glob("*/*_result.pkl"))  # submitit's own bookkeeping
    assert aupr_by_mode(results) == aupr_by_mode(local_sweep[0])


def test_slurm_array_is_one_sbatch_script_with_requeue(tmp_path):
    pytest.importorskip("submitit", reason="the slurm launcher needs submitit: pip install -e '.[slurm]'")
    results = tmp_path / "results"
    proc = run_sweep(
        *SWEEP, "--launcher", "slurm", "--partition", "gpu", "--time", "90", "--gpus", "1", "--cpus", "4",
        "--mem", "16", "--array_parallelism", "1", "--slurm_setup", "source .venv/bin/activate",
        "--results", str(results), "--dry_run", "--", "--epochs", "13",
    )  # fmt: skip
    text = proc.stdout
    for line in (
        "#SBATCH --array=0-1%1",  # one array of 2 tasks, 1 at a time
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --signal=USR2@120",  # submitit's cue to checkpoint and requeue before the limit
        "#SBATCH --job-name=fusiondp-sepsis",
        "source .venv/bin/activate",
    ):
        assert line in text.splitlines(), (line, text)
    assert f"-u -m submitit.core._submit {results.resolve()}/logs/submitit/%j" in text
    assert (
        f"train_fusiondp_sepsis.py --mode dpsgd --epsilon 2 --seed 1 --results_json {results.resolve()}/"
        in text
    )
    assert not results.exists()  # nothing submitted, nothing written
    # Preemption or timeout: submitit calls checkpoint(), which resubmits the same run (requeue).
    from submitit.helpers import DelayedSubmission

    run = sweep.Run("x", "train_fusiondp_sepsis.py", ("--mode", "dpsgd"), str(tmp_path / "x.log"))
    again = sweep.SubmititTask().checkpoint(run)
    assert isinstance(again, DelayedSubmission) and again.args == (run,)


def test_ray_local_cluster_runs_the_same_sweep(local_sweep, data_dir, tmp_path):
    pytest.importorskip(
        "ray", reason="Ray is an optional extra (pip install -e '.[ray]', ~10 s from a wheel cache); "
        "without it the ray launcher is not tested"
    )  # fmt: skip
    results = tmp_path / "results"
    proc = run_sweep(*SWEEP, "--launcher", "ray", "--jobs", "2", "--results", str(results), *tiny(data_dir))
    assert proc.stderr.count("done: ") == 2, proc.stderr
    assert aupr_by_mode(results) == aupr_by_mode(local_sweep[0])


def test_killed_sweep_resumes_without_losing_or_repeating_runs(data_dir, tmp_path):
    results = tmp_path / "results"
    modes = ["sgd_ori", "dpsgd"]
    args = ["--dataset", "sepsis", "--modes", *modes, "--epsilons", "2", "--seeds", "1", "--jobs", "1"]
    args += ["--results", str(results), *tiny(data_dir)]
    first = subprocess.Popen(
        [sys.executable, "scripts/sweep.py", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (results.exists() and record_files(results)):
        assert first.poll() is None and time.time() < deadline, "the sweep ended before a run finished"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the hardest stop: no handler runs; the run under way must die too
    first.wait()
    time.sleep(1.0)  # a run that outlived the sweep would write now
    before = {f.name: f.stat().st_mtime_ns for f in record_files(results)}
    assert 1 <= len(before) < len(modes)

    second = run_sweep(*args)
    records = load_records(results)
    assert sorted(r["mode"] for r in records) == sorted(modes)  # nothing lost, nothing twice
    for name, mtime in before.items():  # the finished runs were not run again
        assert (results / name).stat().st_mtime_ns == mtime
    assert second.stderr.count("skipped (in the results already)") == len(before)
    assert second.stderr.count("done: ") == len(modes) - len(before)
