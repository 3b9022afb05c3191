"""scripts/tune.py and the search spaces (fusiondp/experiment/search.py): every mode the same budget,
candidates drawn once, a study that is stopped resumes without losing or repeating a trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import REPO, load_script

from fusiondp.datasets import dataset_module
from fusiondp.experiment.search import check_space, search_space, suggest

sepsis = dataset_module("sepsis")
KNOWN = {a.dest for a in load_script("train_fusiondp_sepsis").get_args_parser()._actions}


def test_every_split_mode_searches_the_same_space_and_the_honest_one_fixes_q_and_t():
    spaces = {m: search_space(sepsis, m) for m in ("dpsgd", "feature-dp", "calibrated_fusion", "fusiondp")}
    assert set(spaces["feature-dp"]) == set(spaces["calibrated_fusion"]) == set(spaces["fusiondp"]) - {"beta"}
    assert set(spaces["dpsgd"]) == {"lr", "max_grad_norm", "public_batch_size", "optimizer", "lr_schedule",
                                    "sensitive_scale", "batch_size,epochs"}  # fmt: skip
    for mode, space in spaces.items():
        check_space(space, known_flags=KNOWN)
        honest = search_space(sepsis, mode, protocol="honest")
        check_space(honest, known_flags=KNOWN, protocol="honest")
        assert "batch_size,epochs" not in honest


@pytest.mark.parametrize(
    "space,message",
    [
        ({}, "the search space is empty"),
        ({"lrr": ("log", 0.01, 1.0)}, r"unknown hyperparameter\(s\) \['lrr'\]"),
        ({"b": ("choice", ["batch_size=64,epoch=3"])}, r"unknown hyperparameter\(s\) \['epoch'\]"),
        ({"lr": ("log", 0.0, 1.0)}, "a log range needs low > 0"),
        ({"lr": ("uniform", 1.0, 0.1)}, "needs low < high"),
        ({"lr": ("normal", 0.1)}, "is not one of"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_entry(space, message):
    with pytest.raises(ValueError, match=message):
        check_space(space, known_flags=KNOWN)


def test_the_honest_protocol_refuses_a_space_that_moves_sigma():
    with pytest.raises(ValueError, match=r"\['batch_size', 'epochs'\] change q or T"):
        check_space(search_space(sepsis, "dpsgd"), known_flags=KNOWN, protocol="honest")


def test_a_candidate_becomes_train_script_flags_and_bundles_set_several():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    flags = suggest(trial, search_space(sepsis, "fusiondp"))
    assert set(flags) == {"lr", "max_grad_norm", "public_batch_size", "optimizer", "lr_schedule",
                          "sensitive_scale", "alpha", "max_private_noise", "beta", "batch_size", "epochs"}  # fmt: skip
    assert (flags["batch_size"], flags["epochs"]) in {("128", "13"), ("512", "13"), ("1024", "26")}
    assert 0.01 <= float(flags["lr"]) <= 1.0


def _tune(*args: str, results, sepsis_dir) -> list[str]:
    return [sys.executable, "scripts/tune.py", "--dataset", "sepsis", "--results", str(results), *args, "--",
            "--data_dir", str(sepsis_dir), "--epochs", "1", "--batch_size", "32"]  # fmt: skip


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--select", "test_aupr"], "never on test"),
        (["--protocol", "honest"], "needs the RDP accountant"),
        (["--protocol", "honest", "--mean_trials", "0.5"], "at least 1, got 0.5"),
        (["--trials", "0"], "--trials must be >= 1, got 0"),
    ],
)
def test_bad_study_settings_end_in_one_line(tmp_path, sepsis_dir, flags, message):
    done = subprocess.run(_tune("--epsilon", "2", *flags, results=tmp_path / "s", sepsis_dir=sepsis_dir),
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr


def _trial_records(results) -> dict[str, list[dict]]:
    by_tag: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        by_tag.setdefault(record["tuning_study"], []).append(record)
    return by_tag


def test_a_killed_study_resumes_without_losing_or_repeating_a_trial(tmp_path, sepsis_dir):
    results = tmp_path / "study"
    cmd = _tune("--modes", "dpsgd", "--epsilon", "2", "--trials", "3", "--seeds", "1", "--jobs", "1",
                "--study_seed", "7", results=results, sepsis_dir=sepsis_dir)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while not list(results.glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the study and its run under way, mid-study
    first.wait()
    interrupted = _trial_records(results)
    assert 1 <= len(interrupted) < 3

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _trial_records(results)
    study = "sepsis-dpsgd-eps2-idealised-seed7"
    assert sorted(records) == [f"{study}/trial{i}" for i in range(3)]  # none lost, none run twice
    assert all(len(rs) == 1 for rs in records.values())
    for tag, rs in interrupted.items():  # finished trials were kept, not rerun
        assert records[tag][0]["test_aupr"] == rs[0]["test_aupr"]
    summary = json.loads((results / "study" / "summary.json").read_text())
    assert summary["dpsgd"]["trials"] == 3 and summary["dpsgd"]["final_test_aupr"]["n"] == 1
    assert "cost of tuning not counted" in done.stdout

    # The same seed draws the same candidates in a fresh study.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "study" / "optuna.journal"))
    )
    kept = [t.params for t in optuna.load_study(study_name=study, storage=storage).get_trials()]
    again = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    space = search_space(sepsis, "dpsgd")
    fresh = []
    for _ in range(3):
        trial = again.ask()
        suggest(trial, space)
        fresh.append(trial.params)
    assert kept == fresh


@pytest.mark.parametrize(
    "extra,value",
    [
        ([], "pld"),
        (["--one_hot", "--accountant", "rdp"], "rdp"),
        (["--accountant=rdp"], "rdp"),
        (["--accountant", "rdp", "--accountant", "prv"], "prv"),
    ],
)
def test_the_accountant_a_trial_will_use_is_read_as_its_parser_would(extra, value):
    assert load_script("scripts.tune").passed_value(extra, "--accountant", default="pld") == value


def test_honest_k_is_drawn_from_the_study_seed():
    tune = load_script("scripts.tune")
    args = tune.parse_args(
        ["--dataset", "sepsis", "--epsilon", "2", "--protocol", "honest", "--results", "x"]
    )
    draws = {
        seed: tune.number_of_trials(args.__class__(**{**vars(args), "study_seed": seed}))
        for seed in range(20)
    }
    assert draws == {
        seed: tune.number_of_trials(args.__class__(**{**vars(args), "study_seed": seed}))
        for seed in range(20)
    }
    assert len(set(draws.values())) > 3 and min(draws.values()) >= 1
