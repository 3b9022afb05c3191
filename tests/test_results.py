"""Result files: concurrent appends stay valid JSON lines; queries match runs."""

import multiprocessing as mp

import pytest

from fusiondp.results import append_record, find_run, flags_to_conditions, load_records, run_settings


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
    append_record(path, {"mode": "fusiondp", "args": run_settings(args)})
    assert find_run(path, run_settings(args)) is not None
    assert (
        find_run(path, {**run_settings(args), "no_progress": False, "results_json": "elsewhere"}) is not None
    )
    assert find_run(path, {**run_settings(args), "epochs": 1.0}) is None
    assert find_run(path, {**run_settings(args), "c_h_from_private": True}) is None
    assert find_run(tmp_path / "missing.jsonl", run_settings(args)) is None


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
