"""Result files and folders: concurrent writers keep every record whole; queries match runs."""

import multiprocessing as mp

import pytest

from fusiondp.experiment.config import run_settings
from fusiondp.experiment.results import (
    append_record,
    find_run,
    flags_to_conditions,
    is_results_dir,
    load_records,
    record_files,
    settings_digest,
)


def _writer(path, worker):
    for i in range(100):
        append_record(path, {"worker": worker, "i": i, "payload": "x" * 5000, "nan": float("nan")})


def test_concurrent_appends_do_not_corrupt(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    records = load_records(path)
    assert len(records) == 600
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(6) for i in range(100)]
    assert records[0]["nan"] is None  # NaN is written as null, keeping the file strict JSON


def test_find_run_compares_every_setting_but_output_flags(tmp_path):
    import argparse

    path = tmp_path / "r.jsonl"
    args = argparse.Namespace(
        mode="fusiondp",
        epsilon=2.0,
        epochs=13.0,
        c_h_from_private=False,
        results_json=str(path),
        no_progress=True,
        skip_existing=True,
    )
    append_record(path, {"mode": "fusiondp", "args": run_settings(vars(args))})
    assert find_run(path, run_settings(vars(args))) is not None
    assert (
        find_run(path, {**run_settings(vars(args)), "no_progress": False, "results_json": "elsewhere"})
        is not None
    )
    assert find_run(path, {**run_settings(vars(args)), "epochs": 1.0}) is None
    assert find_run(path, {**run_settings(vars(args)), "c_h_from_private": True}) is None
    assert find_run(tmp_path / "missing.jsonl", run_settings(vars(args))) is None


def test_flags_to_conditions():
    assert flags_to_conditions(["--epochs", "5", "--c_h_from_private", "--mode=dpsgd"]) == {
        "epochs": "5",
        "c_h_from_private": "true",
        "mode": "dpsgd",
    }


def test_malformed_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON object"):
        load_records(path)


def _folder_writer(folder, worker):
    for i in range(30):
        append_record(folder, {"mode": "fusiondp", "worker": worker, "i": i, "nan": float("nan")})


def test_results_folder_one_atomic_file_per_record(tmp_path):
    folder = tmp_path / "results"  # no extension, not there yet: a folder
    assert is_results_dir(folder) and is_results_dir(f"{tmp_path}/r.jsonl/") and not is_results_dir("r.jsonl")
    procs = [mp.get_context("fork").Process(target=_folder_writer, args=(folder, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    records = load_records(folder)
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(30)]
    assert records[0]["nan"] is None
    assert len(record_files(folder)) == 120 and not list(folder.glob(".*"))  # no temporary file left
    # What a run killed mid-write leaves (a hidden temporary file) is no record.
    (folder / ".fusiondp_eps2-abc-def.json.123.tmp").write_text('{"mode": "half')
    assert len(load_records(folder)) == 120


def test_find_run_in_a_results_folder(tmp_path):
    import argparse

    folder = tmp_path / "results"
    args = argparse.Namespace(mode="dpsgd", epsilon=2.0, seed=1, epochs=13.0, results_json=str(folder))
    append_record(folder, {"mode": "dpsgd", "epsilon": 2.0, "seed": 1, "args": run_settings(vars(args))})
    [path] = record_files(folder)
    assert path.name.startswith(f"dpsgd_eps2.0_seed1-{settings_digest(run_settings(vars(args)))}-")
    assert find_run(folder, {**run_settings(vars(args)), "results_json": "elsewhere/"}) is not None
    assert find_run(folder, {**run_settings(vars(args)), "epochs": 1.0}) is None
    # Settings in the name are a shortcut, not the test: a renamed file with other settings is no match.
    path.rename(folder / f"dpsgd-{settings_digest({**run_settings(vars(args)), 'seed': 2})}-x.json")
    assert find_run(folder, {**run_settings(vars(args)), "seed": 2}) is None


def test_malformed_record_file_is_named(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "a.json").write_text('{"a": ')
    with pytest.raises(ValueError, match=r"a.json: not a JSON object"):
        load_records(folder)
