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


def test_honest_protocol_refuses_replace_one_modes_before_any_run(tmp_path, sepsis_dir):
    cmd = [*_tune("--modes", "dpsgd", "pretrain_dpsgd", "--epsilon", "2", "--protocol", "honest",
                  results=tmp_path / "s", sepsis_dir=sepsis_dir), "--accountant", "rdp"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "mode 'pretrain_dpsgd' is calibrated for replace-one" in done.stderr
    assert not list((tmp_path / "s").glob("*.json"))


def test_dry_run_draws_and_prints_the_trials_and_runs_none(tmp_path, sepsis_dir):
    results = tmp_path / "s"
    cmd = _tune("--modes", "pretrain_dpsgd", "fusiondp", "--pretraining", "--epsilon", "2", "--trials", "2",
                "--dry_run", results=results, sepsis_dir=sepsis_dir)  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and "dry run: 4 trial(s) to run, none started" in done.stderr
    assert all("--pretrain_epochs" in line for line in lines)  # both modes search the warm start
    assert sum("sepsis-fusiondp-pretrained-eps2-idealised-seed0/trial" in line for line in lines) == 2
    assert not list(results.glob("*.json"))  # nothing ran


def test_a_second_start_with_other_modes_keeps_the_first_ones_summary(tmp_path):
    summarise = load_script("scripts.tune").merged_summary
    path = tmp_path / "summary.json"
    first = {"dpsgd": {"epsilon": 2}, "_study": {"protocol": "idealised", "extra": []}}
    path.write_text(json.dumps(first))
    second = {"fusiondp+pretrained": {"epsilon": 2}, "_study": {"protocol": "idealised", "extra": ["x"]}}
    merged = summarise(path, second)
    assert set(merged) == {"dpsgd", "fusiondp+pretrained", "_study"} and merged["_study"]["extra"] == ["x"]
    honest = {"dpsgd": {"epsilon": 2}, "_study": {"protocol": "honest"}}
    assert summarise(path, honest) == honest  # another protocol's summary is never mixed in


def _summary(folder, protocol, rows):
    (folder / "study").mkdir(parents=True)
    (folder / "study" / "summary.json").write_text(
        json.dumps({**rows, "_study": {"dataset": "sepsis", "protocol": protocol}})
    )


def test_tuned_tables_pool_honest_studies_and_add_the_reference(tmp_path):
    tables = load_script("scripts.tuned_tables")
    stat = lambda mean, std, n: {"mean": mean, "std": std, "n": n}  # noqa: E731
    _summary(tmp_path / "i", "idealised", {
        "dpsgd": {"epsilon": 2, "final_test_aupr": stat(0.69, 0.006, 3), "trials": 10,
                  "trials_test_aupr": {"n": 10, "median": 0.56, "q1": 0.35, "q3": 0.62}}})  # fmt: skip
    _summary(tmp_path / "h0", "honest", {"dpsgd": {"epsilon": 2, "final_test_aupr": stat(0.5, 0.0, 1)}})
    _summary(tmp_path / "h1", "honest", {"dpsgd": {"epsilon": 2, "final_test_aupr": stat(0.7, 0.0, 1)}})
    reference = tmp_path / "ref.md"
    reference.write_text("| mode | epsilon | test_aupr | n |\n|---|---|---|---|\n| dpsgd | 2.0 | 0.6594 ± 0.0110 | 3 |\n"
                         "| fusiondp | 2.0 | 0.6761 ± 0.0077 | 3 |\n")  # fmt: skip
    args = tables.get_args_parser().parse_args([str(tmp_path / f) for f in ("i", "h0", "h1")] + [
        "--reference_table", str(reference), "--plot", str(tmp_path / "p.png")])  # fmt: skip
    text = tables.main(args)
    row = "| 2 | dpsgd | 0.6900 ± 0.0060 (3) | 0.5600 [0.3500, 0.6200] | 0.6000 ± 0.1414 (2) | 0.6594 ± 0.0110 (3) |"
    assert row in text
    assert "fusiondp" not in text  # reference rows of a mode no study tuned are left out
    assert (tmp_path / "p.png").stat().st_size > 0


def test_the_winners_mean_counts_only_final_runs_of_its_own_configuration():
    # A study extended from a smaller one's records (or resumed after failed trials finished) can hold
    # "final" runs of an earlier winner: they must not join the new winner's mean ± std.
    tune = load_script("scripts.tune")
    winner = {"lr": "0.0158", "optimizer": "momentum", "batch_size": "512", "epochs": "13"}
    args = {"lr": 0.0158, "optimizer": "momentum", "batch_size": 512, "epochs": 13.0}
    found = {
        "s/trial23": [{"args": {**args, "seed": 1}, "test_aupr": 0.70}],
        "s/trial0": [{"args": {**args, "lr": 0.07, "seed": 1}, "test_aupr": 0.66}],
        "s/final": [
            {"args": {**args, "seed": 2}, "test_aupr": 0.71},
            {"args": {**args, "lr": 0.07, "seed": 2}, "test_aupr": 0.66},  # the earlier winner's
            {"args": {**args, "optimizer": "adam", "seed": 3}, "test_aupr": 0.65},
            {"args": {**args, "seed": 3}, "test_aupr": 0.69},
        ],
    }
    kept = tune.winner_records(found, "s", "trial23", winner)
    assert [r["test_aupr"] for r in kept] == [0.70, 0.71, 0.69]
