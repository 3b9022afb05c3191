"""Bad input ends in one clear line and a non-zero exit, never a traceback (real command lines)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO


def _run(*cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(cmd), cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_impute_without_tabpfn_weights_fails_in_one_line_before_any_work(tmp_path):
    from fusiondp.impute import tabpfn_weights_problem

    if tabpfn_weights_problem({}, needed=["classifier", "regressor"]) is None:
        pytest.skip("TabPFN weights are cached on this machine: the default imputer would run")
    out = tmp_path / "out"
    for script in ("impute_bank.py", "impute_adult.py", "impute_sepsis.py"):
        done = _run(sys.executable, script, "--out_dir", str(out))
        assert done.returncode == 2, (script, done.stderr)
        assert "Traceback" not in done.stderr
        assert "TabPFN" in done.stderr and "--imputer hgb" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not out.exists()  # nothing was split, imputed or written


@pytest.mark.parametrize(
    "flag,value", [("--alpha", "-2"), ("--beta", "-0.5"), ("--c_h", "-1"), ("--public_batch_size", "-3")]
)
def test_meaningless_values_are_refused_on_the_command_line(sepsis_dir, flag, value):
    done = _run(sys.executable, "train_fusiondp_sepsis.py", "--data_dir", str(sepsis_dir), flag, value)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{flag} must be" in done.stderr and value in done.stderr


def test_a_sweep_whose_every_run_fails_ends_with_a_summary(tmp_path, sepsis_dir):
    results = tmp_path / "out.jsonl"
    done = _run(
        "bash",
        "scripts/sweep_sepsis.sh",
        str(results),
        "--data_dir",
        str(sepsis_dir),
        "--epochs",
        "-1",
        env={"MODES": "sgd_ori dpsgd", "EPSILONS": "2", "SEEDS": "1"},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "2 of 2 run(s) failed" in done.stderr
    assert "--epochs must be > 0, got -1.0" in done.stderr
    assert f"logs of every run: {tmp_path / 'out.logs'}" in done.stderr
    assert len(list((tmp_path / "out.logs").glob("*.log"))) == 2
