"""scripts/privacy_report.py on records of tiny real runs."""

import json
import sys
from pathlib import Path

import pytest
from conftest import sepsis, sepsis_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import privacy_report


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from conftest import make_sepsis_frames, write_sepsis_dir

    folder = tmp_path_factory.mktemp("report")
    data_dir = write_sepsis_dir(folder / "sepsis", make_sepsis_frames())
    out = folder / "runs.jsonl"
    for extra in (
        ["--mode", "fusiondp", "--c_h_from_private"],
        ["--mode", "calibrated_fusion", "--neighbouring", "replace_one", "--accountant", "pld"],
        ["--mode", "sgd_hybrid"],
    ):
        sepsis.main(sepsis_args(data_dir, "--results_json", str(out), *extra))
    return out


def test_report_states_both_relations_and_what_is_outside(records, capsys):
    args = privacy_report.get_args_parser().parse_args([str(records)])
    reports = privacy_report.main(args)["reports"]
    assert len(reports) == 3
    fusion, calibrated, hybrid = reports
    stored = [json.loads(line) for line in records.read_text().splitlines()]
    assert f"zero-out ({stored[0]['epsilon_zero_out']:.3f}, 1e-05) [rdp]" in fusion
    assert f"replace-one ({stored[0]['epsilon_replace_one']:.3f}, 1e-05) [pld]" in fusion
    assert "Guarantee holds: NO — outside it: C_h estimated from original sensitive values" in fusion
    assert "Protected: columns Age, Gender, Unit1, Unit2, HospAdmTime, ICULOS." in fusion
    assert f"σ = {stored[0]['sigma']:.4f}, q = b/N = {32 / 240:.5f}, T = {stored[0]['steps']} steps" in fusion
    assert "σ calibrated for: replace-one (accountant pld)" in calibrated
    assert "No DP noise" in hybrid and "Guarantee holds: yes." in hybrid
    # what the public columns reveal: imputation quality computed from the release's two files
    for text in reports:
        assert "NOT protected: the labels; the public columns" in text
        assert "computed now from train_ori.csv vs train_hybrid.csv" in text
        assert "Gender: accuracy" in text and "Age: R²" in text


def test_older_records_get_both_relations_recomputed(records, tmp_path):
    rec = json.loads(records.read_text().splitlines()[0])
    for key in ("epsilon_zero_out", "accountant_zero_out", "accountant_replace_one"):
        rec.pop(key)
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps(rec) + "\n")
    text = privacy_report.main(privacy_report.get_args_parser().parse_args([str(old)]))["reports"][0]
    assert "[rdp (recomputed)]" in text and "[pld]" in text


def test_where_filters_and_missing_imputation_is_said(records, tmp_path):
    rec = json.loads(records.read_text().splitlines()[2])
    rec["data_dir"] = str(tmp_path)
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    text = privacy_report.main(
        privacy_report.get_args_parser().parse_args([str(path), "--where", "mode=sgd_hybrid"])
    )
    assert "unavailable: no imputation_metrics.csv" in text["reports"][0]
    with pytest.raises(ValueError, match="no records in"):
        privacy_report.main(privacy_report.get_args_parser().parse_args([str(path), "--where", "mode=dpsgd"]))


def test_epsilon_table_per_accountant_and_relation():
    args = privacy_report.get_args_parser().parse_args(
        ["--epsilon_table", "--num_rows", "1000", "--batch_size", "50", "--epochs", "2", "--epsilons", "2"]
    )
    table = privacy_report.main(args)["table"]
    rows = [line for line in table.splitlines() if line.startswith("| 2 |")]
    assert [r.split("|")[2].strip() for r in rows] == [
        "zero-out (rdp)",
        "zero-out (prv)",
        "zero-out (pld)",
        "replace-one (pld)",
    ]
    zero_pld, replace_pld = (float(r.split("|")[3]) for r in rows[2:])
    assert replace_pld > zero_pld  # sensitivity 2C needs more noise
