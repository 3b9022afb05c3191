"""Result files: concurrent appends stay valid JSON lines; queries match runs."""

import multiprocessing as mp

import pytest

from fusiondp.results import append_record, flags_to_conditions, has_record, load_records


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


def test_has_record_matches_args_and_flat_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(
        path, {"mode": "fusiondp", "epsilon": 2.0, "args": {"epochs": 5.0, "c_h_from_private": False}}
    )
    assert has_record(path, {"mode": "fusiondp", "epsilon": "2"})
    assert has_record(path, {"mode": "fusiondp", **flags_to_conditions(["--epochs", "5"])})
    assert not has_record(path, {"mode": "fusiondp", **flags_to_conditions(["--epochs=6"])})
    assert not has_record(path, flags_to_conditions(["--c_h_from_private"]))
    assert not has_record(tmp_path / "missing.jsonl", {"mode": "fusiondp"})


def test_malformed_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON object"):
        load_records(path)
