"""Bad input ends in one clear line and a non-zero exit, never a traceback (real command lines)."""

import dataclasses
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
    from fusiondp.tabular.impute import tabpfn_weights_problem

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
        env={"MODES": "sgd_ori dpsgd", "EPSILONS": "2", "SEEDS": "1", "PYTHON": sys.executable},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "2 of 2 run(s) failed" in done.stderr
    assert "--epochs must be > 0, got -1.0" in done.stderr
    assert f"logs of every run: {tmp_path / 'out.logs'}" in done.stderr
    assert len(list((tmp_path / "out.logs").glob("*.log"))) == 2


@pytest.mark.parametrize(
    "wrapper", ["sweep_sepsis.sh", "sweep_mimic.sh", "reproduce_tabular.sh", "ablate_sepsis.sh"]
)
def test_a_shell_wrapper_refuses_an_interpreter_without_the_package(tmp_path, wrapper):
    """The wrappers run PYTHON (make and the tests set it to the venv's); one that cannot import the
    package ends in one line before any work, instead of a traceback from every run of a sweep."""
    no_package = tmp_path / "python"
    no_package.write_text("#!/bin/sh\nexit 1\n")
    no_package.chmod(0o755)
    done = _run("bash", f"scripts/{wrapper}", str(tmp_path / "out.jsonl"), env={"PYTHON": str(no_package)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"{wrapper}: the interpreter {no_package} cannot import fusiondp. Run `make setup` (creates .venv "
        "with the package), or set PYTHON to an interpreter that has it (pip install -e .)."
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_the_shell_wrappers_run_the_interpreter_they_are_given(tmp_path, sepsis_dir):
    """PYTHON reaches the sweep: the wrapper runs it (a shim that logs, then runs this interpreter)."""
    calls = tmp_path / "calls.txt"
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    args = ("--data_dir", str(sepsis_dir), "--epochs", "-1")
    env = {"MODES": "sgd_ori", "EPSILONS": "2", "SEEDS": "1", "PYTHON": str(shim)}
    done = _run("bash", "scripts/sweep_sepsis.sh", str(tmp_path / "out.jsonl"), *args, env=env)
    assert "1 of 1 run(s) failed" in done.stderr, done.stderr
    guard, sweep = calls.read_text().splitlines()
    assert guard == "-c import fusiondp"
    assert sweep.startswith(
        "scripts/sweep.py --launcher local --script train_fusiondp_sepsis.py --modes sgd_ori"
    )
    assert sweep.endswith(" ".join(args))


def test_a_default_naming_no_flag_is_an_error():
    import argparse

    from fusiondp.experiment.cli import add_training_args

    with pytest.raises(ValueError, match="max_grad_nrom"):
        add_training_args(argparse.ArgumentParser(), max_grad_nrom=1.8)
    parser = add_training_args(argparse.ArgumentParser(), max_grad_norm=1.8)
    assert parser.parse_args([]).max_grad_norm == 1.8


def test_the_run_config_keeps_the_settings_of_the_command_line():
    import argparse

    from fusiondp.experiment.cli import add_training_args
    from fusiondp.experiment.config import OMITTED_WHEN_UNSET, RunConfig, run_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=None)
    add_training_args(parser, beta=0.5)
    args = parser.parse_args(["--mode", "naive_fusion", "--epsilon", "4"])
    config = RunConfig.from_args(args)
    # mix_weight (and the later optimizer, lr_schedule, ... flags) unset: left out, so old records and
    # sweeps match exactly as before the flag existed
    assert {"mix_weight", "optimizer", "sensitive_scale"} <= OMITTED_WHEN_UNSET
    assert config.settings() == {k: v for k, v in vars(args).items() if k not in OMITTED_WHEN_UNSET}
    assert list(config.settings()) == [k for k in vars(args) if k not in OMITTED_WHEN_UNSET]
    assert config.settings() == run_settings(vars(args))
    assert config.extra("data_dir") is None and config.replace(seed=3).settings()["seed"] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3


def test_beta_is_the_mixing_weight_only_without_mix_weight():
    from fusiondp.experiment.config import RunConfig
    from fusiondp.experiment.plan import step_config_for
    from fusiondp.mechanism.modes import get_mode

    naive = get_mode("naive_fusion")
    reference = RunConfig(mode="naive_fusion", beta=0.25)
    assert reference.beta_meaning == "mixing weight" and reference.mixing_weight == 0.25
    cfg = step_config_for(reference, naive, privacy=None, c_h=None)
    assert (cfg.w_pub, cfg.w_priv, cfg.reg_weight) == (0.75, 0.25, 0.0)
    own = RunConfig(mode="naive_fusion", beta=0.25, mix_weight=0.6)
    assert own.beta_meaning.startswith("unused") and own.settings()["mix_weight"] == 0.6
    assert step_config_for(own, naive, privacy=None, c_h=None).w_priv == 0.6
    assert RunConfig(mode="fusiondp").beta_meaning == "regularizer weight"
    with pytest.raises(ValueError, match=r"got 1\.5"):
        RunConfig(mode="naive_fusion", mix_weight=1.5).validate()
    RunConfig(mode="naive_fusion", beta=3.0, mix_weight=0.5).validate()  # beta unused: any weight
    with pytest.raises(ValueError, match=r"got 3\.0"):
        RunConfig(mode="naive_fusion", beta=3.0).validate()
