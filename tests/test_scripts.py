"""End-to-end runs of the sepsis script in every mode, reproducibility, the sweep and the tables."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_script, sepsis_args

from fusiondp.experiment.records import EXPERIMENT_MODE
from fusiondp.experiment.results import load_records
from fusiondp.mechanism.modes import MODES

FLAT_KEYS = (
    "dataset mode epsilon delta seed epochs batch_size lr max_grad_norm alpha beta c_h sigma sample_rate steps "
    "accountant epsilon_spent test_acc test_auroc test_aupr test_f1 val_acc val_auroc val_aupr val_f1 "
    "train_seconds seconds_per_epoch git_commit command"
).split()

sepsis_script = load_script("train_fusiondp_sepsis")


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_end_to_end_and_records(tmp_path, sepsis_dir, mode):
    out = tmp_path / "r.jsonl"
    record = sepsis_script.main(
        sepsis_args(sepsis_dir, "--mode", mode, "--epochs", "2", "--results_json", str(out))
    )
    [stored] = load_records(out)
    assert set(FLAT_KEYS) <= set(stored)
    assert stored["mode"] == mode and stored["dataset"] == "sepsis"
    assert stored["steps"] == round(2 * 240 / 32) == record["steps"]
    assert [e["epoch"] for e in stored["epochs_log"]] == [1, 2]
    assert stored["epochs_log"][-1]["step"] == stored["steps"]  # exactly T steps
    assert 0.0 <= stored["test_aupr"] <= 1.0 and 0.0 <= stored["val_auroc"] <= 1.0
    assert "ICULOS_bin" not in stored["sensitive_columns"]
    spec = MODES[mode]
    if spec.private:
        assert stored["sigma"] > 0 and stored["epsilon_spent"] <= stored["epsilon"]
        assert stored["neighbouring_relation"] == spec.relation
        if spec.relation == "replace-one":
            assert stored["accountant"].startswith("pld")
            assert stored["epsilon_replace_one"] == stored["epsilon_spent"]
        else:
            assert stored["accountant"] == "pld"  # the tightest accountant correct for every relation
            assert stored["epsilon_replace_one"] > stored["epsilon_spent"]  # sensitivity 2C costs more
        # Seeded sampler and noise: an experiment, reproducible, and its record says no ε holds.
        assert stored["rng"] == "seeded"
        assert stored["outside_guarantee"] == [EXPERIMENT_MODE]
        assert stored["privacy_guarantee_holds"] is False
    else:
        assert stored["sigma"] is None and stored["neighbouring_relation"] is None
        assert stored["privacy_guarantee_holds"] is (mode != "sgd_ori")
    assert stored["scaling"] == "support" and stored["scaling_epsilon_cost"] is None


def test_same_seed_same_numbers_other_seed_other_numbers(sepsis_dir):
    runs = [
        sepsis_script.main(sepsis_args(sepsis_dir, "--mode", "fusiondp", "--seed", str(s))) for s in (7, 7, 8)
    ]
    assert runs[0]["epochs_log"] == runs[1]["epochs_log"]
    assert runs[0]["epochs_log"] != runs[2]["epochs_log"]


def test_evaluation_covers_every_row_and_restores_train_mode():
    import torch

    from fusiondp.datasets.sepsis import build_model as sepsis_mlp
    from fusiondp.experiment.metrics import predict_proba

    model = sepsis_mlp(5)
    model.train()
    x = torch.randn(20_001, 5)
    first = predict_proba(model, x, chunk=4096)
    assert len(first) == 20_001 and model.training
    np_equal = (first == predict_proba(model, x, chunk=4096)).all()
    assert np_equal  # eval mode: no dropout, deterministic


def test_help_names_reference_flags():
    proc = subprocess.run(
        [sys.executable, "train_fusiondp_sepsis.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in (
        "--mode",
        "--epsilon",
        "--delta",
        "--epochs",
        "--batch_size",
        "--lr",
        "--max_grad_norm",
        "--alpha",
        "--beta",
        "--seed",
        "--results_json",
        "--public_batch_size",
        "--accountant",
        "--c_h",
    ):
        assert flag in proc.stdout
    assert "--epsilon 2.0 --epochs 13" in proc.stdout  # the reference command is in the docstring


def test_sweep_runs_skips_finished_runs_and_prints_table(tmp_path, sepsis_dir):
    results = tmp_path / "sweep.jsonl"
    env = {
        **os.environ,
        "FUSIONDP_DATA": str(sepsis_dir.parent),
        "MODES": "sgd_ori dpsgd",
        "EPSILONS": "2",
        "SEEDS": "1",
        "JOBS": "2",
        "PYTHON": sys.executable,  # as make does: the wrapper runs the venv's interpreter, not PATH's
    }
    cmd = ["bash", "scripts/sweep_sepsis.sh", str(results), "--epochs", "1", "--batch_size", "32"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "2 run(s), 2 at a time" in first.stderr and "FAILED" not in first.stderr
    assert "| dpsgd | 2.0 |" in first.stdout and "| sgd_ori | 2.0 |" in first.stdout
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert second.stderr.count("skipped (in the results already)") == 2
    assert len(load_records(results)) == 2
    # Any other flag value is a different run, not a duplicate.
    third = subprocess.run([*cmd[:-1], "16"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "skipped (in" not in third.stderr and third.stderr.count("done: ") == 2
    assert len(load_records(results)) == 4


def test_make_tables_mean_std_count_and_plot(tmp_path):
    results = tmp_path / "r.jsonl"
    rows = [("fusiondp", 1.0, 0.5), ("fusiondp", 1.0, 0.7), ("fusiondp", 2.0, 0.8), ("sgd_ori", 2.0, 0.9)]
    results.write_text(
        "".join(
            json.dumps({"mode": m, "epsilon": e, "test_aupr": a, "alpha": 1.0}) + "\n" for m, e, a in rows
        )
    )
    png = tmp_path / "plot.png"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/make_tables.py",
            str(results),
            "--metrics",
            "test_aupr",
            "--plot",
            str(png),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| sgd_ori | 2.0 | 0.9000 | 1 |" in proc.stdout
    assert "| fusiondp | 1.0 | 0.6000 ± 0.1414 | 2 |" in proc.stdout
    assert png.stat().st_size > 1000
    grouped = subprocess.run(
        [
            sys.executable,
            "scripts/make_tables.py",
            str(results),
            "--group",
            "alpha",
            "--metrics",
            "test_aupr",
            "--where",
            "mode=fusiondp",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| 1.0 | 0.6667 ± 0.1528 | 3 |" in grouped.stdout


@pytest.mark.parametrize("mode", ["dpsgd", "fusiondp"])
def test_secure_rng_is_not_reproducible_and_keeps_no_seed(tmp_path, sepsis_dir, mode):
    out = tmp_path / "r.jsonl"
    args = ("--mode", mode, "--seed", "5", "--secure_rng", "--results_json", str(out))
    runs = [sepsis_script.main(sepsis_args(sepsis_dir, *args)) for _ in range(2)]
    assert runs[0]["epochs_log"] != runs[1]["epochs_log"]  # same --seed, other batches and noise
    for record in load_records(out):
        assert record["rng"] == "secure" and record["privacy_guarantee_holds"] is True
        assert record["outside_guarantee"] == []
        # Only --seed (model init, public batches) is written anywhere; no sampler or noise seed.
        seeds = {k: v for k, v in record.items() if "seed" in k.lower()}
        assert seeds == {"seed": 5}, seeds
        assert {k for k in record["args"] if "seed" in k} <= {"seed", "support_seed"}


def test_seeded_run_reproduces_exactly_and_says_it_is_an_experiment(sepsis_dir):
    runs = [sepsis_script.main(sepsis_args(sepsis_dir, "--mode", "dpsgd", "--seed", "5")) for _ in range(2)]
    assert runs[0]["epochs_log"] == runs[1]["epochs_log"]
    assert runs[0]["privacy_guarantee_holds"] is False
    assert runs[0]["outside_guarantee"] == [EXPERIMENT_MODE]


def test_reference_options_are_recorded_as_outside_the_guarantee(sepsis_dir):
    record = sepsis_script.main(
        sepsis_args(sepsis_dir, "--mode", "calibrated_fusion", "--divide_by_realised_batch", "--secure_rng")
    )
    assert record["privacy_guarantee_holds"] is False
    assert "realised batch size" in record["outside_guarantee"][0]


def test_the_ablation_script_runs_one_group_with_the_rows_flags_last(tmp_path, sepsis_dir):
    # A tiny run of one group: the row's flag (--alpha_warmup) and the caller's flags (data, epochs)
    # override the shared configuration, and every record lands in the group's folder.
    env = {**os.environ, "ONLY": "warmup", "SEEDS": "1", "PYTHON": sys.executable}
    tiny = ["--data_dir", str(sepsis_dir), "--epochs", "1", "--batch_size", "32", "--public_batch_size", "64"]
    subprocess.run(
        ["bash", "scripts/ablate_sepsis.sh", str(tmp_path / "abl"), *tiny],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    records = load_records(tmp_path / "abl" / "warmup")
    assert sorted(r["alpha_warmup"] for r in records) == [0.5, 1.0]
    assert {(r["mode"], r["batch_size"], r["lr"], r["alpha"]) for r in records} == {
        ("fusiondp", 32, 0.02554877905895379, 3.0)
    }
    assert not (tmp_path / "abl" / "base").exists()
